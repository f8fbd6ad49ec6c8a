"""Notebook 06 in a real browser: JupyterLab in headless Chromium, driven by Selenium.

A physician's path: open the notebook (interactive mode), Run All, type a reviewer id, press
Enter, click a rating for each candidate, Submit. Checks that the widget still works after Run
All (the store is not closed by the last cell), that a chosen rating is plainly marked (computed
colours, and the rating in words), that the judgement lands in the session's own store and that
nothing is written over the run's reference results.

Skipped (with the reason) where Chromium, chromedriver or selenium are missing; on Debian:
``apt-get install chromium chromium-driver``. ``RADIMPRESS_SCREENSHOTS=<folder>`` keeps screenshots.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from radimpress_lib.core import config
from radimpress_lib.core.paths import NOTEBOOKS_DIR
from radimpress_lib.data.feedback import FeedbackStore

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1800")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two CSS ``rgb(...)`` / ``rgba(...)`` colours."""

    def luminance(color: str) -> float:
        r, g, b = (int(float(v)) / 255 for v in color[color.index("(") + 1:color.index(")")].split(",")[:3])
        return sum(w * (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4)
                   for w, c in zip((0.2126, 0.7152, 0.0722), (r, g, b)))

    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.fixture
def review_notebook(tmp_path):
    """Notebook 06 prepared (papermill, not executed) for an interactive session on synthetic data."""
    import papermill as pm

    from radimpress_lib import data
    from radimpress_lib.data import synthetic

    run_dir = tmp_path / "run"
    reports = synthetic.write_synthetic_reports(tmp_path / "data", n=200)
    overrides = {"run": {"output_dir": str(run_dir)}, "data": {"source": "user", "user_path": str(reports)},
                 "review": {"mode": "interactive", "session": "browser", "eval_items": 2, "feedback_items": 0,
                            "systems": ["sft"]}}
    dsd, _ = data.load_data(config.load_params("ci-tiny", overrides))
    (run_dir / "predictions").mkdir(parents=True)
    (run_dir / "predictions" / "sft.jsonl").write_text("".join(
        json.dumps({"report_id": r["report_id"], "prediction": "Possible small left pleural effusion.",
                    "reference": r["impression"], "model": "tiny-llama", "params_hash": "x"}) + "\n"
        for r in dsd["test"]), encoding="utf-8")
    lab = tmp_path / "lab"
    lab.mkdir()
    pm.execute_notebook(str(NOTEBOOKS_DIR / "06_review.ipynb"), str(lab / "06_review.ipynb"), prepare_only=True,
                        parameters={"params": "ci-tiny", "overrides": overrides}, kernel_name="radimpress")
    return lab, run_dir


@pytest.fixture
def jupyterlab(review_notebook, tmp_path):
    """A JupyterLab server on the prepared notebook's folder; yields (url of the notebook, run folder)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="needs selenium (pip install -e '.[dev]')")
    lab, run_dir = review_notebook
    port, token = _free_port(), "radimpress-test"
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    log = (tmp_path / "jupyterlab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={lab}", "--LabApp.news_url=None",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        cwd=lab, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and server.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail(f"JupyterLab did not start: {(tmp_path / 'jupyterlab.log').read_text()[-2000:]}")
        yield f"http://127.0.0.1:{port}/lab/tree/06_review.ipynb?token={token}", run_dir
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, name: str) -> None:
    folder = os.environ.get("RADIMPRESS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_physician_reviews_after_run_all_in_jupyterlab(jupyterlab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, run_dir = jupyterlab
    wait = WebDriverWait(browser, 240)
    browser.get(url)
    wait.until(lambda d: "Idle" in d.find_element(By.CSS_SELECTOR, "#jp-main-statusbar").text)
    # Run > Run All Cells, as a physician would
    menu = next(e for e in browser.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == "Run")
    menu.click()
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "li[data-command='runmenu:run-all']"))).click()
    reviewer = wait.until(ec.visibility_of_element_located(
        (By.CSS_SELECTOR, "input[placeholder='required, e.g. your initials']")))
    # Run All finishes (the last cell used to close the store here)
    wait.until(lambda d: any("wrote" in o.text and "review.json" in o.text
                             for o in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")))
    _shot(browser, "1_after_run_all")
    reviewer.send_keys("dr-browser", Keys.ENTER)
    wait.until(lambda d: "Report 1 of 2" in d.find_element(By.CSS_SELECTOR, ".jp-Notebook").text)
    groups = browser.find_elements(By.CSS_SELECTOR, ".widget-toggle-buttons.radimpress-choice")
    ratings = [g for g in groups if "Utility" in g.text]
    assert len(ratings) == 2  # one per candidate (the reference and the SFT draft)
    for group in ratings:
        next(b for b in group.find_elements(By.TAG_NAME, "button") if b.text.strip() == "4").click()
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, ".jp-Notebook").text.count("Rated 4 usable as is")
               == len(ratings))
    _shot(browser, "2_rated")
    buttons = ratings[0].find_elements(By.TAG_NAME, "button")
    chosen = next(b for b in buttons if b.text.strip() == "4")
    other = next(b for b in buttons if b.text.strip() == "3")
    style = {name: {p: b.value_of_css_property(p) for p in ("background-color", "color", "font-weight")}
             for name, b in (("chosen", chosen), ("other", other))}
    assert _contrast(style["chosen"]["background-color"], style["other"]["background-color"]) >= 3, style
    assert _contrast(style["chosen"]["background-color"], style["chosen"]["color"]) >= 4.5, style
    assert int(style["chosen"]["font-weight"]) >= 700, style
    next(b for b in browser.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == "Submit").click()
    wait.until(lambda d: "Saved judgement" in d.find_element(By.CSS_SELECTOR, ".jp-Notebook").text)
    _shot(browser, "3_saved")
    session = run_dir / "review_sessions" / "browser"
    with FeedbackStore(session / "review" / "feedback.sqlite") as store:
        (judged,) = store.current_judgements()
    assert judged["reviewer_id"] == "dr-browser" and set(judged["ratings"].values()) == {4}
    assert (session / "review.json").is_file() and not (run_dir / "review.json").exists()
