"""The control store's tables, and how a batch of recorded events becomes rows.

Data flow::

    batches [(header, clock offset, [event, ...], flat SUBMITs, flat RUNs), ...]
        (recorder.py's records)
        ─ Ingest.apply ─▶ params grouped by event kind ─▶ executemany, in KIND order,
          in one transaction:
            nodes ◀ NODE/NODE_END     workers ◀ WORKER/WORKER_EXIT     functions ◀ FUNC
            tasks ◀ SUBMIT (owner) + START/RUN (worker) + CANCEL + TASK_LOST + WORKER_EXIT
            actors ◀ ACTOR            objects ◀ OBJ/OBJ_SPILL/OBJ_FREE events ◀ EVENT
            usage ◀ USAGE (a node's resources, store and workers in use over time)

Each event of a task is an upsert that only moves its row forward, so a task's events
may come in any order across processes (its owner's SUBMIT after its worker's RUN, say).
Times are wall-clock seconds (each batch's monotonic times plus its offset).
"""

from __future__ import annotations

import json
import sqlite3

from .recorder import (ACTOR, CANCEL, EVENT, FUNC, LINEAGE, NODE, NODE_END, OBJ, OBJ_FREE,
                       OBJ_SPILL, RUN,
                       RUN_FIELDS, START, SUBMIT, SUBMIT_FIELDS, TASK_LOST, USAGE, WORKER,
                       WORKER_EXIT)

TABLES = {
    "nodes": ({"node_id": str, "rank": int, "host": str, "pid": int, "resources": str,
               "started": float, "ended": float}, "node_id"),
    "workers": ({"rank": int, "pid": int, "node_id": str, "worker_index": int,
                 "started": float, "ended": float, "exit_cause": str},
                ("rank", "pid")),
    "functions": ({"func_id": str, "name": str, "module": str, "rank": int}, "func_id"),
    # (ids as signed 64-bit integers, readers show them in hex: the writer does no
    # per-task formatting; a task's events are merged in SQL, see Ingest)
    "tasks": ({"task_id": int, "name": str, "func_id": int, "type": str, "state": str,
               "attempts": int, "parent_task_id": int, "owner_pid": int, "rank": int,
               "node_id": str, "worker_pid": int, "actor_id": int, "submitted": float,
               "started": float, "finished": float, "error_type": str,
               "error_message": str}, None),
    "actors": ({"actor_id": str, "class_name": str, "name": str, "namespace": str,
                "state": str, "restarts": int, "pid": int, "rank": int, "node_id": str,
                "created": float, "ended": float, "death_cause": str}, "actor_id"),
    "objects": ({"object_id": str, "size": int, "owner_pid": int, "rank": int,
                 "node_id": str, "state": str, "created": float, "freed": float,
                 "spilled_path": str}, "object_id"),
    "events": ({"time": float, "rank": int, "pid": int, "severity": str, "message": str},
               None),
    "usage": ({"time": float, "rank": int, "available": str, "store_used": int,
               "store_total": int, "workers": int, "tasks": int}, None),
    # task specs a node moved out of memory (max_lineage_bytes): to make lost values again
    "lineage": ({"task_id": int, "rank": int, "owner": int, "spec": bytes}, None),
}
INDEXES = {"actors": (["state"],), "objects": (["state"],), "usage": (["rank", "time"],),
           "lineage": (["task_id", "rank"],)}
UNIQUE = {"tasks": ["task_id"]}  # (the one index tasks have: what upserts look up)

# SUBMIT and RUN (two per task: the bulk of the events) are joined here when one pass
# has both (the common case: a row is one insert); either alone is an upsert that only
# moves the row forward
_SUBMIT_SET = ("name = coalesce(tasks.name, excluded.name), func_id = excluded.func_id, "
               "parent_task_id = excluded.parent_task_id, owner_pid = excluded.owner_pid, "
               "submitted = excluded.submitted")
