"""``@mpray.remote`` classes: ActorClass, ActorHandle, method options, kill, get_actor.

Data flow::

    Cls.remote(*args) ─▶ Submit (creation spec: class id, args, options) ─▶ node's actor table
                         (named actors wait for the node's answer: a name is unique)
                      ◀─ ActorHandle(actor id, ObjectRef to the actor's *anchor*, metadata)
    handle.f.remote() ─▶ driver: its owner machine (owner_actors: mailbox ring or node)
                         worker: Submit through the node (the node keeps each caller's order)

The handle's anchor ref is what keeps a non-detached actor alive: handles pickled into
arguments or results are contained refs like any other, so the object directory's
reference counting decides when the last handle anywhere is gone.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any

from . import _global
from . import protocol as P
from .exceptions import PendingCallsLimitExceeded
from .worker.actor import GROUP_SEP, exit_actor, is_async_class
from .dag import bind_class, bind_method
from .object_ref import ObjectRef, owned_ref as _owned_ref
from .owner.actors import Unordered
from .placement import pg_of, pg_resources
from .options import (ACTOR_OPTIONS, METHOD_OPTIONS, ArgCheck, resource_request,
                      validate_options)
from .generator import ObjectRefGenerator
from .remote_function import BlobRegistration, encode_args, generator_kind
from .session import auto_init
from .control.recorder import REC as _REC, SUBMITS as _SUBMITS
from time import monotonic as _mono

_task_spec = P.TaskSpec.from_items

__all__ = ["ActorClass", "ActorClassInheritanceException", "ActorHandle", "ActorMethod",
           "exit_actor", "kill_actor", "lookup_actor", "method"]

_EXPLICIT = ("num_cpus", "num_gpus", "resources", "memory")


class ActorClassInheritanceException(TypeError):
    """A class tried to inherit from an ``@mpray.remote`` class: not supported, as in
    Ray (``ray.actor.ActorClassInheritanceException``); inherit from the undecorated
    class, ``Cls.__ray_actor_class__``, and decorate the subclass."""


def _namespace() -> str:
    return _global.node_info.get("namespace") or ""


# ---------------------------------------------------------------------- method options
def method(*args: Any, **kwargs: Any):
    """``@mpray.method(num_returns=2)``: per-method defaults for calls of an actor method."""
    if args:
        raise TypeError("@mpray.method must be used with keyword arguments, e.g. "
                        "@mpray.method(num_returns=2)")
    validate_options(dict(kwargs), METHOD_OPTIONS, "actor method")
    group = kwargs.get("concurrency_group")
    if group is not None and (not isinstance(group, str) or not group):
        raise ValueError(f"concurrency_group must be a non-empty string, not {group!r}")

    def deco(fn):
        fn.__mpray_method_options__ = dict(kwargs)
        return fn

    return deco


def _method_table(cls: type) -> dict[str, dict]:
    # (__ray_terminate__ returns a ref, as in Ray: its get raises ActorDiedError once the
    # actor has ended)
    table: dict[str, dict] = {"__ray_ready__": {}, "__ray_terminate__": {}}
    for name, fn in inspect.getmembers(cls, lambda m: inspect.isfunction(m)
                                       or inspect.ismethod(m)):
        table[name] = dict(getattr(fn, "__mpray_method_options__", {}))
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            table[name]["_gen"] = True  # (its calls stream by default, as in Ray)
    return table


def _check_group(meta: dict, group) -> None:
    """A call's or a method's concurrency group must be one its actor class declares."""
    if group is None:
        return
    groups = meta.get("groups") or {}
    if group not in groups:
        raise ValueError(
            f"concurrency group {group!r} is not defined by actor class "
            f"{meta['class_name']}; its concurrency_groups are "
            f"{sorted(groups) if groups else 'none'}")


# ---------------------------------------------------------------------- handles
class ActorMethod:
    """``handle.f``: ``.remote(...)`` calls it; ``.options(num_returns=…)`` adjusts a call."""

    __slots__ = ("_handle", "_name", "_opts")

    def __init__(self, handle: "ActorHandle", name: str, opts: dict) -> None:
        self._handle = handle
        self._name = name
        self._opts = opts

    def remote(self, *args, **kwargs):
        return self._handle._call(self._name, self._opts, args, kwargs)

    def _remote(self, args=None, kwargs=None, **method_options):
        """Ray's lower-level form: ``options(**method_options).remote(*args, **kwargs)``."""
        target = self.options(**method_options) if method_options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def options(self, **opts) -> "ActorMethod":
        validate_options(dict(opts), METHOD_OPTIONS, "actor method")
        _check_group(self._handle._meta, opts.get("concurrency_group"))
        return ActorMethod(self._handle, self._name, {**self._opts, **opts})

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actor methods cannot be called directly. Instead of running "
                        f"'object.{self._name}()', try 'object.{self._name}.remote()'.")

    def bind(self, *args, **kwargs):
        """Ray's DAG API: this call as a node (``mpray.dag.ClassMethodNode``), made when
        the graph runs (``node.execute()``)."""
        return bind_method(self, args, kwargs)


