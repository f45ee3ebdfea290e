"""Actors: not built yet (issue 3). Every entry point fails with a clear message."""

from __future__ import annotations

from typing import Any

_MSG = "actors are not supported by this version of mpray yet (remote classes arrive next)"


def make_actor_class(cls: type, options: dict) -> Any:
    raise NotImplementedError(f"@mpray.remote on class {cls.__name__}: {_MSG}")


def kill_actor(actor: Any, no_restart: bool = True) -> None:
    raise NotImplementedError(f"mpray.kill: {_MSG}")


def lookup_actor(name: str, namespace: str | None = None) -> Any:
    raise ValueError(f"Failed to look up actor with name '{name}': {_MSG}")


def method(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError(f"mpray.method: {_MSG}")


def exit_actor() -> None:
    raise NotImplementedError(f"mpray.actor.exit_actor: {_MSG}")
