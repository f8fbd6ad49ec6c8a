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
    sft_retrieval_k: int = Field(
        0, ge=0, le=10,
        description="retrieval-augmented prompts: impressions of the k most similar training reports after the "
        "findings (training: leave-one-out; generation: the same k); 0: none",
    )

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
    gen_prefix_cache: bool = Field(
        True, description="prefill the prompts' common token prefix (system prompt, template) once and reuse its "
        "KV cache in every batch (greedy only; same outputs)",
    )


class GraphStageConfig(_Stage):
    """Entity graph of the findings in the SFT model's input (02 and its consumers; ablation: 09)."""

    graph_variant: Literal["none", "text"] = Field(
        "none", description="graph input of the main pipeline's SFT model: none | text (linearised findings graph "
        "in the prompt); the GNN soft-prompt variant is trained and scored by notebook 09",
    )
    graph_ablation_variants: list[Literal["text", "gnn"]] = Field(
        default_factory=lambda: ["text", "gnn"],
        description="variants notebook 09 trains with the SFT settings and compares with 'sft' (no graph) on test",
    )
    graph_include_normal: bool = Field(False, description="text variant: also list normal descriptors")
    graph_max_items: int = Field(12, gt=0, description="text variant: most observation lines in the prompt")
    graph_n_prefix: int = Field(4, gt=0, description="gnn variant: soft-prompt vectors prepended to the prompt")
    graph_d_node: int = Field(128, gt=0, description="gnn variant: node state size")
    graph_n_layers: int = Field(2, ge=0, description="gnn variant: message-passing layers")
    graph_max_nodes: int = Field(48, gt=0, description="gnn variant: most nodes per graph (text order)")
    graph_encoder_lr: float = Field(1e-3, gt=0, description="gnn variant: learning rate of the graph encoder")

    @model_validator(mode="after")
    def _check(self) -> "GraphStageConfig":
        if len(set(self.graph_ablation_variants)) != len(self.graph_ablation_variants):
            raise ValueError(f"graph_ablation_variants repeats a variant: {self.graph_ablation_variants}")
        return self


class EvalStageConfig(_Stage):
    """Notebook 05: which systems are scored and how."""

    eval_n_boot: int = Field(1000, gt=0, description="paired-bootstrap resamples for CIs and p-values")
    eval_zero_shot: bool = Field(True, description="also decode the test split with the base instruct model")
    eval_worst_k: int = Field(10, gt=0, description="worst examples (by ROUGE-L) shown for the SFT model")
    eval_guard_candidates: int = Field(
        4, ge=0, description="factual guard (radimpress_lib.factual_guard): beam candidates re-ranked for each "
        "model draft whose entity graph contradicts the findings (negation flip), scored as '<system>_guarded'; 0: off",
    )

    @model_validator(mode="after")
    def _check(self) -> "EvalStageConfig":
        if self.eval_guard_candidates == 1:
            raise ValueError("eval_guard_candidates must be 0 (off) or >= 2 (beam candidates to choose from)")
        return self


class DraftStageConfig(_Stage):
    """``radimpress draft`` (drafting CLI): input limits and batching."""

    draft_max_chars: int = Field(4000, gt=0, description="longest accepted input field (findings, indication, ...)")
    draft_max_reports: int = Field(100_000, gt=0, description="most reports one CLI run accepts")
    draft_batch_size: int = Field(16, gt=0, description="reports read, drafted and written per batch")


class PatientStageConfig(_Stage):
    """Notebook 07: plain-language rewrite of impressions for patients."""

    patient_split: Literal["validate", "test"] = Field("test", description="split whose impressions are rewritten")
    patient_n_reports: int = Field(40, gt=0, description="seeded sample of impressions rewritten")
    patient_use_llm: bool = Field(True, description="rewrite with the instruct model (glossary as hints); else glossary only")
    patient_max_new_tokens: int = Field(96, gt=0, description="longest LLM rewrite in tokens")
    patient_target_grade: float = Field(8.0, gt=0, description="Flesch-Kincaid grade a rewrite must not exceed")
    patient_fallback: bool = Field(
        True, description="use the glossary rewrite when the LLM one loses/flips a finding or misses the grade"
    )
    patient_min_content_recall: float = Field(
        0.6, ge=0.0, le=1.0,
        description="share of the glossary rewrite's content words the LLM rewrite must keep (else fallback)",
    )


