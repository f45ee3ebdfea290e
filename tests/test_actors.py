"""Actors through the public API: state, ordering, handles, names, lifetimes, kill,
num_returns, scheduling and resources (failures and concurrency have their own files)."""

from __future__ import annotations

import os

import psutil
import pytest

import mpray
from conftest import wait_for
from mpray import exceptions as exc


@mpray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def inc(self, by=1):
        self.n += by
        return self.n

    def get(self):
        return self.n

    def pid(self):
        return os.getpid()

    def echo(self, x):
        return x

    @mpray.method(num_returns=2)
    def pair(self):
        return self.n, -self.n


@mpray.remote
def call_counter(c, times):
    return [mpray.get(c.inc.remote()) for _ in range(times)]


@mpray.remote
class Caller:
    """An actor that holds another actor's handle and calls it."""

    def __init__(self, target):
        self.target = target

    def bump(self, k):
        return mpray.get([self.target.inc.remote() for _ in range(k)])

    def target_pid(self):
        return mpray.get(self.target.pid.remote())


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# ----------------------------------------------------------------------------- basics


def test_state_persists_and_calls_run_in_order(ray_module):
    c = Counter.remote(5)
    refs = [c.inc.remote() for _ in range(200)]
    assert mpray.get(refs) == list(range(6, 206))
    assert mpray.get(c.get.remote()) == 205


def test_each_actor_is_its_own_process(ray_module):
    a, b = Counter.remote(), Counter.remote()
    pa, pb = mpray.get([a.pid.remote(), b.pid.remote()])
    assert pa != pb and os.getpid() not in (pa, pb)
    assert mpray.get(a.inc.remote(3)) == 3 and mpray.get(b.inc.remote(7)) == 7


def test_direct_instantiation_and_direct_method_call_raise(ray_module):
    with pytest.raises(TypeError, match=r"Counter\.remote\(\)"):
        Counter()
    c = Counter.remote()
    with pytest.raises(TypeError, match=r"inc\.remote\(\)"):
        c.inc()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope.remote()


def test_num_returns_from_decorator_and_options(ray_module):
    c = Counter.remote(4)
    r1, r2 = c.pair.remote()
    assert mpray.get([r1, r2]) == [4, -4]
    a, b, d = c.echo.options(num_returns=3).remote((1, 2, 3))
    assert mpray.get([a, b, d]) == [1, 2, 3]
    assert c.inc.options(num_returns=0).remote() is None
    assert mpray.get(c.get.remote()) == 5


def test_bad_options_are_rejected(ray_module):
    with pytest.raises(ValueError, match="max_concurrency"):
        Counter.options(max_concurrency=0)
    with pytest.raises(ValueError, match="lifetime"):
        Counter.options(lifetime="forever")
    with pytest.raises(ValueError, match="invalid option 'num_returns' for a actor"):
        Counter.options(num_returns=2)
    with pytest.raises(ValueError, match="get_if_exists"):
        Counter.options(get_if_exists=True)


def test_ref_arguments_are_resolved(ray_module):
    c = Counter.remote()
    x = mpray.put(41)
    assert mpray.get(c.inc.remote(x)) == 41
    # a result of another call, still running when this one is submitted
    assert mpray.get(c.inc.remote(c.inc.remote(0))) == 82
    big = mpray.put(bytes(300_000))
    assert len(mpray.get(c.echo.remote(big))) == 300_000


def test_refs_inside_arguments_keep_order(ray_module):
    """Calls with refs pickled inside take the node's path, the rest go direct: the
    actor still sees them in submission order."""
    c = Counter.remote()
    refs = []
    for i in range(30):
        if i % 3 == 0:
            refs.append(c.echo.remote([mpray.put(i)]))  # a ref inside a list
        refs.append(c.inc.remote())
    out = mpray.get(refs)
    counts = [v for v in out if isinstance(v, int)]
    assert counts == list(range(1, 31))
    inner = [v for v in out if isinstance(v, list)]
    assert mpray.get([v[0] for v in inner]) == list(range(0, 30, 3))


