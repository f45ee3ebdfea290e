"""The SLURM job scripts in jobscripts/, submitted with ``sbatch --wait`` to a real
single-node SLURM cluster (munged + slurmctld + slurmd) that this module starts and stops.

The README's test command installs Debian's ``slurm-wlm``; without it (or without root)
these tests are skipped with the reason.  Each job runs examples/mpi_demo.py over 2–4
ranks; we check its exit status, its output and that no rank left a session directory.
Each job gets an MPRAY_TMPDIR of its own (conftest.PrivateTmpdir; sbatch, srun and
mpiexec pass the environment on to the ranks), so the check sees only the job's session
directories, not those of other mpray programs running on this machine meanwhile.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from conftest import REPO, PrivateTmpdir

sys.path.insert(0, os.path.join(REPO, "jobscripts", "ci"))
import slurm_cluster  # noqa: E402

pytestmark = [
    pytest.mark.skipif(shutil.which("slurmctld") is None,
                       reason="no SLURM here (apt-get install slurm-wlm munge)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="the test cluster runs as root"),
    pytest.mark.timeout(600),
]
SBATCH_TIMEOUT = 180


@pytest.fixture(scope="module")
def slurm():
    d = tempfile.mkdtemp(prefix="mpray-slurm-")
    try:
        env = slurm_cluster.up(d)
        yield {**os.environ, **env}, d
    finally:
        slurm_cluster.down(d)
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("script, extra, program, ok", [
    ("single_node.sbatch", [], "examples/mpi_demo.py", "OK mpi_demo"),
    ("multi_node.sbatch", ["--nodes=1"], "examples/mpi_demo.py", "OK mpi_demo"),  # one node here
    ("mpirun.sbatch", [], "examples/mpi_demo.py", "OK mpi_demo"),
    ("single_node.sbatch", [], "examples/quickstart.py", "shutdown:"),
])
def test_job_script_runs_a_program(slurm, script, extra, program, ok):
    env, d = slurm
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
    finally:
        tmp.remove()
