"""The page's inline style and script (the report is one file and fetches nothing)."""

CSS = """
:root { --ink:#1d2330; --muted:#5d6675; --line:#e3e6eb; --card:#ffffff; --bg:#f4f5f7;
        --good:#2f7d4f; --bad:#b8323f; --accent:#2e86ab; --win:#e9f6ee; --base:#f1f3f6; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", "Liberation Sans", sans-serif; }
header { padding: 28px 40px 18px; background: linear-gradient(90deg, #1d2330, #2b3a55); color: #fff; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 650; letter-spacing: .2px; }
header p { margin: 0; color: #c9d3e3; font-size: 13px; }
main { max-width: 1240px; margin: 0 auto; padding: 22px 28px 4px; }
nav.toc { margin: 0 0 14px; font-size: 13px; color: var(--muted); }
nav.toc a { color: var(--accent); margin-right: 14px; text-decoration: none; }
section.group { background: var(--card); border: 1px solid var(--line); border-radius: 10px;
                padding: 20px 20px 22px; margin: 0 0 24px; box-shadow: 0 1px 3px rgba(20,30,50,.06); }
section.group h2 { margin: 0 0 4px; font-size: 19px; }
.badge { display:inline-block; font-size:12px; font-weight:600; padding:2px 9px; border-radius:999px;
         background:#e8f1f7; color:#1f5f7c; vertical-align: 3px; margin-left: 8px; }
p.protocol { margin: 0 0 14px; color: var(--muted); font-size: 13px; }
.winner { border-left: 4px solid var(--good); background: var(--win); padding: 10px 14px; border-radius: 6px;
          margin: 0 0 16px; }
.winner.none { border-left-color: #c0862b; background: #fbf3e6; }
.winner b { font-size: 15px; }
.winner .run { color: var(--muted); font-size: 12px; margin-right: 6px; }
.table-wrap { overflow-x: auto; }
table.board { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; font-size: 13px; }
table.board th { text-align: right; font-weight: 600; color: var(--muted); font-size: 12px; text-transform: none;
                 border-bottom: 2px solid var(--line); padding: 8px 7px; cursor: pointer; user-select: none;
                 white-space: nowrap; }
table.board th.text, table.board td.text { text-align: left; }
table.board th:hover { color: var(--ink); background: #f7f8fa; }
table.board th::after { content: " \\2195"; color: #c3c8d0; font-size: 11px; }
table.board th[aria-sort=ascending]::after { content: " \\25B2"; color: var(--accent); }
table.board th[aria-sort=descending]::after { content: " \\25BC"; color: var(--accent); }
table.board td { text-align: right; padding: 7px 7px; border-bottom: 1px solid var(--line); white-space: nowrap; }
table.board tbody tr:hover td { background: #fafbfc; }
table.board tr.baseline td { background: var(--base); font-weight: 600; }
table.board tr.winner td { background: var(--win); }
table.board tr.winner td:first-child { box-shadow: inset 4px 0 0 var(--good); }
.tag { display:inline-block; font-size:11px; font-weight:600; padding:0 6px; border-radius:4px; margin-left:6px;
       background: var(--good); color:#fff; }
.tag.base { background:#6c7686; }
td.worse { color: var(--bad); }
td.better { color: var(--good); }
td.na { color: #aab1bc; }
p.hint { color: var(--muted); font-size: 12px; margin: 8px 0 0; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 16px; margin-top: 18px; }
figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px 8px; }
figure.wide { margin-top: 16px; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
h3 { margin: 24px 0 0; font-size: 15px; }
.note { color: var(--muted); font-size: 13px; background: #fbf3e6; padding: 8px 12px; border-radius: 6px; }
footer { max-width: 1240px; margin: 0 auto; padding: 0 28px 30px; color: var(--muted); font-size: 12px; }
"""

JS = """
(function () {
  "use strict";
  function cellValue(td) {
    var v = td.getAttribute("data-v");
    if (v === null || v === "") return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  function headers(table) { return Array.prototype.slice.call(table.tHead.rows[0].cells); }
  function sortTable(table, col, dir) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var pinned = rows.filter(function (r) { return r.classList.contains("baseline"); });
    var rest = rows.filter(function (r) { return !r.classList.contains("baseline"); });
    rest.sort(function (a, b) {
      var x = cellValue(a.cells[col]), y = cellValue(b.cells[col]);
      if (x === null && y === null) return 0;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    pinned.concat(rest).forEach(function (r) { body.appendChild(r); });
    headers(table).forEach(function (th, i) {
      th.setAttribute("aria-sort", i === col ? (dir > 0 ? "ascending" : "descending") : "none");
    });
  }
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.board"));
  tables.forEach(function (table) {
    headers(table).forEach(function (th, i) {
      th.tabIndex = 0;
      function go() { sortTable(table, i, th.getAttribute("aria-sort") === "ascending" ? -1 : 1); }
      th.addEventListener("click", go);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); go(); }
      });
    });
  });
  var m = /^#sort=(-?)([A-Za-z0-9_]+)$/.exec(window.location.hash);
  if (m) {
    tables.forEach(function (table) {
      var i = headers(table).findIndex(function (th) { return th.getAttribute("data-key") === m[2]; });
      if (i >= 0) sortTable(table, i, m[1] ? -1 : 1);
    });
  }
  document.documentElement.setAttribute("data-sortable", "ready");
})();
"""
