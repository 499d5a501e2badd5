"""The report opened in headless Chromium: the table and the plots are rendered, the sorting script
runs, and a screenshot shows them. Skipped where no chromium is installed (CI installs Debian's)."""

import re

import pytest

from llmquant.report import render_report
from llmquant.report.browser import dump_dom, find_chromium, screenshot
from llmquant.report.data import Report, build_groups

pytestmark = pytest.mark.skipif(find_chromium() is None,
                                reason="headless Chromium not installed (Debian: apt-get install chromium)")


def rows():
    out = [{"run": "r", "run_dir": "/r", "model": "tiny", "variant": "baseline", "method": "none", "is_baseline": 1,
            "size_bytes": 400e6, "ppl": 10.0, "ttft_ms_median": 100.0, "ttft_ms_p90": 110.0, "decode_tok_s": 30.0,
            "protocol_key": "k", "protocol": "gptq-paper: corpus, 8 windows x 128 tokens"}]
    for name, bits, ppl, size, ttft in [("w8", 8, 10.05, 130e6, 120.0), ("w4", 4, 11.5, 80e6, 95.0),
                                        ("w3", 3, 19.0, 65e6, 90.0)]:
        out.append({**out[0], "variant": name, "method": "rtn", "is_baseline": 0, "bits": bits, "group_size": 64,
                    "ppl": ppl, "size_bytes": size, "ttft_ms_median": ttft, "ttft_ms_p90": ttft * 1.1})
    return out


def layer_report(scale):
    return [{"module": f"model.layers.{b}.{k}", "rel_error": scale * (1 + 0.1 * b + 0.05 * i)}
            for b in range(4) for i, k in enumerate(["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"])]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from llmquant.report.data import Winner

    groups = build_groups(rows(), layers={"w8": layer_report(0.005), "w4": layer_report(0.1)},
                          winners=[Winner("/r", "w8", "w8: the smallest within 2 % of baseline")])
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_report(Report("tiny — leaderboard", groups)))
    return path


def test_table_and_plots_render_and_sorting_runs(page):
    dom = dump_dom(page.as_uri() + "#sort=-ppl")
    assert 'data-sortable="ready"' in dom  # the inline script ran
    table = re.search(r'<table class="board"[^>]*>(.*?)</table>', dom, flags=re.S).group(1)
    order = re.findall(r'<tr class="[a-z]+"><td[^>]*>([a-z0-9]+)', table)
    assert order == ["baseline", "w3", "w4", "w8"]  # sorted by ppl, descending; the baseline pinned on top
    assert 'aria-sort="descending"' in table
    assert 'class="winner"' in dom and "Winner: w8" in dom
    svgs = re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)
    assert len(svgs) == 4 and all(s.count("<path") > 20 for s in svgs)  # drawn, not empty shells


def test_screenshot_shows_the_page(page, tmp_path):
    from PIL import Image

    png = screenshot(page.as_uri(), tmp_path / "shot.png", width=1200, height=1800)
    img = Image.open(png).convert("RGB")
    assert img.size == (1200, 1800)
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 200  # text, table and plots, not a blank page

    def near(rgb, target, tol=40):
        return all(abs(a - b) <= tol for a, b in zip(rgb, target))

    # the plots' rtn markers (#d1495b) and the winner row's green tint are on screen
    assert sum(n for n, c in colors if near(c, (0xd1, 0x49, 0x5b))) > 50
    assert sum(n for n, c in colors if near(c, (0xe9, 0xf6, 0xee), tol=4)) > 1000
