"""``mpray.util.multiprocessing.Pool`` against the standard library's ``multiprocessing``
semantics: results equal to ``map``/``itertools.starmap``, chunking, initializer,
callbacks, exceptions with their own type, lazy ``imap``, ``AsyncResult`` states,
timeouts, closing and terminating (the pool's processes end), and refused options."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

import mpray
from mpray.util.multiprocessing import Pool, TimeoutError
from multiprocessing.pool import RemoteTraceback

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------- module-level
# functions (workers find them by reference: this module is imported there too)
def square(x):
    return x * x


def add(a, b):
    return a + b


def power(x, exp=2, mod=None):
    return pow(x, exp, mod)


def sleep_return(x, seconds=0.05):
    time.sleep(seconds)
    return x


def pid_after(x, seconds=0.05):
    time.sleep(seconds)
    return os.getpid()


class PoolTestError(Exception):
    pass


def fail_on(x, bad=(7,)):
    if x in bad:
        raise PoolTestError(f"bad item {x}")
    return x


def fail_on_3_and_5(x):
    return fail_on(x, bad=(3, 5))


def die_on(x):
    if x == 3:
        os._exit(1)  # the worker process dies in the middle of its chunk
    return x


_INIT_STATE = {"value": None, "calls": 0}


def set_state(value):
    _INIT_STATE["value"] = value
    _INIT_STATE["calls"] += 1


def read_state(x):
    return _INIT_STATE["value"], _INIT_STATE["calls"], x


def failing_initializer():
    raise PoolTestError("initializer failed")


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pool_pids(pool: Pool, n: int) -> set[int]:
    """The pids of the pool's processes: enough slow one-item chunks to reach each."""
    return set(pool.map(pid_after, range(4 * n), chunksize=1))


@pytest.fixture
def pool(ray_module):
    with Pool(2) as p:
        yield p


# ---------------------------------------------------------------------- map family
@pytest.mark.parametrize("chunksize", [None, 1, 7, 1000, 5000])
def test_map_equals_builtin_map(pool, chunksize):
    assert pool.map(square, range(1000), chunksize) == list(map(square, range(1000)))


def test_map_takes_any_iterable_and_empty_ones(pool):
    assert pool.map(square, (x for x in range(50))) == [x * x for x in range(50)]
    assert pool.map(square, {3: "a", 4: "b"}) == [9, 16]
    assert pool.map(square, []) == []
    assert pool.starmap(add, []) == []


def test_map_of_100k_small_items(pool):
    assert pool.map(square, range(100_000)) == [x * x for x in range(100_000)]


@pytest.mark.parametrize("chunksize", [None, 3])
def test_starmap_equals_itertools_starmap(pool, chunksize):
    args = [(i, 10 * i) for i in range(200)]
    assert pool.starmap(add, args, chunksize) == list(itertools.starmap(add, args))


def test_map_async_and_starmap_async_call_back_with_the_whole_list(pool):
    got = []
    r = pool.map_async(square, range(100), chunksize=9, callback=got.append)
    assert r.get(timeout=20) == [x * x for x in range(100)]
    assert got == [[x * x for x in range(100)]]  # (called before the result was ready)
    assert r.ready() and r.successful()
    r = pool.starmap_async(add, [(1, 2), (3, 4)], callback=got.append)
    assert r.get(timeout=20) == [3, 7] and got[-1] == [3, 7]


def test_invalid_chunksize_is_refused(pool):
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="Chunksize"):
            pool.map(square, range(3), chunksize=bad)
    with pytest.raises(ValueError, match="Chunksize"):
        pool.imap(square, range(3), chunksize=0)


# ---------------------------------------------------------------------- apply
def test_apply_and_apply_async_with_args_and_kwds(pool):
    assert pool.apply(power, (3,)) == 9
    assert pool.apply(power, (3,), {"exp": 3, "mod": 5}) == 27 % 5
    assert pool.apply(os.getpid) != os.getpid()  # it ran in another process
    results = [pool.apply_async(power, (i,), {"exp": 3}) for i in range(20)]
    assert [r.get(timeout=20) for r in results] == [i ** 3 for i in range(20)]