# (attempts on other workers may be heard of in any order: the latest start wins)
_RUN_SET = ("name = coalesce(tasks.name, excluded.name), actor_id = excluded.actor_id, "
            "attempts = tasks.attempts + 1, "
            + ", ".join(f"{c} = CASE WHEN excluded.started >= coalesce(tasks.started, 0) "
                        f"THEN excluded.{c} ELSE tasks.{c} END"
                        for c in ("state", "finished", "error_type", "error_message",
                                  "worker_pid", "rank", "node_id", "started")))
_SUBMIT_COLS = "task_id, name, func_id, parent_task_id, owner_pid, submitted, type"
_RUN_COLS = ("task_id, name, type, actor_id, started, finished, state, error_type, "
             "error_message, worker_pid, rank, node_id")
TASK_SQL = {
    SUBMIT: f"INSERT INTO tasks ({_SUBMIT_COLS}, state, attempts) VALUES "
            f"(?, ?, ?, ?, ?, ?, ?, 'PENDING', 0) ON CONFLICT (task_id) DO UPDATE SET "
            f"{_SUBMIT_SET}, type = coalesce(tasks.type, excluded.type)",
    RUN: f"INSERT INTO tasks ({_RUN_COLS}, attempts) VALUES "
         f"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (task_id) DO UPDATE SET "
         f"{_RUN_SET}, type = excluded.type",
    "both": f"INSERT INTO tasks ({_SUBMIT_COLS}, actor_id, started, finished, state, "
            f"error_type, error_message, worker_pid, rank, node_id, attempts) VALUES "
            f"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT (task_id) DO "
            f"UPDATE SET {_SUBMIT_SET}, type = excluded.type, {_RUN_SET}",
}
_TYPES = ("NORMAL_TASK", "ACTOR_TASK", "ACTOR_CREATION_TASK")
# the other kinds: kind -> SQL (executemany over the kind's params, from Ingest._params)
SQL = {
    NODE: "INSERT OR REPLACE INTO nodes (node_id, rank, host, pid, resources, started) "
          "VALUES (?, ?, ?, ?, ?, ?)",
    NODE_END: "UPDATE nodes SET ended = ? WHERE node_id = ?",
    WORKER: "INSERT OR REPLACE INTO workers (rank, pid, node_id, worker_index, started) "
            "VALUES (?, ?, ?, ?, ?)",
    FUNC: "INSERT OR IGNORE INTO functions (func_id, name, module, rank) VALUES (?, ?, ?, ?)",
    START: "INSERT INTO tasks (task_id, name, started, worker_pid, rank, node_id, state, "
           "attempts) VALUES (?, ?, ?, ?, ?, ?, 'RUNNING', 0) ON CONFLICT (task_id) DO "
           "UPDATE SET started = excluded.started, worker_pid = excluded.worker_pid, "
           "rank = excluded.rank, node_id = excluded.node_id, state = CASE WHEN "
           "tasks.state IS NULL OR tasks.state = 'PENDING' THEN 'RUNNING' ELSE tasks.state END",
    CANCEL: "UPDATE tasks SET state = 'FAILED', error_type = 'TASK_CANCELLED', "
            "error_message = ?, finished = ? WHERE task_id = ? AND state = 'PENDING'",
    TASK_LOST: "UPDATE tasks SET state = CASE WHEN ? THEN 'PENDING' ELSE 'FAILED' END, "
               "error_type = ?, error_message = ?, finished = ?, "
               "attempts = attempts + (state = 'RUNNING') "
               "WHERE task_id = ? AND state IN ('PENDING', 'RUNNING')",
    ACTOR: "INSERT INTO actors (actor_id, class_name, name, namespace, state, restarts, pid, "
           "rank, node_id, created, death_cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
           "ON CONFLICT (actor_id) DO UPDATE SET state = excluded.state, "
           "restarts = max(actors.restarts, excluded.restarts), "
           "pid = coalesce(excluded.pid, actors.pid), "
           "ended = CASE WHEN excluded.state = 'DEAD' THEN excluded.created "
           "ELSE actors.ended END, "
           "death_cause = coalesce(excluded.death_cause, actors.death_cause), "
           "class_name = coalesce(actors.class_name, excluded.class_name), "
           "name = coalesce(actors.name, excluded.name), "
           "namespace = coalesce(actors.namespace, excluded.namespace)",
    OBJ: "INSERT OR REPLACE INTO objects (object_id, size, owner_pid, rank, node_id, state, "
         "created) VALUES (?, ?, ?, ?, ?, 'IN_STORE', ?)",
    OBJ_FREE: "UPDATE objects SET state = 'FREED', freed = ? WHERE object_id = ?",
    # (a spill, path set; or its way back into the store, path None: the path stays)
    OBJ_SPILL: "UPDATE objects SET state = CASE WHEN ? IS NULL THEN 'IN_STORE' ELSE "
               "'SPILLED' END, spilled_path = coalesce(?, spilled_path) "
               "WHERE object_id = ? AND state != 'FREED'",
    WORKER_EXIT: "UPDATE workers SET ended = ?, exit_cause = ? WHERE rank = ? AND pid = ?",
    EVENT: "INSERT INTO events (time, rank, pid, severity, message) VALUES (?, ?, ?, ?, ?)",
    USAGE: "INSERT INTO usage (time, rank, available, store_used, store_total, workers, "
           "tasks) VALUES (?, ?, ?, ?, ?, ?, ?)",
    LINEAGE: "INSERT INTO lineage (task_id, rank, owner, spec) VALUES (?, ?, ?, ?)",
}
# (WORKER_EXIT also fails the tasks it was running: the second statement)
WORKER_DIED_SQL = ("UPDATE tasks SET state = 'FAILED', error_type = 'WORKER_DIED', "
                   "error_message = ?, finished = ?, attempts = attempts + 1 "
                   "WHERE rank = ? AND worker_pid = ? AND state = 'RUNNING'")
