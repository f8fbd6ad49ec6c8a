"""Training speed and equal-time quality: the cached top-layer trainer vs today's TRL path (SFT, RM, DPO).

"Today's path" is the recipe notebooks 02-04 ran before issue 17, pinned here (:data:`OLD`): TRL
``SFTTrainer`` with LoRA q,k,v,o on all 30 layers for 90 steps of 8; TRL ``RewardTrainer`` on 256
pairs; TRL ``DPOTrainer`` on 96 pairs. "The new path" is :mod:`radimpress_lib.train.cached` with the
params file's settings (``--sft-*`` etc. override them). For each stage, in one process, on the
same data:

1. **numerics** (once): cached trunk + head == the plain model (max |logit difference| on SFT and
   prefix-shared pair rows, fp32 and fp16 storage), DPO reference log-probs of the cache pass == plain
   forward, adapter round trip through ``checkpoints.apply_adapter``.
2. **throughput** (``--rounds`` interleaved rounds, old then new, each with a 0.5-second matmul
   calibration and the load average): the old trainer on a small fixed subset for a few steps vs the
   new path on the same subset, split into the one-time trunk cache (per example) and the training
   steps (per example and epoch). The new path's examples/s for ``E`` epochs is ``E / (cache + E * head)``.
3. **equal time**: the old stage as notebooks 02-04 ran it, then the new path with the same number of
   seconds, *cache build included* (``time_budget_s`` = the old run's seconds; the learning-rate schedule
   advances with elapsed time), caching ``n`` distinct examples chosen so that ``--*-epochs`` epochs fit.
   Quality, measured the same way for both on the models loaded back from their saved adapters:

   * SFT: validate ROUGE-L (and ROUGE-1, BLEU, label F1) of greedy drafts of the first ``--val-reports``
     validate reports, the paired-bootstrap difference new - old, and the validate completion loss;
   * RM: pairwise accuracy by pair family on notebook 03's held-out validate pairs (``build_pairs`` with
     seed+1; ``reward.score_pairs_rows``);
   * DPO: implicit-reward accuracy on the same held-out validate pairs
     (``[log pi(c) - log ref(c)] - [log pi(r) - log ref(r)] > 0``, ref = the SFT model).

   RM and DPO start from the SFT model of the old equal-time run (today's notebook 02), for both paths.
4. **levers** (``--sft-lever name=key:value,...``, optional): more equal-time new-path SFT runs with other
   settings (top layers, LoRA targets, full fine-tuning, learning rate, epochs), scored the same way.

Speed-ups (``sft_speedup``, ``rm_speedup``, ``dpo_speedup``) are examples/s of the new path in its
equal-time run (examples seen, repeats counted, over its whole time including the trunk cache) over
today's examples/s in its run; ``throughput`` holds the interleaved per-round figures as a cross-check.
Seconds are this process's CPU seconds with 1 torch thread by default (``--clock process --threads 1``):
robust when another job shares the 2 cores; on an idle machine with 2 threads, wall seconds are
~0.44x these (today's 90 SFT steps: 593 s wall there vs ~1,356 process-s here).

Usage::

    RADIMPRESS_DATA=... .venv/bin/python bench/train_speed.py [--quick] [--stages sft rm dpo]

Writes ``bench/results/train_speed[_quick].json`` (rewritten after every step, so partial results
survive). The test split is read only by the leakage guard of ``data.load_data``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import datasets  # noqa: E402
import torch  # noqa: E402
from sft_throughput import calibrate, machine  # noqa: E402

from radimpress_lib import data  # noqa: E402
from radimpress_lib.clinical import style  # noqa: E402
from radimpress_lib.core import config, paths, seeding  # noqa: E402
from radimpress_lib.evaluation import metrics  # noqa: E402
from radimpress_lib.llm import checkpoints, generation, prompting, retrieval, trunk  # noqa: E402
from radimpress_lib.train import cached, reward, rlhf, sft  # noqa: E402

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


def portable(text: str) -> str:
    """``text`` without this machine's absolute paths (:func:`paths.portable_text`), the temp dir as ``<tmp>``."""
    return re.sub(re.escape(tempfile.gettempdir()) + r"/train_speed_[^/\"]+", "<tmp>", paths.portable_text(text))


#: Today's recipe (before issue 17): what notebooks 02-04 ran, with TRL.
OLD: dict[str, dict[str, Any]] = {
    "sft": {"trainer": "trl", "lora_targets": QKVO, "learning_rate": 5e-4, "max_steps": 90, "per_device_batch": 8,
            "grad_accum": 1, "lr_scheduler": "cosine", "warmup_ratio": 0.03, "save_steps": 100_000,
            "logging_steps": 10, "method": "lora", "lora_r": 16, "lora_alpha": 32},
    "rm": {"trainer": "trl", "train_pairs": 256, "learning_rate": 3e-3, "lora_last_layers": 4, "epochs": 1.0,
           "max_steps": -1, "per_device_batch": 4, "lora_r": 8, "lora_alpha": 16, "logging_steps": 8},
    "dpo": {"trainer": "trl", "train_pairs": 96, "learning_rate": 5e-4, "lora_last_layers": 8, "epochs": 1.0,
            "max_steps": -1, "per_device_batch": 8, "lora_r": 8, "lora_alpha": 16, "beta": 0.1, "logging_steps": 2},
}


