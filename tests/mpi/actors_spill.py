"""Run under mpiexec -n N (N >= 2): actors reached from every rank, work spilling over.

Prints "OK actors_spill" on rank 0 when every check held."""

import faulthandler
import os
import signal
import time

import psutil

import mpray as ray
from mpray.util.scheduling_strategies import NodeAffinitySchedulingStrategy as Affinity

faulthandler.register(signal.SIGUSR2, all_threads=True)  # a hang: kill -USR2 dumps stacks
ray.init()
ids = [n["NodeID"] for n in ray.nodes()]
last = Affinity(ids[-1], soft=False)


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def inc(self):
        self.n += 1
        return self.n

    def node(self):
        return ray.get_runtime_context().get_node_id()

    def pid(self):
        return os.getpid()


@ray.remote
def call_from_there(counter, k):
    out = [ray.get(counter.inc.remote()) for _ in range(k)]
    return out, ray.get_runtime_context().get_node_id()


# an actor of the driver's rank, called from a task on another rank through its handle
c = Counter.remote()
assert ray.get(c.inc.remote()) == 1
vals, ran_on = ray.get(call_from_there.options(scheduling_strategy=last).remote(c, 3))
assert ran_on == ids[-1] and vals == [2, 3, 4], (vals, ran_on)
assert ray.get(c.inc.remote()) == 5


# an actor created by a task on another rank lives there; the driver calls it, in order
@ray.remote
def make_counter():
    h = Counter.remote()
    ray.get(h.inc.remote())
    return h


h = ray.get(make_counter.options(scheduling_strategy=last).remote())
assert ray.get(h.node.remote()) == ids[-1]
assert ray.get([h.inc.remote() for _ in range(20)]) == list(range(2, 22))


def _alive(pid: int) -> bool:
    try:  # (it may exit between any two looks at it)
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pid: int, what: str) -> None:
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


# it lives while the driver holds the handle, and ends when the driver drops it
pid = ray.get(h.pid.remote())
time.sleep(0.3)
assert psutil.pid_exists(pid)
del h
wait_gone(pid, "an actor made on another rank outlived its handles")


# a handle passed to another rank keeps the actor alive while it is held there
@ray.remote
class Keeper:
    def __init__(self):
        self.h = None

    def keep(self, handles):
        self.h = handles[0]

    def call(self):
        return ray.get(self.h.inc.remote())

    def drop(self):
        self.h = None


def check_kept_there(keeper, mine, hand_over, how: str) -> None:
    """``hand_over(mine)`` gives the keeper (on another rank) a handle to ``mine``: the
    actor outlives ours while the keeper holds it, and ends when the keeper drops it."""
    pid = ray.get(mine.pid.remote())
    hand_over(mine)
    del mine
    time.sleep(0.5)
    assert ray.get(keeper.call.remote()) == 1, f"the actor ended while {how} held it"
    ray.get(keeper.drop.remote())
    wait_gone(pid, f"the actor outlived its last handle ({how})")


@ray.remote
def keep_by_name(keeper, name):
    ray.get(keeper.keep.remote([ray.get_actor(name)]))


keeper = Keeper.options(scheduling_strategy=last).remote()
check_kept_there(keeper, Counter.remote(), lambda h, k=keeper: ray.get(k.keep.remote([h])),
                 "a handle passed to another rank")
# so does a handle found by name there
check_kept_there(keeper, Counter.options(name="mine").remote(),
                 lambda h, k=keeper: ray.get(keep_by_name.options(scheduling_strategy=last)
                                             .remote(k, "mine")),
                 "a handle found by name on another rank")
del keeper


# actors placed on another rank by affinity or SPREAD: calls reach them there, in order
far = Counter.options(scheduling_strategy=last).remote()
assert ray.get(far.node.remote()) == ids[-1]
assert ray.get([far.inc.remote() for _ in range(30)]) == list(range(1, 31))
vals, _r = ray.get(call_from_there.options(scheduling_strategy=Affinity(ids[0], soft=False))
                   .remote(far, 2))
assert vals == [31, 32]
# a message too big for the inbox (a 3 MiB function) keeps its place among the others
blob = os.urandom(3 << 20)


@ray.remote
def captured():
    return len(blob)


calls = [far.inc.remote() for _ in range(5)]
big = captured.options(scheduling_strategy=last).remote()
calls += [far.inc.remote() for _ in range(5)]
assert ray.get(big) == 3 << 20
assert ray.get(calls) == list(range(33, 43))
named = Counter.options(name="far", scheduling_strategy=last).remote()
assert ray.get(ray.get_actor("far").node.remote()) == ids[-1]


# names are unique in the whole job, and found from every rank (rank 0 keeps them)
@ray.remote
def lookup(name):
    try:
        return ray.get(ray.get_actor(name).inc.remote())
    except ValueError as e:
        return str(e)


@ray.remote
def make_named(name, **opts):
    try:
        h = Counter.options(name=name, **opts).remote()
    except ValueError as e:
        return "refused: " + str(e)
    return h, ray.get(h.inc.remote())


vals = ray.get([lookup.options(scheduling_strategy=Affinity(i, soft=False)).remote("far")
                for i in ids])
assert sorted(vals) == list(range(1, len(ids) + 1)), vals  # (one actor, every rank)
there = ray.get(make_named.options(scheduling_strategy=last).remote("made_there"))
assert there[1] == 1
assert ray.get(ray.get_actor("made_there").inc.remote()) == 2  # (rank 0 knows it)
try:
    Counter.options(name="made_there").remote()
    raise AssertionError("a name taken on another rank was given again")
except ValueError as e:
    assert "already exists" in str(e), e
again = ray.get(make_named.options(scheduling_strategy=last).remote("far"))
assert again.startswith("refused: ") and "already exists" in again, again
same = ray.get(make_named.options(scheduling_strategy=last).remote("made_there",
                                                                     get_if_exists=True))
assert same[1] == 3  # the same actor
assert "no live actor" in ray.get(
    lookup.options(scheduling_strategy=last).remote("nobody"))
# a handle found by name holds that rank's actor: it outlives the other handles, and
# ends (freeing its name) with the found one
found = ray.get_actor("made_there")
pid = ray.get(found.pid.remote())
del there, same
time.sleep(0.5)
assert ray.get(found.inc.remote()) == 4, "a handle found by name did not keep its actor"
del found
wait_gone(pid, "an actor outlived its last handle (one found by name)")
deadline = time.monotonic() + 10
while "no live actor" not in ray.get(lookup.options(scheduling_strategy=last)
                                     .remote("made_there")):
    assert time.monotonic() < deadline, "an ended actor's name stayed taken"
    time.sleep(0.05)
spread = [Counter.options(scheduling_strategy="SPREAD").remote() for _ in range(2 * len(ids))]
assert set(ray.get([a.node.remote() for a in spread])) == set(ids)
ray.kill(far)
try:
    ray.get(far.inc.remote(), timeout=20)
    raise AssertionError("a killed actor answered")
except ray.exceptions.ActorDiedError:
    pass
del named, spread

# default-strategy work spills over to idle ranks when this rank has a backlog
@ray.remote
def busy(x):
    time.sleep(0.01)
    return ray.get_runtime_context().get_node_id()


where = ray.get([busy.remote(i) for i in range(40 * len(ids))])
assert len(set(where)) >= 2, f"no task ran on another rank: {set(where)}"

ray.shutdown()
print("OK actors_spill", flush=True)
