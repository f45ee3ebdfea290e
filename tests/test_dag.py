"""``mpray.dag``: Ray Core's DAG API (``.bind`` / ``.execute``) over tasks and actors."""

from __future__ import annotations

import collections
import types

import pytest

import mpray as ray
from mpray.actor import ActorHandle
from mpray.dag import (ClassMethodNode, ClassNode, DAGNode, FunctionNode,
                       InputAttributeNode, InputNode, MultiOutputNode)
from mpray.object_ref import ObjectRef


@ray.remote
def inc(x):
    return x + 1


@ray.remote
def double(x):
    return 2 * x


@ray.remote
def add(a, b, c=0):
    return a + b + c


@ray.remote
def pair(x):
    return x, -x


@ray.remote
def boom(x):
    raise KeyError(f"no {x}")


@ray.remote
def counted(counter, x):
    ray.get(counter.add.remote(1))  # (one count per run of this task)
    return x


@ray.remote
def unpack(x, nested):
    # nested refs stay refs (Ray's rule): the task reads them itself
    return x, ray.get(nested[0]), ray.get(nested[1]["k"]), nested[2]


@ray.remote
class Counter:
    def __init__(self, start=0):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    @ray.method(num_returns=2)
    def both(self):
        return self.n, -self.n


Point = collections.namedtuple("Point", "x y")


def test_function_chain(ray_module):
    with InputNode() as inp:
        dag = double.bind(inc.bind(inp))
    assert isinstance(dag, FunctionNode) and isinstance(dag, DAGNode)
    ref = dag.execute(3)
    assert isinstance(ref, ObjectRef) and ray.get(ref) == 8
    assert ray.get(dag.execute(10)) == 22  # again, with another input
    assert ray.get(inc.bind(inc.bind(1)).execute()) == 3  # no input node: no input


def test_diamond_runs_the_shared_node_once(ray_module):
    counter = Counter.remote()
    with InputNode() as inp:
        src = counted.bind(counter, inp)
        dag = add.bind(inc.bind(src), double.bind(src))
    assert ray.get(dag.execute(5)) == 6 + 10
    assert ray.get(counter.get.remote()) == 1
    assert ray.get(dag.execute(1)) == 2 + 2
    assert ray.get(counter.get.remote()) == 2  # once per execute
    refs = MultiOutputNode([src, src]).execute(0)
    assert refs[0] == refs[1]  # one task, its ref twice


def test_input_by_position_keyword_and_attribute(ray_module):
    with InputNode() as inp:
        assert inp[0] is inp[0] and isinstance(inp.z, InputAttributeNode)
        assert inp[1].key == 1
        dag = add.bind(inp[0], inp[1], inp.z)
        by_key = add.bind(inp[0], inp["z"])
    assert ray.get(dag.execute(1, 2, z=3)) == 6
    assert ray.get(by_key.execute(10, z=5)) == 15
    # one argument: it is the input itself (a list, a dict, an object)
    with InputNode() as one:
        first = inc.bind(one[0])
        key = inc.bind(one["k"])
        attr = inc.bind(one.k)
        whole = inc.bind(one)
    assert ray.get(first.execute([10, 20])) == 11
    assert ray.get(key.execute({"k": 5})) == 6
    assert ray.get(attr.execute(types.SimpleNamespace(k=7))) == 8
    assert ray.get(whole.execute(1)) == 2


def test_kwargs_and_nodes_nested_in_containers(ray_module):
    with InputNode() as inp:
        dag = unpack.bind(
            x=inp, nested=[inc.bind(inp), {"k": double.bind(inp)}, Point(inp, 0)])
    x, a, b, point = ray.get(dag.execute(4))
    assert (x, a, b) == (4, 5, 8)
    assert point == Point(4, 0) and type(point) is Point  # (an input node: its value)
    # a top-level ref is resolved; keyword arguments too
    assert ray.get(add.bind(inc.bind(1), b=inc.bind(2), c=10).execute()) == 2 + 3 + 10


def test_multi_output(ray_module):
    with InputNode() as inp:
        dag = MultiOutputNode([inc.bind(inp), double.bind(inp), inp])
    out = dag.execute(6)
    assert isinstance(out, list) and len(out) == 3
    assert ray.get(out[:2]) == [7, 12] and out[2] == 6
    assert MultiOutputNode(()).execute() == []


