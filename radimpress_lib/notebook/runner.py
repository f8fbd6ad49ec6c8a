"""Run the numbered notebooks through papermill and render them to HTML that opens on results.

``make reproduce MODEL=<name>`` calls ``python -m radimpress_lib.notebook.runner --model <name>``:
every ``notebooks/NN_*.ipynb`` runs in order with ``params/<name>.yaml`` into
``outputs/<name>/NN_*.ipynb`` and ``.html``. A failing notebook stops the chain; its partially
executed copy is still rendered, so the error is readable.

What the runner guarantees about an output folder:

* **one commit**: ``run_log.json`` records, per notebook, the commit (and whether the tree was
  dirty) it was executed at. Running a subset of notebooks into a folder whose other notebooks
  came from another commit is refused (``--allow-mixed-commits`` runs anyway, and then every
  rendered page carries a banner naming the commits);
* **results first**: the HTML hides the parameter cells (they stay in the ``.ipynb`` and the
  manifest) and opens on a summary generated from the notebook's manifest entry: its key
  numbers, any failed guard, the params file and overrides, and the commit;
* **portable**: absolute machine paths in outputs are made relative (the checkout) or
  ``$RADIMPRESS_DATA`` (the data folder); widget state is stripped.

Wall times go to ``timings.json`` (``bench/reproduce_walltime.py`` reads it). A training that
resumed from a checkpoint left by an earlier run times only its remaining steps: ``run_log.json``
lists such trainings per notebook under ``resumed`` (:func:`resumed_trainings`) and the runner says
so, so a timed reference run is known to have started from scratch.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from radimpress_lib.core import config
from radimpress_lib.core.jsonio import write_json
from radimpress_lib.core.manifest import MANIFEST_NAME, git_info
from radimpress_lib.core.paths import NOTEBOOKS_DIR, PROJECT_ROOT, portable_text

log = logging.getLogger("radimpress.runner")

KERNEL_NAME = "radimpress"
RUN_LOG = "run_log.json"
#: Cells the HTML leaves out (papermill tags its injected cell ``injected-parameters``).
HIDDEN_TAGS = ("parameters", "injected-parameters")

#: The parameters cell of every numbered notebook: it only chooses the run (papermill overrides both).
PARAMETERS_CELL = (
    'params = "smollm2-135m"  # which params/<name>.yaml to run, e.g. "ci-tiny"\n'
    'overrides = {}  # what differs for this run, by stage, e.g. {"sft": {"max_steps": 2}}; recorded in the manifest'
)


class MixedCommitsError(RuntimeError):
    """An output folder would hold notebooks executed at different commits."""


def numbered_notebooks(folder: Path = NOTEBOOKS_DIR) -> list[Path]:
    """``NN_name.ipynb`` notebooks in execution order."""
    return sorted(p for p in folder.glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(notebooks: list[Path], only: list[str] | None) -> list[Path]:
    """Keep notebooks whose number or stem is in ``only`` (all when empty)."""
    if not only:
        return notebooks
    chosen = [nb for nb in notebooks if nb.stem in only or nb.stem[:2] in only]
    unknown = set(only) - {nb.stem for nb in chosen} - {nb.stem[:2] for nb in chosen}
    if unknown:
        raise SystemExit(f"unknown notebooks {sorted(unknown)}; have {[nb.stem for nb in notebooks]}")
    return chosen


WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"


def strip_widget_state(nb) -> int:
    """Drop ipywidgets state from an executed notebook (in place); returns the outputs changed.

    The saved widget state (``metadata.widgets``) holds every widget model of the session
    (megabytes for the review notebook) and cannot be replayed without the kernel; widget
    outputs keep their ``text/plain`` fallback, so the rendered notebook stays readable.
    """
    nb.metadata.pop("widgets", None)
    changed = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data and WIDGET_VIEW_MIME in data:
                del data[WIDGET_VIEW_MIME]
                changed += 1
    return changed


def _portable(value: Any) -> Any:
    if isinstance(value, str):
        return portable_text(value)
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _portable(v) for k, v in value.items()}
    return value


def make_portable(nb) -> None:
    """Absolute machine paths in an executed notebook's outputs and papermill metadata made portable (in place)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out:
                out["text"] = _portable(out["text"])
            for mime, value in (out.get("data") or {}).items():
                if mime.startswith("text/") or mime.endswith("json"):
                    out["data"][mime] = _portable(value)
            if "traceback" in out:
                out["traceback"] = _portable(out["traceback"])
    if "papermill" in nb.metadata:
        nb.metadata["papermill"] = _portable(dict(nb.metadata["papermill"]))


def _stage_entry(out_dir: Path, since_utc: str | None) -> tuple[str | None, dict[str, Any]]:
    """The manifest stage a notebook wrote (its last stage, if written after ``since_utc``)."""
    path = out_dir / MANIFEST_NAME
    if not path.exists():
        return None, {}
    manifest = json.loads(path.read_text(encoding="utf-8"))
    stage = manifest.get("last_stage")
    entry = (manifest.get("stages") or {}).get(stage) or {}
    if since_utc and (entry.get("finished_utc") or "") < since_utc:
        return None, {}
    return stage, entry


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{_value(value[0])}, {_value(value[1])}]"
    return str(value)


