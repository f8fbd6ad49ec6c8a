"""Review widget (radimpress_lib.apps.review): blinding, escaping, simulated clicks, resume, replay, analysis, DPO export."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pandas as pd
import pytest

from radimpress_lib.apps import review
from radimpress_lib.core import config
from radimpress_lib.core.paths import NOTEBOOKS_DIR
from radimpress_lib.data import feedback as F
from radimpress_lib.data import preferences
from radimpress_lib.data.feedback import FeedbackError, FeedbackStore
from radimpress_lib.train import reward

XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'
SECRET = ("sys_secret_alpha", "sys_secret_beta")


def _records(n=3, xss=False):
    recs = []
    for i in range(n):
        rec = {"report_id": f"r{i}", "modality": "XR", "body_part": "CHEST", "indication": "Cough.",
               "comparison": "None.", "findings": f"Small left pleural effusion. Heart size normal. ({i})",
               "impression": "Small left pleural effusion.", "split": "train"}
        if xss:
            rec |= {k: f"{k} {XSS}" for k in ("modality", "body_part", "indication", "comparison", "findings")}
        recs.append(rec)
    return recs


def _systems(records, xss=False):
    alpha = {r["report_id"]: "No acute disease." + (f" {XSS}" if xss else "") for r in records}
    beta = {r["report_id"]: "Right pleural effusion, large." for r in records}
    return {SECRET[0]: alpha, SECRET[1]: beta}


@pytest.fixture
def session(tmp_path):
    store = FeedbackStore(tmp_path / "review.sqlite")
    records = _records()
    items, skipped = review.build_items(records, _systems(records), pool="feedback", seed=7)
    assert skipped == {}
    ids = review.add_session(store, items, seed=7)
    yield store, ids, records
    store.close()


def _all_text(app):
    """Every string the widget tree renders: HTML values, descriptions, option labels, tooltips, placeholders."""
    out = []
    stack = [app.widget]
    while stack:
        w = stack.pop()
        stack.extend(getattr(w, "children", ()))
        for attr in ("value", "description", "tooltip", "placeholder"):
            v = getattr(w, attr, None)
            if isinstance(v, str):
                out.append(v)
        for attr in ("_options_labels", "tooltips"):
            out.extend(str(x) for x in (getattr(w, attr, None) or ()))
    return out


def _rate_all(app, value=3):
    for widget in app.ratings.values():
        widget.value = value


# ---------------------------------------------------------------------------- items and blinding


def test_build_item_blinds_dedupes_and_is_deterministic():
    rec = _records(1)[0]
    texts = {"sft": "No acute disease.", "majority": "No acute disease. ", "retrieval": "Left effusion.",
             "zero_shot": "  ", "reference": rec["impression"]}
    item, key = review.build_item(rec, texts, pool="feedback", seed=1)
    assert item.labels == ["A", "B", "C"]  # the empty zero-shot text is left out, the duplicate merged
    assert sorted(map(sorted, key.values())) == [["majority", "sft"], ["reference"], ["retrieval"]]
    assert "impression" not in item.record and item.split == "train"
    again, key2 = review.build_item(rec, dict(reversed(list(texts.items()))), pool="feedback", seed=1)
    assert again == item and key2 == key
    orders = {tuple(c.text for c in review.build_item({**rec, "report_id": f"x{i}"}, texts, pool="eval",
                                                      seed=1)[0].candidates) for i in range(20)}
    assert len(orders) > 1  # the order is shuffled per report
    assert not any(s in repr(item) for s in ("sft", "majority", "retrieval", "reference"))
    _, skipped = review.build_items([rec], {"sft": {"r0": ""}, "b": {}}, pool="feedback", seed=1)
    assert skipped == {"empty b": 1, "empty sft": 1}


def test_sample_records_counts_missing_predictions():
    recs = _records(5)
    chosen, counts = review.sample_records(recs, 3, seed=0, require=[{"r0": "x", "r1": "y", "r2": "z"}])
    assert counts == {"records": 5, "eligible": 3, "missing_a_prediction": 2, "chosen": 3}
    assert {r["report_id"] for r in chosen} == {"r0", "r1", "r2"}


# ---------------------------------------------------------------------------- security


def test_every_field_is_html_escaped(tmp_path):
    store = FeedbackStore(tmp_path / "x.sqlite")
    records = _records(2, xss=True)
    items, _ = review.build_items(records, _systems(records, xss=True), pool="feedback", seed=3)
    ids = review.add_session(store, items, seed=3)
    app = review.ReviewApp(store, ids)
    app.reviewer_text.value = f"dr {XSS}"[:64]
    assert app.reviewer_id is not None
    for item_id in ids:
        app.show(item_id)
        rendered = app.html_values()
        joined = "\n".join(rendered)
        assert "<script" not in joined and "<img" not in joined
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;" in app.clinical.value
        for field in ("modality", "body_part", "indication", "comparison", "findings"):
            assert f"{field} &lt;script&gt;" in app.clinical.value
        assert any("No acute disease. &lt;script&gt;" in h.value for h in app.candidate_html.values())
        assert "dr &lt;script&gt;" in app.header.value
    app.edit_area.value = "</script><script>alert(2)</script>"
    page = app.snapshot_html()
    assert "<script" not in page and "<img" not in page
    # errors echo user input escaped too
    app.reviewer_id = None
    app.reviewer_text.value = "simulated <b>x</b>"
    assert "<b>" not in app.status.value and "&lt;b&gt;" in app.status.value
    store.close()


def test_widget_never_shows_which_system_wrote_what(session):
    store, ids, _ = session
    app = review.ReviewApp(store, ids)
    app.reviewer_text.value = "dr-a"
    for item_id in ids:
        app.show(item_id)
        texts = _all_text(app) + [app.snapshot_html()]
        assert not any(s in t for s in SECRET for t in texts)
    assert store.unblind(ids[0])  # the key exists, outside the widget


def test_reviewer_id_is_required(session):
    store, ids, _ = session
    app = review.ReviewApp(store, ids)
    app.start_button.click()
    assert app.reviewer_id is None and app.last_message[0] == "error" and "required" in app.last_message[1]
    assert app.form.layout.display == "none"
    app.reviewer_text.value = "simulated-7"  # reserved for scripted reviewers
    assert app.reviewer_id is None and "reserved" in app.status.value
    app.submit_button.click()
    assert store.counts()["judgements"] == 0 and store.counts()["reviewers_human"] == 0


# ---------------------------------------------------------------------------- simulated clicks


def test_clicks_store_the_judgement_and_advance(session):
    store, ids, _ = session
    clock = iter(range(0, 1000, 5))
    app = review.ReviewApp(store, ids, clock=lambda: float(next(clock)))
    app.reviewer_text.value = "dr-a"  # Enter in the id box starts
    assert app.current.item_id == ids[0] and app.form.layout.display == ""
    assert "Report 1 of 3" in app.header.value and "0 reviewed" in app.header.value
    labels = app.current.labels
    for n, label in enumerate(labels):
        app.ratings[label].value = 5 - n
    app.error_boxes[labels[-1]]["wrong_laterality"].value = True
    app.error_boxes[labels[-1]]["wrong_severity"].value = True
    app.preferred.value = labels[0]
    app.edit_from.value = labels[1]
    app.copy_button.click()
    assert app.edit_area.value == app.current.text_of(labels[1])
    app.edit_area.value += " Edited."
    app.comment.value = "ok"
    app.submit_button.click()
    saved = store.current_judgement(ids[0], "dr-a")
    assert saved["ratings"] == {label: 5 - n for n, label in enumerate(labels)}
    assert saved["errors"][labels[-1]] == ["wrong_laterality", "wrong_severity"]
    assert saved["preferred_label"] == labels[0] and saved["edited_from_label"] == labels[1]
    assert saved["edited_impression"].endswith(" Edited.") and saved["comment"] == "ok"
    assert saved["seconds_on_item"] == 5.0 and saved["reviewer_kind"] == "human"
    assert app.current.item_id == ids[1] and app.progress.value == 1 and "Report 2 of 3" in app.header.value
    assert all(w.value is None for w in app.ratings.values()) and app.edit_area.value == ""  # fresh form


def test_incomplete_submission_is_refused(session):
    store, ids, _ = session
    app = review.ReviewApp(store, ids)
    app.reviewer_text.value = "dr-a"
    _rate_all(app)
    last = app.current.labels[-1]
    app.ratings[last].value = None
    app.submit_button.click()
    assert app.last_message[0] == "error" and f"missing {last}" in app.last_message[1]
    assert store.counts()["judgements"] == 0 and app.current.item_id == ids[0]


def test_previous_prefills_and_resubmitting_appends(session):
    store, ids, _ = session
    app = review.ReviewApp(store, ids)
    app.reviewer_text.value = "dr-a"
    _rate_all(app, 2)
    app.preferred.value = app.current.labels[0]
    app.submit_button.click()
    app.back_button.click()
    assert app.current.item_id == ids[0]
    assert {k: w.value for k, w in app.ratings.items()} == {k: 2 for k in app.current.labels}
    assert app.preferred.value == app.current.labels[0] and "already reviewed" in app.header.value
    app.ratings[app.current.labels[0]].value = 5
    app.submit_button.click()
    assert store.counts()["judgements"] == 2 and store.counts()["superseded_judgements"] == 1
    assert store.current_judgement(ids[0], "dr-a")["ratings"][store.item(ids[0]).labels[0]] == 5
    assert app.current.item_id == ids[1]  # back to the first report not yet reviewed


def test_resume_where_the_reviewer_stopped_and_skip(session):
    store, ids, _ = session
    app = review.ReviewApp(store, ids)
    app.reviewer_text.value = "dr-a"
    _rate_all(app)
    app.submit_button.click()
    app.skip_button.click()
    assert app.current.item_id == ids[2]
    app.skip_button.click()
    assert app.current.item_id == ids[1]  # wraps round to the pending report
    later = review.ReviewApp(store, ids)  # a new kernel, the same reviewer
    later.reviewer_text.value = "dr-a"
    assert later.current.item_id == ids[1] and later.progress.value == 1 and "resuming" in later.status.value
    for _ in range(2):
        _rate_all(later)
        later.submit_button.click()
    assert later.current is None and later.form.layout.display == "none"
    assert "All 3 reports reviewed" in later.status.value and later.progress.value == 3
    other = review.ReviewApp(store, ids)
    other.reviewer_text.value = "dr-b"  # another reviewer starts at the beginning
    assert other.current.item_id == ids[0] and other.progress.value == 0


# ---------------------------------------------------------------------------- headless replay


def _cfg(**over):
    base = {"script": None, "reviewers": ["simulated-1", "simulated-2"], "sim_noise": 0.3, "sim_edit_rate": 1.0}
    return SimpleNamespace(**(base | over))


def test_headless_simulated_replay_resumes(session):
    store, ids, records = session
    refs = {r["report_id"]: r["impression"] for r in records}
    out = review.run_headless(store, ids, _cfg(), refs, seed=1)
    assert "SIMULATED" in out["source"]
    assert out["reviewers"] == {f"simulated-{i}": {"kind": "simulated", "submitted": 3, "already_done": 0}
                                for i in (1, 2)}
    again = review.run_headless(store, ids, _cfg(), refs, seed=1)
    assert all(v["submitted"] == 0 and v["already_done"] == 3 for v in again["reviewers"].values())
    assert store.counts()["judgements"] == 6 and store.counts()["reviewers_simulated"] == 2
    # the policy: the reference is rated best; the wrong-side, wrong-size candidate is marked as such
    rows = pd.DataFrame(store.rating_rows(pool="feedback"))
    means = rows.groupby("system")["likert"].mean()
    assert means.idxmax() == "reference"
    beta = rows[rows["system"] == SECRET[1]]
    assert beta["wrong_laterality"].all() and beta["wrong_severity"].all()


def test_recorded_session_replays_identically(session, tmp_path):
    store, ids, records = session
    review.run_headless(store, ids, _cfg(reviewers=["simulated-1"]), {r["report_id"]: r["impression"]
                                                                          for r in records}, seed=2)
    script = tmp_path / "script.jsonl"
    rows = review.export_script(store, "simulated-1", ids)
    script.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fresh = FeedbackStore(tmp_path / "fresh.sqlite")
    items, _ = review.build_items(records, _systems(records), pool="feedback", seed=7)
    fresh_ids = review.add_session(fresh, items, seed=7)
    out = review.run_headless(fresh, fresh_ids, _cfg(script=str(script)), {}, seed=99)
    assert out["reviewers"]["simulated-1"]["submitted"] == 3 and out["source"].startswith("script")

    def strip(rows):
        return [{k: r[k] for k in ("item_id", "ratings", "errors", "preferred_label", "edited_impression",
                                   "edited_from_label", "comment")} for r in rows]
    assert strip(fresh.current_judgements()) == strip(store.current_judgements())
    fresh.close()


def test_script_errors_name_file_line_and_field(tmp_path, session):
    store, ids, _ = session
    bad = tmp_path / "s.jsonl"
    bad.write_text(json.dumps({"reviewer_id": "dr-a", "item_id": ids[0], "ratings": {}}) + "\n{oops\n")
    with pytest.raises(FeedbackError, match=r"s.jsonl:2: not valid JSON"):
        review.read_script(bad)
    bad.write_text(json.dumps({"reviewer_id": "dr-a", "ratings": {}}) + "\n")
    with pytest.raises(FeedbackError, match=r"s.jsonl:1: missing fields \['item_id'\]"):
        review.read_script(bad)
    bad.write_text(json.dumps({"reviewer_id": "dr-a", "item_id": "gone", "ratings": {"A": 1}}) + "\n")
    with pytest.raises(FeedbackError, match="not in this session"):
        review.run_headless(store, ids, _cfg(script=str(bad)), {}, seed=0)
    bad.write_text(json.dumps({"reviewer_id": "dr-a", "item_id": ids[0], "ratings": {"A": 9}}) + "\n")
    with pytest.raises(FeedbackError, match=r"field 'ratings' \[A\] must be 1-5, got 9"):
        review.run_headless(store, ids, _cfg(script=str(bad)), {}, seed=0)
    bad.write_text(json.dumps({"reviewer_id": "dr-a", "item_id": ids[0], "ratings": {"A": 1}, "preferred": "Q"}) + "\n")
    with pytest.raises(FeedbackError, match="field 'preferred' must be one of"):
        review.run_headless(store, ids, _cfg(script=str(bad)), {}, seed=0)
    bad.write_text(json.dumps({"reviewer_id": "dr-a", "item_id": ids[0], "ratings": {"A": 1}}) + "\n")
    with pytest.raises(FeedbackError, match="submission refused: rate every candidate"):
        review.run_headless(store, ids, _cfg(script=str(bad)), {}, seed=0)


def test_headless_params_refuse_unlabelled_scripted_reviewers():
    with pytest.raises(config.ParamsError, match="simulated reviewer ids"):
        config.load_params("ci-tiny", {"review": {"reviewers": ["dr-house"]}})
    config.load_params("ci-tiny", {"review": {"reviewers": ["dr-house"], "mode": "interactive"}})


# ---------------------------------------------------------------------------- simulated policy and analysis


@pytest.mark.parametrize("candidate, reference, expected", [
    ("Small left pleural effusion.", "Small left pleural effusion.", []),
    ("Small right pleural effusion.", "Small left pleural effusion.", ["wrong_laterality"]),
    ("Large left pleural effusion.", "Small left pleural effusion.", ["wrong_severity"]),
    ("No pleural effusion.", "Pleural effusion.", ["wrong_negation"]),
    ("No acute disease.", "Right lower lobe pneumonia.", ["missed_finding"]),
    ("Pneumothorax is present.", "No acute disease.", ["hallucinated_finding"]),
    ("1. No acute disease. 2. Heart size is normal and the lungs are clear of any focal consolidation.",
     "No acute disease.", ["style_mismatch"]),
])
def test_rule_errors(candidate, reference, expected):
    assert review.rule_errors(candidate, reference) == expected


def test_simulated_reviewer_is_labelled_and_seeded(session):
    store, ids, records = session
    with pytest.raises(FeedbackError, match="must start with"):
        review.SimulatedReviewer("dr-fake", seed=0)
    item = store.item(ids[0])
    a = review.SimulatedReviewer("simulated-9", seed=0, noise=0.0).judge(item, records[0]["impression"])
    b = review.SimulatedReviewer("simulated-9", seed=0, noise=0.0).judge(item, records[0]["impression"])
    assert a == b
    ref_label = next(lab for lab, s in store.unblind(ids[0]).items() if "reference" in s)
    assert a["ratings"][ref_label] == 5 and a["preferred"] == ref_label and a["edited_impression"] is None


def _frame(ratings):
    rows = []
    for reviewer, values in ratings.items():
        for n, v in enumerate(values):
            rows.append({"item_id": f"i{n // 2}", "label": "AB"[n % 2], "reviewer_id": reviewer,
                         "system": "sft" if n % 2 else "reference", "likert": v, "preferred": n % 2 == 0,
                         **{e: (e == "missed_finding" and v < 3) for e in F.ERROR_TYPES}})
    return pd.DataFrame(rows)


def test_utility_errors_and_agreement():
    frame = _frame({"dr-a": [5, 2, 4, 1, 5, 3], "dr-b": [5, 2, 4, 1, 5, 3], "dr-c": [5, 2, 4, 1, 5, 3]})
    table = review.utility_table(frame)
    assert table.loc["reference", "mean_utility"] == pytest.approx(14 / 3)
    assert table.loc["reference", "acceptable_share"] == 1.0 and table.loc["sft", "acceptable_share"] == 0.0
    assert table.loc["sft", ["n_1", "n_2", "n_3"]].tolist() == [3, 3, 3]
    assert review.error_rates(frame).loc["sft", "missed_finding"] == pytest.approx(2 / 3)
    perfect = review.agreement(frame)
    assert perfect["fleiss"]["kappa"] == pytest.approx(1.0) and perfect["fleiss"]["n_units"] == 6
    assert all(c["kappa"] == pytest.approx(1.0) and c["exact_agreement"] == 1.0 for c in perfect["cohen"])
    reversed_b = review.agreement(_frame({"dr-a": [5, 1, 5, 1, 5, 1], "dr-b": [1, 5, 1, 5, 1, 5]}))
    assert reversed_b["cohen"][0]["kappa"] < 0 and reversed_b["fleiss"]["kappa"] < 0
    assert "two reviewers" in review.agreement(_frame({"dr-a": [5, 1]}))["note"]
    assert review.plot_utility_distribution(table) is not None and review.plot_error_rates(review.error_rates(frame))


# ---------------------------------------------------------------------------- into DPO


def test_review_pairs_train_dpo_for_two_steps(session, tmp_path, smollm2_tokenizer_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from radimpress_lib.llm import models

    store, ids, records = session
    review.run_headless(store, ids, _cfg(), {r["report_id"]: r["impression"] for r in records}, seed=3)
    pairs, info = F.export_pairs(store, include_simulated=True)
    assert info["pairs"] == len(pairs) > 0 and set(info["pair_types"]) <= {"review:edited", "review:preferred",
                                                                           "review:rating"}
    path = preferences.write_pairs_jsonl(pairs, tmp_path / "review_pairs.jsonl")
    dataset = reward.to_trl_dataset(preferences.read_pairs_jsonl(path))
    assert len(dataset) == len(pairs) and dataset[0]["chosen"][0]["role"] == "assistant"

    tokenizer = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(models.tiny_config(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id), dtype=torch.float32)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=2, per_device_train_batch_size=2, report_to="none",
                     logging_steps=1, save_strategy="no", max_length=256, use_cpu=True, learning_rate=1e-3,
                     disable_tqdm=True, gradient_checkpointing=False)
    torch.set_num_threads(1)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=args,
                         train_dataset=dataset.select(range(min(4, len(dataset)))), processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


# ---------------------------------------------------------------------------- hardening (issue 18)


def test_store_errors_are_shown_in_the_widget_not_only_in_the_log(session):
    store, ids, _ = session
    app = review.ReviewApp(store, ids)
    store.close()  # what the notebook's last cell used to do after Run All
    app.reviewer_text.value = "dr-a"
    app.start_button.click()
    kind, message = app.last_message
    assert kind == "error" and "closed" in message and "re-run the notebook" in message
    assert "closed" in app.status.value and app.form.layout.display == "none"


def test_selected_rating_is_plain_to_see(session):
    store, ids, _ = session
    app = review.ReviewApp(store, ids)
    app.reviewer_text.value = "dr-a"
    label = app.current.labels[0]
    assert "not rated yet" in app.rating_shown[label].value
    app.ratings[label].value = 4
    assert "4 usable as is" in app.rating_shown[label].value and "not rated" not in app.rating_shown[label].value
    for widget in [*app.ratings.values(), app.preferred]:
        assert review.SELECTED_CLASS in widget._dom_classes
    css = app.style.value
    assert f".{review.SELECTED_CLASS} .mod-active" in css and "background" in css


def test_review_pages_load_nothing_from_the_network(session):
    store, ids, _ = session
    app = review.ReviewApp(store, ids)
    app.reviewer_text.value = "dr-a"
    page = app.snapshot_html()
    assert "http" not in page and "<script" not in page
    notebook = (NOTEBOOKS_DIR / "06_review.ipynb").read_text()
    assert "embed" not in notebook and "cdn" not in notebook.lower()


#: Appended to notebook 06 after "Run All" in interactive mode: a physician types an id, rates, submits.
_PHYSICIAN_CELL = """
app.reviewer_text.value = "dr-test"  # Enter in the id box starts the session
assert app.reviewer_id == "dr-test", app.last_message
for widget in app.ratings.values():
    widget.value = 4
