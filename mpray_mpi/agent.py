"""A rank's agent: the one thread of a rank that talks MPI, bridging it to the rank's node.

Data flow::

    node ─ Fwd/Fetch/Obj/AllocOk/Reply ─▶ down ring ──────┐
    other ranks ─▶ inbox poll (RTask, RNode), Iprobe+recv ─┼─▶ RankLink.handle(msg, src)
    this loop: LinkHello, LoadDue, StopRanks, RankStopped ─┘     (link.py, pure)
                                                                     │ instructions, in order
    node ◀─ Submit/Put/RemoteDone/Load… ── up ring, one frame ◀──────┤ ToNodeMsg
    other ranks ◀─ inbox post (RTask, RNode) + one isend (rest) ◀────┤ ToRankMsg
    this rank's arena ◀─ other ranks' windows: RmaGet (Get, Flush) ◀─┤ RmaGet, WriteBytes
    export window / message bytes ◀─ this rank's arena ◀─────────────┤ CopyToExport, ReadBytes
    rank 0's load window ◀─▶ Put ours, Get all; Load to the node ◀───┘ ShareLoad

The decisions (what to send where, which holds to take and drop, where a value's bytes
are) are ``link.RankLink``'s; this module is its I/O loop: it reads messages from the
node's ring, the inbox and MPI, feeds each to the machine, and carries out what comes
back.  Messages are batched per pass: one frame to the node, one inbox frame and one MPI
message per rank, so a burst of forwarded tasks or results costs one pickle and one send.

The node sees the agent as one more process (``cluster.AGENT``): tasks forwarded to this
rank are submitted by it (so their results are pushed to it), and objects of other ranks
are PUT by it.  Object bytes move by RMA: the reader allocates space in its own arena and
``Get``s the bytes straight there, from the home rank's arena window (or, where arenas
are not windows, from a copy in the home's export window).  Small values travel inside
the messages.

MPICH only progresses passive-target RMA while the target calls MPI, so the agent loop
keeps calling ``Iprobe`` (polling every 50 µs – 1 ms, up to 4 ms when idle).
"""

from __future__ import annotations

import collections
import os
import pickle
import socket
import sys
import time

from mpray import protocol as P
from mpray.procs import how_it_ended
from mpray.transport.rings import Ring

from .inbox import MAX_FRAME, Inbox
from .link import RankLink

TAG = 71
LOAD_INTERVAL = 0.02  # seconds between load reports (global scheduling)
HOT_S = 0.1  # after work, poll at the shortest pause for this long
IDLE_LOAD_INTERVAL = 1.0  # seconds between load reports of a rank with nothing to do
INBOX_KINDS = (P.RTask, P.RNode)  # what goes through the inbox (in order, one-sided)
IDLE_PAUSE = 4e-3  # longest pause between polls of a rank idle for a second (CPU it costs)
_ToNodeMsg, _ToRankMsg, _Reply, _RBig, _RAwait = (P.ToNodeMsg, P.ToRankMsg, P.Reply, P.RBig,
                                                  P.RAwait)