def test_apply_async_callback_and_error_callback(pool):
    done, errors = [], []
    ok = pool.apply_async(square, (4,), callback=done.append, error_callback=errors.append)
    bad = pool.apply_async(fail_on, (7,), callback=done.append, error_callback=errors.append)
    assert ok.get(timeout=20) == 16
    with pytest.raises(PoolTestError, match="bad item 7"):
        bad.get(timeout=20)
    assert done == [16]
    assert len(errors) == 1 and type(errors[0]) is PoolTestError
    assert ok.successful() and not bad.successful()


def test_map_async_error_callback_gets_the_first_failing_item(pool):
    errors = []
    r = pool.map_async(fail_on_3_and_5, range(10), chunksize=2, callback=errors.append,
                       error_callback=errors.append)
    r.wait(20)
    assert r.ready() and not r.successful()
    assert len(errors) == 1 and str(errors[0]) == "bad item 3"  # input order decides


def test_callback_error_is_reported_and_the_pool_goes_on(pool, capfd):
    def bad_callback(_result):
        raise RuntimeError("callback broke")

    r = pool.apply_async(square, (3,), callback=bad_callback)
    assert r.get(timeout=20) == 9
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]
    assert "callback broke" in capfd.readouterr().err


# ---------------------------------------------------------------------- imap
@pytest.mark.parametrize("chunksize", [1, 4, 100])
def test_imap_on_a_generator_keeps_order(pool, chunksize):
    gen = (x for x in range(300))
    assert list(pool.imap(square, gen, chunksize)) == [x * x for x in range(300)]


def test_imap_unordered_yields_every_result_as_they_finish(pool):
    delays = [(0, 1.0)] + [(i, 0.0) for i in range(1, 8)]
    it = pool.imap_unordered(_sleep_star, iter(delays))
    first = next(it)
    assert first != 0  # the slow first item did not hold the others back
    assert sorted([first, *it]) == list(range(8))
    assert sorted(pool.imap_unordered(square, range(100), 7)) == [x * x for x in range(100)]


def _sleep_star(item):
    return sleep_return(item[0], item[1])


def test_imap_reads_an_endless_iterable_lazily(pool):
    pulled = itertools.count()

    def numbers():
        for i in itertools.count():
            next(pulled)
            yield i

    it = pool.imap(square, numbers(), chunksize=2)
    assert [next(it) for _ in range(10)] == [x * x for x in range(10)]
    time.sleep(0.3)  # room to read ahead: it must stop after a bounded number
    assert next(pulled) < 10 + 2 * 4 * 2 + 4  # taken + chunksize * AHEAD * processes + slack
    del it  # dropping the iterator ends its job: close() + join() do not wait for it


def test_imap_raises_at_the_failing_item_and_goes_on(pool):
    it = pool.imap(fail_on, range(10), chunksize=3)
    got = [next(it) for _ in range(7)]
    with pytest.raises(PoolTestError):
        next(it)
    assert got + list(it) == [0, 1, 2, 3, 4, 5, 6, 8, 9]


def test_imap_next_times_out(pool):
    it = pool.imap(sleep_return, [1], 1)
    with pytest.raises(TimeoutError):
        it.next(timeout=0.0)
    assert it.next(timeout=20) == 1
    with pytest.raises(StopIteration):
        next(it)


def test_imap_of_an_iterable_that_raises(pool):
    def items():
        yield 1
        yield 2
        raise PoolTestError("iterable broke")

    it = pool.imap(square, items())
    assert [next(it), next(it)] == [1, 4]
    with pytest.raises(PoolTestError, match="iterable broke"):
        next(it)
    assert list(it) == []


# ---------------------------------------------------------------------- exceptions
def test_exceptions_keep_their_type_and_the_remote_traceback(pool):
    with pytest.raises(PoolTestError, match="bad item 7") as info:
        pool.map(fail_on, range(20))
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_on" in str(info.value.__cause__)
    with pytest.raises(ZeroDivisionError):
        pool.apply(divmod, (1, 0))
    with pytest.raises(PoolTestError):
        pool.starmap(fail_on, [(1,), (7,)])


