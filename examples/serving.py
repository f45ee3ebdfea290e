"""Embedded serving: a policy served by an mpray actor beside a plain HTTP server.

The Ray paper's Table 3 ("embedded serving", Ray against Clipper, a REST serving system):
clients send batches of states to a policy and get its actions back; the figures are
states per second and the latency of a request.  Here:

* the policy is a small numpy MLP (weights from a seed): a "small input" case, states of
  4 KB (1,024 float32) into a 1,024-512-256-16 network (2.6 MB of weights), and a "large
  input" case, states of 100 KB (25,600 float32) into a 25,600-32-256-16 network (3.3 MB),
  the two state sizes of the paper;
* mpray: one ``PolicyServer`` actor; client actors, placed with ``"SPREAD"`` (one per
  node under mpiexec), call ``server.act.remote(states)`` with a batch of 64 states per
  call (as the paper's clients did) and keep ``--in-flight`` calls outstanding each, so
  the actor always has the next batch queued;
* the baseline: ``http.server.ThreadingHTTPServer`` in a process of its own, the same
  policy, the same batches (numpy bytes as the POST body, the logits as the response),
  and as many client processes, each keeping ``--in-flight`` requests outstanding on as
  many ``http.client`` keep-alive connections.

Run:

    python examples/serving.py [--quick] [--json out.json]     # one host
    mpiexec -n 4 python examples/serving.py [--quick]           # every rank a node

Both systems have ``--clients`` clients (default: ``--ranks``, else the CPUs mpray sees)
and each client measures the latency of each of its requests, from sending the states to
holding the actions: it includes the wait behind the other outstanding requests
(``--clients`` x ``--in-flight`` of them).  Throughput is all the states served over the
wall time of the measured phase (every client connected and warmed up before it starts).
The two systems alternate for ``--rounds`` rounds (3; 1 with ``--quick``) and each figure
is its median over them: on a small shared machine single runs vary by tens of per cent.
Some of the served actions are checked against the policy evaluated locally, both systems.

Honest notes:

* Batching: each call carries one client's batch of 64 states, and the server evaluates
  one call's batch at a time, in both systems: each takes calls in on several threads
  (the actor's ``max_concurrency``, the HTTP server's thread per connection) and
  evaluates under a lock, one model replica.  Neither merges concurrent calls into a
  larger batch: the per-state cost of this MLP's matmuls is the same at 64 states as
  at 256 (measured here), merging would add a copy, and the paper's comparison is about
  what carries the states, not about batching policies.
* One server process uses one core in both systems: BLAS threads are set to 1 (before
  numpy is imported; set ``OPENBLAS_NUM_THREADS`` etc. to override), so that the
  server's matmuls do not fight the clients for this machine's cores.
* The clients send the same few batches over and over (made once, from a seed), so that
  what is measured is the serving, not the making of random states.  The states still
  travel with every request: an actor call's argument (put in the object store: 256 KB
  or 6.4 MB a call), an HTTP request's body.
* Under mpiexec on one host the HTTP baseline's processes all run on that host, as the
  mpray ranks do; mpray's clients on other ranks reach the actor on rank 0 through the
  ranks' nodes (and their states by MPI RMA), so that case measures mpray's
  cross-rank path, which the one-host HTTP baseline does not have.  With more ranks than
  cores (4 on 2 here) that path is slow: each rank's MPI agent polls every 50 µs while
  there is traffic (MPICH gives it nothing to sleep on), and the four agents then take
  as much CPU as the policy does.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # why: see "one server process, one core" above

import collections  # noqa: E402
import http.client  # noqa: E402
import http.server  # noqa: E402
import multiprocessing  # noqa: E402
import queue  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402

import common  # noqa: E402
import mpray as ray  # noqa: E402

ACTIONS = 16       # the policy's outputs (logits) per state
POOL = 4           # distinct batches each client sends, in turn; all are checked
WAIT_S = 120       # bound on every wait for the HTTP baseline's processes


@dataclass(frozen=True)
class Case:
    """One row of the table: a state size and the network that reads it."""
    name: str
    state_dim: int
    hidden: tuple
    requests: int        # per client, in a full run
    quick_requests: int  # per client, with --quick


CASES = {
    "small": Case("small input (4 KB states)", 1024, (512, 256), 1500, 150),
    "large": Case("large input (100 KB states)", 25_600, (32, 256), 200, 25),
}


class Policy:
    """A ReLU MLP, float32, its weights drawn from ``seed``: logits for a batch of states."""

    def __init__(self, case: Case, seed: int = 0):
        rng = np.random.default_rng(seed)
        sizes = (case.state_dim, *case.hidden, ACTIONS)
        self.layers = [((rng.standard_normal((a, b), dtype=np.float32)
                         / np.float32(np.sqrt(a))), np.zeros(b, np.float32))
                       for a, b in zip(sizes[:-1], sizes[1:])]

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes + b.nbytes for w, b in self.layers)

    def __call__(self, states: np.ndarray) -> np.ndarray:
        x = states
        for i, (w, b) in enumerate(self.layers):
            x = x @ w
            x += b
            if i < len(self.layers) - 1:
                np.maximum(x, 0, out=x)
        return x


def client_states(case: Case, client: int, batch: int) -> list:
    """The ``POOL`` batches client ``client`` sends in turn (the driver remakes them to
    check the answers)."""
    rng = np.random.default_rng(1000 + client)
    return [rng.standard_normal((batch, case.state_dim), dtype=np.float32)
            for _ in range(POOL)]


def pipeline(send, receive, requests: int, in_flight: int):
    """Make ``requests`` requests, ``in_flight`` outstanding at a time, answered in order:
    ``send(i)`` starts request i and returns a token, ``receive(token)`` waits for its
    answer.  Returns each request's latency (seconds) and the first ``POOL`` answers.
    Both systems' clients run this loop, so they are measured alike."""
    pending = collections.deque()
    latency = np.empty(requests)
    kept = []

    def finish():
        i, t, token = pending.popleft()
        out = receive(token)
        latency[i] = time.perf_counter() - t
        if i < POOL:
            kept.append(np.array(out))  # a copy: the answer may be a view of a buffer

    for i in range(requests):
        if len(pending) == in_flight:
            finish()
        pending.append((i, time.perf_counter(), send(i)))
    while pending:
        finish()
    return latency, kept


