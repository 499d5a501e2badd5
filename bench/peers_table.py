"""Write the peers-on-our-protocol leaderboard of a finished run (recipes/smollm2-peers.yaml) as a
results file: the run's leaderboard (our table renderer, so the peers' rows carry their versions)
plus who quantized what with which versions and the peers' own timings (the machine line has the
load average when written; pass the run's own with --note).

  llmquant run recipes/smollm2-peers.yaml
  PYTHONPATH=. python bench/peers_table.py runs/smollm2-peers \
      --command "llmquant run recipes/smollm2-peers.yaml" --out bench/results/peers-DATE.md

Timings are indicative on a shared machine; perplexity is not affected by load.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common import emit, header


def peer_lines(results: dict) -> list[str]:
    out = ["| variant | quantized by | packages in its venv | its quantize s | its save s | its peak RSS MB | settings it could not honour |",
           "|---|---|---|---|---|---|---|"]
    for v in results["variants"]:
        q = v.get("quantize") or {}
        peer = q.get("peer")
        if not peer:
            out.append(f"| {v['name']} | llmquant (this commit) | shared venv | – | – | – | – |")
            continue
        pk = ", ".join(f"{k} {val}" for k, val in sorted(peer.get("packages", {}).items()) if val)
        s = peer.get("seconds", {})
        ignored = "; ".join(f"{k}: {why}" for k, why in (q.get("ignored") or {}).items()) or "–"
        out.append(f"| {v['name']} | {q.get('backend')} | {pk} | {s.get('quantize', 0):.0f} | {s.get('save', 0):.0f} | "
                   f"{peer.get('peak_rss_bytes', 0) / 2**20:.0f} | {ignored} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--command", required=True, help="the command that made the run (recorded)")
    ap.add_argument("--note", action="append", default=[], help="a line added under the header")
    ap.add_argument("--title", default="GPTQ W4 g64", help="what is compared (the page's title)")
    ap.add_argument("--out")
    args = ap.parse_args()
    results = json.loads((args.run_dir / "results.json").read_text())
    lines = header(f"Peers on our protocol: SmolLM2-135M {args.title}", args.command)
    lines[-1:-1] = [f"- {n}" for n in args.note]
    lines += [(args.run_dir / "leaderboard.md").read_text().replace("# ", "## ", 1), "",
              "## Who quantized what", ""] + peer_lines(results)
    emit(lines, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
