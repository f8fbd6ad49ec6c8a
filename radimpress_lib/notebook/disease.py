"""Disease-focused adaptation: select a disease-area slice, evaluate on it, train a disease adapter.

A disease area (``disease_*`` parameters; first: oncology-relevant findings) is a set of
whole-word regular expressions searched in the report text (``disease.fields``, default
findings + impression) plus MeSH / Problems main headings (the part before ``/`` of Open-i's
``mesh`` and ``problems`` terms). A report is in the slice when either matches.

* :func:`select_slice` / :func:`slice_table`: the slice of each split, with counts by source
  (keyword, MeSH, both) and the most frequent matched keywords;
* :func:`train_disease_adapter`: a LoRA adapter trained with :func:`radimpress_lib.train.sft.train_sft`
  on the *train* slice only (the validate slice gives the validation loss), either on top of the
  general SFT model (its adapter merged first; ``disease.init: general``) or on the base model;
* :func:`load_disease_model`: base (+ general) + disease adapter, merged, for generation;
* scoring reuses :func:`radimpress_lib.evaluation.evaluate_systems` and ``comparisons`` on the
  test slice (paired bootstrap CIs).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from radimpress_lib.clinical import graph
from radimpress_lib.core import schema
from radimpress_lib.core.artifacts import disease_dir
from radimpress_lib.core.config import DiseaseStageConfig, Params
from radimpress_lib.evaluation import scoring
from radimpress_lib.evaluation.metrics import bootstrap_indices, paired_delta, percentile_ci, rouge_scores
from radimpress_lib.llm import checkpoints, generation, selection
from radimpress_lib.train import sft

__all__ = ["DiseaseMatcher", "SelectionChoice", "SliceDecode", "SliceMentionModel", "SliceSelector", "SliceStats",
           "SystemComparison", "choose_selection", "compare_disease_system", "decode_slice", "disease_dir",
           "load_disease_model", "select_slice", "selected_systems", "slice_recall", "slice_sentences", "slice_table",
           "train_disease_adapter"]


class DiseaseMatcher:
    """Whether a canonical record belongs to a disease area."""

    def __init__(self, cfg: DiseaseStageConfig) -> None:
        self.cfg = cfg
        self._pattern = (re.compile(r"\b(?:" + "|".join(f"(?:{k})" for k in cfg.keywords) + r")\b", re.IGNORECASE)
                         if cfg.keywords else None)
        self._mesh = {t.strip().lower() for t in cfg.mesh_terms}

    def keyword_hits(self, record: Mapping[str, Any]) -> list[str]:
        """Matched keywords (lower case) in the configured fields."""
        if self._pattern is None:
            return []
        text = " \n ".join(str(record.get(f) or "") for f in self.cfg.fields)
        return [m.group(0).lower() for m in self._pattern.finditer(text)]

    def mesh_hits(self, record: Mapping[str, Any]) -> list[str]:
        """Matched MeSH / Problems main headings."""
        terms = list(record.get("mesh") or []) + list(record.get("problems") or [])
        return sorted({t.split("/")[0].strip() for t in terms if t.split("/")[0].strip().lower() in self._mesh})

    def __call__(self, record: Mapping[str, Any]) -> bool:
        return bool(self.keyword_hits(record) or self.mesh_hits(record))

    def names(self, text: str) -> bool:
        """Whether ``text`` names a finding of the area (a keyword)."""
        return bool(self._pattern is not None and self._pattern.search(text or ""))


@dataclass
class SliceStats:
    """Size of a slice and why its reports were selected."""

    n: int = 0
    n_slice: int = 0
    by_keyword_only: int = 0
    by_mesh_only: int = 0
    by_both: int = 0
    keywords: Counter = field(default_factory=Counter)
    mesh_terms: Counter = field(default_factory=Counter)

    def as_dict(self, top: int = 10) -> dict[str, Any]:
        """JSON-able summary (top matched keywords / headings)."""
        return {"n": self.n, "n_slice": self.n_slice, "share": self.n_slice / self.n if self.n else None,
                "by_keyword_only": self.by_keyword_only, "by_mesh_only": self.by_mesh_only, "by_both": self.by_both,
                "top_keywords": _top(self.keywords, top), "top_mesh": _top(self.mesh_terms, top)}


def _top(counts: Counter, top: int) -> dict[str, int]:
    """The ``top`` commonest, ties by name (``Counter.most_common`` keeps first-seen order, which a set of
    matched terms makes depend on the hash seed)."""
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top])


def select_slice(records: Iterable[Mapping[str, Any]], cfg: DiseaseStageConfig) -> tuple[list[Mapping[str, Any]], SliceStats]:
    """The records of the disease area (input order kept) and how they were selected."""
    matcher = DiseaseMatcher(cfg)
    chosen, stats = [], SliceStats()
    for rec in records:
        stats.n += 1
        kw, mesh = matcher.keyword_hits(rec), matcher.mesh_hits(rec)
        if not (kw or mesh):
            continue
        chosen.append(rec)
        stats.n_slice += 1
        stats.by_both += bool(kw and mesh)
        stats.by_keyword_only += bool(kw and not mesh)
        stats.by_mesh_only += bool(mesh and not kw)
        stats.keywords.update(set(kw))
        stats.mesh_terms.update(mesh)
    return chosen, stats


def slice_table(splits: Mapping[str, Iterable[Mapping[str, Any]]], cfg: DiseaseStageConfig):
    """``(slices, table)``: the slice of every split and a DataFrame of their sizes."""
    slices, rows = {}, []
    for name, records in splits.items():
        chosen, stats = select_slice(records, cfg)
        slices[name] = chosen
        d = stats.as_dict()
        rows.append({"split": name, **{k: d[k] for k in ("n", "n_slice", "share", "by_keyword_only", "by_mesh_only",
                                                         "by_both")}, "top_keywords": d["top_keywords"]})
    return slices, pd.DataFrame(rows).set_index("split")


def _base_for_disease(params: Params, padding_side: str):

    if params.disease.init == "general":
        return checkpoints.load_finetuned(params, padding_side=padding_side)  # the general LoRA adapter merged in
    return checkpoints.load_base_model(params, padding_side=padding_side)


def train_disease_adapter(params: Params, train_slice: list[Mapping[str, Any]], val_slice: list[Mapping[str, Any]] | None,
                          *, log: Callable[[str], None] | None = None):
    """Train the disease adapter on the train slice (``sft_*`` settings, ``disease.max_steps`` steps).

    Returns :class:`radimpress_lib.train.sft.SFTResult`; the adapter lands in ``disease_dir(params)/adapter``.
    """
    import datasets


    if not train_slice:
        raise ValueError(f"the train slice of disease area {params.disease.area!r} is empty; "
                         "widen disease.keywords / disease.mesh_terms or raise data.limit_train")
    if params.sft.method != "lora":
        raise ValueError(f"disease adapters are LoRA adapters; sft.method is {params.sft.method!r}")
    steps = params.disease.max_steps
    cfg = params.sft.model_copy(update={"max_steps": steps, "save_steps": min(params.sft.save_steps, steps)})
    model, tokenizer, _ = _base_for_disease(params, padding_side="right")

    def to_ds(rows: list[Mapping[str, Any]]) -> datasets.Dataset:
        return schema.records_to_dataset([dict(r) for r in rows])

    eval_ds = to_ds(val_slice) if val_slice else None
    return sft.train_sft(model, tokenizer, to_ds(train_slice), eval_ds, cfg, disease_dir(params), params.run.seed,
                         log=log)


def load_disease_model(params: Params, *, padding_side: str = "left"):
    """Base (+ general SFT, merged) + the disease adapter (merged), for generation."""

    folder = disease_dir(params) / "adapter"
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no disease adapter; run notebook 08 (make reproduce MODEL="
                                f"{params.run.name} NOTEBOOKS=08)")
    model, tokenizer, info = _base_for_disease(params, padding_side)
    model = checkpoints.apply_adapter(model, folder, merge=True)
    return model, tokenizer, info | {"disease_adapter": str(folder.relative_to(params.output_dir))}


# --------------------------------------------------------------------------- the disease system's selection


class SliceMentionModel:
    """How likely the impression of a slice report names a finding of the area, from its findings.

    A TF-IDF (words, 1-2 grams) logistic regression (class-balanced, L2 strength ``c``) fitted on the
    *train* slice: label = the reference impression names a keyword of the area
    (:meth:`DiseaseMatcher.names`). Radiologists carry a nodule or mass into the impression and
    leave most calcified granulomas out; this learns which.
    """

    def __init__(self, matcher: DiseaseMatcher, c: float = 10.0) -> None:
        self.matcher, self.c = matcher, c
        self.pipeline: Any = None
        self.n_train = self.n_positive = 0

    def fit(self, records: Sequence[Mapping[str, Any]]) -> SliceMentionModel:
        y = [self.matcher.names(str(r.get("impression") or "")) for r in records]
        if len(set(y)) < 2:
            raise ValueError(f"the train slice needs impressions that name a finding of the area and ones that do "
                             f"not ({sum(y)} of {len(y)} do)")
        self.pipeline = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
                                      LogisticRegression(C=self.c, class_weight="balanced", max_iter=5000))
        self.pipeline.fit([str(r.get("findings") or "") for r in records], y)
        self.n_train, self.n_positive = len(y), int(sum(y))
        return self

    def predict(self, findings: Sequence[str]) -> np.ndarray:
        if self.pipeline is None:
            raise ValueError("fit the mention model first")
        return self.pipeline.predict_proba([str(f or "") for f in findings])[:, 1]


def slice_sentences(matcher: DiseaseMatcher, findings: str, draft: str) -> list[str]:
    """The findings sentences that name a finding of the area, when ``draft`` names none (else none)."""
    if matcher.names(draft):
        return []
    return [s.strip() for s in graph.extract_graph_cached(findings or "").sentences if matcher.names(s)]


class SliceSelector:
    """The disease system's impression: notebook 05's MBR selection (``mbr``,
    :class:`radimpress_lib.llm.selection.NeighbourMBR`; None keeps the draft), then, when the chosen text
    names no finding of the area but the :class:`SliceMentionModel` gives at least ``threshold`` that the
    impression of such findings names one, the findings sentences that name it, first. Findings only,
    never a reference."""

    def __init__(self, matcher: DiseaseMatcher, mention: SliceMentionModel | None, mbr: Any = None, *,
                 threshold: float = 0.5) -> None:
        self.matcher, self.mention, self.mbr, self.threshold = matcher, mention, mbr, threshold

    def __call__(self, records: Sequence[Mapping[str, Any]], drafts: Sequence[str]) -> list[str]:
        return self.extend(records, self.choose(records, drafts))

    def choose(self, records: Sequence[Mapping[str, Any]], drafts: Sequence[str]) -> list[str]:
        """The MBR step alone (the drafts when there is no ``mbr``)."""
        return [c.text for c in self.mbr(records, drafts)] if self.mbr is not None else list(drafts)

    def extend(self, records: Sequence[Mapping[str, Any]], texts: Sequence[str]) -> list[str]:
        """The disease step alone: the findings sentences naming a finding of the area before ``texts`` the
        mention model says should name one (``texts`` unchanged without a mention model)."""
        if self.mention is None:
            return list(texts)
        p = self.mention.predict([r.get("findings") or "" for r in records])
        return [selection.with_sentences_first(t, slice_sentences(self.matcher, r.get("findings") or "", t)
                                               if pi >= self.threshold else [])
                for r, t, pi in zip(records, texts, p)]


def slice_recall(matcher: DiseaseMatcher, references: Sequence[str], systems: Mapping[str, Sequence[str]], *,
                 against: str | None = None, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per system: recall of the area's findings (share of reports whose reference impression names one where
    the draft names one too) and the over-call rate (the draft names one, the reference does not), with
    bootstrap 95% CIs; with ``against``, each system's recall minus that system's (paired, same resamples)."""
    ref = np.array([matcher.names(r) for r in references], dtype=bool)
    idx = bootstrap_indices(len(ref), n_boot, seed)
    named = {k: np.array([matcher.names(d) for d in v], dtype=bool) for k, v in systems.items()}

    def rates(hit: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = (hit[idx] & mask[idx]).sum(axis=1) / mask[idx].sum(axis=1)
        return (100.0 * hit[mask].mean() if mask.any() else float("nan")), 100.0 * boot

    rows = []
    base = rates(named[against], ref) if against is not None else None
    for name, hit in named.items():
        rec, rboot = rates(hit, ref)
        over, oboot = rates(hit, ~ref)
        row = {"system": name, "n_reference_names": int(ref.sum()), "recall": rec, "recall_ci": percentile_ci(rboot),
               "over_call_rate": over, "over_call_ci": percentile_ci(oboot), "n_over_call_base": int((~ref).sum())}
        if base is not None and name != against:
            d = rec - base[0]
            ci, p = paired_delta(d, rboot - base[1])
            row |= {f"recall_vs_{against}": d, f"recall_vs_{against}_ci": ci, f"recall_vs_{against}_p": p}
        rows.append(row)
    return pd.DataFrame(rows).set_index("system")


@dataclass
class SelectionChoice:
    """The mention model's strength chosen on the validate slice, with the table it was chosen from."""

    c: float | None
    table: pd.DataFrame
    rule: str
    mention: SliceMentionModel | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"mention_c": self.c, "rule": self.rule, "validate": self.table.reset_index().to_dict(orient="records")}


