"""Hand-written Numba kernels of the CPU target: convolution, matrix products, pooling.

Conventions: every kernel writes its outputs in place into buffers the driver passes (views of the
arena) and returns nothing; sizes come from the arrays, strides and pads are plain ints. float32
matrix products go to `sgemm` (llvmlite FMA microkernels, weights packed once at compile time), so
the kernels here arrange data for it (im2col, NCHW as [channels, pixels]) and leave bias and
activations to the fused epilogue kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .sgemm import sgemm, sgemm_packed_a
from .qgemm import qgemm_s8u8_nchw
from .sparse import spmm_24, spmm_csr
from .vmath import sum64


#: Below this much work (elements touched) a kernel stays on one thread: waking the pool costs more.
PARALLEL_MIN = 32768


@njit(inline="always")
def _tap_range(n, stride, off, limit):  # pragma: no cover - jitted
    """[lo, hi): the indices i in [0, n) with 0 <= i*stride + off < limit (a tap's in-bounds span),
    so the loops over them need no bounds test."""
    lo = 0
    while lo < n and lo * stride + off < 0:
        lo += 1
    hi = n
    while hi > lo and (hi - 1) * stride + off >= limit:
        hi -= 1
    return lo, hi


@njit(cache=True, error_model="numpy")  # called, not inlined: parfor bodies vectorise worse
def _im2col_row(x, r, c0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols, cin=0, pad=0):  # pragma: no cover
    # row r is (c, i, j) channel-major, or (i, j, c) tap-major when cin > 0 (2:4 sparse weights
    # group 4 consecutive input channels of one tap, so their rows must be neighbours)
    h, w = x.shape[1], x.shape[2]
    if cin > 0:
        c = r % cin
        i = r // cin // kw
        j = (r // cin) % kw
    else:
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
    off = -pw + j * dw
    lo, hi = _tap_range(wo, sw, off, w)  # the ow range that lands inside the input
    for oh in range(ho):
        ih = oh * sh - ph + i * dh
        base = oh * wo
        if ih < 0 or ih >= h:
            for ow in range(wo):
                cols[r, base + ow] = pad
            continue
        for ow in range(lo):
            cols[r, base + ow] = pad
        if sw == 1:
            for ow in range(lo, hi):
                cols[r, base + ow] = x[c0 + c, ih, ow + off]
        else:
            for ow in range(lo, hi):
                cols[r, base + ow] = x[c0 + c, ih, ow * sw + off]
        for ow in range(hi, wo):
            cols[r, base + ow] = pad


@njit(cache=True, parallel=True, error_model="numpy")
def im2col(x, c0, cin, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols, tap_major=False, pad=0):  # pragma: no cover
    """cols[(c, i, j), (oh, ow)] = x[c0 + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (`pad` outside:
    0, or a quantized input's zero point); rows ordered (i, j, c) instead when `tap_major`."""
    rows = cin * kh * kw
    order = cin if tap_major else 0
    if rows * ho * wo < PARALLEL_MIN:
        for r in range(rows):
            _im2col_row(x, r, c0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols, order, pad)
    else:
        for r in prange(rows):
            _im2col_row(x, r, c0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols, order, pad)


@njit(cache=True, error_model="numpy")
def gemm(a, b, c):  # pragma: no cover - jitted
    """c = a @ b: mcc's own sgemm (llvmlite FMA microkernels, parallel over Numba's threads).

    Every element is one ascending fma chain, so equal rows give equal bits wherever they sit in
    the matrix, as onnxruntime's MLAS does; OpenBLAS's edge tiles do not (SqueezeNet's all-equal
    logits of 1e10 turned that into a 0.4% error after Softmax).
    """
    sgemm(a, b, c)


@njit(cache=True, error_model="numpy")
def conv2d(x, w, cols, y, kh, kw, sh, sw, ph, pw, dh, dw, groups, wo):  # pragma: no cover - jitted
    """y[n, co, p] = sum over (ci, i, j) of w[g, co', (ci, i, j)] * x (im2col + sgemm per image, group).

    x: [N, C, H, W]; w: per group the packed weights of `sgemm.pack_a` ([G, panels, K, MR]);
    cols: scratch [Ci/groups*kh*kw, Ho*Wo]; y: [N, Co, Ho*Wo] with Ho*Wo pixels, Wo of them per row
    (end pads show only in Ho and Wo). A 1x1, stride-1, unpadded convolution skips im2col.
    """
    n_img, c = x.shape[0], x.shape[1]
    cig = c // groups
    cog = y.shape[1] // groups
    kk = cig * kh * kw
    ho_wo = y.shape[2]
    ho = ho_wo // wo
    direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    for n in range(n_img):
        for g in range(groups):
            if direct:
                xm = x[n].reshape((c, x.shape[2] * x.shape[3]))
                sgemm_packed_a(w[g], cog, kk, xm[g * cig:(g + 1) * cig], y[n, g * cog:(g + 1) * cog])
            else:
                im2col(x[n], g * cig, cig, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)
                sgemm_packed_a(w[g], cog, kk, cols, y[n, g * cog:(g + 1) * cog])


@njit(cache=True, error_model="numpy")
def conv2d_csr(x, indptr, indices, values, cols, y, kh, kw, sh, sw, ph, pw, dh, dw, wo):  # pragma: no cover
    """conv2d with unstructured sparse weights (CSR rows = output channels, columns (c, i, j))."""
    n_img, c = x.shape[0], x.shape[1]
    ho = y.shape[2] // wo
    direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    for n in range(n_img):
        if direct:
            spmm_csr(indptr, indices, values, x[n].reshape((c, x.shape[2] * x.shape[3])), y[n])
        else:
            im2col(x[n], 0, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)
            spmm_csr(indptr, indices, values, cols, y[n])


@njit(cache=True, error_model="numpy")
def conv2d_24(x, values, idx, cols, y, kh, kw, sh, sw, ph, pw, dh, dw, wo):  # pragma: no cover
    """conv2d with 2:4 sparse weights over columns (i, j, c): tap-major im2col keeps each group of
    4 input channels of one tap together, as the sparsity pass chose them."""
    n_img, c = x.shape[0], x.shape[1]
    ho = y.shape[2] // wo
    direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    for n in range(n_img):
        if direct:
            spmm_24(values, idx, x[n].reshape((c, x.shape[2] * x.shape[3])), y[n])
        else:
            im2col(x[n], 0, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols, True)
            spmm_24(values, idx, cols, y[n])


@njit(cache=True, error_model="numpy")
def conv_integer(x, wp, wsum, zx, cols, y, kh, kw, sh, sw, ph, pw, dh, dw, wo, exact8):  # pragma: no cover
    """ConvInteger, u8 activations x s8 weights -> exact int32: y = sum w * (x - zx).

    x: uint8 [N, C, H, W]; wp: `qgemm.pack_weights` of w [Co, C*kh*kw]; wsum: int32 [Co], the sum
    of each filter (the zero point comes off afterwards: sum w*x - zx*sum w); cols: uint8 scratch
    [padded_k(C*kh*kw), Ho*Wo], padded with the zero point; y: int32 [N, Co, Ho*Wo].
    """
    n_img, c = x.shape[0], x.shape[1]
    co = y.shape[1]
    ho = y.shape[2] // wo
    # a 1x1 unpadded stride-1 convolution over a multiple of 4 channels reads the image as it is
    direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0 and c % 4 == 0
    for n in range(n_img):
        if direct:
            qgemm_s8u8_nchw(wp, x[n].reshape((c, x.shape[2] * x.shape[3])), y[n], exact8)
        else:
            im2col(x[n], 0, c, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols, False, zx)
            qgemm_s8u8_nchw(wp, cols, y[n], exact8)
        if zx != 0:
            for o in range(co):
                corr = np.int32(zx * wsum[o])
                yr = y[n, o]
                for i in range(yr.shape[0]):
                    yr[i] -= corr


@njit(cache=True, parallel=True, error_model="numpy")
def depthwise_integer(x, w, zx, y, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """Depthwise ConvInteger: y[n, c] = sum over taps of w[c] * (x[n, c] - zx), exact in int32."""
    n_img, c, h, wd = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for nc in prange(n_img * c):
        n = nc // c
        ch = nc % c
        for oh in range(ho):
            yr = y[n, ch, oh]
            for ow in range(wo):
                acc = np.int32(0)
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j * dw
                        if iw >= 0 and iw < wd:
                            acc += np.int32(w[ch, i, j]) * (np.int32(x[n, ch, ih, iw]) - np.int32(zx))
                yr[ow] = acc


@njit(cache=True, error_model="numpy")  # called, not inlined: parfor bodies vectorise worse
def _depthwise_plane(x, w, y, n, ch, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    # per output row, each tap adds a shifted input row: 1-D views and unit-stride loops are what
    # LLVM vectorises (4-D indexing with offsets in the inner loop stayed scalar, 10x slower)
    h, wd = x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    for oh in range(ho):
        yr = y[n, ch, oh]
        for ow in range(wo):
            yr[ow] = 0.0
        for i in range(kh):
            ih = oh * sh - ph + i * dh
            if ih < 0 or ih >= h:
                continue
            xr = x[n, ch, ih]
            for j in range(kw):
                wt = w[ch, i, j]
                off = j * dw - pw
                lo, hi = _tap_range(wo, sw, off, wd)
                if lo >= hi:
                    continue
                if sw == 1:
                    ys = yr[lo:hi]
                    xs = xr[lo + off:hi + off]
                    for t in range(hi - lo):
                        ys[t] += wt * xs[t]
                else:
                    for ow in range(lo, hi):
                        yr[ow] += wt * xr[ow * sw + off]


@njit(cache=True, parallel=True, error_model="numpy")
def depthwise2d(x, w, y, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """One filter per channel: y[n, c] = x[n, c] (*) w[c] (cross-correlation), direct loops.

    x: [N, C, H, W]; w: [C, kh, kw]; y: [N, C, Ho, Wo]. Each tap adds a shifted row of the input
    to the output row, a loop LLVM vectorises when the stride is 1.
    """
    planes = x.shape[0] * x.shape[1]
    c = x.shape[1]
    if planes * y.shape[2] * y.shape[3] * kh * kw < PARALLEL_MIN:
        for nc in range(planes):
            _depthwise_plane(x, w, y, nc // c, nc % c, kh, kw, sh, sw, ph, pw, dh, dw)
    else:
        for nc in prange(planes):
            _depthwise_plane(x, w, y, nc // c, nc % c, kh, kw, sh, sw, ph, pw, dh, dw)


@njit(cache=True, error_model="numpy")
def matmul(a, b, y):  # pragma: no cover - jitted
    """y = a @ b for 2-D float32 arrays (sgemm)."""
    gemm(a, b, y)


@njit(cache=True, error_model="numpy")
def matmul_bt(a, bt, y):  # pragma: no cover - jitted
    """y = a @ bt.T, for a right-hand side stored transposed (Gemm transB, attention's K)."""
    gemm(a, np.ascontiguousarray(bt.T), y)


@njit(cache=True, error_model="numpy")
def batched_matmul(a, b, y):  # pragma: no cover - jitted
    """y[i] = a[i or 0] @ b[i or 0] over a leading batch dim (size-1 batches broadcast)."""
    nb = y.shape[0]
    for i in range(nb):
        gemm(a[i if a.shape[0] > 1 else 0], b[i if b.shape[0] > 1 else 0], y[i])


@njit(inline="always")
def _nanmax(a, b):  # pragma: no cover - jitted
    # np.maximum on scalars becomes a compare and blend that LLVM vectorises (NaN wins, as in
    # numpy); the equivalent `a if a > b or a != a else b` stays a scalar branch
    return np.maximum(a, b)


@njit(cache=True, error_model="numpy")  # called, not inlined: parfor bodies vectorise worse
def _maxpool_plane(x, y, n, ch, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    # separable: the max down the kh input rows of a window first, over whole contiguous rows (a
    # select per element, which LLVM vectorises), then across the kw taps at the strided columns;
    # NaN wins, as in numpy's max
    h, wd = x.shape[2], x.shape[3]
    wo = y.shape[3]
    col = np.empty(wd, np.float32)
    for oh in range(y.shape[2]):
        ih0 = oh * sh - ph
        if kh == 3 and ih0 >= 0 and ih0 + 2 * dh < h:  # the common window, in one fused pass
            r0, r1, r2 = x[n, ch, ih0], x[n, ch, ih0 + dh], x[n, ch, ih0 + 2 * dh]
            for iw in range(wd):
                col[iw] = _nanmax(_nanmax(r0[iw], r1[iw]), r2[iw])
        else:
            for iw in range(wd):
                col[iw] = -np.inf
            for i in range(kh):
                ih = ih0 + i * dh
                if ih >= 0 and ih < h:
                    xr = x[n, ch, ih]
                    for iw in range(wd):
                        col[iw] = _nanmax(xr[iw], col[iw])
        yr = y[n, ch, oh]
        # columns whose whole window is inside: [lo, hi); 3-wide windows (the common case) get a
        # loop with the taps written out, which LLVM vectorises; the rest take the general path
        lo, hi = _tap_range(wo, sw, -pw, wd - (kw - 1) * dw)
        if kw == 3 and dw == 1 and sw == 2:  # strides as literals: LLVM vectorises the interleaved loads
            for ow in range(lo, hi):
                b = 2 * ow - pw
                yr[ow] = _nanmax(_nanmax(col[b], col[b + 1]), col[b + 2])
        elif kw == 3 and dw == 1 and sw == 1:
            for ow in range(lo, hi):
                b = ow - pw
                yr[ow] = _nanmax(_nanmax(col[b], col[b + 1]), col[b + 2])
        elif kw == 3:
            for ow in range(lo, hi):
                b = ow * sw - pw
                yr[ow] = _nanmax(_nanmax(col[b], col[b + dw]), col[b + 2 * dw])
        else:
            for ow in range(lo, hi):
                b = ow * sw - pw
                m = col[b]
                for j in range(1, kw):
                    m = _nanmax(col[b + j * dw], m)
                yr[ow] = m
        for ow in range(min(lo, wo)):  # the few edge columns only (a loop over all wo that
            _maxpool_edge(col, yr, ow, kw, sw, pw, dw)  # skipped [lo, hi) cost 30% of a row)
        for ow in range(max(lo, hi), wo):
            _maxpool_edge(col, yr, ow, kw, sw, pw, dw)


@njit(inline="always")
def _maxpool_edge(col, yr, ow, kw, sw, pw, dw):  # pragma: no cover - jitted
    """yr[ow] for a window that crosses the row's ends (taps outside never win)."""
    base = ow * sw - pw
    m = np.float32(-np.inf)
    for j in range(kw):
        iw = base + j * dw
        if iw >= 0 and iw < col.shape[0]:
            m = _nanmax(col[iw], m)
    yr[ow] = m


@njit(cache=True, parallel=True, error_model="numpy")
def maxpool2d(x, y, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    """Max over each window; padding never wins (it is -inf, as ONNX specifies)."""
    c = x.shape[1]
    planes = x.shape[0] * c
    if planes * y.shape[2] * y.shape[3] * kh * kw < PARALLEL_MIN:
        for nc in range(planes):
            _maxpool_plane(x, y, nc // c, nc % c, kh, kw, sh, sw, ph, pw, dh, dw)
    else:
        for nc in prange(planes):
            _maxpool_plane(x, y, nc // c, nc % c, kh, kw, sh, sw, ph, pw, dh, dw)


@njit(cache=True, error_model="numpy")  # called, not inlined: parfor bodies vectorise worse
def _avgpool_plane(x, y, n, ch, kh, kw, sh, sw, ph, pw, count_include_pad):  # pragma: no cover - jitted
    h, wd = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        for ow in range(y.shape[3]):
            s = np.float32(0.0)
            cnt = 0
            for i in range(kh):
                ih = oh * sh - ph + i
                for j in range(kw):
                    iw = ow * sw - pw + j
                    if ih >= 0 and ih < h and iw >= 0 and iw < wd:
                        s += x[n, ch, ih, iw]
                        cnt += 1
                    elif count_include_pad and ih < h + ph and iw < wd + pw:
                        cnt += 1
            y[n, ch, oh, ow] = s / np.float32(max(cnt, 1))


@njit(cache=True, parallel=True, error_model="numpy")
def avgpool2d(x, y, kh, kw, sh, sw, ph, pw, count_include_pad):  # pragma: no cover - jitted
    """Mean over each window, dividing by the window's size or by its in-bounds part."""
    c = x.shape[1]
    planes = x.shape[0] * c
    if planes * y.shape[2] * y.shape[3] * kh * kw < PARALLEL_MIN:
        for nc in range(planes):
            _avgpool_plane(x, y, nc // c, nc % c, kh, kw, sh, sw, ph, pw, count_include_pad)
    else:
        for nc in prange(planes):
            _avgpool_plane(x, y, nc // c, nc % c, kh, kw, sh, sw, ph, pw, count_include_pad)


@njit(cache=True, parallel=True, error_model="numpy")
def global_avgpool(x, y):  # pragma: no cover - jitted
    """y[r] = mean(x[r, :]) for x viewed as [N*C, H*W] (accumulated in float64, as the reference)."""
    rows, n = x.shape
    if rows * n < PARALLEL_MIN:
        for r in range(rows):
            y[r] = sum64(x[r]) / n
    else:
        for r in prange(rows):
            y[r] = sum64(x[r]) / n


@njit(cache=True, error_model="numpy")
def global_maxpool(x, y):  # pragma: no cover - jitted
    """y[r] = max(x[r, :]) for x viewed as [N*C, H*W]."""
    rows, n = x.shape
    for r in range(rows):
        m = -np.inf
        for i in range(n):
            v = x[r, i]
            if v > m or v != v:
                m = v
        y[r] = m


@njit(cache=True, error_model="numpy")
def copy(x, y):  # pragma: no cover - jitted
    """y[...] = x (same size, both contiguous)."""
    y.reshape(-1)[:] = x.reshape(-1)
