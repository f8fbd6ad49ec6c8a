"""Feedback store (radimpress_lib.data.feedback): WAL, schema migrations, append-only, concurrency, pair export."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import sqlite3
import time

import pytest

from radimpress_lib.core import config
from radimpress_lib.data import feedback as F
from radimpress_lib.data.feedback import Candidate, FeedbackError, FeedbackStore, Judgement, ReviewItem

RECORD = {"findings": "Small left pleural effusion. Heart size normal.", "indication": "Dyspnea.", "comparison": "",
          "modality": "XR", "body_part": "CHEST"}


def make_item(item_id="feedback-r1-x", report_id="r1", pool="feedback", split="train",
              texts=("Small left effusion.", "No acute disease.", "Left pleural effusion, small.")):
    labels = [chr(ord("A") + i) for i in range(len(texts))]
    item = ReviewItem(item_id=item_id, report_id=report_id, pool=pool, split=split, record=dict(RECORD),
                      candidates=tuple(Candidate(lab, t) for lab, t in zip(labels, texts)))
    key = {lab: [f"sys{i}"] for i, lab in enumerate(labels)}
    return item, key


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "fb.sqlite") as s:
        item, key = make_item()
        s.add_item(item, key)
        s.register_reviewer("dr-a")
        yield s


def test_new_store_is_wal_at_current_schema(tmp_path):
    with FeedbackStore(tmp_path / "new.sqlite") as s:
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s.schema_version == F.SCHEMA_VERSION == 3
        versions = [r[0] for r in s._conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == [1, 2, 3]
    with FeedbackStore(tmp_path / "new.sqlite") as again:  # reopening migrates nothing
        assert again._conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == 3


def test_judgement_roundtrip_and_edits_append(store):
    j1 = store.add_judgement(Judgement("feedback-r1-x", "dr-a", {"A": 4, "B": 2, "C": 5},
                                       errors={"B": ["missed_finding"]}, preferred_label="C", seconds_on_item=3.5))
    j2 = store.add_judgement(Judgement("feedback-r1-x", "dr-a", {"A": 5, "B": 1, "C": 4}, preferred_label="A",
                                       edited_impression="  Small left pleural effusion. ", edited_from_label="A"))
    rows = store._conn.execute("SELECT judgement_id, supersedes, edited_impression FROM judgements "
                               "ORDER BY judgement_id").fetchall()
    assert [(r[0], r[1]) for r in rows] == [(j1, None), (j2, j1)]
    current = store.current_judgements()
    assert len(current) == 1 and current[0]["judgement_id"] == j2
    assert current[0]["ratings"] == {"A": 5, "B": 1, "C": 4}
    assert current[0]["edited_impression"] == "Small left pleural effusion."
    assert current[0]["reviewer_kind"] == "human" and current[0]["client"].endswith(f":{__import__('os').getpid()}")
    first = store._conn.execute("SELECT likert, errors_json FROM ratings WHERE judgement_id = ? AND label = 'B'",
                                (j1,)).fetchone()
    assert tuple(first) == (2, '["missed_finding"]')  # the superseded judgement is still there, unchanged
    assert store.counts()["superseded_judgements"] == 1
    assert store.reviewed_item_ids("dr-a") == {"feedback-r1-x"}


@pytest.mark.parametrize("table, where", [
    ("judgements", "1 = 1"), ("ratings", "1 = 1"), ("items", "1 = 1"), ("candidates", "1 = 1"),
    ("blinding", "1 = 1"), ("reviewers", "1 = 1"),
])
def test_tables_are_append_only(store, table, where):
    store.add_judgement(Judgement("feedback-r1-x", "dr-a", {"A": 4, "B": 2, "C": 5}))
    column = {"judgements": "comment", "ratings": "likert", "items": "split", "candidates": "text",
              "blinding": "system", "reviewers": "kind"}[table]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._conn.execute(f"UPDATE {table} SET {column} = {column} WHERE {where}")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        store._conn.execute(f"DELETE FROM {table} WHERE {where}")
    assert store._conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] > 0


@pytest.mark.parametrize("change, message", [
    ({"ratings": {"A": 4, "B": 2}}, "rate every candidate"),
    ({"ratings": {"A": 6, "B": 2, "C": 3}}, r"ratings.*\[A\] must be an integer 1-5"),
    ({"ratings": {"A": True, "B": 2, "C": 3}}, "must be an integer"),
    ({"errors": {"A": ["typo"]}}, "unknown error types"),
    ({"errors": {"Z": ["missed_finding"]}}, "unknown candidate"),
    ({"preferred_label": "Q"}, "preferred_label"),
    ({"edited_from_label": "A"}, "without an edited impression"),
    ({"reviewer_id": "dr-unknown"}, "unknown reviewer"),
    ({"item_id": "nope"}, "no item"),
])
def test_bad_judgements_are_refused_with_the_field(store, change, message):
    fields = {"item_id": "feedback-r1-x", "reviewer_id": "dr-a", "ratings": {"A": 4, "B": 2, "C": 3}} | change
    with pytest.raises(FeedbackError, match=message):
        store.add_judgement(Judgement(**fields))
    assert store.counts()["judgements"] == 0


def test_reviewer_ids(store):
    for bad in ("", "   ", None, "x" * 65):
        with pytest.raises(FeedbackError, match="reviewer_id"):
            store.register_reviewer(bad)
    with pytest.raises(FeedbackError, match="reserved for simulated"):
        store.register_reviewer("Simulated-doc")
    with pytest.raises(FeedbackError, match="must start with"):
        store.register_reviewer("dr-b", kind="simulated")
    store.register_reviewer("simulated-1", kind="simulated")
    assert store.register_reviewer(" dr-a ") == "dr-a"  # idempotent, stripped
    assert store.counts()["reviewers_human"] == 1 and store.counts()["reviewers_simulated"] == 1


def test_items_are_content_checked_and_test_split_stays_out_of_feedback(store):
    item, key = make_item()
    assert store.add_item(item, key) is False  # same content: no-op
    changed, _ = make_item(texts=("Other.", "No acute disease.", "Left pleural effusion, small."))
    with pytest.raises(FeedbackError, match="other candidates"):
        store.add_item(changed, key)
    leaky, key2 = make_item(item_id="feedback-r9-x", report_id="r9", split="test")
    with pytest.raises(FeedbackError, match="test-split"):
        store.add_item(leaky, key2)
    bad_key = {"A": ["s"], "B": ["t"]}
    other, _ = make_item(item_id="eval-r2-x", report_id="r2", pool="eval", split="test")
    with pytest.raises(FeedbackError, match="blinding key"):
        store.add_item(other, bad_key)
    assert store.unblind("feedback-r1-x") == {"A": ["sys0"], "B": ["sys1"], "C": ["sys2"]}


def _v1_store(path):
    """A store as version 1 of the code wrote it, with a human and a scripted reviewer's judgements."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for stmt in F.MIGRATIONS[1][1]:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_migrations VALUES (1, '2026-01-01T00:00:00+00:00', 'v1')")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO items VALUES ('feedback-r1-x', 'r1', 'feedback', 'train', '{\"findings\": \"f\"}', "
                 "'2026-01-01T00:00:00+00:00')")
    conn.executemany("INSERT INTO candidates VALUES ('feedback-r1-x', ?, ?, ?)", [("A", 0, "One."), ("B", 1, "Two.")])
    conn.executemany("INSERT INTO blinding VALUES ('feedback-r1-x', ?, ?)", [("A", "sft"), ("B", "reference")])
    for n, reviewer in enumerate(("dr-old", "simulated-old", "dr-old"), start=1):
        conn.execute("INSERT INTO judgements (judgement_uid, item_id, reviewer_id, created_utc, preferred_label, "
                     "supersedes) VALUES (?, 'feedback-r1-x', ?, ?, 'B', ?)",
                     (f"u{n}", reviewer, f"2026-01-0{n}T00:00:00+00:00", 1 if n == 3 else None))
        conn.executemany("INSERT INTO ratings VALUES (?, ?, ?, '[]')", [(n, "A", 2), (n, "B", 5)])
    conn.execute("COMMIT")
    conn.close()


