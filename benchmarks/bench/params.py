"""Parameters and the figure table, shared by the parent and the workers."""

from __future__ import annotations

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

ALL_PEERS = ("mpray", "mpray-nostore", "mpray-bare", "pool", "futures", "ray")
RAY_API_PEERS = ("mpray", "ray")
# mpray run with other settings (the control store off: what recording costs;
# and the store and the driver's log printing off: what observing costs in all)
PEER_ENV = {"mpray-nostore": {"MPRAY_CONTROL_STORE": "0"},
            "mpray-bare": {"MPRAY_CONTROL_STORE": "0", "MPRAY_LOG_TO_DRIVER": "0"}}

# Memory needed before the 1 GiB figures are attempted.
BIG_MEM_NEEDED = 6 * GiB

# Which figure keys each group produces (to mark skips/errors per key).
GROUP_KEYS = {
    "init_shutdown": ["init_s", "init_first_s", "shutdown_s"],
    "idle_memory": ["idle_pss_mib", "idle_nprocs", "idle_cpu_pct"],
    "nested_rate": ["nested_rate"],
    "small_put_get": ["put_small_rate", "get_small_rate"],
    "mid_put_get": ["put_mid_first_gbs", "put_mid_reuse_gbs", "get_mid_ms",
                    "get_readonly"],
    "big_put_get": ["put_big_first_gbs", "put_big_reuse_gbs", "get_big_ms",
                    "get_big_readonly"],
}


def group_of(name: str) -> str:
    """The group a figure key belongs to (a group's own name stays as it is)."""
    for group, keys in GROUP_KEYS.items():
        if name in keys:
            return group
    return name


def only_groups(spec) -> list[str]:
    """``--only``: groups, or figure keys standing for their groups."""
    names = [group_of(g.strip()) for g in (spec or "").split(",") if g.strip()]
    return list(dict.fromkeys(names))


def params(args) -> dict:
    quick = args.quick
    n = args.n or (2000 if quick else 10000)
    return {
        "quick": quick,
        "repeat": args.repeat,
        "n": n,
        # ray.wait / futures.wait scan the whole pending list on every call,
        # so the wait loop is O(N^2): it uses a smaller N by default.
        "wait_n": args.wait_n or max(1, n // 5),
        "rtt_loops": 200 if quick else 1000,
        "nested_n": 100,
        "mid_bytes": 100 * MiB,
        "big_bytes": GiB,
        "big": (not quick) and not args.no_big,
        "nn_calls": 500 if quick else 2000,
        "actors_n": 20 if quick else 50,
        "figure_timeout": args.figure_timeout,
        "only": only_groups(args.only),
    }


def figures(p: dict) -> list[dict]:
    """Rows of the table: key, label, unit, which direction is better."""
    n, wn = p["n"], p["wait_n"]
    rows = [
        ("init_s", "init", "s", "lower"),
        ("init_first_s", "init + first task done", "s", "lower"),
        ("shutdown_s", "shutdown", "s", "lower"),
        ("idle_pss_mib", "idle PSS, driver + descendants", "MiB", "lower"),
        ("idle_cpu_pct", "idle CPU, driver + descendants", "% core", "lower"),
        ("idle_nprocs", "  processes counted for idle PSS", "procs", None),
        ("noop_rtt_us", "no-op task round trip", "us", "lower"),
        ("submit_get_rate", f"submit {n} no-ops, then get all", "tasks/s", "higher"),
        ("nested_rate", f"nested: task submits+gets {p['nested_n']} no-ops",
         "tasks/s", "higher"),
        ("wait_rate", f"wait(num_returns=1) loop over {wn} tasks", "waits/s",
         "higher"),
        ("generator_rate", f"streaming generator: {n} values, each ref got", "items/s",
         "higher"),
        ("put_small_rate", f"put small int x{n}", "puts/s", "higher"),
        ("get_small_rate", f"get small object x{n}", "gets/s", "higher"),
        ("put_mid_first_gbs", "put 100 MiB ndarray, fresh space", "GB/s", "higher"),
        ("put_mid_reuse_gbs", "put 100 MiB ndarray, reused space", "GB/s",
         "higher"),
        ("get_mid_ms", "get 100 MiB ndarray", "ms", "lower"),
        ("put_big_first_gbs", "put 1 GiB ndarray, fresh space", "GB/s", "higher"),
        ("put_big_reuse_gbs", "put 1 GiB ndarray, reused space", "GB/s", "higher"),
        ("get_big_ms", "get 1 GiB ndarray", "ms", "lower"),
        ("get_readonly", "got 100 MiB ndarray is read-only", "check", None),
        ("get_big_readonly", "got 1 GiB ndarray is read-only", "check", None),
        ("arg_mid_ms", "task(100 MiB ndarray arg) -> sum", "ms", "lower"),
        ("ret_mid_ms", "task returns 100 MiB ndarray, get", "ms", "lower"),
        ("actor_rtt_us", "actor call round trip", "us", "lower"),
        ("actor_async_rate", f"actor: submit {n} calls, then get all", "calls/s",
         "higher"),
        ("actor_nn_rate", f"n:n actor calls (2 callers x 2 actors, {p['nn_calls']} each)",
         "calls/s", "higher"),
        ("actor_create_rate", f"create {p['actors_n']} actors, each answers once",
         "actors/s", "higher"),
        ("actor_arg_mid_ms", "actor method(ref to 100 MiB ndarray) -> sum", "ms",
         "lower"),
    ]
    return [dict(key=k, label=lab, unit=u, better=b) for k, lab, u, b in rows]
