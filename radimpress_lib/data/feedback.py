"""Durable, append-only store of physician review judgements (SQLite, WAL mode).

What is stored
--------------
* ``items``: one report shown for review: its clinical data (never the reference
  impression: that is one of the blinded candidates), which pool it belongs to
  (``eval``: test-split reports, scored only; ``feedback``: train-split reports whose
  judgements may become training pairs) and its split.
* ``candidates``: the impressions the reviewer sees for an item, under neutral labels
  ``A``, ``B``, ``C`` ... in a seeded random order. Identical texts are shown once.
* ``blinding``: which system wrote each label (``reference``, ``sft``, ``retrieval`` ...).
  It is a separate table read only by analysis and export, never by the review widget.
* ``reviewers``: reviewer id and kind, ``human`` or ``simulated`` (a scripted reviewer
  policy; its judgements are never physician data and never feed training unless asked).
* ``judgements``: **one row per judgement** (one reviewer submitting one item): reviewer,
  UTC timestamp, preferred label, optional edited impression and the label it was edited
  from, free comment, writing client (host:pid), seconds spent; ``ratings`` holds its
  per-candidate Likert score (1-5) and error types, written in the same transaction.

Nothing is ever overwritten: triggers abort every ``UPDATE`` and ``DELETE`` of items,
candidates, blinding, reviewers, judgements and ratings, and every ``INSERT`` whose key is
already stored. The last matters because SQLite's ``INSERT OR REPLACE`` / ``REPLACE INTO``
resolve a key conflict by deleting the old row *without firing delete triggers* (unless the
connection enabled ``recursive_triggers``), so without it any SQLite client could rewrite a
rating; a ``BEFORE INSERT`` trigger runs before conflict resolution and its ``RAISE(ABORT)``
ends the statement whatever its ``OR`` clause or ``ON CONFLICT ... DO UPDATE`` says. The
protection is in the database file, so it holds for every program that opens it (only
dropping the triggers, a deliberate schema change, gets round it). A reviewer who changes their mind
appends a new judgement whose ``supersedes`` points at the previous one; the view
``current_judgements`` holds the latest judgement per (reviewer, item).

Concurrency
-----------
WAL journal (readers never block the writer), ``synchronous=FULL`` (a committed
judgement survives a power cut), a busy timeout, and every write in a
``BEGIN IMMEDIATE`` transaction retried with jittered backoff when another process holds
the lock (``SQLITE_BUSY``); each judgement carries a random ``judgement_uid`` so a retried
write can never be stored twice. ``tests/test_feedback.py`` runs two processes x 1,000
writes and counts every row; ``bench/feedback_concurrency.py`` measures the throughput.

Schema versions
---------------
``PRAGMA user_version`` holds the schema version; :data:`MIGRATIONS` upgrades a store
step by step inside one transaction (``schema_migrations`` logs each step).
v1: items, candidates, blinding, judgements, ratings, append-only triggers.
v2: ``reviewers`` table (human / simulated, back-filled from v1 judgements), judgement
``client`` and ``seconds_on_item`` columns, an index for resuming, a reviewer check.
v3: ``BEFORE INSERT`` triggers refusing a row whose key exists (``INSERT OR REPLACE``,
``REPLACE INTO`` and upserts can no longer rewrite a row), on every table including the
migration log.

Opening a file that is not a SQLite database, or a SQLite database of another application,
raises :class:`FeedbackError` naming the file (nothing is written into it).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import random
import socket
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from radimpress_lib.core.artifacts import review_db_path, review_output_params
from radimpress_lib.data.preferences import make_pair

log = logging.getLogger("radimpress.feedback")

__all__ = [
    "ERROR_TYPES",
    "MIGRATIONS",
    "POOLS",
    "SCHEMA_VERSION",
    "Candidate",
    "FeedbackError",
    "FeedbackStore",
    "Judgement",
    "ReviewItem",
    "export_pairs",
    "feedback_pairs_for_dpo",
]

#: Error types a reviewer can mark on a candidate (stored keys, in display order).
ERROR_TYPES: dict[str, str] = {
    "missed_finding": "missed finding",
    "hallucinated_finding": "hallucinated finding",
    "wrong_negation": "wrong negation",
    "wrong_laterality": "wrong laterality",
    "wrong_severity": "wrong severity",
    "style_mismatch": "style mismatch",
}

#: Item pools: ``eval`` (test split: scored, never trained on) and ``feedback`` (train split: may become pairs).
POOLS = ("eval", "feedback")

REVIEWER_KINDS = ("human", "simulated")
SIMULATED_PREFIX = "simulated"
MAX_REVIEWER_ID = 64

_APPEND_ONLY_TABLES_V1 = ("items", "candidates", "blinding", "judgements", "ratings")


def _append_only(table: str) -> list[str]:
    return [
        (f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
         f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: add a new row instead of updating'); END"),
        (f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
         f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: rows are never deleted'); END"),
    ]


_V1 = [
    """CREATE TABLE schema_migrations (
        version INTEGER PRIMARY KEY, applied_utc TEXT NOT NULL, description TEXT NOT NULL)""",
    """CREATE TABLE items (
        item_id TEXT PRIMARY KEY,
        report_id TEXT NOT NULL,
        pool TEXT NOT NULL CHECK (pool IN ('eval', 'feedback')),
        split TEXT NOT NULL,
        record_json TEXT NOT NULL,
        created_utc TEXT NOT NULL)""",
    """CREATE TABLE candidates (
        item_id TEXT NOT NULL REFERENCES items(item_id),
        label TEXT NOT NULL,
        position INTEGER NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (item_id, label))""",
    """CREATE TABLE blinding (
        item_id TEXT NOT NULL REFERENCES items(item_id),
        label TEXT NOT NULL,
        system TEXT NOT NULL,
        PRIMARY KEY (item_id, system),
        FOREIGN KEY (item_id, label) REFERENCES candidates(item_id, label))""",
    """CREATE TABLE judgements (
        judgement_id INTEGER PRIMARY KEY AUTOINCREMENT,
        judgement_uid TEXT NOT NULL UNIQUE,
        item_id TEXT NOT NULL REFERENCES items(item_id),
        reviewer_id TEXT NOT NULL CHECK (length(trim(reviewer_id)) > 0),
        created_utc TEXT NOT NULL,
        preferred_label TEXT,
        edited_impression TEXT,
        edited_from_label TEXT,
        comment TEXT,
        supersedes INTEGER REFERENCES judgements(judgement_id))""",
    """CREATE TABLE ratings (
        judgement_id INTEGER NOT NULL REFERENCES judgements(judgement_id),
        label TEXT NOT NULL,
        likert INTEGER NOT NULL CHECK (likert BETWEEN 1 AND 5),
        errors_json TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (judgement_id, label))""",
    """CREATE VIEW current_judgements AS
        SELECT j.* FROM judgements j
        WHERE j.judgement_id = (SELECT MAX(k.judgement_id) FROM judgements k
                                WHERE k.item_id = j.item_id AND k.reviewer_id = j.reviewer_id)""",
    *[stmt for table in _APPEND_ONLY_TABLES_V1 for stmt in _append_only(table)],
]

_V2 = [
    """CREATE TABLE reviewers (
        reviewer_id TEXT PRIMARY KEY CHECK (length(trim(reviewer_id)) > 0),
        kind TEXT NOT NULL CHECK (kind IN ('human', 'simulated')),
        created_utc TEXT NOT NULL)""",
    # v1 stores knew no reviewer kinds: ids starting with 'simulated' were scripted, the rest human.
    """INSERT INTO reviewers (reviewer_id, kind, created_utc)
        SELECT reviewer_id, CASE WHEN lower(reviewer_id) LIKE 'simulated%' THEN 'simulated' ELSE 'human' END,
               MIN(created_utc)
        FROM judgements GROUP BY reviewer_id""",
    "ALTER TABLE judgements ADD COLUMN client TEXT",
    "ALTER TABLE judgements ADD COLUMN seconds_on_item REAL",
    "CREATE INDEX judgements_by_reviewer ON judgements (reviewer_id, item_id, judgement_id)",
    """CREATE TRIGGER judgements_known_reviewer BEFORE INSERT ON judgements
        WHEN NOT EXISTS (SELECT 1 FROM reviewers WHERE reviewer_id = NEW.reviewer_id)
        BEGIN SELECT RAISE(ABORT, 'unknown reviewer: register the reviewer first'); END""",
    *_append_only("reviewers"),
]

#: Every key (primary or unique) of each table, as SQL conditions on ``NEW``.
_KEYS: dict[str, list[str]] = {
    "schema_migrations": ["version = NEW.version"],
    "items": ["item_id = NEW.item_id"],
    "candidates": ["item_id = NEW.item_id AND label = NEW.label"],
    "blinding": ["item_id = NEW.item_id AND system = NEW.system"],
    "judgements": ["judgement_id = NEW.judgement_id", "judgement_uid = NEW.judgement_uid"],
    "ratings": ["judgement_id = NEW.judgement_id AND label = NEW.label"],
    "reviewers": ["reviewer_id = NEW.reviewer_id"],
}


def _no_replace(table: str) -> str:
    """A trigger aborting an INSERT whose key exists, before REPLACE / upsert conflict resolution can delete the row."""
    exists = " OR ".join(f"EXISTS (SELECT 1 FROM {table} WHERE {cond})" for cond in _KEYS[table])
    return (f"CREATE TRIGGER {table}_no_replace BEFORE INSERT ON {table} WHEN {exists} "
            f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: a row with this key is stored and is never "
            "replaced (INSERT OR REPLACE, REPLACE INTO and upserts are refused)'); END")


_V3 = [_no_replace(table) for table in _KEYS]

#: version -> (description, statements). Version N upgrades a store at version N-1.
MIGRATIONS: dict[int, tuple[str, list[str]]] = {
    1: ("items, blinded candidates, judgements, ratings; append-only triggers", _V1),
    2: ("reviewers (human/simulated), judgement client and seconds_on_item, resume index", _V2),
    3: ("no INSERT OR REPLACE / REPLACE INTO / upsert over a stored key (BEFORE INSERT triggers)", _V3),
}
SCHEMA_VERSION = max(MIGRATIONS)


class FeedbackError(ValueError):
    """A judgement, item or store that cannot be accepted (the message names the field)."""


@dataclass(frozen=True)
class Candidate:
    """One impression as the reviewer sees it: a neutral label and the text."""

    label: str
    text: str


@dataclass(frozen=True)
class ReviewItem:
    """A report to review, blinded: candidates carry labels, never system names."""

    item_id: str
    report_id: str
    pool: str
    split: str
    record: dict[str, Any]
    candidates: tuple[Candidate, ...]

    @property
    def labels(self) -> list[str]:
        return [c.label for c in self.candidates]

    def text_of(self, label: str) -> str:
        for c in self.candidates:
            if c.label == label:
                return c.text
        raise FeedbackError(f"item {self.item_id}: no candidate labelled {label!r}; has {self.labels}")


@dataclass
class Judgement:
    """One reviewer's verdict on one item."""

    item_id: str
    reviewer_id: str
    ratings: dict[str, int]
    errors: dict[str, list[str]] = field(default_factory=dict)
    preferred_label: str | None = None
    edited_impression: str | None = None
    edited_from_label: str | None = None
    comment: str | None = None
    seconds_on_item: float | None = None


