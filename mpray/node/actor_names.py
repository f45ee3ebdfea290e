"""Actor names, unique in the whole job: rank 0's node keeps every rank's names (pure).

A mixin of ``scheduler.Scheduler`` beside ``actor_table.ActorTable``.  On one host (or
rank 0) names live in ``ActorTable.names`` alone.  Under MPI, rank 0 is the job's name
registry, as Ray's GCS is::

    rank r: submit(named creation) ─▶ parked in ``claiming`` ─▶ NameClaim ─▶ rank 0
    rank 0: name free?  ─▶ kept in ``remote_names`` ─▶ NameAnswer ok ─▶ rank r admits it
            taken        ─▶ NameAnswer exists|error ─▶ rank r answers the creator
    rank r: get_actor() not known here ─▶ NameLookup ─▶ rank 0 ─┬─ its own ─▶ NameFound
            (rank 0 and get_actor() of another rank's actor: straight ─┴─ another rank's:
             to the rank that has it)                        NameLookup there ─▶ NameFound
            NameFound comes from the rank whose actor it is, with a hold on it lent to
            the asking rank (see cluster), so a handle found so keeps the actor alive
    rank r: the actor's name is freed (death, kill) ─▶ NameFree ─▶ rank 0

"""

from __future__ import annotations

from .. import protocol as P
from .cluster import AGENT, LENT_HOLDER
from ..states import A

LATER = object()  # a query whose answer comes from another rank


def name_taken(key: tuple) -> str:
    return f"Actor with name '{key[1]}' already exists in the namespace {key[0] or '(default)'}"


class ActorNames:
    """Names across ranks (uses names, actors, rank, ranks, agent, out, submit)."""

    def _init_names(self) -> None:
        self.claiming: dict[int, tuple[int, tuple]] = {}  # aid -> (proc, creation spec)
        self.cleared: set[int] = set()  # aids whose name rank 0 granted (admit them now)
        # rank 0: other ranks' names: (namespace, name) -> (aid, meta, the rank that has it)
        self.remote_names: dict[tuple, tuple[int, dict, int]] = {}

    def _names_at_rank0(self) -> bool:
        """True where names must be cleared with rank 0 (a rank other than 0 of a job)."""
        return self.agent is not None and len(self.ranks) > 1 and self.rank != 0

    def _to_rank(self, rank: int, msg: P.Record) -> None:
        self.out[AGENT].append(P.ToRank(rank, msg))

    def _claim_elsewhere(self, proc: int, spec: tuple, key: tuple) -> bool:
        """Park a named creation until rank 0 grants its name (True: parked)."""
        aid = spec.tid
        if aid in self.cleared:
            self.cleared.discard(aid)
            return False
        opts = spec.create
        self.claiming[aid] = (proc, spec)
        self._to_rank(0, P.NameClaim(self.rank, key, aid, opts.get("meta"),
                                     bool(opts.get("get_if_exists"))))
        return True

    def _live_named(self, key: tuple):
        """The live actor of this node that has this name, or None."""
        aid = self.names.get(key)
        a = self.actors.get(aid) if aid is not None else None
        if a is None or a.state is A.DEAD or a.anchor not in self.objs:
            return None
        return a

    def named(self, key: tuple) -> tuple[int, dict] | None:
        """(aid, meta) of the live actor that has this name, here or (rank 0) anywhere."""
        a = self._live_named(key)
        if a is not None:
            return (a.key, a.opts.get("meta"))
        entry = self.remote_names.get(key)
        return entry[:2] if entry is not None else None

    # ------------------------------------------------------------------ rank 0
    def name_claim(self, rank: int, key: tuple, aid: int, meta, get_if_exists: bool) -> None:
        found = self.named(key)
        if found is None:
            self.remote_names[key] = (aid, meta, rank)
            answer: tuple = ("ok",)
        elif get_if_exists:
            answer = ("exists", found[0], found[1])
        else:
            answer = ("error", name_taken(key))
        self._to_rank(rank, P.NameAnswer(aid, answer))

    def name_lookup(self, rank: int, req: int, proc: int, key: tuple) -> None:
        """get_actor() on ``rank``: answered by the rank whose actor it is."""
        a = self._live_named(key)
        if a is None:
            entry = self.remote_names.get(key)  # (rank 0: another rank's actor: ask it)
            if entry is not None and entry[2] != self.rank:
                self._to_rank(entry[2], P.NameLookup(rank, req, proc, key))
            else:
                self._to_rank(rank, P.NameFound(req, proc, None, (), self.rank))
            return
        # the handle found there holds the actor here: a hold lent to that rank, which
        # this node takes now and its agent counts (given back when the handle goes)
        self.objs[a.anchor].procs.add(LENT_HOLDER)
        lent = (a.anchor,)
        found = (a.key, a.opts.get("meta"))
        self.out[AGENT].append(P.ToRank(rank, P.NameFound(req, proc, found, lent, self.rank),
                                        lent))

    def name_free(self, key: tuple, aid: int) -> None:
        if self.remote_names.get(key, (None,))[0] == aid:
            del self.remote_names[key]

    # ------------------------------------------------------------------ other ranks
    def name_answer(self, aid: int, answer: tuple) -> None:
        proc, spec = self.claiming.pop(aid)
        if answer[0] == "ok":
            self.cleared.add(aid)
            self.submit(proc, spec)
        else:  # taken: the creator hears it (and the actor that has it, if it asked)
            self._send(proc, P.Reply(spec.create.get("req"), answer))

    def name_found(self, req: int, proc: int, found, lent: tuple, lender: int) -> None:
        """The answer to a get_actor() of ``proc`` here (from the actor's rank)."""
        if lent:
            self.borrowed(lent, lender)
            self.objs[lent[0]].procs.add(proc)  # (as a local lookup holds it for proc)
        self._send(proc, P.Reply(req, found))

    def ask_name(self, proc: int, req: int, key: tuple):
        """get_actor() of a name with no live actor here: another rank answers (LATER),
        or None (no rank has it)."""
        if self._names_at_rank0():
            self._to_rank(0, P.NameLookup(self.rank, req, proc, key))
            return LATER
        entry = self.remote_names.get(key)  # (rank 0: another rank's actor: ask it)
        if entry is None or entry[2] == self.rank:
            return None
        self._to_rank(entry[2], P.NameLookup(self.rank, req, proc, key))
        return LATER

    def _name_freed(self, key: tuple, aid: int) -> None:
        if self._names_at_rank0():
            self._to_rank(0, P.NameFree(key, aid))
