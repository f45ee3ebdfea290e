"""Process faults: crashing workers, cancellation, and a SIGKILLed driver."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import psutil
import pytest

import mpray
from mpray import exceptions as exc

from conftest import REPO, session_finished, wait_for


def _first_attempt(marker: str) -> bool:
    """True exactly once per marker path (creates the marker atomically)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _count(path) -> int:
    try:
        with open(path) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def _log(path, text="x") -> None:
    with open(path, "a") as f:
        f.write(f"{text}\n")


@mpray.remote
def square(x):
    return x * x


@mpray.remote
def sigkill_first(marker, log, value):
    _log(log, os.getpid())
    if _first_attempt(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    return value


@mpray.remote
def exit_first(marker, log, value):
    _log(log, os.getpid())
    if _first_attempt(marker):
        os._exit(1)
    return value


def _engine_serves():
    assert mpray.get([square.remote(i) for i in range(6)], timeout=30) == [i * i for i in range(6)]


# --------------------------------------------------------------------- worker crashes
def test_sigkilled_worker_task_is_retried(ray_start, tmp_path):
    log = tmp_path / "log"
    ref = sigkill_first.remote(str(tmp_path / "m"), str(log), "survived")
    assert mpray.get(ref, timeout=30) == "survived"
    pids = log.read_text().split()
    assert len(pids) == 2
    assert pids[0] != pids[1]  # the second attempt ran in a fresh worker
    assert not psutil.pid_exists(int(pids[0])) or \
        psutil.Process(int(pids[0])).status() == psutil.STATUS_ZOMBIE
    _engine_serves()


def test_sigkilled_worker_without_retries_raises_worker_crashed(ray_start, tmp_path):
    log = tmp_path / "log"
    ref = sigkill_first.options(max_retries=0).remote(str(tmp_path / "m"), str(log), 1)
    with pytest.raises(exc.WorkerCrashedError):
        mpray.get(ref, timeout=30)
    assert _count(log) == 1
    _engine_serves()


def test_os_exit_worker_task_is_retried(ray_start, tmp_path):
    log = tmp_path / "log"
    ref = exit_first.remote(str(tmp_path / "m"), str(log), {"ok": True})
    assert mpray.get(ref, timeout=30) == {"ok": True}
    assert _count(log) == 2
    _engine_serves()


def test_os_exit_without_retries_raises_worker_crashed(ray_start, tmp_path):
    log = tmp_path / "log"
    ref = exit_first.options(max_retries=0).remote(str(tmp_path / "m"), str(log), 1)
    with pytest.raises(exc.WorkerCrashedError):
        mpray.get(ref, timeout=30)
    assert _count(log) == 1
    _engine_serves()


def test_crash_fails_dependents(ray_start, tmp_path):
    crashed = exit_first.options(max_retries=0).remote(str(tmp_path / "m"), str(tmp_path / "l"), 3)
    dep = square.remote(crashed)
    with pytest.raises(exc.WorkerCrashedError):
        mpray.get(dep, timeout=30)
    _engine_serves()


def test_many_crashes_engine_keeps_serving(ray_start, tmp_path):
    @mpray.remote(max_retries=0)
    def die():
        os._exit(3)

    refs = [die.remote() for _ in range(6)]
    for r in refs:
        with pytest.raises(exc.WorkerCrashedError):
            mpray.get(r, timeout=30)
    _engine_serves()
    # the dead workers were replaced, and no more than needed were kept
    stats = mpray.api._node_stats()
    assert 1 <= stats["workers"] <= 4
    assert all(psutil.pid_exists(p) for p in stats["pids"])


# --------------------------------------------------------------------- cancellation
@mpray.remote
def block(started_dir, name, seconds):
    open(os.path.join(started_dir, name), "w").close()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
    return name


def _started(d, n):
    return lambda: len(os.listdir(d)) >= n


def test_cancel_queued_task(ray_start, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    ran = tmp_path / "victim-ran"
    blockers = [block.remote(str(started), f"b{i}", 1.0) for i in range(2)]
    assert wait_for(_started(str(started), 2), 10), "blockers did not start"

    @mpray.remote
    def victim(path):
        open(path, "w").close()
        return "ran"

    v = victim.remote(str(ran))
    time.sleep(0.05)
    mpray.cancel(v)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(v, timeout=10)
    assert mpray.get(blockers, timeout=30) == ["b0", "b1"]
    # once the CPUs are free the cancelled task still does not run
    _engine_serves()
    time.sleep(0.2)
    assert not ran.exists()


def test_cancel_running_task_interrupts_it(ray_start, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    pidfile = tmp_path / "pid"

    @mpray.remote
    def long_loop(d, pidpath):
        with open(pidpath, "w") as f:
            f.write(str(os.getpid()))
        open(os.path.join(d, "go"), "w").close()
        time.sleep(30)
        return "finished"

    ref = long_loop.remote(str(started), str(pidfile))
    assert wait_for(_started(str(started), 1), 10)
    t0 = time.monotonic()
    mpray.cancel(ref)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(ref, timeout=10)
    assert time.monotonic() - t0 < 5
    # a non-force cancel interrupts the task; the worker process stays
    pid = int(pidfile.read_text())
    assert psutil.pid_exists(pid)
    assert pid in mpray.api._node_stats()["pids"]
    _engine_serves()


def test_cancel_running_task_force_kills_worker(ray_start, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    pidfile = tmp_path / "pid"

    @mpray.remote
    def stubborn(d, pidpath):
        with open(pidpath, "w") as f:
            f.write(str(os.getpid()))
        open(os.path.join(d, "go"), "w").close()
        while True:  # ignores interrupts
            try:
                time.sleep(30)
            except BaseException:  # noqa: BLE001
                pass

    ref = stubborn.remote(str(started), str(pidfile))
    assert wait_for(_started(str(started), 1), 10)
    pid = int(pidfile.read_text())
    mpray.cancel(ref, force=True)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(ref, timeout=10)

    def gone():
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    assert wait_for(gone, 5), "force-cancel did not kill the worker"
    assert pid not in mpray.api._node_stats()["pids"]
    _engine_serves()


def test_cancel_finished_task_is_noop(ray_start):
    ref = square.remote(3)
    assert mpray.get(ref) == 9
    mpray.cancel(ref)
    assert mpray.get(ref) == 9


def test_cancel_put_ref_raises_type_error(ray_start):
    with pytest.raises(TypeError):
        mpray.cancel(mpray.put(1))


# --------------------------------------------------------------------- driver death
# a driver that starts a long task and prints its engine pids and session directory
_DRIVER_START = r"""
import json, os, sys, time
import psutil
import mpray
mpray.init(num_cpus=2, object_store_memory=64 * 1024 * 1024)

@mpray.remote
def long_task(path):
    open(path, "w").close()
    time.sleep(120)

started = os.path.join(sys.argv[1], "started")
ref = long_task.remote(started)
deadline = time.monotonic() + 20
while not os.path.exists(started) and time.monotonic() < deadline:
    time.sleep(0.01)
s = mpray.api._global.session
node = psutil.Process(s.node_pid)
pids = [node.pid] + [c.pid for c in node.children(recursive=True)]
print(json.dumps({"pids": pids, "session_dir": s.session_dir,
                  "started": os.path.exists(started)}), flush=True)
"""
DRIVER = _DRIVER_START + "time.sleep(120)\n"


def _dead(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_driver_sigkill_cleans_up(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, cwd=str(tmp_path), text=True,
    )
    info = None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the driver script printed nothing within 30 s"
        line = proc.stdout.readline()
        assert line, f"driver exited early: {proc.stderr.read()}"
        info = json.loads(line)
        assert info["started"], "the long task never started"
        pids = info["pids"]
        assert len(pids) >= 3  # the node and at least its two workers
        assert os.path.isdir(info["session_dir"])
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        t0 = time.monotonic()
        assert wait_for(lambda: all(_dead(p) for p in pids), 5), \
            f"engine processes still alive 5 s after the driver died: " \
            f"{[p for p in pids if not _dead(p)]}"
        assert wait_for(lambda: session_finished(info["session_dir"]),
                        max(0.1, 5 - (time.monotonic() - t0))), \
            f"session {info['session_dir']} was not ended cleanly"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
        if info is not None:  # never leave engine processes behind, even on failure
            for p in info["pids"]:
                if _dead(p):
                    continue
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            import shutil

            shutil.rmtree(info["session_dir"], ignore_errors=True)


def test_recursive_cancel_stops_children(ray_start, tmp_path):
    beat = tmp_path / "heartbeat"

    @mpray.remote
    def child(path):
        for _ in range(400):
            with open(path, "a") as f:
                f.write(".")
            time.sleep(0.025)
        return "child finished"

    @mpray.remote
    def parent(path):
        return mpray.get(child.remote(path))

    ref = parent.remote(str(beat))
    assert wait_for(lambda: beat.exists() and beat.stat().st_size > 3, 10)
    mpray.cancel(ref)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(ref, timeout=10)
    time.sleep(0.5)
    size = beat.stat().st_size
    time.sleep(0.5)
    assert beat.stat().st_size == size, "the child task kept running after recursive cancel"
    _engine_serves()


def test_crash_retries_default_is_three(ray_start, tmp_path):
    log = tmp_path / "log"

    @mpray.remote
    def always_dies(path):
        _log(path)
        os._exit(1)

    with pytest.raises(exc.WorkerCrashedError):
        mpray.get(always_dies.remote(str(log)), timeout=60)
    assert _count(log) == 4  # the first attempt and 3 retries (Ray's default)
    _engine_serves()


def test_cancel_task_waiting_for_dependency(ray_start, tmp_path):
    ran = tmp_path / "ran"

    @mpray.remote
    def slow_value():
        time.sleep(0.5)
        return 5

    @mpray.remote
    def dependent(x, path):
        open(path, "w").close()
        return x

    dep = slow_value.remote()
    waiting = dependent.remote(dep, str(ran))
    downstream = square.remote(waiting)
    mpray.cancel(waiting)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(waiting, timeout=10)
    # dependents of a cancelled task fail as cancelled too
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(downstream, timeout=10)
    # the dependency itself is unaffected
    assert mpray.get(dep, timeout=10) == 5
    time.sleep(0.1)
    assert not ran.exists()


def test_cancel_non_recursive_leaves_child_running(ray_start, tmp_path):
    done = tmp_path / "child-done"

    @mpray.remote
    def child(path):
        time.sleep(0.6)
        open(path, "w").close()
        return "child"

    @mpray.remote
    def parent(path):
        return mpray.get(child.remote(path))

    ref = parent.remote(str(done))
    time.sleep(0.3)
    mpray.cancel(ref, recursive=False)
    with pytest.raises(exc.TaskCancelledError):
        mpray.get(ref, timeout=10)
    assert wait_for(done.exists, 10), "the child was cancelled although recursive=False"
    _engine_serves()


def test_function_reusable_after_cancelling_queued_tasks(ray_start, tmp_path):
    started = tmp_path / "started"
    started.mkdir()

    @mpray.remote
    def victim(i):
        return i

    for round_ in range(5):
        blockers = [block.remote(str(started), f"r{round_}b{i}", 0.4) for i in range(2)]
        assert wait_for(_started(str(started), 2 * (round_ + 1)), 10)
        queued = [victim.remote(i) for i in range(12)]
        for r in queued:
            mpray.cancel(r)
        for r in queued:
            with pytest.raises(exc.TaskCancelledError):
                mpray.get(r, timeout=10)
        assert len(mpray.get(blockers, timeout=30)) == 2
        assert mpray.get([victim.remote(i) for i in range(8)], timeout=30) == list(range(8))


EXIT_DRIVER = _DRIVER_START + r"""if sys.argv[2] == "raise":
    raise SystemExit(3)
"""


@pytest.mark.parametrize("how", ["return", "raise"])
def test_driver_exit_without_shutdown_cleans_up(tmp_path, how):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", EXIT_DRIVER, str(tmp_path), how],
                          capture_output=True, text=True, timeout=60, env=env,
                          cwd=str(tmp_path))
    elapsed = time.monotonic() - t0
    info = json.loads(proc.stdout.splitlines()[0])
    try:
        assert info["started"]
        assert proc.returncode == (3 if how == "raise" else 0), proc.stderr
        assert elapsed < 20, f"the driver took {elapsed:.1f} s to exit"
        assert wait_for(lambda: all(_dead(p) for p in info["pids"]), 5), \
            [p for p in info["pids"] if not _dead(p)]
        assert wait_for(lambda: session_finished(info["session_dir"]), 5)
    finally:
        for p in info["pids"]:
            if not _dead(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


@mpray.remote(max_retries=0)
def notices_its_cancel():
    """Catches the interrupt of its cancel, then says whether it was cancelled."""
    try:
        time.sleep(30)
    except BaseException:  # (the cancel's interrupt)
        return mpray.get_runtime_context().is_canceled()
    return "slept"


@mpray.remote
def not_cancelled():
    return mpray.get_runtime_context().is_canceled()


def test_is_canceled_tells_a_task_it_was_cancelled(ray_start):
    assert mpray.get(not_cancelled.remote(), timeout=30) is False
    ref = notices_its_cancel.remote()
    time.sleep(0.5)
    mpray.cancel(ref)
    assert mpray.get(ref, timeout=30) is True  # it caught the interrupt and returned
    with pytest.raises(RuntimeError, match="driver"):
        mpray.get_runtime_context().is_canceled()


def test_a_child_forked_by_the_node_gets_sigterm_only_once_it_releases_it():
    """fork_held(): a SIGTERM sent to a child the node just forked waits until the child
    is set up (it would otherwise fire the node's SystemExit handler anywhere, even in the
    interpreter's at-fork hooks); the parent's own mask is left as it was."""
    from mpray.procs import fork_held, release_term

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    r, w = os.pipe()
    pid = fork_held()
    if pid == 0:  # the child: blocked until released, then the signal ends it
        code = 3
        try:
            os.close(r)
            blocked = signal.SIGTERM in signal.pthread_sigmask(signal.SIG_BLOCK, [])
            os.kill(os.getpid(), signal.SIGTERM)  # (pending: not delivered yet)
            os.write(w, b"y" if blocked else b"n")
            release_term()  # delivered now: the default action ends the process
            code = 4  # (not reached)
        finally:
            os._exit(code)
    os.close(w)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"y"  # it was still blocked in the child, and it lived on
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


NODE_DIES = r"""
import json, os, signal, sys, time
import psutil
import mpray
from mpray import exceptions as exc
shm0 = set(os.listdir("/dev/shm"))
mpray.init(num_cpus=2, object_store_memory=32 << 20,
           object_spilling_directory=os.environ["SPILL_TO"])
import numpy as np
from mpray import _global
sd = _global.session.session_dir
spill = _global.session.setup.spill_dir
held = [mpray.put(np.full(1 << 19, i)) for i in range(24)]  # 3x the store: spilled
assert os.listdir(spill)
@mpray.remote
def f(i):
    return i
@mpray.remote
def slow():
    time.sleep(60)
@mpray.remote
class A:
    def pid(self):
        return os.getpid()
a = A.remote()
assert mpray.get([f.remote(i) for i in range(20)]) == list(range(20))
mpray.get(a.pid.remote())
running = slow.remote()
time.sleep(0.3)
node = psutil.Process(_global.session.node_pid)
pids = [node.pid] + [p.pid for p in node.children(recursive=True)]
os.kill(node.pid, signal.SIGKILL)
out = {"pids": pids, "session_dir": sd}
for what, get in (("running", lambda: mpray.get(running, timeout=20)),
                  ("new", lambda: mpray.get(f.remote(1), timeout=20)),
                  ("actor", lambda: mpray.get(a.pid.remote(), timeout=20))):
    t = time.monotonic()
    try:
        get()
        out[what] = ["returned", 0]
    except Exception as e:
        out[what] = [type(e).__name__, time.monotonic() - t, str(e)]
def alive(p):
    try:
        return psutil.Process(p).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
t = time.monotonic()
while time.monotonic() - t < 1.0 and any(alive(p) for p in pids):
    time.sleep(0.02)
out["alive_after_1s"] = [p for p in pids if alive(p)]
mpray.shutdown()
# (only names that look like the engine's: other programs may use /dev/shm meanwhile)
out["shm_left"] = sorted(n for n in set(os.listdir("/dev/shm")) - shm0 if "mpray" in n.lower())
out["spill_left"] = os.path.exists(spill)
mpray.init(num_cpus=2)
out["again"] = mpray.get(f.remote(7))
mpray.shutdown()
print(json.dumps(out))
"""


def test_a_killed_node_fails_every_waiter_at_once_and_leaves_nothing_running(tmp_path):
    """The node process SIGKILLed (the OOM killer's usual choice): its workers and actor
    die with it within a second, every waiter gets RaySystemError at once, nothing is
    left in /dev/shm or in the spill directory, the session directory is ended like any other (logs and the store
    kept), and init() works again."""
    env = dict(os.environ, MPRAY_LOG_DIR=str(tmp_path), SPILL_TO=str(tmp_path))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", NODE_DIES], capture_output=True, text=True,
                       env=env, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    try:
        for what in ("running", "new", "actor"):
            name, waited = out[what][:2]
            assert name == "RaySystemError", (what, out[what])
            assert waited < 2.0, (what, out[what])
            assert "node process" in out[what][2] and "died" in out[what][2], out[what]
        assert out["alive_after_1s"] == [], out["alive_after_1s"]
        assert out["shm_left"] == []
        assert not out["spill_left"], "the killed node's spill files were left"
        assert out["again"] == 7
        assert wait_for(lambda: session_finished(out["session_dir"]), 5), \
            sorted(os.listdir(out["session_dir"]))
        assert os.path.isdir(os.path.join(out["session_dir"], "logs"))
    finally:
        for p in out["pids"]:  # (never leave one behind, even on failure)
            if not _dead(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
