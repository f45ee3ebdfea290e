"""Evolution strategies on mpray: the Ray paper's ES workload (Fig. 14a).

Salimans et al.'s evolution strategies train a policy without backpropagation: each
iteration draws perturbations eps_i of the weights theta (slices of one big table of
Gaussian noise), runs one episode with theta + sigma * eps_i and one with
theta - sigma * eps_i (antithetic sampling), and moves theta along the noise weighted by
the centred ranks of the returns.  The paper's point is that this special-purpose system
is a few dozen lines on Ray: worker actors keep the noise table, which the driver
``ray.put``s once and every worker reads zero-copy; each iteration the driver puts theta
once, hands out chunks of perturbations to idle workers (``ActorPool.map_unordered``)
and aggregates their returns into the update.

The task is CartPole (examples/envs.py: numba, a 4-32-2 MLP, ~8 us a step) and the figure
is the paper's: the time the training loop takes until the mean return of an iteration's
perturbed policies reaches the target.  The same algorithm runs, in the same run, as

    serial                  one process;
    multiprocessing.Pool    as many processes as mpray has workers, given the same chunks
                            (imap_unordered); the noise table is a global the forked
                            processes inherit, as cheap as mpray's put.

All three compute exactly the same thing (iteration i's perturbations and episode seeds
come from the seed and i alone; returns are reassembled in order), so they reach the
target at the same iteration with bit-identical weights: the example asserts it, and
their times differ only by how each system runs the episodes.

Run:
    python examples/es.py [--quick]                 one host: a worker per CPU
    mpiexec -n 4 python examples/es.py [--quick]    every rank a node; workers SPREAD

Honest notes: the paper trained MuJoCo's Humanoid on up to 8,192 cores; CartPole is solved
in seconds and a laptop's speedup is bounded by its cores.  Times count the training loop
only (creating the actors or the Pool, and init, are printed apart).  The target is on the
perturbed policies' mean return, which ES computes anyway, not on extra evaluation
episodes.  The baselines run after ``ray.shutdown()``, on a machine mpray no longer uses.
Under mpiexec every rank's MPI agent polls while work flows (a sixth of a core or so):
nothing on a cluster node, but with more ranks than cores (4 on 2) it is CPU the workers
lose, and the Pool, all on one host, pays no such cost.
"""

from __future__ import annotations

import multiprocessing
import time
from dataclasses import dataclass

import numpy as np

import common
import envs
import mpray as ray


@dataclass(frozen=True)
class Config:
    pairs: int          # antithetic pairs an iteration (2 episodes each)
    max_steps: int      # episode cap (the return's maximum)
    target: float       # mean return that ends training
    noise_size: int     # float32 entries in the shared noise table
    max_iters: int = 200
    sigma: float = 0.1  # noise scale
    lr: float = 0.03    # Adam's step
    l2: float = 0.005   # weight decay
    chunks_per_worker: int = 4  # smaller chunks even out episodes of unequal length
    seed: int = 0


QUICK = Config(pairs=64, max_steps=500, target=475.0, noise_size=2**22)
FULL = Config(pairs=128, max_steps=1000, target=950.0, noise_size=2**25)


# --------------------------------------------------------------- the algorithm, shared

def make_noise(cfg: Config) -> np.ndarray:
    return np.random.default_rng(cfg.seed).standard_normal(cfg.noise_size, np.float32)


