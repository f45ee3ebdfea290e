"""Leases: the driver's plain one-CPU tasks go straight to leased workers.

These tests make sure the direct path is really taken (the node never sees those tasks)
and that it keeps every promise the node's path keeps: retries after a crash, cancel,
nested gets that block, refs handed on while their task still runs, freed space.
"""

from __future__ import annotations

import gc
import os
import signal
import time

import numpy as np
import pytest

import mpray
from mpray import _global
from mpray import exceptions as exc
from conftest import wait_for

MB = 1024 * 1024


@mpray.remote
def ident(x):
    return x


@mpray.remote
def pid_of():
    return os.getpid()


def node_submitted() -> int:
    return mpray.api._node_stats()["submitted"]


def warm_leases() -> None:
    """Run enough tasks that the driver holds its leases (the first ones go via the node)."""
    for _ in range(3):
        mpray.get([ident.remote(i) for i in range(20)], timeout=30)


def test_tasks_bypass_the_node_once_leased(ray_start):
    warm_leases()
    before = node_submitted()
    assert mpray.get([ident.remote(i) for i in range(500)], timeout=30) == list(range(500))
    # most tasks ran on leases: the node saw only the few that (re)build leases (leases
    # idle for 20 ms are given back, so the batch may have to start new ones)
    assert node_submitted() - before < 50


def test_lease_given_back_when_idle(ray_start):
    @mpray.remote
    def hold(s):
        time.sleep(s)
        return os.getpid()

    refs = [hold.remote(0.3) for _ in range(2)]
    time.sleep(0.1)
    assert mpray.available_resources().get("CPU", 0) == 0  # both CPUs busy or leased
    assert _global.client.owner.leases, "no lease was granted"  # (read while waiting)
    mpray.get(refs, timeout=30)
    # an idle lease returns its CPU to the node within a short while
    assert wait_for(lambda: mpray.available_resources().get("CPU", 0) == 2, 5)
    assert mpray.get(ident.remote(7), timeout=30) == 7


def test_worker_killed_during_direct_task_is_retried(ray_start, tmp_path):
    marker = tmp_path / "once"

    @mpray.remote
    def die_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return "survived"

    warm_leases()
    before = node_submitted()
    assert mpray.get(die_once.remote(str(marker)), timeout=60) == "survived"
    assert marker.exists()
    assert node_submitted() > before  # the retry went through the node
    assert mpray.get([ident.remote(i) for i in range(50)], timeout=30) == list(range(50))


def test_worker_killed_during_direct_task_without_retries(ray_start):
    @mpray.remote(max_retries=0)
    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    warm_leases()
    with pytest.raises(exc.WorkerCrashedError):
        mpray.get(die.remote(), timeout=60)
    assert mpray.get(ident.remote(1), timeout=30) == 1


