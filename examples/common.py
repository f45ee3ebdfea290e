"""What the workload examples share: their command line, their MPI baselines, their report.

Each example (es.py, ppo.py, parameter_server.py, simulation.py, serving.py, allreduce.py)
runs the same way on a laptop and under a launcher:

    python examples/es.py [--quick] [--json out.json]
    mpiexec -n 4 python examples/es.py [--quick]

Under a launcher every rank first runs the example's mpi4py baseline (an SPMD program,
``baseline(comm, args)``), then calls ``ray.init()``: rank 0 goes on to run the mpray
version and the other ranks serve as nodes.  On one host the baseline runs as a child
``mpiexec -n K`` of the same file (``--_baseline``), when an ``mpiexec`` is found.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

BASELINE_TIMEOUT = 600  # seconds a child mpiexec of a baseline may run


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every example takes (add your own to what this returns)."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a small run (seconds): what the test suite runs")
    p.add_argument("--json", metavar="PATH", help="write the figures to PATH as JSON")
    p.add_argument("--ranks", type=int, default=None,
                   help="processes for the one-host mpi4py baseline (default: the CPUs)")
    p.add_argument("--no-baseline", action="store_true", help="run mpray's version only")
    p.add_argument("--_baseline", metavar="PATH", help=argparse.SUPPRESS)
    return p


def launched() -> bool:
    """Is this process one rank of an MPI (or srun) job?"""
    from mpray_mpi.launch import detect

    return detect() is not None


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def run_baseline(args, baseline) -> dict | None:
    """Run ``baseline(comm, args)`` on every rank of an MPI job and return rank 0's result
    (a JSON-able dict) on the process that goes on to run mpray's version.

    Under a launcher, every rank runs it here and now; ranks other than 0 get None.  On one
    host, a child ``mpiexec -n K`` runs this same file with ``--_baseline``; None (and a
    note) when there is no mpiexec or mpi4py, or with ``--no-baseline``.
    """
    if args.no_baseline:
        return None
    if args._baseline or launched():
        # (as mpray_mpi does before it first imports mpi4py: its store window lives until
        # MPI_Finalize, which UCX would report at exit as a leak, on every rank)
        os.environ.setdefault("UCX_LOG_LEVEL", "error")
        from mpray_mpi import quiet_open_mpi

        quiet_open_mpi()  # (mpray would, but this imports mpi4py first)
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        out = baseline(comm, args)
        comm.Barrier()
        if comm.rank == 0 and args._baseline:
            with open(args._baseline, "w") as f:
                json.dump(out, f)
        return out if comm.rank == 0 else None
    return _child_baseline(args)


def _child_baseline(args) -> dict | None:
    mpiexec = shutil.which("mpiexec")
    if importlib.util.find_spec("mpi4py") is None:
        mpiexec = None
    if mpiexec is None:
        print("(no mpiexec and mpi4py here: the MPI baseline is skipped)")
        return None
    n = args.ranks or cpus()
    with tempfile.TemporaryDirectory(prefix="mpray-example-") as d:
        out = os.path.join(d, "baseline.json")
        argv = [a for a in sys.argv[1:] if a != "--json" and not a.startswith("--json=")]
        if args.json in argv:  # drop the value of "--json PATH" too
            argv.remove(args.json)
        cmd = [mpiexec, "-n", str(n), sys.executable, os.path.abspath(sys.argv[0]), *argv,
               "--_baseline", out]
        env = {k: v for k, v in os.environ.items() if k != "MPRAY_BACKEND"}
        r = subprocess.run(cmd, env=env, timeout=BASELINE_TIMEOUT, capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"the MPI baseline failed (rc {r.returncode}): "
                               f"{' '.join(cmd)}\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        with open(out) as f:
            return json.load(f)


def is_baseline_child(args) -> bool:
    """True in a ``--_baseline`` child: it ran the baseline and must exit, not run mpray."""
    return bool(args._baseline)


class Stopwatch:
    """``with Stopwatch() as t: ...; t.s`` -- wall seconds of the block."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def report(args, name: str, metric: str, unit: str, mpray: float, baselines: dict,
           higher_is_better: bool = True, **extra) -> dict:
    """Print the example's figure beside each baseline (ratio > 1: mpray is better) and
    write it to ``--json``; ``baselines`` maps a name to a value (None: not run)."""
    rows = {"mpray": mpray, **{k: v for k, v in baselines.items() if v is not None}}
    print(f"\n{name}: {metric} ({unit}; {'higher' if higher_is_better else 'lower'} is better)")
    for who, v in rows.items():
        ratio = "" if who == "mpray" else f"   mpray is {_ratio(mpray, v, higher_is_better):.2f}x"
        print(f"  {who:<28} {v:12.4g}{ratio}")
    rec = {"example": name, "metric": metric, "unit": unit, "higher_is_better": higher_is_better,
           "mpray": mpray, "baselines": {k: v for k, v in baselines.items() if v is not None},
           "ratios": {k: _ratio(mpray, v, higher_is_better)
                      for k, v in baselines.items() if v is not None}, **extra}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rec, f, indent=1)
    return rec


def _ratio(mine: float, theirs: float, higher_is_better: bool) -> float:
    if not mine or not theirs:
        return float("nan")
    return mine / theirs if higher_is_better else theirs / mine
