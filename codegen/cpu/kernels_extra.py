"""More hand-written Numba kernels of the CPU target: softmax, normalization, reductions, data movement,
resizing and transposed convolution.

Same conventions as `kernels`: outputs are written in place into buffers the driver passes, sizes come
from the arrays' shapes, everything else is a plain int/float or a small constant table. Rules view
tensors at a fixed rank ([outer, n, inner] for per-axis ops, flat for strided copies) so one compiled
kernel serves every shape. Parallel kernels run serially below `PARALLEL_MIN` elements of work:
waking the thread pool costs microseconds, more than small tensors take. Sums (softmax denominators,
normalization statistics, ReduceSum/Mean) accumulate in float64, so results agree with the float32
reference to well within its own rounding.
"""

from __future__ import annotations

import numpy as np
from numba import literal_unroll, njit, prange

from .kernels import _tap_range
from .sgemm import sgemm
from .vmath import exp_neg
from .vmath import sum64 as _sum64

#: Below this many elements of work a kernel stays on one thread.
PARALLEL_MIN = 32768
#: Lanes of the inner (contiguous) axis one work unit handles in per-axis kernels.
LANES = 512
#: Elements one work unit copies when a single long row is split across threads.
COPY_CHUNK = 16384

SUM, MEAN, MAX, MIN = 0, 1, 2, 3


# -- helpers ----------------------------------------------------------------------------------
#
# Inner loops index 1-D views from 0 (`v = x[o, i, j0:j1]; v[j]`), never `x[o, i, j0 + j]`: Numba
# wraps negative indices, and an index it cannot prove non-negative keeps LLVM from vectorizing.


@njit(cache=True)
def _extreme_row(x, largest):  # pragma: no cover - jitted
    """max (or min) of a 1-D array ignoring NaN (NaN only if x[0] is): eight lanes, so it vectorizes.

    Written as selects (`v if v > m else m`), not max(): the builtin's NaN rules differ and it does not
    always become a vector max.
    """
    n = x.shape[0]
    m0 = m1 = m2 = m3 = m4 = m5 = m6 = m7 = x[0]
    nb = n // 8
    if largest:
        for b in range(nb):
            v = x[8 * b:8 * b + 8]
            m0 = v[0] if v[0] > m0 else m0
            m1 = v[1] if v[1] > m1 else m1
            m2 = v[2] if v[2] > m2 else m2
            m3 = v[3] if v[3] > m3 else m3
            m4 = v[4] if v[4] > m4 else m4
            m5 = v[5] if v[5] > m5 else m5
            m6 = v[6] if v[6] > m6 else m6
            m7 = v[7] if v[7] > m7 else m7
        for i in range(8 * nb, n):
            m0 = x[i] if x[i] > m0 else m0
        m0 = m1 if m1 > m0 else m0
        m2 = m3 if m3 > m2 else m2
        m4 = m5 if m5 > m4 else m4
        m6 = m7 if m7 > m6 else m6
        m0 = m2 if m2 > m0 else m0
        m4 = m6 if m6 > m4 else m4
        return m4 if m4 > m0 else m0
    for b in range(nb):
        v = x[8 * b:8 * b + 8]
        m0 = v[0] if v[0] < m0 else m0
        m1 = v[1] if v[1] < m1 else m1
        m2 = v[2] if v[2] < m2 else m2
        m3 = v[3] if v[3] < m3 else m3
        m4 = v[4] if v[4] < m4 else m4
        m5 = v[5] if v[5] < m5 else m5
        m6 = v[6] if v[6] < m6 else m6
        m7 = v[7] if v[7] < m7 else m7
    for i in range(8 * nb, n):
        m0 = x[i] if x[i] < m0 else m0
    m0 = m1 if m1 < m0 else m0
    m2 = m3 if m3 < m2 else m2
    m4 = m5 if m5 < m4 else m4
    m6 = m7 if m7 < m6 else m6
    m0 = m2 if m2 < m0 else m0
    m4 = m6 if m6 < m4 else m4
    return m4 if m4 < m0 else m0


