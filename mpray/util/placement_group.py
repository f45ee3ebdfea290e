"""Placement groups, mirroring ``ray.util.placement_group``: reserve bundles of resources
as a unit and run tasks and actors in them.

Data flow::

    placement_group(bundles, strategy) ─PgOp('create')─▶ node ─▶ rank 0's registry
        (answered at once: ok, or the name is taken); the group is placed and reserved
        in the background (node/placement_groups.py)
    pg.ready() ─PgOp('ready', oid)─▶ this process's node seals oid with the group once
        the group exists (Ray runs a task in the group for that; the node knows)
    f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i)).remote()
        ─▶ asks for bundle i's resources (placement.pg_resources) ─▶ runs where it is
    remove_placement_group(pg) ─PgOp('remove')─▶ bundles freed, tasks in them fail with
        TaskPlacementGroupRemoved, actors in them are killed (an unnamed creation and a
        removal are not answered: the node handles them, in order, before whatever this
        process asks next)

Under MPI a bundle is placed on a rank: ``STRICT_SPREAD`` gives one bundle per rank.
"""

from __future__ import annotations

import numbers
from typing import Any

from .. import _global
from .. import protocol as P
from ..api import wait
from ..object_ref import ObjectRef
from ..placement import PG_STRATEGIES
from ..session import auto_init
from ..store.serialization import dumps_plain

__all__ = ["PlacementGroup", "placement_group", "remove_placement_group",
           "get_placement_group", "placement_group_table", "get_current_placement_group"]


class PlacementGroupID:
    """A placement group's id (``hex()`` as Ray's)."""

    __slots__ = ("_hex",)

    def __init__(self, hexid: str) -> None:
        self._hex = hexid

    def hex(self) -> str:
        return self._hex

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroupID) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self._hex})"

    def __reduce__(self):
        return (PlacementGroupID, (self._hex,))


class PlacementGroup:
    """A handle to a placement group (picklable: pass it to tasks and actors)."""

    def __init__(self, id: PlacementGroupID, bundle_specs: list | None = None,
                 strategy: str = "PACK") -> None:
        self.id = id
        self.bundle_specs = [dict(b) for b in bundle_specs or ()]
        self.strategy = strategy

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def ready(self) -> ObjectRef:
        """An ``ObjectRef`` that resolves (to this group) once the group is created: use
        it with ``get`` or ``wait``.  (Ray runs a task in the group for it; here the
        node seals the object when it learns the group exists.)"""
        client = _client()
        oid = client.new_ids(1) + 1  # (an id of its own, as a task's return)
        ref = ObjectRef(oid, owned=True)
        client.send([P.PgOp(None, ("ready", self.id.hex(), oid, dumps_plain(self)))])
        return ref

    def wait(self, timeout_seconds: float | int = 30) -> bool:
        """Wait until the group is created; False if ``timeout_seconds`` passed first."""
        done, _ = wait([self.ready()], timeout=timeout_seconds)
        return bool(done)

    def __eq__(self, other) -> bool:
        return isinstance(other, PlacementGroup) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup(id={self.id.hex()}, bundles={self.bundle_specs})"


def _client():
    return _global.client or auto_init()


def _request(op: tuple):
    return _client().request(lambda req: P.PgOp(req, op), timeout=None).data


def _tell(op: tuple) -> None:
    """A request with nothing to answer: the node handles it before anything this
    process sends after it."""
    _client().send([P.PgOp(None, op)])


def _namespace() -> str:
    return _global.node_info.get("namespace") or ""


