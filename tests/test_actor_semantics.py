"""Ray 2.x actor semantics: subclassing, class attributes through the decorated name,
methods shadowed by instance attributes, graceful ends (exit_actor, __ray_terminate__,
__ray_shutdown__, atexit), awaiting refs while another call is suspended, concurrency
groups, max_pending_calls, and cancel(force=True) of actor calls.

Concurrency is shown without timing where possible: calls that can only finish when
another call runs at the same moment (an event set by a call of another group)."""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time

import pytest

import mpray
from mpray import exceptions as exc
from conftest import wait_for


# ---------------------------------------------------------------------- 1, 2: the class
@mpray.remote
class WithClassAttrs:
    CONST = 7

    @staticmethod
    def helper(x):
        return x * 10

    @classmethod
    def kind(cls):
        return cls.__name__

    def use_them(self):
        # the decorated name, inside the actor (a module-level class: by reference)
        return WithClassAttrs.CONST + WithClassAttrs.helper(1), WithClassAttrs.kind()


def test_subclassing_an_actor_class_is_refused_as_in_ray():
    with pytest.raises(mpray.actor.ActorClassInheritanceException,
                       match="Inheriting from actor classes is not currently supported"):
        class Sub(WithClassAttrs):  # noqa: F841
            pass
    assert issubclass(mpray.actor.ActorClassInheritanceException, TypeError)


def test_subclassing_the_undecorated_class(ray_module):
    base = WithClassAttrs.__ray_actor_class__
    assert isinstance(base, type) and base.CONST == 7

    @mpray.remote
    class Sub(base):
        def more(self):
            return self.use_them()[0] + 1

    assert mpray.get(Sub.remote().more.remote(), timeout=30) == 18


def test_class_attributes_through_the_decorated_name(ray_module):
    assert WithClassAttrs.CONST == 7
    assert WithClassAttrs.helper(2) == 20
    assert WithClassAttrs.kind() == "WithClassAttrs"
    a = WithClassAttrs.remote()
    assert mpray.get(a.use_them.remote(), timeout=30) == (17, "WithClassAttrs")
    with pytest.raises(AttributeError):
        WithClassAttrs.no_such_attribute


def test_class_attributes_of_a_local_class_inside_the_actor(ray_module):
    @mpray.remote
    class Local:  # (pickled by value: the decorated name travels with the methods)
        LIMIT = 3

        @staticmethod
        def double(x):
            return 2 * x

        def compute(self):
            return Local.double(Local.LIMIT)

    assert mpray.get(Local.remote().compute.remote(), timeout=30) == 6


# ---------------------------------------------------------------------- 3: shadowing
@mpray.remote
class Shadowed:
    def __init__(self):
        self.value = 5  # an instance attribute named like a method

    def value(self):  # noqa: F811 - the method the remote call must run
        return "method"

    @staticmethod
    def static():
        return "static"


def test_instance_attribute_does_not_shadow_the_method(ray_module):
    a = Shadowed.remote()
    assert mpray.get(a.value.remote(), timeout=30) == "method"
    assert mpray.get(a.static.remote(), timeout=30) == "static"


# ---------------------------------------------------------------------- 4, 5, 6: ends
def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


@mpray.remote
class Ending:
    def __init__(self, log, register_atexit=True):
        self.log = log
        if register_atexit:
            atexit.register(_append, log, "atexit;")

    def work(self, x):
        time.sleep(0.05)
        _append(self.log, f"work{x};")
        return x

    def leave(self):
        mpray.actor.exit_actor()

    def __ray_shutdown__(self):
        _append(self.log, "shutdown;")

    def pid(self):
        return os.getpid()


def test_exit_actor_runs_shutdown_then_atexit_handlers(ray_module, tmp_path):
    log = str(tmp_path / "log")
    a = Ending.remote(log)
    assert mpray.get(a.work.remote(1), timeout=30) == 1
    with pytest.raises(exc.ActorDiedError):
        mpray.get(a.leave.remote(), timeout=30)
    # (the exit call's outcome goes out last: its handlers ran already)
    assert _read(log) == "work1;shutdown;atexit;"


