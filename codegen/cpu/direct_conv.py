"""Direct float32 NCHW convolution: no im2col, ow-vectorised register tiles.

Why: im2col + sgemm writes Cin*kh*kw*Ho*Wo floats, sgemm packs them again, and with few output
channels the 6x16 sgemm tile is mostly idle; 3x3-class layers (stride 1 or 2, and 7x7 stems) ran
at a fraction of the machine's FMA rate (`worth_it` has the measurements).

Bits: every output is the same float32 fma chain as the im2col + sgemm path,

    acc = +0.0;  for c, i, j ascending (c outermost): acc = fma(w[co, c, i, j], x[c, ih, iw], acc)

so both paths give the same values. Taps whose input row is outside the image are skipped
(im2col adds fma(w, 0, acc) there, which changes at most the sign of an exact zero); taps outside
the image columns read the zero padding of the row buffer, exactly as im2col does.

Kernel: a work item (`_partition`: a block of output rows x a group of channel blocks) copies the
input rows it reads once into a zero-padded buffer, split into `sw` column phases for stride sw
(stride 2: even and odd columns, by a vector shuffle), so every tap of every tile is a contiguous,
unmasked load of the tile's width. A register tile holds CB = 4 output channels x 16 or 24 columns
(8 or 12 independent fma chains, `tile_width`) across the whole (c, i, j) loop: per tap 2-3 vector
loads, CB weight broadcasts from the packed layout of `pack` and 8-12 `llvm.fma.v8f32`. A row's
last columns take the narrowest tile that covers them, shifted left to end at Wo (a column
computed twice gets the same bits): an 8-column tile over two channel blocks where 1-8 remain.
Rows narrower than a tile use masked stores. The store applies the epilogue (`_vep`: bias, then
Relu/Clip). Work items run under `prange` unless the layer is below `PARALLEL_MIN` MACs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core.base import BaseContext
from numba.core.typing.templates import Signature
from numba.extending import intrinsic

from .sgemm import _num_threads
from .sparse import _VEC, _f32x8, _vstore, _vzero

__all__ = ["CB", "PARALLEL_MIN", "conv2d_direct", "conv2d_direct_ep", "pack", "packed_shape", "worth_it"]

CB = 4
"""Output channels per register tile (the innermost axis of `pack`'s layout)."""
PARALLEL_MIN = 32768
"""Below this many MACs the kernel stays on one thread: waking the pool costs more."""
L1_INPUT = 16 * 1024
"""Bytes of input rows the tiles of one column chunk read (half of a 32 KiB L1)."""
BUFFER_MAX = 96 * 1024
"""Bytes of input rows a work item copies at most (unless it has one output row): a bigger
buffer falls out of L2 while the item's channel blocks sweep it (160x160x16: 9% slower)."""

_LANES = 8
_I1, _I32, _I64, _F32 = ir.IntType(1), ir.IntType(32), ir.IntType(64), ir.FloatType()
_MASK = ir.VectorType(_I1, _LANES)
_JIT = {"cache": True, "error_model": "numpy", "boundscheck": False}

_Codegen = Callable[[BaseContext, ir.IRBuilder, Signature, list[ir.Value]], ir.Value]


# ------------------------------------------------------------------------------------ intrinsics

def _declare(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, ir.FunctionType(ret, args), name=name)


def _splat(builder: ir.IRBuilder, value: ir.Value, ty: ir.VectorType) -> ir.Value:
    vec = builder.insert_element(ir.Constant(ty, None), value, _I32(0))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, ty.count), [0] * ty.count))


def _data(context: BaseContext, builder: ir.IRBuilder, arrty: types.Array, arr: ir.Value) -> ir.Value:
    return context.make_array(arrty)(context, builder, arr).data


def _lane_mask(builder: ir.IRBuilder, n: ir.Value) -> ir.Value:
    """``<8 x i1>``: lanes l < n."""
    vt = ir.VectorType(_I32, _LANES)
    return builder.icmp_signed("<", ir.Constant(vt, list(range(_LANES))), _splat(builder, builder.trunc(n, _I32), vt))


def _is_f32_1d(arr: types.Type) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1


