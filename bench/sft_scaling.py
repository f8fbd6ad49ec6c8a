"""SFT quality against training steps (what notebook 02's ``sft.max_steps`` scaling costs).

Notebook 02 trains ``sft.max_steps`` steps (90 x 8 examples, about a third of an epoch, for the
default model) so that 01 + 02 + 05 fits the 30-minute CPU budget. This script trains the same
SFT (params file settings, retrieval-augmented prompts as in 02) for ``--steps`` steps in one
run, from the base model into a temporary folder (never the run's ``outputs/<model>/sft``), and
decodes ``--val-reports`` validation reports at each ``--eval-at`` step: ROUGE-L, BLEU and label
F1 against the references. With ``--test`` the final model also decodes the test split as
notebook 05 does (reported, never used to choose anything).

The cosine schedule spans the whole run, so an intermediate point is a model seen mid-schedule,
not a run that ends there. Training time excludes decoding.

Usage::

    .venv/bin/python bench/sft_scaling.py [--params params/smollm2-135m.yaml] [--steps 282]
        [--eval-at 90 180] [--val-reports 100] [--test]

Writes ``bench/results/sft_scaling.json``, rewritten after every point.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import datasets  # noqa: E402
from sft_throughput import TimedPoints, calibrate, machine  # noqa: E402

from radimpress_lib import data
from radimpress_lib.core import config
from radimpress_lib.evaluation import metrics
from radimpress_lib.llm import checkpoints, generation, retrieval
from radimpress_lib.train import sft  # noqa: E402


def _scores(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """ROUGE-1/L, BLEU and label F1 with bootstrap CIs (metrics.evaluate_system, no embeddings)."""
    full = metrics.evaluate_system(predictions, references, n_boot=1000, seed=0, embed_model=False)
    keys = ("rouge1", "rougeL", "bleu", "label_f1_micro")
    return {k: full[k] for k in keys} | {f"{k}_ci": full[f"{k}_ci"] for k in keys}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "smollm2-135m.yaml"))
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps (default: one epoch)")
    ap.add_argument("--eval-at", type=int, nargs="*", default=[90, 180], help="intermediate steps to decode at")
    ap.add_argument("--val-reports", type=int, default=100, help="first N validation reports decoded at each point")
    ap.add_argument("--test", action="store_true", help="also decode the test split with the final model")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sft_scaling.json"))
    args = ap.parse_args(argv)

    cfg = config.load_params(args.params)
    dsd, load_info = data.load_data(cfg)
    batch = cfg.sft.per_device_batch * cfg.sft.grad_accum
    steps = args.steps or math.ceil(len(dsd["train"]) / batch)
    sft_cfg = cfg.sft.model_copy(update={"max_steps": steps, "save_steps": 10 * steps, "eval_steps": 0})
    out = Path(args.out)
    doc: dict[str, Any] = {
        "benchmark": "sft_scaling", "note": __doc__.split("\n\n")[1], "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "params": Path(args.params).name,
        "settings": sft_cfg.model_dump(), "train_reports": len(dsd["train"]), "effective_batch": batch,
        "epochs": steps * batch / len(dsd["train"]), "default_steps": cfg.sft.max_steps,
        "calib_gflops_before": calibrate(), "points": [],
    }

    train_ds = datasets.Dataset.from_list(retrieval.with_prompt_context(cfg, dsd["train"], dsd["train"]))
    val = retrieval.with_prompt_context(cfg, list(dsd["validate"])[: args.val_reports], dsd["train"])
    model, tokenizer, _ = checkpoints.load_base_model(cfg, padding_side="right")

    def decode(m, step: int, train_s: float, records=val, split: str = "validate") -> None:
        t = time.perf_counter()
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        result = generation.generate_impressions(m, tokenizer, records, cfg.gen, model_name=f"sft@{step}",
                                                 log=lambda s: None)
        tokenizer.padding_side = side
        preds = [p["prediction"] for p in result.predictions]
        point = {"step": step, "split": split, "n": len(records), "train_time_s": round(train_s, 1),
                 "epochs": step * batch / len(dsd["train"]), "decode_s": round(time.perf_counter() - t, 1),
                 **_scores(preds, [r["impression"] for r in records])}
        doc["points"].append(point)
        print(f"[sft_scaling] step {step} ({point['epochs']:.2f} epochs, {train_s:.0f}s train) {split}: "
              f"ROUGE-L {point['rougeL']:.1f}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=1), encoding="utf-8")

    points = TimedPoints(set(args.eval_at), decode)
    with tempfile.TemporaryDirectory(prefix="sft_scaling_") as tmp:
        result = sft.train_sft(model, tokenizer, train_ds, None, sft_cfg, tmp, cfg.run.seed, callbacks=[points],
                               resume=False)
        trained = result.wall_time_s - points.measuring_s
        final = points.model
        final.eval()
        decode(final, result.global_step, trained)
        if args.test:
            pool = list(dsd["train"]) + list(dsd["validate"])
            decode(final, result.global_step, trained, retrieval.with_prompt_context(cfg, dsd["test"], pool), "test")
    doc["result"] = {"global_step": result.global_step, "final_train_loss": result.final_train_loss,
                     "tokens_per_s": result.tokens_per_s, "train_time_s": round(trained, 1)}
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    out.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