def test_class_node_keeps_state_across_its_method_nodes(ray_module):
    with InputNode() as inp:
        c = Counter.bind(10)
        assert isinstance(c, ClassNode)
        first = c.get.bind()
        added = c.add.bind(inp)
        assert isinstance(added, ClassMethodNode) and added.get_method_name() == "add"
        again = c.add.bind(k=1)
        # a method result feeding a task, a task result feeding a method
        dag = MultiOutputNode([first, added, again, double.bind(again),
                               c.add.bind(inc.bind(inp)), c.get.bind()])
    assert ray.get(dag.execute(5)) == [10, 15, 16, 32, 22, 22]
    # each execute creates a new actor: the state starts over
    assert ray.get(dag.execute(1)) == [10, 11, 12, 24, 14, 14]
    handle = Counter.bind(3).execute()
    assert isinstance(handle, ActorHandle) and ray.get(handle.get.remote()) == 3


def test_methods_bound_on_an_existing_actor(ray_module):
    h = Counter.remote(0)
    with InputNode() as inp:
        dag = h.add.bind(inp)
    assert isinstance(dag, ClassMethodNode)
    assert ray.get(dag.execute(1)) == 1
    assert ray.get(dag.execute(2)) == 3  # the same actor: its state carries on
    both = h.both.bind().execute()  # (@method(num_returns=2): two refs)
    assert ray.get(both) == [3, -3]
    assert ray.get(h.add.options(num_returns=1).bind(10).execute()) == 13


def test_options_bind(ray_module):
    with InputNode() as inp:
        two = pair.options(num_returns=2).bind(inp)
        light = inc.options(num_cpus=0, name="light").bind(inp)
        named = Counter.options(name="dag-counter").bind(1)
        halves = Counter.bind(1).both.options(num_returns=2).bind()
    refs = two.execute(4)
    assert isinstance(refs, list) and ray.get(refs) == [4, -4]
    assert ray.get(light.execute(1)) == 2
    handle = named.execute()
    assert ray.get(ray.get_actor("dag-counter").get.remote()) == 1
    ray.kill(handle)
    assert ray.get(halves.execute()) == [1, -1]


def test_app_errors_come_back_through_the_refs(ray_module):
    with InputNode() as inp:
        dag = inc.bind(boom.bind(inp))
    with pytest.raises(KeyError, match="no 3"):
        ray.get(dag.execute(3))


def test_bad_use_raises_clear_errors(ray_module):
    with InputNode() as inp:
        dag = add.bind(inp[0], inp[1], c=inp.c)
        with pytest.raises(TypeError, match="pass it to execute"):
            dag.execute()
        with pytest.raises(TypeError, match=r"input \[1\].*1 positional"):
            dag.execute(1, c=2)
        with pytest.raises(TypeError, match="no keyword argument 'c'"):
            dag.execute(1, 2)
        with pytest.raises(IndexError):  # one argument: indexed itself
            inc.bind(inp[3]).execute([1, 2])
        with pytest.raises(TypeError, match="inc.remote"):
            inc.bind(inp, 2)  # arguments are checked at bind
        with pytest.raises(TypeError, match="Counter"):
            Counter.bind(1, 2)
        with pytest.raises(TypeError, match="add.bind"):
            Counter.bind().add.bind(1, 2)
        with pytest.raises(ValueError, match="ClassNode constructor"):
            Counter.bind(inp)
    with pytest.raises(AttributeError, match="execute"):
        dag.remote()
    with pytest.raises(AttributeError, match="bind"):
        dag.bind(1)
    with pytest.raises(AttributeError, match="no method 'nope'"):
        Counter.bind().nope
    with pytest.raises(AttributeError, match="bind"):
        Counter.bind().add.remote()
    with pytest.raises(ValueError, match="invalid option"):
        Counter.bind().add.options(num_cpus=1)
    with pytest.raises(ValueError, match="one InputNode"):
        add.bind(InputNode(), InputNode()).execute(1)
    with pytest.raises(ValueError):
        InputNode(1)
    with pytest.raises(ValueError):
        MultiOutputNode(inc.bind(1))
    with pytest.raises(TypeError):
        InputNode()[1.5]


def test_long_graphs_do_not_recurse(ray_module):
    node = inc.bind(0)
    for _ in range(5000):  # (deeper than Python's recursion limit)
        node = MultiOutputNode([node])
    out = node.execute()
    for _ in range(5000):
        out = out[0]
    assert ray.get(out) == 1


@ray.remote
def run_dag(dag, x):
    return ray.get(dag.execute(x))


def test_a_dag_travels_to_a_task_and_runs_there(ray_module):
    with InputNode() as inp:
        dag = double.bind(inc.bind(inp))
    assert ray.get(run_dag.remote(dag, 1)) == 4
