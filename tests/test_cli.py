"""`radimpress draft`: reading (JSONL / CSV / stdin), limits and errors, streaming, flags, end to end on tiny-llama."""

from __future__ import annotations

import io
import json
import sys
import tracemalloc
from collections import Counter

import pytest

from radimpress_lib.apps import cli
from radimpress_lib.apps.cli import DraftInput, InputError, InputLimits, iter_reports
from radimpress_lib.clinical import checks


@pytest.fixture(autouse=True)
def no_run_risk_model(monkeypatch, tmp_path_factory):
    """The run's review-risk model is wherever a test puts it, never a local outputs/ci-tiny/ one."""
    missing = tmp_path_factory.mktemp("no-risk-model") / "triage" / "risk_model.json"
    monkeypatch.setattr(cli, "default_risk_model_path", lambda params, system="sft": missing)
    return missing


def _write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- reading


def test_jsonl_reader_fields_ids_and_blank_lines(tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", [
        {"findings": " Heart normal. ", "indication": "cough", "radiologist_id": 7, "extra": 1},
        "",
        {"findings": "Small effusion.", "report_id": "r2", "comparison": None},
    ])
    notes = Counter()
    items = list(iter_reports(path, skipped=notes))
    assert [i.line for i in items] == [1, 3]
    first, second = items[0].record, items[1].record
    assert first["findings"] == "Heart normal." and first["indication"] == "cough" and first["comparison"] == ""
    assert first["radiologist_id"] == "7" and first["report_id"] == "in.jsonl:1"
    assert second["report_id"] == "r2" and second["radiologist_id"] is None
    assert notes == Counter({"blank line": 1})
    assert items[1].location == f"{path}:3"