T = TypeVar("T")


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


def check_reviewer_id(reviewer_id: Any, kind: str = "human") -> str:
    """Validated, stripped reviewer id (required, <= 64 chars; simulated ids start with 'simulated')."""
    if not isinstance(reviewer_id, str) or not reviewer_id.strip():
        raise FeedbackError("reviewer_id is required: enter your reviewer id before reviewing")
    rid = reviewer_id.strip()
    if len(rid) > MAX_REVIEWER_ID:
        raise FeedbackError(f"reviewer_id is longer than {MAX_REVIEWER_ID} characters")
    if kind not in REVIEWER_KINDS:
        raise FeedbackError(f"reviewer kind must be one of {REVIEWER_KINDS}, got {kind!r}")
    simulated_id = rid.lower().startswith(SIMULATED_PREFIX)
    if kind == "simulated" and not simulated_id:
        raise FeedbackError(f"simulated reviewer ids must start with {SIMULATED_PREFIX!r}, got {rid!r}")
    if kind == "human" and simulated_id:
        raise FeedbackError(f"reviewer id {rid!r} is reserved for simulated reviewers (starts with {SIMULATED_PREFIX!r})")
    return rid


class FeedbackStore:
    """The review database at ``path`` (created and migrated to :data:`SCHEMA_VERSION` on open).

    Args:
        path: SQLite file (its folder is created).
        busy_timeout_s: how long SQLite itself waits for a lock before reporting busy.
        max_retries: further attempts of a write that still found the database busy.
        synchronous: ``FULL`` (default, durable against power loss) or ``NORMAL``.
        migrate: upgrade an older store (False: an older store is an error).
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0, max_retries: int = 50,
                 synchronous: str = "FULL", migrate: bool = True) -> None:
        self.path = Path(path)
        self.max_retries = max_retries
        self.retries = 0  # busy retries taken by this connection's writes
        self.client = f"{socket.gethostname()}:{os.getpid()}"
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise FeedbackError(f"synchronous must be FULL or NORMAL, got {synchronous!r}")
        self._connection: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._connection = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
            self._open(busy_timeout_s, synchronous.upper())
        except sqlite3.DatabaseError as exc:  # also OperationalError: a folder, a locked or unreadable file
            self.close()
            damaged = "not a database" in str(exc) or "malformed" in str(exc)
            raise FeedbackError(f"{self.path}: not a SQLite database (or a damaged one): {exc}; move it away or set "
                                "review.db to another file" if damaged else
                                f"{self.path}: cannot open the review store ({exc})") from None
        except (OSError, FeedbackError) as exc:
            self.close()
            raise FeedbackError(str(exc) if isinstance(exc, FeedbackError) else
                                f"{self.path}: cannot open the review store ({exc.strerror or exc})") from None
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise FeedbackError(f"{self.path}: schema version {version} is newer than this code ({SCHEMA_VERSION}); "
                                "update radimpress")
        if version < SCHEMA_VERSION:
            if not migrate:
                raise FeedbackError(f"{self.path}: schema version {version}, code needs {SCHEMA_VERSION}")
            self._write(self._migrate)

    def _open(self, busy_timeout_s: float, synchronous: str) -> None:
        conn = self._conn
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if self.schema_version == 0 and tables - {"sqlite_sequence"}:
            raise FeedbackError(f"{self.path}: not a radimpress review store (a SQLite database of another "
                                f"application, with tables {sorted(tables)}); set review.db to another file")
        mode = self._retry(lambda: conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        if str(mode).lower() != "wal":
            raise FeedbackError(f"{self.path}: could not switch to WAL journal mode (got {mode!r})")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")

    # ------------------------------------------------------------------ plumbing
    @property
    def _conn(self) -> sqlite3.Connection:
        if self._connection is None:
            raise FeedbackError(f"{self.path}: the review store is closed (re-run the notebook from its first cell "
                                "to open it again)")
        return self._connection

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._connection is None

    def close(self) -> None:
        """Close the connection (idempotent); any later use raises :class:`FeedbackError`."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> FeedbackStore:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def _retry(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.max_retries + 1):
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or attempt == self.max_retries:
                    raise
                self.retries += 1
                time.sleep(min(0.5, 0.005 * 2 ** min(attempt, 7)) * (0.5 + random.random()))
        raise AssertionError("unreachable")  # pragma: no cover

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one ``BEGIN IMMEDIATE`` transaction, retried while the database is busy."""

        def attempt() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._conn)
                self._conn.execute("COMMIT")
                return out
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

        return self._retry(attempt)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        # Re-read inside the write lock: another process may have migrated meanwhile.
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for target in range(version + 1, SCHEMA_VERSION + 1):
            description, statements = MIGRATIONS[target]
            for stmt in statements:
                conn.execute(stmt)
            conn.execute("INSERT INTO schema_migrations (version, applied_utc, description) VALUES (?, ?, ?)",
                         (target, _utc_now(), description))
            conn.execute(f"PRAGMA user_version = {target}")
            log.info("%s: schema migrated to v%d (%s)", self.path.name, target, description)

    # ------------------------------------------------------------------ writes
    def register_reviewer(self, reviewer_id: str, kind: str = "human") -> str:
        """Add a reviewer (idempotent); a known id with another kind is an error."""
        rid = check_reviewer_id(reviewer_id, kind)

        def write(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT kind FROM reviewers WHERE reviewer_id = ?", (rid,)).fetchone()
            if row is None:
                conn.execute("INSERT INTO reviewers (reviewer_id, kind, created_utc) VALUES (?, ?, ?)",
                             (rid, kind, _utc_now()))
            elif row["kind"] != kind:
                raise FeedbackError(f"reviewer {rid!r} is registered as {row['kind']}, not {kind}")

        self._write(write)
        return rid

    def add_item(self, item: ReviewItem, systems: Mapping[str, Sequence[str]]) -> bool:
        """Store an item, its candidates and (separately) its label -> systems key.

        Idempotent: an item id already stored must have the same candidates (ids are content
        hashes, see :func:`radimpress_lib.apps.review.build_item`). Returns True when it was new.
        """
        if item.pool not in POOLS:
            raise FeedbackError(f"item {item.item_id}: pool must be one of {POOLS}, got {item.pool!r}")
        if item.pool == "feedback" and item.split == "test":
            raise FeedbackError(f"item {item.item_id} (report {item.report_id}): test-split reports go to the "
                                "'eval' pool only; feedback items may become training pairs")
        if set(systems) != set(item.labels):
            raise FeedbackError(f"item {item.item_id}: blinding key labels {sorted(systems)} != candidates {item.labels}")
        for c in item.candidates:
            if not c.text.strip():
                raise FeedbackError(f"item {item.item_id}: candidate {c.label} is empty")

        def write(conn: sqlite3.Connection) -> bool:
            stored = conn.execute("SELECT label, text FROM candidates WHERE item_id = ? ORDER BY position",
                                  (item.item_id,)).fetchall()
            if stored:
                if [(r["label"], r["text"]) for r in stored] != [(c.label, c.text) for c in item.candidates]:
                    raise FeedbackError(f"item {item.item_id}: stored with other candidates")
                return False
            conn.execute("INSERT INTO items (item_id, report_id, pool, split, record_json, created_utc) "
                         "VALUES (?, ?, ?, ?, ?, ?)",
                         (item.item_id, item.report_id, item.pool, item.split,
                          json.dumps(item.record, ensure_ascii=False, sort_keys=True), _utc_now()))
            conn.executemany("INSERT INTO candidates (item_id, label, position, text) VALUES (?, ?, ?, ?)",
                             [(item.item_id, c.label, i, c.text) for i, c in enumerate(item.candidates)])
            conn.executemany("INSERT INTO blinding (item_id, label, system) VALUES (?, ?, ?)",
                             [(item.item_id, label, s) for label, names in systems.items() for s in names])
            return True

        return self._write(write)

    def add_judgement(self, judgement: Judgement, *, uid: str | None = None) -> int:
        """Append a judgement (superseding the reviewer's previous one on the item); returns its id."""
        j = judgement
        item = self.item(j.item_id)
        labels = item.labels
        where = f"judgement on item {j.item_id} by {j.reviewer_id!r}"
        if set(j.ratings) != set(labels):
            raise FeedbackError(f"{where}: field 'ratings' must rate every candidate {labels}, got {sorted(j.ratings)}")
        for label, value in j.ratings.items():
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
                raise FeedbackError(f"{where}: field 'ratings' [{label}] must be an integer 1-5, got {value!r}")
        for label, errs in j.errors.items():
            if label not in labels:
                raise FeedbackError(f"{where}: field 'errors' names unknown candidate {label!r}")
            bad = [e for e in errs if e not in ERROR_TYPES]
            if bad:
                raise FeedbackError(f"{where}: field 'errors' [{label}] has unknown error types {bad}; "
                                    f"known: {list(ERROR_TYPES)}")
        for name in ("preferred_label", "edited_from_label"):
            value = getattr(j, name)
            if value is not None and value not in labels:
                raise FeedbackError(f"{where}: field {name!r} must be one of {labels} or empty, got {value!r}")
        edited = j.edited_impression.strip() if j.edited_impression and j.edited_impression.strip() else None
        if j.edited_from_label is not None and edited is None:
            raise FeedbackError(f"{where}: field 'edited_from_label' set without an edited impression")
        uid = uid or uuid.uuid4().hex

        def write(conn: sqlite3.Connection) -> int:
            if conn.execute("SELECT 1 FROM reviewers WHERE reviewer_id = ?", (j.reviewer_id,)).fetchone() is None:
                raise FeedbackError(f"{where}: unknown reviewer; call register_reviewer first")
            done = conn.execute("SELECT judgement_id FROM judgements WHERE judgement_uid = ?", (uid,)).fetchone()
            if done is not None:  # a retried write that had already committed
                return int(done["judgement_id"])
            prev = conn.execute("SELECT MAX(judgement_id) FROM judgements WHERE item_id = ? AND reviewer_id = ?",
                                (j.item_id, j.reviewer_id)).fetchone()[0]
            cur = conn.execute(
                "INSERT INTO judgements (judgement_uid, item_id, reviewer_id, created_utc, preferred_label, "
                "edited_impression, edited_from_label, comment, supersedes, client, seconds_on_item) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uid, j.item_id, j.reviewer_id, _utc_now(), j.preferred_label, edited, j.edited_from_label,
                 (j.comment or "").strip() or None, prev, self.client, j.seconds_on_item))
            jid = int(cur.lastrowid)
            conn.executemany("INSERT INTO ratings (judgement_id, label, likert, errors_json) VALUES (?, ?, ?, ?)",
                             [(jid, label, int(j.ratings[label]), json.dumps(sorted(set(j.errors.get(label, [])))))
                              for label in labels])
            return jid

        return self._write(write)

    # ------------------------------------------------------------------ reads (blind)
    def item(self, item_id: str) -> ReviewItem:
        row = self._conn.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
        if row is None:
            raise FeedbackError(f"{self.path.name}: no item {item_id!r}")
        cands = self._conn.execute("SELECT label, text FROM candidates WHERE item_id = ? ORDER BY position",
                                   (item_id,)).fetchall()
        return ReviewItem(item_id=row["item_id"], report_id=row["report_id"], pool=row["pool"], split=row["split"],
                          record=json.loads(row["record_json"]),
                          candidates=tuple(Candidate(r["label"], r["text"]) for r in cands))

    def item_ids(self, pool: str | None = None) -> list[str]:
        sql = "SELECT item_id FROM items" + (" WHERE pool = ?" if pool else "") + " ORDER BY rowid"
        return [r[0] for r in self._conn.execute(sql, (pool,) if pool else ())]

    def reviewer_kind(self, reviewer_id: str) -> str | None:
        row = self._conn.execute("SELECT kind FROM reviewers WHERE reviewer_id = ?", (reviewer_id,)).fetchone()
        return None if row is None else row["kind"]

    def reviewed_item_ids(self, reviewer_id: str) -> set[str]:
        """Items the reviewer has judged at least once (resume skips them)."""
        return {r[0] for r in self._conn.execute("SELECT DISTINCT item_id FROM judgements WHERE reviewer_id = ?",
                                                 (reviewer_id,))}

    def current_judgement(self, item_id: str, reviewer_id: str) -> dict[str, Any] | None:
        rows = self.current_judgements(reviewer_id=reviewer_id, item_id=item_id)
        return rows[0] if rows else None

    def current_judgements(self, *, reviewer_id: str | None = None, item_id: str | None = None,
                           pool: str | None = None) -> list[dict[str, Any]]:
        """Latest judgement per (reviewer, item), with ``ratings`` {label: 1-5} and ``errors`` {label: [...]}."""
        sql = ("SELECT c.*, i.report_id, i.pool, i.split, r.kind AS reviewer_kind FROM current_judgements c "
               "JOIN items i USING (item_id) JOIN reviewers r USING (reviewer_id) WHERE 1 = 1")
        args: list[Any] = []
        for column, value in (("c.reviewer_id", reviewer_id), ("c.item_id", item_id), ("i.pool", pool)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        out = []
        for row in self._conn.execute(sql + " ORDER BY c.judgement_id", args).fetchall():
            d = dict(row)
            ratings = self._conn.execute("SELECT label, likert, errors_json FROM ratings WHERE judgement_id = ?",
                                         (d["judgement_id"],)).fetchall()
            d["ratings"] = {r["label"]: r["likert"] for r in ratings}
            d["errors"] = {r["label"]: json.loads(r["errors_json"]) for r in ratings}
            out.append(d)
        return out

    def counts(self) -> dict[str, int]:
        q = self._conn.execute
        return {
            "items": q("SELECT COUNT(*) FROM items").fetchone()[0],
            "judgements": q("SELECT COUNT(*) FROM judgements").fetchone()[0],
            "current_judgements": q("SELECT COUNT(*) FROM current_judgements").fetchone()[0],
            "superseded_judgements": q("SELECT COUNT(*) FROM judgements WHERE judgement_id NOT IN "
                                       "(SELECT judgement_id FROM current_judgements)").fetchone()[0],
            "ratings": q("SELECT COUNT(*) FROM ratings").fetchone()[0],
            "reviewers_human": q("SELECT COUNT(*) FROM reviewers WHERE kind = 'human'").fetchone()[0],
            "reviewers_simulated": q("SELECT COUNT(*) FROM reviewers WHERE kind = 'simulated'").fetchone()[0],
        }

    # ------------------------------------------------------------------ reads (unblinded: analysis/export only)
    def unblind(self, item_id: str) -> dict[str, list[str]]:
        """label -> systems that wrote that text. Never pass this to the review widget."""
        key: dict[str, list[str]] = {}
        for r in self._conn.execute("SELECT label, system FROM blinding WHERE item_id = ? ORDER BY label, system",
                                    (item_id,)):
            key.setdefault(r["label"], []).append(r["system"])
        return key

    def rating_rows(self, *, pool: str | None = "eval") -> list[dict[str, Any]]:
        """One row per (current judgement, candidate, system) for analysis."""
        rows = []
        for j in self.current_judgements(pool=pool):
            key = self.unblind(j["item_id"])
            for label, likert in j["ratings"].items():
                errs = set(j["errors"].get(label, []))
                for system in key.get(label, []):
                    rows.append({
                        "item_id": j["item_id"], "report_id": j["report_id"], "pool": j["pool"],
                        "reviewer_id": j["reviewer_id"], "reviewer_kind": j["reviewer_kind"],
                        "label": label, "system": system, "likert": likert,
                        "preferred": j["preferred_label"] == label,
                        **{e: e in errs for e in ERROR_TYPES},
                    })
        return rows


# ---------------------------------------------------------------------------- export to preference pairs


def export_pairs(store: FeedbackStore, *, pools: Sequence[str] = ("feedback",), include_simulated: bool = False,
                 min_rating_gap: int = 2) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Preference pairs from the current judgements, in :mod:`radimpress_lib.data.preferences` format.

    * ``review:edited``: the edited impression > the candidate it was edited from (every
      candidate when no source label was recorded);
    * ``review:preferred``: the preferred candidate > each other candidate not rated higher;
    * ``review:rating``: candidate a > candidate b when a's rating exceeds b's by ``min_rating_gap``.

    Test-split items are never exported (they are evaluation data). Duplicate pairs (same
    report, chosen and rejected text) are kept once, with the most specific type first
    (edited, preferred, rating); pairs that contradict each other across reviewers (a > b and
    b > a) are dropped. Every skip is counted by reason in the returned info.
    """

    if min_rating_gap < 1:
        raise FeedbackError(f"min_rating_gap must be >= 1, got {min_rating_gap}")
    skipped: Counter[str] = Counter()
    raw: list[dict[str, Any]] = []
    judgements_used = 0
    for pool in pools:
        for j in store.current_judgements(pool=pool):
            if j["split"] == "test":
                skipped["test-split item (evaluation only)"] += 1
                continue
            if j["reviewer_kind"] == "simulated" and not include_simulated:
                skipped["simulated reviewer (include_simulated=False)"] += 1
                continue
            judgements_used += 1
            item = store.item(j["item_id"])
            record = {"report_id": item.report_id, **item.record}
            source = f"{j['reviewer_kind']}:{j['reviewer_id']}"
            ratings = j["ratings"]

            def add(chosen: str, rejected: str, kind: str, record: dict = record, source: str = source) -> None:
                if chosen.strip() == rejected.strip():
                    skipped[f"{kind}: identical texts"] += 1
                    return
                raw.append(make_pair(record, chosen, rejected, f"review:{kind}", source))

            edit = j["edited_impression"]
            if edit:
                sources = [j["edited_from_label"]] if j["edited_from_label"] else item.labels
                for label in sources:
                    add(edit, item.text_of(label), "edited")
            pref = j["preferred_label"]
            if pref:
                for label in item.labels:
                    if label == pref:
                        continue
                    if ratings[label] > ratings[pref]:
                        skipped["preferred: other candidate rated higher"] += 1
                        continue
                    add(item.text_of(pref), item.text_of(label), "preferred")
            for a in item.labels:
                for b in item.labels:
                    if a != b and ratings[a] - ratings[b] >= min_rating_gap:
                        add(item.text_of(a), item.text_of(b), "rating")

    order = {"review:edited": 0, "review:preferred": 1, "review:rating": 2}
    raw.sort(key=lambda p: order[p["pair_type"]])  # stable: input order kept within a type
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for p in raw:
        key = (p["report_id"], p["chosen"].strip(), p["rejected"].strip())
        if key in seen:
            skipped["duplicate pair"] += 1
            continue
        seen.add(key)
        unique.append(p)
    conflicts = {k for k in seen if (k[0], k[2], k[1]) in seen}
    pairs = [p for p in unique if (p["report_id"], p["chosen"].strip(), p["rejected"].strip()) not in conflicts]
    if len(pairs) < len(unique):
        skipped["contradicting pair (a>b and b>a)"] += len(unique) - len(pairs)
    info = {"pairs": len(pairs), "pair_types": dict(sorted(Counter(p["pair_type"] for p in pairs).items())),
            "judgements_used": judgements_used, "skipped": dict(sorted(skipped.items())),
            "include_simulated": include_simulated, "min_rating_gap": min_rating_gap, "pools": list(pools)}
    return pairs, info


def feedback_pairs_for_dpo(params: Any, *, with_info: bool = False) -> Any:
    """Pairs from physician review that the next DPO run adds (notebook 04).

    Empty unless ``review.pairs_to_dpo`` is true and the run's review database exists (with
    ``review.mode: interactive``, the store of session ``review.session``, see
    :func:`radimpress_lib.core.artifacts.review_output_params`).
    Simulated reviewers are included only with ``review.pairs_include_simulated``.
    Returns the pair list, or ``(pairs, info)`` with ``with_info=True``.
    """
    r = params.review
    db = review_db_path(review_output_params(params))
    info: dict[str, Any] = {"enabled": bool(r.pairs_to_dpo), "db": str(Path(r.db)), "pairs": 0}
    pairs: list[dict[str, Any]] = []
    if not r.pairs_to_dpo:
        info["reason"] = "review.pairs_to_dpo is false"
    elif not db.is_file():
        info["reason"] = f"no review database at {r.db} (run notebook 06 first)"
    else:
        with FeedbackStore(db) as store:
            pairs, export = export_pairs(store, include_simulated=r.pairs_include_simulated,
                                         min_rating_gap=r.pairs_min_rating_gap)
        info |= export
    log.info("review feedback pairs for DPO: %d (%s)", len(pairs), info.get("reason") or info.get("pair_types"))
    return (pairs, info) if with_info else pairs


def concurrent_writer(path: str, reviewer_id: str, item_id: str, n_writes: int, start_at: float | None = None,
                      synchronous: str = "FULL") -> dict[str, Any]:
    """Append ``n_writes`` judgements by ``reviewer_id`` on ``item_id`` (one transaction each).

    Used by the two-process test and ``bench/feedback_concurrency.py``; runs in a child
    process. ``start_at`` (``time.time()``) lines the writers up so they really overlap.
    Returns the judgement ids written, wall seconds and busy retries.
    """
    with FeedbackStore(path, synchronous=synchronous) as store:
        item = store.item(item_id)
        if start_at is not None:
            time.sleep(max(0.0, start_at - time.time()))
        t0, started = time.perf_counter(), time.time()
        ids = []
        for i in range(n_writes):
            likert = 1 + i % 5
            ids.append(store.add_judgement(Judgement(
                item_id=item_id, reviewer_id=reviewer_id, ratings={lab: likert for lab in item.labels},
                errors={item.labels[0]: ["style_mismatch"]} if i % 2 else {}, comment=f"write {i}")))
        wall = time.perf_counter() - t0
        return {"reviewer_id": reviewer_id, "ids": ids, "wall_s": wall, "retries": store.retries,
                "started": started, "finished": time.time(), "writes_per_s": n_writes / wall if wall > 0 else float("inf")}