def test_an_item_that_cannot_be_pickled_fails_its_call_only(pool):
    with pytest.raises(TypeError):
        pool.apply(square, (threading.Lock(),))
    with pytest.raises(TypeError):
        pool.map(id, [1, threading.Lock(), 3], chunksize=1)
    assert pool.map(square, range(5)) == [0, 1, 4, 9, 16]


def test_map_raises_the_first_failing_item_in_input_order(pool):
    with pytest.raises(PoolTestError, match="bad item 3"):
        pool.map(fail_on_3_and_5, range(10), chunksize=1)


def test_a_dead_process_fails_its_chunk_and_is_replaced(pool):
    with pytest.raises(mpray.exceptions.RayActorError):
        pool.map(die_on, range(8), chunksize=4)
    assert pool.map(square, range(20), chunksize=1) == [x * x for x in range(20)]
    assert len(pool_pids(pool, 2)) == 2


# ---------------------------------------------------------------------- initializer
def test_initializer_runs_once_in_each_process(ray_module):
    with Pool(2, initializer=set_state, initargs=("ready",)) as p:
        out = p.map(read_state, range(40), chunksize=1)
    assert {(v, calls) for v, calls, _x in out} == {("ready", 1)}
    assert [x for _v, _c, x in out] == list(range(40))
    assert _INIT_STATE["value"] is None  # it ran in the pool's processes, not here


def test_initializer_error_raises_at_pool_creation(ray_module):
    with pytest.raises(PoolTestError, match="initializer failed"):
        Pool(2, initializer=failing_initializer)


def test_maxtasksperchild_replaces_processes(ray_module):
    with Pool(2, initializer=set_state, initargs=("x",), maxtasksperchild=2) as p:
        pids = p.map(pid_after, range(12), chunksize=1)
        states = p.map(read_state, range(6), chunksize=1)
    assert len(set(pids)) >= 6  # 12 chunks, at most 2 per process
    assert max(pids.count(pid) for pid in set(pids)) <= 2
    assert {(v, calls) for v, calls, _x in states} == {("x", 1)}  # initializer each time


# ---------------------------------------------------------------------- results
def test_ready_successful_wait_before_and_after(pool):
    r = pool.apply_async(sleep_return, (5, 0.5))
    assert not r.ready()
    with pytest.raises(ValueError, match="not ready"):
        r.successful()
    t0 = time.monotonic()
    r.wait(0.05)
    assert time.monotonic() - t0 < 0.4 and not r.ready()
    r.wait(20)
    assert r.ready() and r.successful() and r.get() == 5


def test_get_timeout_raises_multiprocessing_timeout_error(pool):
    r = pool.apply_async(sleep_return, (1, 1.0))
    t0 = time.monotonic()
    with pytest.raises(multiprocessing.TimeoutError):
        r.get(timeout=0.1)
    assert time.monotonic() - t0 < 0.9
    assert TimeoutError is multiprocessing.TimeoutError
    assert r.get(timeout=20) == 1


# ---------------------------------------------------------------------- lifecycle
def test_processes_default_to_the_cluster_cpus(ray_module):
    with Pool() as p:
        assert "pool_size=2" in repr(p)
        assert len(pool_pids(p, 2)) == int(mpray.cluster_resources()["CPU"]) == 2


def test_auto_init_and_default_processes_in_a_fresh_program():
    code = ("import mpray\n"
            "from mpray.util.multiprocessing import Pool\n"
            "assert not mpray.is_initialized()\n"
            "with Pool() as p:\n"
            "    assert mpray.is_initialized()\n"
            "    print(mpray.cluster_resources()['CPU'], repr(p), p.map(abs, [-1, -2]))\n")
    env = {**os.environ, "MPRAY_NUM_CPUS": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3.0", "<mpray.util.multiprocessing.pool.Pool",
                                  "state=RUN", "pool_size=3>", "[1,", "2]"]


def test_more_processes_than_cpus(ray_module):
    with Pool(4) as p:
        assert len(pool_pids(p, 4)) == 4


