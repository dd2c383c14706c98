"""SQLite persistence for the test server (one database file per server instance).

Folders, runs, artifacts and alerts are JSON documents keyed by id; metrics, events, heartbeats, artifact
bytes, run-artifact links and alert states have their own tables. One connection is shared by all server
threads and every access holds a lock, which is plenty for a test server.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import secrets
import sqlite3
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

_ALPHABET = string.ascii_letters + string.digits
_DOC_TABLES = ("folders", "runs", "artifacts", "alerts")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS folders (id TEXT PRIMARY KEY, seq INTEGER, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, seq INTEGER, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS artifacts (id TEXT PRIMARY KEY, seq INTEGER, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, seq INTEGER, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS metrics (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, name TEXT NOT NULL, step INTEGER,
    time REAL, timestamp TEXT, value REAL, is_bool INTEGER, batch INTEGER
);
CREATE INDEX IF NOT EXISTS metrics_run_name ON metrics (run_id, name);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, message TEXT, timestamp TEXT,
    log_level TEXT, batch INTEGER
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id);
CREATE TABLE IF NOT EXISTS heartbeats (seq INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT, time REAL);
CREATE TABLE IF NOT EXISTS blobs (artifact_id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS run_artifacts (
    run_id TEXT, artifact_id TEXT, category TEXT, PRIMARY KEY (run_id, artifact_id)
);
CREATE TABLE IF NOT EXISTS alert_states (
    alert_id TEXT, run_id TEXT, status TEXT, updated REAL, PRIMARY KEY (alert_id, run_id)
);
"""


