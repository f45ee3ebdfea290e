"""The collective group for members on several hosts: every array goes through mpray's
object store (``put`` on the sending member's node; ``get`` moves it by RMA across ranks)
and the refs meet in the group's Rendezvous actor.

    member i: put(chunks) ──refs──▶ Rendezvous.exchange(seq) ──refs addressed to i──▶
              get(refs) (RMA when remote) ─▶ reduce ─▶ put(result) ─▶ exchange ─▶ get ─▶ copy

A member keeps the refs it put until its next exchange completes: by then every member has
finished the previous collective, so every reader has its copy.
"""

from __future__ import annotations

import numpy as np

from .reduce import ReduceOp, reduce_into
from .rendezvous import rendezvous_get
from .types import CollectiveError, flat_view


SMALL = 1 << 20  # bytes up to which an allreduce takes one exchange, not two


class StoreGroup:
    backend = "store"

    def __init__(self, name: str, k: int, rank: int, rv, timeout: float):
        import mpray

        self.ray = mpray
        self.name, self.k, self.rank, self.rv, self.timeout = name, k, rank, rv, timeout
        self.seq = 0
        self.held: list = []
        self.sent: dict[int, int] = {}  # dst -> messages sent
        self.got: dict[int, int] = {}  # src -> messages received
        self.barrier()

    def _exchange(self, desc: tuple, out: dict) -> dict:
        """Post ``out`` ({dst: array}, one put per distinct array) and return the refs
        addressed to this member ({src: ref})."""
        put: dict[int, object] = {}
        refs = {}
        for dst, a in out.items():
            if id(a) not in put:
                put[id(a)] = self.ray.put(a)
            refs[dst] = put[id(a)]
        self.seq += 1
        call = self.rv.exchange.remote(self.seq, self.rank, desc, refs, self.timeout)
        got = self._get(call)
        self.held = list(put.values())  # (the last collective's refs go: all have read them)
        return got

    def _get(self, ref):
        return rendezvous_get(ref, self.timeout, self.name)

    def _fetch(self, refs: dict) -> dict:
        srcs = sorted(refs)
        return dict(zip(srcs, self.ray.get([refs[s] for s in srcs])))

    def barrier(self) -> None:
        self._exchange(("barrier",), {})

    def allreduce(self, t: np.ndarray, op: ReduceOp) -> None:
        """Small arrays: everyone gets everyone's array and reduces all of it (one
        exchange).  Large ones: member j reduces chunk j of all, then all gather the
        reduced chunks (two exchanges, each member moving about twice its array)."""
        desc = ("allreduce", t.dtype.str, t.shape, int(op))
        if t.nbytes <= SMALL:
            got = self._fetch(self._exchange(desc, {j: t for j in range(self.k)
                                                    if j != self.rank}))
            got[self.rank] = t
            out = np.empty(t.size, t.dtype)
            reduce_into(out, [got[j].reshape(-1) for j in range(self.k)], op)
            np.copyto(t, out.reshape(t.shape))
            return
        a = flat_view(t)
        a = t.reshape(-1).copy() if a is None else a
        parts = np.array_split(a, self.k)
        got = self._fetch(self._exchange(desc, {j: parts[j] for j in range(self.k)
                                                if j != self.rank}))
        mine = np.empty_like(parts[self.rank])
        reduce_into(mine, [parts[self.rank], *(got[s] for s in sorted(got))], op)
        got = self._fetch(self._exchange(desc + (1,), {j: mine for j in range(self.k)
                                                       if j != self.rank}))
        got[self.rank] = mine
        at = 0
        for j in range(self.k):
            a[at:at + got[j].size] = got[j]
            at += got[j].size
        if flat_view(t) is None:
            np.copyto(t, a.reshape(t.shape))

    def reduce(self, t: np.ndarray, dst: int, op: ReduceOp) -> None:
        desc = ("reduce", t.dtype.str, t.shape, int(op), dst)
        got = self._exchange(desc, {dst: t} if self.rank != dst else {})
        if self.rank == dst:
            got = self._fetch(got)
            out = np.empty(t.size, t.dtype)
            reduce_into(out, [t.reshape(-1), *(got[s].reshape(-1) for s in sorted(got))], op)
            np.copyto(t, out.reshape(t.shape))

    def broadcast(self, t: np.ndarray, src: int) -> None:
        desc = ("broadcast", t.dtype.str, t.shape, src)
        out = {j: t for j in range(self.k) if j != src} if self.rank == src else {}
        got = self._exchange(desc, out)
        if self.rank != src:
            np.copyto(t, self._fetch(got)[src])

    def allgather(self, out: list, t: np.ndarray) -> None:
        desc = ("allgather", t.dtype.str, t.shape)
        got = self._fetch(self._exchange(desc, {j: t for j in range(self.k)
                                                if j != self.rank}))
        got[self.rank] = t
        for j, o in enumerate(out):
            np.copyto(o, got[j])

    def reducescatter(self, t: np.ndarray, parts: list, op: ReduceOp) -> None:
        desc = ("reducescatter", t.dtype.str, t.shape, int(op))
        got = self._fetch(self._exchange(desc, {j: parts[j] for j in range(self.k)
                                                if j != self.rank}))
        out = np.empty(t.size, t.dtype)
        reduce_into(out, [parts[self.rank].reshape(-1),
                          *(got[s].reshape(-1) for s in sorted(got))], op)
        np.copyto(t, out.reshape(t.shape))

    def send(self, t: np.ndarray, dst: int) -> None:
        n = self.sent[dst] = self.sent.get(dst, 0) + 1
        # the Rendezvous holds the ref (a borrower) until the receiver takes it
        self._get(self.rv.post.remote(self.rank, dst, n, [self.ray.put(t)]))

    def recv(self, t: np.ndarray, src: int) -> None:
        n = self.got[src] = self.got.get(src, 0) + 1
        ref = self._get(self.rv.take.remote(src, self.rank, n, self.timeout))[0]
        v = self.ray.get(ref)
        if v.nbytes != t.nbytes:
            raise CollectiveError(f"collective group {self.name!r}: rank {src} sent "
                                  f"{v.nbytes} bytes, recv's tensor has {t.nbytes}")
        np.copyto(t, v.reshape(t.shape))

    def destroy(self) -> None:
        self.held = []
