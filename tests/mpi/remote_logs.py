"""Run under mpiexec with a log directory of each rank's own for ranks > 0 (as on hosts
with disks of their own, which rank 0 cannot read): their workers' lines still reach
rank 0's driver, labelled with their rank, the last ones too.
Prints "OK remote_logs" on rank 0."""

import mpray
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

mpray.init()
ids = [n["NodeID"] for n in mpray.nodes()]


WORDS = ["zero", "one", "two", "three"]  # (numbers alone would fold: Ray's dedup)


@mpray.remote
def hello(k):
    print(f"hello from a task on rank {WORDS[k]}", flush=True)
    return mpray.get_runtime_context().get_node_id()


for k, nid in enumerate(ids):
    assert mpray.get(hello.options(scheduling_strategy=Affinity(nid, soft=False)).remote(k),
                     timeout=60) == nid
mpray.shutdown()
print("OK remote_logs", flush=True)
