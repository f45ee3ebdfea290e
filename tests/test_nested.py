"""Nested tasks: tasks that submit tasks, get and wait on them, and deep recursion on a
2-CPU node (a worker blocked in get/wait lends its CPU)."""

from __future__ import annotations

import os
import time

import pytest

import mpray
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy


@mpray.remote
def leaf(x):
    return x * 10


@mpray.remote
def parent(n):
    refs = [leaf.remote(i) for i in range(n)]
    return sum(mpray.get(refs)), os.getpid()


@mpray.remote
def fib(n):
    if n < 2:
        return n
    a, b = fib.remote(n - 1), fib.remote(n - 2)
    return sum(mpray.get([a, b]))


def _fib(n):
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


def test_task_submits_and_gets_tasks(ray_module):
    total, pid = mpray.get(parent.remote(5), timeout=30)
    assert total == sum(i * 10 for i in range(5))
    assert pid != os.getpid()


def test_many_parents_in_parallel(ray_module):
    # more parents than CPUs: every parent blocks in get while its children need CPUs
    out = mpray.get([parent.remote(k) for k in range(1, 7)], timeout=60)
    assert [t for t, _ in out] == [sum(i * 10 for i in range(k)) for k in range(1, 7)]


@pytest.mark.timeout(60)
def test_recursive_fibonacci_depth_8(ray_module):
    t0 = time.monotonic()
    assert mpray.get(fib.remote(8), timeout=50) == _fib(8) == 21
    assert time.monotonic() - t0 < 50


def test_nested_put_and_pass_ref_down(ray_module):
    @mpray.remote
    def consume(ref_box):
        return mpray.get(ref_box[0]) + 1

    @mpray.remote
    def produce():
        r = mpray.put(41)
        return mpray.get(consume.remote([r]))

    assert mpray.get(produce.remote(), timeout=30) == 42


def test_nested_task_returns_ref_to_driver(ray_module):
    @mpray.remote
    def make_ref():
        return [leaf.remote(4), mpray.put("from worker")]

    box = mpray.get(make_ref.remote(), timeout=30)
    assert mpray.get(box, timeout=30) == [40, "from worker"]


def test_wait_inside_task(ray_module):
    @mpray.remote
    def slow(x, s):
        time.sleep(s)
        return x

    @mpray.remote
    def waiter():
        refs = [slow.remote("fast", 0), slow.remote("slow", 3)]
        ready, not_ready = mpray.wait(refs, num_returns=1, timeout=10)
        first = mpray.get(ready[0])
        ready2, not_ready2 = mpray.wait(refs, num_returns=2, timeout=0.1)
        return first, len(ready), len(not_ready), len(ready2), len(not_ready2)

    assert mpray.get(waiter.remote(), timeout=30) == ("fast", 1, 1, 1, 1)


def test_wait_inside_task_all(ray_module):
    @mpray.remote
    def waiter(n):
        refs = [leaf.remote(i) for i in range(n)]
        ready, not_ready = mpray.wait(refs, num_returns=n, timeout=20)
        return ready == refs, not_ready, mpray.get(ready)

    same_order, not_ready, values = mpray.get(waiter.remote(4), timeout=30)
    assert same_order is True
    assert not_ready == []
    assert values == [0, 10, 20, 30]


def test_nested_error_propagates(ray_module):
    @mpray.remote
    def bad():
        raise ZeroDivisionError("inner failure")

    @mpray.remote
    def outer():
        return mpray.get(bad.remote())

    with pytest.raises(ZeroDivisionError, match="inner failure"):
        mpray.get(outer.remote(), timeout=30)


def test_many_parents_many_children_repeatedly(ray_module):
    # a backlog of blocking parents: the node queues tasks behind running ones, and a
    # parent that blocks hands its queued tasks back; each round must fully succeed
    for _ in range(10):
        refs = [parent.remote(10) for _ in range(20)]
        assert [t for t, _ in mpray.get(refs, timeout=60)] == [450] * 20


def test_a_running_task_does_not_hold_back_its_messages(ray_module):
    """Only serialising results holds releases back: while the function runs (maybe
    blocked in get), what it drops and the work it hands back must go out at once."""

    @mpray.remote
    def held_inside():
        return mpray.api._global.client.hold_releases

    assert mpray.get(held_inside.remote()) == 0


