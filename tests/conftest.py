"""Shared fixtures for the engine tests.

* ``ray_start``  - a fresh 2-CPU session per test (init + shutdown).
* ``ray_module`` - one 2-CPU session shared by a module's tests.
* ``ray_factory`` - ``ray_factory(**init_kwargs)`` for tests that need other settings
  (custom resources, GPUs, ...); shut down at teardown.
* an autouse leak check: after every test no child process of the test process is left
  (module sessions excepted while they live), no new ``mpray`` entry in /dev/shm that the
  test could have made, and every session the test process made is finished (no node
  holds it, its spool is gone: only its store and logs are kept).  The run keeps its
  sessions in a log directory of its own (``MPRAY_LOG_DIR``, removed at the end).
* ``PrivateTmpdir`` - an ``MPRAY_TMPDIR`` of one test's own for the mpray programs it
  starts (mpiexec, sbatch), so that what they leave is told apart from what other mpray
  programs on this machine do meanwhile.

The checks look only at what the test itself started: other mpray programs (another
user's script, another test run) may create and remove session directories and
/dev/shm entries at any time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import mpray  # noqa: E402
from mpray.control import sessions as _sessions  # noqa: E402
from mpray_mpi.launch import detect as _detect_launch  # noqa: E402


MB = 1024 * 1024
STORE = 256 * MB
INIT_KWARGS = dict(num_cpus=2, object_store_memory=STORE)
EXIT_GRACE_S = 5.0

_module_session = {"node_pid": None, "session_dir": None}

# Under mpiexec (the matrix run of tests/test_mpi.py): every rank runs pytest; ranks > 0
# serve inside init() and exit there, rank 0 runs the tests against one session that
# spans the whole run (MPI starts once per process), so per-test init/shutdown is skipped.
MPI_LAUNCH = _detect_launch()

# the sessions this test run makes are kept here, not among the user's (under mpiexec,
# where every rank must use one place, the launching test says where: PrivateTmpdir)
if not os.environ.get("MPRAY_LOG_DIR") and MPI_LAUNCH is None:
    os.environ["MPRAY_LOG_DIR"] = tempfile.mkdtemp(prefix="mpray-test-sessions-")
    _OWN_LOG_DIR = os.environ["MPRAY_LOG_DIR"]
else:
    _OWN_LOG_DIR = None


def pytest_unconfigure(config):
    if _OWN_LOG_DIR is not None:
        shutil.rmtree(_OWN_LOG_DIR, ignore_errors=True)


def pytest_configure(config):
    if MPI_LAUNCH is not None and MPI_LAUNCH.rank != 0:
        try:
            mpray.init(**INIT_KWARGS)  # serves until rank 0 shuts down, then exits
        except SystemExit:
            pass
        pytest.exit(f"rank {MPI_LAUNCH.rank} served the session", returncode=0)


@contextlib.contextmanager
def _shared_session():
    """A session that outlives single tests (the leak check allows its processes)."""
    ctx = mpray.init(**INIT_KWARGS)
    s = mpray.api._global.session
    _module_session.update(node_pid=s.node_pid, session_dir=s.session_dir)
    try:
        yield ctx
    finally:
        _module_session.update(node_pid=None, session_dir=None)
        mpray.shutdown()


@pytest.fixture(scope="session", autouse=True)
def _mpi_session():
    if MPI_LAUNCH is None:
        yield None
        return
    with _shared_session() as ctx:
        yield ctx


def session_dir_base(tmpdir: str | None = None) -> str:
    """Where mpray makes session directories when no log directory is set:
    ``<tmpdir>/mpray-<uid>``, ``tmpdir`` as mpray resolves it (MPRAY_TMPDIR, else
    TMPDIR, else /tmp)."""
    tmpdir = tmpdir or os.environ.get("MPRAY_TMPDIR") or tempfile.gettempdir()
    return os.path.join(tmpdir, f"mpray-{os.getuid()}")


def session_finished(path: str) -> bool:
    """A session that ended cleanly: no node holds it, no rank's spool is left (its
    writer finished), and its store is closed (no write-ahead log left)."""
    if not os.path.isdir(path) or _sessions.is_running(path):
        return False
    for d in _sessions.node_dirs(path):
        for left in ("spool", "store.db-wal"):
            if os.path.exists(os.path.join(d, left)):
                return False
    return True


def _session_dirs() -> set[str]:
    """Sessions made by this process (other processes may run mpray too): named
    ``session_<date>_<time>_<pid>_...``."""
    mine = str(os.getpid())
    root = _sessions.base(os.environ.get("MPRAY_LOG_DIR", ""), os.path.dirname(
        session_dir_base()))
    return {p for p in _sessions.sessions(root)
            if os.path.basename(p).split("_")[3:4] == [mine]}


class PrivateTmpdir:
    """An ``MPRAY_TMPDIR`` of one test's own.  The mpray programs the test starts (pass
    ``env`` to them: mpiexec, srun and sbatch hand the environment on to every rank)
    make their session directories under it and nowhere else, so whatever is left there
    is theirs, while other mpray programs on this machine come and go."""

    def __init__(self, parent: str | None = None):
        self.path = tempfile.mkdtemp(prefix="mpray-test-", dir=parent)
        self.base = session_dir_base(self.path)
        # (sessions in the default place under it, not the run's log directory)
        self.env = {"MPRAY_TMPDIR": self.path, "MPRAY_LOG_DIR": ""}

    def left(self) -> list[str]:
        """Sessions here that did not end cleanly (session_finished)."""
        return [os.path.basename(p) for p in _sessions.sessions(self.base)
                if not session_finished(p)]

    def check_clean(self, timeout: float = EXIT_GRACE_S, detail: str = "",
                    made: bool = True) -> None:
        """The programs made their sessions here (``made``: they called init()), and
        every one ended cleanly (its store and logs kept, nothing else)."""
        assert not made or _sessions.sessions(self.base), (
            f"no session directory was made under the job's MPRAY_TMPDIR ({self.path}): "
            f"was its environment passed on?\n{detail}")
        wait_for(lambda: not self.left(), timeout)
        assert not self.left(), f"sessions not ended cleanly in {self.base}: {self.left()}"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _shm_entries() -> set[str]:
    try:
        return {e for e in os.listdir("/dev/shm") if "mpray" in e}
    except FileNotFoundError:
        return set()


def _shm_holders(paths: set[str], skip: set[int]) -> dict[str, set[int]]:
    """``{path: pids}``: the processes (but those in ``skip``) that have one of ``paths``
    open or mapped.  Reads /proc of every process: only for the rare new entry."""
    held: dict[str, set[int]] = {}
    for pid in (int(e) for e in os.listdir("/proc") if e.isdigit()):
        if pid in skip:
            continue
        names = set()
        try:
            with open(f"/proc/{pid}/maps") as f:
                names |= {line.split(None, 5)[5].strip() for line in f
                          if line.count(" ") >= 5 and "/dev/shm/" in line}
            fd_dir = f"/proc/{pid}/fd"
            for fd in os.listdir(fd_dir):
                with contextlib.suppress(OSError):
                    names.add(os.readlink(os.path.join(fd_dir, fd)))
        except OSError:  # gone, or not ours to read
            pass
        for path in names & paths:
            held.setdefault(path, set()).add(pid)
    return held


def _new_shm_of_this_test(before: set[str]) -> list[str]:
    """The /dev/shm ``mpray`` entries that appeared during the test and that the test's
    processes could have made: owned by this user and not in use by a process outside
    this process's tree (another mpray program's, which may come and go meanwhile).
    The test's own processes are gone by now (checked before), so an entry of theirs
    that is left is held by nobody."""
    new = set()
    for e in _shm_entries() - before:
        with contextlib.suppress(OSError):
            if os.stat(os.path.join("/dev/shm", e)).st_uid == os.getuid():
                new.add(os.path.join("/dev/shm", e))
    if not new:
        return []
    held = _shm_holders(new, _descendants(os.getpid()))
    return sorted(os.path.basename(p) for p in new - set(held))


def _descendants(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)} | {pid}
    except psutil.NoSuchProcess:
        return set()


def _leftover_children(allowed: set[int]) -> list[psutil.Process]:
    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in allowed:
            continue
        out.append(p)
    return out


def _describe(procs: list[psutil.Process]) -> str:
    parts = []
    for p in procs:
        try:
            parts.append(f"pid {p.pid} ({p.status()}, {' '.join(p.cmdline())[:80]!r})")
        except psutil.Error:
            parts.append(f"pid {p.pid} (gone)")
    return ", ".join(parts)


def _kill_all(procs: list[psutil.Process]) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=2)


def wait_for(pred, timeout: float = 5.0, interval: float = 0.02):
    """Poll ``pred()`` until it returns a truthy value (returned) or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(interval)