@intrinsic
def _vfma(typingctx: object, acc: types.Type, s: types.Type, v: types.Type) -> tuple[Signature, _Codegen] | None:
    """fma(s, v, acc) lane-wise with s broadcast: ``llvm.fma.v8f32``, one rounding (as sgemm)."""
    if not (acc == _f32x8 and v == _f32x8 and s == types.float32):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        fma = _declare(builder.module, "llvm.fma.v8f32", _VEC, [_VEC, _VEC, _VEC])
        return builder.call(fma, [_splat(builder, args[1], _VEC), args[2], args[0]])

    return _f32x8(acc, s, v), codegen


@intrinsic
def _sld(typingctx: object, arr: types.Type, off: types.Type) -> tuple[Signature, _Codegen] | None:
    """arr[off] without Numba's negative-index wraparound (which costs a cmov chain per weight)."""
    if not (_is_f32_1d(arr) and isinstance(off, types.Integer)):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        return builder.load(builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]]), align=4)

    return types.float32(arr, off), codegen


_EVEN = ir.Constant(ir.VectorType(_I32, _LANES), list(range(0, 2 * _LANES, 2)))
_ODD = ir.Constant(ir.VectorType(_I32, _LANES), list(range(1, 2 * _LANES, 2)))


@intrinsic
def _vdeint(typingctx: object, arr: types.Type, off: types.Type, p: types.Type) -> tuple[Signature, _Codegen] | None:
    """arr[off + p + 2*l] for l < 8 and p in {0, 1}: two loads (arr[off:off+16]) and a shuffle,
    to split stride-2 input rows into column phases."""
    if not (_is_f32_1d(arr) and isinstance(off, types.Integer) and isinstance(p, types.Integer)):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        q = builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]])
        a = builder.load(builder.bitcast(q, _VEC.as_pointer()), align=4)
        b = builder.load(builder.bitcast(builder.gep(q, [_I64(_LANES)]), _VEC.as_pointer()), align=4)
        odd = builder.icmp_signed("!=", args[2], ir.Constant(args[2].type, 0))
        return builder.select(odd, builder.shuffle_vector(a, b, _ODD), builder.shuffle_vector(a, b, _EVEN))

    return _f32x8(arr, off, p), codegen


@intrinsic
def _vld1(typingctx: object, arr: types.Type, off: types.Type, s: types.Type) -> tuple[Signature, _Codegen] | None:
    """arr[off:off+8] (stride-1 columns); ``s`` is ignored (same signature as the other loads)."""
    if not (_is_f32_1d(arr) and isinstance(off, types.Integer)):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        p = builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]])
        return builder.load(builder.bitcast(p, _VEC.as_pointer()), align=4)

    return _f32x8(arr, off, s), codegen


@intrinsic
def _vstm(typingctx: object, arr: types.Type, off: types.Type, v: types.Type,
          n: types.Type) -> tuple[Signature, _Codegen] | None:
    """arr[off + l] = v[l] for l < n (a masked store: the ragged end of an output row)."""
    if not (_is_f32_1d(arr) and isinstance(off, types.Integer) and v == _f32x8 and isinstance(n, types.Integer)):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        vp = _VEC.as_pointer()
        mstore = _declare(builder.module, "llvm.masked.store.v8f32.p0", ir.VoidType(), [_VEC, vp, _I32, _MASK])
        p = builder.bitcast(builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]]), vp)
        n64 = context.cast(builder, args[3], sig.args[3], types.int64)
        builder.call(mstore, [args[2], p, _I32(4), _lane_mask(builder, n64)])
        return context.get_dummy_value()

    return types.none(arr, off, v, n), codegen