def summary_markdown(notebook: str, record: Mapping[str, Any], entry: Mapping[str, Any]) -> str:
    """The summary shown at the top of a rendered notebook."""
    extra = entry.get("extra") or {}
    commit = record.get("commit") or "unknown"
    head = (f"**{notebook}** · params `{extra.get('params_file', '?')}`"
            + (f" with overrides `{json.dumps(extra['overrides'])}`" if extra.get("overrides") else "")
            + f" · commit `{commit[:10]}`{' + uncommitted changes' if record.get('dirty') else ''}"
            + (f" · {record['finished_utc'][:16].replace('T', ' ')} UTC" if record.get("finished_utc") else "")
            + (f" · {record['seconds']:,.0f} s" if record.get("seconds") is not None else ""))
    lines = [head, ""]
    if record.get("status") == "failed":
        lines.append("**This notebook failed**: the error is shown where it stopped; results below are partial.")
    for item in extra.get("guards_failed") or []:
        lines.append(f"- **Guard failed**: {item}")
    for key, value in (extra.get("summary") or {}).items():
        lines.append(f"- {key}: {_value(value)}")
    if len(lines) == 2 and record.get("status") != "failed":
        lines.append("- (no summary recorded)")
    return "\n".join(lines)


def commits_banner(run_log: Mapping[str, Mapping[str, Any]]) -> str | None:
    """A warning when the folder's notebooks were executed at different commits (or from a dirty tree)."""
    by_commit: dict[str, list[str]] = {}
    for stem, record in sorted(run_log.items()):
        key = (record.get("commit") or "unknown")[:10] + (" (dirty)" if record.get("dirty") else "")
        by_commit.setdefault(key, []).append(stem[:2])
    if len(by_commit) <= 1:
        return None
    parts = "; ".join(f"{', '.join(stems)} at `{commit}`" for commit, stems in by_commit.items())
    return f"**Mixed run**: the notebooks of this folder were executed at different commits ({parts})."


def render_html(notebook: Path, *, summary: str | None = None, banner: str | None = None) -> Path:
    """Clean an executed notebook (widget state, machine paths) and render it to HTML beside it.

    The HTML leaves out the parameter cells and opens on ``banner`` and ``summary`` (Markdown);
    the ``.ipynb`` keeps every cell.
    """
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(notebook, as_version=4)
    strip_widget_state(nb)
    make_portable(nb)
    nbformat.write(nb, notebook)
    view = copy.deepcopy(nb)
    top = [text for text in (banner, summary) if text]
    if top:
        view.cells.insert(1 if view.cells and view.cells[0].cell_type == "markdown" else 0,
                          nbformat.v4.new_markdown_cell("\n\n".join(top)))
    exporter = HTMLExporter()
    exporter.register_preprocessor(TagRemovePreprocessor(remove_cell_tags=set(HIDDEN_TAGS), enabled=True), enabled=True)
    body, _ = exporter.from_notebook_node(view)
    out = notebook.with_suffix(".html")
    out.write_text(portable_text(body), encoding="utf-8")
    return out


