"""Chat prompts for findings -> impression, and supervised examples with completion-only labels.

One prompt layout is shared by fine-tuning, zero-/few-shot generation and the later
personalisation stage, so a model is always asked the same question:

* **system**: the task instruction, plus an optional *style* paragraph (a radiologist id,
  a style prefix or k example impressions written by that radiologist);
* **user**: the clinical data that are known (modality, body part, indication,
  comparison) and the findings; optionally the findings' entity graph as text (one line
  per observation) and (retrieval-augmented prompts) the impressions of the k most
  similar training reports, after the findings;
* **assistant**: the impression (only in training examples).

Prompts are rendered with the tokenizer's own chat template
(``tokenizer.apply_chat_template``). Training examples are labelled so that the loss is
computed on the completion only: every prompt token is labelled ``-100`` and the
completion is the impression followed by the template's end-of-turn token
(``<|im_end|>`` for ChatML templates, else ``eos``) so the model learns to stop.

Over-long examples are fitted to ``max_len`` by truncating the *findings* (from the end,
on token boundaries); the impression is never truncated. Every truncation is counted
and reported (:class:`SFTDatasetStats`); an example that cannot fit even with empty
findings is an error naming the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets

__all__ = [
    "SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "PromptError",
    "SFTDatasetStats",
    "build_messages",
    "build_prompt",
    "build_sft_example",
    "build_sft_dataset",
    "cut_at_end",
    "end_of_turn_token_ids",
    "pad_token_id",
    "without_similar",
]

#: Label of tokens that do not contribute to the loss (PyTorch / transformers convention).
IGNORE_INDEX = -100

#: The task instruction (system message).
#: Kept short on purpose: it is part of every prompt, so each token costs prefill time at
#: generation and compute at training (SmolLM2: 30 tokens; the template adds ~19).
SYSTEM_PROMPT = (
    "You are a radiologist. Write the IMPRESSION of the report: a concise summary of the "
    "key findings. Reply with the impression only."
)

#: Heading of the retrieved impressions of similar reports (retrieval-augmented prompts), shown
#: after the findings when a record carries ``similar_impressions`` (see
#: :func:`radimpress_lib.llm.retrieval.with_similar_impressions`).
SIMILAR_HEADING = "Impressions of similar reports:"

#: Heading of the linearised entity graph of the findings (graph-as-text prompts), shown after the
#: findings when a record carries ``findings_graph`` (see :func:`radimpress_lib.clinical.graph.with_findings_graph`).
GRAPH_HEADING = "Entity graph of the findings:"

#: Heading of the style paragraph appended to the system message when a style is given.
STYLE_HEADING = "Write the impression in this style:"

#: Chat-template end-of-turn markers that may end an assistant turn, in order of preference.
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")

#: Clinical fields shown in the user message when non-empty: (record field, label).
_FIELD_LABELS = (
    ("modality", "Modality"),
    ("body_part", "Body part"),
    ("indication", "Indication"),
    ("comparison", "Comparison"),
)


class PromptError(ValueError):
    """A record that cannot be turned into a prompt or a training example."""


def _report_id(record: Mapping[str, Any]) -> str:
    rid = record.get("report_id")
    src = record.get("source")
    if rid is None and src is None:
        return "<record without report_id>"
    return f"report_id={rid!r}" + (f" (source {src})" if src else "")


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise PromptError(f"{_report_id(record)}: field {name!r} must be a string, got {type(value).__name__}")
    return value.strip()


def _user_message(record: Mapping[str, Any], findings: str | None = None) -> str:
    lines = []
    for name, label in _FIELD_LABELS:
        value = _text(record, name)
        if value:
            lines.append(f"{label}: {value}")
    body = _text(record, "findings") if findings is None else findings
    lines.append(f"Findings: {body}")
    graph_text = record.get("findings_graph")
    if graph_text:
        if not isinstance(graph_text, str):
            raise PromptError(f"{_report_id(record)}: field 'findings_graph' must be a string (a linearised graph)")
        lines.append(GRAPH_HEADING)
        lines.append(graph_text.strip())
    similar = record.get("similar_impressions")
    if similar:
        if isinstance(similar, str) or not all(isinstance(s, str) for s in similar):
            raise PromptError(f"{_report_id(record)}: field 'similar_impressions' must be a list of strings")
        lines.append(SIMILAR_HEADING)
        lines.extend(f"- {' '.join(s.split())}" for s in similar)
    return "\n".join(lines)


def without_similar(messages: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    """``messages`` with the user turn's "Impressions of similar reports" block removed.

    That block (the retrieval context, :data:`SIMILAR_HEADING` and its ``- `` lines) is always
    last in the user message; it is cut only when everything after the heading is such lines,
    so findings that happen to quote the heading are kept whole.
    """
    marker = f"\n{SIMILAR_HEADING}\n"
    out = []
    for message in messages:
        content = message["content"]
        if message["role"] == "user" and marker in content:
            head, _, tail = content.rpartition(marker)
            if all(line.startswith("- ") for line in tail.split("\n")):
                content = head
        out.append({**message, "content": content})
    return out


def _system_message(style: str | None) -> str:
    if style is None or not style.strip():
        return SYSTEM_PROMPT
    return f"{SYSTEM_PROMPT}\n\n{STYLE_HEADING}\n{style.strip()}"


def build_messages(
    record: Mapping[str, Any],
    style: str | None = None,
    *,
    with_impression: bool = False,
    findings_override: str | None = None,
) -> list[dict[str, str]]:
    """Chat messages (system, user[, assistant]) for one canonical record.

    Args:
        record: a canonical record (see :mod:`radimpress_lib.core.schema`); only ``findings``
            is required, ``modality``, ``body_part``, ``indication`` and ``comparison``
            are shown when non-empty, ``impression`` when ``with_impression``.
        style: optional style slot (radiologist id, style prefix or example impressions),
            appended to the system message.
        with_impression: append the assistant turn holding the impression.
        findings_override: use this text instead of ``record['findings']`` (truncation).

    Raises:
        PromptError: empty findings, or an empty impression when ``with_impression``.
    """
    if findings_override is None and not _text(record, "findings"):
        raise PromptError(f"{_report_id(record)}: field 'findings' is empty")
    messages = [
        {"role": "system", "content": _system_message(style)},
        {"role": "user", "content": _user_message(record, findings_override)},
    ]
    if with_impression:
        impression = _text(record, "impression")
        if not impression:
            raise PromptError(f"{_report_id(record)}: field 'impression' is empty")
        messages.append({"role": "assistant", "content": impression})
    return messages


def _require_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise PromptError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)!r} has no chat template; "
            "set tokenizer.chat_template (e.g. a ChatML template) before building prompts"
        )


def build_prompt(tokenizer: Any, record: Mapping[str, Any], style: str | None = None) -> str:
    """The prompt text for generation: system + user turns and the assistant header."""
    _require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(
        build_messages(record, style), tokenize=False, add_generation_prompt=True
    )


def end_of_turn_token_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the chat end-of-turn marker(s) and ``eos``.

    The first id is the one training examples end with.
    """
    ids: list[int] = []
    for tok in _END_OF_TURN_TOKENS:
        # convert_tokens_to_ids maps unknown tokens to unk/None; the round trip tells them apart
        # (and is far cheaper than get_vocab(), which copies the whole vocabulary).
        tid = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(tid, int) and tokenizer.convert_ids_to_tokens(tid) == tok:
            ids.append(tid)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise PromptError("tokenizer has neither an end-of-turn token nor an eos token")
    return ids