@pytest.fixture(autouse=True)
def _no_leaks(request):
    shm_before = _shm_entries()
    dirs_before = _session_dirs()
    yield
    problems = []
    if mpray.is_initialized() and _module_session["node_pid"] is None:
        problems.append("the test left mpray initialized (no shutdown)")
        mpray.shutdown()
    def allowed() -> set[int]:  # a module session's node may fork workers at any time
        if _module_session["node_pid"] is None:
            return set()
        return _descendants(_module_session["node_pid"])

    left = wait_for(lambda: not _leftover_children(allowed()), EXIT_GRACE_S)
    if not left:
        procs = _leftover_children(allowed())
        if procs:
            problems.append(f"child processes left behind after {EXIT_GRACE_S} s: "
                            f"{_describe(procs)}")
            _kill_all(procs)
    new_shm = _new_shm_of_this_test(shm_before)
    if new_shm:
        problems.append(f"new /dev/shm entries: {sorted(new_shm)}")
    keep = {_module_session["session_dir"]}

    def unfinished() -> list[str]:
        return sorted(p for p in _session_dirs() - dirs_before - keep
                      if not session_finished(p))

    if not wait_for(lambda: not unfinished(), EXIT_GRACE_S):
        problems.append(f"sessions not ended cleanly: {unfinished()}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def ray_start(_mpi_session):
    if _mpi_session is not None:
        yield _mpi_session
        return
    ctx = mpray.init(**INIT_KWARGS)
    try:
        yield ctx
    finally:
        mpray.shutdown()


@pytest.fixture(scope="module")
def ray_module(_mpi_session):
    if _mpi_session is not None:
        yield _mpi_session
        return
    with _shared_session() as ctx:
        yield ctx
    procs = wait_for(lambda: not psutil.Process().children(recursive=True), EXIT_GRACE_S)
    if not procs:
        left = psutil.Process().children(recursive=True)
        _kill_all(left)
        pytest.fail(f"module session left processes: {_describe(left)}", pytrace=False)


@pytest.fixture
def ray_factory():
    """``ray_factory(**kwargs)`` inits with INIT_KWARGS updated by kwargs."""
    started = []

    def start(**kwargs):
        if MPI_LAUNCH is not None:
            pytest.skip("needs an init() of its own, and MPI starts once per process")
        ctx = mpray.init(**{**INIT_KWARGS, **kwargs})
        started.append(ctx)
        return ctx

    try:
        yield start
    finally:
        if started:
            mpray.shutdown()


# Events of the node's pure machine: the pure tests check its invariants after each one
# (a module opts in with ``pytestmark = pytest.mark.usefixtures("node_invariants")``).
SCHEDULER_EVENTS = (
    "submit", "put", "put_for", "promise", "refs", "subscribe", "pin", "unpin", "allocate",
    "free_range", "task_done", "worker_started", "worker_blocked", "worker_unblocked",
    "worker_died", "tasks_returned", "cancel", "tick", "schedule", "lease_end",
    "kill_actor", "actor_exit", "register_function", "attach_cluster", "update_load",
    "remote_done", "borrowed", "put_fetched", "name_claim", "name_answer", "name_lookup",
    "name_found", "name_free", "lookup_actor", "ask_name", "pg_op", "pg_ask",
    "pg_answered", "pg_reserve", "pg_reserved", "pg_placed", "pg_removed", "stream_yield",
    "gather_available", "avail_ask", "avail_answer",
    "stream_ack", "evicted", "end_pass", "spill_written", "spill_read",
    "lineage_is", "actor_checkpoint", "lineage_loaded",
)


@pytest.fixture
def node_invariants(monkeypatch):
    """Run ``Scheduler.check_invariants()`` after every outermost event (an event that
    triggers another, as a granted name does a submit, is checked once, at its end).
    Only for tests without processes: a forked node would inherit the patch."""
    from mpray.node.scheduler import Scheduler

    checked = {"events": 0}

    def wrap(orig):
        def event(self, *args, **kwargs):
            depth = getattr(self, "_event_depth", 0)
            self._event_depth = depth + 1
            try:
                return orig(self, *args, **kwargs)
            finally:
                self._event_depth = depth
                if depth == 0:
                    self.check_invariants()
                    checked["events"] += 1
        return event

    for name in SCHEDULER_EVENTS:
        monkeypatch.setattr(Scheduler, name, wrap(getattr(Scheduler, name)))
    yield checked