def test_upgrade_from_v1_keeps_every_judgement(tmp_path):
    path = tmp_path / "old.sqlite"
    _v1_store(path)
    with FeedbackStore(path) as s:
        assert s.schema_version == 3
        kinds = dict(s._conn.execute("SELECT reviewer_id, kind FROM reviewers").fetchall())
        assert kinds == {"dr-old": "human", "simulated-old": "simulated"}
        assert s.counts()["judgements"] == 3 and s.counts()["current_judgements"] == 2
        assert {j["reviewer_id"]: j["ratings"] for j in s.current_judgements()} == {
            "dr-old": {"A": 2, "B": 5}, "simulated-old": {"A": 2, "B": 5}}
        s.add_judgement(Judgement("feedback-r1-x", "dr-old", {"A": 3, "B": 4}, seconds_on_item=2.0))
        latest = s.current_judgement("feedback-r1-x", "dr-old")
        assert latest["supersedes"] == 3 and latest["seconds_on_item"] == 2.0
        with pytest.raises(sqlite3.DatabaseError, match="unknown reviewer"):  # v2 trigger
            s._conn.execute("INSERT INTO judgements (judgement_uid, item_id, reviewer_id, created_utc) "
                            "VALUES ('z', 'feedback-r1-x', 'ghost', 'now')")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            s._conn.execute("DELETE FROM reviewers")