class DiseaseStageConfig(_Stage):
    """Notebook 08: a disease-area slice (keywords + MeSH/Problems terms), evaluation on it, a disease adapter."""

    disease_area: str = Field("oncology", pattern=r"^[a-z0-9_-]+$", description="name of the area (output folder)")
    disease_keywords: list[str] = Field(
        default_factory=lambda: [r"nodul\w*", r"mass(?:es)?", r"lesions?", r"neoplas\w*", r"metasta\w*", r"granulom\w*"],
        description="regular expressions matched case-insensitively as whole words in disease_fields",
    )
    disease_mesh_terms: list[str] = Field(
        default_factory=lambda: ["Nodule", "Mass", "Lesion", "Granuloma", "Calcified Granuloma", "Granulomatous Disease",
                                 "Lung Neoplasms", "Neoplasm Metastasis"],
        description="MeSH / Problems main headings (before '/'), matched case-insensitively",
    )
    disease_fields: list[Literal["findings", "impression", "indication"]] = Field(
        default_factory=lambda: ["findings", "impression"], description="report fields the keywords are searched in"
    )
    disease_init: Literal["general", "base"] = Field(
        "general", description="disease adapter trained on top of the general SFT model (merged) or the base model"
    )
    disease_sft_max_steps: int = Field(60, gt=0, description="optimizer steps of the disease adapter (other sft_* shared)")

    @model_validator(mode="after")
    def _check(self) -> "DiseaseStageConfig":
        import re

        if not self.disease_keywords and not self.disease_mesh_terms:
            raise ValueError("give disease_keywords or disease_mesh_terms (or both)")
        for kw in self.disease_keywords:
            try:
                re.compile(kw)
            except re.error as exc:
                raise ValueError(f"disease_keywords: {kw!r} is not a regular expression ({exc})") from None
        if not self.disease_fields:
            raise ValueError("disease_fields is empty")
        return self


class StyleStageConfig(_Stage):
    """Radiologist style groups, style classifier and style slot of the prompt (notebooks 01, 03-05)."""

    style_group_method: Literal["readers", "impressions"] = Field(
        "readers", description="readers: k-means on impressions with a normal-study statement, other reports by "
        "their findings phrasing; impressions: k-means on every impression (see radimpress_lib.style)"
    )
    style_k_min: int = Field(3, ge=2, description="fewest pseudo-radiologist groups tried (k-means)")
    style_k_max: int = Field(8, ge=2, description="most groups tried; K = argmax mean silhouette (ties: smaller K)")
    style_silhouette_sample: int = Field(2000, gt=10, description="train impressions the silhouette is computed on")
    style_unseen_group: str | None = Field(
        "auto", description="group held out of the fine stage for the few-shot case: 'auto', a group id, or null"
    )
    style_fewshot_k: int = Field(3, gt=0, description="example impressions in the few-shot style slot (train/validate)")
    style_classifier_c: float = Field(4.0, gt=0, description="inverse L2 strength of the style classifier")
    style_examples_per_group: int = Field(4, gt=0, description="example impressions shown per group in notebook 01")

    @model_validator(mode="after")
    def _check(self) -> "StyleStageConfig":
        if self.style_k_min > self.style_k_max:
            raise ValueError(f"style_k_min={self.style_k_min} > style_k_max={self.style_k_max}")
        return self


