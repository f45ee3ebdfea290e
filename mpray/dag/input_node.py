"""The DAG's input: ``InputNode`` (what ``execute`` was given), ``InputAttributeNode``
(a part of it: ``inp[0]``, ``inp["k"]``, ``inp.k``) and ``DAGInputData`` (several inputs
as one object)::

    with InputNode() as inp:
        dag = add.bind(inp[0], inp.y)
    dag.execute(1, y=2)        # inp[0] -> 1 (by position), inp.y -> 2 (by keyword)
    other.execute([1, 2])      # one argument: it is the input; inp[0] -> [1, 2][0]
"""

from __future__ import annotations

from typing import Any

from .dag_node import DAGNode

__all__ = ["DAGInputData", "InputAttributeNode", "InputNode"]


class DAGInputData:
    """The input of an ``execute`` given several arguments (or keywords): ``[i]`` reads
    the i-th positional one, ``["k"]`` (or ``.k`` on the input node) the keyword ``k``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._args = list(args)
        self._kwargs = kwargs

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, int):
            if not -len(self._args) <= key < len(self._args):
                raise TypeError(f"the DAG reads input [{key}], but execute() got "
                                f"{len(self._args)} positional argument(s)")
            return self._args[key]
        if isinstance(key, str):
            if key not in self._kwargs:
                raise TypeError(f"the DAG reads input {key!r}, but execute() got no "
                                f"keyword argument {key!r} (it got: "
                                f"{', '.join(self._kwargs) or 'none'})")
            return self._kwargs[key]
        raise TypeError("Please only use int index or str as first-level key to access "
                        "fields of dag input.")

    def __repr__(self) -> str:
        return f"DAGInputData(args={self._args!r}, kwargs={self._kwargs!r})"


class InputNode(DAGNode):
    """The input of a DAG: ``dag.execute(value)`` makes it ``value``; ``execute(a, b,
    k=c)`` makes it a ``DAGInputData`` read by ``inp[0]``, ``inp[1]``, ``inp.k``.

    Use one per DAG, typically as ``with InputNode() as inp: ...``."""

    _is_input = True  # (how an execution finds its input node without importing this)

    def __init__(self, *args: Any, input_type: Any = None, **kwargs: Any) -> None:
        if args or kwargs:
            raise ValueError("InputNode should not take any args or kwargs: the DAG's input "
                             "is given to execute()")
        # (set through __dict__: __getattr__ makes attribute nodes of unknown names)
        self.__dict__["_attribute_nodes"] = {}
        self.__dict__["input_type"] = input_type
        super().__init__((), {})

    def __enter__(self) -> "InputNode":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        return None

    def __getattr__(self, key: str) -> "InputAttributeNode":
        if key.startswith("__") and key.endswith("__"):  # (pickle, copy, ... probes)
            raise AttributeError(key)
        if key in ("bind", "remote"):
            return super().__getattr__(key)
        return self._attribute(key, "__getattr__")

    def __getitem__(self, key: int | str) -> "InputAttributeNode":
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise TypeError("Please only use int index or str as first-level key to "
                            f"access fields of dag input, not {type(key).__name__}")
        return self._attribute(key, "__getitem__")

    def _attribute(self, key: int | str, accessor: str) -> "InputAttributeNode":
        # one node per key and accessor: inp[0] used twice is one node of the DAG
        nodes = self.__dict__["_attribute_nodes"]
        node = nodes.get((key, accessor))
        if node is None:
            node = nodes[(key, accessor)] = InputAttributeNode(self, key, accessor)
        return node

    def _run(self, ex) -> Any:
        if len(ex.args) == 1 and not ex.kwargs:
            return ex.args[0]
        return DAGInputData(*ex.args, **ex.kwargs)

    def _describe(self) -> str:
        return "input"


class InputAttributeNode(DAGNode):
    """A part of the DAG's input: ``inp[key]`` or ``inp.key``."""

    def __init__(self, input_node: InputNode, key: int | str, accessor: str) -> None:
        self._input_node = input_node
        self._key = key
        self._accessor_method = accessor
        super().__init__((), {}, deps=(input_node,))

    @property
    def key(self) -> int | str:
        """The index, key or attribute name this node reads."""
        return self._key

    def _run(self, ex) -> Any:
        value = ex.result(self._input_node)
        if isinstance(value, DAGInputData):
            return value[self._key]
        try:
            if self._accessor_method == "__getattr__":
                return getattr(value, self._key)
            return value[self._key]
        except (AttributeError, IndexError, KeyError, TypeError) as e:
            e.add_note(f"(reading {self._describe()} of the DAG input, a "
                       f"{type(value).__name__}: execute() got one argument, so it is the "
                       "input itself)")
            raise

    def _describe(self) -> str:
        if self._accessor_method == "__getattr__":
            return f"inp.{self._key}"
        return f"inp[{self._key!r}]"
