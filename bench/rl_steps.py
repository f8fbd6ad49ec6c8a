"""Online RL long enough to move the policy: notebook 04's GRPO (or RLOO) for ``--steps`` optimizer steps, then
the reward it earns on held-out validate prompts against the SFT and DPO models (issue #17).

Notebook 04 runs ``rl.max_steps`` steps (100 since the reference run of 913f08c; 6 before). This benchmark runs the same
trainer (:func:`radimpress_lib.train.rlhf.train_rl`: the reference run's DPO adapter on the SFT model, KL to the SFT
model, reward = reward model + factual - length, ``rl.w_*``) from the same start for ``--steps`` steps, each train
prompt once (``rl.prompts`` = steps x ``rl.prompts_per_step``), into ``.cache/bench/rl_steps/`` (the reference run's
``rl/`` is not touched). Then, on the first ``--eval-reports`` validate reports with their target radiologist's style
slot (as notebook 04's guards), greedy drafts of SFT, DPO (the RL start) and RL, and per draft:

* ``rm_factual``: reward-model score + factual reward (the issue's held-out reward), and ``total`` (minus the
  length penalty, as in training), with paired-bootstrap 95% CIs of RL - SFT and RL - DPO;
* ``hallucinated``: whether the draft asserts a finding its findings do not mention (entity graph, as notebook 05's
  hallucinated-finding rate), mean = share of drafts;
* the length and distinct-impression guards, style accuracy and labeler consistency
  (:func:`radimpress_lib.train.rlhf.validation_guards`);
* the trainer's curves (reward, KL) and seconds per step.

The JSON keeps the first ``--examples`` held-out drafts of each system (what a reward-model exploit looks like).
``--rm-adapter`` trains and scores with another reward model (e.g. one ``bench/rm_scaling.py`` trained).
``--reference-rl`` trains nothing: it scores the reference run's own RL adapter (notebook 04's ``rl/``, its curves from
``rl/result.json``) the same way, so the held-out gain is known for the policy notebook 05 evaluates.
``--set trainer=cached`` runs the cached GRPO trainer (:mod:`radimpress_lib.train.rl_cached`). ``--speed-steps N``
instead trains both trainers (TRL's and the cached one) for ``N`` steps from the same start on the same prompts, in
one process, and writes their seconds per step and ``rl_speedup`` (no evaluation).

Needs the reference run's ``sft/``, ``reward_model/`` and ``dpo/`` adapters (notebooks 02-04).

Usage::

    RADIMPRESS_DATA=... .venv/bin/python bench/rl_steps.py [--steps 100] [--eval-reports 64] [--set FIELD=VALUE]
    RADIMPRESS_DATA=... .venv/bin/python bench/rl_steps.py --reference-rl --out bench/results/rl_reference.json
    RADIMPRESS_DATA=... .venv/bin/python bench/rl_steps.py --speed-steps 12

Writes ``bench/results/rl_steps.json`` (``rl_speed.json`` with ``--speed-steps``).
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sft_throughput import machine, stage_overrides  # noqa: E402

from radimpress_lib import data  # noqa: E402
from radimpress_lib.clinical import graph, style  # noqa: E402
from radimpress_lib.core import artifacts, config, paths  # noqa: E402
from radimpress_lib.evaluation import metrics, style_eval  # noqa: E402
from radimpress_lib.llm import checkpoints, generation, prompting, retrieval  # noqa: E402
from radimpress_lib.train import reward, rlhf  # noqa: E402

CURVE_KEYS = ("reward", "reward_std", "kl", "rewards/reward_model/mean", "rewards/factual/mean",
              "rewards/length/mean", "completions/mean_length")


def paired(a: np.ndarray, b: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """Mean of ``a - b`` with its paired-bootstrap 95% CI and two-sided p (metrics.paired_delta)."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    idx = metrics.bootstrap_indices(len(diff), n_boot, seed)
    ci, p = metrics.paired_delta(float(diff.mean()), diff[idx].mean(axis=1))
    return {"delta": float(diff.mean()), "ci": ci, "p_value": p}


