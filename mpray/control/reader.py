"""Reading a session's control store: every rank's file, as Ray's state API shapes.

Data flow::

    state API / timeline / CLI / report ─ Reader(session) ─ sync() (a running session:
        this process's events written, the writer caught up) ─▶ each rank's store.db
        (read-only) ─ rows ─▶ records with Ray's field names ─ filters, limit ─▶ caller

A session that is over reads the same way: its files stay (sessions.py).
"""

from __future__ import annotations

import json
import operator
import os
import sqlite3
import time

from .. import _global
from . import sessions
from .recorder import FLUSH_S, REC
from .sessions import SYNC

SYNC_TIMEOUT_S = 3.0
_RANK_OF_STATE = {"PENDING": 0, "RUNNING": 1, "FINISHED": 2, "FAILED": 2}


class StateRecord(dict):
    """One row of the state API: a dict whose keys are also attributes (Ray returns
    dataclasses; both ``t.state`` and ``t["state"]`` work here)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _ms(t):
    return None if t is None else int(t * 1000)


def _hex(i):
    """A stored id (a signed 64-bit integer) as Ray shows ids: hex."""
    return None if i is None else format(i & 0xFFFFFFFFFFFFFFFF, "016x")


def session_dir(address: str | None = None) -> str:
    """The session a reader means: ``address`` (a session directory or name), this
    program's (driver or worker), or the newest one (``MPRAY_LOG_DIR`` or per user)."""
    if address not in (None, "auto", "local"):
        return sessions.find(address)
    s = _global.session
    if s is not None:
        return s.session_dir
    info = _global.node_info
    if _global.client is not None and info and info.get("session_dir"):
        return info["session_dir"]  # (in a worker)
    return sessions.find(None)


def open_reader(address: str | None = None, sync: bool = True) -> "Reader":
    r = Reader(session_dir(address))
    if sync:
        r.sync()
    return r