def plan(cfg: Config, it: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Iteration ``it``'s perturbations (offsets into the noise table) and episode seeds,
    drawn from (seed, it) alone so that every version evaluates the same ones."""
    rng = np.random.default_rng([cfg.seed, it])
    return rng.integers(0, cfg.noise_size - dim, cfg.pairs), rng.integers(0, 2**31, cfg.pairs)


def split(cfg: Config, workers: int, offsets, seeds) -> list[tuple]:
    """The iteration's pairs in numbered chunks, a few per worker."""
    n = workers * cfg.chunks_per_worker
    return list(zip(range(n), np.array_split(offsets, n), np.array_split(seeds, n)))


def assemble(parts) -> tuple[np.ndarray, int]:
    """Chunks' (index, returns, steps), in any order, back into the iteration's order."""
    parts = sorted(parts, key=lambda p: p[0])
    return np.concatenate([p[1] for p in parts]), sum(p[2] for p in parts)


def centered_ranks(x: np.ndarray) -> np.ndarray:
    """Returns replaced by their ranks scaled to [-0.5, 0.5]: ES's fitness shaping."""
    r = np.empty(x.size)
    r[x.ravel().argsort(kind="stable")] = np.arange(x.size)
    return (r / (x.size - 1) - 0.5).reshape(x.shape)


def gradient(cfg: Config, noise, theta, offsets, returns) -> np.ndarray:
    """The loss's gradient estimate (Adam minimises): minus the rank-weighted noise."""
    w = centered_ranks(returns)
    eps = noise[offsets[:, None] + np.arange(theta.size)]   # (pairs, dim)
    g = (w[:, 0] - w[:, 1]) @ eps / returns.size
    return -g + cfg.l2 * theta


class Adam:
    def __init__(self, dim: int, lr: float, b1: float = 0.9, b2: float = 0.999):
        self.lr, self.b1, self.b2, self.t = lr, b1, b2, 0
        self.m, self.v = np.zeros(dim), np.zeros(dim)

    def step(self, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * g
        self.v = self.b2 * self.v + (1 - self.b2) * g * g
        a = self.lr * np.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        return theta - a * self.m / (np.sqrt(self.v) + 1e-8)


def train(cfg: Config, noise, evaluate, name: str) -> dict:
    """ES until the target; ``evaluate(theta, offsets, seeds) -> (returns[pairs, 2],
    steps)`` is the part each system runs its own way."""
    theta = envs.init_params(cfg.seed)
    opt = Adam(theta.size, cfg.lr)
    curve, steps = [], 0
    t0 = time.perf_counter()
    for it in range(cfg.max_iters):
        offsets, seeds = plan(cfg, it, theta.size)
        returns, n = evaluate(theta, offsets, seeds)
        steps += n
        curve.append(float(returns.mean()))
        if curve[-1] >= cfg.target:
            break
        theta = opt.step(theta, gradient(cfg, noise, theta, offsets, returns))
    else:
        raise AssertionError(f"{name}: mean return {curve[-1]:.0f} after {cfg.max_iters} "
                             f"iterations, short of {cfg.target}")
    s = time.perf_counter() - t0
    print(f"  {name:<22} mean return {curve[0]:5.0f} -> {curve[-1]:5.0f} in {len(curve)} "
          f"iterations, {s:6.2f} s ({steps / s:,.0f} steps/s)")
    return {"seconds": s, "iterations": len(curve), "theta": theta, "curve": curve,
            "steps": steps}


# --------------------------------------------------------------- mpray

@ray.remote
class ESWorker:
    """Keeps the noise table (a read-only view into the object store, never copied) and
    evaluates chunks of antithetic pairs around the theta of the moment."""

    def __init__(self, noise: np.ndarray, sigma: float, max_steps: int):
        self.noise, self.sigma, self.max_steps = noise, sigma, max_steps

    def evaluate(self, k: int, theta: np.ndarray, offsets, seeds):
        returns, steps = envs.perturbed_returns(theta, self.noise, offsets, self.sigma,
                                                seeds, self.max_steps)
        return k, returns, steps


def run_mpray(cfg: Config, noise: np.ndarray, workers: int) -> dict:
    with common.Stopwatch() as setup:
        noise_ref = ray.put(noise)          # once: every worker maps the same bytes
        actors = [ESWorker.options(scheduling_strategy="SPREAD").remote(
            noise_ref, cfg.sigma, cfg.max_steps) for _ in range(workers)]
        ray.get([a.__ray_ready__.remote() for a in actors])
    print(f"  (mpray: {workers} worker actors ready in {setup.s:.2f} s)")
    pool = ray.util.ActorPool(actors)

    def evaluate(theta, offsets, seeds):
        theta_ref = ray.put(theta)          # once an iteration, not once a chunk
        chunks = split(cfg, workers, offsets, seeds)
        return assemble(pool.map_unordered(
            lambda a, c: a.evaluate.remote(c[0], theta_ref, c[1], c[2]), chunks))

    return train(cfg, noise, evaluate, "mpray")


# --------------------------------------------------------------- baselines

def run_serial(cfg: Config, noise: np.ndarray) -> dict:
    def evaluate(theta, offsets, seeds):
        return envs.perturbed_returns(theta, noise, offsets, cfg.sigma, seeds, cfg.max_steps)

    return train(cfg, noise, evaluate, "serial")


_NOISE = None  # the Pool's processes inherit the table through fork


def _pool_chunk(task):
    k, theta, offsets, seeds, sigma, max_steps = task
    returns, steps = envs.perturbed_returns(theta, _NOISE, offsets, sigma, seeds, max_steps)
    return k, returns, steps


def run_pool(cfg: Config, noise: np.ndarray, processes: int) -> dict:
    global _NOISE
    _NOISE = noise
    with common.Stopwatch() as setup:
        pool = multiprocessing.get_context("fork").Pool(processes)
    print(f"  (multiprocessing.Pool of {processes} started in {setup.s:.2f} s)")
    with pool:
        def evaluate(theta, offsets, seeds):
            tasks = [(k, theta, o, s, cfg.sigma, cfg.max_steps)
                     for k, o, s in split(cfg, processes, offsets, seeds)]
            return assemble(pool.imap_unordered(_pool_chunk, tasks))

        return train(cfg, noise, evaluate, "multiprocessing.Pool")


# --------------------------------------------------------------- main

def check(mine: dict, others: dict, cfg: Config) -> None:
    """Every version did the same computation: same iterations, bit-identical weights."""
    assert mine["curve"][-1] >= cfg.target > mine["curve"][0], mine["curve"]
    for name, r in others.items():
        assert r["iterations"] == mine["iterations"], (name, r["curve"], mine["curve"])
        assert np.array_equal(r["theta"], mine["theta"]), f"{name}: other weights"
    if others:
        print(f"  all versions: the same {mine['iterations']} iterations and weights")


def main() -> None:
    args = common.parser(__doc__).parse_args()
    cfg = QUICK if args.quick else FULL
    # compile (or load) the kernels before anything forks: every worker inherits them
    # (under mpiexec every rank runs this line, before its node forks its workers)
    envs.warmup()
    with common.Stopwatch() as t_init:
        ray.init()
    workers = int(ray.cluster_resources()["CPU"])
    noise = make_noise(cfg)
    print(f"ES on CartPole: {cfg.pairs} antithetic pairs an iteration, target mean return "
          f"{cfg.target:g}, noise table {noise.nbytes / 2**20:.0f} MiB, {workers} workers "
          f"on {len(ray.nodes())} node(s) (init {t_init.s:.2f} s)")
    mine = run_mpray(cfg, noise, workers)
    ray.shutdown()

    others = {}
    if not args.no_baseline:
        others["serial"] = run_serial(cfg, noise)
        others["multiprocessing.Pool"] = run_pool(cfg, noise, workers)
    check(mine, others, cfg)
    common.report(args, "es", f"time to mean return {cfg.target:g}", "s", mine["seconds"],
                  {k: r["seconds"] for k, r in others.items()}, higher_is_better=False,
                  iterations=mine["iterations"], steps=mine["steps"], workers=workers)
    print("OK es")


if __name__ == "__main__":
    main()
