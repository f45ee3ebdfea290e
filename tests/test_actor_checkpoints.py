"""Actor checkpoints (node/checkpoints.py, worker/actor.py): an actor created with
checkpoint_interval restarts from its last checkpoint and replays only the calls after
it; without __mpray_checkpoint__ it replays every call; without the option it starts
afresh (Ray's behaviour)."""

from __future__ import annotations

import os
import signal

import pytest

import mpray
from mpray import exceptions as exc

from conftest import wait_for

pytestmark = pytest.mark.timeout(120)


class _Counter:
    def __init__(self):
        self.n = 0
        self.replayed = 0  # (how many calls the last restart ran again)

    def add(self, k):
        self.n += k
        return self.n

    def pid(self):
        return os.getpid()

    def replays(self):
        return self.replayed


class _Checkpointed(_Counter):
    def __mpray_checkpoint__(self):
        return {"n": self.n}

    def __mpray_restore__(self, state):
        self.n = state["n"]


def _kill(actor) -> None:
    os.kill(mpray.get(actor.pid.remote(), timeout=30), signal.SIGKILL)


@pytest.mark.parametrize("cls, interval, after", [
    (_Checkpointed, 10, 26),  # restored at 20 (and pid()), 5 calls replayed
    (_Counter, 10, 26),  # no checkpoint method: every call replayed
    (_Counter, None, 1),  # no option: a fresh instance, as in Ray
])
def test_a_restarted_actor_gets_its_state_back(ray_start, cls, interval, after):
    A = mpray.remote(max_restarts=-1, max_task_retries=-1)(cls)
    a = A.options(checkpoint_interval=interval).remote()
    assert mpray.get([a.add.remote(1) for _ in range(25)], timeout=60)[-1] == 25
    _kill(a)
    assert mpray.get(a.add.remote(1), timeout=60) == after
    _kill(a)  # (and again: the checkpoint and log outlive one restart)
    assert mpray.get(a.add.remote(1), timeout=60) == after + (1 if interval else -after + 1)


def test_calls_that_are_not_retryable_are_not_replayed(ray_start):
    A = mpray.remote(max_restarts=-1)(_Checkpointed)  # (max_task_retries=0: Ray's default)
    a = A.options(checkpoint_interval=10).remote()
    mpray.get([a.add.remote(1) for _ in range(25)], timeout=60)
    old = mpray.get(a.pid.remote(), timeout=30)
    os.kill(old, signal.SIGKILL)
    # (a call sent before the restart is seen fails: it is not retried)
    assert wait_for(lambda: _new_pid(a, old), 30), "the actor never came back"
    assert mpray.get(a.add.remote(1), timeout=60) == 21  # the checkpoint at 20, no replay


def _new_pid(a, old: int) -> bool:
    try:
        return mpray.get(a.pid.remote(), timeout=30) != old
    except exc.ActorUnavailableError:
        return False


def test_checkpoint_interval_is_checked(ray_start):
    with pytest.raises(ValueError, match="checkpoint_interval"):
        mpray.remote(_Counter).options(checkpoint_interval=0)
    with pytest.raises(ValueError, match="one call at a time"):
        mpray.remote(max_concurrency=4)(_Counter).options(checkpoint_interval=5).remote()


def test_a_restore_that_raises_fails_the_restart_loudly(ray_start):
    class Broken(_Checkpointed):
        def __mpray_restore__(self, state):
            raise RuntimeError("cannot restore")

    A = mpray.remote(max_restarts=1, max_task_retries=-1)(Broken)
    a = A.options(checkpoint_interval=2).remote()
    mpray.get([a.add.remote(1) for _ in range(4)], timeout=60)
    _kill(a)
    with pytest.raises((exc.ActorDiedError, exc.ActorUnavailableError)):
        mpray.get(a.add.remote(1), timeout=60)
