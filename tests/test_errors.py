"""Application errors: how task exceptions travel to ``get``, failure propagation to
dependents, unserialisable arguments/returns and application-level retries."""

from __future__ import annotations

import os
import threading

import pytest

import mpray
from mpray import exceptions as exc


class MyAppError(Exception):
    """A user-defined exception class importable from the test module."""

    def __init__(self, message, code=7):
        super().__init__(message)
        self.code = code


@mpray.remote
def fail_value(msg):
    raise ValueError(msg)


@mpray.remote
def fail_custom(msg, code):
    raise MyAppError(msg, code)


@mpray.remote
def plus_one(x):
    return x + 1


@mpray.remote
def echo(x):
    return x


def _bump(path):
    """Append one line to ``path``; returns the number of lines (attempt number)."""
    with open(path, "a") as f:
        f.write("x\n")
    with open(path) as f:
        return len(f.read().splitlines())


def _attempts(path):
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


# --------------------------------------------------------------------- exceptions at get
def test_task_exception_is_task_error_and_original_type(ray_start):
    ref = fail_value.remote("bad input 1234")
    with pytest.raises(ValueError) as ei:
        mpray.get(ref)
    e = ei.value
    assert isinstance(e, exc.RayTaskError)
    assert isinstance(e, ValueError)
    text = str(e)
    assert "bad input 1234" in text
    assert "fail_value" in text
    # the remote traceback, with the raising frame
    assert "ValueError" in text
    assert "in fail_value" in text
    assert "line " in text
    # the pid of the worker process that raised
    assert isinstance(e.pid, int) and e.pid != os.getpid()
    assert f"pid={e.pid}" in text
    assert e.pid in mpray.api._node_stats()["pids"]
    # catching as RayTaskError works too, and the cause is the original exception
    with pytest.raises(exc.RayTaskError) as ei2:
        mpray.get(ref)
    assert isinstance(ei2.value.cause, ValueError)
    assert ei2.value.cause.args == ("bad input 1234",)


def test_user_defined_exception_class(ray_start):
    ref = fail_custom.remote("custom failure", 42)
    with pytest.raises(MyAppError) as ei:
        mpray.get(ref)
    e = ei.value
    assert isinstance(e, exc.RayTaskError)
    assert e.code == 42
    assert "custom failure" in str(e)
    assert "MyAppError" in str(e)


def test_exception_class_defined_in_function(ray_start):
    class LocalError(RuntimeError):
        pass

    @mpray.remote
    def fail_local():
        raise LocalError("local class")

    with pytest.raises(RuntimeError) as ei:
        mpray.get(fail_local.remote())
    assert isinstance(ei.value, exc.RayTaskError)
    assert isinstance(ei.value, LocalError)
    assert "local class" in str(ei.value)


def test_get_of_list_with_failure_raises(ray_start):
    refs = [plus_one.remote(1), fail_value.remote("in a list"), plus_one.remote(2)]
    with pytest.raises(ValueError, match="in a list"):
        mpray.get(refs)
    assert mpray.get([refs[0], refs[2]]) == [2, 3]


def test_dependents_of_failed_task_fail_the_same_way(ray_start):
    failing = fail_value.remote("root cause")
    child = plus_one.remote(failing)
    grandchild = plus_one.remote(child)
    for ref in (child, grandchild):
        with pytest.raises(ValueError) as ei:
            mpray.get(ref)
        assert isinstance(ei.value, exc.RayTaskError)
        assert "root cause" in str(ei.value)
    # a dependent given the failed ref as a keyword argument fails too
    with pytest.raises(ValueError, match="root cause"):
        mpray.get(echo.remote(x=failing))


def test_dependent_submitted_before_failure(ray_start, tmp_path):
    @mpray.remote
    def fail_later(path):
        import time

        time.sleep(0.3)
        raise MyAppError("late failure", 3)

    ran = tmp_path / "ran"

    @mpray.remote
    def must_not_run(x, path):
        open(path, "w").close()
        return x

    dep = must_not_run.remote(fail_later.remote(str(tmp_path)), str(ran))
    with pytest.raises(MyAppError, match="late failure"):
        mpray.get(dep)
    assert not ran.exists()


def test_returned_exception_is_a_value(ray_start):
    @mpray.remote
    def give_error():
        return ValueError("just a value")

    v = mpray.get(give_error.remote())
    assert type(v) is ValueError
    assert v.args == ("just a value",)
    p = mpray.get(mpray.put(MyAppError("stored", 5)))
    assert type(p) is MyAppError and p.code == 5
    # and as an argument it arrives as a value too
    assert type(mpray.get(echo.remote(KeyError("k")))) is KeyError


# --------------------------------------------------------------------- serialisation
def test_unpicklable_argument_raises_type_error_at_remote(ray_start):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="argument 1"):
        two_args.remote(1, lock)
    with pytest.raises(TypeError, match="keyword argument 'x'"):
        echo.remote(x=lock)
    with pytest.raises(TypeError, match="lock"):
        echo.remote(lock)
    # the engine still works
    assert mpray.get(echo.remote("fine")) == "fine"


@mpray.remote
def two_args(a, b):
    return a, b


