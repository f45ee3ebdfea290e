"""Single-producer / single-consumer byte rings in shared memory, and doorbells.

Data flow::

    producer process                 shared mapping (MAP_SHARED)             consumer process
    ─────────────────                ───────────────────────────             ────────────────
    Ring.push(frame) ──memcpy──▶ [head | tail | data ........ ] ──memcpy──▶ Ring.pop_all()
                     data, then head ─(release)─▶        ─(acquire)─▶ head, then data
                     tail (acquire) ◀─────────────────── tail ◀─(release)─ after the copy
    Doorbell.ring()  ──eventfd_write (only if the consumer sleeps)──▶ Doorbell.wait() (poll)
      head; fence; flag?                  [flag]                flag = 1; fence; head?

A ring carries *frames*: byte strings, each prefixed by an 8-byte header (length and a
"more fragments follow" bit).  Frames are 8-byte aligned so a header never wraps.  A frame
larger than a quarter of the ring is cut into fragments; the consumer reassembles them.

Ordering: a producer writes the data, then publishes the head index; a consumer reads the
head, then the data, and publishes the tail only after it has copied the data out.  The
doorbell needs store→load ordering too (Dekker: "I published data, is the consumer
asleep?" vs "I am asleep, is there data?").  Two modes (``atomics.py`` picks one per
process; ``Ring``/``Doorbell`` take an explicit ``mode`` too), one ring code:

* ``tso`` (x86-64's default): ``_idx``/``_flag`` are plain ``memoryview.cast`` words.
  TSO keeps every order but store→load (store→store, load→load, load→store), so a
  plain index store after the data is a release and a plain index load an acquire.
  For the doorbell's store→load order, ``_barrier()`` issues one locked instruction
  through an uncontended ``threading.Lock`` (glibc's sem_post/sem_trywait use
  ``lock``-prefixed atomics), a full fence on x86 for ~0.1 µs.
* ``portable`` (every other CPU; ``MPRAY_RING_ATOMICS=portable`` forces it on x86):
  ``_idx``/``_flag`` are ``atomics_numba.Words`` views whose reads are acquire loads and
  writes release stores (numba intrinsics, ~0.2 µs a call), and the doorbell is a
  ``_FencedDoorbell``, whose fence is a real seq_cst fence (``dmb ish`` on aarch64).

Consumers additionally wake up on a timeout, so even a lost wake-up could never hang a
waiter.

The consumer blocks in ``poll()`` on an eventfd (futex-style kernel wait queue): an idle
engine uses no CPU.  Producers write the eventfd only when the consumer has announced
that it is going to sleep, so a busy consumer is never woken by syscalls.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import threading
import time

from . import atomics

__all__ = ["Ring", "Doorbell", "Outbox", "ring_bytes", "RingClosed"]

_HDR = 128  # head word at 0, tail word at 64 (separate cache lines)
_MORE = 1 << 63
_LEN_MASK = _MORE - 1
_pack_q = struct.Struct("<Q").pack_into
_unpack_q = struct.Struct("<Q").unpack_from

_fence_lock = threading.Lock()


def _barrier() -> None:
    """Full memory fence on x86 (locked instructions inside sem_wait/sem_post).  A
    blocking acquire: threads of one process (the driver and its MPI agent) may fence at
    the same moment, and a failed try-acquire must not release the other's lock."""
    _fence_lock.acquire()
    _fence_lock.release()


def _words(mv: memoryview, mode: str, fmt: str):
    """A ring's index words or a doorbell's flag: a plain cast view (tso), or a view whose
    reads are acquire loads and writes release stores (portable).  Both index alike."""
    return mv.cast(fmt) if mode == "tso" else atomics.jit().Words(mv)


def ring_bytes(capacity: int) -> int:
    """Bytes of shared memory one ring of ``capacity`` data bytes occupies."""
    return _HDR + capacity


class RingClosed(Exception):
    """The peer of a ring is gone."""


