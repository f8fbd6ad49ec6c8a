"""The README's results tables, rendered from a run's committed outputs (never typed by hand).

:func:`results_markdown` reads ``metrics.json`` (protocol B, deduplicated), ``metrics_published.json``
(protocol A, as published) and the paired-bootstrap CSVs notebook 05 writes, and returns two Markdown
tables: protocol B with its headline metrics and the leaky / clean split; protocol A with the published
metric, the paper's anchors (:data:`radimpress_lib.evaluation.scoring.PUBLISHED_ANCHORS`) below our rows
and nowhere else; and, when ``bench/results/seed_variance.json`` exists, the seed spread of the coarse
recipe (``bench/seed_variance.py``: the same SFT + decoding retrained with several seeds) and, when
``bench/results/mbr_levers.json`` exists, the validate sweep of the MBR selection that chose ``sft_mbr``'s setting.
``tests/test_results_readme.py`` keeps the README's copy (between the ``<!-- results:begin -->`` / ``<!-- results:end -->`` markers) equal to this function's output on
``outputs/smollm2-135m``; ``python -m radimpress_lib.notebook.results outputs/<model>`` prints it.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from radimpress_lib.evaluation.scoring import PUBLISHED_ANCHORS

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

#: Protocol B rows (deduplicated; all 343 test reports), in order; systems a run lacks are left out.
SYSTEMS_B = ("majority", "retrieval", "sft", "sft_mbr", "fine_dpo", "fine_rl")
#: Protocol A rows (as published; the 250-report subset).
SYSTEMS_A = ("majority", "retrieval", "sft_published", "sft_published_mbr", "sft_dedup", "sft_mbr_dedup",
             "fine_rl_dedup")
#: The seed-variance benchmark's result, shown under the tables when present.
SEEDS = Path(__file__).resolve().parents[2] / "bench" / "results" / "seed_variance.json"
#: The decode-lever benchmark's result (validate sweep of the MBR selection), shown when present.
LEVERS = SEEDS.parent / "mbr_levers.json"


def _num(x: Any, digits: int = 1) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _with_ci(s: Mapping[str, Any], metric: str) -> str:
    ci = s.get(f"{metric}_ci") or [None, None]
    if s.get(metric) is None:
        return "–"
    if None in ci:
        return _num(s[metric])
    return f"{s[metric]:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def _deltas(path: Path, metric: str) -> dict[str, tuple[float, float]]:
    """``{system: (delta vs retrieval, p)}`` from a comparisons CSV (rows ``system, vs=retrieval``)."""
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as fh:
        return {r["system"]: (float(r["delta"]), float(r["p_value"])) for r in csv.DictReader(fh)
                if r["vs"] == "retrieval" and r["metric"] == metric}


def _delta_cell(deltas: Mapping[str, tuple[float, float]], system: str) -> str:
    if system not in deltas:
        return "–"
    d, p = deltas[system]
    return f"{d:+.1f} (p {'< 0.001' if p < 0.001 else f'= {p:.3f}'})"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows)]


def protocol_b(metrics: Mapping[str, Any], deltas: Mapping[str, tuple[float, float]]) -> list[str]:
    """Protocol B (deduplicated) table lines."""
    rows = []
    for name in SYSTEMS_B:
        s = metrics.get(name)
        if not isinstance(s, Mapping):
            continue
        rows.append([f"`{name}`", _with_ci(s, "rougeL"), _delta_cell(deltas, name), _num(s.get("bleu")),
                     _num(s.get("label_f1_micro")), _num(s.get("graph_f1")), _num(s.get("missed_abnormality_rate")),
                     _num(s.get("omitted_finding_rate")), _num(s.get("hallucinated_finding_rate")),
                     f"{_num(s.get('rougeL_clean'))} / {_num(s.get('rougeL_leaky'))}"])
    return _table(["system", "ROUGE-L (stemmed) [95% CI]", "Δ vs retrieval", "BLEU (corpus)", "label F1",
                   "graph F1", "missed abnormality %", "omitted %", "hallucinated %", "ROUGE-L clean / leaky"], rows)


def protocol_a(metrics: Mapping[str, Any], deltas: Mapping[str, tuple[float, float]]) -> list[str]:
    """Protocol A (as published) table lines, the paper's anchors last."""
    rows = []
    for name in SYSTEMS_A:
        s = metrics.get(name)
        if not isinstance(s, Mapping):
            continue
        rows.append([f"`{name}`", s.get("trained_on", "–"), _with_ci(s, "rougeL_published"),
                     _delta_cell(deltas, name), _num(s.get("bleu_published")), _num(s.get("label_f1_micro")),
                     f"{_num(s.get('rougeL_published_clean'))} / {_num(s.get('rougeL_published_leaky'))}"])
    for a in PUBLISHED_ANCHORS:
        rows.append([a["system"], "paper", _num(a.get("rougeL_published")), "–", _num(a.get("bleu_published")), "–",
                     "–"])
    return _table(["system", "trained on", "ROUGE-L (unstemmed, per sample) [95% CI]", "Δ vs retrieval",
                   "BLEU (per sample)", "label F1", "ROUGE-L clean / leaky"], rows)


def _spread(m: Mapping[str, Any] | None, sign: str = "") -> str:
    if not m:
        return "–"
    return f"{m['mean']:{sign}.1f} ± {m['sd']:.1f} [{m['min']:{sign}.1f}, {m['max']:{sign}.1f}]"