# ------------------------------------------------------------------ a task as an owner


@mpray.remote
def leased_pids(n):
    """Submit ``n`` short tasks and return the pids that ran them (its leases), and
    whether this worker may lease at all (it has one of the node's mailbox slots)."""

    @mpray.remote
    def whoami(i):
        return os.getpid(), i

    may_own = mpray.api._global.client._may_own
    return mpray.get([whoami.remote(i) for i in range(n)], timeout=30), may_own


def test_a_task_leases_workers_for_its_nested_tasks(ray_module):
    """Every process owns what it submits: a task's children run on workers it leases
    (the node never hears of most of them) and their values are exact.  (A worker
    started when all of the node's mailbox slots were taken cannot lease: after many
    tests in one session, as under mpiexec, the task may land in one; it runs again.)"""
    for _ in range(3):
        before = mpray.api._node_stats()["submitted"]
        # (on this node, whose counts we read: under MPI a first task may go elsewhere)
        here = NodeAffinitySchedulingStrategy(mpray.get_runtime_context().get_node_id(),
                                              False)
        out, may_own = mpray.get(leased_pids.options(scheduling_strategy=here).remote(300),
                                 timeout=60)
        assert [i for _pid, i in out] == list(range(300))
        if may_own:
            break
    assert may_own, "three tasks in a row ran in workers without a mailbox slot"
    seen_by_node = mpray.api._node_stats()["submitted"] - before
    assert seen_by_node < 100, f"{seen_by_node} of 300 nested tasks went through the node"


def test_a_worker_that_becomes_an_owner_can_ship_the_functions_it_registered(ray_module):
    """A worker registers a nested task's function before it becomes an owner (at that
    task's submission): its leases' Execs must carry the function, not count on the
    node's copy reaching the leased worker first (that raced: 'never registered')."""

    @mpray.remote
    def first_nested_submission():
        ref = leaf.remote(1)  # (this worker becomes an owner here)
        client = mpray.api._global.client
        return leaf._fid(client) in client.owner.blobs, mpray.get(ref, timeout=30)

    assert mpray.get(first_nested_submission.remote(), timeout=30) == (True, 10)


def test_a_nested_tasks_result_ref_leaving_its_owner_stays_valid(ray_module):
    """A value the parent holds only locally (a leased task's result) is made known to
    the node when a ref to it leaves the parent inside its result."""

    @mpray.remote
    def parent_returning_refs():
        refs = [leaf.remote(i) for i in range(20)]
        mpray.get(refs)  # their values are here, the node never saw them
        return refs

    refs = mpray.get(parent_returning_refs.remote(), timeout=30)
    assert mpray.get(refs, timeout=30) == [i * 10 for i in range(20)]


def test_a_killed_leased_worker_of_a_task_is_retried(ray_module):
    """A worker leased by a task dies under one of its children: the child is retried
    through the node (max_retries) and the parent gets every value."""

    @mpray.remote(max_retries=3)
    def maybe_die(i, marker):
        if i == 7 and not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return i

    @mpray.remote
    def parent_of_victim(marker):
        return mpray.get([maybe_die.remote(i, marker) for i in range(30)], timeout=30)

    import tempfile

    with tempfile.TemporaryDirectory() as d:
        marker = os.path.join(d, "died")
        assert mpray.get(parent_of_victim.remote(marker), timeout=60) == list(range(30))
        assert os.path.exists(marker)  # (one child did die)


def test_a_task_that_dies_holding_leases_frees_its_leased_workers(ray_module):
    """Its leases are revoked: the workers it leased go back to the node (their CPUs
    free again) and later work runs."""
    from conftest import wait_for

    @mpray.remote(max_retries=0)
    def dies_with_leases():
        refs = [leaf.remote(i) for i in range(50)]
        mpray.get(refs)  # (its leases now exist)
        os._exit(3)

    with pytest.raises(mpray.exceptions.WorkerCrashedError):
        mpray.get(dies_with_leases.remote(), timeout=30)
    cpus = mpray.cluster_resources()["CPU"]  # (under MPI: every rank's)
    assert wait_for(lambda: mpray.available_resources().get("CPU", 0) == cpus, 10), \
        mpray.available_resources()
    assert mpray.get([leaf.remote(i) for i in range(10)], timeout=30) == [i * 10 for i in range(10)]
