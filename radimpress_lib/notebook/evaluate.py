"""Notebook 05's steps: decode every system on the test split, score it, merge the guarded systems, sum up.

Each function is one step of the notebook's story, so a cell reads as one call:

* :func:`decode_coarse` -- baselines (majority, TF-IDF retrieval), the zero-shot instruct model,
  the SFT model of notebook 02, its factual-guard variant and its MBR selection (``sft_mbr``:
  the consensus of the draft and the retrieved neighbours' impressions, :mod:`radimpress_lib.llm.selection`);
* :func:`decode_fine` -- every fine-stage policy notebook 04 wrote (DPO, RL) with the target
  radiologist's style slot, and their guarded variants;
* :func:`guard_report` -- the factual guard's table, with the labeler's independent flip rate
  merged into the scores;
* :func:`fewshot_scores` -- the unseen radiologist's few-shot case;
* :func:`review_triage` -- the review-risk model fitted on the SFT model's validate drafts (saved as
  ``triage/risk_model.json`` for ``radimpress draft``) and every model system's triage on the test split
  (``triage.json``, :mod:`radimpress_lib.evaluation.triage`);
* :func:`published_protocol` -- protocol A, "as published" (Van Veen et al.'s 250-report subset,
  train as given, their metric implementation): baselines refitted on train as given, the
  ``sft_published`` model when notebook 02 trained one, every other system on the same reports;
  writes ``metrics_published.json``;
* :func:`take_away` -- the closing paragraph, built from the numbers.

The headline protocol (``deduplicated``: leakage guard on, all test reports) writes
``metrics.json``; every system's metrics are also split into the *leaky* test reports (findings
also in the benchmark's train+validate) and the *clean* ones (``TestRun.leaky``).

All decoding of the test split writes ``predictions/<system>.jsonl`` (the review notebook and
the CLI benchmark read them back); protocol A's own systems write ``predictions_published/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from radimpress_lib.core import artifacts, jsonio
from radimpress_lib.core.config import Params
from radimpress_lib.data import protocols
from radimpress_lib.evaluation import factual_guard, published, scoring, style_eval, triage
from radimpress_lib.evaluation import metrics as M
from radimpress_lib.llm import checkpoints, generation, models, retrieval, selection
from radimpress_lib.train import rlhf

#: Columns of the decoding summary table.
DECODE_COLUMNS = ["n_reports", "wall_time_s", "reports_per_s", "new_tokens", "n_not_stopped", "padding_ratio"]


@dataclass
class TestRun:
    """What notebook 05 decodes and scores: the test split, the systems' drafts, decoding and guard results."""

    cfg: Params
    test: list[dict[str, Any]]
    fit_pool: list[dict[str, Any]]
    predictions_dir: Path
    test_in_context: list[dict[str, Any]] = field(default_factory=list)
    leaky: list[bool] | None = None
    leaky_source: str = ""
    seen_findings: set[str] = field(default_factory=set, repr=False)
    systems: dict[str, list[str]] = field(default_factory=dict)
    decode: dict[str, Any] = field(default_factory=dict)
    guards: dict[str, Any] = field(default_factory=dict)
    tokenizer: Any = None
    train: list[dict[str, Any]] = field(default_factory=list, repr=False)
    validate_in_context: list[dict[str, Any]] = field(default_factory=list, repr=False)
    validate_decode: dict[str, Any] = field(default_factory=dict)
    candidates: dict[str, list[list[str]]] = field(default_factory=dict, repr=False)
    triage_cost_s: dict[str, float] = field(default_factory=dict)
    mbr_sources: dict[str, int] = field(default_factory=dict)

    def decode_table(self) -> pd.DataFrame:
        """Decoding cost and completion per model system."""
        return pd.DataFrame({name: r.summary() for name, r in self.decode.items()}).T[DECODE_COLUMNS]


def prepare(cfg: Params, dsd: Mapping[str, Any], out_dir: Path) -> TestRun:
    """The test split, the train+validate pool baselines and retrieval context may use, the predictions folder.

    Also flags each test report *leaky* (its findings occur in the benchmark's train+validate as
    given, :func:`radimpress_lib.data.protocols.seen_findings`) or clean.
    """
    predictions_dir = out_dir / "predictions"
    predictions_dir.mkdir(parents=True, exist_ok=True)
    test, pool = list(dsd["test"]), list(dsd["train"]) + list(dsd["validate"])
    seen, source = protocols.seen_findings(cfg, pool)
    # The SFT model (and the fine stage on it) sees the prompt context it was trained with (retrieval, graph text).
    run = TestRun(cfg, test, pool, predictions_dir, test_in_context=retrieval.with_prompt_context(cfg, test, pool),
                  leaky=protocols.leaky_flags(test, seen), leaky_source=source, seen_findings=seen,
                  train=list(dsd["train"]))
    if cfg.eval.triage:
        # validate reports get the context of a report drafted after training: neighbours from train only
        run.validate_in_context = retrieval.with_prompt_context(cfg, list(dsd["validate"]), run.train)
    return run


def leaky_note(run: TestRun) -> str:
    """What the leaky / clean split means for this run (Markdown)."""
    n_leaky = sum(run.leaky or [])
    return (f"**{n_leaky} of the {len(run.test)} test reports are leaky**: their findings (lower-cased, whitespace "
            f"collapsed) occur in {run.leaky_source}; {len(run.test) - n_leaky} are clean. Under this (deduplicated) "
            "protocol the leakage guard removed those twins from training, so a model cannot have memorised them; "
            "under the published protocol they stay in train.")


def _write_baseline(run: TestRun, name: str) -> None:
    generation.write_system_predictions(run.test, run.systems[name], name, run.predictions_dir / f"{name}.jsonl")