def test_refuses_unmigrated_or_newer_stores(tmp_path):
    path = tmp_path / "old.sqlite"
    _v1_store(path)
    with pytest.raises(FeedbackError, match="schema version 1"):
        FeedbackStore(path, migrate=False)
    newer = tmp_path / "newer.sqlite"
    FeedbackStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(FeedbackError, match="newer than this code"):
        FeedbackStore(newer)


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    """2 kernels x 1,000 judgements at the same moment: every one stored, exactly once."""
    path = tmp_path / "shared.sqlite"
    n = 1000
    with FeedbackStore(path) as s:
        item, key = make_item()
        s.add_item(item, key)
        for rid in ("dr-a", "dr-b"):
            s.register_reviewer(rid)
    ctx = mp.get_context("spawn")
    start_at = time.time() + 2.0  # both children are imported and waiting by then
    with ctx.Pool(2) as pool:
        results = pool.starmap(F.concurrent_writer, [(str(path), "dr-a", item.item_id, n, start_at),
                                                     (str(path), "dr-b", item.item_id, n, start_at)])
    assert min(r["finished"] for r in results) > max(r["started"] for r in results), "writers did not overlap"
    with FeedbackStore(path) as s:
        counts = s.counts()
        assert counts["judgements"] == 2 * n and counts["ratings"] == 2 * n * 3
        assert counts["current_judgements"] == 2
        stored = {r[0]: r[1] for r in s._conn.execute("SELECT judgement_id, reviewer_id FROM judgements")}
        for r in results:
            assert len(set(r["ids"])) == n and all(stored[i] == r["reviewer_id"] for i in r["ids"])
        # each reviewer's edits form one unbroken chain: every judgement supersedes the previous one
        for rid in ("dr-a", "dr-b"):
            chain = s._conn.execute("SELECT judgement_id, supersedes FROM judgements WHERE reviewer_id = ? "
                                    "ORDER BY judgement_id", (rid,)).fetchall()
            assert chain[0][1] is None and all(b[1] == a[0] for a, b in itertools.pairwise(chain))
        comments = {r[0] for r in s._conn.execute("SELECT reviewer_id || ':' || comment FROM judgements")}
        assert comments == {f"{rid}:write {i}" for rid in ("dr-a", "dr-b") for i in range(n)}


