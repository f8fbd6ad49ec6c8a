"""Levers of the review-risk score (issue #20) on validate, then the chosen one once on test.

Notebook 05 fits the review-risk model on the SFT model's drafts of the 276 validate reports: a logistic
regression on drafting-time signals (:mod:`radimpress_lib.evaluation.triage`), groups chosen by forward
selection on cross-validated ROC AUC, the threshold at the review budget (30% of drafts). This script tries
what could rank the drafts better, each measured the same way on validate (out-of-fold risks, the fit's own
group selection and regularisation, ``--repeats`` shuffles of the folds):

* ``current``: the notebook's signals before this benchmark (no pseudo-draft signal);
* ``prior_c<C>``: the reference prior (per-finding logistic regressions on the train split) with another
  regularisation strength (the notebook's is 4);
* ``prior_findings``: the prior's expected error per finding as signals of their own (``P(reference states
  o)`` where the draft does not state *o*; ``1 - P`` where it states *o* positive), not only summed;
* ``pseudo<k>``: a risk model fitted on **train** reports with pseudo-drafts (the impressions of each report's
  ``k`` nearest other train reports, the retrieval baseline left one out), their error labels against the train
  reference and a cross-fitted prior; its score is one more signal of the validate model. Thousands of
  labelled drafts instead of 276, at the price of drafts that are not the model's.

Inputs: notebook 02's SFT adapter of the run (``outputs/<model>/sft/adapter``) for the validate drafts
(decoded once with token statistics, cached in ``.cache/bench/triage_levers/``), notebook 05's test drafts
``outputs/<model>/predictions/<system>.jsonl`` for the test read (every model system, as notebook 05 scores
them). Labels: our rule labeler (not CheXbert).

Usage::

    RADIMPRESS_DATA=... .venv/bin/python bench/triage_levers.py [--no-test]

Writes ``bench/results/triage_levers.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sft_throughput import machine  # noqa: E402

from radimpress_lib import data  # noqa: E402
from radimpress_lib.clinical import labeler  # noqa: E402
from radimpress_lib.clinical.checks import TRIAGE_OBSERVATIONS  # noqa: E402
from radimpress_lib.core import artifacts, config, paths  # noqa: E402
from radimpress_lib.evaluation import triage  # noqa: E402
from radimpress_lib.llm import checkpoints, generation, retrieval  # noqa: E402
from radimpress_lib.notebook import evaluate  # noqa: E402

PRIOR_CS = (0.5, 1.0, 2.0, 8.0, 16.0)
PSEUDO_K = 3
#: Notebook 05's model systems whose test drafts the chosen lever is scored on.
TEST_SYSTEMS = ("sft", "sft_guarded", "sft_mbr", "fine_dpo", "fine_dpo_guarded", "fine_rl", "fine_rl_guarded")
PRIOR_FINDING_SIGNALS = tuple(f"prior_missing:{o}" for o in TRIAGE_OBSERVATIONS) + tuple(
    f"prior_extra:{o}" for o in TRIAGE_OBSERVATIONS)
_PRESENT = (labeler.POSITIVE, labeler.UNCERTAIN)


def prior_finding_signals(probs: pd.DataFrame, drafts: list[str]) -> pd.DataFrame:
    rows = []
    for i, draft in enumerate(drafts):
        lab = labeler.label_report(draft)
        p = probs.iloc[i]
        rows.append({**{f"prior_missing:{o}": float(p[o]) * (lab[o] not in _PRESENT) for o in TRIAGE_OBSERVATIONS},
                     **{f"prior_extra:{o}": (1.0 - float(p[o])) * (lab[o] == labeler.POSITIVE)
                        for o in TRIAGE_OBSERVATIONS}})
    return pd.DataFrame(rows, columns=list(PRIOR_FINDING_SIGNALS))


@contextlib.contextmanager
def signal_groups(groups: dict[str, tuple[str, ...]]) -> Iterator[None]:
    """triage's signal groups set to ``groups`` (a lever's extra signals) while the block runs."""
    saved = triage.SIGNAL_GROUPS
    triage.SIGNAL_GROUPS = groups
    try:
        yield
    finally:
        triage.SIGNAL_GROUPS = saved


def at_budget(scores: np.ndarray, labels: pd.DataFrame, budget: float) -> dict[str, float]:
    """Recall of erroneous drafts and of drafts missing an abnormal finding when the top ``budget`` share is flagged."""
    rate = np.array([budget])
    return {f"{key}_at_budget": 100 * float(triage._recall_at_rate(scores, labels[col].to_numpy(dtype=bool), rate)[0])
            for key, col in (("recall", "significant"), ("missed_recall", "missed_abnormal"))}


def evaluate_lever(x: pd.DataFrame, labels: pd.DataFrame, groups: dict[str, tuple[str, ...]], *, budget: float,
                   seeds: range, folds: int) -> dict[str, Any]:
    """fit_risk_model's selection and cross-validation with these signal groups, averaged over fold seeds."""
    runs = []
    with signal_groups(groups):
        for seed in seeds:
            _model, fit = triage.fit_risk_model(x, labels["significant"], labels["missed_abnormal"],
                                                max_flag_rate=budget, n_folds=folds, seed=seed)
            y = np.asarray(labels["significant"], dtype=bool)
            runs.append({"seed": seed, "groups": fit.groups, "c": fit.c, "auc": triage._roc_auc(y, fit.oof_scores),
                         **at_budget(fit.oof_scores, labels, budget),
                         "flag_rate_for_targets": 100 * fit.operating_point["flag_rate_for_targets"]})
    mean = {k: float(np.mean([r[k] for r in runs])) for k in ("auc", "recall_at_budget", "missed_recall_at_budget",
                                                                "flag_rate_for_targets")}
    return {**mean, "recall_sd": float(np.std([r["recall_at_budget"] for r in runs])), "runs": runs}


