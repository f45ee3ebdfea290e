#!/usr/bin/env bash
# The MPI figures as a scaling curve, for a machine with more cores (16 here): no-op task
# throughput at 1..N ranks beside MPICommExecutor, fetch, allreduce at 4 and N ranks, then
# the MPI test scripts and example at N ranks.  Every step is bounded in time.
#   bash benchmarks/mpi_scaling.sh [N] [OUTDIR]
set -u
N=${1:-16}
OUT=${2:-.}
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ranks=1; r=2; while [ "$r" -le "$N" ]; do ranks="$ranks,$r"; r=$((r * 2)); done
echo "# $(nproc) CPUs; ranks $ranks"
timeout 60 mpiexec -n 2 python -c "from mpi4py import MPI; c = MPI.COMM_WORLD; \
print('mpi ok', c.rank, c.size, MPI.Get_library_version().splitlines()[0])" || exit 1
timeout 900 python benchmarks/mpi_compare.py --ranks "$ranks" --allreduce-ranks "4,$N" \
    --repeat 3 --timeout 120 --json "$OUT/mpi_scaling.json" 2>&1 | tee "$OUT/mpi_scaling.txt"
for s in tests/mpi/actors_spill.py tests/mpi/basics.py tests/mpi/inbox.py examples/mpi_demo.py; do
    t0=$SECONDS
    timeout 120 mpiexec -n "$N" python "$s" > "$OUT/run.log" 2>&1
    rc=$?
    echo "$s at $N ranks: rc=$rc, $((SECONDS - t0)) s: $(grep -E '^OK' "$OUT/run.log" | head -1)"
    [ $rc -eq 0 ] || tail -20 "$OUT/run.log"
done
