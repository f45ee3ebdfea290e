"""``mpray.timeline()``: the session's tasks as a Chrome trace (Perfetto and
chrome://tracing open it), built from the control store.

Data flow::

    Reader(session) ─ nodes, workers, tasks, objects ─▶ trace events:
        "M" process_name per node/rank, thread_name per worker
        "X" per task execution (its name, ids, state; ts/dur in µs)
        "i" per object stored in the arena (its size)
    ─▶ a list (``filename=None``) or a JSON file
"""

from __future__ import annotations

import json

# Chrome's reserved colour names, by how the task ended (as Ray's timeline colours)
_COLOURS = {"FINISHED": "thread_state_running", "FAILED": "terrible",
            "RUNNING": "thread_state_runnable"}


def trace(reader) -> list[dict]:
    events: list[dict] = []
    for n in reader.nodes():
        events.append({"name": "process_name", "ph": "M", "pid": n["rank"], "tid": 0,
                       "args": {"name": f"node {n['rank']} ({n['node_name']}, "
                                        f"{n['node_id'][:8]})"}})
    for w in reader.workers():
        events.append({"name": "thread_name", "ph": "M", "pid": w["rank"], "tid": w["pid"],
                       "args": {"name": f"worker pid={w['pid']}"}})
    for t in reader.tasks():
        if t["worker_pid"] is None or t["start_time_ms"] is None:
            continue
        rec = task_times(t)
        events.append({
            "cat": "task", "name": t["name"], "ph": "X", "pid": t["rank"] or 0,
            "tid": t["worker_pid"], "ts": rec[0], "dur": rec[1],
            "cname": _COLOURS.get(t["state"], "generic_work"),
            "args": {"task_id": t["task_id"], "state": t["state"], "type": t["type"],
                     "attempt_number": t["attempt_number"], "actor_id": t["actor_id"],
                     "error_type": t["error_type"], "parent_task_id": t["parent_task_id"]},
        })
    for o in reader.objects():
        if o["created_ms"] is None:
            continue
        events.append({"cat": "object", "name": "object stored", "ph": "i", "s": "p",
                       "pid": o["rank"] or 0, "tid": 0, "ts": o["created_ms"] * 1000,
                       "args": {"object_id": o["object_id"], "size": o["object_size"],
                                "freed": o["freed_ms"] is not None}})
    return events


def task_times(t: dict) -> tuple[float, float]:
    """(start, duration) in µs of a task's row (a running task: up to now)."""
    import time

    start = t["start_time_ms"]
    end = t["end_time_ms"] if t["end_time_ms"] is not None else time.time() * 1000
    return start * 1000.0, max(0.0, end - start) * 1000.0


def write(events: list[dict], filename: str) -> None:
    with open(filename, "w") as f:
        json.dump(events, f)