def unflagged_errors(x: pd.DataFrame, labels: pd.DataFrame, groups: dict[str, tuple[str, ...]], budget: float,
                     folds: int, seed: int) -> dict[str, Any]:
    """What the erroneous validate drafts outside the budget's top share (out-of-fold risk) got wrong."""
    with signal_groups(groups):
        _model, fit = triage.fit_risk_model(x, labels["significant"], labels["missed_abnormal"],
                                            max_flag_rate=budget, n_folds=folds, seed=seed)
    s = fit.oof_scores
    cut = np.sort(s)[::-1][int(np.ceil(budget * len(s))) - 1]
    out: dict[str, Any] = {"n": 0, "missed": {}, "negated": {}, "unsupported": {}}
    for i in np.nonzero((s < cut) & labels["significant"].to_numpy(dtype=bool))[0]:
        out["n"] += 1
        for kind in ("missed", "negated", "unsupported"):
            for o in labels.iloc[i][kind]:
                out[kind][o] = out[kind].get(o, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=5, help="fold shuffles per lever (seeds 0..repeats-1)")
    ap.add_argument("--no-test", action="store_true", help="validate only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    cfg = config.load_params(args.params)
    e = cfg.eval
    folder = ROOT / ".cache" / "bench" / "triage_levers"
    folder.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or ROOT / "bench" / "results" / "triage_levers.json")
    dsd, load_info = data.load_data(cfg)
    train, validate = list(dsd["train"]), list(dsd["validate"])
    doc: dict[str, Any] = {"benchmark": "triage_levers", "note": __doc__.split("\n\n")[1], "machine": machine(),
                           "params": args.params, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "data": load_info.get("summary"), "budget": e.triage_max_flag_rate,
                           "labeler": "radimpress rule labeler (not CheXbert)"}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(paths.portable_text(json.dumps(doc, indent=1, default=float)), encoding="utf-8")

    t0 = time.perf_counter()
    val_records = retrieval.with_prompt_context(cfg, validate, train)
    rows_path = folder / "validate_rows.json"
    if rows_path.is_file():
        rows = json.loads(rows_path.read_text(encoding="utf-8"))
    else:
        if not (artifacts.sft_dir(cfg) / "adapter" / "adapter_config.json").is_file():
            raise SystemExit(f"{artifacts.sft_dir(cfg)}: no SFT adapter (run notebook 02 of {args.params} first)")
        model, tokenizer, _ = checkpoints.load_finetuned(cfg)
        rows = generation.generate_impressions(model, tokenizer, val_records, cfg.gen, model_name=cfg.model.name,
                                               token_stats=True, log=lambda s: None).predictions
        rows_path.write_text(json.dumps(rows), encoding="utf-8")
        del model
    doc["validate_decode_s"] = round(time.perf_counter() - t0, 1)
    drafts = [r["prediction"] for r in rows]
    labels = triage.error_labels([r["impression"] for r in validate], drafts)
    doc["validate"] = {"n": len(drafts), "n_errors": int(labels["significant"].sum()),
                       "n_missed_abnormal": int(labels["missed_abnormal"].sum())}

    base_groups = dict(triage.SIGNAL_GROUPS)
    t1 = time.perf_counter()
    default_c = triage.ReferencePrior().c
    priors = {c: triage.ReferencePrior(c=c).fit(train) for c in (default_c, *PRIOR_CS)}

    # pseudo-drafts on train (triage.PseudoDraftModel): retrieval left one out, cross-fitted prior
    t2 = time.perf_counter()
    pmodels = {f"pseudo{k}": triage.PseudoDraftModel.fit(train, k=k, folds=e.triage_folds, seed=cfg.run.seed,
                                                         prior_c=default_c) for k in (1, PSEUDO_K)}
    doc["pseudo"] = {name: dict(pm.meta, signals=pm.features) for name, pm in pmodels.items()}
    doc["pseudo"]["build_s"] = round(time.perf_counter() - t2, 1)
    print(f"pseudo: {doc['pseudo']}", flush=True)

    def signals(lever: str, records: list[dict[str, Any]], texts: list[str], token_rows: list[Any]) -> pd.DataFrame:
        c = float(lever.removeprefix("prior_c")) if lever.startswith("prior_c") else default_c
        probs = priors[c].predict([r["findings"] for r in records])
        pseudo = next((pm for key, pm in pmodels.items() if key in lever.split("+")), None)
        xs = triage.feature_table(records, texts, rows=token_rows, prior_probs=probs, pseudo=pseudo)
        if "prior_findings" in lever:
            xs = pd.concat([xs, prior_finding_signals(probs, texts)], axis=1)
        return xs

    def groups_of(lever: str) -> dict[str, tuple[str, ...]]:
        return base_groups | ({"prior_findings": PRIOR_FINDING_SIGNALS} if "prior_findings" in lever else {})

    names = ["current", *(f"prior_c{c:g}" for c in PRIOR_CS), "prior_findings", "pseudo1", f"pseudo{PSEUDO_K}",
             f"pseudo{PSEUDO_K}+prior_findings"]
    levers: dict[str, Any] = {}
    for name in names:
        t = time.perf_counter()
        xs = signals(name, val_records, drafts, rows)
        if name.startswith("pseudo") and "+" not in name:
            doc["pseudo"][name]["validate_auc_alone"] = triage._roc_auc(np.asarray(labels["significant"], dtype=bool),
                                                                        xs["pseudo_risk"].to_numpy())
        levers[name] = evaluate_lever(xs, labels, groups_of(name), budget=e.triage_max_flag_rate,
                                      seeds=range(args.repeats), folds=e.triage_folds)
        levers[name]["fit_s"] = round(time.perf_counter() - t, 1)
        r = levers[name]
        print(f"{name}: auc {r['auc']:.4f} recall@{100 * e.triage_max_flag_rate:.0f}% {r['recall_at_budget']:.1f} "
              f"(sd {r['recall_sd']:.1f}) missed {r['missed_recall_at_budget']:.1f} "
              f"groups {r['runs'][0]['groups']}", flush=True)
        doc["levers"] = levers
        save()
        if name == "current":
            doc["current_unflagged"] = unflagged_errors(xs, labels, groups_of(name), e.triage_max_flag_rate,
                                                        e.triage_folds, cfg.run.seed)
            print(f"current, errors not flagged at the budget: {doc['current_unflagged']}", flush=True)
    doc["levers_s"] = round(time.perf_counter() - t1, 1)
    best = max(names, key=lambda n: (levers[n]["recall_at_budget"], levers[n]["auc"]))
    doc["choice"] = {"lever": best, "rule": "highest mean cross-validated recall at the budget, then AUC (validate)"}
    save()

    if not args.no_test:
        # test, read once: notebook 05's drafts of each model system (prompt context from train+validate, as 05
        # decoded them); the SFT model's threshold for all but sft_mbr, which gets its own (triage.recalibrated)
        test = retrieval.with_prompt_context(cfg, list(dsd["test"]), train + validate)
        doc["test"] = {"n": len(test), "drafts": "outputs/<model>/predictions/<system>.jsonl"}
        for name in dict.fromkeys(["current", best]):
            with signal_groups(groups_of(name)):
                model, _fit = triage.fit_risk_model(
                    signals(name, val_records, drafts, rows), labels["significant"], labels["missed_abnormal"],
                    recall=e.triage_recall, missed_recall=e.triage_missed_recall, max_flag_rate=e.triage_max_flag_rate,
                    n_folds=e.triage_folds, seed=cfg.run.seed)
                models = {"sft": model}
                if name == best:
                    mbr_val = [c.text for c in evaluate.mbr_select(cfg, val_records, drafts, train)]
                    ml = triage.error_labels([r["impression"] for r in validate], mbr_val)
                    models["sft_mbr"] = triage.recalibrated(model, signals(name, val_records, mbr_val, None),
                                                            ml["significant"], ml["missed_abnormal"], system="sft_mbr")
                doc["test"][name] = {}
                for system in (TEST_SYSTEMS if name == best else ("sft",)):
                    path = cfg.output_dir / "predictions" / f"{system}.jsonl"
                    if not path.is_file():
                        continue
                    by_id = {r["report_id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
                    test_rows = [by_id[str(r["report_id"])] for r in test]
                    texts = [r["prediction"] for r in test_rows]
                    tl = triage.error_labels([r["impression"] for r in test], texts)
                    own = models.get(system, model)
                    risk = np.where(triage.hard_flags(texts, test_rows), 1.0,
                                    own.predict(signals(name, test, texts, test_rows)))
                    res = triage.triage_metrics(risk, tl["significant"], tl["missed_abnormal"], own.threshold,
                                                n_boot=e.n_boot, seed=cfg.run.seed)
                    res |= at_budget(risk, tl, e.triage_max_flag_rate)
                    res["threshold_from"] = f"validate drafts of {system if system in models else 'sft'}"
                    doc["test"][name][system] = res
                    print(f"test {name} {system}: recall {res['recall']:.1f} at flag rate {res['flag_rate']:.1f} "
                          f"(threshold from validate), missed abnormal {res['missed_abnormal_recall']:.1f}; at exactly "
                          f"{100 * e.triage_max_flag_rate:.0f}% flagged: recall {res['recall_at_budget']:.1f}, missed "
                          f"abnormal {res['missed_recall_at_budget']:.1f}; auc {res['auc']:.4f}", flush=True)
                    save()
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
