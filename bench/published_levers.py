"""Protocol A ("as published") decode levers on validate: how notebook 05's ``sft_published_mbr`` treats a report
whose findings occur in the train split as given (a *twin*; the paper's protocol keeps them).

Under protocol A the benchmark duplicates itself: 91 of the 341 validate reports (65 of the paper's 250 test reports)
have findings that also occur in train. The protocol-A SFT model sees the twin's impression in its prompt and mostly
copies it, but MBR over the draft and the k nearest impressions outvotes that copy with the consensus of non-twin
neighbours. Settings compared, each against TF-IDF retrieval (train as given) with the published metric
(unstemmed per-sample ROUGE-L, per-sample BLEU; :mod:`radimpress_lib.evaluation.published`), all / leaky / clean:

* ``sft_published``: the greedy draft;
* ``mbr``: notebook 05's MBR (``eval.mbr_*``) over the draft and the k nearest impressions, twins among them;
* ``twin_draft``: the greedy draft when the report has a twin, else ``mbr``;
* ``mbr_twins``: ``eval.mbr_twins``: a report with twins takes the draft and the twins' impressions as evidence
  (:class:`radimpress_lib.llm.selection.NeighbourMBR`), else ``mbr``.

The model is notebook 02's protocol-A adapter (``outputs/<model>/sft_published/adapter``); validate drafts use the
prompt context from train as given. The test split is not read (notebook 05 reads it once).

Usage::

    RADIMPRESS_DATA=... .venv/bin/python bench/published_levers.py

Writes ``bench/results/published_levers.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from sft_throughput import machine  # noqa: E402

from radimpress_lib.core import artifacts, config, paths  # noqa: E402
from radimpress_lib.data import protocols  # noqa: E402
from radimpress_lib.evaluation import published, scoring  # noqa: E402
from radimpress_lib.llm import generation, retrieval, selection  # noqa: E402
from radimpress_lib.notebook import evaluate  # noqa: E402

METRICS = ("rougeL_published", "bleu_published", "label_f1_micro", "missed_abnormality_rate")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="smollm2-135m")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "published_levers.json"))
    args = ap.parse_args(argv)
    cfg = config.load_params(args.params)
    folder = artifacts.sft_dir(cfg, protocols.PUBLISHED) / "adapter"
    if not folder.is_dir():
        print(f"no protocol-A adapter at {folder}: run notebook 02 first (make reproduce NOTEBOOKS=02)")
        return 2
    training, _ = protocols.published_training_data(cfg)
    train, val = list(training["train"]), list(training["validate"])
    seen = {protocols.normalize_findings(r["findings"]) for r in train}
    leaky = [protocols.normalize_findings(r["findings"]) in seen for r in val]
    t0 = time.perf_counter()
    model, tokenizer, _ = evaluate._load_published_sft(cfg, folder)
    decoded = generation.generate_impressions(
        model, tokenizer, retrieval.with_prompt_context(cfg, val, train, protocol=protocols.PUBLISHED), cfg.gen,
        model_name=cfg.model.name, log=lambda s: None)
    decode_s = time.perf_counter() - t0
    drafts = [p["prediction"] for p in decoded.predictions]
    systems: dict[str, list[str]] = {"retrieval": scoring.baseline_predictions(train, val)["retrieval"],
                                     "sft_published": drafts}
    sources: dict[str, dict[str, int]] = {}
    for name, twins in (("mbr", False), ("mbr_twins", True)):
        chosen = selection.NeighbourMBR.from_config(
            cfg.eval.model_copy(update={"mbr_twins": twins}), train, same_findings=True)(val, drafts)
        systems[name] = [c.text for c in chosen]
        sources[name] = dict(Counter(c.source.split(":")[0] for c in chosen))
    systems["twin_draft"] = [d if t else m for d, t, m in zip(drafts, leaky, systems["mbr"])]
    scores, per = published.evaluate(systems, val, leaky, {k: published.TRAINED_AS_GIVEN for k in systems},
                                     n_boot=args.n_boot, seed=cfg.run.seed)
    rows: dict[str, dict[str, Any]] = {}
    for name, s in scores.items():
        rows[name] = {m: s.get(m) for m in METRICS} | {f"{m}_ci": s.get(f"{m}_ci") for m in METRICS[:2]}
        rows[name] |= {f"{m}_{part}": s.get(f"{m}_{part}") for m in METRICS[:2] for part in ("leaky", "clean")}
    table = scoring.comparisons({k: per[k] for k in systems}, "retrieval", n_boot=args.n_boot, seed=cfg.run.seed,
                                metrics=METRICS[:2])
    for row in table.to_dict("records"):  # comparisons() reports retrieval - other; flip to other - retrieval
        rows[row["vs"]][f"{row['metric']}_vs_retrieval"] = {
            "delta": -row["delta"], "ci": [-row["ci_high"], -row["ci_low"]], "p_value": row["p_value"]}
    doc = {"what": "protocol A decode levers on validate (train as given; published metric)",
           "machine": machine(), "params": args.params, "n_validate": len(val), "n_leaky": sum(leaky),
           "decode_s": round(decode_s, 1), "sources": sources, "chosen": "mbr_twins" if cfg.eval.mbr_twins else "mbr",
           "systems": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(paths.portable_text(json.dumps(doc, indent=1, default=float)), encoding="utf-8")
    for name, r in rows.items():
        d = r.get("rougeL_published_vs_retrieval")
        print(f"{name:14s} ROUGE-L {r['rougeL_published']:.1f} (leaky {r['rougeL_published_leaky']:.1f}, clean "
              f"{r['rougeL_published_clean']:.1f}) BLEU {r['bleu_published']:.1f}"
              + (f"  vs retrieval {d['delta']:+.2f} (p = {d['p_value']:.3f})" if d else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
