"""``mpray.util.collective``: every operation, for each dtype, reduce op and group size
(1-4 members, 3 dividing no array evenly), on each way a group moves data: shared memory
reading the others' arrays in place (``shm``, cross-memory attach), shared memory copying
through the segment (``shm`` where processes cannot read each other: ``copy``), and the
object store (``store``).  Then members that are tasks and the driver, the declarative
API, bad input, and members that die or never come."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import mpray as ray
import mpray.util.collective as col
from mpray.util.collective import CollectiveTimeoutError, ReduceOp

pytestmark = [pytest.mark.usefixtures("ray_module"), pytest.mark.timeout(120)]

DTYPES = ["float64", "float32", "float16", "int64", "int32", "uint8"]
OPS = [ReduceOp.SUM, ReduceOp.PRODUCT, ReduceOp.MIN, ReduceOp.MAX]
UFUNC = {ReduceOp.SUM: np.add, ReduceOp.PRODUCT: np.multiply, ReduceOp.MIN: np.minimum,
         ReduceOp.MAX: np.maximum}
# one element; not a multiple of 3 members or of a cache line; past the whole-array path
# (256 KiB) into the chunked and cross-memory paths, and (float64) past the store's
# one-exchange path (1 MiB)
SIZES = [1, 1001, 140_001]
MODES = {"shm": "shm", "copy": "shm", "store": "store"}


class Raised:
    def __init__(self, e: BaseException):
        self.classes = {c.__name__ for c in type(e).__mro__}
        self.msg = str(e)

    def __repr__(self):
        return f"Raised({sorted(self.classes)}, {self.msg!r})"


def data(rank: int, n: int, dtype: str) -> np.ndarray:
    """Member ``rank``'s array: small integers, so every reduce order gives one answer."""
    return ((np.arange(n) * 7 + rank) % 4 + 1).astype(dtype)


@ray.remote(num_cpus=0)
class Member:
    def __init__(self, k: int, rank: int, mode: str, group: str, timeout=None):
        if mode == "copy":  # as where the kernel forbids reading another process
            from mpray.util.collective import cma

            cma.available = False
        self.k, self.rank, self.group = k, rank, group
        col.init_collective_group(k, rank, backend=MODES[mode], group_name=group,
                                  gloo_timeout=timeout)

    def how(self):
        g = col.collective._groups[self.group]
        return g.backend, getattr(g, "cma", None), col.get_rank(self.group), \
            col.get_collective_group_size(self.group)

    def allreduce(self, n, dtype, op, strided=False):
        a = data(self.rank, 2 * n if strided else n, dtype)
        t = a[::2] if strided else a  # a view that is not contiguous
        col.allreduce(t, self.group, op=op)
        return a

    def broadcast(self, n, dtype, src):
        t = data(self.rank, n, dtype)
        col.broadcast(t, src, self.group)
        return t

    def allgather(self, n, dtype):
        out = [np.zeros(n, dtype) for _ in range(self.k)]
        col.allgather(out, data(self.rank, n, dtype), self.group)
        return out

    def reducescatter(self, n, dtype, op):
        t = np.zeros(n, dtype)
        col.reducescatter(t, [data(self.rank * 10 + i, n, dtype) for i in range(self.k)],
                          self.group, op=op)
        return t

    def reduce(self, n, dtype, dst, op):
        t = data(self.rank, n, dtype)
        col.reduce(t, dst, self.group, op=op)
        return t

    def ring(self, sizes):
        """Send to the next member and receive from the previous one, growing sizes."""
        got = []
        for n in sizes:
            if self.k == 1:
                break
            nxt, prev = (self.rank + 1) % self.k, (self.rank - 1) % self.k
            out, t = data(self.rank, n, "float64"), np.zeros(n)
            if self.rank % 2 == 0:
                col.send(out, nxt, self.group)
                col.recv(t, prev, self.group)
            else:
                col.recv(t, prev, self.group)
                col.send(out, nxt, self.group)
            got.append(t)
        return got

    def barrier_then(self, delay):
        time.sleep(delay)
        t = time.monotonic()
        col.barrier(self.group)
        return t, time.monotonic()

    def call(self, name, *args, **kw):
        """Any collective function; what it raised, as a Raised (to see what each got:
        the classes it is an instance of, as raised here, and its message)."""
        args = [a.copy() if isinstance(a, np.ndarray) else a for a in args]  # writable
        try:
            return getattr(col, name)(*args, group_name=self.group, **kw)
        except Exception as e:  # noqa: BLE001 -- returned to the test to look at
            return Raised(e)

    def die(self):
        os._exit(1)

    def leave(self):
        col.destroy_collective_group(self.group)
        return col.is_group_initialized(self.group)