class RewardStageConfig(_Stage):
    """Notebook 03: reward model (TRL RewardTrainer, LoRA + trained score head) on style and factual pairs."""

    rm_train_pairs: int = Field(256, gt=0, description="train-split pairs (half style, half factual)")
    rm_eval_pairs: int = Field(128, gt=0, description="held-out validation-split pairs (half style, half factual)")
    rm_max_length: int = Field(384, gt=16, description="longest prompt+impression; longer findings are truncated")
    rm_prompt_similar: bool = Field(
        True, description="the reward model also reads the prompt's 'Impressions of similar reports' (the policy's "
        "retrieval context); false: style slot, clinical fields and findings only"
    )
    rm_lora_r: int = Field(8, gt=0, description="LoRA rank")
    rm_lora_alpha: int = Field(16, gt=0, description="LoRA alpha")
    rm_lora_last_layers: int | None = Field(
        4, gt=0, description="LoRA only on the last N decoder layers (backward stops there; CPU speed); null: all"
    )
    rm_learning_rate: float = Field(3e-3, gt=0)
    rm_epochs: float = Field(1.0, gt=0, description="epochs over the train pairs (ignored when rm_max_steps > 0)")
    rm_max_steps: int = Field(-1, description="optimizer steps; -1: rm_epochs")
    rm_per_device_batch: int = Field(4, gt=0, description="pairs per optimizer step")
    rm_center_rewards: float | None = Field(0.01, description="TRL center_rewards_coefficient (null: off)")
    rm_logging_steps: int = Field(2, gt=0)


class DPOStageConfig(_Stage):
    """Notebook 04, first half: DPO (LoRA on top of the SFT model, which is the reference)."""

    dpo_train_pairs: int = Field(96, gt=0, description="train-split preference pairs (half style, half factual)")
    dpo_beta: float = Field(0.1, gt=0, description="DPO beta (strength of the pull to the SFT reference)")
    dpo_learning_rate: float = Field(5e-4, gt=0)
    dpo_max_steps: int = Field(-1, description="optimizer steps; -1: one epoch over the pairs")
    dpo_per_device_batch: int = Field(8, gt=0)
    dpo_max_length: int = Field(384, gt=16, description="longest prompt+impression; longer findings are truncated")
    dpo_lora_r: int = Field(8, gt=0)
    dpo_lora_alpha: int = Field(16, gt=0)
    dpo_lora_last_layers: int | None = Field(8, gt=0, description="LoRA on the last N decoder layers; null: all")
    dpo_logging_steps: int = Field(1, gt=0)


class RLStageConfig(_Stage):
    """Notebook 04, second half: GRPO (TRL) with reward model + rule factual reward - length penalty, KL to SFT."""

    rl_algorithm: Literal["grpo", "rloo"] = Field("grpo", description="TRL online RL trainer")
    rl_prompts: int = Field(12, gt=0, description="train-split prompts (seen radiologists, their style prefix)")
    rl_max_steps: int = Field(6, gt=0, description="optimizer steps")
    rl_num_generations: int = Field(4, ge=2, description="completions per prompt (group size)")
    rl_prompts_per_step: int = Field(2, gt=0, description="prompts per optimizer step")
    rl_max_new_tokens: int = Field(32, gt=0, description="longest sampled impression in tokens")
    rl_max_prompt_tokens: int = Field(320, gt=16, description="longer findings are truncated for RL prompts")
    rl_temperature: float = Field(1.0, gt=0)
    rl_beta: float = Field(0.05, ge=0, description="KL coefficient to the SFT model")
    rl_learning_rate: float = Field(2e-4, gt=0)
    rl_w_reward_model: float = Field(1.0, ge=0, description="weight of the reward-model score")
    rl_w_factual: float = Field(1.0, ge=0, description="weight of the labeler consistency with the findings")
    rl_w_length: float = Field(0.5, ge=0, description="weight of the length penalty |log(len / reference len)|")
    rl_guard_length_ratio: list[float] = Field([0.5, 2.0], description="allowed generated/reference length ratio")
    rl_guard_min_distinct: float = Field(0.3, ge=0, le=1, description="least share of distinct impressions")
    rl_eval_reports: int = Field(24, gt=0, description="validation reports decoded for the guards after training")
    rl_logging_steps: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "RLStageConfig":
        low_high = self.rl_guard_length_ratio
        if len(low_high) != 2 or not 0 < low_high[0] < low_high[1]:
            raise ValueError(f"rl_guard_length_ratio must be [low, high] with 0 < low < high, got {low_high}")
        if self.rl_max_steps == 0 or self.rl_max_steps < -1:
            raise ValueError(f"rl_max_steps must be positive, got {self.rl_max_steps}")
        return self


