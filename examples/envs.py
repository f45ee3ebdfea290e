"""CartPole and a tiny MLP policy in numba: the environment both RL examples share.

es.py (evolution strategies, the Ray paper's Fig. 14a) and ppo.py (PPO, Fig. 14b) need a
simulator whose episodes cost real CPU time and differ in length, as MuJoCo's do in the
paper, without gym or any download.  This is the classic cart-pole balancing task (the
dynamics and limits of gym's CartPole-v1: +1 reward a step, the episode ends when the
pole leans past 12 degrees or the cart leaves the track) driven by a policy

    logits = W2 @ tanh(W1 @ obs + b1) + b2          (two actions: push left / right)

whose weights are one flat float64 vector (``init_params`` lays it out), so that ES can
perturb it with a slice of a noise table and PPO can ship it to simulators as one array.

gym integrates a step in one Euler step: with the policy, well under a microsecond, so
cheap that a parallel version would only measure its framework's overheads.  Here a
step is integrated in SUBSTEPS finer steps (a physics engine's internal timestep, as
MuJoCo's frame_skip), ~8 us a step with the policy, 4 ms a 500-step episode: the simulator,
not the framework, is what costs, as in the paper, and thousands of episodes still take
seconds.

Every function is compiled with ``numba.njit(cache=True)``: the first run compiles (some
seconds) and writes the machine code to ``examples/__pycache__``; later runs load it in
a fraction of a second.  Call ``warmup()`` before ``ray.init()`` or before making a
``multiprocessing.Pool``: forked workers then inherit the compiled code instead of each
compiling it again.

Everything is deterministic given the seed (numba's own generator, seeded per episode).
"""

from __future__ import annotations

import fcntl
import math
import os

import numba
import numpy as np

OBS = 4          # cart position, cart velocity, pole angle, pole angular velocity
ACTIONS = 2      # push left, push right
HIDDEN = 32

# gym CartPole-v1's constants
GRAVITY, CART_MASS, POLE_MASS, HALF_LENGTH = 9.8, 1.0, 0.1, 0.5
FORCE, TAU = 10.0, 0.02
SUBSTEPS = 200   # integration steps a control step (see above)
X_LIMIT, THETA_LIMIT = 2.4, 12 * 2 * math.pi / 360

_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")  # numba's


def n_params(hidden: int = HIDDEN) -> int:
    return OBS * hidden + hidden + hidden * ACTIONS + ACTIONS


