"""Tests for mpray.store.allocator: first-fit arena bookkeeping (pure, no memory touched)."""

from __future__ import annotations

import random

import pytest

from mpray.store.allocator import ALIGN, Allocator, ArenaFull, align_up


def free_ranges(a: Allocator) -> list[tuple[int, int]]:
    """The allocator's free list as sorted (start, size) pairs."""
    return [(s, a._sizes[s]) for s in a._starts]


def check_invariants(a: Allocator) -> None:
    """Live and free ranges tile the arena exactly; free ranges are sorted and coalesced."""
    live = a.live_ranges()
    spans = sorted([(s, n, "live") for s, n in live.items()] +
                   [(s, n, "free") for s, n in free_ranges(a)])
    pos = 0
    prev_kind = None
    for start, size, kind in spans:
        assert start == pos, f"gap or overlap at {pos}: next range starts at {start}"
        assert size > 0 and size % ALIGN == 0 and start % ALIGN == 0
        assert not (kind == "free" and prev_kind == "free"), "adjacent free ranges not merged"
        pos += size
        prev_kind = kind
    assert pos == a.size
    assert a.used == sum(live.values())
    assert a._starts == sorted(a._starts)
    assert set(a._starts) == set(a._sizes)


def test_align_up():
    assert align_up(0) == 0
    assert align_up(1) == ALIGN
    assert align_up(ALIGN) == ALIGN
    assert align_up(ALIGN + 1) == 2 * ALIGN
    assert align_up(5, 8) == 8
    assert align_up(16, 8) == 16


def test_size_rounds_down_to_alignment():
    a = Allocator(10 * ALIGN + 17)
    assert a.size == 10 * ALIGN
    assert free_ranges(a) == [(0, 10 * ALIGN)]
    assert a.used == 0 and a.high_water == 0


def test_alloc_sizes_are_aligned_and_sequential():
    a = Allocator(64 * ALIGN)
    o1 = a.alloc(1)
    o2 = a.alloc(ALIGN)
    o3 = a.alloc(ALIGN + 1)
    o4 = a.alloc(0)  # zero bytes still takes one aligned unit (distinct offsets)
    assert (o1, o2, o3, o4) == (0, ALIGN, 2 * ALIGN, 4 * ALIGN)
    assert all(o % ALIGN == 0 for o in (o1, o2, o3, o4))
    assert a.live_ranges() == {0: ALIGN, ALIGN: ALIGN, 2 * ALIGN: 2 * ALIGN, 4 * ALIGN: ALIGN}
    assert a.used == 5 * ALIGN
    assert a.high_water == 5 * ALIGN
    check_invariants(a)


def test_free_returns_size_and_coalesces_both_sides():
    a = Allocator(16 * ALIGN)
    offs = [a.alloc(ALIGN) for _ in range(5)]  # 0..4, tail free range from 5
    assert a.free(offs[1]) == ALIGN
    assert a.free(offs[3]) == ALIGN
    assert free_ranges(a) == [(ALIGN, ALIGN), (3 * ALIGN, ALIGN), (5 * ALIGN, 11 * ALIGN)]
    # freeing 2 joins the holes on both sides into one
    a.free(offs[2])
    assert free_ranges(a) == [(ALIGN, 3 * ALIGN), (5 * ALIGN, 11 * ALIGN)]
    # freeing 4 joins that range with the tail
    a.free(offs[4])
    assert free_ranges(a) == [(ALIGN, 15 * ALIGN)]
    a.free(offs[0])
    assert free_ranges(a) == [(0, 16 * ALIGN)]
    assert a.used == 0
    assert a.live_ranges() == {}
    check_invariants(a)


def test_free_returns_released_size_when_merging():
    """``free`` documents "returns its size": the size of the released range, not of the
    free range it merged into."""
    a = Allocator(16 * ALIGN)
    x = a.alloc(ALIGN)
    y = a.alloc(2 * ALIGN)
    a.alloc(ALIGN)
    a.free(x)
    assert a.free(y) == 2 * ALIGN  # merges with the preceding hole only: fine
    b = Allocator(16 * ALIGN)
    x = b.alloc(ALIGN)
    y = b.alloc(2 * ALIGN)
    # y is followed by the 13-unit tail: the merged range is 15 units, y itself is 2
    assert b.free(y) == 2 * ALIGN
    assert b.used == ALIGN


def test_free_merges_with_preceding_only():
    a = Allocator(4 * ALIGN)
    x, y, z, w = (a.alloc(ALIGN) for _ in range(4))  # arena full, no free ranges
    assert free_ranges(a) == []
    a.free(x)
    a.free(y)  # merges with the preceding free range [x]
    assert free_ranges(a) == [(0, 2 * ALIGN)]
    a.free(w)  # nothing adjacent free: new range
    assert free_ranges(a) == [(0, 2 * ALIGN), (3 * ALIGN, ALIGN)]
    a.free(z)
    assert free_ranges(a) == [(0, 4 * ALIGN)]


