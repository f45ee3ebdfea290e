"""Resource-aware scheduling: CPU accounting, custom resources, infeasible tasks and
GPU assignment through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import mpray
from mpray import exceptions as exc

from conftest import REPO, wait_for


@mpray.remote
def interval(seconds):
    t0 = time.time()
    time.sleep(seconds)
    return t0, time.time()


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_two_cpu_task_never_overlaps_one_cpu_tasks(ray_start):
    small1 = interval.options(num_cpus=1).remote(0.3)
    big = interval.options(num_cpus=2).remote(0.3)
    small2 = interval.options(num_cpus=1).remote(0.3)
    small3 = interval.options(num_cpus=1).remote(0.3)
    s1, b, s2, s3 = mpray.get([small1, big, small2, small3], timeout=30)
    for s in (s1, s2, s3):
        assert not _overlap(b, s), f"2-CPU task {b} overlapped a 1-CPU task {s}"


def test_one_cpu_tasks_run_two_at_a_time(ray_start):
    ivs = mpray.get([interval.remote(0.4) for _ in range(4)], timeout=30)
    # never more than 2 running at any instant ...
    for t in sorted(x for iv in ivs for x in iv):
        running = sum(1 for s, e in ivs if s <= t < e)
        assert running <= 2
    # ... and they do run in parallel (2 CPUs)
    assert sum(1 for i in range(4) for j in range(i + 1, 4) if _overlap(ivs[i], ivs[j])) >= 2


def test_fractional_cpus_share(ray_start):
    ivs = mpray.get([interval.options(num_cpus=0.5).remote(0.4) for _ in range(4)], timeout=30)
    start = min(s for s, _ in ivs)
    end = max(e for _, e in ivs)
    # four half-CPU tasks fit at once on 2 CPUs
    assert sum(1 for i in range(4) for j in range(i + 1, 4) if _overlap(ivs[i], ivs[j])) >= 5
    assert end - start < 2.5


def test_custom_resource_serialises_tasks(ray_factory):
    ray_factory(resources={"foo": 1})
    assert mpray.cluster_resources()["foo"] == 1
    assert mpray.available_resources()["foo"] == 1
    refs = [interval.options(resources={"foo": 1}).remote(0.2) for _ in range(3)]
    ivs = mpray.get(refs, timeout=30)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(ivs[i], ivs[j]), f"foo tasks overlapped: {ivs[i]} {ivs[j]}"
    # half a foo each: two at a time
    half = mpray.get([interval.options(resources={"foo": 0.5}).remote(0.4) for _ in range(2)],
                     timeout=30)
    assert _overlap(half[0], half[1])


def test_custom_resource_accounting(ray_factory, tmp_path):
    ray_factory(resources={"foo": 2})
    started = tmp_path / "started"

    @mpray.remote(resources={"foo": 1.5})
    def hold(path):
        open(path, "w").close()
        time.sleep(0.6)
        return 1

    ref = hold.remote(str(started))
    assert wait_for(started.exists, 10)
    assert mpray.available_resources().get("foo") == pytest.approx(0.5)
    assert mpray.get(ref, timeout=30) == 1
    assert wait_for(lambda: mpray.available_resources().get("foo") == 2, 5)


INFEASIBLE = r"""
import sys, time
import mpray
from mpray import exceptions as exc
mpray.init(num_cpus=2, object_store_memory=64 * 1024 * 1024, resources={"foo": 1})

@mpray.remote(resources={"unobtainium": 1})
def never():
    return "ran"

@mpray.remote
def ok():
    return "ok"

ref = never.remote()
try:
    mpray.get(ref, timeout=0.5)
    print("GOT")
except exc.GetTimeoutError:
    print("TIMEOUT")