ORDER = (NODE, WORKER, FUNC, SUBMIT, START, RUN, CANCEL, TASK_LOST, ACTOR, OBJ, OBJ_SPILL,
         OBJ_FREE, WORKER_EXIT, NODE_END, EVENT, USAGE, LINEAGE)


def open_store(path: str, create: bool = False, plain: bool = False):
    """The store at ``path`` (WAL; tables made when ``create``): through sqlite-utils,
    or with ``plain`` a bare connection (``Plain``) for the writer, which needs no more:
    importing sqlite-utils (some 70 modules) cost every node's writer about 8 MiB and
    0.1 s of CPU: an eighth of an idle MPI rank's memory (benchmarks/README.md, "Many
    ranks")."""
    conn = sqlite3.connect(path)
    if create:
        make_tables(conn)
    if plain:
        return Plain(conn)
    import sqlite_utils

    return sqlite_utils.Database(conn)


class Plain:
    """What the writer uses of a sqlite-utils ``Database``: ``conn`` and ``execute``."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def execute(self, sql: str, params=()):
        return self.conn.execute(sql, params)


_SQL_TYPES = {str: "TEXT", int: "INTEGER", float: "REAL", bytes: "BLOB"}


def make_tables(conn) -> None:
    """WAL, and the tables and indexes (if not there): the statements sqlite-utils's
    ``create``/``create_index`` would run (tests/test_control_store.py compares them)."""
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        conn.execute("PRAGMA journal_mode = wal")
    conn.execute("PRAGMA synchronous = NORMAL")  # (WAL: safe against crashes, fast)
    for stmt in table_statements():
        conn.execute(stmt)
    # the writer's ledger: the spool files its last transaction applied (writer.py)
    conn.execute("CREATE TABLE IF NOT EXISTS spool_done (name TEXT PRIMARY KEY)")
    conn.commit()


def table_statements() -> list[str]:
    """CREATE TABLE / INDEX IF NOT EXISTS of every table in TABLES, sqlite-utils's way."""
    out = []
    for name, (columns, pk) in TABLES.items():
        pks = [pk] if isinstance(pk, str) else list(pk or ())
        cols = [f"   {_q(c)} {_SQL_TYPES[t]}" + (" PRIMARY KEY" if pks == [c] else "")
                for c, t in columns.items()]
        if len(pks) > 1:
            cols.append(f"   PRIMARY KEY ({', '.join(map(_q, pks))})")
        out.append(f"CREATE TABLE IF NOT EXISTS {_q(name)} (\n" + ",\n".join(cols) + "\n)")
        indexes = [(cols, "") for cols in INDEXES.get(name, ())]
        if name in UNIQUE:
            indexes.append((UNIQUE[name], "UNIQUE "))
        for cols, unique in indexes:
            out.append(f"CREATE {unique}INDEX IF NOT EXISTS {_q('_'.join(['idx', name, *cols]))}"
                       f"\n    ON {_q(name)} ({', '.join(map(_q, cols))})")
    return out


