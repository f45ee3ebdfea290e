"""States and transitions of every control plane's entities, written as data.

The node's machine (``scheduler.Scheduler`` and its parts: tasks, objects, workers,
actors) and the owner's (``owner.Owner``: its direct tasks, leases, owned objects and
actor channels) move every entity only through ``_move``, which checks these tables and
raises ``TransitionError`` with the entity's recent history on an impossible transition,
so a protocol bug surfaces loudly in tests instead of corrupting a process.
"""

from __future__ import annotations

import enum

class _State(enum.Enum):
    __hash__ = object.__hash__  # Enum hashes by name in Python; identity is C-fast


class TaskState(_State):
    PENDING_ARGS = "PENDING_ARGS"
    READY = "READY"
    DISPATCHED = "DISPATCHED"
    RETRYING = "RETRYING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class ObjState(_State):
    PENDING = "PENDING"
    INLINE = "INLINE"
    IN_ARENA = "IN_ARENA"
    EVICTING = "EVICTING"  # still in the arena (readable), being written out / evicted
    SPILLED = "SPILLED"  # only in a spill file
    RESTORING = "RESTORING"  # being read back into the arena
    FREED = "FREED"


class WorkerState(_State):
    STARTING = "STARTING"
    IDLE = "IDLE"
    BUSY = "BUSY"
    BLOCKED = "BLOCKED"
    DEAD = "DEAD"


class ActorState(_State):
    PENDING_CREATION = "PENDING_CREATION"
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


T, O, W, A = TaskState, ObjState, WorkerState, ActorState
TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    # PENDING_ARGS -> DISPATCHED: forwarded to another rank, which fetches the arguments
    T.PENDING_ARGS: frozenset({T.READY, T.DISPATCHED, T.FAILED, T.CANCELLED}),
    # READY -> PENDING_ARGS: an argument went to disk while it waited (read back first)
    T.READY: frozenset({T.PENDING_ARGS, T.DISPATCHED, T.FAILED, T.CANCELLED}),
    # DISPATCHED -> READY: a pipelined task handed back unstarted (its worker blocked/died)
    T.DISPATCHED: frozenset({T.READY, T.FINISHED, T.FAILED, T.RETRYING, T.CANCELLED}),
    T.RETRYING: frozenset({T.READY, T.CANCELLED}),
    T.FINISHED: frozenset(),
    T.FAILED: frozenset(),
    T.CANCELLED: frozenset(),
}
OBJ_TRANSITIONS: dict[ObjState, frozenset[ObjState]] = {
    O.PENDING: frozenset({O.INLINE, O.IN_ARENA, O.FREED}),
    O.INLINE: frozenset({O.FREED}),
    # spilling (node/spill.py): an object leaves the arena once it is on disk and no
    # process still reads its old place (EVICTING -> IN_ARENA: a reader came, or the
    # write failed); it comes back when somebody wants it (RESTORING, with a hold that
    # keeps it until the copy is done)
    O.IN_ARENA: frozenset({O.EVICTING, O.FREED}),
    O.EVICTING: frozenset({O.IN_ARENA, O.SPILLED, O.FREED}),
    O.SPILLED: frozenset({O.RESTORING, O.FREED}),
    # RESTORING -> PENDING: its file was lost; the task that made it runs again
    O.RESTORING: frozenset({O.IN_ARENA, O.PENDING}),
    O.FREED: frozenset(),
}
WORKER_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    W.STARTING: frozenset({W.IDLE, W.DEAD}),
    W.IDLE: frozenset({W.BUSY, W.DEAD}),
    W.BUSY: frozenset({W.IDLE, W.BLOCKED, W.DEAD}),
    W.BLOCKED: frozenset({W.BUSY, W.DEAD}),
    W.DEAD: frozenset(),
}
# An actor is created once (its constructor runs on a dedicated worker); when that
# process dies it is re-created while restarts are left; DEAD is final (killed, out of
# restarts, constructor failed, or every handle to it gone).
ACTOR_TRANSITIONS: dict[ActorState, frozenset[ActorState]] = {
    A.PENDING_CREATION: frozenset({A.ALIVE, A.RESTARTING, A.DEAD}),
    A.ALIVE: frozenset({A.RESTARTING, A.DEAD}),
    A.RESTARTING: frozenset({A.ALIVE, A.DEAD}),
    A.DEAD: frozenset(),
}

