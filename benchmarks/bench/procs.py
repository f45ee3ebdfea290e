"""Process-tree helpers: memory and CPU of this process and its descendants,
and killing a timed-out worker's tree, or what it left behind (by PID, nothing
else).  Used by compare.py and by ray_microbenchmark.py (``rmb.side``)."""

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


def note_descendants(pid, seen: dict) -> None:
    """Add the processes now descending from ``pid`` to ``seen`` ({PID:
    psutil.Process}), so that they can still be found once they have been
    re-parented (a daemon whose parent died)."""
    for pr in _descendants(pid):
        seen.setdefault(pr.pid, pr)


def kill_tree(proc, known=()):
    """Kill a timed-out worker and everything it started, by PID: its
    descendants now, and the ``known`` psutil.Process objects seen earlier
    (``note_descendants``).  A process is killed only while it is still the
    one that was seen (same PID and start time)."""
    import psutil

    kids = {pr.pid: pr for pr in known}
    for pr in _descendants(proc.pid):  # snapshot before the parent dies
        kids[pr.pid] = pr
    try:
        proc.kill()
    except OSError:
        pass
    for pr in kids.values():
        try:
            if pr.is_running():
                pr.kill()
        except psutil.Error:
            pass
    proc.wait()
    psutil.wait_procs(list(kids.values()), timeout=10)


def _alive(pr) -> bool:
    import psutil

    try:
        return pr.is_running() and pr.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def reap_leftovers(known, grace=15.0) -> list[str]:
    """After a worker exited: the ``known`` processes it started that are still
    alive get ``grace`` seconds, then are killed (by PID); returns them as
    ``"PID command line"``."""
    import psutil

    alive = [pr for pr in known if _alive(pr)]
    if not alive:
        return []
    _gone, alive = psutil.wait_procs(alive, timeout=grace)
    out = []
    for pr in alive:
        try:
            desc = f"{pr.pid} {' '.join(pr.cmdline())[:80]}"
            pr.kill()
            out.append(desc)
        except psutil.Error:
            pass
    return out