class ReviewStageConfig(_Stage):
    """Notebook 06: physician review (blinded candidates, feedback store, analysis, pairs for DPO)."""

    review_mode: Literal["headless", "interactive"] = Field(
        "headless", description="headless: replay scripted judgements through the widgets (papermill); "
        "interactive: show the widget to a physician")
    review_db: str = Field("review/feedback.sqlite", description="SQLite feedback store, relative to the output folder")
    review_eval_items: int = Field(20, ge=0, description="test reports reviewed for evaluation (never trained on)")
    review_feedback_items: int = Field(
        12, ge=0, description="train reports decoded by the SFT model and reviewed for feedback pairs; 0: none")
    review_systems: list[str] | None = Field(
        None, description="prediction files (outputs/<model>/predictions/<name>.jsonl) shown; null: all found")
    review_include_reference: bool = Field(
        True, description="show the reference impression as a blinded candidate on evaluation items (feedback items "
        "show drafts only)")
    review_script: str | None = Field(
        None, description="headless: JSONL of scripted judgements (project-relative); null: simulated reviewers")
    review_reviewers: list[str] = Field(
        ["simulated-1", "simulated-2"], description="headless without a script: simulated reviewer ids "
        "(must start with 'simulated'; rule-based policy, never physician data)")
    review_sim_noise: float = Field(0.25, ge=0, le=1, description="chance a simulated rating moves one step")
    review_sim_edit_rate: float = Field(0.5, ge=0, le=1, description="chance a simulated reviewer 'edits' a weak "
                                        "preferred candidate into the reference")
    review_pairs_to_dpo: bool = Field(False, description="add the review's preference pairs to the next DPO run (04)")
    review_pairs_include_simulated: bool = Field(
        False, description="let simulated reviewers' pairs reach DPO (tests/CI only)")
    review_pairs_min_rating_gap: int = Field(2, ge=1, description="rating pairs need a Likert gap of at least this")

    @model_validator(mode="after")
    def _check(self) -> "ReviewStageConfig":
        if self.review_mode == "headless" and self.review_script is None:
            bad = [r for r in self.review_reviewers if not r.strip().lower().startswith("simulated")]
            if bad or not self.review_reviewers:
                raise ValueError(f"headless review without review_script needs simulated reviewer ids "
                                 f"(starting with 'simulated'), got {self.review_reviewers}")
        return self


#: Every stage config, in notebook order. Later stages append theirs here.
STAGES: dict[str, type[_Stage]] = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "explore": ExploreConfig,
    "sft": SFTStageConfig,
    "gen": GenerationStageConfig,
    "eval": EvalStageConfig,
    "style": StyleStageConfig,
    "rm": RewardStageConfig,
    "dpo": DPOStageConfig,
    "rl": RLStageConfig,
    "draft": DraftStageConfig,
    "patient": PatientStageConfig,
    "disease": DiseaseStageConfig,
    "review": ReviewStageConfig,
    "graph": GraphStageConfig,
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
    style: StyleStageConfig
    rm: RewardStageConfig
    dpo: DPOStageConfig
    rl: RLStageConfig
    draft: DraftStageConfig
    patient: PatientStageConfig
    disease: DiseaseStageConfig
    review: ReviewStageConfig
    graph: GraphStageConfig

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
