"""The MPI backend, end to end: the scripts in tests/mpi/ under ``mpiexec -n 2`` and
``-n 4`` (4 ranks oversubscribe this 2-core machine), each bounded by a timeout.

Every script asserts on its own and prints ``OK <name>`` on rank 0 when it got to the
end; here we check that, the exit status, and that no rank left a process or a session
directory behind.  Each job gets an MPRAY_TMPDIR of its own (conftest.PrivateTmpdir), so
the check sees only its session directories, not those of other mpray programs running
on this machine meanwhile.  The launcher and mpi4py come from ``pip install mpi4py
mpich`` (the README's test command).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

import mpis
from conftest import PrivateTmpdir, wait_for

pytest.importorskip("mpi4py")
MPIS = mpis.find()
MPIEXEC = MPIS["mpich"].mpiexec if "mpich" in MPIS else shutil.which("mpiexec")
HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT = 90  # one mpiexec run's limit (the behaviour matrix has MATRIX_TIMEOUT)
MATRIX_TIMEOUT = 240
# pytest-timeout only backs up the runs' own limits, which end the launcher's process
# group (a pytest-timeout firing first would leave the ranks running)
pytestmark = [pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)"),
              pytest.mark.timeout(MATRIX_TIMEOUT + 30)]


# scripts that use mpray_mpi's parts alone: no init(), so no session directory
NO_SESSION = {"inbox.py"}


def run_mpi(script: str, ranks: int, env: dict | None = None,
            mpiexec: str | None = None) -> subprocess.CompletedProcess:
    cmd = [mpiexec or MPIEXEC, "-n", str(ranks), sys.executable,
           os.path.join(HERE, "mpi", script)]
    return launch(cmd, TIMEOUT, env, sessions=script not in NO_SESSION)


def launch(cmd: list, timeout: float, env: dict | None = None,
           sessions: bool = True) -> subprocess.CompletedProcess:
    """Run an mpiexec command line to its end or ``timeout``; then check that every
    rank's node and workers are gone, and so are their session directories: made
    (``sessions``) under an MPRAY_TMPDIR of this run's own, and all removed."""
    tmp = PrivateTmpdir()
    try:
        out, returncode = _run_launcher(cmd, timeout, {**(env or {}), **tmp.env})
        tmp.check_clean(detail=out[-3000:], made=sessions)
    finally:
        tmp.remove()
    return subprocess.CompletedProcess(cmd, returncode, out, None)


def _run_launcher(cmd: list, timeout: float, env: dict) -> tuple[str, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env}, start_new_session=True, cwd=HERE)
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
    return out, proc.returncode


SCRIPTS = ["basics.py", "actors_spill.py", "inbox.py", "placement_groups.py",
           "util_queue.py", "pool.py", "generators.py", "control_store.py", "spill.py",
           "collective.py"]
# MPICH with shared memory at 2 and 4 ranks; every other MPI and mode at 3 ranks
OTHER = [(m, mode) for m in ("mpich", "openmpi") for mode in ("shared", "network")
         if (m, mode) != ("mpich", "shared")]
# the error lines of MPI libraries (Open MPI's "[host:pid] file:line Error: ..."): a clean
# run prints none
MPI_ERROR = re.compile(r"^\[[^\]]+:\d+\].*\b(Error|ERROR)\b", re.M)


def check_script(r, script: str) -> None:
    name = script[:-3]
    assert r.returncode == 0 and f"OK {name}" in r.stdout, r.stdout[-4000:]
    assert r.stdout.count(f"OK {name}") == 1  # only rank 0 gets past init()
    assert not MPI_ERROR.search(r.stdout), MPI_ERROR.search(r.stdout).group(0)


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("script", SCRIPTS)
def test_script_passes_under_mpiexec(script: str, ranks: int):
    check_script(run_mpi(script, ranks), script)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("mpi, mode", OTHER)
def test_script_passes_under_each_mpi_and_across_the_network(mpi: str, mode: str,
                                                             script: str):
    """The same scripts under Open MPI, and with shared memory between ranks turned off
    (as between hosts: every byte and claim crosses MPI's network layer)."""
    if mpi not in MPIS:
        pytest.skip(f"no {mpi} here (the README's test command installs both)")
    m = MPIS[mpi]
    check_script(run_mpi(script, 3, m.environ(mode), m.mpiexec), script)


def test_objects_move_by_copying_into_export_windows_too():
    """MPRAY_MPI_ARENA=copy: the store is private memory, values are copied into a window
    (the path for MPIs whose window memory forked processes cannot share)."""
    r = run_mpi("basics.py", 2, env={"MPRAY_MPI_ARENA": "copy"})
    assert r.returncode == 0 and r.stdout.count("OK basics") == 1, r.stdout[-4000:]


