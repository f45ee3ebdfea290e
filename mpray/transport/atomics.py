"""Which memory ordering the rings and doorbells use: ``tso`` or ``portable``.

Data flow::

    init(ring_atomics=...) / MPRAY_RING_ATOMICS ──▶ config.resolve (auto|tso|portable)
        ──▶ configure(value) in the driver, before any ring exists
              select(value, machine) ─▶ "tso" | "portable"
              portable: jit() imports atomics_numba (numba) now, or RuntimeError
        ──▶ _mode, inherited by the node and the workers (all forked from the driver)
    Ring(..., mode=None) / Doorbell(..., mode=None) ──▶ pick(mode) ──▶ this process's mode

* ``tso``: plain 64-bit loads and stores of memoryviews, and ``_barrier()``'s locked
  instruction as the full fence.  Correct only on x86-64, whose total store order keeps
  store→store, load→load and load→store order (the fence supplies store→load).
* ``portable``: acquire loads, release stores and a seq_cst fence compiled by numba
  (``atomics_numba``): correct on weakly ordered CPUs (aarch64, ppc64le, riscv64), and
  forced on x86-64 to test that path.

This module imports nothing heavy: on x86-64 ``import mpray`` and ``init()`` never
import numba unless ``portable`` is asked for.
"""

from __future__ import annotations

import os

__all__ = ["ENV", "CHOICES", "select", "configure", "mode", "pick", "jit"]

ENV = "MPRAY_RING_ATOMICS"
CHOICES = ("auto", "tso", "portable")
_TSO_MACHINES = ("x86_64", "amd64")  # os.uname().machine, lowercased

_mode: str | None = None  # this process's mode, fixed at first use (or by configure)
_jit = None  # the atomics_numba module, once loaded


def _machine() -> str:
    return os.uname().machine


def select(value: str | None, machine: str | None = None) -> str:
    """The mode (``tso`` or ``portable``) for a setting's value on ``machine`` (default:
    this one).  Refuses an unknown value, and ``tso`` where the CPU does not keep
    x86-64's store order."""
    machine = machine or _machine()
    v = (value or "auto").strip().lower()
    if v not in CHOICES:
        raise ValueError(f"ring_atomics ({ENV}) must be one of {', '.join(CHOICES)}, "
                         f"not {value!r}")
    tso_cpu = machine.lower() in _TSO_MACHINES
    if v == "auto":
        return "tso" if tso_cpu else "portable"
    if v == "tso" and not tso_cpu:
        raise ValueError(
            f"ring_atomics=tso ({ENV}) relies on x86-64's total store order, but this "
            f"machine is {machine}: without that order a ring's consumer could read a "
            f"frame before its bytes arrive; use auto or portable")
    return v


def jit(machine: str | None = None):
    """The numba-compiled atomics (imported, and compiled or loaded from numba's cache,
    on first call).  Without numba, a RuntimeError that says why mpray cannot run."""
    global _jit
    if _jit is None:
        try:
            from . import atomics_numba
        except ImportError as e:
            raise RuntimeError(_no_numba_message(machine or _machine(), e)) from e
        _jit = atomics_numba
    return _jit


def _no_numba_message(machine: str, err: BaseException) -> str:
    if machine.lower() in _TSO_MACHINES:
        why = (f"ring_atomics=portable ({ENV}) was asked for; its acquire/release "
               f"atomics are compiled with numba")
    else:
        why = (f"this machine is {machine}: its CPU may reorder memory accesses, so "
               f"mpray's shared-memory rings need acquire/release atomics, which it "
               f"compiles with numba; without them messages between processes could be "
               f"read half-written (silent corruption)")
    return (f"mpray cannot run safely: {why}, and numba cannot be imported ({err}). "
            f"Install numba (pip install numba) in this environment.")


def configure(value: str | None, machine: str | None = None) -> str:
    """Fix this process's mode from the session's setting (``init()`` calls it before
    it makes any ring; the node and workers it forks inherit the mode).  The portable
    mode's numba functions are loaded here, so a missing numba fails ``init()`` early."""
    global _mode
    m = select(value, machine)
    if m == "portable":
        jit(machine)
    _mode = m
    return m


def mode() -> str:
    """This process's mode: set by ``configure``, else chosen at first use from
    ``MPRAY_RING_ATOMICS`` (rings made outside a session, as in tests)."""
    if _mode is None:
        configure(os.environ.get(ENV))
    return _mode


def pick(explicit: str | None = None) -> str:
    """The mode of one ring or doorbell: ``explicit`` (a setting's value, checked as
    ``select`` does, so tests can build both kinds in one process), else this
    process's mode."""
    if explicit is None:
        return mode()
    m = select(explicit)
    if m == "portable":
        jit()
    return m
