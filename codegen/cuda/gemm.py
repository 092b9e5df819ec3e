"""CUDA kernels for convolution and matrix products: tiled SGEMM, implicit-GEMM convolution (float32
and exact uint8 x int8 -> int32), depthwise convolution and ConvTranspose, with their launchers.

Why these kernels: convolutions and matrix products are nearly all of a CNN's time, so they get
register-blocked kernels in the classic SIMT shape (no tensor cores: results stay true float32):

* ``matmul`` (tiled SGEMM). A block computes a ``BM x BN`` tile of ``C = A @ B`` for one batch entry
  (grid z); each of its ``(BM/TM) * (BN/TN)`` threads owns ``TM x TN`` accumulators in registers
  (``cuda.local.array`` indexed only inside loops over compile-time constants, which NVVM unrolls
  into registers). K advances ``BK`` at a time through double-buffered shared-memory tiles: the next
  tile's global loads are issued into registers before the current tile's FMAs and stored to the
  other buffer after them, so one ``syncthreads`` per K step suffices and the loads' latency hides
  behind the arithmetic. A thread's rows and columns are strided by the thread grid (``ty + i *
  BM/TM``), so shared reads are broadcasts or consecutive words (no bank conflicts) and C's stores
  are coalesced. A and B may each be stored transposed (Gemm's transA/transB, constant weights
  packed K-major), and a 2-D B broadcasts across A's batch.

* ``conv2d`` / ``conv_integer`` (implicit GEMM). ``M = Cout/group``, ``N = batch * Ho * Wo`` (the
  batch is folded into N, so batch 32 fills the GPU even at 7x7), ``K = Cin/group * kh * kw``, one
  group per grid z. The weights are packed on the host into ``[group, Kp, Mp]`` (K-major, zero-padded
  to whole tiles, so A's loads need no bounds checks); the B tile is gathered from the input on the
  fly (no im2col buffer): each thread loads one fixed output column across the K loop, so the
  column's image/row/column decomposition happens once, and a per-K table (``ktab``: input offset,
  row tap, column tap; padded K rows point outside the image) replaces the divisions by kh and kw.
  Padding, stride and dilation are the bounds checks of that gather. Small layers split K across
  blocks (``splits``) and accumulate with atomics into a zeroed output, so batch-1 7x7 layers still
  occupy the machine. The integer variant is the same code over int32 (exact), with the input's
  zero point subtracted at the gather (padding then contributes exactly zero, as ConvInteger says).

* ``depthwise_conv2d`` / ``depthwise_conv_integer`` and ``conv_transpose2d``: one thread per output
  element, grid-stride (ConvTranspose gathers the taps that reach each output).

Tile configurations are compile-time constants of kernels built per configuration by
``sgemm_kernel`` / ``conv_kernel`` (cached); rules pick them with ``choose_tile`` (smaller tiles for
small Cout or N) and pass them as literals. Under the simulator (``launch.SIMULATOR``) the same code
runs with tiny tiles (8 or 16 threads per block).

Launcher contract (see ``launch``): ``launcher(stream, *args)``; arrays are C-contiguous device
arrays in the views the rules give; nothing is synchronised or copied to the host.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numba
import numpy as np
from numba import cuda

from . import launch

#: (BM, BN, BK, TM, TN): block tile M x N, K step, per-thread M x N accumulators.
Tile = tuple[int, int, int, int, int]

#: Tiles for real hardware, largest first: 256 threads (64 in the last), 8x8 / 4x4 per thread.
#: Measured on an H100 (ResNet-50, batch 32, MCC_CUDA_TILES): with the 128x64 and 64x128 tiles
#: between the first two it took 32.7 ms against 29.9; 128x64 instead of 128x128, 34.1; a K step
#: of 16 instead of 8 in the big tile, 29.3 against 30.3.
HW_TILES: tuple[Tile, ...] = (
    (128, 128, 16, 8, 8),
    (64, 64, 16, 4, 4),
    (32, 32, 16, 4, 4),
)
#: Tiles for the simulator (every thread is a Python thread): 16 threads per block.
SIM_TILES: tuple[Tile, ...] = (
    (16, 8, 4, 4, 2),
    (8, 8, 4, 2, 2),
)

#: Streaming multiprocessors to fill (H100 SXM); a couple under the simulator, so the choices vary.
SMS = 2 if launch.SIMULATOR else 132
#: Row-tap value of padded K rows in the gather table: far outside any image.
_OUTSIDE = 1 << 28


def _check_tile(tile: Tile) -> tuple[int, int, int]:
    """(threads, A loads per thread, B loads per thread) of a valid tile; ValueError otherwise."""
    bm, bn, bk, tm, tn = tile
    if bm % tm or bn % tn:
        raise ValueError(f"tile {tile}: TM/TN must divide BM/BN")
    nt = (bm // tm) * (bn // tn)
    if (bm * bk) % nt or (bn * bk) % nt or nt % bn or bk % (nt // bn):
        raise ValueError(f"tile {tile}: {nt} threads cannot split the A/B tile loads evenly")
    return nt, bm * bk // nt, bn * bk // nt


def _tiles_from_env() -> tuple[Tile, ...] | None:
    """MCC_CUDA_TILES="128x128x16x8x8,64x64x16x4x4": the tiles to choose from, largest first (tuning)."""
    raw = os.environ.get("MCC_CUDA_TILES")
    if not raw:
        return None
    try:
        tiles = tuple(tuple(int(v) for v in t.split("x")) for t in raw.split(","))
        for t in tiles:
            if len(t) != 5:
                raise ValueError(t)
            _check_tile(t)  # type: ignore[arg-type]
    except ValueError as e:
        raise ValueError(f"MCC_CUDA_TILES={raw!r}: expected tiles BMxBNxBKxTMxTN separated by commas ({e})") from None
    return tiles  # type: ignore[return-value]


TILES: tuple[Tile, ...] = SIM_TILES if launch.SIMULATOR else (_tiles_from_env() or HW_TILES)


# -- tiled SGEMM ----------------------------------------------------------------------------------


@cache
def sgemm_kernel(tile: Tile, trans_a: bool, trans_b: bool) -> Any:
    """The SGEMM kernel for `tile`: ``c[z] = op(a[z or 0]) @ op(b[z or 0])``, a is [.., M, K] ([.., K, M]
    when `trans_a`), b is [.., K, N] ([.., N, K] when `trans_b`), c is [batch, M, N], all float32."""
    bm, bn, bk, tm, tn = tile
    nt, a_loads, b_loads = _check_tile(tile)
    ntx, nty = bn // tn, bm // tm
    bm_p, bn_p = bm + 1, bn + 1  # padded rows: transposing stores into shared memory hit one bank without

    @cuda.jit
    def kernel(a, b, c):  # type: ignore[no-untyped-def]
        a_s = cuda.shared.array((2, bk, bm_p), numba.float32)
        b_s = cuda.shared.array((2, bk, bn_p), numba.float32)
        a_st = cuda.local.array(a_loads, numba.float32)
        b_st = cuda.local.array(b_loads, numba.float32)
        acc = cuda.local.array((tm, tn), numba.float32)
        a_r = cuda.local.array(tm, numba.float32)
        b_r = cuda.local.array(tn, numba.float32)
        m_total = c.shape[1]
        n_total = c.shape[2]
        k_total = a.shape[1] if trans_a else a.shape[2]
        tid = cuda.threadIdx.x
        tx = tid % ntx
        ty = tid // ntx
        n0 = cuda.blockIdx.x * bn
        m0 = cuda.blockIdx.y * bm
        z = cuda.blockIdx.z
        za = z if a.shape[0] > 1 else 0
        zb = z if b.shape[0] > 1 else 0
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = np.float32(0.0)
        ktiles = (k_total + bk - 1) // bk

        # prologue: tile 0 into buffer 0
        for l in range(a_loads):
            idx = tid + l * nt
            if trans_a:
                kk = idx // bm
                mm = idx - kk * bm
                v = a[za, kk, m0 + mm] if kk < k_total and m0 + mm < m_total else np.float32(0.0)
            else:
                mm = idx // bk
                kk = idx - mm * bk
                v = a[za, m0 + mm, kk] if kk < k_total and m0 + mm < m_total else np.float32(0.0)
            a_s[0, kk, mm] = v
        for l in range(b_loads):
            idx = tid + l * nt
            if trans_b:
                nn = idx // bk
                kk = idx - nn * bk
                v = b[zb, n0 + nn, kk] if kk < k_total and n0 + nn < n_total else np.float32(0.0)
            else:
                kk = idx // bn
                nn = idx - kk * bn
                v = b[zb, kk, n0 + nn] if kk < k_total and n0 + nn < n_total else np.float32(0.0)
            b_s[0, kk, nn] = v
        cuda.syncthreads()

        for t in range(ktiles):
            cur = t & 1
            more = t + 1 < ktiles
            if more:  # next tile's global loads, in flight during this tile's FMAs
                k0 = (t + 1) * bk
                for l in range(a_loads):
                    idx = tid + l * nt
                    if trans_a:
                        kk = idx // bm
                        mm = idx - kk * bm
                        ok = k0 + kk < k_total and m0 + mm < m_total
                        a_st[l] = a[za, k0 + kk, m0 + mm] if ok else np.float32(0.0)
                    else:
                        mm = idx // bk
                        kk = idx - mm * bk
                        ok = k0 + kk < k_total and m0 + mm < m_total
                        a_st[l] = a[za, m0 + mm, k0 + kk] if ok else np.float32(0.0)
                for l in range(b_loads):
                    idx = tid + l * nt
                    if trans_b:
                        nn = idx // bk
                        kk = idx - nn * bk
                        ok = k0 + kk < k_total and n0 + nn < n_total
                        b_st[l] = b[zb, n0 + nn, k0 + kk] if ok else np.float32(0.0)
                    else:
                        kk = idx // bn
                        nn = idx - kk * bn
                        ok = k0 + kk < k_total and n0 + nn < n_total
                        b_st[l] = b[zb, k0 + kk, n0 + nn] if ok else np.float32(0.0)
            for kk in range(bk):
                for i in range(tm):
                    a_r[i] = a_s[cur, kk, ty + i * nty]
                for j in range(tn):
                    b_r[j] = b_s[cur, kk, tx + j * ntx]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += a_r[i] * b_r[j]
            if more:
                nxt = cur ^ 1
                for l in range(a_loads):
                    idx = tid + l * nt
                    if trans_a:
                        kk = idx // bm
                        mm = idx - kk * bm
                    else:
                        mm = idx // bk
                        kk = idx - mm * bk
                    a_s[nxt, kk, mm] = a_st[l]
                for l in range(b_loads):
                    idx = tid + l * nt
                    if trans_b:
                        nn = idx // bk
                        kk = idx - nn * bk
                    else:
                        kk = idx // bn
                        nn = idx - kk * bn
                    b_s[nxt, kk, nn] = b_st[l]
            cuda.syncthreads()

        for i in range(tm):
            m = m0 + ty + i * nty
            if m < m_total:
                for j in range(tn):
                    n = n0 + tx + j * ntx
                    if n < n_total:
                        c[z, m, n] = acc[i, j]

    return kernel


def choose_tile(m: int, n: int, batches: int = 1) -> Tile:
    """The largest tile that gives at least one block per SM with at most 25% padding waste along M
    and N; otherwise the smallest tile (small Cout or small N get small tiles)."""
    for tile in TILES:
        bm, bn = tile[0], tile[1]
        gm, gn = -(-m // bm), -(-n // bn)
        if gm * gn * batches >= SMS and m >= 0.75 * gm * bm and n >= 0.75 * gn * bn:
            return tile
    return TILES[-1]


def matmul(stream: Any, a: Any, b: Any, c: Any, trans_a: bool, trans_b: bool, tile: Tile) -> None:
    """``c[z] = op(a)[z] @ op(b)[z]``: a [ba, M, K] or [ba, K, M] (`trans_a`), b [bb, K, N] or [bb, N, K]
    (`trans_b`), c [batch, M, N]; ba and bb are 1 (broadcast) or batch. float32."""
    kernel = sgemm_kernel(tuple(tile), bool(trans_a), bool(trans_b))
    nt = (tile[0] // tile[3]) * (tile[1] // tile[4])
    batch, m, n = c.shape
    grid = (-(-n // tile[1]), -(-m // tile[0]), batch)
    kernel[grid, nt, stream](a, b, c)


# -- implicit-GEMM convolution ----------------------------------------------------------------


#: Epilogues the convolution kernel can apply at its store (see `conv_kernel`).
EPILOGUES = ("", "relu", "add", "add_relu")


@cache
def conv_kernel(tile: Tile, integer: bool, epilogue: str = "") -> Any:
    """The implicit-GEMM convolution kernel for `tile` (float32, or uint8 x int8 -> int32 when `integer`).

    Arguments: x flat [N*C*H*W]; wt [G, Kp, Mp] packed weights; ktab int32 [Kp, 3]; bias [Cout];
    res (a tensor shaped like y, read only by the "add" epilogues); y [N, Cout, Ho*Wo]; zx (the
    input zero point, 0 for float); geometry scalars; splits (K split across grid z; y must be
    zeroed first when > 1) and kt_per_split (K tiles per split). `epilogue` ("", "relu", "add",
    "add_relu") is applied to acc + bias before the store: a residual add and/or ReLU, so the
    tensor is written once instead of being read back by an elementwise kernel.
    """
    assert epilogue in EPILOGUES, epilogue
    has_res, relu = epilogue.startswith("add"), epilogue.endswith("relu")
    bm, bn, bk, tm, tn = tile
    nt, a_loads, b_loads = _check_tile(tile)
    ntx, nty = bn // tn, bm // tm
    b_rows = nt // bn  # row step of a thread's B-tile loads (its column is fixed)
    acc_t = numba.int32 if integer else numba.float32
    conv = np.int32 if integer else np.float32

    @cuda.jit
    def kernel(x, wt, ktab, bias, res, y, zx, chw, cghw, hgt, wid, wo, sh, sw, ph, pw, splits, kt_per_split):  # type: ignore[no-untyped-def]
        a_s = cuda.shared.array((2, bk, bm), acc_t)
        b_s = cuda.shared.array((2, bk, bn), acc_t)
        a_st = cuda.local.array(a_loads, acc_t)
        b_st = cuda.local.array(b_loads, acc_t)
        acc = cuda.local.array((tm, tn), acc_t)
        a_r = cuda.local.array(tm, acc_t)
        b_r = cuda.local.array(tn, acc_t)
        groups = wt.shape[0]
        cog = y.shape[1] // groups
        hw_o = y.shape[2]
        ncols = y.shape[0] * hw_o
        ktiles = wt.shape[1] // bk
        tid = cuda.threadIdx.x
        tx = tid % ntx
        ty = tid // ntx
        n0 = cuda.blockIdx.x * bn
        m0 = cuda.blockIdx.y * bm
        z = cuda.blockIdx.z
        g = z // splits
        split = z - g * splits
        t0 = split * kt_per_split
        t1 = min(ktiles, t0 + kt_per_split)
        for i in range(tm):
            for j in range(tn):
                acc[i, j] = conv(0)

        # this thread's gather column, decomposed once
        col = tid % bn
        row0 = tid // bn
        n = n0 + col
        if n < ncols:
            img = n // hw_o
            p = n - img * hw_o
            oh = p // wo
            ow = p - oh * wo
            ih0 = oh * sh - ph
            iw0 = ow * sw - pw
            base = img * chw + g * cghw + ih0 * wid + iw0
        else:
            ih0 = -_OUTSIDE
            iw0 = -_OUTSIDE
            base = 0

        if t0 < t1:  # prologue: tile t0 into buffer 0
            k0 = t0 * bk
            for l in range(a_loads):
                idx = tid + l * nt
                kk = idx // bm
                mm = idx - kk * bm
                a_s[0, kk, mm] = conv(wt[g, k0 + kk, m0 + mm])
            for l in range(b_loads):
                kk = row0 + l * b_rows
                k = k0 + kk
                ih = ih0 + ktab[k, 1]
                iw = iw0 + ktab[k, 2]
                if ih >= 0 and ih < hgt and iw >= 0 and iw < wid:
                    b_s[0, kk, col] = conv(x[base + ktab[k, 0]]) - zx
                else:
                    b_s[0, kk, col] = conv(0)
        cuda.syncthreads()

        for t in range(t0, t1):
            cur = (t - t0) & 1
            more = t + 1 < t1
            if more:  # next tile's loads, in flight during this tile's FMAs
                k0 = (t + 1) * bk
                for l in range(a_loads):
                    idx = tid + l * nt
                    kk = idx // bm
                    mm = idx - kk * bm
                    a_st[l] = conv(wt[g, k0 + kk, m0 + mm])
                for l in range(b_loads):
                    k = k0 + row0 + l * b_rows
                    ih = ih0 + ktab[k, 1]
                    iw = iw0 + ktab[k, 2]
                    if ih >= 0 and ih < hgt and iw >= 0 and iw < wid:
                        b_st[l] = conv(x[base + ktab[k, 0]]) - zx
                    else:
                        b_st[l] = conv(0)
            for kk in range(bk):
                for i in range(tm):
                    a_r[i] = a_s[cur, kk, ty + i * nty]
                for j in range(tn):
                    b_r[j] = b_s[cur, kk, tx + j * ntx]
                for i in range(tm):
                    for j in range(tn):
                        acc[i, j] += a_r[i] * b_r[j]
            if more:
                nxt = cur ^ 1
                for l in range(a_loads):
                    idx = tid + l * nt
                    kk = idx // bm
                    mm = idx - kk * bm
                    a_s[nxt, kk, mm] = a_st[l]
                for l in range(b_loads):
                    b_s[nxt, row0 + l * b_rows, col] = b_st[l]
            cuda.syncthreads()

        # epilogue: columns decomposed once, then rows outer (loops fully unrolled: acc stays in registers)
        c_img = cuda.local.array(tn, numba.int64)
        c_pix = cuda.local.array(tn, numba.int64)
        for j in range(tn):
            n = n0 + tx + j * ntx
            c_img[j] = n // hw_o if n < ncols else -1
            c_pix[j] = n - c_img[j] * hw_o
        if splits == 1:
            for i in range(tm):
                m = m0 + ty + i * nty
                if m < cog:
                    co = g * cog + m
                    bv = bias[co]
                    for j in range(tn):
                        if c_img[j] >= 0:
                            v = acc[i, j] + bv
                            if has_res:
                                v += res[c_img[j], co, c_pix[j]]
                            if relu and v < conv(0):  # NaN stays NaN, as Relu's reference keeps it
                                v = conv(0)
                            y[c_img[j], co, c_pix[j]] = v
        else:  # K split: atomics into the zeroed output, split 0 adds the bias
            for i in range(tm):
                m = m0 + ty + i * nty
                if m < cog:
                    co = g * cog + m
                    bv = bias[co] if split == 0 else conv(0)
                    for j in range(tn):
                        if c_img[j] >= 0:
                            cuda.atomic.add(y, (c_img[j], co, c_pix[j]), acc[i, j] + bv)

    return kernel


def pack_conv_weights(w: np.ndarray, group: int, tile: Tile) -> np.ndarray:
    """[Cout, Cin/group, kh, kw] weights -> [group, Kp, Mp] (K-major, K = Cin/group*kh*kw in
    (channel, row, column) order), zero-padded to whole BK x BM tiles; dtype kept."""
    co = w.shape[0]
    cog = co // group
    kk = int(np.prod(w.shape[1:]))
    bm, bk = tile[0], tile[2]
    kp, mp = -(-kk // bk) * bk, -(-cog // bm) * bm
    out = np.zeros((group, kp, mp), w.dtype)
    out[:, :kk, :cog] = w.reshape(group, cog, kk).transpose(0, 2, 1)
    return out


def conv_ktab(cig: int, h: int, w: int, kh: int, kw: int, dh: int, dw: int, kp: int) -> np.ndarray:
    """The gather table [Kp, 3] int32: per K index (ci, r, s) the input offset ci*H*W + r*dh*W + s*dw,
    the row tap r*dh and the column tap s*dw; padded rows have a row tap outside every image."""
    ci, r, s = np.meshgrid(np.arange(cig), np.arange(kh), np.arange(kw), indexing="ij")
    ci, r, s = ci.reshape(-1), r.reshape(-1), s.reshape(-1)
    tab = np.zeros((kp, 3), np.int64)
    tab[:, 1] = -_OUTSIDE
    n = ci.size
    tab[:n, 0] = ci * h * w + r * dh * w + s * dw
    tab[:n, 1] = r * dh
    tab[:n, 2] = s * dw
    if tab[:n, 0].max(initial=0) >= 2**31:
        raise ValueError("convolution input too large for int32 offsets")
    return tab.astype(np.int32)


def choose_splits(tile: Tile, m: int, n: int, groups: int, kp: int) -> int:
    """K splits for a convolution whose tiles alone leave SMs idle (each split keeps >= 4 K tiles)."""
    blocks = -(-m // tile[0]) * -(-n // tile[1]) * groups
    ktiles = kp // tile[2]
    if blocks >= SMS:
        return 1
    return max(1, min(ktiles // 4, -(-2 * SMS // blocks)))


def _conv(stream: Any, x: Any, wt: Any, ktab: Any, bias: Any, y: Any, zx: Any, geometry: tuple[int, ...],
          tile: Tile, splits: int, integer: bool, res: Any = None, epilogue: str = "") -> None:
    c, h, w, wo, sh, sw, ph, pw = (int(v) for v in geometry)
    groups, kp, mp = wt.shape
    ktiles = kp // tile[2]
    splits = max(1, min(int(splits), ktiles))
    per = -(-ktiles // splits)
    splits = -(-ktiles // per)  # no empty split
    if splits > 1:
        fill(stream, y, 0)
    assert splits == 1 or not epilogue, "an epilogue needs the whole sum, not one K split"
    kernel = conv_kernel(tuple(tile), integer, epilogue)
    nt = (tile[0] // tile[3]) * (tile[1] // tile[4])
    ncols = y.shape[0] * y.shape[2]
    grid = (-(-ncols // tile[1]), mp // tile[0], groups * splits)
    kernel[grid, nt, stream](x, wt, ktab, bias, y if res is None else res, y, zx, c * h * w, (c // groups) * h * w, h, w, wo, sh, sw, ph, pw,
                             splits, per)


def conv2d(stream: Any, x: Any, wt: Any, ktab: Any, bias: Any, y: Any, geometry: tuple[int, ...], tile: Tile,
           splits: int) -> None:
    """float32 implicit-GEMM convolution: x flat [N*C*H*W], wt [G, Kp, Mp] (`pack_conv_weights`),
    ktab [Kp, 3] int32 (`conv_ktab`), bias [Cout], y [N, Cout, Ho*Wo];
    geometry = (C, H, W, Wo, sh, sw, ph, pw)."""
    _conv(stream, x, wt, ktab, bias, y, np.float32(0.0), geometry, tile, splits, False)


def conv2d_fused(stream: Any, x: Any, wt: Any, ktab: Any, bias: Any, res: Any, y: Any, geometry: tuple[int, ...],
                 tile: Tile, epilogue: str) -> None:
    """`conv2d` (one K split) followed at the store by `epilogue`: y = act(conv + bias [+ res])."""
    _conv(stream, x, wt, ktab, bias, y, np.float32(0.0), geometry, tile, 1, False, res, epilogue)


def conv_integer(stream: Any, x: Any, wt: Any, ktab: Any, bias: Any, y: Any, zx: int, geometry: tuple[int, ...],
                 tile: Tile, splits: int) -> None:
    """ConvInteger as `conv2d`: x uint8, wt int8, bias int32, y int32 = sum (x - zx) * w, exact."""
    _conv(stream, x, wt, ktab, bias, y, np.int32(zx), geometry, tile, splits, True)


@cuda.jit
def _fill3(y, v):  # type: ignore[no-untyped-def]
    """y[...] = v over a 3-D array, grid-stride."""
    d1, d2 = y.shape[1], y.shape[2]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, y.shape[0] * d1 * d2, stride):
        a = idx // (d1 * d2)
        r = idx - a * d1 * d2
        b = r // d2
        y[a, b, r - b * d2] = v


def fill(stream: Any, y: Any, value: float) -> None:
    """Set every element of the 3-D device array `y` to `value`."""
    v = y.dtype.type(value)
    _fill3[launch.blocks(y.size), launch.THREADS, stream](y, v)


# -- depthwise convolution ------------------------------------------------------------------


@cache
def depthwise_kernel(integer: bool) -> Any:
    """Depthwise convolution, one thread per output element: x [N, C, H, W], w [Cout, kh, kw],
    bias [Cout], y [N, Cout, Ho, Wo]; output channel co reads input channel co // (Cout / C)."""
    conv = np.int32 if integer else np.float32

    @cuda.jit
    def kernel(x, w, bias, y, zx, sh, sw, ph, pw, dh, dw):  # type: ignore[no-untyped-def]
        _, co, ho, wo = y.shape
        hgt, wid = x.shape[2], x.shape[3]
        kh, kw = w.shape[1], w.shape[2]
        mult = co // x.shape[1]
        start, stride = cuda.grid(1), cuda.gridsize(1)
        for idx in range(start, y.size, stride):
            ow = idx % wo
            t = idx // wo
            oh = t % ho
            t = t // ho
            c = t % co
            img = t // co
            ci = c // mult
            acc = bias[c]
            for r in range(kh):
                ih = oh * sh - ph + r * dh
                if ih >= 0 and ih < hgt:
                    for s in range(kw):
                        iw = ow * sw - pw + s * dw
                        if iw >= 0 and iw < wid:
                            acc += (conv(x[img, ci, ih, iw]) - zx) * conv(w[c, r, s])
            y[img, c, oh, ow] = acc

    return kernel


