"""Scheduling strategies, mirroring ``ray.util.scheduling_strategies`` (defined in
``mpray.placement``, which the task and actor submitters share)."""

from ..placement import (NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy,
                         check_strategy)

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy",
           "check_strategy"]
