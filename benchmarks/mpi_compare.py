#!/usr/bin/env python
"""mpray's MPI backend beside raw MPI, measured in one run (every figure its own mpiexec).

    python benchmarks/mpi_compare.py                 # 2 and 4 ranks, 5 repeats
    python benchmarks/mpi_compare.py --ranks 1,2,4,8,16 --repeat 7
    python benchmarks/mpi_compare.py --ranks 4 --peers mpray,mpray@HEAD~3   # two commits

Figures (medians of the repeats; ratios > 1 mean mpray is better):

* object fetch between two ranks, 1 KiB / 1 MiB / 100 MiB: ``ray.get`` on rank 0 of an
  object that lives on rank 1, beside mpi4py's ``Get`` from a ``Win.Allocate`` window of
  the same size (passive target, lock_all epoch + flush, into a warm buffer);
* no-op task throughput at N ranks, beside ``mpi4py.futures.MPICommExecutor`` (root
  submits, N-1 workers run): mpray from the driver (default placement, and SPREAD over
  every rank) and with one submitting task per rank (each rank's node runs its own);
* allreduce of a 100 MiB float64 array over N ranks: ``mpray.util.collective.allreduce``
  among one actor per rank (the backend chosen automatically: shared memory on one host;
  and through the object store, as between hosts), beside ``comm.Allreduce``.

``--network`` turns shared memory between ranks off for every run, raw MPI's too (MPICH
``MPIR_CVAR_NOLOCAL=1``; Open MPI TCP only; mpray copies into export windows): the
"across hosts" figures, measured on one machine.  ``--figs`` picks figures.

``--peers mpray,mpray@REV`` also runs every mpray figure with mpray at git revision REV
(a temporary git worktree, or ``--rev-dir``), right after the working tree's, and adds a
table of the mpray figures with a column per peer and the ratios ``mpray/mpray@REV``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
if os.path.dirname(HERE) not in sys.path:  # (a script's folder is there already)
    sys.path.insert(0, os.path.dirname(HERE))

from bench.revs import REV_DIR_HELP, Trees, check_import, is_rev_peer, python_path  # noqa: E402

SIZES = [1 << 10, 1 << 20, 100 << 20]
N_TASKS = 4000
ALLREDUCE_BYTES = 100 << 20
# shared memory between ranks off, for both MPIs (each ignores the other's variables)
NETWORK = {"MPIR_CVAR_NOLOCAL": "1", "OMPI_MCA_btl": "tcp,self", "OMPI_MCA_pml": "ob1",
           "MPRAY_MPI_ARENA": "copy"}


def emit(**rec) -> None:
    # one write per line: ranks share the launcher's output, and print() writes the text
    # and its newline apart, so two ranks' lines could interleave
    sys.stdout.write("RESULT " + json.dumps(rec) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------------- raw MPI
def raw_fetch(repeat: int) -> None:
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    for size in SIZES:
        win = MPI.Win.Allocate(size if comm.rank == 1 else 0, 1, comm=comm)
        if comm.rank == 1:
            np.frombuffer(win.tomemory(), np.uint8)[:] = 1
        buf = np.zeros(size, np.uint8)
        win.Lock_all(MPI.MODE_NOCHECK)
        comm.Barrier()
        if comm.rank == 0:
            ts = []
            for _ in range(repeat + 1):
                t = time.perf_counter()
                win.Get([buf, MPI.BYTE], 1)
                win.Flush(1)
                ts.append(time.perf_counter() - t)
            emit(fig="fetch", peer="raw", size=size, ms=[x * 1e3 for x in ts[1:]])
        comm.Barrier()
        win.Unlock_all()
        win.Free()


def raw_tput(repeat: int) -> None:
    from mpi4py import MPI
    from mpi4py.futures import MPICommExecutor

    with MPICommExecutor(MPI.COMM_WORLD, root=0) as ex:
        if ex is None:
            return
        size = MPI.COMM_WORLD.Get_size()
        if size < 2:
            return  # (no worker ranks)
        [f.result() for f in [ex.submit(_noop) for _ in range(200)]]
        rates = []
        for _ in range(repeat):
            t = time.perf_counter()
            [f.result() for f in [ex.submit(_noop) for _ in range(N_TASKS)]]
            rates.append(N_TASKS / (time.perf_counter() - t))
        emit(fig="tput", peer="futures", ranks=size, rate=rates)


def raw_allreduce(repeat: int) -> None:
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    a = np.full(ALLREDUCE_BYTES // 8, float(comm.rank))
    out = np.empty_like(a)
    comm.Allreduce(a, out)
    ts = []
    for _ in range(repeat):
        comm.Barrier()
        t = time.perf_counter()
        comm.Allreduce(a, out)
        ts.append(time.perf_counter() - t)
    assert out[0] == sum(range(comm.size))
    if comm.rank == 0:
        emit(fig="allreduce", peer="raw", ranks=comm.size, ms=[x * 1e3 for x in ts])


def _noop(*_a):
    return None


# ---------------------------------------------------------------------------- mpray
def mpray_fetch(repeat: int) -> None:
    import gc

    import numpy as np

    import mpray as ray
    from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init()
    there = NodeAffinitySchedulingStrategy(ray.nodes()[1]["NodeID"], soft=False)

    @ray.remote
    class Holder:  # on rank 1: one value per size, handed out again and again
        def __init__(self):
            self.refs = {}

        def ref(self, n):
            if n not in self.refs:
                self.refs[n] = ray.put(np.ones(max(1, n // 8)))
            return [self.refs[n]]

    holder = Holder.options(scheduling_strategy=there).remote()
    for size in SIZES:
        ts = []
        base = ray.api._node_stats()["arena_used"]
        for _ in range(repeat + 1):
            r = ray.get(holder.ref.remote(size))[0]
            t = time.perf_counter()
            x = ray.get(r)
            ts.append(time.perf_counter() - t)
            del x, r
            gc.collect()
            # like the raw figure's warm buffer on both sides: the copy's space here is
            # free again (and reused) before the next fetch, which reads the same place
            # there; the first fetch is the warm-up
            deadline = time.monotonic() + 2
            while ray.api._node_stats()["arena_used"] > base and time.monotonic() < deadline:
                time.sleep(0.005)
        emit(fig="fetch", peer="mpray", size=size, ms=[x * 1e3 for x in ts[1:]])
    ray.shutdown()


def mpray_tput(repeat: int) -> None:
    import mpray as ray
    from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init()
    nodes = ray.nodes()

    @ray.remote
    def noop():
        return None

    @ray.remote
    def submitter(n):
        t = time.perf_counter()
        ray.get([noop.remote() for _ in range(n)])
        return time.perf_counter() - t

    ray.get([noop.remote() for _ in range(200)])
    out = {}
    for how in ("default", "spread"):
        f = noop.options(scheduling_strategy="SPREAD") if how == "spread" else noop
        rates = []
        for _ in range(repeat):
            t = time.perf_counter()
            ray.get([f.remote() for _ in range(N_TASKS)])
            rates.append(N_TASKS / (time.perf_counter() - t))
        out[how] = rates
    pins = [NodeAffinitySchedulingStrategy(n["NodeID"], soft=False) for n in nodes]
    per = N_TASKS // len(nodes)
    ray.get([submitter.options(scheduling_strategy=p).remote(50) for p in pins])
    rates = []
    for _ in range(repeat):
        t = time.perf_counter()
        ray.get([submitter.options(scheduling_strategy=p).remote(per) for p in pins])
        rates.append(per * len(nodes) / (time.perf_counter() - t))
    out["per_rank"] = rates
    for how, rates in out.items():
        emit(fig="tput", peer=f"mpray:{how}", ranks=len(nodes), rate=rates)
    ray.shutdown()


def mpray_allreduce(repeat: int) -> None:
    """``mpray.util.collective.allreduce`` among one actor per rank, with the backend
    chosen automatically (shared memory: these ranks share a host) and through the
    object store (arrays cross ranks by RMA, as between hosts)."""
    import numpy as np

    import mpray as ray
    import mpray.util.collective as col
    from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init()
    nodes = ray.nodes()
    n = len(nodes)

    @ray.remote(num_cpus=0)
    class Member:
        def __init__(self, rank, backend):
            self.rank, self.g = rank, f"bench-{backend}"
            col.init_collective_group(n, rank, backend=backend, group_name=self.g)
            self.a = np.full(ALLREDUCE_BYTES // 8, float(rank))

        def run(self, reps):
            col.allreduce(self.a, self.g)  # warm
            ts = []
            for _ in range(reps):
                self.a[:] = self.rank
                col.barrier(self.g)
                t = time.perf_counter()
                col.allreduce(self.a, self.g)
                ts.append(time.perf_counter() - t)
            assert self.a[0] == self.a[-1] == sum(range(n))
            col.destroy_collective_group(self.g)
            return ts

    for backend in ("auto", "store"):
        members = [Member.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            nodes[r]["NodeID"], soft=False)).remote(r, backend) for r in range(n)]
        per = ray.get([m.run.remote(repeat) for m in members])
        ms = [max(ts) * 1e3 for ts in zip(*per)]
        emit(fig="allreduce", peer="mpray" if backend == "auto" else "mpray:store",
             ranks=n, ms=ms)
        for m in members:
            ray.kill(m)
    ray.shutdown()


FIGS = {"raw_fetch": raw_fetch, "raw_tput": raw_tput, "raw_allreduce": raw_allreduce,
        "mpray_fetch": mpray_fetch, "mpray_tput": mpray_tput,
        "mpray_allreduce": mpray_allreduce}


# ---------------------------------------------------------------------------- parent
def run(fig: str, ranks: int, repeat: int, timeout: int, env=None, extra=()) -> list[dict]:
    cmd = [shutil.which("mpiexec") or "mpiexec", "-n", str(ranks), sys.executable, HERE,
           "--_fig", fig, "--repeat", str(repeat), *extra]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"# {fig} at {ranks} ranks: timed out after {timeout} s", file=sys.stderr)
        return []
    if r.returncode != 0:
        print(f"# {fig} at {ranks} ranks failed (rc {r.returncode}):\n{r.stdout[-2000:]}"
              f"{r.stderr[-2000:]}", file=sys.stderr)
    return [json.loads(line[7:]) for line in r.stdout.splitlines() if line.startswith("RESULT ")]


class Peers:
    """Runs the mpray figures for every mpray peer (this tree, ``mpray@REV`` trees)."""

    def __init__(self, labels: list[str], trees, a):
        self.labels, self.trees, self.a = labels, trees, a
        self.said: set[tuple[str, str]] = set()

    def run(self, fig: str, ranks: int) -> list[dict]:
        """The raw figure, then the mpray figure once per peer, back to back."""
        out = run("raw_" + fig, ranks, self.a.repeat, self.a.timeout)
        for label in self.labels:
            out += self._run_mpray(label, "mpray_" + fig, ranks)
        return out

    def _run_mpray(self, label: str, fig: str, ranks: int) -> list[dict]:
        root = self.trees.root(label)
        env = dict(os.environ, PYTHONPATH=python_path(root, os.environ))
        out = []
        for rec in run(fig, ranks, self.a.repeat, self.a.timeout, env,
                       ("--_mpray-root", root)):
            if rec["fig"] == "import":  # which mpray the ranks imported
                if (label, rec["file"]) not in self.said:
                    self.said.add((label, rec["file"]))
                    print(f"# {label}: mpray from {rec['file']}", file=sys.stderr)
                continue
            rec["peer"] = label + rec["peer"][len("mpray"):]  # mpray:default -> label:default
            out.append(rec)
        return out


def med(xs) -> float:
    return statistics.median(xs)


def find(res: list[dict], **match) -> dict | None:
    """The first record whose fields have the given values."""
    return next((r for r in res if all(r.get(k) == v for k, v in match.items())), None)


def raw_and_mine(res: list[dict], fig: str, base: str, **match) -> tuple[float, float] | None:
    """The medians (ms) of the raw peer's figure and of ``base``'s, when both are there."""
    raw = find(res, fig=fig, peer="raw", **match)
    mine = find(res, fig=fig, peer=base, **match)
    return (med(raw["ms"]), med(mine["ms"])) if raw and mine else None


def print_fetch(res: list[dict], base: str) -> None:
    print("object fetch, rank 1 -> rank 0      raw mpi4py Get   mpray get   mpray/raw bandwidth")
    for size in SIZES:
        if both := raw_and_mine(res, "fetch", base, size=size):
            rm, mm = both
            print(f"  {size:>11,} B                   {rm:10.3f} ms  {mm:8.3f} ms  {rm / mm:8.0%}")


TPUT_HOWS = ("default", "spread", "per_rank")


def print_tput(res: list[dict], ranks: list[int], base: str) -> None:
    print("\nno-op tasks/s         futures (MPICommExecutor)  mpray default  mpray SPREAD"
          "  mpray 1 submitter/rank  best/futures")
    for n in ranks:
        row = {r["peer"]: med(r["rate"]) for r in res if r["fig"] == "tput" and r["ranks"] == n}
        fut = row.get("futures")
        cells = [row.get(k) for k in ["futures"] + [f"{base}:{how}" for how in TPUT_HOWS]]
        best = max((c for c in cells[1:] if c), default=None)
        txt = "  ".join(f"{c:>12,.0f}" if c else f"{'—':>12}" for c in cells)
        ratio = f"{best / fut:6.2f}x" if best and fut else "—"
        print(f"  {n:2d} ranks  {txt}  {ratio}")


def print_allreduce(res: list[dict], reduce_ranks: list[int], base: str) -> None:
    print("\nallreduce 100 MiB      comm.Allreduce   mpray (auto)   mpray (store)   "
          "Allreduce/mpray (auto, store)")
    for n in reduce_ranks:
        if both := raw_and_mine(res, "allreduce", base, ranks=n):
            rm, mm = both
            st = find(res, fig="allreduce", peer=f"{base}:store", ranks=n)
            sm = med(st["ms"]) if st else None
            print(f"  {n:2d} ranks   {rm:10.1f} ms   {mm:9.1f} ms   "
                  f"{sm or float('nan'):9.1f} ms     {rm / mm:6.2f}x "
                  f"{rm / sm if sm else float('nan'):6.2f}x")


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def _peer_rows(ranks: list[int], reduce_ranks: list[int]):
    """The rows of the peers' table: (label, unit, higher is better, (fig, how, match))."""
    rows = [(f"fetch {_size(size)}, rank 1 -> rank 0", "ms", False, ("fetch", "", {"size": size}))
            for size in SIZES]
    rows += [(f"no-op tasks, {n} ranks, {how}", "tasks/s", True, ("tput", how, {"ranks": n}))
             for n in ranks for how in TPUT_HOWS + ("best",)]
    rows += [(f"allreduce 100 MiB, {n} ranks", "ms", False, ("allreduce", "", {"ranks": n}))
             for n in reduce_ranks]
    return rows