def _call_refs(tid: int, nret: int):
    """A call's refs (its task id stored as ~tid: an actor call's, see ObjectRef)."""
    if nret == 1:
        return ObjectRef(tid + 1, True, ~tid)
    return [ObjectRef(oid, True, ~tid) for oid in P.return_ids(tid, nret)] if nret else None


class _PendingCalls:
    """``max_pending_calls``: the calls this process made to each such actor and has not
    seen end (Ray counts per caller and actor).  A call's end is its first return's
    value arriving here: a future on it (the process's pump thread takes values in while
    no user thread waits) drops it from the count.  Only actors with a limit pay."""

    def __init__(self) -> None:
        self.client = None
        self.calls: dict[int, set[int]] = {}  # actor id -> first return ids

    def _live(self, client, aid: int) -> set[int]:
        if self.client is not client:  # (a new session: ids start again)
            self.client, self.calls = client, {}
        live = self.calls.get(aid)
        if live is None:
            live = self.calls[aid] = set()
        return live

    def check(self, client, aid: int, limit: int, display: str) -> None:
        live = self._live(client, aid)
        if len(live) >= limit:
            client.poll_nowait()  # (ends that arrived meanwhile)
            if len(live) >= limit:
                raise PendingCallsLimitExceeded(
                    f"The task {display} could not be submitted to actor "
                    f"{P.id_hex(aid)} because more than {limit} tasks are queued on the "
                    "actor. This limit can be adjusted with the `max_pending_calls` "
                    "actor option.")

    def track(self, client, aid: int, ref: ObjectRef) -> None:
        live = self._live(client, aid)
        oid = ref.id
        live.add(oid)
        client.future(oid, ref).add_done_callback(lambda _f: live.discard(oid))


_pending = _PendingCalls()


class _ActorID:
    def __init__(self, aid: int) -> None:
        self.id = aid

    def hex(self) -> str:
        return P.id_hex(self.id)

    def __repr__(self) -> str:
        return f"ActorID({self.hex()})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, _ActorID) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


