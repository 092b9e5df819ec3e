"""CUDA kernels (and their launchers) for pooling, softmax, normalization, reductions, data movement
and Resize: every op the CPU target runs natively besides convolutions and matrix products.

Each public function here is a *launcher* (see `launch`): `launcher(stream, *args)` with the same
arguments, in the same order and views, as the CPU kernel of the same name (`codegen.cpu.kernels`,
`codegen.cpu.kernels_extra`), so the CUDA rules reuse the CPU rules' argument lists unchanged (`pad`,
which adds the reflect, edge and wrap modes, is the one launcher of its own). The `@cuda.jit` kernels
they launch are private and come in two shapes:

* flat kernels, one thread per output element in a grid-stride loop (copies, pooling, Resize,
  Gather, Pad, and the per-lane reductions over a strided axis), so any grid gives the same result;
* row kernels, one block per row (block-stride over rows), threads striding along the row and a
  shared-memory tree combining their partial results (contiguous-axis reductions, softmax,
  LayerNormalization). Sums accumulate in float32: a tree sum's error grows with log(n), far inside
  the 1e-4 relative the target promises. Max and min let NaN win, as the reference does.

Device code uses `math` functions and plain comparisons only (Numba's CUDA target lacks most numpy
ufuncs), and keeps float32 arithmetic in float32. Strides, dims and tables come precomputed on the
host by the rules (small int64 / float32 Const arrays), so the kernels are simple gathers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import cuda, float32

from .launch import MAX_BLOCKS, SIMULATOR, THREADS, blocks

SUM, MEAN, MAX, MIN = 0, 1, 2, 3  # reduce ops, as in codegen.cpu.kernels_extra

#: Most threads of a row kernel's block (its shared-memory tree has this many slots).
ROW_THREADS = 32 if SIMULATOR else 256
#: Transpose tile edge and the rows of it one block's threads cover per step.
TILE = 8 if SIMULATOR else 32
TILE_ROWS = 4 if SIMULATOR else 8
_TILE_PAD = TILE + 1  # a tile row's stride: keeps the column reads off a single shared-memory bank

_F = np.float32
_INF = _F(np.inf)
_NAN = _F(np.nan)


def _row_config(rows: int, n: int) -> tuple[int, int]:
    """(blocks, threads) of a row kernel: one block per row (at most MAX_BLOCKS, striding over the
    rest), a power of two of threads from 32 up to the row's length, at most ROW_THREADS."""
    threads = 32
    while threads < min(n, ROW_THREADS):
        threads *= 2
    return max(1, min(MAX_BLOCKS, rows)), min(threads, ROW_THREADS)


# -- device helpers ---------------------------------------------------------------------------


@cuda.jit(device=True)
def _combine(a, b, op):  # pragma: no cover - device code
    """a op b: the sum, or max/min with NaN winning (either side)."""
    if op == MAX:
        return a if (a > b or math.isnan(a)) else b
    if op == MIN:
        return a if (a < b or math.isnan(a)) else b
    return a + b


@cuda.jit(device=True)
def _identity(op):  # pragma: no cover - device code
    if op == MAX:
        return -_INF
    if op == MIN:
        return _INF
    return _F(0.0)


@cuda.jit(device=True)
def _block_reduce(buf, v, op):  # pragma: no cover - device code
    """Every thread's `v` combined over the block (blockDim.x a power of two <= buf's size); every
    thread gets the result, and `buf` is free for the next call when it returns."""
    t = cuda.threadIdx.x
    buf[t] = v
    cuda.syncthreads()
    s = cuda.blockDim.x // 2
    while s > 0:
        if t < s:
            buf[t] = _combine(buf[t], buf[t + s], op)
        cuda.syncthreads()
        s //= 2
    r = buf[0]
    cuda.syncthreads()
    return r


@cuda.jit(device=True)
def _row_reduce(buf, x, row, op):  # pragma: no cover - device code
    """x[row, :] combined by `op` over the block."""
    acc = _identity(op)
    for i in range(cuda.threadIdx.x, x.shape[1], cuda.blockDim.x):
        acc = _combine(acc, x[row, i], op)
    return _block_reduce(buf, acc, op)


