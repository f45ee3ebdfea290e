"""``mpray.get_runtime_context()``: where the calling code runs."""

from __future__ import annotations

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
        """The resources the running task or actor holds ({} in the driver)."""
        return _assigned()[0]

    def get_accelerator_ids(self) -> dict:
        """The accelerator ids the running task or actor was given (as strings)."""
        return {"GPU": [str(g) for g in _assigned()[1]]}

    def is_canceled(self) -> bool:
        """Was ``mpray.cancel()`` called on the running task (a task that caught the
        interrupt, or checks now and then, can clean up and end)?"""
        loop, c = _global.worker_loop, _global.client
        if loop is None or c is None:
            raise RuntimeError("is_canceled() is only available in a task, not in the driver")
        if c.actor_mode == "async":
            raise RuntimeError("is_canceled() is not supported in an async actor")
        tid = c.current_task
        if tid is None:
            return False
        if loop.cancel_requested(tid):
            return True
        if c.actor_id is not None:  # an actor's call: its Drop may wait in the rings
            c.poll_nowait()
        return tid in c.dropped_tasks

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


def _assigned() -> tuple[dict, tuple]:
    server = _global.actor_server
    if server is not None:  # an actor's process: what it holds for its life
        return server.assigned()
    loop = _global.worker_loop
    return loop.assigned() if loop is not None else ({}, ())


def get_gpu_ids() -> list:
    """The GPU ids given to the running task or actor (ints where they are numbers, as
    Ray's); [] in the driver and in tasks without GPUs."""
    return [int(g) if str(g).isdigit() else g for g in _assigned()[1]]


def get_runtime_context() -> RuntimeContext:
    """Facts about where this code runs: job, node, task, actor and worker ids."""
    return RuntimeContext()