def _ask(dirs: list) -> list:
    """Ask the writers of these node directories for a pass now (the request files)."""
    asked = []
    for d in dirs:
        path = os.path.join(d, "spool", f"{SYNC}{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            asked.append(path)
        except OSError:
            continue  # (a finished rank, a store not ours to write: read as it is)
    return asked


def _unask(asked: list) -> None:
    for p in asked:  # (answered, or a writer too slow to answer: do not leave it)
        try:
            os.unlink(p)
        except OSError:
            pass


class Reader:
    def __init__(self, session: str) -> None:
        self.session = session
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        asked: list = []
        while True:
            dirs = sessions.node_dirs(session)
            self.dirs = [d for d in dirs if os.path.exists(os.path.join(d, sessions.STORE))]
            # (a session just started: a writer makes its file at its first pass with
            # work to do, a busy session's writer when asked; every rank's is read)
            missing = [d for d in dirs if d not in self.dirs
                       and os.path.isdir(os.path.join(d, "spool"))]
            if not missing or time.monotonic() > deadline:
                break
            if not asked:
                asked = _ask(missing)
            time.sleep(0.02)
        _unask(asked)
        if not self.dirs:
            raise LookupError(f"{session} has no control store (was it run with "
                              "MPRAY_CONTROL_STORE=0?)")

    # ------------------------------------------------------------------ freshness
    def sync(self) -> None:
        """In a running session: wait until what happened before this call is in the
        store (this process's events now, workers' within a flush, then a writer's pass
        asked for: a busy session's writer waits otherwise)."""
        if not sessions.is_running(self.session):
            return
        if REC.on:
            REC.flush()
        time.sleep(FLUSH_S + 0.05)  # (every process's recorder has flushed since)
        asked = _ask(self.dirs)
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while time.monotonic() < deadline and any(os.path.exists(p) for p in asked):
            time.sleep(0.02)
        _unask(asked)

    # ------------------------------------------------------------------ rows
    def rows(self, table: str, order: str | None = None) -> list[dict]:
        out: list[dict] = []
        for d in self.dirs:
            path = os.path.join(d, sessions.STORE)
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            except sqlite3.Error:
                continue
            try:
                conn.row_factory = sqlite3.Row
                q = f"SELECT * FROM {table}" + (f" ORDER BY {order}" if order else "")
                out.extend(dict(r) for r in conn.execute(q))
            except sqlite3.Error:
                pass  # (a store being created: no tables yet)
            finally:
                conn.close()
        return out

    # ------------------------------------------------------------------ Ray's shapes
    def nodes(self) -> list[StateRecord]:
        out = []
        for r in self.rows("nodes", "rank"):
            out.append(StateRecord(
                node_id=r["node_id"], node_ip="127.0.0.1", node_name=r["host"],
                is_head_node=r["rank"] == 0, state="DEAD" if r["ended"] else "ALIVE",
                resources_total=json.loads(r["resources"] or "{}"), labels={},
                rank=r["rank"], pid=r["pid"], start_time_ms=_ms(r["started"]),
                end_time_ms=_ms(r["ended"])))
        return out

    def workers(self) -> list[StateRecord]:
        return [StateRecord(
            worker_id=f"{r['rank']}:{r['pid']}", is_alive=r["ended"] is None,
            worker_type="WORKER", exit_type=None if r["ended"] is None else
            ("INTENDED_SYSTEM_EXIT" if r["exit_cause"] == "the session ended" or
             (r["exit_cause"] or "").endswith("code 0") else "SYSTEM_ERROR"),
            node_id=r["node_id"], ip="127.0.0.1", pid=r["pid"], rank=r["rank"],
            exit_detail=r["exit_cause"], worker_launch_time_ms=_ms(r["started"]),
            start_time_ms=_ms(r["started"]), end_time_ms=_ms(r["ended"]))
            for r in self.rows("workers", "started")]

    def task_rows(self) -> list[dict]:
        """Each task once: under MPI its owner's rank records its submission and the
        rank that ran it its run; the two rows are one task."""
        rows = self.rows("tasks", "rowid")
        if len(self.dirs) == 1:
            return rows
        merged: dict = {}
        for r in rows:
            have = merged.get(r["task_id"])
            if have is None:
                merged[r["task_id"]] = r
                continue
            ran, sub = (r, have) if _RANK_OF_STATE.get(r["state"], 0) >= \
                _RANK_OF_STATE.get(have["state"], 0) else (have, r)
            merged[r["task_id"]] = {k: ran[k] if ran[k] is not None else sub[k] for k in ran}
        return list(merged.values())

    def tasks(self) -> list[StateRecord]:
        return [StateRecord(
            task_id=_hex(r["task_id"]), attempt_number=max(0, (r["attempts"] or 1) - 1),
            name=r["name"], state=r["state"], job_id="01000000", actor_id=_hex(r["actor_id"]),
            type=r["type"] or "NORMAL_TASK", func_or_class_name=r["name"],
            parent_task_id=_hex(r["parent_task_id"]), node_id=r["node_id"],
            worker_id=None if r["worker_pid"] is None else f"{r['rank']}:{r['worker_pid']}",
            worker_pid=r["worker_pid"], rank=r["rank"], error_type=r["error_type"],
            error_message=r["error_message"], language="PYTHON",
            creation_time_ms=_ms(r["submitted"]), start_time_ms=_ms(r["started"]),
            end_time_ms=_ms(r["finished"]), owner_pid=r["owner_pid"])
            for r in self.task_rows()]

    def actors(self) -> list[StateRecord]:
        return [StateRecord(
            actor_id=r["actor_id"], class_name=r["class_name"], state=r["state"],
            job_id="01000000", name=r["name"] or "", node_id=r["node_id"], pid=r["pid"],
            rank=r["rank"], ray_namespace=r["namespace"], num_restarts=r["restarts"] or 0,
            death_cause=r["death_cause"], repr_name=r["class_name"],
            start_time_ms=_ms(r["created"]), end_time_ms=_ms(r["ended"]))
            for r in self.rows("actors", "rowid")]

    def usage(self) -> list[dict]:
        """Each node's resources, store and workers in use over time (wall seconds)."""
        out = self.rows("usage", "time")
        for r in out:
            r["available"] = json.loads(r["available"] or "{}")
        return out

    def events(self) -> list[dict]:
        return self.rows("events", "time")

    def objects(self) -> list[StateRecord]:
        return [StateRecord(
            object_id=r["object_id"], object_size=r["size"], state=r["state"],
            reference_type="LOCAL_REFERENCE", type="WORKER", pid=r["owner_pid"],
            ip="127.0.0.1", node_id=r["node_id"], rank=r["rank"],
            spilled_path=r["spilled_path"], created_ms=_ms(r["created"]),
            freed_ms=_ms(r["freed"]))
            for r in self.rows("objects", "rowid")]


# the fields list_*() shows without detail=True (Ray's non-detail columns, plus rank)
BRIEF = {
    "tasks": ("task_id", "attempt_number", "name", "state", "job_id", "actor_id", "type",
              "func_or_class_name", "parent_task_id", "node_id", "worker_id",
              "worker_pid", "error_type", "rank"),
    "actors": ("actor_id", "class_name", "state", "job_id", "name", "node_id", "pid",
               "ray_namespace", "rank"),
    "objects": ("object_id", "object_size", "state", "reference_type", "type", "pid", "ip",
                "rank"),
    "nodes": ("node_id", "node_ip", "is_head_node", "state", "node_name",
              "resources_total", "labels", "rank"),
    "workers": ("worker_id", "is_alive", "worker_type", "exit_type", "node_id", "ip", "pid",
                "rank"),
}
_OPS = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, ">": operator.gt,
        "<": operator.lt, ">=": operator.ge, "<=": operator.le}


def _matches(rec: dict, key: str, op: str, value) -> bool:
    have = rec.get(key)
    if op in ("=", "==", "!="):  # (Ray compares as strings; state names any case)
        a, b = str(have), str(value)
        if key in ("state", "type", "error_type"):
            a, b = a.upper(), b.upper()
        return (a == b) if op != "!=" else (a != b)
    try:
        return _OPS[op](float(have), float(value))
    except (TypeError, ValueError):
        return False


def select(records: list[StateRecord], kind: str, filters=None, limit: int | None = 100,
           detail: bool = False) -> list[StateRecord]:
    """Ray's ``filters=[(key, op, value), ...]``, ``limit`` and ``detail`` on records."""
    for f in filters or ():
        if not isinstance(f, (tuple, list)) or len(f) != 3:
            raise ValueError(f"a filter is (key, predicate, value), not {f!r}")
        key, op, value = f
        if op not in _OPS:
            raise ValueError(f"unsupported filter predicate {op!r}: use one of "
                             f"{', '.join(_OPS)}")
        if records and key not in records[0]:
            raise ValueError(f"{kind} have no field {key!r}; they have "
                             f"{', '.join(sorted(records[0]))}")
        records = [r for r in records if _matches(r, key, op, value)]
    if limit is not None:
        records = records[: int(limit)]
    if not detail:
        keep = BRIEF[kind]
        records = [StateRecord((k, r.get(k)) for k in keep) for r in records]
    return records
