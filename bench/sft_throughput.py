"""SFT training throughput on CPU: radimpress fast path vs TRL's default SFTTrainer setup.

Trains SmolLM2-135M-Instruct with LoRA (r=16, alpha=32, dropout 0) on the same
64 real training examples (``opi-benchmark/train.jsonl``, findings = ``inputs``,
impression = ``target``) for the same number of optimizer steps (default 8 steps of 8
sequences = one epoch), and reports *useful* training tokens per second: non-pad
tokens, prompt included, divided by the wall time of ``trainer.train()``.

Setups (each for LoRA on all linear layers and on q,k,v,o only):

* ``fast-padding_free`` : :func:`radimpress_lib.train.sft.train_sft` with padding-free batches;
* ``fast-group_by_length``: ``train_sft`` with length-grouped padded batches;
* ``trl-default``       : ``trl.SFTTrainer`` with a default ``SFTConfig`` (gradient
  checkpointing on, padded batches in random order, TRL's fused LM head), except
  ``bf16=False`` (the project never trains in bf16 on CPU) and ``report_to="none"``.

Both sides see the same tokens (the same pre-tokenized completion-only examples); only
the trainer setup differs. Before every run a 1-second fp32 matmul calibration measures
how much of the CPU this process actually gets, so runs on a shared machine can be
judged; setups are interleaved and ``--repeats`` repeats the whole cycle.

Usage::

    .venv/bin/python bench/sft_throughput.py [--data-dir DIR] [--repeats 2] [--steps 8]

Writes ``bench/results/sft_throughput.json`` (machine description, raw per-run figures,
medians and speed-ups), rewritten after every run so partial results survive.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from radimpress_lib.data import resolve_data_dir  # noqa: E402
from radimpress_lib.llm import models, prompting
from radimpress_lib.train import sft  # noqa: E402

TARGETS = {
    "all-linear": "all-linear",
    "qkvo": ["q_proj", "k_proj", "v_proj", "o_proj"],
}


def stage_overrides(items: list[str], stage: Any, name: str) -> dict[str, Any]:
    """``--set FIELD=VALUE`` items (YAML values; a ``<name>.`` prefix allowed) as overrides of the stage config
    ``stage``; exits with one line naming an item without ``=`` or a field the stage does not have
    (bench/rm_scaling.py, bench/rl_steps.py)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix(f"{name}.")
        if not sep:
            raise SystemExit(f"--set {item}: expected FIELD=VALUE")
        if key not in type(stage).model_fields:
            raise SystemExit(f"--set {item}: the {name} stage config has no field {key!r}")
        out[key] = yaml.safe_load(value)
    return out


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import peft
    import transformers
    import trl

    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "physical_cores": models.physical_cores(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
        "peft": peft.__version__,
        "cuda": torch.cuda.is_available(),
    }


def calibrate(seconds: float = 1.0) -> float:
    """fp32 GEMM GFLOP/s this process gets right now (SmolLM2 MLP shape)."""
    a, b = torch.randn(1024, 576), torch.randn(576, 1536)
    for _ in range(3):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * 1024 * 576 * 1536 * n / (time.perf_counter() - t0) / 1e9


