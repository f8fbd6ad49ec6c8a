"""Typed configuration: one pydantic model per stage, the one source of defaults.

Every setting of a run lives in a stage config below (``RunConfig``, ``DataConfig``,
``SFTStageConfig`` ...), with its default: **the defaults are the default model's settings**
(SmolLM2-135M-Instruct on a 2-core CPU, ``params/smollm2-135m.yaml``, which therefore holds
almost nothing). A params file ``params/<name>.yaml`` holds only what differs for its model,
nested by stage::

    # params/llama-3b.yaml
    model:
      name: llama-3b
    sft:
      lora_targets: all-linear
      learning_rate: 2.0e-4

``inherit: <other params name>`` at the top of a file starts from that file (``llama-7b``
is ``llama-3b`` with another model). Unknown stages or keys and wrong types are errors
naming the file and the key (``sft.learning_rat``); a broken YAML names the file.

In a notebook the ``parameters`` cell only chooses the run (papermill overrides it)::

    params = "smollm2-135m"   # params/<name>.yaml
    overrides = {}            # e.g. {"sft": {"max_steps": 2}}: what differs for this run

and the first cell loads it: ``cfg = config.load_params(params, overrides)``; then
``cfg.sft.learning_rate``, ``cfg.model.name`` ... The manifest records both.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from radimpress_lib.core.paths import PARAMS_DIR, PROJECT_ROOT


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class RunConfig(_Stage):
    """Identity of a run: which params file, where it writes, its seed."""

    name: str = Field(description="name of the params file / output folder, e.g. 'smollm2-135m' (set by the loader)")
    seed: int = Field(42, description="global seed (python, numpy, torch, data subsampling)")
    output_dir: str | None = Field(None, description="output folder, relative to the project root; None: outputs/<name>")

    @model_validator(mode="after")
    def _default_output(self) -> "RunConfig":
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", f"outputs/{self.name}")
        return self


class DataConfig(_Stage):
    """Where the reports come from and how strictly they are validated."""

    dir: str | None = Field(None, description="data folder; None: $RADIMPRESS_DATA, then ../shared/data, then data/")
    source: Literal["benchmark", "openi_csv", "openi_xml", "user"] = "benchmark"
    strict: bool = Field(False, description="raise on the first bad row instead of skipping and counting")
    max_chars: int = Field(4000, gt=0, description="longest accepted findings/impression, in characters")
    limit_train: int | None = Field(None, gt=0, description="seeded subsample of train (smoke/CI runs)")
    limit_eval: int | None = Field(None, gt=0, description="seeded subsample of validate and test")
    user_path: str | None = Field(None, description="user CSV/JSONL/Parquet when source='user'")
    user_columns: dict[str, str] = Field(
        default_factory=dict, description="canonical field -> user column, e.g. {'radiologist_id': 'reader'}"
    )
    modalities: list[str] = Field(
        default_factory=lambda: ["XR"], description="studies the model is for: a user's reports of another modality "
        "are skipped and counted (out_of_scope), and `radimpress draft` flags or refuses them; CR/DX count as XR; "
        "[]: any")
    body_parts: list[str] = Field(
        default_factory=lambda: ["CHEST"], description="body parts the model is for (THORAX counts as CHEST); as "
        "modalities; []: any")
    synthetic_fallback: bool = Field(
        False, description="when no data folder is asked for or found, run on a labelled synthetic sample generated "
        "at run time (radimpress_lib.data.synthetic) instead of failing; never used when real data is found")


class ModelConfig(_Stage):
    """Which base model and how it is loaded."""

    name: str = Field(
        "smollm2-135m", description="registry name: smollm2-135m, tiny-llama, tiny-mistral, llama-3b, llama-7b, mistral-7b")
    path: str | None = Field(None, description="local folder holding the hub model (offline machines)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: fp32 on CPU, bf16 on CUDA; bf16/fp16 asked on CPU warns and runs fp32"
    )
    cache_dir: str | None = Field(None, description="cache of converted models; None: .cache/models")


class ExploreConfig(_Stage):
    """Notebook 01: data exploration."""

    top_k: int = Field(15, gt=0, description="rows in the frequency tables (templates, labels, indications)")
    figure_format: Literal["png", "svg", "pdf"] = "png"


#: Storage dtype of a trunk cache (radimpress_lib.llm.trunk): fp32 is exact; fp16 halves the memory (max logit
#: error ~1e-2 on SmolLM2-135M); bf16 is 6x worse than fp16 for no gain on CPU.
CacheDtype = Literal["float32", "float16", "bfloat16"]
#: How the reward model's factual train pairs draw corruption types
#: (:func:`radimpress_lib.train.reward.build_factual_pairs`).
FactualMix = Literal["natural", "balanced"]


class SFTStageConfig(_Stage):
    """Notebook 02: supervised fine-tuning (LoRA / QLoRA / full; CPU fp32 or CUDA).

    Two trainers (``trainer``): ``cached`` (the CPU default: only the top ``top_layers`` layers train,
    from a trunk cache computed once, :mod:`radimpress_lib.train.cached`) and ``trl`` (TRL's
    ``SFTTrainer`` on every layer: the GPU params files, QLoRA, unsloth, multi-process runs).
    """

    trainer: Literal["cached", "trl"] = Field(
        "cached", description="cached: train the top `top_layers` layers from a trunk cache computed once (CPU; "
        "radimpress_lib.train.cached); trl: TRL SFTTrainer on every layer (GPU, qlora, unsloth, distributed)")
    top_layers: int | None = Field(
        6, gt=0, description="cached trainer: decoder layers trained (LoRA or full); the layers below are computed "
        "once per example and cached; null: every layer (ignored by the trl trainer, which trains all layers)")
    cache_dtype: CacheDtype = Field("float32", description="cached trainer: storage dtype of the trunk cache")
    cache_dir: str | None = Field(
        None, description="cached trainer: folder (project-relative, git-ignored, e.g. .cache/trunk) where trunk caches "
        "are kept between runs under a key of the trunk weights, tokenizer, token rows, layer and dtype; null: memory")
    protocols: list[Literal["deduplicated", "published"]] = Field(
        default_factory=lambda: ["deduplicated", "published"],
        description="models notebook 02 trains with this recipe: deduplicated (always; train after the leakage guard, "
        "outputs/<model>/sft) and published (train as given, protocol A of notebook 05, outputs/<model>/sft_published; "
        "skipped when the data has no benchmark split); the cached trainer shares their identical trunk rows")
    method: Literal["lora", "qlora", "full"] = Field("lora", description="lora | qlora (CUDA only) | full")
    lora_r: int = Field(16, gt=0, description="LoRA rank")
    lora_alpha: int = Field(32, gt=0, description="LoRA alpha (scaling = alpha / r)")
    lora_dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="dropout on the LoRA input; 0 by default: on CPU its random masks cost ~18% of a step",
    )
    lora_targets: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="'all-linear' or module names, e.g. [q_proj, k_proj, v_proj, o_proj]",
    )
    learning_rate: float = Field(1e-3, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler: Literal["linear", "cosine", "constant_with_warmup"] = Field("cosine")
    epochs: float = Field(1.0, gt=0, description="epochs over the train split (ignored when max_steps > 0)")
    max_steps: int = Field(-1, description="optimizer steps; -1: run epochs")
    per_device_batch: int = Field(8, gt=0, description="sequences per micro-batch")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    max_seq_len: int = Field(512, gt=16, description="longest example; longer findings are truncated")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="share of steps with linear warmup")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(5, gt=0, description="optimizer steps between progress lines")
    save_steps: int = Field(30, gt=0, description="optimizer steps between resumable checkpoints")
    save_total_limit: int = Field(2, gt=0, description="checkpoints kept on disk")
    eval_steps: int = Field(0, ge=0, description="steps between eval-loss passes; 0: only at the end")
    padding_free: bool = Field(False, description="flatten each batch into one padding-free row (best on GPU)")
    group_by_length: bool = Field(True, description="length-grouped padded batches (best on CPU)")
    gradient_checkpointing: bool | None = Field(None, description="None: on for CUDA, off for CPU")
    num_threads: int | None = Field(None, gt=0, description="torch threads; None: physical cores")
    use_unsloth: bool = Field(False, description="unsloth FastLanguageModel (CUDA only)")
    retrieval_k: int = Field(
        3, ge=0, le=10,
        description="retrieval-augmented prompts: impressions of the k most similar training reports after the "
        "findings (training: leave-one-out; generation: the same k); 0: none",
    )

    @model_validator(mode="after")
    def _check(self) -> "SFTStageConfig":
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use epochs) or positive, got {self.max_steps}")
        if self.padding_free and self.group_by_length:
            raise ValueError("choose one of padding_free and group_by_length (padding-free has no padding)")
        if isinstance(self.lora_targets, list) and not self.lora_targets:
            raise ValueError("lora_targets is empty; use 'all-linear' or a list of module names")
        if self.trainer == "cached" and (self.method == "qlora" or self.use_unsloth):
            raise ValueError("qlora and unsloth need the trl trainer (sft.trainer: trl) on CUDA")
        if len(set(self.protocols)) != len(self.protocols) or not self.protocols:
            raise ValueError(f"protocols must name each protocol at most once, got {self.protocols}")
        if "deduplicated" not in self.protocols:
            raise ValueError(f"protocols must include deduplicated (the headline model notebooks 03-09 build on), "
                             f"got {self.protocols}")
        return self

    def fingerprint(self) -> str:
        """Short sha256 of the settings that change what a run computes (resume must match)."""
        ignore = {"logging_steps", "save_steps", "save_total_limit", "num_threads", "eval_steps", "cache_dir", "protocols"}
        blob = {k: v for k, v in self.model_dump().items() if k not in ignore}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


class GenerationStageConfig(_Stage):
    """Decoding of impressions (notebooks 05-09, the CLI)."""

    batch_size: int = Field(16, gt=0, description="prompts decoded together")
    max_new_tokens: int = Field(64, gt=0, description="longest impression in tokens")
    num_beams: int = Field(1, gt=0, description="1: greedy; >1: beam search")
    log_every: int = Field(4, gt=0, description="batches between progress lines")
    prefix_cache: bool = Field(
        True, description="prefill the prompts' common token prefix (system prompt, template) once and reuse its "
        "KV cache in every batch (greedy only; same outputs)",
    )


class GraphStageConfig(_Stage):
    """Entity graph of the findings in the SFT model's input (02 and its consumers; ablation: 09)."""

    variant: Literal["none", "text"] = Field(
        "none", description="graph input of the main pipeline's SFT model: none | text (linearised findings graph "
        "in the prompt); the GNN soft-prompt variant is trained and scored by notebook 09",
    )
    ablation_variants: list[Literal["text", "gnn"]] = Field(
        default_factory=lambda: ["text", "gnn"],
        description="variants notebook 09 trains with the SFT settings and compares with 'sft' (no graph) on test",
    )
    ablation_max_steps: int | None = Field(
        40, gt=0, description="notebook 09: optimizer steps of every ablation arm, at equal budget: a no-graph arm "
        "(sft_graph_none) is retrained beside the graph variants with the SFT recipe, all layers (the GNN soft "
        "prompt needs gradients through every layer, so no arm uses the cached trunk); null: each variant trains "
        "with notebook 02's SFT settings and is compared with its 'sft' system, read back",
    )
    include_normal: bool = Field(False, description="text variant: also list normal descriptors")
    max_items: int = Field(12, gt=0, description="text variant: most observation lines in the prompt")
    n_prefix: int = Field(4, gt=0, description="gnn variant: soft-prompt vectors prepended to the prompt")
    d_node: int = Field(128, gt=0, description="gnn variant: node state size")
    n_layers: int = Field(2, ge=0, description="gnn variant: message-passing layers")
    max_nodes: int = Field(48, gt=0, description="gnn variant: most nodes per graph (text order)")
    encoder_lr: float = Field(1e-3, gt=0, description="gnn variant: learning rate of the graph encoder")

    @model_validator(mode="after")
    def _check(self) -> "GraphStageConfig":
        if len(set(self.ablation_variants)) != len(self.ablation_variants):
            raise ValueError(f"ablation_variants repeats a variant: {self.ablation_variants}")
        return self


