"""The mailbox: one shared region, made by the driver before it forks the node, that
lets the driver and a worker the node forked talk with no node in between.

Layout: ``slots`` slots, each ``slot_bytes(cap)``: a header (``[0:8]`` the worker's
doorbell flag, ``[64:72]`` the cancel word of a direct task) and two rings, worker ->
driver (``w2d``) and driver -> worker (``d2w``).  The driver also makes one eventfd per
slot: the doorbell of the worker in that slot, rung by the node and by the driver::

    driver ── d2w ring (Exec, ACall, Drop) ──▶ worker in slot k
           ◀── w2d ring (Obj, DoneD, ADoneD, ReturnD, Expired, Resumed) ──

Lease channels, a second region made at the same time: ``channels`` pairs of rings
(owner -> worker ``o2w``, worker -> owner ``w2o``) that the node lends a worker leasing
another worker (every process is an owner, not only the driver); both wake each other
through their slots' doorbells::

    worker A (owner) ── o2w (Exec, Drop) ──▶ worker B (leased to A)
                     ◀── w2o (DoneD, ReturnD, Expired, Resumed) ──
"""

from __future__ import annotations

from .rings import Doorbell, Ring, ring_bytes

SLOT_HEADER = 128  # [0:8] worker doorbell flag, [64:72] direct-task cancel word
CANCEL_WORD = 64


def slot_bytes(cap: int) -> int:
    return SLOT_HEADER + 2 * ring_bytes(cap)


def slot_rings(mailbox, slot: int, cap: int) -> tuple[Ring, Ring]:
    """(w2d, d2w) rings of a mailbox slot."""
    base = slot * slot_bytes(cap)
    return (Ring(mailbox, base + SLOT_HEADER, cap),
            Ring(mailbox, base + SLOT_HEADER + ring_bytes(cap), cap))


def slot_bell(mailbox, slot: int, cap: int, efd: int) -> Doorbell:
    """The doorbell of the worker in that slot."""
    return Doorbell(efd, mailbox, slot * slot_bytes(cap))


def cancel_word(mailbox, slot: int, cap: int) -> memoryview:
    base = slot * slot_bytes(cap) + CANCEL_WORD
    return memoryview(mailbox)[base: base + 8]


def channel_bytes(cap: int) -> int:
    return 2 * ring_bytes(cap)


def channel_rings(channels, c: int, cap: int) -> tuple[Ring, Ring]:
    """(o2w, w2o) rings of lease channel ``c``."""
    base = c * channel_bytes(cap)
    return Ring(channels, base, cap), Ring(channels, base + ring_bytes(cap), cap)
