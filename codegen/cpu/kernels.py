"""Hand-written Numba kernels of the CPU target: convolution, matrix products, pooling.

Conventions: every kernel writes its outputs in place into buffers the driver passes (views of the
arena) and returns nothing; sizes come from the arrays, strides and pads are plain ints. float32
matrix products go to BLAS sgemm (Numba's `np.dot`, backed by SciPy's OpenBLAS): packing and the
register microkernel are what OpenBLAS does best, so the kernels here arrange data for it (im2col,
NCHW as [channels, pixels]) and leave bias and activations to the fused epilogue kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .blas import sgemm


#: Below this much work (elements touched) a kernel stays on one thread: waking the pool costs more.
PARALLEL_MIN = 32768


@njit(inline="always")
def _im2col_row(x, r, c0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols):  # pragma: no cover - jitted
    h, w = x.shape[1], x.shape[2]
    c = r // (kh * kw)
    i = (r // kw) % kh
    j = r % kw
    # the ow range that lands inside the input, hoisted out of the pixel loop
    lo = 0
    while lo < wo and lo * sw - pw + j * dw < 0:
        lo += 1
    hi = wo
    while hi > lo and (hi - 1) * sw - pw + j * dw >= w:
        hi -= 1
    off = -pw + j * dw
    for oh in range(ho):
        ih = oh * sh - ph + i * dh
        base = oh * wo
        if ih < 0 or ih >= h:
            for ow in range(wo):
                cols[r, base + ow] = 0.0
            continue
        for ow in range(lo):
            cols[r, base + ow] = 0.0
        if sw == 1:
            for ow in range(lo, hi):
                cols[r, base + ow] = x[c0 + c, ih, ow + off]
        else:
            for ow in range(lo, hi):
                cols[r, base + ow] = x[c0 + c, ih, ow * sw + off]
        for ow in range(hi, wo):
            cols[r, base + ow] = 0.0


@njit(cache=True, parallel=True, error_model="numpy")
def im2col(x, c0, cin, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols):  # pragma: no cover - jitted
    """cols[(c, i, j), (oh, ow)] = x[c0 + c, oh*sh - ph + i*dh, ow*sw - pw + j*dw] (0 outside)."""
    rows = cin * kh * kw
    if rows * ho * wo < PARALLEL_MIN:
        for r in range(rows):
            _im2col_row(x, r, c0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)
    else:
        for r in prange(rows):
            _im2col_row(x, r, c0, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)


#: Below this many multiply-adds a product runs as one sgemm on the calling thread.
GEMM_SPLIT_MIN = 1 << 21
#: Products are cut into at most this many blocks, each at least this wide (columns or rows).
GEMM_BLOCKS = 8
GEMM_BLOCK_MIN = 64


@njit(cache=True, parallel=True, error_model="numpy")
def gemm(a, b, c):  # pragma: no cover - jitted
    """c = a @ b, cut into blocks that Numba's threads share, each block one single-threaded sgemm.

    BLAS runs single-threaded: its own pool would fight Numba's for the cores (on a loaded 2-core
    machine, two spinning pools made a small CNN 100x slower), so parallelism is ours to create.
    Wide products are cut by columns (each block packs only its part of b; the weights `a` are
    small), tall ones by rows. Blocks, not threads, are fixed, so the same code serves any count.
    """
    m, k = a.shape
    n = b.shape[1]
    if m * k * n < GEMM_SPLIT_MIN:
        sgemm(a, b, c)
        return
    if n >= m:
        blocks = max(1, min(GEMM_BLOCKS, n // GEMM_BLOCK_MIN))
        step = (n + blocks - 1) // blocks
        for i in prange(blocks):
            lo = i * step
            hi = min(n, lo + step)
            if lo < hi:
                sgemm(a, b[:, lo:hi], c[:, lo:hi])
    else:
        blocks = max(1, min(GEMM_BLOCKS, m // GEMM_BLOCK_MIN))
        step = (m + blocks - 1) // blocks
        for i in prange(blocks):
            lo = i * step
            hi = min(m, lo + step)
            if lo < hi:
                sgemm(a[lo:hi], b, c[lo:hi])


@njit(cache=True, error_model="numpy")
def conv2d(x, w, cols, y, kh, kw, sh, sw, ph, pw, dh, dw, groups, wo):  # pragma: no cover - jitted
    """y[n, co, p] = sum over (ci, i, j) of w[g, co', (ci, i, j)] * x (im2col + sgemm per image, group).

    x: [N, C, H, W]; w: [groups, Co/groups, Ci/groups*kh*kw]; cols: scratch [Ci/groups*kh*kw, Ho*Wo];
    y: [N, Co, Ho*Wo] with Ho*Wo pixels, Wo of them per row (the end pads only show in Ho, Wo).
    A 1x1, stride-1, unpadded convolution skips im2col: the image is the matrix.
    """
    n_img, c = x.shape[0], x.shape[1]
    cig = c // groups
    cog = w.shape[1]
    ho_wo = y.shape[2]
    ho = ho_wo // wo
    direct = kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0
    for n in range(n_img):
        for g in range(groups):
            if direct:
                xm = x[n].reshape((c, x.shape[2] * x.shape[3]))
                gemm(w[g], xm[g * cig:(g + 1) * cig], y[n, g * cog:(g + 1) * cog])
            else:
                im2col(x[n], g * cig, cig, kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, cols)
                gemm(w[g], cols, y[n, g * cog:(g + 1) * cog])


@njit(inline="always")
def _depthwise_plane(x, w, y, n, ch, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    h, wd = x.shape[2], x.shape[3]
    ho, wo = y.shape[2], y.shape[3]
    for oh in range(ho):
        for ow in range(wo):
            y[n, ch, oh, ow] = 0.0
        for i in range(kh):
            ih = oh * sh - ph + i * dh
            if ih < 0 or ih >= h:
                continue
            for j in range(kw):
                wt = w[ch, i, j]
                off = j * dw - pw
                lo = 0
                while lo < wo and lo * sw + off < 0:
                    lo += 1
                hi = wo
                while hi > lo and (hi - 1) * sw + off >= wd:
                    hi -= 1
                if sw == 1:
                    for ow in range(lo, hi):
                        y[n, ch, oh, ow] += wt * x[n, ch, ih, ow + off]
                else:
                    for ow in range(lo, hi):
                        y[n, ch, oh, ow] += wt * x[n, ch, ih, ow * sw + off]


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
def _maxpool_plane(x, y, n, ch, kh, kw, sh, sw, ph, pw, dh, dw):  # pragma: no cover - jitted
    h, wd = x.shape[2], x.shape[3]
    for oh in range(y.shape[2]):
        for ow in range(y.shape[3]):
            m = -np.inf
            for i in range(kh):
                ih = oh * sh - ph + i * dh
                if ih < 0 or ih >= h:
                    continue
                for j in range(kw):
                    iw = ow * sw - pw + j * dw
                    if iw >= 0 and iw < wd:
                        v = x[n, ch, ih, iw]
                        if v > m or v != v:
                            m = v
            y[n, ch, oh, ow] = m


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


@njit(inline="always")
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
            s = 0.0
            for i in range(n):
                s += x[r, i]
            y[r] = s / n
    else:
        for r in prange(rows):
            s = 0.0
            for i in range(n):
                s += x[r, i]
            y[r] = s / n


@njit(cache=True, parallel=True, error_model="numpy")
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
