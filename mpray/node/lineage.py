"""Lineage: the tasks that made the values in the store, kept so that a value whose
spill file is lost is made again by running its task again (pure: a mixin of
``scheduler.Scheduler``).

Data flow::

    a node task ends well with an ARENA result ─▶ lineage[tid] = its spec, while any
      of its results lives (max_retries=0: kept as the reason it cannot run again)
    a restore fails (spill file missing or short) ─▶ _lost: the value is PENDING again
      lineage here ─▶ _rerun: the task runs again; its other results and their holders
        are untouched; its arguments on disk are read back (lost ones made again too)
      none here ─▶ LineageAsk to its owner (a leased task's spec is its owner's,
        owner/lineage.py) ─▶ LineageIs(oid, spec | None, reason) ─▶ _rerun, or the error
    the task ends ─▶ seal: subscribers and waiting tasks get the value as before
    errors (sealed as the value): ObjectReconstructionFailedError (not retryable,
      retries used up, an argument freed, lineage forgotten), ObjectLostError (no task
      made it: a put)

Lineage beyond ``max_lineage_bytes`` moves to the control store, the oldest first
(``LINEAGE`` records, the ``lineage`` table: read back with ``LineageLoad`` when one of
its values is lost); with the store off it is forgotten (a lost value is then an error
that says so).
"""

from __future__ import annotations

import pickle

from .. import exceptions as exc
from .. import protocol as P
from ..control.recorder import LINEAGE
from ..store.serialization import ERROR, INLINE
from ..states import O, OBJ_TRANSITIONS, _move

ENTRY_BYTES = 256  # what an entry costs beside its arguments (an estimate)
FORGOTTEN = "its lineage was forgotten (max_lineage_bytes, and no control store)"
STORED = "its lineage is in the control store"  # (a spec moved there: read it back)


