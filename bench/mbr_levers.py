"""Decode-time levers of the coarse recipe on validate: MBR neighbours ``k``, a per-flag penalty on what the
findings checks flag (omissions included), and the extractive coverage hypothesis
(:mod:`radimpress_lib.llm.selection`); then the chosen setting once on test.

The SFT model is notebook 02's recipe (deduplicated protocol, ``run.seed``; seed 42 reproduces the reference
run's test drafts), trained into ``.cache/bench/mbr_levers/`` (git-ignored) unless an adapter is there already.

1. validate: greedy drafts of the validate split (prompt context and neighbours from train only, as a report
   drafted after training), then every grid setting selects among the draft, its ``k`` nearest train
   impressions and, with ``coverage``, the draft preceded by the findings sentences of the significant findings
   it omits. Protocol B's metrics (stemmed ROUGE-L, label F1, omitted-finding / missed-abnormality /
   hallucination rates) and the paired bootstrap against retrieval.
2. choice (validate only): the highest ROUGE-L among the settings whose omitted-finding rate is <= ``--max-omitted``
   and whose label F1 is not below retrieval's; if none qualifies, the highest ROUGE-L overall.
3. test, read once: notebook 05's ``sft`` drafts (retrieval context from train+validate) under the plain consensus
   (``k`` of the config, no penalty, no coverage), the config's default and the chosen setting, scored and paired
   against retrieval.

The omitted-finding rate is measured by the same entity graph the flag penalty and the coverage hypothesis use, so
it is optimistic for them; the missed-abnormality rate (labeler, against the reference) is the independent check.

Usage::

    RADIMPRESS_DATA=... .venv/bin/python bench/mbr_levers.py [--quick]

Writes ``bench/results/mbr_levers[_quick].json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from seed_variance import score_vs_retrieval, validate_with_retrieval  # noqa: E402
from sft_throughput import machine  # noqa: E402

from radimpress_lib import data  # noqa: E402
from radimpress_lib.core import artifacts, config, paths  # noqa: E402
from radimpress_lib.llm import checkpoints, generation, retrieval, selection  # noqa: E402
from radimpress_lib.notebook import evaluate  # noqa: E402
from radimpress_lib.train import sft  # noqa: E402

KS = (3, 5, 8)
PENALTIES = (0.0, 0.25, 0.5, 1.0, 2.0)
COVERAGE = (False, True)


def setting_name(k: int, penalty: float, coverage: bool) -> str:
    return f"k{k}_pen{penalty:g}{'_cov' if coverage else ''}"


#: Every grid setting by name.
GRID = {setting_name(*s): s for s in itertools.product(KS, PENALTIES, COVERAGE)}


def select_all(records: list[dict[str, Any]], drafts: list[str], neighbours: list[list[str]], k: int,
               penalty: float, coverage: bool, factual: bool = True) -> tuple[list[str], dict[str, int]]:
    """The chosen impressions of one setting and how many came from each source kind."""
    chosen = selection.MBRSelector(k, factual=factual, flag_penalty=penalty, coverage=coverage).select_many(
        records, drafts, [n[:k] for n in neighbours])
    sources: dict[str, int] = {}
    for c in chosen:
        kind = c.source.split(":")[0]
        sources[kind] = sources.get(kind, 0) + 1
    return [c.text for c in chosen], sources


def choose(rows: dict[str, dict[str, Any]], retrieval_f1: float, max_omitted: float) -> tuple[str, str]:
    """The validate choice (see the module docstring) and the rule that made it."""
    ok = {n: r for n, r in rows.items() if r["omitted_finding_rate"] <= max_omitted
          and r["label_f1_micro"] >= retrieval_f1}
    pool, rule = (ok, f"omitted <= {max_omitted:g}% and label F1 >= retrieval's") if ok else (rows, "none qualified")
    return max(pool, key=lambda n: pool[n]["rougeL"]), rule


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="smollm2-135m")
    ap.add_argument("--max-omitted", type=float, default=20.0, help="omitted-finding rate bound (%%) of the choice")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--sweep-boot", type=int, default=200, help="bootstrap resamples per grid setting")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 train reports, 4 steps, 8 + 8 reports")
    ap.add_argument("--no-test", action="store_true", help="validate only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    folder = ROOT / ".cache" / "bench" / ("mbr_levers_quick" if args.quick else "mbr_levers")
    out = Path(args.out or ROOT / "bench" / "results" / f"mbr_levers{'_quick' if args.quick else ''}.json")
    base = config.load_params(args.params)
    seed = base.run.seed
    over: dict[str, Any] = {"sft": {"protocols": ["deduplicated"], "cache_dir": str(folder / "trunk")},
                            "eval": {"zero_shot": False, "guard_candidates": 0, "triage": False},
                            "run": {"output_dir": str(folder / f"seed{seed}")}}
    if args.quick:
        over["sft"] |= {"max_steps": 4}
    cfg = base.override(over)
    dsd, load_info = data.load_data(base)
    if args.quick:
        dsd = {"train": list(dsd["train"])[:64], "validate": list(dsd["validate"])[:8], "test": list(dsd["test"])[:8]}
    train = list(dsd["train"])
    doc: dict[str, Any] = {"benchmark": "mbr_levers", "quick": args.quick, "note": __doc__.split("\n\n")[1],
                           "machine": machine(), "params": args.params, "seed": seed,
                           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "data": load_info.get("summary"),
                           "grid": {"k": KS, "flag_penalty": PENALTIES, "coverage": COVERAGE},
                           "default": setting_name(base.eval.mbr_k, base.eval.mbr_flag_penalty, base.eval.mbr_coverage)}

    def save() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(paths.portable_text(json.dumps(doc, indent=1, default=float)), encoding="utf-8")

    t0 = time.perf_counter()
    if not (artifacts.sft_dir(cfg) / "adapter" / "adapter_config.json").is_file():
        result = sft.train_protocols(cfg, dsd, log=lambda s: print(s, flush=True)).results["deduplicated"]
        doc["train"] = {"wall_s": round(time.perf_counter() - t0, 1), "global_step": result.global_step,
                        "final_eval_loss": result.final_eval_loss}
    val_records, val_baselines = validate_with_retrieval(base, dsd, None)
    drafts_path = folder / "validate_drafts.json"
    if drafts_path.is_file():
        drafts = json.loads(drafts_path.read_text(encoding="utf-8"))
    else:
        model, tokenizer, _ = checkpoints.load_finetuned(cfg)
        t1 = time.perf_counter()
        drafts = [p["prediction"] for p in generation.generate_impressions(
            model, tokenizer, val_records, cfg.gen, model_name=cfg.model.name, log=lambda s: None).predictions]
        doc["validate_decode_s"] = round(time.perf_counter() - t1, 1)
        drafts_path.write_text(json.dumps(drafts), encoding="utf-8")
    neighbours = [r["similar_impressions"] for r in retrieval.with_similar_impressions(val_records, train, max(KS))]

    rows: dict[str, dict[str, Any]] = {}
    systems: dict[str, list[str]] = {"sft": drafts, "retrieval": val_baselines["retrieval"]}
    sources: dict[str, dict[str, int]] = {}
    t2 = time.perf_counter()
    for name, (k, penalty, coverage) in GRID.items():
        systems[name], sources[name] = select_all(val_records, drafts, neighbours, k, penalty, coverage)
    doc["select_s"] = round(time.perf_counter() - t2, 1)
    scored = score_vs_retrieval(systems, val_records, args.sweep_boot, seed)
    for name in systems:
        rows[name] = scored[name] | ({"sources": sources[name]} if name in sources else {})
    doc["validate"] = {"n": len(val_records), "rows": rows}
    grid = {n: r for n, r in rows.items() if n in sources}
    best, rule = choose(grid, rows["retrieval"]["label_f1_micro"], args.max_omitted)
    doc["choice"] = {"setting": best, "rule": rule}
    print(f"validate: default {doc['default']} {rows[doc['default']]['rougeL']:.2f} / omitted "
          f"{rows[doc['default']]['omitted_finding_rate']:.1f}; chosen {best} {rows[best]['rougeL']:.2f} / omitted "
          f"{rows[best]['omitted_finding_rate']:.1f} / missed {rows[best]['missed_abnormality_rate']:.1f}", flush=True)
    save()

    if not args.no_test:
        run = evaluate.prepare(cfg, dsd, cfg.output_dir)
        evaluate.decode_coarse(run)
        test_nb = [r["similar_impressions"] for r in
                   retrieval.with_similar_impressions(run.test, run.fit_pool, max(KS))]
        test_systems = {"sft": run.systems["sft"], "retrieval": run.systems["retrieval"]}
        for name in dict.fromkeys([setting_name(base.eval.mbr_k, 0.0, False), doc["default"], best]):
            test_systems[name], _ = select_all(run.test, run.systems["sft"], test_nb, *GRID[name])
        doc["test"] = {"n": len(run.test), "rows": score_vs_retrieval(test_systems, run.test, args.n_boot, seed)}
        print("test: " + ", ".join(f"{n} {r['rougeL']:.2f}" for n, r in doc["test"]["rows"].items()), flush=True)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    doc["wall_s"] = round(time.perf_counter() - t0, 1)
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
