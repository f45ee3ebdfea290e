"""PPO on mpray: the Ray paper's asynchronous scatter-gather against synchronous MPI
(Fig. 14b).

Proximal policy optimisation alternates simulation (roll out the current policy) and
learning (a few epochs of SGD on the clipped surrogate objective).  The paper's point is
the systems pattern: on Ray the learner keeps rollouts in flight on every simulation
actor, takes fragments *as they arrive* (``ray.wait``), resubmits at once with the newest
weights and updates as soon as it has a batch; simulators never wait for the slowest
one, and keep simulating (their queued rollouts) during the update.  The MPI version of
the same loop is bulk synchronous: every rank simulates its share, ``comm.gather`` to
rank 0, rank 0 updates, ``Bcast`` the weights, and every round everybody waits for the
slowest rank and for the update.

Both versions run the same learner on the same task (CartPole in examples/envs.py, a
4-32-2 MLP, ~8 us a simulated step) for the same number of updates of the same batch
size; the figure is the simulated timesteps the updates consumed a second of training
(simulation + update), and the example asserts that both versions learned (the mean
return of the last updates' episodes).

    mpray             one simulation actor per CPU (SPREAD over the ranks under mpiexec)
                      with ``--in-flight`` rollouts of ``--fragment`` steps queued on
                      each, the learner in the driver
    mpi4py (sync)     ``--ranks`` processes on one host (default: the CPUs), or the job's
                      ranks under mpiexec; rank 0 simulates its share and learns

Run:
    python examples/ppo.py [--quick]                 one host
    mpiexec -n 4 python examples/ppo.py [--quick]    every rank a node

Honest notes: the learner is a small hand-written numpy PPO (clipped surrogate, Adam,
advantages from discounted returns less a least-squares linear baseline, no value
network, no GAE, no entropy bonus): enough to learn CartPole, and the paper's point is
the systems pattern, not the learner.  Asynchrony has a price the sync version does not
pay: a fragment may come from the weights of the update before (the clipped importance
ratio against the log-probabilities the simulator recorded accounts for that; the mean
staleness is printed), so it learns a little less per timestep; more in flight keeps the
simulators busier and the data staler.  The paper ran MuJoCo's Humanoid on thousands of
CPU cores with GPU learners; here the learner shares a few cores with the simulators (it
competes with them for the CPU during an update), so asynchrony has little idle time to
fill.  BLAS is held to one thread a process (set below, before numpy is imported) in both
versions: the other cores belong to the simulators.
"""

from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import time  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402
import envs  # noqa: E402
import mpray as ray  # noqa: E402


@dataclass(frozen=True)
class Config:
    updates: int         # policy updates (the run's length)
    batch: int           # timesteps an update consumes (at least)
    fragment: int        # timesteps a simulation actor returns a call (whole episodes)
    min_return: float    # the last updates' mean return must reach this
    in_flight: int = 2   # mpray: rollouts queued on each simulator
    max_steps: int = 500
    epochs: int = 3
    minibatch: int = 1000
    lr: float = 0.01
    clip: float = 0.2
    gamma: float = 0.99
    seed: int = 0


QUICK = Config(updates=10, batch=8000, fragment=1000, min_return=100.0)
FULL = Config(updates=50, batch=16000, fragment=1000, min_return=300.0)


# --------------------------------------------------------------- the learner, shared

def episode_seed(*key: int) -> int:
    return int(np.random.SeedSequence(key).generate_state(1)[0])


def simulate(params: np.ndarray, cfg: Config, steps: int, seed: int) -> tuple:
    """Whole episodes of the stochastic policy, at least ``steps`` timesteps: (obs,
    actions, log-probs, rewards, done, episode returns)."""
    return envs.sample_episodes(params, seed, steps, cfg.max_steps)


