"""Seed variance of the chosen coarse recipe: notebook 02's SFT (deduplicated protocol) and notebook 05's
greedy + MBR decoding, trained with several seeds, against TF-IDF retrieval.

For each ``--seeds`` value the script runs the code notebooks 02 and 05 run, with only ``run.seed``
changed and the run folder moved to ``.cache/bench/seed_variance/seed<k>/`` (git-ignored; the reference
run's ``outputs/<model>/`` is never touched):

1. :func:`radimpress_lib.train.sft.train_protocols` (``sft.protocols: [deduplicated]``): the seed sets
   the LoRA initialisation and the data order. The trunk cache of the cached trainer is kept on disk
   (``sft.cache_dir``), so it is built once and read back by the other seeds (its rows do not depend
   on the seed);
2. validate: greedy drafts of the validate split (prompt context from train only, as a report drafted
   after training) and MBR selection among the draft and the ``eval.mbr_k`` nearest train impressions;
3. test: :func:`radimpress_lib.notebook.evaluate.decode_coarse` (zero-shot, guard and triage off):
   ``sft`` and ``sft_mbr``, retrieval context from train+validate, as notebook 05.

Scores are protocol B's (stemmed ROUGE-L, label F1, missed-abnormality rate, omitted-finding rate) with
the paired bootstrap against retrieval on the same reports. The summary gives mean, sample standard
deviation, min and max over seeds of every figure, and for the test split how many seeds beat
retrieval with p < 0.05. The seed of the reference run also checks determinism: the share of its test
drafts identical to the committed ``outputs/<model>/predictions/sft.jsonl``.

Choices were made on validate (earlier notes); the test split is scored here only to report the spread.

Usage::

    RADIMPRESS_DATA=... .venv/bin/python bench/seed_variance.py [--seeds 42 43 44] [--quick]

Writes ``bench/results/seed_variance[_quick].json``, rewritten after every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sft_throughput import calibrate, machine  # noqa: E402

from radimpress_lib import data  # noqa: E402
from radimpress_lib.core import config, paths  # noqa: E402
from radimpress_lib.evaluation import scoring  # noqa: E402
from radimpress_lib.llm import checkpoints, generation, retrieval  # noqa: E402
from radimpress_lib.notebook import evaluate  # noqa: E402
from radimpress_lib.train import sft  # noqa: E402

METRICS = ("rougeL", "bleu", "label_f1_micro", "missed_abnormality_rate", "omitted_finding_rate",
           "hallucinated_finding_rate")
SYSTEMS = ("sft", "sft_mbr")


def score_vs_retrieval(systems: dict[str, list[str]], records: list[dict[str, Any]], n_boot: int,
                       seed: int) -> dict[str, Any]:
    """Each system's metrics (with CIs) and its paired bootstrap against ``retrieval`` (also bench/mbr_levers.py)."""
    scores, per = scoring.evaluate_systems(systems, records, n_boot=n_boot, seed=seed, embed=False)
    out: dict[str, Any] = {}
    for name in systems:
        s = scores[name]
        out[name] = {m: s.get(m) for m in METRICS} | {f"{m}_ci": s.get(f"{m}_ci") for m in METRICS}
    table = scoring.comparisons({k: per[k] for k in systems}, "retrieval", n_boot=n_boot, seed=seed,
                                metrics=("rougeL", "label_f1_micro"))
    for row in table.to_dict("records"):
        # comparisons() reports retrieval - other; flip to other - retrieval
        out[row["vs"]][f"{row['metric']}_vs_retrieval"] = {
            "delta": -row["delta"], "ci": [-row["ci_high"], -row["ci_low"]], "p_value": row["p_value"]}
    return out


