"""Per-process runtime handle: the core client of this process (driver or worker), or None."""

from __future__ import annotations

from typing import Any

client: Any = None  # mpray.owner.client.Client once init() ran (or in a worker process)
session: Any = None  # mpray.session._Session in the driver
node_id: str = ""  # hex id of the node this process belongs to
node_info: dict = {}  # node_id, resources, job_id, session_dir: same in driver and workers
cluster: Any = None  # under MPI: [(node_id, resources, host)] per rank
actor_server: Any = None  # in an actor's process: its actor_worker.ActorServer
worker_loop: Any = None  # in a worker process: its worker.loop.WorkerLoop
current_pg: Any = None  # the PlacementGroupSchedulingStrategy the running task runs in
captured: Any = None  # ... when it captures its child tasks and actors (else None)


def client_or_raise() -> Any:
    if client is None:
        raise RuntimeError(
            "mpray is not initialized: call mpray.init() first (or submit a task, which "
            "initializes it)"
        )
    return client
