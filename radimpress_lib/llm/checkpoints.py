"""The run's models: base model, SFT model (adapter merged), adapters applied to a base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from radimpress_lib.core.artifacts import sft_dir
from radimpress_lib.core.config import Params
from radimpress_lib.llm import models
from radimpress_lib.llm.callbacks import quiet_library_warnings


def apply_adapter(model: PreTrainedModel, adapter_dir: str | Path, *, merge: bool = True) -> Any:
    """Load a LoRA adapter saved by :func:`train_sft` onto a fresh base model.

    With ``merge`` (default) the adapter is folded into the weights, so generation runs at
    base-model speed; otherwise the ``PeftModel`` is returned.
    """
    from peft import PeftModel

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter folder from train_sft)")
    with quiet_library_warnings():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
        return peft_model.merge_and_unload() if merge else peft_model


def load_base_model(params: Params, *, padding_side: str = "left"):
    """The run's base model and tokenizer (see :func:`radimpress_lib.llm.models.load_model_and_tokenizer`)."""

    m = params.model
    return models.load_model_and_tokenizer(m.name, model_path=m.path, dtype=m.dtype,
                                           cache_dir=m.cache_dir, padding_side=padding_side,
                                           seed=params.run.seed)


def load_finetuned(params: Params, *, padding_side: str = "left"):
    """The SFT model of notebook 02 (LoRA merged into the base, or the full fine-tuned model)."""
    folder = sft_dir(params) / ("model" if params.sft.method == "full" else "adapter")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no fine-tuned model for run {params.run.name!r}; run notebook 02 first "
                                f"(make reproduce MODEL={params.run.name} NOTEBOOKS=02)")
    if params.sft.method == "full":

        m = params.model
        return models.load_model_and_tokenizer(m.name, model_path=str(folder), dtype=m.dtype,
                                               cache_dir=m.cache_dir, padding_side=padding_side,
                                               seed=params.run.seed)
    model, tokenizer, info = load_base_model(params, padding_side=padding_side)
    model = apply_adapter(model, folder, merge=True)
    return model, tokenizer, info | {"adapter": str(folder.relative_to(params.output_dir))}
