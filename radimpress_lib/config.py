"""Typed configuration: one pydantic model per stage, mirrored 1:1 by ``params/*.yaml``.

The params files are *flat* (papermill parameters are flat names), so every field
name is unique across stages and carries its stage's prefix (``data_``,
``model_``, ``explore_`` ...). Every numbered notebook declares every parameter
in its single ``parameters`` cell; ``tests/test_config.py`` checks that the YAML
keys, the notebook parameters and the fields declared here are the same set.

In a notebook::

    cfg = config.from_namespace(globals())   # validates types, names bad keys
    cfg.data.data_source, cfg.model.model_name, ...
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from radimpress_lib.paths import PROJECT_ROOT


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class RunConfig(_Stage):
    """Identity of a run: which params file, where it writes, its seed."""

    run_name: str = Field(description="name of the params file / output folder, e.g. 'smollm2-135m'")
    run_seed: int = Field(42, description="global seed (python, numpy, torch, data subsampling)")
    run_output_dir: str = Field(description="output folder, relative to the project root")


class DataConfig(_Stage):
    """Where the reports come from and how strictly they are validated."""

    data_dir: str | None = Field(None, description="data folder; None: $RADIMPRESS_DATA, then ../shared/data, then data/")
    data_source: Literal["benchmark", "openi_csv", "openi_xml", "user"] = "benchmark"
    data_strict: bool = Field(False, description="raise on the first bad row instead of skipping and counting")
    data_max_chars: int = Field(4000, gt=0, description="longest accepted findings/impression, in characters")
    data_limit_train: int | None = Field(None, gt=0, description="seeded subsample of train (smoke/CI runs)")
    data_limit_eval: int | None = Field(None, gt=0, description="seeded subsample of validate and test")
    data_user_path: str | None = Field(None, description="user CSV/JSONL/Parquet when data_source='user'")
    data_user_columns: dict[str, str] = Field(
        default_factory=dict, description="canonical field -> user column, e.g. {'radiologist_id': 'reader'}"
    )


class ModelConfig(_Stage):
    """Which base model and how it is loaded."""

    model_name: str = Field(description="registry name: smollm2-135m, tiny-llama, tiny-mistral, llama-3b, llama-7b, mistral-7b")
    model_path: str | None = Field(None, description="local folder holding the hub model (offline machines)")
    model_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: fp32 on CPU, bf16 on CUDA; bf16/fp16 asked on CPU warns and runs fp32"
    )
    model_cache_dir: str | None = Field(None, description="cache of converted models; None: .cache/models")


class ExploreConfig(_Stage):
    """Notebook 01: data exploration."""

    explore_top_k: int = Field(15, gt=0, description="rows in the frequency tables (templates, labels, indications)")
    explore_figure_format: Literal["png", "svg", "pdf"] = "png"


class SFTStageConfig(_Stage):
    """Notebook SFT stage parameters (flat ``sft_*`` names: they are papermill parameters)."""

    sft_method: Literal["lora", "qlora", "full"] = Field("lora", description="lora | qlora (CUDA only) | full")
    sft_lora_r: int = Field(16, gt=0, description="LoRA rank")
    sft_lora_alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r)")
    sft_lora_dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="dropout on the LoRA input; 0 by default: on CPU its random masks cost ~18% of a step",
    )
    sft_lora_targets: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="'all-linear' or module names, e.g. [q_proj, k_proj, v_proj, o_proj]"
    )
    sft_learning_rate: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    sft_lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field("cosine")
    sft_epochs: float = Field(1.0, gt=0, description="epochs over the train split (ignored when sft_max_steps > 0)")
    sft_max_steps: int = Field(-1, description="optimizer steps; -1: run sft_epochs")
    sft_per_device_batch: int = Field(8, gt=0, description="sequences per micro-batch")
    sft_grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    sft_max_seq_len: int = Field(512, gt=16, description="longest example; longer findings are truncated")
    sft_warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="share of steps with linear warmup")
    sft_weight_decay: float = Field(0.0, ge=0.0)
    sft_max_grad_norm: float = Field(1.0, gt=0)
    sft_logging_steps: int = Field(10, gt=0, description="optimizer steps between progress lines")
    sft_save_steps: int = Field(50, gt=0, description="optimizer steps between resumable checkpoints")
    sft_save_total_limit: int = Field(2, gt=0, description="checkpoints kept on disk")
    sft_eval_steps: int = Field(0, ge=0, description="steps between eval-loss passes; 0: only at the end")
    sft_padding_free: bool = Field(False, description="flatten each batch into one padding-free row (best on GPU)")
    sft_group_by_length: bool = Field(True, description="length-grouped padded batches (best on CPU)")
    sft_gradient_checkpointing: bool | None = Field(None, description="None: on for CUDA, off for CPU")
    sft_num_threads: int | None = Field(None, gt=0, description="torch threads; None: physical cores")
    sft_use_unsloth: bool = Field(False, description="unsloth FastLanguageModel (CUDA only)")

    @model_validator(mode="after")
    def _check(self) -> "SFTStageConfig":
        if self.sft_max_steps == 0 or self.sft_max_steps < -1:
            raise ValueError(f"sft_max_steps must be -1 (use sft_epochs) or positive, got {self.sft_max_steps}")
        if self.sft_padding_free and self.sft_group_by_length:
            raise ValueError("choose one of sft_padding_free and sft_group_by_length (padding-free has no padding)")
        if isinstance(self.sft_lora_targets, list) and not self.sft_lora_targets:
            raise ValueError("sft_lora_targets is empty; use 'all-linear' or a list of module names")
        return self

    def fingerprint(self) -> str:
        """Short sha256 of the settings that change what a run computes (resume must match)."""
        ignore = {"sft_logging_steps", "sft_save_steps", "sft_save_total_limit", "sft_num_threads", "sft_eval_steps"}
        blob = {k: v for k, v in self.model_dump().items() if k not in ignore}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


class GenerationStageConfig(_Stage):
    """Generation parameters (flat ``gen_*`` names: they are papermill parameters)."""

    gen_batch_size: int = Field(16, gt=0, description="prompts decoded together")
    gen_max_new_tokens: int = Field(128, gt=0, description="longest impression in tokens")
    gen_num_beams: int = Field(1, gt=0, description="1: greedy; >1: beam search")
    gen_log_every: int = Field(1, gt=0, description="batches between progress lines")


class EvalStageConfig(_Stage):
    """Notebook 05: which systems are scored and how."""

    eval_n_boot: int = Field(1000, gt=0, description="paired-bootstrap resamples for CIs and p-values")
    eval_zero_shot: bool = Field(True, description="also decode the test split with the base instruct model")
    eval_worst_k: int = Field(10, gt=0, description="worst examples (by ROUGE-L) shown for the SFT model")


#: Every stage config, in notebook order. Later stages append theirs here.
STAGES: dict[str, type[_Stage]] = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "explore": ExploreConfig,
    "sft": SFTStageConfig,
    "gen": GenerationStageConfig,
    "eval": EvalStageConfig,
}


class Params(BaseModel):
    """All stage configs of one run."""

    model_config = ConfigDict(frozen=True, protected_namespaces=())

    run: RunConfig
    data: DataConfig
    model: ModelConfig
    explore: ExploreConfig
    sft: SFTStageConfig
    gen: GenerationStageConfig
    eval: EvalStageConfig

    def flat(self) -> dict[str, Any]:
        """The flat parameter dict, as in the YAML file."""
        out: dict[str, Any] = {}
        for stage in STAGES:
            out.update(getattr(self, stage).model_dump())
        return out

    def params_hash(self, *stages: str) -> str:
        """Short sha256 of the given stages' parameters (all stages when none given)."""
        chosen = stages or tuple(STAGES)
        blob = {s: getattr(self, s).model_dump() for s in chosen}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]

    @property
    def output_dir(self) -> Path:
        """Absolute output folder (``run_output_dir`` is relative to the project root)."""
        out = Path(self.run.run_output_dir)
        return out if out.is_absolute() else PROJECT_ROOT / out


