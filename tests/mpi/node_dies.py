"""Run under mpiexec -n N (N >= 2): rank 1's node process is SIGKILLed (as the OOM killer
would) while rank 0 keeps submitting; the whole job must end promptly, non-zero, with a
message naming the rank, its host and the cause."""

import os
import signal
import time

import mpray as ray
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()


@ray.remote
def f(x):
    return x


@ray.remote
def kill_my_node():
    os.kill(os.getppid(), signal.SIGKILL)  # (a worker's parent is its rank's node)
    time.sleep(60)


me = ray.get_runtime_context().get_node_id()
other = next(n["NodeID"] for n in ray.nodes() if n["NodeID"] != me)
assert ray.get([f.options(scheduling_strategy="SPREAD").remote(i) for i in range(8)]) \
    == list(range(8))
kill_my_node.options(scheduling_strategy=NodeAffinitySchedulingStrategy(other, soft=False)) \
    .remote()
t0 = time.monotonic()
while time.monotonic() - t0 < 60:  # (the job is ended under us long before this)
    ray.get([f.options(scheduling_strategy="SPREAD").remote(i) for i in range(8)])
    time.sleep(0.05)
print("FAILED: the job survived a rank's node dying")
