"""The one message schema: every record that crosses a process or rank boundary.

Each message kind is a ``Record``: a ``tuple`` subclass whose item 0 is its opcode and
whose fields have names (C-level accessors, as ``collections.namedtuple`` uses), so a
message is read by name at every end and its layout is written down once, here.

On the wire a frame is ``pickle.dumps`` of a list of *plain* tuples (``encode``):
pickling a tuple subclass costs about four times a plain tuple's, so the encoder strips
the type and ``decode`` puts it back from the opcode (``tuple.__new__``, ~0.1 µs).
Records nested inside a message (the ``TaskSpec`` of a ``Submit`` or ``Fwd``, the
message inside a ``ToRank``) are stripped by the constructor and re-typed by ``decode``.

Data flow::

    sender: Exec(tid=…, …) ─▶ encode([…]) ─▶ ring / MPI ─▶ decode(frame) ─▶ msg.tid …

Channels (``docs/architecture.md`` has the picture; ``docs/protocol.md`` is generated
from this module by ``protocol_table()``):

* to the node, from the driver, workers and the rank's MPI agent (``NODE_IN``);
* from the node to them (``NODE_OUT``);
* on a mailbox slot, between the driver and a worker, with no node in between
  (``MAILBOX``);
* between a node and its rank's MPI agent (``CLUSTER``), and between agents (``RANKS``).

Ids are Python ints: ``(rank << 56) | (proc << 36) | counter``.  A task id ``t`` owns
the return ids ``return_ids(t, n)`` = ``t+1 … t+n``, so an object's producing task is
known without a lookup table.
"""

from __future__ import annotations

import functools
import pickle
from collections import _tuplegetter  # the C field accessor namedtuple uses
from typing import Any, Iterable

_new = tuple.__new__


class Record(tuple):
    """Base of every record: a tuple with named fields (see ``record``)."""

    __slots__ = ()
    OP: int | None = None  # the opcode (item 0) of a message; None for plain records
    FIELDS: tuple[str, ...] = ()
    CHANNEL = ""
    DOC = ""

    def __repr__(self) -> str:
        start = 0 if self.OP is None else 1
        body = ", ".join(f"{f}={v!r}" for f, v in zip(self.FIELDS, self[start:]))
        return f"{type(self).__name__}({body})"

    def _replace(self, **changes: Any) -> "Record":
        start = 0 if self.OP is None else 1
        vals = list(self)
        for k, v in changes.items():
            vals[start + self.FIELDS.index(k)] = v
        return _new(type(self), vals)

    def _asdict(self) -> dict:
        start = 0 if self.OP is None else 1
        return dict(zip(self.FIELDS, self[start:]))


KINDS: dict[int, type] = {}  # opcode -> record class
_WRAP: dict[int, Any] = {}  # opcode -> how decode() re-types a plain tuple


def record(name: str, op: int | None, fields: str, channel: str, doc: str,
           defaults: dict | None = None, nested: dict | None = None) -> type:
    """Define a record type: ``fields`` space-separated, ``defaults`` for trailing
    optional fields, ``nested`` maps a field to the record type it holds (stripped to
    a plain tuple by the constructor, re-typed by ``decode``)."""
    names = tuple(fields.split())
    defaults = defaults or {}
    nested = nested or {}
    start = 0 if op is None else 1
    ns: dict[str, Any] = {"__slots__": (), "OP": op, "FIELDS": names, "CHANNEL": channel,
                          "DOC": doc, "__doc__": f"{name}({', '.join(names)}): {doc}"}
    for i, f in enumerate(names):
        ns[f] = _tuplegetter(start + i, f)
    params = ", ".join(f"{f}=_d_{f}" if f in defaults else f for f in names)
    items = ", ".join(f"_plain({f})" if f in nested else f for f in names)
    values = ([] if op is None else [str(op)]) + ([items] if items else [])
    src = (f"def __new__(_cls, {params}):\n"
           f"    return _new(_cls, ({''.join(v + ', ' for v in values)}))\n")
    env = {"_new": _new, "_plain": _plain, **{f"_d_{k}": v for k, v in defaults.items()}}
    exec(src, env)  # noqa: S102 - a generated constructor, as namedtuple makes
    ns["__new__"] = env["__new__"]
    cls = type(name, (Record,), ns)
    # from_items((op, field, ...)): the same record from all its items at once, with no
    # Python-level call (C's tuple.__new__): for the few constructions on the per-task
    # hot path, which then list the items in FIELDS order
    cls.from_items = functools.partial(_new, cls)
    if op is not None:
        if op in KINDS:
            raise ValueError(f"opcode {op} of {name} is taken by {KINDS[op].__name__}")
        KINDS[op] = cls
        if nested:
            pos = {start + names.index(f): t for f, t in nested.items()}
            _WRAP[op] = _nested_wrapper(cls, pos)
        else:
            _WRAP[op] = cls
    return cls


