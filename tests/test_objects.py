"""The object store: inline and arena objects, zero-copy read-only views, reference
counting (frees, pins, nested refs) and a full store."""

from __future__ import annotations

import gc
import hashlib
import os

import numpy as np
import pytest

import mpray
from mpray import exceptions as exc

from conftest import MB, STORE, wait_for

BIG = 20 * MB


def big_array(seed: int = 0) -> np.ndarray:
    a = np.arange(BIG // 8, dtype=np.float64)
    a += seed
    return a


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def arena_used() -> int:
    return mpray.api._node_stats()["arena_used"]


def wait_arena(pred, timeout=5.0) -> int:
    """Poll arena_used until ``pred(used)`` holds; return the last value seen."""
    last = [None]

    def check():
        gc.collect()
        last[0] = arena_used()
        return pred(last[0])

    wait_for(check, timeout, 0.02)
    return last[0]


@mpray.remote
def checksum(a):
    return digest(a), a.shape, str(a.dtype), bool(a.flags.writeable)


@mpray.remote
def make_big(seed):
    return big_array(seed)


# --------------------------------------------------------------------- values
@pytest.mark.parametrize("value", [
    np.arange(10, dtype=np.int32),
    np.zeros((3, 4), dtype=np.complex64),
    np.array(["a", "bc"]),
    np.arange(12.0).reshape(3, 4).T,  # non-contiguous
])
def test_put_get_small_numpy(ray_start, value):
    got = mpray.get(mpray.put(value))
    assert isinstance(got, np.ndarray)
    assert got.dtype == value.dtype and got.shape == value.shape
    np.testing.assert_array_equal(got, value)


def test_put_get_plain_values(ray_start):
    values = [None, 1, "s" * 1000, b"\x00" * 300_000, {"k": [1, 2, (3, 4)]}, list(range(50_000))]
    refs = [mpray.put(v) for v in values]
    assert mpray.get(refs) == values


def test_put_get_large_numpy(ray_start):
    a = big_array(1)
    ref = mpray.put(a)
    assert arena_used() >= BIG
    got = mpray.get(ref)
    assert got.shape == a.shape and got.dtype == a.dtype
    assert digest(got) == digest(a)


def test_large_get_is_read_only_view(ray_start):
    a = big_array(2)
    ref = mpray.put(a)
    got = mpray.get(ref)
    assert got.flags.writeable is False
    with pytest.raises(ValueError):
        got[0] = 123.0
    with pytest.raises(ValueError):
        got.setflags(write=True)
    # a copy is writable, and writing to it does not change the stored object
    c = got.copy()
    c[0] = -1.0
    assert mpray.get(ref)[0] == a[0]
    # getting twice gives the same data (zero-copy: no per-get copy of 20 MB)
    again = mpray.get(ref)
    assert np.shares_memory(got, again)


def test_large_array_argument_arrives_intact(ray_start):
    a = big_array(3)
    d, shape, dtype, writeable = mpray.get(checksum.remote(a), timeout=60)
    assert d == digest(a)
    assert shape == a.shape and dtype == str(a.dtype)
    assert writeable is False  # tasks get read-only zero-copy views too
    # and as a ref argument
    ref = mpray.put(a)
    assert mpray.get(checksum.remote(ref), timeout=60)[0] == digest(a)


def test_task_returns_large_array(ray_start):
    got = mpray.get(make_big.remote(4), timeout=60)
    assert got.shape == (BIG // 8,)
    assert digest(got) == digest(big_array(4))


def test_large_structured_value(ray_start):
    value = {"x": big_array(5), "y": [np.ones(1000), "text"], "z": big_array(6)[::2]}
    got = mpray.get(mpray.put(value))
    assert digest(got["x"]) == digest(value["x"])
    assert digest(got["z"]) == digest(value["z"])
    np.testing.assert_array_equal(got["y"][0], value["y"][0])
    assert got["y"][1] == "text"


# --------------------------------------------------------------------- freeing
def test_del_ref_frees_store_space(ray_start):
    base = arena_used()
    ref = mpray.put(big_array(7))
    assert arena_used() >= base + BIG
    del ref
    assert wait_arena(lambda u: u == base) == base


def test_del_ref_after_get_frees_store_space(ray_start):
    base = arena_used()
    ref = mpray.put(big_array(8))
    got = mpray.get(ref)
    assert got[1] == 1 + 8
    del got, ref
    assert wait_arena(lambda u: u == base) == base


def test_task_result_freed_when_ref_dropped(ray_start):
    base = arena_used()
    ref = make_big.remote(9)
    assert mpray.get(checksum.remote(ref), timeout=60)[0] == digest(big_array(9))
    assert arena_used() >= base + BIG
    del ref
    assert wait_arena(lambda u: u == base) == base


@mpray.remote
def big_values(n):
    return [mpray.put(big_array(20 + i)) for i in range(n)]


def test_a_burst_of_dropped_refs_is_released_with_nothing_else_sent(ray_start):
    """Refs dropped together (a list of them) are released in one message, and the last
    of them go out by themselves soon after, with no further call into mpray."""
    base = arena_used()
    refs = mpray.get(big_values.remote(5), timeout=60)  # borrowed: values not here
    assert arena_used() >= base + 5 * BIG
    client = mpray._global.client
    assert not client._decref
    frames = []
    send = client._send_locked
    client._send_locked = lambda msgs: (frames.append(list(msgs)), send(msgs))
    try:
        del refs
        # (the first release goes out at once; the rest of the burst waits a moment)
        assert wait_for(lambda: not client._decref, timeout=5.0, interval=0.001)
    finally:
        del client._send_locked
    assert 1 <= len(frames) <= 2, frames  # not one frame per ref
    assert wait_arena(lambda u: u == base) == base


@mpray.remote
def many_refs(n):
    return [mpray.put(i) for i in range(n)]


def test_a_list_of_refs_is_a_new_list_at_every_get_and_its_refs_go_with_it(ray_start):
    """Gets of a held list of refs (decoded once, see Client._memo_loads) each return a
    list of their own, equal to the first; the refs' objects live while it is held and
    go with its last ref."""
    base = mpray.api._node_stats()["objects"]
    outer = many_refs.remote(10_000)  # (a value in the arena)
    first = mpray.get(outer, timeout=30)
    assert outer.id in mpray._global.client._decoded  # (decoded once, kept while held)
    first.append("mine")  # (the user's list: the next get does not see this)
    second = mpray.get(outer, timeout=30)
    assert len(second) == 10_000 and second is not first and second == first[:10_000]
    assert mpray.get(second[:3], timeout=30) == [0, 1, 2]
    del first, second
    assert mpray.get(mpray.get(outer, timeout=30)[9999], timeout=30) == 9999
    del outer
    assert wait_for(lambda: mpray.api._node_stats()["objects"] <= base, timeout=10)


@mpray.remote(max_retries=1, retry_exceptions=True)
def checksum_second_try(a, marker):
    if not os.path.exists(marker):  # the first try fails: the owner retries by the node
        open(marker, "w").close()
        raise ValueError("first try")
    return digest(a)


def test_a_retried_tasks_promoted_argument_outlives_its_hand_over_to_the_node(
        ray_start, tmp_path):
    """The owner drops its hold on the argument while it hands the task to the node; the
    release must not overtake the Submit (the node would find the argument freed)."""
    mpray.get(checksum.remote(big_array(1)), timeout=60)  # a lease: the first try runs there
    a = big_array(12)
    got = mpray.get(checksum_second_try.remote(a, str(tmp_path / "tried")), timeout=60)
    assert got == digest(a)


def test_promoted_argument_freed_after_task(ray_start):
    base = arena_used()
    assert mpray.get(checksum.remote(big_array(10)), timeout=60)[0] == digest(big_array(10))
    assert wait_arena(lambda u: u == base) == base


def test_repeated_puts_do_not_leak(ray_start):
    base = arena_used()
    for i in range(30):  # 30 x 20 MB through a 256 MB store
        ref = mpray.put(big_array(i))
        assert mpray.get(ref)[0] == i
        del ref
    assert wait_arena(lambda u: u == base) == base


def test_live_view_pins_object(ray_start):
    base = arena_used()
    a = big_array(11)
    expected = digest(a)
    ref = mpray.put(a)
    view = mpray.get(ref)
    del ref
    gc.collect()
    # the object stays while the view lives, even with the ref gone
    assert wait_arena(lambda u: u < base + BIG, timeout=0.5) >= base + BIG
    # other objects come and go meanwhile and must not overwrite the pinned range
    for i in range(12):
        r = mpray.put(np.full(BIG // 8, -1.0 - i))
        del r
        gc.collect()
    assert digest(view) == expected
    # derived views keep it alive too
    part = view[1000:2000]
    del view
    gc.collect()
    assert wait_arena(lambda u: u < base + BIG, timeout=0.3) >= base + BIG
    np.testing.assert_array_equal(part, a[1000:2000])
    del part
    assert wait_arena(lambda u: u == base) == base


def test_nested_ref_keeps_inner_object_alive(ray_start):
    base = arena_used()
    a = big_array(12)
    inner = mpray.put(a)
    outer = mpray.put({"inner": [inner]})
    del inner
    gc.collect()
    assert wait_arena(lambda u: u < base + BIG, timeout=0.5) >= base + BIG
    box = mpray.get(outer)
    got = mpray.get(box["inner"][0])
    assert digest(got) == digest(a)
    del got, box, outer
    assert wait_arena(lambda u: u == base) == base


def test_nested_ref_in_task_result_keeps_inner_alive(ray_start):
    @mpray.remote
    def wrap(seed):
        return [mpray.put(big_array(seed))]

    base = arena_used()
    box_ref = wrap.remote(13)
    box = mpray.get(box_ref, timeout=60)
    del box_ref
    gc.collect()
    got = mpray.get(box[0], timeout=30)
    assert digest(got) == digest(big_array(13))
    del got, box
    assert wait_arena(lambda u: u == base) == base


# --------------------------------------------------------------------- full store
def test_put_larger_than_store_raises(ray_start):
    too_big = np.zeros(STORE // 8 + MB, dtype=np.float64)
    with pytest.raises(exc.ObjectStoreFullError):
        mpray.put(too_big)
    del too_big
    # the engine is still usable
    a = big_array(14)
    assert digest(mpray.get(mpray.put(a))) == digest(a)
    assert mpray.get(checksum.remote(a), timeout=60)[0] == digest(a)
    assert wait_arena(lambda u: u == 0) == 0


def test_store_full_while_refs_held_then_freed(ray_factory):
    ray_factory(object_spilling_directory="off")  # (with spilling: tests/test_spill.py)
    chunk = np.ones(100 * MB // 8)
    r1 = mpray.put(chunk)
    r2 = mpray.put(chunk)
    with pytest.raises(exc.ObjectStoreFullError):
        mpray.put(chunk)
    del r1
    gc.collect()
    r3 = wait_for(lambda: _try_put(chunk), 5)
    assert r3 is not None, "space freed by del was never reused"
    assert float(mpray.get(r3)[-1]) == 1.0
    del r2, r3


def _try_put(v):
    try:
        return mpray.put(v)
    except exc.ObjectStoreFullError:
        return None


def test_task_result_too_large_for_store_fails_task(ray_start):
    @mpray.remote
    def huge():
        return np.zeros(STORE // 8 + MB)

    with pytest.raises(exc.ObjectStoreFullError):
        mpray.get(huge.remote(), timeout=60)
    assert mpray.get(make_big.remote(15), timeout=60)[3] == 3 + 15


def test_large_keyword_argument_arrives_intact(ray_start):
    @mpray.remote
    def kw(*, data, tag):
        return digest(data), tag

    a = big_array(16)
    assert mpray.get(kw.remote(data=a, tag="t"), timeout=60) == (digest(a), "t")
    assert wait_arena(lambda u: u == 0) == 0


def test_crashed_worker_objects_and_pins_are_reclaimed(ray_start):
    @mpray.remote(max_retries=0)
    def put_then_die(arr):
        assert arr[5] == 5 + 17  # a zero-copy view of the argument: a pin
        keep = mpray.put(big_array(18))  # an object owned by this worker  # noqa: F841
        mpray.put(0)  # make sure the node heard about both before we die
        import os

        os._exit(1)

    ref = mpray.put(big_array(17))
    with pytest.raises(exc.WorkerCrashedError):
        mpray.get(put_then_die.remote(ref), timeout=30)
    del ref
    assert wait_arena(lambda u: u == 0) == 0


def test_large_bytes_and_str(ray_start):
    b = bytes(range(256)) * (30 * MB // 256)
    s = "mpray-" * (5 * MB)
    rb, rs = mpray.put(b), mpray.put(s)
    assert mpray.get(rb) == b
    assert mpray.get(rs) == s

    @mpray.remote
    def lengths(x, y):
        return len(x), len(y), hashlib.sha256(x).hexdigest()

    assert mpray.get(lengths.remote(rb, rs), timeout=60) == (
        len(b), len(s), hashlib.sha256(b).hexdigest())


def test_ref_borrowed_by_task_and_returned(ray_start):
    @mpray.remote
    def give_back(box):
        return {"again": box[0]}

    base = arena_used()
    a = big_array(19)
    ref = mpray.put(a)
    out = give_back.remote([ref])
    del ref
    gc.collect()
    result = mpray.get(out, timeout=30)
    got = mpray.get(result["again"], timeout=30)
    assert digest(got) == digest(a)
    del got, result, out
    assert wait_arena(lambda u: u == base) == base


# --------------------------------------------------------------------- owner death
@mpray.remote
class _Maker:
    def make(self, seed):
        return [mpray.put(big_array(seed)), mpray.put("small")]  # this process owns them

    def pid(self):
        return os.getpid()


def test_a_value_outlives_the_process_that_owns_it(ray_start):
    """mpray keeps a value whose owner (the actor that put it) died while any process
    holds a ref to it (Ray raises OwnerDiedError there: the README's compatibility
    table says so), and frees it when the last ref goes."""
    import psutil

    base = arena_used()
    maker = _Maker.remote()
    refs = mpray.get(maker.make.remote(31))
    pid = mpray.get(maker.pid.remote())
    mpray.kill(maker)
    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_for(gone, 10)
    big, small = mpray.get(refs, timeout=30)
    assert digest(big) == digest(big_array(31)) and small == "small"
    del big
    assert arena_used() >= base + BIG  # (the ref still holds it)
    del refs
    assert wait_arena(lambda u: u == base) == base


# --------------------------------------------------------------------- CPUs
@mpray.remote
def _timed_array(i):
    import time

    t0 = time.time()
    time.sleep(0.005)
    return time.time(), t0, os.getpid(), np.full(200_000, i)  # (1.6 MB: an arena value)


def test_tasks_returning_arrays_never_run_more_than_the_cpus_at_once(ray_start):
    """Storing a large result asks the node for an arena range: the task waits for that
    reply holding its CPU (it used to lend it, as in a get, and the node started another
    task beside it: four at once on two CPUs)."""
    cpus = int(mpray.cluster_resources()["CPU"])
    out = mpray.get([_timed_array.remote(i) for i in range(60)])
    assert [int(x[3][0]) for x in out] == list(range(60))
    events = sorted([(t0, 1) for _t1, t0, _p, _a in out] + [(t1, -1) for t1, _t0, _p, _a in out])
    running = most = 0
    for _t, d in events:
        running += d
        most = max(most, running)
    assert most <= cpus, f"{most} tasks ran at once on {cpus} CPUs"
