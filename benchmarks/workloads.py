#!/usr/bin/env python
"""The Ray paper's workloads (examples/*.py), each beside its baseline, in one run: a table
of each example's figure (time to target reward, timesteps/s, states/s, GB/s) with the
ratio to each baseline (> 1: mpray is better).

    python benchmarks/workloads.py                     # one host, full size
    python benchmarks/workloads.py --quick             # the test suite's sizes
    python benchmarks/workloads.py --mpi 4             # each under mpiexec -n 4 as well
    python benchmarks/workloads.py --only es,allreduce --json out.json

Every example runs in its own process (under ``mpiexec -n N`` with ``--mpi N``) and writes
its figures with ``--json``; an example that fails is reported and the others go on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ["es", "ppo", "parameter_server", "simulation", "serving", "allreduce"]


def run_one(name: str, mpi: int, quick: bool, extra: list[str], timeout: int) -> dict:
    """One example's --json record (with ``where`` and ``seconds``), or ``error``."""
    where = f"mpiexec -n {mpi}" if mpi else "one host"
    with tempfile.TemporaryDirectory(prefix="mpray-workloads-") as d:
        out = os.path.join(d, "out.json")
        cmd = [sys.executable, os.path.join(ROOT, "examples", f"{name}.py"), "--json", out,
               *(["--quick"] if quick else []), *extra]
        if mpi:
            cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(mpi), *cmd]
        t = time.perf_counter()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"example": name, "where": where, "error": f"timed out after {timeout} s"}
        rec = {"example": name, "where": where, "seconds": time.perf_counter() - t}
        if r.returncode != 0 or not os.path.exists(out):
            rec["error"] = f"rc {r.returncode}: {(r.stdout + r.stderr)[-1500:]}"
            return rec
        with open(out) as f:
            return {**json.load(f), **rec}


def table(recs: list[dict]) -> str:
    lines = ["| example | where | figure | unit | mpray | baseline | baseline's | mpray / baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in recs:
        if "error" in r:
            lines.append(f"| {r['example']} | {r['where']} | failed: "
                         f"{r['error'].splitlines()[0][:80]} | | | | | |")
            continue
        first = True
        for who, v in (r["baselines"] or {"(none)": None}).items():
            ratio = r["ratios"].get(who)
            lines.append(
                f"| {r['example'] if first else ''} | {r['where'] if first else ''} "
                f"| {r['metric'] if first else ''} | {r['unit'] if first else ''} "
                f"| {_num(r['mpray']) if first else ''} | {who} | {_num(v)} "
                f"| {'' if ratio is None else f'{ratio:.2f}x'} |")
            first = False
    return "\n".join(lines)


def _num(v) -> str:
    return "" if v is None else f"{v:.4g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the examples' --quick sizes")
    p.add_argument("--mpi", type=int, default=0, metavar="N",
                   help="also run each example under mpiexec -n N")
    p.add_argument("--only", help="comma-separated examples (default: all)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds per example run")
    p.add_argument("--json", metavar="PATH", help="write every record to PATH")
    args, extra = p.parse_known_args()
    names = args.only.split(",") if args.only else EXAMPLES
    recs = []
    for name in names:
        for mpi in [0] + ([args.mpi] if args.mpi else []):
            rec = run_one(name, mpi, args.quick, extra, args.timeout)
            recs.append(rec)
            state = rec.get("error", "").splitlines()[0][:60] if "error" in rec else "ok"
            print(f"# {name} ({rec['where']}): {state}", file=sys.stderr, flush=True)
    print(table(recs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(recs, f, indent=1)


if __name__ == "__main__":
    main()
