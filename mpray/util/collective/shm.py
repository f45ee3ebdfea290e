"""The one-host collective group: every member maps one shared segment and reads the others'
arrays straight out of it.

    member i                      segment (memfd of rank 0, opened by the others through
                                  /proc/<pid>/fd/<n>; grown with posix_fallocate, never shrunk)
    ─────────                     ┌────────────────────────────────────────────────────────┐
    begin: wait done[*] ≥ seq-1   │ header: per member a 64-byte line                      │
    copy tensor ─────────────────▶│   arrive | done | op code | pid | what it called       │
    arrive[i] = seq, wake ───────▶│   p2p table: the fd of each (src, dst) channel         │
    wait arrive[*] ≥ seq          ├────────────────────────────────────────────────────────┤
    reduce chunk i of every slot ◀│ slot 0 | slot 1 | ... | slot k-1 | R (reduced chunks)  │
    (allreduce: into R, barrier,  └────────────────────────────────────────────────────────┘
     copy R out; small arrays:
     each reduces all of it)
    done[i] = seq, wake

Each word has one writer (its member), so no atomic read-modify-write is needed: a member
publishes with a plain store after its data (x86-64's ordering keeps them in order, which is
why ``backend="auto"`` takes this path only there) and sleeps on a futex when the word it
waits for is not there yet.  ``done`` is a split barrier: a member signals it as soon as it
has read what it needs, and the next collective waits for it only before overwriting its
slot, so a well-behaved loop rarely waits on it.  A member that waits checks, every 50 ms,
that the one it waits for is alive and that the group's timeout has not passed.

Large allreduces skip the slots where the kernel lets members read each other's memory
(cross-memory attach, ``cma.py``; tried once when the group forms): member i reads chunk i
of every other member's array where it lies, a cache-sized block at a time, reduces it into
its own array and writes the block back into every other member's array.  No one else
touches chunk i, so two barriers suffice, and each byte crosses memory about twice instead
of five times.

``send``/``recv`` go through a segment per (src, dst) pair, made by the sender on first use.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
import zlib

import numpy as np

from . import cma, futex
from .reduce import ReduceOp, reduce_into
from .types import CollectiveError, CollectiveTimeoutError, flat_view, process_alive

LINE = 64  # bytes per member's control line (a cache line: no false sharing)
ARRIVE, DONE, CODE, CAN = 0, 1, 2, 3  # int32 words of a line (CAN: 1 cma works, 2 not)
PID_Q, ADDR_Q = 2, 3  # int64 words of a line: its pid; the address of its tensor
DESC = slice(32, 64)  # bytes of a line: what the member called (for error messages)
PAGE = 4096
SMALL = 256 << 10  # bytes up to which every member reduces the whole array itself
BLOCK = 256 << 10  # bytes a cma allreduce moves per peer and step (stays in cache)
P2P_HDR = LINE  # a channel's header: sent | ack | nbytes(int64 at 8)
M32, HALF = 0xFFFFFFFF, 0x80000000
SPIN = 200  # reads of a word before sleeping on it
CHECK_S = 0.05  # how often a waiter checks the other member is alive
WARN_S = 60.0

log = logging.getLogger("mpray.collective")


def _at_least(v: int, want: int) -> bool:
    """``v >= want`` for counters that wrap at 2**32."""
    return ((v - want) & M32) < HALF


def _round(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


def header_bytes(k: int) -> int:
    return _round(k * LINE + k * k * 4)


def create_segment(k: int) -> int:
    """Rank 0's part of forming a group: a memfd the others will open (kept open here)."""
    fd = os.memfd_create("mpray-collective", os.MFD_CLOEXEC)
    os.posix_fallocate(fd, 0, header_bytes(k))
    return fd


def open_segment(pid: int, fd: int) -> int:
    """Another member's memfd, opened through /proc (the same user's process)."""
    try:
        return os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        raise CollectiveError(
            f"cannot open the collective group's shared segment of pid {pid} ({e}); "
            f"use backend='store' where processes cannot open each other's memory") from e


