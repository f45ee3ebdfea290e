"""The group's meeting point: one named async actor per collective group.

    init_collective_group ──join(rank, info)──▶ Rendezvous ── every member's info, once all
                                                  │           world_size have joined
    create_collective_group ──declare(ids)──▶     │ ◀── declared_rank(actor id) (lazily, on
                                                  │     a declared member's first call)
    store backend: exchange(seq, rank, refs) ──▶  │ ── each member's incoming refs, once
                   post / take (send, recv)       │    all have posted for ``seq``

Members on one host use it only to form the group (then they meet in shared memory); the
``store`` backend passes every collective's object refs through it.  It holds refs only
until their readers took them.
"""

from __future__ import annotations

import asyncio
import os

from .types import CollectiveError, CollectiveTimeoutError, process_alive


class Rendezvous:
    def __init__(self, world_size: int):
        self.k = world_size
        self.members: dict[int, dict] = {}
        self.formed: asyncio.Event | None = None
        self.declared: dict[str, int] = {}  # actor id -> rank (create_collective_group)
        self.setup: dict = {}
        self.ops: dict[int, list] = {}  # seq -> [posted, event, inbox {dst: {src: v}}, taken]
        self.mail: dict[tuple, list] = {}  # (src, dst, n) -> [event, ref]

    def declare(self, ids: list[str], ranks: list[int], setup: dict) -> None:
        self.declared = dict(zip(ids, ranks))
        self.setup = setup

    def declared_rank(self, actor_id: str | None):
        rank = self.declared.get(actor_id)
        return None if rank is None else (self.k, rank, self.setup)

    async def join(self, rank: int, world_size: int, info: dict, timeout: float) -> list:
        if world_size != self.k:
            raise CollectiveError(f"rank {rank} joined with world_size {world_size}, but the "
                                  f"group was formed with {self.k}")
        if self.formed is None or len(self.members) == self.k:  # a new formation
            self.members, self.formed, self.left = {}, asyncio.Event(), 0
        if rank in self.members:
            raise CollectiveError(f"rank {rank} joined twice (pids "
                                  f"{self.members[rank]['pid']} and {info['pid']})")
        self.members[rank] = info
        formed = self.formed
        if len(self.members) == self.k:
            formed.set()
        try:
            await asyncio.wait_for(formed.wait(), timeout)
        except asyncio.TimeoutError:
            missing = sorted(set(range(self.k)) - set(self.members))
            raise CollectiveTimeoutError(
                f"ranks {missing} of {self.k} did not join within {timeout:g} s") from None
        return [self.members[j] for j in range(self.k)]

    async def exchange(self, seq: int, rank: int, desc, out: dict, timeout: float) -> dict:
        """Everyone posts ``out`` ({dst: value}); each gets {src: value} once all posted."""
        st = self.ops.get(seq)
        if st is None:
            st = self.ops[seq] = [0, asyncio.Event(), {}, 0, {}]
        st[4][rank] = desc
        for dst, v in out.items():
            st[2].setdefault(dst, {})[rank] = v
        st[0] += 1
        if st[0] == self.k:
            st[1].set()
        await self._wait(st[1], timeout, lambda: sorted(set(range(self.k)) - set(st[4])))
        if len(set(map(repr, st[4].values()))) > 1:
            got = CollectiveError(f"the members called different collectives or shapes: "
                                  f"{dict(sorted(st[4].items()))}")
        else:
            got = st[2].pop(rank, {})
        st[3] += 1
        if st[3] == self.k:
            del self.ops[seq]
        if isinstance(got, Exception):
            raise got
        return got

    def post(self, src: int, dst: int, n: int, value) -> None:
        box = self.mail.setdefault((src, dst, n), [asyncio.Event(), None])
        box[1] = value
        box[0].set()

    async def take(self, src: int, dst: int, n: int, timeout: float):
        box = self.mail.setdefault((src, dst, n), [asyncio.Event(), None])
        await self._wait(box[0], timeout, lambda: [src])
        del self.mail[(src, dst, n)]
        return box[1]

    async def _wait(self, ev: asyncio.Event, timeout: float, missing) -> None:
        """Wait for ``ev``; fail when a member this host can see died, or at ``timeout``."""
        waited = 0.0
        while not ev.is_set():
            try:
                await asyncio.wait_for(ev.wait(), 1.0)
            except asyncio.TimeoutError:
                waited += 1.0
                dead = [j for j in missing() if not _alive(self.members.get(j))]
                if dead:
                    raise CollectiveError(f"rank(s) {dead} of the group died "
                                          f"({[self.members[j]['pid'] for j in dead]})")
                if waited >= timeout:
                    raise CollectiveTimeoutError(
                        f"ranks {missing()} did not arrive within {timeout:g} s") from None

    def leave(self) -> int:
        """A member destroyed the group: how many are still in it."""
        self.left = getattr(self, "left", 0) + 1
        return self.k - self.left


def rendezvous_get(ref, timeout: float, name: str):
    """The answer of a Rendezvous call; its CollectiveError raised here as one (a
    RayTaskError that is also the CollectiveError, with the actor's traceback)."""
    import mpray

    try:
        return mpray.get(ref, timeout=timeout + 5)
    except mpray.exceptions.RayTaskError as e:
        raise e.as_instanceof_cause() from None
    except mpray.exceptions.GetTimeoutError as e:
        raise CollectiveTimeoutError(f"collective group {name!r}: its Rendezvous actor did "
                                     f"not answer within {timeout:g} s") from e


def _alive(info: dict | None) -> bool:
    """Is a member alive, as far as this process can tell (a pid on its own host)?"""
    if not info or info.get("host") != host_key():
        return True
    return process_alive(info["pid"])


def host_key() -> str:
    """Processes with the same key share this host's memory: the host, its boot, and the
    pid namespace (a pid in another namespace could not be checked or opened)."""
    import socket

    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        boot, ns = "", ""
    return f"{socket.gethostname()}/{boot}/{ns}"