def form(k: int, mode: str, group: str, timeout=None) -> list:
    ms = [Member.remote(k, r, mode, group, timeout) for r in range(k)]
    how = ray.get([m.how.remote() for m in ms])
    want_cma = {"shm": k > 1, "copy": False, "store": None}[mode]
    assert [h[0] for h in how] == [MODES[mode]] * k and [h[1] for h in how] == [want_cma] * k
    assert [h[2:] for h in how] == [(r, k) for r in range(k)]
    return ms


def leave(ms) -> None:
    assert ray.get([m.leave.remote() for m in ms]) == [False] * len(ms)


def expect_reduce(k, n, dtype, op, rank_of=lambda r: r):
    return UFUNC[op].reduce(np.stack([data(rank_of(r), n, dtype) for r in range(k)]),
                            axis=0, dtype=dtype)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", ["shm", "copy", "store"])
def test_allreduce_every_dtype_op_and_size(mode, k):
    ms = form(k, mode, f"ar-{mode}-{k}")
    for dtype in DTYPES:
        for op in OPS:
            for n in SIZES if dtype in ("float64", "uint8") else SIZES[1:2]:
                got = ray.get([m.allreduce.remote(n, dtype, op) for m in ms])
                want = expect_reduce(k, n, dtype, op)
                for a in got:
                    assert a.dtype == np.dtype(dtype)
                    np.testing.assert_array_equal(a, want, err_msg=f"{dtype} {op!r} {n}")
    leave(ms)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("mode", ["shm", "copy", "store"])
def test_broadcast_allgather_reducescatter_reduce(mode, k):
    ms = form(k, mode, f"ops-{mode}-{k}")
    for dtype in ("float64", "int32", "uint8"):
        for n in SIZES:
            src = k - 1
            for a in ray.get([m.broadcast.remote(n, dtype, src) for m in ms]):
                np.testing.assert_array_equal(a, data(src, n, dtype))
            for out in ray.get([m.allgather.remote(n, dtype) for m in ms]):
                for j, a in enumerate(out):
                    np.testing.assert_array_equal(a, data(j, n, dtype))
            op = ReduceOp.MAX if dtype == "uint8" else ReduceOp.SUM
            for i, t in enumerate(ray.get([m.reducescatter.remote(n, dtype, op)
                                           for m in ms])):
                np.testing.assert_array_equal(
                    t, expect_reduce(k, n, dtype, op, lambda r, i=i: r * 10 + i))
            got = ray.get([m.reduce.remote(n, dtype, src, ReduceOp.PRODUCT) for m in ms])
            np.testing.assert_array_equal(got[src], expect_reduce(k, n, dtype,
                                                                  ReduceOp.PRODUCT))
            for r in range(k - 1):  # the others' arrays are left as they were
                np.testing.assert_array_equal(got[r], data(r, n, dtype))
    leave(ms)


@pytest.mark.parametrize("mode", ["shm", "copy", "store"])
def test_send_recv_barrier_and_strided_arrays(mode):
    k = 3
    ms = form(k, mode, f"p2p-{mode}")
    sizes = [1, 1000, 70_001, 10]  # the channel grows, then carries a small one again
    for r, got in enumerate(ray.get([m.ring.remote(sizes) for m in ms])):
        prev = (r - 1) % k
        assert [len(t) for t in got] == sizes
        for n, t in zip(sizes, got):
            np.testing.assert_array_equal(t, data(prev, n, "float64"))
    # the barrier holds everyone until the slowest (0.5 s late) arrives
    spans = ray.get([m.barrier_then.remote(0.5 if r == 1 else 0) for r, m in enumerate(ms)])
    assert min(end for _s, end in spans) >= max(start for start, _e in spans)
    for n in (1001, 70_001):
        want = expect_reduce(k, 2 * n, "float64", ReduceOp.SUM)
        got = ray.get([m.allreduce.remote(n, "float64", ReduceOp.SUM, True) for m in ms])
        for r, a in enumerate(got):
            np.testing.assert_array_equal(a[::2], want[::2])
            np.testing.assert_array_equal(a[1::2], data(r, 2 * n, "float64")[1::2])
    leave(ms)


@ray.remote
def task_member(k, rank, group, n):
    col.init_collective_group(k, rank, group_name=group)
    a = data(rank, n, "int64")
    col.allreduce(a, group)
    col.destroy_collective_group(group)
    return a


def test_tasks_and_the_driver_are_members_too():
    k, n = 3, 70_001
    refs = [task_member.options(num_cpus=0).remote(k, r, "tasks", n) for r in (1, 2)]
    col.init_collective_group(k, 0, group_name="tasks")
    try:
        assert col.get_rank("tasks") == 0 and col.get_group_backend("tasks") == "shm"
        a = data(0, n, "int64")
        col.allreduce(a, "tasks")
    finally:
        col.destroy_collective_group("tasks")
    want = expect_reduce(k, n, "int64", ReduceOp.SUM)
    for got in [a, *ray.get(refs)]:
        np.testing.assert_array_equal(got, want)
    assert not col.is_group_initialized("tasks") and col.get_rank("tasks") == -1