# -- reductions -------------------------------------------------------------------------------


@cuda.jit
def _reduce_rows_k(x, y, op):  # pragma: no cover - device code
    """y[r] = op over x[r, :] (x [rows, n]), one block per row."""
    buf = cuda.shared.array(ROW_THREADS, float32)
    n = x.shape[1]
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        r = _row_reduce(buf, x, row, op)
        if cuda.threadIdx.x == 0:
            y[row] = r / _F(n) if op == MEAN else r


@cuda.jit
def _reduce_lanes_k(x, y, op):  # pragma: no cover - device code
    """y[o, j] = op over i of x[o, i, j] (x [outer, r, inner]), one thread per (o, j) walking i."""
    outer, r, inner = x.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, outer * inner, stride):
        o = u // inner
        j = u - o * inner
        acc = _identity(op)
        for i in range(r):
            acc = _combine(acc, x[o, i, j], op)
        y[o, j] = acc / _F(r) if op == MEAN else acc


def reduce(stream: Any, x: Any, y: Any, op: int) -> None:
    """y[o, j] = op over i of x[o, i, j] for x [outer, r, inner], y [outer, inner] (op: 0 sum,
    1 mean, 2 max, 3 min; NaN propagates). A contiguous axis (inner == 1) gets a block per row."""
    outer, r, inner = x.shape
    if inner == 1:
        grid, threads = _row_config(outer, r)
        _reduce_rows_k[grid, threads, stream](x.reshape(outer, r), y.reshape(outer), int(op))
    else:
        _reduce_lanes_k[blocks(outer * inner), THREADS, stream](x, y, int(op))


def global_avgpool(stream: Any, x: Any, y: Any) -> None:
    """y[r] = mean(x[r, :]) for x viewed as [N*C, H*W]."""
    grid, threads = _row_config(x.shape[0], x.shape[1])
    _reduce_rows_k[grid, threads, stream](x, y, MEAN)


def global_maxpool(stream: Any, x: Any, y: Any) -> None:
    """y[r] = max(x[r, :]) for x viewed as [N*C, H*W] (NaN wins)."""
    grid, threads = _row_config(x.shape[0], x.shape[1])
    _reduce_rows_k[grid, threads, stream](x, y, MAX)


# -- softmax and layer normalization ----------------------------------------------------------


@cuda.jit
def _softmax_rows_k(x, y, log):  # pragma: no cover - device code
    """Softmax (or log-softmax) of each row of x [rows, n], one block per row: the max, the sum of
    e^(x - max), then the outputs, each a pass over the row (x read three times, y written once)."""
    buf = cuda.shared.array(ROW_THREADS, float32)
    n = x.shape[1]
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        m = _row_reduce(buf, x, row, MAX)
        acc = _F(0.0)
        for i in range(t, n, nt):
            acc += math.exp(x[row, i] - m)
        s = _block_reduce(buf, acc, SUM)
        if log:
            ls = math.log(s)
            for i in range(t, n, nt):
                y[row, i] = (x[row, i] - m) - ls
        else:
            inv = _F(1.0) / s
            for i in range(t, n, nt):
                y[row, i] = math.exp(x[row, i] - m) * inv


@cuda.jit
def _softmax_lanes_k(x, y, log):  # pragma: no cover - device code
    """Softmax along axis 1 of x [outer, n, inner], one thread per (o, j) lane (coalesced over j)."""
    outer, n, inner = x.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, outer * inner, stride):
        o = u // inner
        j = u - o * inner
        m = x[o, 0, j]
        for i in range(1, n):
            m = _combine(m, x[o, i, j], MAX)
        s = _F(0.0)
        for i in range(n):
            s += math.exp(x[o, i, j] - m)
        if log:
            ls = math.log(s)
            for i in range(n):
                y[o, i, j] = (x[o, i, j] - m) - ls
        else:
            inv = _F(1.0) / s
            for i in range(n):
                y[o, i, j] = math.exp(x[o, i, j] - m) * inv