def seed_spread(doc: Mapping[str, Any]) -> list[str]:
    """Seed-spread table lines from a ``bench/seed_variance.py`` result (mean ± sd [min, max] over seeds)."""
    summary = doc["summary"]
    rows = []
    for name in ("sft", "sft_mbr"):
        val, test = summary.get("validate", {}).get(name), summary.get("test", {}).get(name)
        if not test:
            continue
        delta = test.get("rougeL_vs_retrieval") or {}
        won = delta.get("seeds_p_below_0.05_and_positive")
        rows.append([f"`{name}`", _spread((val or {}).get("rougeL")), _spread(test.get("rougeL")), _spread(delta, "+"),
                     "–" if won is None else f"{won} of {len(delta.get('values', []))}",
                     _spread(test.get("label_f1_micro")), _spread(test.get("missed_abnormality_rate"))])
    return _table(["system", "validate ROUGE-L", "test ROUGE-L", "test Δ vs retrieval",
                   "seeds with Δ > 0 at p < 0.05", "test label F1", "test missed abnormality %"], rows)


def _mbr_setting(recipe: Mapping[str, Any]) -> str:
    cov = "with" if recipe.get("mbr_coverage") else "without"
    return (f"MBR over k = {recipe.get('mbr_k')} neighbours, flag penalty {recipe.get('mbr_flag_penalty', 0.0):g}, "
            f"{cov} the coverage candidate")


def lever_table(doc: Mapping[str, Any]) -> list[str]:
    """Validate rows of a ``bench/mbr_levers.py`` result: greedy, retrieval, every setting of the chosen ``k``, and
    the other ``k`` without the penalty and with the chosen penalty and coverage (the whole grid is in the JSON)."""
    rows_in = doc["validate"]["rows"]
    choice = doc.get("choice", {}).get("setting") or ""
    k_chosen, _, rest = choice.partition("_")
    shown = [n for n in rows_in if "_" not in n or n.startswith(f"{k_chosen}_") or n.endswith("_pen0")
             or (rest and n.endswith(f"_{rest}"))]
    rows = []
    for name in shown:
        r = rows_in[name]
        delta = r.get("rougeL_vs_retrieval") or {}
        label = f"`{name}`" + (" (chosen)" if name == choice else "")
        rows.append([label, f"{r['rougeL']:.1f}",
                     "–" if name == "retrieval" else f"{delta['delta']:+.1f} (p = {delta['p_value']:.3f})",
                     f"{r['label_f1_micro']:.1f}", f"{r['omitted_finding_rate']:.1f}",
                     f"{r['missed_abnormality_rate']:.1f}", f"{r['hallucinated_finding_rate']:.1f}"])
    return _table(["validate system (MBR: k, flag penalty, coverage)", "ROUGE-L", "Δ vs retrieval", "label F1",
                   "omitted %", "missed abnormality %", "hallucinated %"], rows)


def results_markdown(out_dir: str | Path, seeds: str | Path | None = None,
                     levers: str | Path | None = None) -> str:
    """Both protocol tables of the run in ``out_dir`` (Markdown, without the README markers), and the seed
    spread from the ``bench/seed_variance.py`` result ``seeds`` when that file exists."""
    out_dir = Path(out_dir)
    b = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    a_path = out_dir / "metrics_published.json"
    lines = [f"**Protocol B, deduplicated** (the headline; `metrics.json`, n = {b.get('n')} test reports, "
             "leakage guard on):", "",
             *protocol_b(b, _deltas(out_dir / "comparisons.csv", "rougeL"))]
    if a_path.is_file():
        a = json.loads(a_path.read_text(encoding="utf-8"))
        lines += ["", f"**Protocol A, as published** (`metrics_published.json`, n = {a.get('n')}, the paper's "
                  "subset; the paper's rows are comparable to these only):", "",
                  *protocol_a(a, _deltas(out_dir / "comparisons_published.csv", "rougeL_published"))]
    if seeds is not None and Path(seeds).is_file():
        doc = json.loads(Path(seeds).read_text(encoding="utf-8"))
        lines += ["", f"**Seed spread, protocol B** (`bench/results/seed_variance.json`: the coarse recipe retrained "
                  f"with seeds {', '.join(map(str, doc.get('seeds', [])))}; mean ± sd [min, max]; validate "
                  f"n = {doc.get('n_validate')}, test n = {doc.get('n_test')}; retrieval scores "
                  f"{doc['summary']['test'].get('retrieval_rougeL', float('nan')):.1f} on test"
                  + (f"; `sft_mbr` there: {_mbr_setting(doc['recipe'])}" if doc.get("recipe") else "") + "):", "",
                  *seed_spread(doc)]
    if levers is not None and Path(levers).is_file():
        doc = json.loads(Path(levers).read_text(encoding="utf-8"))
        choice = doc.get("choice", {})
        lines += ["", f"**Decode levers on validate** (`bench/results/mbr_levers.json`, seed {doc.get('seed')}, "
                  f"n = {doc['validate']['n']}; chosen by the rule: {choice.get('rule')}; protocol B metrics):", "",
                  *lever_table(doc)]
    return "\n".join(lines) + "\n"


def readme_section(readme: str) -> str:
    """The text between the results markers of ``readme`` (``ValueError`` when they are missing)."""
    if BEGIN not in readme or END not in readme:
        raise ValueError(f"README has no {BEGIN} ... {END} section")
    return readme.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


if __name__ == "__main__":  # pragma: no cover - a print helper
    _out = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/smollm2-135m")
    if not (_out / "metrics.json").is_file():
        sys.exit(f"{_out}/metrics.json not found: give the output folder of a run (notebook 05 writes it)")
    sys.stdout.write(results_markdown(_out, SEEDS, LEVERS))
