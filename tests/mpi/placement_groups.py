"""Run under mpiexec -n N (N >= 2): placement groups across ranks (each rank a node).

STRICT_SPREAD gives one bundle per rank (what pins one actor per rank); a group made on
another rank (by a task) is seen from rank 0; removal frees every rank's bundles; a
group that needs more ranks than the job has stays pending.
Prints "OK placement_groups" on rank 0 when every check held."""


import mpray as ray
from mpray_mpi.launch import detect
from mpray import exceptions as exc
from mpray.util import (get_placement_group, placement_group, placement_group_table,
                        remove_placement_group)
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity
from mpray.util.scheduling_strategies import PlacementGroupSchedulingStrategy as PGS

ray.init()
size = detect().size  # (the launcher's own count: MPICH, Open MPI, srun)
ids = [n["NodeID"] for n in ray.nodes()]
assert len(ids) == size >= 2


@ray.remote
def where():
    return ray.get_runtime_context().get_node_id()


@ray.remote
class Member:
    def node(self):
        return ray.get_runtime_context().get_node_id()


# one bundle per rank: tasks and actors land on the rank of their bundle
pg = placement_group([{"CPU": 1}] * size, strategy="STRICT_SPREAD", name="per-rank")
assert ray.get(pg.ready(), timeout=60) == pg
row = placement_group_table(pg)
assert row["state"] == "CREATED" and sorted(row["bundles_to_node_id"].values()) == sorted(ids)
for i in range(size):
    node = row["bundles_to_node_id"][i]
    assert ray.get(where.options(scheduling_strategy=PGS(pg, i)).remote(), timeout=60) == node
    m = Member.options(scheduling_strategy=PGS(pg, i)).remote()
    assert ray.get(m.node.remote(), timeout=60) == node
    ray.kill(m)
avail = ray.available_resources()  # (rank 0's view: its bundle's CPU is reserved)
assert any(k.startswith("CPU_group_") for k in avail), avail


# removal: every rank gives its bundle back, and tasks bound to the group fail
remove_placement_group(pg)
assert placement_group_table(pg)["state"] == "REMOVED"
try:
    ray.get(where.options(scheduling_strategy=PGS(pg, size - 1)).remote(), timeout=60)
    raise AssertionError("a task of a removed group ran")
except exc.TaskPlacementGroupRemoved:
    pass
again = placement_group([{"CPU": 1}] * size, strategy="STRICT_SPREAD")
assert again.wait(60)  # the bundles were freed on every rank
remove_placement_group(again)


# a group made inside a task on another rank is known everywhere (rank 0 keeps them);
# the task lends its CPU while it waits for the group
@ray.remote
def make_group():
    g = placement_group([{"CPU": 1}], name="from-a-task")
    return ray.get(g.ready(), timeout=60).id.hex()


key = ray.get(make_group.options(scheduling_strategy=Affinity(ids[-1], soft=False)).remote(),
              timeout=60)
g = get_placement_group("from-a-task")
assert g.id.hex() == key and placement_group_table(g)["state"] == "CREATED"
remove_placement_group(g)

# more bundles than ranks under STRICT_SPREAD: pending, not an error
too_many = placement_group([{"CPU": 1}] * (size + 1), strategy="STRICT_SPREAD")
assert not too_many.wait(1) and placement_group_table(too_many)["state"] == "PENDING"
remove_placement_group(too_many)
print("OK placement_groups", flush=True)
ray.shutdown()