def softmax(stream: Any, x: Any, y: Any, log: bool) -> None:
    """Softmax (log=False) or LogSoftmax over axis 1 of x viewed as [outer, n, inner] (the max is
    subtracted first; a NaN turns its whole row into NaN, as in the reference)."""
    outer, n, inner = x.shape
    if inner == 1:
        grid, threads = _row_config(outer, n)
        _softmax_rows_k[grid, threads, stream](x.reshape(outer, n), y.reshape(outer, n), bool(log))
    else:
        _softmax_lanes_k[blocks(outer * inner), THREADS, stream](x, y, bool(log))


@cuda.jit
def _layernorm_k(x, scale, bias, y, mean, inv_std, eps):  # pragma: no cover - device code
    """Each row of x [rows, n] normalized, one block per row: the mean, then the variance about it
    (two passes: no cancellation), then the outputs. Safe in place (y is x): every read of a row
    precedes the block's writes to it except each thread's own element."""
    buf = cuda.shared.array(ROW_THREADS, float32)
    n = x.shape[1]
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    e = _F(eps)
    for row in range(cuda.blockIdx.x, x.shape[0], cuda.gridDim.x):
        mu = _row_reduce(buf, x, row, SUM) / _F(n)
        acc = _F(0.0)
        for i in range(t, n, nt):
            d = x[row, i] - mu
            acc += d * d
        inv = _F(1.0) / math.sqrt(_block_reduce(buf, acc, SUM) / _F(n) + e)
        for i in range(t, n, nt):
            y[row, i] = (x[row, i] - mu) * inv * scale[i] + bias[i]
        if t == 0:
            mean[row] = mu
            inv_std[row] = inv


def layernorm(stream: Any, x: Any, scale: Any, bias: Any, y: Any, mean: Any, inv_std: Any, eps: float) -> None:
    """y[r] = (x[r] - mean) / sqrt(var + eps) * scale + bias for x viewed as [rows, n]; mean and
    inv_std ([rows]) receive the statistics (scratch when the node's extra outputs are unused)."""
    grid, threads = _row_config(x.shape[0], x.shape[1])
    _layernorm_k[grid, threads, stream](x, scale, bias, y, mean, inv_std, float(eps))


# -- pooling ----------------------------------------------------------------------------------


@cuda.jit
def _maxpool_k(x, y, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - device code
    n_img, c, ho, wo = y.shape
    h, w = x.shape[2], x.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, n_img * c * ho * wo, stride):
        ow = u % wo
        q = u // wo
        oh = q % ho
        q //= ho
        ch = q % c
        b = q // c
        m = -_INF
        for i in range(kh):
            ih = oh * sh - ph + i * dh
            if ih < 0 or ih >= h:
                continue
            for j in range(kw):
                iw = ow * sw - pw + j * dw
                if iw >= 0 and iw < w:
                    m = _combine(x[b, ch, ih, iw], m, MAX)
        y[b, ch, oh, ow] = m


def maxpool2d(stream: Any, x: Any, y: Any, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
              dh: int, dw: int) -> None:
    """Max over each window of x [N, C, H, W] into y [N, C, Ho, Wo]; padding (-inf) never wins, NaN does."""
    _maxpool_k[blocks(y.size), THREADS, stream](x, y, kh, kw, sh, sw, ph, pw, dh, dw)


@cuda.jit
def _avgpool_k(x, y, kh, kw, sh, sw, ph, pw, include):  # pragma: no cover - device code
    n_img, c, ho, wo = y.shape
    h, w = x.shape[2], x.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, n_img * c * ho * wo, stride):
        ow = u % wo
        q = u // wo
        oh = q % ho
        q //= ho
        ch = q % c
        b = q // c
        s = _F(0.0)
        cnt = 0
        for i in range(kh):
            ih = oh * sh - ph + i
            for j in range(kw):
                iw = ow * sw - pw + j
                if ih >= 0 and ih < h and iw >= 0 and iw < w:
                    s += x[b, ch, ih, iw]
                    cnt += 1
                elif include and ih < h + ph and iw < w + pw:
                    cnt += 1
        y[b, ch, oh, ow] = s / _F(max(cnt, 1))


