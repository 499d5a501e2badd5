import sqlite3
import threading

import pytest

from llmquant.board import Board, group_by_protocol, render_csv, render_json, render_markdown


def row(variant, ppl, protocol="p1", baseline=False, run_dir="/r", **kw):
    return {"run": "r", "run_dir": run_dir, "model": "m", "model_hash": "h", "variant": variant, "method": "rtn",
            "bits": 4, "group_size": 64, "format": "gptq-v1", "is_baseline": int(baseline), "size_bytes": 1000,
            "ppl": ppl, "delta_ppl_pct": 0.0, "protocol_key": protocol, "protocol": f"proto {protocol}",
            "result_json": '{"ppl": %f}' % ppl, **kw}


def test_upsert_and_groups(tmp_path):
    b = Board(tmp_path / "b.sqlite")
    b.record([row("baseline", 10.0, baseline=True), row("w4", 12.0), row("w8", 10.1)])
    b.record([row("w4", 11.5)])  # same run dir, variant, protocol: replaced, not duplicated
    b.record([row("w4", 20.0, protocol="p2")])  # another protocol: a separate group
    rows = b.rows()
    assert len(rows) == 4
    groups = group_by_protocol(rows)
    assert [d["variant"] for d in groups[("m", "p1")]] == ["baseline", "w8", "w4"]
    assert [d["ppl"] for d in groups[("m", "p1")]] == [10.0, 10.1, 11.5]
    assert len(groups[("m", "p2")]) == 1
    assert b.find_baseline("h", "p1") == {"ppl": 10.0}
    assert b.find_baseline("h", "p2") is None


def test_transaction_is_all_or_nothing(tmp_path):
    b = Board(tmp_path / "b.sqlite")
    bad = row("x", 1.0)
    bad["ppl"] = object()  # sqlite cannot bind this: the whole batch must roll back
    with pytest.raises(sqlite3.Error):
        b.record([row("ok", 1.0), bad])
    assert b.rows() == []


def test_concurrent_writers(tmp_path):
    path = tmp_path / "b.sqlite"
    Board(path)

    def write(i):
        Board(path).record([row(f"v{i}-{j}", float(j), run_dir=f"/r{i}") for j in range(20)])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(Board(path).rows()) == 80


def test_renderings(tmp_path):
    b = Board(tmp_path / "b.sqlite")
    b.record([row("baseline", 10.0, baseline=True), row("w4", 12.0, delta_ppl_pct=20.0)])
    md = render_markdown(b.rows(), title="T")
    assert "| baseline |" in md and "+20.00" in md and "Protocol: proto p1" in md
    assert render_csv(b.rows()).splitlines()[0].startswith("created_at,run,")
    assert '"variant": "w4"' in render_json(b.rows())


def test_not_a_database(tmp_path):
    from llmquant.errors import UserError

    p = tmp_path / "junk.sqlite"
    p.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(UserError, match="not a usable leaderboard"):
        Board(p)