def test_spilled_values_move_by_copying_into_export_windows_too():
    """Spilling with MPRAY_MPI_ARENA=copy: a value read back at its home rank is copied
    into the export window for its reader."""
    r = run_mpi("spill.py", 2, env={"MPRAY_MPI_ARENA": "copy"})
    assert r.returncode == 0 and r.stdout.count("OK spill") == 1, r.stdout[-4000:]


def test_lines_of_ranks_whose_disks_rank_0_cannot_read_reach_its_driver():
    """Ranks > 0 with log directories of their own (as hosts with local disks): their
    agents send their workers' lines to rank 0, which prints them labelled."""
    own_dir = ('r=${PMI_RANK:-$OMPI_COMM_WORLD_RANK}; if [ "$r" != 0 ]; then '
               'export MPRAY_LOG_DIR="$MPRAY_TMPDIR/disk-of-rank-$r"; fi; exec "$0" "$@"')
    cmd = [MPIEXEC, "-n", "3", "sh", "-c", own_dir, sys.executable,
           os.path.join(HERE, "mpi", "remote_logs.py")]
    r = launch(cmd, TIMEOUT)
    assert r.returncode == 0 and r.stdout.count("OK remote_logs") == 1, r.stdout[-4000:]
    for k, word in enumerate(["zero", "one", "two"]):
        assert re.search(rf"\(hello pid=\d+, rank={k}\) hello from a task on rank {word}",
                         r.stdout), r.stdout[-4000:]


@pytest.mark.parametrize("program, ok", [("mpi_demo.py", "OK mpi_demo"),
                                         ("quickstart.py", "shutdown:")])
def test_examples_run_under_mpiexec_4(program, ok):
    r = run_mpi(os.path.join("..", "..", "examples", program), 4)
    assert r.returncode == 0 and r.stdout.count(ok) == 1, r.stdout[-4000:]


MATRIX = ["test_objects.py", "test_nested.py", "test_errors.py", "test_actors.py",
          "test_actor_concurrency.py", "test_actor_faults.py"]


@pytest.mark.parametrize("mpi, mode", [("mpich", "shared"), *OTHER])
def test_single_host_suite_passes_under_mpiexec(mpi: str, mode: str):
    """The behaviour suite as a matrix: the same tests, with every process a rank of an
    MPI job (rank 0 runs pytest against one session; see conftest.py).  Under MPI the
    store is an MPI window, an agent thread runs beside the driver, long tasks go by the
    node and may spill to rank 1.  Under each MPI, with shared memory and without."""
    if mpi not in MPIS:
        pytest.skip(f"no {mpi} here (the README's test command installs both)")
    m = MPIS[mpi]
    cmd = [m.mpiexec, "-n", "2", sys.executable, "-m", "pytest", "-q", "-p",
           "no:cacheprovider", *[os.path.join(HERE, f) for f in MATRIX]]
    r = launch(cmd, MATRIX_TIMEOUT, m.environ(mode))
    tail = r.stdout[-5000:]
    assert r.returncode == 0 and " passed" in r.stdout and " failed" not in r.stdout, tail


def test_driver_exception_ends_the_job_promptly():
    t0 = time.monotonic()
    r = run_mpi("fails.py", 4)
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert r.stdout.count("RuntimeError: the driver failed on purpose") == 1, r.stdout
    assert took < 10 + 5, f"the job took {took:.1f} s to end"  # (+ launcher start-up)


def test_a_ranks_node_dying_ends_the_job_naming_the_rank_host_and_cause():
    t0 = time.monotonic()
    r = run_mpi("node_dies.py", 2)
    took = time.monotonic() - t0
    assert r.returncode != 0 and "FAILED" not in r.stdout, r.stdout[-3000:]
    line = next((x for x in r.stdout.splitlines() if "node process" in x), "")
    assert f"rank 1 on {socket.gethostname()}" in line, r.stdout[-3000:]
    assert "killed by SIGKILL" in line, line
    assert took < 10 + 5, f"the job took {took:.1f} s to end"  # (+ launcher start-up)


# shared-memory files of MPI libraries (MPICH; Open MPI's shared-memory transports)
SEGMENT_PREFIXES = ("/dev/shm/mpich_shm_", "/dev/shm/vader_segment.", "/dev/shm/sm_segment.")