def _setup(cfg: Any, rm_adapter: str | None = None) -> tuple[Any, ...]:
    """Notebook 04's RL start: train / validate records, style model and classifier, reward model (notebook 03's, or
    the adapter at ``rm_adapter``), tokenizer."""
    dsd, _ = data.load_data(cfg)
    train = retrieval.with_prompt_context(cfg, dsd["train"], dsd["train"])
    validate = retrieval.with_prompt_context(cfg, dsd["validate"], dsd["train"])
    style_model, style_clf = style.fit_for_run(train, cfg)
    rm_backbone, _, _ = checkpoints.load_finetuned(cfg, padding_side="right")
    rm_model = reward.load_reward_model(rm_backbone, Path(rm_adapter) if rm_adapter else artifacts.rm_dir(cfg) /
                                        "adapter", seed=cfg.run.seed)
    return train, validate, style_model, style_clf, rm_model


def _rl_start(cfg: Any, rl_cfg: Any, train: Any, style_model: Any, rm_model: Any) -> tuple[Any, ...]:
    """A fresh RL start (the SFT model with the DPO adapter, trainable), its tokenizer, the RL prompts and the
    reward-model scorer."""
    policy_base, tokenizer, _ = checkpoints.load_finetuned(cfg, padding_side="left")
    policy = rlhf.load_trainable_dpo(policy_base, cfg)
    return (policy, tokenizer, *_prompts_and_scorer(cfg, rl_cfg, train, style_model, rm_model, tokenizer))


def _prompts_and_scorer(cfg: Any, rl_cfg: Any, train: Any, style_model: Any, rm_model: Any,
                        tokenizer: Any) -> tuple[Any, ...]:
    """The RL prompts (notebook 04's), their truncation info and the reward-model scorer."""
    prompts, prompt_info = rlhf.rl_prompt_dataset(train, style_model, rl_cfg.prompts, cfg.run.seed, tokenizer,
                                                  rl_cfg.max_prompt_tokens)
    scorer = reward.RewardScorer(rm_model, tokenizer, batch_size=8, show_similar=cfg.rm.prompt_similar)
    return prompts, prompt_info, scorer