class EvalStageConfig(_Stage):
    """Notebook 05: which systems are scored and how."""

    n_boot: int = Field(1000, gt=0, description="paired-bootstrap resamples for CIs and p-values")
    zero_shot: bool = Field(True, description="also decode the test split with the base instruct model")
    worst_k: int = Field(10, gt=0, description="worst examples (by ROUGE-L) shown for the SFT model")
    guard_candidates: int = Field(
        4, ge=0, description="factual guard (radimpress_lib.evaluation.factual_guard): beam candidates re-ranked for each "
        "model draft whose entity graph contradicts the findings (negation flip), scored as '<system>_guarded'; 0: off",
    )
    triage: bool = Field(
        True, description="review triage (radimpress_lib.evaluation.triage): decode the validate split with the SFT model, "
        "fit the review-risk model on those drafts, save triage/risk_model.json (used by radimpress draft) and score "
        "every model system's test drafts (triage.json)")
    triage_recall: float = Field(
        0.9, gt=0, le=1, description="operating point: share of erroneous validate drafts (cross-validated) to flag")
    triage_missed_recall: float = Field(
        0.95, gt=0, le=1, description="operating point: share of validate drafts missing an abnormal finding to flag")
    triage_max_flag_rate: float = Field(
        0.3, gt=0, le=1, description="operating point: never flag more than this share of drafts (review budget cap)")
    triage_candidates: int = Field(
        0, ge=0, description="sampled alternative impressions per draft for the candidate-disagreement signal "
        "(an extra decode of validate and test, ~n x greedy); 0: off")
    triage_folds: int = Field(5, ge=2, description="cross-validation folds (regularisation, operating point, ablation)")
    triage_pseudo_k: int = Field(
        1, ge=0, le=10, description="pseudo-draft signal (triage.PseudoDraftModel): an error model fitted on each "
        "train report's k nearest other train reports' impressions, labelled against its reference; its risk is one "
        "more signal of the review-risk model (chosen on validate: bench/triage_levers.py); 0: off")
    mbr_k: int = Field(
        5, ge=0, le=20, description="MBR selection (radimpress_lib.llm.selection): the SFT draft and the impressions of "
        "the k most similar train+validate reports form a candidate set; the consensus candidate is scored as "
        "'sft_mbr' (protocol A: 'sft_published_mbr', neighbours from train as given); 0: off")
    mbr_factual: bool = Field(
        True, description="MBR selection: a retrieved impression is a candidate only when the findings checks flag no "
        "more problems in it than in the draft")
    mbr_flag_penalty: float = Field(
        0.5, ge=0, description="MBR selection: utility lost per problem the findings checks flag in a candidate "
        "(omissions included), in units of expected ROUGE-L against one candidate; 0: off (chosen on validate, "
        "bench/mbr_levers.py)")
    mbr_coverage: bool = Field(
        True, description="MBR selection: also consider the draft preceded by the findings sentences that state the "
        "significant findings it omits (extractive)")
    mbr_twins: bool = Field(
        True, description="MBR selection under protocol A (neighbours may share the report's findings): when train "
        "reports with the report's own normalised findings exist (twins), the evidence is the draft and the twins' "
        "impressions instead of the k nearest (chosen on validate, bench/published_levers.py); protocol B's pool "
        "never holds twins")

    @model_validator(mode="after")
    def _check(self) -> "EvalStageConfig":
        if self.guard_candidates == 1:
            raise ValueError("guard_candidates must be 0 (off) or >= 2 (beam candidates to choose from)")
        return self