def _check_bundles(bundles: Any) -> list[dict]:
    if not isinstance(bundles, (list, tuple)) or not bundles:
        raise ValueError("The placement group `bundles` argument must be a non-empty list "
                         f"of resource dicts, not {bundles!r}")
    out = []
    for b in bundles:
        if not isinstance(b, dict) or not b:
            raise ValueError(f"Bundles must be non-empty dicts of resources, not {b!r}")
        for k, v in b.items():
            if not isinstance(k, str):
                raise TypeError(f"bundle resource names must be strings, not {k!r}")
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 0:
                raise ValueError(f"bundle resource {k!r} must be a number >= 0, not {v!r}")
        if not any(b.values()):
            raise ValueError("Bundles cannot be an empty dictionary or resources with only "
                             f"0 values. Bundles: {bundles}")
        gpus = b.get("GPU", 0)
        if gpus != int(gpus):
            raise ValueError(f"mpray reserves whole GPUs in a bundle, not {gpus!r} "
                             "(tasks in the bundle may still ask for a fraction)")
        out.append({k: float(v) for k, v in b.items() if v})
    return out


def placement_group(bundles: list[dict[str, float]], strategy: str = "PACK",
                    name: str = "", lifetime: str | None = None,
                    _soft_target_node_id: str | None = None,
                    bundle_label_selector: list | None = None) -> PlacementGroup:
    """Reserve ``bundles`` (resource dicts) as a unit, placed by ``strategy`` (``PACK``,
    ``SPREAD``, ``STRICT_PACK``, ``STRICT_SPREAD``; under MPI each rank is a node).
    Returns at once; ``pg.ready()`` / ``pg.wait()`` tell when the group exists.  A group
    that no node can hold stays pending, with a warning, as in Ray."""
    specs = _check_bundles(bundles)
    if strategy not in PG_STRATEGIES:
        raise ValueError(f"Invalid placement group strategy {strategy!r}; it must be one "
                         f"of {PG_STRATEGIES}")
    if not isinstance(name, str):
        raise TypeError(f"placement group name must be a string, not {name!r}")
    if lifetime not in (None, "detached"):
        raise ValueError("placement group `lifetime` argument must be either `None` or "
                         f"'detached', not {lifetime!r}")
    if _soft_target_node_id is not None or bundle_label_selector is not None:
        raise NotImplementedError("mpray does not support _soft_target_node_id or "
                                  "bundle_label_selector for placement groups")
    pg = PlacementGroup(PlacementGroupID(P.id_hex(_client().new_ids(0))), specs, strategy)
    op = ("create", pg.id.hex(), specs, strategy, name, _namespace())
    if not name:  # (nothing can go wrong there now: no need to wait for the node)
        _tell(op)
        return pg
    answer = _request(op)
    if answer[0] == "error":
        raise ValueError(answer[1])
    return pg


def remove_placement_group(placement_group: PlacementGroup) -> None:
    """Remove the group: its bundles are freed, tasks running in it fail with
    ``TaskPlacementGroupRemoved`` and its actors are killed."""
    if not isinstance(placement_group, PlacementGroup):
        raise TypeError(f"remove_placement_group takes a PlacementGroup, not "
                        f"{placement_group!r}")
    _tell(("remove", placement_group.id.hex()))


def get_placement_group(placement_group_name: str) -> PlacementGroup:
    """The live group of that name in this namespace (``ValueError`` if none)."""
    found = _request(("named", _namespace(), placement_group_name))
    if found is None:
        raise ValueError(f"Failed to look up placement group with name: "
                         f"{placement_group_name}")
    key, bundles, strategy, _name = found
    return PlacementGroup(PlacementGroupID(key), bundles, strategy)


def placement_group_table(placement_group: PlacementGroup | None = None) -> dict:
    """State of every group (or of one): id, name, bundles, the node of each bundle,
    strategy and state (``PENDING``, ``PREPARED``, ``CREATED``, ``REMOVED``)."""
    key = placement_group.id.hex() if placement_group is not None else None
    table = _request(("table", key))
    return table.get(key, {}) if key is not None else table


def get_current_placement_group() -> PlacementGroup | None:
    """The placement group the running task or actor runs in (None in the driver and
    outside groups), as Ray's; its child tasks and actors go there too when it was
    started with ``placement_group_capture_child_tasks=True``."""
    strategy = _global.current_pg
    return None if strategy is None else strategy.placement_group
