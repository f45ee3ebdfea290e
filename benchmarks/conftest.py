"""pytest configuration for the benchmark suite (not part of the CI tests).

Run with ``python -m pytest benchmarks/ --benchmark-only``.  The default
``pytest`` run does not collect this folder (pyproject: testpaths=["tests"]).
"""

import os
import sys

# Make the repository's mpray importable without installing it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
# Keep a Ray run (MPRAY_BENCH_MODULE=ray) on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