def test_retry_exceptions_on_direct_task(ray_start, tmp_path):
    counter = tmp_path / "n"

    @mpray.remote(max_retries=2, retry_exceptions=True)
    def flaky(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        open(path, "w").write(str(n + 1))
        if n < 2:
            raise ValueError(f"attempt {n}")
        return n

    warm_leases()
    assert mpray.get(flaky.remote(str(counter)), timeout=60) == 2
    assert counter.read_text() == "3"


def test_retried_direct_task_result_freed_when_dropped(ray_start, tmp_path):
    """A direct task retried by the node: its worker may hand the value straight here,
    but the node registered it, so dropping the ref must free the node's copy."""
    counter = tmp_path / "n"

    @mpray.remote(max_retries=1, retry_exceptions=True)
    def flaky_big(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        open(path, "w").write(str(n + 1))
        if n == 0:
            raise ValueError("first attempt")
        return np.full(4 * MB, 7, dtype=np.uint8)

    warm_leases()
    base = mpray.api._node_stats()["arena_used"]
    ref = flaky_big.remote(str(counter))
    assert mpray.get(ref, timeout=60)[5] == 7
    assert counter.read_text() == "2"
    del ref
    gc.collect()
    assert wait_for(lambda: mpray.api._node_stats()["arena_used"] == base, 5)


def test_cancel_running_and_queued_direct_tasks(ray_start, tmp_path):
    @mpray.remote
    def sleeper(path, s):
        open(path, "w").close()
        time.sleep(s)
        return "finished"

    warm_leases()
    running = [sleeper.remote(str(tmp_path / f"r{i}"), 30) for i in range(2)]
    assert wait_for(lambda: all((tmp_path / f"r{i}").exists() for i in range(2)), 10)
    queued = [sleeper.remote(str(tmp_path / f"q{i}"), 0) for i in range(6)]
    for r in queued:
        mpray.cancel(r)
    mpray.cancel(running[0])
    mpray.cancel(running[1], force=True)
    for r in queued + running:
        with pytest.raises(exc.TaskCancelledError):
            mpray.get(r, timeout=30)
    assert not any((tmp_path / f"q{i}").exists() for i in range(6))
    assert mpray.get([ident.remote(i) for i in range(20)], timeout=30) == list(range(20))


def test_nested_gets_inside_direct_tasks(ray_start):
    @mpray.remote
    def leaf(i):
        return i

    @mpray.remote
    def parent(n):
        return sum(mpray.get([leaf.remote(i) for i in range(n)]))

    warm_leases()
    for _ in range(3):
        assert mpray.get([parent.remote(10) for _ in range(8)], timeout=60) == [45] * 8


def test_ref_to_running_direct_task_handed_on(ray_start):
    @mpray.remote
    def slow(x):
        time.sleep(0.3)
        return x * 2

    @mpray.remote
    def unbox(box):
        return mpray.get(box[0]) + 1

    warm_leases()
    inner = slow.remote(20)  # still running when its ref leaves inside a list
    assert mpray.get(unbox.remote([inner]), timeout=30) == 41
    assert mpray.get(inner, timeout=30) == 40


def test_dropped_ref_of_direct_task_frees_space(ray_start):
    @mpray.remote
    def big(seed):
        time.sleep(0.2)
        return np.full(4 * MB, seed, dtype=np.uint8)

    warm_leases()
    base = mpray.api._node_stats()["arena_used"]
    ref = big.remote(3)
    del ref  # dropped while the task still runs
    gc.collect()
    time.sleep(0.5)
    assert wait_for(lambda: mpray.api._node_stats()["arena_used"] == base, 5)
    kept = big.remote(4)
    assert mpray.get(kept, timeout=30)[123] == 4
    del kept
    gc.collect()
    assert wait_for(lambda: mpray.api._node_stats()["arena_used"] == base, 5)


def test_direct_task_reads_store_argument_zero_copy(ray_start):
    @mpray.remote
    def total(a):
        return int(a.sum()), a.flags.writeable

    warm_leases()
    a = np.ones(2 * MB, dtype=np.int64)
    ref = mpray.put(a)
    assert mpray.get([total.remote(ref) for _ in range(4)], timeout=30) == [(2 * MB, False)] * 4


def test_leased_tasks_spread_over_workers(ray_start):
    @mpray.remote
    def busy_pid():
        time.sleep(0.05)
        return os.getpid()

    warm_leases()
    pids = set(mpray.get([busy_pid.remote() for _ in range(20)], timeout=30))
    assert len(pids) == 2  # both CPUs worked


def test_direct_result_used_by_node_path_tasks(ray_start, tmp_path):
    @mpray.remote
    def two_cpus(x):
        return x + 1

    @mpray.remote(max_retries=1)
    def die_once_then_add(x, path):
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x + 2

    warm_leases()
    direct = ident.remote(40)
    assert mpray.get(direct, timeout=30) == 40  # its value came straight from a worker
    # a node-path task (2 CPUs) and a retried direct task both read it through the node
    assert mpray.get(two_cpus.options(num_cpus=2).remote(direct), timeout=30) == 41
    assert mpray.get(die_once_then_add.remote(direct, str(tmp_path / "m")), timeout=60) == 42
