"""Screenshot of the demo run's HTML report, taken by headless Chromium.

    python bench/report_screenshot.py [--run-dir runs/smollm2-demo] [--out bench/results/report-smollm2-demo.png]

The report is re-rendered from the run directory's results.json with the current code (so the
picture shows this checkout's report, not whatever report.html an older version left), written to a
temporary file (or --html), opened with `file://` and captured; the empty page below is cropped.
Run the demo first (`make run`, about 5 minutes) if the run directory has no results.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llmquant.report import report_from_run_dir, write_html  # noqa: E402
from llmquant.report.browser import find_chromium, screenshot  # noqa: E402

BACKGROUND = (0xF4, 0xF5, 0xF7)  # the page's --bg


def crop_to_content(png: Path, margin: int = 24) -> tuple[int, int]:
    """Cut the rows of plain page background below the content; returns the new size."""
    from PIL import Image

    img = Image.open(png).convert("RGB")
    w, h = img.size
    px = img.load()
    last = 0
    for y in range(h - 1, -1, -1):
        if any(px[x, y] != BACKGROUND for x in range(0, w, 4)):
            last = y
            break
    img = img.crop((0, 0, w, min(h, last + 1 + margin)))
    img.save(png, optimize=True)
    return img.size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "smollm2-demo")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "report-smollm2-demo.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=4000, help="viewport height before cropping")
    ap.add_argument("--html", type=Path, default=None, help="also keep the rendered page here")
    args = ap.parse_args(argv)

    if not (args.run_dir / "results.json").exists():
        print(f"{args.run_dir}: no results.json; run the demo first: make run", file=sys.stderr)
        return 2
    if find_chromium() is None:
        print("no chromium on PATH; on Debian: apt-get install chromium", file=sys.stderr)
        return 2
    html = report_from_run_dir(args.run_dir, f"{args.run_dir.name} — leaderboard")
    with tempfile.TemporaryDirectory() as tmp:
        html_path = write_html(args.html or Path(tmp) / "report.html", html)
        png = screenshot(html_path.resolve().as_uri(), args.out, args.width, args.height)
    size = crop_to_content(png)
    print(f"{png} ({size[0]}x{size[1]})" + (f", page kept in {args.html}" if args.html else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