@intrinsic
def _vep(typingctx: object, v: types.Type, bias: types.Type, off: types.Type, lo: types.Type,
         hi: types.Type) -> tuple[Signature, _Codegen] | None:
    """min(max(v + bias[off], lo), hi) lane-wise, the bias skipped when `bias` is empty: the
    fused epilogue of Add(per-channel bias) and Relu or Clip. max and min are np.maximum and
    np.minimum's selects (NaN stays NaN, max(-0, 0) is -0), so the bits equal the elementwise
    kernel's; with lo = -inf and hi = +inf both are exactly the identity."""
    if not (v == _f32x8 and _is_f32_1d(bias) and isinstance(off, types.Integer)
            and lo == types.float32 and hi == types.float32):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        x, arr, k, lo_, hi_ = args
        k = context.cast(builder, k, sig.args[2], types.intp)
        ary = context.make_array(sig.args[1])(context, builder, arr)
        has = builder.icmp_signed(">", builder.extract_value(ary.shape, 0), ir.Constant(ir.IntType(64), 0))
        before = builder.block
        with builder.if_then(has, likely=True):
            added = builder.fadd(x, _splat(builder, builder.load(builder.gep(ary.data, [k]), align=4), _VEC))
            then = builder.block
        merged = builder.phi(_VEC)
        merged.add_incoming(x, before)
        merged.add_incoming(added, then)
        x = merged
        lo_v, hi_v = _splat(builder, lo_, _VEC), _splat(builder, hi_, _VEC)
        x = builder.select(builder.fcmp_unordered(">=", x, lo_v), x, lo_v)
        return builder.select(builder.fcmp_unordered("<=", x, hi_v), x, hi_v)

    return _f32x8(v, bias, off, lo, hi), codegen


# ------------------------------------------------------------------------------------ tiles

@njit(inline="always")
def _rows(oh, sh, ph, dh, kh, h):  # pragma: no cover - jitted
    """Kernel rows i whose input row oh*sh - ph + i*dh lies inside [0, h): [ilo, ihi)."""
    ilo = 0
    while ilo < kh and oh * sh - ph + ilo * dh < 0:
        ilo += 1
    ihi = kh
    while ihi > ilo and oh * sh - ph + (ihi - 1) * dh >= h:
        ihi -= 1
    return ilo, ihi


@njit(inline="always")
def _fill(xf, src, w, sw, pw, plane, qlo, qhi, buf, d):  # pragma: no cover - jitted
    """buf[d + p*plane + q] = xf[src + q*sw + p - pw], 0 outside the row: one input row, zero-padded
    and split into sw column phases, so every tap of every tile is a contiguous, unmasked read."""
    for p in range(sw):
        lo, hi = qlo[p], qhi[p]
        buf[d:d + lo] = 0.0
        if sw == 1:
            buf[d + lo:d + hi] = xf[src - pw + lo:src - pw + hi]
        else:
            q = lo
            if sw == 2:  # whole vectors while their 16 loads stay inside the row
                while q < hi and 2 * q < pw:
                    buf[d + q] = xf[src + 2 * q + p - pw]
                    q += 1
                while q + 8 <= hi and 2 * q + 16 <= w + pw:
                    _vstore(buf, d + q, _vdeint(xf, src + 2 * q - pw, p))
                    q += 8
            for k in range(q, hi):
                buf[d + k] = xf[src + k * sw + p - pw]
        buf[d + hi:d + plane] = 0.0
        d += plane


@njit(inline="always")
def _fma_row(a, b, c, w, u, v, z, wide):  # pragma: no cover - jitted
    """One output channel's accumulators of a tile (2 or 3 vectors) += w * the tap's columns."""
    a = _vfma(a, w, u)
    b = _vfma(b, w, v)
    if wide:
        c = _vfma(c, w, z)
    return a, b, c


