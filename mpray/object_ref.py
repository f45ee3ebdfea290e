"""ObjectRef: a hashable, picklable handle to an immutable object in the store.

Creating one bumps this process's local count for its id; dropping the last one tells
the node (through the client) that this process no longer needs the object.  Pickling
one records its id with the serializer, so whatever contains it keeps it alive.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import _global
from .protocol import id_hex
from .store.serialization import collecting


class ObjectRef:
    __slots__ = ("id", "_tid", "__weakref__")

    def __init__(self, oid: int, owned: bool = False, tid: int | None = None) -> None:
        # tid: the task that makes it (None: a put); an actor call's is stored as ~tid
        # (negative), so that cancel(force=True) refuses it in any process (as Ray)
        self.id = oid
        self._tid = tid
        c = _global.client
        if c is not None:
            c.add_ref(oid, not owned)

    def __del__(self) -> None:
        c = _global.client
        if c is not None:
            try:
                c.remove_ref(self.id)
            except Exception:  # noqa: BLE001 - never raise from a finalizer
                pass

    def __reduce__(self):
        refs = collecting()
        if refs is not None:
            refs.append(self.id)
        return (_rebuild, (self.id, self._tid))

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: Any) -> bool:
        return type(other) is ObjectRef and other.id == self.id

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    def __lt__(self, other: "ObjectRef") -> bool:
        return self.id < other.id

    def __repr__(self) -> str:
        return f"ObjectRef({self.hex()})"

    def hex(self) -> str:
        return id_hex(self.id)

    def binary(self) -> bytes:
        return self.id.to_bytes(16, "big")

    def task_id(self) -> str | None:
        tid = self._tid  # (an actor call's is ~tid: see __init__)
        return None if tid is None else id_hex(tid if tid >= 0 else ~tid)

    def future(self):
        """A concurrent.futures.Future resolved with the object's value (or error)."""
        return _global.client_or_raise().future(self.id, self)

    def __await__(self):
        return asyncio.wrap_future(self.future()).__await__()

    def as_future(self):
        return asyncio.wrap_future(self.future())


_new = object.__new__


def owned_ref(counts: dict, oid: int, tid: int) -> ObjectRef:
    """``ObjectRef(oid, True, tid)`` with its count (the client's ``_refs``) taken here:
    the task path's form, one call instead of three (``__init__``, ``add_ref``)."""
    r = _new(ObjectRef)
    r.id = oid
    r._tid = tid
    counts[oid] = counts.get(oid, 0) + 1
    return r


def _rebuild(oid: int, tid: int | None) -> ObjectRef:
    return ObjectRef(oid, False, tid)
