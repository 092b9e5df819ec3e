"""Launch configurations and the conventions every CUDA kernel module follows.

A CUDA rule's `Call.kernel` names a *launcher*: a plain Python function `launcher(stream, *args)`
in a kernel module, where `args` are the call's arguments in order: device arrays for `Use`,
`Const` and `Scratch` (already reshaped to the view the rule asked for) and Python values for
`Lit`. The launcher picks the grid from the arrays' shapes and launches one or more `@cuda.jit`
kernels on `stream`; it never synchronises and never copies to the host.

Kernels loop grid-stride wherever the work is a flat index space, so any grid computes the same
result: under the simulator (`NUMBA_ENABLE_CUDASIM=1`, where every thread is a Python thread)
`grid` then launches a handful of threads instead of one per element.
"""

from __future__ import annotations

from numba import config

#: True when numba.cuda is the simulator (NUMBA_ENABLE_CUDASIM=1 set before numba was imported).
SIMULATOR: bool = bool(config.ENABLE_CUDASIM)

#: Threads per block for flat (grid-stride) kernels.
THREADS = 32 if SIMULATOR else 256
#: Most blocks a flat kernel launches: enough to fill an H100 (132 SMs x 16 blocks), few in the simulator.
MAX_BLOCKS = 2 if SIMULATOR else 132 * 16


def blocks(n: int, threads: int = THREADS) -> int:
    """Blocks for a grid-stride loop over `n` items."""
    return max(1, min(MAX_BLOCKS, (int(n) + threads - 1) // threads))


def _patch_simulator_shared_arrays() -> None:
    """Make the simulator's `cuda.shared.array` safe across a block's threads.

    numba-cuda's simulator (0.30) gives every thread of a block the array allocated for that source
    line, looked up and created without a lock: two threads can both miss and each get an array of
    its own, and then a shared-memory reduction silently combines only part of the block (seen as
    rare wrong sums in CI). The same lookup, under a lock."""
    import sys
    import threading
    import traceback

    import numpy as np
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support

    lock = threading.Lock()

    def array(self: kernelapi.FakeCUDAShared, shape: object, dtype: object, alignment: object = None) -> np.ndarray:
        if alignment is not None:
            raise RuntimeError("Array alignment is not supported in cudasim")
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        if shape == 0:  # dynamic shared memory: one buffer for every request
            count = self._dynshared_size // np.dtype(dtype).itemsize  # type: ignore[arg-type]
            return np.frombuffer(self._dynshared.data, dtype=dtype, count=count)
        caller = tuple(traceback.extract_stack(sys._getframe())[-2][0:2])
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)  # type: ignore[call-overload]
        return res

    kernelapi.FakeCUDAShared.array = array  # type: ignore[method-assign]


if SIMULATOR:
    _patch_simulator_shared_arrays()
