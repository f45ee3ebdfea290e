"""Options of tasks, actors and methods, checked where they are given (``.options()``,
``@remote(...)``, ``@method(...)``, ``.bind()``), and a call's arguments checked against
the function's signature at the call, as Ray does.  Shared by the submitters
(``remote_function``, ``actor``) and the DAG API (``dag``), which sit above it::

    opts ─▶ validate_options (names, types, strategy) ─▶ resource_request ─▶ shape
    f.remote(*args) ─▶ ArgCheck(args, kwargs): TypeError at the call, not in the worker
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from . import runtime_env
from .placement import PlacementGroupSchedulingStrategy, check_strategy

TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "memory", "num_returns", "max_retries",
    "retry_exceptions", "name", "scheduling_strategy", "runtime_env", "accelerator_type",
    "label_selector", "enable_task_events", "_metadata", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks", "max_calls",
    "object_store_memory", "_generator_backpressure_num_objects",
}
ACTOR_ONLY = {"max_restarts", "max_task_retries", "max_concurrency", "namespace",
              "lifetime", "get_if_exists", "concurrency_groups", "max_pending_calls",
              "checkpoint_interval"}


def _check_number(name: str, v: Any, integer: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise ValueError(f"option {name} must be a non-negative number, not {v!r}")
    if integer and v != int(v):
        raise ValueError(f"option {name} must be an integer, not {v!r}")


def validate_options(opts: dict, allowed: set[str], what: str) -> dict:
    for k, v in opts.items():
        if k not in allowed:
            hint = " (that option is for actors)" if k in ACTOR_ONLY and what == "task" else ""
            raise ValueError(f"invalid option {k!r} for a {what}{hint}; valid options: "
                             f"{', '.join(sorted(allowed))}")
        if v is None:
            continue
        if k in ("num_cpus", "num_gpus", "memory"):
            _check_number(k, v)
            if k == "num_gpus" and v > 1 and v != int(v):
                raise ValueError(f"num_gpus above 1 must be a whole number, not {v!r}")
        elif k == "checkpoint_interval":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"option checkpoint_interval must be an integer >= 1 (calls "
                                 f"between checkpoints), not {v!r}")
        elif k == "max_calls":
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"option max_calls must be an integer >= 0, not {v!r}")
        elif k in ("max_retries", "max_restarts", "max_task_retries"):
            if isinstance(v, bool) or not isinstance(v, int) or v < -1:
                raise ValueError(f"option {k} must be an integer >= -1, not {v!r}")
        elif k == "num_returns":
            if v in ("streaming", "dynamic"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError("num_returns must be a non-negative integer, 'streaming' "
                                 f"or 'dynamic', not {v!r}")
        elif k == "_generator_backpressure_num_objects":
            if isinstance(v, bool) or not isinstance(v, int) or v < -1:
                raise ValueError(f"{k} must be an integer >= -1, not {v!r}")
        elif k == "resources":
            if not isinstance(v, dict):
                raise TypeError(f"resources must be a dict, not {type(v).__name__}")
            for rk, rv in v.items():
                if rk in ("CPU", "GPU"):
                    raise ValueError(f"use num_cpus/num_gpus instead of resources[{rk!r}]")
                _check_number(f"resources[{rk!r}]", rv)
        elif k == "retry_exceptions":
            if not isinstance(v, bool) and not (
                isinstance(v, (list, tuple))
                and all(isinstance(c, type) and issubclass(c, BaseException) for c in v)
            ):
                raise TypeError("retry_exceptions must be a bool or a list of exception types")
        elif k == "scheduling_strategy":
            check_strategy(v)
        elif k == "runtime_env":
            opts[k] = runtime_env.check(v)
    return _ray_only_options(opts)


_warned: set = set()


def _warn_once(key: str, text: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(text, stacklevel=4)


def _ray_only_options(opts: dict) -> dict:
    """Options of Ray's that mpray honours another way, or cannot: said, never ignored.
    The legacy ``placement_group=`` options become a PlacementGroupSchedulingStrategy."""
    pg = opts.get("placement_group")
    if pg is not None and pg != "default":
        if opts.get("scheduling_strategy") is not None:
            raise ValueError("give either placement_group= or scheduling_strategy=, not both")
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            pg, opts.get("placement_group_bundle_index", -1) if opts.get(
                "placement_group_bundle_index") is not None else -1,
            opts.get("placement_group_capture_child_tasks"))
        check_strategy(opts["scheduling_strategy"])
    for k in ("placement_group", "placement_group_bundle_index",
              "placement_group_capture_child_tasks"):
        opts.pop(k, None)
    if opts.get("label_selector"):
        raise NotImplementedError("label_selector is not supported by mpray (nodes have no "
                                  "labels): use resources or a NodeAffinity strategy")
    if opts.get("object_store_memory") is not None:
        _warn_once("object_store_memory", "the object_store_memory option of a task or actor "
                   "is not enforced by mpray (the store is shared by the node)")
    if opts.get("enable_task_events"):
        _warn_once("enable_task_events", "enable_task_events: mpray records no task events "
                   "yet")
    return opts


def resource_request(opts: dict, default_cpus: float = 1.0) -> tuple:
    """The task's resource shape: sorted ((name, amount), ...), the scheduler's queue key."""
    cpus = opts.get("num_cpus")
    res = {"CPU": float(default_cpus if cpus is None else cpus)}
    if opts.get("num_gpus"):
        res["GPU"] = float(opts["num_gpus"])
    if opts.get("memory"):
        res["memory"] = float(opts["memory"])
    for k, v in (opts.get("resources") or {}).items():
        res[k] = float(v)
    if opts.get("accelerator_type"):  # (Ray's way: a node with one has this resource)
        res[f"accelerator_type:{opts['accelerator_type']}"] = 0.001
    return tuple(sorted((k, v) for k, v in res.items() if v))


ACTOR_OPTIONS = (TASK_OPTIONS | ACTOR_ONLY) - {"num_returns", "max_retries", "retry_exceptions",
                                              "max_calls"}
METHOD_OPTIONS = {"num_returns", "max_task_retries", "retry_exceptions", "name",
                  "concurrency_group", "enable_task_events", "_metadata",
                  "_generator_backpressure_num_objects"}


_PLAIN = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class ArgCheck:
    """Does a call's arguments fit the function's signature?  Checked at ``.remote()``,
    as Ray does, so a bad call raises ``TypeError`` there and not later in the worker.
    The usual call (positional arguments only, a plain signature) costs a comparison of
    counts; anything else is bound with ``inspect.Signature.bind``."""

    __slots__ = ("sig", "lo", "hi", "what")

    def __init__(self, fn, what: str, drop_self: bool = False) -> None:
        self.what = what
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):  # (a builtin without one: the worker decides)
            sig = None
        if sig is not None and drop_self:
            params = list(sig.parameters.values())[1:]
            sig = sig.replace(parameters=params)
        self.sig = sig
        self.lo, self.hi = -1, -1  # (counts the fast check allows; -1: always bind)
        if sig is not None and all(p.kind in _PLAIN for p in sig.parameters.values()):
            ps = list(sig.parameters.values())
            self.lo = sum(1 for p in ps if p.default is p.empty)
            self.hi = len(ps)

    def __call__(self, args: tuple, kwargs: dict) -> None:
        if not kwargs and self.lo <= len(args) <= self.hi:
            return
        if self.sig is not None:
            try:
                self.sig.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self.what}: {e}") from None