# ---------------------------------------------------------------------------- mpray


@ray.remote
class PolicyServer:
    """The policy, served: one call is one client's batch of states.

    Made with ``max_concurrency`` = every call that can be outstanding, as the HTTP server
    has a thread per connection: taking in the next call overlaps the current matmul
    (numpy releases the GIL), and the lock keeps to one evaluation at a time (one model
    replica).  Here this served 15-20 % more states/s than a plain one-call-at-a-time
    actor."""

    def __init__(self, case: Case):
        self.policy = Policy(case)
        self.lock = threading.Lock()

    def act(self, states: np.ndarray) -> np.ndarray:
        with self.lock:
            return self.policy(states)


@ray.remote
class Client:
    """A simulation's stand-in: sends its batches of states to the server, many times."""

    def __init__(self, server, case: Case, index: int, batch: int):
        self.server = server
        self.states = client_states(case, index, batch)
        ray.get([server.act.remote(s) for s in self.states])  # warm up: the first calls

    def run(self, requests: int, in_flight: int):
        def send(i):
            return self.server.act.remote(self.states[i % POOL])

        latency, kept = pipeline(send, ray.get, requests, in_flight)
        return ray.get_runtime_context().get_node_id(), latency, kept


def run_mpray(case: Case, args) -> dict:
    server = PolicyServer.options(max_concurrency=args.clients * args.in_flight).remote(case)
    clients = [Client.options(scheduling_strategy="SPREAD").remote(server, case, i, args.batch)
               for i in range(args.clients)]
    ray.get([c.__ray_ready__.remote() for c in clients])
    with common.Stopwatch() as t:
        results = ray.get([c.run.remote(requests(args, case), args.in_flight)
                           for c in clients])
    nodes = {node for node, _lat, _kept in results}
    check(case, args.batch, [kept for _node, _lat, kept in results], "mpray")
    for a in [*clients, server]:
        ray.kill(a)
    return figures(args, t.s, [lat for _node, lat, _kept in results],
                   clients_on=len(nodes))