def test_ray_terminate_returns_a_ref_and_ends_after_queued_calls(ray_module, tmp_path):
    log = str(tmp_path / "log")
    a = Ending.remote(log)
    refs = [a.work.remote(i) for i in range(3)]
    done = a.__ray_terminate__.remote()
    assert isinstance(done, mpray.ObjectRef)
    assert mpray.get(refs, timeout=30) == [0, 1, 2]
    with pytest.raises(exc.ActorDiedError):
        mpray.get(done, timeout=30)
    assert _read(log) == "work0;work1;work2;shutdown;atexit;"
    with pytest.raises(exc.ActorDiedError):
        mpray.get(a.work.remote(9), timeout=30)


def test_kill_runs_no_shutdown_method(ray_module, tmp_path):
    log = str(tmp_path / "log")
    a = Ending.remote(log)
    pid = mpray.get(a.pid.remote(), timeout=30)
    mpray.kill(a)
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 10)
    assert _read(log) == ""


@mpray.remote
class AsyncEnding:
    def __init__(self, log):
        self.log = log
        atexit.register(_append, log, "atexit;")

    async def slow(self):
        await asyncio.sleep(0.3)
        _append(self.log, "slow;")
        return "slow"

    async def leave(self):
        mpray.actor.exit_actor()

    async def __ray_shutdown__(self):
        await asyncio.sleep(0)
        _append(self.log, "shutdown;")


def test_async_actor_exit_lets_running_calls_finish(ray_module, tmp_path):
    log = str(tmp_path / "log")
    a = AsyncEnding.remote(log)
    slow = a.slow.remote()
    time.sleep(0.1)  # (slow runs now)
    leave = a.leave.remote()
    assert mpray.get(slow, timeout=30) == "slow"
    with pytest.raises(exc.ActorDiedError):
        mpray.get(leave, timeout=30)
    assert _read(log) == "slow;shutdown;atexit;"


def test_threaded_actor_exit_lets_running_calls_finish(ray_module, tmp_path):
    log = str(tmp_path / "log")
    threaded = mpray.remote(max_concurrency=2)(Ending.__ray_actor_class__)
    a = threaded.remote(log)
    slow = a.work.remote(1)
    leave = a.leave.remote()
    assert mpray.get(slow, timeout=30) == 1
    with pytest.raises(exc.ActorDiedError):
        mpray.get(leave, timeout=30)
    assert _read(log) == "work1;shutdown;atexit;"


def test_shutdown_method_runs_when_the_last_handle_goes(ray_module, tmp_path):
    log = str(tmp_path / "log")
    a = Ending.remote(log, False)
    mpray.get(a.work.remote(1), timeout=30)
    del a
    wait_for(lambda: "shutdown;" in _read(log), 3)
    assert _read(log) == "work1;shutdown;"


# ---------------------------------------------------------------------- 7: await refs
@mpray.remote
def slow_value(x):
    time.sleep(0.2)
    return x


@mpray.remote
class Suspending:
    def __init__(self):
        self.event = asyncio.Event()

    async def wait_for_event(self):
        await self.event.wait()
        return "woke"

    async def await_inside(self, refs):
        return await refs[0]

    async def echo(self, x):
        return x

    async def set_event(self):
        self.event.set()
        return "set"


def test_async_call_awaits_a_ref_while_another_call_is_suspended(ray_module):
    a = Suspending.remote()
    mpray.get(a.__ray_ready__.remote(), timeout=30)
    waiting = a.wait_for_event.remote()  # suspended until set_event runs
    inner = a.await_inside.remote([slow_value.remote(1)])  # a ref inside the arguments
    top = a.echo.remote(slow_value.remote(2))  # a top-level ref not ready yet
    assert mpray.get([inner, top], timeout=20) == [1, 2]
    assert mpray.get(a.set_event.remote(), timeout=20) == "set"
    assert mpray.get(waiting, timeout=20) == "woke"


@mpray.remote(max_concurrency=2)
class ThreadedEvent:
    def __init__(self):
        self.event = threading.Event()

    def wait_for_event(self):
        return self.event.wait(20)

    def plus_one(self, refs):
        return mpray.get(refs[0]) + 1

    def set_event(self):
        self.event.set()


def test_threaded_call_with_a_ref_inside_runs_beside_a_blocked_call(ray_module):
    a = ThreadedEvent.remote()
    waiting = a.wait_for_event.remote()
    assert mpray.get(a.plus_one.remote([slow_value.remote(4)]), timeout=20) == 5
    mpray.get(a.set_event.remote(), timeout=20)
    assert mpray.get(waiting, timeout=20) is True


