"""Heterogeneous simulations: dynamic task scheduling against a bulk-synchronous loop.

The Ray paper's Table 4 (timesteps per second of Pendulum simulators): when simulation
steps take very different times, an MPI program that runs them in rounds -- every rank
one step, then a barrier -- waits each round for its slowest rank, while with Ray a
simulator is handed its next step the moment it finishes (``ray.wait``), so no core
idles while there is work left.

A step here is real compute, compiled with numba: a chain of 16 pendulums coupled by
springs, damped, integrated with semi-implicit Euler over a number of timesteps drawn per
step from a heavy-tailed (log-normal) distribution, so that some steps take twenty times
as long as the median one.  Each step starts from a state made from (seed, step), so its
result does not depend on which simulator ran it: both versions must compute the same
bits, and they are compared.

    python examples/simulation.py [--quick] [--ranks K] [--json out.json]
    mpiexec -n 4 python examples/simulation.py --quick

Figure: simulated timesteps per second (of the integrator, summed over every step) of
mpray's simulator actors fed through ``ray.wait``, beside mpi4py rounds (each rank runs
its step of the round, then ``comm.Allgather`` of the round's results: the barrier).
The same steps, handed out in the same order, to as many simulators as ranks.

Honest notes: the steps are independent (no state carried from one to the next), which
is what lets either side hand them out freely; an MPI program could avoid the rounds
altogether (a static split of the whole list, or a master-worker scheme) -- the rounds
model the synchronous simulation loop the paper compares against.  mpray hands each
simulator two steps ahead (``--in-flight``) so that the round trip of a result overlaps
the next step.  Under ``mpiexec -n 4`` on fewer cores, ranks waiting in MPI busy-poll
and take CPU from the working ones.  numba compiles the kernel once (cached in
``examples/__pycache__``); compiling and each process's warm-up are left out of the
timing on both sides.
"""

from __future__ import annotations

import hashlib
import math
import time

import numba
import numpy as np

import common
import mpray as ray

SEED = 0
PENDULUMS = 16  # per simulator state
DT = 1e-3  # seconds of simulated time per substep


def config(args) -> dict:
    return dict(steps=args.steps or (300 if args.quick else 3000),
                median_timesteps=args.median_timesteps, sigma=1.0)


@numba.njit(cache=True)
def integrate(theta, omega, timesteps, dt):
    """A damped chain of pendulums, neighbours coupled by torsion springs; semi-implicit
    Euler (velocities first, then positions with the new velocities), in place."""
    n = theta.size
    for _ in range(timesteps):
        for j in range(n):
            torque = -9.81 * math.sin(theta[j]) - 0.05 * omega[j]
            if j > 0:
                torque += 4.0 * (theta[j - 1] - theta[j])
            if j < n - 1:
                torque += 4.0 * (theta[j + 1] - theta[j])
            omega[j] += dt * torque
        for j in range(n):
            theta[j] += dt * omega[j]


def work_list(cfg: dict) -> np.ndarray:
    """Timesteps of every step: log-normal, so a few steps are much longer than most."""
    rng = np.random.default_rng(SEED)
    draws = rng.lognormal(0.0, cfg["sigma"], cfg["steps"]) * cfg["median_timesteps"]
    return np.maximum(draws, 1).astype(np.int64)


def simulate(step: int, timesteps: int) -> np.ndarray:
    """One simulation step from its own initial state: the final (theta, omega)."""
    rng = np.random.default_rng((SEED, step))
    theta = rng.uniform(-1.0, 1.0, PENDULUMS)
    omega = np.zeros(PENDULUMS)
    integrate(theta, omega, timesteps, DT)
    return np.concatenate([theta, omega])


def digest(results: np.ndarray) -> str:
    """A fingerprint of every step's result, to compare the versions bit for bit."""
    return hashlib.sha256(np.ascontiguousarray(results).tobytes()).hexdigest()[:16]


def figures(work: np.ndarray, seconds: float) -> dict:
    return {"steps_per_s": len(work) / seconds, "timesteps_per_s": float(work.sum()) / seconds}


# --------------------------------------------------------------- the mpi4py baseline