def test_a_chain_of_calls_whose_refs_are_dropped_while_pending_frees_every_value(
        ray_module):
    """x = c.take(p.make(x)), submitted without waiting (a synchronous parameter
    server): each value is the argument of a call to another actor before it exists, and
    its last ref here goes before that call leaves.  Every value is freed in the end (a
    release once overtook the Submit of the call returning it: the node then held the
    value for the driver for ever)."""
    import numpy as np

    @mpray.remote
    class Producer:
        def make(self, w):
            return np.ones(1 << 18, np.float32) + (0 if np.ndim(w) == 0 else w[0])

    @mpray.remote
    class Consumer:
        def take(self, a):
            return a + 1

    p, c = Producer.remote(), Consumer.remote()
    mpray.get([p.make.remote(0), c.take.remote(np.ones(1))])
    base = mpray.api._node_stats()["arena_used"]
    x = mpray.put(np.zeros(1 << 18, np.float32))
    for _ in range(6):
        x = c.take.remote(p.make.remote(x))
    assert mpray.get(x)[0] == 12.0
    del x
    assert wait_for(lambda: mpray.api._node_stats()["arena_used"] == base, 10), \
        mpray.api._node_stats()["arena_used"] - base


def test_runtime_context_inside_actor(ray_module):
    @mpray.remote
    class Who:
        def me(self):
            ctx = mpray.get_runtime_context()
            return ctx.get_actor_id(), ctx.was_current_actor_reconstructed()

    w = Who.remote()
    aid, again = mpray.get(w.me.remote())
    assert aid == w._actor_id.hex() and again is False
    assert mpray.get_runtime_context().get_actor_id() is None


# ----------------------------------------------------------------------------- handles


def test_handle_passed_to_a_task_calls_the_same_actor(ray_module):
    c = Counter.remote()
    mpray.get(c.inc.remote())
    assert mpray.get(call_counter.remote(c, 5)) == [2, 3, 4, 5, 6]
    assert mpray.get(c.get.remote()) == 6


def test_handle_passed_to_another_actor(ray_module):
    c = Counter.remote()
    caller = Caller.remote(c)
    assert mpray.get(caller.bump.remote(3)) == [1, 2, 3]
    assert mpray.get(c.inc.remote()) == 4
    assert mpray.get(caller.target_pid.remote()) == mpray.get(c.pid.remote())


def test_actor_created_inside_a_task_returned_to_the_driver(ray_module):
    @mpray.remote
    def make():
        c = Counter.remote(100)
        mpray.get(c.inc.remote())
        return c

    c = mpray.get(make.remote())
    assert mpray.get(c.inc.remote()) == 102


def test_handles_compare_and_print(ray_module):
    c = Counter.remote()
    again = mpray.get(mpray.put([c]))[0]
    assert again == c and hash(again) == hash(c)
    assert "Counter" in repr(c)


# ----------------------------------------------------------------------------- names


def test_named_actor_lookup_and_duplicate(ray_module):
    a = Counter.options(name="acc").remote(7)
    b = mpray.get_actor("acc")
    assert mpray.get(b.inc.remote()) == 8 and mpray.get(a.get.remote()) == 8
    with pytest.raises(ValueError, match="already exists"):
        Counter.options(name="acc").remote()
    same = Counter.options(name="acc", get_if_exists=True).remote(999)  # args ignored
    assert mpray.get(same.get.remote()) == 8
    with pytest.raises(ValueError, match="Failed to look up actor with name 'nobody'"):
        mpray.get_actor("nobody")
    mpray.kill(a)


def test_namespaces_separate_names(ray_module):
    a = Counter.options(name="n", namespace="one").remote(1)
    b = Counter.options(name="n", namespace="two").remote(2)
    assert mpray.get(mpray.get_actor("n", namespace="one").get.remote()) == 1
    assert mpray.get(mpray.get_actor("n", namespace="two").get.remote()) == 2
    with pytest.raises(ValueError):
        mpray.get_actor("n")  # not in the job's namespace
    mpray.kill(a)
    mpray.kill(b)