class DraftStageConfig(_Stage):
    """``radimpress draft`` (drafting CLI): input limits and batching."""

    max_chars: int = Field(4000, gt=0, description="longest accepted input field (findings, indication, ...)")
    max_reports: int = Field(100_000, gt=0, description="most reports one CLI run accepts")
    batch_size: int = Field(16, gt=0, description="reports read, drafted and written per batch")
    out_of_scope: Literal["flag", "refuse"] = Field(
        "flag", description="a report of a study outside data.modalities / data.body_parts: draft it and flag it "
        "(needs_review, reason out_of_scope) or refuse it (not drafted, counted); --out-of-scope")
    review_budget: float | None = Field(
        None, gt=0, le=1, description="share of drafts to flag for review (threshold from the risk model's validate "
        "risks); None: the risk model's operating threshold chosen in notebook 05; --review-budget")
    worklist_budget: float | None = Field(
        None, gt=0, le=1, description="flag the riskiest share of each run's drafts (its worklist; rounded down, at "
        "least one) instead of a risk threshold: the flag rate is this share whatever the worklist's risks (notebook "
        "05's triage.json 'worklist' figures); rows are written once all are drafted; wins over review_budget; "
        "--worklist-budget")
    select: Literal["mbr", "draft"] = Field(
        "mbr", description="the fine-tuned model's impression: 'mbr' selects among its draft and the impressions of "
        "the eval.mbr_k most similar train+validate reports as notebook 05's sft_mbr (eval.mbr_*; review threshold "
        "from triage/risk_model_sft_mbr.json); 'draft': the greedy draft; --select")