class Agent:
    def __init__(self, MPI, comm, rank: int, size: int, ranks: list, arena, up: Ring,
                 down: Ring, node_bell, export_bytes: int, node_pid: int,
                 arena_win=None) -> None:
        self.MPI = MPI
        self.comm = comm
        self.rank = rank
        self.size = size
        self.ranks = ranks
        self.arena = memoryview(arena)
        self.up = up  # agent -> node
        self.down = down  # node -> agent
        self.node_bell = node_bell
        self.node_pid = node_pid
        # Where other ranks read this rank's objects from: the arena itself when it is an
        # MPI window (zero copies), else an export window values are copied into.
        # Collective: every rank makes the same windows in the same order.
        self.arena_win = arena_win
        self.win = None
        self.expmem = None
        if arena_win is None:
            self.win = MPI.Win.Allocate(export_bytes, 1, comm=comm)
            self.expmem = memoryview(self.win.tomemory()).cast("B") if export_bytes else None
        self.link = RankLink(rank, size, arena_window=arena_win is not None,
                             export_bytes=export_bytes if self.expmem is not None else 0)
        self.loadwin = MPI.Win.Allocate(16 * size if rank == 0 else 0, 8, comm=comm)
        import numpy as np

        if rank == 0:  # (NaN: a rank not reported yet.  Zeros would read as "busy, no free
            #            CPU", and a first batch would not move to ranks that are idle)
            np.frombuffer(self.loadwin.tomemory(), dtype=np.float64)[:] = np.nan

        self.inbox = Inbox(MPI, comm, np)  # (tasks and node messages come this way)
        # One passive epoch for the whole run, without locks (MODE_NOCHECK: messages
        # already order who reads what): a Get or Put then completes with Flush, and on
        # shared-memory windows needs nothing from the target (no waiting for it to poll)
        for w in self._windows():
            w.Lock_all(MPI.MODE_NOCHECK)
        self._np = np
        self.load_table = np.zeros(2 * size, dtype=np.float64)
        self.reqs: list = []
        self.status = MPI.Status()
        self.node_out: list = []
        self.outbox: dict[int, list] = collections.defaultdict(list)
        self.inq: collections.deque = collections.deque()  # (src, msg) read from the inbox
        self.big: dict[tuple, list] = {}  # (src, token) -> messages too big for the inbox
        self._token = 0
        self.last_load = 0.0
        self.last_busy = time.monotonic()
        self._do = {P.CopyToExport: self._copy_to_export, P.ReadBytes: self._read_bytes,
                    P.RmaGet: self._rma_get, P.WriteBytes: self._write_bytes,
                    P.ShareLoad: self._share_load, P.PrintLogs: self._print_logs}
        # workers' output of a rank whose directory rank 0 cannot read: its log reader's
        # thread appends (rank, pid, err, label, line), each pass sends them to rank 0
        self.log_lines: collections.deque = collections.deque()
        self.on_logs = None  # rank 0: prints such lines (its LogMonitor.remote_lines)

    # (what the session reads: mpray_mpi.start and MPISession)
    @property
    def stopped(self) -> set:
        return self.link.stopped

    @property
    def stop_requested(self) -> bool:
        return self.link.stop_requested

    # ------------------------------------------------------------------ instructions
    def feed(self, ev, src: int = -1) -> None:
        """One event into the machine; its instructions carried out now, in order
        (messages only join this pass's batches: they leave in ``flush``)."""
        node_out, outbox = self.node_out, self.outbox
        for ins in self.link.handle(ev, src):
            kind = type(ins)
            if kind is _ToRankMsg:
                outbox[ins.rank].append(ins.msg)
            elif kind is _ToNodeMsg:
                node_out.append(ins.msg)
            else:
                self._do[kind](ins)

    def _copy_to_export(self, ins) -> None:
        off, woff, total = ins.off, ins.woff, ins.total
        self.expmem[woff: woff + total] = self.arena[off: off + total]
        self.win.Sync()  # (our stores into the window, visible to RMA before we answer)

    def _read_bytes(self, ins) -> None:
        ins.buf[:] = self.arena[ins.off: ins.off + ins.total]

    def _write_bytes(self, ins) -> None:
        self.arena[ins.off: ins.off + len(ins.data)] = ins.data

    def _rma_get(self, ins) -> None:
        """RMA Get into our arena, completed (Flush) before the next instruction: the
        node hears of the value only once its bytes are here."""
        MPI, off, total = self.MPI, ins.off, ins.total
        win = self.arena_win if ins.window == "arena" else self.win
        win.Get([self.arena[off: off + total], MPI.BYTE], ins.src,
                target=(ins.soff, total, MPI.BYTE))
        win.Flush(ins.src)

    def _print_logs(self, ins) -> None:
        if self.on_logs is not None:
            self.on_logs(ins.lines)

    def _ship_logs(self) -> None:
        q, lines = self.log_lines, []
        while q:
            lines.append(q.popleft())
        self.outbox[0].append(P.RLogs(lines))  # (a plain send: ordered before RStopped)

    def _share_load(self, ins) -> None:
        """Publish this rank's (queued, free CPUs) in rank 0's window; read everyone's.
        (RMA on rank 0's window makes the caller spin until rank 0 polls: see step.)"""
        MPI, np = self.MPI, self._np
        own = np.array(ins.load, dtype=np.float64)
        w = self.loadwin
        w.Put([own, MPI.DOUBLE], 0, target=(2 * self.rank, 2, MPI.DOUBLE))
        w.Flush(0)
        w.Get([self.load_table, MPI.DOUBLE], 0, target=(0, 2 * self.size, MPI.DOUBLE))
        w.Flush(0)
        t = self.load_table
        self.node_out.append(P.Load([None if t[2 * r] != t[2 * r]  # (NaN: not yet)
                                     else (int(t[2 * r]), float(t[2 * r + 1]))
                                     for r in range(self.size)]))

    # ------------------------------------------------------------------ sending
    def flush(self) -> None:
        """This pass's batches out: one frame to the node, then per rank one inbox frame
        (tasks and node messages, in order) and one plain message for the rest."""
        if self.node_out:
            msgs, self.node_out = self.node_out, []
            self.up.push(P.encode(msgs), wake=self.node_bell.force)
            self.node_bell.ring()
        if self.outbox:
            out, self.outbox = self.outbox, collections.defaultdict(list)
            for rank, msgs in out.items():
                ordered = [m for m in msgs if type(m) in INBOX_KINDS]
                rest = [m for m in msgs if type(m) not in INBOX_KINDS] if ordered else msgs
                if ordered:
                    self._post(rank, ordered)
                if rest:
                    self.reqs.append(self.comm.isend(P.encode([P.RBatch(P.encode(rest))]),
                                                     dest=rank, tag=TAG))
        if self.inbox.pending:
            self.inbox.flush()

    def _post(self, rank: int, msgs: list) -> None:
        """Tasks and node messages go through ``rank``'s inbox (one-sided, in order); a
        frame too big for it goes as a message whose place an inbox frame keeps."""
        frame = pickle.dumps((self.rank, P.encode(msgs)), protocol=5)
        if len(frame) <= MAX_FRAME:
            self.inbox.post(rank, frame)
        elif len(msgs) > 1:
            half = len(msgs) // 2
            self._post(rank, msgs[:half])
            self._post(rank, msgs[half:])
        else:
            self._token += 1
            self.reqs.append(self.comm.isend(P.encode([P.RBig(self._token, P.encode(msgs))]),
                                             dest=rank, tag=TAG))
            self.inbox.post(rank, pickle.dumps((self.rank, P.encode([P.RAwait(self._token)]))))

    def hello(self, timeout: float = 30.0) -> None:
        """Give the node the ranks, and wait until it has them: the driver's first task
        (say, pinned to another rank's node) must not reach the node before they do."""
        self.feed(P.LinkHello([(nid, res) for nid, res, _h in self.ranks]))
        deadline = time.monotonic() + timeout
        self.run(lambda: self.link.hello_req is None or time.monotonic() > deadline)
        if self.link.hello_req is not None:
            abort(self.comm, f"this rank's node did not answer within {timeout} s")

    # ------------------------------------------------------------------ loop
    def step(self) -> bool:
        """One pass: MPI messages, the inbox, the node's messages, sends completed, the
        load table when due, this pass's batches out.  True if there was work."""
        busy = self._recv_ranks()
        if self._read_inbox():
            busy = True
        feed = self.feed
        for f in self.down.pop_all():
            for m in P.decode(f):
                if type(m) is not _Reply:  # (load reports are not work: they must not
                    busy = True            # keep an idle rank polling at the shortest pause)
                feed(m)
        if self.reqs:
            self.reqs = [r for r in self.reqs if not r.Test()]
        if self.log_lines:
            self._ship_logs()
        now = time.monotonic()
        if busy:
            self.last_busy = now
        # the load table matters while there is work; RMA on rank 0's window makes the
        # caller spin until rank 0 polls, so an idle rank refreshes it only now and then
        interval = LOAD_INTERVAL if now - self.last_busy < 1.0 else IDLE_LOAD_INTERVAL
        if now - self.last_load > interval:
            self.last_load = now
            self._check_node()
            if self.size > 1:
                feed(P.LoadDue())
        self.flush()
        return busy

    def _recv_ranks(self) -> bool:
        """Plain MPI messages from other ranks (a big frame waits for its inbox place)."""
        busy = False
        comm, st, any_source, feed = self.comm, self.status, self.MPI.ANY_SOURCE, self.feed
        while comm.Iprobe(source=any_source, tag=TAG, status=st):
            src = st.Get_source()
            (got,) = P.decode(comm.recv(source=src, tag=TAG))
            if type(got) is _RBig:  # its place in the order is in the inbox
                self.big[(src, got.token)] = P.decode(got.msgs)
            else:
                for msg in P.decode(got.msgs):
                    feed(msg, src)
            busy = True
        return busy

    def _read_inbox(self) -> bool:
        """Frames in this rank's inbox, in claim order (a big frame's place waits until
        its message is here, and so does everything after it)."""
        for f in self.inbox.poll():
            src, frame = pickle.loads(f)
            self.inq.extend((src, m) for m in P.decode(frame))
        inq, feed, busy = self.inq, self.feed, False
        while inq:
            src, msg = inq[0]
            if type(msg) is _RAwait:
                msgs = self.big.pop((src, msg.token), None)
                if msgs is None:
                    break
                inq.popleft()
                for m in msgs:
                    feed(m, src)
            else:
                inq.popleft()
                feed(msg, src)
            busy = True
        return busy

    def _check_node(self) -> None:
        """This rank's node must be alive, or the job ends (never a silent hang)."""
        try:
            pid, status = os.waitpid(self.node_pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.node_pid, 0
        if pid:
            abort(self.comm, f"the mpray node process (pid {self.node_pid}) of this rank "
                             f"{how_it_ended(status)}; ending the job")

    def run(self, until) -> None:
        """Serve until ``until()`` is true: poll, pausing 50 µs while there was work in
        the last 0.1 s (an exchange of several hops stays fast), then longer, up to 1 ms,
        and up to 4 ms once idle for a second (an idle rank costs little CPU: 1-3 %
        here; it matters where ranks share cores).  MPICH offers no descriptor to sleep
        on."""
        pause = 50e-6
        clock = time.monotonic
        while not until():
            if self.step():
                pause = 50e-6
            else:
                time.sleep(pause)
                idle = clock() - self.last_busy
                if idle > HOT_S:
                    pause = min(pause * 2, 1e-3 if idle < 1.0 else IDLE_PAUSE)

    def _windows(self) -> list:
        return [w for w in (self.arena_win, self.win, self.loadwin, self.inbox.win)
                if w is not None]

    # ------------------------------------------------------------------ shutdown
    def stop_all(self, timeout: float = 10.0) -> bool:
        """Rank 0: stop every other rank and wait for them (True if all answered) while
        they keep answering: ``timeout`` seconds without another rank's answer end the
        wait.  (Ranks stop at once, each ending its node, workers and writer: 64 ranks
        sharing 2 busy cores took 7 s in all, and more ranks per core take longer.)"""
        self.feed(P.StopRanks())
        stopped, clock = self.link.stopped, time.monotonic
        last = [0, clock() + timeout]  # (ranks stopped, when waiting for the next ends)

        def done() -> bool:
            if len(stopped) != last[0]:
                last[:] = [len(stopped), clock() + timeout]
            return len(stopped) >= self.size - 1 or clock() > last[1]

        self.run(done)
        return len(stopped) >= self.size - 1

    def report_stopped(self) -> None:
        """A serving rank: its node is shut down; rank 0 hears so at ``close`` (after its
        workers' last lines)."""
        if self.log_lines:
            self._ship_logs()
        self.feed(P.RankStopped())

    def close(self) -> None:
        """Collective: every rank frees the windows."""
        self.flush()
        for r in self.reqs:
            r.Wait()
        self.reqs = []
        for w in self._windows():
            w.Unlock_all()
        if self.expmem is not None:
            self.expmem.release()
        self.expmem = None
        if self.win is not None:
            self.win.Free()
        self.loadwin.Free()
        self.inbox.free()
        # (an arena window stays until MPI_Finalize at exit: arrays the user got from
        # get() may still point into it)


def abort(comm, message: str, code: int = 1) -> None:
    """End the whole job now (a rank failed): the message once, naming the rank, its host
    and its pid, then MPI_Abort."""
    print(f"mpray (rank {comm.Get_rank()} on {socket.gethostname()}, pid {os.getpid()}): "
          f"{message}", file=sys.stderr, flush=True)
    comm.Abort(code)

