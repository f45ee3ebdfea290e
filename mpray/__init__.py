"""mpray: Ray Core's programming model, multiprocessing-first, MPI-scaled.

``import mpray as ray`` runs ordinary Ray Core programs: remote tasks, shared immutable
objects (zero-copy numpy), nested tasks, cancellation and Ray's exception family.
"""

from . import exceptions
from .api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_actor,
    init,
    is_initialized,
    kill,
    method,
    nodes,
    put,
    remote,
    shutdown,
    timeline,
    wait,
)
from .generator import DynamicObjectRefGenerator, ObjectRefGenerator
from .object_ref import ObjectRef
from .runtime_context import get_gpu_ids, get_runtime_context
from . import util  # (as Ray does: ``ray.util.ActorPool`` after a bare ``import ray``)

__version__ = "0.1.0"

__all__ = [
    "DynamicObjectRefGenerator", "ObjectRef", "ObjectRefGenerator", "available_resources",
    "cancel", "cluster_resources", "exceptions", "get",
    "get_actor", "get_gpu_ids", "get_runtime_context", "init", "is_initialized", "kill",
    "method", "nodes",
    "put", "remote", "shutdown", "timeline", "util", "wait",
]
