"""Generation speed on CPU: batched (left-padded, length-sorted) vs one-by-one decoding.

Decodes impressions for the first 32 reports of the *validate* split
(``opi-benchmark/validate.jsonl``; findings = ``inputs``), greedy,
``gen.max_new_tokens=128``, with SmolLM2-135M-Instruct in two variants:

* ``base``: the instruct model as shipped. It writes long answers (often up to the token
  limit), so this is the decode-heavy worst case;
* ``quick-sft``: the same model after a short LoRA fine-tune with
  :func:`radimpress_lib.train.sft.train_sft` on the first ``--sft-examples`` (default 256)
  *train* reports (one epoch), merged into the weights: it answers with impression-length
  outputs and stops, as the fine-tuned models of the pipeline do.

For each variant: one-by-one (``gen.batch_size=1``) and batched (``--batch-sizes``,
default 8, 16, 32) reports/s, the speed-up of the best batch size, how many batched
predictions equal the one-by-one ones, and the estimated time to decode all 343 test
reports at the best batched rate (only the *count* of test reports is used; no test
report is read). A 1-second fp32 matmul calibration before each run shows how much CPU
the process actually got (the machine may be shared).

Usage::

    .venv/bin/python bench/generation.py [--data-dir DIR] [--n 32] [--variants base quick-sft]

Writes ``bench/results/generation.json`` (rewritten after every run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import datasets  # noqa: E402
from sft_throughput import calibrate, machine  # noqa: E402

from radimpress_lib.data import resolve_data_dir  # noqa: E402
from radimpress_lib.llm import checkpoints, models
from radimpress_lib.llm.generation import GenerationStageConfig, generate_impressions  # noqa: E402
from radimpress_lib.train import sft  # noqa: E402

N_TEST_REPORTS = 343


def load_records(data_dir: str | None, n: int) -> tuple[list[dict[str, Any]], str]:
    path = resolve_data_dir(data_dir) / "opi-benchmark" / "validate.jsonl"
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if len(records) == n:
                break
            row = json.loads(line)
            records.append({"report_id": str(row["idx"]), "findings": row["inputs"], "impression": row["target"],
                            "source": f"{path.name}:{line_no}"})
    return records, path.name


def quick_sft_adapter(data_dir: str | None, n: int, out_dir: Path, seed: int,
                      threads: int | None) -> tuple[str, dict[str, Any]]:
    """LoRA-tune SmolLM2 on the first ``n`` train reports for one epoch; returns the adapter folder."""
    path = resolve_data_dir(data_dir) / "opi-benchmark" / "train.jsonl"
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if len(records) == n:
                break
            row = json.loads(line)
            records.append({"report_id": str(row["idx"]), "findings": row["inputs"], "impression": row["target"],
                            "source": f"{path.name}:{line_no}"})
    model, tok, _ = models.load_model_and_tokenizer("smollm2-135m", padding_side="right")
    cfg = sft.SFTStageConfig(epochs=1, per_device_batch=8, learning_rate=5e-4, logging_steps=8,
                             save_steps=10_000, num_threads=threads)
    res = sft.train_sft(model, tok, datasets.Dataset.from_list(records), None, cfg, out_dir, seed=seed,
                        log=lambda s: print("   ", s, flush=True))
    return res.final_dir, {"train_examples": n, "steps": res.global_step, "final_loss": res.final_train_loss,
                           "train_tokens_per_s": res.tokens_per_s, "wall_s": res.wall_time_s}


def bench_variant(name: str, model: Any, tok: Any, records: list[dict[str, Any]], args: argparse.Namespace,
                  model_cfg: dict[str, Any], report: dict[str, Any], out: Path) -> None:
    entry: dict[str, Any] = {"model_config": model_cfg, "runs": []}
    report["variants"][name] = entry

    def run(batch: int) -> list[str]:
        cfg = GenerationStageConfig(batch_size=batch, max_new_tokens=args.max_new_tokens,
                                    log_every=max(1, 8 // batch))
        models.configure_cpu_threads(args.threads)
        load, calib = os.getloadavg()[0], calibrate()
        print(f"[{name}] batch {batch} (calibration {calib:.0f} GFLOP/s, load {load:.2f})", flush=True)
        res = generate_impressions(model, tok, records, cfg, model_name="smollm2-135m", model_config=model_cfg,
                                   log=lambda s: print("   ", s, flush=True))
        fig = {"batch_size": batch, **res.summary(), "calib_gflops_before": calib, "loadavg_1m_before": load,
               "mean_new_tokens": sum(p["n_new_tokens"] for p in res.predictions) / len(res.predictions)}
        fig.pop("settings", None)
        entry["runs"].append(fig)
        out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        return [p["prediction"] for p in res.predictions]

    single_preds = run(1)
    batched_preds = {b: run(b) for b in args.batch_sizes}
    rates = {r["batch_size"]: r["reports_per_s"] for r in entry["runs"]}
    best = max(args.batch_sizes, key=lambda b: rates[b])
    entry["summary"] = {
        "one_by_one_reports_per_s": rates[1],
        "batched_reports_per_s": {str(b): rates[b] for b in args.batch_sizes},
        "best_batch_size": best,
        "speedup_best_batched_vs_one_by_one": rates[best] / rates[1],
        "identical_to_one_by_one": {
            str(b): sum(a == c for a, c in zip(p, single_preds)) for b, p in batched_preds.items()
        },
        "estimated_test_split_minutes": N_TEST_REPORTS / rates[best] / 60,
    }
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--variants", nargs="+", default=["base", "quick-sft"], choices=["base", "quick-sft"])
    ap.add_argument("--sft-examples", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "generation.json"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: physical cores); 1 gives stable figures on a busy shared CPU")
    args = ap.parse_args(argv)

    if args.threads:  # radimpress_lib.llm.models resets torch threads from OMP_NUM_THREADS when loading
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    threads = models.configure_cpu_threads(args.threads)
    records, data_file = load_records(args.data_dir, args.n)
    report: dict[str, Any] = {
        "benchmark": "generation",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "settings": {"model": "smollm2-135m", "n_reports": len(records), "data_file": data_file,
                     "max_new_tokens": args.max_new_tokens, "decoding": "greedy", "threads": threads,
                     "n_test_reports_for_estimate": N_TEST_REPORTS},
        "note": "reports_per_s = reports / wall time of generate_impressions (prefill + decode); "
                "estimated_test_split_minutes = 343 / best batched reports_per_s / 60",
        "variants": {},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gen_bench_"))
    try:
        for variant in args.variants:
            model, tok, _ = models.load_model_and_tokenizer("smollm2-135m", padding_side="left")
            model_cfg: dict[str, Any] = {"model_name": "smollm2-135m", "variant": variant}
            if variant == "quick-sft":
                print(f"[quick-sft] LoRA fine-tuning on {args.sft_examples} train reports", flush=True)
                adapter, sft_info = quick_sft_adapter(args.data_dir, args.sft_examples, work / "sft", args.seed,
                                                      args.threads)
                model = checkpoints.apply_adapter(model, adapter, merge=True)
                model_cfg["sft"] = sft_info
            bench_variant(variant, model, tok, records, args, model_cfg, report, out)
            del model
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps({k: v.get("summary") for k, v in report["variants"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