print(mpray.get(ok.remote(), timeout=20))
sys.stdout.flush()
mpray.shutdown()
"""


def test_infeasible_task_stays_pending_and_warns(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", INFEASIBLE], capture_output=True, text=True,
                          timeout=60, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["TIMEOUT", "ok"], proc.stdout + proc.stderr
    assert "unobtainium" in proc.stderr, f"no warning on stderr: {proc.stderr!r}"


def test_infeasible_task_in_process(ray_start):
    ref = interval.options(resources={"unobtainium": 2}).remote(0)
    with pytest.raises(exc.GetTimeoutError):
        mpray.get(ref, timeout=0.3)
    # it does not block feasible work
    assert len(mpray.get(interval.remote(0), timeout=20)) == 2
    mpray.cancel(ref)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(ref, timeout=10)


def test_too_many_cpus_is_infeasible(ray_start):
    ref = interval.options(num_cpus=3).remote(0)
    with pytest.raises(exc.GetTimeoutError):
        mpray.get(ref, timeout=0.3)
    mpray.cancel(ref)


@mpray.remote(num_gpus=1)
def gpu_env(started_dir, name, peers):
    open(os.path.join(started_dir, name), "w").close()
    deadline = time.monotonic() + 10
    while len(os.listdir(started_dir)) < peers and time.monotonic() < deadline:
        time.sleep(0.01)
    return (os.environ.get("CUDA_VISIBLE_DEVICES"),
            mpray.get_runtime_context().get_accelerator_ids()["GPU"])


@mpray.remote
def plain_env():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_num_gpus_sets_cuda_visible_devices(ray_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no real GPUs: ids are 0..n-1
    ray_factory(num_gpus=2)
    assert mpray.cluster_resources()["GPU"] == 2
    one = tmp_path / "one"
    one.mkdir()
    cvd, ids = mpray.get(gpu_env.remote(str(one), "a", 1), timeout=30)
    assert cvd in ("0", "1")
    assert ids == [cvd]
    # two concurrent GPU tasks get different devices
    two = tmp_path / "two"
    two.mkdir()
    (c1, _), (c2, _) = mpray.get([gpu_env.remote(str(two), "a", 2),
                                  gpu_env.remote(str(two), "b", 2)], timeout=30)
    assert {c1, c2} == {"0", "1"}
    # a task without GPUs does not inherit a GPU task's devices
    outs = mpray.get([plain_env.remote() for _ in range(4)], timeout=30)
    assert all(o in ("", None) for o in outs), outs


def test_gpu_tasks_limited_by_gpu_count(ray_factory, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    ray_factory(num_gpus=1)
    ivs = mpray.get([interval.options(num_gpus=1, num_cpus=0).remote(0.25) for _ in range(3)],
                    timeout=30)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _overlap(ivs[i], ivs[j])
    # num_gpus on a node without GPUs is infeasible
    mpray.shutdown()
    ray_factory(num_gpus=0)
    ref = interval.options(num_gpus=1).remote(0)
    with pytest.raises(exc.GetTimeoutError):
        mpray.get(ref, timeout=0.3)
    mpray.cancel(ref)


def test_zero_cpu_tasks_run_beyond_cpu_count(ray_start, tmp_path):
    @mpray.remote(num_cpus=0)
    def rendezvous(d, name, n):
        open(os.path.join(d, name), "w").close()
        deadline = time.monotonic() + 15
        while len(os.listdir(d)) < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    # three tasks that can only finish when all three run at once, on 2 CPUs
    assert mpray.get([rendezvous.remote(str(tmp_path), str(i), 3) for i in range(3)],
                     timeout=30) == [True] * 3


def test_extra_workers_retire_when_idle(ray_factory, tmp_path):
    ray_factory(idle_worker_timeout=0.5)

    @mpray.remote
    def child(x):
        time.sleep(0.05)
        return x

    @mpray.remote
    def parent(k):
        return sum(mpray.get([child.remote(k + i) for i in range(3)]))

    assert mpray.get([parent.remote(k) for k in range(4)], timeout=60) == [
        3 * k + 3 for k in range(4)]
    peak = mpray.api._node_stats()["workers"]
    assert peak > 2  # blocked parents made the node start more workers
    assert wait_for(lambda: mpray.api._node_stats()["workers"] <= 2, 8), \
        f"idle workers were not retired: {mpray.api._node_stats()['workers']} remain"
    assert mpray.get(child.remote(1), timeout=30) == 1
