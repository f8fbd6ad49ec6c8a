"""Decoding-time factual guard: re-rank beam candidates of drafts that contradict the findings.

A draft is *flagged* when :func:`radimpress_lib.clinical.graph.compare_to_findings` finds a negation
flip between the draft's entity graph and the findings' graph (a finding stated present
where the findings only negate it, or the reverse). Only the findings are used, never the
reference, so the guard is usable at inference time (``radimpress draft`` flags the same
drafts for review).

For each flagged draft the model decodes ``n_candidates`` beam-search candidates from the
same prompt; the guard keeps the best-ranked candidate with no negation flip and no more
hallucinated findings than the original draft. When no candidate qualifies, the original
draft stays (counted as *unresolved*). Drafts that are not flagged are never touched.

The guard and the graph metrics share the entity extractor, so the graph-based negation
flip rate of guarded outputs is optimistic by construction; :func:`labeler_flip_rate`
gives an independent check with the CheXpert-style labeler (its own cues and scopes).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from radimpress_lib.clinical import graph
from radimpress_lib.clinical.checks import labeler_checker
from radimpress_lib.llm.generation import LogFn, default_log, write_predictions_jsonl
from radimpress_lib.llm.prompting import build_prompt, cut_at_end, end_of_turn_token_ids, pad_token_id

__all__ = ["GuardResult", "draft_conflicts", "guard_predictions", "guard_table", "labeler_flip_rate"]


def draft_conflicts(findings: str, draft: str) -> tuple[int, int]:
    """(negation flips, hallucinated findings) of ``draft`` against ``findings`` (entity graphs)."""
    c = graph.compare_to_findings(graph.extract_graph_cached(draft), graph.extract_graph_cached(findings))
    return len(c["negation_flips"]), len(c["hallucinated"])


def labeler_flip_rate(records: Sequence[Mapping[str, Any]], drafts: Sequence[str]) -> float:
    """Share (0-100) of drafts with a labeler-detected negation flip against their findings."""

    if len(records) != len(drafts):
        raise ValueError(f"{len(drafts)} drafts for {len(records)} records")
    flips = sum(any(f["kind"] == "negation_flip" for f in labeler_checker(r, d)) for r, d in zip(records, drafts))
    return 100.0 * flips / len(records) if records else 0.0


@dataclass
class GuardResult:
    """Guarded predictions (rows as :func:`generation.generate_impressions` writes them) and counts."""

    predictions: list[dict[str, Any]]
    n_flagged: int
    n_fixed: int
    n_unresolved: int
    n_candidates: int
    wall_time_s: float
    changes: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None

    def summary(self) -> dict[str, Any]:
        return {"n_reports": len(self.predictions), "n_flagged": self.n_flagged, "n_fixed": self.n_fixed,
                "n_unresolved": self.n_unresolved, "n_candidates": self.n_candidates,
                "wall_time_s": self.wall_time_s}


def _candidates(model: Any, tokenizer: Any, prompt: str, n: int, max_new_tokens: int) -> list[str]:
    end_ids = end_of_turn_token_ids(tokenizer)
    pad_id = pad_token_id(tokenizer, end_ids)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    device = next(model.parameters()).device
    out = model.generate(input_ids=ids.to(device), attention_mask=torch.ones_like(ids).to(device),
                         max_new_tokens=max_new_tokens, num_beams=n, num_return_sequences=n, do_sample=False,
                         early_stopping=True, eos_token_id=end_ids, pad_token_id=pad_id)
    return [tokenizer.decode(cut_at_end(seq, end_ids)[0], skip_special_tokens=True).strip()
            for seq in out[:, ids.shape[1]:].cpu().tolist()]


def guard_predictions(
    model: Any,
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    predictions: Sequence[Mapping[str, Any]],
    *,
    n_candidates: int,
    max_new_tokens: int,
    styles: Sequence[str | None] | None = None,
    model_name: str | None = None,
    out_path: str | Path | None = None,
    log: LogFn | None = None,
) -> GuardResult:
    """Re-decode the flagged drafts of ``predictions`` (same order as ``records``) with beam search.

    ``records`` must be the records the drafts were generated from (same prompt context and
    ``styles``), so a candidate comes from the prompt that produced the draft.
    """
    if n_candidates < 2:
        raise ValueError(f"n_candidates must be >= 2 (beam candidates to choose from), got {n_candidates}")
    if len(records) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    if styles is not None and len(styles) != len(records):
        raise ValueError(f"styles has {len(styles)} entries for {len(records)} records")
    log = log or default_log
    t0 = time.perf_counter()
    rows = [dict(p) for p in predictions]
    for row, rec in zip(rows, records):
        if str(row["report_id"]) != str(rec.get("report_id")):
            raise ValueError(f"prediction {row['report_id']!r} does not match record {rec.get('report_id')!r}")
    conflicts = [draft_conflicts(r["findings"], p["prediction"]) for r, p in zip(records, rows)]
    flagged = [i for i, (flips, _) in enumerate(conflicts) if flips]
    log(f"guard: {len(flagged)}/{len(rows)} drafts contradict their findings (negation flip); "
        f"re-ranking {n_candidates} beam candidates each")
    fixed, changes = 0, []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for k, i in enumerate(flagged, start=1):
                rec, original, halluc0 = records[i], rows[i]["prediction"], conflicts[i][1]
                prompt = build_prompt(tokenizer, rec, None if styles is None else styles[i])
                chosen = None
                for rank, cand in enumerate(_candidates(model, tokenizer, prompt, n_candidates, max_new_tokens)):
                    flips, halluc = draft_conflicts(rec["findings"], cand)
                    if cand and flips == 0 and halluc <= halluc0:
                        chosen = (rank, cand)
                        break
                if chosen is not None:
                    fixed += 1
                    rows[i] = {**rows[i], "prediction": chosen[1], "guard": {"original": original, "beam_rank": chosen[0]}}
                    changes.append({"report_id": rows[i]["report_id"], "original": original, "guarded": chosen[1],
                                    "beam_rank": chosen[0]})
                else:
                    rows[i] = {**rows[i], "guard": {"original": original, "beam_rank": None}}
                log(f"guard {k}/{len(flagged)} | report {rows[i]['report_id']} | "
                    f"{'fixed (beam rank %d)' % chosen[0] if chosen else 'unresolved'}")
    finally:
        if was_training:
            model.train()
    if model_name is not None:
        rows = [{**r, "model": model_name} for r in rows]
    result = GuardResult(predictions=rows, n_flagged=len(flagged), n_fixed=fixed, n_unresolved=len(flagged) - fixed,
                         n_candidates=n_candidates, wall_time_s=time.perf_counter() - t0, changes=changes)
    log(f"guard: fixed {fixed}/{len(flagged)}, unresolved {result.n_unresolved}, {result.wall_time_s:.1f} s")
    if out_path is not None:
        result.path = str(write_predictions_jsonl(rows, out_path))
    return result


def guard_table(guards: Mapping[str, GuardResult], records: Sequence[Mapping[str, Any]],
                drafts: Mapping[str, Sequence[str]], scores: Mapping[str, Mapping[str, Any]]) -> Any:
    """One row per guarded system: guard counts, and unguarded vs guarded negation-flip rates.

    ``drafts`` maps every system name (``<system>`` and ``<system>_guarded``) to its drafts;
    ``scores`` holds :func:`evaluation.evaluate_systems` results with the graph metrics.
    The labeler-based rate (:func:`labeler_flip_rate`) is the check independent of the guard.
    """
    import pandas as pd

    rows = []
    for name, g in guards.items():
        base = name.removesuffix("_guarded")
        rows.append({
            "system": name, **g.summary(),
            "negation_flip_rate": scores[base]["negation_flip_rate"],
            "negation_flip_rate_guarded": scores[name]["negation_flip_rate"],
            "negation_flip_rate_labeler": labeler_flip_rate(records, drafts[base]),
            "negation_flip_rate_labeler_guarded": labeler_flip_rate(records, drafts[name]),
            "hallucinated_finding_rate": scores[base]["hallucinated_finding_rate"],
            "hallucinated_finding_rate_guarded": scores[name]["hallucinated_finding_rate"],
            "rougeL": scores[base]["rougeL"], "rougeL_guarded": scores[name]["rougeL"],
        })
    return pd.DataFrame(rows).set_index("system")
