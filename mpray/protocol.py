"""Message opcodes and id layout shared by the client, the node and the workers.

Every frame on a ring is ``pickle.dumps(list_of_messages)``; a message is a tuple whose
first item is one of the opcodes below.  Tuples of ints/bytes pickle and unpickle in
about a microsecond, which keeps the per-message cost at the level FACTS.md measured.

Upstream (driver/worker ─▶ node)                 Downstream (node ─▶ driver/worker)
  SUBMIT  (op, spec)                               OBJ        (op, oid, kind, payload)
  PUT     (op, oid, kind, payload, contained)      EXEC       (op, tid, fid, fblob, name, args,
  REFS    (op, increfs, decrefs)                               deps, returns, gpus, retry_exc)
  SUBSCRIBE (op, oids)                             ALLOC_OK   (op, req, offset | None, error)
  PIN / UNPIN (op, oids)                           REPLY      (op, req, data)
  ALLOC   (op, req, nbytes)                        STOP       (op,)
  DONE    (op, tid, status, results, retryable)
  BLOCKED (op, returned_tids) / UNBLOCKED (op,)
  RETURN  (op, tids)                               DROP       (op, tid)
  CANCEL  (op, tid, force, recursive)
  FUNC    (op, fid, blob)
  QUERY   (op, req, what)
  SHUTDOWN (op,)

Ids are Python ints: ``(rank << 56) | (proc << 36) | counter``.  A task id ``t`` owns the
return ids ``t+1 … t+num_returns``, so an object's producing task is known without a
lookup table on the client side.
"""

from __future__ import annotations

# upstream
SUBMIT = 1
PUT = 2
REFS = 3
SUBSCRIBE = 4
PIN = 5
UNPIN = 6
ALLOC = 7
DONE = 8
BLOCKED = 9
UNBLOCKED = 10
CANCEL = 11
FUNC = 12
QUERY = 13
SHUTDOWN = 14
FREE_RANGE = 15  # (op, offset): an ALLOC whose value was never sealed
RETURN = 16  # (op, tids): pipelined tasks handed back unstarted

# downstream
OBJ = 32
EXEC = 33
ALLOC_OK = 34
REPLY = 35
STOP = 36
DROP = 37  # (op, tid): forget a queued task (it was cancelled)
SLOT = 38  # (op, slot, wid): a worker now writes results to the driver through mailbox slot
SLOT_FREE = 39  # (op, slot): that worker is gone; drain the slot and stop polling it

# leases: the driver sends default-shaped tasks straight to workers it leased
LEASE_END = 18  # worker->node (op, epoch): the lease went idle and is given back
PUT_FOR = 19  # worker->node (op, owner, oid, kind, payload, contained): a direct result
PROMISE = 20  # driver->node (op, oid): a direct task's result whose ref is leaving; wait for it
LEASE = 40  # node->driver (op, wid, epoch, slot, pid, first_oid) / node->worker (op, epoch)
LEASE_LOST = 41  # node->driver (op, wid, epoch, reason): the leased worker died
RECLAIM = 42  # node->worker (op,): others wait for CPUs: end the lease once idle
NO_LEASE = 47  # node->driver (op, first_oid): that task asked for a lease but runs without
#                one (queued behind another task, or moved to another rank)
# on a lease's own rings (driver <-> worker, no node in between)
DONE_D = 50  # worker->driver (op, tid, retryable, payload, via_node, run_s): a direct task ended
RETURN_D = 51  # worker->driver (op, tids, blocked): direct tasks handed back unstarted
EXPIRED = 52  # worker->driver (op, wid, epoch): lease ended (idle); later EXECs bounced
RESUMED = 53  # worker->driver (op, wid, epoch): its task stopped waiting; send work again

# actors
KILL_ACTOR = 21  # ->node (op, aid, no_restart)
ACTOR_EXIT = 22  # actor worker->node (op, aid): exit_actor() was called; do not restart
ACREATE = 43  # node->worker (op, tid, fid, fblob, name, args, deps, gpus, aid, incarnation,
#               opts, owner): become this actor (run the constructor, then serve calls)
ACALL = 44  # node|driver->actor (op, tid, method, args, deps, nret, retry_exc, owner,
#             retries, aid, incarnation, direct): one method call
ACTOR = 45  # node->driver (op, aid, state, incarnation, wid, slot, pid, death): a transition
ANODE_DONE = 46  # node->driver (op, aid, tid): a call the driver sent the node's way ended
ADONE_D = 54  # actor->driver (op, tid, values): a direct call ended; values: [(oid, kind,
#               payload)], or None when they go through the node (arena space, refs inside)

# DONE status
OK = 0
APP_ERROR = 1  # results hold one ERROR payload for every return

# spec tuple field positions (client builds it, node reads a few fields, worker runs it)
S_TID = 0
S_FID = 1
S_NAME = 2
S_ARGS = 3
S_DEPS = 4  # tuple of (position, oid): top-level ObjectRef arguments
S_NRET = 5
S_RES = 6  # dict of resources, e.g. {"CPU": 1.0}
S_RETRIES = 7
S_RETRY_EXC = 8  # False, True, or pickled tuple of exception classes
S_CONTAINED = 9  # ObjectRef ids pickled anywhere inside the arguments
S_STRATEGY = 10
S_LEASE = 11  # optional: True = lease the worker to the owner once this task is done
S_ACTOR = 12  # actor calls and creations: the actor id (its creation task's id)
S_CREATE = 13  # actor creations: the actor's options (dict), see actor.py

PROC_BITS = 36
RANK_SHIFT = 56
COUNTER_MASK = (1 << PROC_BITS) - 1


def id_base(rank: int, proc: int) -> int:
    return (rank << RANK_SHIFT) | (proc << PROC_BITS)


def id_proc(oid: int) -> int:
    return (oid >> PROC_BITS) & ((1 << (RANK_SHIFT - PROC_BITS)) - 1)


def id_rank(oid: int) -> int:
    return oid >> RANK_SHIFT


def id_hex(oid: int) -> str:
    return format(oid, "016x")
