"""``mpray.util.multiprocessing``: the standard library's ``multiprocessing.Pool`` API on
mpray (as ``ray.util.multiprocessing``): ``from mpray.util.multiprocessing import Pool``."""

from multiprocessing import TimeoutError

from .pool import AsyncResult, IMapIterator, Pool

__all__ = ["AsyncResult", "IMapIterator", "Pool", "TimeoutError"]
