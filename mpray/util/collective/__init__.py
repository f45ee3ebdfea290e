"""``mpray.util.collective``: Ray's ``ray.util.collective`` API (allreduce, broadcast,
allgather, reducescatter, reduce, barrier, send/recv) on numpy arrays among actors, tasks
and the driver.  Members on one host meet in shared memory (``shm.py``); members on several
hosts, or with ``backend="store"``, pass arrays through the object store (``store.py``).

    import mpray.util.collective as col
    col.init_collective_group(world_size=4, rank=i, group_name="g")
    col.allreduce(a, group_name="g")          # a is summed across the group, in place
"""

from .collective import (allgather, allreduce, barrier, broadcast, create_collective_group,
                         destroy_collective_group, get_collective_group_size,
                         get_group_backend, get_rank, init_collective_group,
                         is_group_initialized, recv, reduce, reducescatter, send)
from .types import Backend, CollectiveError, CollectiveTimeoutError, ReduceOp

__all__ = ["Backend", "CollectiveError", "CollectiveTimeoutError", "ReduceOp", "allgather",
           "allreduce", "barrier", "broadcast", "create_collective_group",
           "destroy_collective_group", "get_collective_group_size", "get_group_backend",
           "get_rank", "init_collective_group", "is_group_initialized", "recv", "reduce",
           "reducescatter", "send"]