def peer_value(res: list[dict], peer: str, spec) -> float | None:
    """The median of one peer's figure (``how``: a throughput variant, or the best of them)."""
    fig, how, match = spec
    if how == "best":
        vals = [peer_value(res, peer, (fig, h, match)) for h in TPUT_HOWS]
        return max((v for v in vals if v), default=None)
    r = find(res, fig=fig, peer=f"{peer}:{how}" if how else peer, **match)
    return med(r["rate" if fig == "tput" else "ms"]) if r else None


def _num(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if v >= 100 else f"{v:.2f}" if v >= 1 else f"{v:.3f}"


def print_peers(res: list[dict], labels: list[str], ranks: list[int],
                reduce_ranks: list[int]) -> None:
    """Every mpray figure, a column per mpray peer and ratios against the first."""
    base, others = labels[0], labels[1:]
    head = ["figure", "unit"] + labels + [f"{base}/{o}" for o in others]
    body = []
    for label, unit, higher, spec in _peer_rows(ranks, reduce_ranks):
        vals = [peer_value(res, pe, spec) for pe in labels]
        if all(v is None for v in vals):
            continue
        row = [label, unit] + [_num(v) for v in vals]
        for v in vals[1:]:
            r = (vals[0] / v if higher else v / vals[0]) if vals[0] and v else None
            row.append(f"{r:.2f}x" if r else "—")
        body.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    print(f"\nmpray beside mpray (medians; >1 means {base} is better: rates "
          f"{base}/peer, times peer/{base})")
    for row in [head, ["-" * w for w in widths]] + body:
        print("  " + "  ".join(x.ljust(w) if i < 2 else x.rjust(w)
                               for i, (x, w) in enumerate(zip(row, widths))).rstrip())


def _args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", default="2,4", help="rank counts for throughput/allreduce")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--timeout", type=int, default=300, help="seconds per mpiexec")
    ap.add_argument("--allreduce-ranks", help="rank counts for allreduce (default: --ranks)")
    ap.add_argument("--peers", default="mpray",
                    help="comma list of mpray (this tree) and mpray@REV (mpray at git "
                         "revision REV, e.g. mpray@HEAD~3); the first is the one the "
                         "raw-MPI tables and the ratios are about (default: mpray)")
    ap.add_argument("--rev-dir", action="append", metavar="[REV=]PATH", help=REV_DIR_HELP)
    ap.add_argument("--json", metavar="PATH", help="also write the raw results here")
    ap.add_argument("--network", action="store_true",
                    help="shared memory between ranks off (as across hosts)")
    ap.add_argument("--figs", default="fetch,tput,allreduce",
                    help="comma list of figures: fetch, tput, allreduce")
    ap.add_argument("--_fig", help=argparse.SUPPRESS)
    ap.add_argument("--_mpray-root", help=argparse.SUPPRESS)
    a = ap.parse_args()
    a.labels = [x.strip() for x in a.peers.split(",") if x.strip()]
    bad = [x for x in a.labels if x != "mpray" and not is_rev_peer(x)]
    if bad or not a.labels:
        ap.error(f"--peers: {', '.join(bad) or 'none'}: choose from mpray, mpray@REV")
    a.ranks = [int(x) for x in a.ranks.split(",") if x.strip()]
    a.reduce_ranks = a.ranks if a.allreduce_ranks is None else \
        [int(x) for x in a.allreduce_ranks.split(",") if x.strip()]
    return a