def _plain(x):
    """A nested record travels as a plain tuple (None stays None)."""
    return x if x is None or type(x) is tuple else tuple(x)


def _nested_wrapper(cls: type, pos: dict):
    if len(pos) == 1:  # (Submit, Fwd, RTask: one nested record; the common case is fast)
        ((i, t),) = pos.items()
        if t is not None and i == len(cls.FIELDS):  # the last item
            return lambda m: _new(cls, m[:i] + (_new(t, m[i]),))
        if t is not None and i == 1:
            return lambda m: _new(cls, (m[0], _new(t, m[1])) + m[2:])

    def wrap(m: tuple):
        vals = list(m)
        for i, t in pos.items():
            v = vals[i]
            if v is not None:
                vals[i] = wrap_any(v) if t is None else _new(t, v)
        return _new(cls, vals)
    return wrap


def wrap_any(m: tuple) -> Record:
    """Re-type one plain message tuple."""
    w = _WRAP[m[0]]
    return _new(w, m) if type(w) is type else w(m)


def encode(msgs: list) -> bytes:
    """A frame: the messages as plain tuples, pickled (protocol 5)."""
    return pickle.dumps([tuple(m) for m in msgs], protocol=5)


def decode(frame: bytes) -> list:
    """The messages of a frame, typed again."""
    out = []
    for m in pickle.loads(frame):
        w = _WRAP[m[0]]
        out.append(_new(w, m) if type(w) is type else w(m))
    return out


# ----------------------------------------------------------------------------- the task
TaskSpec = record(
    "TaskSpec", None,
    "tid fid name args deps nret res retries retry_exc contained strategy lease actor "
    "method create stream", "",
    "a task as its owner submits it: fid names the registered function (an actor "
    "creation: the class), args the pickled (args, kwargs) with top-level refs as None, "
    "deps ((position, oid), ...) those refs, res the resource shape ((name, amount), ...) "
    "sorted, retries left, retry_exc False/True/pickled exception classes, contained the "
    "ids of refs pickled inside args, strategy None/'SPREAD'/a NodeAffinity strategy; "
    "lease: ask the node to lease the worker to the owner when done; actor: the actor id "
    "of a method call or creation, method: the method's name (calls), create: the "
    "creation's options (creations), stream: a streaming generator's backpressure "
    "(0: none; -1, an actor call: a dynamic generator's; None: not a generator)",
    defaults={"lease": False, "actor": None, "method": None, "create": None,
              "stream": None})


def return_ids(tid: int, nret: int) -> range:
    """The ids of a task's return objects."""
    return range(tid + 1, tid + 1 + nret)


def spec_returns(spec) -> range:
    return range(spec.tid + 1, spec.tid + 1 + spec.nret)


# A value as it travels in results: (oid, kind, payload, contained) plain tuples, with
# kind one of serialization.INLINE / ARENA / ERROR (see there for the payloads).