# ---------------------------------------------------------------------- HTTP server


def http_server(case: Case, port_q, stop) -> None:
    """The baseline's server process: the policy behind POST /act, one evaluation at a
    time (a lock: one model replica, as the actor is), until ``stop`` is set."""
    policy = Policy(case)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"    # keep-alive connections
        disable_nagle_algorithm = True   # headers and body go out without a delay

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            states = np.frombuffer(body, np.float32).reshape(-1, case.state_dim)
            with lock:
                out = policy(states)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(out.nbytes))
            self.end_headers()
            self.wfile.write(memoryview(out).cast("B"))

        def log_message(self, *args):  # no line per request on stderr
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port_q.put(server.server_address[1])
    stop.wait()
    server.shutdown()
    server.server_close()


def http_client(port: int, case: Case, index: int, batch: int, requests: int,
                in_flight: int, ready, start, results) -> None:
    """The baseline's client process: ``in_flight`` keep-alive connections, one request
    outstanding on each, used in turn (request i on connection i % in_flight)."""
    states = client_states(case, index, batch)
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
             for _ in range(in_flight)]
    headers = {"Content-Type": "application/octet-stream"}

    def send(i):
        conn = conns[i % in_flight]
        conn.request("POST", "/act", body=memoryview(states[i % POOL]).cast("B"),
                     headers=headers)
        return conn

    def receive(conn):
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
        return np.frombuffer(body, np.float32).reshape(-1, ACTIONS)

    try:
        pipeline(send, receive, max(in_flight, POOL), in_flight)  # warm up every connection
        ready.put(index)
        if not start.wait(WAIT_S):
            return
        latency, kept = pipeline(send, receive, requests, in_flight)
        results.put((index, latency, kept))
    finally:
        for conn in conns:
            conn.close()


def run_http(case: Case, args) -> dict:
    # spawn, not fork: this process may have initialised MPI, and forking it is unsafe
    ctx = multiprocessing.get_context("spawn")
    port_q, ready, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    stop, start = ctx.Event(), ctx.Event()
    server = ctx.Process(target=http_server, args=(case, port_q, stop), daemon=True)
    procs = [server]
    try:
        server.start()
        port = get(port_q, procs)
        for i in range(args.clients):
            procs.append(ctx.Process(target=http_client, daemon=True, args=(
                port, case, i, args.batch, requests(args, case), args.in_flight,
                ready, start, results)))
            procs[-1].start()
        for _ in range(args.clients):
            get(ready, procs)
        with common.Stopwatch() as t:
            start.set()
            got = sorted((get(results, procs) for _ in range(args.clients)),
                         key=lambda r: r[0])
    finally:
        start.set()  # a client still waiting to start returns at once
        stop.set()
        end_processes(procs)
    check(case, args.batch, [kept for _i, _lat, kept in got], "HTTP server")
    return figures(args, t.s, [lat for _i, lat, _kept in got])