def _guard(run: TestRun, name: str, model: Any, tokenizer: Any, styles: Sequence[str | None] | None = None) -> None:
    """Factual guard (beam re-ranking of drafts that contradict their findings) for system ``name``.

    With ``eval.triage`` the drafts the guard replaced get their token statistics by teacher forcing
    (:func:`radimpress_lib.llm.generation.score_drafts`), the others keep the greedy ones.
    """
    if not run.cfg.eval.guard_candidates:
        return
    guarded = f"{name}_guarded"
    result = factual_guard.guard_predictions(
        model, tokenizer, run.test_in_context, run.decode[name].predictions, styles=styles,
        n_candidates=run.cfg.eval.guard_candidates, max_new_tokens=run.cfg.gen.max_new_tokens)
    if run.cfg.eval.triage:
        changed = [i for i, p in enumerate(result.predictions) if (p.get("guard") or {}).get("beam_rank") is not None]
        if changed:
            scored = generation.score_drafts(model, tokenizer, [run.test_in_context[i] for i in changed],
                                             [result.predictions[i]["prediction"] for i in changed],
                                             styles=None if styles is None else [styles[i] for i in changed])
            for i, stats in zip(changed, scored):
                result.predictions[i] = {**result.predictions[i], **stats, "stopped": None}
    result.path = str(generation.write_predictions_jsonl(result.predictions, run.predictions_dir / f"{guarded}.jsonl"))
    run.guards[guarded] = result
    run.systems[guarded] = [p["prediction"] for p in result.predictions]


def _triage_inputs(run: TestRun, name: str, model: Any, tokenizer: Any,
                   styles: Sequence[str | None] | None = None, *, validate: bool = False) -> None:
    """What the review triage needs from a loaded model: its validate drafts (``validate``; token statistics
    on) and, with ``eval.triage_candidates``, sampled alternatives of its validate and test drafts."""
    cfg = run.cfg
    if not cfg.eval.triage:
        return
    if validate:
        run.validate_decode[name] = generation.generate_impressions(
            model, tokenizer, run.validate_in_context, cfg.gen, model_name=cfg.model.name, token_stats=True,
            model_config={"model": cfg.model.name, "system": name, "split": "validate"})
        run.triage_cost_s[f"validate_decode_{name}"] = run.validate_decode[name].wall_time_s
    n = cfg.eval.triage_candidates
    if n:
        t0 = time.perf_counter()
        if validate:
            run.candidates[f"validate:{name}"] = generation.decode_candidates(
                model, tokenizer, run.validate_in_context, n, max_new_tokens=cfg.gen.max_new_tokens,
                batch_size=cfg.gen.batch_size, seed=cfg.run.seed)
        run.candidates[name] = generation.decode_candidates(
            model, tokenizer, run.test_in_context, n, max_new_tokens=cfg.gen.max_new_tokens,
            batch_size=cfg.gen.batch_size, seed=cfg.run.seed, styles=styles)
        run.triage_cost_s[f"candidates_{name}"] = time.perf_counter() - t0


def decode_coarse(run: TestRun) -> TestRun:
    """Majority and retrieval baselines, the zero-shot base model (``eval.zero_shot``), the SFT model and its guard."""
    cfg = run.cfg
    run.systems.update(scoring.baseline_predictions(run.fit_pool, run.test))
    for name in ("majority", "retrieval"):
        _write_baseline(run, name)
    if cfg.eval.zero_shot:
        base, run.tokenizer, _info = checkpoints.load_base_model(cfg)
        run.decode["zero_shot"] = generation.generate_impressions(
            base, run.tokenizer, run.test, cfg.gen, model_name=cfg.model.name,
            model_config={"model": cfg.model.name, "adapter": None},
            out_path=run.predictions_dir / "zero_shot.jsonl", token_stats=cfg.eval.triage)
        run.systems["zero_shot"] = [p["prediction"] for p in run.decode["zero_shot"].predictions]
        del base
    tuned, run.tokenizer, info = checkpoints.load_finetuned(cfg)
    run.decode["sft"] = generation.generate_impressions(
        tuned, run.tokenizer, run.test_in_context, cfg.gen, model_name=cfg.model.name,
        model_config={"model": cfg.model.name, "adapter": info.get("adapter"), "sft": cfg.params_hash("sft")},
        out_path=run.predictions_dir / "sft.jsonl", token_stats=cfg.eval.triage)
    run.systems["sft"] = [p["prediction"] for p in run.decode["sft"].predictions]
    _guard(run, "sft", tuned, run.tokenizer)
    _mbr(run, "sft")
    _triage_inputs(run, "sft", tuned, run.tokenizer, validate=True)
    return run


def _mbr(run: TestRun, name: str) -> None:
    """``<name>_mbr``: MBR selection among system ``name``'s draft and the ``eval.mbr_k`` nearest train+validate
    reports' impressions (``eval.mbr_factual``: only those the findings checks do not flag more than the draft).

    Uses the findings and the retrieval pool only, never a reference; ``run.mbr_sources`` counts where the
    chosen impressions came from (``draft`` or ``retrieved:<rank>``).
    """
    if not run.cfg.eval.mbr_k:
        return
    chosen = mbr_select(run.cfg, run.test, run.systems[name], run.fit_pool)
    run.systems[f"{name}_mbr"] = [c.text for c in chosen]
    run.mbr_sources = dict(pd.Series([c.source for c in chosen]).value_counts().sort_index())
    _write_baseline(run, f"{name}_mbr")


def mbr_select(cfg: Params, records: Sequence[Mapping[str, Any]], drafts: Sequence[str],
                pool: Sequence[Mapping[str, Any]], *, same_findings: bool = False) -> list[Any]:
    """MBR choice per report among its draft and the ``eval.mbr_k`` nearest ``pool`` impressions
    (``same_findings``: a neighbour with the report's own findings is allowed, the published protocol's rule)."""
    return selection.NeighbourMBR.from_config(cfg.eval, pool, same_findings=same_findings)(records, drafts)