# ----------------------------------------------------------------------------- to the node
_N = "node_in"
Submit = record("Submit", 1, "spec", _N, "run this task (spec)", nested={"spec": TaskSpec})
Put = record("Put", 2, "oid kind payload contained", _N,
             "a value the sender made (put, or a direct task's result it seals)")
Refs = record("Refs", 3, "increfs decrefs", _N,
              "this process's first ref to each of increfs (borrowed), its last to decrefs")
Subscribe = record("Subscribe", 4, "oids", _N, "send me these values when they exist")
Pin = record("Pin", 5, "oids", _N, "a zero-copy view of each is mapped here")
Unpin = record("Unpin", 6, "oids", _N, "that view is gone")
Alloc = record("Alloc", 7, "req nbytes", _N, "reserve arena space (answered by AllocOk)")
Done = record("Done", 8, "tid status results retryable delivered", _N,
              "a node task ended: results [(oid, kind, payload, contained)]; delivered: "
              "the worker handed them to their owner itself", defaults={"delivered": False})
Blocked = record("Blocked", 9, "returned", _N,
                 "this worker's task waits in get: its CPU is lent; returned: tids of "
                 "pipelined tasks handed back unstarted")
Unblocked = record("Unblocked", 10, "", _N, "the task stopped waiting")
Cancel = record("Cancel", 11, "tid force recursive", _N, "cancel this task")
Func = record("Func", 12, "fid blob", _N, "register a cloudpickled function or class")
Query = record("Query", 13, "req what", _N, "a question answered with Reply")
Shutdown = record("Shutdown", 14, "", _N, "the driver ends the session")
FreeRange = record("FreeRange", 15, "offset", _N, "an Alloc whose value was never sealed")
Return = record("Return", 16, "tids", _N, "pipelined tasks handed back unstarted")
Evicted = record("Evicted", 17, "kept dropped", _N,
                 "the answer to Evict: the ids this process still reads (kept: a view is "
                 "mapped, or a task it sent reads it), and those it forgot")
LineageIs = record("LineageIs", 29, "oid spec reason stored", _N,
                   "the answer to LineageAsk: the task that made oid (None: none is kept "
                   "here; reason says why; stored: the id of the task whose spec this "
                   "owner moved to the control store)", nested={"spec": TaskSpec},
                   defaults={"stored": None})
LeaseEnd = record("LeaseEnd", 18, "epoch", _N, "a leased worker gives its lease back")
Checkpoint = record("Checkpoint", 58, "aid incarnation oid calls", _N,
                    "this actor's state after its calls-th call is object oid (hold it; "
                    "a restart restores it)")
PutFor = record("PutFor", 19, "owner oid kind payload contained", _N,
                "a leased task's result the node must hold for its owner (arena space, "
                "or refs inside)")
Promise = record("Promise", 20, "oid", _N,
                 "a direct task's result whose ref is leaving its owner: others may wait "
                 "for it; the owner Puts it when it arrives")
KillActor = record("KillActor", 21, "aid no_restart", _N, "kill this actor")
ChannelFree = record("ChannelFree", 23, "channel", _N,
                     "the owner of a lease through this channel is done with it")
ActorExit = record("ActorExit", 22, "aid", _N, "the actor called exit_actor()")
Yield = record("Yield", 25, "owner tid index oid kind payload contained", _N,
               "a streaming generator task yielded its index-th value (oid: an id of the "
               "worker's) for owner, who holds it from now on; oid None: its end (after "
               "its last value, or the value its error is)")
StreamAck = record("StreamAck", 26, "tid consumed", _N,
                   "the owner of streaming task tid has taken that many of its values "
                   "(for its backpressure)")
PgOp = record("PgOp", 24, "req op", _N,
             "a placement-group request, answered with Reply: ('create', id, bundles, "
             "strategy, name, namespace) | ('remove', id) | ('table', id or None) | "
             "('named', namespace, name)")

# ----------------------------------------------------------------------------- from the node
_O = "node_out"
Obj = record("Obj", 32, "oid kind payload contains", _O,
             "a value (to its owner, a subscriber, or the agent: contains is what the "
             "value holds refs to)", defaults={"contains": ()})
