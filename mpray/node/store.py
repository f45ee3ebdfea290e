"""The node loop's side of the control store: its writer process, and the records of
what only the node sees (workers, actors, objects in the arena, tasks it retries or fails).

Data flow::

    Node.run ─ start() ─▶ fork the writer (control/writer.py) ─▶ ingests spool/ into store.db
    the loop: start_worker / _reap / AnnounceActor ─ note(...) ─▶ recorder (REC)
              Scheduler.records (objects, lost tasks) ─ take() ─▶ pids and errors filled in
    the tick (1 s) ─ usage() ─▶ what is in use, when it changed
    before the loop sleeps, and each tick ─ due() ─▶ spool/<node pid>-<n>.ev
    Node.shutdown ─ stop() ─▶ last batch; SIGTERM to the writer, which ingests what is
                              left and exits; the spool removed
    LineageLoad ─ load_lineage() ─▶ flush, ask the writer for a pass (a request file in
        spool/) ─ poll_loads(), each pass ─▶ answered: the spec read from store.db
        ─▶ Scheduler.lineage_loaded (node/lineage.py)
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sqlite3
import sys
import time

from ..control import sessions
from ..control.recorder import (ACTOR, FLUSH_S, NODE, NODE_END, NOTE, OBJ, REC, TASK_LOST,
                                USAGE, WORKER, WORKER_EXIT, error_fields)
from ..control.reader import SYNC_TIMEOUT_S, _ask, _unask
from ..control.schema import signed
from ..procs import end_when_idle, fork_held, kill, remove_tree
from .. import protocol as P

__all__ = ["StoreShell", "WORKER", "WORKER_EXIT", "hold_session"]

WRITER_WAIT_S = 30.0  # the most a shutdown waits for the writer's last pass
STARVED_S = 1.0  # a writer given no CPU this long at shutdown: the node finishes for it
hold_session = sessions.hold


class StoreShell:
    def __init__(self, node, setup) -> None:
        self.node = node
        self.setup = setup
        self.on = bool(setup.store and setup.node_dir)
        self.writer_pid: int | None = None
        self.flushed = 0.0  # when its events were last written out
        self.last_usage: tuple | None = None
        self.loads: list = []  # [request file, deadline, tid, oid]: specs to read back

    def start(self) -> None:
        st = self.setup
        if not self.on:
            if st.prune_root is not None:  # (no writer to do it)
                sessions.prune(st.prune_root, st.keep_sessions, current=st.session_dir)
            return
        self.writer_pid = self._fork_writer()
        REC.start(os.path.join(st.node_dir, "spool"),
                  {"rank": st.rank, "node_id": st.node_id, "role": "node"}, thread=False)
        NOTE((NODE, st.node_id, socket.gethostname(), dict(st.resources), time.monotonic()))

    def _fork_writer(self) -> int:
        st = self.setup
        sys.stdout.flush()
        sys.stderr.flush()
        pid = fork_held()  # (SIGTERM stays blocked: writer_main takes it when it waits)
        if pid == 0:  # ---- the writer
            code = 0
            try:
                sessions.release_inherited()
                from ..control.writer import writer_main

                writer_main(st.node_dir, st.store_max_tasks, st.prune_root, st.keep_sessions)
            except BaseException:  # noqa: BLE001 - report, never take the node down
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        return pid

    def note(self, *record) -> None:
        if self.on:
            NOTE(record)

    def take(self, records: list) -> None:
        """The scheduler's records: a process number becomes a pid, an error payload
        Ray's error type and a message."""
        if self.on:
            channels = self.node.channels
            for r in records:
                kind = r[0]
                if kind == OBJ:
                    ch = channels.get(r[3])
                    r = (OBJ, r[1], r[2], ch.pid if ch is not None and ch.pid else
                         self.node.driver_pid, r[4])
                elif kind == TASK_LOST:
                    r = (TASK_LOST, r[1], r[2], *_error(r[3]), r[4])
                NOTE(r)
        records.clear()

    def actor(self, a, pid: int | None) -> None:
        """An actor's transition (the node's AnnounceActor)."""
        if not self.on:
            return
        entry = self.node.sched.actors.get(a.aid)
        opts = entry.opts if entry is not None else {}
        state = "DEAD" if a.state == "KILLED" else a.state
        death = _error(a.death)[1] if a.death else None
        NOTE((ACTOR, a.aid, state, a.incarnation, pid, death, time.monotonic(),
              opts.get("class_name"), opts.get("name"), opts.get("namespace")))

    def usage(self, now: float) -> None:
        """Resources, store and workers in use (the report's curves, ``mpray status``),
        recorded when they changed since the last tick."""
        if not self.on:
            return
        s = self.node.sched
        sample = (dict(s.avail), s.alloc.used, len(s.workers), len(s.tasks))
        if sample != self.last_usage:
            self.last_usage = sample
            NOTE((USAGE, now, sample[0], sample[1], self.setup.arena_size, sample[2],
                  sample[3]))

    def due(self, now: float) -> float:
        """Before the loop sleeps: write the events of the last FLUSH_S; how long it may
        sleep (events waiting: until they are due)."""
        if not REC.buf:
            return 1.0
        if now - self.flushed >= FLUSH_S:
            self.flushed = now
            REC.flush()
            return 1.0
        return FLUSH_S - (now - self.flushed)

    def load_lineage(self, tid: int, oid: int) -> None:
        """Read a spec moved to the store back (node/lineage.py, owner/lineage.py):
        once every process's records are written (this node's now, an owner's within
        its flush) and the writer has made a pass, asked for then."""
        REC.flush()
        now = time.monotonic()
        self.loads.append([False, None, now + FLUSH_S + 0.05, now + SYNC_TIMEOUT_S, tid, oid])

    def poll_loads(self, sched) -> None:
        """Ask the writer for a pass when a load's records are out; answer the loads
        whose pass is done (or overdue)."""
        now, left = time.monotonic(), []
        for load in self.loads:
            asked, path, not_before, deadline, tid, oid = load
            if now < not_before:
                left.append(load)
                continue
            if not asked:
                load[0] = True
                paths = _ask([self.setup.node_dir])
                load[1] = paths[0] if paths else None
                left.append(load)
                continue
            if path is not None and os.path.exists(path) and now < deadline:
                left.append(load)
                continue
            _unask([path] if path else [])
            sched.lineage_loaded(oid, self._spec(tid))
        self.loads = left

    def _spec(self, tid: int):
        path = os.path.join(self.setup.node_dir, sessions.STORE)
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            try:
                row = conn.execute("SELECT spec FROM lineage WHERE task_id = ? AND rank = ? "
                                   "ORDER BY rowid DESC LIMIT 1",
                                   (signed(tid), self.setup.rank)).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return None
        return None if row is None else tuple.__new__(P.TaskSpec, pickle.loads(row[0]))

    def reaped(self, pid: int, status: int) -> None:
        """A child that is not a worker ended: the writer, before its time."""
        if pid == self.writer_pid:
            self.writer_pid = None
            if status:
                print(f"mpray node (pid {os.getpid()}): the control store's writer "
                      f"exited early (status {status}); events are no longer recorded",
                      file=sys.stderr)
            self.on = False
            REC.stop(flush=False)

    def stop(self) -> None:
        st = self.setup
        if self.on:
            self.usage(time.monotonic())
            NOTE((NODE_END, st.node_id, time.monotonic()))
            REC.stop()
        pid, self.writer_pid = self.writer_pid, None
        if pid is not None:
            self._end_writer(pid)
        remove_tree(os.path.join(st.node_dir, "spool"))

    def _end_writer(self, pid: int) -> None:
        """SIGTERM: its last pass.  It runs on idle CPU only: one that gets none (other
        programs keep the CPUs busy) is killed and its work finished here."""
        kill(pid, signal.SIGTERM)
        if end_when_idle(pid, STARVED_S, WRITER_WAIT_S):
            from ..control.writer import take_over

            st = self.setup
            take_over(st.node_dir, st.store_max_tasks, st.prune_root, st.keep_sessions)


def _error(payload) -> tuple:
    """(error type, message) of a pickled error (None: a retry, the worker died)."""
    if payload is None:
        return "WORKER_DIED", "the worker running it died; it is retried"
    try:
        return error_fields(pickle.loads(payload))
    except Exception:  # noqa: BLE001 - an error that cannot be unpickled here
        return "TASK_EXECUTION_EXCEPTION", "(the error could not be read)"
