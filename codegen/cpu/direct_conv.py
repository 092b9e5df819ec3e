"""Direct float32 NCHW convolution for small channel counts: no im2col, ow-vectorised register tiles.

Why: im2col + sgemm writes Cin*kh*kw*Ho*Wo floats, sgemm packs them again, and with Cout <= 32
the 6x16 sgemm tile is mostly idle; the stems and small layers of detectors and mobile models
(Cin, Cout of 3..32, 3x3 kernels, stride 1 or 2) ran at a fraction of the machine's FMA rate.

Bits: every output is the same float32 fma chain as the im2col + sgemm path,

    acc = +0.0;  for c, i, j ascending (c outermost): acc = fma(w[co, c, i, j], x[c, ih, iw], acc)

so both paths give the same values. Taps whose input row is outside the image are skipped
(im2col adds fma(w, 0, acc) there, which changes at most the sign of an exact zero); taps outside
the image columns are loaded as 0 by masked loads, exactly as im2col does.

Kernel: per output row, the input rows it reads (Cin x kh) are copied once into a zero-padded
row buffer, split into `sw` column phases for stride sw (stride 2: even and odd columns, by a
vector shuffle), so every tap of every tile is a contiguous, unmasked load of the tile's width
and the padding taps read 0 exactly as im2col does. A register tile holds CB = 4 output channels
x 16 columns (2 ymm vectors: 8 independent fma chains) across the whole (c, i, j) loop; per tap
it does 2 vector loads, CB weight broadcasts from the packed layout of `pack` and 8
`llvm.fma.v8f32`. Rows that fill them get 24-column tiles instead (3 vectors, 12 chains, 10-14%
faster; `tile_width`). Rows narrower than a tile use masked stores; for wider ones the last tile
is shifted left to end at Wo (a column computed twice gets the same bits). All channel blocks
of a row run over the same buffer. Work items are blocks of output rows (one per thread), under
`prange` unless the layer is below `PARALLEL_MIN` MACs.
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

__all__ = ["CB", "PARALLEL_MIN", "conv2d_direct", "pack", "packed_shape", "worth_it"]

CB = 4
"""Output channels per register tile (the innermost axis of `pack`'s layout)."""
PARALLEL_MIN = 32768
"""Below this many MACs the kernel stays on one thread: waking the pool costs more."""

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


@njit(**_JIT)
def _fill(xf, xo, cin, h, w, oh, sh, ph, dh, ilo, ihi, sw, pw, plane, qlo, qhi, buf):  # pragma: no cover
    """buf[((c*(ihi-ilo) + i-ilo)*sw + p)*plane + q] = x[c, oh*sh - ph + i*dh, q*sw + p - pw], 0
    outside the row: the input rows one output row reads, zero-padded and split into sw column
    phases, so every tap of every tile is a contiguous, unmasked read."""
    nr = ihi - ilo
    for c in range(cin):
        for r in range(nr):
            src = xo + (c * h + oh * sh - ph + (ilo + r) * dh) * w - pw
            for p in range(sw):
                d = ((c * nr + r) * sw + p) * plane
                lo, hi = qlo[p], qhi[p]
                buf[d:d + lo] = 0.0
                if sw == 1:
                    buf[d + lo:d + hi] = xf[src + lo:src + hi]
                else:
                    q = lo
                    if sw == 2:  # whole vectors while their 16 loads stay inside the row
                        while q < hi and 2 * q < pw:
                            buf[d + q] = xf[src + 2 * q + p]
                            q += 1
                        while q + 8 <= hi and 2 * q + 16 <= w + pw:
                            _vstore(buf, d + q, _vdeint(xf, src + 2 * q, p))
                            q += 8
                    for k in range(q, hi):
                        buf[d + k] = xf[src + k * sw + p]
                buf[d + hi:d + plane] = 0.0


def _make_tile(unit: bool, wide: bool) -> Callable[..., None]:
    """The CB x 16-column register tile over one filled row buffer (`_fill`): 8 accumulators
    (8 independent fma chains), per tap 2 vector loads, CB broadcasts, 8 fmas. `wide`: 24 columns,
    12 accumulators, so 12 chains hide the fma latency with room to spare (8 just cover it) and
    each broadcast feeds 3 fmas: 10-14% more GFLOP/s where rows have no ragged end (`tile_width`).
    `unit`: stride 1, where tap j sits j*dw floats on; otherwise `joff[j]` (phase plane + position).
    Both flags are constants of the compiled code: the branches on them fold away."""
    width = 24 if wide else 16

    @njit(**_JIT)
    def tile(buf, cin, nr, ilo, kh, kw, dw, joff, rs, ow, wpf, yf, yo, ycs, nco, n):  # pragma: no cover
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0 = c1 = c2 = c3 = _vzero()
        for c in range(cin):
            wc = (c * kh + ilo) * kw * CB
            xr = c * nr * rs + ow
            for r in range(nr):
                for j in range(kw):
                    xo = xr + (j * dw if unit else joff[j])
                    u = _vld1(buf, xo, 1)
                    v = _vld1(buf, xo + 8, 1)
                    z = _vld1(buf, xo + 16, 1) if wide else u
                    # each weight's fmas together: a broadcast dies at once (16 ymm registers)
                    w0 = _sld(wpf, wc)
                    a0 = _vfma(a0, w0, u)
                    b0 = _vfma(b0, w0, v)
                    if wide:
                        c0 = _vfma(c0, w0, z)
                    w1 = _sld(wpf, wc + 1)
                    a1 = _vfma(a1, w1, u)
                    b1 = _vfma(b1, w1, v)
                    if wide:
                        c1 = _vfma(c1, w1, z)
                    w2 = _sld(wpf, wc + 2)
                    a2 = _vfma(a2, w2, u)
                    b2 = _vfma(b2, w2, v)
                    if wide:
                        c2 = _vfma(c2, w2, z)
                    w3 = _sld(wpf, wc + 3)
                    a3 = _vfma(a3, w3, u)
                    b3 = _vfma(b3, w3, v)
                    if wide:
                        c3 = _vfma(c3, w3, z)
                    wc += CB
                xr += rs
        _store(yf, yo, a0, b0, c0, n, width)
        if nco > 1:
            _store(yf, yo + ycs, a1, b1, c1, n, width)
        if nco > 2:
            _store(yf, yo + 2 * ycs, a2, b2, c2, n, width)
        if nco > 3:
            _store(yf, yo + 3 * ycs, a3, b3, c3, n, width)

    return tile


@njit(inline="always")
def _store(yf, yo, a, b, c, n, width):  # pragma: no cover - jitted
    """One channel's row of a tile: whole vectors, or masked ones where the row is narrower."""
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


_TILE1 = _make_tile(True, False)
_TILES = _make_tile(False, False)
_WIDE1 = _make_tile(True, True)
_WIDES = _make_tile(False, True)


@njit(inline="always")
def tile_width(wo):  # pragma: no cover - jitted
    """16 or 24 columns a tile, whichever computes a row of `wo` sooner: the wide tile does a
    column in 0.88 of the time (measured, 1 thread) but may compute more columns past the end."""
    if wo < 16:
        return 16
    return 24 if 24 * ((wo + 23) // 24) * 88 < 16 * ((wo + 15) // 16) * 100 else 16


@njit(**_JIT)
def _rows_task(xf, wpf, yf, img, oh0, oh1, cin, h, w, cout, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, plane, qlo,
               qhi, joff):  # pragma: no cover - jitted
    """Output rows [oh0, oh1) of image img, all channels: per row, fill the row buffer once, then
    run every channel block's tiles over it (the buffer stays in L1/L2 across them).

    Columns go in 16- or 24-wide tiles (`tile_width`); the last one is shifted left to end at wo
    (a column computed twice gets the same bits: each output is one fixed fma chain, whatever its
    tile)."""
    buf = np.empty(cin * kh * sw * plane, np.float32)
    rs = sw * plane
    ncb = (cout + CB - 1) // CB
    wsz = cin * kh * kw * CB
    ycs = ho * wo
    tw = tile_width(wo)
    for oh in range(oh0, oh1):
        ilo, ihi = _rows(oh, sh, ph, dh, kh, h)
        nr = ihi - ilo
        _fill(xf, img * cin * h * w, cin, h, w, oh, sh, ph, dh, ilo, ihi, sw, pw, plane, qlo, qhi, buf)
        for cb in range(ncb):
            nco = min(CB, cout - cb * CB)
            wpb = wpf[cb * wsz:(cb + 1) * wsz]
            yrow = (img * cout + cb * CB) * ycs + oh * wo
            ow = 0
            while ow < wo:
                if ow + tw > wo >= tw:
                    ow = wo - tw
                if tw == 24:
                    if sw == 1:
                        _WIDE1(buf, cin, nr, ilo, kh, kw, dw, joff, rs, ow, wpb, yf, yrow + ow, ycs, nco, wo - ow)
                    else:
                        _WIDES(buf, cin, nr, ilo, kh, kw, dw, joff, rs, ow, wpb, yf, yrow + ow, ycs, nco, wo - ow)
                elif sw == 1:
                    _TILE1(buf, cin, nr, ilo, kh, kw, dw, joff, rs, ow, wpb, yf, yrow + ow, ycs, nco, wo - ow)
                else:
                    _TILES(buf, cin, nr, ilo, kh, kw, dw, joff, rs, ow, wpb, yf, yrow + ow, ycs, nco, wo - ow)
                ow += tw


@njit(parallel=True, **_JIT)
def conv2d_direct(x, wp, y, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """y[n, co] = sum over (c, i, j) of w[co, c, i, j] * x[n, c, shifted] (cross-correlation, group 1).

    x: C-contiguous float32 [N, Cin, H, W]; wp: `pack(w)`; y: C-contiguous float32 [N, Cout, Ho, Wo],
    fully written. Ho and Wo carry any end padding (asymmetric pads); ph and pw are the start pads.
    Bit-identical to im2col + sgemm up to the sign of exact zeros (see the module docstring).
    """
    n_img, cin, h, w = x.shape
    cout, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    ncb = (cout + CB - 1) // CB
    if wp.shape[0] != ncb or wp.shape[1] != cin or wp.shape[2] != kh or wp.shape[3] != kw or wp.shape[4] != CB:
        raise ValueError("conv2d_direct: wp must be pack(w) for w [Cout, Cin, kh, kw]")
    if y.shape[0] != n_img:
        raise ValueError("conv2d_direct: x and y batch sizes differ")
    if n_img * ho * wo == 0:
        return
    xf = x.reshape(n_img * cin * h * w)
    yf = y.reshape(n_img * cout * ho * wo)
    wpf = wp.reshape(wp.size)
    # row buffer geometry: sw phase planes of `plane` floats; tap j reads plane (j*dw) % sw from
    # position ow + (j*dw) // sw, a tile's width of floats
    tw = tile_width(wo)
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
    if n_img * cout * ho * wo * cin * kh * kw < PARALLEL_MIN:
        for img in range(n_img):
            _rows_task(xf, wpf, yf, img, 0, ho, cin, h, w, cout, ho, wo, kh, kw, sh, sw, ph, pw, dh, dw, plane,
                       qlo, qhi, joff)
    else:
        per = max(1, (ho + _num_threads() - 1) // _num_threads())
        nblk = (ho + per - 1) // per
        for t in prange(n_img * nblk):
            img = t // nblk
            oh0 = (t % nblk) * per
            _rows_task(xf, wpf, yf, img, oh0, min(oh0 + per, ho), cin, h, w, cout, ho, wo, kh, kw, sh, sw, ph, pw,
                       dh, dw, plane, qlo, qhi, joff)


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

    Measured at 1 thread (thread_time, AMD EPYC AVX2, GFLOP/s direct vs im2col+sgemm): 3x3 stride
    1 wins everywhere tried, from (Cin,Cout,HxW) = (16,16,80x80) 56 vs 23 to (256,256,14x14) 74
    vs 71; stride 2 wins while Cout <= 32 ((16,32,160x160) 56 vs 35, (16,24,80x80) 42 vs 30) and
    loses at (32,64,80x80) 49 vs 53; 1x1 loses (im2col is then skipped, a plain gemm: (32,32,80x80)
    39 vs 72); images under 10x10 lose ((512,512,7x7): 5.6 ms vs 3.6). Strides > 2 were not
    measured (scalar phase split), so they stay on im2col.
    """
    if kh * kw == 1 or ho * wo == 0:
        return False
    if sh == 1:
        # small images leave the row-block split too few rows for the threads, and im2col is then
        # cheap: (512,512,7x7) direct 5.6 ms vs im2col 3.6 (1 thread), 3.2 vs 1.8 (2 threads)
        return ho * wo >= 100
    return sh == 2 and cout <= 32