class PatientStageConfig(_Stage):
    """Notebook 07: plain-language rewrite of impressions for patients."""

    split: Literal["validate", "test"] = Field("test", description="split whose impressions are rewritten")
    n_reports: int = Field(40, gt=0, description="seeded sample of impressions rewritten")
    use_llm: bool = Field(True, description="rewrite with the instruct model (glossary as hints); else glossary only")
    max_new_tokens: int = Field(96, gt=0, description="longest LLM rewrite in tokens")
    target_grade: float = Field(8.0, gt=0, description="Flesch-Kincaid grade a rewrite must not exceed")
    fallback: bool = Field(
        True, description="use the glossary rewrite when the LLM one loses/flips a finding or misses the grade"
    )
    min_content_recall: float = Field(
        0.6, ge=0.0, le=1.0,
        description="share of the glossary rewrite's content words the LLM rewrite must keep (else fallback)",
    )


class DiseaseStageConfig(_Stage):
    """Notebook 08: a disease-area slice (keywords + MeSH/Problems terms), evaluation on it, a disease adapter."""

    area: str = Field("oncology", pattern=r"^[a-z0-9_-]+$", description="name of the area (output folder)")
    keywords: list[str] = Field(
        default_factory=lambda: [r"nodul\w*", r"mass(?:es)?", r"lesions?", r"neoplas\w*", r"metasta\w*", r"granulom\w*"],
        description="regular expressions matched case-insensitively as whole words in fields",
    )
    mesh_terms: list[str] = Field(
        default_factory=lambda: ["Nodule", "Mass", "Lesion", "Granuloma", "Calcified Granuloma", "Granulomatous Disease",
                                 "Lung Neoplasms", "Neoplasm Metastasis"],
        description="MeSH / Problems main headings (before '/'), matched case-insensitively",
    )
    fields: list[Literal["findings", "impression", "indication"]] = Field(
        default_factory=lambda: ["findings", "impression"], description="report fields the keywords are searched in"
    )
    init: Literal["general", "base"] = Field(
        "general", description="disease adapter trained on top of the general SFT model (merged) or the base model"
    )
    max_steps: int = Field(60, gt=0, description="optimizer steps of the disease adapter (the other sft settings are shared)")
    mention_c_grid: list[float] = Field(
        default_factory=lambda: [1.0, 3.0, 10.0, 30.0], min_length=1,
        description="L2 strengths C of the slice mention model (does the impression of these findings name a finding "
        "of the area?) tried on the validate slice; the disease system uses the chosen one")
    mention_threshold: float = Field(
        0.5, gt=0, lt=1, description="mention-model probability from which the disease system prepends the findings "
        "sentences naming a finding of the area that its MBR choice leaves out")

    @model_validator(mode="after")
    def _check(self) -> "DiseaseStageConfig":
        import re

        if not self.keywords and not self.mesh_terms:
            raise ValueError("give keywords or mesh_terms (or both)")
        for kw in self.keywords:
            try:
                re.compile(kw)
            except re.error as exc:
                raise ValueError(f"keywords: {kw!r} is not a regular expression ({exc})") from None
        if not self.fields:
            raise ValueError("fields is empty")
        return self