def test_unpicklable_return_value_fails_that_task(ray_start):
    @mpray.remote
    def give_lock():
        return threading.Lock()

    with pytest.raises(exc.RayTaskError) as ei:
        mpray.get(give_lock.remote(), timeout=30)
    assert isinstance(ei.value, TypeError)
    assert "lock" in str(ei.value).lower()
    assert "give_lock" in str(ei.value)
    # the next task on the same engine works
    assert mpray.get(plus_one.remote(1), timeout=30) == 2
    assert mpray.get([plus_one.remote(i) for i in range(4)], timeout=30) == [1, 2, 3, 4]


def test_unpicklable_put_raises_type_error(ray_start):
    with pytest.raises(TypeError):
        mpray.put(threading.Lock())
    assert mpray.get(mpray.put(1)) == 1


# --------------------------------------------------------------------- retries
def test_retry_exceptions_retries_app_errors(ray_start, tmp_path):
    counter = str(tmp_path / "attempts")

    @mpray.remote(max_retries=2, retry_exceptions=True)
    def flaky(path):
        n = _bump(path)
        if n < 3:
            raise MyAppError(f"attempt {n}", n)
        return n

    assert mpray.get(flaky.remote(counter), timeout=30) == 3
    assert _attempts(counter) == 3


def test_retry_exceptions_gives_up_after_max_retries(ray_start, tmp_path):
    counter = str(tmp_path / "attempts")

    @mpray.remote(max_retries=2, retry_exceptions=True)
    def always(path):
        n = _bump(path)
        raise MyAppError(f"attempt {n}", n)

    with pytest.raises(MyAppError) as ei:
        mpray.get(always.remote(counter), timeout=30)
    assert _attempts(counter) == 3
    assert ei.value.code == 3  # the last attempt's error is reported


def test_no_retry_without_retry_exceptions(ray_start, tmp_path):
    counter = str(tmp_path / "attempts")

    @mpray.remote(max_retries=2)
    def once(path):
        n = _bump(path)
        raise MyAppError(f"attempt {n}", n)

    with pytest.raises(MyAppError):
        mpray.get(once.remote(counter), timeout=30)
    assert _attempts(counter) == 1


def test_retry_exceptions_list_filters_by_type(ray_start, tmp_path):
    c1 = str(tmp_path / "c1")
    c2 = str(tmp_path / "c2")

    @mpray.remote(max_retries=3, retry_exceptions=[MyAppError])
    def raise_kind(path, kind):
        n = _bump(path)
        if kind == "mine":
            raise MyAppError("retry me", n)
        raise ValueError("do not retry me")

    with pytest.raises(MyAppError):
        mpray.get(raise_kind.remote(c1, "mine"), timeout=30)
    assert _attempts(c1) == 4
    with pytest.raises(ValueError):
        mpray.get(raise_kind.remote(c2, "other"), timeout=30)
    assert _attempts(c2) == 1


def test_retry_via_options(ray_start, tmp_path):
    counter = str(tmp_path / "attempts")

    @mpray.remote
    def flaky(path):
        n = _bump(path)
        if n < 2:
            raise RuntimeError("first attempt fails")
        return "ok"

    ref = flaky.options(max_retries=1, retry_exceptions=True).remote(counter)
    assert mpray.get(ref, timeout=30) == "ok"
    assert _attempts(counter) == 2


class LockedError(Exception):
    """An exception that cannot be pickled (it carries a lock)."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def test_unpicklable_exception_still_reported(ray_start):
    @mpray.remote
    def raise_locked():
        raise LockedError("carries a lock")

    with pytest.raises(exc.RayTaskError) as ei:
        mpray.get(raise_locked.remote(), timeout=30)
    assert "carries a lock" in str(ei.value)
    assert "LockedError" in str(ei.value)
    assert mpray.get(plus_one.remote(1), timeout=30) == 2


def test_get_timeout_on_failed_ref_raises_task_error(ray_start):
    ref = fail_value.remote("already failed")
    mpray.wait([ref], timeout=10)
    with pytest.raises(ValueError, match="already failed"):
        mpray.get(ref, timeout=0)


class _LockedError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()


@mpray.remote
def raise_unpicklable():
    raise _LockedError()


def test_an_unpicklable_exception_says_it_could_not_be_serialized(ray_start):
    with pytest.raises(exc.RayTaskError) as info:
        mpray.get(raise_unpicklable.remote(), timeout=30)
    text = str(info.value)
    assert "_LockedError" in text and "holds a lock" in text
    assert "could not be serialized" in text and "lock" in text.split("serialized")[1]


def test_remote_tracebacks_name_the_file_of_helpers_and_nested_tasks(ray_start):
    """Functions sent by value (defined here, in a test) keep their file and lines in
    remote tracebacks, helpers and nested tasks included (cloudpickle alone names them
    "<dynamic-code>")."""
    @mpray.remote
    def fails_in_a_helper():
        def helper():
            raise ValueError("deep")

        return helper()

    @mpray.remote
    def fails_in_a_nested_task():
        return mpray.get(fails_in_a_helper.remote())

    for task in (fails_in_a_helper, fails_in_a_nested_task):
        with pytest.raises(ValueError) as info:
            mpray.get(task.remote(), timeout=30)
        text = str(info.value)
        assert "<dynamic-code>" not in text, text
        assert f'File "{__file__}"' in text and "in helper" in text, text
        assert 'raise ValueError("deep")' in text  # the source line, as Ray shows it
