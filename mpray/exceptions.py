"""Ray 2.x's exception family, importable as ``mpray.exceptions`` (mirrors ``ray.exceptions``).

Every class here pickles with its type, message and attributes intact, because
errors travel from worker processes to the driver inside the object store.

The central piece is :class:`RayTaskError`: the driver re-raises it from
``ray.get`` as ``RayTaskError(<CauseName>)``, a generated class that subclasses
both ``RayTaskError`` and the remote exception's class, so that user code can
write either ``except ValueError`` or ``except ray.exceptions.RayTaskError``.
"""

from __future__ import annotations

import os
import pickle
import threading
import traceback
from typing import Any, ClassVar

try:  # cloudpickle pickles exception classes defined in __main__ or in functions by value.
    import cloudpickle as _pickler
except ImportError:  # pragma: no cover - cloudpickle is a hard dependency
    _pickler = pickle  # type: ignore[assignment]

__all__ = [
    "RayError", "RayTaskError", "RayActorError", "ActorDiedError", "ActorUnavailableError",
    "ActorUnschedulableError", "GetTimeoutError", "TaskCancelledError", "WorkerCrashedError",
    "ObjectLostError", "ObjectFetchTimedOutError", "OwnerDiedError",
    "ObjectReconstructionFailedError", "ReferenceCountingAssertionError", "ObjectFreedError",
    "ObjectStoreFullError", "OutOfDiskError", "OutOfMemoryError", "RaySystemError",
    "NodeDiedError", "TaskUnschedulableError", "TaskPlacementGroupRemoved",
    "LocalRayletDiedError", "PendingCallsLimitExceeded", "CrossLanguageError",
    "RuntimeEnvSetupError", "AsyncioActorExit", "format_remote_exception",
]


def format_remote_exception(exc: BaseException) -> str:
    """Return the full traceback text of ``exc`` (what the worker ships to the driver)."""
    return "".join(traceback.format_exception(exc))


def _safe_str(obj: object) -> str:
    # A broken __str__ on a user exception must not turn error reporting into a new error.
    try:
        return str(obj)
    except Exception:
        return f"<unprintable {type(obj).__name__} object>"


class RayError(Exception):
    """Base class of every mpray error.

    Subclasses keep ``self.args`` equal to their constructor arguments, so the
    default ``BaseException.__reduce__`` (type, args, __dict__) rebuilds them.
    """

    default_message: ClassVar[str] = ""

    def __str__(self) -> str:
        # Classes that can be raised without arguments still print something useful.
        return super().__str__() or self.default_message


class RaySystemError(RayError):
    """Internal error of the runtime; also the stand-in for a cause that cannot be pickled."""


# ---------------------------------------------------------------------------- RayTaskError

_CLASS_CACHE: dict[type, type | None] = {}  # cause class -> generated class (None: cannot)
_CLASS_LOCK = threading.Lock()


class RayTaskError(RayError):
    """An exception raised by user code inside a remote task or actor method."""

    def __init__(self, function_name: str, traceback_str: str, cause: BaseException | None,
                 pid: int | None = None, ip: str | None = None) -> None:
        # Deliberately not super().__init__: in a generated subclass the MRO continues into
        # the cause's class, whose __init__ expects entirely different arguments.
        BaseException.__init__(self, function_name, traceback_str, cause, pid, ip)
        self._set_fields(function_name, traceback_str, cause, pid, ip)

    def _set_fields(self, function_name: str, traceback_str: str,
                    cause: BaseException | None, pid: int | None, ip: str | None) -> None:
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = os.getpid() if pid is None else pid
        # The single-host runtime runs everything locally; multi-node callers pass the node ip.
        self.ip = "127.0.0.1" if ip is None else ip

    @classmethod
    def from_exception(cls, exc: BaseException, function_name: str, pid: int | None = None,
                       ip: str | None = None) -> RayTaskError:
        """Wrap ``exc`` (caught while running ``function_name``) with its formatted traceback."""
        return cls(function_name, format_remote_exception(exc), exc, pid, ip)

    def __str__(self) -> str:
        lines = self.traceback_str.rstrip("\n").splitlines()
        # Ray replaces the leading "Traceback (most recent call last):" with its header line.
        if lines and lines[0].startswith("Traceback (most recent call last)"):
            lines = lines[1:]
        if not lines and self.cause is not None:
            lines = [f"{type(self.cause).__name__}: {_safe_str(self.cause)}"]
        header = f"ray::{self.function_name}() (pid={self.pid}, ip={self.ip})"
        return "\n".join([header, *lines])

    def as_instanceof_cause(self) -> RayTaskError:
        """Return an instance of ``RayTaskError(<CauseName>)`` (subclass of both classes).

        Falls back to ``self`` when there is no cause, when the cause's class is already a
        base of RayTaskError (plain ``Exception``) or cannot be subclassed.
        """
        cause = self.cause
        # A RayTaskError from a nested ray.get: dress up as the innermost user exception.
        while isinstance(cause, RayTaskError) and cause.cause is not None:
            cause = cause.cause
        if cause is None or isinstance(cause, RayTaskError):
            return self
        if type(self).__dict__.get("_mpray_cause_cls") is type(cause):
            return self  # already the generated class
        made = _instance_of(type(cause), self)
        return self if made is None else made

    def __reduce__(self) -> tuple[Any, ...]:
        # Generated classes are not importable, and the cause may not pickle: rebuild through
        # a module-level function from plain fields and separately pickled cause/class blobs.
        # (So a hand-written subclass of RayTaskError comes back as RayTaskError.)
        cause = self.cause
        cause_cls = type(self).__dict__.get("_mpray_cause_cls")  # set on generated classes only
        blob, why = (None, None) if cause is None else _dumps_why(cause)
        tb = self.traceback_str
        if why is not None:  # (the caller is told why it gets text in its place)
            tb = (f"{tb.rstrip()}\n(the exception {type(cause).__name__} could not be "
                  f"serialized to reach the caller: {why}; its message and traceback come "
                  "as text)")
        return (_rebuild_task_error, (
            self.function_name, tb, self.pid, self.ip, blob,
            None if cause is None else type(cause).__name__,
            None if cause is None else _safe_str(cause),
            None if cause_cls is None else _dumps_or_none(cause_cls)))

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        # Take precedence over a __reduce_ex__ that the cause's class might define.
        return self.__reduce__()


