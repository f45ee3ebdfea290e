"""``mpray.util.progress``: a tqdm bar over many ObjectRefs, as Dask's
``distributed.progress``: it blocks, the bar moving as the refs' tasks end.

Data flow::

    progress(refs) ─ wait(remaining, num_returns=all, timeout=tick) ─▶ (ready, remaining)
        ready ─ the owner's cache says which hold an error ─▶ bar.update(len(ready)),
                "failed=N" in the bar's postfix
        loop until remaining is empty (returns the failed refs) or the timeout passes
        (GetTimeoutError); the bar is closed either way

A wait returns when every ref is done or after ``tick`` (0.1 s, tqdm's own refresh
interval): the bar moves at that pace, and the driver sleeps meanwhile.  Each wait
looks at every remaining ref, so for very long lists the tick grows with what a wait
costs (it spends at most ~10% of the time looking).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from .. import _global
from ..api import wait
from ..exceptions import GetTimeoutError
from ..object_ref import ObjectRef
from ..store.serialization import ERROR

__all__ = ["progress"]

MIN_TICK_S = 0.1  # (tqdm's mininterval: a faster bar would not be drawn anyway)
MAX_TICK_S = 1.0


def progress(refs: ObjectRef | Iterable[ObjectRef], *, desc: str | None = None,
             timeout: float | None = None, file: Any = None, unit: str = "task",
             leave: bool = True, **tqdm_kwargs) -> list[ObjectRef]:
    """Block until every ref's task has ended, drawing a ``tqdm`` bar of how many have.

    ``refs``: one ObjectRef or an iterable of them (one bar step each; a ref given
    twice counts once).  A failed task counts as done; the bar's postfix says how many
    failed.  ``timeout`` (seconds): raise ``GetTimeoutError`` if they are not all done
    by then.  ``file``, ``unit``, ``leave`` and other keyword arguments go to
    ``tqdm.tqdm``.  Returns the refs whose tasks failed, in the input's order (their
    ``get`` raises); nothing is fetched."""
    refs = _as_refs(refs)
    if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
        raise ValueError(f"timeout must be None or a number >= 0, not {timeout!r}")
    from tqdm import tqdm  # (deferred: ~25 ms to import, only when a bar is drawn)

    bar = tqdm(total=len(refs), desc=desc, file=file, unit=unit, leave=leave,
               **tqdm_kwargs)
    try:
        failed = _follow(refs, bar, timeout)
    finally:
        bar.close()
    return [r for r in refs if r in failed] if failed else []


def _as_refs(refs: Any) -> list[ObjectRef]:
    """The refs as a list without repeats (wait() wants them unique); TypeError for
    anything else."""
    if type(refs) is ObjectRef:
        return [refs]
    if isinstance(refs, (str, bytes)) or not hasattr(refs, "__iter__"):
        raise TypeError(f"progress() expects an ObjectRef or an iterable of ObjectRefs, "
                        f"not {type(refs).__name__}")
    out = list(refs)
    for r in out:
        if type(r) is not ObjectRef:
            raise TypeError(f"progress() expects ObjectRefs; got a {type(r).__name__}")
    return list(dict.fromkeys(out))


def _follow(refs: list[ObjectRef], bar, timeout: float | None) -> set[ObjectRef]:
    """Advance ``bar`` as ``refs`` end; the set of those that failed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    remaining, failed, tick = refs, set(), MIN_TICK_S
    while remaining:
        wait_s = tick if deadline is None else max(0.0, min(tick, deadline - time.monotonic()))
        t0 = time.monotonic()
        ready, remaining = wait(remaining, num_returns=len(remaining), timeout=wait_s,
                                fetch_local=False)
        if ready:
            bad = [r for r in ready if _failed(r)]
            if bad:
                failed.update(bad)
                bar.set_postfix(failed=len(failed), refresh=False)
            bar.update(len(ready))
        if not remaining:
            break
        if deadline is not None and time.monotonic() >= deadline:
            raise GetTimeoutError(f"progress() timed out after {timeout} s: {len(remaining)} "
                                  f"of {len(refs)} tasks not done")
        # what the wait spent beyond its timeout is the cost of looking at the refs
        spent = max(0.0, time.monotonic() - t0 - wait_s)
        tick = min(MAX_TICK_S, max(MIN_TICK_S, 10 * spent))
    return failed


def _failed(ref: ObjectRef) -> bool:
    """The ready ref holds its task's error: read from the owner's cache of values (as
    generator.py does), so that no value is deserialized only to be counted."""
    value = _global.client._values.get(ref.id)
    return value is not None and value[0] == ERROR
