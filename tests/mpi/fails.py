"""Run under mpiexec -n N: the driver raises; the whole job must end promptly, non-zero,
with the traceback printed once."""

import mpray as ray

ray.init()


@ray.remote
def f(x):
    return x


assert ray.get([f.options(scheduling_strategy="SPREAD").remote(i) for i in range(8)]) \
    == list(range(8))
raise RuntimeError("the driver failed on purpose")