def _quiet(_: str) -> None:
    pass


def _env() -> dict[str, Any]:
    return {"gflops": round(calibrate(0.5), 1), "loadavg": [round(x, 2) for x in os.getloadavg()],
            "time": time.strftime("%H:%M:%S")}


def _parse_lever(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, rest = spec.partition("=")
    out: dict[str, Any] = {}
    for kv in filter(None, rest.split(",")):
        k, _, v = kv.partition(":")
        if k == "lora_targets":
            out[k] = v if v == "all-linear" else v.split("+")
            continue
        for cast in (int, float):
            try:
                out[k] = cast(v)
                break
            except ValueError:
                continue
        else:
            out[k] = None if v == "null" else v
    return name, out


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.clock = time.process_time if args.clock == "process" else time.perf_counter
        self.cfg = config.load_params(args.params)
        self.seed = self.cfg.run.seed
        seeding.seed_everything(self.seed)
        dsd, _ = data.load_data(self.cfg)
        self.train = retrieval.with_prompt_context(self.cfg, dsd["train"], dsd["train"])
        self.validate = retrieval.with_prompt_context(self.cfg, dsd["validate"], dsd["train"])
        self.tmp = Path(tempfile.mkdtemp(prefix="train_speed_"))
        self.out = Path(args.out)
        self.doc: dict[str, Any] = {
            "benchmark": "train_speed", "quick": args.quick, "machine": machine(), "params": Path(args.params).name,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args), "clock": args.clock,
            "old_recipe": OLD, "new_settings": {}, "numerics": {}, "throughput": {}, "equal_time": {}, "runs": {},
            "levers": {}, "note": __doc__.split("\n\n")[0],
        }
        self._style = None
        self._sft_dir: Path | None = Path(args.sft_adapter) if args.sft_adapter else None
        self._tok = None

    # ------------------------------------------------------------------ helpers
    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".json.tmp")
        tmp.write_text(portable(json.dumps(self.doc, indent=1, default=str)), encoding="utf-8")
        tmp.replace(self.out)

    def log(self, line: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {line}", flush=True)

    def timed(self, fn, *a, **kw):
        t, w = self.clock(), time.perf_counter()
        out = fn(*a, **kw)
        return out, self.clock() - t, time.perf_counter() - w

    def base(self, side: str = "right"):
        model, tok, _ = checkpoints.load_base_model(self.cfg, padding_side=side)
        return model, tok

    def sft_model(self, side: str = "right"):
        """The old equal-time run's SFT model, merged (the base model when SFT was not run)."""
        model, tok = self.base(side)
        if self._sft_dir is not None:
            model = checkpoints.apply_adapter(model, self._sft_dir, merge=True)
        model.eval()
        return model, tok

    def tokenizer(self):
        if self._tok is None:
            _, self._tok = self.base()
        return self._tok

    def style_model(self):
        if self._style is None:
            self._style, _ = style.fit_for_run(self.train, self.cfg, classifier=False)
        return self._style

    def plan(self, n_avail: int, budget: float, cache_s: float, head_s: float, epochs: float) -> tuple[int, float]:
        """Distinct examples ``n`` so that ``n * (cache + epochs * head)`` fits ``budget`` (all of them, with more
        epochs, when they fit). The run itself stops at the budget, so the budget is used, not the plan."""
        n = int(budget / (cache_s + epochs * head_s))
        if n >= n_avail:
            n = n_avail
            epochs = max(epochs, (budget - n * cache_s) / (n * head_s))
        return max(n, self.args.min_examples), epochs

    @staticmethod
    def _estimate(rounds: list[dict[str, Any]]) -> tuple[float, float]:
        return (statistics.median(x["new_cache_s_per_ex"] for x in rounds),
                statistics.median(x["new_head_s_per_ex_epoch"] for x in rounds))

    # ------------------------------------------------------------------ numerics
    def run_numerics(self) -> None:
        model, tok = self.base()
        recs = self.train[:3]
        ds, _ = prompting.build_sft_dataset(tok, recs, self.cfg.sft.max_seq_len)
        rows = trunk.sft_rows(ds["input_ids"], ds["labels"])
        N = trunk.n_layers(model)
        out: dict[str, Any] = {}
        for L in (4, 8):
            out[f"sft_rows_top{L}"] = trunk.check_equivalence(model, rows, N - L, pad_id=tok.pad_token_id,
                                                               dtypes=(torch.float32, torch.float16))
        pairs, _ = reward.build_pairs(self.train[:200], self.style_model(), 4, self.seed, "train")
        prow = rlhf.dpo_rows(tok, pairs)
        out["pair_rows_top8"] = trunk.check_equivalence(model, prow, N - 8, pad_id=tok.pad_token_id,
                                                        dtypes=(torch.float32, torch.float16))
        cache = trunk.build_trunk_cache(model, prow, N - 8, ref_logps=True, pad_id=tok.pad_token_id, log=_quiet)
        plain = []
        for r in prow:  # each answer as its own plain sequence through the HF model
            v = []
            for br in (1, 2):
                keep = [j for j, x in enumerate(r.branch) if x in (0, br)]
                ids = torch.tensor([[r.input_ids[j] for j in keep]])
                with torch.no_grad():
                    lp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
                pos = {j: k for k, j in enumerate(keep)}
                v.append(float(sum(lp[pos[s], t] for s, t, b in zip(r.label_src, r.label_tgt, r.label_branch)
                                   if b == br)))
            plain.append(v)
        out["dpo_ref_logps_maxdiff"] = float((cache.extras["ref_logps"] - torch.tensor(plain, dtype=torch.float64))
                                             .abs().max())
        with tempfile.TemporaryDirectory() as d:
            s = cached.sft_settings(self.cfg.sft.model_copy(update={"max_steps": 3, "per_device_batch": 2,
                                                                     "warmup_ratio": 0.0, "learning_rate": 1e-2}),
                                    self.seed)
            run = cached.train_sft_cached(model, tok, ds["input_ids"], ds["labels"], s, d, log=_quiet)
            ids = torch.tensor([ds["input_ids"][0]])
            with torch.no_grad():
                a = run.model(input_ids=ids).logits
            fresh, _ = self.base()
            with torch.no_grad():
                b0 = fresh(input_ids=ids).logits
            merged = checkpoints.apply_adapter(fresh, run.result.final_dir)
            with torch.no_grad():
                b = merged(input_ids=ids).logits
            out["adapter_roundtrip_maxdiff"] = float((a - b).abs().max())
            out["adapter_changed_logits_by"] = float((b - b0).abs().max())
            out["adapter_layers_to_transform"] = json.loads(
                (Path(run.result.final_dir) / "adapter_config.json").read_text()).get("layers_to_transform")
        self.doc["numerics"] = out
        self.log(f"numerics: {json.dumps(out)}")
        self.write()

    # ------------------------------------------------------------------ SFT
    def sft_quality(self, model, tok, name: str) -> dict[str, Any]:
        records = self.validate[: self.args.val_reports]
        t = time.perf_counter()
        tok.padding_side = "left"
        res = generation.generate_impressions(model, tok, records, self.cfg.gen, model_name=name, log=_quiet)
        tok.padding_side = "right"
        preds = [p["prediction"] for p in res.predictions]
        full = metrics.evaluate_system(preds, [r["impression"] for r in records], n_boot=1000, seed=0,
                                       embed_model=False, return_per_example=True)
        ds, _ = prompting.build_sft_dataset(tok, records, self.cfg.sft.max_seq_len)
        vcache = trunk.build_trunk_cache(model, trunk.sft_rows(ds["input_ids"], ds["labels"]), 0, log=_quiet)
        keys = ("rougeL", "rouge1", "bleu", "label_f1_micro")
        return {**{k: full[k] for k in keys}, "rougeL_ci": full["rougeL_ci"], "n": len(records),
                "val_loss": cached.completion_loss_cached(model, vcache), "decode_s": round(time.perf_counter() - t, 1),
                "per_example": full["per_example"]}

    def sft_old(self, ids, labels, max_steps: int, out: Path):
        model, tok = self.base()
        scfg = self.cfg.sft.model_copy(update={**OLD["sft"], "max_steps": max_steps,
                                               "logging_steps": max(1, min(10, max_steps))})
        ds = datasets.Dataset.from_dict({"input_ids": list(ids), "labels": list(labels)})
        return self.timed(sft.train_sft, model, tok, ds, None, scfg, out, self.seed, resume=False,
                          log=lambda s: self.log("old " + s))

    def new_sft_settings(self, **over) -> cached.HeadSettings:
        a = self.args
        s = cached.sft_settings(self.cfg.sft, self.seed)
        upd = {k: v for k, v in (("top_layers", a.sft_top_layers), ("method", a.sft_method),
                                 ("lora_targets", a.sft_lora_targets), ("learning_rate", a.sft_lr),
                                 ("batch_size", a.sft_batch)) if v is not None}
        for k, v in {**upd, **over, "logging_steps": 20, "save_steps": 0, "cache_dir": None}.items():
            setattr(s, k, v)
        if s.lora_targets not in ("all-linear",) and isinstance(s.lora_targets, str):
            s.lora_targets = s.lora_targets.split("+")
        return s

    def run_sft(self) -> None:
        a = self.args
        model, tok = self.base()
        ds, _ = prompting.build_sft_dataset(tok, self.train, self.cfg.sft.max_seq_len)
        ids, labels = ds["input_ids"], ds["labels"]
        self.doc["new_settings"]["sft"] = self.new_sft_settings().to_dict()
        sub = list(range(a.tp_sft_examples))
        rounds = []
        for r in range(a.rounds):
            env_old = _env()
            old, old_s, _ = self.sft_old([ids[i] for i in sub], [labels[i] for i in sub], a.tp_sft_old_steps,
                                         self.tmp / f"tp_sft_old{r}")
            old_eps = old.global_step * OLD["sft"]["per_device_batch"] / old_s
            env_new = _env()
            m, tk = self.base()
            run = cached.train_sft_cached(m, tk, [ids[i] for i in sub], [labels[i] for i in sub],
                                          self.new_sft_settings(max_steps=a.tp_sft_new_steps), self.tmp / f"tp_new{r}",
                                          clock=self.clock, log=_quiet)
            res = run.result
            cache_s, head_s = res.cache_build_s / len(sub), res.train_s / res.examples_seen
            rounds.append({"old_ex_per_s": old_eps, "old_steps": old.global_step, "old_s": old_s,
                           "new_cache_s_per_ex": cache_s, "new_head_s_per_ex_epoch": head_s,
                           "new_steady_ex_per_s": 1 / head_s, "env_old": env_old, "env_new": env_new,
                           **{f"speedup_at_{e}_epochs": e / (cache_s + e * head_s) / old_eps for e in (1, 2, 3, 5)}})
            self.log(f"sft throughput round {r}: old {old_eps:.3f} ex/s; new cache {cache_s:.3f} s/ex, head "
                     f"{head_s:.3f} s/ex/epoch; x{rounds[-1]['speedup_at_3_epochs']:.2f} at 3 epochs")
            del m, run
            gc.collect()
        self.doc["throughput"]["sft"] = rounds
        self.write()
        cache_s, head_s = self._estimate(rounds)

        # -- equal time
        env0 = _env()
        old_dir = ROOT / ".cache" / "bench" / ("sft_old_quick" if a.quick else "sft_old")
        shutil.rmtree(old_dir, ignore_errors=True)
        old, old_s, old_wall = self.sft_old(ids, labels, a.sft_old_steps, old_dir)
        env1 = _env()
        self._sft_dir = Path(old.final_dir)
        m, tk = self.sft_model("left")
        q_old = self.sft_quality(m, tk, "sft_old")
        self.log(f"sft old: {old.global_step} steps in {old_s:.0f}s -> val ROUGE-L {q_old['rougeL']:.2f}, "
                 f"loss {q_old['val_loss']:.4f}")
        budget = old_s
        old_eps = old.global_step * OLD["sft"]["per_device_batch"] / old_s
        self.doc["runs"]["sft"] = {"old": {"steps": old.global_step,
                                           "examples": old.global_step * OLD["sft"]["per_device_batch"],
                                           "seconds": old_s, "wall_s": old_wall, "ex_per_s": old_eps,
                                           "quality": _brief(q_old), "env": [env0, env1],
                                           "final_train_loss": old.final_train_loss}}
        self.write()
        order = list(range(len(ids)))  # the new path caches the first n of a seeded random order
        random.Random(self.seed).shuffle(order)
        levers = [("default", {})] + [_parse_lever(s) for s in a.sft_lever]
        for name, over in levers:
            epochs = float(over.pop("epochs", a.sft_epochs))
            settings = self.new_sft_settings(**over)
            c_s, h_s = cache_s, head_s
            if name != "default":  # rescale the per-example estimate to this lever's depth and head
                L0, L1 = self.new_sft_settings().top_layers or 30, settings.top_layers or 30
                c_s, h_s = cache_s * (30 - L1) / max(1, 30 - L0), head_s * L1 / max(1, L0)
            n, plan_epochs = self.plan(len(order), budget, c_s, h_s, epochs)
            pick = order[:n]
            settings.epochs, settings.max_steps = 2 * plan_epochs, -1
            self.log(f"sft new [{name}]: budget {budget:.0f}s, plan n={n} x {plan_epochs:.2f} epochs, {over}")
            m, tk = self.base()
            env2 = _env()
            run, _, new_wall = self.timed(cached.train_sft_cached, m, tk, [ids[i] for i in pick],
                                          [labels[i] for i in pick], settings, self.tmp / f"sft_new_{name}",
                                          clock=self.clock, time_budget_s=budget,
                                          log=lambda s, n=name: self.log(f"new[{n}] " + s))
            env3 = _env()
            res = run.result
            del run, m
            gc.collect()
            mm, tk = self.base("left")
            if settings.method == "lora":
                mm = checkpoints.apply_adapter(mm, res.final_dir, merge=True)
            else:
                from radimpress_lib.llm import models

                mm, _, _ = models.load_model_and_tokenizer(self.cfg.model.name, model_path=res.final_dir,
                                                           padding_side="left")
            q_new = self.sft_quality(mm, tk, f"sft_new_{name}")
            paired = metrics.compare_systems(q_new["per_example"], q_old["per_example"], n_boot=1000, seed=0,
                                             metrics=["rougeL", "bleu", "label_f1_micro"])
            self.log(f"sft new [{name}]: {res.global_step} steps, {res.epochs_done:.2f} epochs of {n} in "
                     f"{res.wall_time_s:.0f}s (cache {res.cache_build_s:.0f}s) -> val ROUGE-L {q_new['rougeL']:.2f} "
                     f"(delta {paired['rougeL']['delta']:+.2f} {paired['rougeL']['delta_ci']}), loss "
                     f"{q_new['val_loss']:.4f}")
            entry = {"n_distinct": n, "plan_epochs": plan_epochs, "settings": settings.to_dict(),
                     "result": {k: v for k, v in res.to_dict().items() if k != "loss_history"},
                     "loss_tail": res.loss_history[-3:], "quality": _brief(q_new), "paired_vs_old": paired,
                     "env": [env2, env3], "wall_s": new_wall, "ex_per_s": res.examples_per_s,
                     "speedup": res.examples_per_s / old_eps}
            if name == "default":
                self.doc["runs"]["sft"]["new"] = entry
                self.doc["sft_speedup"] = res.examples_per_s / old_eps
                self.doc["equal_time"]["sft"] = {
                    "metric": f"validate ROUGE-L (first {q_old['n']} reports, greedy)", "seconds": budget,
                    "old": q_old["rougeL"], "new": q_new["rougeL"], "old_ci": q_old["rougeL_ci"],
                    "new_ci": q_new["rougeL_ci"], "delta_new_minus_old": paired["rougeL"]["delta"],
                    "delta_ci": paired["rougeL"]["delta_ci"], "p_value": paired["rougeL"]["p_value"],
                    "old_val_loss": q_old["val_loss"], "new_val_loss": q_new["val_loss"],
                    "new_seconds": res.wall_time_s}
            else:
                self.doc["levers"][name] = {"overrides": over, "epochs_planned": epochs, **entry}
            self.write()
            del mm
            gc.collect()

    # ------------------------------------------------------------------ RM
    def pairs(self, n: int, split: str, seed: int, max_length: int, show_similar: bool = True):
        records = self.train if split == "train" else self.validate
        pairs, _ = reward.build_pairs(records, self.style_model(), n, seed, split)
        pairs, _ = reward.fit_pairs_to_length(pairs, self.tokenizer(), max_length, show_similar)
        return pairs

    def rm_quality(self, rm_model, eval_pairs) -> dict[str, Any]:
        margins = reward.score_pairs_rows(rm_model, self.tokenizer(), eval_pairs, self.cfg.rm.prompt_similar)
        return {**reward.accuracy_summary(margins), "all_pair_acc": float((margins["margin"] > 0).mean()),
                "by_type": reward.pairwise_accuracy(margins).to_dict(orient="records")}

    def new_rm_run(self, backbone, tok, pairs, settings, out: Path, budget: float | None = None, log=_quiet):
        rm = reward.reward_model_from_causal_lm(backbone, self.seed)
        rows = reward.rm_rows(tok, pairs, self.cfg.rm.prompt_similar)
        return cached.train_rows(rm, rows, settings, out, cached.rm_loss(settings.center_rewards),
                                 task_type="SEQ_CLS", modules_to_save=["score"], pad_id=tok.pad_token_id,
                                 clock=self.clock, time_budget_s=budget, log=log)

    def new_rm_settings(self, **over) -> cached.HeadSettings:
        s = cached.rm_settings(self.cfg.rm, self.seed)
        for k, v in {**over, "logging_steps": 10, "cache_dir": None}.items():
            setattr(s, k, v)
        if self.args.rm_lr:
            s.learning_rate = self.args.rm_lr
        return s

    def run_rm(self) -> None:
        a = self.args
        rcfg_old = self.cfg.rm.model_copy(update=OLD["rm"])
        ml = self.cfg.rm.max_length
        pool = self.pairs(a.rm_pool_pairs, "train", self.seed, ml, self.cfg.rm.prompt_similar)
        old_pairs = self.pairs(a.rm_old_pairs or OLD["rm"]["train_pairs"], "train", self.seed, ml,
                               self.cfg.rm.prompt_similar)
        eval_pairs = self.pairs(a.rm_eval_pairs, "validate", self.seed + 1, ml, self.cfg.rm.prompt_similar)
        self.doc["new_settings"]["rm"] = self.new_rm_settings().to_dict()
        rounds = []
        sub = pool[: a.tp_rm_pairs]
        for r in range(a.rounds):
            backbone, tok = self.sft_model()
            env_old = _env()
            ocfg = rcfg_old.model_copy(update={"max_steps": a.tp_rm_pairs // OLD["rm"]["per_device_batch"]})
            (_, ores), old_s, _ = self.timed(reward.train_reward_model, backbone, tok, sub, ocfg,
                                             self.tmp / f"tp_rm_old{r}", self.seed, log=_quiet)
            old_eps = ores.global_step * OLD["rm"]["per_device_batch"] / old_s
            env_new = _env()
            run = self.new_rm_run(backbone, tok, sub, self.new_rm_settings(epochs=1.0, max_steps=-1),
                                  self.tmp / f"tp_rm_new{r}")
            res = run.result
            cache_s, head_s = res.cache_build_s / len(sub), res.train_s / res.examples_seen
            rounds.append({"old_ex_per_s": old_eps, "old_s": old_s, "new_cache_s_per_ex": cache_s,
                           "new_head_s_per_ex_epoch": head_s, "env_old": env_old, "env_new": env_new,
                           **{f"speedup_at_{e}_epochs": e / (cache_s + e * head_s) / old_eps for e in (1, 2, 3)}})
            self.log(f"rm throughput round {r}: old {old_eps:.3f} pairs/s; new cache {cache_s:.3f} s/pair, head "
                     f"{head_s:.3f} s/pair/epoch; x{rounds[-1]['speedup_at_1_epochs']:.2f} at 1 epoch")
            del backbone, run
            gc.collect()
        self.doc["throughput"]["rm"] = rounds
        self.write()
        cache_s, head_s = self._estimate(rounds)

        backbone, tok = self.sft_model()
        env0 = _env()
        (_, ores), old_s, old_wall = self.timed(reward.train_reward_model, backbone, tok, old_pairs, rcfg_old,
                                                self.tmp / "rm_old", self.seed, log=lambda s: self.log("old " + s))
        env1 = _env()
        rm_old = reward.load_reward_model(backbone, Path(ores.adapter_dir), seed=self.seed)
        q_old = self.rm_quality(rm_old, eval_pairs)
        del rm_old
        self.log(f"rm old: {len(old_pairs)} pairs in {old_s:.0f}s -> factual {q_old['factual_pair_acc']:.3f}, style "
                 f"{q_old['style_pair_acc']:.3f}")
        budget = old_s
        n, epochs = self.plan(len(pool), budget, cache_s, head_s, a.rm_epochs)
        self.log(f"rm new: budget {budget:.0f}s, plan {n} pairs x {epochs:.2f} epochs")
        env2 = _env()
        run, _, new_wall = self.timed(self.new_rm_run, backbone, tok, pool[:n],
                                      self.new_rm_settings(epochs=2 * epochs, max_steps=-1), self.tmp / "rm_new",
                                      budget, lambda s: self.log("new " + s))
        env3 = _env()
        res = run.result
        del run
        rm_new = reward.load_reward_model(backbone, Path(res.final_dir), seed=self.seed)
        q_new = self.rm_quality(rm_new, eval_pairs)
        self.log(f"rm new: {res.examples_seen} pair-epochs ({n} pairs) in {res.wall_time_s:.0f}s -> factual "
                 f"{q_new['factual_pair_acc']:.3f}, style {q_new['style_pair_acc']:.3f}")
        old_eps = len(old_pairs) / old_s
        self.doc["runs"]["rm"] = {
            "old": {"pairs": len(old_pairs), "seconds": old_s, "wall_s": old_wall, "ex_per_s": old_eps,
                    "quality": q_old, "env": [env0, env1]},
            "new": {"n_distinct": n, "plan_epochs": epochs,
                    "result": {k: v for k, v in res.to_dict().items() if k != "loss_history"},
                    "quality": q_new, "env": [env2, env3], "wall_s": new_wall},
            "eval_pairs": len(eval_pairs),
        }
        self.doc["rm_speedup"] = res.examples_per_s / old_eps
        brief = ("factual_pair_acc", "n_factual", "style_pair_acc", "n_style", "all_pair_acc")
        self.doc["equal_time"]["rm"] = {"metric": f"held-out validate pair accuracy (n={len(eval_pairs)})",
                                        "seconds": budget, "new_seconds": res.wall_time_s,
                                        "old": {k: q_old[k] for k in brief}, "new": {k: q_new[k] for k in brief}}
        self.write()

    # ------------------------------------------------------------------ DPO
    def dpo_quality(self, policy, ref_lp, rows) -> dict[str, Any]:
        return rlhf.dpo_implicit_accuracy(policy, ref_lp, rows, OLD["dpo"]["beta"])

    def new_dpo_settings(self, **over) -> cached.HeadSettings:
        s = cached.dpo_settings(self.cfg.dpo, self.seed)
        for k, v in {**over, "logging_steps": 5, "cache_dir": None}.items():
            setattr(s, k, v)
        if self.args.dpo_lr:
            s.learning_rate = self.args.dpo_lr
        if self.args.dpo_top_layers:
            s.top_layers = self.args.dpo_top_layers
        return s

    def new_dpo_run(self, model, tok, pairs, settings, out: Path, budget: float | None = None, log=_quiet):
        rows = rlhf.dpo_rows(tok, pairs)
        return cached.train_rows(model, rows, settings, out, cached.dpo_loss(settings.beta), ref_logps=True,
                                 pad_id=tok.pad_token_id, clock=self.clock, time_budget_s=budget, log=log)

    def run_dpo(self) -> None:
        a = self.args
        dcfg_old = self.cfg.dpo.model_copy(update=OLD["dpo"])
        ml = self.cfg.dpo.max_length
        old_pairs = self.pairs(a.dpo_old_pairs or OLD["dpo"]["train_pairs"], "train", self.seed + 2, ml)
        pool = self.pairs(a.dpo_pool_pairs, "train", self.seed + 2, ml)
        eval_pairs = self.pairs(a.rm_eval_pairs, "validate", self.seed + 1, ml)
        tok = self.tokenizer()
        eval_rows = rlhf.dpo_rows(tok, eval_pairs)
        ref_model, _ = self.sft_model()
        ref_lp = trunk.sequence_logps(ref_model, eval_rows)
        del ref_model
        self.doc["new_settings"]["dpo"] = self.new_dpo_settings().to_dict()
        rounds = []
        sub = pool[: a.tp_dpo_pairs]
        for r in range(a.rounds):
            m, tok = self.sft_model()
            env_old = _env()
            ocfg = dcfg_old.model_copy(update={"max_steps": max(1, a.tp_dpo_pairs // OLD["dpo"]["per_device_batch"])})
            (_, ores), old_s, _ = self.timed(rlhf.train_dpo, m, tok, sub, ocfg, self.tmp / f"tp_dpo_old{r}", self.seed,
                                             log=_quiet)
            old_eps = ores.global_step * OLD["dpo"]["per_device_batch"] / old_s
            del m
            m, tok = self.sft_model()
            env_new = _env()
            run = self.new_dpo_run(m, tok, sub, self.new_dpo_settings(epochs=1.0, max_steps=-1),
                                   self.tmp / f"tp_dpo_new{r}")
            res = run.result
            cache_s, head_s = res.cache_build_s / len(sub), res.train_s / res.examples_seen
            rounds.append({"old_ex_per_s": old_eps, "old_s": old_s, "new_cache_s_per_ex": cache_s,
                           "new_head_s_per_ex_epoch": head_s, "env_old": env_old, "env_new": env_new,
                           **{f"speedup_at_{e}_epochs": e / (cache_s + e * head_s) / old_eps for e in (1, 2, 3)}})
            self.log(f"dpo throughput round {r}: old {old_eps:.3f} pairs/s; new cache+ref {cache_s:.3f} s/pair, "
                     f"head {head_s:.3f} s/pair/epoch; x{rounds[-1]['speedup_at_1_epochs']:.2f} at 1 epoch")
            del m, run
            gc.collect()
        self.doc["throughput"]["dpo"] = rounds
        self.write()
        cache_s, head_s = self._estimate(rounds)

        m, tok = self.sft_model()
        env0 = _env()
        (_, ores), old_s, old_wall = self.timed(rlhf.train_dpo, m, tok, old_pairs, dcfg_old, self.tmp / "dpo_old",
                                                self.seed, log=lambda s: self.log("old " + s))
        env1 = _env()
        del m
        pol, _ = self.sft_model()
        pol = checkpoints.apply_adapter(pol, Path(ores.adapter_dir), merge=True)
        q_old = self.dpo_quality(pol, ref_lp, eval_rows)
        del pol
        self.log(f"dpo old: {len(old_pairs)} pairs in {old_s:.0f}s -> {q_old}")
        budget = old_s
        n, epochs = self.plan(len(pool), budget, cache_s, head_s, a.dpo_epochs)
        self.log(f"dpo new: budget {budget:.0f}s, plan {n} pairs x {epochs:.2f} epochs")
        m, tok = self.sft_model()
        env2 = _env()
        run, _, new_wall = self.timed(self.new_dpo_run, m, tok, pool[:n],
                                      self.new_dpo_settings(epochs=2 * epochs, max_steps=-1), self.tmp / "dpo_new",
                                      budget, lambda s: self.log("new " + s))
        env3 = _env()
        res = run.result
        del m, run
        pol, _ = self.sft_model()
        pol = checkpoints.apply_adapter(pol, Path(res.final_dir), merge=True)
        q_new = self.dpo_quality(pol, ref_lp, eval_rows)
        self.log(f"dpo new: {res.examples_seen} pair-epochs ({n} pairs) in {res.wall_time_s:.0f}s -> {q_new}")
        old_eps = len(old_pairs) / old_s
        self.doc["runs"]["dpo"] = {
            "old": {"pairs": len(old_pairs), "steps": ores.global_step, "seconds": old_s, "wall_s": old_wall,
                    "ex_per_s": old_eps, "quality": q_old, "env": [env0, env1]},
            "new": {"n_distinct": n, "plan_epochs": epochs,
                    "result": {k: v for k, v in res.to_dict().items() if k != "loss_history"},
                    "quality": q_new, "env": [env2, env3], "wall_s": new_wall},
            "eval_pairs": len(eval_rows),
        }
        self.doc["dpo_speedup"] = res.examples_per_s / old_eps
        self.doc["equal_time"]["dpo"] = {"metric": f"held-out validate implicit-reward accuracy (n={len(eval_rows)})",
                                         "seconds": budget, "new_seconds": res.wall_time_s, "old": q_old,
                                         "new": q_new}
        self.write()


def _brief(q: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in q.items() if k != "per_example"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(ROOT / "params" / "smollm2-135m.yaml"))
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny subsets, a few steps")
    ap.add_argument("--stages", nargs="*", default=["numerics", "sft", "rm", "dpo"])
    ap.add_argument("--out", default=None)
    ap.add_argument("--rounds", type=int, default=None, help="interleaved throughput rounds per stage")
    ap.add_argument("--min-examples", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both paths (1: robust on a shared CPU)")
    ap.add_argument("--clock", choices=["process", "wall"], default="process",
                    help="what seconds mean for budgets and speeds: process CPU time (default) or wall time")
    ap.add_argument("--sft-adapter", default=None, help="RM/DPO start from this SFT adapter when SFT is not run")
    ap.add_argument("--sft-old-steps", type=int, default=None)
    ap.add_argument("--sft-top-layers", type=int, default=None, help="new path (default: the params' sft.top_layers)")
    ap.add_argument("--sft-method", default=None)
    ap.add_argument("--sft-lora-targets", default=None, help="all-linear or q_proj+k_proj+...")
    ap.add_argument("--sft-lr", type=float, default=None)
    ap.add_argument("--sft-batch", type=int, default=None)
    ap.add_argument("--sft-epochs", type=float, default=2.5, help="epochs the new path plans for at equal time")
    ap.add_argument("--sft-lever", action="append", default=[],
                    help="extra equal-time new-path run, e.g. 'L4=top_layers:4' or 'e1=epochs:1' or "
                         "'qkvo=lora_targets:q_proj+k_proj+v_proj+o_proj' or 'full=method:full,learning_rate:1e-4'")
    ap.add_argument("--val-reports", type=int, default=None)
    ap.add_argument("--tp-sft-examples", type=int, default=None)
    ap.add_argument("--tp-sft-old-steps", type=int, default=None)
    ap.add_argument("--tp-sft-new-steps", type=int, default=None)
    ap.add_argument("--rm-old-pairs", type=int, default=None)
    ap.add_argument("--rm-pool-pairs", type=int, default=None)
    ap.add_argument("--rm-eval-pairs", type=int, default=None)
    ap.add_argument("--rm-epochs", type=float, default=1.0)
    ap.add_argument("--rm-lr", type=float, default=None)
    ap.add_argument("--tp-rm-pairs", type=int, default=None)
    ap.add_argument("--dpo-old-pairs", type=int, default=None)
    ap.add_argument("--dpo-pool-pairs", type=int, default=None)
    ap.add_argument("--dpo-epochs", type=float, default=1.0)
    ap.add_argument("--dpo-lr", type=float, default=None)
    ap.add_argument("--dpo-top-layers", type=int, default=None)
    ap.add_argument("--tp-dpo-pairs", type=int, default=None)
    args = ap.parse_args(argv)
    q = args.quick
    defaults = {
        "rounds": 1 if q else 2, "sft_old_steps": 3 if q else OLD["sft"]["max_steps"], "val_reports": 8 if q else 276,
        "tp_sft_examples": 16 if q else 64, "tp_sft_old_steps": 2 if q else 5, "tp_sft_new_steps": 2 if q else 8,
        "rm_old_pairs": 16 if q else None, "rm_pool_pairs": 48 if q else 1280, "rm_eval_pairs": 16 if q else 256,
        "tp_rm_pairs": 8 if q else 32, "dpo_old_pairs": 16 if q else None, "dpo_pool_pairs": 48 if q else 768,
        "tp_dpo_pairs": 8 if q else 24,
    }
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.out = args.out or str(ROOT / "bench" / "results" / ("train_speed_quick.json" if q else "train_speed.json"))
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # configure_cpu_threads() honours it (both paths)
    torch.set_num_threads(args.threads)
    bench = Bench(args)
    try:
        for stage in ("numerics", "sft", "rm", "dpo"):
            if stage in args.stages:
                getattr(bench, f"run_{stage}")()
        bench.doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        bench.write()
    finally:
        shutil.rmtree(bench.tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
