"""Ray's state API (``ray.util.state``) on the session's control store.

Data flow::

    list_tasks(filters, limit, detail) ─▶ control.reader.Reader(the session) ─ sync ─▶
        every rank's store.db ─▶ records with Ray's field names ─ filters, limit ─▶ list

The session is this program's while it runs; after ``shutdown()`` (or from another
program) the newest one in ``MPRAY_LOG_DIR`` (or the per-user directory), or the one
``address=`` names (a session directory).  Records are dicts whose keys are also
attributes.  The store is written in the background: what happened up to about a quarter
of a second before the call is there (Ray's state API is eventually consistent too).
"""

from __future__ import annotations

import collections

from ...control.reader import StateRecord, open_reader, select, session_dir

__all__ = ["list_tasks", "list_actors", "list_objects", "list_nodes", "list_workers",
           "get_task", "get_actor", "get_node", "get_worker", "summarize_tasks",
           "summarize_actors", "summarize_objects", "StateRecord", "session_dir"]


def _list(kind: str, address, filters, limit, detail, raise_on_missing_output=True,
          **_ignored) -> list[StateRecord]:
    r = open_reader(address)
    return select(getattr(r, kind)(), kind, filters, limit, detail)


def list_tasks(address: str | None = None, filters=None, limit: int = 100,
               timeout: int = 30, detail: bool = False, **kw) -> list[StateRecord]:
    return _list("tasks", address, filters, limit, detail, **kw)


def list_actors(address: str | None = None, filters=None, limit: int = 100,
                timeout: int = 30, detail: bool = False, **kw) -> list[StateRecord]:
    return _list("actors", address, filters, limit, detail, **kw)


def list_objects(address: str | None = None, filters=None, limit: int = 100,
                 timeout: int = 30, detail: bool = False, **kw) -> list[StateRecord]:
    """Objects stored in the shared store (values larger than ``inline_max``; smaller
    ones travel inside messages and are not listed)."""
    return _list("objects", address, filters, limit, detail, **kw)


def list_nodes(address: str | None = None, filters=None, limit: int = 100,
               timeout: int = 30, detail: bool = False, **kw) -> list[StateRecord]:
    return _list("nodes", address, filters, limit, detail, **kw)


def list_workers(address: str | None = None, filters=None, limit: int = 100,
                 timeout: int = 30, detail: bool = False, **kw) -> list[StateRecord]:
    return _list("workers", address, filters, limit, detail, **kw)


def _get(kind: str, key: str, value: str, address):
    found = _list(kind, address, [(key, "=", value)], None, True)
    return found[0] if found else None


def get_task(id: str, address: str | None = None, timeout: int = 30, **kw):
    """The task's record (its latest attempt), or None."""
    return _get("tasks", "task_id", id, address)


def get_actor(id: str, address: str | None = None, timeout: int = 30, **kw):
    return _get("actors", "actor_id", id, address)


def get_node(id: str, address: str | None = None, timeout: int = 30, **kw):
    return _get("nodes", "node_id", id, address)


def get_worker(id: str, address: str | None = None, timeout: int = 30, **kw):
    return _get("workers", "worker_id", id, address)


def summarize_tasks(address: str | None = None, timeout: int = 30, **kw) -> dict:
    """Ray's shape: per function, its type and how many tasks are in each state."""
    summary: dict = {}
    tasks = open_reader(address).tasks()
    for t in tasks:
        s = summary.setdefault(t["name"], {"func_or_class_name": t["name"], "type": t["type"],
                                           "state_counts": collections.Counter()})
        s["state_counts"][t["state"]] += 1
    for s in summary.values():
        s["state_counts"] = dict(s["state_counts"])
    return {"cluster": {
        "summary": summary, "total_tasks": sum(t["type"] == "NORMAL_TASK" for t in tasks),
        "total_actor_tasks": sum(t["type"] == "ACTOR_TASK" for t in tasks),
        "total_actor_scheduled": sum(t["type"] == "ACTOR_CREATION_TASK" for t in tasks),
        "summary_by": "func_name"}}


def summarize_actors(address: str | None = None, timeout: int = 30, **kw) -> dict:
    summary: dict = {}
    actors = open_reader(address).actors()
    for a in actors:
        s = summary.setdefault(a["class_name"], {"class_name": a["class_name"],
                                                 "state_counts": collections.Counter()})
        s["state_counts"][a["state"]] += 1
    for s in summary.values():
        s["state_counts"] = dict(s["state_counts"])
    return {"cluster": {"summary": summary, "total_actors": len(actors),
                        "summary_by": "class"}}


def summarize_objects(address: str | None = None, timeout: int = 30, **kw) -> dict:
    objs = open_reader(address).objects()
    live = [o for o in objs if o["state"] != "FREED"]
    by_state = collections.Counter(o["state"] for o in objs)
    return {"cluster": {
        "summary": {"IN_STORE": {"total_objects": len(live),
                                 "total_size_mb": sum(o["object_size"] or 0 for o in live)
                                 / 2**20}},
        "state_counts": dict(by_state), "total_objects": len(live),
        "total_size_mb": sum(o["object_size"] or 0 for o in live) / 2**20,
        "callsite_enabled": False, "summary_by": "state"}}