# ---------------------------------------------------------------------------- export


def _judge(store, item_id, reviewer, ratings, **kw):
    store.add_judgement(Judgement(item_id, reviewer, ratings, **kw))


def test_export_pairs_types_and_counts(store):
    # A "Small left effusion." B "No acute disease." C "Left pleural effusion, small."
    _judge(store, "feedback-r1-x", "dr-a", {"A": 4, "B": 1, "C": 5}, preferred_label="C",
           edited_impression="Small left pleural effusion.", edited_from_label="C")
    pairs, info = F.export_pairs(store)
    by_type = {}
    for p in pairs:
        by_type.setdefault(p["pair_type"], []).append((p["chosen"], p["rejected"]))
    assert by_type["review:edited"] == [("Small left pleural effusion.", "Left pleural effusion, small.")]
    assert sorted(by_type["review:preferred"]) == [("Left pleural effusion, small.", "No acute disease."),
                                                   ("Left pleural effusion, small.", "Small left effusion.")]
    # rating gap >= 2: A(4) > B(1), C(5) > B(1); C > B duplicates a preferred pair and is kept once
    assert by_type["review:rating"] == [("Small left effusion.", "No acute disease.")]
    assert info["pairs"] == 4 and info["skipped"] == {"duplicate pair": 1}
    assert all(p["source"] == "human:dr-a" and p["record"]["findings"] == RECORD["findings"] for p in pairs)
    assert all("impression" not in p["record"] for p in pairs)


def test_export_skips_simulated_test_split_and_contradictions(store):
    store.register_reviewer("dr-b")
    store.register_reviewer("simulated-1", "simulated")
    evaluation, key = make_item(item_id="eval-r2-x", report_id="r2", pool="eval", split="test")
    store.add_item(evaluation, key)
    _judge(store, "feedback-r1-x", "dr-a", {"A": 5, "B": 3, "C": 3})
    _judge(store, "feedback-r1-x", "dr-b", {"A": 3, "B": 5, "C": 3})  # contradicts dr-a on A vs B
    _judge(store, "feedback-r1-x", "simulated-1", {"A": 5, "B": 1, "C": 1}, preferred_label="A")
    _judge(store, "eval-r2-x", "dr-a", {"A": 5, "B": 1, "C": 1}, preferred_label="A")
    pairs, info = F.export_pairs(store, pools=("feedback", "eval"))
    a, b, c = "Small left effusion.", "No acute disease.", "Left pleural effusion, small."
    assert {(p["chosen"], p["rejected"], p["source"]) for p in pairs} == {(a, c, "human:dr-a"), (b, c, "human:dr-b")}
    assert info["skipped"] == {"contradicting pair (a>b and b>a)": 2, "simulated reviewer (include_simulated=False)": 1,
                               "test-split item (evaluation only)": 1}
    pairs, info = F.export_pairs(store, include_simulated=True)
    # the simulated reviewer's preferred A > C comes first and absorbs dr-a's identical rating pair; its A > B
    # contradicts dr-b's B > A, so both go
    assert {(p["chosen"], p["rejected"], p["source"], p["pair_type"]) for p in pairs} == {
        (a, c, "simulated:simulated-1", "review:preferred"), (b, c, "human:dr-b", "review:rating")}
    assert info["skipped"] == {"contradicting pair (a>b and b>a)": 2, "duplicate pair": 4}


def _params(tmp_path, **review):
    return config.load_params("ci-tiny", {"run": {"output_dir": str(tmp_path)}, "review": review})