@njit(cache=True)
def _has_nan(x):  # pragma: no cover - jitted
    bad = 0
    for i in range(x.shape[0]):
        bad += x[i] != x[i]
    return bad > 0


@njit(cache=True, fastmath={"contract"})  # fused multiply-adds in the polynomial: 1.5x
def _exp_shifted(x, m, y):  # pragma: no cover - jitted
    """y = e^(x - m), m at least every element of x (one shift for the row)."""
    for i in range(x.shape[0]):
        y[i] = exp_neg(x[i] - m)


@njit(cache=True, fastmath={"contract"})
def _exp_shifted_lanes(x, m, y):  # pragma: no cover - jitted
    """`_exp_shifted` with one shift per lane (m an array)."""
    for i in range(x.shape[0]):
        y[i] = exp_neg(x[i] - m[i])


# -- softmax ----------------------------------------------------------------------------------


@njit(cache=True)
def _softmax_row(x, y, log):  # pragma: no cover - jitted
    """Softmax (or log-softmax) of one contiguous row (x and y distinct buffers).

    The max may skip NaNs: a NaN still reaches the sum, and every output becomes NaN as in the reference.
    """
    n = x.shape[0]
    m = _extreme_row(x, True)
    _exp_shifted(x, m, y)
    s = _sum64(y)
    if log:
        ls = np.log(s)
        for i in range(n):
            y[i] = np.float32((x[i] - m) - ls)
    else:
        inv = np.float32(1.0 / s)
        for i in range(n):
            y[i] *= inv


@njit(cache=True)
def _softmax_lanes(x, y, o, j0, j1, log):  # pragma: no cover - jitted
    """Softmax along axis 1 of x[o, :, j0:j1] (a strided axis), all lanes at once, row by row.

    Each pass is a simple loop over the lanes (max, exponentials, float64 sums, scale), so each
    vectorizes; as in `_softmax_row`, NaNs skip the max but still turn their lane's sum into NaN.
    """
    n = x.shape[1]
    w = j1 - j0
    m = np.empty(w, np.float32)
    s = np.zeros(w, np.float64)
    xr = x[o, 0, j0:j1]
    for j in range(w):
        m[j] = xr[j]
    for i in range(1, n):
        xr = x[o, i, j0:j1]
        for j in range(w):
            v = xr[j]
            mj = m[j]
            m[j] = v if v > mj else mj
    for i in range(n):
        yr = y[o, i, j0:j1]
        _exp_shifted_lanes(x[o, i, j0:j1], m, yr)
        for j in range(w):
            s[j] += yr[j]
    if log:
        for j in range(w):
            s[j] = np.log(s[j])
        for i in range(n):
            xr = x[o, i, j0:j1]
            yr = y[o, i, j0:j1]
            for j in range(w):
                yr[j] = np.float32((xr[j] - m[j]) - s[j])
    else:
        inv = np.empty(w, np.float32)
        for j in range(w):
            inv[j] = np.float32(1.0 / s[j])
        for i in range(n):
            yr = y[o, i, j0:j1]
            for j in range(w):
                yr[j] *= inv[j]


@njit(cache=True)
def _softmax_unit(x, y, u, chunks, log):  # pragma: no cover - jitted
    outer, n, inner = x.shape
    o = u // chunks
    if inner == 1:  # a contiguous row
        _softmax_row(x.reshape((outer, n))[o], y.reshape((outer, n))[o], log)
    else:
        c = u % chunks
        _softmax_lanes(x, y, o, c * LANES, min(inner, (c + 1) * LANES), log)


