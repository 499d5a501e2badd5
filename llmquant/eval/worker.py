"""Child process of `evaluate_isolated`: python -m llmquant.eval.worker JOB.json OUT.json

Reports progress as JSON lines on stdout (llmquant/worker_io.py) and writes {"result": ...} or {"user_error": ...}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UserError
from ..runs import atomic_write_json
from ..worker_io import JsonLinesProgress
from .evaluate import EvalJob, evaluate_checkpoint


def main(argv: list[str]) -> int:
    job_path, out_path = Path(argv[0]), Path(argv[1])
    job = EvalJob(**json.loads(job_path.read_text()))
    try:
        result = evaluate_checkpoint(job, JsonLinesProgress(), isolated=True)
    except UserError as e:
        atomic_write_json(out_path, {"user_error": str(e)})
        return 2
    atomic_write_json(out_path, {"result": result.to_dict()})
    return 0


if __name__ == "__main__":
    from ..cpu import isolate_inductor_cache

    isolate_inductor_cache()
    sys.exit(main(sys.argv[1:]))
