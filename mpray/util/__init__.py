"""``mpray.util``: ActorPool and scheduling strategies (as in ``ray.util``)."""

from .actor_pool import ActorPool

__all__ = ["ActorPool"]
