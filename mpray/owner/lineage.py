"""An owner's part in the node's spilling (node/spill.py, node/lineage.py), a composed
part of the owner machine: which places of values its tasks still read when the node
evicts them, and the specs of its leased tasks whose values went by the node, kept
while refs to those values live here, so that the node can run a task again when its
value's spill file is lost (the node keeps its own tasks' lineage).

Data flow::

    Evict(oids) ─ evict(oids, tasks, calls) ─▶ EvictLocal(oids, busy: read by a task or
      call of ours in flight, whose Exec carries the place) to the shell
    SubmitTask with deps read before an Evict ─ stale(values, deps) ─▶ the node's path
    DoneD(via_node) ─ keep(spec) ─▶ specs[tid], of[oid] for its returns; past
      max_lineage_bytes the oldest ─▶ StoreLineage (the control store) ─▶ STORED
    RefGone(oids) ─ gone(oids) ─▶ a spec goes with the last of its returns here
    LineageAsk(oids) ─ answer(oids) ─▶ [LineageIs(oid, spec | None, reason)] to the node
"""

from __future__ import annotations

import pickle

from .. import protocol as P
from ..store.serialization import ARENA

NOT_RETRYABLE = "its task is not retryable (max_retries=0)"
STORED = "its spec is in the control store"
ENTRY_BYTES = 256  # what an entry costs beside its arguments (an estimate)


class OwnerLineage:
    __slots__ = ("specs", "of", "evictions", "bytes", "max_bytes")

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        # tid -> [spec or why it cannot run (or STORED), returns held here, bytes]
        self.specs: dict[int, list] = {}
        self.of: dict[int, int] = {}  # return oid -> tid
        self.evictions = 0  # Evicts seen (until one comes, no place read can be stale)
        self.bytes = 0
        self.max_bytes = max_bytes

    def evict(self, oids, tasks, calls):
        """The node evicts these values: the shell forgets their places, but for those
        a direct task (queued or in flight) or an actor call (each ``(channel, Call)``)
        of ours still reads."""
        self.evictions += 1
        reading = {oid for rec in tasks for _pos, oid in rec.spec.deps}
        reading.update(oid for _ch, call in calls for _pos, oid in call.spec.deps)
        return P.EvictLocal(oids, tuple(o for o in oids if o in reading))

    @staticmethod
    def stale(values: dict, deps) -> bool:
        """Was an arena value among ``deps`` (read by the shell before the submit event)
        evicted since?  Its place may be reused: the node's path reads it back."""
        for _pos, oid, kind, payload in deps:
            if kind == ARENA:
                v = values.get(oid)
                if v is None or v[1] is not payload:
                    return True
        return False

    def keep(self, spec, out: list) -> None:
        """A leased task's values went by the node (arena values, or values holding
        refs): they may be spilled, so its spec is kept while they are held here (past
        the bound the oldest go to the control store: StoreLineage into ``out``)."""
        size = ENTRY_BYTES + (len(spec.args) if spec.retries else 0)
        self.specs[spec.tid] = [spec if spec.retries else NOT_RETRYABLE, spec.nret, size]
        self.bytes += size
        for oid in P.return_ids(spec.tid, spec.nret):
            self.of[oid] = spec.tid
        if self.bytes > self.max_bytes:
            for tid, e in self.specs.items():
                if self.bytes <= self.max_bytes // 2:
                    break
                if type(e[0]) is not str:
                    out.append(P.StoreLineage(tid, pickle.dumps(tuple(e[0]), 5)))
                    e[0] = STORED
                    self.bytes -= e[2] - ENTRY_BYTES
                    e[2] = ENTRY_BYTES

    def gone(self, oids) -> None:
        of, specs = self.of, self.specs
        for oid in oids:
            tid = of.pop(oid, None)
            if tid is not None:
                e = specs[tid]
                e[1] -= 1
                if not e[1]:
                    del specs[tid]
                    self.bytes -= e[2]

    def answer(self, oids) -> list:
        out = []
        for oid in oids:
            e = self.specs.get(self.of.get(oid))
            if e is None:  # (a put of ours: no task made it)
                out.append(P.LineageIs(oid, None, None))
            elif e[0] is STORED:  # (the node reads it back from the store)
                out.append(P.LineageIs(oid, None, None, self.of[oid]))
            elif type(e[0]) is str:
                out.append(P.LineageIs(oid, None, e[0]))
            else:
                out.append(P.LineageIs(oid, e[0], None))
        return out
