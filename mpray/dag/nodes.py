"""The call nodes: ``FunctionNode`` (``f.bind``), ``ClassNode`` (``Cls.bind``),
``ClassMethodNode`` (``class_node.method.bind``, ``handle.method.bind``) and
``MultiOutputNode``; and ``bind_function``/``bind_class``/``bind_method``, what the
``.bind`` methods of remote functions, actor classes and actor methods call.

Method calls bound on one class node run in the order they were bound (each depends on
the one bound before it, as in Ray), so an actor's state flows through a DAG the way it
reads; calls on an existing actor's handle are ordered by the graph alone.
"""

from __future__ import annotations

from typing import Any

from ..options import METHOD_OPTIONS, ArgCheck, validate_options
from .dag_node import DAGNode, _find_nodes
from .input_node import InputNode

__all__ = ["ClassMethodNode", "ClassNode", "FunctionNode", "MultiOutputNode",
           "bind_class", "bind_function", "bind_method"]


class FunctionNode(DAGNode):
    """A bound task: ``execute`` submits it and returns its ``ObjectRef`` (a list of
    them with ``num_returns`` > 1)."""

    def __init__(self, body: Any, args: tuple, kwargs: dict) -> None:
        # (the remote function, or its .options(...) object: either has .remote)
        self._body = body
        super().__init__(args, kwargs)

    def _execute_impl(self, args: tuple, kwargs: dict, ex) -> Any:
        return self._body.remote(*args, **kwargs)

    def _describe(self) -> str:
        return getattr(self._body, "__name__", None) or getattr(self._body._rf, "__name__")


class ClassNode(DAGNode):
    """A bound actor creation: ``execute`` creates the actor (a new one per execution)
    and returns its handle; ``node.method.bind(...)`` binds a call of it."""

    def __init__(self, body: Any, actor_class: Any, args: tuple, kwargs: dict) -> None:
        self._body = body  # the ActorClass, or its .options(...) object
        self._actor_class = actor_class
        self._last_call: ClassMethodNode | None = None
        self._method_checks: dict[str, ArgCheck | None] = {}
        super().__init__(args, kwargs)
        if any(isinstance(n, InputNode) for n in _find_nodes((args, kwargs))):
            raise ValueError(
                "InputNode handles user dynamic input the DAG, and cannot be used as args, "
                "kwargs, or other_args_to_resolve in ClassNode constructor because it is "
                "not available at class construction or binding time.")

    def _execute_impl(self, args: tuple, kwargs: dict, ex) -> Any:
        return self._body.remote(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and not name.startswith("__ray_"):
            raise AttributeError(name)  # (pickle, copy, ... probes)
        methods = self.__dict__.get("_actor_class")
        methods = methods._metadata()["methods"] if methods is not None else {}
        if name in methods:
            return _UnboundClassMethodNode(self, name, {})
        if name in ("bind", "remote"):
            return super().__getattr__(name)
        raise AttributeError(f"actor class {self._describe()} has no method '{name}'")

    def _check_call(self, name: str, args: tuple, kwargs: dict) -> None:
        # a bad call fails at bind, where it was written, not at execute
        if name not in self._method_checks:
            fn = getattr(self._actor_class._cls, name, None)
            self._method_checks[name] = (ArgCheck(fn, f"{self._describe()}.{name}.bind()",
                                                  drop_self=True) if callable(fn) else None)
        check = self._method_checks[name]
        if check is not None:
            check(args, kwargs)

    def _describe(self) -> str:
        return self._actor_class.__name__


class _UnboundClassMethodNode:
    """``class_node.method``: ``.bind(...)`` makes the call node, ``.options(...)``
    sets its options (``num_returns``, ...)."""

    def __init__(self, actor: ClassNode, method_name: str, options: dict) -> None:
        self._actor = actor
        self._method_name = method_name
        self._options = options

    def bind(self, *args: Any, **kwargs: Any) -> "ClassMethodNode":
        """The call ``method(*args, **kwargs)`` on the class node's actor, as a node."""
        actor = self._actor
        actor._check_call(self._method_name, args, kwargs)
        node = ClassMethodNode(actor, self._method_name, args, kwargs, self._options,
                               prev=actor._last_call)
        actor._last_call = node
        return node

    def options(self, **options: Any) -> "_UnboundClassMethodNode":
        """The same method with these call options (those of ``handle.method.options``)."""
        validate_options(dict(options), METHOD_OPTIONS, "actor method")
        return _UnboundClassMethodNode(self._actor, self._method_name,
                                       {**self._options, **options})

    def __getattr__(self, name: str) -> Any:
        if name == "remote":
            raise AttributeError(".remote() cannot be used on ClassMethodNodes. Use "
                                 ".bind() instead to express an symbolic actor call.")
        raise AttributeError(name)


class ClassMethodNode(DAGNode):
    """A bound actor method call, on a ``ClassNode``'s actor or an existing actor's
    handle: ``execute`` makes the call and returns its ``ObjectRef``."""

    def __init__(self, parent: Any, method_name: str, args: tuple, kwargs: dict,
                 options: dict, prev: "ClassMethodNode | None" = None) -> None:
        self._parent = parent  # a ClassNode, or an ActorHandle
        self._method_name = method_name
        deps = tuple(n for n in (parent, prev) if isinstance(n, DAGNode))
        super().__init__(args, kwargs, options, deps)

    def get_method_name(self) -> str:
        """The name of the method this node calls."""
        return self._method_name

    def _execute_impl(self, args: tuple, kwargs: dict, ex) -> Any:
        parent = self._parent
        handle = ex.result(parent) if isinstance(parent, DAGNode) else parent
        method = getattr(handle, self._method_name)
        if self._bound_options:
            method = method.options(**self._bound_options)
        return method.remote(*args, **kwargs)

    def _describe(self) -> str:
        return f"{self._method_name}()"


class MultiOutputNode(DAGNode):
    """Several nodes as one DAG end: ``execute`` returns the list of their results."""

    def __init__(self, args: list | tuple) -> None:
        if not isinstance(args, (list, tuple)):
            raise ValueError(f"MultiOutputNode takes a list of nodes, not "
                             f"{type(args).__name__}")
        super().__init__(tuple(args), {})

    def _execute_impl(self, args: tuple, kwargs: dict, ex) -> list:
        return list(args)

    def _describe(self) -> str:
        return f"{len(self._bound_args)} outputs"


# ---------------------------------------------------------------------- .bind(...)
def bind_function(remote_function: Any, args: tuple, kwargs: dict) -> FunctionNode:
    """``f.bind(*args, **kwargs)`` (also ``f.options(...).bind``): a ``FunctionNode``.
    Arguments are checked against ``f``'s signature here, as ``.remote`` does."""
    rf = getattr(remote_function, "_rf", remote_function)  # (an .options(...) object)
    rf._check(args, kwargs)
    return FunctionNode(remote_function, args, kwargs)


def bind_class(actor_class: Any, args: tuple, kwargs: dict) -> ClassNode:
    """``Cls.bind(*args, **kwargs)`` (also ``Cls.options(...).bind``): a ``ClassNode``."""
    ac = getattr(actor_class, "_ac", actor_class)  # (an .options(...) object)
    ac._check(args, kwargs)
    return ClassNode(actor_class, ac, args, kwargs)


def bind_method(actor_method: Any, args: tuple, kwargs: dict) -> ClassMethodNode:
    """``handle.method.bind(*args, **kwargs)`` (also after ``.options(...)``): a
    ``ClassMethodNode`` calling the existing actor."""
    return ClassMethodNode(actor_method._handle, actor_method._name, args, kwargs,
                           actor_method._opts)
