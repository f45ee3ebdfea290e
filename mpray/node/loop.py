"""The node process: a thin I/O loop around the pure ``Scheduler``.

Data flow::

            driver                      node (this loop, one thread)                workers
    up ring ─────────▶ ┐                                                  ┌◀──────── up rings
                       ├─ pop_all ─▶ unpickle ─▶ Scheduler events ─▶ out ─┤
    down ring ◀─────── ┘     ▲                        │                   └────────▶ down rings
                             │                        ▼
                  doorbell (eventfd) + SIGCHLD    actions: fork worker / kill / interrupt / warn

The node is forked from the driver at ``init()`` (so it is warm: numpy, cloudpickle and
mpray are imported) and forks every worker itself.  It sleeps in ``poll()`` on its
doorbell when there is nothing to do, so an idle session costs no CPU.  It watches the
driver through a pidfd and exits (killing its workers) when the driver is gone, so a
SIGKILLed driver leaves nothing behind.
"""

from __future__ import annotations

import collections
import gc
import os
import signal
import sys
import time
from dataclasses import dataclass

from . import cluster
from .. import protocol as P
from .actor_names import LATER
from ..transport.mailbox import slot_bell, slot_rings
from ..procs import (fork_held, how_it_ended, kill, release_term, remove_mpi_segments,
                     remove_tree, wait_exit)
from ..transport.rings import Doorbell, Outbox, Ring, anonymous_shared, ring_bytes
from .scheduler import Scheduler
from .spill_io import SpillIO
from .store import StoreShell, WORKER, WORKER_EXIT, hold_session

_FLAG_BYTES = 64


@dataclass
class Channel:
    """The node's end of one process's rings."""

    up: Ring
    out: Outbox
    bell: Doorbell
    mem: object = None
    pid: int = 0
    shared_bell: bool = False  # a mailbox slot's eventfd: reused, never closed here


@dataclass
class NodeSetup:
    """Everything the driver creates before forking the node (inherited by fork)."""

    arena: object
    ctrl: object
    node_bell: Doorbell
    driver_bell: Doorbell
    driver_up: Ring
    driver_down: Ring
    resources: dict
    gpu_ids: list
    arena_size: int
    inline_max: int
    worker_ring_bytes: int
    max_workers: int
    idle_timeout: float
    session_dir: str
    pipeline_depth: int = 2
    node_id: str = ""
    node_info: dict | None = None
    mailbox: object = None  # shared with the driver: one worker->driver ring per slot
    mailbox_slots: int = 0
    mailbox_ring_bytes: int = 0
    slot_efds: list | None = None  # one eventfd per slot, created by the driver
    rank: int = 0
    spin_us: int = 0
    agent_rings: tuple | None = None  # under MPI: (up, down) rings to the rank's agent
    agent_mem: object = None  # (the memory they live in)
    channels: object = None  # lease channels (mailbox.channel_rings), made by the driver
    channel_count: int = 0
    spill_long: float = 0.0  # (MPI) owners send tasks this long by the node: may move
    first_spread: int = 0  # (MPI) tasks of a function not timed yet sent by the node
    lease_depth: int = 0  # a worker owner's leases: tasks in flight each, and how many
    max_leases: int = 1
    # the control store and logs (control/): this rank's directory in the session
    node_dir: str = ""
    store: bool = False  # record events (a writer process ingests them)
    store_max_tasks: int = 100_000
    keep_sessions: int = 10
    prune_root: str | None = None  # (rank 0: where finished sessions are pruned)
    spill_dir: str | None = None  # where values go when the arena is full (None: never)
    max_lineage_bytes: int = 1 << 30  # lineage kept to remake lost values (node/lineage.py)


