"""Where a session's files live, and which sessions are kept.

Data flow::

    init() ─ base(cfg) ─▶ <log_dir> or <tmpdir>/mpray-<uid>/
           ─ create(base, name) ─▶ session_<date>_<time>_<pid>/   (rank k: .../rank-<k>/)
                                     store.db   the control store (writer.py)
                                     spool/     events waiting for the writer (removed)
                                     logs/      worker-<pid>.out / .err
                                   latest ─▶ the newest session (a symlink)
    the node holds <node dir>/.lock (flock) while it runs: prune() and readers tell a
    running session from a finished one by trying that lock
    readers (state API, CLI, report) ─ find(spec) ─▶ a session directory ─ node_dirs() ─▶
                                       its rank directories

Kept after ``shutdown()`` for post-mortem use: the store and the logs; shared memory and
processes never are.  Only the newest ``keep_sessions`` finished sessions stay.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time

PREFIX = "session_"
LATEST = "latest"
LOCK = ".lock"
STORE = "store.db"
SYNC = ".sync-"  # in a spool: a reader asks the writer for a pass now (writer.py)


def base(log_dir: str, tmpdir: str) -> str:
    """The directory sessions are made in (and looked up in)."""
    return log_dir or os.path.join(tmpdir, f"mpray-{os.getuid()}")


def new_name() -> str:
    job = os.environ.get("SLURM_JOB_ID")
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return f"{PREFIX}{stamp}_{os.getpid()}" + (f"_j{job}" if job else "") + \
        f"_{os.urandom(2).hex()}"


def create(root: str, name: str, rank: int = 0) -> tuple[str, str]:
    """Make the session (rank 0) or its rank's directory; (session dir, node dir)."""
    os.makedirs(root, mode=0o700, exist_ok=True)
    session = os.path.join(root, name)
    node = session if rank == 0 else os.path.join(session, f"rank-{rank}")
    os.makedirs(node, mode=0o700, exist_ok=True)
    for sub in ("spool", "logs"):
        os.makedirs(os.path.join(node, sub), mode=0o700, exist_ok=True)
    if rank == 0:
        _point_latest(root, name)
    return session, node


def _point_latest(root: str, name: str) -> None:
    tmp = os.path.join(root, f".{LATEST}-{os.getpid()}")
    try:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(name, tmp)
        os.replace(tmp, os.path.join(root, LATEST))  # (atomic: readers never see none)
    except OSError:
        pass  # (a filesystem without symlinks: find() falls back to the newest)


_held: list[int] = []  # this process's lock fd (the node's), if any


def hold(node_dir: str) -> None:
    """Take the node directory's lock for the node's life (children it forks call
    ``release_inherited``: the lock is the node's alone)."""
    try:
        fd = os.open(os.path.join(node_dir, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                     0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # (a filesystem without locks: the session only looks finished)
    _held.append(fd)


def release_inherited() -> None:
    """In a child of the node: close the inherited lock fd (the node's lock stays)."""
    while _held:
        try:
            os.close(_held.pop())
        except OSError:
            pass


def is_running(session: str) -> bool:
    """Does a node still hold this session (any of its ranks)?"""
    for d in node_dirs(session):
        try:
            fd = os.open(os.path.join(d, LOCK), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
    return False


def node_dirs(session: str) -> list[str]:
    """The session's node directories: rank 0's (the session itself), then the others."""
    out = [session]
    try:
        ranks = sorted((e.name for e in os.scandir(session)
                        if e.is_dir() and e.name.startswith("rank-")),
                       key=lambda n: int(n[5:]) if n[5:].isdigit() else 0)
    except OSError:
        ranks = []
    return out + [os.path.join(session, r) for r in ranks]


def sessions(root: str) -> list[str]:
    """The sessions in ``root``, oldest first."""
    try:
        found = [e.path for e in os.scandir(root) if e.is_dir(follow_symlinks=False)
                 and e.name.startswith(PREFIX)]
    except OSError:
        return []
    return sorted(found, key=_mtime)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def prune(root: str, keep: int, current: str = "") -> None:
    """Remove finished sessions beyond the newest ``keep`` (running ones never)."""
    finished = [s for s in sessions(root) if s != current and not is_running(s)]
    for s in finished[: max(0, len(finished) - keep)]:
        shutil.rmtree(s, ignore_errors=True)


def find(spec: str | None, log_dir: str | None = None, tmpdir: str | None = None) -> str:
    """The session a reader means: a directory, ``latest`` (the default) or a session's
    name; raises ``LookupError`` saying where it looked."""
    import tempfile

    root = base(log_dir if log_dir is not None else os.environ.get("MPRAY_LOG_DIR", ""),
                tmpdir or os.environ.get("MPRAY_TMPDIR") or tempfile.gettempdir())
    spec = spec or LATEST
    if os.path.isdir(spec) and os.path.exists(os.path.join(spec, STORE)) or \
            os.path.isdir(spec) and os.path.basename(spec.rstrip("/")).startswith(PREFIX):
        return os.path.abspath(spec)
    if spec == LATEST:
        link = os.path.join(root, LATEST)
        if os.path.isdir(link):
            return os.path.realpath(link)
        found = sessions(root)
        if found:
            return found[-1]
    elif os.path.isdir(os.path.join(root, spec)):
        return os.path.join(root, spec)
    raise LookupError(f"no mpray session {spec!r} in {root} (set MPRAY_LOG_DIR or pass "
                      "--session DIR to look elsewhere)")
