"""float32 math that LLVM vectorizes: straight-line arithmetic instead of libm calls, and sums.

Numba turns `np.exp` into a call per element (no vector math library here), which keeps every
loop around it scalar. `exp` and `exp_neg` are Cephes' expf polynomial on the reduced argument
times 2^k written into the exponent bits (MLAS's trick), so a loop over them becomes AVX2/AVX-512
code: 3-8x faster than the libm loop. The bit moves are two `@intrinsic`s (a float's bits cannot be
reinterpreted in plain Numba).

Kernels that use these must not be compiled with `fastmath={"reassoc"}`: the rounding trick
`(v + 1.5 * 2^23) - 1.5 * 2^23` and the two-part ln 2 reduction rely on the exact float order
(`contract`, which fuses multiply-adds, is safe and faster).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_F = np.float32


@intrinsic
def f32_bits(typingctx, x):  # pragma: no cover - compile-time
    """The bits of a float32 as an int32 (a register move, no conversion)."""
    if x != types.float32:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(x), codegen


@intrinsic
def bits_f32(typingctx, x):  # pragma: no cover - compile-time
    """The float32 whose bits are an integer's low 32 (Numba widens int32 arithmetic to int64)."""
    if not isinstance(x, types.Integer) or x.bitwidth < 32:
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        low = builder.trunc(args[0], ir.IntType(32)) if x.bitwidth > 32 else args[0]
        return builder.bitcast(low, ir.FloatType())

    return types.float32(x), codegen


#: 1.5 * 2^23 + 127: added to a float below 2^22 in magnitude, it leaves round(v) + 127 in the low
#: mantissa bits, which shifted left by 23 are the exponent field of 2^round(v).
_BIAS = _F(12582912.0 + 127.0)
#: `exp_neg`'s clamp: there k = -127, 2^k's bits are all 0, so every smaller d gives exactly 0.
_NEG_MIN = _F(-88.0)
#: `exp`'s clamps: e^-104 rounds to 0 and e^100 overflows, and 2^k split in two halves stays normal.
_LO, _HI = _F(-104.0), _F(100.0)


@njit(inline="always")
def _poly(c, k):  # pragma: no cover - jitted
    """e^r for r = c - k ln2 (|r| <= ln2/2): Cephes' expf polynomial, within 1 ulp."""
    r = c - k * _F(0.693359375) - k * _F(-2.12194440e-4)
    p = ((((_F(1.9875691500e-4) * r + _F(1.3981999507e-3)) * r + _F(8.3334519073e-3)) * r
          + _F(4.1665795894e-2)) * r + _F(1.6666665459e-1)) * r + _F(5.0000001201e-1)
    return p * (r * r) + r + _F(1.0)


@njit(inline="always")
def exp_neg(d):  # pragma: no cover - jitted
    """e^d for d <= 0 or NaN (softmax's x - max). Normal results within 1 ulp; below the smallest
    normal float 0 or a subnormal (within 2^-126 of the reference); NaN stays NaN, since the clamp
    is a select that NaN passes through."""
    c = _NEG_MIN if d < _NEG_MIN else d  # noqa: FURB136 - max() would not let NaN through
    b = c * _F(1.44269504088896341) + _BIAS
    return _poly(c, b - _BIAS) * bits_f32(f32_bits(b) << 23)


@njit(inline="always")
def exp(x):  # pragma: no cover - jitted
    """e^x for any float32: within 1 ulp where the result is normal, subnormals correctly rounded
    from the polynomial's value, 0 and inf where float32 underflows and overflows, NaN for NaN.
    2^k is applied as two halves, so neither leaves the normal range before the product does."""
    c = _LO if x < _LO else (_HI if x > _HI else x)  # noqa: FURB136 - NaN passes these selects
    b = c * _F(1.44269504088896341) + _BIAS
    k = f32_bits(b) - np.int32(0x4B40007F)  # round(c / ln2): b's mantissa minus the bias's
    h = k >> 1
    return _poly(c, b - _BIAS) * bits_f32((h + 127) << 23) * bits_f32((k - h + 127) << 23)


@njit(cache=True, fastmath={"reassoc"})
def sum64(x):  # pragma: no cover - jitted
    """float64 sum of a 1-D float32 array. Reassociation (only here) lets LLVM keep a vector of
    partial sums: 4x faster than one chain, and float64 keeps the order's effect far below
    float32's rounding."""
    s = 0.0
    for i in range(x.shape[0]):
        s += x[i]
    return s
