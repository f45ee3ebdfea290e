"""Acquire loads, release stores and a sequentially consistent fence on 64-bit words of
shared memory, compiled by numba: the portable mode's mechanism (``atomics.py`` decides
when it is used; this module is imported only then, because importing numba costs
0.2-2 s that x86-64's default mode never pays).

Data flow::

    Ring._idx / Doorbell._flag  (a Words view of the mapping's header words)
        words[i]          ──▶ load_acquire(addr + 8 i)    LLVM  load atomic acquire
        words[i] = v      ──▶ store_release(addr + 8 i, v) LLVM  store atomic release
    _FencedDoorbell       ──▶ fence()                      LLVM  fence seq_cst

    aarch64: ldar / stlr / dmb ish      x86-64: mov / mov / mfence

Each LLVM instruction is emitted by a ``numba.extending.intrinsic`` and wrapped in an
``@njit`` function with an explicit signature (compiled when this module is imported,
then cached on disk: later processes load the machine code in a few ms; forked children
inherit it).  Calling one from Python costs numba's dispatch, ~0.2 µs.
"""

from __future__ import annotations

import ctypes

from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["load_acquire", "store_release", "fence", "Words", "address"]

_WORD_PTR = ir.IntType(64).as_pointer()


@intrinsic
def _load_acquire(typingctx, addr):
    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], _WORD_PTR)
        return builder.load_atomic(ptr, "acquire", 8)

    return types.uint64(types.intp), codegen


@intrinsic
def _store_release(typingctx, addr, value):
    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], _WORD_PTR)
        builder.store_atomic(args[1], ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(types.intp, types.uint64), codegen


@intrinsic
def _fence_seq_cst(typingctx):
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.void(), codegen


@njit(types.uint64(types.intp), cache=True)
def load_acquire(addr):
    """The 64-bit word at ``addr`` (8-byte aligned); later loads and stores stay after it."""
    return _load_acquire(addr)


@njit(types.void(types.intp, types.uint64), cache=True)
def store_release(addr, value):
    """Store ``value`` at ``addr`` (8-byte aligned); earlier loads and stores stay before."""
    _store_release(addr, value)


@njit(types.void(), cache=True)
def fence():
    """A full (store→load included) fence: the doorbell's Dekker handshake needs it."""
    _fence_seq_cst()


def address(mv: memoryview) -> int:
    """The address of a writable buffer's first byte.  The ctypes object (and the buffer
    export it holds) is dropped at once: the caller keeps ``mv`` itself, which keeps the
    mapping from being closed or moved while the address is in use."""
    return ctypes.addressof(ctypes.c_char.from_buffer(mv))


class Words:
    """64-bit words of shared memory, indexed like ``memoryview.cast("Q")``, whose reads
    are acquire loads and writes release stores.  The ring code uses it where the x86
    path uses the plain cast view, so both modes run the same ring code."""

    __slots__ = ("_mv", "_addrs")

    def __init__(self, mv: memoryview) -> None:
        if len(mv) % 8:
            raise ValueError(f"a Words view needs a multiple of 8 bytes, not {len(mv)}")
        addr = address(mv)
        if addr % 8:  # (an unaligned atomic faults on aarch64, or is not atomic)
            raise ValueError(f"shared words must be 8-byte aligned (address {addr:#x})")
        self._mv = mv  # holds the buffer export: the mapping cannot close under us
        # one address per word: tuple indexing checks bounds for free, and a released
        # view (no addresses) raises IndexError instead of touching unmapped memory
        self._addrs = tuple(range(addr, addr + len(mv), 8))

    def __getitem__(self, i: int) -> int:
        return load_acquire(self._addrs[i])

    def __setitem__(self, i: int, value: int) -> None:
        store_release(self._addrs[i], value)

    def __len__(self) -> int:
        return len(self._addrs)

    def release(self) -> None:
        self._addrs = ()
        self._mv.release()
