"""Tests for mpray.exceptions: RayTaskError's dual-class behaviour and pickling of every error."""

from __future__ import annotations

import pickle
import threading

import cloudpickle
import pytest

from mpray import exceptions as exc
from mpray.exceptions import RayTaskError

DUMPERS = [pytest.param(pickle.dumps, id="pickle"), pytest.param(cloudpickle.dumps, id="cloudpickle")]


def _task_error(cause: BaseException, name: str = "f", pid: int = 4242,
                ip: str = "10.0.0.7") -> RayTaskError:
    """A RayTaskError as a worker would build it, with a real traceback."""
    try:
        raise cause
    except BaseException as caught:  # noqa: BLE001 - we want KeyboardInterrupt too
        return RayTaskError.from_exception(caught, name, pid=pid, ip=ip)


class CodeError(Exception):
    """An importable user exception with a custom attribute."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


class TwoArgError(Exception):
    """Pickles, but cannot be unpickled: __init__ wants 2 args and args holds 1 (common bug)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}-{b}")


class LockedError(ValueError):
    """The class pickles, but instances carry an unpicklable attribute."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class NoSubclassError(Exception):
    """Refuses subclasses, like a final type (``type()`` raises TypeError)."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("final class")


class NewArgsError(Exception):
    """A __new__ that requires arguments, so it cannot be instantiated bare."""

    def __new__(cls, required: str) -> "NewArgsError":
        return super().__new__(cls, required)


# ------------------------------------------------------------------------ RayTaskError basics

def test_str_has_ray_header_then_remote_traceback() -> None:
    err = _task_error(ValueError("boom"), name="my_func")
    text = str(err)
    lines = text.splitlines()
    assert lines[0] == "ray::my_func() (pid=4242, ip=10.0.0.7)"
    assert "Traceback (most recent call last)" not in text  # replaced by the header
    assert lines[-1] == "ValueError: boom"
    assert any("in _task_error" in line for line in lines)


def test_str_without_traceback_text_shows_cause() -> None:
    err = RayTaskError("g", "", KeyError("k"), pid=1, ip="h")
    assert str(err) == "ray::g() (pid=1, ip=h)\nKeyError: 'k'"


def test_defaults_for_pid_and_ip() -> None:
    import os

    err = RayTaskError("g", "tb", None)
    assert err.pid == os.getpid()
    assert err.ip == "127.0.0.1"


def test_format_remote_exception() -> None:
    try:
        raise ValueError("bad value")
    except ValueError as e:
        text = exc.format_remote_exception(e)
    assert text.startswith("Traceback (most recent call last):")
    assert text.rstrip().endswith("ValueError: bad value")


# ------------------------------------------------------------------------ as_instanceof_cause

def test_generated_class_is_caught_as_both_types() -> None:
    err = _task_error(ValueError("boom")).as_instanceof_cause()
    assert type(err).__name__ == "RayTaskError(ValueError)"
    assert type(err).__module__ == "mpray.exceptions"
    with pytest.raises(ValueError):
        raise err
    with pytest.raises(RayTaskError):
        raise err
    with pytest.raises(exc.RayError):
        raise err
    assert isinstance(err.cause, ValueError) and str(err.cause) == "boom"
    assert err.args == ("boom",)
    assert str(err).startswith("ray::f() (pid=4242, ip=10.0.0.7)\n")
    assert str(err).endswith("ValueError: boom")
    assert err.function_name == "f" and err.pid == 4242 and err.ip == "10.0.0.7"


def test_as_instanceof_cause_is_idempotent() -> None:
    err = _task_error(ValueError("x")).as_instanceof_cause()
    assert err.as_instanceof_cause() is err


def test_generated_classes_are_cached_per_cause_type() -> None:
    a = _task_error(ValueError("a")).as_instanceof_cause()
    b = _task_error(ValueError("b")).as_instanceof_cause()
    c = _task_error(KeyError("c")).as_instanceof_cause()
    assert type(a) is type(b)
    assert type(c) is not type(a)
    assert isinstance(c, KeyError) and c.args == ("c",)


def test_generated_class_does_not_call_cause_init_and_keeps_attributes() -> None:
    err = _task_error(CodeError("denied", 403)).as_instanceof_cause()
    assert isinstance(err, CodeError) and isinstance(err, RayTaskError)
    assert err.code == 403
    assert err.args == ("denied", 403)


def test_oserror_cause_keeps_errno_and_subclass() -> None:
    err = _task_error(FileNotFoundError(2, "No such file", "/x")).as_instanceof_cause()
    assert isinstance(err, FileNotFoundError) and isinstance(err, OSError)
    assert (err.errno, err.strerror, err.filename) == (2, "No such file", "/x")
    assert str(err).startswith("ray::f()")