def pad_token_id(tokenizer: Any, end_ids: Sequence[int]) -> int:
    """The tokenizer's pad id, or the first end-of-turn id when it has none (padding for generation)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_ids[0]


def cut_at_end(tokens: Sequence[int], end_ids: Sequence[int]) -> tuple[list[int], bool]:
    """Generated tokens up to (not including) the first end-of-turn id, and whether one was found."""
    stop = next((k for k, t in enumerate(tokens) if t in end_ids), None)
    return (list(tokens) if stop is None else list(tokens[:stop])), stop is not None


def _ids(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=add_generation_prompt, return_dict=False
    )
    # Some tokenizers return a BatchEncoding even with return_dict=False.
    if isinstance(out, Mapping):
        out = out["input_ids"]
    return list(out)


def _tokenize_pair(
    tokenizer: Any, record: Mapping[str, Any], style: str | None, findings: str | None
) -> tuple[list[int], list[int]]:
    """(prompt_ids, completion_ids) where completion = impression + end-of-turn token."""
    prompt_msgs = build_messages(record, style, findings_override=findings)
    full_msgs = build_messages(record, style, with_impression=True, findings_override=findings)
    prompt_ids = _ids(tokenizer, prompt_msgs, add_generation_prompt=True)
    full_ids = _ids(tokenizer, full_msgs, add_generation_prompt=False)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise PromptError(
            f"{_report_id(record)}: the chat template renders the prompt differently with and without the "
            "assistant turn, so the completion cannot be located; use a template whose generation prompt is a "
            "prefix of the rendered conversation"
        )
    completion = full_ids[len(prompt_ids):]
    end_ids = set(end_of_turn_token_ids(tokenizer))
    # Keep the completion up to (and including) its first end-of-turn token; drop what the template
    # adds after it (e.g. the newline after <|im_end|>). Templates without an end marker get eos.
    cut = next((i for i, t in enumerate(completion) if t in end_ids), None)
    if cut is None:
        completion = completion + [end_of_turn_token_ids(tokenizer)[0]]
    else:
        completion = completion[: cut + 1]
    if len(completion) < 2:
        raise PromptError(f"{_report_id(record)}: the impression tokenized to nothing")
    return prompt_ids, completion


def build_sft_example(
    tokenizer: Any,
    record: Mapping[str, Any],
    max_len: int,
    style: str | None = None,
) -> dict[str, Any]:
    """Tokenize one record as a completion-only training example of at most ``max_len`` tokens.

    Returns:
        ``{"input_ids", "labels", "attention_mask", "prompt_len", "findings_tokens_dropped"}``:
        ``labels`` is ``-100`` on the ``prompt_len`` prompt tokens and equals ``input_ids`` on
        the completion (impression + end-of-turn token). ``findings_tokens_dropped`` is the
        number of findings tokens cut to fit ``max_len`` (0 when not truncated).

    Raises:
        PromptError: empty findings/impression, or the example does not fit ``max_len`` even
            with the findings reduced to nothing (the impression is never truncated).
    """
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    _require_chat_template(tokenizer)
    prompt_ids, completion = _tokenize_pair(tokenizer, record, style, None)
    dropped = 0
    total = len(prompt_ids) + len(completion)
    if total > max_len:
        findings_ids = tokenizer(_text(record, "findings"), add_special_tokens=False)["input_ids"]
        keep = len(findings_ids) - (total - max_len)
        while True:
            if keep < 0:
                raise PromptError(
                    f"{_report_id(record)}: does not fit sft max length {max_len} even with the findings "
                    f"removed (impression + template take {total - len(findings_ids)} tokens); raise max_len"
                )
            text = (tokenizer.decode(findings_ids[:keep], skip_special_tokens=True).strip() + " [...]").strip()
            prompt_ids, completion = _tokenize_pair(tokenizer, record, style, text)
            total = len(prompt_ids) + len(completion)
            if total <= max_len:
                break
            keep -= max(1, total - max_len)
        dropped = len(findings_ids) - keep
    input_ids = prompt_ids + completion
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": [1] * len(input_ids),
        "prompt_len": len(prompt_ids),
        "findings_tokens_dropped": dropped,
    }


@dataclass
class SFTDatasetStats:
    """What :func:`build_sft_dataset` did: sizes, lengths and truncations."""

    n_examples: int = 0
    n_truncated: int = 0
    findings_tokens_dropped: int = 0
    total_tokens: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_len_seen: int = 0
    truncated_report_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-serialisable)."""
        return asdict(self)


