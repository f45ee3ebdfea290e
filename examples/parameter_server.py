"""A parameter server: synchronous and asynchronous SGD with the weights in an actor.

The Ray paper's distributed-training workload (section 5.2, Fig. 13: data-parallel SGD
with the weights kept by Ray actors, beside MPI allreduce): a parameter-server actor holds
the weights of a model; worker actors, each holding a shard of the training data, compute
gradients on the weights they are sent and the server applies them.

* synchronous SGD: every iteration each worker computes a gradient on the same weights;
  the server averages them and makes the next weights.  The driver only wires refs
  together (``ps.apply_gradients.remote(*grads)``), so no weights or gradients pass
  through it: they go worker -> server -> worker through the object store.
* asynchronous SGD: each worker loops on its own (the server's handle is passed to it),
  pushing its gradient and pulling the weights the server has at that moment.

The model is a multi-layer perceptron (256 inputs, 4096 hidden ReLU units, 10 classes:
4.2 MiB of float32 weights, so that moving weights and gradients is a real share of each
step, as in the paper -- though far from its ResNet-101) trained on a synthetic classification problem made from a seed (no downloads).  The
baseline is data-parallel SGD as an MPI program would do it: every rank keeps a copy of
the weights, computes the gradient of its shard and ``comm.Allreduce``s it -- the same
model, data, shards, batches and learning rate as the synchronous version, so both end
with (nearly) the same weights.

    python examples/parameter_server.py [--quick] [--ranks K] [--json out.json]
    mpiexec -n 4 python examples/parameter_server.py --quick

Figure: training samples per second of synchronous SGD beside the Allreduce baseline;
the asynchronous version's figure and every version's test accuracy come with it.

Honest notes: the model is a plain numpy MLP (no autodiff library); one BLAS thread per
process, so that K workers use K cores as K MPI ranks do; one server shard (the paper
also shards the server across actors, which pays off on many nodes, not on one host);
iteration 0 of each run (actor start, first data fetch) is left out of the timing, in the
baseline too.
"""

from __future__ import annotations

import os
import time

# One BLAS thread per process, set before numpy loads: each worker (and each MPI rank) is
# given one CPU, as Ray does with OMP_NUM_THREADS; more would oversubscribe the cores.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import common  # noqa: E402
import mpray as ray  # noqa: E402

SEED = 0


def config(args) -> dict:
    """The run's sizes: the same on every rank and in every version."""
    return dict(features=256, hidden=args.hidden, classes=10, batch=args.batch, lr=0.2,
                train=16384 if args.quick else 65536, test=4096,
                iters=args.iters or (20 if args.quick else 200))


# --------------------------------------------------------------------------- the model