class Ring:
    """One SPSC ring over ``buf[offset : offset + ring_bytes(capacity)]``.

    ``capacity`` must be a power of two and a multiple of 8.  The same object type serves
    both ends; each end only calls its own half of the methods.  ``mode``: ``tso`` or
    ``portable`` (see the module's docstring), default this process's mode.
    """

    __slots__ = ("_idx", "_data", "_cap", "_mask", "_max_frag", "_min_frag", "_partial", "_mv")

    def __init__(self, buf, offset: int, capacity: int, mode: str | None = None) -> None:
        if capacity & (capacity - 1) or capacity < 64:
            raise ValueError(f"ring capacity must be a power of two >= 64, not {capacity}")
        mode = atomics.pick(mode)
        mv = memoryview(buf)[offset : offset + _HDR + capacity]
        self._mv = mv
        self._idx = _words(mv[:_HDR], mode, "Q")  # [0] = head (producer), [8] = tail
        self._data = mv[_HDR:]
        self._cap = capacity
        self._mask = capacity - 1
        self._max_frag = capacity // 4
        self._min_frag = min(64, self._max_frag)  # smaller fragments of big frames: wait
        self._partial: list[bytes] = []

    # -- producer side -----------------------------------------------------------------
    def free_bytes(self) -> int:
        return self._cap - (self._idx[0] - self._idx[8])

    def try_push(self, frame: bytes | memoryview) -> int:
        """Write as much of ``frame`` as fits now.

        Returns the payload bytes written, or -1 when nothing at all could be written
        (so an empty frame reports 0 only once its header is in).  A frame that does not
        fit whole goes in as fragments: the caller must push the rest (``frame[n:]``)
        later, before any other frame.
        """
        idx = self._idx
        head = idx[0]
        free = self._cap - (head - idx[8])
        n = len(frame)
        pos = head & self._mask
        if n + 8 <= free and n <= self._max_frag and pos + 8 + n <= self._cap:
            # the usual frame: small, fits whole, no wrap (free is a multiple of 8)
            data = self._data
            _pack_q(data, pos, n)
            data[pos + 8 : pos + 8 + n] = frame
            idx[0] = head + ((8 + n + 7) & ~7)  # publish after the data (a release)
            return n
        done = 0
        wrote = False
        data = self._data
        mask = self._mask
        cap = self._cap
        while free >= 8:
            room = free - 8
            rest = n - done
            chunk = min(rest, self._max_frag, room)
            if chunk < rest and (chunk <= 0 or (chunk < self._min_frag and rest > 64)):
                break  # no room, or not worth a tiny fragment of a big frame: wait
            pos = head & mask
            last = chunk == rest
            _pack_q(data, pos, chunk if last else chunk | _MORE)
            pos = (pos + 8) & mask
            end = pos + chunk
            if end <= cap:
                data[pos:end] = frame[done : done + chunk]
            else:
                first = cap - pos
                data[pos:cap] = frame[done : done + first]
                data[0 : chunk - first] = frame[done + first : done + chunk]
            step = (8 + chunk + 7) & ~7
            head += step
            free -= step
            done += chunk
            wrote = True
            if last:
                break
        if not wrote:
            return -1
        idx[0] = head  # publish after the data (TSO, or a release store, keeps the order)
        return done

    def push(self, frame: bytes, wake=None, deadline: float | None = None) -> None:
        """Write a whole frame, waiting for space (consumers always drain eventually)."""
        mv = memoryview(frame)
        done = 0
        delay = 20e-6
        while True:
            k = self.try_push(mv[done:])
            if k >= 0:
                done += k
                if done == len(mv):
                    return
            if wake is not None:
                wake()
            time.sleep(delay)
            delay = min(delay * 2, 2e-3)
            if deadline is not None and time.monotonic() > deadline:
                raise RingClosed("timed out waiting for ring space (peer not consuming)")

    # -- consumer side -----------------------------------------------------------------
    def has_data(self) -> bool:
        return self._idx[0] != self._idx[8]

    def pop_all(self) -> list[bytes]:
        """Return every complete frame available now (fragments reassembled)."""
        idx = self._idx
        head = idx[0]
        tail = idx[8]
        if head == tail:
            return []
        out: list[bytes] = []
        data = self._data
        mask = self._mask
        cap = self._cap
        partial = self._partial
        while tail != head:
            pos = tail & mask
            word = _unpack_q(data, pos)[0]
            n = word & _LEN_MASK
            pos = (pos + 8) & mask
            end = pos + n
            if end <= cap:
                chunk = bytes(data[pos:end])
            else:
                chunk = bytes(data[pos:cap]) + bytes(data[0 : end - cap])
            tail += (8 + n + 7) & ~7
            if word & _MORE:
                partial.append(chunk)
            elif partial:
                partial.append(chunk)
                out.append(b"".join(partial))
                partial.clear()
            else:
                out.append(chunk)
        idx[8] = tail
        return out

    def release(self) -> None:
        """Drop the views so the underlying mapping can be closed."""
        self._idx.release()
        self._data.release()
        self._mv.release()


