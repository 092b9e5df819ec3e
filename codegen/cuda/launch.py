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


def flat(n: int) -> tuple[int, int]:
    """(blocks, threads) for a grid-stride loop over `n` items: `kernel[flat(n)][...]` style use is
    `kernel[blocks, threads, stream]`."""
    return blocks(n), THREADS