def baseline(comm, args) -> dict:
    """Bulk-synchronous rounds: in round r rank k runs step r*size + k, then every rank
    gets the round's results (Allgather, as a simulation sharing its state each round
    would): the round's barrier, where every rank waits for the round's slowest."""
    cfg = config(args)
    work = work_list(cfg)
    simulate(0, 1)  # numba: compile, or load from the cache, before the clock starts
    size, rank = comm.size, comm.rank
    rounds = -(-len(work) // size)
    results = np.empty((rounds * size, 2 * PENDULUMS))
    mine = np.empty(2 * PENDULUMS)
    comm.Barrier()
    t0 = time.perf_counter()
    for r in range(rounds):
        step = r * size + rank
        mine[:] = simulate(step, work[step]) if step < len(work) else np.nan
        comm.Allgather(mine, results[r * size:(r + 1) * size])
    seconds = time.perf_counter() - t0
    if rank != 0:
        return {}
    return {**figures(work, seconds), "ranks": size, "rounds": rounds,
            "digest": digest(results[:len(work)])}


# ------------------------------------------------------------------- mpray's version


@ray.remote
class Simulator:
    """One simulator per CPU; its constructor compiles (or loads) the numba kernel."""

    def __init__(self):
        simulate(0, 1)

    def step(self, step: int, timesteps: int) -> np.ndarray:
        return simulate(step, timesteps)


def run_dynamic(sims: list, work: np.ndarray, depth: int) -> np.ndarray:
    """Keep every simulator busy: hand it the next step as soon as one of its ``depth``
    steps in flight is done (with 2, the next step already waits at the simulator while
    the round trip of the last one's result and the next hand-out is made)."""
    results = np.empty((len(work), 2 * PENDULUMS))
    running = {}  # ref -> (simulator, step)
    upcoming = iter(range(len(work)))

    def hand_out(sim):
        step = next(upcoming, None)
        if step is not None:
            running[sim.step.remote(step, int(work[step]))] = (sim, step)

    for _ in range(depth):
        for sim in sims:
            hand_out(sim)
    while running:
        [ref], _ = ray.wait(list(running), num_returns=1)
        sim, step = running.pop(ref)
        hand_out(sim)  # before reading the result: the simulator restarts at once
        results[step] = ray.get(ref)
    return results


def run_mpray(cfg: dict, depth: int) -> dict:
    work = work_list(cfg)
    n = int(ray.cluster_resources()["CPU"])
    sims = [Simulator.options(scheduling_strategy="SPREAD").remote() for _ in range(n)]
    ray.get([s.__ray_ready__.remote() for s in sims])  # all started and compiled
    with common.Stopwatch() as t:
        results = run_dynamic(sims, work, depth)
    # an independent check: a few steps again, here in the driver
    for step in np.argsort(work)[:4]:
        assert np.array_equal(results[step], simulate(int(step), int(work[step]))), step
    return {**figures(work, t.s), "simulators": n, "digest": digest(results),
            "steps": len(work), "timesteps": int(work.sum())}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--steps", type=int, default=None, help="simulation steps in all")
    p.add_argument("--median-timesteps", type=int, default=20000,
                   help="the median step's timesteps (about 4 ms of one core)")
    p.add_argument("--in-flight", type=int, default=2,
                   help="steps handed to each simulator ahead (1: one at a time)")
    args = p.parse_args()

    base = common.run_baseline(args, baseline)
    if common.is_baseline_child(args):
        return
    ray.init()
    out = run_mpray(config(args), args.in_flight)
    print(f"mpray:  {out['simulators']} simulators, {out['steps']} steps "
          f"({out['timesteps']:,} timesteps), {out['steps_per_s']:8.1f} steps/s")
    if base:
        print(f"mpi4py: {base['ranks']} ranks, {base['rounds']} rounds, "
              f"{base['steps_per_s']:8.1f} steps/s")
        assert base["digest"] == out["digest"], (base["digest"], out["digest"])
    common.report(args, "simulation", "simulated timesteps per second", "timesteps/s",
                  out["timesteps_per_s"],
                  {"mpi4py rounds + barrier": base and base["timesteps_per_s"]},
                  mpray_steps_per_s=out["steps_per_s"],
                  mpi4py_steps_per_s=base and base["steps_per_s"],
                  simulators=out["simulators"], steps=out["steps"], digest=out["digest"])
    ray.shutdown()
    print("OK simulation")


if __name__ == "__main__":
    main()