def validate_with_retrieval(cfg: config.Params, dsd: Any, n: int | None
                            ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Validate records with prompt context and neighbours from train only, and the retrieval baseline
    (also bench/mbr_levers.py)."""
    train = list(dsd["train"])
    records = list(dsd["validate"])[:n] if n else list(dsd["validate"])
    in_context = retrieval.with_prompt_context(cfg, records, train)
    return in_context, scoring.baseline_predictions(train, records)


def _decode_validate(cfg: config.Params, records: list[dict[str, Any]], train: list[dict[str, Any]]
                     ) -> tuple[dict[str, list[str]], float]:
    t0 = time.perf_counter()
    model, tokenizer, _ = checkpoints.load_finetuned(cfg)
    result = generation.generate_impressions(model, tokenizer, records, cfg.gen, model_name=cfg.model.name,
                                             log=lambda s: None)
    drafts = [p["prediction"] for p in result.predictions]
    chosen = evaluate.mbr_select(cfg, records, drafts, train)
    return {"sft": drafts, "sft_mbr": [c.text for c in chosen]}, time.perf_counter() - t0


def _identical_share(predictions: list[str], test: list[dict[str, Any]], path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    committed = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            committed[row["report_id"]] = row["prediction"]
    same = [committed.get(r["report_id"]) == p for r, p in zip(test, predictions)]
    return {"n": len(same), "identical": sum(same), "share": sum(same) / max(1, len(same)),
            "file": str(path.relative_to(ROOT))}


def _spread(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else None,
            "min": min(values), "max": max(values), "values": values}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean / sd / min / max over seeds for each split, system and metric, and seeds that beat retrieval."""
    out: dict[str, Any] = {}
    for split in ("validate", "test"):
        done = [r[split] for r in runs if split in r]
        if not done:
            continue
        out[split] = {}
        for system in SYSTEMS:
            row: dict[str, Any] = {}
            for m in METRICS:
                vals = [d[system][m] for d in done if d[system].get(m) is not None]
                if vals:
                    row[m] = _spread(vals)
            deltas = [d[system]["rougeL_vs_retrieval"] for d in done]
            row["rougeL_vs_retrieval"] = _spread([x["delta"] for x in deltas]) | {
                "seeds_p_below_0.05_and_positive": sum(x["p_value"] < 0.05 and x["delta"] > 0 for x in deltas),
                "p_values": [x["p_value"] for x in deltas]}
            out[split][system] = row
        out[split]["retrieval_rougeL"] = done[0]["retrieval"]["rougeL"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="smollm2-135m")
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    ap.add_argument("--val-reports", type=int, default=None, help="first N validate reports (default: all)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 64 train reports, 4 steps, 8 validate and 8 test reports")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    folder = ROOT / ".cache" / "bench" / ("seed_variance_quick" if args.quick else "seed_variance")
    out = Path(args.out or ROOT / "bench" / "results" / f"seed_variance{'_quick' if args.quick else ''}.json")
    base = config.load_params(args.params)
    common: dict[str, Any] = {"sft": {"protocols": ["deduplicated"], "cache_dir": str(folder / "trunk")},
                              "eval": {"zero_shot": False, "guard_candidates": 0, "triage": False}}
    if args.quick:
        common["sft"] |= {"max_steps": 4}
    dsd, load_info = data.load_data(base)
    if args.quick:
        dsd = {"train": list(dsd["train"])[:64], "validate": list(dsd["validate"])[:8], "test": list(dsd["test"])[:8]}
    val_records, val_baselines = validate_with_retrieval(base, dsd, args.val_reports)
    doc: dict[str, Any] = {
        "benchmark": "seed_variance", "quick": args.quick, "note": __doc__.split("\n\n")[1],
        "machine": machine(), "params": args.params, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "calib_gflops_before": calibrate(), "seeds": args.seeds, "reference_seed": base.run.seed,
        "recipe": {"sft": base.sft.model_dump(), "mbr_k": base.eval.mbr_k, "mbr_factual": base.eval.mbr_factual,
                   "mbr_flag_penalty": base.eval.mbr_flag_penalty, "mbr_coverage": base.eval.mbr_coverage,
                   "gen": base.gen.model_dump()},
        "n_train": len(dsd["train"]), "n_validate": len(val_records), "n_test": len(dsd["test"]),
        "data": load_info.get("summary"), "runs": [],
    }

    def save() -> None:
        doc["summary"] = summarise(doc["runs"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(paths.portable_text(json.dumps(doc, indent=1, default=float)), encoding="utf-8")

    for seed in args.seeds:
        cfg = base.override(common | {"run": {"seed": seed, "output_dir": str(folder / f"seed{seed}")}})
        entry: dict[str, Any] = {"seed": seed}
        t0 = time.perf_counter()
        runs = sft.train_protocols(cfg, dsd, log=lambda s: print(f"[seed {seed}] {s}", flush=True))
        result = runs.results["deduplicated"]
        entry["train"] = {"wall_s": round(time.perf_counter() - t0, 1), "global_step": result.global_step,
                          "final_train_loss": result.final_train_loss, "final_eval_loss": result.final_eval_loss,
                          "trunk_cache_s": (result.cache or {}).get("build_s")}
        predictions, decode_s = _decode_validate(cfg, val_records, list(dsd["train"]))
        validate_systems = {**predictions, "retrieval": val_baselines["retrieval"]}
        entry["validate"] = score_vs_retrieval(validate_systems, val_records, args.n_boot, base.run.seed) | {
            "decode_s": round(decode_s, 1)}
        print(f"[seed {seed}] validate ROUGE-L sft {entry['validate']['sft']['rougeL']:.2f} "
              f"sft_mbr {entry['validate']['sft_mbr']['rougeL']:.2f} "
              f"retrieval {entry['validate']['retrieval']['rougeL']:.2f}", flush=True)
        t1 = time.perf_counter()
        run = evaluate.prepare(cfg, dsd, cfg.output_dir)
        evaluate.decode_coarse(run)
        test_systems = {k: run.systems[k] for k in (*SYSTEMS, "retrieval")}
        entry["test"] = score_vs_retrieval(test_systems, run.test, args.n_boot, base.run.seed) | {
            "decode_s": round(time.perf_counter() - t1, 1)}
        if seed == base.run.seed and not args.quick:
            entry["determinism"] = _identical_share(run.systems["sft"], run.test,
                                                    base.output_dir / "predictions" / "sft.jsonl")
        print(f"[seed {seed}] test ROUGE-L sft {entry['test']['sft']['rougeL']:.2f} "
              f"sft_mbr {entry['test']['sft_mbr']['rougeL']:.2f} retrieval {entry['test']['retrieval']['rougeL']:.2f}",
              flush=True)
        doc["runs"].append(entry)
        save()
    doc["calib_gflops_after"] = calibrate()
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
