"""Reward-model accuracy against the number of training pairs (what notebook 03's scaling costs).

Notebook 03 trains the reward model on ``rm.train_pairs`` (160 for the default model) so that
01 -> 05 fits the 45-minute CPU budget. This script trains the same reward model (same SFT
backbone from notebook 02, same LoRA/learning-rate settings from the params file) on more
train-split pairs in one run, and scores notebook 03's held-out validation pairs (same seed,
same ``rm.eval_pairs``) every ``--eval-every`` training pairs, by pair family and type.

The learning rate decays linearly over the *whole* run, so an intermediate point is a model
seen at that many pairs mid-schedule, not a separate run that ends there: a lower bound on what
a run of that size reaches. The last point is a complete run. Training time excludes scoring.

Usage::

    .venv/bin/python bench/rm_scaling.py [--params params/smollm2-135m.yaml] [--pairs 640]
        [--eval-every 160] [--variant NAME] [--set rm.lora_last_layers=8 ...]

Needs notebook 02's adapter (``outputs/<model>/sft``). Appends one variant to
``bench/results/rm_scaling.json`` (machine description, settings, the curve), rewritten after
every evaluation so partial results survive.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import yaml  # noqa: E402
from sft_throughput import TimedPoints, calibrate, machine  # noqa: E402

from radimpress_lib import data  # noqa: E402
from radimpress_lib.clinical import style  # noqa: E402
from radimpress_lib.core import config, seeding
from radimpress_lib.llm import checkpoints, retrieval
from radimpress_lib.train import reward


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "smollm2-135m.yaml"))
    ap.add_argument("--pairs", type=int, default=640, help="train pairs (half style, half factual)")
    ap.add_argument("--eval-every", type=int, default=160, help="score the held-out pairs every N train pairs")
    ap.add_argument("--variant", default=None, help="name of this run in the JSON (default: pairs and settings)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override an rm_* param (YAML value), e.g. rm.lora_last_layers=8")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rm_scaling.json"))
    args = ap.parse_args(argv)

    cfg = config.load_params(args.params)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if not key.startswith("rm_"):
            raise SystemExit(f"--set {item}: only rm_* params can be overridden here")
        overrides[key] = yaml.safe_load(value)
    rm_cfg = cfg.rm.model_copy(update=overrides)
    if args.eval_every % rm_cfg.per_device_batch:
        raise SystemExit(f"--eval-every {args.eval_every} must be a multiple of rm.per_device_batch "
                         f"{rm_cfg.per_device_batch}")
    variant = args.variant or f"pairs{args.pairs}" + "".join(f"_{k}={v}" for k, v in overrides.items())
    out = Path(args.out)
    doc = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"benchmark": "rm_scaling", "variants": {}}
    doc["note"] = __doc__.split("\n\n")[1]
    doc["machine"] = machine()

    seeding.seed_everything(cfg.run.seed)
    dsd, load_info = data.load_data(cfg)
    # As notebook 03: prompts carry the SFT model's context; groups and pairs from the same seeds.
    train = retrieval.with_prompt_context(cfg, dsd["train"], dsd["train"])
    validate = retrieval.with_prompt_context(cfg, dsd["validate"], dsd["train"])
    style_model, _ = style.fit_for_run(train, cfg)
    sft_model, tokenizer, sft_info = checkpoints.load_finetuned(cfg, padding_side="right")
    train_pairs, train_info = reward.build_pairs(train, style_model, args.pairs, cfg.run.seed, "train")
    eval_pairs, eval_info = reward.build_pairs(validate, style_model, rm_cfg.eval_pairs, cfg.run.seed + 1,
                                               "validate")
    view = rm_cfg.prompt_similar
    train_pairs, train_fit = reward.fit_pairs_to_length(train_pairs, tokenizer, rm_cfg.max_length, view)
    eval_pairs, eval_fit = reward.fit_pairs_to_length(eval_pairs, tokenizer, rm_cfg.max_length, view)

    entry: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "params": Path(args.params).name, "settings": rm_cfg.model_dump(), "overrides": overrides,
        "train_pairs": {"n": len(train_pairs), **train_info, "fit": train_fit},
        "eval_pairs": {"n": len(eval_pairs), **eval_info, "fit": eval_fit},
        "sft_adapter": str(sft_info.get("adapter")), "sampler": reward.LENGTH_GROUPED["train_sampling_strategy"],
        "calib_gflops_before": calibrate(), "curve": [],
    }
    doc["variants"][variant] = entry

    scorer_batch = 8

    def score(model) -> dict[str, Any]:
        scorer = reward.RewardScorer(model, tokenizer, batch_size=scorer_batch, show_similar=view)
        margins = reward.score_pairs(scorer, eval_pairs)
        return {"summary": reward.accuracy_summary(margins),
                "by_type": reward.pairwise_accuracy(margins).to_dict(orient="records")}

    def on_point(model, step: int, train_s: float) -> None:
        seen = step * rm_cfg.per_device_batch
        scores = score(model)
        entry["curve"].append({"train_pairs_seen": seen, "step": step, "train_time_s": round(train_s, 1), **scores})
        s = scores["summary"]
        print(f"[rm_scaling] {variant}: {seen} pairs, step {step}, {train_s:.0f}s train -> "
              f"factual {s['factual_pair_acc']:.3f} style {s['style_pair_acc']:.3f}", flush=True)
        _write(out, doc)

    every_steps = args.eval_every // rm_cfg.per_device_batch
    points = TimedPoints(set(range(every_steps, len(train_pairs) // rm_cfg.per_device_batch + 1, every_steps)),
                         on_point, at_end=True)
    _, result = reward.train_reward_model(sft_model, tokenizer, train_pairs, rm_cfg,
                                          Path(tempfile.gettempdir()) / f"rm_scaling_{variant}", cfg.run.seed,
                                          callbacks=[points])
    entry["result"] = {k: v for k, v in result.to_dict().items() if k not in ("settings", "adapter_dir")}
    entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
