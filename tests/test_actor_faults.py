"""Actor failures: constructor errors, method errors, process deaths with and without
restarts and task retries, exit_actor, and calls in flight when an actor dies."""

from __future__ import annotations

import os
import signal

import pytest

import mpray
from conftest import wait_for
from mpray import exceptions as exc


@mpray.remote
class Fragile:
    def __init__(self, marker=None):
        self.n = 0
        self.marker = marker

    def inc(self):
        self.n += 1
        return self.n

    def pid(self):
        return os.getpid()

    def die(self):
        os._exit(3)

    def die_once(self):
        """Dies the first time (any incarnation), succeeds afterwards."""
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(4)
        return "survived"

    def boom(self):
        raise ValueError("method failed")

    def leave(self):
        mpray.actor.exit_actor()

    def reconstructed(self):
        return mpray.get_runtime_context().was_current_actor_reconstructed()


@mpray.remote
class BadInit:
    def __init__(self):
        raise KeyError("constructor exploded")

    def f(self):
        return 1


def test_constructor_error_kills_the_actor(ray_module):
    a = BadInit.remote()
    with pytest.raises(exc.ActorDiedError) as ei:
        mpray.get(a.f.remote(), timeout=10)
    text = str(ei.value)
    assert "constructor exploded" in text and "BadInit.__init__" in text
    with pytest.raises(exc.ActorDiedError):  # and every later call too
        mpray.get(a.f.remote(), timeout=10)


def test_method_error_keeps_the_actor_serving(ray_module):
    a = Fragile.remote()
    mpray.get(a.inc.remote())
    with pytest.raises(ValueError, match="method failed") as ei:
        mpray.get(a.boom.remote())
    assert isinstance(ei.value, exc.RayTaskError)
    assert "Fragile.boom" in str(ei.value)
    assert mpray.get(a.inc.remote()) == 2  # state survived


def test_death_without_restarts_fails_in_flight_and_later_calls(ray_module):
    a = Fragile.remote()
    assert mpray.get(a.inc.remote()) == 1
    with pytest.raises(exc.RayActorError):
        mpray.get(a.die.remote(), timeout=10)
    with pytest.raises(exc.ActorDiedError, match="no restarts left"):
        mpray.get(a.inc.remote(), timeout=10)


def test_sigkill_restarts_with_fresh_state(ray_module):
    a = Fragile.options(max_restarts=1).remote()
    assert mpray.get([a.inc.remote() for _ in range(3)]) == [1, 2, 3]
    pid = mpray.get(a.pid.remote())
    os.kill(pid, signal.SIGKILL)
    # calls made around the death wait for the restart (or fail with a specific error)
    assert wait_for(lambda: _try(a.pid.remote()) not in (None, pid), 10)
    assert mpray.get(a.inc.remote()) == 1  # the constructor ran again: fresh state
    assert mpray.get(a.reconstructed.remote()) is True
    with pytest.raises(exc.RayActorError):  # the second death is the last
        mpray.get(a.die.remote(), timeout=10)
    with pytest.raises(exc.ActorDiedError):
        mpray.get(a.inc.remote(), timeout=10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:  # (gone, or gone while we read)
        return False


def _try(ref):
    try:
        return mpray.get(ref, timeout=10)
    except exc.RayActorError:
        return None


def test_in_flight_call_fails_when_restarting_without_task_retries(ray_module):
    a = Fragile.options(max_restarts=2).remote()
    mpray.get(a.inc.remote())
    with pytest.raises(exc.RayActorError) as ei:
        mpray.get(a.die.remote(), timeout=10)
    assert isinstance(ei.value, (exc.ActorUnavailableError, exc.ActorDiedError))
    assert mpray.get(a.inc.remote(), timeout=10) == 1


def test_in_flight_call_is_retried_with_max_task_retries(ray_module, tmp_path):
    marker = str(tmp_path / "died")
    a = Fragile.options(max_restarts=1, max_task_retries=1).remote(marker)
    assert mpray.get(a.die_once.remote(), timeout=10) == "survived"
    assert os.path.exists(marker)
    assert mpray.get(a.reconstructed.remote()) is True


def test_calls_from_a_task_see_restarts_and_death(ray_module):
    a = Fragile.options(max_restarts=1).remote()

    @mpray.remote
    def poke(h):
        out = []
        for m in ("inc", "die", "inc", "die", "inc"):
            try:
                out.append(mpray.get(getattr(h, m).remote(), timeout=10))
            except exc.ActorDiedError:
                out.append("dead")
            except exc.RayActorError:
                out.append("lost")
        return out

    assert mpray.get(poke.remote(a), timeout=30) == [1, "lost", 1, "dead", "dead"]


def test_exit_actor_ends_it_without_restart(ray_module):
    a = Fragile.options(max_restarts=3).remote()
    pid = mpray.get(a.pid.remote())
    with pytest.raises(exc.RayActorError):
        mpray.get(a.leave.remote(), timeout=10)
    with pytest.raises(exc.ActorDiedError, match="exit_actor"):
        mpray.get(a.inc.remote(), timeout=10)
    assert wait_for(lambda: not _alive(pid), 5)
    with pytest.raises(TypeError, match="inside an actor"):
        mpray.actor.exit_actor()


def test_kill_with_restart_allowed_restarts(ray_module):
    a = Fragile.options(max_restarts=1).remote()
    mpray.get(a.inc.remote())
    pid = mpray.get(a.pid.remote())
    mpray.kill(a, no_restart=False)
    assert wait_for(lambda: _try(a.pid.remote()) not in (None, pid), 10)
    assert mpray.get(a.inc.remote()) == 1


def test_many_calls_in_flight_when_the_actor_dies_all_resolve(ray_module):
    a = Fragile.remote()
    refs = [a.inc.remote() for _ in range(50)] + [a.die.remote()] + \
        [a.inc.remote() for _ in range(50)]
    got = []
    for r in refs:
        try:
            got.append(mpray.get(r, timeout=10))
        except exc.RayActorError:
            got.append("x")
    assert got[:50] == list(range(1, 51))
    assert got[50:] == ["x"] * 51


def test_engine_keeps_serving_after_actor_deaths(ray_module):
    @mpray.remote
    def sq(x):
        return x * x

    for _ in range(3):
        a = Fragile.remote()
        with pytest.raises(exc.RayActorError):
            mpray.get(a.die.remote(), timeout=10)
    assert mpray.get([sq.remote(i) for i in range(20)]) == [i * i for i in range(20)]
