"""What generated code may use, and the LLVM IR helpers the llvmlite microkernels share.

The microkernels (sgemm, qgemm) pick their instructions from `target_features()`, so it must be
Numba's own target (NUMBA_CPU_FEATURES when set, else the host's), not merely what the host has.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import config
from numba.core.codegen import get_host_cpu_features

_I32 = ir.IntType(32)


def target_features() -> frozenset[str]:
    """The CPU features Numba generates code for (NUMBA_CPU_FEATURES, else the host's)."""
    flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return frozenset(f[1:] for f in flat.split(",") if f.startswith("+"))


def declare(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    """The function `name` of `module` (an LLVM intrinsic or a helper), declared once."""
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name=name)
    return fn


def splat(builder: ir.IRBuilder, value: ir.Value, n: int) -> ir.Value:
    """`value` broadcast to every lane of an n-vector."""
    vec = builder.insert_element(ir.Constant(ir.VectorType(value.type, n), None), value, _I32(0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, n), [0] * n))
