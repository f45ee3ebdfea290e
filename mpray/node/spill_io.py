"""The node's spill files: written and read by one thread, off the node's loop.

Data flow::

    Scheduler.actions: SpillWrite / SpillRead / SpillDelete ─ SpillIO.submit ─▶ queue
    the I/O thread: arena range ─ checksum, os.write ─▶ <spill dir>/<n>.spill  (a file
                    a batch);  <n>.spill ─ os.preadv ─▶ arena range ─ checksum checked
                    done ─▶ results deque, the node's doorbell rung
    the loop: SpillIO.take() ─▶ Scheduler.spill_written / spill_read
    shutdown: the thread ends, the spill directory is removed

Large copies release the GIL (the kernel does them), so the loop keeps scheduling
while a batch is written.  A read that finds its file missing or short, or whose bytes
do not add up to the checksum taken when they were written, fails, and the scheduler
makes the value again or reports it lost (never garbage).  The checksum is the sum of
the value's 64-bit words (modulo 2**64): about 25 GB/s with numpy, where a CRC32 pass
(3.6 GB/s here) would halve the spill bandwidth.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import threading
import time

import numpy as np

from .. import protocol as P

CHUNK = 1 << 30  # bytes per write call (a single call stops short at 2 GiB)


class SpillIO:
    def __init__(self, spill_dir: str | None, arena, bell) -> None:
        self.dir = spill_dir
        self.arena = memoryview(arena) if arena is not None else None
        self.bell = bell
        self.results: collections.deque = collections.deque()
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._made = False
        # the I/O thread's own time and bytes, for the node's stats (spill bandwidth)
        self.times = {"write_s": 0.0, "write_bytes": 0, "read_s": 0.0, "read_bytes": 0}

    def submit(self, action) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="mpray-spill",
                                            daemon=True)
            self._thread.start()
        self._q.put(action)

    def take(self, sched) -> None:
        """Hand finished copies to the scheduler (the loop's thread)."""
        results = self.results
        while results:
            kind, key, error, sums = results.popleft()
            if kind is P.SpillWrite:
                sched.spill_written(key, error, sums)
            else:
                sched.spill_read(key, error)

    def _run(self) -> None:
        while True:
            a = self._q.get()
            if a is None:
                return
            kind = type(a)
            if kind is P.SpillDelete:
                _unlink(a.path)
                continue
            t0 = time.perf_counter()
            sums = None
            try:
                if kind is P.SpillWrite:
                    sums = self._write(a)
                    self._count("write", time.perf_counter() - t0,
                                sum(item[2] for item in a.items))
                else:
                    self._read(a)
                    self._count("read", time.perf_counter() - t0, a.nbytes)
                error = None
            except OSError as e:
                error = f"{e.strerror or e} ({type(e).__name__}, errno {e.errno})"
            except Exception as e:  # noqa: BLE001 - reported to the scheduler, not lost
                error = f"{type(e).__name__}: {e}"
            self.results.append((kind, a.batch if kind is P.SpillWrite else a.oid, error,
                                 sums))
            try:
                os.eventfd_write(self.bell.fd, 1)
            except OSError:
                pass

    def _count(self, what: str, seconds: float, nbytes: int) -> None:
        self.times[what + "_s"] += seconds
        self.times[what + "_bytes"] += nbytes

    def _write(self, a) -> None:
        if not self._made:
            os.makedirs(self.dir, mode=0o700, exist_ok=True)
            self._made = True
        mv = self.arena
        sums = []
        fd = os.open(a.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for _oid, off, nbytes, _pos in a.items:
                sums.append(checksum(mv[off: off + nbytes]))
                done = 0
                while done < nbytes:
                    n = min(CHUNK, nbytes - done)
                    done += os.write(fd, mv[off + done: off + done + n])
        except BaseException:
            os.close(fd)
            _unlink(a.path)
            raise
        os.close(fd)
        return sums

    def _read(self, a) -> None:
        mv = self.arena
        fd = os.open(a.path, os.O_RDONLY)
        try:
            done = 0
            while done < a.nbytes:
                n = os.preadv(fd, [mv[a.offset + done: a.offset + min(a.nbytes, done + CHUNK)]],
                              a.file_off + done)
                if n <= 0:
                    raise OSError(0, f"the file ends {a.nbytes - done} bytes short")
                done += n
        finally:
            os.close(fd)
        if a.csum is not None and checksum(mv[a.offset: a.offset + a.nbytes]) != a.csum:
            raise OSError(0, "its bytes do not match the checksum taken when they were "
                             "written (the file was changed or damaged)")

    def close(self) -> None:
        """End the thread (after what it was given) and remove the directory."""
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(timeout=30.0)
            self._thread = None
        if self.dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)


def checksum(mv) -> int:
    """The sum of a range's 64-bit words, modulo 2**64 (ranges are 64-byte aligned)."""
    n = len(mv) - len(mv) % 8
    total = int(np.add.reduce(np.frombuffer(mv[:n], np.uint64), dtype=np.uint64)) if n else 0
    return total + sum(bytes(mv[n:]))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