def build_sft_dataset(
    tokenizer: Any,
    records: datasets.Dataset | Iterable[Mapping[str, Any]],
    max_len: int,
    styles: Sequence[str | None] | None = None,
) -> tuple[datasets.Dataset, SFTDatasetStats]:
    """Tokenize records into a dataset of completion-only examples (``input_ids``, ``labels``, ...).

    Args:
        tokenizer: a tokenizer with a chat template.
        records: canonical records (a ``datasets.Dataset`` or an iterable of dicts).
        max_len: longest example in tokens; longer ones get truncated findings.
        styles: optional per-record style slot (same length as ``records``).

    Returns:
        ``(dataset, stats)``; the dataset keeps ``report_id`` next to the token columns.
    """
    rows = list(records)
    if styles is not None and len(styles) != len(rows):
        raise ValueError(f"styles has {len(styles)} entries for {len(rows)} records")
    stats = SFTDatasetStats()
    columns: dict[str, list[Any]] = {
        "report_id": [], "input_ids": [], "labels": [], "attention_mask": [], "prompt_len": [],
        "findings_tokens_dropped": [],
    }
    for i, record in enumerate(rows):
        ex = build_sft_example(tokenizer, record, max_len, None if styles is None else styles[i])
        rid = str(record.get("report_id", i))
        columns["report_id"].append(rid)
        for key in ("input_ids", "labels", "attention_mask", "prompt_len", "findings_tokens_dropped"):
            columns[key].append(ex[key])
        n = len(ex["input_ids"])
        stats.n_examples += 1
        stats.total_tokens += n
        stats.prompt_tokens += ex["prompt_len"]
        stats.completion_tokens += n - ex["prompt_len"]
        stats.max_len_seen = max(stats.max_len_seen, n)
        if ex["findings_tokens_dropped"]:
            stats.n_truncated += 1
            stats.findings_tokens_dropped += ex["findings_tokens_dropped"]
            stats.truncated_report_ids.append(rid)
    features = datasets.Features(
        {
            "report_id": datasets.Value("string"),
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Sequence(datasets.Value("int32")),
            "attention_mask": datasets.Sequence(datasets.Value("int8")),
            "prompt_len": datasets.Value("int32"),
            "findings_tokens_dropped": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(columns, features=features), stats
