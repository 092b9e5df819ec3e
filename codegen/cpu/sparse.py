"""Sparse weight kernels for the CPU target: out[N, P] = W[N, K] @ X[K, P] with W pruned.

The convolution lowering computes out = W @ X with W the [out channels, Cin*kh*kw] weight matrix
and X the im2col matrix (the input itself for a 1x1 conv). When the sparsify pass has zeroed most
of W, these kernels skip the zeros instead of calling OpenBLAS sgemm. Two packed formats:

* ``csr`` (unstructured): ``indptr`` int32[N+1], ``indices`` int32[nnz] (column of each non-zero,
  increasing within a row), ``values`` float32[nnz]; rows in order, so packing is deterministic.
* ``2:4`` (at most 2 non-zeros in every group of 4 consecutive columns, the last group zero-padded
  to 4): ``values`` float32[N, 2G] and ``idx`` uint8[N, 2G] with G = ceil(K/4); slots 2g and 2g+1
  hold group g's two entries at columns 4g + idx, offsets increasing. A group with fewer than two
  non-zeros is filled with explicit zeros at the lowest free offsets inside the matrix, so every
  column read is in bounds and there is no per-row count to load.

Kernels (``spmm_csr``, ``spmm_24``): Numba cannot keep an accumulator tile in registers on its own
(its loop vectoriser re-loads and re-stores the tile for every non-zero, and SLP vectorisation is
off in Numba), so the inner loops use an explicit 8-lane float32 vector type (`_vload`, `_vfma`,
... are Numba intrinsics, inlined into the njit code and cached with it). Output columns are split
into 64-wide blocks and K into blocks of KB = 128; for each output row and K block, a row's
non-zeros stream through 8 vector accumulators (8 FMAs per non-zero, each with one load of an X
row segment, the weight broadcast once), then the accumulators go back to `out`. The X panel of a
block (KB x 64 floats, 32 KiB) stays in L1 while all the task's rows use it; tasks with many rows
copy it into a contiguous buffer first (X's row stride otherwise spreads it over KB pages). A
column tail of <= 16 uses 8-wide blocks that unroll 8 non-zeros into 8 chains instead (one chain
would stall on FMA latency), a longer one a zero-padded 64-wide block; both read a zero-padded copy
of the tail columns. Tasks (column block x row range) run under ``prange``; the split does not
depend on the thread count, so results are the same bits for any number of threads.

Sums are float32 FMAs in K order (8 interleaved partial sums in the 8-wide tail blocks), a different
order than sgemm's, so results equal the dense product within float32 rounding, not bit for bit.

2:4 groups are 4 consecutive columns of W as given. The sparsify pass groups 4 consecutive input
channels at one kernel tap, which are consecutive along K = Cin*kh*kw only for 1x1 convs and Gemm;
for a kh x kw conv the lowering must order K tap-major (W.reshape(N, Cin, kh*kw).transpose(0, 2, 1)
and the im2col rows to match), otherwise `choose_format` sees no 2:4 pattern.

When to use which: `choose_format`, whose rule and cost model come from measurements against
OpenBLAS sgemm on an AMD EPYC (Zen 3, AVX2); its docstring has the numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core.base import BaseContext
from numba.core.datamodel.manager import DataModelManager
from numba.core.extending import intrinsic, models, register_model
from numba.core.typing.templates import Signature

__all__ = ["FORMATS", "SparseWeights", "choose_format", "density", "estimate_ratio", "is_two_of_four", "pack",
           "sparse_matmul", "spmm_24", "spmm_csr", "unpack"]

FORMATS = ("csr", "2:4")

# ------------------------------------------------------------------------------------ 8-lane vectors

_LANES = 8
_VEC = ir.VectorType(ir.FloatType(), _LANES)


class _F32x8(types.Type):
    """Eight float32 lanes held in one SSA value (a ymm register under AVX2)."""

    def __init__(self) -> None:
        super().__init__(name="f32x8")


_f32x8 = _F32x8()


@register_model(_F32x8)
class _F32x8Model(models.PrimitiveModel):
    def __init__(self, dmm: DataModelManager, fe_type: types.Type) -> None:
        super().__init__(dmm, fe_type, _VEC)


def _is_f32_vector_array(arr: types.Type) -> bool:
    return isinstance(arr, types.Array) and arr.dtype == types.float32 and arr.ndim == 1


_Codegen = Callable[[BaseContext, ir.IRBuilder, Signature, list[ir.Value]], ir.Value]


def _lane_pointer(context: BaseContext, builder: ir.IRBuilder, arrty: types.Array, arr: ir.Value,
                  off: ir.Value) -> ir.Value:
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.bitcast(builder.gep(data, [off]), _VEC.as_pointer())


@intrinsic
def _vzero(typingctx: object) -> tuple[Signature, _Codegen]:
    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        return ir.Constant(_VEC, [0.0] * _LANES)

    return _f32x8(), codegen


@intrinsic
def _vload(typingctx: object, arr: types.Type, off: types.Type) -> tuple[Signature, _Codegen] | None:
    """arr[off:off+8] of a contiguous 1-D float32 array (unaligned load, no bounds check)."""
    if not (_is_f32_vector_array(arr) and isinstance(off, types.Integer)):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        return builder.load(_lane_pointer(context, builder, sig.args[0], args[0], args[1]), align=4)

    return _f32x8(arr, off), codegen


@intrinsic
def _vstore(typingctx: object, arr: types.Type, off: types.Type,
            v: types.Type) -> tuple[Signature, _Codegen] | None:
    """arr[off:off+8] = v."""
    if not (_is_f32_vector_array(arr) and isinstance(off, types.Integer) and v == _f32x8):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        builder.store(args[2], _lane_pointer(context, builder, sig.args[0], args[0], args[1]), align=4)
        return context.get_dummy_value()

    return types.none(arr, off, v), codegen


@intrinsic
def _vfma(typingctx: object, acc: types.Type, s: types.Type, v: types.Type) -> tuple[Signature, _Codegen] | None:
    """acc + s * v with the scalar s broadcast; 'contract' lets LLVM emit one vfmadd."""
    if not (acc == _f32x8 and v == _f32x8 and s == types.float32):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        a, scalar, x = args
        zero = ir.Constant(ir.IntType(32), 0)
        b = builder.insert_element(ir.Constant(_VEC, ir.Undefined), scalar, zero)
        b = builder.shuffle_vector(b, ir.Constant(_VEC, ir.Undefined),
                                   ir.Constant(ir.VectorType(ir.IntType(32), _LANES), [0] * _LANES))
        return builder.fadd(a, builder.fmul(b, x, flags=("contract",)), flags=("contract",))

    return _f32x8(acc, s, v), codegen


@intrinsic
def _vadd(typingctx: object, a: types.Type, b: types.Type) -> tuple[Signature, _Codegen] | None:
    if not (a == _f32x8 and b == _f32x8):
        return None

    def codegen(context: BaseContext, builder: ir.IRBuilder, sig: Signature, args: list[ir.Value]) -> ir.Value:
        return builder.fadd(args[0], args[1])

    return _f32x8(a, b), codegen


# ------------------------------------------------------------------------------------ kernels

_WIDE = 64  # columns per wide block: 8 vector accumulators
_NARROW = 8  # columns per narrow (tail) block: 1 vector, 8 non-zeros unrolled
_KB = 128  # K rows per packed X panel: 128 x 64 floats = 32 KiB
_PACK_ROWS = 32  # tasks with this many output rows copy their X panels (see _task_setup)
_NARROW_TAIL = 16  # column tails up to this many use narrow blocks, longer ones one padded wide block
_MIN_TASKS = 8  # split rows too when there are fewer column blocks (enough for a few threads)
_MIN_ROWS = 4  # ... but keep at least this many rows per task, to reuse each X panel

_JIT = {"cache": True, "fastmath": True, "error_model": "numpy", "boundscheck": False}


@njit(**_JIT)
def _pack_panel(xf: np.ndarray, p: int, k0: int, k1: int, p0: int, buf: np.ndarray) -> None:
    """buf[(k - k0) * 64 + t] = X[k, p0 + t] for t < 64 (xf: X flat, P columns).

    With explicit vectors: a plain 64-iteration loop gets fully unrolled before LLVM's loop
    vectoriser sees it, and Numba runs no SLP vectoriser, so it would copy one float at a time.
    """
    for kk in range(k1 - k0):
        s = (k0 + kk) * p + p0
        d = kk * _WIDE
        for t in range(0, _WIDE, _LANES):
            _vstore(buf, d + t, _vload(xf, s + t))


@njit(**_JIT)
def _store_rows(acc: np.ndarray, stride: int, out: np.ndarray, r0: int, nr: int, p0: int, w: int) -> None:
    for i in range(nr):
        dst = out[r0 + i, p0:p0 + w]
        src = acc[i * stride:i * stride + w]
        for t in range(w):
            dst[t] = src[t]


# Microkernels: for output rows r0..r0+nr and one K block, dst[doff + i*dstride : +width] (+)= the
# row's entries times rows of the X panel `src` (X row c starts at src[c*rs + base]). `first`: the
# block's first K block, which stores instead of adding (no zeroing pass over the output).


@njit(**_JIT)
def _csr_wide(bnd: np.ndarray, kb: int, indices: np.ndarray, values: np.ndarray, r0: int, nr: int,
              src: np.ndarray, rs: int, base: int, dst: np.ndarray, doff: int, dstride: int,
              first: bool) -> None:
    """64 columns: 8 accumulators, one broadcast weight and 8 panel loads per non-zero."""
    for i in range(nr):
        j = bnd[r0 + i, kb]
        stop = bnd[r0 + i, kb + 1]
        if j == stop and not first:
            continue
        o = doff + i * dstride
        if first:
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _vzero()
        else:
            a0 = _vload(dst, o)
            a1 = _vload(dst, o + 8)
            a2 = _vload(dst, o + 16)
            a3 = _vload(dst, o + 24)
            a4 = _vload(dst, o + 32)
            a5 = _vload(dst, o + 40)
            a6 = _vload(dst, o + 48)
            a7 = _vload(dst, o + 56)
        while j < stop:
            u = np.uint64(j)  # unsigned: no negative-index wraparound code in the loop
            s = indices[u] * rs + base
            v = values[u]
            a0 = _vfma(a0, v, _vload(src, s))
            a1 = _vfma(a1, v, _vload(src, s + 8))
            a2 = _vfma(a2, v, _vload(src, s + 16))
            a3 = _vfma(a3, v, _vload(src, s + 24))
            a4 = _vfma(a4, v, _vload(src, s + 32))
            a5 = _vfma(a5, v, _vload(src, s + 40))
            a6 = _vfma(a6, v, _vload(src, s + 48))
            a7 = _vfma(a7, v, _vload(src, s + 56))
            j += 1
        _vstore(dst, o, a0)
        _vstore(dst, o + 8, a1)
        _vstore(dst, o + 16, a2)
        _vstore(dst, o + 24, a3)
        _vstore(dst, o + 32, a4)
        _vstore(dst, o + 40, a5)
        _vstore(dst, o + 48, a6)
        _vstore(dst, o + 56, a7)


@njit(**_JIT)
def _csr_narrow(bnd: np.ndarray, kb: int, indices: np.ndarray, values: np.ndarray, r0: int, nr: int,
                src: np.ndarray, rs: int, base: int, dst: np.ndarray, doff: int, dstride: int,
                first: bool) -> None:
    """8 columns: 8 non-zeros per step into 8 chains (one chain would stall on FMA latency)."""
    for i in range(nr):
        j = bnd[r0 + i, kb]
        stop = bnd[r0 + i, kb + 1]
        if j == stop and not first:
            continue
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = _vzero()
        while j + 8 <= stop:
            u = np.uint64(j)
            c0 = _vfma(c0, values[u], _vload(src, indices[u] * rs + base))
            c1 = _vfma(c1, values[u + 1], _vload(src, indices[u + 1] * rs + base))
            c2 = _vfma(c2, values[u + 2], _vload(src, indices[u + 2] * rs + base))
            c3 = _vfma(c3, values[u + 3], _vload(src, indices[u + 3] * rs + base))
            c4 = _vfma(c4, values[u + 4], _vload(src, indices[u + 4] * rs + base))
            c5 = _vfma(c5, values[u + 5], _vload(src, indices[u + 5] * rs + base))
            c6 = _vfma(c6, values[u + 6], _vload(src, indices[u + 6] * rs + base))
            c7 = _vfma(c7, values[u + 7], _vload(src, indices[u + 7] * rs + base))
            j += 8
        while j < stop:
            u = np.uint64(j)
            c0 = _vfma(c0, values[u], _vload(src, indices[u] * rs + base))
            j += 1
        o = doff + i * dstride
        t = _vadd(_vadd(_vadd(c0, c1), _vadd(c2, c3)), _vadd(_vadd(c4, c5), _vadd(c6, c7)))
        _vstore(dst, o, t if first else _vadd(_vload(dst, o), t))


@njit(**_JIT)
def _24_wide(values: np.ndarray, idx: np.ndarray, r0: int, nr: int, q0: int, q1: int,
             src: np.ndarray, rs: int, base: int, dst: np.ndarray, doff: int, dstride: int,
             first: bool) -> None:
    """64 columns over groups q0..q1 (slots 2*q0..2*q1): as _csr_wide, column 4*(slot//2) + idx."""
    for i in range(nr):
        vr = values[r0 + i]
        ir_ = idx[r0 + i]
        o = doff + i * dstride
        if first:
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = _vzero()
        else:
            a0 = _vload(dst, o)
            a1 = _vload(dst, o + 8)
            a2 = _vload(dst, o + 16)
            a3 = _vload(dst, o + 24)
            a4 = _vload(dst, o + 32)
            a5 = _vload(dst, o + 40)
            a6 = _vload(dst, o + 48)
            a7 = _vload(dst, o + 56)
        for j in range(2 * q0, 2 * q1):
            u = np.uint64(j)
            s = (4 * (j >> 1) + ir_[u]) * rs + base
            v = vr[u]
            a0 = _vfma(a0, v, _vload(src, s))
            a1 = _vfma(a1, v, _vload(src, s + 8))
            a2 = _vfma(a2, v, _vload(src, s + 16))
            a3 = _vfma(a3, v, _vload(src, s + 24))
            a4 = _vfma(a4, v, _vload(src, s + 32))
            a5 = _vfma(a5, v, _vload(src, s + 40))
            a6 = _vfma(a6, v, _vload(src, s + 48))
            a7 = _vfma(a7, v, _vload(src, s + 56))
        _vstore(dst, o, a0)
        _vstore(dst, o + 8, a1)
        _vstore(dst, o + 16, a2)
        _vstore(dst, o + 24, a3)
        _vstore(dst, o + 32, a4)
        _vstore(dst, o + 40, a5)
        _vstore(dst, o + 48, a6)
        _vstore(dst, o + 56, a7)


@njit(**_JIT)
def _24_narrow(values: np.ndarray, idx: np.ndarray, r0: int, nr: int, q0: int, q1: int,
               src: np.ndarray, rs: int, base: int, dst: np.ndarray, doff: int, dstride: int,
               first: bool) -> None:
    """8 columns: 4 groups (8 slots) per step into 8 chains."""
    for i in range(nr):
        vr = values[r0 + i]
        ir_ = idx[r0 + i]
        c0 = c1 = c2 = c3 = c4 = c5 = c6 = c7 = _vzero()
        q = q0
        while q + 4 <= q1:
            u = np.uint64(2 * q)
            c = 4 * q
            c0 = _vfma(c0, vr[u], _vload(src, (c + ir_[u]) * rs + base))
            c1 = _vfma(c1, vr[u + 1], _vload(src, (c + ir_[u + 1]) * rs + base))
            c2 = _vfma(c2, vr[u + 2], _vload(src, (c + 4 + ir_[u + 2]) * rs + base))
            c3 = _vfma(c3, vr[u + 3], _vload(src, (c + 4 + ir_[u + 3]) * rs + base))
            c4 = _vfma(c4, vr[u + 4], _vload(src, (c + 8 + ir_[u + 4]) * rs + base))
            c5 = _vfma(c5, vr[u + 5], _vload(src, (c + 8 + ir_[u + 5]) * rs + base))
            c6 = _vfma(c6, vr[u + 6], _vload(src, (c + 12 + ir_[u + 6]) * rs + base))
            c7 = _vfma(c7, vr[u + 7], _vload(src, (c + 12 + ir_[u + 7]) * rs + base))
            q += 4
        while q < q1:
            u = np.uint64(2 * q)
            c = 4 * q
            c0 = _vfma(c0, vr[u], _vload(src, (c + ir_[u]) * rs + base))
            c1 = _vfma(c1, vr[u + 1], _vload(src, (c + ir_[u + 1]) * rs + base))
            q += 1
        o = doff + i * dstride
        t = _vadd(_vadd(_vadd(c0, c1), _vadd(c2, c3)), _vadd(_vadd(c4, c5), _vadd(c6, c7)))
        _vstore(dst, o, t if first else _vadd(_vload(dst, o), t))


_Plan = tuple[int, int, int, int, int, int]


@njit(**_JIT)
def _plan(n: int, p: int) -> _Plan:
    """How spmm splits its work: (full wide blocks, column blocks, width of a padded wide tail block
    or 0, row ranges per column block, rows per range, tail panel width); tasks = column blocks x
    row ranges.

    Column tails of <= _NARROW_TAIL go to 8-wide blocks, longer ones to one padded wide block; the
    tail's X columns are copied once, zero-padded, into a [K, tail panel width] panel that its tasks
    share. Rows are split too when there are fewer than _MIN_TASKS column blocks, so threads have
    tasks to share at small P (a fixed target: numba.get_num_threads() would make the kernels
    uncacheable).
    """
    nfull = p // _WIDE
    rem = p - nfull * _WIDE
    wide_tail = rem if rem > _NARROW_TAIL else 0
    nnarrow = 0 if wide_tail else (rem + _NARROW - 1) // _NARROW
    nblocks = nfull + (1 if wide_tail else nnarrow)
    nrs = 1
    if nblocks < _MIN_TASKS and n > _MIN_ROWS:
        nrs = max(1, min(n // _MIN_ROWS, (_MIN_TASKS + nblocks - 1) // nblocks))
    return nfull, nblocks, wide_tail, nrs, (n + nrs - 1) // nrs, _WIDE if wide_tail else _NARROW * nnarrow


@njit(**_JIT)
def _pack_tail(x: np.ndarray, plan: _Plan) -> np.ndarray:
    """The zero-padded [K, tail width] copy of X's columns past the full wide blocks (flat)."""
    k, p = x.shape
    tw = plan[5]
    pt0 = plan[0] * _WIDE
    xt = np.zeros(k * tw, np.float32)
    for r in range(k):
        src = x[r, pt0:p]
        dst = xt[r * tw:(r + 1) * tw]
        for t in range(p - pt0):
            dst[t] = src[t]
    return xt


@njit(**_JIT)
def _task_setup(task: int, plan: _Plan, out: np.ndarray) -> tuple[int, int, int, int, int, int]:
    """(first row, rows, first column, columns, accumulator stride 64 or 8, X source) of a task.

    X source: 0 reads X in place, 1 copies each K block's panel, 2 reads the shared tail panel.
    A copy pays off when many output rows reuse the panel (X's rows are P*4 bytes apart: in place, a
    K block touches KB pages and lines the prefetcher does not stream) or when that stride is a
    multiple of 1 KiB (rows then share L1 sets); for a few rows it is pure overhead.
    """
    n, p = out.shape
    nfull, nblocks, wide_tail, _, rstep, _ = plan
    # Column block varies fastest: prange hands each thread a contiguous range of tasks, which then
    # mixes full and tail blocks (balanced) and reuses one row range's weights from cache.
    b = task % nblocks
    r0 = (task // nblocks) * rstep
    nr = max(0, min(n, r0 + rstep) - r0)
    if b >= nfull:
        if wide_tail:
            return r0, nr, nfull * _WIDE, wide_tail, _WIDE, 2
        p0 = nfull * _WIDE + (b - nfull) * _NARROW
        return r0, nr, p0, min(_NARROW, p - p0), _NARROW, 2
    copy = nr >= _PACK_ROWS or ((p * 4) % 1024 == 0 and nr >= 8)
    return r0, nr, b * _WIDE, _WIDE, _WIDE, 1 if copy else 0


@njit(**_JIT)
def _panel(source: int, x: np.ndarray, xt: np.ndarray, buf: np.ndarray, k0: int, k1: int, p0: int,
           plan: _Plan) -> tuple[np.ndarray, int, int]:
    """(array, row stride, offset): X[c, p0 + t] is array[c * row stride + offset + t] for c in
    k0..k1, copying the block's panel into buf first when source is 1."""
    k, p = x.shape
    xf = x.reshape(k * p)
    if source == 2:
        return xt, plan[5], p0 - plan[0] * _WIDE
    if source == 1:
        _pack_panel(xf, p, k0, k1, p0, buf)
        return buf, _WIDE, -k0 * _WIDE
    return xf, p, p0


@njit(**_JIT)
def _csr_bounds(indptr: np.ndarray, indices: np.ndarray, nkb: int) -> np.ndarray:
    """bnd[r, b]: first non-zero of row r at column >= b * KB, so a task jumps straight to a K block.

    A binary search per row and block (cheaper than a pass over the non-zeros; np.searchsorted
    would add seconds of compile time).
    """
    n = indptr.shape[0] - 1
    bnd = np.empty((n, nkb + 1), np.int64)
    for r in range(n):
        lo = np.int64(indptr[r])
        e = np.int64(indptr[r + 1])
        for b in range(nkb):
            hi = e
            while lo < hi:
                mid = (lo + hi) >> 1
                if indices[mid] < b * _KB:
                    lo = mid + 1
                else:
                    hi = mid
            bnd[r, b] = lo
        bnd[r, nkb] = e
    return bnd


@njit(**_JIT)
def _csr_task(task: int, plan: _Plan, bnd: np.ndarray, indices: np.ndarray, values: np.ndarray,
              x: np.ndarray, xt: np.ndarray, out: np.ndarray) -> None:
    """One column block x row range of spmm_csr, K block by K block."""
    n, p = out.shape
    k = x.shape[0]
    r0, nr, p0, w, stride, source = _task_setup(task, plan, out)
    if nr == 0:
        return
    buf = np.empty(min(_KB, k) * _WIDE if source == 1 else 0, np.float32)
    direct = w == stride  # whole block inside out's row: accumulate in out itself
    dst = out.reshape(n * p) if direct else np.empty(nr * stride, np.float32)
    doff, dstride = (r0 * p + p0, p) if direct else (0, stride)
    for kb in range(bnd.shape[1] - 1):
        src, rs, base = _panel(source, x, xt, buf, kb * _KB, min(k, (kb + 1) * _KB), p0, plan)
        if stride == _WIDE:
            _csr_wide(bnd, kb, indices, values, r0, nr, src, rs, base, dst, doff, dstride, kb == 0)
        else:
            _csr_narrow(bnd, kb, indices, values, r0, nr, src, rs, base, dst, doff, dstride, kb == 0)
    if not direct:
        _store_rows(dst, stride, out, r0, nr, p0, w)


@njit(**_JIT)
def _24_task(task: int, plan: _Plan, values: np.ndarray, idx: np.ndarray, x: np.ndarray,
             xt: np.ndarray, out: np.ndarray) -> None:
    """One column block x row range of spmm_24, K block by K block (KB/4 groups each)."""
    n, p = out.shape
    k = x.shape[0]
    g = values.shape[1] // 2
    r0, nr, p0, w, stride, source = _task_setup(task, plan, out)
    if nr == 0:
        return
    buf = np.empty(min(_KB, k) * _WIDE if source == 1 else 0, np.float32)
    direct = w == stride
    dst = out.reshape(n * p) if direct else np.empty(nr * stride, np.float32)
    doff, dstride = (r0 * p + p0, p) if direct else (0, stride)
    for q0 in range(0, max(g, 1), _KB // 4):  # K = 0 still writes the zeros
        q1 = min(g, q0 + _KB // 4)
        src, rs, base = _panel(source, x, xt, buf, 4 * q0, min(k, 4 * q1), p0, plan)
        if stride == _WIDE:
            _24_wide(values, idx, r0, nr, q0, q1, src, rs, base, dst, doff, dstride, q0 == 0)
        else:
            _24_narrow(values, idx, r0, nr, q0, q1, src, rs, base, dst, doff, dstride, q0 == 0)
    if not direct:
        _store_rows(dst, stride, out, r0, nr, p0, w)


@njit(parallel=True, **_JIT)
def spmm_csr(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray, x: np.ndarray,
             out: np.ndarray) -> None:
    """out[N, P] = W @ x for W in CSR (`pack(w, "csr")`); x float32 [K, P] and out C-contiguous
    (other layouts fail to compile: rows are read as flat memory).

    K is read from x (W's column count must equal it); indices must be < K (pack guarantees it).
    """
    n = indptr.shape[0] - 1
    k, p = x.shape
    if out.shape[0] != n or out.shape[1] != p:
        raise ValueError("spmm_csr: need x [K, P] and out [N, P]")
    bnd = _csr_bounds(indptr, indices, max(1, (k + _KB - 1) // _KB))  # K = 0: one empty block
    plan = _plan(n, p)
    xt = _pack_tail(x, plan)
    for task in prange(plan[1] * plan[3]):
        _csr_task(task, plan, bnd, indices, values, x, xt, out)


@njit(parallel=True, **_JIT)
def spmm_24(values: np.ndarray, idx: np.ndarray, x: np.ndarray, out: np.ndarray) -> None:
    """out[N, P] = W @ x for W in 2:4 (`pack(w, "2:4")`); x float32 [K, P] and out C-contiguous
    (other layouts fail to compile: rows are read as flat memory).

    K is read from x and must satisfy ceil(K/4) == values.shape[1] // 2.
    """
    n = values.shape[0]
    k, p = x.shape
    if out.shape[0] != n or out.shape[1] != p:
        raise ValueError("spmm_24: need x [K, P] and out [N, P]")
    if (k + 3) // 4 != values.shape[1] // 2 or idx.shape != values.shape:
        raise ValueError("spmm_24: values/idx do not match x's K")
    plan = _plan(n, p)
    xt = _pack_tail(x, plan)
    for task in prange(plan[1] * plan[3]):
        _24_task(task, plan, values, idx, x, xt, out)


# ------------------------------------------------------------------------------------ packing


@dataclass(frozen=True, eq=False)
class SparseWeights:
    """A packed sparse weight matrix W[N, K]: plain arrays only, so it saves to an npz without pickle.

    ``arrays``: csr -> indptr, indices, values; 2:4 -> values, idx (layouts in the module docstring).
    Construction validates dtypes, shapes and index bounds once, because the kernels do not (an
    out-of-range index read from a damaged artifact would read outside X).
    """

    format: str
    shape: tuple[int, int]
    arrays: dict[str, np.ndarray]

    def __post_init__(self) -> None:
        n, k = (int(d) for d in self.shape)
        object.__setattr__(self, "shape", (n, k))
        a = self.arrays
        if n < 0 or k < 0:
            raise ValueError(f"SparseWeights: bad shape {self.shape}")
        if self.format == "csr":
            _expect(a, {"indptr": np.int32, "indices": np.int32, "values": np.float32})
            indptr, indices, values = a["indptr"], a["indices"], a["values"]
            nnz = indices.shape[0]
            if indptr.shape != (n + 1,) or values.shape != (nnz,) or indices.ndim != 1:
                raise ValueError("SparseWeights(csr): indptr/indices/values shapes do not match")
            if indptr[0] != 0 or indptr[-1] != nnz or np.any(np.diff(indptr) < 0):
                raise ValueError("SparseWeights(csr): indptr is not a row pointer over the non-zeros")
            if nnz and (indices.min() < 0 or indices.max() >= k):
                raise ValueError("SparseWeights(csr): column index out of range")
            rows = np.repeat(np.arange(n), np.diff(indptr))
            if nnz > 1 and np.any((np.diff(indices) <= 0) & (rows[1:] == rows[:-1])):
                raise ValueError("SparseWeights(csr): column indices must increase within a row")
        elif self.format == "2:4":
            _expect(a, {"values": np.float32, "idx": np.uint8})
            g = (k + 3) // 4
            if a["values"].shape != (n, 2 * g) or a["idx"].shape != (n, 2 * g):
                raise ValueError(f"SparseWeights(2:4): values and idx must be [{n}, {2 * g}]")
            col = 4 * (np.arange(2 * g) // 2) + a["idx"].astype(np.int64)
            if a["idx"].size and (a["idx"].max() > 3 or col.max() >= k):
                raise ValueError("SparseWeights(2:4): offset out of its group or past K")
        else:
            raise ValueError(f"SparseWeights: unknown format {self.format!r}, expected one of {FORMATS}")

    @property
    def nnz(self) -> int:
        """Stored entries (2:4 counts its zero fillers: they cost the same as real ones)."""
        return int(self.arrays["values"].size)

    @property
    def nbytes(self) -> int:
        return int(sum(v.nbytes for v in self.arrays.values()))


def _expect(arrays: dict[str, np.ndarray], spec: dict[str, type]) -> None:
    if set(arrays) != set(spec):
        raise ValueError(f"SparseWeights: arrays must be {sorted(spec)}, got {sorted(arrays)}")
    for name, dtype in spec.items():
        arr = arrays[name]
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or not arr.flags.c_contiguous:
            raise ValueError(f"SparseWeights: {name} must be a C-contiguous {np.dtype(dtype).name} array")


def _matrix(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"expected a weight matrix W[N, K], got shape {w.shape}")
    return w


def density(w: np.ndarray) -> float:
    """Fraction of non-zero entries (NaN counts as non-zero; an empty matrix has density 0)."""
    w = np.asarray(w)
    return float(np.count_nonzero(w)) / w.size if w.size else 0.0


def _group_counts(w: np.ndarray) -> np.ndarray:
    """Non-zeros in each group of 4 consecutive columns, the last group zero-padded: [N, ceil(K/4)]."""
    n, k = w.shape
    g = (k + 3) // 4
    nz = np.zeros((n, 4 * g), bool)
    nz[:, :k] = w != 0
    return nz.reshape(n, g, 4).sum(axis=2)


def is_two_of_four(w: np.ndarray) -> bool:
    """Whether every group of 4 consecutive columns (last one zero-padded) has at most 2 non-zeros."""
    w = _matrix(w)
    return bool(w.size == 0 or _group_counts(w).max() <= 2)


def pack(w: np.ndarray, format: str) -> SparseWeights:
    """Pack W[N, K] (any float dtype, cast to float32) into `format`; same input, same bytes.

    Exact zeros (including -0.0) are dropped; NaN and inf are kept. "2:4" raises ValueError if some
    group has more than 2 non-zeros.
    """
    w = np.ascontiguousarray(_matrix(w), dtype=np.float32)
    n, k = w.shape
    if format == "csr":
        nz = w != 0
        if np.count_nonzero(nz) >= 2**31:
            raise ValueError("pack: more than 2**31 non-zeros do not fit int32 indices")
        indptr = np.zeros(n + 1, np.int32)
        np.cumsum(np.count_nonzero(nz, axis=1), out=indptr[1:])
        cols = np.nonzero(nz)[1].astype(np.int32)  # row-major order: increasing within each row
        arrays = {"indptr": indptr, "indices": np.ascontiguousarray(cols), "values": w[nz]}
        return SparseWeights("csr", (n, k), arrays)
    if format == "2:4":
        g = (k + 3) // 4
        padded = np.zeros((n, 4 * g), np.float32)
        padded[:, :k] = w
        groups = padded.reshape(n, g, 4)
        nz = groups != 0
        if n and g and nz.sum(axis=2).max() > 2:
            raise ValueError("pack: not 2:4 (a group of 4 consecutive columns has more than 2 non-zeros)")
        offset = np.arange(4)
        inside = 4 * np.arange(g)[:, None] + offset < k  # [G, 4]: column exists
        # Slots take the non-zeros first, then zeros inside the matrix, each by increasing offset;
        # the keys are distinct within a group, so the choice is unique.
        key = np.where(nz, 0, np.where(inside, 1, 2)) * 4 + offset
        chosen = np.sort(np.argsort(key, axis=2)[:, :, :2], axis=2)
        values = np.take_along_axis(groups, chosen, axis=2)
        # A last group with one real column has no second in-bounds slot: repeat that column (value 0).
        last = np.minimum(3, k - 1 - 4 * np.arange(g))
        chosen = np.minimum(chosen, last[None, :, None])
        arrays = {"values": np.ascontiguousarray(values.reshape(n, 2 * g)),
                  "idx": np.ascontiguousarray(chosen.reshape(n, 2 * g).astype(np.uint8))}
        return SparseWeights("2:4", (n, k), arrays)
    raise ValueError(f"pack: unknown format {format!r}, expected one of {FORMATS}")


def unpack(sw: SparseWeights) -> np.ndarray:
    """The dense float32 W[N, K] that `sw` packs (for checks and for falling back to sgemm)."""
    n, k = sw.shape
    w = np.zeros((n, k), np.float32)
    a = sw.arrays
    if sw.format == "csr":
        rows = np.repeat(np.arange(n), np.diff(a["indptr"]))
        w[rows, a["indices"]] = a["values"]
    else:
        g = (k + 3) // 4
        cols = 4 * (np.arange(2 * g) // 2) + a["idx"].astype(np.int64)
        # Zero fillers may repeat a column; add so they never overwrite the real entry.
        np.add.at(w, (np.repeat(np.arange(n), 2 * g), cols.ravel()), a["values"].ravel())
    return w


def sparse_matmul(sw: SparseWeights, x: np.ndarray) -> np.ndarray:
    """W @ x for packed W and x [K, P] (cast to C-contiguous float32): the kernels' Python entry."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != sw.shape[1]:
        raise ValueError(f"sparse_matmul: x must be [{sw.shape[1]}, P], got {x.shape}")
    out = np.empty((sw.shape[0], x.shape[1]), np.float32)
    a = sw.arrays
    if sw.format == "csr":
        spmm_csr(a["indptr"], a["indices"], a["values"], x, out)
    else:
        spmm_24(a["values"], a["idx"], x, out)
    return out


# ------------------------------------------------------------------------------------ format choice

# Cost model: seconds on one thread, fitted (least squares on relative error) to 216 measurements of
# spmm_* and 36 of np.dot (OpenBLAS sgemm) on the AMD EPYC (Zen 3, AVX2) these kernels were tuned on:
# N x K in {16x72, 64x576, 256x2304, 1000x512, 10x1024, ...}, P in {1, 4, 16, 49, 196, 784, 3136},
# sparsity 50-95% and 2:4. Median error 6-11%; where it picks the wrong side the two times are
# within about 15% of each other (except GEMV-like P <= 16, where it errs towards dense).
# Terms: dense = 1, N*K*P, N*K (weights read once), (N+K)*P (activations);
# sparse = 1, nnz * columns in 64-wide blocks, nnz * columns in 8-wide blocks, K*P (X panels),
#          N * column blocks * K blocks (per row and block overhead).
_DENSE_COST = (7.2e-7, 2.25e-11, 5.6e-11, 1.6e-10)
_SPARSE_COST = {"csr": (3.2e-6, 3.92e-11, 1.45e-10, 4.2e-11, 1.38e-8),
                "2:4": (3.1e-6, 3.34e-11, 1.11e-10, 1.62e-10, 0.0)}


def estimate_ratio(format: str, n: int, k: int, p: int | None, nnz: int) -> float:
    """Predicted time of spmm in `format` over sgemm's for W[n, k] @ X[k, p] (one thread).

    nnz: stored entries (`SparseWeights.nnz`; for 2:4 that is n * 2 * ceil(k / 4)). p=None gives
    the limit for many pixels, where only the per-pixel costs count.
    """
    c = _SPARSE_COST[format]
    d = _DENSE_COST
    nkb = max(1, -(-k // _KB))
    if p is None:  # per output column: 64-wide blocks, one block per 64 columns
        sparse = nnz * c[1] + k * c[3] + n * nkb * c[4] / _WIDE
        dense = n * k * d[1] + (n + k) * d[3]
    else:
        nfull = p // _WIDE
        rem = p - nfull * _WIDE
        wide = _WIDE * (nfull + (rem > _NARROW_TAIL))
        narrow = 0 if rem > _NARROW_TAIL else _NARROW * -(-rem // _NARROW)
        nblocks = nfull + (1 if rem > _NARROW_TAIL else -(-rem // _NARROW))
        sparse = c[0] + nnz * (wide * c[1] + narrow * c[2]) + k * p * c[3] + n * nblocks * nkb * c[4]
        dense = d[0] + n * k * p * d[1] + n * k * d[2] + (n + k) * p * d[3]
    return float(sparse / dense) if dense > 0 else float("inf")


def choose_format(w: np.ndarray, min_sparsity: float = 0.7, p: int | None = None) -> str | None:
    """The format for W[N, K]: "csr", "2:4" or None (keep sgemm), by this rule:

    * candidates: "csr" if the sparsity (fraction of exact zeros) is >= min_sparsity; "2:4" if every
      group of 4 consecutive columns (the last zero-padded) has <= 2 non-zeros and W is not all
      zero (2:4 then stores N * 2 * ceil(K/4) entries whatever the sparsity);
    * each candidate gets `estimate_ratio` for p output pixels (p=None: the many-pixel limit); the
      lowest wins if it is below 1, else None.

    Measured (one thread, sparse/dense time) on conv layers where sgemm takes >= 0.1 ms: csr ~0.6
    at 70%, ~0.45 at 80%, ~0.3 at 90% sparsity, 2:4 ~0.8; csr breaks even near 45% sparsity and
    beats 2:4 from ~55-60%. Dense wins with P <= 16 (a Gemm on a small batch: sgemm is near sgemv
    speed while our 8-wide tail blocks are 3x less efficient per column) and where sgemm takes only
    a few microseconds (our fixed cost is ~3 us). So with p=None this is csr at >= min_sparsity,
    else 2:4 if the pattern holds; passing p adds the fallback to dense for small problems.
    """
    w = _matrix(w)
    n, k = w.shape
    if w.size == 0:
        return None
    nnz = int(np.count_nonzero(w))
    options: dict[str, float] = {}
    if 1.0 - nnz / w.size >= min_sparsity:
        options["csr"] = estimate_ratio("csr", n, k, p, nnz)
    if nnz and _group_counts(w).max() <= 2:
        options["2:4"] = estimate_ratio("2:4", n, k, p, n * 2 * ((k + 3) // 4))
    if not options:
        return None
    best = min(options, key=options.__getitem__)
    return best if options[best] < 1.0 else None