def surrogate_gradient(params, obs, act, logp_old, adv, clip):
    """Gradient of PPO's loss -mean(min(r A, clip(r, 1-e, 1+e) A)), r = pi(a|s) /
    pi_old(a|s), by hand through the MLP of examples/envs.py (flat, like params)."""
    w1, b1, w2, b2 = envs.unpack(params)
    n, rows = len(act), np.arange(len(act))
    h = np.tanh(obs @ w1.T + b1)
    z = h @ w2.T + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    ratio = np.exp(np.log(p[rows, act]) - logp_old)
    # the gradient flows through r A where the min takes it (clipping is inactive)
    active = ratio * adv <= np.clip(ratio, 1 - clip, 1 + clip) * adv
    dlogp = -(ratio * adv * active) / n
    dz = -p * dlogp[:, None]           # d log softmax(z)[a] / dz = onehot(a) - p
    dz[rows, act] += dlogp
    dpre = (dz @ w2) * (1 - h * h)
    return np.concatenate([(dpre.T @ obs).ravel(), dpre.sum(0), (dz.T @ h).ravel(),
                           dz.sum(0)])


def advantages(obs, rew, done, gamma):
    """Discounted returns less a linear baseline fit to them (features: the observation
    and its square), normalised."""
    g = envs.discounted_returns(rew, done, gamma)
    x = np.hstack([obs, obs * obs, np.ones((len(obs), 1))])
    w = np.linalg.solve(x.T @ x + 1e-3 * np.eye(x.shape[1]), x.T @ g)
    a = g - x @ w
    return (a - a.mean()) / (a.std() + 1e-8)


