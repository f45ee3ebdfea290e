"""``@mpray.remote`` functions: option validation and the task submission fast path.

Data flow of ``f.remote(*args)``::

    args ─ top-level ObjectRefs become deps ─ pickle (ref ids recorded) ─▶ TaskSpec
    ObjectRef(tid + 1 …) first (a result may come back at once), then
    spec ─▶ client.submit_task ─▶ driver: its owner machine (a lease, or the node)
                                  worker: Submit to the node

The function itself is cloudpickled once per session and registered with the node
(FUNC); specs carry only its id.  Large arguments (> inline_max) are put into the
object store first and passed as refs, so messages stay small and the worker reads them
zero-copy.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any, Callable

from . import _global
from . import protocol as P
from . import envelope
from .store import serialization as ser
from .dag import bind_function
from .generator import ObjectRefGenerator
from .object_ref import ObjectRef, owned_ref as _owned_ref
from .options import TASK_OPTIONS, ArgCheck, resource_request, validate_options
from .placement import pg_of, pg_resources
from .session import auto_init
from .control.recorder import FUNC as _FUNC, NOTE as _NOTE, REC as _REC, SUBMITS as _SUBMITS
from time import monotonic as _mono

class _Prepared:
    """Per-options constants computed once, not per call."""

    __slots__ = ("nret", "res", "retries", "retry_exc", "name", "strategy", "direct_ok",
                 "reg", "stream", "opts", "is_gen", "_in_group")

    def __init__(self, opts: dict, default_name: str, is_gen: bool = False) -> None:
        self.opts, self.is_gen, self._in_group = opts, is_gen, None
        gen = generator_kind(opts.get("num_returns"), is_gen)
        self.nret = 1 if gen or opts.get("num_returns") is None else opts["num_returns"]
        self.strategy = opts.get("scheduling_strategy")
        base = resource_request(opts)
        self.res = pg_resources(base, self.strategy)
        r = opts.get("max_retries")
        self.retries = 3 if r is None else (10**9 if r == -1 else r)
        rex = opts.get("retry_exceptions", False)
        self.retry_exc = rex if isinstance(rex, bool) else pickle.dumps(tuple(rex))
        self.name = opts.get("name") or default_name
        bp = max(0, opts.get("_generator_backpressure_num_objects") or 0)
        # a streaming task: its values come as they are yielded (no retries: they would
        # yield them again), through the node, which keeps their order
        self.stream = bp if gen == "streaming" else None
        if self.stream is not None:
            self.retries = 0
        # what the worker must know beyond the code (envelope.py), or None
        reg = {"runtime_env": opts.get("runtime_env"), "gen": gen,
               "backpressure": bp if gen == "streaming" else None,
               "max_calls": opts.get("max_calls"),
               "resources": dict(base) if base != (("CPU", 1.0),) else None,
               # (the placement group it runs in: get_current_placement_group, and the
               # group of its child tasks when it captures them)
               "pg": self.strategy if pg_of(self.strategy) is not None else None}
        self.reg = {k: v for k, v in reg.items() if v} or None
        # leased workers take plain one-CPU tasks only (see owner/machine.py), and none
        # whose worker may exit after it (max_calls: its lease would be lost)
        self.direct_ok = (self.res == (("CPU", 1.0),) and self.strategy in (None, "DEFAULT")
                          and self.stream is None and not opts.get("max_calls"))

    def in_group(self, strategy) -> "_Prepared":
        """These options inside the placement group that captures this process's child
        tasks (``placement_group_capture_child_tasks``), made once per group."""
        cached = self._in_group
        if cached is None or cached[0] is not strategy:
            cached = self._in_group = (strategy, _Prepared(
                {**self.opts, "scheduling_strategy": strategy}, self.name, self.is_gen))
        return cached[1]


def generator_kind(num_returns, is_gen: bool) -> str | None:
    """How a call's values come back: "streaming" (a generator function's default, as
    in Ray 2.x), "dynamic", or None (its returns)."""
    if num_returns in ("streaming", "dynamic"):
        if not is_gen:
            raise ValueError(f"num_returns={num_returns!r} can only be used with generator "
                             "functions (functions that use 'yield'). The decorated "
                             "function is not a generator function.")
        return num_returns
    return "streaming" if num_returns is None and is_gen else None


_task_spec = P.TaskSpec.from_items


_NO_ARGS = (ser.NO_ARGS, (), (), None)  # a call without arguments


def encode_args(client, args: tuple, kwargs: dict, fname: str) -> tuple[bytes, tuple, list]:
    """Pickle call arguments; top-level refs become deps, big values go to the store."""
    if not args and not kwargs:
        return _NO_ARGS
    deps = []
    a = list(args)
    for i, x in enumerate(a):
        if type(x) is ObjectRef:
            deps.append((i, x.id))
            a[i] = None
    if kwargs:
        kw = dict(kwargs)
        for k, x in kw.items():
            if type(x) is ObjectRef:
                deps.append((k, x.id))
                kw[k] = None
    else:
        kw = {}
    try:
        kind, blob, contained, _n = ser.serialize((a, kw), client.inline_max)
    except TypeError:
        _name_bad_argument(args, kwargs, fname)
        raise
    if kind != ser.INLINE:
        # promote large arguments to the object store, then pickle the small rest
        keep = []
        for i, x in enumerate(a):
            if x is not None and _too_big(x, client.inline_max):
                ref = ObjectRef(client.put(x), owned=True)
                keep.append(ref)
                deps.append((i, ref.id))
                a[i] = None
        for k, x in kw.items():
            if x is not None and _too_big(x, client.inline_max):
                ref = ObjectRef(client.put(x), owned=True)
                keep.append(ref)
                deps.append((k, ref.id))
                kw[k] = None
        blob = ser.dumps_plain((a, kw))
        return blob, tuple(deps), contained, keep
    return blob, tuple(deps), contained, None


def _too_big(x: Any, limit: int) -> bool:
    kind, _p, _c, _n = ser.serialize(x, limit)
    return kind != ser.INLINE


def _name_bad_argument(args: tuple, kwargs: dict, fname: str) -> None:
    for where, x in [(f"argument {i}", x) for i, x in enumerate(args)] + [
        (f"keyword argument {k!r}", x) for k, x in kwargs.items()
    ]:
        try:
            ser.serialize(x, 1 << 62)
        except TypeError as e:
            raise TypeError(
                f"could not serialize {where} of {fname}() ({type(x).__name__}): {e}"
            ) from e


class BlobRegistration:
    """A function or class cloudpickled once and registered once per session (FUNC)."""

    def _init_registration(self) -> None:
        self._blob: bytes | None = None
        self._registered: tuple | None = None  # (client.token, fid)

    def _blob_payload(self) -> tuple:
        raise NotImplementedError

    def _fid(self, client) -> int:
        reg = self._registered
        if reg is not None and reg[0] == client.token:
            return reg[1]
        if self._blob is None:
            self._blob = ser.cloud_dumps(self._blob_payload())
        fid = client.new_ids(0)
        client.register_function(fid, self._blob)
        self._registered = (client.token, fid)
        if _REC.on:
            _NOTE((_FUNC, fid, getattr(self, "_name", None) or getattr(self, "__name__", "?"),
                   getattr(self.__dict__.get("_function") or self.__dict__.get("_cls"),
                           "__module__", None)))
        return fid

    def _fid_with(self, client, opts: dict) -> int:
        """The id of this function registered with options the worker must know
        (envelope.py: a runtime_env, how a generator returns): one per options."""
        regs = self.__dict__.setdefault("_registered_with", {})
        k = envelope.key(opts)
        reg = regs.get(k)
        if reg is not None and reg[0] == client.token:
            return reg[1]
        self._fid(client)  # (makes the blob)
        fid = client.new_ids(0)
        client.register_function(fid, envelope.envelope(self._blob, opts))
        regs[k] = (client.token, fid)
        return fid


class RemoteFunction(BlobRegistration):
    def __init__(self, fn: Callable, options: dict) -> None:
        self._function = fn
        self._options = validate_options(dict(options), TASK_OPTIONS, "task")
        if (self._options.get("num_gpus") or 0) > 0 and self._options.get("max_calls") is None:
            # as Ray: a GPU function's worker exits after each call (the GPU memory a
            # library took is given back; the next task starts clean)
            self._options["max_calls"] = 1
        self._name = getattr(fn, "__name__", "function")
        self.__name__ = getattr(fn, "__name__", "remote_function")
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        self._is_gen = inspect.isgeneratorfunction(fn)
        self._prepared = _Prepared(self._options, self._name, self._is_gen)
        self._check = ArgCheck(fn, f"{self._name}.remote()")
        self._init_registration()

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running "
            f"'{self.__name__}()', try '{self.__name__}.remote()'."
        )

    def __reduce__(self):
        # the function object itself, not pre-pickled bytes: a recursive remote function
        # (fib calling fib.remote) is a cycle the (cloud)pickler's memo resolves
        return (_rebuild_remote_function, (self._function, self._options))

    def bind(self, *args, **kwargs):
        """Ray's DAG API: this call as a node (``mpray.dag.FunctionNode``), made when
        the graph runs (``node.execute()``)."""
        return bind_function(self, args, kwargs)

    def options(self, **opts) -> "_BoundOptions":
        merged = {**self._options, **validate_options(dict(opts), TASK_OPTIONS, "task")}
        return _BoundOptions(self, _Prepared(merged, self._name, self._is_gen))

    def remote(self, *args, **kwargs):
        return self._submit(self._prepared, args, kwargs)

    def _remote(self, args=None, kwargs=None, **task_options):
        """Ray's lower-level form: ``options(**task_options).remote(*args, **kwargs)``."""
        target = self.options(**task_options) if task_options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def _blob_payload(self) -> tuple:
        # the source file travels along: a function pickled by value is rebuilt with a
        # made-up file name, and remote tracebacks should show the user's lines
        code = getattr(self._function, "__code__", None)
        return (self._function, code.co_filename if code is not None else None)

    def _submit(self, prep: _Prepared, args: tuple, kwargs: dict):
        check = self._check
        if kwargs or not check.lo <= len(args) <= check.hi:  # (ArgCheck's fast case,
            check(args, kwargs)                                # inlined: every call)
        client = _global.client
        if client is None:
            client = auto_init()
        if _global.captured is not None and prep.strategy is None:  # (a captured child)
            prep = prep.in_group(_global.captured)
        reg = self._registered
        if reg is not None and reg[0] == client.token and prep.reg is None:
            fid = reg[1]  # (registered with this client already: _fid's fast case)
        else:
            fid = self._fid(client) if prep.reg is None else self._fid_with(client, prep.reg)
        nret = prep.nret
        tid = client.new_ids(nret)
        if _REC.on:  # (the control store: an append, written out by another thread)
            _SUBMITS((tid, prep.name, fid, client.current_task, _mono(), 0))
        blob, deps, contained, keep = encode_args(client, args, kwargs, self._name)
        # (all TaskSpec's items at once, in its FIELDS order: the hot path)
        spec = _task_spec((tid, fid, prep.name, blob, deps, nret, prep.res, prep.retries,
                           prep.retry_exc, contained, prep.strategy, False, None, None, None,
                           prep.stream))
        # the refs exist before the task can end: its value may come back at once
        refs = _owned_ref(client._refs, tid + 1, tid) if nret == 1 else _refs(tid, nret)
        if prep.stream is not None:  # (and its stream, before its first value can come)
            refs = ObjectRefGenerator(client, tid, refs, prep.stream)
        # what the task reads stays alive here until it is done (or handed to the node)
        hold = (keep, [x for x in args if type(x) is ObjectRef],
                [x for x in kwargs.values() if type(x) is ObjectRef]) if deps else keep
        client.submit_task(spec, prep.direct_ok, hold)
        return refs


def _refs(tid: int, nret: int):
    if nret == 1:
        return ObjectRef(tid + 1, True, tid)
    if nret == 0:
        return None
    return [ObjectRef(oid, True, tid) for oid in P.return_ids(tid, nret)]


class _BoundOptions:
    def __init__(self, rf: RemoteFunction, prep: _Prepared) -> None:
        self._rf = rf
        self._prep = prep

    def remote(self, *args, **kwargs):
        return self._rf._submit(self._prep, args, kwargs)

    def bind(self, *args, **kwargs):
        """``f.options(...).bind(...)``: a ``FunctionNode`` with these options."""
        return bind_function(self, args, kwargs)

    def __call__(self, *args, **kwargs):
        return self._rf(*args, **kwargs)


def _rebuild_remote_function(fn: Callable, options: dict) -> RemoteFunction:
    return RemoteFunction(fn, options)
