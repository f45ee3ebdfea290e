"""The SLURM job scripts in jobscripts/, submitted with ``sbatch --wait`` to a real
single-node SLURM cluster (munged + slurmctld + slurmd) that this module starts and stops,
and multi_node.sbatch / mpirun.sbatch with ``--nodes=2`` to a two-node one (two slurmd on
this machine, node1 and node2: jobscripts/ci/slurm_cluster.py), checking that ranks on both
SLURM nodes joined the job's mpray cluster.

The README's test command installs Debian's ``slurm-wlm``; without it (or without root)
these tests are skipped with the reason.  Each job runs examples/mpi_demo.py over 2–4
ranks; we check its exit status, its output and that no rank left a session directory.
Each job gets an MPRAY_TMPDIR of its own (conftest.PrivateTmpdir; sbatch, srun and
mpiexec pass the environment on to the ranks), so the check sees only the job's session
directories, not those of other mpray programs running on this machine meanwhile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from conftest import EXIT_GRACE_S, REPO, PrivateTmpdir, wait_for

sys.path.insert(0, os.path.join(REPO, "jobscripts", "ci"))
import slurm_cluster  # noqa: E402

pytestmark = [
    pytest.mark.skipif(shutil.which("slurmctld") is None,
                       reason="no SLURM here (apt-get install slurm-wlm munge)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test cluster runs as root"),
    pytest.mark.timeout(600),
]
SBATCH_TIMEOUT = 180


def _cluster(nodes: int):
    d = tempfile.mkdtemp(prefix=f"mpray-slurm{nodes}-")
    try:
        env = slurm_cluster.up(d, nodes=nodes)
        # (Debian's SLURM pmi2 plugin garbles long key values: MPICH's UCX address with
        # every transport UCX finds here can pass its limit, and MPI_Init then fails on
        # every rank ("mpi/pmi2: value not properly terminated").  These "nodes" share
        # one host: shared memory and TCP are all they use; the README says what to do
        # on a real cluster)
        tls = {"UCX_TLS": os.environ.get("UCX_TLS", "self,sm,tcp")} if nodes > 1 else {}
        yield {**os.environ, **tls, **env}, d
    finally:
        slurm_cluster.down(d)  # cancels jobs left, stops the daemons: raises if one stays
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm():
    """One node (slurmd named after this host)."""
    yield from _cluster(1)


@pytest.fixture(scope="module")
def slurm2():
    """Two nodes, node1 and node2: two slurmd on this machine, each on its own port."""
    yield from _cluster(2)


def _job_processes(tmpdir: str) -> list[psutil.Process]:
    """Processes whose environment has this job's own MPRAY_TMPDIR: its ranks and their
    workers (slurmstepd starts them, so they are no children of this test), not other
    programs on this machine."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("MPRAY_TMPDIR") == tmpdir and p.status() != "zombie":
                found.append(p)
        except psutil.Error:
            pass
    return found


def _run_job(cluster, script: str, program: str, extra: list[str], ok: str) -> str:
    """``sbatch --wait`` the script with the program; checks the exit status, that rank 0
    alone printed ``ok``, and that the job left no session and no process behind.
    Returns the job's output."""
    env, d = cluster
    out = os.path.join(d, f"{script}-{os.path.basename(program)}.out")
    tmp = PrivateTmpdir(parent=d)
    try:
        t0 = time.monotonic()
        r = subprocess.run(["sbatch", "--wait", "--time=5", f"--output={out}", *extra,
                            os.path.join(REPO, "jobscripts", script), program],
                           cwd=REPO, env={**env, **tmp.env}, capture_output=True, text=True,
                           timeout=SBATCH_TIMEOUT)
        text = open(out).read() if os.path.exists(out) else "(no output file)"
        assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{text[-3000:]}"
        assert text.count(ok) == 1, text[-3000:]  # rank 0 only
        assert time.monotonic() - t0 < SBATCH_TIMEOUT
        tmp.check_clean(detail=text[-3000:])
        wait_for(lambda: not _job_processes(tmp.path), EXIT_GRACE_S)
        assert not _job_processes(tmp.path), _job_processes(tmp.path)
        return text
    finally:
        tmp.remove()


@pytest.mark.parametrize("script, extra, program, ok", [
    ("single_node.sbatch", [], "examples/mpi_demo.py", "OK mpi_demo"),
    ("multi_node.sbatch", ["--nodes=1"], "examples/mpi_demo.py", "OK mpi_demo"),  # one node
    ("mpirun.sbatch", [], "examples/mpi_demo.py", "OK mpi_demo"),
    ("single_node.sbatch", [], "examples/quickstart.py", "shutdown:"),
])
def test_job_script_runs_a_program(slurm, script, extra, program, ok):
    _run_job(slurm, script, program, extra, ok)


@pytest.mark.parametrize("script", ["multi_node.sbatch", "mpirun.sbatch"])
def test_two_node_job_runs_ranks_on_both_slurm_nodes(slurm2, script):
    """--nodes=2 --ntasks-per-node=2 on the two-node cluster: srun (or mpiexec, through
    srun) puts ranks 0-1 on node1 and 2-3 on node2, and all 4 join one mpray cluster: the
    program pins a task to each of ray.nodes() and prints its rank's SLURMD_NODENAME."""
    text = _run_job(slurm2, script, "jobscripts/ci/slurm_nodes.py",
                    ["--nodes=2", "--ntasks-per-node=2"],
                    "OK slurm_nodes: 4 ranks on 2 SLURM node(s)")
    ranks = re.findall(r"^rank (\d) on SLURM node (\S+) \(SLURM_NODEID (\d), "
                       r"SLURM_PROCID (\d)\)$", text, re.M)
    assert [(r, n, i) for r, n, i, _p in ranks] == [
        ("0", "node1", "0"), ("1", "node1", "0"), ("2", "node2", "1"), ("3", "node2", "1")
    ], text[-3000:]
    if script == "multi_node.sbatch":  # srun started each rank itself: its task id is the rank
        assert [p for *_x, p in ranks] == ["0", "1", "2", "3"], text[-3000:]
