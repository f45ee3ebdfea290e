"""Allreduce with mpray's collective API beside MPI's ``comm.Allreduce`` (the Ray paper's
Fig. 12a, where Ray's allreduce beat OpenMPI's at 100 MB), 1 KB to 100 MB.

    python examples/allreduce.py [--quick] [--ranks 4]     one host: 4 actors vs 4 MPI ranks
    mpiexec -n 4 python examples/allreduce.py [--quick]    an actor on each rank vs the ranks

Each member is an actor holding a float64 array; ``col.allreduce(a)`` sums it across the
group in place, as ``comm.Allreduce`` does across the ranks (run first, by the same ranks
under mpiexec, or by a child ``mpiexec -n K`` on one host).  Members on one host read each
other's arrays where they lie (``backend="auto"`` picks shared memory); ``--store`` also
times ``backend="store"``, where arrays go through the object store (across ranks by RMA),
as between hosts.  Figures are the median time of one allreduce (the slowest member's), as
algorithm bandwidth: bytes of the array / seconds.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import common

import mpray as ray
import mpray.util.collective as col

SIZES = [1 << 10, 1 << 16, 1 << 20, 10 << 20, 100 << 20]
QUICK_SIZES = [1 << 10, 1 << 20, 16 << 20]


def reps_for(nbytes: int, quick: bool) -> int:
    """Enough repeats for a stable median, fewer for the big arrays."""
    if nbytes >= 50 << 20:
        return 5 if quick else 11
    return 10 if quick else (50 if nbytes >= 1 << 20 else 200)


def baseline(comm, args) -> dict:
    """comm.Allreduce of each size: {size: median seconds}, the slowest rank's."""
    from mpi4py import MPI

    out = {}
    for n in args.sizes:
        a = np.full(n // 8, float(comm.rank))
        res = np.empty_like(a)
        comm.Allreduce(a, res)  # warm: buffers touched, connections made
        ts = []
        for _ in range(reps_for(n, args.quick)):
            comm.Barrier()
            t = time.perf_counter()
            comm.Allreduce(a, res)
            ts.append(comm.allreduce(time.perf_counter() - t, op=MPI.MAX))
        assert res[0] == sum(range(comm.size))
        out[str(n)] = statistics.median(ts)
    return out


@ray.remote(num_cpus=0)
class Member:
    """One member of the group: its array, and a loop of allreduces timed between
    barriers (so every member's clock starts together)."""

    def __init__(self, k: int, rank: int, backend: str, group: str):
        self.rank, self.group = rank, group
        col.init_collective_group(k, rank, backend=backend, group_name=group)

    def run(self, nbytes: int, reps: int) -> list[float]:
        a = np.full(nbytes // 8, float(self.rank))
        col.allreduce(a, self.group)  # warm
        ts = []
        for _ in range(reps):
            a[:] = self.rank
            col.barrier(self.group)
            t = time.perf_counter()
            col.allreduce(a, self.group)
            ts.append(time.perf_counter() - t)
        k = col.get_collective_group_size(self.group)
        assert a[0] == a[-1] == sum(range(k)), (a[0], a[-1])
        return ts

    def backend(self) -> str:
        return col.get_group_backend(self.group)

    def leave(self) -> None:
        col.destroy_collective_group(self.group)


def run_mpray(args, k: int, backend: str) -> tuple[str, dict]:
    """Form a group of ``k`` members (one per node when there are several) and time each
    size: {size: median seconds of the slowest member}."""
    from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes()]
    group = f"allreduce-{backend}"
    members = [Member.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        nodes[r % len(nodes)], soft=False)).remote(k, r, backend, group) for r in range(k)]
    used = ray.get(members[0].backend.remote())
    out = {}
    for n in args.sizes:
        per = ray.get([m.run.remote(n, reps_for(n, args.quick)) for m in members])
        out[str(n)] = statistics.median(max(ts) for ts in zip(*per))
    ray.get([m.leave.remote() for m in members])
    return used, out


def show(sizes, columns: dict) -> None:
    names = list(columns)
    print(f"\n{'size':>9}  " + "  ".join(f"{c:>22}" for c in names))
    for n in sizes:
        cells = []
        for c in names:
            s = columns[c].get(str(n))
            cells.append(f"{n / s / 1e9:8.3f} GB/s {s * 1e3:8.3f}ms" if s else " " * 22)
        print(f"{_size(n):>9}  " + "  ".join(cells))


def _size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--store", action="store_true",
                   help="also time backend='store' (arrays through the object store)")
    args = p.parse_args()
    args.sizes = QUICK_SIZES if args.quick else SIZES
    args.ranks = args.ranks or 4  # the paper's and the figure: 4 members
    mpi = common.run_baseline(args, baseline)
    if common.is_baseline_child(args):
        return
    ray.init()
    k = len(ray.nodes()) if common.launched() else args.ranks
    columns = {}
    if mpi:
        columns["mpi4py Allreduce"] = mpi
    used, columns["mpray"] = run_mpray(args, k, "auto")
    if args.store or args.quick:
        columns["mpray store"] = run_mpray(args, k, "store")[1]
    print(f"{k} members (mpray's group chose backend {used!r})")
    show(args.sizes, columns)
    big = str(args.sizes[-1])
    gbs = {c: args.sizes[-1] / v[big] / 1e9 for c, v in columns.items()}
    common.report(args, "allreduce", f"allreduce of {_size(args.sizes[-1])} among {k}",
                  "GB/s", gbs.pop("mpray"), gbs, higher_is_better=True, members=k,
                  backend=used, table={c: v for c, v in columns.items()})
    ray.shutdown()
    print("OK allreduce")


if __name__ == "__main__":
    main()