def speed(args: argparse.Namespace) -> int:
    """Seconds per GRPO step of TRL's trainer and the cached one, same start, prompts, rewards and settings."""
    base = config.load_params(args.params)
    changed = stage_overrides(args.set, base.rl, "rl")
    changed.pop("trainer", None)
    n = args.speed_steps
    cfg = config.load_params(args.params, {"rl": {"max_steps": n, "prompts": n * base.rl.prompts_per_step, **changed}})
    train, _, style_model, _, rm_model = _setup(cfg)
    runs: dict[str, Any] = {}
    for trainer in ("trl", "cached"):
        rl_cfg = cfg.rl.model_copy(update={"trainer": trainer})
        policy, tokenizer, prompts, _, scorer = _rl_start(cfg, rl_cfg, train, style_model, rm_model)
        t0 = time.perf_counter()
        _, result = rlhf.train_rl(policy, tokenizer, prompts, rlhf.RewardFunctions(scorer, rl_cfg), rl_cfg,
                                  ROOT / ".cache" / "bench" / "rl_speed" / trainer, cfg.run.seed)
        wall = time.perf_counter() - t0
        steps = [h for h in result.log_history if "reward" in h]
        runs[trainer] = {"steps": result.global_step, "wall_s": round(wall, 1),
                         "s_per_step": round(wall / max(1, result.global_step), 2),
                         "completion_tokens_mean": float(np.mean([h["completions/mean_length"] for h in steps])),
                         "reward_mean": float(np.mean([h["reward"] for h in steps]))}
        del policy
    doc = {"what": "seconds per GRPO step (generation, rewards, reference and policy log-probs, update) of rl.trainer "
                   "trl (TRL GRPOTrainer) and cached (radimpress_lib.train.rl_cached), one run, same start and prompts",
           "machine": machine(), "params": args.params, "set": changed, "steps": n,
           "rl_settings": {k: v for k, v in cfg.rl.model_dump().items() if k not in ("guard_length_ratio", "trainer")},
           "runs": runs, "rl_speedup": round(runs["trl"]["s_per_step"] / runs["cached"]["s_per_step"], 2)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(paths.portable_text(json.dumps(doc, indent=1, default=float)), encoding="utf-8")
    print(f"trl {runs['trl']['s_per_step']} s/step, cached {runs['cached']['s_per_step']} s/step: "
          f"speedup {doc['rl_speedup']}x; wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-reports", type=int, default=64)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="an rl field for this run (YAML value), e.g. --set w_length=2.0; repeatable")
    ap.add_argument("--rl-seed", type=int, default=None,
                    help="seed of the RL run (sampling, prompt order); default run.seed. Prompts, pairs and the "
                         "evaluation stay those of run.seed")
    ap.add_argument("--examples", type=int, default=12, help="held-out drafts of SFT, DPO and RL kept in the JSON")
    ap.add_argument("--rm-adapter", default=None,
                    help="reward-model adapter for training and the held-out reward (e.g. one bench/rm_scaling.py "
                         "trained); default notebook 03's")
    ap.add_argument("--reference-rl", action="store_true",
                    help="train nothing: score the reference run's RL adapter (notebook 04's rl/) with its settings")
    ap.add_argument("--speed-steps", type=int, default=0,
                    help="instead: train both trainers (rl.trainer trl and cached) for this many steps from the same "
                         "start on the same prompts and write their seconds per step (no evaluation)")
    ap.add_argument("--out", default=None, help="default: bench/results/rl_steps.json (rl_speed.json with "
                                                "--speed-steps)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(ROOT / "bench" / "results" / ("rl_speed.json" if args.speed_steps else "rl_steps.json"))
    if args.speed_steps:
        return speed(args)
    base = config.load_params(args.params)
    changed = stage_overrides(args.set, base.rl, "rl")
    if args.reference_rl and (changed or args.rm_adapter or args.rl_seed is not None):
        print("--reference-rl scores notebook 04's adapter with the params' settings: no --set, --rm-adapter or "
              "--rl-seed")
        return 2
    cfg = base if args.reference_rl else config.load_params(
        args.params, {"rl": {"max_steps": args.steps, **changed, "prompts": args.steps * base.rl.prompts_per_step}})
    needed = [("sft", artifacts.sft_dir(cfg)), ("reward model", artifacts.rm_dir(cfg)), ("dpo", artifacts.dpo_dir(cfg))]
    for stage, folder in needed + ([("rl", artifacts.rl_dir(cfg))] if args.reference_rl else []):
        if not (folder / "adapter").is_dir():
            print(f"no {stage} adapter at {folder}/adapter: run notebooks 02-04 first")
            return 2
    work = ROOT / ".cache" / "bench" / "rl_steps"
    train, validate, style_model, style_clf, rm_model = _setup(cfg, args.rm_adapter)
    if args.reference_rl:  # the trained policy itself: no trainable start to build
        rl_model, tokenizer, _ = rlhf.load_policy(cfg, "rl")
        policy, (prompts, prompt_info, scorer) = None, _prompts_and_scorer(cfg, cfg.rl, train, style_model, rm_model,
                                                                           tokenizer)
    else:
        policy, tokenizer, prompts, prompt_info, scorer = _rl_start(cfg, cfg.rl, train, style_model, rm_model)
    rewards = rlhf.RewardFunctions(scorer, cfg.rl)
    rl_seed = cfg.run.seed if args.rl_seed is None else args.rl_seed
    if args.reference_rl:
        result = rlhf.StageResult(**json.loads((artifacts.rl_dir(cfg) / "result.json").read_text(encoding="utf-8")))
        train_s = float(result.wall_time_s)
    else:
        t0 = time.perf_counter()
        rl_model, result = rlhf.train_rl(policy, tokenizer, prompts, rewards, cfg.rl, work / "rl", rl_seed)
        train_s = time.perf_counter() - t0

    records = validate[: args.eval_reports]
    targets, slots, _ = style_eval.test_style_slots(style_model, records, train, cfg.style.fewshot_k, cfg.run.seed)
    tokenizer.padding_side = "left"
    decoded = {"rl": generation.generate_impressions(rl_model, tokenizer, records, cfg.gen, model_name="fine_rl",
                                                     styles=slots, log=lambda s: None)}
    del rl_model, policy
    for stage in ("sft", "dpo"):
        if stage == "sft":
            model, _, _ = checkpoints.load_finetuned(cfg, padding_side="left")
        else:
            model, _, _ = rlhf.load_policy(cfg, "dpo")
        decoded[stage] = generation.generate_impressions(model, tokenizer, records, cfg.gen, model_name=stage,
                                                         styles=slots, log=lambda s: None)
        del model
    messages = [prompting.build_messages(r, s) for r, s in zip(records, slots)]
    findings = [r["findings"] for r in records]
    references = [r["impression"] for r in records]
    w_rm, w_f, w_len = rewards.weights
    per: dict[str, dict[str, np.ndarray]] = {}
    for stage, res in decoded.items():
        texts = [p["prediction"] for p in res.predictions]
        rm = np.asarray(rewards.reward_model(messages, texts), dtype=float)
        fact = np.asarray(rewards.factual(messages, texts, findings), dtype=float)
        length = np.asarray(rewards.length(messages, texts, references), dtype=float)
        hallucinated = np.asarray([bool(graph.compare_to_findings(graph.extract_graph_cached(t), graph.extract_graph_cached(
            f))["hallucinated"]) for t, f in zip(texts, findings)], dtype=float)
        per[stage] = {"reward_model": rm, "factual": fact, "length": length,
                      "rm_factual": w_rm * rm + w_f * fact, "total": w_rm * rm + w_f * fact + w_len * length,
                      "hallucinated": hallucinated}
    guards = rlhf.validation_guards({s: decoded[s] for s in ("sft", "dpo", "rl")}, records, targets, style_clf, cfg.rl)
    held_out = {stage: {k: float(v.mean()) for k, v in parts.items()} for stage, parts in per.items()}
    style_table = style_eval.style_evaluation(style_clf, {s: [p["prediction"] for p in r.predictions]
                                                          for s, r in decoded.items()}, targets, references,
                                              n_boot=args.n_boot, seed=cfg.run.seed)
    deltas = {f"rl_vs_{other}": {k: paired(per["rl"][k], per[other][k], args.n_boot, cfg.run.seed)
                                 for k in ("rm_factual", "total", "reward_model", "factual", "hallucinated")}
              for other in ("sft", "dpo")}
    history = result.log_history
    curves = [{"step": h.get("step")} | {k: h[k] for k in CURVE_KEYS if k in h} for h in history if "reward" in h]
    doc = {"what": "online RL for --steps steps from notebook 04's start; held-out validate reward vs SFT and DPO",
           "machine": machine(), "params": args.params, "set": changed, "algorithm": cfg.rl.algorithm, "steps": result.global_step,
           "prompts": len(prompts), "prompt_info": prompt_info, "train_s": round(train_s, 1),
           "s_per_step": round(train_s / max(1, result.global_step), 2),
           "rl_settings": {k: v for k, v in cfg.rl.model_dump().items() if k not in ("guard_length_ratio",)},
           "trainer": cfg.rl.trainer, "rl_seed": rl_seed,
           "rl_adapter": "notebook 04 (reference run)" if args.reference_rl else "trained by this run",
           "reward_model": paths.portable_text(args.rm_adapter) if args.rm_adapter else "notebook 03",
           "eval_reports": len(records), "held_out_mean": held_out, "paired": deltas,
           "guards_validate": {s: {k: (bool(v) if isinstance(v, (bool, np.bool_)) else float(v))
                                   for k, v in row.items()} for s, row in guards.iterrows()},
           "style_validate": {s: {k: v for k, v in row.items() if k in (
               "style_accuracy", "style_accuracy_ci", "style_accuracy_template", "style_accuracy_no_template",
               "normal_statement_added_rate")} for s, row in style_table.items()},
           "examples": [{"target": t, "reference": r["impression"]} | {stage: res.predictions[i]["prediction"]
                                                                        for stage, res in decoded.items()}
                        for i, (t, r) in enumerate(zip(targets[:args.examples], records[:args.examples]))],
           "kl_last10": float(np.mean([c["kl"] for c in curves[-10:] if "kl" in c])) if curves else None,
           "curves": curves}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(paths.portable_text(json.dumps(doc, indent=1, default=float)), encoding="utf-8")
    print(f"{cfg.rl.algorithm}: {result.global_step} steps in {train_s:.0f} s; KL (last 10 steps) {doc['kl_last10']}")
    for stage, m in held_out.items():
        print(f"  {stage:4s} rm+factual {m['rm_factual']:.3f}  total {m['total']:.3f}  "
              f"length ratio {doc['guards_validate'][stage]['length_ratio']:.2f}  "
              f"style {doc['guards_validate'][stage]['style_accuracy']:.2f}  hallucinated {m['hallucinated']:.3f}")
    for name, d in deltas.items():
        r = d["rm_factual"]
        print(f"  {name}: rm+factual {r['delta']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] p = {r['p_value']:.3f}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