def _segments_of(procs: list[psutil.Process]) -> set[str]:
    """The MPI shared-memory files that ``procs`` have mapped or open (and that still
    have a name): the job's own, whatever other MPI jobs on this machine make."""
    out = set()
    for p in procs:
        try:
            with open(f"/proc/{p.pid}/maps") as f:
                paths = {line.split(None, 5)[5].strip() for line in f
                         if line.count(" ") >= 5 and "/dev/shm/" in line}
            fd_dir = f"/proc/{p.pid}/fd"
            for fd in os.listdir(fd_dir):
                try:
                    paths.add(os.readlink(os.path.join(fd_dir, fd)))
                except OSError:
                    pass
        except OSError:
            continue
        out |= {q for q in paths
                if q.startswith(SEGMENT_PREFIXES) and not q.endswith(" (deleted)")}
    return out


def test_a_job_its_launcher_ends_leaves_nothing_behind(tmp_path):
    """mpiexec ending a job (a scheduler's time limit, say) kills the ranks' process
    groups: each rank's node, in a group of its own, sees its rank gone and removes its
    workers, its session directory and the MPI library's shared-memory files."""
    script = tmp_path / "wait.py"
    script.write_text("import time, mpray as ray\nray.init()\nprint('up', flush=True)\n"
                      "time.sleep(60)\n")
    tmp = PrivateTmpdir()
    proc = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **tmp.env}, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        tree = psutil.Process(proc.pid).children(recursive=True)
        assert len(tree) >= 6  # hydra proxy, 2 ranks, 2 nodes, their workers
        assert tmp.left(), "the ranks made no session directory under their MPRAY_TMPDIR"
        segs = _segments_of(tree)  # made in MPI_Init and at init(): all there by now
        os.kill(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
        gone, alive = psutil.wait_procs(tree, timeout=10)
        assert not alive, f"left running: {alive}"
        assert wait_for(lambda: not tmp.left() and not any(map(os.path.exists, segs)), 10), \
            f"left behind: {tmp.left()} {sorted(filter(os.path.exists, segs))}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        tmp.remove()


def test_single_rank_launch_runs_single_host(tmp_path):
    """mpiexec -n 1 needs no MPI at all; MPRAY_BACKEND=local forces single-host mode."""
    script = tmp_path / "one.py"
    script.write_text(
        "import mpray as ray, sys\n"
        "ray.init()\n"
        "assert len(ray.nodes()) == 1\n"
        "assert 'mpi4py' not in sys.modules, 'single-host mode imported mpi4py'\n"
        # (one write per line: the launcher forwards each rank's output as it comes)
        "sys.stdout.write(f'OK one {ray.get(ray.remote(lambda: 42).remote())}\\n')\n"
        "sys.stdout.flush()\n"
        "ray.shutdown()\n")
    for ranks, env in ((1, {}), (2, {"MPRAY_BACKEND": "local"})):
        r = launch([MPIEXEC, "-n", str(ranks), sys.executable, str(script)], TIMEOUT, env)
        assert r.returncode == 0 and r.stdout.count("OK one 42") == ranks, r.stdout


# 64 ranks on this 2-core machine: 320 processes (each rank's own, its node, worker,
# control-store writer and actor), CPU-bound: 45-50 s here (init about half of it: 64 x
# 0.8 s of CPU), and about 4 GiB more memory in use at the peak (3.4 GiB idle, before the
# actors: benchmarks/mpi_scale.py, "Many ranks" in benchmarks/README.md)
MANY_RANKS = 64
MANY_RANKS_TIMEOUT = 180
MANY_RANKS_MEMORY = 6 << 30


def test_64_ranks_run_a_small_program_and_leave_nothing_behind():
    """Tasks pinned to every rank, an actor on each, values made on the last rank read
    on rank 0 and one made on rank 0 read on every rank; the job ends with status 0, every
    session ended cleanly (``launch``) and no process of the job is left."""
    free = psutil.virtual_memory().available
    if free < MANY_RANKS_MEMORY:
        pytest.skip(f"{MANY_RANKS} ranks need about {MANY_RANKS_MEMORY >> 30} GiB of free "
                    f"memory; {free / (1 << 30):.1f} GiB here")
    script = os.path.join(HERE, "mpi", "many_ranks.py")
    r = launch([MPIEXEC, "-n", str(MANY_RANKS), sys.executable, script], MANY_RANKS_TIMEOUT)
    check_script(r, "many_ranks.py")

    def left() -> list:
        return [p for p in psutil.process_iter(["cmdline"])
                if script in (p.info["cmdline"] or ())]

    assert wait_for(lambda: not left(), 10), f"left running: {left()}"