class StyleStageConfig(_Stage):
    """Radiologist style groups, style classifier and style slot of the prompt (notebooks 01, 03-05)."""

    group_method: Literal["readers", "impressions"] = Field(
        "readers", description="readers: k-means on impressions with a normal-study statement, other reports by "
        "their findings phrasing; impressions: k-means on every impression (see radimpress_lib.clinical.style)"
    )
    k_min: int = Field(3, ge=2, description="fewest pseudo-radiologist groups tried (k-means)")
    k_max: int = Field(8, ge=2, description="most groups tried; K = argmax mean silhouette (ties: smaller K)")
    silhouette_sample: int = Field(2000, gt=10, description="train impressions the silhouette is computed on")
    unseen_group: str | None = Field(
        "auto", description="group held out of the fine stage for the few-shot case: 'auto', a group id, or null"
    )
    fewshot_k: int = Field(3, gt=0, description="example impressions in the few-shot style slot (train/validate)")
    classifier_c: float = Field(4.0, gt=0, description="inverse L2 strength of the style classifier")
    examples_per_group: int = Field(4, gt=0, description="example impressions shown per group in notebook 01")

    @model_validator(mode="after")
    def _check(self) -> "StyleStageConfig":
        if self.k_min > self.k_max:
            raise ValueError(f"k_min={self.k_min} > k_max={self.k_max}")
        return self


class RewardStageConfig(_Stage):
    """Notebook 03: reward model (LoRA on the last layers + trained score head) on style and factual pairs.

    Trainers: ``cached`` (CPU default: the layers below ``lora_last_layers`` computed once per pair, prompt
    shared by chosen and rejected; :mod:`radimpress_lib.train.cached`) or ``trl`` (TRL ``RewardTrainer``).
    """

    trainer: Literal["cached", "trl"] = Field(
        "cached", description="cached: LoRA layers trained from a trunk cache of the pairs (one prompt per pair); "
        "trl: TRL RewardTrainer")
    cache_dtype: CacheDtype = Field("float32", description="cached trainer: storage dtype of the trunk cache")
    cache_dir: str | None = Field(None, description="cached trainer: folder kept between runs (see sft.cache_dir)")

    train_pairs: int = Field(512, gt=0, description="train-split pairs (half style, half factual)")
    eval_pairs: int = Field(
        256, gt=0, description="held-out validation-split pairs (half style, half factual: each kind's accuracy "
        "is read on 128 pairs)")
    factual_mix: FactualMix = Field(
        "balanced", description="train pairs' corruption types: natural (uniform among the types that apply to "
        "each impression) or balanced (the type with the fewest pairs so far first, so the rarely applicable "
        "ones are not left rare; bench/rm_scaling.py); held-out pairs stay natural")
    restyle_share: float = Field(
        0.5, ge=0, le=1, description="train style pairs: least share of restyles (the impression rewritten in another "
        "radiologist's template) even where another radiologist's same-content impression exists, so RL cannot gain "
        "reward by another radiologist's template; 0: restyles only where none exists (bench/rm_scaling.py); "
        "held-out pairs keep 0")
    max_length: int = Field(384, gt=16, description="longest prompt+impression; longer findings are truncated")
    prompt_similar: bool = Field(
        True, description="the reward model also reads the prompt's 'Impressions of similar reports' (the policy's "
        "retrieval context); false: style slot, clinical fields and findings only"
    )
    lora_r: int = Field(8, gt=0, description="LoRA rank")
    lora_alpha: int = Field(16, gt=0, description="LoRA alpha")
    lora_last_layers: int | None = Field(
        4, gt=0, description="LoRA only on the last N decoder layers (backward stops there; CPU speed); null: all"
    )
    learning_rate: float = Field(3e-3, gt=0)
    epochs: float = Field(1.0, gt=0, description="epochs over the train pairs (ignored when max_steps > 0)")
    max_steps: int = Field(-1, description="optimizer steps; -1: epochs")
    per_device_batch: int = Field(4, gt=0, description="pairs per optimizer step")
    center_rewards: float | None = Field(0.01, description="TRL center_rewards_coefficient (null: off)")
    logging_steps: int = Field(2, gt=0)