Exec = record("Exec", 33, "tid fid fblob name args deps nret gpus retry_exc owner epoch", _O,
              "run this task: deps [(position, oid, kind, payload)], fblob the function "
              "the first time this worker gets it; epoch: a leased task from the owner "
              "(None: from the node)", defaults={"epoch": None})
AllocOk = record("AllocOk", 34, "req offset error", _O, "the answer to Alloc (offset None: "
                 "error says why)")
Reply = record("Reply", 35, "req data", _O, "the answer to a Query or a named creation")
Stop = record("Stop", 36, "", _O, "exit")
Drop = record("Drop", 37, "tid", _O, "forget this queued task or call (it was cancelled)")
Slot = record("Slot", 38, "slot wid", _O, "that worker writes to the driver on mailbox slot")
SlotFree = record("SlotFree", 39, "slot", _O, "that worker is gone: drain the slot")
LeaseGrant = record("LeaseGrant", 40, "wid epoch slot pid first_oid channel", _O,
                    "that worker (mailbox slot, pid) is now your lease (it ran the flagged "
                    "task whose first return is first_oid); channel: the lease channel "
                    "between you (a worker) and it, None: its slot's rings (the driver)",
                    defaults={"channel": None})
LeaseLost = record("LeaseLost", 41, "wid epoch reason", _O, "the leased worker died")
Reclaim = record("Reclaim", 42, "epoch", _O, "others wait for CPUs: end lease ``epoch`` "
                 "once idle (it may come just before that lease's Leased)")
ACreate = record("ACreate", 43,
                 "tid fid fblob name args deps gpus aid incarnation opts owner restore", _O,
                 "become this actor: run the constructor, then serve calls; restore: "
                 "(its last checkpoint's (oid, kind, payload) or None, the calls to run "
                 "again [(method, args, deps)], the calls it ended so far), or None",
                 defaults={"restore": None})
ACall = record("ACall", 44,
               "tid method args deps nret retry_exc owner retries aid incarnation direct "
               "stream", _O, "one method call (direct: from the driver's mailbox ring; "
               "stream: a generator method's backpressure when its values stream, -1 "
               "when they come back together (dynamic), None: not a generator call)",
               defaults={"stream": None})
ActorUpdate = record("ActorUpdate", 45, "aid state incarnation wid slot pid death", _O,
                     "an actor's transition (state ALIVE/RESTARTING/DEAD/KILLED)")
ANodeDone = record("ANodeDone", 46, "aid tid", _O,
                   "a call the driver sent the node's way ended")
NoLease = record("NoLease", 47, "first_oid", _O,
                 "the task flagged to become a lease runs without one")
Leased = record("Leased", 48, "epoch channel owner owner_slot", _O,
                "to a worker: you are leased (this epoch) to owner: through channel, "
                "waking its slot's bell (None: to the driver, on your slot's rings)",
                defaults={"channel": None, "owner": 0, "owner_slot": None})
Evict = record("Evict", 27, "oids", _O,
              "these values are leaving the arena (spilled to disk): forget their "
              "places unless a view of one is mapped here, and answer Evicted")
LineageAsk = record("LineageAsk", 28, "oids", _O,
                    "these values you own were lost (their spill files are gone): send "
                    "the tasks that made them (LineageIs), which the node runs again")
StreamItem = record("StreamItem", 30, "tid index oid", _O,
                    "streaming task tid's index-th value is object oid (you hold it; its "
                    "Obj follows); oid None: the stream ended")
Consumed = record("Consumed", 31, "tid consumed", _O,
                  "to the worker running streaming task tid: its owner took that many")
LeaseRevoked = record("LeaseRevoked", 49, "epoch", _O,
                      "your lease's owner died: end the lease now (nothing to send it)")