def _make_tile(wide: bool, kw3: bool) -> Callable[..., None]:
    """The CB x 16-column register tile over a filled row buffer (`_fill`): 8 accumulators
    (8 independent fma chains), per tap 2 vector loads, CB broadcasts, 8 fmas. Tap j of a row
    starts `joff[j]` floats on (phase plane + position; see `conv2d_direct`).

    `wide`: 24 columns, 12 accumulators, so 12 chains hide the fma latency with room to spare
    (8 just cover it) and each broadcast feeds 3 fmas: 10-14% more GFLOP/s per column.
    `kw3`: the kernel is 3 wide, a constant trip count that LLVM unrolls, hoisting the joff loads
    (+5-25% on 3x3 layers). Both flags are constants of the compiled code: their branches fold.
    `wqf` is unused (the same signature as the narrow tile's)."""
    width = 24 if wide else 16
    KW = 3 if kw3 else 0

    @njit(**_JIT)
    def tile(buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo, hi,
             nt):  # pragma: no cover - jitted
        for t in range(nt):  # nt tiles side by side: one call for a row's run of them
            xt = xo0 + t * width
            yt = yo + t * width
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = _vzero()
            for c in range(cin):
                wc = (c * kh + ilo) * kw * CB
                xr = c * cs + xt
                for r in range(nr):
                    for j in range(KW if KW else kw):
                        xo = xr + joff[j]
                        u = _vld1(buf, xo, 1)
                        v = _vld1(buf, xo + 8, 1)
                        z = _vld1(buf, xo + 16, 1) if wide else u
                        # each weight's fmas together: a broadcast dies at once (16 ymm registers)
                        a0, b0, c0 = _fma_row(a0, b0, c0, _sld(wpf, wc), u, v, z, wide)
                        a1, b1, c1 = _fma_row(a1, b1, c1, _sld(wpf, wc + 1), u, v, z, wide)
                        a2, b2, c2 = _fma_row(a2, b2, c2, _sld(wpf, wc + 2), u, v, z, wide)
                        a3, b3, c3 = _fma_row(a3, b3, c3, _sld(wpf, wc + 3), u, v, z, wide)
                        wc += CB
                    xr += rstep
            _store(yf, yt, a0, b0, c0, n, width, ep, co, lo, hi)
            if nco > 1:
                _store(yf, yt + ycs, a1, b1, c1, n, width, ep, co + 1, lo, hi)
            if nco > 2:
                _store(yf, yt + 2 * ycs, a2, b2, c2, n, width, ep, co + 2, lo, hi)
            if nco > 3:
                _store(yf, yt + 3 * ycs, a3, b3, c3, n, width, ep, co + 3, lo, hi)

    return tile


def _make_narrow(kw3: bool) -> Callable[..., None]:
    """The 8-column tile for the last few columns of a row: two channel blocks (weights `wpf` and
    `wqf`, 2*CB channels) x 1 vector, so it still runs 8 fma chains. Without it a row of 55 took
    three 24-column tiles (72 columns for 55); with it, two of them and this one (56)."""
    KW = 3 if kw3 else 0

    @njit(**_JIT)
    def narrow(buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo, hi,
               nt):  # pragma: no cover - jitted
        for t in range(nt):  # nt tiles side by side: one call for a row's run of them
            xt = xo0 + t * 8
            yt = yo + t * 8
            a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = _vzero()
            for c in range(cin):
                wc = (c * kh + ilo) * kw * CB
                xr = c * cs + xt
                for r in range(nr):
                    for j in range(KW if KW else kw):
                        u = _vld1(buf, xr + joff[j], 1)
                        a0 = _vfma(a0, _sld(wpf, wc), u)
                        a1 = _vfma(a1, _sld(wpf, wc + 1), u)
                        a2 = _vfma(a2, _sld(wpf, wc + 2), u)
                        a3 = _vfma(a3, _sld(wpf, wc + 3), u)
                        b0 = _vfma(b0, _sld(wqf, wc), u)
                        b1 = _vfma(b1, _sld(wqf, wc + 1), u)
                        b2 = _vfma(b2, _sld(wqf, wc + 2), u)
                        b3 = _vfma(b3, _sld(wqf, wc + 3), u)
                        wc += CB
                    xr += rstep
            _store8(yf, yt, a0, n, ep, co, lo, hi)
            if nco > 1:
                _store8(yf, yt + 1 * ycs, a1, n, ep, co + 1, lo, hi)
            if nco > 2:
                _store8(yf, yt + 2 * ycs, a2, n, ep, co + 2, lo, hi)
            if nco > 3:
                _store8(yf, yt + 3 * ycs, a3, n, ep, co + 3, lo, hi)
            if nco > 4:
                _store8(yf, yt + 4 * ycs, b0, n, ep, co + 4, lo, hi)
            if nco > 5:
                _store8(yf, yt + 5 * ycs, b1, n, ep, co + 5, lo, hi)
            if nco > 6:
                _store8(yf, yt + 6 * ycs, b2, n, ep, co + 6, lo, hi)
            if nco > 7:
                _store8(yf, yt + 7 * ycs, b3, n, ep, co + 7, lo, hi)

    return narrow