class MLP:
    """A two-layer perceptron whose weights live in one flat float32 vector, so that the
    server, the object store and ``Allreduce`` each handle one buffer.

    ``gradient`` works in buffers kept from one step to the next: its temporaries are
    megabytes, which malloc would hand back to the system after each step and take again,
    fresh pages faulting in, at the next (several ms a step)."""

    def __init__(self, features: int, hidden: int, classes: int):
        self.shapes = [(features, hidden), (hidden,), (hidden, classes), (classes,)]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.size = sum(self.sizes)
        self.grad = np.empty(self.size, np.float32)  # gradient's result, overwritten
        self.work = None  # per batch size: hidden activations, mask, logits, d hidden

    def views(self, flat: np.ndarray) -> list[np.ndarray]:
        """W1, b1, W2, b2 as views into ``flat`` (no copies)."""
        out, at = [], 0
        for shape, n in zip(self.shapes, self.sizes):
            out.append(flat[at:at + n].reshape(shape))
            at += n
        return out

    def init(self, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        flat = np.zeros(self.size, np.float32)
        w1, _b1, w2, _b2 = self.views(flat)
        w1[:] = rng.standard_normal(w1.shape) * np.sqrt(2 / w1.shape[0])  # He init
        w2[:] = rng.standard_normal(w2.shape) * np.sqrt(1 / w2.shape[0])
        return flat

    def _workspace(self, n: int):
        if self.work is None or len(self.work[0]) != n:
            hidden, classes = self.shapes[2]
            self.work = (np.empty((n, hidden), np.float32), np.empty((n, hidden), bool),
                         np.empty((n, classes), np.float32), np.empty((n, hidden), np.float32))
        return self.work

    def gradient(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The gradient of the mean softmax cross-entropy over the batch (x, y), in
        ``self.grad`` (overwritten by the next call: send or reduce it before)."""
        w1, b1, w2, b2 = self.views(flat)
        h, active, p, dh = self._workspace(len(y))
        np.matmul(x, w1, out=h)
        h += b1
        np.maximum(h, 0, out=h)
        np.matmul(h, w2, out=p)
        p += b2
        p -= p.max(axis=1, keepdims=True)
        np.exp(p, out=p)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1  # d loss / d logits = softmax - onehot
        p /= len(y)
        g1, gb1, g2, gb2 = self.views(self.grad)
        np.matmul(h.T, p, out=g2)
        p.sum(axis=0, out=gb2)
        np.matmul(p, w2.T, out=dh)
        np.multiply(dh, np.greater(h, 0, out=active), out=dh)  # through the ReLU
        np.matmul(x.T, dh, out=g1)
        dh.sum(axis=0, out=gb1)
        return self.grad

    def accuracy(self, flat: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
        w1, b1, w2, b2 = self.views(flat)
        return float(((np.maximum(x @ w1 + b1, 0) @ w2 + b2).argmax(axis=1) == y).mean())


def model_of(cfg: dict) -> MLP:
    return MLP(cfg["features"], cfg["hidden"], cfg["classes"])


# ---------------------------------------------------------------------------- the data


def make_dataset(cfg: dict):
    """Gaussian clusters, two per class, overlapping enough that about 95 % is reachable:
    the same arrays from the same seed on every rank."""
    rng = np.random.default_rng(SEED)
    k, d, n = cfg["classes"], cfg["features"], cfg["train"] + cfg["test"]
    centres = rng.standard_normal((2 * k, d)).astype(np.float32) * 0.32
    cluster = rng.integers(0, 2 * k, n)
    x = centres[cluster] + rng.standard_normal((n, d), dtype=np.float32)
    y = cluster % k
    t = cfg["train"]
    return x[:t], y[:t], x[t:], y[t:]


def shard(x, y, i: int, n: int):
    """Worker (rank) i's contiguous share of the training set."""
    cuts = np.linspace(0, len(x), n + 1).astype(int)
    return x[cuts[i]:cuts[i + 1]], y[cuts[i]:cuts[i + 1]]


def batch(x, y, step: int, size: int):
    """The batch of a step: the shard's batches in turn, an epoch after another."""
    at = (step % (len(x) // size)) * size
    return x[at:at + size], y[at:at + size]


# --------------------------------------------------------------- the mpi4py baseline


def baseline(comm, args) -> dict:
    """Data-parallel SGD: each rank computes its shard's gradient, Allreduce sums them,
    and every rank applies the same mean to its own copy of the weights."""
    from mpi4py import MPI

    cfg = config(args)
    model = model_of(cfg)
    x, y, x_test, y_test = make_dataset(cfg)
    xs, ys = shard(x, y, comm.rank, comm.size)
    params = model.init(SEED)
    for step in range(cfg["iters"]):
        if step == 1:  # iteration 0 warms up, as in mpray's run
            comm.Barrier()
            t0 = time.perf_counter()
        grad = model.gradient(params, *batch(xs, ys, step, cfg["batch"]))
        comm.Allreduce(MPI.IN_PLACE, grad, op=MPI.SUM)
        grad *= cfg["lr"] / comm.size  # the server's arithmetic, in the same order
        params -= grad
    comm.Barrier()
    seconds = time.perf_counter() - t0
    samples = (cfg["iters"] - 1) * cfg["batch"] * comm.size
    return {"samples_per_s": samples / seconds, "ranks": comm.size,
            "accuracy": model.accuracy(params, x_test, y_test)}


# ------------------------------------------------------------------- mpray's version


@ray.remote
class ParameterServer:
    """Holds the weights; every update returns the new weights (a ref, for the workers)."""

    def __init__(self, params: np.ndarray, lr: float):
        self.params = params.copy()  # the argument is a read-only view into the store
        self.step = np.empty_like(self.params)  # reused, as the workers' buffers are
        self.lr = lr
        self.updates = 0

    def get_params(self) -> np.ndarray:
        return self.params

    def apply_gradients(self, *grads: np.ndarray) -> np.ndarray:
        """Apply the mean of ``grads`` (one gradient in asynchronous SGD)."""
        step = self.step
        np.copyto(step, grads[0])
        for g in grads[1:]:
            step += g
        step *= self.lr / len(grads)
        self.params -= step
        self.updates += 1
        return self.params  # copied into the store as it returns: a snapshot

    def num_updates(self) -> int:
        return self.updates


@ray.remote
class DataWorker:
    """Holds one shard of the training data (read-only views into the object store)."""

    def __init__(self, cfg: dict, x: np.ndarray, y: np.ndarray):
        self.model = model_of(cfg)
        self.batch = cfg["batch"]
        self.x, self.y = x, y

    def compute_gradients(self, params: np.ndarray, step: int) -> np.ndarray:
        return self.model.gradient(params, *batch(self.x, self.y, step, self.batch))

    def train_async(self, ps, steps: int) -> int:
        """Asynchronous SGD: push a gradient, pull whatever weights the server has now."""
        params = ray.get(ps.get_params.remote())
        for step in range(steps):
            params = ray.get(ps.apply_gradients.remote(self.compute_gradients(params, step)))
        return steps


def train_sync(ps, workers, iters: int) -> tuple[ray.ObjectRef, float]:
    """Synchronous SGD: the driver only wires refs together; weights and gradients go
    worker -> server -> worker through the object store.  Iteration 0 (actors starting,
    shards fetched) is run before the clock starts."""
    params = ps.get_params.remote()
    for step in range(iters):
        grads = [w.compute_gradients.remote(params, step) for w in workers]
        params = ps.apply_gradients.remote(*grads)
        # One iteration in flight: the next one needs these weights anyway, so waiting
        # costs only the submission.  (Submitting the whole chain in one go also runs, but
        # mpray at present does not free the gradients of such a chain.)
        ray.wait([params], fetch_local=False)
        if step == 0:
            t0 = time.perf_counter()
    return params, time.perf_counter() - t0


def run_mpray(cfg: dict) -> dict:
    model = model_of(cfg)
    n = int(ray.cluster_resources()["CPU"])
    x, y, x_test, y_test = make_dataset(cfg)
    init_ref = ray.put(model.init(SEED))
    # each shard is put once; a worker keeps zero-copy views of its own (fetched once by
    # RMA when it lives on another rank)
    shards = [tuple(ray.put(a) for a in shard(x, y, i, n)) for i in range(n)]
    workers = [DataWorker.options(scheduling_strategy="SPREAD").remote(cfg, *s)
               for s in shards]
    per_iter = cfg["batch"] * n

    ps = ParameterServer.remote(init_ref, cfg["lr"])
    final, seconds = train_sync(ps, workers, cfg["iters"])
    sync_acc = model.accuracy(ray.get(final), x_test, y_test)
    sync_rate = (cfg["iters"] - 1) * per_iter / seconds
    print(f"sync:  {n} workers, {cfg['iters']} iterations, {sync_rate:9.0f} samples/s, "
          f"test accuracy {sync_acc:.3f}")

    ps = ParameterServer.remote(init_ref, cfg["lr"])  # afresh, from the same weights
    with common.Stopwatch() as t:
        done = ray.get([w.train_async.remote(ps, cfg["iters"]) for w in workers])
    async_params = ray.get(ps.get_params.remote())
    assert ray.get(ps.num_updates.remote()) == sum(done) == cfg["iters"] * n
    async_acc = model.accuracy(async_params, x_test, y_test)
    async_rate = cfg["iters"] * per_iter / t.s
    print(f"async: {n} workers, {cfg['iters']} steps each, {async_rate:9.0f} samples/s, "
          f"test accuracy {async_acc:.3f}")
    return {"workers": n, "sync_samples_per_s": sync_rate, "sync_accuracy": sync_acc,
            "async_samples_per_s": async_rate, "async_accuracy": async_acc,
            "weights_mb": model.size * 4 / 2**20}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--iters", type=int, default=None,
                   help="iterations of synchronous SGD (steps per worker in async)")
    p.add_argument("--batch", type=int, default=256, help="samples per worker per step")
    p.add_argument("--hidden", type=int, default=4096, help="hidden units (weights' size)")
    args = p.parse_args()

    base = common.run_baseline(args, baseline)
    if common.is_baseline_child(args):
        return
    ray.init()
    cfg = config(args)
    out = run_mpray(cfg)
    if base:
        print(f"mpi4py Allreduce: {base['ranks']} ranks, {base['samples_per_s']:9.0f} "
              f"samples/s, test accuracy {base['accuracy']:.3f}")
    # a problem ~95 % learnable: each version must get most of the way there
    floor = 0.85
    assert out["sync_accuracy"] > floor and out["async_accuracy"] > floor, out
    if base:
        assert base["accuracy"] > floor, base
        if base["ranks"] == out["workers"]:  # the same computation up to rounding
            assert abs(base["accuracy"] - out["sync_accuracy"]) < 0.01, (base, out)
    common.report(args, "parameter_server", "synchronous SGD throughput", "samples/s",
                  out["sync_samples_per_s"],
                  {"mpi4py Allreduce": base and base["samples_per_s"]},
                  mpi4py_accuracy=base and base["accuracy"], **out)
    ray.shutdown()
    print("OK parameter_server")


if __name__ == "__main__":
    main()