class LineageBook:
    """Lineage of the Scheduler (uses its objs, tasks, workers, agent)."""

    def _init_lineage(self, max_bytes: int) -> None:
        # tid -> [spec, or why it cannot run again; owner; results alive; bytes]
        self.lineage: dict[int, list] = {}
        self.lineage_of: dict[int, int] = {}  # result oid -> tid
        self.lineage_bytes = 0
        self.max_lineage_bytes = max_bytes
        self.reruns: dict[int, int] = {}  # tid -> times it ran again
        self.asked: dict[int, str] = {}  # oid -> how it was lost (its owner was asked)
        self.loading: dict[int, tuple] = {}  # oid -> (tid, owner, how it was lost)
        self.lineage_store = False  # specs past the bound go to the control store

    def _keep_lineage(self, t, oid: int) -> None:
        """``oid``, an ARENA result of node task ``t``, was sealed."""
        spec = t.spec
        if t.actor is not None or t.creating or spec.stream is not None \
                or t.worker == self.agent:
            return  # (an actor's state is not remade so; another rank made it)
        if oid in self.lineage_of or oid not in self.objs:
            return  # (counted already: a rerun's result; or freed at once: nobody holds it)
        e = self.lineage.get(t.key)
        if e is None:
            keep = spec if spec.retries else "its task is not retryable (max_retries=0)"
            size = ENTRY_BYTES + (len(spec.args) if spec.retries else 0)
            e = self.lineage[t.key] = [keep, t.owner, 0, size]
            self.lineage_bytes += size
            if self.lineage_bytes > self.max_lineage_bytes:
                self._forget_oldest()
        e[2] += 1
        self.lineage_of[oid] = t.key

    def _forget_oldest(self) -> None:
        """Past the bound: the oldest specs go to the control store (or are forgotten)."""
        for tid, e in self.lineage.items():
            if self.lineage_bytes <= self.max_lineage_bytes // 2:
                return
            if type(e[0]) is not str:
                if self.lineage_store:
                    self.records.append((LINEAGE, tid, e[1], pickle.dumps(tuple(e[0]), 5)))
                e[0] = STORED if self.lineage_store else FORGOTTEN
                self.lineage_bytes -= e[3] - ENTRY_BYTES
                e[3] = ENTRY_BYTES

    def _lineage_gone(self, oid: int) -> None:
        """A result with lineage was freed."""
        tid = self.lineage_of.pop(oid, None)
        if tid is not None:
            e = self.lineage[tid]
            e[2] -= 1
            if not e[2]:
                del self.lineage[tid]
                self.lineage_bytes -= e[3]
                self.reruns.pop(tid, None)

    # ------------------------------------------------------------------ losing
    def _lost(self, o, why: str) -> None:
        """``o``'s value is gone (its range is freed, its copy dropped): PENDING again,
        and made again if its lineage allows."""
        _move(o, O.PENDING, OBJ_TRANSITIONS, "object")
        self.spill_stats["lost"] += 1
        for c in o.contains:  # (the value that held these refs is gone)
            co = self.objs.get(c)
            if co is not None:
                co.contained_in -= 1
                self._maybe_free(co)
        o.kind, o.payload, o.contains = INLINE, None, ()
        tid = self.lineage_of.get(o.key)
        if tid is not None:
            e = self.lineage[tid]
            self._rerun(tid, e[0], e[1], o, why)
        elif not o.remote and (o.owner == 0 or o.owner in self.workers):
            self.asked[o.key] = why
            self._send(o.owner, P.LineageAsk([o.key]))
        else:
            self._fail_lost(o, why, "no lineage of it is kept here (a copy of another "
                            "rank's value, or its owner is gone)")

    def lineage_loaded(self, oid: int, spec) -> None:
        """The loop read a spec back from the control store (None: not there)."""
        tid, owner, why = self.loading.pop(oid)
        o = self.objs.get(oid)
        if o is None or o.state is not O.PENDING:
            return
        if spec is None:
            self._fail_lost(o, why, "its lineage was moved to the control store "
                            "(max_lineage_bytes) and is not there (trimmed: store_max_tasks)")
        else:
            self.spill_stats["lineage_read_back"] += 1
            self._rerun(tid, spec, owner, o, why)

    def lineage_is(self, proc: int, oid: int, spec, reason, stored=None) -> None:
        """The owner's answer to LineageAsk (``stored``: read it from the store)."""
        why = self.asked.pop(oid, None)
        o = self.objs.get(oid)
        if why is None or o is None or o.state is not O.PENDING:
            return
        if stored is not None:
            self._rerun(stored, STORED, proc, o, why)
        elif spec is None:
            self._fail_lost(o, why, reason)
        else:
            self._rerun(spec.tid, spec, proc, o, why)

    def _rerun(self, tid: int, spec, owner: int, o, why: str) -> None:
        if spec is STORED:  # (its spec is read back first: lineage_loaded)
            self.loading[o.key] = (tid, owner, why)
            self.actions.append(P.LineageLoad(tid, o.key))
            return
        if type(spec) is str:
            self._fail_lost(o, why, spec)
            return
        n = self.reruns.get(tid, 0)
        if spec.retries >= 0 and n >= spec.retries:
            self._fail_lost(o, why, f"its task ran again {n} times already "
                            f"(max_retries={spec.retries})")
            return
        if tid in self.tasks:
            return  # (running again already: another of its results was lost)
        for _pos, dep in spec.deps:
            if dep not in self.objs:
                self._fail_lost(o, why, f"an argument of its task ({P.id_hex(dep)}) was "
                                "freed: keep a ref to it to keep it remakeable")
                return
        self.reruns[tid] = n + 1
        self.spill_stats["remade"] += 1
        self.submit(owner, spec._replace(lease=False) if spec.lease else spec, rerun=True)

    def _fail_lost(self, o, why: str, reason) -> None:
        """The value cannot be made again: its error is its value from now on."""
        hexid = P.id_hex(o.key)
        if reason is None:
            err = exc.ObjectLostError(hexid, f"its value {why}, and it was put (no task "
                                      "made it), so it cannot be made again")
        else:
            err = exc.ObjectReconstructionFailedError(
                hexid, f"its value {why}, and it cannot be made again: {reason}")
        self._lineage_gone(o.key)
        self.seal(o.owner, o.key, ERROR, self._error_payload(err))