# ----------------------------------------------------------------------------- mailbox slot
_M = "mailbox"
SeedTime = record("SeedTime", 59, "fid run_s", _M,
                  "(MPI) from your new lease: the task that made it ran run_s seconds (its "
                  "value came without a time, and a function's first batch may wait on it)")
DoneD = record("DoneD", 50, "tid values error via_node run_s", _M,
               "a leased task ended after run_s seconds: its values [(oid, kind, payload)] "
               "come with it, or from the node (via_node: arena space or refs inside); "
               "error: a retryable error's payload (the owner retries or gives up)")
ReturnD = record("ReturnD", 51, "wid epoch tids blocked", _M,
                 "leased tasks handed back unstarted (blocked: the worker's task waits "
                 "in get: send it nothing until Resumed)")
Expired = record("Expired", 52, "wid epoch", _M, "the lease ended (idle)")
Resumed = record("Resumed", 53, "wid epoch", _M, "its task stopped waiting: send work")
ADoneD = record("ADoneD", 54, "tid values", _M,
                "a direct actor call ended: values [(oid, kind, payload)], or None when "
                "they go through the node")

# ----------------------------------------------------------------------------- node <-> agent
_C = "cluster"
Fwd = record("Fwd", 60, "rank spec blob", _C,
             "run this task on that rank (blob: its function, the first time)",
             nested={"spec": TaskSpec})
Fetch = record("Fetch", 61, "oid", _C, "bring this object of another rank here")
RemoteDone = record("RemoteDone", 62, "tid results rank", _C,
                    "a forwarded task ended there: results [(oid, kind, payload, contained, "
                    "lent)]")
ClusterInfo = record("ClusterInfo", 63, "rank ranks", _C,
                     "the ranks: [(node_id, resources), ...], and which one this is")
Load = record("Load", 64, "load", _C, "[(queued, free CPUs)] per rank (None: that rank has "
             "not reported yet)")
ToRank = record("ToRank", 65, "rank msg lent", _C,
                "give msg to that rank's node (lent: holds taken for that rank)",
                defaults={"lent": ()}, nested={"msg": None})
NameClaim = record("NameClaim", 66, "rank key aid meta get_if_exists", _C,
                   "may this creation have the name? (to rank 0)")
NameAnswer = record("NameAnswer", 67, "aid answer", _C,
                    "('ok',) | ('exists', aid, meta) | ('error', message)")
NameLookup = record("NameLookup", 68, "rank req proc key", _C,
                    "get_actor() of a name that rank does not know")
NameFound = record("NameFound", 69, "req proc found lent lender", _C,
                   "its answer: (aid, meta) or None, with the hold lent on the anchor")
NameFree = record("NameFree", 70, "key aid", _C, "that actor's name is free again")
AvailAsk = record("AvailAsk", 55, "rank proc req", _C,
                  "what resources are free on your node? (available_resources() of that "
                  "rank's process proc)")
AvailAnswer = record("AvailAnswer", 56, "proc req avail", _C, "the answer to an AvailAsk")
StreamLent = record("StreamLent", 57, "tid index oid rank", _C,
                    "a value of streaming task tid, which runs on that rank for a process "
                    "here (with a hold that rank lent on oid; oid None: the stream's end)")
Lend = record("Lend", 71, "adds removes", _C, "holds this rank lends other ranks")
Unlend = record("Unlend", 72, "oid rank", _C, "give back the hold that rank lent this one")
Borrowed = record("Borrowed", 73, "oids rank", _C, "holds that rank lent this one")
PgAsk = record("PgAsk", 74, "rank proc req op", _C,
              "a PgOp of that rank's process proc (to rank 0, the groups' registry)")
PgAnswer = record("PgAnswer", 75, "proc req data", _C, "rank 0's answer to a PgAsk")
PgReserve = record("PgReserve", 76, "pg bundles", _C,
                   "reserve these bundles [(index, {resource: amount})] of group pg here")
PgReserved = record("PgReserved", 77, "pg rank", _C,
                    "that rank holds its bundles of group pg (to rank 0)")