def test_first_fit_reuses_lowest_address():
    a = Allocator(1 << 20)
    offs = [a.alloc(1000) for _ in range(10)]
    hw = a.high_water
    a.free(offs[3])
    assert a.alloc(1000) == offs[3]  # same offset back
    a.free(offs[2])
    a.free(offs[7])
    # a small request takes the lowest hole, even though a larger one exists later
    assert a.alloc(10) == offs[2]
    # the next request that fits the remainder of hole 2 lands right after it
    rest = offs[3] - offs[2] - align_up(10)
    assert a.alloc(rest) == offs[2] + align_up(10)
    assert a.alloc(1000) == offs[7]
    assert a.high_water == hw  # all reuse happened below the high-water mark
    check_invariants(a)


def test_first_fit_skips_holes_too_small():
    a = Allocator(1 << 16)
    small = a.alloc(ALIGN)
    a.alloc(ALIGN)  # separator keeps the hole from merging with the tail
    a.free(small)
    big = a.alloc(4 * ALIGN)
    assert big == 2 * ALIGN  # the 1-unit hole at 0 is too small
    assert a.alloc(ALIGN) == 0  # but a 1-unit request still fills it


def test_double_free_and_unknown_offset_raise():
    a = Allocator(8 * ALIGN)
    off = a.alloc(ALIGN)
    a.free(off)
    with pytest.raises(KeyError):
        a.free(off)
    with pytest.raises(KeyError):
        a.free(3 * ALIGN)
    assert a.used == 0
    check_invariants(a)


def test_arena_full_message():
    a = Allocator(10 * ALIGN)
    a.alloc(4 * ALIGN)
    mid = a.alloc(2 * ALIGN)
    a.alloc(4 * ALIGN)
    a.free(mid)  # 2 units free, but only in one hole of 2 units
    with pytest.raises(ArenaFull) as ei:
        a.alloc(3 * ALIGN - 5)
    msg = str(ei.value)
    assert f"no free range of {3 * ALIGN} bytes" in msg  # the aligned size is reported
    assert f"arena {10 * ALIGN} bytes" in msg
    assert f"{8 * ALIGN} in use" in msg
    assert f"largest free range {2 * ALIGN} bytes" in msg
    # a failed alloc changes nothing
    assert a.used == 8 * ALIGN
    assert a.alloc(2 * ALIGN) == mid


def test_exact_fit_fills_arena_then_full():
    a = Allocator(4 * ALIGN)
    assert a.alloc(4 * ALIGN) == 0
    assert a.largest_free() == 0
    with pytest.raises(ArenaFull, match=r"largest free range 0 bytes"):
        a.alloc(1)
    a.free(0)
    assert a.largest_free() == 4 * ALIGN


def test_zero_sized_arena():
    a = Allocator(0)
    assert a.size == 0 and a.largest_free() == 0
    with pytest.raises(ArenaFull) as ei:
        a.alloc(1)
    assert str(ei.value) == (f"no free range of {ALIGN} bytes (arena 0 bytes, 0 in use, "
                             f"largest free range 0 bytes)")
    # smaller than one alignment unit behaves the same
    with pytest.raises(ArenaFull):
        Allocator(ALIGN - 1).alloc(1)


def test_randomized_alloc_free_no_overlap_and_all_returned():
    rng = random.Random(1234)
    size = 1 << 20
    a = Allocator(size)
    live: dict[int, int] = {}  # offset -> requested bytes
    fails = 0
    for step in range(5000):
        if live and (rng.random() < 0.45 or fails > 3):
            off = rng.choice(list(live))
            a.free(off)  # (return value: see test_free_returns_released_size_when_merging)
            live.pop(off)
            fails = 0
        else:
            n = rng.choice([0, 1, 63, 64, 65, 1000, 4096, rng.randrange(1, 60000)])
            try:
                off = a.alloc(n)
            except ArenaFull:
                fails += 1
                assert a.largest_free() < align_up(max(n, 1))
                continue
            assert off % ALIGN == 0
            assert 0 <= off and off + align_up(max(n, 1)) <= size
            assert off not in live
            live[off] = n
        if step % 50 == 0:
            check_invariants(a)
            # no two live ranges overlap
            spans = sorted((o, o + align_up(max(n, 1))) for o, n in live.items())
            for (s1, e1), (s2, _) in zip(spans, spans[1:]):
                assert e1 <= s2
    assert a.high_water <= size
    for off in list(live):
        a.free(off)
    assert a.used == 0
    assert a.live_ranges() == {}
    assert free_ranges(a) == [(0, size)]
