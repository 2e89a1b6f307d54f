"""Durable round state: SQLite for the ledger, files for envelopes.

Layout of the state directory::

    state.db                       silos, rounds, accepted uploads
    rounds/00003/clinic-a.fshe     an accepted upload (renamed into place before its row commits)
    rounds/00003/aggregate.fshe    the round's aggregate (written before the round's close commits)
    unlearning/00000/aggregate.fshe  a published unlearning (written before its row commits)

A crash at any point leaves either a committed row with its file, or a stray file
without a row, which is ignored: an upload is accepted exactly when its row exists.
Every file and its directory are fsynced before the row that names it commits, so a
committed row never points at a file a power cut could lose. One process at a time
holds ``state.lock`` (an exclusive ``flock``): a second aggregator on the same volume
refuses to start instead of splitting rounds with the first.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS silos (
    name TEXT PRIMARY KEY, samples INTEGER NOT NULL, vector_size INTEGER NOT NULL, layout TEXT NOT NULL,
    joined_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY, opened_at REAL NOT NULL, closed_at REAL, contributors TEXT, weight_sum REAL,
    aggregate_s REAL);
CREATE TABLE IF NOT EXISTS withdrawals (
    silo TEXT PRIMARY KEY, round INTEGER NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
    round INTEGER NOT NULL, silo TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
    metadata TEXT NOT NULL, received_at REAL NOT NULL, PRIMARY KEY (round, silo));
CREATE TABLE IF NOT EXISTS pending_unlearnings (
    version INTEGER PRIMARY KEY, silo TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
    audit TEXT NOT NULL, received_at REAL NOT NULL, approvals TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS unlearnings (
    version INTEGER PRIMARY KEY, silo TEXT NOT NULL, sha256 TEXT NOT NULL, bytes INTEGER NOT NULL,
    adapter_before INTEGER NOT NULL, audit TEXT NOT NULL, received_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class UploadRow:
    round: int
    silo: str
    sha256: str
    bytes: int
    metadata: dict
    path: Path


class StateLocked(RuntimeError):
    """Another process holds the state directory."""


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _lock(root: Path) -> int:
    fd = os.open(root / "state.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateLocked(f"state directory {root} is in use by another aggregator (it holds {root / 'state.lock'}); "
                          "only one aggregator may run per state volume") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


class Store:
    def __init__(self, state_dir: str | Path):
        self.root = Path(state_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = _lock(self.root)
        self._db = sqlite3.connect(self.root / "state.db", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._lock = threading.Lock()

    def round_dir(self, round: int) -> Path:
        path = self.root / "rounds" / f"{round:05d}"
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            fsync_dir(path.parent)
        return path

    def upload_path(self, round: int, silo: str) -> Path:
        return self.round_dir(round) / f"{silo}.fshe"

    def aggregate_path(self, round: int) -> Path:
        return self.round_dir(round) / "aggregate.fshe"

    def _write(self, sql: str, args: tuple) -> None:
        self._transaction([(sql, args)])

    def _transaction(self, statements: list[tuple[str, tuple]]) -> None:
        """Run ``statements`` as one transaction: all of them commit, or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # silos
    def add_silo(self, name: str, samples: int, vector_size: int, layout: str) -> None:
        self._write("INSERT OR REPLACE INTO silos VALUES (?, ?, ?, ?, ?)", (name, samples, vector_size, layout, time.time()))

    def silos(self) -> dict[str, tuple[int, int, str]]:
        return {n: (s, v, lay) for n, s, v, lay in self._read("SELECT name, samples, vector_size, layout FROM silos")}

    # rounds
    def open_round(self, round: int) -> None:
        self._write("INSERT OR IGNORE INTO rounds (round, opened_at) VALUES (?, ?)", (round, time.time()))

    def close_round(self, round: int, contributors: list[str], weight_sum: float, aggregate_s: float,
                    open_next: bool = False) -> None:
        """Close ``round`` and, with ``open_next``, open the next one in the same transaction."""
        now = time.time()
        statements: list[tuple[str, tuple]] = [("UPDATE rounds SET closed_at = ?, contributors = ?, weight_sum = ?, aggregate_s = ? WHERE round = ?",
                       (now, json.dumps(contributors), weight_sum, aggregate_s, round))]
        if open_next:
            statements.append(("INSERT OR IGNORE INTO rounds (round, opened_at) VALUES (?, ?)", (round + 1, now)))
        self._transaction(statements)

    def rounds_page(self, start: int, limit: int) -> list[dict]:
        """Rounds ``start`` .. ``start + limit - 1`` (an indexed range: cost independent of how many rounds exist)."""
        rows = self._read("SELECT round, opened_at, closed_at, contributors, weight_sum, aggregate_s FROM rounds "
                          "WHERE round >= ? ORDER BY round LIMIT ?", (start, limit))
        return [{"round": r, "opened_at": o, "closed_at": c, "contributors": json.loads(cs) if cs else None,
                 "weight_sum": w, "aggregate_s": a} for r, o, c, cs, w, a in rows]

    def round_row(self, round: int) -> dict | None:
        rows = self._read("SELECT round, opened_at, closed_at, contributors, weight_sum, aggregate_s FROM rounds WHERE round = ?",
                          (round,))
        return next(({"round": r, "opened_at": o, "closed_at": c, "contributors": json.loads(cs) if cs else None,
                      "weight_sum": w, "aggregate_s": a} for r, o, c, cs, w, a in rows), None)

    def rounds(self) -> list[dict]:
        rows = self._read("SELECT round, opened_at, closed_at, contributors, weight_sum, aggregate_s FROM rounds ORDER BY round")
        return [
            {"round": r, "opened_at": o, "closed_at": c, "contributors": json.loads(cs) if cs else None, "weight_sum": w, "aggregate_s": a}
            for r, o, c, cs, w, a in rows
        ]

    # withdrawals
    def add_withdrawal(self, silo: str, round: int, reason: str) -> None:
        self._write("INSERT OR IGNORE INTO withdrawals VALUES (?, ?, ?, ?)", (silo, round, reason, time.time()))

    def withdrawn(self) -> dict[str, str]:
        return dict(self._read("SELECT silo, reason FROM withdrawals ORDER BY at"))

    # uploads
    def add_upload(self, round: int, silo: str, sha256: str, size: int, metadata: dict) -> None:
        self._write("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)", (round, silo, sha256, size, json.dumps(metadata), time.time()))

    def remove_upload(self, round: int, silo: str) -> None:
        """Forget an upload whose file is lost or torn (quarantined at start); the silo may upload it again."""
        self._write("DELETE FROM uploads WHERE round = ? AND silo = ?", (round, silo))

    def uploads(self, round: int) -> list[UploadRow]:
        rows = self._read("SELECT round, silo, sha256, bytes, metadata FROM uploads WHERE round = ? ORDER BY received_at", (round,))
        return [UploadRow(r, s, h, b, json.loads(m), self.upload_path(r, s)) for r, s, h, b, m in rows]

    # unlearnings: a silo's replacement of the global adapter, published like an aggregate
    def unlearning_dir(self, version: int) -> Path:
        path = self.root / "unlearning" / f"{version:05d}"
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            fsync_dir(path.parent)
        return path

    def add_unlearning(self, version: int, silo: str, sha256: str, size: int, adapter_before: int, audit: dict) -> None:
        self._write("INSERT INTO unlearnings VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (version, silo, sha256, size, adapter_before, json.dumps(audit), time.time()))

    def pending_dir(self, version: int) -> Path:
        path = self.root / "unlearning" / "pending" / f"{version:05d}"
        if not path.is_dir():
            path.mkdir(parents=True, exist_ok=True)
            fsync_dir(path.parent)
        return path

    def add_pending_unlearning(self, version: int, silo: str, sha256: str, size: int, audit: dict) -> None:
        self._write("INSERT INTO pending_unlearnings VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (version, silo, sha256, size, json.dumps(audit), time.time(), "[]"))

    def approve_pending(self, version: int, silo: str) -> None:
        rows = self._read("SELECT approvals FROM pending_unlearnings WHERE version = ?", (version,))
        approvals = sorted(set(json.loads(rows[0][0])) | {silo})
        self._write("UPDATE pending_unlearnings SET approvals = ? WHERE version = ?", (json.dumps(approvals), version))

    def pending_unlearnings(self) -> list[dict]:
        rows = self._read("SELECT version, silo, sha256, bytes, audit, received_at, approvals FROM pending_unlearnings ORDER BY version")
        return [{"version": v, "silo": s, "sha256": h, "bytes": b, "audit": json.loads(j), "received_at": t, "approvals": json.loads(a)}
                for v, s, h, b, j, t, a in rows]

    def publish_pending(self, version: int, adapter_before: int) -> None:
        """A pending unlearning becomes published (one transaction: it is pending or published, never both)."""
        row = next(r for r in self.pending_unlearnings() if r["version"] == version)
        self._transaction([
            ("INSERT INTO unlearnings VALUES (?, ?, ?, ?, ?, ?, ?)",
             (version, row["silo"], row["sha256"], row["bytes"], adapter_before, json.dumps(row["audit"]), time.time())),
            ("DELETE FROM pending_unlearnings WHERE version = ?", (version,)),
        ])

    def unlearnings(self) -> list[dict]:
        rows = self._read("SELECT version, silo, sha256, bytes, adapter_before, audit, received_at FROM unlearnings ORDER BY version")
        return [{"version": v, "silo": s, "sha256": h, "bytes": b, "adapter_before": a, "audit": json.loads(j), "received_at": t}
                for v, s, h, b, a, j, t in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