def _dumps_or_none(obj: object) -> bytes | None:
    return _dumps_why(obj)[0]


def _dumps_why(obj: object) -> tuple[bytes | None, str | None]:
    """(the pickled object, None) or (None, why it cannot be pickled)."""
    try:
        return _pickler.dumps(obj), None
    except Exception as e:  # noqa: BLE001 - said to the caller
        return None, f"{type(e).__name__}: {e}"


def _loads_or_none(blob: bytes | None) -> Any:
    # Loading fails e.g. for classes whose __init__ takes several arguments but pass only a
    # message to Exception.__init__, or when the class is not importable on this side.
    if blob is None:
        return None
    try:
        return pickle.loads(blob)
    except Exception:
        return None


def _task_error_class(cause_cls: type) -> type | None:
    """Return the cached ``RayTaskError(<cause_cls>)`` class, or None if it cannot exist."""
    with _CLASS_LOCK:
        if cause_cls in _CLASS_CACHE:
            return _CLASS_CACHE[cause_cls]
        new_cls: type | None = None
        if isinstance(cause_cls, type) and issubclass(cause_cls, BaseException) \
                and not issubclass(RayTaskError, cause_cls):
            name = f"RayTaskError({cause_cls.__name__})"
            namespace = {"__module__": __name__, "__qualname__": name,
                         "_mpray_cause_cls": cause_cls}
            try:
                new_cls = type(name, (RayTaskError, cause_cls), namespace)
            except Exception:  # final type, layout/metaclass conflict, hostile __init_subclass__
                new_cls = None
        _CLASS_CACHE[cause_cls] = new_cls
        return new_cls


def _instance_of(cause_cls: type, src: RayTaskError) -> RayTaskError | None:
    """Build a ``RayTaskError(<cause_cls>)`` carrying ``src``'s fields, or None on failure."""
    new_cls = _task_error_class(cause_cls)
    if new_cls is None:
        return None
    cause = src.cause
    try:
        # __new__ without arguments: the cause's own __new__ (if any) must not see ours.
        inst = new_cls.__new__(new_cls)
        inst._set_fields(src.function_name, src.traceback_str, cause, src.pid, src.ip)
        # ``except KeyError as e: e.args[0]`` should behave as for the original exception.
        inst.args = tuple(getattr(cause, "args", ()))
        # Carry over custom attributes (e.g. ``e.code``) that the cause's __init__ had set.
        for key, value in getattr(cause, "__dict__", {}).items():
            if key not in inst.__dict__:
                inst.__dict__[key] = value
        if isinstance(cause, OSError):  # errno & co. live in C slots, not in __dict__
            for slot in ("errno", "strerror", "filename", "filename2"):
                setattr(inst, slot, getattr(cause, slot))
    except Exception:
        return None
    return inst


def _rebuild_task_error(function_name: str, traceback_str: str, pid: int | None,
                        ip: str | None, cause_blob: bytes | None, cause_name: str | None,
                        cause_text: str | None, cls_blob: bytes | None) -> RayTaskError:
    """Unpickle helper for :class:`RayTaskError` and its generated subclasses."""
    cause = _loads_or_none(cause_blob)
    replaced = cause is None and cause_name is not None
    if replaced:
        # Keep the information as text rather than failing the whole ray.get().
        cause = RaySystemError(f"{cause_name}: {cause_text} (the original exception object "
                               "could not be transferred and was replaced by this text)")
    err = RayTaskError(function_name, traceback_str, cause, pid, ip)
    if cls_blob is None:
        return err
    if not replaced:
        return err.as_instanceof_cause()
    # The cause was replaced: still honour ``except <CauseClass>`` when the class loads.
    cause_cls = _loads_or_none(cls_blob)
    made = _instance_of(cause_cls, err) if isinstance(cause_cls, type) else None
    if made is None:
        return err
    made.args = (cause_text,)
    return made