class DPOStageConfig(_Stage):
    """Notebook 04, first half: DPO (LoRA on top of the SFT model, which is the reference).

    Trainers: ``cached`` (CPU default: layers below ``lora_last_layers`` and the reference log-probs
    computed once per pair; :mod:`radimpress_lib.train.cached`) or ``trl`` (TRL ``DPOTrainer``).
    """

    trainer: Literal["cached", "trl"] = Field(
        "cached", description="cached: LoRA layers trained from a trunk cache of the pairs, reference log-probs "
        "computed once; trl: TRL DPOTrainer (reference = adapter disabled, every step)")
    cache_dtype: CacheDtype = Field("float32", description="cached trainer: storage dtype of the trunk cache")
    cache_dir: str | None = Field(None, description="cached trainer: folder kept between runs (see sft.cache_dir)")
    epochs: float = Field(1.0, gt=0, description="epochs over the pairs (ignored when max_steps > 0)")

    train_pairs: int = Field(256, gt=0, description="train-split preference pairs (half style, half factual)")
    beta: float = Field(0.1, gt=0, description="DPO beta (strength of the pull to the SFT reference)")
    learning_rate: float = Field(5e-4, gt=0)
    max_steps: int = Field(-1, description="optimizer steps; -1: `epochs` over the pairs")
    per_device_batch: int = Field(8, gt=0)
    max_length: int = Field(384, gt=16, description="longest prompt+impression; longer findings are truncated")
    lora_r: int = Field(8, gt=0)
    lora_alpha: int = Field(16, gt=0)
    lora_last_layers: int | None = Field(8, gt=0, description="LoRA on the last N decoder layers; null: all")
    logging_steps: int = Field(1, gt=0)