def mbr_note(run: TestRun) -> str:
    """Where ``sft_mbr``'s impressions came from (Markdown)."""
    if not run.mbr_sources:
        return "MBR selection off (`eval.mbr_k: 0`)."
    n = sum(run.mbr_sources.values())
    drafts, covered = run.mbr_sources.get("draft", 0), run.mbr_sources.get("coverage", 0)
    retrieved = {s.split(":")[1]: c for s, c in run.mbr_sources.items() if s.startswith("retrieved:")}
    text = (f"`sft_mbr` kept the SFT draft for {drafts} of {n} reports ({100 * drafts / n:.1f}%) and chose a "
            f"retrieved impression for {sum(retrieved.values())} (by neighbour rank: "
            + ", ".join(f"{r}: {c}" for r, c in retrieved.items()) + ").")
    if run.cfg.eval.mbr_coverage:
        text += (f" For {covered} ({100 * covered / n:.1f}%) it chose the draft preceded by the findings sentences "
                 "of the significant findings the draft omits (`eval.mbr_coverage`).")
    return text


def comparisons(run: TestRun, per: Mapping[str, Any]) -> pd.DataFrame:
    """Paired bootstraps: ``sft`` against every other system, and every other model system against retrieval."""
    cfg = run.cfg
    boot = {"n_boot": cfg.eval.n_boot, "seed": cfg.run.seed}
    others = [s for s in per if s not in ("sft", "majority", "retrieval", "reference")]
    return pd.concat([scoring.comparisons(per, "sft", **boot),
                      *_against_retrieval(per, others, scoring.comparisons, boot)], ignore_index=True)


def _against_retrieval(per: Mapping[str, Any], systems: Sequence[str], compare: Callable[..., pd.DataFrame],
                       boot: Mapping[str, Any]) -> list[pd.DataFrame]:
    """``compare`` (a paired-bootstrap table builder) of each of ``systems`` against ``retrieval``; none
    when ``per`` has no retrieval system."""
    if "retrieval" not in per:
        return []
    return [compare({s: per[s], "retrieval": per["retrieval"]}, s, **boot) for s in systems]


def decode_fine(run: TestRun, style_slots: Sequence[str | None], *, log: Callable[[str], None] = print) -> list[str]:
    """Decode every fine-stage policy notebook 04 wrote (``fine_dpo``, ``fine_rl``) with the style slots.

    Returns the fine systems decoded (empty when notebooks 03-04 have not run); their guarded
    variants are added to ``run.systems`` too.
    """
    cfg = run.cfg
    stages = rlhf.available_fine_stages(cfg)
    if not stages:
        log("no fine-stage adapters found: run notebooks 03 and 04 for the fine stage")
    names = []
    for stage in stages:
        name = f"fine_{stage}"
        model, tokenizer, info = rlhf.load_policy(cfg, stage)
        run.decode[name] = generation.generate_impressions(
            model, tokenizer, run.test_in_context, cfg.gen, model_name=cfg.model.name, styles=style_slots,
            model_config={"model": cfg.model.name, "adapter": info["fine_adapter"],
                          "fine": cfg.params_hash("sft", "style", "rm", "dpo", "rl")},
            out_path=run.predictions_dir / f"{name}.jsonl", token_stats=cfg.eval.triage)
        run.systems[name] = [p["prediction"] for p in run.decode[name].predictions]
        _guard(run, name, model, tokenizer, style_slots)
        _triage_inputs(run, name, model, tokenizer, style_slots)
        names.append(name)
        del model
    return names


def guard_report(run: TestRun, scores: dict[str, dict[str, Any]]) -> pd.DataFrame | None:
    """The factual guard per guarded system; sets ``negation_flip_rate_labeler`` on each system and its guard."""
    if not run.guards:
        return None
    report = factual_guard.guard_table(run.guards, run.test, run.systems, scores)
    for name in report.index:
        scores[name]["negation_flip_rate_labeler"] = float(report.loc[name, "negation_flip_rate_labeler_guarded"])
        scores[name.removesuffix("_guarded")]["negation_flip_rate_labeler"] = float(
            report.loc[name, "negation_flip_rate_labeler"])
    return report


def guard_changes(run: TestRun) -> pd.DataFrame:
    """Every draft the guard replaced, with the system."""
    return pd.DataFrame([c | {"system": name} for name, g in run.guards.items() for c in g.changes])


def fewshot_scores(run: TestRun, fine: Sequence[str], style_clf: Any, targets: Sequence[str],
                   unseen: Sequence[bool], radiologist: str | None) -> dict[str, dict[str, Any]] | None:
    """The last fine policy and SFT on the unseen radiologist's test reports (few-shot style slot), or None."""
    if not fine or not radiologist or not any(unseen):
        return None
    cfg = run.cfg
    idx = [i for i, u in enumerate(unseen) if u]
    last = list(fine)[-1]
    few = {"fine_fewshot": [run.systems[last][i] for i in idx], "sft": [run.systems["sft"][i] for i in idx]}
    scores, _ = scoring.evaluate_systems(few, [run.test[i] for i in idx], n_boot=cfg.eval.n_boot, seed=cfg.run.seed,
                                         tokenizer=run.tokenizer,
                                         leaky=None if run.leaky is None else [run.leaky[i] for i in idx])
    style = style_eval.style_evaluation(style_clf, few, [targets[i] for i in idx],
                                        [run.test[i]["impression"] for i in idx], n_boot=cfg.eval.n_boot,
                                        seed=cfg.run.seed)
    out = {k: scores[k] | style[k] for k in few}
    out["fine_fewshot"] |= {"source_system": last, "radiologist": radiologist}
    return out


#: Systems the review triage does not score: baselines (no model, no drafting-time uncertainty) and subsets.
_NOT_TRIAGED = ("majority", "retrieval", "reference", "fine_fewshot")


