"""Each process's events for the control store, batched to the session's spool.

Data flow::

    a task's two records, flat (their fields extend a list: no object per record)
        submit (owner)  SUBMITS((tid, name, fid, parent, t, type))   ─▶ REC.subs
        execute (worker) RUNS((tid, name, t0, t1, ok, actor, error type, message))
                                                                      ─▶ REC.runs
    the rest ─ if REC.on: NOTE((kind, ...)) ─▶ REC.buf (a list of tuples)
        the node's loop  WORKER / WORKER_EXIT / ACTOR / OBJ / OBJ_FREE / OBJ_SPILL / NODE / EVENT /
                         USAGE (resources, store and workers in use, when they change)
    flusher thread (driver, workers: every FLUSH_S) / the node's tick
        ─ marshal.dumps((header, clock offset, batch, subs, runs))
          ─▶ spool/<pid>-<n>-<events>.ev
          (written, then renamed: the writer sees whole files)
    writer process (writer.py) ─ reads each file, ingests it into SQLite, unlinks it

Why flat: a tuple kept per task until the flush is a young object that survives, and
the garbage collector's runs they trigger cost the task path 4-5 % (measured: with the
collector's thresholds raised, recording cost 1 %); a tuple made to extend a list is
freed at once.  Nothing here is on a hot path but the append: the flush runs in a thread of its own (or
the node's idle tick) and writes one file per batch.  Times are ``time.monotonic()``
(free where the caller has it already); each batch carries the offset to wall time.
A forked child starts with an empty buffer and records nothing until it starts its own.
"""

from __future__ import annotations

import marshal
import os
import threading
import time

FLUSH_S = 0.25  # how stale the store may be (plus the writer's pass)

# the first item of every record
(SUBMIT, RUN, START, CANCEL, FUNC, WORKER, WORKER_EXIT, ACTOR, OBJ, OBJ_FREE, NODE,
 NODE_END, EVENT, TASK_LOST, USAGE, OBJ_SPILL, LINEAGE) = range(17)
SUBMIT_FIELDS, RUN_FIELDS = 6, 8  # (the flat records' lengths, their kind left out)


class Recorder:
    """One per process (``REC``); ``NOTE`` is its buffer's ``append``."""

    def __init__(self) -> None:
        self.buf: list = []
        self.subs: list = []  # SUBMIT records, flat
        self.runs: list = []  # RUN records, flat
        self.on = False  # recording (call sites look before they note)
        self.spool: str | None = None  # None: not recording (flush drops)
        self.header: dict = {}
        self.seq = 0
        self.running = None  # () -> (tid, name, t0) of a task running here, or None
        self._started_noted: int | None = None
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one flush at a time (thread, exit, tick)

    def start(self, spool: str | None, header: dict, thread: bool = True) -> None:
        """Record from now on into ``spool`` (None: the store is off; events are dropped)."""
        self.stop(flush=False)
        self._clear()
        self.spool, self.header, self.seq = spool, dict(header, pid=os.getpid()), 0
        self.on = spool is not None
        if spool is not None and thread:
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="mpray-recorder",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(FLUSH_S):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - the store is an observer: never fatal
                pass

    def _note_running(self) -> None:
        """A task running longer than a flush: say so (its end comes with RUN)."""
        running = self.running
        cur = running() if running is not None else None
        if cur is not None and cur[0] != self._started_noted:
            tid, name, t0 = cur
            if time.monotonic() - t0 > FLUSH_S:
                self._started_noted = tid
                self.buf.append((START, tid, name, t0))

    def flush(self) -> None:
        with self._lock:
            self._note_running()
            batch, subs, runs = _take(self.buf), _take(self.subs), _take(self.runs)
            n = len(batch) + len(subs) // SUBMIT_FIELDS + len(runs) // RUN_FIELDS
            spool = self.spool
            if not n or spool is None:
                return
            data = marshal.dumps((self.header, time.time() - time.monotonic(), batch, subs,
                                  runs))
            self.seq += 1
            # (the writer reads the events' count from the name: a backlog's size)
            name = f"{self.header['pid']}-{self.seq:09d}-{n}.ev"
            tmp = os.path.join(spool, "." + name)
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                os.rename(tmp, os.path.join(spool, name))  # (the writer sees whole files)
            except OSError:
                pass  # (the session was removed, the disk is full: observing stops there)

    def stop(self, flush: bool = True) -> None:
        if self._thread is not None:
            self._stop.set()
            if self._thread is not threading.current_thread():
                self._thread.join(2.0)
            self._thread = None
        if flush:
            self.flush()
        self.on = False
        self.spool = None

    def _clear(self) -> None:
        del self.buf[:]
        del self.subs[:]
        del self.runs[:]

    def after_fork(self) -> None:
        """In a forked child: nothing of the parent's is recorded again."""
        self._clear()
        self.on = False
        self.spool = None
        self._thread = None
        self._lock = threading.Lock()
        self.running = None


def _take(buf: list) -> list:
    """What a buffer holds now (appends made meanwhile stay for the next flush; a flat
    record is appended whole by one extend, under the GIL)."""
    n = len(buf)
    out = buf[:n]
    del buf[:n]
    return out


# exception class -> Ray's error type (``ErrorType`` in Ray's common.proto)
RAY_ERROR_TYPES = {
    "TaskCancelledError": "TASK_CANCELLED", "WorkerCrashedError": "WORKER_DIED",
    "ActorDiedError": "ACTOR_DIED", "ActorUnavailableError": "ACTOR_UNAVAILABLE",
    "ActorExit": "ACTOR_DIED", "TaskPlacementGroupRemoved": "TASK_PLACEMENT_GROUP_REMOVED",
    "ObjectFreedError": "OBJECT_FREED", "ObjectLostError": "OBJECT_LOST",
    "OutOfMemoryError": "OUT_OF_MEMORY", "RayTaskError": "TASK_EXECUTION_EXCEPTION",
    "RaySystemError": "RAY_SYSTEM_ERROR",
}


def error_fields(e: BaseException, app: bool = False) -> tuple[str, str]:
    """(Ray's error type, a message) of a task's error; ``app``: raised by user code."""
    etype = "TASK_EXECUTION_EXCEPTION" if app else next(
        (RAY_ERROR_TYPES[c.__name__] for c in type(e).__mro__
         if c.__name__ in RAY_ERROR_TYPES), "TASK_EXECUTION_EXCEPTION")
    try:
        text = f"{type(e).__name__}: {e}"
    except Exception:  # noqa: BLE001 - a __str__ that raises
        text = type(e).__name__
    return etype, text[:8000]


REC = Recorder()
NOTE = REC.buf.append  # (the same list for the process's life: flush empties it in place)
SUBMITS = REC.subs.extend
RUNS = REC.runs.extend
os.register_at_fork(after_in_child=REC.after_fork)
