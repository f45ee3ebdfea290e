"""The control store's writer: a low-priority process per node that moves the spool's
event batches into the node's SQLite file (WAL: readers never block it).

Data flow::

    driver, workers, node ─ recorder.py ─▶ spool/<pid>-<n>.ev
    writer (forked by the node, nice 19) ─ every PASS_S: read every batch ─▶ group by kind
        ─▶ one transaction of upserts (schema.py) ─▶ unlink the batches
        ─ rows beyond store_max_tasks go, oldest first
    SIGTERM (the node's shutdown, after its workers ended) or the node gone
        ─▶ a last pass, the spool removed, the file closed (its WAL folded in); rank 0's
           prunes old sessions at its start and again here

The store is an observer: a batch it cannot read is skipped, never fatal, and nothing
here runs on a task's path.
"""

from __future__ import annotations

import marshal
import os
import signal
import sys

from . import schema
from . import sessions

PASS_S = 0.2  # seconds between passes over the spool
MAX_FILES = 500  # batches per transaction (bounds the writer's memory)


def writer_main(node_dir: str, max_tasks: int, prune_root: str | None, keep: int) -> None:
    """Entry point of the forked writer; returns when the node is gone or says stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:  # tasks come first; (not SCHED_IDLE: starved on a loaded host, it would hold
        os.nice(19)  # up the session's shutdown, which waits for its last pass)
    except OSError:
        pass
    parent = os.getppid()
    spool = os.path.join(node_dir, "spool")
    db = schema.open_store(os.path.join(node_dir, sessions.STORE), create=True)
    if prune_root is not None:  # (rank 0: finished sessions beyond the newest `keep` go)
        sessions.prune(prune_root, keep, current=node_dir)
    ingest = schema.Ingest(db, max_tasks)
    while True:
        stopping = signal.sigtimedwait({signal.SIGTERM}, PASS_S) is not None
        stopping = stopping or os.getppid() != parent
        while drain(ingest, spool) >= MAX_FILES:
            pass
        if stopping:
            break
    drain(ingest, spool)
    try:  # a finished session's file stands alone (readers open it read-only: they
        db.execute("PRAGMA journal_mode = DELETE")  # could not fold a WAL back in)
    except Exception:  # noqa: BLE001 - a reader holds it: the WAL stays beside it
        pass
    db.conn.close()
    import shutil

    shutil.rmtree(spool, ignore_errors=True)
    if prune_root is not None:  # (again: sessions still ending at the start are over
        sessions.prune(prune_root, keep - 1, current=node_dir)  # now; this one is the
        #                                                          newest of those kept)


def drain(ingest: "schema.Ingest", spool: str) -> int:
    """One transaction over up to MAX_FILES batches; returns how many it took."""
    try:
        names = sorted(n for n in os.listdir(spool) if n.endswith(".ev") and n[0] != ".")
    except OSError:
        return 0
    names = names[:MAX_FILES]
    if not names:
        return 0
    batches = []
    for n in names:
        path = os.path.join(spool, n)
        try:
            with open(path, "rb") as f:
                batches.append(marshal.loads(f.read()))
        except (OSError, ValueError, EOFError, TypeError):
            pass  # (a batch cut short by a crash: skipped)
    try:
        ingest.apply(batches)
    except Exception as e:  # noqa: BLE001 - report once per pass, keep going
        print(f"mpray control store: could not record a batch of events: {e!r}",
              file=sys.stderr)
    for n in names:
        try:
            os.unlink(os.path.join(spool, n))
        except OSError:
            pass
    return len(names)
