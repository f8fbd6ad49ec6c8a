"""Two processes append 1,000 review judgements each to one feedback store at the same moment.

Measures what two Jupyter kernels writing at once see: per-writer and total judgements/s,
wall time, busy retries, and checks that every judgement is stored exactly once.
Writes bench/results/feedback_concurrency.json.

    .venv/bin/python bench/feedback_concurrency.py [--writes 1000] [--writers 2] [--synchronous FULL]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radimpress_lib.data import feedback as F
from radimpress_lib.data.feedback import Candidate, FeedbackStore, ReviewItem


def run(writes: int, writers: int, synchronous: str, folder: Path) -> dict:
    path = folder / "bench.sqlite"
    item = ReviewItem(item_id="feedback-bench-1", report_id="bench-1", pool="feedback", split="train",
                      record={"findings": "Synthetic findings."},
                      candidates=(Candidate("A", "One."), Candidate("B", "Two."), Candidate("C", "Three.")))
    reviewers = [f"bench-reviewer-{i}" for i in range(writers)]
    with FeedbackStore(path, synchronous=synchronous) as store:
        store.add_item(item, {"A": ["x"], "B": ["y"], "C": ["z"]})
        for rid in reviewers:
            store.register_reviewer(rid)
    ctx = mp.get_context("spawn")
    start_at = time.time() + 2.0
    with ctx.Pool(writers) as pool:
        results = pool.starmap(F.concurrent_writer,
                               [(str(path), rid, item.item_id, writes, start_at, synchronous) for rid in reviewers])
    first, last = min(r["started"] for r in results), max(r["finished"] for r in results)
    conn = sqlite3.connect(path)
    stored = conn.execute("SELECT COUNT(*), COUNT(DISTINCT judgement_uid) FROM judgements").fetchone()
    ratings = conn.execute("SELECT COUNT(*) FROM ratings").fetchone()[0]
    conn.close()
    expected = writes * writers
    return {
        "synchronous": synchronous,
        "writers": writers,
        "writes_per_writer": writes,
        "expected_judgements": expected,
        "stored_judgements": stored[0],
        "distinct_uids": stored[1],
        "stored_ratings": ratings,
        "lost_judgements": expected - stored[0],
        "overlap_s": round(min(r["finished"] for r in results) - max(r["started"] for r in results), 3),
        "wall_s": round(last - first, 3),
        "total_judgements_per_s": round(expected / (last - first), 1),
        "per_writer": [{"reviewer": r["reviewer_id"], "wall_s": round(r["wall_s"], 3),
                        "judgements_per_s": round(r["writes_per_s"], 1), "busy_retries": r["retries"]}
                       for r in results],
        "busy_retries_total": sum(r["retries"] for r in results),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writes", type=int, default=1000)
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--synchronous", nargs="*", default=["FULL", "NORMAL"])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "feedback_concurrency.json"))
    args = parser.parse_args()
    runs = []
    for sync in args.synchronous:
        with tempfile.TemporaryDirectory(dir=ROOT / "bench") as tmp:  # same disk as the outputs folder
            runs.append(run(args.writes, args.writers, sync, Path(tmp)))
            print(json.dumps(runs[-1], indent=2))
    payload = {
        "benchmark": "feedback_concurrency",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "logical_cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version},
        "note": ("each writer is a separate process (spawn) with its own FeedbackStore connection; one judgement = "
                 "one BEGIN IMMEDIATE transaction (judgement row + 3 rating rows); WAL journal; the store's default is "
                 "synchronous=FULL. Machine shared with other jobs: throughput is indicative."),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print("wrote", args.out)
    return 0 if all(r["lost_judgements"] == 0 and r["distinct_uids"] == r["expected_judgements"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
