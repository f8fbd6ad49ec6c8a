"""Wall time of each notebook in a reproduction (``make reproduce MODEL=...``).

Runs the papermill chain for ``params/<model>.yaml`` (all numbered notebooks, or
``--notebooks``) with :func:`radimpress_lib.notebook.runner.run` and writes
``bench/results/reproduce_walltime.json``: seconds per notebook, the total, the target
(30 minutes for the coarse stage 01 -> 02 -> 05; 45 minutes for 01 -> 05 with the fine
stage 03 and 04), the machine description, a 1-second
fp32 matmul calibration before and after (a shared machine shows up as lower GFLOP/s)
and the decoding / training throughput that the notebooks themselves recorded
(``sft.json``, ``manifest.json``).

``--collect`` skips running and only collects the timings of the last reproduction from
``outputs/<model>/timings.json`` (when the chain was run with ``make reproduce``).

Usage::

    .venv/bin/python bench/reproduce_walltime.py [--model smollm2-135m] [--notebooks 01 02 05] [--collect]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sft_throughput import calibrate, machine  # noqa: E402

from radimpress_lib.core import config
from radimpress_lib.notebook import runner  # noqa: E402

COARSE_TARGET_S = 30 * 60
#: Coarse + fine stage (01 -> 05 with 03 and 04), issue 6.
FINE_TARGET_S = 45 * 60


def _git_sha() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def recorded_throughput(out_dir: Path) -> dict[str, Any]:
    """Training and decoding figures the notebooks wrote themselves."""
    out: dict[str, Any] = {}
    sft = _read_json(out_dir / "sft.json")
    if sft:
        out["sft"] = {k: sft.get(k) for k in ("global_step", "train_tokens", "wall_time_s", "tokens_per_s")}
    manifest = _read_json(out_dir / "manifest.json") or {}
    decoding = (manifest.get("stages", {}).get("evaluate", {}).get("extra", {}) or {}).get("decoding")
    if decoding:
        out["decoding"] = {name: {k: d.get(k) for k in ("n_reports", "wall_time_s", "reports_per_s", "new_tokens")}
                           for name, d in decoding.items()}
    return out


def chain_totals_with_earlier(timings: dict[str, float], earlier: dict[str, float]) -> dict[str, Any]:
    """Coarse (01, 02, 05) and fine (01-05) chain totals when some of their notebooks were not re-run.

    The notebooks run now count with their new times; a chain notebook not run now counts with
    its time from the earlier run (e.g. 02 when only 01, 03-05 were re-run with the same SFT
    adapter), and is named in ``*_from_earlier_runs`` so the mix is visible.
    """
    out: dict[str, Any] = {}
    for name, prefixes in (("coarse", ("01", "02", "05")), ("fine", ("01", "02", "03", "04", "05"))):
        now = {k: v for k, v in timings.items() if k[:2] in prefixes}
        before = {k: v for k, v in earlier.items() if k[:2] in prefixes and k[:2] not in {n[:2] for n in now}}
        if before:
            out[f"{name}_seconds_with_earlier_runs"] = round(sum(now.values()) + sum(before.values()), 1)
            out[f"{name}_from_earlier_runs"] = sorted(before)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--notebooks", nargs="*", help="numbers or stems (default: all)")
    parser.add_argument("--collect", action="store_true", help="read outputs/<model>/timings.json instead of running")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "reproduce_walltime.json"))
    args = parser.parse_args(argv)

    params = config.load_params(config.params_path(args.model))
    out_dir = params.output_dir
    before = None if args.collect else calibrate()  # a calibration now says nothing about a past run
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    earlier: dict[str, float] = {}
    if args.collect:
        timings = _read_json(out_dir / "timings.json")
        if not timings:
            raise SystemExit(f"{out_dir / 'timings.json'}: no timings; run `make reproduce MODEL={args.model}` first")
        if args.notebooks:
            recorded = timings
            timings = {k: v for k, v in recorded.items() if k in args.notebooks or k[:2] in args.notebooks}
            earlier = {k: v for k, v in recorded.items() if k not in timings}
    else:
        recorded = runner.run(args.model, notebooks=args.notebooks)
        # runner.run returns every timing in timings.json; keep only the notebooks run now
        ran = {nb.stem for nb in runner.select_notebooks(runner.numbered_notebooks(), args.notebooks)}
        timings = {k: v for k, v in recorded.items() if k in ran}
        earlier = {k: v for k, v in recorded.items() if k not in ran}
    after = None if args.collect else calibrate()
    total = round(sum(timings.values()), 1)
    result = {
        "benchmark": "reproduce_walltime",
        "started": started,
        "machine": machine(),
        "git_sha": _git_sha(),
        "model": args.model,
        "mode": "collected from timings.json" if args.collect else "ran runner.run",
        "calib_gflops_before": before,
        "calib_gflops_after": after,
        "seconds_per_notebook": timings,
        "total_seconds": total,
        "total_minutes": round(total / 60, 2),
        "coarse_target_seconds": COARSE_TARGET_S,
        "coarse_seconds": round(sum(v for k, v in timings.items() if k[:2] in ("01", "02", "05")), 1),
        "fine_target_seconds": FINE_TARGET_S,
        "fine_seconds": round(sum(v for k, v in timings.items() if k[:2] in ("01", "02", "03", "04", "05")), 1),
        "recorded_by_notebooks": recorded_throughput(out_dir),
    }
    if earlier:
        result["earlier_runs_not_counted"] = earlier
        result |= chain_totals_with_earlier(timings, earlier)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("seconds_per_notebook", "total_minutes", "coarse_seconds", "fine_seconds")},
                     indent=2))
    print("wrote", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
