"""Process-tree helpers: memory and CPU of this process and its descendants,
and killing a timed-out worker's tree (by PID, nothing else)."""

from __future__ import annotations


def _tree():
    import psutil

    me = psutil.Process()
    return [me] + me.children(recursive=True)


def tree_pss():
    """(PSS bytes, processes counted) of this process and every descendant."""
    import psutil

    total, n = 0, 0
    for pr in _tree():
        try:
            total += pr.memory_full_info().pss
            n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total, n


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and every descendant."""
    import psutil

    total = 0.0
    for pr in _tree():
        try:
            t = pr.cpu_times()
            total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _descendants(pid):
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # noqa: BLE001
        return []


def kill_tree(proc):
    """Kill a timed-out worker and everything it started, by PID."""
    import psutil

    kids = _descendants(proc.pid)  # snapshot before the parent dies
    try:
        proc.kill()
    except OSError:
        pass
    for pr in kids:
        try:
            pr.kill()
        except psutil.Error:
            pass
    proc.wait()
    psutil.wait_procs(kids, timeout=10)