@njit(cache=True, parallel=True)
def softmax(x, y, log):  # pragma: no cover - jitted
    """Softmax (log=False) or LogSoftmax over axis 1 of x viewed as [outer, n, inner].

    Work units are rows when inner == 1, else blocks of LANES inner lanes of one outer index.
    """
    outer, n, inner = x.shape
    chunks = 1 if inner == 1 else (inner + LANES - 1) // LANES
    units = outer * chunks
    if outer * n * inner * 16 < PARALLEL_MIN or units == 1:  # ~16 flops an element (exp): split earlier
        for u in range(units):
            _softmax_unit(x, y, u, chunks, log)
    else:
        for u in prange(units):
            _softmax_unit(x, y, u, chunks, log)


# -- layer normalization ----------------------------------------------------------------------


@njit(cache=True)
def _layernorm_row(x, scale, bias, y, eps):  # pragma: no cover - jitted
    """Normalize one row in float64; returns (mean, 1/std) for the optional outputs."""
    n = x.shape[0]
    mean = _sum64(x) / n
    v0 = 0.0
    v1 = 0.0
    v2 = 0.0
    v3 = 0.0
    m4 = n // 4
    for b in range(m4):
        v = x[4 * b:4 * b + 4]
        d0 = v[0] - mean
        d1 = v[1] - mean
        d2 = v[2] - mean
        d3 = v[3] - mean
        v0 += d0 * d0
        v1 += d1 * d1
        v2 += d2 * d2
        v3 += d3 * d3
    for i in range(4 * m4, n):
        d0 = x[i] - mean
        v0 += d0 * d0
    inv = 1.0 / np.sqrt(((v0 + v1) + (v2 + v3)) / n + eps)
    for i in range(n):
        y[i] = np.float32((x[i] - mean) * inv * scale[i] + bias[i])
    return mean, inv


@njit(cache=True, parallel=True)
def layernorm(x, scale, bias, y, mean, inv_std, eps):  # pragma: no cover - jitted
    """y[r] = (x[r] - mean) / sqrt(var + eps) * scale + bias for x viewed as [rows, n].

    mean and inv_std ([rows]) receive the statistics (scratch when the node's extra outputs are unused).
    """
    rows, n = x.shape
    if rows * n * 8 < PARALLEL_MIN or rows == 1:  # two passes of statistics and a normalisation
        for r in range(rows):
            m, s = _layernorm_row(x[r], scale, bias, y[r], eps)
            mean[r] = m
            inv_std[r] = s
    else:
        for r in prange(rows):
            m, s = _layernorm_row(x[r], scale, bias, y[r], eps)
            mean[r] = m
            inv_std[r] = s


# -- reductions -------------------------------------------------------------------------------


@njit(cache=True)
def _reduce_row(x, op):  # pragma: no cover - jitted
    if op == MAX or op == MIN:
        return np.float32(np.nan) if _has_nan(x) else np.float32(_extreme_row(x, op == MAX))
    s = _sum64(x)
    return np.float32(s / x.shape[0] if op == MEAN else s)


@njit(cache=True)
def _reduce_lanes(x, y, o, j0, j1, op):  # pragma: no cover - jitted
    """Reduce axis 1 of x[o, :, j0:j1] into y[o, j0:j1], the rows streamed in order."""
    r = x.shape[1]
    w = j1 - j0
    yr = y[o, j0:j1]
    if op == MAX or op == MIN:
        xr = x[o, 0, j0:j1]
        for j in range(w):
            yr[j] = xr[j]
        for i in range(1, r):
            xr = x[o, i, j0:j1]
            if op == MAX:
                for j in range(w):
                    v = xr[j]
                    m = yr[j]
                    yr[j] = v if (v > m or v != v) else m
            else:
                for j in range(w):
                    v = xr[j]
                    m = yr[j]
                    yr[j] = v if (v < m or v != v) else m
        return
    acc = np.zeros(w, np.float64)
    for i in range(r):
        xr = x[o, i, j0:j1]
        for j in range(w):
            acc[j] += xr[j]
    if op == MEAN:
        for j in range(w):
            yr[j] = np.float32(acc[j] / r)
    else:
        for j in range(w):
            yr[j] = np.float32(acc[j])


