"""The modules behind ``benchmarks/compare.py`` (and the ``mpray@REV`` trees of
``benchmarks/mpi_compare.py``; ``procs`` and ``revs`` also serve
``benchmarks/ray_microbenchmark.py``, whose own modules are in ``rmb/``).

compare.py puts ``benchmarks/`` first on ``sys.path`` (Python does that for a script),
so ``import bench.x`` works in the parent and in every per-peer worker subprocess.

| module | concern |
|---|---|
| ``params`` | parameters, the figure table, the groups |
| ``bodies`` | the task and actor bodies that run in the peers' workers |
| ``backends`` | one submit/get interface over mpray/Ray, Pool and ProcessPoolExecutor |
| ``measure`` | what every figure shares: Skip, FigError, medians, round trips, arrays |
| ``fig_tasks`` / ``fig_objects`` / ``fig_actors`` | the figures, by area |
| ``procs`` | process-tree helpers: PSS, CPU time, killing a worker's tree, reaping leftovers |
| ``worker`` | the per-peer subprocess: runs the groups, writes JSON lines |
| ``runner`` | the parent's side of one peer: command, environment, records, cells |
| ``report`` | the table, the notes, the JSON document |
| ``revs`` | ``mpray@REV`` peers: git worktrees and which mpray a process imported |
"""
