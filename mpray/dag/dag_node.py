"""``DAGNode``, the base of every bound node, and how a DAG executes.

A node is a call written down instead of made: ``f.bind(x, y)`` records ``f`` and its
arguments, in which other nodes may stand for values (top level, or nested in lists,
tuples, dicts and sets).  ``node.execute(*args, **kwargs)`` then makes the calls::

    walk the graph from ``node``, children first (iteratively: long chains do not
    recurse), each node once ─▶ run each in that order: its arguments with every child
    node replaced by the child's result ─▶ f.remote(...) / Cls.remote(...) /
    handle.method.remote(...) ─▶ the root's result (an ObjectRef, an ActorHandle, a list)

One execution keeps one result per node, so a node reached along two paths (a diamond)
runs once per ``execute``; every ``execute`` runs the whole graph again (new tasks, and
new actors for class nodes), as Ray's non-compiled DAGs do.  A child's result that is an
``ObjectRef`` is passed on as it is: at the top level of a call's arguments the task
receives its value, nested in a container it stays a ref (Ray's rule for refs).
"""

from __future__ import annotations

import uuid
from typing import Any, Iterator

__all__ = ["DAGNode"]


class DAGNode:
    """A node of a DAG: what to call, with which bound arguments (values and other nodes).

    Subclasses say what running one means (``_execute_impl``) and which nodes, beyond
    those in the arguments, must run before it (``_deps``)."""

    def __init__(self, args: tuple, kwargs: dict, options: dict | None = None,
                 deps: tuple = ()) -> None:
        self._bound_args = tuple(args)
        self._bound_kwargs = dict(kwargs)
        self._bound_options = dict(options or {})
        self._deps = tuple(deps)  # run before this node, not passed to it
        self._stable_uuid = uuid.uuid4().hex

    # ------------------------------------------------------------------ inspection
    def get_args(self) -> tuple:
        """The bound positional arguments (nodes among them)."""
        return self._bound_args

    def get_kwargs(self) -> dict:
        """The bound keyword arguments (nodes among them)."""
        return dict(self._bound_kwargs)

    def get_options(self) -> dict:
        """The options this node's call is made with (actor method nodes, method options)."""
        return dict(self._bound_options)

    def get_stable_uuid(self) -> str:
        """An id of this node, fixed for its life."""
        return self._stable_uuid

    def _children(self) -> list["DAGNode"]:
        """The nodes that run before this one: its dependencies, then those in its
        arguments, in order, each once."""
        out: list[DAGNode] = []
        seen: set[int] = set()
        for n in (*self._deps, *_find_nodes(self._bound_args),
                  *_find_nodes(self._bound_kwargs)):
            if id(n) not in seen:
                seen.add(id(n))
                out.append(n)
        return out

    # ------------------------------------------------------------------ running
    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """Run the DAG ending at this node: every node it reaches, once, children first.

        ``args``/``kwargs`` are the DAG's input, read by its ``InputNode``: one positional
        argument is the input itself; anything else is read by position (``inp[0]``) and
        by keyword (``inp.x``, ``inp["x"]``).  Returns this node's result: an
        ``ObjectRef`` (a function or method node), an ``ActorHandle`` (a class node), a
        list of them (``MultiOutputNode``), or the input (an input node)."""
        return _Execution(args, kwargs).run(self)

    def _run(self, ex: "_Execution") -> Any:
        return self._execute_impl(ex.resolve(self._bound_args),
                                  ex.resolve(self._bound_kwargs), ex)

    def _execute_impl(self, args: tuple, kwargs: dict, ex: "_Execution") -> Any:
        """Make this node's call with its resolved arguments."""
        raise NotImplementedError

    # ------------------------------------------------------------------ misuse
    def __getattr__(self, name: str) -> Any:
        # (only reached for attributes that do not exist: say what to do instead)
        if name == "bind":
            raise AttributeError(f".bind() cannot be used again on {type(self).__name__}")
        if name == "remote":
            raise AttributeError(f".remote() cannot be used on {type(self).__name__}. To "
                                 "execute the task graph for this node, use .execute().")
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"

    def _describe(self) -> str:
        return ""


# ---------------------------------------------------------------------- containers
_SCANNED = (list, tuple, dict, set, frozenset)


def _find_nodes(value: Any) -> Iterator[DAGNode]:
    """The nodes in ``value``: itself, or nested in lists, tuples, dicts (their values)
    and sets.  Other objects are not looked into (Ray scans them through pickling;
    here a node inside a custom object stays a node)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, DAGNode):
            yield v
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, _SCANNED):
            stack.extend(reversed(list(v)))


def _replace_nodes(value: Any, results: dict) -> Any:
    """``value`` with every node in it replaced by its result; containers without a
    node in them are returned as they are (no copy)."""
    if isinstance(value, DAGNode):
        return results[id(value)]
    if not isinstance(value, _SCANNED) or not any(True for _ in _find_nodes(value)):
        return value
    if isinstance(value, dict):
        out = {k: _replace_nodes(v, results) for k, v in value.items()}
        return out if type(value) is dict else type(value)(out)
    items = [_replace_nodes(v, results) for v in value]
    if isinstance(value, tuple) and hasattr(value, "_make"):  # a namedtuple
        return value._make(items)
    return type(value)(items)


# ---------------------------------------------------------------------- one execution
class _Execution:
    """One ``execute`` call: the DAG's input and each node's result (by node identity)."""

    def __init__(self, args: tuple, kwargs: dict) -> None:
        self.args = args
        self.kwargs = kwargs
        self.results: dict[int, Any] = {}

    def run(self, root: DAGNode) -> Any:
        order = _post_order(root)
        inputs = [n for n in order if getattr(type(n), "_is_input", False)]
        if len(inputs) > 1:
            raise ValueError("a DAG has one InputNode; this one reaches "
                             f"{len(inputs)} different ones (use one InputNode and index "
                             "it: inp[0], inp[1], inp.key)")
        if inputs and not self.args and not self.kwargs:
            raise TypeError("this DAG reads its input (an InputNode): pass it to "
                            "execute(), e.g. dag.execute(value) or dag.execute(a, b, key=c)")
        for node in order:
            self.results[id(node)] = node._run(self)
        return self.results[id(root)]

    def resolve(self, value: Any) -> Any:
        return _replace_nodes(value, self.results)

    def result(self, node: DAGNode) -> Any:
        return self.results[id(node)]


def _post_order(root: DAGNode) -> list[DAGNode]:
    """Every node ``root`` reaches, each once, children before parents, children in
    argument order (so calls are made in the order they were written)."""
    order: list[DAGNode] = []
    expanded: set[int] = set()
    stack: list[tuple[DAGNode, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in expanded:
            continue
        expanded.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(node._children())
                     if id(c) not in expanded)
    return order