@dataclass
class TriageRun:
    """Notebook 05's review triage: the risk model fitted on validate drafts and every model system on test."""

    model: triage.RiskModel | None = None
    fit: triage.FitReport | None = None
    ablation: pd.DataFrame | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    curves: dict[str, pd.DataFrame] = field(default_factory=dict, repr=False)
    fitted_on: str = "sft"
    cost_s: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    #: per system with validate drafts, the risk model thresholded on them (:func:`triage.recalibrated`)
    models: dict[str, triage.RiskModel] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Recall, precision, flag rate (95% CIs), missed-abnormal recall and AUC per system at the threshold."""
        rows = {}
        for name, r in self.results.items():
            row = {"n errors": f"{r['n_errors']} / {r['n']}"}
            for k, label in (("recall", "recall %"), ("precision", "precision %"), ("flag_rate", "flag rate %"),
                             ("missed_abnormal_recall", "missed-abnormal recall %")):
                row[label] = _fmt({name: r}, name, k)
            row["AUC"] = _fmt({name: r}, name, "auc", 3)
            if r.get("worklist"):
                w = r["worklist"]
                row[f"riskiest {100 * w['budget']:g}% of the worklist: recall / missed-abnormal %"] = (
                    f"{_fmt({name: w}, name, 'recall')} / {_number(w['missed_abnormal_recall'])}")
            for kind, label in (("rules_default", "CLI rules: recall / flag %"),
                                ("rules_omissions", "--flag-omissions: recall / flag %")):
                rr = r[kind]  # recall is None where the system has no erroneous draft
                row[label] = f"{_number(rr['recall'], 0)} / {_number(rr['flag_rate'])}"
            rows[name] = row
        return pd.DataFrame(rows).T

    def note(self) -> str:
        """The operating point in words (Markdown), from this run's numbers."""
        if self.model is None:
            return f"**Review triage not run**: {self.reason}."
        op, meta = self.model.operating_point, self.model.meta
        met = ("both targets met" if op["targets_met"] else
               f"targets not met within the budget (they need {100 * op['flag_rate_for_targets']:.0f}% of drafts)")
        return (f"**Operating point** (chosen on {meta['n_validate']} validate drafts of `{self.fitted_on}`, "
                f"{meta['n_errors']} with a significant error; cross-validated): flag drafts with risk >= "
                f"{self.model.threshold:.3f}, i.e. {100 * op['flag_rate']:.0f}% of drafts, expected recall "
                f"{_share(op['recall'])}% of erroneous drafts and {_share(op['missed_recall'])}% of drafts missing an "
                f"abnormal finding ({met}; targets {100 * op['target_recall']:.0f}% / "
                f"{100 * op['target_missed_recall']:.0f}% at <= {100 * op['max_flag_rate']:.0f}% flagged). One model "
                f"(logistic regression on the signal groups {', '.join(meta.get('groups') or [])} chosen by forward "
                f"selection, C = {meta['c']}, cross-validated AUC {meta['cv_auc']:.3f}) is applied to every system"
                + self._recalibration_note() + ". Labels: our rule labeler on draft vs reference, not CheXbert.")

    def _recalibration_note(self) -> str:
        others = {k: m for k, m in self.models.items() if k != self.fitted_on}
        if not others:
            return ""
        return ("; " + ", ".join(
            f"`{k}` gets the threshold that flags the same share of its own validate drafts ({m.threshold:.3f}; there "
            f"recall {_share(m.operating_point['recall'])}%, not cross-validated)" for k, m in others.items())
                + f", the others `{self.fitted_on}`'s")

    def best_line(self, scores: Mapping[str, Mapping[str, Any]]) -> str:
        """One line on the best model system by ROUGE-L (for the take-away)."""
        shown = [s for s in self.results if "rougeL" in (scores.get(s) or {})]
        best = max(shown, key=lambda s: scores[s]["rougeL"], default=None)
        if best is None:
            return ""
        r = self.results[best]
        return (f"- Review triage of `{best}` (risk >= {r['threshold']:.3f}): flags {_fmt({'x': r}, 'x', 'flag_rate')}% "
                f"of drafts, catching {_fmt({'x': r}, 'x', 'recall')}% of the drafts with a significant error and "
                f"{_fmt({'x': r}, 'x', 'missed_abnormal_recall')}% of those missing an abnormal finding (CLI rule flags: "
                f"{_number(r['rules_default']['recall'], 0)}% at {_number(r['rules_default']['flag_rate'])}% flagged; "
                "our labeler)" + self._worklist_line(r) + ".")

    @staticmethod
    def _worklist_line(r: Mapping[str, Any]) -> str:
        w = r.get("worklist")
        if not w:
            return ""
        return (f"; flagging the riskiest {100 * w['budget']:g}% of the test worklist instead (`radimpress draft "
                f"--worklist-budget {w['budget']:g}`) catches {_fmt({'x': w}, 'x', 'recall')}% and "
                f"{_fmt({'x': w}, 'x', 'missed_abnormal_recall')}%")