PgPlaced = record("PgPlaced", 78, "pg ranks", _C,
                  "group pg is created: bundle i is on rank ranks[i] (to every rank)")
PgGone = record("PgGone", 79, "pg", _C,
                "group pg was removed: free its bundles, end what runs in them (to "
                "every rank)")

# ----------------------------------------------------------------------------- agent <-> agent
_R = "ranks"
RTask = record("RTask", 80, "spec blob lent", _R, "run this task here",
               nested={"spec": TaskSpec})
RFetch = record("RFetch", 81, "oid", _R, "send me this object of yours")
RValue = record("RValue", 82, "oid kind desc contained lent", _R,
                "an object you asked for (desc: where its bytes are)")
RDone = record("RDone", 83, "tid results", _R, "your task ended here")
RNode = record("RNode", 84, "msg", _R, "for your node (cancel, kill, names)",
               nested={"msg": None})
RUnlend = record("RUnlend", 85, "oid", _R, "a hold you lent me comes back")
RFreeExp = record("RFreeExp", 86, "woff", _R, "I have read your export window there")
RRelease = record("RRelease", 87, "token", _R, "I have read your value: drop its hold")
RStop = record("RStop", 88, "", _R, "shut down")
RStopped = record("RStopped", 89, "", _R, "shut down done")
RAwait = record("RAwait", 90, "token", _R, "a big frame's place in the inbox order")
RBig = record("RBig", 91, "token msgs", _R, "messages too big for the inbox")
RBatch = record("RBatch", 92, "msgs", _R, "messages that need no order (a plain send)")
RLogs = record("RLogs", 94, "lines", _R, "my workers' output lines, for rank 0's driver "
               "to print: [(rank, pid, err, label, line)] (my session directory is not "
               "on its filesystem)")
RStream = record("RStream", 93, "msg", _R, "for your node, in order with my RDone (a "
                 "stream's values and its end: a plain send, as RDone is)",
                 nested={"msg": None})

# ----------------------------------------------------------------------------- instructions
# What the node's pure machine asks its I/O loop to do (never on the wire).
_A = "node_actions"
ACTIONS: list[type] = [
    StartWorker := record("StartWorker", None, "", _A, "fork one more worker"),
    Kill := record("Kill", None, "wid", _A, "SIGKILL that worker"),
    Interrupt := record("Interrupt", None, "wid tid", _A,
                        "raise TaskCancelledError in that worker's task tid (SIGUSR1)"),
    Warn := record("Warn", None, "text", _A, "print a warning to stderr"),
    GrantLease := record("GrantLease", None, "wid epoch owner first_oid channel", _A,
                         "that worker is owner's lease now: LeaseGrant and Leased"),
    LoseLease := record("LoseLease", None, "wid epoch owner reason", _A,
                        "the leased worker died: LeaseLost to its owner"),
    AnnounceActor := record("AnnounceActor", None, "aid state incarnation wid death", _A,
                            "tell the driver of an actor's transition (ActorUpdate)"),
    SpillWrite := record("SpillWrite", None, "batch path items", _A,
                         "copy arena ranges into a new spill file, off the loop: items "
                         "[(oid, arena offset, nbytes, file offset)]; spill_written after, "
                         "with each value's checksum"),
    SpillRead := record("SpillRead", None, "oid path file_off offset nbytes csum", _A,
                        "copy a spilled value back into the arena at offset, off the loop, "
                        "and check its checksum (None: none); spill_read after"),
    SpillDelete := record("SpillDelete", None, "path", _A,
                          "remove a spill file none of whose values is left"),
    LineageLoad := record("LineageLoad", None, "tid oid", _A,
                          "read task tid's spec back from the control store (it was moved "
                          "there past max_lineage_bytes) to make oid again; lineage_loaded "
                          "after"),
]