app.submit_button.click()
assert app.saved == 1, app.last_message
"""


@pytest.mark.notebook
def test_interactive_notebook_survives_run_all_and_keeps_to_its_session_folder(tmp_path):
    import nbformat
    import papermill as pm

    from radimpress_lib import data
    from radimpress_lib.data import synthetic

    run_dir = tmp_path / "run"
    reports = synthetic.write_synthetic_reports(tmp_path / "data", n=200)
    overrides = {"run": {"output_dir": str(run_dir)},
                 "data": {"source": "user", "user_path": str(reports)},
                 "review": {"mode": "interactive", "session": "reader-study", "eval_items": 3, "feedback_items": 0,
                            "systems": ["sft"]}}
    cfg = config.load_params("ci-tiny", overrides)
    dsd, _ = data.load_data(cfg)
    (run_dir / "predictions").mkdir(parents=True)
    (run_dir / "predictions" / "sft.jsonl").write_text("".join(
        json.dumps({"report_id": r["report_id"], "prediction": "No acute disease.", "reference": r["impression"],
                    "model": "tiny-llama", "params_hash": "x"}) + "\n" for r in dsd["test"]), encoding="utf-8")
    nb = nbformat.read(NOTEBOOKS_DIR / "06_review.ipynb", as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(_PHYSICIAN_CELL))
    source = tmp_path / "06_review.ipynb"
    nbformat.write(nb, source)
    pm.execute_notebook(str(source), str(tmp_path / "executed.ipynb"), kernel_name="radimpress", progress_bar=False,
                        parameters={"params": "ci-tiny", "overrides": overrides}, cwd=str(tmp_path))
    session = run_dir / "review_sessions" / "reader-study"
    assert (session / "review.json").is_file() and (session / "manifest.json").is_file()
    assert {p.name for p in (session / "review").iterdir()} >= {"feedback.sqlite"}
    # nothing of the run's own (reference) results was written by the interactive session
    assert not (run_dir / "review.json").exists() and not (run_dir / "manifest.json").exists()
    assert not (run_dir / "review").exists() and not list((run_dir / "figures").glob("review_*"))
    with FeedbackStore(session / "review" / "feedback.sqlite") as store:  # the physician's click after Run All
        (judged,) = store.current_judgements()
        assert judged["reviewer_id"] == "dr-test" and set(judged["ratings"].values()) == {4}
    manifest = json.loads((session / "manifest.json").read_text())
    assert manifest["stages"]["review"]["extra"]["overrides"]["run"]["output_dir"].endswith("reader-study")
