"""Copying between two processes' memory in one step (Linux cross-memory attach:
``process_vm_readv`` / ``process_vm_writev``), so that a member of a one-host group reads
the others' arrays where they are, without first copying them into shared memory.

The kernel allows it between processes of one user where ptrace would be allowed (Yama's
``ptrace_scope`` 1 forbids it between siblings; some container profiles forbid it): the
group tries it once when it forms and falls back to copying through its segment.
"""

from __future__ import annotations

import ctypes
import os
import sys


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_read = getattr(_libc, "process_vm_readv", None)
_write = getattr(_libc, "process_vm_writev", None)
for _f in (_read, _write):
    if _f is not None:
        _f.restype = ctypes.c_ssize_t
        _f.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                       ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
available = _read is not None and _write is not None


class Mover:
    """One process's reads and writes of another's memory (iovecs reused: no allocation
    per call)."""

    def __init__(self):
        self.local, self.remote = _Iovec(), _Iovec()
        self.lp, self.rp = ctypes.pointer(self.local), ctypes.pointer(self.remote)

    def _move(self, f, pid: int, local: int, remote: int, n: int) -> None:
        while n > 0:
            self.local.base, self.local.len = local, n
            self.remote.base, self.remote.len = remote, n
            done = f(pid, self.lp, 1, self.rp, 1, 0)
            if done <= 0:
                e = ctypes.get_errno()
                raise OSError(e, f"{f.__name__} of pid {pid}: {os.strerror(e)}")
            local, remote, n = local + done, remote + done, n - done

    def read(self, pid: int, local: int, remote: int, n: int) -> None:
        """Copy ``n`` bytes at ``remote`` in ``pid`` to ``local`` here."""
        self._move(_read, pid, local, remote, n)

    def write(self, pid: int, local: int, remote: int, n: int) -> None:
        """Copy ``n`` bytes at ``local`` here to ``remote`` in ``pid``."""
        self._move(_write, pid, local, remote, n)


def works(pid: int, remote: int) -> bool:
    """Can this process read 8 bytes at ``remote`` in ``pid``?"""
    if not available:
        return False
    buf = ctypes.create_string_buffer(8)
    try:
        Mover().read(pid, ctypes.addressof(buf), remote, 8)
    except OSError:
        return False
    return True