class RLStageConfig(_Stage):
    """Notebook 04, second half: GRPO with reward model + rule factual reward - length penalty, KL to SFT.

    Trainers: ``trl`` (TRL ``GRPOTrainer`` / ``RLOOTrainer``) or ``cached`` (GRPO with TRL's defaults, each
    prompt computed once per group of completions and the layers below the adapter once per step;
    :mod:`radimpress_lib.train.rl_cached`; GRPO only).
    """

    trainer: Literal["trl", "cached"] = Field(
        "cached", description="trl: TRL's online trainer (every completion a full sequence); cached: GRPO with each "
        "prompt computed once per group and the frozen layers once per step (LLaMA-type models, GRPO only)")
    algorithm: Literal["grpo", "rloo"] = Field("grpo", description="online RL algorithm")
    start: Literal["dpo", "sft"] = Field(
        "dpo", description="policy RL starts from: dpo: the DPO adapter (trained on); sft: a fresh adapter on the SFT "
        "model with the DPO stage's LoRA settings (the DPO model is still trained and evaluated beside it)")
    prompts: int = Field(200, gt=0, description="train-split prompts (seen radiologists, their style prefix); "
                         "max_steps x prompts_per_step: each prompt once")
    max_steps: int = Field(100, gt=0, description="optimizer steps")
    num_generations: int = Field(4, ge=2, description="completions per prompt (group size)")
    prompts_per_step: int = Field(2, gt=0, description="prompts per optimizer step")
    max_new_tokens: int = Field(32, gt=0, description="longest sampled impression in tokens")
    max_prompt_tokens: int = Field(320, gt=16, description="longer findings are truncated for RL prompts")
    temperature: float = Field(
        0.7, gt=0, description="sampling temperature of the groups (1.0: the gains stay in the sampled tail and do not "
        "reach the greedy drafts; bench/rl_steps.py)")
    beta: float = Field(0.3, ge=0, description="KL coefficient to the SFT model")
    learning_rate: float = Field(2e-4, gt=0)
    w_reward_model: float = Field(1.0, ge=0, description="weight of the reward-model score")
    w_factual: float = Field(
        2.0, ge=0, description="weight of the labeler consistency with the findings (2.0: fewer drafts asserting a "
        "finding their findings lack than 1.0, at a smaller reward-model gain; bench/rl_steps.py, two seeds)")
    w_length: float = Field(1.0, ge=0, description="weight of the length penalty |log(len / reference len)|")
    guard_length_ratio: list[float] = Field([0.5, 2.0], description="allowed generated/reference length ratio")
    guard_min_distinct: float = Field(0.3, ge=0, le=1, description="least share of distinct impressions")
    eval_reports: int = Field(24, gt=0, description="validation reports decoded for the guards after training")
    logging_steps: int = Field(10, gt=0, description="optimizer steps between progress lines (the cached trainer's "
                               "curves keep every step; TRL's trainer records its curves at these steps only)")

    @model_validator(mode="after")
    def _check(self) -> "RLStageConfig":
        low_high = self.guard_length_ratio
        if len(low_high) != 2 or not 0 < low_high[0] < low_high[1]:
            raise ValueError(f"guard_length_ratio must be [low, high] with 0 < low < high, got {low_high}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.trainer == "cached" and self.algorithm != "grpo":
            raise ValueError(f"rl.trainer: cached implements GRPO only, got rl.algorithm: {self.algorithm}")
        return self


class ReviewStageConfig(_Stage):
    """Notebook 06: physician review (blinded candidates, feedback store, analysis, pairs for DPO)."""

    mode: Literal["headless", "interactive"] = Field(
        "headless", description="headless: replay scripted judgements through the widgets (papermill); "
        "interactive: show the widget to a physician")
    db: str = Field("review/feedback.sqlite", description="SQLite feedback store, relative to the output folder "
                    "(interactive: to the session folder)")
    session: str = Field(
        "default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="interactive: name of the session folder outputs/<model>/review_sessions/<session>/ that receives "
        "the session's store, review.json, figures, HTML and manifest (the reference run's files are written only "
        "headless, by make reproduce)")
    eval_items: int = Field(20, ge=0, description="test reports reviewed for evaluation (never trained on)")
    feedback_items: int = Field(
        12, ge=0, description="train reports decoded by the SFT model and reviewed for feedback pairs; 0: none")
    systems: list[str] | None = Field(
        None, description="prediction files (outputs/<model>/predictions/<name>.jsonl) shown; null: all found")
    include_reference: bool = Field(
        True, description="show the reference impression as a blinded candidate on evaluation items (feedback items "
        "show drafts only)")
    script: str | None = Field(
        None, description="headless: JSONL of scripted judgements (project-relative); null: simulated reviewers")
    reviewers: list[str] = Field(
        ["simulated-1", "simulated-2"], description="headless without a script: simulated reviewer ids "
        "(must start with 'simulated'; rule-based policy, never physician data)")
    sim_noise: float = Field(0.25, ge=0, le=1, description="chance a simulated rating moves one step")
    sim_edit_rate: float = Field(0.5, ge=0, le=1, description="chance a simulated reviewer 'edits' a weak "
                                        "preferred candidate into the reference")
    pairs_to_dpo: bool = Field(False, description="add the review's preference pairs to the next DPO run (04)")
    pairs_include_simulated: bool = Field(
        False, description="let simulated reviewers' pairs reach DPO (tests/CI only)")
    pairs_min_rating_gap: int = Field(2, ge=1, description="rating pairs need a Likert gap of at least this")

    @model_validator(mode="after")
    def _check(self) -> "ReviewStageConfig":
        if self.mode == "headless" and self.script is None:
            bad = [r for r in self.reviewers if not r.strip().lower().startswith("simulated")]
            if bad or not self.reviewers:
                raise ValueError(f"headless review without a script needs simulated reviewer ids "
                                 f"(starting with 'simulated'), got {self.reviewers}")
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
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    explore: ExploreConfig = Field(default_factory=ExploreConfig)
    sft: SFTStageConfig = Field(default_factory=SFTStageConfig)
    gen: GenerationStageConfig = Field(default_factory=GenerationStageConfig)
    eval: EvalStageConfig = Field(default_factory=EvalStageConfig)
    style: StyleStageConfig = Field(default_factory=StyleStageConfig)
    rm: RewardStageConfig = Field(default_factory=RewardStageConfig)
    dpo: DPOStageConfig = Field(default_factory=DPOStageConfig)
    rl: RLStageConfig = Field(default_factory=RLStageConfig)
    draft: DraftStageConfig = Field(default_factory=DraftStageConfig)
    patient: PatientStageConfig = Field(default_factory=PatientStageConfig)
    disease: DiseaseStageConfig = Field(default_factory=DiseaseStageConfig)
    review: ReviewStageConfig = Field(default_factory=ReviewStageConfig)
    graph: GraphStageConfig = Field(default_factory=GraphStageConfig)

    _provenance: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def provenance(self) -> dict[str, Any]:
        """Which params file and which overrides made this run (``{"params": name, "overrides": {...}}``)."""
        return copy.deepcopy(self._provenance)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Every setting, nested by stage (what the manifest records)."""
        return {stage: getattr(self, stage).model_dump() for stage in STAGES}

    def params_hash(self, *stages: str) -> str:
        """Short sha256 of the given stages' parameters (all stages when none given)."""
        chosen = stages or tuple(STAGES)
        blob = {s: getattr(self, s).model_dump() for s in chosen}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]

    def override(self, overrides: Mapping[str, Any] | None, *, source: str = "overrides") -> "Params":
        """A copy with ``overrides`` (nested ``{stage: {key: value}}``) applied and validated."""
        if not overrides:
            return self
        out = from_mapping(_deep_merge(self.to_dict(), overrides, source), source=source)
        out._provenance = {"params": self._provenance.get("params"),
                           "overrides": _deep_merge(self._provenance.get("overrides") or {}, overrides, source)}
        return out

    @property
    def output_dir(self) -> Path:
        """Absolute output folder (``run.output_dir`` is relative to the project root)."""
        out = Path(self.run.output_dir)
        return out if out.is_absolute() else PROJECT_ROOT / out


