"""Tests for mpray.transport.rings: SPSC byte rings (fragments, wrap-around), Outbox and Doorbell.

Every test runs in both memory-ordering modes (the ``mode`` fixture: ``tso``, x86-64's
plain words, where the CPU allows it, and ``portable``, numba's acquire/release atomics),
so one process checks both kinds of rings.  Everything runs in this process except
``test_cross_process_*``, which forks one producer, bounds it with deadlines and reaps it
with ``waitpid``.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest

from mpray.transport import atomics
from mpray.transport.rings import (Doorbell, Outbox, Ring, RingClosed, anonymous_shared,
                                   ring_bytes)

FLAG = 64  # bytes reserved in front of a ring for a doorbell's flag word


def _modes() -> list[str]:
    """Both modes where the CPU is x86-64; elsewhere ``tso`` is refused, so portable only."""
    try:
        atomics.select("tso")
    except ValueError:
        return ["portable"]
    return ["tso", "portable"]


@pytest.fixture(params=_modes())
def mode(request) -> str:
    return request.param


@pytest.fixture
def make_ring(mode):
    """make_ring(capacity) -> Ring over a fresh shared mapping; everything closed after."""
    made = []

    def make(capacity: int) -> Ring:
        mem = anonymous_shared(FLAG + ring_bytes(capacity))
        ring = Ring(mem, FLAG, capacity, mode)
        made.append((ring, mem))
        return ring

    yield make
    for ring, mem in made:
        ring.release()
        mem.close()


def frame_for(i: int, size: int) -> bytes:
    """A frame of exactly ``size`` bytes whose content depends on i (order is checkable)."""
    if size == 0:
        return b""
    pattern = i.to_bytes(4, "little") + bytes([(i * 7 + k) & 0xFF for k in range(4)])
    return (pattern * (size // len(pattern) + 1))[:size]


def test_ring_bytes_and_capacity_validation(mode):
    assert ring_bytes(1024) == 1024 + 128
    mem = anonymous_shared(4096)
    try:
        for bad in (0, 32, 100, 1000):
            with pytest.raises(ValueError, match="power of two"):
                Ring(mem, 0, bad, mode)
        Ring(mem, 0, 64, mode).release()
    finally:
        mem.close()


def test_empty_ring(make_ring):
    r = make_ring(256)
    assert not r.has_data()
    assert r.pop_all() == []
    assert r.free_bytes() == 256


def test_single_frames_and_accounting(make_ring):
    r = make_ring(256)
    assert r.try_push(b"hello") == 5
    assert r.has_data()
    assert r.free_bytes() == 256 - 16  # 8-byte header + 5 bytes padded to 8
    assert r.try_push(b"") == 0
    assert r.free_bytes() == 256 - 24  # an empty frame is just a header
    assert r.try_push(memoryview(b"12345678")) == 8
    assert r.pop_all() == [b"hello", b"", b"12345678"]
    assert not r.has_data()
    assert r.free_bytes() == 256
    assert r.pop_all() == []


def test_two_views_of_one_mapping_see_each_other(mode):
    """Producer and consumer objects over the same memory (as in two processes)."""
    mem = anonymous_shared(FLAG + ring_bytes(128))
    prod = Ring(mem, FLAG, 128, mode)
    cons = Ring(mem, FLAG, 128, mode)
    try:
        assert prod.try_push(b"abc") == 3
        assert cons.has_data()
        assert cons.pop_all() == [b"abc"]
        assert prod.free_bytes() == 128
    finally:
        prod.release()
        cons.release()
        mem.close()


def test_frame_larger_than_ring_is_fragmented(make_ring):
    cap = 256
    r = make_ring(cap)
    big = frame_for(1, 10 * cap + 3)
    got: list[bytes] = []
    done = 0
    pushes = 0
    while done < len(big):
        n = r.try_push(memoryview(big)[done:])
        assert n <= cap  # never more than the ring holds
        done += n
        pushes += 1
        frames = r.pop_all()
        if done < len(big):
            assert frames == []  # fragments are held back until the frame completes
        got += frames
        assert pushes < 1000
    assert pushes > 10
    assert got == [big]


def test_frames_of_many_sizes_round_trip_in_order(make_ring):
    cap = 1024
    r = make_ring(cap)
    rng = random.Random(7)
    sizes = ([0, 1, 7, 8, 9, 63, 64, 65, 255, 256, 257, cap // 4 - 8, cap // 4, cap // 4 + 1,
              cap - 8, cap, cap + 1, 3 * cap + 5, 10 * cap] +
             [rng.choice([0, rng.randrange(1, 40), rng.randrange(1, 600),
                          rng.randrange(cap, 5 * cap)]) for _ in range(3000)])
    sent = [frame_for(i, n) for i, n in enumerate(sizes)]
    got: list[bytes] = []
    for frame in sent:
        mv = memoryview(frame)
        k = r.try_push(mv)  # -1: nothing written (an empty frame counts once its header is in)
        done = max(k, 0)
        while k < 0 or done < len(mv):
            got += r.pop_all()  # the consumer makes room
            k = r.try_push(mv[done:])
            done += max(k, 0)
        if rng.random() < 0.3:  # interleave pops at random points
            got += r.pop_all()
    got += r.pop_all()
    assert len(got) == len(sent)
    for i, (a, b) in enumerate(zip(got, sent)):
        assert a == b, f"frame {i} (size {len(b)}) differs"
    assert r.free_bytes() == cap and not r.has_data()


def test_wraparound_of_data_across_ring_end(make_ring):
    cap = 128
    r = make_ring(cap)
    # move the indices so that the next frame's data straddles the end of the buffer
    for i in range(50):
        f = frame_for(i, 8 * (i % 5) + 3)
        assert r.try_push(f) == len(f)
        assert r.pop_all() == [f]
    for i in range(200):
        f = frame_for(i, 20 + i % 9)
        assert r.try_push(f) == len(f)
        assert r.pop_all() == [f]


@pytest.mark.parametrize("cap", [64, 128])
def test_small_ring_fragments_big_frames(make_ring, cap):
    """Ring() accepts any power of two >= 64, and fragments are at most cap // 4 bytes.
    try_push refuses a fragment under 64 bytes of a frame over 64 bytes, so in a ring
    below 256 bytes every fragment of such a frame is "too small": the frame can never be
    written, try_push returns -1 however empty the ring is, and push()/Outbox spin."""
    r = make_ring(cap)
    sent = [frame_for(i, n) for i, n in enumerate([cap // 4 + 1, 65, cap, 3 * cap + 5])]
    got: list[bytes] = []
    for f in sent:
        mv = memoryview(f)
        done = 0
        for _ in range(1000):
            k = r.try_push(mv[done:])
            done += max(k, 0)
            if k >= 0 and done == len(mv):
                break
            got += r.pop_all()
        assert done == len(mv), f"a {len(mv)}-byte frame never fit an empty {cap}-byte ring"
    got += r.pop_all()
    assert got == sent


def test_fragment_chains_wrap_around_ring_end(make_ring):
    cap = 256  # fragments of at most 64 bytes
    r = make_ring(cap)
    for i in range(400):
        # 65..184 bytes: 2-3 fragments; sizes not multiples of 8 walk the indices through
        # every position, so fragments straddle the buffer end again and again
        f = frame_for(i, 65 + (i * 29) % 120)
        assert r.try_push(f) == len(f)
        assert r.pop_all() == [f]
    assert r.free_bytes() == cap


def test_partial_push_then_rest(make_ring):
    cap = 256
    r = make_ring(cap)
    assert r.try_push(frame_for(0, 150)) == 150
    big = frame_for(1, 200)
    n = r.try_push(big)
    assert 0 < n < 200  # what fitted went in as fragments ...
    assert r.pop_all() == [frame_for(0, 150)]  # ... and is not visible as a frame yet
    n += r.try_push(memoryview(big)[n:])
    assert n == 200
    assert r.pop_all() == [big]


def test_no_tiny_fragment_when_almost_full(make_ring):
    r = make_ring(1024)  # fragments are at most 256 bytes
    for i in range(4):
        assert r.try_push(frame_for(i, 200)) == 200  # 4 * 208 bytes used
    assert r.try_push(frame_for(4, 136)) == 136  # 48 bytes left: 40 of payload
    assert r.free_bytes() == 48
    assert r.try_push(frame_for(5, 1000)) == -1  # a < 64-byte fragment is not worth it
    assert r.free_bytes() == 48
    assert r.try_push(frame_for(6, 40)) == 40  # a small frame that fits still goes in
    assert r.free_bytes() == 0
    assert r.pop_all() == [frame_for(i, 200) for i in range(4)] + [frame_for(4, 136),
                                                                    frame_for(6, 40)]


def fill_exactly(r: Ring, cap: int, leave: int = 0) -> list[bytes]:
    """Push unfragmented frames until exactly ``leave`` bytes (a multiple of 8) are free."""
    sent = []
    frag = cap // 4
    while r.free_bytes() > leave:
        n = min(frag, r.free_bytes() - leave) - 8
        f = frame_for(len(sent), n)
        assert r.try_push(f) == n
        sent.append(f)
    assert r.free_bytes() == leave
    return sent


def test_push_times_out_when_consumer_never_drains(make_ring):
    r = make_ring(1024)
    sent = fill_exactly(r, 1024)
    woken = []
    t0 = time.monotonic()
    with pytest.raises(RingClosed, match="timed out"):
        r.push(b"0123456789", wake=lambda: woken.append(1), deadline=t0 + 0.05)
    assert time.monotonic() - t0 < 2.0
    assert woken  # push rings the consumer's bell while it waits for space
    assert r.pop_all() == sent


def test_push_waits_for_space_then_completes(make_ring):
    r = make_ring(1024)
    sent = fill_exactly(r, 1024)
    got = []

    def consumer_drains():  # the "wake" callback doubles as the consumer here
        got.extend(r.pop_all())

    big = frame_for(99, 3000)
    r.push(big, wake=consumer_drains, deadline=time.monotonic() + 5)
    got += r.pop_all()
    while r.has_data():
        got += r.pop_all()
    assert got == sent + [big]


def test_outbox_queues_when_full_and_flushes_in_order(make_ring):
    cap = 256
    r = make_ring(cap)
    box = Outbox(r)
    sent = [frame_for(i, 20 + (i * 37) % 300) for i in range(60)]
    results = [box.send(f) for f in sent]
    assert results[0] is True
    assert False in results  # the ring filled up
    first_false = results.index(False)
    assert all(x is False for x in results[first_false:])  # once queued, later frames queue
    assert box.pending
    got: list[bytes] = []
    rounds = 0
    while True:
        got += r.pop_all()
        if box.flush():
            break
        rounds += 1
        assert rounds < 10_000
    got += r.pop_all()
    assert not box.pending
    assert got == sent
    # an idle outbox writes straight through again
    assert box.send(b"tail") is True
    assert r.pop_all() == [b"tail"]


def test_outbox_send_while_pending_keeps_order(make_ring):
    r = make_ring(1024)
    box = Outbox(r)
    for i in range(4):
        assert box.send(frame_for(i, 200)) is True  # 832 of 1024 bytes used
    assert box.send(frame_for(4, 250)) is False  # 184 bytes went in as a fragment
    assert len(box.pending) == 1 and len(box.pending[0]) == 250 - 184
    assert box.send(b"x") is False  # must queue behind frame 4, although it would fit
    assert len(box.pending) == 2
    assert r.pop_all() == [frame_for(i, 200) for i in range(4)]  # no half frame 4
    assert box.flush() is True
    assert r.pop_all() == [frame_for(4, 250), b"x"]


def test_nothing_fits_reports_minus_one(make_ring):
    r = make_ring(1024)
    sent = fill_exactly(r, 1024)
    assert r.try_push(b"x") == -1
    assert r.try_push(b"") == -1  # 0 would read as "the empty frame went in"
    assert r.pop_all() == sent


def test_empty_frame_fits_in_last_8_bytes(make_ring):
    """An empty frame is one 8-byte header: with exactly 8 bytes free it must go in."""
    r = make_ring(1024)
    sent = fill_exactly(r, 1024, leave=8)
    assert r.try_push(b"") == 0
    assert r.free_bytes() == 0, "the empty frame was not written"
    assert r.try_push(b"") == -1
    assert r.pop_all() == sent + [b""]


def test_empty_frame_into_full_ring_is_queued_by_outbox(make_ring):
    """With the ring full, an empty frame must be queued, not taken as written."""
    r = make_ring(1024)
    box = Outbox(r)
    sent = fill_exactly(r, 1024)
    assert box.send(b"") is False
    assert box.pending
    box.send(b"after")
    got = r.pop_all()
    rounds = 0
    while not box.flush():
        got += r.pop_all()
        rounds += 1
        assert rounds < 100
    got += r.pop_all()
    assert got == sent + [b"", b"after"]


# ------------------------------------------------------------------------------ doorbell


@pytest.fixture
def bell(mode):
    mem = anonymous_shared(64)
    b = Doorbell.create(mem, 0, mode)
    yield b
    b.close()
    mem.close()


def test_doorbell_ring_is_silent_while_consumer_is_awake(bell):
    bell.ring()  # the consumer did not announce sleep: no syscall, nothing to read
    with pytest.raises(BlockingIOError):
        os.eventfd_read(bell.fd)
    t0 = time.monotonic()
    bell.sleep_begin()
    assert bell.wait(0.05) == []  # nobody rings: returns on its timeout
    assert time.monotonic() - t0 >= 0.04


def test_doorbell_wakes_a_sleeper(bell):
    bell.sleep_begin()
    bell.ring()  # the consumer announced sleep: the eventfd is written
    t0 = time.monotonic()
    assert bell.wait(5.0) == []
    assert time.monotonic() - t0 < 1.0
    # wait() ended the sleep: the flag is clear and the eventfd drained
    bell.ring()
    with pytest.raises(BlockingIOError):
        os.eventfd_read(bell.fd)


def test_doorbell_force_and_extra_fds(bell):
    bell.force()  # wakes even without sleep_begin
    t0 = time.monotonic()
    bell.sleep_begin()
    assert bell.wait(5.0) == []
    assert time.monotonic() - t0 < 1.0
    rfd, wfd = os.pipe()
    try:
        os.write(wfd, b"!")
        bell.sleep_begin()
        assert bell.wait(5.0, (rfd,)) == [rfd]  # readable extra fds are reported
    finally:
        os.close(rfd)
        os.close(wfd)


# ------------------------------------------------------------------------ cross-process

N_FRAMES = 100_000
CAP = 4096


def _xframe(i: int) -> bytes:
    if i % 20_000 == 1:
        return frame_for(i, 3 * CAP + 11)  # larger than the ring: fragments across processes
    return frame_for(i, 1 + (i * 13) % 97)


def _producer(ring: Ring, bell: Doorbell) -> int:
    deadline = time.monotonic() + 30
    for i in range(N_FRAMES):
        ring.push(_xframe(i), wake=bell.ring, deadline=deadline)
        bell.ring()
        if i % 25_000 == 12_345:
            time.sleep(0.03)  # let the consumer run dry and go to sleep
    return 0


def test_cross_process_producer_consumer_with_doorbell(mode):
    mem = anonymous_shared(FLAG + ring_bytes(CAP))
    bell = Doorbell.create(mem, 0, mode)
    ring = Ring(mem, FLAG, CAP, mode)
    pid = os.fork()
    if pid == 0:  # ---- child: producer only, never returns into pytest
        code = 1
        try:
            code = _producer(ring, bell)
        except BaseException:  # noqa: BLE001
            code = 2
        finally:
            os._exit(code)
    reaped = False
    try:
        got = 0
        sleeps = 0
        longest_wait = 0.0
        deadline = time.monotonic() + 15
        while got < N_FRAMES:
            assert time.monotonic() < deadline, f"only {got} frames arrived"
            frames = ring.pop_all()
            if frames:
                for f in frames:
                    assert f == _xframe(got), f"frame {got} differs (len {len(f)})"
                    got += 1
                continue
            bell.sleep_begin()
            if ring.has_data():
                bell.sleep_end()
                continue
            t0 = time.monotonic()
            bell.wait(3.0)
            longest_wait = max(longest_wait, time.monotonic() - t0)
            sleeps += 1
        assert ring.pop_all() == []
        _, status = os.waitpid(pid, 0)
        reaped = True
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        assert sleeps >= 1  # the consumer slept (the producer paused) ...
        assert longest_wait < 2.0  # ... and was woken by the doorbell, never by the timeout
    finally:
        if not reaped:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        ring.release()
        bell.close()
        mem.close()
