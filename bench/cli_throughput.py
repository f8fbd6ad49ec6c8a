"""Throughput of the drafting CLI (``radimpress draft``) on the benchmark test split.

The test reports (findings, indication, comparison, as joined by the data loader) are
written to a temporary JSONL file (outside the repository), then drafted by the CLI code
path (:func:`radimpress_lib.apps.cli.run_draft`: streaming reader, batched generation with the
SFT adapter of ``outputs/<model>/sft``, labeler flags, JSONL writer). Reports/s is given
for the drafting loop alone and end to end (including model loading). Drafting only
*reads* the test findings; nothing is trained or tuned on them.

Usage::

    .venv/bin/python bench/cli_throughput.py [--model smollm2-135m] [--limit N] [--batch-size B]

Writes ``bench/results/cli_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft_throughput import calibrate, machine

from radimpress_lib import data
from radimpress_lib.apps import cli
from radimpress_lib.core import config


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="params name")
    ap.add_argument("--limit", type=int, default=None, help="draft only the first N test reports")
    ap.add_argument("--batch-size", type=int, default=None, help="default: draft.batch_size of the params")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "cli_throughput.json"))
    args = ap.parse_args(argv)

    params = config.load_params(config.params_path(args.model))
    dsd, _info = data.load_data(params)
    test = dsd["test"]
    gflops = calibrate()
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "test_reports.jsonl", Path(tmp) / "drafts.jsonl"
        with inp.open("w", encoding="utf-8") as fh:
            for r in test:
                fh.write(json.dumps({k: r[k] for k in ("report_id", "findings", "indication", "comparison",
                                                       "radiologist_id")}) + "\n")
        cli_args = ["draft", str(inp), "-o", str(out), "--model", args.model]
        if args.limit:
            cli_args += ["--limit", str(args.limit)]
        if args.batch_size:
            cli_args += ["--batch-size", str(args.batch_size)]
        t0 = time.perf_counter()
        summary = cli.run_draft(cli.build_parser().parse_args(cli_args))
        total = time.perf_counter() - t0
        rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    n = summary.n_drafted
    result = {
        "what": "radimpress draft on the benchmark test split (SFT adapter, greedy, labeler + graph flags)",
        "model": args.model,
        "adapter": rows[0]["adapter"] if rows else None,
        "n_test_reports": len(test),
        "n_drafted": n,
        "limit": args.limit,
        "batch_size": args.batch_size or params.draft.batch_size,
        "gen_max_new_tokens": params.gen.max_new_tokens,
        "drafting_wall_s": round(summary.wall_time_s, 2),
        "reports_per_s": round(summary.reports_per_s, 3),
        "end_to_end_wall_s": round(total, 2),
        "end_to_end_reports_per_s": round(n / total, 3),
        "n_flagged": summary.n_flagged,
        "flagged_share": round(summary.n_flagged / n, 3) if n else None,
        "flags_by_kind": dict(summary.flags_by_kind),
        "n_not_stopped": sum(not r["stopped"] for r in rows),
        "calibration_gflops": round(gflops, 1),
        "machine": machine(),
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