@njit(cache=True)
def _reduce_unit(x, y, u, chunks, op):  # pragma: no cover - jitted
    outer, r, inner = x.shape
    o = u // chunks
    if inner == 1:  # a contiguous row
        y[o, 0] = _reduce_row(x.reshape((outer, r))[o], op)
    else:
        c = u % chunks
        _reduce_lanes(x, y, o, c * LANES, min(inner, (c + 1) * LANES), op)


@njit(cache=True, parallel=True)
def reduce(x, y, op):  # pragma: no cover - jitted
    """y[o, j] = op over i of x[o, i, j] (op: 0 sum, 1 mean, 2 max, 3 min; NaN propagates)."""
    outer, r, inner = x.shape
    chunks = 1 if inner == 1 else (inner + LANES - 1) // LANES
    units = outer * chunks
    if outer * r * inner < PARALLEL_MIN or units == 1:
        for u in range(units):
            _reduce_unit(x, y, u, chunks, op)
    else:
        for u in prange(units):
            _reduce_unit(x, y, u, chunks, op)


# -- data movement ----------------------------------------------------------------------------


@njit(cache=True)
def _copy_run(x, y, xo, yo, n, xi, yi):  # pragma: no cover - jitted
    """y[yo + j*yi] = x[xo + j*xi] for j < n, through 1-D views (unit strides vectorize)."""
    if yi == 1:
        yv = y[yo:yo + n]
        if xi == 1:
            xv = x[xo:xo + n]
            for j in range(n):
                yv[j] = xv[j]
        elif xi == 0:
            v = x[xo]
            for j in range(n):
                yv[j] = v
        else:
            xv = x[xo::xi][:n]
            for j in range(n):
                yv[j] = xv[j]
    else:
        yv = y[yo::yi][:n]
        if xi == 0:
            v = x[xo]
            for j in range(n):
                yv[j] = v
        else:
            xv = x[xo::xi][:n]
            for j in range(n):
                yv[j] = xv[j]


@njit(cache=True)
def _strided_rows(x, y, r0, r1, dims, xs, ys, xbase, ybase):  # pragma: no cover - jitted
    """Copy rows r0..r1 of the index box (all dims but the last): decompose r0 once, then count up."""
    r = dims.shape[0]
    idx = np.zeros(r, np.int64)
    xo = np.int64(xbase)
    yo = np.int64(ybase)
    q = np.int64(r0)
    for k in range(r - 2, -1, -1):
        i = q % dims[k]
        q //= dims[k]
        idx[k] = i
        xo += i * xs[k]
        yo += i * ys[k]
    n, xi, yi = dims[r - 1], xs[r - 1], ys[r - 1]
    for _ in range(r0, r1):
        _copy_run(x, y, xo, yo, n, xi, yi)
        k = r - 2
        while k >= 0:
            idx[k] += 1
            xo += xs[k]
            yo += ys[k]
            if idx[k] < dims[k]:
                break
            xo -= dims[k] * xs[k]
            yo -= dims[k] * ys[k]
            idx[k] = 0
            k -= 1


