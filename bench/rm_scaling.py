"""Reward-model accuracy against training pairs, epochs and LoRA layers (what notebook 03's settings cost).

This script trains the reward model of notebook 03 (same SFT backbone from notebook 02, the
``rm`` settings of the params file with ``--set`` overrides) on ``--pairs`` train-split pairs and
scores notebook 03's held-out validation pairs (same seed, ``rm.eval_pairs`` of them), by pair
family and type. It is the validate sweep behind notebook 03's defaults.

With the TRL trainer (``--set trainer=trl``) the held-out pairs are also scored every
``--eval-every`` training pairs; the learning rate decays linearly over the *whole* run, so an
intermediate point is a model seen at that many pairs mid-schedule (a lower bound on what a run
of that size reaches). The cached trainer (the default) takes no callbacks: it is scored once, at
the end. The last point is always a complete run. Training time excludes scoring.

Usage::

    .venv/bin/python bench/rm_scaling.py [--params params/smollm2-135m.yaml] [--pairs 640]
        [--eval-every 160] [--variant NAME] [--seed N] [--set lora_last_layers=8 --set epochs=2 ...]

``--ensemble N`` trains ``N`` reward models that differ only in their seed (LoRA initialisation, score head, pair
order; the seeds ``seed .. seed+N-1``, the same train pairs), the cached trainer's trunk cache built once and shared
(``.cache/bench/rm_scaling/trunk``), and scores each member and the ensemble (mean of the members' margins; the
members' margins divided by their own spread first, ``ensemble_z``) after each member.

``--restyle-eval N`` also scores ``N`` held-out validate style pairs that are all restyles (the same impression in
another radiologist's template). The trained adapter stays in ``.cache/bench/rm_scaling/<variant>/adapter``
(git-ignored), for ``bench/rl_steps.py --rm-adapter``.

Needs notebook 02's adapter (``outputs/<model>/sft``). Appends one variant to
``bench/results/rm_scaling.json`` (machine description, settings, the curve), rewritten after
every evaluation so partial results survive.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".cache" / "bench" / "rm_scaling"  # each variant's adapter: <variant>/adapter (--rm-adapter of rl_steps.py)
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sft_throughput import TimedPoints, calibrate, machine, stage_overrides  # noqa: E402

from radimpress_lib import data  # noqa: E402
from radimpress_lib.clinical import style  # noqa: E402
from radimpress_lib.core import config, paths, seeding
from radimpress_lib.llm import checkpoints, retrieval
from radimpress_lib.train import reward


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(paths.portable_text(json.dumps(doc, indent=1)), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "smollm2-135m.yaml"))
    ap.add_argument("--pairs", type=int, default=640, help="train pairs (half style, half factual)")
    ap.add_argument("--eval-every", type=int, default=160, help="score the held-out pairs every N train pairs")
    ap.add_argument("--variant", default=None, help="name of this run in the JSON (default: pairs and settings)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the rm stage config (YAML value), e.g. lora_last_layers=8")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the train pairs and the score head (default run.seed); the held-out pairs stay "
                         "notebook 03's (run.seed + 1)")
    ap.add_argument("--restyle-eval", type=int, default=0,
                    help="also score this many held-out validate style pairs that are all restyles (the impression "
                         "rewritten in another radiologist's template), the template sensitivity a policy can game")
    ap.add_argument("--ensemble", type=int, default=1,
                    help="train this many reward models (seeds seed .. seed+N-1, cached trainer) and score their "
                         "mean margin after each member")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rm_scaling.json"))
    args = ap.parse_args(argv)

    cfg = config.load_params(args.params)
    overrides = stage_overrides(args.set, cfg.rm, "rm")
    rm_cfg = type(cfg.rm).model_validate({**cfg.rm.model_dump(), **overrides})
    if args.eval_every % rm_cfg.per_device_batch:
        raise SystemExit(f"--eval-every {args.eval_every} must be a multiple of rm.per_device_batch "
                         f"{rm_cfg.per_device_batch}")
    seed = cfg.run.seed if args.seed is None else args.seed
    variant = args.variant or f"pairs{args.pairs}" + "".join(f"_{k}={v}" for k, v in overrides.items()) + (
        f"_seed{seed}" if args.seed is not None else "") + (f"_ensemble{args.ensemble}" if args.ensemble > 1 else "")
    if args.ensemble > 1:
        if rm_cfg.trainer != "cached":
            raise SystemExit("--ensemble needs the cached trainer (one trunk cache shared by the members)")
        rm_cfg = rm_cfg.model_copy(update={"cache_dir": rm_cfg.cache_dir or str(WORK / "trunk")})
    out = Path(args.out)
    doc = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"benchmark": "rm_scaling", "variants": {}}
    doc["note"] = __doc__.split("\n\n")[1]
    doc["machine"] = machine()

    seeding.seed_everything(seed)
    dsd, load_info = data.load_data(cfg)
    # As notebook 03: prompts carry the SFT model's context; groups and pairs from the same seeds.
    train = retrieval.with_prompt_context(cfg, dsd["train"], dsd["train"])
    validate = retrieval.with_prompt_context(cfg, dsd["validate"], dsd["train"])
    style_model, _ = style.fit_for_run(train, cfg)
    sft_model, tokenizer, sft_info = checkpoints.load_finetuned(cfg, padding_side="right")
    train_pairs, train_info = reward.build_pairs(train, style_model, args.pairs, seed, "train",
                                                 factual_mix=rm_cfg.factual_mix, restyle_share=rm_cfg.restyle_share)
    eval_pairs, eval_info = reward.build_pairs(validate, style_model, rm_cfg.eval_pairs, cfg.run.seed + 1,
                                               "validate")
    view = rm_cfg.prompt_similar
    restyle_pairs: list = []
    if args.restyle_eval:
        restyle_pairs, _ = reward.build_style_pairs(validate, style_model.assign(validate), style_model,
                                                    args.restyle_eval, cfg.run.seed + 1, "style_pairs:validate",
                                                    restyle_share=1.0)
        restyle_pairs, _ = reward.fit_pairs_to_length(restyle_pairs, tokenizer, rm_cfg.max_length, view)
    train_pairs, train_fit = reward.fit_pairs_to_length(train_pairs, tokenizer, rm_cfg.max_length, view)
    eval_pairs, eval_fit = reward.fit_pairs_to_length(eval_pairs, tokenizer, rm_cfg.max_length, view)

    entry: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "params": Path(args.params).name, "settings": rm_cfg.model_dump(), "overrides": overrides, "seed": seed,
        "train_pairs": {"n": len(train_pairs), **train_info, "fit": train_fit},
        "eval_pairs": {"n": len(eval_pairs), **eval_info, "fit": eval_fit},
        "sft_adapter": str(sft_info.get("adapter")), "sampler": reward.LENGTH_GROUPED["train_sampling_strategy"],
        "calib_gflops_before": calibrate(), "curve": [],
        "note": "cached trainer: scored once, after the last step" if rm_cfg.trainer == "cached" else None,
    }
    doc["variants"][variant] = entry

    def score(model) -> tuple[Any, dict[str, Any]]:
        """The held-out margins and their accuracy (and the restyle pairs' with ``--restyle-eval``)."""
        margins = reward.score_held_out(model, tokenizer, eval_pairs, rm_cfg)  # as notebook 03
        out = _accuracy(margins)
        if restyle_pairs:
            restyled = reward.score_held_out(model, tokenizer, restyle_pairs, rm_cfg)
            out["restyle_eval"] = {"n": len(restyled), "accuracy": float((restyled["margin"] > 0).mean())}
        return margins, out

    def on_point(model, step: int, train_s: float) -> None:
        seen = step * rm_cfg.per_device_batch
        _, scores = score(model)
        entry["curve"].append({"train_pairs_seen": seen, "step": step, "train_time_s": round(train_s, 1), **scores})
        s = scores["summary"]
        print(f"[rm_scaling] {variant}: {seen} pairs, step {step}, {train_s:.0f}s train -> "
              f"factual {s['factual_pair_acc']:.3f} style {s['style_pair_acc']:.3f}"
              + (f" restyles {scores['restyle_eval']['accuracy']:.3f}" if "restyle_eval" in scores else ""), flush=True)
        _write(out, doc)

    if args.ensemble > 1:
        return _ensemble(args, out, doc, entry, rm_cfg, cfg, tokenizer, train_pairs, score, seed, variant)
    every_steps = args.eval_every // rm_cfg.per_device_batch
    points = TimedPoints(set(range(every_steps, len(train_pairs) // rm_cfg.per_device_batch + 1, every_steps)),
                         on_point, at_end=True)
    model, result = reward.train_reward_model(sft_model, tokenizer, train_pairs, rm_cfg,
                                              WORK / variant, seed,
                                              callbacks=[points])
    if not entry["curve"]:  # the cached trainer calls no callbacks: score the finished model once
        on_point(model, result.global_step, result.wall_time_s)
    entry["result"] = {k: v for k, v in result.to_dict().items() if k not in ("settings", "adapter_dir")}
    entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write(out, doc)
    return 0


def _accuracy(margins: Any) -> dict[str, Any]:
    """Held-out pair accuracy: by family (``summary``) and by family and pair type (``by_type``)."""
    return {"summary": reward.accuracy_summary(margins),
            "by_type": reward.pairwise_accuracy(margins).to_dict(orient="records")}


def _ensemble(args: argparse.Namespace, out: Path, doc: dict[str, Any], entry: dict[str, Any], rm_cfg: Any,
              cfg: Any, tokenizer: Any, train_pairs: list, score: Any, seed: int, variant: str) -> int:
    """``--ensemble N``: members with seeds ``seed + i`` on the same pairs; each member's held-out accuracy (``score``,
    as a single run's) and the ensemble's after every member."""
    margins = []
    entry["members"] = []
    for i in range(args.ensemble):
        member_seed = seed + i
        model, _, _ = checkpoints.load_finetuned(cfg, padding_side="right")
        seeding.seed_everything(member_seed)
        model, result = reward.train_reward_model(model, tokenizer, train_pairs, rm_cfg, WORK / variant /
                                                  str(member_seed), member_seed)
        t0 = time.perf_counter()
        scores, scored = score(model)
        score_s = time.perf_counter() - t0
        margins.append(scores["margin"].to_numpy())
        mean = scores.assign(margin=np.mean(margins, axis=0))
        z = scores.assign(margin=np.mean([m / m.std() for m in margins], axis=0))
        entry["members"].append({
            "seed": member_seed, "train_s": round(result.wall_time_s, 1), "cache_build_s": result.settings.get(
                "cache_build_s"), "score_s": round(score_s, 1), **scored,
            "ensemble": {"members": i + 1, **_accuracy(mean)},
            "ensemble_z": {"members": i + 1, "summary": reward.accuracy_summary(z)}})
        s, e = entry["members"][-1]["summary"], entry["members"][-1]["ensemble"]["summary"]
        print(f"[rm_scaling] {variant}: member seed {member_seed} factual {s['factual_pair_acc']:.3f} style "
              f"{s['style_pair_acc']:.3f}; ensemble of {i + 1}: factual {e['factual_pair_acc']:.3f} style "
              f"{e['style_pair_acc']:.3f}", flush=True)
        _write(out, doc)
        del model
    entry["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    _write(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
