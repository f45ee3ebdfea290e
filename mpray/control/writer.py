"""The control store's writer: a process per node, scheduled only on idle CPU, that moves
the spool's event batches into the node's SQLite file (WAL: readers never block it).

Data flow::

    driver, workers, node ─ recorder.py ─▶ spool/<pid>-<n>-<events>.ev
    writer (forked by the node, SCHED_IDLE) ─ every PASS_S, unless the session is busy
        (BUSY_EVENTS in the batches of the last BUSY_WINDOW_S) and no reader asked
        (spool/.sync-*):
        the batches, oldest first ─▶ one transaction: their rows (schema.py) + their
        names in spool_done ─▶ unlink the batches ─ rows beyond store_max_tasks go
    busy: only a backlog of more task events than the store keeps shrinks: the oldest
        batches' task events are skipped, their other events ingested
    SIGTERM (the node's shutdown, after its workers ended) or the node gone
        ─▶ finish(): a last pass, the spool removed, the file closed (its WAL folded in)
    a writer that cannot finish (starved by other programs on a loaded host): the node
        kills it and runs finish() itself; spool_done says which batches it had applied

The store is an observer: a batch it cannot read is skipped, never fatal, and nothing
here runs on a task's path.  The writer's work is real (about 4 µs a task), so it waits
while the session is busy, and then runs at SCHED_IDLE (nice 19 where refused): as a
plain low-priority process it would hold a core for a slice whenever a mpray process
woke up behind it, and even on idle CPU it slows a busy session (shared caches, SMT
siblings): measured, 0.82x of the store-off throughput while it kept up, 0.95x waiting.
"""

from __future__ import annotations

import marshal
import os
import shutil
import signal
import sys
import time

from . import schema
from . import sessions
from .recorder import RUN, START, SUBMIT

PASS_S = 0.2  # seconds between looks at the spool
MAX_FILES = 500  # batches per transaction (bounds the writer's memory)
BACKLOG_FACTOR = 2  # task events kept from a backlog: this many per task row kept
# the session is busy while its batches of the last BUSY_WINDOW_S hold BUSY_EVENTS or more
# (a window, not "new since the last look": batches come every FLUSH_S, and looks between
# two of them found nothing new, so the writer ingested in the middle of a busy run)
BUSY_WINDOW_S = 1.0
BUSY_EVENTS = 1000
SYNC = sessions.SYNC
_TASK_KINDS = (SUBMIT, RUN, START)