class ActorHandle:
    """A reference to an actor; picklable, so tasks and other actors can call it too."""

    __slots__ = ("_aid", "_anchor", "_meta", "_consts", "__weakref__")

    def __init__(self, aid: int, anchor: ObjectRef, meta: dict) -> None:
        self._aid = aid
        self._anchor = anchor
        self._meta = meta
        self._consts: dict = {}  # method -> what its calls share (not pickled)

    def __getattr__(self, name: str) -> ActorMethod:
        # (not cached on the handle: a method holding its handle would make a cycle, and
        # the actor would outlive the user's last handle until the next GC)
        opts = self._meta["methods"].get(name)
        if opts is None:
            raise AttributeError(f"'ActorHandle' object for actor "
                                 f"{self._meta['class_name']} has no method '{name}'")
        return ActorMethod(self, name, opts)

    @property
    def _actor_id(self) -> _ActorID:
        return _ActorID(self._aid)

    def __reduce__(self):
        return (ActorHandle, (self._aid, self._anchor, self._meta))

    def __repr__(self) -> str:
        return f"Actor({self._meta['class_name']}, {P.id_hex(self._aid)})"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, ActorHandle) and other._aid == self._aid

    def __hash__(self) -> int:
        return hash(self._aid)

    def _call(self, name: str, opts: dict, args: tuple, kwargs: dict):
        client = _global.client
        if client is None:
            client = auto_init()
        # (a method's calls with its own options: computed once per handle)
        consts = self._consts.get(name)
        if consts is None or consts[0] is not opts:
            consts = (opts,) + self._call_constants(name, opts)
            if opts is self._meta["methods"].get(name):
                self._consts[name] = consts
        _o, display, nret, retries, retry_exc, wire, anchor, limit, stream = consts
        if limit:  # (max_pending_calls: this process's calls not ended yet)
            _pending.check(client, self._aid, limit, display)
        tid = client.new_ids(nret)
        if _REC.on:
            _SUBMITS((tid, display, None, client.current_task, _mono(), 1))
        blob, deps, contained, keep = encode_args(client, args, kwargs, display)
        # (all TaskSpec's items at once, in its FIELDS order: the hot path)
        spec = _task_spec((tid, None, display, blob, deps, nret, (), retries, retry_exc,
                           contained, None, False, self._aid, wire, None, stream))
        refs = _owned_ref(client._refs, tid + 1, ~tid) if nret == 1 else \
            _call_refs(tid, nret)  # (before the call can end)
        if stream is not None and stream >= 0:  # (and its stream, before any value)
            refs = ObjectRefGenerator(client, tid, refs, stream)
        # what the call reads stays alive here until it is sent (refs inside the
        # arguments: the arguments themselves) or, sent direct, until it is done; then
        # the actor's anchor (an ``Unordered`` one: its calls need not keep their order)
        if contained:
            hold = (keep, anchor, args, kwargs)
        elif deps:
            hold = (keep, anchor, [x for x in args if type(x) is ObjectRef],
                    [x for x in kwargs.values() if type(x) is ObjectRef])
        else:
            hold = (keep, anchor)
        client.submit_call(spec, hold)
        if limit and nret:
            _pending.track(client, self._aid, refs if nret == 1 else refs[0])
        return refs

    def _call_constants(self, name: str, opts: dict) -> tuple:
        """(display name, num_returns, retries, retry_exceptions, the method's name on
        the wire, what holds the anchor, max_pending_calls) of a method's calls."""
        meta = self._meta
        gen = generator_kind(opts.get("num_returns"), bool(opts.get("_gen")))
        nret = 1 if gen or opts.get("num_returns") is None else opts["num_returns"]
        retries = opts.get("max_task_retries")
        if retries is None:
            retries = meta.get("max_task_retries", 0)
        stream = None  # (how a generator method's values come back: see ACall.stream)
        if gen == "streaming":
            stream, retries = max(0, opts.get("_generator_backpressure_num_objects") or 0), 0
        elif gen == "dynamic":
            stream = -1
        rex = opts.get("retry_exceptions", False)
        retry_exc = rex if isinstance(rex, bool) else pickle.dumps(tuple(rex))
        wire = name
        group = opts.get("concurrency_group")
        if group is not None and group != (meta["methods"].get(name) or {}).get(
                "concurrency_group"):
            wire = f"{name}{GROUP_SEP}{group}"  # (this call runs in another group)
        anchor = Unordered(self._anchor) if meta.get("unordered") else self._anchor
        limit = meta.get("max_pending_calls") or 0
        return (f"{meta['class_name']}.{name}", nret, retries, retry_exc, wire, anchor,
                limit if limit > 0 else 0, stream)