# ---------------------------------------------------------------------- 8: groups
@mpray.remote(concurrency_groups={"io": 2, "compute": 1})
class Grouped:
    def __init__(self):
        self.lock = threading.Lock()
        self.now: dict = {}
        self.peak: dict = {}
        self.event = threading.Event()

    def _run(self, group):
        with self.lock:
            self.now[group] = self.now.get(group, 0) + 1
            self.peak[group] = max(self.peak.get(group, 0), self.now[group])
        time.sleep(0.3)
        with self.lock:
            self.now[group] -= 1
        return threading.current_thread().name

    @mpray.method(concurrency_group="io")
    def io(self):
        return self._run("io")

    @mpray.method(concurrency_group="compute")
    def compute(self):
        return self._run("compute")

    def plain(self):
        return self._run("default")

    def wait_for_event(self):  # (default group: one thread)
        return self.event.wait(20)

    @mpray.method(concurrency_group="io")
    def set_event(self):
        self.event.set()

    def peaks(self):
        return dict(self.peak)


def test_concurrency_groups_limit_each_group(ray_module):
    a = Grouped.remote()
    refs = ([a.io.remote() for _ in range(4)] + [a.compute.remote() for _ in range(2)]
            + [a.plain.remote() for _ in range(2)])
    names = mpray.get(refs, timeout=30)
    assert all("io" in n for n in names[:4]) and all("compute" in n for n in names[4:6])
    assert mpray.get(a.peaks.remote(), timeout=30) == {"io": 2, "compute": 1, "default": 1}


def test_a_busy_group_does_not_hold_back_another(ray_module):
    a = Grouped.remote()
    waiting = a.wait_for_event.remote()  # holds the default group's one thread
    mpray.get(a.set_event.remote(), timeout=20)  # runs in "io" meanwhile
    assert mpray.get(waiting, timeout=20) is True


def test_call_options_choose_the_group(ray_module):
    a = Grouped.remote()
    name = mpray.get(a.plain.options(concurrency_group="compute").remote(), timeout=30)
    assert "compute" in name
    assert "io" in mpray.get(a.compute.options(concurrency_group="io").remote(), timeout=30)


def test_unknown_concurrency_group_raises(ray_module):
    a = Grouped.remote()
    with pytest.raises(ValueError, match="'nope'"):
        a.plain.options(concurrency_group="nope").remote()
    with pytest.raises(ValueError, match="'nope'"):
        @mpray.remote(concurrency_groups={"io": 1})
        class Bad:
            @mpray.method(concurrency_group="nope")
            def f(self):
                return 1
    with pytest.raises(ValueError, match="concurrency_groups"):
        Grouped.options(concurrency_groups={"x": 1})
    with pytest.raises(ValueError):
        mpray.remote(concurrency_groups={"io": 0})(type("Z", (), {"f": lambda self: 1}))


@mpray.remote(concurrency_groups={"io": 2}, max_concurrency=3)
class AsyncGrouped:
    def __init__(self):
        self.now: dict = {}
        self.peak: dict = {}
        self.event = None

    async def _run(self, group):
        self.now[group] = self.now.get(group, 0) + 1
        self.peak[group] = max(self.peak.get(group, 0), self.now[group])
        await asyncio.sleep(0.3)
        self.now[group] -= 1
        return threading.current_thread().name

    @mpray.method(concurrency_group="io")
    async def io(self):
        return await self._run("io")

    async def plain(self):
        return await self._run("default")

    def block_default_loop(self, seconds):  # (a sync method: it holds its loop)
        time.sleep(seconds)
        return "done"

    async def peaks(self):
        return dict(self.peak)


def test_async_concurrency_groups(ray_module):
    a = AsyncGrouped.remote()
    names = mpray.get([a.io.remote() for _ in range(5)] + [a.plain.remote() for _ in range(6)],
                      timeout=30)
    assert all("io" in n for n in names[:5]) and not any("io" in n for n in names[5:])
    assert mpray.get(a.peaks.remote(), timeout=30) == {"io": 2, "default": 3}
    # each group has its own loop: one that is held does not hold back another
    blocked = a.block_default_loop.remote(1.0)
    time.sleep(0.2)
    t0 = time.monotonic()
    assert "io" in mpray.get(a.io.remote(), timeout=30)
    assert time.monotonic() - t0 < 0.8
    assert mpray.get(blocked, timeout=30) == "done"