def test_get_actor_from_a_task(ray_module):
    keep = Counter.options(name="shared").remote(10)  # noqa: F841 - its handle keeps it

    @mpray.remote
    def use():
        return mpray.get(mpray.get_actor("shared").inc.remote())

    assert mpray.get(use.remote()) == 11
    mpray.kill(mpray.get_actor("shared"))


# ----------------------------------------------------------------------------- lifetime


def test_actor_ends_when_last_handle_is_gone(ray_module):
    c = Counter.options(name="temp").remote()
    pid = mpray.get(c.pid.remote())
    del c
    assert wait_for(lambda: not _alive(pid), 5)
    # the name is free again
    assert wait_for(lambda: _lookup_fails("temp"), 5)


def _lookup_fails(name: str) -> bool:
    try:
        mpray.get_actor(name)
    except ValueError:
        return True
    return False


def test_temporary_handle_lives_until_its_calls_are_done(ray_module):
    assert mpray.get(Counter.remote(3).inc.remote()) == 4
    refs = [Counter.remote(i).inc.remote() for i in range(5)]
    assert mpray.get(refs) == [1, 2, 3, 4, 5]


def test_handle_held_by_another_actor_keeps_it_alive(ray_module):
    c = Counter.remote()
    pid = mpray.get(c.pid.remote())
    caller = Caller.remote(c)
    mpray.get(caller.bump.remote(1))
    del c
    assert mpray.get(caller.bump.remote(2)) == [2, 3]
    assert _alive(pid)
    del caller
    assert wait_for(lambda: not _alive(pid), 5)


def test_detached_actor_outlives_its_handles(ray_module):
    c = Counter.options(name="keeper", lifetime="detached").remote(1)
    pid = mpray.get(c.pid.remote())
    del c
    again = mpray.get_actor("keeper")
    assert mpray.get(again.inc.remote()) == 2
    del again
    assert _alive(pid)
    mpray.kill(mpray.get_actor("keeper"))
    assert wait_for(lambda: not _alive(pid), 5)


def test_kill_then_calls_raise_and_name_is_free_at_once(ray_module):
    c = Counter.options(name="victim").remote()
    pid = mpray.get(c.pid.remote())
    mpray.kill(c)
    with pytest.raises(exc.ActorDiedError):
        mpray.get(c.inc.remote(), timeout=10)
    fresh = Counter.options(name="victim").remote(50)  # the name was freed by kill
    assert mpray.get(fresh.inc.remote()) == 51
    assert wait_for(lambda: not _alive(pid), 5)
    with pytest.raises(ValueError, match="only supports actor handles"):
        mpray.kill("not an actor")
    mpray.kill(fresh)


def test_kill_from_a_task(ray_module):
    c = Counter.remote()
    mpray.get(c.inc.remote())

    @mpray.remote
    def killer(h):
        mpray.kill(h)

    mpray.get(killer.remote(c))
    with pytest.raises(exc.ActorDiedError):
        mpray.get(c.inc.remote(), timeout=10)


# ----------------------------------------------------------------------------- resources


def test_more_default_actors_than_cpus(ray_module):
    actors = [Counter.remote(i) for i in range(6)]  # each holds 0 CPU once created
    assert mpray.get([a.inc.remote() for a in actors]) == list(range(1, 7))
    cpus = mpray.cluster_resources()["CPU"]  # (under MPI: every rank's)
    assert wait_for(lambda: mpray.available_resources().get("CPU") == cpus, 5)


def test_lower_level_remote_forms_take_args_and_options(ray_module):
    """Ray's ``_remote(args=, kwargs=, **options)`` on actor classes and functions (its
    own microbenchmark uses ``Actor._remote()``)."""
    c = Counter._remote(args=[5], max_concurrency=1)
    assert mpray.get(c.inc._remote(args=[2])) == 7
    lo, hi = c.pair._remote(num_returns=2)
    assert mpray.get([lo, hi]) == [7, -7]
    plain = Counter._remote()
    assert mpray.get(plain.get.remote()) == 0

    @mpray.remote
    def add(x, y=0):
        return x + y

    a, b = add._remote(args=(1,), kwargs={"y": 2}, num_returns=1), add._remote(args=[4])
    assert mpray.get([a, b]) == [3, 4]
