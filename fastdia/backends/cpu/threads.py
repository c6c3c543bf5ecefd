"""OpenMP's thread pools and the threads that step a model.

torch's parallel operations and fastdia's kernels share one OpenMP runtime (the libgomp torch
loads). It keeps a pool of worker threads per thread that has started a parallel region, and
while the pools' workers, all pools together, plus one outnumber the CPUs, every worker of every
pool stops spinning between regions after ~100 tries and sleeps on a futex instead: each of a
step's hundreds of kernel calls then pays a wake-up. That is the usual case for a server, where
the model is loaded in one thread (which keeps its pool) and stepped in another. Measured on a
2-vCPU Xeon, 2 threads: a 2-thread region 1.5 us in a thread of its own, 32-38 us once another
thread holds a pool; a `dia2-tiny-random` slot-batch step 1.1 ms on the loading thread and 5.3 ms
on another; full-size Dia-1 int8, 57-59 against 66 ms.

`release_pool()` hands the calling thread's pool back (`omp_pause_resource_all`, OpenMP 5.0),
so the thread that loaded a model can leave the pools to the one that steps it. A later parallel
region in the same thread makes a new pool. Called at the end of `from_pretrained` (both
families), by `Engine.start` and by an idle engine, and after a server's voice upload is encoded.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger(__name__)

_OMP_PAUSE_SOFT = 1  # omp_pause_soft: threads released, nothing else of the runtime's state
_RTLD_NOLOAD = getattr(os, "RTLD_NOLOAD", 4)  # find a library only if it is already loaded


def _loaded_runtimes() -> list[str]:
    """The OpenMP runtimes this process has loaded, by soname and by path (a wheel may ship one
    under a hashed file name, e.g. libgomp-<hash>.so.1)."""
    names = ["libgomp.so.1", "libiomp5.so", "libomp.so"]
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split()[-1]
                base = os.path.basename(path)
                if base.startswith(("libgomp", "libiomp5", "libomp")) and path not in names:
                    names.append(path)
    except OSError:
        pass
    return names


@functools.lru_cache(maxsize=1)
def _pause():
    import torch  # noqa: F401  (loads the OpenMP runtime the kernels bind to)

    for name in _loaded_runtimes():
        try:  # already loaded by torch: the same runtime, not a second copy
            lib = ctypes.CDLL(name, mode=_RTLD_NOLOAD)
        except OSError:
            continue
        fn = getattr(lib, "omp_pause_resource_all", None)
        if fn is not None:
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            return fn
    return None


def release_pool() -> bool:
    """Release the calling thread's OpenMP worker threads; True if the runtime did. Call it from a
    thread that is done with parallel work (loading, encoding a voice) before others step models."""
    fn = _pause()
    if fn is None:
        return False
    try:
        return fn(_OMP_PAUSE_SOFT) == 0
    except OSError as exc:  # pragma: no cover - a runtime without the call
        log.debug("omp_pause_resource_all failed: %s", exc)
        return False