# ---------------------------------------------------------------------- 9: pending calls
@mpray.remote
class Slow:
    def nap(self, seconds):
        time.sleep(seconds)
        return seconds


def test_max_pending_calls(ray_module):
    a = Slow.options(max_pending_calls=2).remote()
    refs = [a.nap.remote(0.3), a.nap.remote(0.3)]
    with pytest.raises(exc.PendingCallsLimitExceeded, match="max_pending_calls"):
        a.nap.remote(0)
    assert mpray.get(refs, timeout=30) == [0.3, 0.3]
    assert mpray.get(a.nap.remote(0), timeout=30) == 0  # (room again)
    # calls that ended free their places even when nobody asked for their values
    refs = [a.nap.remote(0.05), a.nap.remote(0.05)]
    wait_for(lambda: mpray.wait(refs, num_returns=2, timeout=0)[1] == [], 10)
    wait_for(lambda: _submits(a), 10)


def _submits(a) -> bool:
    try:
        a.nap.remote(0)
    except exc.PendingCallsLimitExceeded:
        return False
    return True


def test_max_pending_calls_unlimited_and_invalid(ray_module):
    a = Slow.options(max_pending_calls=-1).remote()
    assert len(mpray.get([a.nap.remote(0) for _ in range(50)], timeout=30)) == 50
    with pytest.raises(ValueError):
        Slow.options(max_pending_calls=-2)


@mpray.remote
def two_calls(handle):
    handle.nap.remote(0.5)
    try:
        handle.nap.remote(0)
    except exc.PendingCallsLimitExceeded:
        return "limited"
    return "not limited"


def test_max_pending_calls_counts_in_the_calling_process(ray_module):
    a = Slow.options(max_pending_calls=1).remote()
    assert mpray.get(two_calls.remote(a), timeout=30) == "limited"


# ---------------------------------------------------------------------- 10: cancel
def test_cancel_force_of_an_actor_call_raises(ray_module):
    a = Slow.remote()
    running = a.nap.remote(0.5)
    queued = a.nap.remote(0)
    for ref in (running, queued):
        with pytest.raises(ValueError, match="force=True is not supported for actor"):
            mpray.cancel(ref, force=True)
    assert mpray.get([running, queued], timeout=30) == [0.5, 0]  # (untouched)


# ---------------------------------------------------------------------- 7: the owner (pure)
def test_owner_calls_of_an_unordered_actor_skip_the_fence():
    from mpray import protocol as P
    from mpray.owner.actors import Unordered
    from test_owner import Harness, alive, call

    h = Harness()
    alive(h)
    anchor = Unordered(object())
    h.ev(P.SubmitCall(call(110, 100), (None, anchor)))  # direct, suspended in the actor
    assert [m.tid for m in h.take_slot(3)] == [110]
    # a ref inside the arguments: to the node at once, not behind the direct call
    h.ev(P.SubmitCall(call(120, 100, contained=[55]), (None, anchor)))
    assert [m.spec.tid for m in h.take_node() if type(m) is P.Submit] == [120]
    h.ev(P.SubmitCall(call(130, 100), (None, anchor)))  # and direct again meanwhile
    assert [m.tid for m in h.take_slot(3)] == [130]
    assert h.o.actors.pending_call(110) and h.o.actors.pending_call(120)
    h.ev(P.ANodeDone(100, 120))
    assert not h.o.actors.pending_call(120)



@mpray.remote
def force_cancel_a_call_of_mine(a):
    ref = a.nap.remote(0.2)
    try:
        mpray.cancel(ref, force=True)
    except ValueError as e:
        return f"refused: {e}"
    return "accepted"


def test_cancel_force_of_an_actor_call_made_in_a_task_raises_too(ray_module):
    """As Ray: force=True is for tasks, whichever process made the actor call."""
    a = Slow.remote()
    assert mpray.get(force_cancel_a_call_of_mine.remote(a), timeout=30).startswith("refused")
    ref = a.nap.remote(0)
    assert ref.task_id() is not None and mpray.get(ref, timeout=30) == 0
