"""``mpray.dag``: Ray Core's DAG API (``ray.dag``), executed with ordinary tasks and actors.

``.bind(...)`` records a call instead of making it; ``.execute(...)`` on the last node
makes every call of the graph, each once, children first::

    from mpray.dag import InputNode, MultiOutputNode

    with InputNode() as inp:
        a = double.bind(inp[0])                 # FunctionNode
        counter = Counter.bind(10)              # ClassNode (an actor per execute)
        b = counter.add.bind(a, step=inp.step)  # ClassMethodNode
        dag = MultiOutputNode([a, b])
    refs = dag.execute(3, step=1)               # [ObjectRef, ObjectRef]

What is not here: compiled graphs (``experimental_compile``), visualisation, and
splitting a ``num_returns`` > 1 method call into one node per return (such a node's
result is the list of refs).
"""

from .dag_node import DAGNode
from .input_node import DAGInputData, InputAttributeNode, InputNode
from .nodes import (ClassMethodNode, ClassNode, FunctionNode, MultiOutputNode, bind_class,
                    bind_function, bind_method)

__all__ = [
    "ClassMethodNode", "ClassNode", "DAGInputData", "DAGNode", "FunctionNode",
    "InputAttributeNode", "InputNode", "MultiOutputNode", "bind_class", "bind_function",
    "bind_method",
]