def test_ray_error_cause_is_wrapped_too() -> None:
    err = _task_error(exc.ActorDiedError("gone")).as_instanceof_cause()
    assert isinstance(err, exc.ActorDiedError) and isinstance(err, exc.RayActorError)
    assert isinstance(err, RayTaskError)
    timeout = _task_error(exc.GetTimeoutError("slow")).as_instanceof_cause()
    assert isinstance(timeout, TimeoutError) and isinstance(timeout, RayTaskError)


def test_base_exception_cause() -> None:
    err = _task_error(KeyboardInterrupt()).as_instanceof_cause()
    assert isinstance(err, KeyboardInterrupt) and isinstance(err, RayTaskError)


@pytest.mark.parametrize("cause", [Exception("plain"), exc.RayError("base")])
def test_cause_already_a_base_of_raytaskerror_returns_self(cause: BaseException) -> None:
    err = _task_error(cause)
    assert err.as_instanceof_cause() is err


def test_no_cause_returns_self() -> None:
    err = RayTaskError("f", "tb", None)
    assert err.as_instanceof_cause() is err


@pytest.mark.parametrize("cause", [NoSubclassError("x"), NewArgsError("y")])
def test_unsubclassable_cause_falls_back_to_plain(cause: BaseException) -> None:
    err = _task_error(cause)
    assert err.as_instanceof_cause() is err
    assert type(err) is RayTaskError and err.cause is cause


def test_nested_task_error_uses_innermost_cause_class() -> None:
    inner = _task_error(ValueError("deep"), name="inner").as_instanceof_cause()
    outer = _task_error(inner, name="outer")
    made = outer.as_instanceof_cause()
    assert type(made) is type(inner)  # RayTaskError(ValueError), not a doubly nested class
    assert made.cause is inner
    assert str(made).splitlines()[0].startswith("ray::outer()")
    assert "ray::inner()" in str(made)


# ------------------------------------------------------------------------ pickling RayTaskError

@pytest.mark.parametrize("dumps", DUMPERS)
def test_generated_instance_round_trip(dumps) -> None:
    err = _task_error(CodeError("denied", 403)).as_instanceof_cause()
    back = pickle.loads(dumps(err))
    assert type(back) is type(err)
    assert isinstance(back, CodeError) and isinstance(back, RayTaskError)
    assert str(back) == str(err)
    assert back.args == err.args and back.code == 403
    assert (back.function_name, back.pid, back.ip) == ("f", 4242, "10.0.0.7")
    assert type(back.cause) is CodeError and back.cause.args == ("denied", 403)


@pytest.mark.parametrize("dumps", DUMPERS)
def test_plain_instance_round_trip(dumps) -> None:
    err = _task_error(ValueError("v"))
    back = pickle.loads(dumps(err))
    assert type(back) is RayTaskError
    assert str(back) == str(err)
    assert isinstance(back.cause, ValueError) and back.cause.args == ("v",)


@pytest.mark.parametrize("dumps", DUMPERS)
def test_nested_round_trip(dumps) -> None:
    inner = _task_error(ValueError("deep"), name="inner").as_instanceof_cause()
    outer = _task_error(inner, name="outer").as_instanceof_cause()
    back = pickle.loads(dumps(outer))
    assert type(back) is type(outer)
    assert isinstance(back, ValueError)
    assert type(back.cause) is type(inner) and str(back.cause) == str(inner)
    assert str(back) == str(outer)


@pytest.mark.parametrize("dumps", DUMPERS)
def test_unpicklable_cause_becomes_text_but_class_still_catches(dumps) -> None:
    err = _task_error(LockedError("locked up")).as_instanceof_cause()
    with pytest.raises(TypeError):
        pickle.dumps(err.cause)  # precondition: the cause itself does not pickle
    back = pickle.loads(dumps(err))
    assert isinstance(back, LockedError) and isinstance(back, RayTaskError)
    assert isinstance(back.cause, exc.RaySystemError)
    assert "LockedError: locked up" in str(back.cause)
    assert back.args == ("locked up",)
    # the traceback, and then why the cause came as text
    assert str(back).startswith(str(err).rstrip())
    assert "LockedError could not be serialized" in str(back) and "lock" in str(back)


@pytest.mark.parametrize("dumps", DUMPERS)
def test_cause_that_fails_to_unpickle_becomes_text(dumps) -> None:
    err = _task_error(TwoArgError("a", "b")).as_instanceof_cause()
    back = pickle.loads(dumps(err))
    assert isinstance(back, TwoArgError) and isinstance(back, RayTaskError)
    assert isinstance(back.cause, exc.RaySystemError)
    assert "TwoArgError: a-b" in str(back.cause)
    assert str(back) == str(err)