def new_id() -> str:
    """22-character alphanumeric identifier, as Simvue servers hand out."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(22))


class Store:
    """Thread-safe access to one SQLite file."""

    def __init__(self, path: str | pathlib.Path) -> None:
        self.path = pathlib.Path(path)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=OFF")  # a test server: speed over durability
        self._conn.executescript(_SCHEMA)
        self._batch = 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _exec(self, sql: str, params: Iterable[Any] = ()) -> int:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Hold it (`with store.lock:`) to make several calls atomic; it is re-entrant."""
        return self._lock

    # --- documents -----------------------------------------------------------------------------------

    def insert(self, table: str, doc: dict[str, Any]) -> str:
        assert table in _DOC_TABLES
        with self._lock:
            doc = {"id": doc.get("id") or new_id(), **doc}
            seq = self._rows(f"SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM {table}")[0]["seq"]
            self._exec(f"INSERT INTO {table} (id, seq, doc) VALUES (?, ?, ?)", (doc["id"], seq, json.dumps(doc)))
            return str(doc["id"])

    def get(self, table: str, id_: str) -> dict[str, Any] | None:
        assert table in _DOC_TABLES
        rows = self._rows(f"SELECT doc FROM {table} WHERE id = ?", (id_,))
        return json.loads(rows[0]["doc"]) if rows else None

    def all(self, table: str) -> list[dict[str, Any]]:
        """Documents in creation order."""
        assert table in _DOC_TABLES
        return [json.loads(r["doc"]) for r in self._rows(f"SELECT doc FROM {table} ORDER BY seq")]

    def find(self, table: str, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        return next((doc for doc in self.all(table) if predicate(doc)), None)

    def update(self, table: str, id_: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Apply `change` to the stored document in place; returns the new document."""
        with self._lock:
            doc = self.get(table, id_)
            if doc is None:
                return None
            change(doc)
            self._exec(f"UPDATE {table} SET doc = ? WHERE id = ?", (json.dumps(doc), id_))
            return doc

    def delete(self, table: str, id_: str) -> bool:
        assert table in _DOC_TABLES
        return self._exec(f"DELETE FROM {table} WHERE id = ?", (id_,)) > 0

    # --- run data ------------------------------------------------------------------------------------

    def next_batch(self) -> int:
        with self._lock:
            self._batch += 1
            return self._batch

    def add_metrics(self, run_id: str, records: list[dict[str, Any]]) -> int:
        """Store one POST's records (one row per metric value); returns the batch number."""
        rows = []
        with self._lock:
            batch = self.next_batch()
            for record in records:
                for name, value in record["values"].items():
                    rows.append(
                        (
                            run_id,
                            name,
                            record["step"],
                            record["time"],
                            record["timestamp"],
                            float(value),
                            isinstance(value, bool),
                            batch,
                        )
                    )
            with self._transaction():  # one transaction for the whole batch
                self._conn.executemany(
                    "INSERT INTO metrics (run_id, name, step, time, timestamp, value, is_bool, batch) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
        return batch

    def metrics(self, run_id: str, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Metric values of a run in arrival order: name, value, step, time, timestamp, batch."""
        sql = "SELECT * FROM metrics WHERE run_id = ?"
        params: list[Any] = [run_id]
        if names is not None:
            names = list(names)
            sql += f" AND name IN ({','.join('?' * len(names))})"
            params += names
        return [
            {
                "name": r["name"],
                "value": bool(r["value"]) if r["is_bool"] else r["value"],
                "step": r["step"],
                "time": r["time"],
                "timestamp": r["timestamp"],
                "batch": r["batch"],
            }
            for r in self._rows(sql + " ORDER BY seq", params)
        ]

    def metric_summary(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Per metric: count, min, max, average, last value/step/time."""
        rows = self._rows(
            "SELECT name, COUNT(*) AS count, MIN(value) AS min, MAX(value) AS max, AVG(value) AS average, "
            "MAX(seq) AS last_seq FROM metrics WHERE run_id = ? GROUP BY name",
            (run_id,),
        )
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            last = self._rows("SELECT value, step, time FROM metrics WHERE seq = ?", (r["last_seq"],))[0]
            out[r["name"]] = {
                "count": r["count"],
                "min": r["min"],
                "max": r["max"],
                "average": r["average"],
                "last": last["value"],
                "step": last["step"],
                "time": last["time"],
            }
        return out

    def metric_names(self, run_ids: Iterable[str]) -> list[str]:
        ids = list(run_ids)
        rows = self._rows(
            f"SELECT DISTINCT name FROM metrics WHERE run_id IN ({','.join('?' * len(ids))}) ORDER BY name", ids
        )
        return [r["name"] for r in rows]

    def add_events(self, run_id: str, events: list[dict[str, Any]]) -> int:
        with self._lock:
            batch = self.next_batch()
            with self._transaction():
                self._conn.executemany(
                    "INSERT INTO events (run_id, message, timestamp, log_level, batch) VALUES (?, ?, ?, ?, ?)",
                    [(run_id, e["message"], e["timestamp"], e["log_level"], batch) for e in events],
                )
        return batch

    def events(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT * FROM events WHERE run_id = ? ORDER BY seq", (run_id,))
        return [
            {"message": r["message"], "timestamp": r["timestamp"], "log_level": r["log_level"], "batch": r["batch"]}
            for r in rows
        ]

    def add_heartbeat(self, run_id: str, at: float | None = None) -> None:
        self._exec("INSERT INTO heartbeats (run_id, time) VALUES (?, ?)", (run_id, at or time.time()))

    def heartbeats(self, run_id: str) -> list[float]:
        return [r["time"] for r in self._rows("SELECT time FROM heartbeats WHERE run_id = ? ORDER BY seq", (run_id,))]

    def delete_run_data(self, run_id: str) -> None:
        with self._lock:
            for table in ("metrics", "events", "heartbeats", "run_artifacts", "alert_states"):
                self._exec(f"DELETE FROM {table} WHERE run_id = ?", (run_id,))

    # --- artifacts -----------------------------------------------------------------------------------

    def put_blob(self, artifact_id: str, data: bytes) -> None:
        self._exec("INSERT OR REPLACE INTO blobs (artifact_id, data) VALUES (?, ?)", (artifact_id, data))

    def blob(self, artifact_id: str) -> bytes | None:
        rows = self._rows("SELECT data FROM blobs WHERE artifact_id = ?", (artifact_id,))
        return bytes(rows[0]["data"]) if rows else None

    def attach_artifact(self, run_id: str, artifact_id: str, category: str) -> None:
        self._exec(
            "INSERT OR REPLACE INTO run_artifacts (run_id, artifact_id, category) VALUES (?, ?, ?)",
            (run_id, artifact_id, category),
        )

    def run_artifacts(self, run_id: str) -> list[tuple[str, str]]:
        """(artifact id, category) pairs of a run, in attachment order."""
        rows = self._rows("SELECT artifact_id, category FROM run_artifacts WHERE run_id = ? ORDER BY rowid", (run_id,))
        return [(r["artifact_id"], r["category"]) for r in rows]

    def artifact_runs(self, artifact_id: str) -> list[str]:
        rows = self._rows("SELECT run_id FROM run_artifacts WHERE artifact_id = ? ORDER BY rowid", (artifact_id,))
        return [r["run_id"] for r in rows]

    def delete_artifact(self, artifact_id: str) -> bool:
        with self._lock:
            self._exec("DELETE FROM run_artifacts WHERE artifact_id = ?", (artifact_id,))
            self._exec("DELETE FROM blobs WHERE artifact_id = ?", (artifact_id,))
            return self.delete("artifacts", artifact_id)

    # --- alert states --------------------------------------------------------------------------------

    def set_alert_state(self, alert_id: str, run_id: str, status: str) -> None:
        self._exec(
            "INSERT OR REPLACE INTO alert_states (alert_id, run_id, status, updated) VALUES (?, ?, ?, ?)",
            (alert_id, run_id, status, time.time()),
        )

    def alert_state(self, alert_id: str, run_id: str) -> str | None:
        rows = self._rows("SELECT status FROM alert_states WHERE alert_id = ? AND run_id = ?", (alert_id, run_id))
        return rows[0]["status"] if rows else None

    def delete_alert(self, alert_id: str) -> bool:
        with self._lock:
            self._exec("DELETE FROM alert_states WHERE alert_id = ?", (alert_id,))
            return self.delete("alerts", alert_id)