class TimedPoints(TrainerCallback):
    """Measures a model at given optimizer steps during training, keeping that time out of the training time.

    ``measure(model, step, train_s)`` runs in eval mode at each step in ``steps`` (before the
    last) and, with ``at_end``, once more when training ends; ``train_s`` is the training time
    so far without the measuring. ``model`` is the trained model once training has ended.
    """

    def __init__(self, steps: set[int], measure, at_end: bool = False) -> None:
        self.steps, self.measure, self.at_end = steps, measure, at_end
        self.t0, self.measuring_s, self.model = 0.0, 0.0, None

    def _point(self, model, step: int) -> None:
        t = time.perf_counter()
        was_training = model.training
        model.eval()
        self.measure(model, step, t - self.t0 - self.measuring_s)
        model.train(was_training)
        self.measuring_s += time.perf_counter() - t

    def on_train_begin(self, args, state, control, **kwargs):
        self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps and state.global_step < state.max_steps:
            self._point(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.model = model
        if self.at_end:
            self._point(model, state.global_step)


def load_examples(data_dir: str | None, n: int, tokenizer: Any, max_len: int):
    path = resolve_data_dir(data_dir) / "opi-benchmark" / "train.jsonl"
    records = []
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if len(records) == n:
                break
            row = json.loads(line)
            records.append(
                {"report_id": str(row["idx"]), "findings": row["inputs"], "impression": row["target"],
                 "source": f"{path.name}:{line_no}"}
            )
    ds, stats = prompting.build_sft_dataset(tokenizer, records, max_len)
    return ds.select_columns(["input_ids", "labels"]), stats, str(path)


def run_fast(layout: str, targets: Any, ds, steps: int, batch: int, seed: int, out: Path,
             threads: int | None = None) -> dict[str, Any]:
    model, tok, _ = models.load_model_and_tokenizer("smollm2-135m", padding_side="right")
    cfg = sft.SFTStageConfig(
        method="lora", lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_targets=targets,
        learning_rate=2e-4, max_steps=steps, per_device_batch=batch, logging_steps=1,
        save_steps=10_000, padding_free=layout == "padding_free",
        group_by_length=layout == "group_by_length", num_threads=threads,
    )
    res = sft.train_sft(model, tok, ds, None, cfg, out, seed=seed, log=lambda s: print("   ", s, flush=True))
    return {
        "useful_tokens": res.train_tokens,
        "completion_tokens": res.completion_tokens,
        "wall_s": res.wall_time_s,
        "tokens_per_s": res.tokens_per_s,
        "steps": res.global_step,
        "final_loss": res.final_train_loss,
        "trainable_params": res.n_trainable_params,
    }


def run_trl_default(targets: Any, ds, steps: int, batch: int, seed: int, out: Path) -> dict[str, Any]:
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tok, _ = models.load_model_and_tokenizer("smollm2-135m", padding_side="right")
    counts = {"useful": 0, "positions": 0}

    class CountingSFTTrainer(SFTTrainer):  # only counts tokens, then defers to TRL
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.model.training:
                counts["useful"] += int(inputs["attention_mask"].sum())
                counts["positions"] += int(inputs["input_ids"].numel())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = SFTConfig(
        output_dir=str(out), bf16=False, report_to="none", max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=2e-4, seed=seed, save_strategy="no", disable_tqdm=True, logging_steps=1,
    )
    lora = LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, lora_dropout=0.0, target_modules=targets,
                      bias="none")
    trainer = CountingSFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    t0 = time.perf_counter()
    out_train = trainer.train()
    wall = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "useful_tokens": counts["useful"],
        "padded_positions": counts["positions"],
        "wall_s": wall,
        "tokens_per_s": counts["useful"] / wall,
        "steps": int(trainer.state.global_step),
        "final_loss": losses[-1] if losses else None,
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "train_runtime_s": out_train.metrics.get("train_runtime"),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by: dict[str, list[float]] = {}
    for r in runs:
        by.setdefault(f"{r['setup']}|{r['targets']}", []).append(r["tokens_per_s"])
    med = {k: statistics.median(v) for k, v in by.items()}
    speedups = {}
    for key, value in med.items():
        setup, targets = key.split("|")
        base = med.get(f"trl-default|{targets}")
        if setup != "trl-default" and base:
            speedups[key] = value / base
    return {"median_tokens_per_s": med, "speedup_vs_trl_default": speedups}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default=None, help="data folder (default: $RADIMPRESS_DATA or ../shared/data)")
    ap.add_argument("--n-examples", type=int, default=64)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--setups", nargs="+", default=["fast-group_by_length", "fast-padding_free", "trl-default"])
    ap.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sft_throughput.json"))
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: physical cores); 1 gives stable figures on a busy shared CPU")
    args = ap.parse_args(argv)

    if args.threads:  # radimpress_lib.llm.models resets torch threads from OMP_NUM_THREADS when loading
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    threads = models.configure_cpu_threads(args.threads)
    _, tok, _ = models.load_model_and_tokenizer("smollm2-135m", padding_side="right")
    ds, stats, data_file = load_examples(args.data_dir, args.n_examples, tok, max_len=512)
    report: dict[str, Any] = {
        "benchmark": "sft_throughput",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "settings": {
            "model": "smollm2-135m", "method": "lora r16 alpha32 dropout0", "n_examples": args.n_examples,
            "steps": args.steps, "per_device_batch": args.batch, "repeats": args.repeats, "seed": args.seed,
            "threads": threads, "data_file": Path(data_file).name, "dataset_stats": stats.as_dict(),
        },
        "note": "tokens_per_s = useful (non-pad, prompt included) training tokens / wall time of trainer.train(); "
                "calib_gflops = fp32 GEMM GFLOP/s measured just before the run (CPU share actually available).",
        "runs": [],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="sft_bench_"))
    try:
        for rep in range(args.repeats):
            for targets in args.targets:
                for setup in args.setups:
                    run_dir = work / f"{setup}-{targets}-{rep}"
                    models.configure_cpu_threads(args.threads)
                    load = os.getloadavg()[0]
                    calib = calibrate()
                    print(f"[rep {rep}] {setup} targets={targets} (calibration {calib:.0f} GFLOP/s, "
                          f"load {load:.2f})", flush=True)
                    if setup == "trl-default":
                        fig = run_trl_default(TARGETS[targets], ds, args.steps, args.batch, args.seed, run_dir)
                    else:
                        fig = run_fast(setup.split("-", 1)[1], TARGETS[targets], ds, args.steps, args.batch,
                                       args.seed, run_dir, args.threads)
                    fig.update(setup=setup, targets=targets, repeat=rep, calib_gflops_before=calib,
                               loadavg_1m_before=load, calib_gflops_after=calibrate())
                    print(f"    -> {fig['tokens_per_s']:.1f} useful tok/s ({fig['useful_tokens']} tokens in "
                          f"{fig['wall_s']:.1f}s)", flush=True)
                    report["runs"].append(fig)
                    report["summary"] = summarise(report["runs"])
                    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
                    out.write_text(json.dumps(report, indent=2), encoding="utf-8")
                    shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
