"""The node's view of the other nodes (MPI ranks): placement, forwarding, remote objects.

A mixin of ``scheduler.Scheduler`` (pure, no I/O), active only when an agent is attached
(``attach_cluster``; under MPI every rank's node has one: the rank's MPI process).
Data flow::

    submit(spec) ─▶ placement: SPREAD round robin, node affinity, infeasible here but
                    feasible there, or a backlog here while another rank idles
                 ─▶ Fwd(rank, spec) to the agent; the task waits here (DISPATCHED,
                    worker AGENT) holding its arguments, until remote_done(tid, results)
    an ObjectRef of another rank's object, unknown here (a dependency, get, borrow)
                 ─▶ a placeholder (Obj.remote) + Fetch(oid) to the agent, once;
                    the agent PUTs the value, which seals the placeholder

Every object's value is kept at the node of the rank in its id (results of forwarded
tasks come home), so a fetch always asks ``id_rank(oid)``.
"""

from __future__ import annotations


from .. import protocol as P
from ..placement import SPILL_MIN_TASK_S, running_mean
from ..store.serialization import ARENA, ERROR
from ..states import TASK_TRANSITIONS, O, T, _move

AGENT = (1 << (P.RANK_SHIFT - P.PROC_BITS)) - 1  # the rank's MPI process, as seen by its node
# (the messages between a node and its rank's agent are protocol's ``cluster`` channel)
LENT_HOLDER = -2  # pseudo process that holds what this rank lent
MOVE_BYTES_PER_S = 5e9  # a fetch between ranks (100 MiB in ~20 ms here, benchmarks/)
MOVE_MEMORY_S = 0.06  # a move counts this long on top of load reports (they come every
#                       20 ms while busy, and travel through rank 0's window)