def init_params(seed: int, hidden: int = HIDDEN) -> np.ndarray:
    """A flat vector [W1 (hidden x OBS), b1, W2 (ACTIONS x hidden), b2], small random
    weights (the output layer near zero, so that the first policy is near uniform)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((hidden, OBS)) / math.sqrt(OBS)
    w2 = rng.standard_normal((ACTIONS, hidden)) * 0.01 / math.sqrt(hidden)
    return np.concatenate([w1.ravel(), np.zeros(hidden), w2.ravel(), np.zeros(ACTIONS)])


def unpack(params: np.ndarray, hidden: int = HIDDEN):
    """Views (W1, b1, W2, b2) into the flat vector (numpy side: ppo.py's gradients)."""
    a = OBS * hidden
    b = a + hidden
    c = b + ACTIONS * hidden
    return (params[:a].reshape(hidden, OBS), params[a:b],
            params[b:c].reshape(ACTIONS, hidden), params[c:])


@numba.njit(cache=True)
def _logits(params, hidden, obs, h, out):
    """The MLP's forward pass for one observation, into ``h`` and ``out`` (no allocation:
    this runs once a step)."""
    b1 = OBS * hidden
    w2 = b1 + hidden
    b2 = w2 + ACTIONS * hidden
    for j in range(hidden):
        s = params[b1 + j]
        for i in range(OBS):
            s += params[j * OBS + i] * obs[i]
        h[j] = math.tanh(s)
    for k in range(ACTIONS):
        s = params[b2 + k]
        for j in range(hidden):
            s += params[w2 + k * hidden + j] * h[j]
        out[k] = s


@numba.njit(cache=True)
def _reset(obs):
    for i in range(OBS):
        obs[i] = np.random.uniform(-0.05, 0.05)


@numba.njit(cache=True)
def _step(obs, action):
    """Advance the cart-pole by one control step of TAU seconds, integrated in SUBSTEPS
    semi-implicit Euler steps (a physics engine's fine internal timestep: MuJoCo's
    frame_skip); True when it fell."""
    x, x_dot, theta, theta_dot = obs[0], obs[1], obs[2], obs[3]
    force = FORCE if action == 1 else -FORCE
    total = CART_MASS + POLE_MASS
    dt = TAU / SUBSTEPS
    for _ in range(SUBSTEPS):
        cos, sin = math.cos(theta), math.sin(theta)
        temp = (force + POLE_MASS * HALF_LENGTH * theta_dot * theta_dot * sin) / total
        theta_acc = (GRAVITY * sin - cos * temp) / (
            HALF_LENGTH * (4.0 / 3.0 - POLE_MASS * cos * cos / total))
        x_acc = temp - POLE_MASS * HALF_LENGTH * theta_acc * cos / total
        x_dot += dt * x_acc
        x += dt * x_dot
        theta_dot += dt * theta_acc
        theta += dt * theta_dot
    obs[0], obs[1], obs[2], obs[3] = x, x_dot, theta, theta_dot
    return abs(x) > X_LIMIT or abs(theta) > THETA_LIMIT


@numba.njit(cache=True)
def rollout(params, seed, max_steps):
    """One episode of the greedy policy (the larger logit acts): (total reward, steps)."""
    hidden = (params.size - ACTIONS) // (OBS + 1 + ACTIONS)
    np.random.seed(seed)
    obs = np.empty(OBS)
    h = np.empty(hidden)
    out = np.empty(ACTIONS)
    _reset(obs)
    steps = 0
    while steps < max_steps:
        _logits(params, hidden, obs, h, out)
        steps += 1
        if _step(obs, 1 if out[1] > out[0] else 0):
            break
    return float(steps), steps


@numba.njit(cache=True)
def perturbed_returns(params, noise, offsets, sigma, seeds, max_steps):
    """ES's inner loop: for each pair i, the returns of params + sigma * eps_i and
    params - sigma * eps_i (antithetic sampling), eps_i = noise[offsets[i]:][:dim], both
    on the episode ``seeds[i]``.  Returns (returns[n, 2], total steps)."""
    dim = params.size
    out = np.empty((offsets.size, 2))
    steps = 0
    theta = np.empty(dim)
    for i in range(offsets.size):
        eps = noise[offsets[i]:offsets[i] + dim]
        for sign in range(2):
            s = sigma if sign == 0 else -sigma
            for j in range(dim):
                theta[j] = params[j] + s * eps[j]
            r, n = rollout(theta, seeds[i], max_steps)
            out[i, sign] = r
            steps += n
    return out, steps


@numba.njit(cache=True)
def sample_episodes(params, seed, min_steps, max_steps):
    """PPO's simulator: episodes of the stochastic (softmax) policy until at least
    ``min_steps`` steps are recorded.  Returns (obs[T, OBS], actions[T], log-probs[T],
    rewards[T], done[T]) (done marks each episode's last step) and the episodes' returns."""
    hidden = (params.size - ACTIONS) // (OBS + 1 + ACTIONS)
    np.random.seed(seed)
    cap = min_steps + max_steps
    obs_buf = np.empty((cap, OBS))
    act = np.empty(cap, np.int64)
    logp = np.empty(cap)
    rew = np.ones(cap)
    done = np.zeros(cap, np.bool_)
    returns = []
    obs = np.empty(OBS)
    h = np.empty(hidden)
    out = np.empty(ACTIONS)
    t = 0
    while t < min_steps:
        _reset(obs)
        start = t
        while True:
            obs_buf[t] = obs
            _logits(params, hidden, obs, h, out)
            m = max(out[0], out[1])   # a stable softmax of two logits
            lse = m + math.log(math.exp(out[0] - m) + math.exp(out[1] - m))
            a = 1 if np.random.random() < math.exp(out[1] - lse) else 0
            act[t] = a
            logp[t] = out[a] - lse
            fell = _step(obs, a)
            t += 1
            if fell or t - start >= max_steps:
                done[t - 1] = True
                returns.append(float(t - start))
                break
    return obs_buf[:t], act[:t], logp[:t], rew[:t], done[:t], np.array(returns)


@numba.njit(cache=True)
def discounted_returns(rewards, done, gamma):
    """Each step's discounted return to the end of its episode (``done`` marks the
    episodes' last steps; the batch ends with one)."""
    out = np.empty_like(rewards)
    g = 0.0
    for t in range(rewards.size - 1, -1, -1):
        if done[t]:
            g = 0.0
        g = rewards[t] + gamma * g
        out[t] = g
    return out


def warmup() -> None:
    """Compile (or load from the cache) every kernel, on tiny inputs.

    The ranks of an MPI job on one host would all compile at once, each for seconds, on
    the same cores: they take turns instead (a file lock), so that the first compiles
    and writes the cache and the others load it."""
    try:
        os.makedirs(_CACHE, exist_ok=True)
        lock = open(os.path.join(_CACHE, "envs.warmup.lock"), "w")
        fcntl.flock(lock, fcntl.LOCK_EX)
    except OSError:  # no writable cache directory, or no locks there: compile anyway
        lock = None
    try:
        _compile()
    finally:
        if lock is not None:
            lock.close()


def _compile() -> None:
    p = init_params(0)
    rollout(p, 0, 10)
    noise = np.zeros(p.size + 1, np.float32)
    for writable in (True, False):
        # a noise table from ray.get is a read-only view: numba compiles that type apart
        noise.flags.writeable = writable
        perturbed_returns(p, noise, np.zeros(1, np.int64), 0.1, np.zeros(1, np.int64), 10)
    _obs, _act, _logp, rew, done, _ret = sample_episodes(p, 0, 10, 10)
    discounted_returns(rew, done, 0.99)