def depthwise_conv2d(stream: Any, x: Any, w: Any, bias: Any, y: Any, sh: int, sw: int, ph: int, pw: int, dh: int,
                     dw: int) -> None:
    """float32 depthwise convolution (group == C, Cout a multiple of C); see `depthwise_kernel`."""
    depthwise_kernel(False)[launch.blocks(y.size), launch.THREADS, stream](x, w, bias, y, np.float32(0.0), sh, sw, ph,
                                                                           pw, dh, dw)


def depthwise_conv_integer(stream: Any, x: Any, w: Any, bias: Any, y: Any, zx: int, sh: int, sw: int, ph: int,
                           pw: int, dh: int, dw: int) -> None:
    """uint8 x int8 -> int32 depthwise ConvInteger (exact); bias int32."""
    depthwise_kernel(True)[launch.blocks(y.size), launch.THREADS, stream](x, w, bias, y, np.int32(zx), sh, sw, ph, pw,
                                                                          dh, dw)


# -- ConvTranspose ----------------------------------------------------------------------------


@cuda.jit
def _conv_transpose_kernel(x, w, bias, y, sh, sw, ph, pw, dh, dw, group):  # type: ignore[no-untyped-def]
    """y[n, oc, oy, ox] = bias[oc] + sum over the taps (ci, r, s) with oy = iy*sh + r*dh - ph and
    ox = ix*sw + s*dw - pw of x[n, g*Cig + ci, iy, ix] * w[oc, ci, r, s] (w packed [Cout, Cig, kh, kw])."""
    _, co, ho, wo = y.shape
    hgt, wid = x.shape[2], x.shape[3]
    cig, kh, kw = w.shape[1], w.shape[2], w.shape[3]
    mg = co // group
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for idx in range(start, y.size, stride):
        ox = idx % wo
        t = idx // wo
        oy = t % ho
        t = t // ho
        oc = t % co
        img = t // co
        c0 = (oc // mg) * cig
        acc = bias[oc]
        for r in range(kh):
            ty = oy + ph - r * dh
            if ty < 0:
                break  # ty only decreases with r
            iy = ty // sh
            if iy * sh != ty or iy >= hgt:
                continue
            for s in range(kw):
                tx = ox + pw - s * dw
                if tx < 0:
                    break
                ix = tx // sw
                if ix * sw != tx or ix >= wid:
                    continue
                for ci in range(cig):
                    acc += x[img, c0 + ci, iy, ix] * w[oc, ci, r, s]
        y[img, oc, oy, ox] = acc


def pack_conv_transpose_weights(w: np.ndarray, group: int) -> np.ndarray:
    """ConvTranspose weights [Cin, Cout/group, kh, kw] -> [Cout, Cin/group, kh, kw] float32."""
    c, mg = w.shape[0], w.shape[1]
    cig = c // group
    wg = w.reshape(group, cig, mg, *w.shape[2:]).transpose(0, 2, 1, 3, 4)
    return np.ascontiguousarray(wg.reshape(group * mg, cig, *w.shape[2:]), np.float32)


def conv_transpose2d(stream: Any, x: Any, w: Any, bias: Any, y: Any, sh: int, sw: int, ph: int, pw: int, dh: int,
                     dw: int, group: int) -> None:
    """float32 ConvTranspose by gathering: x [N, C, H, W], w [Cout, C/group, kh, kw]
    (`pack_conv_transpose_weights`), bias [Cout], y [N, Cout, Ho, Wo]; ph/pw are the begin pads."""
    _conv_transpose_kernel[launch.blocks(y.size), launch.THREADS, stream](x, w, bias, y, sh, sw, ph, pw, dh, dw,
                                                                         group)


__all__ = [
    "HW_TILES", "SIM_TILES", "TILES", "Tile", "choose_splits", "choose_tile", "conv2d", "conv_integer",
    "conv_kernel", "conv_ktab", "conv_transpose2d", "depthwise_conv2d", "depthwise_conv_integer",
    "depthwise_kernel", "fill", "matmul", "pack_conv_transpose_weights", "pack_conv_weights", "sgemm_kernel",
]
