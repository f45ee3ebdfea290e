"""Driver-side leases: default-shaped tasks go straight to leased workers.

Data flow::

    f.remote() ─▶ DirectTasks.submit ─┬─ a lease has room ─▶ EXEC on the lease's d2w ring ─▶ worker
                                      ├─ leases full ───────▶ local queue (refilled as results come)
                                      └─ too few leases ────▶ the node's path, flagged "lease the
                                                              worker to me when this task is done"
    worker ─▶ w2d ring: OBJ… DONE_D / RETURN_D / EXPIRED ─▶ Client ─▶ on_done / on_returned / …
    node   ─▶ LEASE (grant) / LEASE_LOST (worker died)  ─▶ on_lease / on_lost

The node still owns resource accounting: a lease is one worker plus one CPU.  It is born
from a flagged task the node ran (the worker that finished it stays with the driver,
still holding that task's CPU, so an idle worker is never held on spec) and given back
by the worker when it has had no direct task for ``LEASE_IDLE`` seconds.  What this saves is the node's two hops and its Python work on
every task: a round trip is driver → worker → driver.

Only tasks the node would not need to know about go direct: submitted by the driver,
resources exactly ``{"CPU": 1}``, default strategy, no ObjectRef pickled inside the
arguments, and every top-level ref argument already resolved here (and not an error).
Everything else takes the node's path unchanged.

Under MPI (``spill_long``) the node must also see every task that is worth moving to
another rank: this driver learns each function's mean run time (its workers time its
direct tasks), and once that reaches the spill threshold the function's tasks take the
node's path, those queued here too.  Shorter tasks would only slow down by moving, so
they keep the direct path.
"""

from __future__ import annotations

import collections
import functools
import os
import pickle
import signal
import threading

from . import exceptions as exc
from . import protocol as P
from .cluster import running_mean
from .rings import Doorbell, Ring, ring_bytes
from .serialization import ERROR

DEFAULT_SHAPE = (("CPU", 1.0),)
RUN_WEIGHT = 0.25  # weight of the newest run time in a function's moving mean
SLOT_HEADER = 128  # [0:8] worker doorbell flag, [64:72] direct-task cancel word


def slot_bytes(cap: int) -> int:
    return SLOT_HEADER + 2 * ring_bytes(cap)


def slot_rings(mailbox, slot: int, cap: int) -> tuple[Ring, Ring]:
    """(w2d, d2w) rings of a mailbox slot."""
    base = slot * slot_bytes(cap)
    return (Ring(mailbox, base + SLOT_HEADER, cap),
            Ring(mailbox, base + SLOT_HEADER + ring_bytes(cap), cap))