@ray.remote(num_cpus=0)
class Declared:
    def __init__(self, rank):
        self.rank = rank

    def work(self, n):
        a = data(self.rank, n, "float32")
        col.allreduce(a, "declared")  # joins here, with the rank the driver gave
        return col.get_rank("declared"), a

    def leave(self):
        col.destroy_collective_group("declared")


def test_create_collective_group_declares_members_from_the_driver():
    actors = [Declared.remote(r) for r in range(3)]
    col.create_collective_group(actors, 3, [2, 0, 1], group_name="declared")
    got = ray.get([a.work.remote(5000) for a in actors])
    assert [r for r, _a in got] == [2, 0, 1]
    want = expect_reduce(3, 5000, "float32", ReduceOp.SUM)
    for _r, a in got:
        np.testing.assert_array_equal(a, want)
    ray.get([a.leave.remote() for a in actors])
    # the name is free again: a new group of another size forms under it
    ms = form(2, "shm", "declared")
    leave(ms)


def test_bad_input_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="rank must be"):
        col.init_collective_group(2, 2, group_name="bad")
    with pytest.raises(ValueError, match="world_size"):
        col.init_collective_group(0, 0, group_name="bad")
    with pytest.raises(ValueError, match="nccl.*no GPU"):
        col.init_collective_group(1, 0, backend="nccl", group_name="bad")
    with pytest.raises(ValueError, match="unknown collective backend"):
        col.init_collective_group(1, 0, backend="tcp", group_name="bad")
    with pytest.raises(RuntimeError, match="not initialized in this process"):
        col.allreduce(np.zeros(3), "never")
    col.init_collective_group(1, 0, group_name="solo")
    try:
        with pytest.raises(RuntimeError, match="already initialized"):
            col.init_collective_group(1, 0, group_name="solo")
        with pytest.raises(TypeError, match="numpy array"):
            col.allreduce([1.0, 2.0], "solo")
        with pytest.raises(TypeError, match="numeric"):
            col.allreduce(np.array(["a"]), "solo")
        with pytest.raises(ValueError, match="read-only"):
            col.allreduce(ray.get(ray.put(np.zeros(1 << 17))), "solo")
        with pytest.raises(ValueError, match="list of 1 arrays"):
            col.allgather([], np.zeros(3), "solo")
        with pytest.raises(ValueError, match="shaped as the tensor"):
            col.allgather([np.zeros(4)], np.zeros(3), "solo")
        with pytest.raises(ValueError, match="src_rank"):
            col.broadcast(np.zeros(3), 1, "solo")
        a = np.arange(4.0)
        col.allreduce(a, "solo")  # a group of one leaves the array as it is
        np.testing.assert_array_equal(a, np.arange(4.0))
    finally:
        col.destroy_collective_group("solo")


@pytest.mark.parametrize("mode", ["shm", "store"])
def test_members_that_disagree_all_get_the_error(mode):
    ms = form(2, mode, f"disagree-{mode}")
    got = ray.get([m.call.remote("allreduce", np.zeros(3 + r)) for r, m in enumerate(ms)])
    for e in got:
        assert "CollectiveError" in e.classes and "different collectives or shapes" in e.msg
    # the group goes on serving
    got = ray.get([m.allreduce.remote(10, "float64", ReduceOp.SUM) for m in ms])
    np.testing.assert_array_equal(got[0], expect_reduce(2, 10, "float64", ReduceOp.SUM))
    leave(ms)


@pytest.mark.parametrize("mode", ["shm", "copy", "store"])
def test_a_member_that_dies_fails_the_others_at_once(mode):
    ms = form(3, mode, f"dies-{mode}")
    pid = ray.get(ms[2].call.remote("get_rank"))  # (formed; 2 is alive)
    assert pid == 2
    t = time.monotonic()
    calls = [m.call.remote("allreduce", np.zeros(100_000)) for m in ms[:2]]
    time.sleep(0.3)
    ms[2].die.remote()
    for e in ray.get(calls, timeout=60):
        assert "CollectiveError" in e.classes and "died" in e.msg and "rank" in e.msg, e
    assert time.monotonic() - t < 30
    ray.get([m.leave.remote() for m in ms[:2]])


@pytest.mark.parametrize("mode", ["shm", "store"])
def test_a_member_that_never_comes_times_out(mode):
    ms = form(2, mode, f"late-{mode}", timeout=1000)
    t = time.monotonic()
    e = ray.get(ms[0].call.remote("barrier"), timeout=60)
    assert "CollectiveTimeoutError" in e.classes, e
    assert 0.9 < time.monotonic() - t < 20
    leave(ms[:1])


def test_a_group_that_never_forms_times_out():
    with pytest.raises(CollectiveTimeoutError, match=r"ranks \[1\] of 2 did not join"):
        col.init_collective_group(2, 0, group_name="half", gloo_timeout=1000)
    assert not col.is_group_initialized("half")
    ray.kill(ray.get_actor("mpray.collective:half"))
