"""How much of a rendered notebook's height goes to parameter cells, and how far down the first result is.

Opens each HTML page in headless Chromium (Debian ``chromium`` + ``chromium-driver``, ``selenium``)
at a fixed window width and measures, in CSS pixels: the page height, the height of the cells
tagged ``parameters`` / ``injected-parameters`` (nbconvert gives them the class
``celltag_<tag>``), and the top of the first cell output. Writes JSON (default
``bench/results/page_layout.json``)::

    .venv/bin/python tools/page_layout.py outputs/smollm2-135m/05_evaluate.html --label after
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
const cells = [...document.querySelectorAll('.jp-Cell, .cell')];
const params = cells.filter(c => c.classList.contains('celltag_parameters')
                              || c.classList.contains('celltag_injected-parameters'));
const out = document.querySelector('.jp-OutputArea-output, .output_area');
const height = Math.max(document.body.scrollHeight, document.documentElement.scrollHeight);
return {height: height,
        parameter_cells: params.length,
        parameter_height: params.reduce((s, c) => s + c.getBoundingClientRect().height, 0),
        first_output_top: out ? out.getBoundingClientRect().top + window.scrollY : null};
"""


def measure(pages: list[Path], width: int = 1280) -> list[dict]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--window-size={width},900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    rows = []
    try:
        for page in pages:
            driver.get(page.resolve().as_uri())
            m = driver.execute_script(MEASURE)
            rows.append({"page": str(page.resolve().relative_to(ROOT)) if page.resolve().is_relative_to(ROOT)
                         else page.name, **m,
                         "parameter_share": round(m["parameter_height"] / m["height"], 4) if m["height"] else None,
                         "first_output_share": round(m["first_output_top"] / m["height"], 4)
                         if m["first_output_top"] is not None and m["height"] else None})
    finally:
        driver.quit()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="+", type=Path)
    parser.add_argument("--label", default="pages", help="key of these measurements in the output JSON")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "page_layout.json")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        print("page_layout: needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
              file=sys.stderr)
        return 2
    rows = measure(args.pages, args.width)
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.label] = {"window_width": args.width, "pages": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2) + "\n")
    for r in rows:
        print(f"{r['page']}: {r['parameter_share']:.1%} of {r['height']:,.0f} px on parameters; "
              f"first output at {r['first_output_share'] or 0:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