# What happens in an owner process (owner/machine.py), and what its machine asks its I/O shell
# to do (never on the wire).  Messages it receives (LeaseGrant, DoneD, Obj, ...) are
# events too, as they are.
_E = "owner_events"
OWNER_EVENTS: list[type] = [
    SubmitTask := record("SubmitTask", None, "spec deps hold", _E,
                         "run this task: deps are its arguments' values when all are here "
                         "((position, oid, kind, payload), ...), else None (the node's path); "
                         "hold keeps what the task reads alive until it is done"),
    SubmitCall := record("SubmitCall", None, "spec hold", _E, "call an actor's method"),
    CancelTask := record("CancelTask", None, "tid force", _E, "cancel a task or call"),
    RefGone := record("RefGone", None, "oids urgent", _E,
                      "the last ObjectRef to each of oids in this process died (urgent: "
                      "a value may hold arena space)"),
    Publish := record("Publish", None, "oids msg", _E,
                      "refs to these objects are about to leave this process (in msg, "
                      "sent to the node after they are made known there)",
                      defaults={"msg": None}),
    ActorKilled := record("ActorKilled", None, "aid", _E,
                          "kill(no_restart=True) was sent: later calls go the node's way"),
    Lending := record("Lending", None, "lent", _E,
                      "a worker owner blocks in get and lends its CPU (lent), or runs on "
                      "(its leases leave room for the CPU it holds)"),
]
_I = "owner_actions"
OWNER_ACTIONS: list[type] = [
    ToNode := record("ToNode", None, "msg", _I, "send msg to the node"),
    ToSlot := record("ToSlot", None, "slot msg", _I,
                     "push msg into that mailbox slot's ring to its worker, ring its bell"),
    Deliver := record("Deliver", None, "oid value", _I,
                      "a value (kind, payload) is here: keep it if anything here wants "
                      "it (the machine's own LOCAL entry is this same tuple)"),
    Release := record("Release", None, "oids urgent", _I,
                      "tell the node this process holds these no more"),
    Signal := record("Signal", None, "pid signum", _I, "send a signal to a worker"),
    CancelWord := record("CancelWord", None, "slot tid", _I,
                         "write tid into the slot's cancel word (before SIGUSR1)"),
    StoreLineage := record("StoreLineage", None, "tid blob", _I,
                           "record this leased task's pickled spec in the control store "
                           "(past max_lineage_bytes): LineageIs says stored when asked"),
    EvictLocal := record("EvictLocal", None, "oids busy", _I,
                         "the node evicts these values: forget their places here, but for "
                         "those a task or call of this owner still reads (busy), and "
                         "answer Evicted"),
    TaskFailed := record("TaskFailed", None, "tid error", _I,
                         "the owner failed this task itself (its leased worker died, its "
                         "actor is gone, a cancel): for the control store"),
]

# ----------------------------------------------------------------------------- rank link
# The MPI agent's pure machine (mpray_mpi/link.py): where a shipped value's bytes are,
# the holds a reader drops once it has them, the loop's own events, and what the machine
# asks the loop (mpray_mpi/agent.py) to do.  Node and rank messages are events as they are.
#
# Descriptors and tokens travel nested in RValue/RDone results and in RRelease, and keep
# their type across a frame by pickling as themselves (class and items): one per value
# big enough to go by RMA, where the few µs that costs beside a plain tuple do not count,
# and no opcode is spent on them (they are never messages).


def _reduce_typed(self):
    return (type(self), tuple(self))  # (unpickled by calling the record's constructor)


_V = "ranks"
LINK_VALUES: list[type] = [
    ArenaDesc := record("ArenaDesc", None, "rank payload release", _V,
                        "an ARENA value to Get straight from that rank's arena window "
                        "(payload: its place there); release: the token to send back in "
                        "RRelease once read, or None"),
    WinDesc := record("WinDesc", None, "rank woff payload", _V,
                      "an ARENA value copied into that rank's export window at woff "
                      "(payload: its layout from offset 0); RFreeExp(woff) once read"),
    BytesDesc := record("BytesDesc", None, "data payload", _V,
                        "an ARENA value's bytes in the message (the export window was "
                        "full or too small); payload: its layout"),
    PinToken := record("PinToken", None, "oid", _V,
                       "the home node pinned oid for one reader (Unpin once read)"),
    RefToken := record("RefToken", None, "oid", _V,
                       "the home agent's ref on a forwarded task's result (dropped once "
                       "read)"),
]
for _cls in LINK_VALUES:
    _cls.__reduce__ = _reduce_typed

