"""The driver's client: the owner's I/O shell (``owner_shell``) on the driver's rings.

Data flow::

    user threads ─ submit / cancel / ref gone ─┐
    pump: the node's down ring, every mailbox ─┴─▶ events ─▶ Owner.handle ─▶ instructions
          slot's w2d ring (leased workers,                               │
          actors)                            ToSlot ─▶ the slot's d2w ring + its bell

The driver's leases and direct actor calls use the mailbox slots' rings (``mailbox``):
the node tells it which worker writes to which slot (``Slot``) and when that worker is
gone (``SlotFree``, after which the slot's last frames are read and it is not polled).
"""

from __future__ import annotations

from .. import protocol as P
from .client import Client
from ..transport.mailbox import slot_bell, slot_rings
from .machine import Owner
from .shell import OwnerShell


class DriverClient(OwnerShell, Client):
    def __init__(self, *args, mailbox=None, mailbox_cap: int = 0, slot_efds=(),
                 max_leases: int = 1, lease_depth: int = 0, spill_long: float = 0.0,
                 first_spread: int = 0, max_lineage_bytes: int = 1 << 30, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._slot_efds = list(slot_efds)
        self._w2d: dict[int, object] = {}  # slot -> ring it polls (worker -> driver)
        owner = Owner(self.proc, self.rank, self._values, max_leases=max_leases,
                      depth=lease_depth or 1, ring_cap=mailbox_cap or (1 << 18),
                      mailbox=bool(mailbox is not None and lease_depth),
                      spill_long=spill_long, first_spread=first_spread,
                      max_lineage_bytes=max_lineage_bytes)
        self._init_owner(owner, mailbox, mailbox_cap)

    def _handlers(self) -> dict:
        on = self._owner_handlers(super()._handlers())
        on[P.Slot.OP] = self._on_slot
        on[P.SlotFree.OP] = self._on_slot_free
        return on

    def _ring_out(self, slot: int) -> tuple:
        got = self._out.get(slot)  # (slot -> (ring, bell) to the worker there)
        if got is None:
            w2d, d2w = slot_rings(self._mailbox, slot, self._cap)
            w2d.release()  # (the slot's w2d ring is polled since its Slot message)
            got = self._out[slot] = (d2w, slot_bell(self._mailbox, slot, self._cap,
                                                    self._slot_efds[slot]))
        return got

    # ------------------------------------------------------------------ rings
    def _on_slot(self, m) -> None:
        """A worker now writes to the driver through mailbox slot ``m.slot``."""
        w2d, d2w = slot_rings(self._mailbox, m.slot, self._cap)
        d2w.release()
        old = self._w2d.pop(m.slot, None)
        if old is not None:
            old.release()
        self._w2d[m.slot] = w2d

    def _on_slot_free(self, m) -> None:
        """That worker is gone: take what it wrote, stop polling the slot, and tell the
        machine (after those last frames: tasks it bounced are requeued, not lost)."""
        ring = self._w2d.pop(m.slot, None)
        if ring is not None:
            self._drain_frames(ring.pop_all())
            ring.release()
        self._events.append(m)

    def _drain(self) -> bool:
        got = False
        if self._w2d:  # (workers' frames never add or remove slots: no copy needed)
            # (an Obj on a worker's ring is a node task's value it handed here itself; a
            # leased task's values come in its DoneD)
            for ring in self._w2d.values():
                frames = ring.pop_all()
                if frames:
                    got = True
                    self._drain_frames(frames)
        frames = self._down.pop_all()
        if frames:
            got = True
            self._drain_frames(frames)
        if self._events or self._gone:
            self.run_owner()
        return got

    def _has_data(self) -> bool:
        if self._down.has_data():
            return True
        for ring in self._w2d.values():
            if ring.has_data():
                return True
        return False

    def close_rings(self) -> None:
        for r in self._w2d.values():
            r.release()
        self._w2d.clear()
        for ring, _bell in self._out.values():
            ring.release()
        self._out.clear()