class Node:
    def __init__(self, setup: NodeSetup, driver_pid: int) -> None:
        self.setup = setup
        self.driver_pid = driver_pid
        self.sched = Scheduler(
            setup.resources, setup.gpu_ids, setup.arena_size,
            max_workers=setup.max_workers, idle_timeout=setup.idle_timeout,
            pipeline_depth=setup.pipeline_depth, node_id=setup.node_id,
            channels=setup.channel_count, spill_dir=setup.spill_dir,
            max_lineage_bytes=setup.max_lineage_bytes,
        )
        self.bell = setup.node_bell
        self.spill = SpillIO(setup.spill_dir, setup.arena, self.bell)
        self.channels: dict[int, Channel] = {
            0: Channel(setup.driver_up, Outbox(setup.driver_down), setup.driver_bell)
        }
        if setup.agent_rings is not None:
            from .cluster import AGENT

            up, down = setup.agent_rings
            # the agent polls its ring (it also polls MPI): its doorbell is never waited on
            self.channels[AGENT] = Channel(up, Outbox(down), _NoBell(), shared_bell=True)
        self.pids: dict[int, int] = {}  # pid -> wid
        self.next_wid = 1
        self.running = True
        self._child_exited = False
        self._driver_pidfd = os.pidfd_open(driver_pid)
        self._last_tick = time.monotonic()
        self._ups: list | None = None
        self._backlog: set[int] = set()
        self.free_slots = list(range(setup.mailbox_slots - 1, -1, -1))
        self.slot_of: dict[int, int] = {}  # wid -> mailbox slot
        self.store = StoreShell(self, setup)  # the control store's side of the loop
        self.sched.lineage_store = self.store.on  # (lineage past its bound goes there)
        self._on = self._handlers()

    # ------------------------------------------------------------------ workers
    def start_worker(self) -> None:
        from ..worker.loop import worker_main  # imported here: the node module stays small

        wid = self.next_wid
        self.next_wid += 1
        cap = self.setup.worker_ring_bytes
        mem = anonymous_shared(2 * _FLAG_BYTES + 2 * ring_bytes(cap))
        up = Ring(mem, 2 * _FLAG_BYTES, cap)
        down = Ring(mem, 2 * _FLAG_BYTES + ring_bytes(cap), cap)
        slot = self.free_slots.pop() if self.free_slots else None
        mailbox_rings = None
        if slot is None:
            bell = Doorbell.create(mem, 0)
        else:
            # a mailbox slot: rings to and from the driver, and the slot's eventfd (made
            # by the driver) as the worker's one doorbell, rung by the node and the driver
            cap_d = self.setup.mailbox_ring_bytes
            mailbox_rings = slot_rings(self.setup.mailbox, slot, cap_d)
            bell = slot_bell(self.setup.mailbox, slot, cap_d, self.setup.slot_efds[slot])
        sys.stdout.flush()
        sys.stderr.flush()
        pid = fork_held()
        if pid == 0:  # ---- child
            code = 0
            try:
                release_term()  # (a SIGTERM now ends it: SystemExit, below)
                keep = {self.bell.fd, bell.fd, self.setup.driver_bell.fd}
                for ch in self.channels.values():
                    if ch.bell.fd not in keep and not ch.shared_bell:
                        os.close(ch.bell.fd)  # other workers' private doorbells
                os.close(self._driver_pidfd)
                worker_main(self.setup, wid, os.getppid(), up, down, bell, self.bell, mem,
                            slot, mailbox_rings)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 0
            except BaseException:  # noqa: BLE001 - last resort: report and die
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        if mailbox_rings is not None:
            for r in mailbox_rings:
                r.release()
        self.channels[wid] = Channel(up, Outbox(down), bell, mem, pid, slot is not None)
        self._ups = None
        self.pids[pid] = wid
        if slot is not None:
            self.slot_of[wid] = slot
            self.sched.leasable.add(wid)
            self.sched.out[0].append(P.Slot(slot, wid))
        self.sched.worker_started(wid, time.monotonic())
        self.store.note(WORKER, pid, wid, time.monotonic())

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            wid = self.pids.pop(pid, None)
            if wid is None:
                self.store.reaped(pid, status)  # (the writer?)
                continue
            reason = f"worker pid {pid} {how_it_ended(status)}"
            self.store.note(WORKER_EXIT, pid, reason, time.monotonic())
            self._drop_channel(wid)
            slot = self.slot_of.pop(wid, None)
            if slot is not None:
                # the driver drains what the worker wrote, then stops polling the slot;
                # the slot is reused only after that message, so order is preserved
                self.sched.out[0].append(P.SlotFree(slot))
                self.free_slots.insert(0, slot)
            self.sched.worker_died(wid, reason)

    def _drop_channel(self, wid: int) -> None:
        ch = self.channels.pop(wid, None)
        self._ups = None
        self._backlog.discard(wid)
        if ch is not None:
            # drain what the worker sent before dying (its last PIN/REFS/DONE)
            self._handle(wid, ch.up.pop_all())
            ch.up.release()
            ch.out.ring.release()
            if not ch.shared_bell:
                ch.bell.close()

    # ------------------------------------------------------------------ events
    def _handle(self, proc: int, frames: list[bytes]) -> None:
        on = self._on
        for frame in frames:
            for m in P.decode(frame):
                try:
                    on[m[0]](proc, m)
                except Exception:  # noqa: BLE001 - a bug must be loud, not kill the node
                    import traceback

                    print(f"mpray node (pid {os.getpid()}): internal error handling "
                          f"{m!r:.200} from process {proc}:", file=sys.stderr)
                    traceback.print_exc()

    def _handlers(self) -> dict:
        """Opcode -> handler(proc, msg): every message a node receives (protocol's
        node_in and cluster channels), each an event of the scheduler."""
        s = self.sched

        def done(proc, m):
            if proc in s.workers:
                s.task_done(proc, m.tid, m.status, m.results, m.retryable, m.delivered)

        def put(proc, m):
            if proc == s.agent:
                s.put_fetched(m.oid, m.kind, m.payload, m.contained)
            else:
                s.put(proc, m.oid, m.kind, m.payload, m.contained)

        def query(proc, m):
            reply = self._query(m.what, proc, m.req)
            if reply is not LATER:
                s.out[proc].append(P.Reply(m.req, reply))

        def stop(proc, m):
            self.running = False

        return {
            P.Submit.OP: lambda proc, m: s.submit(proc, m.spec),
            P.Refs.OP: lambda proc, m: s.refs(proc, m.increfs, m.decrefs),
            P.Done.OP: done,
            P.Put.OP: put,
            P.Subscribe.OP: lambda proc, m: s.subscribe(proc, m.oids),
            P.Pin.OP: lambda proc, m: s.pin(proc, m.oids),
            P.Unpin.OP: lambda proc, m: s.unpin(proc, m.oids),
            P.Alloc.OP: lambda proc, m: s.allocate(proc, m.req, m.nbytes),
            P.Evicted.OP: lambda proc, m: s.evicted(proc, m.kept, m.dropped),
            P.LineageIs.OP: lambda proc, m: s.lineage_is(proc, m.oid, m.spec, m.reason,
                                                         m.stored),
            P.Checkpoint.OP: lambda proc, m: s.actor_checkpoint(proc, m.aid, m.incarnation,
                                                                m.oid, m.calls),
            P.FreeRange.OP: lambda proc, m: s.free_range(proc, m.offset),
            P.Blocked.OP: lambda proc, m: s.worker_blocked(proc, m.returned),
            P.Return.OP: lambda proc, m: s.tasks_returned(proc, m.tids),
            P.Unblocked.OP: lambda proc, m: s.worker_unblocked(proc),
            P.Func.OP: lambda proc, m: s.register_function(m.fid, m.blob),
            P.Cancel.OP: lambda proc, m: s.cancel(m.tid, m.force, m.recursive),
            P.Query.OP: query,
            P.KillActor.OP: lambda proc, m: s.kill_actor(m.aid, m.no_restart),
            P.ActorExit.OP: lambda proc, m: s.actor_exit(proc, m.aid),
            P.LeaseEnd.OP: lambda proc, m: s.lease_end(proc, m.epoch),
            P.ChannelFree.OP: lambda proc, m: s.channel_free(proc, m.channel),
            P.PutFor.OP: lambda proc, m: s.put_for(proc, m.owner, m.oid, m.kind, m.payload,
                                                   m.contained),
            P.Promise.OP: lambda proc, m: s.promise(proc, m.oid),
            P.PgOp.OP: lambda proc, m: s.pg_op(proc, m.req, m.op),
            P.Yield.OP: lambda proc, m: s.stream_yield(proc, m.owner, m.tid, m.index, m.oid,
                                                       m.kind, m.payload, m.contained),
            P.StreamAck.OP: lambda proc, m: s.stream_ack(m.tid, m.consumed),
            P.Shutdown.OP: stop,
            **self._agent_handlers(),
        }

    def _agent_handlers(self) -> dict:
        """Opcode -> handler(proc, msg) of what the rank's MPI agent sends (protocol's
        ``cluster`` channel)."""
        s = self.sched
        return {
            P.RemoteDone.OP: lambda proc, m: s.remote_done(m.tid, m.results, m.rank),
            P.Load.OP: lambda proc, m: s.update_load(m.load),
            P.ClusterInfo.OP: lambda proc, m: s.attach_cluster(m.rank, m.ranks),
            # holds this rank's agent lent other ranks (it counts them)
            P.Lend.OP: lambda proc, m: s.refs(cluster.LENT_HOLDER, m.adds, m.removes),
            P.Borrowed.OP: lambda proc, m: s.borrowed(m.oids, m.rank),
            P.NameClaim.OP: lambda proc, m: s.name_claim(m.rank, m.key, m.aid, m.meta,
                                                         m.get_if_exists),
            P.NameAnswer.OP: lambda proc, m: s.name_answer(m.aid, m.answer),
            P.NameLookup.OP: lambda proc, m: s.name_lookup(m.rank, m.req, m.proc, m.key),
            P.NameFound.OP: lambda proc, m: s.name_found(m.req, m.proc, m.found, m.lent,
                                                         m.lender),
            P.NameFree.OP: lambda proc, m: s.name_free(m.key, m.aid),
            P.AvailAsk.OP: lambda proc, m: s.avail_ask(m.rank, m.proc, m.req),
            P.StreamLent.OP: lambda proc, m: s.stream_lent(m.tid, m.index, m.oid, m.rank),
            P.AvailAnswer.OP: lambda proc, m: s.avail_answer(m.proc, m.req, m.avail),
            # placement groups: rank 0's registry and each rank's bundles
            P.PgAsk.OP: lambda proc, m: s.pg_ask(m.rank, m.proc, m.req, m.op),
            P.PgAnswer.OP: lambda proc, m: s.pg_answered(m.proc, m.req, m.data),
            P.PgReserve.OP: lambda proc, m: s.pg_reserve(m.pg, m.bundles),
            P.PgReserved.OP: lambda proc, m: s.pg_reserved(m.pg, m.rank),
            P.PgPlaced.OP: lambda proc, m: s.pg_placed(m.pg, m.ranks),
            P.PgGone.OP: lambda proc, m: s.pg_removed(m.pg),
        }

    def _query(self, what, proc: int, req: int):
        s = self.sched
        if type(what) is tuple and what[0] == "actor":  # get_actor(name, namespace)
            found = s.lookup_actor(proc, what[1], what[2])
            return found if found is not None else s.ask_name(proc, req, (what[1] or "", what[2]))
        if what == "actors":
            return s.list_actors()
        if what == "available":  # (under MPI: every rank's, summed, answered later)
            return LATER if s.gather_available(proc, req) else s.available()
        if what == "load":
            return s.load_report()
        if what == "stats":
            return {
                **s.stats, "workers": len(s.workers), "objects": len(s.objs),
                "tasks": len(s.tasks), "arena_used": s.alloc.used,
                "spill": {**s.spill_stats, **self.spill.times,
                          "evicting_bytes": s.evicting_bytes, "waiting": len(s.space_waiters),
                          "unanswered": len(s.evict_acks), "restoring": s.restoring},
                "pids": sorted(self.pids),
            }
        return None

    def _act(self) -> None:
        s = self.sched
        while s.actions:
            acts, s.actions = s.actions, []
            for a in acts:
                kind = type(a)
                if kind is P.StartWorker:
                    self.start_worker()
                elif kind is P.Kill:
                    ch = self.channels.get(a.wid)
                    if ch is not None:
                        kill(ch.pid, signal.SIGKILL)
                elif kind is P.Interrupt:
                    ch = self.channels.get(a.wid)
                    if ch is not None:
                        word = int(a.tid & (2**63 - 1)).to_bytes(8, "little")
                        ch.mem[_FLAG_BYTES : _FLAG_BYTES + 8] = word
                        kill(ch.pid, signal.SIGUSR1)
                elif kind is P.Warn:
                    print(a.text, file=sys.stderr, flush=True)
                elif kind is P.GrantLease:
                    ch = self.channels[a.wid]
                    s.out[a.wid].append(P.Leased(a.epoch, a.channel, a.owner,
                                                 self.slot_of.get(a.owner)))
                    s.out[a.owner].append(P.LeaseGrant(a.wid, a.epoch, self.slot_of[a.wid],
                                                       ch.pid, a.first_oid, a.channel))
                elif kind is P.AnnounceActor:
                    ch = self.channels.get(a.wid) if a.wid is not None else None
                    self.store.actor(a, ch.pid if ch is not None else None)
                    # (a checkpointed actor's calls go by the node: no mailbox slot)
                    slot = None if a.aid in s.ckpt_actors else self.slot_of.get(a.wid)
                    s.out[0].append(P.ActorUpdate(a.aid, a.state, a.incarnation, a.wid,
                                                  slot,
                                                  ch.pid if ch is not None else 0, a.death))
                elif kind is P.LoseLease:
                    s.out[a.owner].append(P.LeaseLost(a.wid, a.epoch, a.reason))
                elif kind is P.SpillWrite or kind is P.SpillRead or kind is P.SpillDelete:
                    self.spill.submit(a)
                elif kind is P.LineageLoad:
                    self.store.load_lineage(a.tid, a.oid)
            s.schedule()

    def _flush(self) -> bool:
        """Send queued messages (one frame per process); True when everything went out."""
        s = self.sched
        if s.records:
            self.store.take(s.records)
        if s.out:
            out = s.out
            s.out = collections.defaultdict(list)
            channels = self.channels
            for proc, msgs in out.items():
                ch = channels.get(proc)
                if ch is None or not msgs:
                    continue
                if not ch.out.send(P.encode(msgs)):
                    self._backlog.add(proc)
                ch.bell.ring()
        if self._backlog:
            for proc in list(self._backlog):
                ch = self.channels.get(proc)
                if ch is None or ch.out.flush():
                    self._backlog.discard(proc)
                if ch is not None:
                    ch.bell.ring()
        return not self._backlog

    def _inbound(self) -> list:
        """(proc, up ring) pairs to poll, rebuilt only when workers come or go."""
        ups = self._ups
        if ups is None:
            ups = self._ups = [(proc, ch.up) for proc, ch in self.channels.items()]
        return ups

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        s = self.sched
        signal.signal(signal.SIGCHLD, self._on_sigchld)
        self.store.start()  # (its writer first: forked before any worker)
        for _ in range(int(s.total.get("CPU", 1))):
            self.start_worker()
        bell = self.bell
        flushed = True
        handle = self._handle
        while self.running:
            busy = False
            s.now = time.monotonic()
            for proc, up in self._inbound():
                frames = up.pop_all()
                if frames:
                    busy = True
                    handle(proc, frames)
            if self._child_exited:
                self._child_exited = False
                self._reap()
                busy = True
            if (self.spill.results or s.evict_acked or s.evict_confirm
                    or (busy and s.space_waiters)):
                self.spill.take(s)  # (copies done; evictions answered a pass ago end)
                s.end_pass()
                busy = True
            if self.store.loads:  # (specs read back from the control store)
                self.store.poll_loads(s)
                busy = True
            if busy or not flushed:
                if s.ready or s.pg_reserving:  # (a group may wait for CPUs)
                    s.schedule()
                if s.actions:
                    self._act()
                flushed = self._flush()
            now = time.monotonic()
            if now - self._last_tick > 1.0:
                self._last_tick = now
                s.tick(now)
                self._act()
                flushed = self._flush()
                self.store.usage(now)
                self.store.due(now)  # (a node busy for long: its events still go out)
                if os.getppid() != self.driver_pid:
                    break
            if not self.running:
                break
            # go to sleep unless something arrived meanwhile (announce first, then look)
            bell.sleep_begin()
            if (self._child_exited or s.evict_confirm or s.evict_acked
                    or any(up.has_data() for _p, up in self._inbound())):
                bell.sleep_end()
                continue
            wait = 0.001 if not flushed else 0.02 if self.store.loads else self.store.due(now)
            if bell.wait(wait, (self._driver_pidfd,)):
                break  # the driver is gone: clean up below
        self.shutdown()

    def _on_sigchld(self, signum, frame) -> None:
        self._child_exited = True
        try:
            os.eventfd_write(self.bell.fd, 1)
        except OSError:
            pass

    def shutdown(self) -> None:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if self.store.on:  # workers write their last events, then exit (else: killed)
            for pid in list(self.pids):
                self.store.note(WORKER_EXIT, pid, "the session ended", time.monotonic())
                kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 0.5
            for pid in list(self.pids):
                if wait_exit(pid, max(0.0, deadline - time.monotonic())):
                    self.pids.pop(pid, None)
        for pid in list(self.pids):
            kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        for pid in list(self.pids):
            wait_exit(pid, max(0.0, deadline - time.monotonic()))
        self.pids.clear()
        self.spill.close()  # (its files and directory go)
        self.store.stop()  # (the session directory stays: store and logs)
        if self.setup.agent_rings is not None and os.getppid() != self.driver_pid:
            remove_mpi_segments()  # (our rank was killed: MPI_Finalize never ran there)


class _NoBell:
    """The agent's doorbell: it polls, so ringing it is a no-op."""

    fd = -1

    def ring(self) -> None:
        pass

    def close(self) -> None:
        pass


def _exit_on_term(signum, frame) -> None:
    raise SystemExit(0)


def node_main(setup: NodeSetup, driver_pid: int) -> None:
    """Entry point of the forked node process."""
    from .. import _global

    # the fork copied the driver's client; it must never touch the driver's rings from here
    _global.client = None
    # Ctrl-C in a terminal reaches the whole process group; the driver decides what
    # happens (its shutdown stops us), so the node and workers ignore SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    if os.getppid() != driver_pid:
        remove_tree(setup.node_dir)
        return
    hold_session(setup.node_dir)  # (for its life: readers and pruning see it running)
    # The node runs no user code and makes few reference cycles, but holds an entry per
    # live task and object: the collector's full passes over them cost a fifth of its
    # time under load (measured).  What it inherited from the driver is frozen (never
    # scanned, nor its pages copied by the scan), and collections are rarer.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    node = Node(setup, driver_pid)
    try:
        node.run()
    except SystemExit:
        node.shutdown()
