"""sgemm from Numba code, on strided sub-matrices, in functions Numba can cache.

Numba's `np.dot` wants contiguous operands, allocates on mismatch and, called inside a `prange`,
makes the caller uncacheable (it holds the BLAS function as a ctypes pointer). Here the Fortran
`sgemm` of SciPy's BLAS (the one Numba itself links) is registered with LLVM under a symbol name
and called from a Numba intrinsic, so compiled code refers to it by name: it caches, and it takes
leading dimensions, so a block of columns of C is a valid output without a copy.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import get_cython_function_address, intrinsic

SYMBOL = "mcc_blas_sgemm"
llvm.add_symbol(SYMBOL, get_cython_function_address("scipy.linalg.cython_blas", "sgemm"))


@intrinsic
def _sgemm(typingctx, m, n, k, a, lda, b, ldb, c, ldc, beta):  # type: ignore[no-untyped-def]
    """Column-major sgemm('N', 'N', m, n, k, 1, a, lda, b, ldb, beta, c, ldc) on array data pointers."""
    sig = types.void(types.intp, types.intp, types.intp, a, types.intp, b, types.intp, c, types.intp,
                     types.float32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        m_, n_, k_, a_, lda_, b_, ldb_, c_, ldc_, beta_ = args
        i32, f32 = ir.IntType(32), ir.FloatType()
        i8p, f32p, i32p = ir.IntType(8).as_pointer(), f32.as_pointer(), i32.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i8p, i32p, i32p, i32p, f32p, f32p, i32p, f32p, i32p, f32p,
                                               f32p, i32p])
        fn = cgutils.get_or_insert_function(builder.module, fnty, SYMBOL)

        def ref(value, ty):  # type: ignore[no-untyped-def]
            slot = cgutils.alloca_once(builder, ty)
            builder.store(value, slot)
            return slot

        def int32(v):  # type: ignore[no-untyped-def]
            return ref(builder.trunc(v, i32), i32)

        def data(arr, aty):  # type: ignore[no-untyped-def]
            return builder.bitcast(context.make_array(aty)(context, builder, arr).data, f32p)

        trans = ref(ir.Constant(ir.IntType(8), ord("N")), ir.IntType(8))
        builder.call(fn, [trans, trans, int32(m_), int32(n_), int32(k_), ref(ir.Constant(f32, 1.0), f32),
                          data(a_, signature.args[3]), int32(lda_), data(b_, signature.args[5]), int32(ldb_),
                          ref(beta_, f32), data(c_, signature.args[7]), int32(ldc_)])
        return context.get_dummy_value()

    return sig, codegen


@njit(cache=True)
def sgemm(a, b, c, beta=np.float32(0.0)):  # pragma: no cover - jitted
    """c = a @ b + beta * c for row-major 2-D float32 views whose rows may be strided.

    Row-major C = A B is column-major C^T = B^T A^T, so the call swaps the operands.
    Each operand's last axis must be unit-stride (any row slice or column block of a C array is).
    """
    m, k = a.shape
    n = b.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:
        for i in range(m):
            for j in range(n):
                c[i, j] = beta * c[i, j]
        return
    _sgemm(n, m, k, b, b.strides[0] // 4, a, a.strides[0] // 4, c, c.strides[0] // 4, np.float32(beta))
