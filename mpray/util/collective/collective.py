"""``mpray.util.collective``'s functions (Ray's ``ray.util.collective`` API on numpy arrays).

    init_collective_group(k, rank, group_name=g)        in each member (actor, task, driver)
        └─ Rendezvous "mpray.collective:g" (named async actor, get-or-create) ─ join ─▶
           every member's host, pid, rank 0's segment
        └─ all on one host (x86-64 Linux) ─▶ ShmGroup   (shm.py: one shared segment)
           otherwise                       ─▶ StoreGroup (store.py: refs through the actor)
    allreduce(t, group_name=g) ─▶ _groups[g].allreduce(t, op)   (in place, as Ray's)

``create_collective_group(actors, ...)`` declares the members from the driver instead: each
member joins on its first collective call, with the rank it was given.
"""

from __future__ import annotations

import os
import platform
import sys
import threading

from . import futex
from .rendezvous import Rendezvous, host_key, rendezvous_get
from .shm import ShmGroup, create_segment, open_segment
from .store import StoreGroup
from .types import Backend, CollectiveError, ReduceOp, check_tensor

DEFAULT_TIMEOUT_S = 1800.0  # a member waiting this long for another fails (gloo_timeout)
_groups: dict[str, object] = {}
_lock = threading.Lock()
_actor_cls = None


def _rendezvous_class():
    global _actor_cls
    if _actor_cls is None:
        import mpray

        _actor_cls = mpray.remote(num_cpus=0, max_concurrency=1000)(Rendezvous)
    return _actor_cls


def _rendezvous(group_name: str, world_size: int):
    return _rendezvous_class().options(
        name=_actor_name(group_name), get_if_exists=True, lifetime="detached").remote(world_size)


def _actor_name(group_name: str) -> str:
    return f"mpray.collective:{group_name}"


def shm_possible() -> bool:
    """Can this process take part in a shared-memory group?  (Its ordering argument holds
    on x86-64; elsewhere ``auto`` goes through the store.)"""
    return (sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64")
            and futex.available and hasattr(os, "memfd_create"))


def _check_args(world_size, rank, group_name) -> None:
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, not {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), not {rank!r}")
    if not isinstance(group_name, str) or not group_name:
        raise ValueError(f"group_name must be a non-empty string, not {group_name!r}")


def init_collective_group(world_size: int, rank: int, backend=Backend.AUTO,
                          group_name: str = "default", gloo_timeout: int | None = None) -> None:
    """Join the group ``group_name`` as ``rank`` of ``world_size``; returns once every
    member has joined.  ``gloo_timeout`` (ms, as Ray's): how long a member waits for the
    others, in forming the group and in each collective (default 30 minutes)."""
    _check_args(world_size, rank, group_name)
    b = Backend.resolve(backend)
    timeout = DEFAULT_TIMEOUT_S if gloo_timeout is None else gloo_timeout / 1000.0
    if timeout <= 0:
        raise ValueError(f"gloo_timeout must be positive, not {gloo_timeout!r}")
    with _lock:
        if group_name in _groups:
            raise RuntimeError(f"collective group {group_name!r} is already initialized "
                               f"in this process")
        _groups[group_name] = _form(world_size, rank, b, group_name, timeout)


def _form(k: int, rank: int, backend: str, name: str, timeout: float):
    rv = _rendezvous(name, k)
    shm_ok = backend != Backend.STORE and shm_possible()
    fd = create_segment(k) if rank == 0 and shm_ok else None
    info = {"rank": rank, "pid": os.getpid(), "host": host_key(), "fd": fd, "shm": shm_ok}
    try:
        table = rendezvous_get(rv.join.remote(rank, k, info, timeout), timeout, name)
        one_host = all(m["shm"] and m["host"] == info["host"] for m in table)
        if backend == Backend.SHM and not one_host:
            raise CollectiveError(f"backend 'shm' needs every member on one x86-64 Linux "
                                  f"host; the members' hosts: {[m['host'] for m in table]}")
        if one_host and table[0]["fd"] is not None:
            seg = fd if rank == 0 else open_segment(table[0]["pid"], table[0]["fd"])
            fd = None  # the group owns it now
            return ShmGroup(name, k, rank, seg, [m["pid"] for m in table], timeout)
        return StoreGroup(name, k, rank, rv, timeout)
    finally:
        if fd is not None:
            os.close(fd)


def create_collective_group(actors: list, world_size: int, ranks: list[int],
                            backend=Backend.AUTO, group_name: str = "default",
                            gloo_timeout: int | None = None) -> None:
    """Declare, from the driver, that ``actors[i]`` is ``ranks[i]`` of the group: each joins
    on its first collective call (as Ray's declarative API)."""
    import mpray

    if len(actors) != world_size or sorted(ranks) != list(range(world_size)):
        raise ValueError(f"{len(actors)} actors and ranks {ranks} do not make a group of "
                         f"{world_size}: give one actor per rank 0..{world_size - 1}")
    Backend.resolve(backend)
    rv = _rendezvous(group_name, world_size)
    ids = [a._actor_id.hex() for a in actors]
    mpray.get(rv.declare.remote(ids, list(ranks), {"backend": backend,
                                                   "gloo_timeout": gloo_timeout}))


