"""The MPI backend, end to end: the scripts in tests/mpi/ under ``mpiexec -n 2`` and
``-n 4`` (4 ranks oversubscribe this 2-core machine), each bounded by a timeout.

Every script asserts on its own and prints ``OK <name>`` on rank 0 when it got to the
end; here we check that, the exit status, and that no rank left a process or a session
directory behind.  The launcher and mpi4py come from ``pip install mpi4py mpich`` (the
README's test command).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

from conftest import session_dir_base, wait_for

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 90  # one mpiexec run's limit (the behaviour matrix has MATRIX_TIMEOUT)
MATRIX_TIMEOUT = 240
# pytest-timeout only backs up the runs' own limits, which end the launcher's process
# group (a pytest-timeout firing first would leave the ranks running)
pytestmark = [pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)"),
              pytest.mark.timeout(MATRIX_TIMEOUT + 30)]


def _dirs() -> set[str]:
    try:
        return set(os.listdir(session_dir_base()))
    except FileNotFoundError:
        return set()


def run_mpi(script: str, ranks: int, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, os.path.join(HERE, "mpi", script)]
    return launch(cmd, TIMEOUT, env)


def launch(cmd: list, timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an mpiexec command line to its end or ``timeout``; then check that every
    rank's node and workers are gone, and so are their session directories."""
    before = _dirs()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True, cwd=HERE)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # kill the launcher's whole process group (it started every rank), by PID
        kids = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, 9)
        for k in kids:
            try:
                k.kill()
            except psutil.Error:
                pass
        out, _ = proc.communicate()
        pytest.fail(f"{' '.join(cmd[1:])} hung for {timeout} s:\n{out[-4000:]}")
    deadline = time.monotonic() + 5
    while _dirs() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not (_dirs() - before), f"session directories left: {_dirs() - before}"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("script", ["basics.py", "actors_spill.py", "inbox.py"])
def test_script_passes_under_mpiexec(script: str, ranks: int):
    r = run_mpi(script, ranks)
    name = script[:-3]
    assert r.returncode == 0 and f"OK {name}" in r.stdout, r.stdout[-4000:]
    assert r.stdout.count(f"OK {name}") == 1  # only rank 0 gets past init()


def test_objects_move_by_copying_into_export_windows_too():
    """MPRAY_MPI_ARENA=copy: the store is private memory, values are copied into a window
    (the path for MPIs whose window memory forked processes cannot share)."""
    r = run_mpi("basics.py", 2, env={"MPRAY_MPI_ARENA": "copy"})
    assert r.returncode == 0 and r.stdout.count("OK basics") == 1, r.stdout[-4000:]


@pytest.mark.parametrize("program, ok", [("mpi_demo.py", "OK mpi_demo"),
                                         ("quickstart.py", "shutdown:")])
def test_examples_run_under_mpiexec_4(program, ok):
    r = run_mpi(os.path.join("..", "..", "examples", program), 4)
    assert r.returncode == 0 and r.stdout.count(ok) == 1, r.stdout[-4000:]


MATRIX = ["test_objects.py", "test_nested.py", "test_errors.py", "test_actors.py",
          "test_actor_concurrency.py", "test_actor_faults.py"]


def test_single_host_suite_passes_under_mpiexec():
    """The behaviour suite as a matrix: the same tests, with every process a rank of an
    MPI job (rank 0 runs pytest against one session; see conftest.py).  Under MPI the
    store is an MPI window, an agent thread runs beside the driver, long tasks go by the
    node and may spill to rank 1."""
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           *[os.path.join(HERE, f) for f in MATRIX]]
    r = launch(cmd, MATRIX_TIMEOUT)
    tail = r.stdout[-5000:]
    assert r.returncode == 0 and " passed" in r.stdout and " failed" not in r.stdout, tail


def test_driver_exception_ends_the_job_promptly():
    t0 = time.monotonic()
    r = run_mpi("fails.py", 4)
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert r.stdout.count("RuntimeError: the driver failed on purpose") == 1, r.stdout
    assert took < 10 + 5, f"the job took {took:.1f} s to end"  # (+ launcher start-up)


def _segments() -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith("mpich_shm_")}


def test_a_job_its_launcher_ends_leaves_nothing_behind(tmp_path):
    """mpiexec ending a job (a scheduler's time limit, say) kills the ranks' process
    groups: each rank's node, in a group of its own, sees its rank gone and removes its
    workers, its session directory and the MPI library's shared-memory files."""
    script = tmp_path / "wait.py"
    script.write_text("import time, mpray as ray\nray.init()\nprint('up', flush=True)\n"
                      "time.sleep(60)\n")
    dirs, segs = _dirs(), _segments()
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 6  # hydra proxy, 2 ranks, 2 nodes, their workers
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"left running: {alive}"
    assert wait_for(lambda: _dirs() <= dirs and _segments() <= segs, 10), \
        f"left behind: {_dirs() - dirs} {_segments() - segs}"


def test_single_rank_launch_runs_single_host(tmp_path):
    """mpiexec -n 1 needs no MPI at all; MPRAY_BACKEND=local forces single-host mode."""
    script = tmp_path / "one.py"
    script.write_text(
        "import mpray as ray, sys\n"
        "ray.init()\n"
        "assert len(ray.nodes()) == 1\n"
        "assert 'mpi4py' not in sys.modules, 'single-host mode imported mpi4py'\n"
        "print('OK one', ray.get(ray.remote(lambda: 42).remote()))\n"
        "ray.shutdown()\n")
    for ranks, env in ((1, {}), (2, {"MPRAY_BACKEND": "local"})):
        out = subprocess.run([MPIEXEC, "-n", str(ranks), sys.executable, str(script)],
                             capture_output=True, text=True, timeout=TIMEOUT,
                             env={**os.environ, **env})
        assert out.returncode == 0 and out.stdout.count("OK one 42") == ranks, out
