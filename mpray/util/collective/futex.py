"""Sleeping on a 32-bit word of shared memory until another process changes it (Linux futex).

    waiter:  while word != want: futex_wait(addr, seen, timeout)   (the kernel re-checks
             ``*addr == seen`` before sleeping, so a change between our read and the call
             is never missed)
    writer:  word = new; futex_wake(addr)

Shared futexes (no FUTEX_PRIVATE_FLAG) are keyed by the page and offset, not the address,
so processes that map the same memfd at different addresses meet on the same word.  Where
the syscall is missing (not Linux, or an unknown architecture), ``available`` is False and
the callers poll with short sleeps instead.
"""

from __future__ import annotations

import ctypes
import platform
import sys
import time

_SYS_FUTEX = {"x86_64": 202, "aarch64": 98, "arm64": 98, "ppc64le": 221, "riscv64": 98}
_WAIT, _WAKE = 0, 1
_INT_MAX = 0x7FFFFFFF


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_nr = _SYS_FUTEX.get(platform.machine()) if sys.platform == "linux" else None
_libc = ctypes.CDLL(None, use_errno=True) if _nr is not None else None
available = _libc is not None
if available:
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long


def wait(addr: int, seen: int, timeout: float) -> None:
    """Sleep while the int32 at ``addr`` still holds ``seen``, at most ``timeout`` seconds
    (returns early on a wake, a signal, or when the word already differs)."""
    if not available:
        time.sleep(min(timeout, 0.0002))
        return
    ts = _Timespec(int(timeout), int((timeout % 1.0) * 1e9))
    _syscall(_nr, ctypes.c_void_p(addr), _WAIT, ctypes.c_int(seen), ctypes.byref(ts), None, 0)


def wake(addr: int) -> None:
    """Wake every process sleeping on the int32 at ``addr``."""
    if available:
        _syscall(_nr, ctypes.c_void_p(addr), _WAKE, _INT_MAX, None, None, 0)