# A placement group (node/placement_groups.py, rank 0's registry): PENDING until its
# bundles fit somewhere (an infeasible group waits, as in Ray), PREPARED while the ranks
# chosen reserve them, CREATED once all have; REMOVED is final.


class PlacementGroupState(_State):
    PENDING = "PENDING"
    PREPARED = "PREPARED"
    CREATED = "CREATED"
    REMOVED = "REMOVED"


G = PlacementGroupState
PG_TRANSITIONS: dict[PlacementGroupState, frozenset[PlacementGroupState]] = {
    G.PENDING: frozenset({G.PREPARED, G.REMOVED}),
    G.PREPARED: frozenset({G.CREATED, G.REMOVED}),
    G.CREATED: frozenset({G.REMOVED}),
    G.REMOVED: frozenset(),
}


# ----------------------------------------------------------------------------- the owner
# (owner/machine.py: the driver's decisions about its direct tasks, its leases and its calls to
# actors.  Objects of the node path are the node's business and not tracked here.)


class OwnedState(_State):
    """A return object of a task the owner runs itself (on a lease, or a direct call)."""

    PENDING = "PENDING"  # the value is not here yet; the node has never heard of it
    PROMISED = "PROMISED"  # pending, and the node holds a Promise (a ref left this process)
    LOCAL = "LOCAL"  # the value came here directly; the node has never heard of it


class DirectState(_State):
    """A task the owner runs on one of its leases."""

    QUEUED = "QUEUED"  # waits here for room on a lease
    SENT = "SENT"  # in a lease's ring or running there
    ENDED = "ENDED"  # its outcome is known here (or it went the node's way)


class LeaseState(_State):
    """A worker leased to the owner (seen from the owner)."""

    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"  # its task waits in get: it handed its queued tasks back
    ENDED = "ENDED"  # expired (idle), bounced a task, or died


class ChannelState(_State):
    """An actor as its caller sees it (from the node's ActorUpdate messages)."""

    UNKNOWN = "UNKNOWN"  # no update yet: calls wait here (the constructor may still run)
    ALIVE = "ALIVE"
    RESTARTING = "RESTARTING"
    DEAD = "DEAD"


OW, D, L, C = OwnedState, DirectState, LeaseState, ChannelState
OWNED_TRANSITIONS: dict[OwnedState, frozenset[OwnedState]] = {
    # (leaving the table: the value arrived and the node holds it, or it is gone)
    OW.PENDING: frozenset({OW.PROMISED, OW.LOCAL}),
    OW.PROMISED: frozenset(),
    OW.LOCAL: frozenset(),
}
DIRECT_TRANSITIONS: dict[DirectState, frozenset[DirectState]] = {
    D.QUEUED: frozenset({D.SENT, D.ENDED}),
    # SENT -> QUEUED: handed back unstarted (its worker blocks, or its lease ended)
    D.SENT: frozenset({D.QUEUED, D.ENDED}),
    D.ENDED: frozenset(),
}
LEASE_TRANSITIONS: dict[LeaseState, frozenset[LeaseState]] = {
    L.ACTIVE: frozenset({L.PAUSED, L.ENDED}),
    L.PAUSED: frozenset({L.ACTIVE, L.ENDED}),
    L.ENDED: frozenset(),
}
CHANNEL_TRANSITIONS: dict[ChannelState, frozenset[ChannelState]] = {
    C.UNKNOWN: frozenset({C.ALIVE, C.RESTARTING, C.DEAD}),
    C.ALIVE: frozenset({C.RESTARTING, C.DEAD}),
    C.RESTARTING: frozenset({C.ALIVE, C.DEAD}),
    C.DEAD: frozenset(),
}


class TransitionError(RuntimeError):
    """An event asked for a transition the state table does not allow (a bug)."""


def _move(entity, new, table, what: str) -> None:
    old = entity.state
    if new not in table[old]:
        raise TransitionError(
            f"{what} {entity.key}: {old.value} -> {new.value} is not allowed; "
            f"history: {' -> '.join(s.value for s in entity.history[-8:])}"
        )
    entity.state = new
    entity.history.append(new)
