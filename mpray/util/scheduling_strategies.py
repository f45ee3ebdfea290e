"""Scheduling strategies, mirroring ``ray.util.scheduling_strategies``.

On one host every strategy places work on the only node; the node-affinity check still
fails clearly when a hard (``soft=False``) affinity names a node that does not exist.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    node_id: str
    soft: bool
    _spill_on_unavailable: bool = False
    _fail_on_unavailable: bool = False

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a hex string, not {type(node_id).__name__}")
        object.__setattr__(self, "node_id", node_id)
        object.__setattr__(self, "soft", bool(soft))
        object.__setattr__(self, "_spill_on_unavailable", _spill_on_unavailable)
        object.__setattr__(self, "_fail_on_unavailable", _fail_on_unavailable)


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    placement_group: object
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None


STRATEGIES = ("DEFAULT", "SPREAD")


def check_strategy(s) -> None:
    if s is None or isinstance(s, NodeAffinitySchedulingStrategy):
        return
    if isinstance(s, str) and s in STRATEGIES:
        return
    raise ValueError(
        f"scheduling_strategy must be one of {STRATEGIES} or a "
        f"NodeAffinitySchedulingStrategy, not {s!r}"
    )