def get(q, procs):
    """The next item of ``q``; raises if it takes ``WAIT_S`` or one of ``procs`` fails."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            return q.get(timeout=0.5)
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"an HTTP baseline process failed: {dead[0]}")
    raise TimeoutError(f"the HTTP baseline did not answer in {WAIT_S} s")


def end_processes(procs) -> None:
    """Join every process, within bounds; terminate (then kill) what is left."""
    deadline = time.monotonic() + 10
    for p in procs:
        if p.pid is not None:
            p.join(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
            p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


# ---------------------------------------------------------------------- both


def check(case: Case, batch: int, kept_per_client: list, who: str) -> None:
    """The served actions of each client's ``POOL`` batches equal the local policy's (to
    float32 rounding: a matmul's last bits may depend on how its input is aligned)."""
    policy = Policy(case)
    for i, kept in enumerate(kept_per_client):
        assert len(kept) == POOL, (who, i, len(kept))
        for states, out in zip(client_states(case, i, batch), kept):
            np.testing.assert_allclose(out, policy(states), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{who}: client {i}'s served actions")


def figures(args, wall_s: float, latencies: list, **extra) -> dict:
    lat = np.concatenate(latencies) * 1e3
    return {"states_per_s": lat.size * args.batch / wall_s, "wall_s": wall_s,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "requests": int(lat.size), **extra}


def print_row(case: Case, who: str, f: dict) -> None:
    where = f" (clients on {f['clients_on']:.0f} node(s))" if "clients_on" in f else ""
    print(f"  {case.name:<28} {who:<12} {f['states_per_s']:10,.0f} states/s   "
          f"p50 {f['p50_ms']:7.2f} ms   p99 {f['p99_ms']:7.2f} ms{where}", flush=True)


def parse_args():
    p = common.parser(__doc__)
    p.add_argument("--cases", default="small,large",
                   help="which cases, comma-separated: small, large (default: both)")
    p.add_argument("--clients", type=int, default=None,
                   help="clients in each system (default: the CPUs mpray sees)")
    p.add_argument("--batch", type=int, default=64, help="states per request (64)")
    p.add_argument("--in-flight", type=int, default=4,
                   help="requests each client keeps outstanding (4)")
    p.add_argument("--requests", type=int, default=None,
                   help="requests per client (default: per case; fewer with --quick)")
    p.add_argument("--rounds", type=int, default=None,
                   help="rounds of both systems, alternating; the figures are the medians "
                        "(default: 3, 1 with --quick)")
    args = p.parse_args()
    args.cases = [CASES[c.strip()] for c in args.cases.split(",") if c.strip()]
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def requests(args, case: Case) -> int:
    return args.requests or (case.quick_requests if args.quick else case.requests)


def main() -> None:
    args = parse_args()
    ray.init()  # under mpiexec, ranks other than 0 serve in here and exit at the end
    if args.clients is None:
        args.clients = args.ranks or int(ray.cluster_resources()["CPU"])
    print(f"{args.clients} clients, {args.batch} states per request, {args.in_flight} "
          f"in flight each, on {len(ray.nodes())} node(s)")
    systems = {"mpray": run_mpray}
    if not args.no_baseline:
        systems["HTTP server"] = run_http  # runs while mpray's idle session waits
    runs = {case.name: {who: [] for who in systems} for case in args.cases}
    # the systems alternate, round after round: other load on the machine then moves
    # both systems' figures alike, and the medians over rounds are steadier
    for r in range(args.rounds):
        if args.rounds > 1:
            print(f"round {r + 1} of {args.rounds}")
        for case in args.cases:
            for who, run in systems.items():
                runs[case.name][who].append(run(case, args))
                print_row(case, who, runs[case.name][who][-1])
    ray.shutdown()
    report_all(args, {name: {who: medians(fs) for who, fs in by.items()}
                      for name, by in runs.items()})
    print("OK serving")


def medians(rounds: list) -> dict:
    """Each figure's median over the rounds."""
    return {k: float(np.median([f[k] for f in rounds])) for k in rounds[0]}


def report_all(args, figs: dict) -> None:
    """The first case is the headline figure; every case's figures go in the JSON."""
    head = args.cases[0].name
    m, h = figs[head]["mpray"], figs[head].get("HTTP server")
    extra = {"clients": args.clients, "batch": args.batch, "in_flight": args.in_flight,
             "rounds": args.rounds, "cases": figs, "case": head,
             "p50_ms": m["p50_ms"], "p99_ms": m["p99_ms"]}
    if h:
        extra.update(http_p50_ms=h["p50_ms"], http_p99_ms=h["p99_ms"])
    if args.rounds > 1:
        print(f"\nmedians of {args.rounds} rounds:")
        for case in args.cases:
            for who, f in figs[case.name].items():
                print_row(case, who, f)
    for case in args.cases[1:]:
        if "HTTP server" in figs[case.name]:
            ratio = (figs[case.name]["mpray"]["states_per_s"]
                     / figs[case.name]["HTTP server"]["states_per_s"])
            print(f"\n{case.name}: mpray is {ratio:.2f}x the HTTP server's states/s")
    common.report(args, "serving", f"policy serving, {head}", "states/s", m["states_per_s"],
                  {"HTTP server": h and h["states_per_s"]}, higher_is_better=True, **extra)


if __name__ == "__main__":
    main()