class _Map:
    """A growing mapping of one memfd."""

    def __init__(self, fd: int, size: int):
        self.fd, self.size = fd, 0
        self.grow(size)

    def grow(self, need: int) -> None:
        if need <= self.size:
            return
        try:
            os.posix_fallocate(self.fd, 0, need)  # grows only: members may race here
        except OSError as e:
            raise CollectiveError(f"no room for a {need:,}-byte collective segment "
                                  f"in shared memory: {e}") from e
        size = max(need, os.fstat(self.fd).st_size)
        self.mm = mmap.mmap(self.fd, size)  # the old map lives on in views still held
        self.buf = np.frombuffer(self.mm, np.uint8)
        self.addr = self.buf.ctypes.data
        self.size = size

    def close(self) -> None:
        self.buf = None
        try:
            self.mm.close()
        except BufferError:  # a caller still holds a view: the map goes with it
            pass
        os.close(self.fd)


class ShmGroup:
    """One process's membership of a one-host group (``k`` members, this one ``rank``)."""

    backend = "shm"

    def __init__(self, name: str, k: int, rank: int, fd: int, pids: list[int],
                 timeout: float):
        self.name, self.k, self.rank, self.pids, self.timeout = name, k, rank, pids, timeout
        self.hdr = header_bytes(k)
        self.map = _Map(fd, self.hdr)
        self.seq = 0
        self.lock = threading.Lock()
        self.chans: dict[tuple[int, int], list] = {}  # (src, dst) -> [_Map, messages]
        self._q(rank)[PID_Q] = os.getpid()
        self._q(rank)[ADDR_Q] = self.map.addr
        self.barrier()  # every member has opened the segment before rank 0 may leave
        self.cma = self._try_cma()
        self.mover = cma.Mover()
        self.scratch = np.empty(0, np.uint8)

    def _try_cma(self) -> bool:
        """Can every member read the next one's memory?  (Decided together: a group
        where some could and some could not would not agree on how to move data.)"""
        if self.k == 1:
            return False
        nxt = (self.rank + 1) % self.k
        ok = cma.works(self.pids[nxt], int(self._q(nxt)[ADDR_Q]))
        self._w(self.rank)[CAN] = 1 if ok else 2
        self.barrier()
        return all(self._w(j)[CAN] == 1 for j in range(self.k))

    # ------------------------------------------------------------------ words
    def _line(self, j: int) -> np.ndarray:
        return self.map.buf[j * LINE:(j + 1) * LINE]

    def _w(self, j: int) -> np.ndarray:
        return self._line(j)[:16].view(np.int32)

    def _q(self, j: int) -> np.ndarray:
        return self._line(j)[:32].view(np.int64)

    def _publish(self, word: int, value: int) -> None:
        self._w(self.rank)[word] = ((value + HALF) & M32) - HALF  # as a signed int32
        futex.wake(self.map.addr + self.rank * LINE + word * 4)

    def _wait(self, off: int, want: int, whom: int, what: str, m: _Map | None = None) -> None:
        """Wait until the int32 at ``off`` of ``m`` (the group's map) reaches ``want``
        (``whom`` writes it)."""
        m = m or self.map
        word = m.buf[off:off + 4].view(np.int32)
        for _ in range(SPIN):
            if _at_least(int(word[0]) & M32, want):
                return
        t0 = time.monotonic()
        warn_at = t0 + WARN_S
        while True:
            v = int(word[0])
            if _at_least(v & M32, want):
                return
            futex.wait(m.addr + off, v, CHECK_S)
            now = time.monotonic()
            if now - t0 >= CHECK_S:
                self._check_alive(whom, what)
                if now - t0 > self.timeout:
                    raise CollectiveTimeoutError(
                        f"collective group {self.name!r}: {what} waited {now - t0:.0f} s "
                        f"for rank {whom} (pid {self.pids[whom]}), past the group's "
                        f"timeout ({self.timeout:g} s)")
                if now >= warn_at:
                    warn_at = now + WARN_S
                    log.warning("collective group %r: %s has waited %.0f s for rank %d "
                                "(pid %d)", self.name, what, now - t0, whom, self.pids[whom])

    def _check_alive(self, j: int, what: str) -> None:
        if not process_alive(self.pids[j]):
            raise CollectiveError(
                f"collective group {self.name!r}: rank {j} (pid {self.pids[j]}) died; "
                f"{what} on rank {self.rank} cannot complete")

    # ------------------------------------------------------------------ phases
    def _begin(self, what: str, desc: tuple) -> None:
        """A new collective: wait until every member has read what the last one left in
        the slots, and say what this member calls (checked against the others')."""
        self.seq += 1
        if self.seq > 1:
            for j in range(self.k):
                if j != self.rank:
                    self._wait(j * LINE + DONE * 4, self.seq - 1, j, what)
        text = repr(desc).encode()[:DESC.stop - DESC.start]
        line = self._line(self.rank)
        line[DESC] = 0
        line[DESC.start:DESC.start + len(text)] = np.frombuffer(text, np.uint8)
        self._w(self.rank)[CODE] = zlib.crc32(repr(desc).encode()) & 0x7FFFFFFF

    def _arrive(self, what: str, tag: int = 0) -> None:
        """Wait for every member to arrive at this point (``tag`` tells the points of one
        collective apart); then check that they all called the same thing."""
        want = (self.seq * 2 + tag) & M32
        self._publish(ARRIVE, want)
        for j in range(self.k):
            if j != self.rank:
                self._wait(j * LINE + ARRIVE * 4, want, j, what)
        if tag == 0:
            self._agree(what)

    def _agree(self, what: str) -> None:
        mine = self._w(self.rank)[CODE]
        odd = [j for j in range(self.k) if self._w(j)[CODE] != mine]
        if odd:
            said = {j: bytes(self._line(j)[DESC]).rstrip(b"\0").decode(errors="replace")
                    for j in range(self.k)}
            self._end()
            raise CollectiveError(f"collective group {self.name!r}: the members called "
                                  f"different collectives or shapes: {said}")

    def _end(self) -> None:
        self._publish(DONE, self.seq)

    def _slots(self, n: int, nbytes: int) -> tuple[int, int]:
        """Room for ``n`` slots of ``nbytes``: (offset of slot 0, stride)."""
        stride = _round(max(nbytes, 1), LINE)
        self.map.grow(self.hdr + n * stride)
        return self.hdr, stride

    def _view(self, off: int, like: np.ndarray, flat: bool = False) -> np.ndarray:
        """An array shaped as ``like`` (1-D with ``flat``) at ``off`` of the segment."""
        v = self.map.buf[off:off + like.nbytes].view(like.dtype)
        return v if flat else v.reshape(like.shape)

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        with self.lock:
            self._begin("barrier", ("barrier",))
            self._arrive("barrier")
            self._end()

    def allreduce(self, t: np.ndarray, op: ReduceOp) -> None:
        if self.cma and t.nbytes > SMALL:
            return self._allreduce_cma(t, op)
        with self.lock:
            self._begin("allreduce", ("allreduce", t.dtype.str, t.shape, int(op)))
            base, stride = self._slots(self.k + 1, t.nbytes)
            np.copyto(self._view(base + self.rank * stride, t), t)
            self._arrive("allreduce")
            ins = [self._view(base + j * stride, t, flat=True) for j in range(self.k)]
            if t.nbytes <= SMALL or self.k == 1:
                self._reduce_whole(t, ins, op)
            else:  # each reduces its share into R; then all read R
                lo, hi = _chunk(t.size, self.k, self.rank, t.itemsize)
                r = self._view(base + self.k * stride, t, flat=True)
                reduce_into(r[lo:hi], [x[lo:hi] for x in ins], op)
                self._arrive("allreduce", 1)
                np.copyto(t, r.reshape(t.shape))
            self._end()

    def _allreduce_cma(self, t: np.ndarray, op: ReduceOp) -> None:
        """Each member reduces its chunk of every member's array, read where it lies, and
        writes the result into every member's array: no member reads or writes another's
        chunk, so two barriers suffice (addresses published; all chunks written)."""
        a = flat_view(t)
        a = np.ascontiguousarray(t).reshape(-1) if a is None else a
        with self.lock:
            self._begin("allreduce", ("allreduce", t.dtype.str, t.shape, int(op)))
            self._q(self.rank)[ADDR_Q] = a.ctypes.data
            self._arrive("allreduce")
            peers = [j for j in range(self.k) if j != self.rank]
            addrs = [int(self._q(j)[ADDR_Q]) for j in peers]
            step = max(1, BLOCK // a.itemsize)
            if self.scratch.nbytes < len(peers) * step * a.itemsize:
                self.scratch = np.empty(len(peers) * step * a.itemsize, np.uint8)
            bufs = self.scratch.view(a.dtype)
            lo, hi = _chunk(a.size, self.k, self.rank, a.itemsize)
            for b in range(lo, hi, step):
                self._cma_block(a, b, min(b + step, hi), peers, addrs, bufs, step, op)
            self._arrive("allreduce", 1)
            if flat_view(t) is None:
                np.copyto(t, a.reshape(t.shape))
            self._end()

    def _cma_block(self, a, b: int, e: int, peers, addrs, bufs, step: int, op) -> None:
        """Elements [b, e) of this member's chunk: read the peers', reduce, write back."""
        n, off, mv = (e - b) * a.itemsize, b * a.itemsize, self.mover
        here = a.ctypes.data + off
        what = "allreduce"
        ins = [a[b:e]]
        try:
            for i, (j, addr) in enumerate(zip(peers, addrs)):
                mv.read(self.pids[j], bufs.ctypes.data + i * step * a.itemsize, addr + off, n)
                ins.append(bufs[i * step:i * step + e - b])
            reduce_into(a[b:e], ins, op)
            for j, addr in zip(peers, addrs):
                mv.write(self.pids[j], here, addr + off, n)
        except OSError as err:
            self._check_alive(j, what)
            raise CollectiveError(f"collective group {self.name!r}: {what} could not move "
                                  f"data with rank {j} (pid {self.pids[j]}): {err}") from err

    @staticmethod
    def _reduce_whole(t: np.ndarray, ins: list, op: ReduceOp) -> None:
        a = flat_view(t)
        if a is not None:
            reduce_into(a, ins, op)  # t is contiguous: straight into it
        else:
            out = np.empty(t.size, t.dtype)
            reduce_into(out, ins, op)
            np.copyto(t, out.reshape(t.shape))

    def reduce(self, t: np.ndarray, dst: int, op: ReduceOp) -> None:
        with self.lock:
            self._begin("reduce", ("reduce", t.dtype.str, t.shape, int(op), dst))
            base, stride = self._slots(self.k, t.nbytes)
            np.copyto(self._view(base + self.rank * stride, t), t)
            self._arrive("reduce")
            if self.rank == dst:
                self._reduce_whole(t, [self._view(base + j * stride, t, flat=True)
                                       for j in range(self.k)], op)
            self._end()

    def broadcast(self, t: np.ndarray, src: int) -> None:
        with self.lock:
            self._begin("broadcast", ("broadcast", t.dtype.str, t.shape, src))
            base, _ = self._slots(1, t.nbytes)
            if self.rank == src:
                np.copyto(self._view(base, t), t)
            self._arrive("broadcast")
            if self.rank != src:
                np.copyto(t, self._view(base, t))
            self._end()

    def allgather(self, out: list, t: np.ndarray) -> None:
        with self.lock:
            self._begin("allgather", ("allgather", t.dtype.str, t.shape))
            base, stride = self._slots(self.k, t.nbytes)
            np.copyto(self._view(base + self.rank * stride, t), t)
            self._arrive("allgather")
            for j, o in enumerate(out):
                np.copyto(o, self._view(base + j * stride, t))
            self._end()

    def reducescatter(self, t: np.ndarray, parts: list, op: ReduceOp) -> None:
        """Member j's slot holds its ``k`` parts end to end; this member reduces part
        ``rank`` of every slot straight into ``t``."""
        with self.lock:
            self._begin("reducescatter", ("reducescatter", t.dtype.str, t.shape, int(op)))
            base, stride = self._slots(self.k, t.nbytes * self.k)
            mine = base + self.rank * stride
            for i, p in enumerate(parts):
                np.copyto(self._view(mine + i * t.nbytes, t), p)
            self._arrive("reducescatter")
            at = self.rank * t.nbytes
            self._reduce_whole(t, [self._view(base + j * stride + at, t, flat=True)
                                   for j in range(self.k)], op)
            self._end()

    # ------------------------------------------------------------------ send / recv
    def _table(self, src: int, dst: int) -> int:
        """Offset of the int32 where ``src`` publishes its channel to ``dst`` (fd + 1)."""
        return self.k * LINE + (src * self.k + dst) * 4

    def send(self, t: np.ndarray, dst: int) -> None:
        with self.lock:
            ch = self.chans.get((self.rank, dst))
            if ch is None:
                fd = os.memfd_create("mpray-collective-p2p", os.MFD_CLOEXEC)
                ch = self.chans[(self.rank, dst)] = [_Map(fd, P2P_HDR + t.nbytes), 0]
                off = self._table(self.rank, dst)
                self.map.buf[off:off + 4].view(np.int32)[0] = fd + 1
                futex.wake(self.map.addr + off)
            m = ch[0]
            ch[1] += 1
            what = f"send to rank {dst}"
            if ch[1] > 1:  # the receiver has taken the last message
                self._wait(4, ch[1] - 1, dst, what, m)
            m.grow(P2P_HDR + t.nbytes)
            m.buf[8:16].view(np.int64)[0] = t.nbytes
            np.copyto(m.buf[P2P_HDR:P2P_HDR + t.nbytes].view(t.dtype).reshape(t.shape), t)
            m.buf[:4].view(np.int32)[0] = ch[1]
            futex.wake(m.addr)

    def recv(self, t: np.ndarray, src: int) -> None:
        with self.lock:
            what = f"recv from rank {src}"
            ch = self.chans.get((src, self.rank))
            if ch is None:
                off = self._table(src, self.rank)
                self._wait(off, 1, src, what)
                fd = int(self.map.buf[off:off + 4].view(np.int32)[0]) - 1
                ch = self.chans[(src, self.rank)] = [
                    _Map(open_segment(self.pids[src], fd), P2P_HDR), 0]
            m = ch[0]
            ch[1] += 1
            self._wait(0, ch[1], src, what, m)
            n = int(m.buf[8:16].view(np.int64)[0])
            if n != t.nbytes:
                m.buf[4:8].view(np.int32)[0] = ch[1]  # taken, so the sender goes on
                futex.wake(m.addr + 4)
                raise CollectiveError(f"collective group {self.name!r}: rank {src} sent "
                                      f"{n} bytes, recv's tensor has {t.nbytes}")
            m.grow(P2P_HDR + n)
            np.copyto(t, m.buf[P2P_HDR:P2P_HDR + n].view(t.dtype).reshape(t.shape))
            m.buf[4:8].view(np.int32)[0] = ch[1]
            futex.wake(m.addr + 4)

    def destroy(self) -> None:
        with self.lock:
            for m, _n in self.chans.values():
                m.close()
            self.chans.clear()
            self.map.close()


def _chunk(n: int, k: int, i: int, itemsize: int) -> tuple[int, int]:
    """Member ``i``'s share of ``n`` elements: whole cache lines, so that no two members
    write the same line of R."""
    per = LINE // itemsize if LINE % itemsize == 0 else 1
    step = -(-(-(-n // k)) // per) * per  # ceil(ceil(n / k) / per) * per
    return min(n, i * step), min(n, (i + 1) * step)
