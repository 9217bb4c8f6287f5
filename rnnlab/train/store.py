"""The results store: one SQLite file (``runs.db``) with one row per run.

Columns: id (config hash), sweep, task, mixer, d_model, n_layers, lr, seed, status
("running" | "done" | "failed"), error (the failing run's traceback tail), score (primary
metric averaged over test lengths), primary_metric, higher_is_better, num_parameters,
state_size (floats per sequence at the training length), steps, wall_s, config / result /
curve (JSON: resolved config, result.json, [[step, loss], ...]), run_dir, updated, owner (the sweep that claimed
the run), variant (the sweep's extra grid axes, e.g. "model.embedding_init=gpt2": runs that differ in it are
different models to the report).
Only the sweep's parent process writes, so there is no write contention.
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

__all__ = ["Store"]

COLUMNS = {
    "id": "TEXT PRIMARY KEY", "sweep": "TEXT", "task": "TEXT", "mixer": "TEXT", "d_model": "INTEGER",
    "n_layers": "INTEGER", "lr": "REAL", "seed": "INTEGER", "status": "TEXT", "error": "TEXT", "score": "REAL",
    "primary_metric": "TEXT", "higher_is_better": "INTEGER", "num_parameters": "INTEGER", "state_size": "INTEGER",
    "steps": "INTEGER", "wall_s": "REAL", "config": "TEXT", "result": "TEXT", "curve": "TEXT", "run_dir": "TEXT",
    "updated": "TEXT", "owner": "TEXT", "variant": "TEXT",
}
DUPLICATE = "duplicate"  # status of a second stored copy of one run (Store.adopt); reports read only "done" rows
ADDED = ("owner", "variant")  # columns newer than the first stores: added to an old database on open, not required to read it


class Store:
    """``Store("runs.db")``: upsert and query run rows."""

    def __init__(self, path: str | Path, create: bool = True):
        """``create=False`` (readers such as ``rnnlab report``) opens an existing store read-only: a missing file, a
        file that is not SQLite or a database without rnnlab's runs table is a ValueError, and nothing is written."""
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise ValueError(f"results database {str(self.path)!r} does not exist (run `rnnlab sweep FILE` or `rnnlab suite` first)")
        try:
            if create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(str(self.path), timeout=60)
                cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
                self.db.execute(f"CREATE TABLE IF NOT EXISTS runs ({cols})")
                for k in set(ADDED) - {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}:
                    self.db.execute(f"ALTER TABLE runs ADD COLUMN {k} {COLUMNS[k]}")
                self.db.commit()
            else:
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
            have = {r[1] for r in self.db.execute("PRAGMA table_info(runs)")}
        except sqlite3.DatabaseError as e:
            raise ValueError(f"{str(self.path)!r} is not an rnnlab results database (SQLite says: {e})") from None
        missing = sorted(set(COLUMNS) - set(ADDED) - have)
        if missing:
            self.db.close()
            raise ValueError(f"{str(self.path)!r} is not an rnnlab results database: its runs table "
                             f"{'is missing' if not have else 'lacks the columns ' + str(missing)}")
        self.db.row_factory = sqlite3.Row

    def upsert(self, run_id: str, **fields: Any) -> None:
        fields = {k: (json.dumps(v) if k in ("config", "result", "curve") and not isinstance(v, str) else v)
                  for k, v in fields.items()}
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown column(s) {sorted(unknown)}; valid: {', '.join(COLUMNS)}")
        fields["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        cur = self.db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone()
        if cur:
            sets = ", ".join(f"{k} = ?" for k in fields)
            self.db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*fields.values(), run_id))
        else:
            keys = ["id", *fields]
            self.db.execute(f"INSERT INTO runs ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
                            (run_id, *fields.values()))
        self.db.commit()

    def claim(self, run_id: str, owner: str, alive, **fields: Any) -> bool:
        """Mark a run "running" for ``owner`` unless it is done or another live owner runs it, in one
        write transaction, so two sweeps on one database never run (or report) the same run. ``alive(owner)``
        says whether another owner still runs; a dead one's run is taken over (and resumes from its checkpoint)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            row = self.db.execute("SELECT status, owner FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row and (row["status"] == "done" or (row["status"] == "running" and row["owner"] not in (None, owner)
                                                     and alive(row["owner"]))):
                self.db.rollback()
                return False
            self.upsert(run_id, status="running", owner=owner, **fields)  # commits
            return True
        except BaseException:
            self.db.rollback()
            raise

    def adopt(self, ids: list[str], identity) -> int:
        """Give stored runs the ids they have now: a run stored under an older id whose config has identity
        ``identity(config)`` in ``ids`` (and no row of that id yet) is re-keyed, so results stored before an id
        scheme or a default changed stay found. -> number of runs re-keyed."""
        wanted, moved = set(ids), 0  # a second old row of one identity is marked DUPLICATE, not deleted
        for row in self.db.execute("SELECT id, config FROM runs").fetchall():
            if row["id"] in wanted or not row["config"]:
                continue
            try:
                new = identity(json.loads(row["config"]))
            except (ValueError, KeyError, TypeError):  # a config this version cannot read: left as it is
                continue
            if new not in wanted:
                continue
            if self.status(new) is None:
                self.db.execute("UPDATE runs SET id = ? WHERE id = ?", (new, row["id"]))
                moved += 1
            elif self.status(row["id"]) != DUPLICATE:  # the same run stored twice under older ids: counted once
                self.db.execute("UPDATE runs SET status = ?, error = ? WHERE id = ?",
                                (DUPLICATE, f"the same run as {new}", row["id"]))
        self.db.commit()
        return moved

    def status(self, run_id: str) -> str | None:
        row = self.db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row["status"] if row else None

    def rows(self, status: str | None = None, sweep: str | None = None) -> list[dict]:
        q, args = "SELECT * FROM runs WHERE 1=1", []
        if status:
            q, args = q + " AND status = ?", args + [status]
        if sweep:
            q, args = q + " AND sweep = ?", args + [sweep]
        out = []
        try:
            for r in self.db.execute(q + " ORDER BY task, mixer, d_model, lr", args):
                d = dict(r)
                for k in ("config", "result", "curve"):
                    d[k] = json.loads(d[k]) if d[k] else None
                out.append(d)
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            raise ValueError(f"results database {str(self.path)!r} is damaged: {e}") from None
        return out

    def close(self) -> None:
        self.db.close()