def _number(value: float | None, digits: int = 1) -> str:
    """``value`` rounded, or n/a (a recall is None where a system has no erroneous draft)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _share(fraction: float | None) -> str:
    """A fraction as a whole percentage, or n/a."""
    return _number(None if fraction is None else 100 * fraction, 0)


def review_triage(run: TestRun, out_dir: Path, *, log: Callable[[str], None] = print) -> TriageRun:
    """Fit the review-risk model on the SFT model's validate drafts, save it, score every model system on test.

    ``sft_mbr`` (a selection whose drafts carry fewer flagged problems) keeps the weights but gets its own
    threshold, the one that flags the same share of its validate drafts (:func:`triage.recalibrated`;
    saved as ``triage/risk_model_sft_mbr.json``); other systems use the SFT model's threshold.

    Signals (:func:`radimpress_lib.evaluation.triage.feature_table`) use drafting-time inputs only: the
    findings, the prompt's retrieval context, the reference prior (fitted on train), the drafts' token
    statistics, the pseudo-draft error model (fitted on train's retrieval pseudo-drafts, ``eval.triage_pseudo_k``;
    saved inside the risk model). The regularisation and the operating threshold are chosen on validate
    (cross-validated; ``eval.triage_recall`` / ``triage_missed_recall`` / ``triage_max_flag_rate``); the
    test split is read once, here. Writes ``triage/risk_model.json`` (for ``radimpress draft``) and
    ``triage.json`` ``{"<system>": {"recall", "precision", "flag_rate", "threshold", ... , "curve"}, ...}``.
    """
    cfg = run.cfg
    if not cfg.eval.triage:
        return TriageRun(reason="eval.triage is off")
    if "sft" not in run.validate_decode:
        return TriageRun(reason="no validate drafts of the SFT model (decode_coarse with eval.triage)")
    t0 = time.perf_counter()
    prior = triage.ReferencePrior().fit(run.train)
    cost = dict(run.triage_cost_s) | {"reference_prior_fit": time.perf_counter() - t0}
    e = cfg.eval
    pseudo = None
    if e.triage_pseudo_k:
        t0 = time.perf_counter()
        try:
            pseudo = triage.PseudoDraftModel.fit(run.train, k=e.triage_pseudo_k, folds=e.triage_folds,
                                                 seed=cfg.run.seed, prior_c=prior.c)
        except ValueError as exc:  # too few train reports, or pseudo-drafts all right / all wrong
            log(f"triage: no pseudo-draft signal ({exc})")
        cost["pseudo_draft_model_fit"] = time.perf_counter() - t0
    val = run.validate_decode["sft"].predictions
    val_drafts = [p["prediction"] for p in val]
    t1 = time.perf_counter()
    xv = triage.feature_table(run.validate_in_context, val_drafts, rows=val, prior=prior,
                              candidates=run.candidates.get("validate:sft"), pseudo=pseudo)
    labels = triage.error_labels([r["impression"] for r in run.validate_in_context], val_drafts)
    model, fit = triage.fit_risk_model(
        xv, labels["significant"], labels["missed_abnormal"], recall=e.triage_recall,
        missed_recall=e.triage_missed_recall, max_flag_rate=e.triage_max_flag_rate, n_folds=e.triage_folds,
        seed=cfg.run.seed,
        meta={"system": "sft", "model": cfg.model.name, "params": cfg.run.name,
              "n_train_prior": prior.n_train, "retrieval_k": cfg.sft.retrieval_k,
              "candidates": e.triage_candidates,
              "error_label": "a finding positive in the reference that the draft leaves out or negates, or a "
                             "finding the draft states positive that the reference does not (our rule labeler)"},
        pseudo=pseudo)
    model.save(out_dir / artifacts.RISK_MODEL_FILE)
    abl = triage.ablation(xv, labels["significant"], labels["missed_abnormal"],
                          flag_rate=model.operating_point["flag_rate"], n_folds=e.triage_folds, seed=cfg.run.seed)
    cost["fit_and_ablation"] = time.perf_counter() - t1
    out = TriageRun(model=model, fit=fit, ablation=abl, fitted_on="sft", cost_s=cost, models={"sft": model})
    if "sft_mbr" in run.systems:
        # sft_mbr's drafts carry fewer flagged problems, so the same weights give them lower risks: its threshold
        # flags the same share of ITS validate drafts (MBR over the validate drafts and their train neighbours)
        t3 = time.perf_counter()
        mbr_val = [c.text for c in mbr_select(cfg, run.validate_in_context, val_drafts, run.train)]
        mbr_labels = triage.error_labels([r["impression"] for r in run.validate_in_context], mbr_val)
        out.models["sft_mbr"] = triage.recalibrated(
            model, triage.feature_table(run.validate_in_context, mbr_val, prior=prior, pseudo=pseudo),
            mbr_labels["significant"],
            mbr_labels["missed_abnormal"], system="sft_mbr")
        out.models["sft_mbr"].save(out_dir / artifacts.risk_model_file("sft_mbr"))
        cost["sft_mbr_validate"] = time.perf_counter() - t3
    refs = [r["impression"] for r in run.test]
    t2 = time.perf_counter()
    for name, drafts in run.systems.items():
        if name in _NOT_TRIAGED or name.startswith("sft_published"):
            continue
        source = run.guards.get(name) or run.decode.get(name)
        rows = source.predictions if source is not None else None
        x = triage.feature_table(run.test_in_context, drafts, rows=rows, prior=prior, candidates=run.candidates.get(
            name.removesuffix("_guarded")) if not name.endswith("_guarded") else None, pseudo=pseudo)
        # as in radimpress draft: an empty or truncated draft needs review whatever its risk
        risk = np.where(triage.hard_flags(drafts, rows), 1.0, model.predict(x))
        lab = triage.error_labels(refs, drafts)
        own = out.models.get(name, model)
        res = triage.triage_metrics(risk, lab["significant"], lab["missed_abnormal"], own.threshold,
                                    n_boot=e.n_boot, seed=cfg.run.seed)
        res["threshold_from"] = f"validate drafts of {name if name in out.models else 'sft'}"
        # the other operating point: the riskiest share of the test worklist (radimpress draft --worklist-budget)
        w = triage.triage_metrics(risk, lab["significant"], lab["missed_abnormal"], None, n_boot=e.n_boot,
                                  flagged=triage.worklist_flags(risk, e.triage_max_flag_rate), seed=cfg.run.seed,
                                  auc=False)
        res["worklist"] = {"budget": e.triage_max_flag_rate, **{k: w[k] for k in (
            "n_flagged", "recall", "recall_ci", "precision", "precision_ci", "flag_rate", "missed_abnormal_recall",
            "missed_abnormal_recall_ci")}}
        rules = triage.rule_flags(run.test, drafts, rows)
        for kind in ("default", "omissions"):
            r = triage.triage_metrics(rules[kind].to_numpy(dtype=float), lab["significant"], lab["missed_abnormal"],
                                      0.5, n_boot=e.n_boot, seed=cfg.run.seed)
            res[f"rules_{kind}"] = {k: r[k] for k in ("recall", "recall_ci", "precision", "precision_ci", "flag_rate",
                                                     "flag_rate_ci", "missed_abnormal_recall",
                                                     "missed_abnormal_recall_ci")}
        curve = triage.recall_curve(risk, lab["significant"], n_boot=e.n_boot, seed=cfg.run.seed)
        out.curves[name] = curve
        res["recall_at_max_flag_rate"] = float(np.interp(100 * e.triage_max_flag_rate, curve["flag_rate"],
                                                         curve["recall"]))
        res["n_missed"] = int(sum(bool(v) for v in lab["missed"]))
        res["curve"] = {c: [round(float(v), 2) for v in curve[c]] for c in curve.columns}
        res["risk_model"] = "sft validate drafts" + ("" if name == "sft" else " (applied to this system)")
        out.results[name] = res
        cli_rules = res["rules_default"]  # recall is None where the system has no erroneous draft
        log(f"triage {name}: recall {_number(res['recall'])}% at flag rate {_number(res['flag_rate'])}%; riskiest "
            f"{_number(res['worklist']['flag_rate'])}% of the worklist {_number(res['worklist']['recall'])}% "
            f"(CLI rules {_number(cli_rules['recall'])}% at {_number(cli_rules['flag_rate'])}%)")
    cost["test_signals_and_bootstrap"] = time.perf_counter() - t2
    out.cost_s = {k: round(v, 1) for k, v in cost.items()}
    jsonio.write_json(out_dir / "triage.json", {
        **out.results,
        "risk_model": {"path": artifacts.RISK_MODEL_FILE.as_posix(), "fitted_on": "validate drafts of sft",
                       "threshold": model.threshold, "operating_point": model.operating_point,
                       "c": fit.c, "cv_auc": fit.cv_auc, "n_validate": fit.n, "n_errors_validate": fit.n_errors,
                       "n_missed_abnormal_validate": fit.n_missed_abnormal,
                       "coefficients": dict(zip(model.features, model.coef)),
                       "pseudo_draft_model": pseudo.meta if pseudo is not None else None},
        "thresholds": {name: {"threshold": m.threshold, "validate": m.operating_point,
                              "path": artifacts.risk_model_file(name).as_posix()} for name, m in out.models.items()},
        "ablation": abl.to_dict(orient="records"),
        "cost_s": out.cost_s,
        "labeler": "radimpress rule labeler (radimpress_lib/clinical/labeler.py), not CheXbert",
        "n": len(run.test),
    })
    return out


def plot_review_triage(tr: TriageRun, cfg: Params):
    """The triage figure: recall-vs-flag-rate curves of every triaged system, their operating points, rule flags."""
    order = sorted(tr.curves, key=lambda s: (not s.startswith("sft"), s))
    return triage.plot_triage({k: tr.curves[k] for k in order}, tr.results,
                              rules={k: {"default": v["rules_default"], "omissions": v["rules_omissions"]}
                                     for k, v in tr.results.items()},
                              target_recall=cfg.eval.triage_recall, max_flag_rate=cfg.eval.triage_max_flag_rate,
                              validate_curve=tr.model.curve if tr.model is not None else None)


@dataclass
class PublishedRun:
    """Protocol A ("as published") of notebook 05: what was scored, or why nothing was.

    ``scores`` / ``per`` as :func:`radimpress_lib.evaluation.scoring.evaluate_systems`;
    ``subset`` the scored reports (:class:`radimpress_lib.data.protocols.PublishedTestSubset`).
    """

    reason: str = ""
    subset: protocols.PublishedTestSubset | None = None
    training: dict[str, Any] = field(default_factory=dict)
    systems: dict[str, list[str]] = field(default_factory=dict)
    trained_on: dict[str, str] = field(default_factory=dict)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)
    per: dict[str, M.PerExample] = field(default_factory=dict, repr=False)
    comparison: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def available(self) -> bool:
        """Whether anything was scored under the published protocol."""
        return bool(self.scores)

    def note(self) -> str:
        """What was scored, on which reports, and what is missing (Markdown)."""
        if not self.available:
            return f"**Published protocol not run**: {self.reason}."
        lines = [(f"**Published protocol**: {self.subset.summary()}. Baselines fitted on the benchmark's train split "
                  f"as given ({self.training['split_sizes']['train']} reports, no leakage guard; twins of test "
                  "reports kept).")]
        lines += [f"- {n}" for n in self.notes]
        return "\n".join(lines)

    def table(self) -> pd.DataFrame:
        """Our systems beside the paper's anchors, published-protocol metrics only."""
        return published.table(self.scores) if self.available else pd.DataFrame()

    def leaky_clean_table(self) -> pd.DataFrame:
        """The published-protocol metrics on all, leaky and clean subset reports."""
        return published.leaky_clean_table(self.scores) if self.available else pd.DataFrame()

    def clinical_table(self) -> pd.DataFrame:
        """Missed-abnormality rate and label F1 of every system on the subset."""
        return scoring.clinical_table(self.scores) if self.available else pd.DataFrame()

    def comparison_table(self) -> pd.DataFrame:
        """The paired comparisons on the subset, rounded (empty when there is nothing to compare)."""
        return self.comparison.round(3) if self.comparison is not None else pd.DataFrame()


