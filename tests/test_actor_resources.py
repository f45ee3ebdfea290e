"""Actors and resources, each test in a fresh session: CPUs and GPUs held for an
actor's life, and calls when no worker has a mailbox to the driver."""

from __future__ import annotations

import os

import pytest

import mpray
from conftest import wait_for
from test_actors import Counter
from mpray import exceptions as exc


def test_explicit_cpus_are_held_for_life(ray_start):
    a = Counter.options(num_cpus=1).remote()
    b = Counter.options(num_cpus=1).remote()
    mpray.get([a.inc.remote(), b.inc.remote()])
    assert mpray.available_resources().get("CPU", 0) == 0
    c = Counter.options(num_cpus=1).remote()
    ready, _ = mpray.wait([c.inc.remote()], timeout=0.5)
    assert ready == []  # waits for a CPU
    mpray.kill(a)
    assert mpray.get(c.get.remote(), timeout=10) == 1


def test_gpu_actor_sees_only_its_devices(ray_factory):
    ray_factory(num_gpus=2)

    @mpray.remote(num_gpus=1)
    class G:
        def devices(self):
            return os.environ.get("CUDA_VISIBLE_DEVICES")

    g1, g2 = G.remote(), G.remote()
    d1, d2 = mpray.get([g1.devices.remote(), g2.devices.remote()])
    assert {d1, d2} == {"0", "1"}
    assert mpray.get(g1.devices.remote()) == d1  # kept for life
    assert mpray.available_resources().get("GPU", 0) == 0
    mpray.kill(g1)
    assert wait_for(lambda: mpray.available_resources().get("GPU", 0) == 1.0, 5)


def test_calls_work_without_mailboxes(ray_factory):
    ray_factory(direct_slots=0)
    c = Counter.remote()
    assert mpray.get([c.inc.remote() for _ in range(50)]) == list(range(1, 51))
    mpray.kill(c)
    with pytest.raises(exc.ActorDiedError):
        mpray.get(c.inc.remote(), timeout=10)


def test_custom_resources_are_held_for_life(ray_factory):
    ray_factory(resources={"slot": 2})
    a = Counter.options(resources={"slot": 1}).remote()
    b = Counter.options(resources={"slot": 1}).remote()
    mpray.get([a.inc.remote(), b.inc.remote()])
    assert mpray.available_resources().get("slot", 0) == 0
    c = Counter.options(resources={"slot": 1}).remote()
    assert mpray.wait([c.inc.remote()], timeout=0.3)[0] == []
    del a
    assert mpray.get(c.get.remote(), timeout=10) == 1  # a's slot went to c


def test_actor_holding_the_only_cpu_can_wait_for_a_task(ray_factory):
    """A sync actor blocked in get lends its CPU, as a task does: no deadlock."""
    ray_factory(num_cpus=1)

    @mpray.remote
    def child(x):
        return x + 1

    @mpray.remote(num_cpus=1)
    class Parent:
        def run(self, x):
            return mpray.get(child.remote(x))

    p = Parent.remote()
    assert mpray.get(p.run.remote(1), timeout=20) == 2
    assert mpray.get(p.run.remote(5), timeout=20) == 6


def test_polling_can_be_turned_off(ray_factory):
    ray_factory(spin_us=0)
    c = Counter.remote()
    assert mpray.get([c.inc.remote() for _ in range(20)]) == list(range(1, 21))
    assert mpray.api._global.client.spin_max == 0