def test_unpicklable_cause_and_class_fall_back_to_plain() -> None:
    class Local(Exception):  # cloudpickle pickles it by value ... but the lock refuses
        guard = threading.Lock()

    err = _task_error(Local("local")).as_instanceof_cause()
    assert isinstance(err, Local)
    back = pickle.loads(cloudpickle.dumps(err))
    assert type(back) is RayTaskError
    assert isinstance(back.cause, exc.RaySystemError)
    assert "Local: local" in str(back.cause)
    assert str(back).startswith(str(err).rstrip()) and "could not be serialized" in str(back)


def test_local_exception_class_survives_cloudpickle() -> None:
    class LocalError(Exception):
        pass

    err = _task_error(LocalError("by value")).as_instanceof_cause()
    back = pickle.loads(cloudpickle.dumps(err))
    assert type(back).__name__ == "RayTaskError(LocalError)"
    assert isinstance(back, RayTaskError)
    assert type(back.cause).__name__ == "LocalError" and back.args == ("by value",)


# ------------------------------------------------------------------------ the other classes

OBJ = "a" * 40
SIMPLE = [
    exc.RayError("base"), exc.RayActorError("actor gone", actor_id="ab12"), exc.ActorDiedError(),
    exc.ActorUnavailableError("restarting"), exc.ActorUnschedulableError("no gpu"),
    exc.GetTimeoutError("waited 5s"), exc.GetTimeoutError(), exc.TaskCancelledError("t1"),
    exc.TaskCancelledError(), exc.TaskCancelledError("t2", "custom cancel"),
    exc.WorkerCrashedError(), exc.ObjectLostError(OBJ), exc.ObjectLostError(OBJ, "custom lost"),
    exc.ObjectFetchTimedOutError(OBJ), exc.OwnerDiedError(OBJ),
    exc.ObjectReconstructionFailedError(OBJ), exc.ReferenceCountingAssertionError(OBJ),
    exc.ObjectFreedError(OBJ), exc.ObjectStoreFullError("full"), exc.OutOfDiskError("disk"),
    exc.OutOfMemoryError("oom"), exc.RaySystemError("sys"), exc.NodeDiedError("node"),
    exc.TaskUnschedulableError("unsched"), exc.TaskPlacementGroupRemoved("pg"),
    exc.LocalRayletDiedError("raylet"), exc.PendingCallsLimitExceeded("too many"),
    exc.CrossLanguageError("java"), exc.RuntimeEnvSetupError("pip"), exc.AsyncioActorExit(),
]


def test_every_public_class_is_covered() -> None:
    covered = {type(e).__name__ for e in SIMPLE} | {"RayTaskError"}
    public = {n for n in exc.__all__ if isinstance(getattr(exc, n), type)}
    assert public == covered


@pytest.mark.parametrize("dumps", DUMPERS)
@pytest.mark.parametrize("err", SIMPLE, ids=lambda e: type(e).__name__)
def test_round_trip_keeps_type_message_and_attributes(err: exc.RayError, dumps) -> None:
    back = pickle.loads(dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    if type(err) is not exc.AsyncioActorExit:  # raised without a message on purpose
        assert str(err) != ""
    assert back.args == err.args
    assert back.__dict__ == err.__dict__
    assert isinstance(back, exc.RayError)


def test_messages_and_hierarchy() -> None:
    assert issubclass(exc.ActorDiedError, exc.RayActorError)
    assert issubclass(exc.ActorUnavailableError, exc.RayActorError)
    assert issubclass(exc.GetTimeoutError, TimeoutError)
    for cls in (exc.ObjectFetchTimedOutError, exc.OwnerDiedError, exc.ObjectFreedError,
                exc.ObjectReconstructionFailedError, exc.ReferenceCountingAssertionError):
        assert issubclass(cls, exc.ObjectLostError)
        assert OBJ in str(cls(OBJ))
    assert str(exc.TaskCancelledError("t1")) == "Task: t1 was cancelled."
    assert str(exc.TaskCancelledError()) == "Task was cancelled."
    assert str(exc.ObjectLostError(OBJ, "custom")) == "custom"
    assert exc.ObjectLostError(OBJ).object_ref_hex == OBJ
    assert exc.TaskCancelledError("t9").task_id == "t9"
    assert exc.RayActorError(actor_id="x").actor_id == "x"
    assert "worker died" in str(exc.WorkerCrashedError())
