"""Multi-process / multi-machine SFT: the coarse stage of notebook 02, launched by ``accelerate``.

::

    accelerate launch --config_file configs/accelerate/multi_cpu.yaml -m radimpress_lib.train.distributed --params ci-tiny
    make train-distributed MODEL=llama-7b ACCEL=deepspeed_zero3 NPROC=8

Every process loads the run's data and base model and calls
:func:`radimpress_lib.train.sft.train_sft` with the ``sft_*`` settings of the params file; the
Trainer inside it picks the process group up from the launcher's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``): gloo on CPU, NCCL on GPUs, DeepSpeed ZeRO-3 or FSDP when the
accelerate config says so. Each process reads a different micro-batch of the same seeded
sample order, so ``world_size x sft.per_device_batch x sft.grad_accum`` examples make one
optimizer step; ``--effective-batch`` fixes that product (the per-device batch is derived),
so a run on N processes takes the same optimizer steps as one process would.

Rank 0 writes ``<output-dir>/distributed.json`` (world size, batches, loss history, timing)
next to what :func:`train_sft` writes (adapter or model, checkpoints, ``sft_result.json``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from radimpress_lib.core.jsonio import write_json

__all__ = ["main", "per_device_batch", "world"]


def world() -> tuple[int, int]:
    """``(rank, world_size)`` from the launcher's environment (``(0, 1)`` when not launched)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def per_device_batch(effective_batch: int, world_size: int, grad_accum: int) -> int:
    """Per-device micro-batch giving ``effective_batch`` sequences per optimizer step.

    Raises:
        ValueError: ``effective_batch`` is not a multiple of ``world_size * grad_accum``.
    """
    per_step = world_size * grad_accum
    if effective_batch <= 0 or effective_batch % per_step:
        raise ValueError(f"--effective-batch {effective_batch} must be a positive multiple of "
                         f"world size {world_size} x sft.grad_accum {grad_accum} = {per_step}")
    return effective_batch // per_step


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m radimpress_lib.train.distributed", description=__doc__.splitlines()[0])
    p.add_argument("--params", default="smollm2-135m", help="params name (params/<name>.yaml) or a YAML path")
    p.add_argument("--output-dir", default=None, help="default: outputs/<model>/sft_distributed")
    p.add_argument("--effective-batch", type=int, default=None,
                   help="sequences per optimizer step over all processes (default: sft.per_device_batch x "
                        "sft.grad_accum x world size)")
    p.add_argument("--max-steps", type=int, default=None, help="override sft.max_steps")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process (override sft.num_threads)")
    p.add_argument("--no-group-by-length", action="store_true",
                   help="plain seeded random order (length grouping's megabatches depend on the per-device batch)")
    p.add_argument("--no-eval", action="store_true", help="skip the validation loss")
    p.add_argument("--no-resume", action="store_true", help="fail instead of resuming when checkpoints exist")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the SFT stage in this process (one of ``WORLD_SIZE``)."""
    args = build_parser().parse_args(argv)
    # torch/transformers (through these modules): imported after argument parsing, so --help is instant
    from radimpress_lib import data
    from radimpress_lib.core import config, seeding
    from radimpress_lib.llm import checkpoints
    from radimpress_lib.train import sft

    rank, world_size = world()
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        # "cuda" then means this process's GPU, so each rank loads its model onto its own device.
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if world_size > 1 and not torch.cuda.is_available():
        # CPU processes: make accelerate (inside the Trainer) build a MULTI_CPU state with gloo; without this it
        # sees no accelerator and trains every process on its own, unsynchronised.
        os.environ["ACCELERATE_USE_CPU"] = "true"
    path = Path(args.params)
    params = config.load_params(path if path.suffix in (".yaml", ".yml") else config.params_path(args.params))
    s = params.sft
    # Data-parallel runs need TRL's trainer (accelerate's gradient all-reduce); the cached trainer is single-process.
    update: dict[str, Any] = {"trainer": "trl"}
    if args.effective_batch is not None:
        update["per_device_batch"] = per_device_batch(args.effective_batch, world_size, s.grad_accum)
    if args.max_steps is not None:
        update["max_steps"] = args.max_steps
    if args.threads is not None:
        update["num_threads"] = args.threads
    if args.no_group_by_length:
        update["group_by_length"] = False
    cfg = s.model_validate(s.model_dump() | update) if update else s
    out_dir = Path(args.output_dir) if args.output_dir else params.output_dir / "sft_distributed"

    def log(line: str) -> None:
        if rank == 0:
            print(line, flush=True)

    seeding.quiet_progress_bars()
    seeding.seed_everything(params.run.seed)
    dsd, _info = data.load_data(params)
    model, tokenizer, model_info = checkpoints.load_base_model(params, padding_side="right")
    effective = world_size * cfg.per_device_batch * cfg.grad_accum
    log(f"distributed sft: world size {world_size}, per-device batch {cfg.per_device_batch}, grad accum "
        f"{cfg.grad_accum}, effective batch {effective}, output {out_dir}")
    result = sft.train_sft(model, tokenizer, dsd["train"], None if args.no_eval else dsd["validate"], cfg, out_dir,
                           params.run.seed, resume=not args.no_resume, log=log)
    if rank == 0:
        summary = {
            "params": params.run.name, "world_size": world_size, "per_device_batch": cfg.per_device_batch,
            "grad_accum": cfg.grad_accum, "effective_batch": effective, "global_step": result.global_step,
            "loss_history": result.loss_history, "final_train_loss": result.final_train_loss,
            "final_eval_loss": result.final_eval_loss, "wall_time_s": result.wall_time_s,
            "tokens_per_s_rank0": result.tokens_per_s, "device": result.device, "model": model_info.get("model_name"),
            "final_dir": result.final_dir,
        }
        write_json(out_dir / "distributed.json", summary)
        log(f"distributed sft: wrote {out_dir / 'distributed.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