def param_names() -> list[str]:
    """Every flat parameter name, in stage order."""
    return [name for cls in STAGES.values() for name in cls.model_fields]


class ParamsError(ValueError):
    """A params file or notebook namespace that does not match the declared configs."""


def from_mapping(values: Mapping[str, Any], *, source: str = "<params>") -> Params:
    """Validate a flat mapping into :class:`Params`.

    Unknown keys and missing keys are errors (the YAML must mirror the configs
    1:1); type errors name the key and the source.
    """
    names = set(param_names())
    unknown = sorted(set(values) - names)
    missing = sorted(names - set(values))
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown keys {unknown}")
        if missing:
            parts.append(f"missing keys {missing}")
        raise ParamsError(f"{source}: " + "; ".join(parts) + " (see radimpress_lib/config.py)")
    stages = {}
    for stage, cls in STAGES.items():
        sub = {k: values[k] for k in cls.model_fields}
        try:
            stages[stage] = cls(**sub)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})" for e in exc.errors()
            )
            raise ParamsError(f"{source}: {errors}") from None
    return Params(**stages)


def from_namespace(namespace: Mapping[str, Any]) -> Params:
    """Build :class:`Params` from a notebook's globals (the papermill parameters)."""
    # Only declared names are taken from the namespace; absent ones are reported as missing.
    return from_mapping({k: namespace[k] for k in param_names() if k in namespace}, source="notebook parameters")


def load_params(path: str | Path) -> Params:
    """Read and validate a ``params/<name>.yaml`` file."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / path
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        available = sorted(p.stem for p in (PROJECT_ROOT / "params").glob("*.yaml"))
        raise ParamsError(f"{path}: no such params file; available: {available}") from None
    if not isinstance(values, dict):
        raise ParamsError(f"{path}: expected a mapping of parameter -> value, got {type(values).__name__}")
    return from_mapping(values, source=str(path))


def params_path(name: str) -> Path:
    """``params/<name>.yaml`` under the project root."""
    return PROJECT_ROOT / "params" / f"{name}.yaml"