def _resumed_from(doc: Any, where: str = "") -> dict[str, str]:
    """Every truthy ``resumed_from`` in a JSON document: {key path: checkpoint}."""
    found: dict[str, str] = {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key == "resumed_from" and value:
                found[where or "."] = str(value)
            else:
                found |= _resumed_from(value, f"{where}.{key}" if where else str(key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found |= _resumed_from(value, f"{where}[{i}]")
    return found


def resumed_trainings(out_dir: Path, since: float, max_bytes: int = 5_000_000) -> dict[str, str]:
    """Trainings that resumed from an earlier run's checkpoint, in the JSON files written since ``since``
    (epoch seconds): {"<file relative to out_dir>:<key path>": checkpoint}.

    A resumed training times only its remaining steps, so a notebook that resumed one reports a wall
    time shorter than a run from scratch: the runner records these in ``run_log.json`` and says so.
    """
    found: dict[str, str] = {}
    for path in sorted(out_dir.rglob("*.json")):
        try:
            stat = path.stat()
            if stat.st_mtime < since or stat.st_size > max_bytes:
                continue
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a file being replaced or not JSON: nothing to read
        rel = path.relative_to(out_dir).as_posix()
        found |= {f"{rel}:{key}": portable_text(ckpt) for key, ckpt in _resumed_from(doc).items()}
    return found


def _read_run_log(out_dir: Path) -> dict[str, dict[str, Any]]:
    path = out_dir / RUN_LOG
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def check_one_commit(run_log: Mapping[str, Mapping[str, Any]], to_run: list[str], head: Mapping[str, Any]) -> None:
    """Refuse to add notebooks executed at ``head`` to a folder whose other notebooks came from another commit."""
    kept = {stem: r for stem, r in run_log.items() if stem not in to_run}
    other = sorted(stem for stem, r in kept.items() if r.get("commit") != head.get("sha"))
    if other:
        raise MixedCommitsError(
            f"{', '.join(other)} in this output folder were executed at another commit than "
            f"{(head.get('sha') or 'unknown')[:10]}; re-run every notebook (make reproduce without NOTEBOOKS), "
            "or pass --allow-mixed-commits (every page then says the run is mixed)")


def _entry_of(out_dir: Path, stage: str | None) -> dict[str, Any]:
    path = out_dir / MANIFEST_NAME
    if not stage or not path.exists():
        return {}
    return (json.loads(path.read_text(encoding="utf-8")).get("stages") or {}).get(stage) or {}


def _render(out_dir: Path, stem: str, record: Mapping[str, Any], banner: str | None) -> None:
    target = out_dir / f"{stem}.ipynb"
    if target.exists():
        render_html(target, summary=summary_markdown(stem, record, _entry_of(out_dir, record.get("stage"))),
                    banner=banner)


def rerender(out_dir: Path, run_log: Mapping[str, Mapping[str, Any]]) -> None:
    """Render every executed notebook of the folder again (summaries, and the banner when commits differ)."""
    banner = commits_banner(run_log)
    for stem, record in run_log.items():
        _render(out_dir, stem, record, banner)


def run(model: str, *, notebooks: list[str] | None = None, kernel: str = KERNEL_NAME,
        output_dir: Path | None = None, overrides: dict | None = None,
        allow_mixed_commits: bool = False) -> dict[str, float]:
    """Execute the chain for params/<model>.yaml (plus ``overrides``); return {notebook: seconds}.

    Each notebook receives two papermill parameters: ``params`` (the params name) and
    ``overrides`` (nested ``{stage: {key: value}}``; ``output_dir`` sets ``run.output_dir``).
    """
    import papermill as pm

    overrides = copy.deepcopy(dict(overrides or {}))
    if output_dir is not None:
        overrides.setdefault("run", {})["output_dir"] = str(output_dir)
    params = config.load_params(model, overrides)  # validate before spending minutes
    params_file = config.params_path(model)
    values = {"params": model, "overrides": overrides}
    out_dir = params.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    chosen = select_notebooks(numbered_notebooks(), notebooks)
    head = git_info(PROJECT_ROOT)
    run_log = _read_run_log(out_dir)
    if not allow_mixed_commits:
        check_one_commit(run_log, [nb.stem for nb in chosen], head)
    timings_file = out_dir / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    try:
        for nb in chosen:
            target = out_dir / nb.name
            log.info("running %s with %s -> %s", nb.name, params_file.name, portable_text(str(target)))
            now = dt.datetime.now(dt.timezone.utc)
            started, started_epoch = now.isoformat(), now.timestamp()
            start = time.perf_counter()
            record = {"commit": head.get("sha"), "dirty": head.get("dirty"), "status": "failed"}
            try:
                pm.execute_notebook(
                    str(nb), str(target), parameters=values, kernel_name=kernel,
                    cwd=str(PROJECT_ROOT), progress_bar=False, log_output=True,
                )
                record["status"] = "ok"
            finally:
                record["seconds"] = round(time.perf_counter() - start, 1)
                record["finished_utc"] = dt.datetime.now(dt.timezone.utc).isoformat()
                record["stage"] = _stage_entry(out_dir, started)[0]
                resumed = resumed_trainings(out_dir, started_epoch)
                if resumed:
                    record["resumed"] = resumed
                    log.warning("%s resumed trainings from earlier checkpoints (its wall time covers only the "
                                "remaining steps; delete them for a timed reference run): %s", nb.name,
                                ", ".join(f"{k} <- {v}" for k, v in resumed.items()))
                run_log[nb.stem] = record
                write_json(out_dir / RUN_LOG, dict(sorted(run_log.items())))
                _render(out_dir, nb.stem, record, commits_banner(run_log))
            timings[nb.stem] = record["seconds"]
            log.info("%s done in %.1f s", nb.name, timings[nb.stem])
            write_json(timings_file, timings)
    finally:
        rerender(out_dir, run_log)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="params/<model>.yaml")
    parser.add_argument("--notebooks", nargs="*", help="numbers or stems to run (default: all, in order)")
    parser.add_argument("--kernel", default=KERNEL_NAME)
    parser.add_argument("--allow-mixed-commits", action="store_true",
                        help="run a subset into a folder whose other notebooks came from another commit "
                             "(the pages then carry a 'mixed run' banner)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    try:
        timings = run(args.model, notebooks=args.notebooks, kernel=args.kernel,
                      allow_mixed_commits=args.allow_mixed_commits)
    except (MixedCommitsError, config.ParamsError) as exc:
        print(f"radimpress runner: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump({"wall_seconds": timings}, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