# ---------------------------------------------------------------------------- other errors

class RayActorError(RayError):
    """The actor died or became unreachable before/while running a method call."""

    default_message = "The actor died unexpectedly before finishing this task."

    def __init__(self, message: str | None = None, *, actor_id: str | None = None) -> None:
        super().__init__(*(() if message is None else (message,)))
        self.actor_id = actor_id  # restored from __dict__ on unpickling


class ActorDiedError(RayActorError):
    """The actor process is dead (crashed, killed, or exited)."""


class ActorUnavailableError(RayActorError):
    """The actor is temporarily unreachable (e.g. restarting); the call may be retried."""

    default_message = "The actor is temporarily unavailable."


class ActorUnschedulableError(RayError):
    """The actor cannot be scheduled (e.g. its resource request can never be met)."""


class GetTimeoutError(RayError, TimeoutError):
    """``ray.get`` / ``ray.wait`` timed out; also catchable as the builtin TimeoutError."""

    default_message = "Get timed out: some object(s) not ready."


class TaskCancelledError(RayError):
    """The task was cancelled with ``ray.cancel`` before it finished."""

    def __init__(self, task_id: str | None = None, message: str | None = None) -> None:
        super().__init__(task_id, message)  # args == constructor args, so pickle just works
        self.task_id = task_id

    def __str__(self) -> str:
        args = self.args  # read args: __init__ is bypassed when unpickling
        if len(args) > 1 and args[1]:
            return str(args[1])
        return f"Task: {args[0]} was cancelled." if args and args[0] else "Task was cancelled."


class WorkerCrashedError(RayError):
    """The worker process died unexpectedly while executing the task."""

    default_message = ("The worker died unexpectedly while executing this task. Check the "
                       "worker's stderr for a crash or for being killed (e.g. out of memory).")


class ObjectLostError(RayError):
    """The object's value is no longer available anywhere."""

    _template: ClassVar[str] = "Object {ref} is lost and cannot be retrieved."

    def __init__(self, object_ref_hex: str, message: str | None = None) -> None:
        super().__init__(object_ref_hex, message)
        self.object_ref_hex = object_ref_hex

    def __str__(self) -> str:
        ref, message = (tuple(self.args) + (None, None))[:2]
        return str(message) if message else self._template.format(ref=ref)


class ObjectFetchTimedOutError(ObjectLostError):
    """Fetching the object from another node timed out."""

    _template = "Fetch for object {ref} timed out."


class OwnerDiedError(ObjectLostError):
    """The process that owned the object (its creator) died."""

    _template = "Object {ref} is lost because its owner has died."


class ObjectReconstructionFailedError(ObjectLostError):
    """The object was lost and re-executing its task failed."""

    _template = "Object {ref} is lost and could not be reconstructed."


class ReferenceCountingAssertionError(ObjectLostError):
    """The object was freed while a reference to it was still in use (a runtime bug)."""

    _template = "Object {ref} was deleted while still referenced."


class ObjectFreedError(ObjectLostError):
    """The object was explicitly freed (``ray._private.internal_api.free``)."""

    _template = "Object {ref} was explicitly freed and is no longer available."


class ObjectStoreFullError(RayError):
    """The object store has no room for a new object, even after eviction/spilling."""


class OutOfDiskError(RayError):
    """The local disk is full (object spilling failed)."""


class OutOfMemoryError(RayError):
    """The task/actor was killed because the node ran out of memory."""


class NodeDiedError(RayError):
    """The node running the task died."""


class TaskUnschedulableError(RayError):
    """The task can never be scheduled (e.g. it asks for more resources than exist)."""


class TaskPlacementGroupRemoved(RayError):
    """The placement group the task was bound to has been removed."""


class LocalRayletDiedError(RayError):
    """The local node manager died; the driver cannot continue."""


class PendingCallsLimitExceeded(RayError):
    """Too many calls of this process are pending on an actor (``max_pending_calls``):
    raised by ``.remote()``, nothing was submitted."""


class CrossLanguageError(RayError):
    """An error raised by a task written in another language (kept for API parity)."""


class RuntimeEnvSetupError(RayError):
    """Setting up the task's runtime environment failed."""


class AsyncioActorExit(RayError):
    """Raised inside an asyncio actor to make it exit (``ray.actor.exit_actor``)."""


class ActorExit(ActorDiedError):
    """Raised by ``exit_actor()`` inside an actor's method: the call that raised it
    ends with the actor (internal: the caller sees an ActorDiedError)."""