class Doorbell:
    """An eventfd plus a shared "I am going to sleep" word for one consuming process.

    ``Doorbell(...)`` in the portable mode makes a ``_FencedDoorbell`` (its own flag view
    and fence): a subclass, so that this class's methods stay exactly the x86 ones.
    """

    __slots__ = ("fd", "_flag", "_poll", "_watched")
    _MODE = "tso"

    def __new__(cls, fd: int, flag_buf, flag_offset: int, mode: str | None = None):
        if cls is Doorbell and atomics.pick(mode) == "portable":
            cls = _FencedDoorbell
        return super().__new__(cls)

    def __init__(self, fd: int, flag_buf, flag_offset: int, mode: str | None = None) -> None:
        self.fd = fd
        self._flag = _words(memoryview(flag_buf)[flag_offset : flag_offset + 8], self._MODE,
                            "q")
        self._poll = None  # made lazily in the consuming process (after fork)
        self._watched: tuple[int, ...] = ()

    @classmethod
    def create(cls, flag_buf, flag_offset: int, mode: str | None = None) -> "Doorbell":
        mode = atomics.pick(mode)  # (refused before an eventfd exists to leak)
        return cls(os.eventfd(0, os.EFD_NONBLOCK), flag_buf, flag_offset, mode)

    # producer
    def ring(self) -> None:
        _barrier()
        if self._flag[0]:
            self._flag[0] = 0
            try:
                os.eventfd_write(self.fd, 1)
            except OSError:
                pass

    def force(self) -> None:
        os.eventfd_write(self.fd, 1)

    # consumer
    def sleep_begin(self) -> None:
        self._flag[0] = 1
        _barrier()

    def sleep_end(self) -> None:
        self._flag[0] = 0
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None, extra_fds: tuple[int, ...] = ()) -> list[int]:
        """Block until rung (or an extra fd is readable); returns the readable extra fds.

        The caller must have called ``sleep_begin()`` and re-checked its rings first.
        """
        p = self._poll
        if p is None or extra_fds != self._watched:
            p = self._poll = select.poll()
            p.register(self.fd, select.POLLIN)
            for fd in extra_fds:
                p.register(fd, select.POLLIN)
            self._watched = extra_fds
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        try:
            ready = p.poll(ms)
        finally:
            self._flag[0] = 0
        fd0 = self.fd
        out = []
        for fd, _ in ready:
            if fd == fd0:
                try:
                    os.eventfd_read(fd0)
                except BlockingIOError:
                    pass
            else:
                out.append(fd)
        return out

    def close(self) -> None:
        self._flag.release()
        self._poll = None
        try:
            os.close(self.fd)
        except OSError:
            pass


class _FencedDoorbell(Doorbell):
    """The portable mode's doorbell: its flag is a ``Words`` view (acquire/release) and
    its fence numba's seq_cst fence, where x86's locked instruction would not order
    the flag and the rings' indices on a weakly ordered CPU."""

    __slots__ = ("_fence",)
    _MODE = "portable"

    def __init__(self, fd: int, flag_buf, flag_offset: int, mode: str | None = None) -> None:
        super().__init__(fd, flag_buf, flag_offset)
        self._fence = atomics.jit().fence

    # producer (Doorbell.ring with the fence)
    def ring(self) -> None:
        self._fence()
        if self._flag[0]:
            self._flag[0] = 0
            try:
                os.eventfd_write(self.fd, 1)
            except OSError:
                pass

    # consumer (Doorbell.sleep_begin with the fence)
    def sleep_begin(self) -> None:
        self._flag[0] = 1
        self._fence()


class Outbox:
    """Frames waiting for ring space, for a producer that must never block (the node)."""

    __slots__ = ("ring", "pending")

    def __init__(self, ring: Ring) -> None:
        self.ring = ring
        self.pending: list[memoryview] = []  # pending[0] may be a frame's unwritten rest

    def send(self, frame: bytes) -> bool:
        """Queue a frame and write what fits; True when everything is written."""
        self.pending.append(memoryview(frame))
        return self.flush()

    def flush(self) -> bool:
        pending = self.pending
        while pending:
            mv = pending[0]
            k = self.ring.try_push(mv)
            if k < 0:
                return False
            if k < len(mv):
                pending[0] = mv[k:]
                return False
            pending.pop(0)
        return True


def anonymous_shared(size: int) -> mmap.mmap:
    """Shared anonymous memory: inherited by forked children, freed with the last user."""
    return mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