# ---------------------------------------------------------------------- classes
class ActorClass(BlobRegistration):
    """What ``@mpray.remote`` makes of a class.  Its class attributes, static methods and
    class methods are reachable through it (``Cls.CONST``, ``Cls.helper()``), in the
    driver and inside actors; ``Cls.__ray_actor_class__`` is the undecorated class."""

    def __new__(cls, *args, **kwargs):
        # ``class B(Cls)`` calls type(Cls)(name, bases, namespace): refused, as in Ray
        if len(args) == 3 and isinstance(args[1], tuple):
            for base in args[1]:
                if isinstance(base, ActorClass):
                    raise ActorClassInheritanceException(
                        f"Attempted to define subclass '{args[0]}' of actor class "
                        f"'{base.__name__}'. Inheriting from actor classes is not "
                        "currently supported. You can instead inherit from a non-actor "
                        "base class (here: "
                        f"{base.__name__}.__ray_actor_class__) and make the derived "
                        "class an actor class (with @mpray.remote).")
        return super().__new__(cls)

    def __init__(self, cls: type, options: dict) -> None:
        self._cls = cls
        self.__ray_actor_class__ = cls
        self._options = _check_actor_options(validate_options(dict(options), ACTOR_OPTIONS,
                                                              "actor"))
        self.__name__ = cls.__name__
        self.__qualname__ = getattr(cls, "__qualname__", cls.__name__)
        self.__doc__ = cls.__doc__
        self.__module__ = cls.__module__
        self._meta: dict | None = None
        # (a class without its own __init__ takes no arguments: object's signature)
        init = cls.__init__ if cls.__init__ is not object.__init__ else (lambda self: None)
        self._check = ArgCheck(init, f"{cls.__name__}.remote()", drop_self=True)
        self._init_registration()
        self._metadata()  # (a method's unknown concurrency group fails here, at once)

    def _blob_payload(self):
        return (self._cls, None)

    def __getattr__(self, name: str):
        # (only names ActorClass lacks get here: the class's own attributes, as Ray's
        # actor class, which subclasses the decorated class, has them)
        cls = self.__dict__.get("_cls")
        if cls is None or (name.startswith("__") and name.endswith("__")):
            raise AttributeError(f"'ActorClass' object has no attribute '{name}'")
        return getattr(cls, name)

    def __call__(self, *args, **kwargs):
        raise TypeError(f"Actors cannot be instantiated directly. Instead of "
                        f"'{self.__name__}()', use '{self.__name__}.remote()'.")

    def __reduce__(self):
        return (ActorClass, (self._cls, self._options))

    def options(self, **opts) -> "_ActorOptions":
        if "concurrency_groups" in opts:  # (as Ray: they belong to the class)
            raise ValueError("Setting 'concurrency_groups' is not supported in "
                             "'.options()'; give them to @mpray.remote(...)")
        merged = {**self._options, **validate_options(dict(opts), ACTOR_OPTIONS, "actor")}
        return _ActorOptions(self, _check_actor_options(merged))

    def remote(self, *args, **kwargs) -> ActorHandle:
        return self._create(self._options, args, kwargs)

    def _remote(self, args=None, kwargs=None, **actor_options) -> ActorHandle:
        """Ray's lower-level form: ``options(**actor_options).remote(*args, **kwargs)``."""
        target = self.options(**actor_options) if actor_options else self
        return target.remote(*(args or ()), **(kwargs or {}))

    def bind(self, *args, **kwargs):
        """Ray's DAG API: this actor's creation as a node (``mpray.dag.ClassNode``); its
        methods bind calls: ``node.method.bind(...)``."""
        return bind_class(self, args, kwargs)

    def _metadata(self) -> dict:
        if self._meta is None:
            methods = _method_table(self._cls)
            groups = dict(self._options.get("concurrency_groups") or {})
            meta = {"class_name": self.__name__, "methods": methods,
                    "is_async": is_async_class(self._cls), "groups": groups}
            for opts in methods.values():  # (each method's group must exist)
                _check_group(meta, opts.get("concurrency_group"))
            self._meta = meta
        return self._meta

    def _create(self, opts: dict, args: tuple, kwargs: dict) -> ActorHandle:
        self._check(args, kwargs)
        client = _global.client
        if client is None:
            client = auto_init()
        meta = dict(self._metadata(), max_task_retries=_retries(opts.get("max_task_retries")),
                    max_pending_calls=opts.get("max_pending_calls") or -1)
        # calls of an actor that runs them concurrently keep no order (as in Ray)
        meta["unordered"] = bool(meta["is_async"] or (opts.get("max_concurrency") or 1) > 1
                                 or meta["groups"])
        fid = self._fid(client)
        tid = client.new_ids(1)
        if _REC.on:
            _SUBMITS((tid, f"{self.__name__}.__init__", fid, client.current_task,
                      _mono(), 2))
        explicit = any(opts.get(k) is not None for k in _EXPLICIT)
        held = resource_request(opts, default_cpus=0) if explicit else ()
        place = held if explicit else (("CPU", 1.0),)
        strategy = opts.get("scheduling_strategy")
        if strategy is None and _global.captured is not None:  # (a captured child actor)
            strategy = _global.captured
        if strategy is not None:  # (in a placement group: its bundle's resources)
            held = pg_resources(held, strategy) if held else ()
            place = pg_resources(place, strategy)
        name = opts.get("name")
        copts = {
            "class_name": self.__name__, "meta": meta, "name": name,
            "namespace": opts.get("namespace") or _namespace(),
            "detached": opts.get("lifetime") == "detached",
            "max_restarts": _retries(opts.get("max_restarts")),
            "max_task_retries": meta["max_task_retries"],
            "max_concurrency": opts.get("max_concurrency"), "is_async": meta["is_async"],
            "concurrency_groups": meta["groups"],
            "held": held, "get_if_exists": bool(opts.get("get_if_exists")), "req": None,
            "runtime_env": opts.get("runtime_env"),  # (checked; applied for good)
            "pg": strategy if pg_of(strategy) is not None else None,  # (its group)
            "checkpoint_interval": _checkpoint_interval(opts, meta, self.__name__),
        }
        blob, deps, contained, keep = encode_args(client, args, kwargs, f"{self.__name__}")
        if name:  # the node answers: the name is ours, or taken (maybe by the one we want)
            copts["req"] = client.new_ids(0)
        spec = P.TaskSpec(tid, fid, f"{self.__name__}.__init__", blob, deps, 1, place, 0,
                          False, contained, strategy, actor=tid,
                          create=copts)
        anchor = ObjectRef(tid + 1, owned=True, tid=tid)
        client.submit_task(spec, False, keep)  # (the creation task holds its arguments)
        if name:
            reply = client.wait_reply(copts["req"]).data
            if reply[0] == "error":
                raise ValueError(reply[1])
            if reply[0] == "exists":
                return ActorHandle(reply[1], ObjectRef(reply[1] + 1, owned=True, tid=reply[1]),
                                   reply[2])
        return ActorHandle(tid, anchor, meta)