def test_close_then_join_finishes_the_work_and_ends_the_processes(ray_module):
    p = Pool(2)
    pids = pool_pids(p, 2)
    r = p.map_async(sleep_return, range(10), chunksize=1)
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.map(square, [1])
    p.join()
    assert r.ready() and r.get() == list(range(10))
    assert not any(running(pid) for pid in pids)


def test_join_of_a_running_pool_is_refused(pool):
    with pytest.raises(ValueError, match="still running"):
        pool.join()


def test_terminate_stops_outstanding_work(ray_module):
    p = Pool(2)
    pids = pool_pids(p, 2)
    r = p.apply_async(sleep_return, (1, 30.0))
    t0 = time.monotonic()
    p.terminate()
    p.join()
    assert time.monotonic() - t0 < 5
    with pytest.raises(RuntimeError, match="terminated"):
        r.get(timeout=5)
    assert not any(running(pid) for pid in pids)


def test_context_manager_terminates_and_a_closed_pool_refuses_work(ray_module):
    with Pool(2) as p:
        pids = pool_pids(p, 2)
    assert "state=TERMINATE" in repr(p)
    for use in (lambda: p.map(square, [1]), lambda: p.map_async(square, [1]),
                lambda: p.starmap(add, [(1, 2)]), lambda: p.apply(square, (1,)),
                lambda: p.apply_async(square, (1,)), lambda: p.imap(square, [1]),
                lambda: p.imap_unordered(square, [1]), lambda: p.__enter__()):
        with pytest.raises(ValueError, match="Pool not running"):
            use()
    p.join()
    assert not any(running(pid) for pid in pids)


def test_callbacks_run_in_the_pool_thread_and_may_use_results(pool):
    seen = []
    r = pool.apply_async(square, (5,), callback=lambda v: seen.append(
        (v, threading.current_thread() is threading.main_thread())))
    assert r.get(timeout=20) == 25 and seen == [(25, False)]


# ---------------------------------------------------------------------- options
def test_options_mpray_cannot_honour_are_refused_or_warned(ray_module):
    with pytest.warns(UserWarning, match="context"):
        with Pool(1, context=multiprocessing.get_context("spawn")) as p:
            assert p.apply(square, (3,)) == 9
    with pytest.raises(ValueError, match="ray_address"):
        Pool(1, ray_address="ray://head:10001")
    with Pool(1, ray_address="auto") as p:
        assert p.apply(square, (2,)) == 4
    with pytest.raises(ValueError, match="processes"):
        Pool(0)
    with pytest.raises(ValueError, match="maxtasksperchild"):
        Pool(1, maxtasksperchild=0)
    with pytest.raises(TypeError, match="initializer"):
        Pool(1, initializer=42)


def test_a_pool_cannot_be_pickled(pool):
    import pickle

    with pytest.raises(NotImplementedError):
        pickle.dumps(pool)


SCRIPT_GLOBALS = """
import mpray
mpray.init(num_cpus=2)  # (the workers fork now: the functions below are not in them)
from mpray.util.multiprocessing import Pool
CONFIG = None

def setup(value):
    global CONFIG
    CONFIG = value

def helper(x):
    return x + 1

def use(x):
    return CONFIG, helper(x)

class Adder:
    def __init__(self, n):
        self.n = n

    def add(self, x):
        return x + self.n

with Pool(2, initializer=setup, initargs=("set",)) as p:
    print(p.map(use, range(4), chunksize=1), p.apply(lambda: CONFIG),
          p.map(Adder(10).add, [1, 2]))
mpray.shutdown()
"""


def test_script_functions_see_the_globals_their_initializer_set(tmp_path):
    """Functions of the script (``__main__``) travel by value; the globals an initializer
    sets are still those the pool's functions read, as in the stdlib's workers."""
    path = tmp_path / "script.py"
    path.write_text(SCRIPT_GLOBALS)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True,
                         timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("[('set', 1), ('set', 2), ('set', 3), ('set', 4)] set "
                                  "[11, 12]")
