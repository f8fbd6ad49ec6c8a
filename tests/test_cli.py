"""`radimpress draft`: reading (JSONL / CSV / stdin), limits and errors, streaming, flags, end to end on tiny-llama."""

from __future__ import annotations

import io
import json
import sys
import tracemalloc
import types
from collections import Counter

import pytest

from radimpress_lib import cli
from radimpress_lib.cli import DraftInput, InputError, InputLimits, iter_reports


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
    with pytest.raises(InputError, match=r"in\.jsonl:2: not valid UTF-8"):
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
    with pytest.raises(InputError, match=r"in\.csv:3: field larger than field limit"):
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
    summary = cli.draft_stream(source(), drafter, cli.default_checkers(), written.append, batch_size=5,
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
    assert cli.labeler_checker(rec, "Small left apical pneumothorax. No effusion.") == []
    flags = {(f["kind"], f["finding"]) for f in cli.labeler_checker(rec, "Left pleural effusion. No pneumothorax. Rib fracture.")}
    assert flags == {("negation_flip", "Pleural Effusion"), ("negation_flip", "Pneumothorax"),
                     ("not_in_findings", "Fracture")}
    assert cli.labeler_checker(rec, "Normal chest.") == []
    omitted = cli.labeler_checker(rec, "Normal chest.", include_omissions=True)
    assert [(f["kind"], f["finding"]) for f in omitted] == [("omitted", "Pneumothorax")]


def test_graph_checker_plugs_in(monkeypatch):
    fake = types.ModuleType("radimpress_lib.graph")
    fake.draft_flags = lambda findings, draft: [{"kind": "hallucination", "finding": "mass", "message": "m"}]
    monkeypatch.setitem(sys.modules, "radimpress_lib.graph", fake)
    checkers = dict(cli.default_checkers())
    assert set(checkers) == {"labeler", "graph"}
    assert checkers["graph"]({"findings": "x"}, "y") == [
        {"check": "graph", "kind": "hallucination", "finding": "mass", "message": "m"}]
    monkeypatch.setitem(sys.modules, "radimpress_lib.graph", types.ModuleType("radimpress_lib.graph"))
    assert [n for n, _ in cli.default_checkers()] == ["labeler"]


# --------------------------------------------------------------------------- end to end (tiny-llama)


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A LoRA adapter on the ci-tiny base model (random weights), saved like train_sft does."""
    from peft import get_peft_model

    from radimpress_lib import config, nbutils, sft

    params = config.load_params("params/ci-tiny.yaml")
    model, tokenizer, _ = nbutils.load_base_model(params)
    peft_model = get_peft_model(model, sft.make_lora_config(params.sft))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_cli_file_mode_with_adapter(tmp_path, tiny_adapter, capsys, monkeypatch):
    from radimpress_lib import nbutils, prompting

    # ci-tiny trains with retrieval context (sft_retrieval_k > 0): drafts get the same prompt layout, from a
    # synthetic train+validate pool here (the real one comes from the run's data folder).
    pool = [{"findings": "Heart normal. No effusion.", "impression": "No acute disease."},
            {"findings": "Right lower lobe consolidation.", "impression": "Right lower lobe pneumonia."},
            {"findings": "Clear lungs.", "impression": "Normal chest."}]
    monkeypatch.setattr(nbutils, "load_data", lambda params: ({"train": pool[:2], "validate": pool[2:]}, {}))
    seen: list[str] = []
    real_build_prompt = prompting.build_prompt
    monkeypatch.setattr("radimpress_lib.generation.build_prompt",
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
    from radimpress_lib import factual_guard, generation

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
    graph = pytest.importorskip("radimpress_lib.graph")
    if not hasattr(graph, "compare_to_findings"):
        pytest.skip("graph module without compare_to_findings")
    checkers = dict(cli.default_checkers())
    assert "graph" in checkers
    rec = {"findings": "No pleural effusion. Heart size is normal. Small left apical pneumothorax."}
    flags = {(f["check"], f["kind"], f["finding"]) for f in checkers["graph"](rec, "Left pleural effusion. No pneumothorax.")}
    assert ("graph", "negation_flip", "pleural effusion") in flags and ("graph", "negation_flip", "pneumothorax") in flags
    assert checkers["graph"](rec, "Small left pneumothorax.") == []
