"""Workers' output (issue 10): labelled lines on the driver, never two mixed, Ray's
deduplication, ``log_to_driver=False``, the log files and ``mpray logs``.  Each case
runs a driver script in a subprocess and reads what it printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.timeout(120)

PRELUDE = """
import os, sys, time
import mpray

@mpray.remote
def shout(tag, n, width):
    for i in range(n):
        print(tag * width)
    print("to stderr", tag, file=sys.stderr)
    return os.getpid()

@mpray.remote
def hello(i):
    time.sleep(0.2)  # (all four run at once: four workers)
    print("hello from a worker")
    return os.getpid()
"""


def _run(body: str, tmp_path, **env) -> subprocess.CompletedProcess:
    e = dict(os.environ, MPRAY_LOG_DIR=str(tmp_path), **env)
    e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
    r = subprocess.run([sys.executable, "-c", PRELUDE + body], env=e, capture_output=True,
                       text=True, timeout=90)
    assert r.returncode == 0, r.stderr
    return r


def test_lines_are_labelled_and_never_mixed(tmp_path):
    r = _run("""
mpray.init(num_cpus=2)
print("pids", mpray.get([shout.remote("A", 300, 150), shout.remote("B", 300, 150)]))
mpray.shutdown()
""", tmp_path)
    lines = [x for x in r.stdout.splitlines() if not x.startswith("pids")]
    pattern = re.compile(r"^\(shout pid=(\d+)\) (A{150}|B{150})$")
    bad = [x for x in lines if not pattern.match(x)]
    assert not bad, f"lines not whole or not labelled: {bad[:3]}"
    assert len(lines) == 600
    pids = {pattern.match(x).group(1) for x in lines}
    (returned,) = [x for x in r.stdout.splitlines() if x.startswith("pids")]
    assert pids == set(re.findall(r"\d+", returned))
    err = [x for x in r.stderr.splitlines() if "to stderr" in x]
    assert sorted(x.split(") ")[1] for x in err) == ["to stderr A", "to stderr B"]
    assert all(x.startswith("(shout pid=") for x in err)


@pytest.mark.parametrize("dedup", ["1", "0"])
def test_repeated_lines_are_folded_as_ray_does(tmp_path, dedup):
    r = _run("""
mpray.init(num_cpus=4)
print("pids", len(set(mpray.get([hello.remote(i) for i in range(4)]))))
mpray.shutdown()
""", tmp_path, MPRAY_DEDUP_LOGS=dedup)
    assert "pids 4" in r.stdout
    lines = [x for x in r.stdout.splitlines() if "hello from a worker" in x]
    if dedup == "1":
        assert len(lines) == 2, lines
        assert lines[1].endswith("hello from a worker [repeated 3x across cluster]")
    else:
        assert len(lines) == 4 and not any("repeated" in x for x in lines)


def test_log_to_driver_false_keeps_lines_in_files(tmp_path):
    r = _run("""
ctx = mpray.init(num_cpus=2, log_to_driver=False)
mpray.get(shout.remote("C", 3, 10))
mpray.shutdown()
print("session", ctx["session_dir"])
""", tmp_path)
    assert "CCCCCCCCCC" not in r.stdout and "to stderr" not in r.stderr
    session = r.stdout.split("session ")[1].strip()
    logs = os.path.join(session, "logs")
    text = "".join(open(os.path.join(logs, n)).read() for n in os.listdir(logs))
    assert text.count("CCCCCCCCCC") == 3 and "to stderr C" in text
    # ... and `mpray logs` shows them, labelled
    e = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "mpray.control.cli", "logs", "--session",
                          session], env=e, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(shout pid=") == 4 and "CCCCCCCCCC" in out.stdout


def test_mpray_logs_by_task(tmp_path):
    r = _run("""
ctx = mpray.init(num_cpus=1, log_to_driver=False)
a, b = shout.remote("D", 1, 5), shout.remote("E", 1, 5)
mpray.get([a, b])
mpray.shutdown()
print("session", ctx["session_dir"], a.task_id())
""", tmp_path)
    session, task = r.stdout.split("session ")[1].split()
    e = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-m", "mpray.control.cli", "logs", "--session",
                          session, "--task", task], env=e, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "DDDDD" in out.stdout and "EEEEE" not in out.stdout


def test_a_driver_whose_streams_are_not_its_fds_still_gets_the_lines(tmp_path):
    """A driver's sys.stdout that is no file on fd 1 (pytest's capture, Jupyter's kernel
    streams) is not what its workers print to: they print to their log files, and the
    driver prints their lines through its own streams."""
    r = _run("""
import io
sys.stdout, sys.stderr = io.StringIO(), io.StringIO()  # (as a notebook's, no fd)
mpray.init(num_cpus=1)
mpray.get(hello.remote(0))
mpray.shutdown()
out, err = sys.stdout.getvalue(), sys.stderr.getvalue()
sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
print("CAPTURED", repr(out))
""", tmp_path)
    (line,) = [x for x in r.stdout.splitlines() if x.startswith("CAPTURED")]
    assert re.search(r"\(hello pid=\d+\) hello from a worker", line), r.stdout
    assert "hello from a worker" not in r.stdout.replace(line, "")  # (not around it)
