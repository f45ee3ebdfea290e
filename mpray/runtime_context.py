"""``mpray.get_runtime_context()``: where the calling code runs."""

from __future__ import annotations

import os

from . import _global
from .protocol import id_hex


class RuntimeContext:
    def get_node_id(self) -> str:
        return _global.node_id

    def get_task_id(self) -> str | None:
        c = _global.client
        if c is None or c.current_task is None:
            return None
        return id_hex(c.current_task)

    def get_worker_id(self) -> str:
        c = _global.client
        return format(0 if c is None else c.proc, "08x")

    def get_job_id(self) -> str:
        return _global.node_info.get("job_id", "")

    def get_actor_id(self) -> str | None:
        c = _global.client
        if c is None or c.actor_id is None:
            return None
        return id_hex(c.actor_id)

    def get_assigned_resources(self) -> dict:
        return {}

    def get_accelerator_ids(self) -> dict:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return {"GPU": [g for g in gpus.split(",") if g]}

    @property
    def namespace(self) -> str:
        return _global.node_info.get("namespace") or "default"

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()

    def was_current_actor_reconstructed(self) -> bool:
        c = _global.client
        return c is not None and c.actor_id is not None and c.actor_inc > 0

    @property
    def current_actor(self):
        """The handle of the actor this code runs in."""
        c = _global.client
        server = _global.actor_server
        if c is None or c.actor_id is None or server is None:
            raise RuntimeError("current_actor is only available inside an actor's method")
        from .actor import ActorHandle
        from .object_ref import ObjectRef

        return ActorHandle(c.actor_id, ObjectRef(c.actor_id + 1, False, c.actor_id),
                           server.opts.get("meta"))


def get_runtime_context() -> RuntimeContext:
    """Facts about where this code runs: job, node, task, actor and worker ids."""
    return RuntimeContext()