def _import_mpray(root: str | None) -> None:
    """In an mpray figure's ranks: import mpray, check it is the peer's, say from where."""
    import mpray

    emit(fig="import", file=check_import(mpray, root) if root else mpray.__file__)


def main() -> int:
    a = _args()
    if a._fig:
        if a._fig.startswith("mpray_"):
            _import_mpray(a._mpray_root)
        FIGS[a._fig](a.repeat)
        return 0
    res: list[dict] = []
    if a.network:
        os.environ.update(NETWORK)
    figs = set(a.figs.split(","))
    with Trees(a.labels, a.rev_dir) as trees:
        peers = Peers(a.labels, trees, a)
        if "fetch" in figs:
            res += peers.run("fetch", 2)
        for n in a.ranks if "tput" in figs else ():
            res += peers.run("tput", n)
        for n in a.reduce_ranks if "allreduce" in figs else ():
            if n >= 2:
                res += peers.run("allreduce", n)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f)
    base = a.labels[0]
    print(f"\nmpray over MPI beside raw MPI; medians of {a.repeat}; {os.cpu_count()} CPUs"
          f"{'; shared memory between ranks off (as across hosts)' if a.network else ''}\n")
    if base != "mpray":
        print(f"(mpray in the three tables below is {base})\n")
    print_fetch(res, base)
    print_tput(res, a.ranks, base)
    print_allreduce(res, a.reduce_ranks, base)
    if len(a.labels) > 1:
        print_peers(res, a.labels, a.ranks, a.reduce_ranks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