@njit(inline="always")
def _store8(yf, yo, a, n, ep, co, lo, hi):  # pragma: no cover - jitted
    """One channel's 8 columns, through the epilogue (`_vep`; channel `co`)."""
    a = _vep(a, ep, co, lo, hi)
    if n >= 8:
        _vstore(yf, yo, a)
    else:
        _vstm(yf, yo, a, n)


@njit(inline="always")
def _store(yf, yo, a, b, c, n, width, ep, co, lo, hi):  # pragma: no cover - jitted
    """One channel's row of a tile through the epilogue (`_vep`): whole vectors, or masked ones
    where the row is narrower."""
    a = _vep(a, ep, co, lo, hi)
    b = _vep(b, ep, co, lo, hi)
    if width == 24:
        c = _vep(c, ep, co, lo, hi)
    if n >= width:
        _vstore(yf, yo, a)
        _vstore(yf, yo + 8, b)
        if width == 24:
            _vstore(yf, yo + 16, c)
    else:
        _vstm(yf, yo, a, n)
        _vstm(yf, yo + 8, b, n - 8)
        if width == 24:
            _vstm(yf, yo + 16, c, n - 16)


_T16, _T16K3 = _make_tile(False, False), _make_tile(False, True)
_T24, _T24K3 = _make_tile(True, False), _make_tile(True, True)
_T8, _T8K3 = _make_narrow(False), _make_narrow(True)


@njit(inline="always")
def _tile(width, k3, buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo,
          hi, nt):  # pragma: no cover - jitted
    """Run nt side-by-side tiles of this width (8 covers two channel blocks, `wpf` and `wqf`;
    16 and 24 one). One call per run of tiles: a call passes ~60 words (arrays go as 7), which
    cost 10-15% of a 16-channel layer when it was made per tile."""
    if width == 24:
        if k3:
            _T24K3(buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo, hi, nt)
        else:
            _T24(buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo, hi, nt)
    elif width == 16:
        if k3:
            _T16K3(buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo, hi, nt)
        else:
            _T16(buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo, hi, nt)
    elif k3:
        _T8K3(buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo, hi, nt)
    else:
        _T8(buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xo0, wpf, wqf, yf, yo, ycs, nco, n, ep, co, lo, hi, nt)


@njit(inline="always")
def _tail_width(rem):  # pragma: no cover - jitted
    """The tile for a row's last `rem` (1..23) columns: the narrowest that covers them."""
    return 8 if rem <= 8 else (16 if rem <= 16 else 24)


@njit(inline="always")
def _col_cost(width, cin):  # pragma: no cover - jitted
    """A tile's time per column, in hundredths of the 16-column tile's (1 thread, AVX2): the
    24-column tile 0.93-0.94 from 32 input channels on, about 1.0 below (fewer taps a tile, more
    stores); the 8-column tile (two channel blocks at once) about 1.3."""
    if width == 24:
        return 94 if cin >= 32 else 100
    return 100 if width == 16 else 130


@njit(inline="always")
def _row_cost(wo, tw, cin):  # pragma: no cover - jitted
    """Time for a row of `wo` columns in `tw`-wide tiles plus one `_tail_width` tile (`_col_cost`)."""
    full = wo // tw
    rem = wo - full * tw
    cost = full * tw * _col_cost(tw, cin)
    if rem > 0:
        t = _tail_width(rem)
        cost += t * _col_cost(t, cin)
    return cost


@njit(inline="always")
def tile_width(wo, cin):  # pragma: no cover - jitted
    """16 or 24: the width of a row's full tiles, whichever finishes the row (tail included) sooner."""
    return 24 if _row_cost(wo, 24, cin) < _row_cost(wo, 16, cin) else 16