@njit(cache=True, parallel=True)
def strided_copy(x, y, dims, xs, ys, xbase, ybase):  # pragma: no cover - jitted
    """y[ybase + sum_k i_k ys_k] = x[xbase + sum_k i_k xs_k] for every index i in the box `dims`.

    x and y are flat; strides are in elements and may be 0 (broadcast) or negative (reversed slices).
    Transpose, Slice and Expand are all this copy with different strides. Work units are runs of
    rows (about COPY_CHUNK elements each).
    """
    r = dims.shape[0]
    n = dims[r - 1]
    rows = 1
    for k in range(r - 1):
        rows *= dims[k]
    per = max(1, COPY_CHUNK // max(n, 1))
    units = (rows + per - 1) // per
    if rows * n < PARALLEL_MIN or units == 1:
        _strided_rows(x, y, 0, rows, dims, xs, ys, xbase, ybase)
    else:
        for u in prange(units):
            _strided_rows(x, y, u * per, min(rows, (u + 1) * per), dims, xs, ys, xbase, ybase)


@njit(cache=True)
def _transpose_tile(x, y, b, i0, j0, tile):  # pragma: no cover - jitted
    m, n = x.shape[1], x.shape[2]
    i1 = min(m, i0 + tile)
    j1 = min(n, j0 + tile)
    xt = x[b, i0:i1, j0:j1]
    yt = y[b, j0:j1, i0:i1]
    for j in range(j1 - j0):
        yr = yt[j]
        for i in range(i1 - i0):
            yr[i] = xt[i, j]


@njit(cache=True, parallel=True)
def transpose2d(x, y):  # pragma: no cover - jitted
    """y[b] = x[b].T for x [B, M, N], y [B, N, M], in 32 x 32 tiles so both sides stay in cache."""
    nb, m, n = x.shape
    tile = 32
    ti = (m + tile - 1) // tile
    tj = (n + tile - 1) // tile
    units = nb * ti * tj
    if nb * m * n < PARALLEL_MIN or units == 1:
        for u in range(units):
            b = u // (ti * tj)
            t = u % (ti * tj)
            _transpose_tile(x, y, b, (t // tj) * tile, (t % tj) * tile, tile)
    else:
        for u in prange(units):
            b = u // (ti * tj)
            t = u % (ti * tj)
            _transpose_tile(x, y, b, (t // tj) * tile, (t % tj) * tile, tile)


@njit(cache=True)
def _copy_unit(src, dst, so, do, w, u, chunks):  # pragma: no cover - jitted
    o = u // chunks
    c = u % chunks
    j0 = c * COPY_CHUNK
    j1 = min(w, j0 + COPY_CHUNK)
    s = src[o, so + j0:so + j1]
    d = dst[o, do + j0:do + j1]
    for j in range(j1 - j0):
        d[j] = s[j]


@njit(cache=True, parallel=True)
def copy_columns(src, dst, so, do, w):  # pragma: no cover - jitted
    """dst[:, do:do+w] = src[:, so:so+w] for 2-D arrays with the same number of rows."""
    outer = src.shape[0]
    chunks = (w + COPY_CHUNK - 1) // COPY_CHUNK
    if outer * w < PARALLEL_MIN or outer * chunks == 1:
        for u in range(outer * chunks):
            _copy_unit(src, dst, so, do, w, u, chunks)
    else:
        for u in prange(outer * chunks):
            _copy_unit(src, dst, so, do, w, u, chunks)


@njit(cache=True)
def concat(y, *xs):  # pragma: no cover - jitted
    """y = [x0 | x1 | ...] along axis 1, every operand viewed as [outer, axis * inner]."""
    off = 0
    for x in literal_unroll(xs):
        copy_columns(x, y, 0, off, x.shape[1])
        off += x.shape[1]


@njit(cache=True)
def split(x, *ys):  # pragma: no cover - jitted
    """[y0 | y1 | ...] = x along axis 1, every operand viewed as [outer, axis * inner]."""
    off = 0
    for y in literal_unroll(ys):
        copy_columns(x, y, off, 0, y.shape[1])
        off += y.shape[1]


@njit(cache=True)
def _pad_rows(x, y, r0, r1, value, dims, start, keep, xs, xbase):  # pragma: no cover - jitted
    """Rows r0..r1 of y (all dims but the last): value, or value | the kept part of x | value."""
    r = dims.shape[0]
    n = dims[r - 1]
    lo = start[r - 1]
    hi = lo + keep[r - 1]
    xi = xs[r - 1]
    idx = np.zeros(r, np.int64)
    q = np.int64(r0)
    for k in range(r - 2, -1, -1):
        idx[k] = q % dims[k]
        q //= dims[k]
    for row in range(r0, r1):
        yv = y[row * n:(row + 1) * n]
        inside = True
        xo = np.int64(xbase)
        for k in range(r - 1):
            i = idx[k] - start[k]
            if i < 0 or i >= keep[k]:
                inside = False
            xo += i * xs[k]
        if inside:
            for j in range(lo):
                yv[j] = value
            _copy_run(x, yv, xo, lo, hi - lo, xi, 1)
            for j in range(hi, n):
                yv[j] = value
        else:
            for j in range(n):
                yv[j] = value
        k = r - 2
        while k >= 0:
            idx[k] += 1
            if idx[k] < dims[k]:
                break
            idx[k] = 0
            k -= 1


@njit(cache=True, parallel=True)
def pad_constant(x, y, fill, dims, start, keep, xs, xbase):  # pragma: no cover - jitted
    """Constant padding, one pass over y (flat) seen as the box `dims`: x's kept part lies at `start`
    (`keep` long per dim, read with strides `xs` from `xbase`), fill[0] everywhere else."""
    value = fill[0]
    r = dims.shape[0]
    n = dims[r - 1]
    rows = y.shape[0] // n
    per = max(1, COPY_CHUNK // n)
    units = (rows + per - 1) // per
    if y.shape[0] < PARALLEL_MIN or units == 1:
        _pad_rows(x, y, 0, rows, value, dims, start, keep, xs, xbase)
    else:
        for u in prange(units):
            _pad_rows(x, y, u * per, min(rows, (u + 1) * per), value, dims, start, keep, xs, xbase)


@njit(cache=True)
def _gather_unit(x, idx, y, u, m):  # pragma: no cover - jitted
    o = u // m
    j = u % m
    xr = x[o, idx[j]]
    yr = y[o, j]
    for k in range(x.shape[2]):
        yr[k] = xr[k]


@njit(cache=True, parallel=True)
def _gather_rows(x, idx, y):  # pragma: no cover - jitted
    outer, _, inner = x.shape
    m = idx.shape[0]
    if outer * m * inner < PARALLEL_MIN or outer * m == 1:
        for u in range(outer * m):
            _gather_unit(x, idx, y, u, m)
    else:
        for u in prange(outer * m):
            _gather_unit(x, idx, y, u, m)


@njit(cache=True)
def gather(x, indices, y):  # pragma: no cover - jitted
    """y[o, j, :] = x[o, indices[j], :] for x [outer, n, inner]; negative indices count from the end.

    An index outside [-n, n) raises IndexError, as the reference does.
    """
    n = x.shape[1]
    m = indices.shape[0]
    idx = np.empty(m, np.int64)
    for j in range(m):
        v = np.int64(indices[j])
        if v < 0:
            v += n
        if v < 0 or v >= n:
            raise IndexError("Gather: index out of range")
        idx[j] = v
    _gather_rows(x, idx, y)


# -- resize -----------------------------------------------------------------------------------


@njit(cache=True)
def _nearest_plane(x, y, b, ih, iw, out_h, out_w, value, crop):  # pragma: no cover - jitted
    ho, wo = y.shape[1], y.shape[2]
    for oh in range(ho):
        yr = y[b, oh]
        if crop and out_h[oh] != 0:
            for ow in range(wo):
                yr[ow] = value
            continue
        xr = x[b, ih[oh]]
        for ow in range(wo):
            yr[ow] = xr[iw[ow]]
        if crop:
            for ow in range(wo):
                if out_w[ow] != 0:
                    yr[ow] = value


@njit(cache=True, parallel=True)
def resize_nearest(x, y, ih, iw, out_h, out_w, fill, crop):  # pragma: no cover - jitted
    """y[b, oh, ow] = x[b, ih[oh], iw[ow]] (x [B, H, W]); with crop, fill[0] where a coordinate fell outside."""
    value = fill[0]
    nb, ho, wo = y.shape
    if nb * ho * wo < PARALLEL_MIN or nb == 1:
        for b in range(nb):
            _nearest_plane(x, y, b, ih, iw, out_h, out_w, value, crop)
    else:
        for b in prange(nb):
            _nearest_plane(x, y, b, ih, iw, out_h, out_w, value, crop)


@njit(cache=True)
def _taps_rows(x, y, b, o0, o1, ih, wh, iw, ww, out_h, out_w, value, crop):  # pragma: no cover - jitted
    """Output rows o0..o1 of plane b: the row taps combine whole input rows into `tmp` (contiguous,
    vectorizes), then the column taps gather from it."""
    w_in = x.shape[2]
    wo = y.shape[2]
    th = ih.shape[1]
    tw = iw.shape[1]
    tmp = np.empty(w_in, np.float32)
    for oh in range(o0, o1):
        if crop and out_h[oh] != 0:
            for c in range(w_in):
                tmp[c] = value
        else:
            rows = ih[oh]
            wts = wh[oh]
            xr = x[b, rows[0]]
            w0 = wts[0]
            for c in range(w_in):
                tmp[c] = xr[c] * w0
            for t in range(1, th):
                xr = x[b, rows[t]]
                wt = wts[t]
                for c in range(w_in):
                    tmp[c] += xr[c] * wt
        yr = y[b, oh]
        if tw == 2:  # linear
            for ow in range(wo):
                acc = tmp[iw[ow, 0]] * ww[ow, 0]
                acc += tmp[iw[ow, 1]] * ww[ow, 1]
                yr[ow] = acc
        else:
            for ow in range(wo):
                acc = tmp[iw[ow, 0]] * ww[ow, 0]
                for t in range(1, tw):
                    acc += tmp[iw[ow, t]] * ww[ow, t]
                yr[ow] = acc
        if crop:
            for ow in range(wo):
                if out_w[ow] != 0:
                    yr[ow] = value


@njit(cache=True, parallel=True)
def resize_taps(x, y, ih, wh, iw, ww, out_h, out_w, fill, crop):  # pragma: no cover - jitted
    """Separable filter resize (linear, cubic, antialiased) of x [B, H, W] into y [B, Ho, Wo].

    ih/wh ([Ho, Th]) and iw/ww ([Wo, Tw]) are the taps' source indices and float32 weights. The
    arithmetic is the reference's, in its order: rows first (tap by tap), then columns, so the
    result is the same float32 number. With crop (tf_crop_and_resize), fill[0] replaces what fell outside.
    """
    value = fill[0]
    nb, ho, wo = y.shape
    per = max(1, min(ho, COPY_CHUNK // max(wo, 1)))
    blocks = (ho + per - 1) // per
    units = nb * blocks
    if nb * ho * wo < PARALLEL_MIN or units == 1:
        for b in range(nb):
            _taps_rows(x, y, b, 0, ho, ih, wh, iw, ww, out_h, out_w, value, crop)
    else:
        for u in prange(units):
            b = u // blocks
            o0 = (u % blocks) * per
            _taps_rows(x, y, b, o0, min(ho, o0 + per), ih, wh, iw, ww, out_h, out_w, value, crop)


# -- transposed convolution -------------------------------------------------------------------


@njit(cache=True)
def _col2im_channel(cols, y, m, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias):  # pragma: no cover - jitted
    """y[c] = bias + scatter-add of cols rows (m, i, j) into y[c, ih*sh - ph + i*dh, iw*sw - pw + j*dw]."""
    ho, wo = y.shape[1], y.shape[2]
    yc = y[c]
    for oh in range(ho):
        yr = yc[oh]
        for ow in range(wo):
            yr[ow] = bias
    for i in range(kh):
        for j in range(kw):
            r = (m * kh + i) * kw + j
            off = j * dw - pw
            lo, hi = _tap_range(w, sw, off, wo)
            if lo >= hi:
                continue
            for ih in range(h):
                oh = ih * sh - ph + i * dh
                if oh < 0 or oh >= ho:
                    continue
                src = cols[r, ih * w + lo:ih * w + hi]
                dst = yc[oh, lo * sw + off:(hi - 1) * sw + off + 1:sw]
                for t in range(hi - lo):
                    dst[t] += src[t]


@njit(cache=True, parallel=True)
def col2im(cols, y, c0, mg, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias):  # pragma: no cover - jitted
    """Scatter-add columns [mg*kh*kw, h*w] into output channels c0..c0+mg of y [M, Ho, Wo] (plus bias)."""
    if mg * y.shape[1] * y.shape[2] * kh * kw < PARALLEL_MIN or mg == 1:
        for m in range(mg):
            _col2im_channel(cols, y, m, c0 + m, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias[c0 + m])
    else:
        for m in prange(mg):
            _col2im_channel(cols, y, m, c0 + m, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias[c0 + m])


@njit(cache=True)
def conv_transpose2d(x, wt, bias, cols, y, kh, kw, sh, sw, ph, pw, dh, dw, groups):  # pragma: no cover - jitted
    """ConvTranspose as sgemm + col2im, per image and group.

    x: [N, C, H, W]; wt: [groups, Mg*kh*kw, C/groups] (W^T per group); bias: [M]; cols: scratch
    [Mg*kh*kw, H*W]; y: [N, M, Ho, Wo]. Input pixel (ih, iw) and tap (i, j) land on output pixel
    (ih*sh - ph + i*dh, iw*sw - pw + j*dw).
    """
    n_img, c, h, w = x.shape
    cig = c // groups
    mg = wt.shape[1] // (kh * kw)
    for n in range(n_img):
        xm = x[n].reshape((c, h * w))
        for g in range(groups):
            sgemm(wt[g], xm[g * cig:(g + 1) * cig], cols)
            col2im(cols, y[n], g * mg, mg, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias)


@njit(cache=True)
def _depthwise_t_channel(x, w, y, n, c, sh, sw, ph, pw, dh, dw, bias):  # pragma: no cover - jitted
    h, wd = x.shape[2], x.shape[3]
    kh, kw = w.shape[1], w.shape[2]
    ho, wo = y.shape[2], y.shape[3]
    xc = x[n, c]
    yc = y[n, c]
    for oh in range(ho):
        yr = yc[oh]
        for ow in range(wo):
            yr[ow] = bias
    for i in range(kh):
        for j in range(kw):
            wt = w[c, i, j]
            off = j * dw - pw
            lo, hi = _tap_range(wd, sw, off, wo)
            if lo >= hi:
                continue
            for ih in range(h):
                oh = ih * sh - ph + i * dh
                if oh < 0 or oh >= ho:
                    continue
                src = xc[ih, lo:hi]
                dst = yc[oh, lo * sw + off:(hi - 1) * sw + off + 1:sw]
                for t in range(hi - lo):
                    dst[t] += wt * src[t]


@njit(cache=True, parallel=True)
def depthwise_conv_transpose2d(x, w, bias, y, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """One filter per channel (group == C, one output channel each): direct scatter-add loops.

    x: [N, C, H, W]; w: [C, kh, kw]; bias: [C]; y: [N, C, Ho, Wo].
    """
    n_img, c = x.shape[0], x.shape[1]
    work = n_img * c * x.shape[2] * x.shape[3] * w.shape[1] * w.shape[2]
    if work < PARALLEL_MIN or n_img * c == 1:
        for u in range(n_img * c):
            _depthwise_t_channel(x, w, y, u // c, u % c, sh, sw, ph, pw, dh, dw, bias[u % c])
    else:
        for u in prange(n_img * c):
            _depthwise_t_channel(x, w, y, u // c, u % c, sh, sw, ph, pw, dh, dw, bias[u % c])