class Learner:
    """PPO's update with Adam, on a batch of fragments (each whole episodes)."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.params = envs.init_params(cfg.seed)
        self.m, self.v, self.t = np.zeros_like(self.params), np.zeros_like(self.params), 0
        self.rng = np.random.default_rng(cfg.seed)

    def update(self, fragments: list) -> np.ndarray:
        cfg = self.cfg
        obs, act, logp, rew, done = (np.concatenate([f[i] for f in fragments])
                                     for i in range(5))
        adv = advantages(obs, rew, done, cfg.gamma)
        for _ in range(cfg.epochs):
            order = self.rng.permutation(len(act))
            for s in range(0, len(act), cfg.minibatch):
                i = order[s:s + cfg.minibatch]
                self._adam(surrogate_gradient(self.params, obs[i], act[i], logp[i],
                                              adv[i], cfg.clip))
        return self.params

    def _adam(self, g, b1=0.9, b2=0.999):
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * g
        self.v = b2 * self.v + (1 - b2) * g * g
        a = self.cfg.lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        self.params = self.params - a * self.m / (np.sqrt(self.v) + 1e-8)


def summary(name: str, steps: int, seconds: float, curve: list, **extra) -> dict:
    line = (f"  {name:<24} mean return {curve[0]:4.0f} -> {curve[-1]:4.0f} over {len(curve)} "
            f"updates, {steps:,} steps in {seconds:.2f} s ({steps / seconds:,.0f} steps/s)")
    return {"steps_per_s": steps / seconds, "seconds": seconds, "steps": steps,
            "curve": curve, "line": line, **extra}


# --------------------------------------------------------------- the MPI baseline

def mpi_baseline(comm, cfg: Config) -> dict | None:
    """Bulk synchronous PPO: every rank simulates its share with the same weights,
    gather to rank 0, rank 0 updates, Bcast the weights; repeat."""
    learner = Learner(cfg) if comm.rank == 0 else None
    params = envs.init_params(cfg.seed)
    share = -(-cfg.batch // comm.size)
    steps, curve = 0, []
    comm.Barrier()
    t0 = time.perf_counter()
    for u in range(cfg.updates):
        frags = comm.gather(simulate(params, cfg, share, episode_seed(cfg.seed, comm.rank, u)),
                            root=0)
        if comm.rank == 0:
            steps += sum(len(f[1]) for f in frags)
            curve.append(float(np.concatenate([f[5] for f in frags]).mean()))
            params[:] = learner.update(frags)
        comm.Bcast(params, root=0)
    if comm.rank != 0:
        return None
    return summary(f"mpi4py ({comm.size} ranks, sync)", steps, time.perf_counter() - t0,
                   curve, ranks=comm.size)


# --------------------------------------------------------------- mpray

@ray.remote
class Simulator:
    """One simulation actor: rolls out fragments with the weights it is sent."""

    def __init__(self, cfg: Config, index: int):
        self.cfg, self.index, self.calls = cfg, index, 0

    def rollout(self, params: np.ndarray, version: int):
        self.calls += 1
        seed = episode_seed(self.cfg.seed, 1000 + self.index, self.calls)
        return version, simulate(params, self.cfg, self.cfg.fragment, seed)


def run_mpray(cfg: Config, workers: int) -> dict:
    sims = [Simulator.options(scheduling_strategy="SPREAD").remote(cfg, i)
            for i in range(workers)]
    ray.get([s.__ray_ready__.remote() for s in sims])
    learner = Learner(cfg)
    version, weights = 0, ray.put(learner.params)
    steps, curve, stale = 0, [], []
    t0 = time.perf_counter()
    # scatter: rollouts in flight on every simulator, always
    inflight = {s.rollout.remote(weights, version): s for s in sims
                for _ in range(cfg.in_flight)}
    for _ in range(cfg.updates):
        batch, n = [], 0
        while n < cfg.batch:        # gather: whichever fragment is done first
            [ready], _ = ray.wait(list(inflight), num_returns=1)
            sim = inflight.pop(ready)
            inflight[sim.rollout.remote(weights, version)] = sim   # resubmit at once
            made_by, frag = ray.get(ready)
            stale.append(version - made_by)
            batch.append(frag)
            n += len(frag[1])
        steps += n
        curve.append(float(np.concatenate([f[5] for f in batch]).mean()))
        version, weights = version + 1, ray.put(learner.update(batch))
    seconds = time.perf_counter() - t0
    return summary(f"mpray ({workers} simulators)", steps, seconds, curve,
                   staleness=float(np.mean(stale)))


# --------------------------------------------------------------- main

def learned(r: dict, cfg: Config) -> float:
    """The mean return of the last few updates' episodes, asserted to have improved."""
    last = float(np.mean(r["curve"][-3:]))
    assert last >= cfg.min_return and last > 3 * r["curve"][0], r["curve"]
    return last


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--fragment", type=int, help="timesteps a rollout call returns")
    p.add_argument("--in-flight", type=int, help="rollouts queued on each simulator")
    args = p.parse_args()
    cfg = QUICK if args.quick else FULL
    cfg = replace(cfg, **{k: getattr(args, k) for k in ("fragment", "in_flight")
                          if getattr(args, k) is not None})
    envs.warmup()   # before the baseline and before init forks anything
    base = common.run_baseline(args, lambda comm, a: mpi_baseline(comm, cfg))
    if common.is_baseline_child(args):
        return
    ray.init()
    workers = int(ray.cluster_resources()["CPU"])
    print(f"PPO on CartPole: {cfg.updates} updates of {cfg.batch} timesteps, fragments of "
          f"{cfg.fragment}, {workers} simulators on {len(ray.nodes())} node(s)")
    mine = run_mpray(cfg, workers)
    ray.shutdown()
    print(f"{mine['line']}\n    (its fragments came from weights {mine['staleness']:.2f} "
          f"updates old on average)")
    extra = {"mean_return_mpray": learned(mine, cfg), "staleness": mine["staleness"]}
    if base:
        print(base["line"])
        extra["mean_return_mpi4py"] = learned(base, cfg)
    common.report(args, "ppo", "simulated timesteps a second (simulation + update)",
                  "steps/s", mine["steps_per_s"],
                  {"mpi4py (sync)": base and base["steps_per_s"]}, **extra)
    print("OK ppo")


if __name__ == "__main__":
    main()
