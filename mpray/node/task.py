"""A task as the node's machine knows it (``scheduler.Scheduler`` and its parts).

Data flow::

    Submit(spec) ─▶ Task(PENDING_ARGS) ─▶ READY ─▶ DISPATCHED (a worker, or another
                    rank: AGENT) ─▶ FINISHED | FAILED | CANCELLED   (states.TASK_TRANSITIONS)
"""

from __future__ import annotations

from .. import protocol as P
from ..states import T


class Task:
    __slots__ = ("key", "spec", "owner", "parent", "resources", "retries_left", "state",
                 "missing", "worker", "cancel", "history", "actor", "creating", "started",
                 "waits_since")

    def __init__(self, key: int, spec: tuple, owner: int, parent: int | None,
                 resources: tuple, retries_left: int) -> None:
        self.key = key
        self.spec = spec
        self.owner = owner
        self.parent = parent
        self.resources = resources  # ((name, amount), ...) sorted: the ready-queue key
        self.retries_left = retries_left
        self.state = T.PENDING_ARGS
        self.missing = 0
        self.started = 0.0
        self.waits_since = 0.0  # (MPI) when it came to wait here for a CPU
        self.worker: int | None = None
        self.cancel = False
        self.history = [T.PENDING_ARGS]
        self.actor: int | None = None  # a method call: the actor's id
        self.creating = False  # an actor's constructor

    @property
    def returns(self) -> range:
        return P.return_ids(self.key, self.spec.nret)