_LE = "link_events"
LINK_EVENTS: list[type] = [
    LinkHello := record("LinkHello", None, "ranks", _LE,
                        "tell the node the ranks ([(node_id, resources)]) and ask its load"),
    LoadDue := record("LoadDue", None, "", _LE, "time to refresh the load table"),
    StopRanks := record("StopRanks", None, "", _LE, "rank 0 ends the job: stop every rank"),
    RankStopped := record("RankStopped", None, "", _LE,
                          "this serving rank shut its node down: tell rank 0"),
]
_LA = "link_actions"
LINK_ACTIONS: list[type] = [
    ToNodeMsg := record("ToNodeMsg", None, "msg", _LA, "send msg to this rank's node"),
    ToRankMsg := record("ToRankMsg", None, "rank msg", _LA,
                        "send msg to that rank's agent (batched per rank; RTask and RNode "
                        "through its inbox, in order, the rest as one plain message)"),
    CopyToExport := record("CopyToExport", None, "off woff total", _LA,
                           "copy total bytes at off in the arena to woff in the export "
                           "window and make them visible to RMA"),
    ReadBytes := record("ReadBytes", None, "off total buf", _LA,
                        "copy total bytes at off in the arena into buf (the bytearray a "
                        "BytesDesc in a later message carries)"),
    RmaGet := record("RmaGet", None, "window src soff off total", _LA,
                     "Get total bytes at soff in rank src's window ('arena' or 'export') "
                     "into the arena at off, and Flush: done before what follows"),
    WriteBytes := record("WriteBytes", None, "off data", _LA,
                         "write data (a BytesDesc's bytes) into the arena at off"),
    ShareLoad := record("ShareLoad", None, "load", _LA,
                        "put this rank's load (queued, free CPUs) into rank 0's load "
                        "window, read everyone's, send the node Load"),
    PrintLogs := record("PrintLogs", None, "lines", _LA,
                        "print another rank's workers' lines on this driver (rank 0)"),
]

# DONE status
OK = 0
APP_ERROR = 1  # results hold one ERROR payload for every return

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


def protocol_table(kinds: Iterable[type] | None = None) -> str:
    """The schema as a Markdown table (docs/protocol.md is this, checked by a test)."""
    rows = ["| channel | op | message | fields | meaning |", "|---|---|---|---|---|"]
    for cls in sorted(kinds or [*KINDS.values(), *ACTIONS, *OWNER_EVENTS, *OWNER_ACTIONS,
                                *LINK_VALUES, *LINK_EVENTS, *LINK_ACTIONS],
                      key=lambda c: (c.CHANNEL, c.OP or 0, c.__name__)):
        rows.append(f"| {cls.CHANNEL} | {cls.OP if cls.OP is not None else '—'} | "
                    f"`{cls.__name__}` | "
                    f"{', '.join(cls.FIELDS) or '—'} | {cls.DOC.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


PROTOCOL_DOC_HEAD = """# mpray's messages

Generated from `mpray/protocol.py` (`python -m mpray.protocol > docs/protocol.md`);
`tests/test_protocol.py` checks that the two agree.  Channels: `node_in` (driver, workers
and the rank's agent to the node), `node_out` (the node to them), `mailbox` (a worker to
the driver on its mailbox slot; the driver's `Exec`, `ACall` and `Drop` go the other
way), `cluster` (a node and its rank's MPI agent), `ranks` (agent to agent), and the
instructions and local events of the pure machines (never on the wire).

"""


if __name__ == "__main__":
    print(PROTOCOL_DOC_HEAD + protocol_table(), end="")