def avgpool2d(stream: Any, x: Any, y: Any, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int,
              count_include_pad: bool) -> None:
    """Mean over each window, dividing by the window's in-bounds part, or (count_include_pad) by the
    part inside the padded input (symmetric pads: the rule checks)."""
    _avgpool_k[blocks(y.size), THREADS, stream](x, y, kh, kw, sh, sw, ph, pw, bool(count_include_pad))


# -- data movement ----------------------------------------------------------------------------


@cuda.jit
def _strided_copy_k(x, y, dims, xs, ys, xbase, ybase):  # pragma: no cover - device code
    r = dims.shape[0]
    total = 1
    for k in range(r):
        total *= dims[k]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, total, stride):
        q = u
        xo = xbase
        yo = ybase
        for k in range(r - 1, -1, -1):
            i = q % dims[k]
            q //= dims[k]
            xo += i * xs[k]
            yo += i * ys[k]
        y[yo] = x[xo]


def strided_copy(stream: Any, x: Any, y: Any, dims: Any, xs: Any, ys: Any, xbase: int, ybase: int) -> None:
    """y[ybase + sum_k i_k ys_k] = x[xbase + sum_k i_k xs_k] for every index i of the box `dims`
    (x, y flat; int64 dims and element strides, 0 to broadcast, negative to reverse): Transpose,
    Slice and Expand. The box has as many elements as y's view."""
    _strided_copy_k[blocks(y.size), THREADS, stream](x, y, dims, xs, ys, int(xbase), int(ybase))


