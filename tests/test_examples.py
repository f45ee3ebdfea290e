"""The workload examples (examples/*.py built on examples/common.py), each in its
``--quick`` mode, on one host and under ``mpiexec -n 4``: each asserts its own results and
prints ``OK <name>`` at the end; here we check that, the exit status, its ``--json``
figures (mpray's and, where mpiexec is here, the mpi4py baseline's), and that every
session it made ended cleanly."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from test_mpi import MPIEXEC, launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
TIMEOUT = 180  # seconds: a --quick run with its baseline, 4 ranks on 2 cores


def workloads() -> list[str]:
    """The examples that take the shared command line (--quick, --json)."""
    out = []
    for name in sorted(os.listdir(EXAMPLES)):
        if name.endswith(".py") and name != "common.py":
            with open(os.path.join(EXAMPLES, name)) as f:
                if "common.parser(" in f.read():
                    out.append(name)
    return out


def test_the_workload_examples_are_all_here():
    assert set(workloads()) >= {"es.py", "ppo.py", "parameter_server.py", "simulation.py",
                                "serving.py", "allreduce.py"}


def check(r, name: str, out: str, baseline: bool) -> None:
    tail = r.stdout[-4000:]
    assert r.returncode == 0 and r.stdout.count(f"OK {name}") == 1, tail
    with open(out) as f:
        rec = json.load(f)
    assert rec["example"] == name and rec["mpray"] > 0, rec
    if baseline:
        assert rec["baselines"] and all(v > 0 for v in rec["baselines"].values()), rec


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("program", workloads())
def test_example_runs_on_one_host(program, tmp_path):
    out = str(tmp_path / "out.json")
    r = launch([sys.executable, os.path.join(EXAMPLES, program), "--quick", "--ranks", "2",
                "--json", out], TIMEOUT)
    check(r, program[:-3], out, baseline=shutil.which("mpiexec") is not None)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich)")
@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("program", workloads())
def test_example_runs_unchanged_under_mpiexec_4(program, tmp_path):
    out = str(tmp_path / "out.json")
    r = launch([MPIEXEC, "-n", "4", sys.executable, os.path.join(EXAMPLES, program),
                "--quick", "--json", out], TIMEOUT)
    check(r, program[:-3], out, baseline=True)
