"""Shared fixtures for the engine tests.

* ``ray_start``  - a fresh 2-CPU session per test (init + shutdown).
* ``ray_module`` - one 2-CPU session shared by a module's tests.
* ``ray_factory`` - ``ray_factory(**init_kwargs)`` for tests that need other settings
  (custom resources, GPUs, ...); shut down at teardown.
* an autouse leak check: after every test no child process of the test process is left
  (module sessions excepted while they live), no new ``mpray`` entry in /dev/shm and no
  new session directory under ``$TMPDIR/mpray-<uid>``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import mpray  # noqa: E402
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


def session_dir_base() -> str:
    return os.path.join(tempfile.gettempdir(), f"mpray-{os.getuid()}")


def _session_dirs() -> set[str]:
    """Session directories created by this process (other processes may run mpray too)."""
    mine = f"{os.getpid()}-"
    try:
        return {e for e in os.listdir(session_dir_base()) if e.split("-", 1)[0] + "-" == mine
                or e.startswith("j") and f"-{mine}" in e}
    except FileNotFoundError:
        return set()


def _shm_entries() -> set[str]:
    try:
        return {e for e in os.listdir("/dev/shm") if "mpray" in e}
    except FileNotFoundError:
        return set()


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
    new_shm = _shm_entries() - shm_before
    if new_shm:
        problems.append(f"new /dev/shm entries: {sorted(new_shm)}")
    keep = {os.path.basename(_module_session["session_dir"] or "")}
    new_dirs = wait_for(lambda: not (_session_dirs() - dirs_before - keep), EXIT_GRACE_S)
    if not new_dirs:
        problems.append(f"session directories left in {session_dir_base()}: "
                        f"{sorted(_session_dirs() - dirs_before - keep)}")
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