def choose_selection(params: Params, train_slice: Sequence[Mapping[str, Any]], validate_drafts: Mapping[str, Sequence[str]],
                     validate_slice: Sequence[Mapping[str, Any]], pool: Sequence[Mapping[str, Any]]) -> SelectionChoice:
    """Choose ``disease.mention_c`` on the validate slice: for each strength of ``disease.mention_c_grid``, the
    disease system (:class:`SliceSelector` on ``validate_drafts["disease_sft"]``, MBR neighbours from ``pool``:
    train only) against the general system (``general_sft`` with the same MBR). Rule, fixed beforehand: the highest
    recall of the area's findings whose ROUGE-L is not below the general system's; none: the highest ROUGE-L."""
    cfg = params.disease
    matcher = DiseaseMatcher(cfg)
    named = sum(matcher.names(str(r.get("impression") or "")) for r in train_slice)
    if not validate_slice or not 0 < named < len(train_slice):
        return SelectionChoice(c=None, table=pd.DataFrame(), rule=(
            "no validate slice" if not validate_slice else f"{named} of {len(train_slice)} train-slice impressions name "
            "a finding of the area: no mention model; the disease system is the MBR selection alone"))
    mbr = SliceSelector(matcher, None, selection.NeighbourMBR.from_config(params.eval, pool) if params.eval.mbr_k
                        else None)
    refs = [r["impression"] for r in validate_slice]
    systems: dict[str, list[str]] = {"general_sft": list(validate_drafts["general_sft"]),
                                     "general_system": mbr.choose(validate_slice, validate_drafts["general_sft"])}
    disease_mbr = mbr.choose(validate_slice, validate_drafts["disease_sft"])  # once: the strengths differ after it
    models = {}
    for c in cfg.mention_c_grid:
        models[c] = SliceMentionModel(matcher, c).fit(train_slice)
        systems[f"disease_system_c{c:g}"] = SliceSelector(matcher, models[c], threshold=cfg.mention_threshold).extend(
            validate_slice, disease_mbr)
    rouge = {k: float(np.mean(rouge_scores(v, refs)["rougeL"])) for k, v in systems.items()}
    table = slice_recall(matcher, refs, systems, n_boot=200, seed=params.run.seed)[["recall", "over_call_rate"]]
    table.insert(0, "rougeL", pd.Series(rouge))
    grid = {c: table.loc[f"disease_system_c{c:g}"] for c in cfg.mention_c_grid}
    ok = [c for c, row in grid.items() if row["rougeL"] >= table.loc["general_system", "rougeL"]]
    if ok:
        best = max(ok, key=lambda c: (grid[c]["recall"], grid[c]["rougeL"]))
        rule = "highest recall of the area's findings with ROUGE-L not below the general system's"
    else:
        best = max(grid, key=lambda c: grid[c]["rougeL"])
        rule = "no strength kept the general system's ROUGE-L: the highest ROUGE-L"
    return SelectionChoice(c=best, table=table.round(2), rule=rule, mention=models[best])


