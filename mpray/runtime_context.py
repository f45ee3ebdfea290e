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
        return None

    def get_assigned_resources(self) -> dict:
        return {}

    def get_accelerator_ids(self) -> dict:
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return {"GPU": [g for g in gpus.split(",") if g]}

    @property
    def namespace(self) -> str:
        s = _global.session
        return getattr(s, "namespace", None) or "default"

    @property
    def node_id(self) -> str:
        return self.get_node_id()

    @property
    def task_id(self) -> str | None:
        return self.get_task_id()

    def was_current_actor_reconstructed(self) -> bool:
        return False


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext()
