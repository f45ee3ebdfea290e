"""What the node's scheduler and the owners share about where work should run.

A function's mean run time (``running_mean``) decides whether its tasks are worth moving
to another rank (``SPILL_MIN_TASK_S``): the node places them there, and an owner sends
such tasks the node's way instead of to its leases.

The scheduling strategies (``mpray.util.scheduling_strategies`` re-exports them, Ray's
path) are checked at ``.options()``; a hard node affinity to a node that does not exist
fails clearly at the node.  A placement group's tasks ask for the resources its bundles
reserved (``pg_resources``), under names of their own, so the node's resource books keep
them apart::

    .options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i))
        {CPU: 1} ─▶ {CPU_group_<i>_<pg>: 1, CPU_group_<pg>: 1, bundle_group_…: 0.001}
        ─▶ the node queues it by that shape; it runs where bundle i is, once it exists
"""

from __future__ import annotations

from dataclasses import dataclass

SPILL_MIN_TASK_S = 0.002  # moving a task to another rank costs about this much


def running_mean(n: int, mean: float, x: float, weight: float) -> float:
    """Mean task time after its ``n``-th sample ``x``: a plain mean of the first samples
    (one slow start does not decide), then a moving mean with ``x`` weighted ``weight``."""
    return mean + max(1.0 / n, weight) * (x - mean)


@dataclass(frozen=True)
class NodeAffinitySchedulingStrategy:
    node_id: str
    soft: bool
    _spill_on_unavailable: bool = False
    _fail_on_unavailable: bool = False

    def __init__(self, node_id: str, soft: bool, _spill_on_unavailable: bool = False,
                 _fail_on_unavailable: bool = False) -> None:
        if not isinstance(node_id, str):
            raise TypeError(f"node_id must be a hex string, not {type(node_id).__name__}")
        object.__setattr__(self, "node_id", node_id)
        object.__setattr__(self, "soft", bool(soft))
        object.__setattr__(self, "_spill_on_unavailable", _spill_on_unavailable)
        object.__setattr__(self, "_fail_on_unavailable", _fail_on_unavailable)


@dataclass(frozen=True)
class PlacementGroupSchedulingStrategy:
    """Run in a placement group's bundle ``placement_group_bundle_index`` (-1: any of
    its bundles) on the resources the group reserved there."""
    placement_group: object
    placement_group_bundle_index: int = -1
    placement_group_capture_child_tasks: bool | None = None


STRATEGIES = ("DEFAULT", "SPREAD")
BUNDLE_MARK = 0.001  # a task's share of its bundle's marker resource (1000 per bundle)


def check_strategy(s) -> None:
    if s is None or isinstance(s, NodeAffinitySchedulingStrategy):
        return
    if isinstance(s, str) and s in STRATEGIES:
        return
    if isinstance(s, PlacementGroupSchedulingStrategy):
        _check_pg_strategy(s)
        return
    raise ValueError(
        f"scheduling_strategy must be one of {STRATEGIES}, a NodeAffinitySchedulingStrategy "
        f"or a PlacementGroupSchedulingStrategy, not {s!r}"
    )


def _check_pg_strategy(s: PlacementGroupSchedulingStrategy) -> None:
    pg, index = s.placement_group, s.placement_group_bundle_index
    if not hasattr(pg, "bundle_specs"):
        raise TypeError("PlacementGroupSchedulingStrategy needs a PlacementGroup made by "
                        f"mpray.util.placement_group(), not {pg!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not (
            -1 <= index < len(pg.bundle_specs)):
        raise ValueError(f"placement_group_bundle_index {index!r} is out of range: the "
                         f"group has {len(pg.bundle_specs)} bundles (-1: any of them)")


def pg_of(strategy) -> str | None:
    """The hex id of the placement group a strategy names (None: no group)."""
    pg = getattr(strategy, "placement_group", None)
    return pg.id.hex() if pg is not None else None


def pg_resources(res: tuple, strategy) -> tuple:
    """A task's resource shape inside a placement group (Ray's naming): each resource
    ``R`` becomes the bundle's ``R_group_<i>_<id>`` and the group's ``R_group_<id>``
    (only the latter for any bundle), plus a share of the bundle's marker, so a task
    that asks for no resources still runs where its bundle is, once it exists."""
    hexid = pg_of(strategy)
    if hexid is None:
        return res
    i = strategy.placement_group_bundle_index
    # a task in bundle i also takes its share of the group's pool here, so that tasks
    # of "any bundle" never use what bundle i's tasks hold (Ray asks for both too)
    suffixes = [f"_group_{hexid}"] + ([f"_group_{i}_{hexid}"] if i >= 0 else [])
    out = [(f"{name}{sfx}", amount) for name, amount in [*res, ("bundle", BUNDLE_MARK)]
           if amount for sfx in suffixes]
    return tuple(sorted(out))


PG_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def place_bundles(bundles: list, strategy: str, caps: list, first: int = 0) -> list | None:
    """The rank of each bundle of a placement group, or None when the capacity per rank
    (``caps``: {resource: amount} each) cannot take them.  PACK puts them on one rank if
    one fits them all (the creator's first), else fills ranks in turn; SPREAD puts each
    on the rank with the fewest so far; the STRICT kinds refuse rather than bend."""
    n = len(caps)
    order = [(first + k) % n for k in range(n)]
    caps = [dict(c) for c in caps]

    def fits(r: int, b: dict) -> bool:
        return all(caps[r].get(k, 0.0) >= v - 1e-9 for k, v in b.items() if v)

    if strategy in ("PACK", "STRICT_PACK"):
        whole: dict[str, float] = {}
        for b in bundles:
            for k, v in b.items():
                whole[k] = whole.get(k, 0.0) + v
        r = next((r for r in order if fits(r, whole)), None)
        if r is not None:
            return [r] * len(bundles)
        if strategy == "STRICT_PACK":
            return None
    used = [0] * n
    out = []
    for b in bundles:
        cands = [r for r in order if fits(r, b)
                 and not (strategy == "STRICT_SPREAD" and used[r])]
        if not cands:
            return None
        r = cands[0] if strategy == "PACK" else min(cands, key=used.__getitem__)
        for k, v in b.items():
            caps[r][k] = caps[r].get(k, 0.0) - v
        used[r] += 1
        out.append(r)
    return out
