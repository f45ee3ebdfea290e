"""The modules behind ``benchmarks/ray_microbenchmark.py``: Ray's own
microbenchmark (``ray/_private/ray_perf.py`` from the installed wheel) run with
Ray and with mpray standing in for ``ray``.

ray_microbenchmark.py puts ``benchmarks/`` first on ``sys.path`` (Python does
that for a script), so ``import rmb.x`` (and ``bench.x``, whose ``procs`` and
``revs`` it shares with compare.py) works in the parent and in every child.

| module | concern |
|---|---|
| ``segments`` | the wheel's files; ray_perf.main() cut into segments, recompiled with each in ``try`` |
| ``shim`` | loading ray_perf under real Ray, or under mpray made importable as ``ray`` |
| ``runner`` | the child's per-figure runner: hooks, counted ``timeit``, time limits (SIGALRM) |
| ``child`` | the child process of one side: load, hook, run, events as JSON lines |
| ``side`` | the parent's side of one side: child processes, hang watchdog, restarts, cells |
| ``report`` | progress lines, the table and the notes (also ``--report``) |
| ``parent`` | the parent: plan, run the sides, the JSON document |
"""