def test_csv_reader_quoted_multiline_and_ignored_columns(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text('report_id,findings,indication,reader\n'
                    'a,"Heart normal.\nLungs clear.",pain,x\n'
                    ',,,\n'
                    'b,"No effusion, no pneumothorax.",,y\n', encoding="utf-8")
    notes = Counter()
    items = list(iter_reports(path, skipped=notes))
    assert [i.record["report_id"] for i in items] == ["a", "b"]
    assert items[0].record["findings"] == "Heart normal.\nLungs clear."
    assert items[1].record["findings"] == "No effusion, no pneumothorax." and items[1].line == 5
    assert notes["blank line"] == 1 and notes["ignored columns ['reader']"] == 1


def test_stdin_plain_text_and_jsonl():
    text = io.BufferedReader(io.BytesIO(b"Heart size normal.\nNo effusion.\n"))
    (item,) = iter_reports("-", stdin=text, text_fields={"indication": "dyspnea", "comparison": None})
    assert item.record["findings"] == "Heart size normal.\nNo effusion." and item.record["indication"] == "dyspnea"
    assert item.file == "<stdin>" and item.record["report_id"] == "<stdin>:1"
    js = io.BufferedReader(io.BytesIO(b'  {"findings": "A"}\n{"findings": "B", "report_id": "x"}\n'))
    assert [i.record["findings"] for i in iter_reports(None, stdin=js)] == ["A", "B"]
    with pytest.raises(InputError, match="<stdin>: no input"):
        list(iter_reports("-", stdin=io.BufferedReader(io.BytesIO(b""))))


BAD_JSONL = [
    ('{"findings": "ok"}\n{"findings": \n', r"in\.jsonl:2: invalid JSON"),
    ('["findings"]\n', r"in\.jsonl:1: expected a JSON object"),
    ('{"indication": "x"}\n', r"in\.jsonl:1: field 'findings' is missing"),
    ('{"findings": "   "}\n', r"in\.jsonl:1: field 'findings' is empty"),
    ('{"findings": "ok", "indication": 3}\n', r"in\.jsonl:1: field 'indication' must be a string"),
    ('{"findings": "ok"}\n{"findings": "' + "x" * 101 + '"}\n', r"in\.jsonl:2: field 'findings' has 101 characters.*limit of 100"),
    ('{"findings": "ok", "comparison": "' + "y" * 150 + '"}\n', r"in\.jsonl:1: field 'comparison' has 150"),
]


@pytest.mark.parametrize("content, message", BAD_JSONL, ids=[m.split(": ", 1)[1][:24] for _, m in BAD_JSONL])
def test_bad_jsonl_rows_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "in.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        list(iter_reports(path, limits=InputLimits(max_chars=100)))


def test_bad_bytes_overlong_line_and_report_limit(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"findings": "ok"}\n{"findings": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"in\.jsonl:2: field 'findings' holds bytes that are not valid UTF-8"):
        list(iter_reports(path))
    limits = InputLimits(max_chars=10)
    path.write_text('{"findings": "' + "z" * (limits.max_line_bytes + 10) + '"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"in\.jsonl:1: line longer than"):
        next(iter_reports(path, limits=limits))
    _write_jsonl(path, [{"findings": f"f{i}"} for i in range(4)])
    it = iter_reports(path, limits=InputLimits(max_reports=3))
    assert len([next(it) for _ in range(3)]) == 3  # the first 3 stream out before the limit is hit
    with pytest.raises(InputError, match=r"in\.jsonl:4: more than 3 reports \(--max-reports\)"):
        next(it)


def test_bad_csv_files(tmp_path):
    path = tmp_path / "in.csv"
    path.write_text("report_id,text\n1,abc\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"in\.csv:1: the CSV header .* no 'findings' column"):
        list(iter_reports(path))
    path.write_text("findings,indication\nok,a,b\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"in\.csv:2: 1 more values than the 2 header columns"):
        list(iter_reports(path))
    path.write_text("findings,indication\nok,\n" + "x" * 500 + ",y\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"in\.csv:3: field 'findings' has 500 characters"):
        list(iter_reports(path, limits=InputLimits(max_chars=400)))
    with pytest.raises(InputError, match=r"in\.csv:3: field 'findings' has 500 characters.*limit of 100"):
        list(iter_reports(path, limits=InputLimits(max_chars=100)))
    (tmp_path / "x.txt").write_text("findings\nok\n")
    with pytest.raises(InputError, match="cannot tell the format"):
        list(iter_reports(tmp_path / "x.txt"))
    assert len(list(iter_reports(tmp_path / "x.txt", fmt="csv"))) == 1
    with pytest.raises(InputError, match="no such file"):
        list(iter_reports(tmp_path / "missing.jsonl"))


def test_skip_invalid_counts_reasons_and_keeps_good_rows(tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", [
        {"findings": "ok 1"}, {"findings": ""}, "{not json", {"findings": "x" * 50}, {"findings": 5},
        {"findings": "ok 2"},
    ])
    skipped, warned = Counter(), []
    items = list(iter_reports(path, limits=InputLimits(max_chars=20), skip_invalid=True, skipped=skipped,
                              warn=warned.append))
    assert [i.record["findings"] for i in items] == ["ok 1", "ok 2"]
    assert sum(skipped.values()) == 4 == len(warned)
    assert skipped["field 'findings' is empty"] == 1 and skipped["field 'findings' over --max-chars"] == 1
    assert all(w.startswith(f"skipped {path}:") for w in warned)


# --------------------------------------------------------------------------- streaming


def test_reader_streams_in_constant_memory(tmp_path):
    """Peak Python memory while reading ~12 MB of JSONL stays far below the file size."""
    path = tmp_path / "big.jsonl"
    row = json.dumps({"findings": "The heart is normal in size. " * 20, "indication": "cough " * 20})
    with path.open("w", encoding="utf-8") as fh:
        for _ in range(15_000):
            fh.write(row + "\n")
    size = path.stat().st_size
    assert size > 10_000_000
    tracemalloc.start()
    try:
        n = sum(1 for _ in iter_reports(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 15_000
    assert peak < 1_000_000, f"peak {peak} bytes while reading a {size}-byte file"


def test_draft_stream_pulls_one_batch_at_a_time():
    pulled, written = [], []

    def source():
        for i in range(23):
            pulled.append(i)
            # Never more than one batch read ahead of what was written.
            assert len(pulled) - len(written) <= 5
            yield DraftInput({"report_id": f"r{i}", "findings": "No pneumothorax.", "radiologist_id": None}, "f", i + 1)

    def drafter(records):
        assert 1 <= len(records) <= 5
        return [{"draft": "Large pneumothorax." if r["report_id"] == "r3" else "Normal chest.", "stopped": True}
                for r in records]

    lines = []
    summary = cli.draft_stream(source(), drafter, checks.default_checkers(), written.append, batch_size=5,
                               progress=lines.append, extra={"model": "fake"})
    assert summary.n_drafted == 23 == len(written) and summary.n_batches == 5 and len(lines) == 5
    assert [w["report_id"] for w in written] == [f"r{i}" for i in range(23)]
    flagged = [w for w in written if w["needs_review"]]
    assert [w["report_id"] for w in flagged] == ["r3"] and summary.n_flagged == 1
    assert flagged[0]["flags"][0]["kind"] == "negation_flip" and flagged[0]["flags"][0]["finding"] == "Pneumothorax"
    assert written[0]["source"] == "f:1" and written[0]["model"] == "fake" and written[0]["stopped"] is True


def test_limit_stops_reading():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield DraftInput({"report_id": str(i), "findings": "x"}, "f", i + 1)

    out = []
    summary = cli.draft_stream(source(), lambda recs: [{"draft": "ok"} for _ in recs], [], out.append,
                               batch_size=4, limit=6)
    assert summary.n_drafted == 6 == len(out) and len(pulled) == 6


# --------------------------------------------------------------------------- flags


def test_labeler_checker_flags():
    rec = {"findings": "No pleural effusion. Heart size is normal. Small left apical pneumothorax."}
    assert checks.labeler_checker(rec, "Small left apical pneumothorax. No effusion.") == []
    flags = {(f["kind"], f["finding"]) for f in checks.labeler_checker(rec, "Left pleural effusion. No pneumothorax. Rib fracture.")}
    assert flags == {("negation_flip", "Pleural Effusion"), ("negation_flip", "Pneumothorax"),
                     ("not_in_findings", "Fracture")}
    assert checks.labeler_checker(rec, "Normal chest.") == []
    omitted = checks.labeler_checker(rec, "Normal chest.", include_omissions=True)
    assert [(f["kind"], f["finding"]) for f in omitted] == [("omitted", "Pneumothorax")]


def test_graph_checker_flags_against_the_findings_graph():
    checkers = dict(checks.default_checkers())
    assert set(checkers) == {"labeler", "graph"}
    findings = {"findings": "Small left pleural effusion. No pneumothorax. Heart size normal."}
    flags = checkers["graph"](findings, "No pleural effusion. Pneumothorax.")
    kinds = {(f["kind"], f["check"]) for f in flags}
    assert ("negation_flip", "graph") in kinds
    assert checkers["graph"](findings, "Small left pleural effusion.") == []
    omitted = checks.graph_checker(findings, "Heart size normal.", include_omissions=True)
    assert any(f["kind"] == "omitted" for f in omitted)
    assert not any(f["kind"] == "omitted" for f in checks.graph_checker(findings, "Heart size normal."))


# --------------------------------------------------------------------------- end to end (tiny-llama)


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A LoRA adapter on the ci-tiny base model (random weights), saved like train_sft does."""
    from peft import get_peft_model

    from radimpress_lib.core import config
    from radimpress_lib.llm import checkpoints
    from radimpress_lib.train import sft

    params = config.load_params("params/ci-tiny.yaml")
    model, tokenizer, _ = checkpoints.load_base_model(params)
    peft_model = get_peft_model(model, sft.make_lora_config(params.sft))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_cli_file_mode_with_adapter(tmp_path, tiny_adapter, capsys, monkeypatch):
    from radimpress_lib.llm import prompting, retrieval

    # ci-tiny trains with retrieval context (sft.retrieval_k > 0): drafts get the same prompt layout, from a
    # synthetic train+validate pool here (the real one comes from the run's data folder).
    pool = [{"findings": "Heart normal. No effusion.", "impression": "No acute disease."},
            {"findings": "Right lower lobe consolidation.", "impression": "Right lower lobe pneumonia."},
            {"findings": "Clear lungs.", "impression": "Normal chest."}]
    monkeypatch.setattr(retrieval, "load_data", lambda params: ({"train": pool[:2], "validate": pool[2:]}, {}))
    seen: list[str] = []
    real_build_prompt = prompting.build_prompt
    monkeypatch.setattr("radimpress_lib.llm.generation.build_prompt",
                        lambda tok, rec, style=None: seen.append(real_build_prompt(tok, rec, style)) or seen[-1])
    inp = _write_jsonl(tmp_path / "reports.jsonl", [
        {"findings": "Heart size normal. No effusion.", "radiologist_id": "dr1", "report_id": "a"},
        {"findings": "Right lower lobe opacity.", "indication": "fever", "comparison": "none"},
        {"findings": "Lungs clear."},
    ])
    out = tmp_path / "out" / "drafts.jsonl"
    rc = cli.main(["draft", str(inp), "-o", str(out), "--model", "ci-tiny", "--adapter", str(tiny_adapter),
                   "--batch-size", "2", "--max-new-tokens", "4"])
    assert rc == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["report_id"] for r in rows] == ["a", "reports.jsonl:2", "reports.jsonl:3"]
    assert rows[0]["radiologist_id"] == "dr1" and rows[0]["adapter"] == str(tiny_adapter)
    assert all(isinstance(r["draft"], str) and isinstance(r["flags"], list) and r["n_new_tokens"] <= 4 for r in rows)
    err = capsys.readouterr().err
    assert "draft: batch 2 | 3 reports" in err and "draft: done, 3 drafts" in err
    assert "prompt context: 2 similar impressions from 3 train+validate reports" in err
    assert len(seen) == 3 and all(prompting.SIMILAR_HEADING in p for p in seen)
    assert "- Right lower lobe pneumonia." in seen[1]


def test_cli_guard_rewrites_a_contradicting_draft(tmp_path, monkeypatch, capsys):
    from radimpress_lib.evaluation import factual_guard
    from radimpress_lib.llm import generation

    # the model's first draft says the opposite of the findings; the guard's beam candidates are faked
    real_generate = generation.generate_impressions

    def flipped(model, tokenizer, rows, cfg, **kw):
        result = real_generate(model, tokenizer, rows, cfg, **kw)
        result.predictions = [dict(p, prediction="Large right pneumothorax." if "No pneumothorax" in r["findings"]
                                   else "Mild cardiomegaly.") for p, r in zip(result.predictions, rows)]
        return result

    asked = []

    def candidates(model, tok, prompt, n, max_new_tokens):
        asked.append(n)
        return ["Right pneumothorax.", "No pneumothorax."]

    monkeypatch.setattr(generation, "generate_impressions", flipped)
    monkeypatch.setattr(factual_guard, "_candidates", candidates)
    inp = _write_jsonl(tmp_path / "reports.jsonl", [
        {"findings": "No pneumothorax. Heart size is normal.", "report_id": "flip"},
        {"findings": "Mild cardiomegaly. The lungs are clear.", "report_id": "ok"},
    ])
    out = tmp_path / "drafts.jsonl"
    args = ["draft", str(inp), "-o", str(out), "--model", "ci-tiny", "--adapter", "none", "--max-new-tokens", "3"]
    assert cli.main([*args, "--guard", "3"]) == 0
    rows = {r["report_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert asked == [3]  # only the contradicting draft is re-decoded
    assert rows["flip"]["draft"] == "No pneumothorax." and not rows["flip"]["needs_review"]
    assert rows["flip"]["guard"] == {"original": "Large right pneumothorax.", "beam_rank": 1}
    assert rows["ok"]["draft"] == "Mild cardiomegaly." and "guard" not in rows["ok"]
    err = capsys.readouterr().err
    assert "factual guard: 3 beam candidates" in err and "guard rewrote 1, unresolved 0" in err
    # without --guard the contradiction is written as drafted, flagged for review
    assert cli.main(args) == 0
    rows = {r["report_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert rows["flip"]["draft"] == "Large right pneumothorax." and rows["flip"]["needs_review"]
    assert "guard" not in rows["flip"] and asked == [3]
    assert cli.main([*args, "--guard", "1"]) == 2
    assert "--guard must be 0 (off) or at least 2" in capsys.readouterr().err


def test_cli_stdin_mode_and_errors(tmp_path, monkeypatch, capsys):
    stdin = io.TextIOWrapper(io.BufferedReader(io.BytesIO(b"Heart size normal. No pneumothorax.\n")))
    monkeypatch.setattr(sys, "stdin", stdin)
    rc = cli.main(["draft", "--model", "ci-tiny", "--adapter", "none", "--max-new-tokens", "3", "--quiet",
                   "--indication", "chest pain"])
    captured = capsys.readouterr()
    assert rc == 0 and captured.err == ""
    (row,) = [json.loads(line) for line in captured.out.splitlines()]
    assert row["source"] == "<stdin>:1" and row["adapter"] is None

    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"findings": "ok"}, {"findings": "ok", "radiologist_id": [1]}])
    assert cli.main(["draft", str(bad), "--model", "ci-tiny", "--adapter", "none"]) == 2
    assert f"error: {bad}:2: field 'radiologist_id' must be a string" in capsys.readouterr().err
    assert cli.main(["draft", str(bad), "--model", "ci-tiny", "--limit", "0"]) == 2
    assert "--limit must be positive" in capsys.readouterr().err
    assert cli.main(["draft", str(bad), "--model", "no-such-params"]) == 1
    assert "no such params file" in capsys.readouterr().err


def test_graph_module_of_the_project_is_used():
    graph = pytest.importorskip("radimpress_lib.clinical.graph")
    if not hasattr(graph, "compare_to_findings"):
        pytest.skip("graph module without compare_to_findings")
    checkers = dict(checks.default_checkers())
    assert "graph" in checkers
    rec = {"findings": "No pleural effusion. Heart size is normal. Small left apical pneumothorax."}
    flags = {(f["check"], f["kind"], f["finding"]) for f in checkers["graph"](rec, "Left pleural effusion. No pneumothorax.")}
    assert ("graph", "negation_flip", "pleural effusion") in flags and ("graph", "negation_flip", "pneumothorax") in flags
    assert checkers["graph"](rec, "Small left pneumothorax.") == []


# --------------------------------------------------------------------------- hardening (issue 18)


@pytest.fixture
def fake_model(monkeypatch):
    """``radimpress draft`` without a model: each report is drafted "Normal chest." (records seen are kept)."""
    seen: list[dict] = []

    def drafter_for(model, tokenizer, gen_cfg, **kw):
        def draft(records):
            seen.extend(records)
            return [{"draft": "Normal chest.", "stopped": True, "n_new_tokens": 3} for _ in records]
        return draft

    monkeypatch.setattr(cli, "load_drafting_model",
                        lambda params, adapter: (None, None, {"model": "fake", "adapter": None}))
    monkeypatch.setattr(cli, "model_drafter", drafter_for)
    return seen


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_csv_unbalanced_quote_is_reported_not_merged(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b'report_id,findings\nr1,"Heart normal.\nr2,Lungs clear.\nr3,"Small" effusion.\nr4,Ok.\n')
    with pytest.raises(InputError, match=r'in\.csv:2: unbalanced quote \("\)'):
        list(iter_reports(path))
    skipped, warned = Counter(), []
    items = list(iter_reports(path, skip_invalid=True, skipped=skipped, warn=warned.append))
    assert [(i.record["report_id"], i.line) for i in items] == [("r2", 3), ("r4", 5)]
    assert skipped == Counter({"unbalanced quote": 1, "quote inside a quoted field": 1})
    assert warned[0].startswith(f"skipped {path}:2: ") and warned[1].startswith(f"skipped {path}:4: ")


def test_output_equal_to_input_is_refused_and_output_is_atomic(tmp_path, fake_model, monkeypatch, capsys):
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"findings": f"Finding {i}."} for i in range(5)])
    before = inp.read_bytes()
    for same in (str(inp), str(tmp_path / "." / "in.jsonl")):
        assert cli.main(["draft", str(inp), "-o", same, "--model", "ci-tiny", "--adapter", "none"]) == 2
        assert inp.read_bytes() == before
        assert "is the input file" in capsys.readouterr().err
    out = tmp_path / "drafts.jsonl"
    assert cli.main(["draft", str(inp), "-o", str(out), "--model", "ci-tiny", "--adapter", "none", "--quiet"]) == 0
    assert len(_rows(out)) == 5
    # a run that fails half-way leaves the earlier output as it was and no half file
    calls = []

    def failing(model, tokenizer, gen_cfg, **kw):
        def draft(records):
            calls.append(len(records))
            if len(calls) == 2:
                raise RuntimeError("out of memory")
            return [{"draft": "Normal chest.", "stopped": True} for _ in records]
        return draft

    monkeypatch.setattr(cli, "model_drafter", failing)
    previous = out.read_bytes()
    rc = cli.main(["draft", str(inp), "-o", str(out), "--model", "ci-tiny", "--adapter", "none", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "out of memory" in err and "Traceback" not in err
    assert out.read_bytes() == previous and sorted(p.name for p in tmp_path.iterdir()) == ["drafts.jsonl", "in.jsonl"]


def test_study_scope_reaches_the_prompt_and_is_flagged_or_refused(tmp_path, fake_model, capsys):
    from radimpress_lib.llm import prompting

    inp = _write_jsonl(tmp_path / "in.jsonl", [
        {"report_id": "cxr", "findings": "No effusion.", "modality": "CR", "body_part": "Chest"},
        {"report_id": "ct", "findings": "No hemorrhage.", "modality": "CT", "body_part": "HEAD"},
        {"report_id": "unknown", "findings": "Clear lungs."},
    ])
    out = tmp_path / "out.jsonl"
    assert cli.main(["draft", str(inp), "-o", str(out), "--model", "ci-tiny", "--adapter", "none"]) == 0
    prompt = prompting.build_messages(fake_model[1])[1]["content"]
    assert "Modality: CT" in prompt and "Body part: HEAD" in prompt
    rows = {r["report_id"]: r for r in _rows(out)}
    assert not rows["cxr"]["needs_review"] and not rows["unknown"]["needs_review"]
    (reason,) = rows["ct"]["review_reasons"]
    assert rows["ct"]["needs_review"] and reason["kind"] == "out_of_scope" and "CT HEAD" in reason["message"]
    assert "1 out of scope" in capsys.readouterr().err
    assert cli.main(["draft", str(inp), "-o", str(out), "--model", "ci-tiny", "--adapter", "none",
                     "--out-of-scope", "refuse"]) == 0
    assert [r["report_id"] for r in _rows(out)] == ["cxr", "unknown"]
    err = capsys.readouterr().err
    assert f"refused {inp}:2: CT HEAD study is outside the scope XR CHEST" in err and "refused 1" in err


def test_empty_and_truncated_drafts_need_review():
    drafts = {"a": {"draft": "  ", "stopped": True}, "b": {"draft": "Small left", "stopped": False},
              "c": {"draft": "Normal chest.", "stopped": True}, "d": {"draft": "Large pneumothorax."}}
    inputs = [DraftInput({"report_id": k, "findings": "No pneumothorax.", "radiologist_id": None}, "f", i)
              for i, k in enumerate(drafts, 1)]
    out = []
    summary = cli.draft_stream(inputs, lambda recs: [drafts[r["report_id"]] for r in recs], checks.default_checkers(),
                               out.append)
    rows = {r["report_id"]: r for r in out}
    assert [r["kind"] for r in rows["a"]["review_reasons"]] == ["empty_draft"] and rows["a"]["needs_review"]
    assert [r["kind"] for r in rows["b"]["review_reasons"]] == ["truncated"] and rows["b"]["needs_review"]
    assert rows["c"]["review_reasons"] == [] and not rows["c"]["needs_review"]
    assert {r["kind"] for r in rows["d"]["review_reasons"]} == {"negation_flip"}
    assert all(set(r) == {"kind", "message", "severity"} for row in out for r in row["review_reasons"])
    assert all(row["risk"] is None for row in out)  # no risk model: rule flags
    assert summary.n_needs_review == 3 and summary.reasons_by_kind["empty_draft"] == 1


def test_utf8_byte_order_mark_is_stripped(tmp_path):
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(b"\xef\xbb\xbfreport_id,findings\nA1,Heart normal.\n")
    assert [i.record["report_id"] for i in iter_reports(csv_path)] == ["A1"]
    jsonl_path = tmp_path / "bom.jsonl"
    jsonl_path.write_bytes(b'\xef\xbb\xbf{"report_id": "A1", "findings": "Heart normal."}\n')
    assert [i.record["report_id"] for i in iter_reports(jsonl_path)] == ["A1"]


def test_lone_surrogate_and_nul_are_input_errors(tmp_path, capsys):
    path = tmp_path / "in.jsonl"
    path.write_text('{"report_id": "\\ud800", "findings": "ok"}\n{"findings": "caf\\udce9"}\n'
                    '{"findings": "a\\u0000b"}\n{"findings": "fine"}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"in\.jsonl:1: field 'report_id' holds an invalid Unicode escape"):
        list(iter_reports(path))
    skipped = Counter()
    assert [i.line for i in iter_reports(path, skip_invalid=True, skipped=skipped)] == [4]
    assert skipped == Counter({"field 'report_id' not valid text": 1, "field 'findings' not valid text": 2})
    assert cli.main(["draft", str(path), "--model", "ci-tiny", "--adapter", "none"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "in.jsonl:1: field 'report_id'" in err


def _csv_with_bad_rows(path, max_chars):
    """A CSV whose multi-line rows shift file lines away from row numbers; returns {report_id: file line}."""
    lines, where = [b"report_id,findings"], {}
    for i in range(1, 60):
        where[f"r{i}"] = 1 + sum(1 + line.count(b"\n") for line in lines)
        if i % 4 == 0:
            lines.append(b'r%d,"Line one.\nLine two."' % i)
        elif i == 30:
            lines.append(b"r30,Heart \xe9 normal.")  # Latin-1 byte in a UTF-8 file
        elif i == 41:
            lines.append(b"r41," + b"x" * (max_chars + 5))  # a field over --max-chars
        elif i == 47:
            lines.append(b"r47," + b"y" * (200 * max_chars))  # a row far over every limit
        else:
            lines.append(b"r%d,Finding %d." % (i, i))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return where


def test_skip_invalid_csv_skips_bad_bytes_and_long_fields_naming_true_lines(tmp_path):
    path = tmp_path / "in.csv"
    where = _csv_with_bad_rows(path, 100)
    assert where["r30"] == 38 and where["r41"] == 52  # the multi-line rows put them after their row numbers
    limits = InputLimits(max_chars=100)
    with pytest.raises(InputError, match=rf"in\.csv:{where['r30']}: field 'findings' holds bytes that are not valid"):
        list(iter_reports(path, limits=limits))
    skipped, warned = Counter(), []
    items = list(iter_reports(path, limits=limits, skip_invalid=True, skipped=skipped, warn=warned.append))
    assert len(items) == 56 and all(i.line == where[i.record["report_id"]] for i in items)
    assert skipped == Counter({"field 'findings' not valid text": 1, "field 'findings' over --max-chars": 1,
                               "row too long": 1})
    assert [w.split(": ")[0] for w in warned] == [f"skipped {path}:{where[r]}" for r in ("r30", "r41", "r47")]


def test_skip_invalid_jsonl_skips_an_over_long_line_and_counts_on(tmp_path):
    limits = InputLimits(max_chars=10)
    path = tmp_path / "in.jsonl"
    path.write_text('{"findings": "a"}\n{"findings": "' + "z" * (limits.max_line_bytes + 10) + '"}\n'
                    '{"findings": "b"}\n', encoding="utf-8")
    skipped = Counter()
    items = list(iter_reports(path, limits=limits, skip_invalid=True, skipped=skipped))
    assert [(i.record["findings"], i.line) for i in items] == [("a", 1), ("b", 3)]
    assert skipped == Counter({"line too long": 1})


def test_bad_output_and_params_paths_give_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_drafting_model", lambda *a: pytest.fail("must fail before loading the model"))
    inp = _write_jsonl(tmp_path / "in.jsonl", [{"findings": "Heart normal."}])
    (tmp_path / "a_file").write_text("x")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"sft: {max_steps: 2}\n# caf\xe9\n")
    (tmp_path / "folder.yaml").mkdir()
    broken = tmp_path / "broken.yaml"
    broken.write_text("sft: {max_steps: [1,\n")
    cases = [(["-o", str(tmp_path)], str(tmp_path), "is a directory"),
             (["-o", str(tmp_path / "a_file" / "out.jsonl")], str(tmp_path / "a_file"), "cannot write"),
             (["--model", str(latin)], str(latin), "not valid UTF-8"),
             (["--model", str(tmp_path / "folder.yaml")], str(tmp_path / "folder.yaml"), "cannot read"),
             (["--model", str(broken)], str(broken), "not valid YAML")]
    for extra, path, what in cases:
        rc = cli.main(["draft", str(inp), "--adapter", "none", *extra])
        err = capsys.readouterr().err
        assert rc != 0 and "Traceback" not in err and err.count("\n") == 1, err
        assert path in err and what in err, err


def test_column_mapping_and_headers_that_differ_only_by_case(tmp_path):
    path = tmp_path / "export.csv"
    path.write_text("AccessionNumber,Findings,INDICATION,Modality,Body Part\nA1,Heart normal.,cough,XR,CHEST\n",
                    encoding="utf-8")
    notes = Counter()
    (item,) = iter_reports(path, columns=cli.parse_columns("report_id=AccessionNumber,body_part=Body Part"),
                           skipped=notes)
    assert item.record | {"comparison": None} == {
        "report_id": "A1", "findings": "Heart normal.", "indication": "cough", "modality": "XR", "body_part": "CHEST",
        "comparison": None, "radiologist_id": None}
    assert notes["column 'Findings' read as 'findings' (differs only by case)"] == 1
    with pytest.raises(InputError, match=r"--columns maps 'report_id' to 'Accession', which is not a column"):
        list(iter_reports(path, columns={"report_id": "Accession"}))
    for bad in ("findings", "finding=Findings", "findings=", "findings=A,findings=B"):
        with pytest.raises(InputError, match="--columns"):
            cli.parse_columns(bad)
    ambiguous = tmp_path / "two.csv"
    ambiguous.write_text("Findings,FINDINGS\na,b\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"'Findings' and 'FINDINGS' both differ from 'findings' only by case"):
        list(iter_reports(ambiguous))
    js = _write_jsonl(tmp_path / "k.jsonl", [{"Findings": "Heart normal.", "Accession": "J1"}])
    (item,) = iter_reports(js, columns={"report_id": "Accession"})
    assert (item.record["report_id"], item.record["findings"]) == ("J1", "Heart normal.")
