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
import ctypes
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass

from . import cluster
from . import protocol as P
from .actor_names import LATER
from .direct import slot_bytes, slot_rings
from .rings import Doorbell, Outbox, Ring, anonymous_shared, ring_bytes
from .scheduler import Scheduler

_PR_SET_PDEATHSIG = 1
_FLAG_BYTES = 64


def set_parent_death_signal(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort; the getppid() checks remain
        pass


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


class Node:
    def __init__(self, setup: NodeSetup, driver_pid: int) -> None:
        self.setup = setup
        self.driver_pid = driver_pid
        self.sched = Scheduler(
            setup.resources, setup.gpu_ids, setup.arena_size,
            max_workers=setup.max_workers, idle_timeout=setup.idle_timeout,
            pipeline_depth=setup.pipeline_depth, node_id=setup.node_id,
        )
        self.bell = setup.node_bell
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

    # ------------------------------------------------------------------ workers
    def start_worker(self) -> None:
        from .worker import worker_main  # imported here: the node module stays small

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
            bell = Doorbell(self.setup.slot_efds[slot], self.setup.mailbox,
                            slot * slot_bytes(cap_d))
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # ---- child
            code = 0
            try:
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
            self.sched.out[0].append((P.SLOT, slot, wid))
        self.sched.worker_started(wid, time.monotonic())

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
                continue
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                reason = f"worker pid {pid} was killed by signal {signal.Signals(sig).name}"
            else:
                reason = f"worker pid {pid} exited with code {os.WEXITSTATUS(status)}"
            self._drop_channel(wid)
            slot = self.slot_of.pop(wid, None)
            if slot is not None:
                # the driver drains what the worker wrote, then stops polling the slot;
                # the slot is reused only after that message, so order is preserved
                self.sched.out[0].append((P.SLOT_FREE, slot))
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
        for frame in frames:
            for m in pickle.loads(frame):
                try:
                    self._event(proc, m)
                except Exception:  # noqa: BLE001 - a bug must be loud, not kill the node
                    import traceback

                    print(f"mpray node (pid {os.getpid()}): internal error handling "
                          f"message {m[:2]!r} from process {proc}:", file=sys.stderr)
                    traceback.print_exc()

    def _event(self, proc: int, m: tuple) -> None:
        s = self.sched
        op = m[0]
        if op == P.SUBMIT:
            s.submit(proc, m[1])
        elif op == P.REFS:
            s.refs(proc, m[1], m[2])
        elif op == P.DONE:
            if proc in s.workers:
                s.task_done(proc, m[1], m[2], m[3], m[4], m[5])
        elif op == P.PUT:
            if proc == s.agent:
                s.put_fetched(m[1], m[2], m[3], m[4])
            else:
                s.put(proc, m[1], m[2], m[3], m[4])
        elif op == P.SUBSCRIBE:
            s.subscribe(proc, m[1])
        elif op == P.PIN:
            s.pin(proc, m[1])
        elif op == P.UNPIN:
            s.unpin(proc, m[1])
        elif op == P.ALLOC:
            s.allocate(proc, m[1], m[2])
        elif op == P.FREE_RANGE:
            s.free_range(proc, m[1])
        elif op == P.BLOCKED:
            s.worker_blocked(proc, m[1])
        elif op == P.RETURN:
            s.tasks_returned(proc, m[1])
        elif op == P.UNBLOCKED:
            s.worker_unblocked(proc)
        elif op == P.FUNC:
            s.register_function(m[1], m[2])
        elif op == P.CANCEL:
            s.cancel(m[1], m[2], m[3])
        elif op == P.QUERY:
            reply = self._query(m[2], proc, m[1])
            if reply is not LATER:
                s.out[proc].append((P.REPLY, m[1], reply))
        elif op == P.KILL_ACTOR:
            s.kill_actor(m[1], m[2])
        elif op == P.ACTOR_EXIT:
            s.actor_exit(proc, m[1])
        elif op == P.LEASE_END:
            s.lease_end(proc, m[1])
        elif op == P.PUT_FOR:
            s.put_for(proc, m[1], m[2], m[3], m[4], m[5])
        elif op == P.PROMISE:
            s.promise(proc, m[1])
        elif op == P.SHUTDOWN:
            self.running = False
        elif op == cluster.REMOTE_DONE:
            s.remote_done(m[1], m[2], m[3])
        elif op == cluster.LOAD:
            s.update_load(m[1])
        elif op == cluster.CLUSTER:
            s.attach_cluster(m[1], m[2])
        elif op == cluster.LEND:  # holds this rank's agent lent other ranks (it counts them)
            s.refs(cluster.LENT_HOLDER, m[1], m[2])
        elif op == cluster.BORROWED:
            s.borrowed(m[1], m[2])
        elif op == cluster.NAME_CLAIM:
            s.name_claim(m[1], m[2], m[3], m[4], m[5])
        elif op == cluster.NAME_ANSWER:
            s.name_answer(m[1], m[2])
        elif op == cluster.NAME_LOOKUP:
            s.name_lookup(m[1], m[2], m[3], m[4])
        elif op == cluster.NAME_FOUND:
            s.name_found(m[1], m[2], m[3], m[4], m[5])
        elif op == cluster.NAME_FREE:
            s.name_free(m[1], m[2])

    def _query(self, what, proc: int, req: int):
        s = self.sched
        if type(what) is tuple and what[0] == "actor":  # get_actor(name, namespace)
            found = s.lookup_actor(proc, what[1], what[2])
            return found if found is not None else s.ask_name(proc, req, (what[1] or "", what[2]))
        if what == "actors":
            return s.list_actors()
        if what == "available":
            return s.available()
        if what == "load":
            return s.load_report()
        if what == "stats":
            return {
                **s.stats, "workers": len(s.workers), "objects": len(s.objs),
                "tasks": len(s.tasks), "arena_used": s.alloc.used,
                "pids": sorted(self.pids),
            }
        return None

    def _act(self) -> None:
        s = self.sched
        while s.actions:
            acts, s.actions = s.actions, []
            for a in acts:
                kind = a[0]
                if kind == "start_worker":
                    self.start_worker()
                elif kind == "kill":
                    ch = self.channels.get(a[1])
                    if ch is not None:
                        _kill(ch.pid, signal.SIGKILL)
                elif kind == "interrupt":
                    ch = self.channels.get(a[1])
                    if ch is not None:
                        ch.mem[_FLAG_BYTES : _FLAG_BYTES + 8] = int(a[2] & (2**63 - 1)).to_bytes(8, "little")
                        _kill(ch.pid, signal.SIGUSR1)
                elif kind == "warn":
                    print(a[1], file=sys.stderr, flush=True)
                elif kind == "lease":
                    _, wid, epoch, proc, first_oid = a
                    ch = self.channels[wid]
                    s.out[wid].append((P.LEASE, epoch))
                    s.out[proc].append((P.LEASE, wid, epoch, self.slot_of[wid], ch.pid,
                                        first_oid))
                elif kind == "actor_update":
                    _, aid, state, inc, wid, death = a
                    ch = self.channels.get(wid) if wid is not None else None
                    s.out[0].append((P.ACTOR, aid, state, inc, wid, self.slot_of.get(wid),
                                     ch.pid if ch is not None else 0, death))
                elif kind == "lease_lost":
                    _, wid, epoch, proc, reason = a
                    s.out[proc].append((P.LEASE_LOST, wid, epoch, reason))
            s.schedule()

    def _flush(self) -> bool:
        """Send queued messages (one frame per process); True when everything went out."""
        s = self.sched
        if s.out:
            out = s.out
            s.out = collections.defaultdict(list)
            channels = self.channels
            for proc, msgs in out.items():
                ch = channels.get(proc)
                if ch is None or not msgs:
                    continue
                if not ch.out.send(pickle.dumps(msgs, protocol=5)):
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
            if busy or not flushed:
                if s.ready:
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
                if os.getppid() != self.driver_pid:
                    break
            if not self.running:
                break
            # go to sleep unless something arrived meanwhile (announce first, then look)
            bell.sleep_begin()
            if self._child_exited or any(up.has_data() for _p, up in self._inbound()):
                bell.sleep_end()
                continue
            if bell.wait(0.001 if not flushed else 1.0, (self._driver_pidfd,)):
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
        for pid in list(self.pids):
            _kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        for pid in list(self.pids):
            while time.monotonic() < deadline:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if done:
                    break
                time.sleep(0.001)
        self.pids.clear()
        _remove_tree(self.setup.session_dir)
        if self.setup.agent_rings is not None and os.getppid() != self.driver_pid:
            _remove_mpi_segments()  # (our rank was killed: MPI_Finalize never ran there)


class _NoBell:
    """The agent's doorbell: it polls, so ringing it is a no-op."""

    fd = -1

    def ring(self) -> None:
        pass

    def close(self) -> None:
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _remove_tree(path: str) -> None:
    import shutil

    if path and os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


# shared-memory files of MPI libraries (MPICH; Open MPI's shared-memory transports)
MPI_SEGMENT_PREFIXES = ("/dev/shm/mpich_shm_", "/dev/shm/vader_segment.",
                        "/dev/shm/sm_segment.")


def _remove_mpi_segments() -> None:
    """Unlink the MPI library's shared-memory files this rank had mapped.  Its
    MPI_Finalize unlinks them; a rank killed by its launcher never gets there, and the
    files would outlive the job.  The node inherited the rank's mappings at fork, so they
    are this job's; ranks still running keep their mappings (unlink removes the name)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(None, 5)[5].strip() for line in f
                     if line.count(" ") >= 5 and "/dev/shm/" in line}
    except OSError:
        return
    for path in paths:
        if path.startswith(MPI_SEGMENT_PREFIXES):
            try:
                os.unlink(path)
            except OSError:
                pass


def _exit_on_term(signum, frame) -> None:
    raise SystemExit(0)


def node_main(setup: NodeSetup, driver_pid: int) -> None:
    """Entry point of the forked node process."""
    from . import _global

    # the fork copied the driver's client; it must never touch the driver's rings from here
    _global.client = None
    # Ctrl-C in a terminal reaches the whole process group; the driver decides what
    # happens (its shutdown stops us), so the node and workers ignore SIGINT.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_term)
    if os.getppid() != driver_pid:
        _remove_tree(setup.session_dir)
        return
    node = Node(setup, driver_pid)
    try:
        node.run()
    except SystemExit:
        node.shutdown()