def _locked(method):
    """Driver threads submit concurrently, and results arrive on whichever thread
    pumps: one re-entrant lock keeps the leases' single-producer rings single."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)
    return run


class Lease:
    __slots__ = ("wid", "epoch", "slot", "pid", "ring", "bell", "inflight", "fids", "paused")

    def __init__(self, wid: int, epoch: int, slot: int, pid: int, ring: Ring,
                 bell: Doorbell) -> None:
        self.wid = wid
        self.epoch = epoch
        self.slot = slot
        self.pid = pid
        self.ring = ring  # d2w: we produce
        self.bell = bell  # the worker's doorbell
        self.inflight: dict[int, list] = {}
        self.fids: set[int] = set()
        self.paused = False  # it handed tasks back (its task blocks): none until it ends


class DirectTasks:
    """The driver's leases and its queue of direct tasks (driver process only)."""

    def __init__(self, client, mailbox, cap: int, slot_efds: list[int], max_leases: int,
                 depth: int, spill_long: float = 0.0) -> None:
        self.client = client
        self.lock = threading.RLock()
        self.mailbox = mailbox
        self.cap = cap
        self.slot_efds = slot_efds
        self.max_leases = max(1, max_leases)
        self.depth = max(1, depth)
        self.leases: dict[int, Lease] = {}
        self.queue: collections.deque[list] = collections.deque()
        self.records: dict[int, list] = {}  # tid -> [tid, spec, deps, keep, wid|None]
        # Return ids of direct tasks, by what the node knows of them:
        self.pending: dict[int, int] = {}  # oid -> tid: value not here yet
        self.dropped: set[int] = set()  # pending, and its last ref here already died
        self.promised: set[int] = set()  # pending, and the node holds a PROMISE for it
        self.local_only: set[int] = set()  # value here, came direct: node never saw it
        self.flagged: set[int] = set()  # first return ids of tasks sent to become leases
        # first return id -> wid: a flagged task now running on the lease it created (it
        # counts as that lease's work until its value arrives)
        self.seeding: dict[int, int] = {}
        self.expired: set[int] = set()  # epochs that ended before their grant was read
        self.blobs: dict[int, bytes] = {}  # fid -> cloudpickled function
        # > 0 under MPI: functions whose tasks run this long (seconds, on average) go by
        # the node, which may move them to other ranks
        self.spill_long = spill_long
        self.run_s: dict[int, tuple[int, float]] = {}  # fid -> (runs, mean run time)
        self.long_fids: set[int] = set()

    # ------------------------------------------------------------------ submit
    @_locked
    def submit(self, spec: tuple, deps: tuple, keep) -> bool | None:
        """Run a task on a lease.  False: take the node's path; None: the node's path,
        flagged so that its worker becomes a lease when the task is done."""
        if self.long_fids and spec[P.S_FID] in self.long_fids:
            return False  # worth moving to another rank: the node decides
        tid = spec[P.S_TID]
        rec = [tid, spec, deps, keep, None]
        self.records[tid] = rec
        for i in range(spec[P.S_NRET]):
            self.pending[tid + 1 + i] = tid
        if self.queue or not self._place(rec):
            usable = any(not lease.paused for lease in self.leases.values())
            if len(self.leases) + len(self.flagged) < self.max_leases or not (
                    usable or self.flagged):
                # no room: the node runs it, and (room for one more lease) leases us
                # the worker it starts on
                self._forget_rec(rec)
                return self._node_path(spec)
            self.queue.append(rec)  # leases (or grants on their way) will take it
            # leases full: take in finished results (and refill) without waiting, and
            # keep doing so in the background while this thread does something else
            self.client.poll_nowait()
            self.client.ensure_background_pump()
        return True

    def _forget_rec(self, rec: list) -> None:
        tid = rec[0]
        self.records.pop(tid, None)
        for i in range(rec[1][P.S_NRET]):
            self.pending.pop(tid + 1 + i, None)

    def _node_path(self, spec: tuple) -> bool | None:
        if len(self.leases) + len(self.flagged) >= self.max_leases:
            return False
        self.flagged.add(spec[P.S_TID] + 1)
        return None

    def _place(self, rec: list) -> bool:
        best = None
        for lease in self.leases.values():
            n = len(lease.inflight)
            if n < self.depth and not lease.paused and (best is None or n < len(best.inflight)):
                best = lease
                if n == 0:
                    break
        if best is None:
            return False
        if best.inflight and len(self.queue) < len(self.leases) + len(self.flagged):
            # queue behind a running task only with a real backlog: a short queue waits
            # for a free lease (or one still being granted) instead of for a long task
            return False
        tid, spec, deps = rec[0], rec[1], rec[2]
        fid = spec[P.S_FID]
        fblob = None
        if fid not in best.fids:
            fblob = self.blobs.get(fid)
            best.fids.add(fid)
        msg = (P.EXEC, tid, fid, fblob, spec[P.S_NAME], spec[P.S_ARGS], deps,
               spec[P.S_NRET], (), spec[P.S_RETRY_EXC], 0, best.epoch)
        frame = pickle.dumps([msg], protocol=5)
        if len(frame) > self.cap // 4:  # a big function or arguments: the node's rings
            if fblob is not None:        # fragment and queue without limit
                best.fids.discard(fid)
            self._to_node(rec)
            return True
        if best.ring.free_bytes() < len(frame) + 64 or best.ring.try_push(frame) != len(frame):
            if fblob is not None:
                best.fids.discard(fid)
            return False
        best.bell.ring()
        rec[4] = best.wid
        best.inflight[tid] = rec
        return True

    @_locked
    def refill(self) -> None:
        self._refill()

    def _refill(self) -> None:
        q = self.queue
        while q:
            if not self._place(q[0]):
                break
            q.popleft()  # (_place never touches the queue itself)
        if q and not self.flagged and all(lease.paused for lease in self.leases.values()):
            # no lease to run them (none left, or all wait in get, maybe for these very
            # tasks) and none coming: the node takes over (it starts workers as needed)
            while q:
                self._to_node(q.popleft())

    # ------------------------------------------------------------------ events
    @_locked
    def on_lease(self, wid: int, epoch: int, slot: int, pid: int, first_oid: int) -> None:
        # still flagged = the task that created the lease is running there; if its value
        # came first (rings are read in no fixed order), the lease is free already
        seeding = first_oid in self.flagged
        self.flagged.discard(first_oid)
        if epoch in self.expired:  # it ended (idle) before we even read the grant
            self.expired.discard(epoch)
            return
        w2d, d2w = slot_rings(self.mailbox, slot, self.cap)
        w2d.release()  # the client polls the slot's w2d ring since the worker started
        bell = Doorbell(self.slot_efds[slot], self.mailbox, slot * slot_bytes(self.cap))
        lease = self.leases[wid] = Lease(wid, epoch, slot, pid, d2w, bell)
        if seeding:
            lease.inflight[first_oid - 1] = None  # busy with the task that created it
            self.seeding[first_oid] = wid
        self._refill()

    @_locked
    def on_expired(self, wid: int, epoch: int) -> None:
        lease = self.leases.get(wid)
        if lease is not None and lease.epoch == epoch:
            del self.leases[wid]
            # anything still in flight there comes back as RETURN_D (bounced) or DONE_D
        elif lease is None or lease.epoch < epoch:
            self.expired.add(epoch)  # its grant is still on the way
        self._refill()

    @_locked
    def on_resumed(self, wid: int, epoch: int) -> None:
        lease = self.leases.get(wid)
        if lease is not None and lease.epoch == epoch:
            lease.paused = False
            self._refill()

    @_locked
    def on_lost(self, wid: int, epoch: int, reason: str) -> None:
        lease = self.leases.get(wid)
        if lease is None or lease.epoch != epoch:
            return
        del self.leases[wid]
        for tid, rec in list(lease.inflight.items()):
            if rec is None:  # the node's own task that created the lease: node retries
                self.seeding.pop(tid + 1, None)
                continue
            self.records.pop(tid, None)
            spec = rec[1]
            if rec[3] == "cancelled":
                self._store_error(spec, exc.TaskCancelledError(P.id_hex(tid)))
            elif spec[P.S_RETRIES] > 0:
                spec = spec[:P.S_RETRIES] + (spec[P.S_RETRIES] - 1,) + spec[P.S_RETRIES + 1:]
                rec[1] = spec
                self._to_node(rec)
            else:
                self._store_error(spec, exc.WorkerCrashedError(
                    f"the worker running task {spec[P.S_NAME]} died: {reason}; "
                    f"retries exhausted (max_retries=0)"))
        self._refill()

    @_locked
    def on_done(self, tid: int, retryable: bool, payload, via_node: bool,
                run_s: float = 0.0) -> None:
        """A direct task ended, after running ``run_s`` seconds.  Its values came just
        before (direct), or come from the node (``via_node``: arena values and values
        holding refs, which the node must register first), or not at all (``retryable``
        error: retry or give up here)."""
        rec = self.records.pop(tid, None)
        if rec is None:
            return
        lease = self.leases.get(rec[4])
        spec = rec[1]
        if lease is not None:
            lease.inflight.pop(tid, None)
            lease.paused = False
        if self.spill_long and run_s:
            self._timed(spec[P.S_FID], run_s)
        if retryable and spec[P.S_RETRIES] > 0 and rec[3] != "cancelled":
            rec[1] = spec[:P.S_RETRIES] + (spec[P.S_RETRIES] - 1,) + spec[P.S_RETRIES + 1:]
            self._to_node(rec)
        elif retryable:  # retries used up: the error stands
            for i in range(spec[P.S_NRET]):
                self._direct_value(tid + 1 + i, ERROR, payload, deliver=True)
        elif not via_node:
            for i in range(spec[P.S_NRET]):
                self.pending.pop(tid + 1 + i, None)
        self._refill()

    @_locked
    def on_no_lease(self, first_oid: int) -> None:
        """A task sent to become a lease runs without one (the node said so)."""
        self._unflag(first_oid)

    def _unflag(self, first_oid: int) -> None:
        if first_oid in self.flagged:
            self.flagged.discard(first_oid)
            if self.queue:  # what waited for that lease may have to go by the node
                self._refill()

    @_locked
    def on_node_value(self, oid: int) -> bool:
        """The node sent a value: True when this process must now release its hold."""
        self._unflag(oid)  # that task ended; its worker may not become a lease
        wid = self.seeding.pop(oid, None)
        if wid is not None:  # the lease it created is free for our tasks now
            lease = self.leases.get(wid)
            if lease is not None:
                lease.inflight.pop(oid - 1, None)
                self._refill()
        if self.pending.pop(oid, None) is not None:
            self.promised.discard(oid)
        if oid in self.dropped:
            self.dropped.discard(oid)
            return True
        return False

    @_locked
    def on_returned(self, tids, blocked: bool) -> None:
        """Tasks a worker handed back unstarted: it blocks in get (pause its lease until
        its running task ends), or their lease had already ended."""
        for tid in reversed(list(tids)):
            rec = self.records.get(tid)
            if rec is None:
                continue
            lease = self.leases.get(rec[4])
            if lease is not None:
                lease.inflight.pop(tid, None)
                if blocked:
                    lease.paused = True
                else:  # bounced for a stale epoch: that lease is over
                    self.leases.pop(lease.wid, None)
                    self._requeue_all(lease)
            rec[4] = None
            self.queue.appendleft(rec)
        self._refill()

    def _requeue_all(self, lease: Lease) -> None:
        for rec in lease.inflight.values():
            if rec is not None:
                rec[4] = None
                self.queue.appendleft(rec)
        lease.inflight.clear()

    @_locked
    def on_direct_value(self, oid: int, kind: int, payload, deliver: bool = False) -> None:
        self._direct_value(oid, kind, payload, deliver)

    def _direct_value(self, oid: int, kind: int, payload, deliver: bool = False) -> None:
        """A value came straight from a worker (or was decided here): the node never
        registered it, unless a PROMISE made it wait for it."""
        client = self.client
        self.pending.pop(oid, None)
        if oid in self.promised:
            self.promised.discard(oid)
            client._pending.append((P.PUT, oid, kind, payload, ()))  # seal the promise
            if oid in self.dropped:
                self.dropped.discard(oid)
                client._decref.append(oid)
            client._flush_soon()  # someone may be waiting for it at the node
        elif oid in self.dropped:
            self.dropped.discard(oid)
        elif oid in client._refs:
            self.local_only.add(oid)
        if deliver:
            client.store_obj(oid, kind, payload)

    @_locked
    def forget(self, oid: int) -> bool:
        """The last ref here died.  True: do not send a release now (the node never
        knew the object, or learns of it later and is released then)."""
        if oid in self.pending:
            self.dropped.add(oid)
            return True
        if oid in self.local_only:
            self.local_only.discard(oid)
            return True
        return False

    def _timed(self, fid: int, took: float) -> None:
        """Learn how long ``fid``'s tasks run; when that reaches the spill threshold, its
        tasks (the ones queued here too) go by the node from now on."""
        n, mean = self.run_s.get(fid, (0, 0.0))
        mean = running_mean(n + 1, mean, took, RUN_WEIGHT)
        self.run_s[fid] = (n + 1, mean)
        if mean >= self.spill_long:
            self.long_fids.add(fid)
            keep = collections.deque()
            for queued in self.queue:
                if queued[1][P.S_FID] == fid:
                    self._to_node(queued)
                else:
                    keep.append(queued)
            self.queue = keep

    # ------------------------------------------------------------------ cancel
    @_locked
    def cancel(self, tid: int, force: bool) -> bool:
        rec = self.records.get(tid)
        if rec is None:
            return False
        if rec[4] is None:  # still queued here
            try:
                self.queue.remove(rec)
            except ValueError:
                pass
            self.records.pop(tid, None)
            self._store_error(rec[1], exc.TaskCancelledError(P.id_hex(tid)))
            return True
        lease = self.leases.get(rec[4])
        if lease is None:
            return True  # its lease is ending; the task comes back or finishes
        rec[3] = "cancelled"
        if force:
            try:
                os.kill(lease.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return True
        base = lease.slot * slot_bytes(self.cap)
        self.mailbox[base + 64 : base + 72] = (tid & (2**63 - 1)).to_bytes(8, "little")
        frame = pickle.dumps([(P.DROP, tid)], protocol=5)
        lease.ring.push(frame, wake=lease.bell.force)
        lease.bell.ring()
        try:
            os.kill(lease.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass
        return True

    # ------------------------------------------------------------------ helpers
    def _to_node(self, rec: list) -> None:
        """Hand a task to the node's path (no lease, retry, or bounce without leases)."""
        tid, spec = rec[0], rec[1]
        self.records.pop(tid, None)
        for i in range(spec[P.S_NRET]):
            # SUBMIT registers the returns now: they are the node's objects from here on
            # (its worker may hand their values straight here; they are not direct
            # values).  One dropped here already is released when its value comes (see
            # on_node_value).
            self.promised.discard(tid + 1 + i)
            self.pending.pop(tid + 1 + i, None)
        # its arguments may be values only this process has seen (direct results)
        self.client.publish([oid for _pos, oid in spec[P.S_DEPS]])
        self.client.send([(P.SUBMIT, spec)])

    def _store_error(self, spec: tuple, err: BaseException) -> None:
        payload = pickle.dumps(err, protocol=5)
        tid = spec[P.S_TID]
        for i in range(spec[P.S_NRET]):
            self._direct_value(tid + 1 + i, ERROR, payload, deliver=True)

    def close(self) -> None:
        for lease in self.leases.values():
            lease.ring.release()
        self.leases.clear()