def test_feedback_pairs_for_dpo_switch(tmp_path):
    params = _params(tmp_path, pairs_to_dpo=False)
    assert F.feedback_pairs_for_dpo(params) == []
    on = _params(tmp_path, pairs_to_dpo=True, pairs_include_simulated=False)
    pairs, info = F.feedback_pairs_for_dpo(on, with_info=True)
    assert pairs == [] and "no review database" in info["reason"]
    with FeedbackStore(F.review_db_path(on)) as s:
        item, key = make_item()
        s.add_item(item, key)
        s.register_reviewer("simulated-1", "simulated")
        s.register_reviewer("dr-a")
        _judge(s, item.item_id, "simulated-1", {"A": 5, "B": 1, "C": 5}, preferred_label="A")
    assert F.feedback_pairs_for_dpo(on) == []  # simulated judgements stay out of training by default
    sim = _params(tmp_path, pairs_to_dpo=True, pairs_include_simulated=True)
    assert len(F.feedback_pairs_for_dpo(sim)) == 3  # A > B, A > C (preferred); C > B (rating)


def test_busy_database_is_retried_then_reported(tmp_path):
    """A writer that finds the database locked past the busy timeout retries instead of failing."""
    import threading

    path = tmp_path / "busy.sqlite"
    with FeedbackStore(path) as s:
        item, key = make_item()
        s.add_item(item, key)
        s.register_reviewer("dr-a")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another kernel holds the write lock for 0.4 s
    release = threading.Timer(0.4, lambda: blocker.execute("COMMIT"))
    release.start()
    with FeedbackStore(path, busy_timeout_s=0.02) as s:
        jid = s.add_judgement(Judgement(item.item_id, "dr-a", {"A": 4, "B": 2, "C": 5}))
        assert s.retries > 0 and s.current_judgement(item.item_id, "dr-a")["judgement_id"] == jid
    release.join()
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with FeedbackStore(path, busy_timeout_s=0.01, max_retries=2) as s:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                s.add_judgement(Judgement(item.item_id, "dr-a", {"A": 1, "B": 1, "C": 1}))
            assert s.retries == 2
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    with FeedbackStore(path) as s:
        assert s.counts()["judgements"] == 1


# ---------------------------------------------------------------------------- hardening (issue 18)

#: Raw SQL another program (or a careless analyst) could run to rewrite a stored judgement.
REWRITES = {
    "insert or replace rating": "INSERT OR REPLACE INTO ratings (judgement_id, label, likert) VALUES (:jid, 'A', 5)",
    "replace into rating": "REPLACE INTO ratings (judgement_id, label, likert) VALUES (:jid, 'A', 5)",
    "upsert rating": "INSERT INTO ratings (judgement_id, label, likert) VALUES (:jid, 'A', 5) "
                     "ON CONFLICT (judgement_id, label) DO UPDATE SET likert = 5",
    "update rating": "UPDATE ratings SET likert = 5 WHERE judgement_id = :jid",
    "update or replace rating": "UPDATE OR REPLACE ratings SET likert = 5 WHERE judgement_id = :jid",
    "delete rating": "DELETE FROM ratings WHERE judgement_id = :jid",
    "replace judgement by id": "INSERT OR REPLACE INTO judgements (judgement_id, judgement_uid, item_id, "
                               "reviewer_id, created_utc, comment) "
                               "VALUES (:jid, 'new-uid', 'feedback-r1-x', 'dr-a', 'now', 'forged')",
    "replace judgement by uid": "INSERT OR REPLACE INTO judgements (judgement_uid, item_id, reviewer_id, created_utc, "
                                "comment) SELECT judgement_uid, item_id, reviewer_id, 'now', 'forged' FROM judgements "
                                "WHERE judgement_id = :jid",
    "replace candidate": "INSERT OR REPLACE INTO candidates (item_id, label, position, text) "
                         "VALUES ('feedback-r1-x', 'A', 0, 'forged')",
    "replace blinding": "INSERT OR REPLACE INTO blinding (item_id, label, system) "
                        "VALUES ('feedback-r1-x', 'A', 'sys1')",
    "replace item": "INSERT OR REPLACE INTO items SELECT item_id, report_id, pool, 'test', record_json, created_utc "
                    "FROM items",
    "replace reviewer": "INSERT OR REPLACE INTO reviewers (reviewer_id, kind, created_utc) "
                        "VALUES ('dr-a', 'simulated', 'now')",
    "replace migration log": "INSERT OR REPLACE INTO schema_migrations VALUES (1, 'now', 'forged')",
}