def _load_published_sft(cfg: Params, folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    """The protocol-A SFT model: the LoRA adapter merged into the base model, or the full fine-tuned model."""
    if cfg.sft.method == "full":
        m = cfg.model
        model, tokenizer, info = models.load_model_and_tokenizer(
            m.name, model_path=str(folder), dtype=m.dtype, cache_dir=m.cache_dir, padding_side="left",
            seed=cfg.run.seed)
    else:
        model, tokenizer, info = checkpoints.load_base_model(cfg)
        model = checkpoints.apply_adapter(model, folder, merge=True)
    return model, tokenizer, info | {"adapter": str(folder.relative_to(cfg.output_dir))}


def published_protocol(run: TestRun, out_dir: Path, *, log: Callable[[str], None] = print) -> PublishedRun:
    """Protocol A: score every system as Van Veen et al. scored theirs, write ``metrics_published.json``.

    Reports: the run's test reports in the paper's 250-report subset (all 250 on the full data;
    the intersection when ``data.limit_eval`` limits the test split, said in the note). Systems:
    ``majority`` and ``retrieval`` fitted on the train split as given; ``sft_published`` when
    ``outputs/<model>/sft_published/adapter`` exists (else a note); every system already in
    ``run.systems`` (the deduplicated protocol's) as ``<system>_dedup``. Metrics:
    :data:`radimpress_lib.evaluation.published.SUMMARY_METRICS` with paired-bootstrap CIs, split
    leaky / clean; paired comparisons against ``sft_published`` (else ``sft_dedup``). Returns a
    :class:`PublishedRun` without scores, and writes nothing, when the run's data has no
    benchmark split (e.g. the synthetic sample).
    """
    cfg = run.cfg
    try:
        subset = protocols.published_test_subset(run.test, protocols.benchmark_dir(cfg), run.seen_findings)
        training, training_info = protocols.published_training_data(cfg)
    except protocols.ProtocolUnavailable as exc:
        return PublishedRun(reason=str(exc))
    if subset.n == 0:
        return PublishedRun(reason=f"none of the run's {subset.n_test_split} test reports is in the paper's subset",
                            subset=subset)
    result = PublishedRun(subset=subset, training=training_info)
    train = list(training["train"])
    pred_dir = run.predictions_dir.parent / "predictions_published"
    for name, drafts in scoring.baseline_predictions(train, subset.records).items():
        result.systems[name], result.trained_on[name] = drafts, published.TRAINED_AS_GIVEN
        generation.write_system_predictions(subset.records, drafts, name, pred_dir / f"{name}.jsonl")
    folder = artifacts.sft_dir(cfg, protocols.PUBLISHED) / ("model" if cfg.sft.method == "full" else "adapter")
    if folder.is_dir():
        model, tokenizer, info = _load_published_sft(cfg, folder)
        decoded = generation.generate_impressions(
            model, tokenizer, retrieval.with_prompt_context(cfg, subset.records, train, protocol=protocols.PUBLISHED),
            cfg.gen,
            model_name=cfg.model.name, model_config={"model": cfg.model.name, "adapter": info["adapter"],
                                                     "sft": cfg.params_hash("sft"), "protocol": protocols.PUBLISHED},
            out_path=pred_dir / f"{published.PUBLISHED_SFT}.jsonl", log=log)
        result.systems[published.PUBLISHED_SFT] = [p["prediction"] for p in decoded.predictions]
        result.trained_on[published.PUBLISHED_SFT] = published.TRAINED_AS_GIVEN
        del model
        if cfg.eval.mbr_k:
            chosen = mbr_select(cfg, subset.records, result.systems[published.PUBLISHED_SFT], train,
                                 same_findings=True)
            result.systems[published.PUBLISHED_SFT_MBR] = [c.text for c in chosen]
            result.trained_on[published.PUBLISHED_SFT_MBR] = published.TRAINED_AS_GIVEN
            generation.write_system_predictions(subset.records, result.systems[published.PUBLISHED_SFT_MBR],
                               published.PUBLISHED_SFT_MBR, pred_dir / f"{published.PUBLISHED_SFT_MBR}.jsonl")
    else:
        result.notes.append(f"`{published.PUBLISHED_SFT}` not scored: no model trained on train as given at "
                            f"`{cfg.output_dir.name}/{folder.relative_to(cfg.output_dir)}` (notebook 02 trains it for this "
                            "protocol)")
    dedup, trained = published.dedup_systems_on_subset(run.systems, subset.positions)
    result.systems |= dedup
    result.trained_on |= trained
    if dedup:
        result.notes.append(f"`*{published.DEDUP_SUFFIX}` systems were trained on the deduplicated split (leakage "
                            "guard on) and decoded with its retrieval context; only the test reports and the metric "
                            "follow the published protocol")
    if not subset.complete:
        result.notes.append(f"n = {subset.n}, not {subset.subset_size}: not comparable to the published numbers")
    result.scores, result.per = published.evaluate(result.systems, subset.records, subset.leaky, result.trained_on,
                                                   n_boot=cfg.eval.n_boot, seed=cfg.run.seed)
    against = next((s for s in (published.PUBLISHED_SFT, f"sft{published.DEDUP_SUFFIX}") if s in result.per), None)
    if against is not None:
        boot = {"n_boot": cfg.eval.n_boot, "seed": cfg.run.seed}
        others = [s for s in result.per if s not in (against, *published.BASELINES)]
        result.comparison = pd.concat(
            [published.comparisons(result.per, against, **boot),
             *_against_retrieval(result.per, others, published.comparisons, boot)], ignore_index=True)
        result.comparison.to_csv(out_dir / "comparisons_published.csv", index=False)
    published.update_metrics_json(out_dir / published.METRICS_FILE, result.scores, n=subset.n,
                                  subset=subset.to_dict() | {"notes": subset.notes + result.notes,
                                                             "train_as_given": training_info["split_sizes"]})
    return result


def manifest_summary(scores: Mapping[str, Mapping[str, Any]], fine: Sequence[str],
                     published_run: PublishedRun | None = None, triage_run: TriageRun | None = None) -> dict[str, Any]:
    """The key numbers of notebook 05 for the manifest / rendered page, each labelled with its protocol."""
    shown = [name for name in ("retrieval", "sft", "sft_mbr", *fine) if name in scores]
    out: dict[str, Any] = {f"ROUGE-L {name} (deduplicated)": scores[name]["rougeL"] for name in shown}
    out |= {f"label F1 {name} (deduplicated)": scores[name]["label_f1_micro"] for name in shown}
    out |= {f"missed abnormality % {name} (deduplicated)": scores[name].get("missed_abnormality_rate")
            for name in shown}
    if published_run is not None and published_run.available:
        n = published_run.subset.n
        out |= {f"ROUGE-L {name} (published protocol, n={n})": s["rougeL_published"]
                for name, s in published_run.scores.items()
                if name in ("retrieval", published.PUBLISHED_SFT, published.PUBLISHED_SFT_MBR,
                            f"sft{published.DEDUP_SUFFIX}")}
    if triage_run is not None:
        for name in ("sft", *fine):
            r = triage_run.results.get(name)
            if r is not None:
                out[f"review triage {name} (rule labeler)"] = (
                    f"{_fmt({name: r}, name, 'recall')}% of erroneous drafts flagged at "
                    f"{_fmt({name: r}, name, 'flag_rate')}% of drafts")
    return out


def _fmt(scores: Mapping[str, Any], system: str, metric: str, digits: int = 1) -> str:
    s = scores.get(system) or {}
    value, ci = s.get(metric), s.get(f"{metric}_ci")
    text = _number(value, digits)
    return text + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if value is not None and ci and None not in ci else "")


