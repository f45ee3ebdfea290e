"""Chaos: workers and the actor's process SIGKILLed every 100 ms while 5,000 tasks and
500 actor calls run, with spilling active (the store a third of the data): every result
is correct, and nothing is left behind (the leak check, and the spill directory)."""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import pytest

import mpray
from mpray import api

from conftest import MB

pytestmark = pytest.mark.timeout(240)

KIB8 = 1024  # int64s in 8 KiB: bigger than inline_max below, so each goes to the arena


@mpray.remote(max_retries=-1)
def make(i):
    time.sleep(0.002)
    return np.full(KIB8, i, dtype=np.int64)


@mpray.remote(max_restarts=-1, max_task_retries=-1)
class Echo:
    def make(self, i):
        time.sleep(0.002)
        return np.full(KIB8, i, dtype=np.int64)


def _killer(stop: threading.Event, kills: list) -> None:
    rng = random.Random(11)
    while not stop.wait(0.1):
        pids = api._node_stats()["pids"]  # (workers and actors: never the node's writer)
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills.append(1)
            except ProcessLookupError:
                pass


def test_results_are_right_while_processes_are_killed_and_values_spill(ray_factory):
    ray_factory(object_store_memory=16 * MB, inline_max=4096)  # (the data: 44 MB)
    where = api._global.session.setup.spill_dir
    stop, kills = threading.Event(), []
    killer = threading.Thread(target=_killer, args=(stop, kills), daemon=True)
    killer.start()
    try:
        refs = [make.remote(i) for i in range(5000)]
        actor = Echo.remote()
        calls = [actor.make.remote(i) for i in range(500)]
        for k in range(0, 5000, 500):  # (views pin their values: a part at a time)
            vals = mpray.get(refs[k:k + 500], timeout=120)
            assert all(int(v[0]) == k + i and int(v[-1]) == k + i
                       for i, v in enumerate(vals))
            del vals
        vals = mpray.get(calls, timeout=120)
        assert [int(v[0]) for v in vals] == list(range(500))
        del vals
    finally:
        stop.set()
        killer.join()
    st = api._node_stats()["spill"]
    assert len(kills) >= 20 and st["spilled"] > 0 and st["restored"] > 0, (len(kills), st)
    del refs, calls
    mpray.shutdown()
    assert not os.path.exists(where)


@mpray.remote(max_retries=1)
def _big(flag: str):
    if os.path.exists(flag):  # (the retry: slow, so that the driver reads first)
        time.sleep(3.0)
    return np.full(KIB8, 7, dtype=np.int64)


def test_a_worker_dying_right_after_its_task_ends_leaves_its_value_right(ray_factory,
                                                                        tmp_path,
                                                                        monkeypatch):
    """A node task's worker hands its value to the driver and dies before the node hears
    that the task ended: the node frees the value's arena space (nobody registered it)
    and runs the task again.  The driver must not keep the first place: reused, it read
    another value (chaos above: one task in 5,000 got another's array)."""
    from mpray.store.serialization import ARENA
    from mpray.worker.loop import WorkerLoop

    flag = str(tmp_path / "died")
    deliver = WorkerLoop._deliver

    def deliver_then_die(self, stored):  # (the forked node and its workers inherit it)
        sent = deliver(self, stored)
        if any(kind == ARENA for _o, kind, _p, _c in stored) and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return sent

    monkeypatch.setattr(WorkerLoop, "_deliver", deliver_then_die)
    ray_factory(inline_max=4096)
    ref = _big.remote(flag)  # (a first task goes by the node: it makes the lease)
    deadline = time.monotonic() + 1.0  # (it hands its value on at once, if at all)
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # (the node has seen the worker die)
    fillers = [mpray.put(np.full(KIB8, -1, dtype=np.int64)) for _ in range(8)]
    value = mpray.get(ref, timeout=60)
    assert (value == 7).all(), np.unique(value)
    del value, fillers