def _group(group_name: str):
    g = _groups.get(group_name)
    if g is not None:
        return g
    import mpray

    me = mpray.get_runtime_context().get_actor_id()
    try:
        rv = mpray.get_actor(_actor_name(group_name))
        said = mpray.get(rv.declared_rank.remote(me)) if me else None
    except ValueError:
        said = None
    if said is None:
        raise RuntimeError(f"collective group {group_name!r} is not initialized in this "
                           f"process: call init_collective_group() here, or "
                           f"create_collective_group() with this actor first")
    k, rank, setup = said
    init_collective_group(k, rank, setup["backend"], group_name, setup["gloo_timeout"])
    return _groups[group_name]


def destroy_collective_group(group_name: str = "default") -> None:
    """Leave the group (this process's part of it); the last member to leave removes the
    group's Rendezvous actor, so the name can be used again."""
    import mpray

    with _lock:
        g = _groups.pop(group_name, None)
    if g is None:
        return
    g.destroy()
    try:
        rv = mpray.get_actor(_actor_name(group_name))
        if mpray.get(rv.leave.remote()) <= 0:
            mpray.kill(rv)
    except ValueError:
        pass


def is_group_initialized(group_name: str = "default") -> bool:
    return group_name in _groups


def get_rank(group_name: str = "default") -> int:
    g = _groups.get(group_name)
    return -1 if g is None else g.rank


def get_collective_group_size(group_name: str = "default") -> int:
    g = _groups.get(group_name)
    return -1 if g is None else g.k


def get_group_backend(group_name: str = "default") -> str | None:
    """``"shm"`` or ``"store"``: the transport the group chose (None: not initialized)."""
    g = _groups.get(group_name)
    return None if g is None else g.backend


def _peer(g, r: int, what: str) -> int:
    if not isinstance(r, int) or not 0 <= r < g.k:
        raise ValueError(f"{what} must be a rank in [0, {g.k}), not {r!r}")
    return r


def _same(g, tensors, t, what: str) -> list:
    if not isinstance(tensors, (list, tuple)) or len(tensors) != g.k:
        raise ValueError(f"{what} must be a list of {g.k} arrays (one per member)")
    for x in tensors:
        check_tensor(x, what + " item", writable=what == "tensor_list")
        if x.shape != t.shape or x.dtype != t.dtype:
            raise ValueError(f"{what}'s arrays must each be shaped as the tensor "
                             f"({t.shape} {t.dtype}), not {x.shape} {x.dtype}")
    return list(tensors)


def allreduce(tensor, group_name: str = "default", op=ReduceOp.SUM) -> None:
    """Reduce ``tensor`` across the group, in place on every member."""
    g = _group(group_name)
    g.allreduce(check_tensor(tensor), ReduceOp(op))


def reduce(tensor, dst_rank: int = 0, group_name: str = "default", op=ReduceOp.SUM) -> None:
    """Reduce ``tensor`` across the group into ``dst_rank``'s ``tensor``."""
    g = _group(group_name)
    g.reduce(check_tensor(tensor), _peer(g, dst_rank, "dst_rank"), ReduceOp(op))


def broadcast(tensor, src_rank: int = 0, group_name: str = "default") -> None:
    """Copy ``src_rank``'s ``tensor`` into every member's ``tensor``."""
    g = _group(group_name)
    g.broadcast(check_tensor(tensor), _peer(g, src_rank, "src_rank"))


def allgather(tensor_list: list, tensor, group_name: str = "default") -> None:
    """Fill ``tensor_list[j]`` with member j's ``tensor``, on every member."""
    g = _group(group_name)
    t = check_tensor(tensor, writable=False)
    g.allgather(_same(g, tensor_list, t, "tensor_list"), t)


def reducescatter(tensor, tensor_list: list, group_name: str = "default",
                  op=ReduceOp.SUM) -> None:
    """Member i's ``tensor`` = the reduction over members of their ``tensor_list[i]``."""
    g = _group(group_name)
    t = check_tensor(tensor)
    g.reducescatter(t, _same(g, tensor_list, t, "tensor_list "), ReduceOp(op))


def barrier(group_name: str = "default") -> None:
    """Return once every member has called barrier."""
    _group(group_name).barrier()


def send(tensor, dst_rank: int, group_name: str = "default") -> None:
    """Send ``tensor`` to ``dst_rank`` (which calls ``recv`` with a tensor of its size)."""
    g = _group(group_name)
    g.send(check_tensor(tensor, writable=False), _peer(g, dst_rank, "dst_rank"))


def recv(tensor, src_rank: int, group_name: str = "default") -> None:
    """Receive into ``tensor`` what ``src_rank`` sends."""
    g = _group(group_name)
    g.recv(check_tensor(tensor), _peer(g, src_rank, "src_rank"))
