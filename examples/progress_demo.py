"""Progress bars: one bar over many tasks, and bars drawn from inside tasks.

    python examples/progress_demo.py

``mpray.util.progress(refs)`` blocks with a bar that moves as the tasks end (as Dask's
``progress``); ``tqdm_ray.tqdm`` is Ray's tqdm for remote code: the workers send their
bars' state, the driver draws them, each on a line of its own.
"""

import random
import time

import mpray as ray
from mpray.experimental import tqdm_ray
from mpray.util import progress


@ray.remote
def simulate(i):
    """A task of uneven length; one in ten fails."""
    time.sleep(random.uniform(0.05, 0.5))
    if i % 10 == 9:
        raise ValueError(f"sample {i} diverged")
    return i * i


@ray.remote
def train(name, epochs):
    """A task that reports its own progress."""
    for _ in tqdm_ray.tqdm(range(epochs), desc=name, flush_interval_s=0.2):
        time.sleep(0.05)
    return name


if __name__ == "__main__":
    ray.init(num_cpus=4)

    refs = [simulate.remote(i) for i in range(40)]
    failed = progress(refs, desc="simulations")  # shows "failed=N" as they fail
    print(f"{len(refs) - len(failed)} succeeded, {len(failed)} failed")

    print(ray.get([train.remote(f"model {k}", 40) for k in range(3)]))

    for _ in tqdm_ray.tqdm(range(20), desc="in the driver"):  # a plain tqdm bar here
        time.sleep(0.02)
    tqdm_ray.safe_print("done")
    ray.shutdown()