class _ActorOptions:
    def __init__(self, ac: ActorClass, opts: dict) -> None:
        self._ac = ac
        self._opts = opts

    def remote(self, *args, **kwargs) -> ActorHandle:
        return self._ac._create(self._opts, args, kwargs)

    def bind(self, *args, **kwargs):
        """``Cls.options(...).bind(...)``: a ``ClassNode`` with these options."""
        return bind_class(self, args, kwargs)


def _retries(v) -> int:
    return 0 if v is None else int(v)


def _check_actor_options(opts: dict) -> dict:
    life = opts.get("lifetime")
    if life not in (None, "detached", "non_detached"):
        raise ValueError(f"lifetime must be 'detached' or 'non_detached', not {life!r}")
    mc = opts.get("max_concurrency")
    if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
        raise ValueError(f"max_concurrency must be a positive integer, not {mc!r}")
    name = opts.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"an actor's name must be a non-empty string, not {name!r}")
    ns = opts.get("namespace")
    if ns is not None and (not isinstance(ns, str) or not ns):
        raise ValueError(f"namespace must be a non-empty string, not {ns!r}")
    if opts.get("get_if_exists") and not name:
        raise ValueError("get_if_exists=True needs a name= for the actor")
    mp = opts.get("max_pending_calls")
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or mp < -1):
        raise ValueError(f"max_pending_calls must be -1 (unlimited), 0 or a positive "
                         f"integer, not {mp!r}")
    groups = opts.get("concurrency_groups")
    if groups is not None:
        if not isinstance(groups, dict):
            raise TypeError(f"concurrency_groups must be a dict of group name -> "
                            f"max concurrency, not {type(groups).__name__}")
        for g, n in groups.items():
            if not isinstance(g, str) or not g or GROUP_SEP in g:
                raise ValueError(f"a concurrency group's name must be a non-empty "
                                 f"string, not {g!r}")
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"concurrency group {g!r}: its max concurrency must be "
                                 f"a positive integer, not {n!r}")
    return opts


def make_actor_class(cls: type, options: dict) -> ActorClass:
    return ActorClass(cls, options)


# ---------------------------------------------------------------------- kill / lookup
def kill_actor(actor: Any, no_restart: bool = True) -> None:
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"mpray.kill() only supports actor handles (for tasks, use "
                         f"mpray.cancel()); got {type(actor).__name__}")
    client = _global.client_or_raise()
    client.send([P.KillActor(actor._aid, bool(no_restart))])
    # a task's result must not overtake the kill on its way to the driver (see report)
    client.order_via_node = True
    if no_restart:
        client.actor_killed(actor._aid)


def lookup_actor(name: str, namespace: str | None = None) -> ActorHandle:
    if not isinstance(name, str) or not name:
        raise ValueError(f"get_actor() needs a non-empty actor name, not {name!r}")
    if namespace is not None and (not isinstance(namespace, str) or not namespace):
        raise ValueError(f"namespace must be a non-empty string, not {namespace!r}")
    client = _global.client
    if client is None:
        client = auto_init()
    ns = namespace or _namespace()
    reply = client.request(lambda req: P.Query(req, ("actor", ns, name))).data
    if reply is None:
        raise ValueError(f"Failed to look up actor with name '{name}' in namespace "
                         f"'{ns or '(default)'}': no live actor has that name (it was never "
                         "created, it died, or it lives in another namespace)")
    aid, meta = reply
    return ActorHandle(aid, ObjectRef(aid + 1, owned=True, tid=aid), meta)


def _checkpoint_interval(opts: dict, meta: dict, cls_name: str):
    """``checkpoint_interval`` (node/checkpoints.py): a checkpoint is the state between
    two calls, so the actor must run one call at a time."""
    n = opts.get("checkpoint_interval")
    if n is not None and (meta["is_async"] or meta["groups"]
                          or (opts.get("max_concurrency") or 1) > 1):
        raise ValueError(f"checkpoint_interval needs an actor that runs one call at a time; "
                         f"{cls_name} is async, has concurrency groups or max_concurrency > 1")
    return n
