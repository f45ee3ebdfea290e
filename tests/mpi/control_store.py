"""Under mpiexec: every rank's tasks, workers and node reach the session's store (one
file per rank in one session directory), and the state API, the timeline, the CLI and
the report read them all."""

import subprocess
import sys
import time

import mpray
from mpray.util import state
from mpray_mpi.launch import detect

mpray.init(num_cpus=2)
n = mpray.cluster_resources().get("CPU", 0)
ranks = detect().size


@mpray.remote(scheduling_strategy="SPREAD")
def where(i):
    time.sleep(0.05)
    return mpray.get_runtime_context().get_node_id()


nodes = set(mpray.get([where.remote(i) for i in range(4 * ranks)]))
assert len(nodes) == ranks, (nodes, ranks)
tasks = state.list_tasks(filters=[("name", "=", "where")], limit=None)
assert len(tasks) == 4 * ranks, len(tasks)
assert {t["state"] for t in tasks} == {"FINISHED"}
assert {t["rank"] for t in tasks} == set(range(ranks)), {t["rank"] for t in tasks}
assert sorted(n["rank"] for n in state.list_nodes()) == list(range(ranks))
rows = {e["pid"] for e in mpray.timeline() if e["ph"] == "M" and e["name"] == "process_name"}
assert rows == set(range(ranks)), rows
session = mpray.get_runtime_context().get_node_id() and state.session_dir()
mpray.shutdown()
out = subprocess.run([sys.executable, "-m", "mpray.control.cli", "list", "nodes",
                      "--session", session], capture_output=True, text=True, timeout=60)
assert out.returncode == 0, out.stderr
assert out.stdout.count("ALIVE") + out.stdout.count("DEAD") == ranks, out.stdout
# the report covers the whole job: a timeline row for the workers of every rank
from mpray.control import report  # noqa: E402
from mpray.control.reader import Reader  # noqa: E402

page = report.build(Reader(session))
assert all(f"rank {r} pid" in page for r in range(ranks)), "a rank missing in the report"
print("OK control_store", flush=True)
