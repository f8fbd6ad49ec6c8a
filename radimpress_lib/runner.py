"""Run the numbered notebooks through papermill and render them to HTML.

``make reproduce MODEL=<name>`` calls ``python -m radimpress_lib.runner --model <name>``:
every ``notebooks/NN_*.ipynb`` runs in order with ``params/<name>.yaml`` into
``outputs/<name>/NN_*.ipynb`` and ``.html``; wall times go to
``outputs/<name>/timings.json``. A failing notebook stops the chain; its
partially executed copy is still rendered, so the error is readable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

from radimpress_lib import config
from radimpress_lib.paths import NOTEBOOKS_DIR, PROJECT_ROOT

log = logging.getLogger("radimpress.runner")

KERNEL_NAME = "radimpress"


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


def render_html(notebook: Path) -> Path:
    """Strip widget state from an executed notebook, then render it to HTML beside it."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    had_state = "widgets" in nb.metadata
    if strip_widget_state(nb) or had_state:
        nbformat.write(nb, notebook)
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = notebook.with_suffix(".html")
    out.write_text(body, encoding="utf-8")
    return out


def run(model: str, *, notebooks: list[str] | None = None, kernel: str = KERNEL_NAME,
        output_dir: Path | None = None, extra_params: dict | None = None) -> dict[str, float]:
    """Execute the chain for params/<model>.yaml; return {notebook: seconds}."""
    import papermill as pm

    params_file = config.params_path(model)
    params = config.load_params(params_file)  # validate before spending minutes
    values = params.flat() | (extra_params or {})
    config.from_mapping(values, source=str(params_file))
    out_dir = output_dir or params.output_dir
    if output_dir is not None:
        values["run_output_dir"] = str(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    timings_file = out_dir / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    for nb in select_notebooks(numbered_notebooks(), notebooks):
        target = out_dir / nb.name
        log.info("running %s with %s -> %s", nb.name, params_file.name, target)
        start = time.perf_counter()
        try:
            pm.execute_notebook(
                str(nb), str(target), parameters=values, kernel_name=kernel,
                cwd=str(PROJECT_ROOT), progress_bar=False, log_output=True,
            )
        finally:
            if target.exists():
                render_html(target)
        timings[nb.stem] = round(time.perf_counter() - start, 1)
        log.info("%s done in %.1f s", nb.name, timings[nb.stem])
        timings_file.write_text(json.dumps(timings, indent=2) + "\n")
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="params/<model>.yaml")
    parser.add_argument("--notebooks", nargs="*", help="numbers or stems to run (default: all, in order)")
    parser.add_argument("--kernel", default=KERNEL_NAME)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    timings = run(args.model, notebooks=args.notebooks, kernel=args.kernel)
    print(yaml.safe_dump({"wall_seconds": timings}, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
