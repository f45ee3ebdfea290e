"""``mpray.util``: ActorPool, placement groups and scheduling strategies (as in
``ray.util``)."""

from . import scheduling_strategies
from .actor_pool import ActorPool
from .placement_group import (PlacementGroup, get_current_placement_group,
                              get_placement_group, placement_group, placement_group_table,
                              remove_placement_group)
from .progress import progress

__all__ = ["ActorPool", "PlacementGroup", "get_current_placement_group",
           "get_placement_group", "placement_group",
           "placement_group_table", "progress", "remove_placement_group",
           "scheduling_strategies"]