class ClusterView:
    """Placement and remote objects of the Scheduler (uses tasks, objs, out, ready...)."""

    def _init_cluster(self) -> None:
        self.rank = 0
        self.agent: int | None = None
        self.ranks: list[tuple[str, dict]] = []  # per rank: (node_id, total resources)
        self.load: list[tuple[int, float]] = []  # per rank: (queued, free CPUs)
        self.moves: dict[int, list[float]] = {}  # rank -> when tasks were moved there
        self._spread = 0
        self.fetching: set[int] = set()
        self.fids_sent: dict[int, set] = {}  # rank -> functions it has from this node
        self.gathers: dict[int, list] = {}  # req -> [proc, answers due, sum so far]
        self.stream_ranks: dict[int, int] = {}  # forwarded streaming task -> its rank
        # fid -> (tasks timed, their moving mean run time here): the spill rule's clock,
        # per function, so that one long function does not make short ones move
        self.task_time: dict = {}

    def attach_cluster(self, rank: int, ranks: list) -> None:
        self.rank = rank
        self.agent = AGENT
        self.ranks = [(nid, dict(res)) for nid, res in ranks]
        self.load = [(0, float(res.get("CPU", 0))) for _nid, res in self.ranks]

    def update_load(self, load: list) -> None:
        """Every rank's (queued, free CPUs), as last published; the tasks this node moved
        there lately count on top (a report may predate their arrival: without them, a
        burst would go to a rank already given one)."""
        now, moves = self.now, self.moves
        for r in list(moves):
            moves[r] = [t for t in moves[r] if now - t < MOVE_MEMORY_S]
            if not moves[r]:
                del moves[r]
        out = []
        for r, report in enumerate(load):
            # (None: that rank has not reported yet: idle, as attach_cluster counts it)
            q, free = report or (0, float(self.ranks[r][1].get("CPU", 0)))
            n = len(moves.get(r, ()))
            out.append((q + n, free - n))
        self.load = out

    # ------------------------------------------------------------------ placement
    def _placement(self, t):
        """The rank that should run ``t`` (None: this node)."""
        if (self.agent is None or len(self.ranks) < 2 or not t.spec.nret
                or t.actor is not None or t.owner == AGENT):
            return None  # (a task forwarded here runs here: no ping-pong)
        target = self._rank_for(t)
        if target is not None and t.spec.stream is not None:
            return self._stream_target(t, target)
        return target

    def _stream_target(self, t, target: int):
        """A streaming generator task moves where its placement says (its values come
        home one by one, ``_stream_home``), but never to balance load: a spill would
        only add a hop to every value."""
        strategy = t.spec.strategy
        if strategy in (None, "DEFAULT") and self._feasible_here(t.resources):
            return None  # (a spill: it stays)
        return target

    def _rank_for(self, t) -> int | None:
        strategy = t.spec.strategy
        if t.creating and strategy in (None, "DEFAULT"):
            return None  # an actor lives where it is created, unless placed elsewhere
        if strategy == "SPREAD":
            self._spread = (self._spread + 1) % len(self.ranks)
            target = self._spread
            return None if target == self.rank else target
        node_id = getattr(strategy, "node_id", None)
        if node_id is not None:
            for r, (nid, _res) in enumerate(self.ranks):
                if nid == node_id:
                    return None if r == self.rank else r
            return None  # unknown node: a soft affinity runs here, a hard one failed
        if not self._feasible_here(t.resources):
            for r, (_nid, res) in enumerate(self.ranks):
                if r != self.rank and _fits_total(res, t.resources):
                    return r
            return None
        return self._spill_target(t)

    def _node_exists(self, node_id: str) -> bool:
        return node_id == self.node_id or any(nid == node_id for nid, _r in self.ranks)

    def _placement_possible(self, t) -> bool:
        return any(_fits_total(res, t.resources) for _nid, res in self.ranks)

    def _feasible_here(self, res: tuple) -> bool:
        total = self.total
        return all(amount <= total.get(name, 0) + 1e-9 for name, amount in res if amount)

    def _spill_target(self, t) -> int | None:
        """Work waits here: the rank with the lowest estimated wait (the paper's rule:
        queued work × mean task time, plus the cost of moving the task and the bytes of
        its arguments that rank lacks), if it is lower than here.  Tasks shorter than
        moving them costs stay (they would only slow); those of a function not timed yet
        go to a rank with an idle CPU, if there is one (the paper's local scheduler
        forwards when overloaded: a first batch of long tasks must not pile up here)."""
        backlog = len(self.ready.get(t.resources, ()))
        if not backlog or not self.load or t.spec.lease:
            return None  # (a task its owner sent to become a lease here waits for a CPU
            #               here: moved, it would leave the owner without its lease, and
            #               the owner would send all it queued the node's way)
        timed = self.task_time.get(t.spec.fid)
        if timed is None:  # (only past this node's free CPUs: workers may be starting)
            return self._idle_rank(t) if backlog > self.avail.get("CPU", 0.0) else None
        mean = timed[1]
        if mean < SPILL_MIN_TASK_S:
            return None
        cpus = max(1.0, self.total.get("CPU", 1.0))
        best, best_wait = None, backlog / cpus * mean
        sizes = self._arg_sizes(t)
        for r, (queued, free) in enumerate(self.load):
            if r == self.rank or not _fits_total(self.ranks[r][1], t.resources):
                continue
            rcpus = max(1.0, float(self.ranks[r][1].get("CPU", 1.0)))
            moved = sum(n for home, n in sizes if home != r)  # (those at home there stay)
            wait = (max(0.0, queued - free) / rcpus * mean + SPILL_MIN_TASK_S
                    + moved / MOVE_BYTES_PER_S)
            if wait < best_wait:
                best, best_wait = r, wait
        if best is not None:
            self._count_move(best)
        return best

    def _idle_rank(self, t) -> int | None:
        """The rank with the most idle CPUs (free, nothing queued) that fits ``t``."""
        best, most = None, 0.0
        for r, (queued, free) in enumerate(self.load):
            idle = free - queued
            if r != self.rank and idle >= 1.0 and idle > most and \
                    _fits_total(self.ranks[r][1], t.resources):
                best, most = r, idle
        if best is not None:
            self._count_move(best)
        return best

    def _count_move(self, r: int) -> None:
        """Count a task moved to ``r`` (so that a burst does not all go to one rank)
        until reports have had time to include it."""
        q, free = self.load[r]
        self.load[r] = (q + 1, free - 1)
        self.moves.setdefault(r, []).append(self.now)

    def _short(self, t) -> bool:
        """Are ``t``'s function's tasks known to be shorter than moving one costs?  (Only
        those may queue behind a running task: another would wait there for a task of
        unknown length while a rank idles.)"""
        timed = self.task_time.get(t.spec.fid)
        return timed is not None and timed[1] < SPILL_MIN_TASK_S

    def _learn_time(self, fid: int, took: float) -> None:
        """A task of ``fid`` ran ``took`` seconds here.  (Not a forwarded task's round
        trip: on a loaded machine that alone passes the spill threshold, and a short
        function would start moving.)"""
        n, mean = self.task_time.get(fid, (0, 0.0))
        self.task_time[fid] = (n + 1, running_mean(n + 1, mean, took, 0.05))

    def _arg_sizes(self, t) -> list[tuple[int, int]]:
        """(home rank, bytes) of ``t``'s arguments in this rank's store: what moving it
        elsewhere would have to move (a rank prefers tasks whose arguments it holds)."""
        out = []
        for _pos, oid in t.spec.deps:
            o = self.objs.get(oid)
            if o is not None and o.kind == ARENA and o.state is O.IN_ARENA:
                out.append((P.id_rank(oid), o.payload[3]))
        return out

    def _spill_queue(self, q) -> None:
        """Move tasks from the tail of a ready queue that waits here to ranks where
        they would start sooner (each move counts against that rank, on top of its load
        reports for ``MOVE_MEMORY_S``, so a burst does not all go to one rank)."""
        if len(self.ranks) < 2:
            return
        for _ in range(len(q)):
            t = self.tasks.get(q[-1])
            if t is None or t.state is not T.READY:
                q.pop()
                continue
            if (t.owner == AGENT or t.creating or not t.spec.nret
                    or t.spec.strategy not in (None, "DEFAULT") or t.spec.stream is not None):
                return
            target = self._spill_target(t)
            if target is None:
                return
            q.pop()
            self._forward(t, target)

    def _forward(self, t, rank: int) -> None:
        a = None
        if t.creating:  # the actor will live there: its calls follow it (actor_table)
            a = self.actors[t.key]
            a.remote_rank = rank
        _move(t, T.DISPATCHED, TASK_TRANSITIONS, "task")
        t.worker = AGENT
        fid = t.spec.fid
        blob = None
        sent = self.fids_sent.setdefault(rank, set())
        if fid not in sent and fid in self.funcs:  # (actor calls name a method instead)
            sent.add(fid)
            blob = self.funcs[fid]
        spec = t.spec
        if spec.lease:  # (leases are of workers here)
            self._send(t.owner, P.NoLease(t.key + 1))
            spec = spec._replace(lease=False)
        if spec.retries != t.retries_left and spec.retries >= 0:
            spec = spec._replace(retries=t.retries_left)  # (what runs here used some)
        self.out[AGENT].append(P.Fwd(rank, spec, blob))
        if a is not None:  # calls made while it waited for its arguments follow it, in order
            for tid in a.take_queued():
                c = self.tasks.get(tid)
                if c is not None and c.state in (T.PENDING_ARGS, T.READY):
                    self._forward(c, rank)

    def remote_done(self, tid: int, results, lender: int) -> None:
        """A task this node forwarded ended on rank ``lender``: its values came home."""
        self.stream_ranks.pop(tid, None)
        t = self.tasks.get(tid)
        if t is None or t.state is not T.DISPATCHED or t.worker != AGENT:
            return
        for r in results:  # (oid, kind, payload, contained, lent)
            self.borrowed(r[4], lender)
        results = [r[:4] for r in results]
        status = P.APP_ERROR if any(kind == ERROR for _o, kind, _p, _c in results) else P.OK
        self._ended(t, AGENT, status, results, False)

    def borrowed(self, oids, lender: int) -> None:
        """Rank ``lender`` lent this one a hold on each of these objects (its own, or
        ones it holds itself): it goes back there when the object's placeholder here is
        freed (one per placeholder: a hold lent again goes back at once)."""
        for c in oids:
            co = self.objs.get(c) or self._remote_placeholder(c, fetch=False)
            if co is None or co.lent is not None or not co.remote:
                self._unlend(c, lender)  # (holds here count this rank's own objects)
            else:
                co.lent = lender

    def _unlend(self, oid: int, lender: int) -> None:
        self.out[AGENT].append(P.Unlend(oid, lender))

    # ------------------------------------------------------------------ remote objects
    def _remote_placeholder(self, oid: int, fetch: bool = True):
        """An object of another rank, not known here: a placeholder that tracks who holds
        it here, and (``fetch``) a request to bring its value from its home rank."""
        if self.agent is None or P.id_rank(oid) == self.rank:
            return None
        o = self._obj(oid, AGENT)
        o.remote = True
        if fetch and oid not in self.fetching:
            self.fetching.add(oid)
            self.out[AGENT].append(P.Fetch(oid))
        return o

    def put_fetched(self, oid: int, kind: int, payload, contained=()) -> None:
        """The agent brought an object of another rank: seal the placeholder (or drop the
        value at once if nobody here wants it any more)."""
        self.fetching.discard(oid)
        o = self._obj(oid, AGENT)
        o.remote = True
        self.seal(AGENT, oid, kind, payload, contained, owner_has_it=True)

    def _forward_actor_call(self, t, a=None) -> bool:
        """A call to an actor that lives on another rank: the rank its creation was
        placed on (known here, at its creator's node), else its creator's rank."""
        if self.agent is None:
            return False
        if a is not None:
            rank = a.remote_rank
        else:
            rank = P.id_rank(t.actor)
        if rank is None or rank == self.rank:
            return False
        self._forward(t, rank)
        return True

    # ------------------------------------------------------------------ streams
    def _stream_home(self, proc: int, tid: int, index: int, oid, kind: int, payload,
                     contained) -> None:
        """A value of a streaming task forwarded here: held here for the rank whose
        process asked (a lent hold, given back when its placeholder there goes), and
        told there in order (the end too), through the inboxes."""
        lent = ()
        if oid is not None:
            self.put_for(proc, LENT_HOLDER, oid, kind, payload, contained)
            lent = (oid,)
        self.out[AGENT].append(P.ToRank(P.id_rank(tid), P.StreamLent(tid, index, oid,
                                                                      self.rank), lent))

    def stream_lent(self, tid: int, index: int, oid, lender: int) -> None:
        """A value of a streaming task this node forwarded: its owner here holds it."""
        t = self.tasks.get(tid)
        if t is not None:
            self.stream_ranks[tid] = lender  # (its owner's StreamAcks go there)
        if oid is not None:
            self.borrowed((oid,), lender)
            o = self.objs.get(oid)
            if o is not None:
                if t is not None:
                    o.procs.add(t.owner)
                self._maybe_free(o)  # (nobody here: the hold goes back at once)
        if t is not None:
            self._send(t.owner, P.StreamItem(tid, index, oid))

    def _stream_ack_there(self, tid: int, consumed: int) -> None:
        rank = self.stream_ranks.get(tid)
        if rank is not None:
            self.out[AGENT].append(P.ToRank(rank, P.StreamAck(tid, consumed)))

    # ------------------------------------------------------------------ free resources
    def gather_available(self, proc: int, req: int) -> bool:
        """available_resources() under MPI: every rank's free resources, summed (False:
        this is the only node, answer at once)."""
        if self.agent is None or len(self.ranks) < 2:
            return False
        self.gathers[req] = [proc, len(self.ranks) - 1, dict(self.available())]
        for r in range(len(self.ranks)):
            if r != self.rank:
                self.out[AGENT].append(P.ToRank(r, P.AvailAsk(self.rank, proc, req)))
        return True

    def avail_ask(self, rank: int, proc: int, req: int) -> None:
        self.out[AGENT].append(P.ToRank(rank, P.AvailAnswer(proc, req, self.available())))

    def avail_answer(self, proc: int, req: int, avail: dict) -> None:
        g = self.gathers.get(req)
        if g is None:
            return
        for k, v in avail.items():
            g[2][k] = g[2].get(k, 0.0) + v
        g[1] -= 1
        if g[1] == 0:
            del self.gathers[req]
            self._send(proc, P.Reply(req, g[2]))

    def load_report(self) -> tuple[int, float]:
        return (self.ready_count(), float(self.avail.get("CPU", 0.0)))


def _fits_total(total: dict, res: tuple) -> bool:
    return all(amount <= total.get(name, 0) + 1e-9 for name, amount in res if amount)


__all__ = ["AGENT", "ClusterView", "LENT_HOLDER", "O", "SPILL_MIN_TASK_S"]