@dataclass
class SliceDecode:
    """:func:`decode_slice`'s greedy decodes of a slice, by system, and the tokenizer they used."""

    results: dict[str, generation.GenerationResult]
    tokenizer: Any

    @property
    def drafts(self) -> dict[str, list[str]]:
        """The drafts of each system, in record order."""
        return {name: [p["prediction"] for p in r.predictions] for name, r in self.results.items()}

    def summary(self) -> pd.DataFrame:
        """One row per system: reports, wall time, reports/s and drafts that hit the token limit."""
        return pd.DataFrame({name: r.summary() for name, r in self.results.items()}).T[
            ["n_reports", "wall_time_s", "reports_per_s", "n_not_stopped"]]


def decode_slice(params: Params, records: Sequence[Mapping[str, Any]], *, predictions_dir: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> SliceDecode:
    """Greedy drafts of ``records`` (with their prompt context) by the general SFT model (``general_sft``) and the
    disease model (``disease_sft``).

    ``predictions_dir``: each system's predictions are also written to ``disease_<area>_<system>.jsonl`` there,
    with the adapter and settings hash they came from. ``log``: progress lines (default: none).
    """
    loaders = (("general_sft", checkpoints.load_finetuned, "adapter", ("sft",)),
               ("disease_sft", load_disease_model, "disease_adapter", ("sft", "disease")))
    results, tokenizer = {}, None
    for name, load, adapter_key, stages in loaders:
        model, tokenizer, info = load(params)
        out_path = (None if predictions_dir is None
                    else Path(predictions_dir) / f"disease_{params.disease.area}_{name}.jsonl")
        results[name] = generation.generate_impressions(
            model, tokenizer, list(records), params.gen, model_name=params.model.name,
            model_config={"model": params.model.name, "adapter": info.get(adapter_key),
                          stages[-1]: params.params_hash(*stages)},
            out_path=out_path, log=log or (lambda _s: None))
        del model
    return SliceDecode(results, tokenizer)


def selected_systems(params: Params, choice: SelectionChoice, records: Sequence[Mapping[str, Any]],
                     drafts: Mapping[str, Sequence[str]], pool: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """``general_sft_mbr`` (notebook 05's selection on the general drafts), ``disease_sft_mbr`` (the same on the disease
    drafts) and ``disease_system`` (:class:`SliceSelector` with the chosen mention model) for ``records``."""
    mbr = selection.NeighbourMBR.from_config(params.eval, pool) if params.eval.mbr_k else None
    selector = SliceSelector(DiseaseMatcher(params.disease), choice.mention, mbr,
                             threshold=params.disease.mention_threshold)
    disease_mbr = selector.choose(records, drafts["disease_sft"])  # once, for disease_sft_mbr and disease_system
    out = ({"general_sft_mbr": selector.choose(records, drafts["general_sft"]), "disease_sft_mbr": disease_mbr}
           if mbr is not None else {})
    return out | {"disease_system": selector.extend(records, disease_mbr)}


SELECTED_SYSTEMS = ("general_sft_mbr", "disease_sft_mbr", "disease_system")


def write_selected(records: Sequence[Mapping[str, Any]], systems: Mapping[str, Sequence[str]],
                   predictions_dir: str | Path, area: str) -> list[Path]:
    """Write the test-slice predictions of :func:`selected_systems` beside the decoded ones
    (``predictions/disease_<area>_<system>.jsonl``), so every system of the slice table can be read back."""
    return [generation.write_system_predictions(records, systems[name], name,
                                                Path(predictions_dir) / f"disease_{area}_{name}.jsonl")
            for name in SELECTED_SYSTEMS if name in systems]


@dataclass
class SystemComparison:
    """The disease system against the general one on the test slice: paired ROUGE-L (and the other metrics of
    :func:`radimpress_lib.evaluation.scoring.comparisons`) and the recall of the area's findings."""

    general: str
    comparison: pd.DataFrame
    recall: pd.DataFrame

    def verdict(self) -> str:
        """The target in one Markdown line: ``disease_system`` not worse on ROUGE-L, higher recall."""
        row = self.comparison.query(f"metric == 'rougeL' and vs == '{self.general}'")
        if row.empty or "disease_system" not in self.recall.index:
            return "No disease system to compare."
        r, g = row.iloc[0], self.general
        # scoring.comparisons(per, "disease_system") reports disease_system - vs
        d, lo, hi, p = r["delta"], r["ci_low"], r["ci_high"], r["p_value"]
        rec, base = self.recall.loc["disease_system"], self.recall.loc[g]
        dr, (rlo, rhi) = rec[f"recall_vs_{g}"], rec[f"recall_vs_{g}_ci"]
        if not self.recall["n_reference_names"].iloc[0]:
            return (f"**Disease system vs `{g}`**: no reference impression of the test slice names a finding of the "
                    f"area, so recall is undefined; ROUGE-L {d:+.2f} [{lo:+.2f}, {hi:+.2f}].")
        return (f"**Disease system vs `{g}`** on the test slice: ROUGE-L {d:+.2f} [{lo:+.2f}, {hi:+.2f}] (p = {p:.3f}); "
                f"recall of the area's findings {rec['recall']:.1f}% vs {base['recall']:.1f}% ({dr:+.1f} "
                f"[{_num(rlo, '+.1f')}, {_num(rhi, '+.1f')}], p = {_num(rec[f'recall_vs_{g}_p'], '.3f')}; "
                f"n = {int(rec['n_reference_names'])} "
                f"reference impressions name one), over-call {rec['over_call_rate']:.1f}% vs "
                f"{base['over_call_rate']:.1f}%. "
                + _rouge_words(d, hi)
                + _recall_words(dr, rlo, rec[f"recall_vs_{g}_p"]))

    def to_dict(self) -> dict[str, Any]:
        return {"general": self.general, "comparison": self.comparison.to_dict(orient="records"),
                "recall": self.recall.reset_index().to_dict(orient="records")}


def _rouge_words(delta: float, high: float) -> str:
    """The ROUGE-L half of the verdict: not worse, lower but within chance (CI includes zero), or worse."""
    if delta >= 0:
        return "Not worse on ROUGE-L"
    if high > 0:
        return "ROUGE-L lower on the point estimate but not significantly (the paired CI includes zero)"
    return "Worse on ROUGE-L (the paired CI excludes zero)"


def _recall_words(delta: float, low: float | None, p: float | None) -> str:
    """The recall half of the verdict, in words that say whether the gain is more than chance."""
    if not delta > 0:
        return "; recall not higher."
    if low is not None and low == low and low > 0 and p is not None and p < 0.05:
        return " and higher recall (the paired CI excludes zero)."
    return (f"; recall is higher on the point estimate only: the gain is not significant "
            f"(p = {_num(p, '.2f')}, CI includes zero), so the target is not shown on this slice.")


def _num(value: Any, spec: str) -> str:
    return "–" if value is None or value != value else format(value, spec)


def compare_disease_system(params: Params, test_slice: Sequence[Mapping[str, Any]], systems: Mapping[str, Sequence[str]],
                           per: Mapping[str, Any]) -> SystemComparison:
    """``disease_system`` against the general system (``general_sft_mbr``, or ``general_sft`` without MBR)."""
    general = "general_sft_mbr" if "general_sft_mbr" in systems else "general_sft"
    boot = {"n_boot": params.eval.n_boot, "seed": params.run.seed}
    recall = slice_recall(DiseaseMatcher(params.disease), [r["impression"] for r in test_slice], systems,
                          against=general, **boot)
    comparison = scoring.comparisons({k: per[k] for k in ("disease_system", general, "general_sft") if k in per},
                                     "disease_system", **boot)
    return SystemComparison(general=general, comparison=comparison, recall=recall)