@njit(**_JIT)
def _rows_task(xf, wpf, yf, img, oh0, oh1, cb0, cb1, cin, h, w, cout, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw,
               plane, qlo, qhi, joff, ep, lo, hi):  # pragma: no cover - jitted
    """Output rows [oh0, oh1) of image img, channel blocks [cb0, cb1). The input rows they read
    are copied once into a zero-padded buffer (`_fill`); then per output row and column chunk,
    every channel block's tiles run over it (the chunk's input stays in L1 across them).

    Columns go in 16- or 24-wide tiles (`tile_width`); the last one is shifted left to end at wo
    (a column computed twice gets the same bits: each output is one fixed fma chain, whatever its
    tile)."""
    rs = sw * plane
    r0 = oh0 * sh - ph  # input row held in buffer row 0
    nrow = (oh1 - oh0 - 1) * sh + (kh - 1) * dh + 1
    cs = nrow * rs
    buf = np.empty(cin * cs, np.float32)
    xo = img * cin * h * w
    for c in range(cin):
        for r in range(max(0, -r0), min(nrow, h - r0)):  # rows outside the image are never read
            _fill(xf, xo + (c * h + r0 + r) * w, w, sw, pw, plane, qlo, qhi, buf, c * cs + r * rs)
    wsz = cin * kh * kw * CB
    ycs = ho * wo
    rstep = dh * rs
    k3 = kw == 3
    tw = tile_width(wo, cin)
    full = wo // tw
    tail = _tail_width(wo - full * tw) if wo > full * tw else 0
    tow = max(0, wo - tail)  # the tail tile ends at wo (it recomputes a few columns: same bits)
    # tiles per column chunk: the input the chunk's tiles read stays in L1 while every channel
    # block sweeps it (whole rows of 16 x 3 x 160 floats filled L1: 17% slower)
    chunk = max(1, (L1_INPUT // (4 * cin * kh * sw) - (kw - 1) * dw) // tw)
    for oh in range(oh0, oh1):
        ilo, ihi = _rows(oh, sh, ph, dh, kh, h)
        nr = ihi - ilo
        xb = (oh * sh - ph + ilo * dh - r0) * rs
        yrow = img * cout * ycs + oh * wo
        for t0 in range(0, full, chunk):
            for cb in range(cb0, cb1):
                wpb = wpf[cb * wsz:(cb + 1) * wsz]
                _tile(tw, k3, buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xb + t0 * tw, wpb, wpb, yf,
                      yrow + cb * CB * ycs + t0 * tw, ycs, min(CB, cout - cb * CB), tw, ep, cb * CB, lo, hi,
                      min(chunk, full - t0))
        if tail > 8:
            for cb in range(cb0, cb1):
                wpb = wpf[cb * wsz:(cb + 1) * wsz]
                _tile(tail, k3, buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xb + tow, wpb, wpb, yf,
                      yrow + cb * CB * ycs + tow, ycs, min(CB, cout - cb * CB), wo - tow, ep, cb * CB, lo, hi, 1)
        if tail == 8:
            for cb in range(cb0, cb1, 2):
                wpb = wpf[cb * wsz:(cb + 1) * wsz]
                wqb = wpf[(cb + 1) * wsz:(cb + 2) * wsz] if cb + 1 < cb1 else wpb
                nco = min((min(cb + 2, cb1) - cb) * CB, cout - cb * CB)
                _tile(8, k3, buf, cin, nr, ilo, kh, kw, joff, cs, rstep, xb + tow, wpb, wqb, yf,
                      yrow + cb * CB * ycs + tow, ycs, nco, wo - tow, ep, cb * CB, lo, hi, 1)


@njit(**_JIT)
def _partition(n_img, ho, ncb, threads, unit, fill, sh, span, row_bytes):  # pragma: no cover - jitted
    """(rows, channel blocks) per work item. A work item costs `unit` per output row and channel
    block, plus `fill` per input row it copies ((rows - 1)*sh + span of them: blocks of rows
    copy their halo rows twice). Picks the split that finishes soonest when each thread takes an
    equal share of items (as prange hands them out), preferring more items on a near tie so a
    work-stealing pool can even out a slowed core. Row blocks alone left 27- and 13-row layers
    unbalanced on 2 threads (4 items against 3)."""
    best_t = np.inf
    best_r, best_c = ho, ncb
    for nrb in range(1, ho + 1):
        pr = (ho + nrb - 1) // nrb
        if pr * (nrb - 1) >= ho or (pr > 1 and ((pr - 1) * sh + span) * row_bytes > BUFFER_MAX):
            continue
        for ncg in range(1, min(ncb, 8 * threads) + 1):
            pc = (ncb + ncg - 1) // ncg
            if pc * (ncg - 1) >= ncb:
                continue
            items = n_img * nrb * ncg
            rounds = (items + threads - 1) // threads
            t = rounds * (pr * pc * unit + ((pr - 1) * sh + span) * fill) * (1.0 + 0.05 * threads / items)
            if t < best_t:
                best_t, best_r, best_c = t, pr, pc
    return best_r, best_c


@njit(**_JIT)
def conv2d_direct(x, wp, y, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """y[n, co] = sum over (c, i, j) of w[co, c, i, j] * x[n, c, shifted] (cross-correlation, group 1).

    x: C-contiguous float32 [N, Cin, H, W]; wp: `pack(w)`; y: C-contiguous float32 [N, Cout, Ho, Wo],
    fully written. Ho and Wo carry any end padding (asymmetric pads); ph and pw are the start pads.
    Bit-identical to im2col + sgemm up to the sign of exact zeros (see the module docstring).
    """
    clamp = np.empty(2, np.float32)  # built here, not module globals: those are read-only
    clamp[0] = -np.inf  # arrays, another type, and conv2d_direct_ep would compile twice
    clamp[1] = np.inf
    conv2d_direct_ep(x, wp, np.empty(0, np.float32), clamp, y, kh, kw, sh, sw, ph, pw, dh, dw)


@njit(parallel=True, **_JIT)
def conv2d_direct_ep(x, wp, bias, clamp, y, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """`conv2d_direct` with its epilogue applied at the store: y = min(max(conv + bias, lo), hi),
    (lo, hi) = clamp, the bias add skipped when `bias` is empty (see `_vep`). Relu is (0, +inf),
    Clip (min, max); the bits equal those of the unfused Add and Relu/Clip kernels."""
    n_img, cin, h, w = x.shape
    cout, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    ncb = (cout + CB - 1) // CB
    if wp.shape[0] != ncb or wp.shape[1] != cin or wp.shape[2] != kh or wp.shape[3] != kw or wp.shape[4] != CB:
        raise ValueError("conv2d_direct: wp must be pack(w) for w [Cout, Cin, kh, kw]")
    if y.shape[0] != n_img:
        raise ValueError("conv2d_direct: x and y batch sizes differ")
    if (bias.shape[0] != 0 and bias.shape[0] != cout) or clamp.shape[0] != 2:
        raise ValueError("conv2d_direct: bias must be empty or [Cout], clamp [2]")
    clo, chi = clamp[0], clamp[1]
    if n_img * ho * wo == 0:
        return
    xf = x.reshape(n_img * cin * h * w)
    yf = y.reshape(n_img * cout * ho * wo)
    wpf = wp.reshape(wp.size)
    # row buffer geometry: sw phase planes of `plane` floats; tap j reads plane (j*dw) % sw from
    # position ow + (j*dw) // sw, a tile's width of floats
    tw = tile_width(wo, cin)
    plane = (wo + tw - 1) // tw * tw + (kw - 1) * dw // sw + 1
    qlo = np.empty(sw, np.int64)
    qhi = np.empty(sw, np.int64)
    for p in range(sw):  # phase p, position q holds input column q*sw + p - pw
        lo = 0
        while lo < plane and lo * sw + p - pw < 0:
            lo += 1
        hi = plane
        while hi > lo and (hi - 1) * sw + p - pw >= w:
            hi -= 1
        qlo[p] = lo
        qhi[p] = hi
    joff = np.empty(kw, np.int64)
    for j in range(kw):
        joff[j] = (j * dw) % sw * plane + (j * dw) // sw
    ncb = (cout + CB - 1) // CB
    serial = n_img * cout * ho * wo * cin * kh * kw < PARALLEL_MIN
    if serial:  # all channels over blocks of 8 rows (a row buffer that stays in L1/L2)
        pr, pc = min(8, ho), ncb
    else:  # a copied float costs as much as 64 MACs (measured: the fill's loads miss, the tiles' hit)
        pr, pc = _partition(n_img, ho, ncb, _num_threads(), CB * wo * cin * kh * kw, 64 * cin * sw * plane,
                            sh, (kh - 1) * dh + 1, 4 * cin * sw * plane)
    nrb = (ho + pr - 1) // pr
    ncg = (ncb + pc - 1) // pc
    if serial:
        for t in range(n_img * nrb * ncg):
            _item(t, nrb, ncg, pr, pc, xf, wpf, yf, cin, h, w, cout, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, plane,
                  qlo, qhi, joff, bias, clo, chi)
    else:
        for t in prange(n_img * nrb * ncg):
            _item(t, nrb, ncg, pr, pc, xf, wpf, yf, cin, h, w, cout, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, plane,
                  qlo, qhi, joff, bias, clo, chi)


@njit(inline="always")
def _item(t, nrb, ncg, pr, pc, xf, wpf, yf, cin, h, w, cout, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, plane, qlo, qhi,
          joff, bias, clo, chi):  # pragma: no cover - jitted
    """Work item t of (image, row block, channel group), each ordered outermost first."""
    img = t // (nrb * ncg)
    rb = t // ncg % nrb
    cg = t % ncg
    ncb = (cout + CB - 1) // CB
    oh0 = rb * pr
    cb0 = cg * pc
    _rows_task(xf, wpf, yf, img, oh0, min(oh0 + pr, ho), cb0, min(cb0 + pc, ncb), cin, h, w, cout, ho, wo, kh, kw,
               sh, sw, ph, pw, dh, dw, plane, qlo, qhi, joff, bias, clo, chi)


# ------------------------------------------------------------------------------------ host side

def packed_shape(cout: int, cin: int, kh: int, kw: int) -> tuple[int, int, int, int, int]:
    """Shape of `pack` for w [cout, cin, kh, kw]: (ceil(cout / CB), cin, kh, kw, CB)."""
    return (-(-cout // CB), cin, kh, kw, CB)


def pack(w: np.ndarray) -> np.ndarray:
    """float32 w [Cout, Cin, kh, kw] -> C-contiguous [ceil(Cout/CB), Cin, kh, kw, CB], zero-padded.

    ``packed[b, c, i, j, r] = w[b*CB + r, c, i, j]``: a tile's CB weights of one tap are one
    contiguous run, read in (c, i, j) order, so the tap loop streams them.
    """
    w = np.asarray(w)
    if w.ndim != 4 or w.dtype != np.float32:
        raise ValueError(f"pack expects float32 [Cout, Cin, kh, kw], got {w.dtype} {w.shape}")
    cout, cin, kh, kw = w.shape
    nb = -(-cout // CB)
    padded = np.zeros((nb * CB, cin, kh, kw), np.float32)
    padded[:cout] = w
    return np.ascontiguousarray(padded.reshape(nb, CB, cin, kh, kw).transpose(0, 2, 3, 4, 1))


def worth_it(cin: int, cout: int, kh: int, kw: int, sh: int, ho: int, wo: int) -> bool:
    """Whether the direct kernel beats im2col + sgemm for this layer (group 1, float32).

    Measured (AMD EPYC AVX2, 2 threads, direct vs im2col + sgemm): 3x3 stride 1 wins everywhere
    tried, from (Cin, Cout, HxW) = (16, 16, 80x80) to (256, 256, 14x14); stride 2 too, from
    (3, 64, 224x224) 382 vs 606 us and 7x7 (3, 64, 224x224) 1.34 vs 2.10 ms to (256, 256, 28x28)
    1.49 vs 1.61 ms (at 1 thread (64, 128, 56x56) loses by 4%). 1x1 loses (im2col is then
    skipped, a plain gemm: (32, 32, 80x80) 39 vs 72 GFLOP/s); images under 10x10 lose
    ((512, 512, 7x7): 3.2 vs 1.8 ms: too few rows to share out, and im2col is cheap there).
    Strides above 2 were not measured (scalar phase split), so they stay on im2col.
    """
    if kh * kw == 1 or ho * wo < 100:
        return False
    return sh in (1, 2)
