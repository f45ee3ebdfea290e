"""Spilling with real processes: values beyond the store's capacity go to disk and come
back unchanged (put, task results, task arguments, values an actor holds), a mapped
view is never moved, spill files go when their values are freed and at shutdown, and a
full disk is an error that names the sizes and the directory."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import mpray
from mpray import exceptions as exc

from conftest import MB, wait_for

pytestmark = pytest.mark.timeout(120)

STORE = 32 * MB
VALUE = 4 * MB  # eight of these fill the store


def value(i: int) -> np.ndarray:
    return np.full(VALUE // 8, i, dtype=np.int64)


def intact(a: np.ndarray, i: int) -> bool:
    return a.shape == (VALUE // 8,) and int(a[0]) == i and int(a[-1]) == i and \
        int(a.sum()) == i * (VALUE // 8)


def spill_stats() -> dict:
    return mpray.api._node_stats()["spill"]


def spill_dir() -> str:
    return mpray.api._global.session.setup.spill_dir


@mpray.remote
def produce(i):
    return value(i)


@mpray.remote
def check(a, i):
    return intact(a, i)


@pytest.mark.parametrize("times", [3, 10])
def test_puts_beyond_the_store_come_back_unchanged(ray_factory, times):
    ray_factory(object_store_memory=STORE)
    n = times * STORE // VALUE
    refs = [mpray.put(value(i)) for i in range(n)]
    for i, r in enumerate(refs):
        a = mpray.get(r, timeout=60)
        assert intact(a, i), f"value {i} changed"
        del a
    for i in reversed(range(n)):  # (and in the other order: each comes back again)
        assert intact(mpray.get(refs[i], timeout=60), i)
    st = spill_stats()
    assert st["spilled"] >= n - STORE // VALUE and st["restored"] >= n - STORE // VALUE


def test_task_results_and_arguments_spill(ray_factory):
    ray_factory(object_store_memory=STORE)
    n = 3 * STORE // VALUE
    results = [produce.remote(i) for i in range(n)]
    assert mpray.get([check.remote(r, i) for i, r in enumerate(results)], timeout=90) \
        == [True] * n
    assert spill_stats()["spilled"] > 0
    # arguments put by the driver, read by tasks (leased or through the node)
    puts = [mpray.put(value(100 + i)) for i in range(n)]
    assert mpray.get([check.remote(r, 100 + i) for i, r in enumerate(puts)], timeout=90) \
        == [True] * n


def test_a_mapped_view_is_never_spilled(ray_factory):
    ray_factory(object_store_memory=STORE)
    first = mpray.put(value(7))
    view = mpray.get(first)  # a zero-copy view of the arena: its range must stay
    more = [mpray.put(value(i)) for i in range(3 * STORE // VALUE)]
    for i, r in enumerate(more):
        assert intact(mpray.get(r, timeout=60), i)
    assert intact(view, 7)
    assert spill_stats()["spilled"] > 0
    del view
    gc.collect()
    assert intact(mpray.get(first), 7)
    del more


def test_an_actor_holding_refs_answers_and_reads_them_back(ray_factory):
    ray_factory(object_store_memory=STORE)

    @mpray.remote
    class Keeper:
        def __init__(self):
            self.refs = []

        def keep(self, refs):
            self.refs.extend(refs)
            return len(self.refs)

        def read(self):
            return [intact(mpray.get(r), i) for i, r in enumerate(self.refs)]

    k = Keeper.remote()
    n = 2 * STORE // VALUE
    refs = [mpray.put(value(i)) for i in range(n)]
    assert mpray.get(k.keep.remote(refs), timeout=60) == n
    del refs
    gc.collect()
    more = [mpray.put(value(1000 + i)) for i in range(STORE // VALUE)]
    assert mpray.get(k.read.remote(), timeout=90) == [True] * n
    assert all(intact(mpray.get(r), 1000 + i) for i, r in enumerate(more))


def test_spill_files_go_when_freed_and_at_shutdown(ray_factory, tmp_path):
    ray_factory(object_store_memory=STORE, object_spilling_directory=str(tmp_path))
    where = spill_dir()
    assert os.path.dirname(where) == str(tmp_path)
    refs = [mpray.put(value(i)) for i in range(3 * STORE // VALUE)]
    assert wait_for(lambda: os.listdir(where), 10), "nothing was spilled"
    del refs
    gc.collect()
    assert wait_for(lambda: not os.listdir(where), 10), \
        f"spill files left after their values were freed: {os.listdir(where)}"
    again = [mpray.put(value(i)) for i in range(3 * STORE // VALUE)]
    assert os.listdir(where)
    mpray.shutdown()
    assert not os.path.exists(where), "the spill directory outlived the session"
    del again


def test_a_full_disk_fails_the_put_and_keeps_every_stored_value(ray_factory, tmp_path):
    ray_factory(object_store_memory=STORE, object_spilling_directory=str(tmp_path))
    where = spill_dir()
    os.makedirs(where)
    os.symlink("/dev/full", os.path.join(where, "1.spill"))  # the first file: no space
    refs = [mpray.put(value(i)) for i in range(STORE // VALUE - 1)]
    with pytest.raises(exc.ObjectStoreFullError) as info:
        for i in range(4):
            refs.append(mpray.put(value(len(refs))))
    msg = str(info.value)
    assert where in msg and "No space left on device" in msg and "bytes" in msg
    for i, r in enumerate(refs):
        assert intact(mpray.get(r), i), f"stored value {i} was lost"


def test_spilling_off_raises_when_the_store_is_full(ray_factory):
    ray_factory(object_store_memory=STORE, object_spilling_directory="off")
    refs = [mpray.put(value(i)) for i in range(STORE // VALUE - 1)]
    with pytest.raises(exc.ObjectStoreFullError):
        for _ in range(3):
            refs.append(mpray.put(value(0)))
    assert spill_stats()["spilled"] == 0


@mpray.remote
def plus(a, k):
    return a + k


def lose_spill_files() -> None:
    """Every spill file goes (a disk wiped, a node-local directory cleaned)."""
    where = spill_dir()
    for name in os.listdir(where):
        os.unlink(os.path.join(where, name))


@pytest.mark.parametrize("path, lineage", [("leased", None), ("node", None), ("node", 1),
                                           ("leased", 1)])
def test_a_chain_whose_spilled_values_were_deleted_is_made_again(ray_factory, path, lineage):
    # (max_lineage_bytes=1: every spec the node keeps is moved to the control store)
    ray_factory(object_store_memory=STORE, max_lineage_bytes=lineage)
    opts = {} if path == "leased" else {"scheduling_strategy": "SPREAD"}  # (the node's)
    a = produce.options(**opts).remote(1)
    b = plus.options(**opts).remote(a, 1)
    c = plus.options(**opts).remote(b, 1)
    assert intact(mpray.get(c, timeout=60), 3)
    filler = [mpray.put(value(100 + i)) for i in range(2 * STORE // VALUE)]
    assert wait_for(lambda: spill_stats()["evicted"] >= 3, 10)
    lose_spill_files()
    assert intact(mpray.get(c, timeout=60), 3)
    assert intact(mpray.get(a, timeout=60), 1)
    assert intact(mpray.get(b, timeout=60), 2)
    st = spill_stats()
    assert st["lost"] >= 3 and st["remade"] >= 3, st  # (each of a, b, c ran again)
    if lineage is not None:  # (their specs read back from the control store)
        assert st["lineage_read_back"] >= 3, st
    lost = 0
    for i, r in enumerate(filler):  # puts: no task can make them again
        try:
            assert intact(mpray.get(r, timeout=60), 100 + i)
        except exc.ObjectLostError as e:
            assert type(e) is exc.ObjectLostError and "put" in str(e)
            lost += 1
    assert lost > 0


def test_a_lost_value_of_a_task_without_retries_is_reconstruction_failed(ray_factory):
    ray_factory(object_store_memory=STORE)
    r = produce.options(max_retries=0).remote(5)
    mpray.wait([r], timeout=60)
    filler = [mpray.put(value(i)) for i in range(2 * STORE // VALUE)]
    assert wait_for(lambda: spill_stats()["evicted"] >= 2, 10)
    lose_spill_files()
    with pytest.raises(exc.ObjectReconstructionFailedError, match="max_retries=0"):
        mpray.get(r, timeout=60)
    del filler


def test_the_control_store_shows_spilled_values_and_their_files(ray_factory):
    from mpray.util.state import list_objects

    ray_factory(object_store_memory=STORE)
    refs = [mpray.put(value(i)) for i in range(2 * STORE // VALUE)]
    first = refs[0].hex()

    def row():
        rows = [o for o in list_objects(limit=10_000, detail=True) if o.object_id == first]
        return rows[0] if rows and rows[0].state == "SPILLED" else None

    r = wait_for(row, 20)
    assert r is not None, "the first value never showed as spilled"
    assert r.spilled_path.startswith(spill_dir()) and r.object_size >= VALUE
    assert intact(mpray.get(refs[0]), 0)  # read back: in the store again

    def back():
        rows = [o for o in list_objects(limit=10_000, detail=True) if o.object_id == first]
        return rows and rows[0].state == "IN_STORE"

    assert wait_for(back, 20), "the value read back still shows as spilled"


def test_a_damaged_spill_file_is_caught_by_its_checksum(ray_factory):
    ray_factory(object_store_memory=STORE)
    refs = [mpray.put(value(i)) for i in range(2 * STORE // VALUE)]
    r = produce.remote(7)
    mpray.wait([r], timeout=60)
    more = [mpray.put(value(50 + i)) for i in range(STORE // VALUE)]
    assert wait_for(lambda: spill_stats()["evicted"] >= STORE // VALUE, 10)
    where = spill_dir()
    for name in os.listdir(where):  # the same size, other bytes: only a checksum sees it
        with open(os.path.join(where, name), "r+b") as f:
            f.seek(4096)
            f.write(b"\xff" * 64)
    with pytest.raises(exc.ObjectLostError, match="checksum"):
        mpray.get(refs[0], timeout=60)
    assert intact(mpray.get(r, timeout=60), 7)  # a task's value is made again
    del more
