"""Ray's options and init() arguments: each honoured, or refused or warned about by name,
never accepted and ignored (written from Ray 2.x's documented behaviour)."""

from __future__ import annotations

import os
import warnings

import pytest

import mpray
from mpray.util import placement_group, remove_placement_group


@mpray.remote
def pid():
    return os.getpid()


@mpray.remote(max_calls=2)
def pid_twice():
    return os.getpid()


@mpray.remote
def assigned():
    ctx = mpray.get_runtime_context()
    return ctx.get_assigned_resources(), mpray.get_gpu_ids(), ctx.get_accelerator_ids()


def test_max_calls_replaces_the_worker_after_that_many_calls(ray_factory):
    ray_factory(num_cpus=1)
    pids = [mpray.get(pid_twice.remote(), timeout=30) for _ in range(6)]
    assert [pids.count(p) for p in dict.fromkeys(pids)] == [2, 2, 2]
    plain = [mpray.get(pid.remote(), timeout=30) for _ in range(6)]
    assert len(set(plain)) == 1  # (without max_calls the worker stays)


def test_a_gpu_function_runs_each_call_in_a_fresh_worker(ray_factory):
    """Ray's default for num_gpus > 0 is max_calls=1 (GPU memory is given back)."""
    ray_factory(num_cpus=2, num_gpus=1)
    gpu_pid = mpray.remote(num_gpus=1)(os.getpid)
    cpu = mpray.get(pid.remote(), timeout=30)
    pids = [mpray.get(gpu_pid.remote(), timeout=30) for _ in range(3)]
    assert len(set(pids)) == 3 and cpu not in pids


def test_assigned_resources_and_gpu_ids(ray_factory):
    ray_factory(num_cpus=2, num_gpus=2, resources={"disk": 4})
    res, gpus, acc = mpray.get(assigned.remote(), timeout=30)
    assert res == {"CPU": 1.0} and gpus == [] and acc == {"GPU": []}
    res, gpus, acc = mpray.get(assigned.options(num_cpus=0.5, num_gpus=1,
                                                resources={"disk": 1}).remote(), timeout=30)
    assert res == {"CPU": 0.5, "GPU": 1.0, "disk": 1.0}
    assert len(gpus) == 1 and isinstance(gpus[0], int) and acc == {"GPU": [str(gpus[0])]}
    assert mpray.get_gpu_ids() == []  # the driver holds none


def test_accelerator_type_asks_for_that_kind_of_node(ray_start):
    ref = pid.options(accelerator_type="A100").remote()  # no such node here: it waits
    ready, _ = mpray.wait([ref], timeout=0.5)
    assert ready == []
    mpray.cancel(ref)


def test_options_mpray_cannot_honour_are_refused_or_said(ray_start):
    with pytest.raises(NotImplementedError, match="label_selector"):
        pid.options(label_selector={"zone": "a"})
    with pytest.warns(UserWarning, match="object_store_memory"):
        mpray.remote(object_store_memory=1 << 20)(os.getpid)
    with pytest.raises(NotImplementedError, match="_owner"):
        mpray.put(1, _owner=object())


def test_the_legacy_placement_group_option_becomes_a_strategy(ray_factory):
    ray_factory(num_cpus=2)
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    ref = pid.options(placement_group=pg, placement_group_bundle_index=0).remote()
    assert isinstance(mpray.get(ref, timeout=30), int)
    with pytest.raises(ValueError, match="either"):
        pid.options(placement_group=pg, scheduling_strategy="SPREAD")
    remove_placement_group(pg)


@pytest.mark.parametrize("kwargs, match", [
    (dict(include_dashboard=True), "dashboard"),
])
def test_init_arguments_mpray_has_no_use_for_warn(kwargs, match):
    with pytest.warns(UserWarning, match=match):
        mpray.init(num_cpus=1, **kwargs)
    mpray.shutdown()


def test_init_without_those_arguments_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mpray.init(num_cpus=1, include_dashboard=False, logging_level="INFO")
    mpray.shutdown()


@mpray.remote
class Holder:
    def assigned(self):
        return mpray.get_runtime_context().get_assigned_resources(), mpray.get_gpu_ids()

    def until_cancelled(self):
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if mpray.get_runtime_context().is_canceled():
                return "saw its cancel"
            time.sleep(0.01)
        return "never cancelled"


def test_an_actors_assigned_resources(ray_factory):
    ray_factory(num_cpus=2, num_gpus=1)
    assert mpray.get(Holder.remote().assigned.remote(), timeout=30) == ({}, [])  # (as Ray)
    res, gpus = mpray.get(Holder.options(num_cpus=1, num_gpus=1).remote().assigned.remote(),
                          timeout=30)
    assert res == {"CPU": 1.0, "GPU": 1.0} and len(gpus) == 1
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    from mpray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as PGS
    in_pg = Holder.options(num_cpus=0.5, scheduling_strategy=PGS(pg, 0)).remote()
    assert mpray.get(in_pg.assigned.remote(), timeout=30) == ({"CPU": 0.5}, [])


def test_a_sync_actor_call_sees_its_cancel(ray_start):
    import time

    h = Holder.remote()
    ref = h.until_cancelled.remote()
    time.sleep(0.5)
    mpray.cancel(ref)  # (a running sync call is not interrupted, as in Ray: it can look)
    assert mpray.get(ref, timeout=30) == "saw its cancel"