@cuda.jit
def _transpose_k(x, y):  # pragma: no cover - device code
    """y[b] = x[b].T through a shared-memory tile, so both the reads and the writes are coalesced."""
    tile = cuda.shared.array((TILE, _TILE_PAD), float32)
    nb, m, n = x.shape
    ti = (m + TILE - 1) // TILE
    tj = (n + TILE - 1) // TILE
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    for u in range(cuda.blockIdx.x, nb * ti * tj, cuda.gridDim.x):
        b = u // (ti * tj)
        t = u - b * (ti * tj)
        i0 = (t // tj) * TILE
        j0 = (t % tj) * TILE
        for r in range(ty, TILE, TILE_ROWS):
            if i0 + r < m and j0 + tx < n:
                tile[r, tx] = x[b, i0 + r, j0 + tx]
        cuda.syncthreads()
        for r in range(ty, TILE, TILE_ROWS):
            if j0 + r < n and i0 + tx < m:
                y[b, j0 + r, i0 + tx] = tile[tx, r]
        cuda.syncthreads()


def transpose2d(stream: Any, x: Any, y: Any) -> None:
    """y[b] = x[b].T for x [B, M, N], y [B, N, M]."""
    nb, m, n = x.shape
    tiles = nb * ((m + TILE - 1) // TILE) * ((n + TILE - 1) // TILE)
    _transpose_k[max(1, min(MAX_BLOCKS, tiles)), (TILE, TILE_ROWS), stream](x, y)


@cuda.jit
def _copy_columns_k(src, dst, so, do, w):  # pragma: no cover - device code
    outer = src.shape[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, outer * w, stride):
        o = u // w
        j = u - o * w
        dst[o, do + j] = src[o, so + j]


def _copy_columns(stream: Any, src: Any, dst: Any, so: int, do: int, w: int) -> None:
    """dst[:, do:do+w] = src[:, so:so+w] for 2-D arrays with the same number of rows."""
    _copy_columns_k[blocks(src.shape[0] * w), THREADS, stream](src, dst, so, do, w)


def concat(stream: Any, y: Any, *xs: Any) -> None:
    """y = [x0 | x1 | ...] along axis 1, every operand viewed as [outer, axis * inner]."""
    off = 0
    for x in xs:
        _copy_columns(stream, x, y, 0, off, x.shape[1])
        off += x.shape[1]


def split(stream: Any, x: Any, *ys: Any) -> None:
    """[y0 | y1 | ...] = x along axis 1, every operand viewed as [outer, axis * inner]."""
    off = 0
    for y in ys:
        _copy_columns(stream, x, y, off, 0, y.shape[1])
        off += y.shape[1]


@cuda.jit
def _gather_k(x, idx, y):  # pragma: no cover - device code
    outer, n, inner = x.shape
    m = idx.shape[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, outer * m * inner, stride):
        k = u % inner
        q = u // inner
        j = q % m
        o = q // m
        v = idx[j]
        if v < 0:
            v += n
        if v >= 0 and v < n:
            y[o, j, k] = x[o, v, k]
        else:
            y[o, j, k] = _NAN


def gather(stream: Any, x: Any, indices: Any, y: Any) -> None:
    """y[o, j, :] = x[o, indices[j], :] for x [outer, n, inner]; negative indices count from the end.

    Constant indices were checked by the rule; a run-time index outside [-n, n), which the reference
    rejects with IndexError, cannot raise on the device: its row is NaN.
    """
    _gather_k[blocks(y.size), THREADS, stream](x, indices, y)


PAD_CONSTANT, PAD_REFLECT, PAD_EDGE, PAD_WRAP = 0, 1, 2, 3


@cuda.jit
def _pad_k(x, y, fill, dims, start, keep, xs, xbase, mode):  # pragma: no cover - device code
    r = dims.shape[0]
    value = fill[0]
    begin, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(begin, y.shape[0], stride):
        q = u
        xo = xbase
        inside = True
        for k in range(r - 1, -1, -1):
            s = q % dims[k] - start[k]
            q //= dims[k]
            n = keep[k]
            if s < 0 or s >= n:
                if mode == PAD_CONSTANT:
                    inside = False
                elif mode == PAD_EDGE:
                    s = 0 if s < 0 else n - 1
                elif mode == PAD_WRAP:
                    s %= n  # Python semantics: non-negative
                elif n == 1:
                    s = 0
                else:  # reflect: period 2 (n - 1), mirrored in its second half
                    s %= 2 * (n - 1)
                    if s >= n:
                        s = 2 * (n - 1) - s
            xo += s * xs[k]
        y[u] = x[xo] if inside else value


def pad(stream: Any, x: Any, y: Any, fill: Any, dims: Any, start: Any, keep: Any, xs: Any, xbase: int,
        mode: int) -> None:
    """Pad, one pass over y (flat) seen as the box `dims`: along dim k, x's kept part (`keep[k]` long,
    read with stride xs[k] from xbase) lies at `start[k]`; outside it y is fill[0] (mode 0, constant),
    or x's reflection (1), nearest edge (2) or periodic wrap (3) along that dim."""
    _pad_k[blocks(y.size), THREADS, stream](x, y, fill, dims, start, keep, xs, int(xbase), int(mode))


# -- Resize -----------------------------------------------------------------------------------


@cuda.jit
def _resize_nearest_k(x, y, ih, iw, out_h, out_w, fill, crop):  # pragma: no cover - device code
    nb, ho, wo = y.shape
    value = fill[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, nb * ho * wo, stride):
        ow = u % wo
        q = u // wo
        oh = q % ho
        b = q // ho
        if crop and (out_h[oh] != 0 or out_w[ow] != 0):
            y[b, oh, ow] = value
        else:
            y[b, oh, ow] = x[b, ih[oh], iw[ow]]


def resize_nearest(stream: Any, x: Any, y: Any, ih: Any, iw: Any, out_h: Any, out_w: Any, fill: Any,
                   crop: bool) -> None:
    """y[b, oh, ow] = x[b, ih[oh], iw[ow]] (x [B, H, W]); with crop, fill[0] where a coordinate fell outside."""
    _resize_nearest_k[blocks(y.size), THREADS, stream](x, y, ih, iw, out_h, out_w, fill, bool(crop))


@cuda.jit
def _resize_taps_k(x, y, ih, wh, iw, ww, out_h, out_w, fill, crop):  # pragma: no cover - device code
    nb, ho, wo = y.shape
    th = ih.shape[1]
    tw = iw.shape[1]
    value = fill[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for u in range(start, nb * ho * wo, stride):
        ow = u % wo
        q = u // wo
        oh = q % ho
        b = q // ho
        if crop and (out_h[oh] != 0 or out_w[ow] != 0):
            y[b, oh, ow] = value
            continue
        acc = _F(0.0)
        for v in range(tw):
            col = iw[ow, v]
            r = x[b, ih[oh, 0], col] * wh[oh, 0]
            for t in range(1, th):
                r += x[b, ih[oh, t], col] * wh[oh, t]
            acc += r * ww[ow, v]
        y[b, oh, ow] = acc


def resize_taps(stream: Any, x: Any, y: Any, ih: Any, wh: Any, iw: Any, ww: Any, out_h: Any, out_w: Any,
                fill: Any, crop: bool) -> None:
    """Separable filter resize (linear, cubic, antialiased) of x [B, H, W] into y [B, Ho, Wo].

    ih/wh ([Ho, Th]) and iw/ww ([Wo, Tw]) are the taps' source indices and float32 weights, combined
    in the reference's order (rows tap by tap, then columns); with crop, fill[0] where a coordinate
    fell outside.
    """
    _resize_taps_k[blocks(y.size), THREADS, stream](x, y, ih, wh, iw, ww, out_h, out_w, fill, bool(crop))


#: Every kernel with the signatures its launchers use (the rules' views and tables), for ahead-of-time
#: compilation checks: `cuda.compile_ptx(kernel.py_func, sig)` must succeed for each.
SIGNATURES: dict[str, list[str]] = {
    "_reduce_rows_k": ["void(float32[:, ::1], float32[::1], int64)"],
    "_reduce_lanes_k": ["void(float32[:, :, ::1], float32[:, ::1], int64)"],
    "_softmax_rows_k": ["void(float32[:, ::1], float32[:, ::1], boolean)"],
    "_softmax_lanes_k": ["void(float32[:, :, ::1], float32[:, :, ::1], boolean)"],
    "_layernorm_k": [("void(float32[:, ::1], float32[::1], float32[::1], float32[:, ::1], float32[::1], "
                      "float32[::1], float64)")],
    "_maxpool_k": ["void(float32[:, :, :, ::1], float32[:, :, :, ::1], " + ", ".join(["int64"] * 8) + ")"],
    "_avgpool_k": ["void(float32[:, :, :, ::1], float32[:, :, :, ::1], " + ", ".join(["int64"] * 6) + ", boolean)"],
    "_strided_copy_k": ["void(float32[::1], float32[::1], int64[::1], int64[::1], int64[::1], int64, int64)"],
    "_transpose_k": ["void(float32[:, :, ::1], float32[:, :, ::1])"],
    "_copy_columns_k": ["void(float32[:, ::1], float32[:, ::1], int64, int64, int64)"],
    "_gather_k": ["void(float32[:, :, ::1], int64[::1], float32[:, :, ::1])",
                  "void(float32[:, :, ::1], int32[::1], float32[:, :, ::1])"],
    "_pad_k": [("void(float32[::1], float32[::1], float32[::1], int64[::1], int64[::1], int64[::1], int64[::1], "
                "int64, int64)")],
    "_resize_nearest_k": [("void(float32[:, :, ::1], float32[:, :, ::1], int64[::1], int64[::1], uint8[::1], "
                           "uint8[::1], float32[::1], boolean)")],
    "_resize_taps_k": [("void(float32[:, :, ::1], float32[:, :, ::1], int64[:, ::1], float32[:, ::1], "
                        "int64[:, ::1], float32[:, ::1], uint8[::1], uint8[::1], float32[::1], boolean)")],
}