def _q(name: str) -> str:
    return f'"{name}"'


def _hex(i):
    return None if i is None else format(i, "016x")


def signed(i):
    """An id (up to 64 bits: rank in the top byte) as SQLite's signed integer."""
    return i - (1 << 64) if i is not None and i >= 1 << 63 else i


class Ingest:
    """Applies batches of events to one node's store."""

    def __init__(self, db, max_tasks: int) -> None:
        self.db = db
        self.max_tasks = max(1, int(max_tasks))

    def apply(self, batches: list, names=()) -> None:
        """One transaction: the tasks' SUBMIT and RUN first (joined where both are here),
        then every other kind in ORDER (a CANCEL, a TASK_LOST or a worker's exit finds
        the rows those made); ``names``, the spool files they came from, in spool_done
        with them (the files of the transaction before are gone by now)."""
        subs: dict = {}
        runs: list = []
        rest: dict[int, list] = {k: [] for k in ORDER}
        died: list = []
        for header, offset, events, flat_subs, flat_runs in batches:
            others = self._tasks(header, offset, events, flat_subs, flat_runs, subs, runs)
            self._params(header, offset, others, rest, died)
        both, alone = [], []
        for r in runs:  # (a retried task's later runs: upserts after its first)
            s = subs.pop(r[0], None)
            if s is None:
                alone.append(r)
            else:  # (task_id, name, fid, parent, owner, t, type) + the run's
                both.append((*s[:6], s[6] if s[6] != _TYPES[0] else r[2], *r[3:]))
        conn = self.db.conn
        with conn:
            conn.execute("DELETE FROM spool_done")
            conn.executemany("INSERT OR IGNORE INTO spool_done VALUES (?)",
                             [(n,) for n in names])
            for sql, rows in ((TASK_SQL["both"], both), (TASK_SQL[SUBMIT], subs.values()),
                              (TASK_SQL[RUN], alone)):
                if rows:
                    conn.executemany(sql, rows)
            for kind in ORDER:
                if rest[kind]:
                    conn.executemany(SQL[kind], rest[kind])
                if kind == WORKER_EXIT and died:
                    conn.executemany(WORKER_DIED_SQL, died)
            self._trim(conn)

    @staticmethod
    def _tasks(h: dict, off: float, events: list, flat_subs, flat_runs, subs: dict,
               runs: list) -> list:
        """A batch's SUBMIT and RUN (flat, or as events) as rows' parameters; the other
        events, returned."""
        rank, node, pid = h.get("rank", 0), h.get("node_id"), h.get("pid")
        wide = rank >= 128  # (ids past 2**63: SQLite's integers are signed)
        sub = [flat_subs[i:i + SUBMIT_FIELDS] for i in range(0, len(flat_subs), SUBMIT_FIELDS)]
        run = [flat_runs[i:i + RUN_FIELDS] for i in range(0, len(flat_runs), RUN_FIELDS)]
        others = []
        for e in events:
            if e[0] == SUBMIT:
                sub.append(e[1:])
            elif e[0] == RUN:
                run.append(e[1:])
            else:
                others.append(e)
        for tid, name, fid, parent, t, typ in sub:
            if wide:
                tid, fid, parent = signed(tid), signed(fid), signed(parent)
            subs[tid] = (tid, name, fid, parent, pid, t + off, _TYPES[typ])
        for tid, name, t0, t1, ok, actor, etype, emsg in run:
            if wide:
                tid, actor = signed(tid), signed(actor)
            typ = _TYPES[0] if actor is None else _TYPES[2] if name.endswith(
                ".__init__") else _TYPES[1]
            runs.append((tid, name, typ, actor, t0 + off, t1 + off,
                         "FINISHED" if ok else "FAILED", etype, emsg, pid, rank, node))
        return others

    def _params(self, h: dict, off: float, events: list, by: dict, died: list) -> None:
        rank, node, pid = h.get("rank", 0), h.get("node_id"), h.get("pid")
        for e in events:
            k = e[0]
            if k == START:  # (tid, name, t0)
                by[START].append((signed(e[1]), e[2], e[3] + off, pid, rank, node))
            elif k == CANCEL:  # (tid, t)
                by[CANCEL].append(("cancelled with mpray.cancel() before it ran",
                                   e[2] + off, signed(e[1])))
            elif k == TASK_LOST:  # (tid, retrying, error_type, message, t)
                by[TASK_LOST].append((bool(e[2]), e[3], e[4], e[5] + off, signed(e[1])))
            elif k == WORKER:  # (pid, index, t)
                by[WORKER].append((rank, e[1], node, e[2], e[3] + off))
            elif k == WORKER_EXIT:  # (pid, cause, t)
                by[WORKER_EXIT].append((e[3] + off, e[2], rank, e[1]))
                died.append((e[2], e[3] + off, rank, e[1]))
            elif k == ACTOR:  # (aid, state, incarnation, pid, death, t, class, name, ns)
                _k, aid, state, inc, apid, death, t, cls, name, ns = e
                by[ACTOR].append((_hex(aid), cls, name, ns, state, inc, apid or None, rank,
                                  node, t + off, death))
            elif k == OBJ:  # (oid, size, owner pid, t)
                by[OBJ].append((_hex(e[1]), e[2], e[3], rank, node, e[4] + off))
            elif k == OBJ_FREE:  # (oid, t)
                by[OBJ_FREE].append((e[2] + off, _hex(e[1])))
            elif k == OBJ_SPILL:  # (oid, spill file or None: back in the store)
                by[OBJ_SPILL].append((e[2], e[2], _hex(e[1])))
            elif k == LINEAGE:  # (tid, owner, pickled spec)
                by[LINEAGE].append((signed(e[1]), rank, e[2], e[3]))
            elif k == FUNC:  # (fid, name, module)
                by[FUNC].append((_hex(e[1]), e[2], e[3], rank))
            elif k == NODE:  # (node_id, host, resources, t)
                by[NODE].append((e[1], rank, e[2], pid, json.dumps(e[3]), e[4] + off))
            elif k == NODE_END:  # (node_id, t)
                by[NODE_END].append((e[2] + off, e[1]))
            elif k == EVENT:  # (severity, message, t)
                by[EVENT].append((e[3] + off, rank, pid, e[1], e[2]))
            elif k == USAGE:  # (t, available, store used, store total, workers, tasks)
                by[USAGE].append((e[1] + off, rank, json.dumps(e[2]), e[3], e[4], e[5], e[6]))

    def _trim(self, conn) -> None:
        """Keep the newest max_tasks tasks (and as many freed objects), as the paper's
        GCS flushes: a long run's file stays bounded."""
        cap = self.max_tasks
        for table, extra in (("tasks", ""), ("objects", " AND state = 'FREED'"),
                             ("lineage", ""), ("usage", "")):  # (the oldest rows first)
            lo, hi = conn.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()
            if lo is not None and hi - lo + 1 > cap + cap // 10:
                conn.execute(f"DELETE FROM {table} WHERE rowid <= ?{extra}", (hi - cap,))
