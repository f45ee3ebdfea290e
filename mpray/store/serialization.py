"""Values ⇄ bytes: pickle protocol 5 with out-of-band buffers, and the arena layout.

Data flow::

    put / task result                                   get / task argument
    value ─ pickle(protocol 5, buffer_callback) ─▶ header + [PickleBuffer …]
        small (≤ inline_max)  ─▶ INLINE payload: bytes (in-band pickle) ─▶ pickle.loads
        large                 ─▶ ARENA: [header | pad | buf0 | pad | buf1 …] at an offset
                                  descriptor (offset, header_len, ((rel, n), …))
                                  ─▶ pickle.loads(header, buffers=read-only views)

Plain ``pickle`` is tried first (≈1 µs for a small spec); ``cloudpickle`` only when pickle
refuses (lambdas, closures, classes defined in ``__main__``…).  Every ``ObjectRef``
pickled while a value is serialised is recorded, so the node can keep the objects it
refers to alive for as long as the containing value lives.
"""

from __future__ import annotations

import collections
import io
import pickle
import threading
import types
from typing import Any

import cloudpickle

from .allocator import align_up

INLINE = 0  # payload: bytes of an in-band pickle
ARENA = 1  # payload: (offset, header_len, ((rel_offset, nbytes), ...), total)
ERROR = 2  # payload: bytes of a pickled exception to raise at get()

_tls = threading.local()


def collecting() -> list | None:
    """The list ObjectRef.__reduce__ appends to while a value is serialised, if any."""
    return getattr(_tls, "refs", None)


# A pickle that names the script's module refers to a function or class of the user's
# script by name; one defined after the workers were forked does not exist there, so
# such values go by value (cloudpickle), as Ray sends them.  A search of the bytes costs
# tens of nanoseconds; a false match only costs a cloudpickle.
_MAIN = b"__main__"


def _code_with_file(args: tuple, filename: str) -> types.CodeType:
    return types.CodeType(*args).replace(co_filename=filename)


def _code_reduce(code: types.CodeType):
    # cloudpickle names every code object it sends by value "<dynamic-code>" (for a
    # deterministic payload); remote tracebacks should show the user's file and lines,
    # for helper functions and nested tasks too, so the name travels along
    _cls, args = cloudpickle.cloudpickle._code_reduce(code)
    return _code_with_file, (args, code.co_filename)


class _Pickler(cloudpickle.Pickler):
    dispatch_table = collections.ChainMap({types.CodeType: _code_reduce},
                                          cloudpickle.Pickler.dispatch_table)


def cloud_dumps(value: Any, buffer_callback=None) -> bytes:
    """cloudpickle (protocol 5), keeping code objects' file names."""
    f = io.BytesIO()
    _Pickler(f, protocol=5, buffer_callback=buffer_callback).dump(value)
    return f.getvalue()


def dumps_plain(value: Any) -> bytes:
    """In-band pickle; cloudpickle for what plain pickle cannot do or would send by
    name from the script.  Raises TypeError naming the problem."""
    try:
        data = pickle.dumps(value, protocol=5)
        if _MAIN not in data:
            return data
    except Exception:
        pass
    try:
        return cloud_dumps(value)
    except Exception as e:  # noqa: BLE001 - reported with the type that failed
        raise TypeError(f"cannot serialize {type(value).__name__} object: {e}") from e


# a call's arguments when it has none: the submitter sends these bytes, and a worker that
# sees them skips unpickling (200 ns a call)
NO_ARGS = dumps_plain(([], {}))
NONE = pickle.dumps(None, protocol=5)  # a call's result when it returned None

# values that can hold neither an ObjectRef nor an out-of-band buffer: pickled as they
# are (a task that returns None or a number skips the buffer and ref bookkeeping)
_SCALARS = frozenset({type(None), bool, int, float, str})


def serialize(value: Any, inline_max: int) -> tuple[int, Any, list[int], int]:
    """Return (kind, payload_or_parts, contained_ref_ids, nbytes).

    For INLINE, payload is bytes.  For a large value, kind is ARENA and payload is
    ``(header, buffers)`` still to be written by ``write_arena``.
    """
    if type(value) in _SCALARS:
        data = pickle.dumps(value, protocol=5)
        if len(data) <= inline_max:
            return INLINE, data, [], len(data)
    prev = getattr(_tls, "refs", None)
    refs: list[int] = []
    _tls.refs = refs
    try:
        bufs: list[pickle.PickleBuffer] = []
        try:
            header = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
            by_value = _MAIN in header
        except Exception:
            by_value = True
        if by_value:
            bufs.clear()
            refs.clear()
            try:
                header = cloud_dumps(value, buffer_callback=bufs.append)
            except Exception as e:  # noqa: BLE001
                raise TypeError(
                    f"cannot serialize {type(value).__name__} object: {type(e).__name__}: {e}"
                ) from e
    finally:
        _tls.refs = prev
    if not bufs:
        if len(header) <= inline_max:
            return INLINE, header, refs, len(header)
        return ARENA, (header, []), refs, len(header)
    raws = [b.raw() for b in bufs]
    nbytes = len(header) + sum(r.nbytes for r in raws)
    if nbytes <= inline_max:
        # small arrays: keep them in-band so the message stays one bytes object
        _tls.refs = []
        try:
            data = dumps_plain(value)
        finally:
            _tls.refs = prev
        return INLINE, data, refs, len(data)
    return ARENA, (header, raws), refs, nbytes


def arena_layout(header: bytes, raws: list) -> tuple[int, tuple]:
    """Total bytes and buffer placement (64-byte aligned) for an ARENA value."""
    pos = align_up(len(header))
    places = []
    for r in raws:
        places.append((pos, r.nbytes))
        pos = align_up(pos + r.nbytes)
    return max(pos, 1), tuple(places)


def write_arena(arena_mv: memoryview, offset: int, header: bytes, raws: list, places) -> None:
    arena_mv[offset : offset + len(header)] = header
    for (rel, n), r in zip(places, raws):
        if n:
            arena_mv[offset + rel : offset + rel + n] = r  # PickleBuffer.raw(): bytes


def loads_arena(base, desc) -> Any:
    """Deserialize from ``base``: a read-only uint8 ndarray over the object's range."""
    _offset, hlen, places, _total = desc
    header = base[:hlen].tobytes() if hlen else b""
    return pickle.loads(header, buffers=[base[rel : rel + n] for rel, n in places])
