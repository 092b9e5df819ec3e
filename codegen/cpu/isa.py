"""What the generated code may use: the CPU features Numba compiles for.

The llvmlite microkernels (sgemm, qgemm) pick their instructions from this set, so it must be
Numba's own target (NUMBA_CPU_FEATURES when set, else the host's), not merely what the host has.
"""

from __future__ import annotations

from numba.core import config
from numba.core.codegen import get_host_cpu_features


def target_features() -> frozenset[str]:
    """The CPU features Numba generates code for (NUMBA_CPU_FEATURES, else the host's)."""
    flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return frozenset(f[1:] for f in flat.split(",") if f.startswith("+"))