def _snapshot(path):
    conn = sqlite3.connect(path)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("items", "candidates", "blinding", "reviewers", "judgements", "ratings", "schema_migrations")}
    finally:
        conn.close()


@pytest.mark.parametrize("name", list(REWRITES))
def test_stored_judgements_cannot_be_rewritten_with_raw_sql(store, name):
    jid = store.add_judgement(Judgement("feedback-r1-x", "dr-a", {"A": 3, "B": 2, "C": 4}, comment="first"))
    before = _snapshot(store.path)
    conn = sqlite3.connect(store.path)  # another program's connection: no radimpress code in the way
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(REWRITES[name], {"jid": jid})
        conn.commit()
    finally:
        conn.close()
    assert _snapshot(store.path) == before
    assert store.current_judgement("feedback-r1-x", "dr-a")["ratings"]["A"] == 3


def test_old_stores_get_the_protection_by_migration(tmp_path, monkeypatch):
    path = tmp_path / "v2.sqlite"
    monkeypatch.setattr(F, "SCHEMA_VERSION", 2)  # a store written by the previous release
    with FeedbackStore(path) as old:
        old.add_item(*make_item())
        old.register_reviewer("dr-a")
        jid = old.add_judgement(Judgement("feedback-r1-x", "dr-a", {"A": 3, "B": 2, "C": 4}))
    monkeypatch.undo()
    conn = sqlite3.connect(path)
    conn.execute(REWRITES["replace into rating"], {"jid": jid})  # the hole v2 had: REPLACE bypasses delete triggers
    conn.commit()
    assert conn.execute("SELECT likert FROM ratings WHERE judgement_id = ? AND label = 'A'", (jid,)).fetchone() == (5,)
    conn.close()
    with FeedbackStore(path) as s:
        assert s.schema_version == 3
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            s._conn.execute(REWRITES["insert or replace rating"], {"jid": jid})


def test_corrupt_foreign_or_closed_stores_give_one_line_errors(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database, just text\n" * 200)
    foreign = tmp_path / "pacs.sqlite"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE studies (accession TEXT PRIMARY KEY, body TEXT)")
    conn.commit()
    conn.close()
    cases = [(junk, "not a SQLite database"), (foreign, "not a radimpress review store"), (tmp_path, "cannot open")]
    for path, what in cases:
        with pytest.raises(FeedbackError) as info:
            FeedbackStore(path)
        message = str(info.value)
        assert str(path) in message and what in message and "\n" not in message
    conn = sqlite3.connect(foreign)  # nothing was created in the other application's database
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["studies", "sqlite_autoindex_studies_1"]
    conn.close()
    closed = FeedbackStore(tmp_path / "fb.sqlite")
    closed.close()
    with pytest.raises(FeedbackError, match="is closed"):
        closed.counts()


def test_an_interactive_session_has_its_own_store_and_dpo_reads_it(tmp_path):
    from radimpress_lib.core import artifacts

    headless = _params(tmp_path, pairs_to_dpo=True)
    interactive = headless.override({"review": {"mode": "interactive", "session": "reader-1"}})
    session_db = artifacts.review_db_path(artifacts.review_output_params(interactive))
    assert session_db == headless.output_dir / "review_sessions" / "reader-1" / "review" / "feedback.sqlite"
    assert artifacts.review_output_params(headless) is headless  # make reproduce writes the run's own files
    with FeedbackStore(session_db) as s:
        item, key = make_item()
        s.add_item(item, key)
        s.register_reviewer("dr-a")
        _judge(s, item.item_id, "dr-a", {"A": 5, "B": 1, "C": 5}, preferred_label="A")
    assert len(F.feedback_pairs_for_dpo(interactive)) == 3 and F.feedback_pairs_for_dpo(headless) == []