def writer_main(node_dir: str, max_tasks: int, prune_root: str | None, keep: int) -> None:
    """Entry point of the forked writer; returns when the node is gone or says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    idle_priority()
    parent = os.getppid()
    spool = os.path.join(node_dir, "spool")
    ingest = None  # (opened at the first pass with work to do: see _open)
    started = time.time()
    while True:
        stopping = signal.sigtimedwait({signal.SIGTERM}, PASS_S) is not None
        stopping = stopping or os.getppid() != parent
        if stopping:
            break
        requests = _requests(spool)
        found = _batches(spool)
        now = time.time()
        # (busy until a whole window has passed: the processes' first batches come
        # FLUSH_S after they start, and a session often starts working at once)
        busy = not requests and (now - started < BUSY_WINDOW_S or _busy(found, now))
        if busy and sum(c for _t, _n, c in found) <= BACKLOG_FACTOR * max_tasks:
            continue  # (busy, and no backlog to shrink)
        if ingest is None:
            ingest = _open(node_dir, max_tasks, prune_root, keep)
        if busy:  # only a backlog beyond what the store keeps shrinks (cheaply)
            while drain(ingest, spool, old_only=True) >= MAX_FILES:
                pass
        else:
            while drain(ingest, spool) >= MAX_FILES:
                pass
            for r in requests:  # (after a full pass that began after they were made)
                _unlink(spool, r)
    if ingest is None:
        ingest = _open(node_dir, max_tasks, prune_root, keep)
    finish(ingest, spool, node_dir, prune_root, keep)


def _open(node_dir: str, max_tasks: int, prune_root: str | None, keep: int) -> "schema.Ingest":
    """The store's file, made now (not at the writer's start: making the tables costs
    CPU, which a session that starts working at once would share its cores with);
    readers wait for the file or ask for it.  A plain connection: see open_store."""
    db = schema.open_store(os.path.join(node_dir, sessions.STORE), create=True, plain=True)
    if prune_root is not None:  # (rank 0: finished sessions beyond the newest `keep` go)
        sessions.prune(prune_root, keep, current=node_dir)
    return schema.Ingest(db, max_tasks)


def _busy(found: list, now: float) -> bool:
    """Do the batches written in the last BUSY_WINDOW_S hold BUSY_EVENTS or more?"""
    recent = 0
    for t, _n, c in reversed(found):  # (newest first)
        if now - t >= BUSY_WINDOW_S:
            break
        recent += c
        if recent >= BUSY_EVENTS:
            return True
    return False


def idle_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        try:
            os.nice(19)
        except OSError:
            pass


def finish(ingest: "schema.Ingest", spool: str, node_dir: str, prune_root: str | None,
           keep: int) -> None:
    """The last pass; the spool removed; the file out of WAL mode (a finished session's
    file stands alone: readers open it read-only and could not fold a WAL back in)."""
    while drain(ingest, spool) >= MAX_FILES:
        pass
    db = ingest.db
    try:
        db.execute("DELETE FROM spool_done")
        db.conn.commit()
        db.execute("PRAGMA journal_mode = DELETE")
    except Exception:  # noqa: BLE001 - a reader holds it: the WAL stays beside it
        pass
    db.conn.close()
    shutil.rmtree(spool, ignore_errors=True)
    if prune_root is not None:  # (again: sessions still ending at the start are over
        sessions.prune(prune_root, keep - 1, current=node_dir)  # now; this one is the
        #                                                          newest of those kept)


def take_over(node_dir: str, max_tasks: int, prune_root: str | None, keep: int) -> None:
    """In the node, after it killed a writer that could not finish: finish its work."""
    finish(_open(node_dir, max_tasks, None, keep), os.path.join(node_dir, "spool"),
           node_dir, prune_root, keep)  # (finish prunes, as the writer would have)


def _batches(spool: str) -> list[tuple[float, str, int]]:
    """(mtime, name, events) of each whole batch in the spool, oldest first."""
    out = []
    try:
        with os.scandir(spool) as it:
            for e in it:
                n = e.name
                if n.endswith(".ev") and n[0] != ".":
                    try:
                        out.append((e.stat().st_mtime, n, int(n[:-3].rsplit("-", 1)[1])))
                    except (OSError, ValueError, IndexError):
                        continue
    except OSError:
        return []
    out.sort()
    return out


def _requests(spool: str) -> list[str]:
    try:
        return [n for n in os.listdir(spool) if n.startswith(SYNC)]
    except OSError:
        return []


def _unlink(spool: str, name: str) -> None:
    try:
        os.unlink(os.path.join(spool, name))
    except OSError:
        pass


def drain(ingest: "schema.Ingest", spool: str, old_only: bool = False) -> int:
    """One transaction over up to MAX_FILES batches, oldest first; how many it took.
    ``old_only``: only batches of a backlog whose task events the store would not keep
    (their other events are ingested: cheap while the session is busy)."""
    found = _batches(spool)
    # a backlog: the newest batches alone hold more task events than the store keeps
    keep_events, newer, skip_tasks = BACKLOG_FACTOR * ingest.max_tasks, 0, set()
    for _t, n, count in reversed(found):
        if newer >= keep_events:
            skip_tasks.add(n)
        newer += count
    names = [n for _t, n, _c in found if not old_only or n in skip_tasks][:MAX_FILES]
    if not names:  # (nothing to do: no transaction either)
        return 0
    done = {r[0] for r in ingest.db.execute("SELECT name FROM spool_done")}
    batches = []
    for n in names:
        if n in done:  # (applied by a writer killed before it unlinked it)
            continue
        try:
            with open(os.path.join(spool, n), "rb") as f:
                header, offset, events, subs, runs = marshal.loads(f.read())
        except (OSError, ValueError, EOFError, TypeError):
            continue  # (a batch cut short by a crash: skipped)
        if n in skip_tasks:
            events, subs, runs = [e for e in events if e[0] not in _TASK_KINDS], (), ()
        batches.append((header, offset, events, subs, runs))
    try:
        ingest.apply(batches, names)
    except Exception as e:  # noqa: BLE001 - report once per pass, keep going
        print(f"mpray control store: could not record a batch of events: {e!r}",
              file=sys.stderr)
    for n in names:
        _unlink(spool, n)
    return len(names)