def take_away(scores: Mapping[str, Mapping[str, Any]], comparison: pd.DataFrame, *, n: int,
              guards: pd.DataFrame | None = None, published_run: PublishedRun | None = None,
              triage_run: TriageRun | None = None) -> str:
    """The closing paragraph of notebook 05 (Markdown), built from this run's numbers only.

    The headline is the deduplicated protocol; with ``published_run`` a last line gives the
    published-protocol numbers beside the paper's GPT-4 (never beside the headline's).
    """
    model_systems = [s for s in scores if s not in ("majority", "retrieval", "reference", "fine_fewshot")
                     and "rougeL" in scores[s]]
    best = max(model_systems, key=lambda s: scores[s]["rougeL"], default=None)
    lines = [f"**Take-away** ({n} test reports, 95% bootstrap CIs):", ""]
    if best is None:
        return "\n".join(lines + ["- no model system was scored"])
    lines.append(f"- Best model system by ROUGE-L: `{best}` {_fmt(scores, best, 'rougeL')} vs TF-IDF retrieval "
                 f"{_fmt(scores, 'retrieval', 'rougeL')} and the majority impression {_fmt(scores, 'majority', 'rougeL')}.")
    row = comparison[(comparison["metric"] == "rougeL") & (comparison["vs"] == "retrieval")] \
        if {"metric", "vs"} <= set(comparison.columns) else pd.DataFrame()
    for system in dict.fromkeys(("sft", best)):
        picked = row[row["system"] == system] if not row.empty else row
        if picked.empty:
            continue
        r = picked.iloc[0]
        verdict = "beats" if r["delta"] > 0 and r["p_value"] < 0.05 else "does not significantly beat" \
            if r["delta"] > 0 else "is below"
        lines.append(f"- `{r['system']}` {verdict} retrieval on ROUGE-L: delta {r['delta']:+.1f} "
                     f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}], paired-bootstrap p = {r['p_value']:.3f}.")
    lines.append(f"- Label F1 (CheXpert-style, our labeler): `{best}` {_fmt(scores, best, 'label_f1_micro')} vs "
                 f"retrieval {_fmt(scores, 'retrieval', 'label_f1_micro')}; hallucinated-finding rate "
                 f"{_fmt(scores, best, 'hallucinated_finding_rate')}%, omitted-finding rate "
                 f"{_fmt(scores, best, 'omitted_finding_rate')}% (references vs their own findings are the floor).")
    if "style_accuracy" in (scores.get(best) or {}) and "style_accuracy" in (scores.get("reference") or {}):
        lines.append(f"- Style accuracy of `{best}`: {_fmt(scores, best, 'style_accuracy', 3)} vs the references' "
                     f"{_fmt(scores, 'reference', 'style_accuracy', 3)}.")
    if guards is not None and not guards.empty:
        worst = guards["negation_flip_rate_labeler"].max()
        after = guards["negation_flip_rate_labeler_guarded"].max()
        lines.append(f"- Factual guard: labeler-checked negation flips at most {worst:.1f}% before, {after:.1f}% after.")
    if "missed_abnormality_rate" in (scores.get(best) or {}):
        lines.append(f"- Missed abnormalities (reference abnormal, draft states none; our labeler): `{best}` "
                     f"{_fmt(scores, best, 'missed_abnormality_rate')}% vs retrieval "
                     f"{_fmt(scores, 'retrieval', 'missed_abnormality_rate')}%.")
    if triage_run is not None and triage_run.results:
        line = triage_run.best_line(scores)
        if line:
            lines.append(line)
    if "n_leaky" in (scores.get(best) or {}):
        lines.append(f"- Leaky vs clean test reports ({scores[best]['n_leaky']} / {scores[best]['n_clean']}): `{best}` "
                     f"ROUGE-L {_fmt(scores, best, 'rougeL_leaky')} vs {_fmt(scores, best, 'rougeL_clean')}.")
    if published_run is not None and published_run.available:
        ps, sub = published_run.scores, published_run.subset
        candidates = (published.PUBLISHED_SFT, published.PUBLISHED_SFT_MBR, f"{best}{published.DEDUP_SUFFIX}", best,
                      "retrieval")
        shown = [s for s in dict.fromkeys(candidates) if s in ps]
        cells = ", ".join(f"`{s}` {_fmt(ps, s, 'rougeL_published')}" for s in shown)
        gpt4 = next(a for a in scoring.PUBLISHED_ANCHORS if a["system"].startswith("GPT-4, 256"))
        lines.append(f"- Published protocol ({sub.n} of the paper's {sub.subset_size} reports, unstemmed per-sample "
                     f"ROUGE-L): {cells}; GPT-4 {gpt4['rougeL_published']:.1f} (published)"
                     + ("." if sub.complete else "; the subset is incomplete here, so not comparable."))
    return "\n".join(lines)