class ParamsError(ValueError):
    """A params file, override or notebook parameter that does not match the declared configs."""


def defaults(name: str = "defaults") -> dict[str, dict[str, Any]]:
    """The default value of every setting, nested by stage (``run.name`` = ``name``)."""
    return from_mapping({"run": {"name": name}}).to_dict()


def _deep_merge(base: Mapping[str, Any], update: Mapping[str, Any], source: str) -> dict[str, Any]:
    if not isinstance(update, Mapping):
        raise ParamsError(f"{source}: expected a mapping of stage -> {{key: value}}, got {type(update).__name__}")
    out = copy.deepcopy(dict(base))
    for stage, values in update.items():
        if stage not in STAGES:
            raise ParamsError(f"{source}: unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        if not isinstance(values, Mapping):
            raise ParamsError(f"{source}: {stage}: expected a mapping of key -> value, got {type(values).__name__}")
        out.setdefault(stage, {}).update(values)
    return out


def from_mapping(values: Mapping[str, Any], *, source: str = "<params>") -> Params:
    """Validate a nested ``{stage: {key: value}}`` mapping into :class:`Params`.

    Missing stages and keys take their defaults; unknown stages or keys and type errors are
    :class:`ParamsError` naming ``source`` and the key (``sft.learning_rate``).
    """
    if not isinstance(values, Mapping):
        raise ParamsError(f"{source}: expected a mapping of stage -> {{key: value}}, got {type(values).__name__}")
    unknown = sorted(set(values) - set(STAGES))
    problems = [f"unknown stage {s!r}" for s in unknown]
    stages: dict[str, Any] = {}
    for stage, cls in STAGES.items():
        sub = values.get(stage) or {}
        if not isinstance(sub, Mapping):
            problems.append(f"{stage}: expected a mapping of key -> value, got {type(sub).__name__}")
            continue
        bad = sorted(set(sub) - set(cls.model_fields))
        problems.extend(f"unknown key {stage}.{k}" for k in bad)
        if bad:
            continue
        try:
            stages[stage] = cls(**sub)
        except ValidationError as exc:
            problems.extend(
                f"{stage}.{'.'.join(str(p) for p in e['loc']) or '(stage)'}: {e['msg']} (got {e.get('input')!r})"
                for e in exc.errors())
    if problems:
        raise ParamsError(f"{source}: " + "; ".join(problems) + " (see radimpress_lib/core/config.py)")
    return Params(**stages)


def params_path(name: str) -> Path:
    """``params/<name>.yaml`` under the project root."""
    return PARAMS_DIR / f"{name}.yaml"


def _read_yaml(path: Path, chain: tuple[str, ...] = ()) -> dict[str, Any]:
    """The nested values of a params file, with ``inherit:`` resolved (parents first)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        available = sorted(p.stem for p in PARAMS_DIR.glob("*.yaml"))
        raise ParamsError(f"{path}: no such params file; available: {available}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        raise ParamsError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise ParamsError(f"{path}: expected a mapping of stage -> {{key: value}}, got {type(values).__name__}")
    parent = values.pop("inherit", None)
    if parent is None:
        return values
    if not isinstance(parent, str) or path.stem in chain or parent in chain:
        raise ParamsError(f"{path}: inherit must name another params file without cycles, got {parent!r}")
    base = _read_yaml(params_path(parent), chain + (path.stem,))
    return _deep_merge(base, values, str(path))


def load_params(name_or_path: str | Path, overrides: Mapping[str, Any] | None = None) -> Params:
    """Read and validate ``params/<name>.yaml`` (or a path to a YAML file), then apply ``overrides``.

    ``run.name`` is the file's stem and ``run.output_dir`` defaults to ``outputs/<name>``.
    """
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = params_path(str(name_or_path))
    elif not path.is_absolute() and not path.exists():
        path = PROJECT_ROOT / path
    values = _read_yaml(path)
    run = values.setdefault("run", {})
    if not isinstance(run, dict):
        raise ParamsError(f"{path}: run: expected a mapping of key -> value, got {type(run).__name__}")
    run.setdefault("name", path.stem)
    params = from_mapping(values, source=str(path))
    params._provenance = {"params": path.stem if path.parent.resolve() == PARAMS_DIR.resolve() else str(path),
                          "overrides": {}}
    return params.override(overrides, source=f"{path.name} overrides")
