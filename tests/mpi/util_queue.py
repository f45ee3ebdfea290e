"""Run under mpiexec -n N (N >= 2): one mpray.util.queue.Queue shared by every rank.

Producer tasks SPREAD over the ranks put into one queue the driver drains; a consumer
task and an actor on the last rank take what the driver puts.  Prints "OK util_queue" on
rank 0 when every check held (ranks > 0 never get past init).

(Not named queue.py: run as a script, its folder comes first on sys.path and the file
would shadow the standard library's ``queue`` module.)"""

import faulthandler
import signal
import time

import mpray as ray
from mpray.util.queue import Empty, Queue
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

faulthandler.register(signal.SIGUSR2, all_threads=True)  # a hang: kill -USR2 dumps stacks
ray.init()
ids = [n["NodeID"] for n in ray.nodes()]
assert len(ids) >= 2, ids
last = Affinity(ids[-1], soft=False)


@ray.remote
def produce(q, i, k):
    node = ray.get_runtime_context().get_node_id()
    for j in range(k):
        q.put((node, i, j))
    return node


@ray.remote
def consume(q, n):
    return [q.get(timeout=60) for _ in range(n)], ray.get_runtime_context().get_node_id()


@ray.remote
class Taker:
    def __init__(self, q):
        self.q = q

    def take(self, n):
        return self.q.get_nowait_batch(n)

    def node(self):
        return ray.get_runtime_context().get_node_id()


# producers on every rank, one queue (its actor on the driver's rank), the driver drains
q = Queue()
k = 5
n_tasks = 2 * len(ids)
refs = [produce.options(scheduling_strategy="SPREAD").remote(q, i, k) for i in range(n_tasks)]
got = [q.get(timeout=60) for _ in range(n_tasks * k)]
assert set(ray.get(refs)) == set(ids), ray.get(refs)
assert {g[0] for g in got} == set(ids), got
assert sorted(g[1:] for g in got) == [(i, j) for i in range(n_tasks) for j in range(k)]
for i in range(n_tasks):  # each producer's items keep their order
    assert [g[2] for g in got if g[1] == i] == list(range(k))
assert q.empty()

# a consumer on the last rank waits in get until the driver puts
ref = consume.options(scheduling_strategy=last).remote(q, 3)
time.sleep(0.3)
for x in ("a", "b", "c"):
    q.put(x)
items, where = ray.get(ref, timeout=60)
assert items == ["a", "b", "c"] and where == ids[-1], (items, where)

# the queue's actor itself on the last rank; an actor there holding the queue too
far = Queue(maxsize=4, actor_options={"scheduling_strategy": last})
taker = Taker.options(scheduling_strategy=last).remote(far)
assert ray.get(taker.node.remote()) == ids[-1]
far.put_nowait_batch([1, 2, 3])
assert ray.get(taker.take.remote(2), timeout=60) == [1, 2]
assert far.get(timeout=30) == 3
try:
    far.get(timeout=0.2)
    raise AssertionError("an empty queue gave an item")
except Empty:
    pass
far.shutdown()
q.shutdown()
del taker

ray.shutdown()
print("OK util_queue", flush=True)
