"""float32 GEMM for the CPU target: packed, register-blocked, and bit-reproducible per element.

Why not BLAS: OpenBLAS computes different rows of C with different code paths (edge tiles, split
K), so two rows with bit-identical inputs can come out a few ulps apart, and models that amplify
such differences (huge logits into Softmax) then disagree with onnxruntime. Here every element is
one fixed sequence, whatever its position, path, ISA, thread count or blocking:

    acc = +0.0;  for k in 0..K-1 (ascending): acc = fma(a[i, k], b[k, j], acc);  c[i, j] = acc

Edge tiles compute on zero-padded B panels and clamped A rows with the same instructions, K blocks
continue the chain from the stored float32 partial (exact), and K is never split across threads.
So equal rows of ``a`` (equal columns of ``b``) give bit-identical rows (columns) of ``c``, and
``sgemm``, ``sgemm_packed_a`` and every ISA path give identical bits.

Mechanism (as in ``qgemm``): the microkernels are LLVM functions built with llvmlite's IRBuilder and
called through Numba ``@intrinsic``s, so they are emitted into, and cached (``cache=True``) with,
the njit driver; blocking and ``prange`` stay in plain Numba. Per k a tile does ``nvec`` vector
loads of packed B, ``mr`` scalar broadcasts of A and ``mr * nvec`` ``llvm.fma.v{lanes}f32``, all
accumulators in registers for the K block.

ISA paths (``HOST_ISA``, from the features Numba compiles for: the host's unless NUMBA_CPU_FEATURES
overrides them):
  * ``avx512``:  zmm, 12 x 32 tile (24 accumulators of 32 registers).
  * ``avx2``:    ymm + FMA3, 6 x 16 tile (12 accumulators of 16 registers).
  * ``generic``: LLVM ``<4 x float>`` vectors, 6 x 8 tile; ``llvm.fma`` keeps the exact semantics on
                 every target (native on AArch64; a libm call, hence slow, on x86 without FMA).

Blocking (BLIS-like): work items are (row block of <= MCT tiles) x (column block) pairs run with
``prange``, sized so every thread gets work even for small M or N. An item packs B one K block x
NR micro-panel at a time (KC = 512: 32 KiB on AVX2, L1/L2) right before sweeping its row tiles over
it; A is not packed per call (the kernel broadcasts from A's rows, whose KC slice stays in L2
across the item's panels), or comes pre-packed by ``pack_a`` (constant weights). A last panel of
<= ``lanes`` columns runs a 2*mr x lanes tile (>= 8 FMA chains, ~0.7 the time of a padded panel).
M <= 4 (batch-1 Gemm, GEMV) skips packing: a streaming kernel reads B once, row by row, keeps the
C rows in L1 and continues their chains, two rows of A per pass, parallel over column chunks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import llvmlite.binding as llb
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.core.imputils import impl_ret_borrowed
from numba.extending import intrinsic

from .isa import declare as _declare
from .isa import splat as _splat
from .isa import target_features

__all__ = ["HOST_ISA", "ISAS", "MR", "NR", "SMALL_M", "build", "pack_a", "packed_a_shape", "sgemm",
           "sgemm_packed_a", "supported_isas"]

ISAS: tuple[str, ...] = ("generic", "avx2", "avx512")


class _Tile(NamedTuple):
    """Register tile: ``mr`` broadcast rows x ``nvec`` vectors of ``lanes`` float32 accumulators."""

    lanes: int
    mr: int
    nvec: int


# AVX2/SSE have 16 vector registers: 12 accumulators + 2 B vectors + 1 broadcast. AVX-512 has 32:
# 24 + 2 + 1. The narrow tile for a last panel of <= lanes columns is 2*mr rows x 1 vector, so it
# still has >= 8 independent FMA chains (FMA latency 4 x 2 pipes) and costs half a full panel.
_TILES: dict[str, _Tile] = {
    "generic": _Tile(4, 6, 2),
    "avx2": _Tile(8, 6, 2),
    "avx512": _Tile(16, 12, 2),
}
SMALL_M = 4
"""Up to this many rows, ``sgemm`` streams B row by row (GEMV-like) instead of packing it."""
# K rows per pass of the streaming kernel over 1 or 2 rows: rows*KB broadcasts stay in registers.
_GEMV_KB = (8, 4)
# K block: a KC x NR packed B micro-panel (32 KiB) stays in L1/L2 while the tiles of a row block
# broadcast from their A rows; MCT tiles per row block keep MC x KC of A (~200 KiB) in L2.
_KC: dict[str, int] = {"generic": 512, "avx2": 512, "avx512": 256}
_MCT: dict[str, int] = {"generic": 16, "avx2": 16, "avx512": 8}

# Per-ISA constants indexed by the (literal) ISA number inside njit code: global tuples are
# compile-time constants for Numba.
_LANES = tuple(_TILES[i].lanes for i in ISAS)
_MRS = tuple(_TILES[i].mr for i in ISAS)
_NRS = tuple(_TILES[i].lanes * _TILES[i].nvec for i in ISAS)
_MCTS = tuple(_MCT[i] for i in ISAS)
_KCS = tuple(_KC[i] for i in ISAS)


def supported_isas(features: frozenset[str] | None = None) -> tuple[str, ...]:
    """ISAs whose kernels can run under ``features`` (default: what Numba targets), best last."""
    if features is None:
        features = target_features()
    if not llb.get_process_triple().startswith(("x86_64", "amd64")):
        return ("generic",)
    out = ["generic"]
    if {"avx2", "fma"} <= features:
        out.append("avx2")
    if {"avx512f", "fma"} <= features:
        out.append("avx512")
    return tuple(out)


HOST_ISA: str = supported_isas()[-1]
_HOST = ISAS.index(HOST_ISA)
MR: int = _MRS[_HOST]
"""Rows per register tile on this host: the row-panel height of ``pack_a``'s layout."""
NR: int = _NRS[_HOST]
"""Columns per register tile (packed B micro-panel width) on this host."""


# --------------------------------------------------------------------------- LLVM IR generation

_F32, _I1, _I32, _I64 = ir.FloatType(), ir.IntType(1), ir.IntType(32), ir.IntType(64)
_F32P = _F32.as_pointer()


def _no_unroll(module: ir.Module, latch: ir.Instruction, tag: str) -> None:
    """Attach ``llvm.loop.unroll.disable`` to the loop whose back edge is ``latch``."""
    disable = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
    loop_id = module.add_metadata([None, disable, ir.MetaDataString(module, tag)])
    loop_id.operands = (loop_id, disable, ir.MetaDataString(module, tag))  # self-reference: a loop id
    latch.set_metadata("llvm.loop", loop_id)


def kernel_function(module: ir.Module, rows: int, nvec: int, lanes: int, mr: int) -> ir.Function:
    """Define (once per module) the ``rows x nvec*lanes`` microkernel and return it.

    ``void f(float* a, i64 a_rs, i64 a_ps, i64 a_ks, float* b, i64 b_ks, i64 kc, float* c,
    i64 ldc, i64 mrows, i64 ncols, i64 load_c)``: for r < mrows, j < ncols and kk ascending,
    ``acc[r, j] = fma(a[row(r) + kk*a_ks], b[kk*b_ks + j], acc[r, j])`` from ``c[r*ldc + j]`` when
    ``load_c`` else +0, then stored back. Row r of A starts at ``(r // mr)*a_ps + (r % mr)*a_rs``
    (tiles taller than one A panel span two panels); rows past ``mrows`` re-read row
    ``mrows - 1`` (never out of bounds, never stored). B is a packed, zero-padded panel read in
    full. Edge tiles move C through a stack tile, so every stored element follows the same fma
    sequence as in a full tile.
    """
    name = f"mcc_sgemm_{rows}x{nvec}x{lanes}p{mr}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    vec_t = ir.VectorType(_F32, lanes)
    vec_p = vec_t.as_pointer()
    fma = _declare(module, f"llvm.fma.v{lanes}f32", vec_t, [vec_t, vec_t, vec_t])
    width = nvec * lanes
    fnty = ir.FunctionType(ir.VoidType(), [_F32P, _I64, _I64, _I64, _F32P, _I64, _I64, _F32P, _I64, _I64, _I64, _I64])
    fn = ir.Function(module, fnty, name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    a0, a_rs, a_ps, a_ks, b0, b_ks, kc, c0, ldc, mrows, ncols, load_c = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    entry = b.block
    spill = b.alloca(ir.ArrayType(_F32, rows * width), name="edge")
    spill.align = 64
    base = b.bitcast(spill, _F32P)
    zero = ir.Constant(vec_t, None)
    last = b.sub(mrows, _I64(1))
    rowoff = [_I64(0)]
    for r in range(1, rows):
        rr = b.select(b.icmp_signed("<", _I64(r), last), _I64(r), last)
        off = b.mul(b.urem(rr, _I64(mr)), a_rs)
        rowoff.append(b.add(b.mul(b.udiv(rr, _I64(mr)), a_ps), off) if rows > mr else off)
    full = b.and_(b.icmp_signed("==", mrows, _I64(rows)), b.icmp_signed("==", ncols, _I64(width)))

    def cvec(ptr_base: ir.Value, stride: ir.Value, r: int, v: int) -> ir.Value:
        row = b.gep(ptr_base, [b.mul(stride, _I64(r))])
        return b.bitcast(b.gep(row, [_I64(v * lanes)]), vec_p)

    def copy_rows(src: ir.Value, src_ld: ir.Value, dst: ir.Value, dst_ld: ir.Value) -> None:
        with cgutils.for_range(b, mrows) as r:
            s_row = b.gep(src, [b.mul(r.index, src_ld)])
            d_row = b.gep(dst, [b.mul(r.index, dst_ld)])
            with cgutils.for_range(b, ncols) as j:
                b.store(b.load(b.gep(s_row, [j.index])), b.gep(d_row, [j.index]))

    # Initial accumulators: +0, or the partial C of the previous K block (exact: it is float32).
    init = fn.append_basic_block("init")
    check_full = fn.append_basic_block("check_full")
    from_c_full = fn.append_basic_block("from_c_full")
    from_c_edge = fn.append_basic_block("from_c_edge")
    b.cbranch(b.icmp_signed("!=", load_c, _I64(0)), check_full, init)
    b.position_at_end(check_full)
    b.cbranch(full, from_c_full, from_c_edge)
    b.position_at_end(from_c_full)
    loaded_full = [b.load(cvec(c0, ldc, r, v), align=4) for r in range(rows) for v in range(nvec)]
    b.branch(init)
    b.position_at_end(from_c_edge)
    for i in range(rows * nvec):  # lanes outside C start at 0 (no garbage, no denormal stalls)
        b.store(zero, b.bitcast(b.gep(base, [_I64(i * lanes)]), vec_p), align=64)
    copy_rows(c0, ldc, base, _I64(width))
    loaded_edge = [b.load(cvec(base, _I64(width), r, v), align=64) for r in range(rows) for v in range(nvec)]
    edge_end = b.block
    b.branch(init)
    b.position_at_end(init)
    start = []
    for i in range(rows * nvec):
        phi = b.phi(vec_t)
        phi.add_incoming(zero, entry)
        phi.add_incoming(loaded_full[i], from_c_full)
        phi.add_incoming(loaded_edge[i], edge_end)
        start.append(phi)

    # The K loop: all rows*nvec accumulators live in registers.
    done = fn.append_basic_block("done")
    loop = fn.append_basic_block("kloop")
    b.cbranch(b.icmp_signed(">", kc, _I64(0)), loop, done)
    b.position_at_end(loop)
    k = b.phi(_I64)
    ap = b.phi(_F32P)
    bp = b.phi(_F32P)
    accs = [b.phi(vec_t) for _ in range(rows * nvec)]
    bvecs = [b.load(b.bitcast(b.gep(bp, [_I64(v * lanes)]), vec_p), align=4) for v in range(nvec)]
    new = []
    for r in range(rows):
        s = _splat(b, b.load(b.gep(ap, [rowoff[r]]), align=4), lanes)
        for v in range(nvec):
            new.append(b.call(fma, [s, bvecs[v], accs[r * nvec + v]]))
    k1 = b.add(k, _I64(1))
    ap1 = b.gep(ap, [a_ks])
    bp1 = b.gep(bp, [b_ks])
    latch = b.cbranch(b.icmp_signed("<", k1, kc), loop, done)
    if rows > mr:
        # The tall narrow tile needs 12 (24) accumulators + as many row offsets: unrolled, it
        # spills vector and integer registers inside the loop (measured: 2x slower).
        _no_unroll(module, latch, name)
    for phi, first, nxt in [(k, _I64(0), k1), (ap, a0, ap1), (bp, b0, bp1)] + list(zip(accs, start, new)):
        phi.add_incoming(first, init)
        phi.add_incoming(nxt, loop)

    b.position_at_end(done)
    results = []
    for i in range(rows * nvec):
        res = b.phi(vec_t)
        res.add_incoming(start[i], init)
        res.add_incoming(new[i], loop)
        results.append(res)
    with b.if_else(full, likely=True) as (then, otherwise):
        with then:
            for r in range(rows):
                for v in range(nvec):
                    b.store(results[r * nvec + v], cvec(c0, ldc, r, v), align=4)
        with otherwise:
            for r in range(rows):
                for v in range(nvec):
                    b.store(results[r * nvec + v], cvec(base, _I64(width), r, v), align=64)
            copy_rows(base, _I64(width), c0, ldc)
    b.ret_void()
    return fn


def _masks(b: ir.IRBuilder, count: ir.Value, lanes: int, nvec: int) -> list[ir.Value]:
    """``<lanes x i1>`` masks of the lanes ``v*lanes + l < count`` for v < nvec."""
    iota = ir.Constant(ir.VectorType(_I32, lanes), list(range(lanes)))
    n = _splat(b, b.trunc(count, _I32), lanes)
    return [b.icmp_signed("<", b.add(iota, ir.Constant(iota.type, [v * lanes] * lanes)), n) for v in range(nvec)]


def gemv_function(module: ir.Module, rows: int, kb: int, lanes: int) -> ir.Function:
    """Define the streaming kernel for ``rows`` (1 or 2) rows of A: GEMV and batch-1 Gemm.

    ``void f(float* a, i64 a_rs, i64 a_ks, float* b, i64 ldb, i64 k, float* c, i64 ldc,
    i64 ncols)``: ``c[r, :ncols] = 0``, then for each k (ascending, ``kb`` rows of B per pass):
    ``c[r, j] = fma(a[r*a_rs + k*a_ks], b[k*ldb + j], c[r, j])``. B is read once, row by row and
    contiguously (no packing: with so few rows a pass over B is the whole cost); the C rows stay
    in L1 across passes; the ragged end of a row uses masked loads and stores.
    """
    name = f"mcc_sgemv_{rows}x{kb}x{lanes}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    vec_t = ir.VectorType(_F32, lanes)
    vec_p = vec_t.as_pointer()
    mask_t = ir.VectorType(_I1, lanes)
    fma = _declare(module, f"llvm.fma.v{lanes}f32", vec_t, [vec_t, vec_t, vec_t])
    mload = _declare(module, f"llvm.masked.load.v{lanes}f32.p0", vec_t, [vec_p, _I32, mask_t, vec_t])
    mstore = _declare(module, f"llvm.masked.store.v{lanes}f32.p0", ir.VoidType(), [vec_t, vec_p, _I32, mask_t])
    fnty = ir.FunctionType(ir.VoidType(), [_F32P, _I64, _I64, _F32P, _I64, _I64, _F32P, _I64, _I64])
    fn = ir.Function(module, fnty, name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    a0, a_rs, a_ks, b0, ldb, k, c0, ldc, ncols = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    zero = ir.Constant(vec_t, None)
    nfull = b.udiv(ncols, _I64(lanes))
    tail_off = b.mul(nfull, _I64(lanes))
    tail = b.sub(ncols, tail_off)
    (tmask,) = _masks(b, tail, lanes, 1)
    crows = [b.gep(c0, [b.mul(ldc, _I64(r))]) for r in range(rows)]
    for r in range(rows):
        with cgutils.for_range(b, ncols) as j:
            b.store(ir.Constant(_F32, 0.0), b.gep(crows[r], [j.index]))

    def step(k0: ir.Value, nk: int) -> None:
        """c[:, :ncols] continues its chains with B rows k0 .. k0+nk-1."""
        splats = [[_splat(b, b.load(b.gep(a0, [b.add(b.mul(_I64(r), a_rs), b.mul(b.add(k0, _I64(i)), a_ks))]),
                                    align=4), lanes) for i in range(nk)] for r in range(rows)]
        brows = [b.gep(b0, [b.mul(b.add(k0, _I64(i)), ldb)]) for i in range(nk)]

        def body(off: ir.Value, mask: ir.Value | None) -> None:
            def ld(row: ir.Value) -> ir.Value:
                ptr = b.bitcast(b.gep(row, [off]), vec_p)
                return b.load(ptr, align=4) if mask is None else b.call(mload, [ptr, _I32(4), mask, zero])

            accs = [ld(crows[r]) for r in range(rows)]
            for i in range(nk):
                bv = ld(brows[i])
                accs = [b.call(fma, [splats[r][i], bv, accs[r]]) for r in range(rows)]
            for r in range(rows):
                ptr = b.bitcast(b.gep(crows[r], [off]), vec_p)
                if mask is None:
                    b.store(accs[r], ptr, align=4)
                else:
                    b.call(mstore, [accs[r], ptr, _I32(4), mask])

        with cgutils.for_range(b, nfull) as jv:
            body(b.mul(jv.index, _I64(lanes)), None)
        with b.if_then(b.icmp_signed(">", tail, _I64(0))):
            body(tail_off, tmask)

    nblk = b.udiv(k, _I64(kb))
    with cgutils.for_range(b, nblk) as blk:
        step(b.mul(blk.index, _I64(kb)), kb)
    if kb > 1:
        with cgutils.for_range(b, b.sub(k, b.mul(nblk, _I64(kb)))) as rem:
            step(b.add(b.mul(nblk, _I64(kb)), rem.index), 1)
    b.ret_void()
    return fn


def pack_function(module: ir.Module, nvec: int, lanes: int) -> ir.Function:
    """Define ``void f(float* b, i64 ldb, i64 kc, i64 ncols, float* dst)``: one B micro-panel.

    ``dst[kk*NR + j] = b[kk*ldb + j]`` for j < ncols, +0 for ncols <= j < NR (NR = nvec*lanes):
    whole-vector copies, masked loads (zero fill) for a ragged last panel.
    """
    name = f"mcc_sgemm_packb_{nvec}x{lanes}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    vec_t = ir.VectorType(_F32, lanes)
    vec_p = vec_t.as_pointer()
    mload = _declare(module, f"llvm.masked.load.v{lanes}f32.p0", vec_t,
                     [vec_p, _I32, ir.VectorType(_I1, lanes), vec_t])
    width = nvec * lanes
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_F32P, _I64, _I64, _I64, _F32P]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    src, ldb, kc, ncols, dst = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    masks = _masks(b, ncols, lanes, nvec)
    with b.if_else(b.icmp_signed("==", ncols, _I64(width)), likely=True) as (then, otherwise):
        for blk, masked in ((then, False), (otherwise, True)):
            with blk, cgutils.for_range(b, kc) as k:
                row = b.gep(src, [b.mul(k.index, ldb)])
                out = b.gep(dst, [b.mul(k.index, _I64(width))])
                for v in range(nvec):
                    ptr = b.bitcast(b.gep(row, [_I64(v * lanes)]), vec_p)
                    val = (b.call(mload, [ptr, _I32(4), masks[v], ir.Constant(vec_t, None)])
                           if masked else b.load(ptr, align=4))
                    b.store(val, b.bitcast(b.gep(out, [_I64(v * lanes)]), vec_p), align=4)
    b.ret_void()
    return fn


# --------------------------------------------------------------------------- Numba intrinsics


def _literal(ty: types.Type, what: str) -> int:
    if not isinstance(ty, types.IntegerLiteral):
        raise TypingError(f"sgemm: {what} must be a compile-time constant, got {ty}")
    return int(ty.literal_value)


def _args(context, builder, signature, args) -> list[ir.Value]:
    """Integer arguments as i64, arrays as their float* data."""
    out: list[ir.Value] = []
    for v, t in zip(args, signature.args):
        if isinstance(t, types.Array):  # (context.cast of an array would lower to a take() call)
            out.append(context.make_array(t)(context, builder, v).data)
        else:
            out.append(context.cast(builder, v, t, types.int64))
    return out


def _check_types(what: str, arrays: tuple[types.Type, ...], ints: tuple[types.Type, ...]) -> None:
    for arr in arrays:
        if not isinstance(arr, types.Array) or arr.dtype != types.float32:
            raise TypingError(f"sgemm {what}: operands must be float32 arrays, got {arr}")
    if not all(isinstance(x, types.Integer) for x in ints):
        raise TypingError(f"sgemm {what}: offsets, strides and counts must be integers")


@intrinsic(prefer_literal=True)
def _kern(typingctx, isa, narrow, abuf, aoff, a_rs, a_ps, a_ks, bbuf, boff, b_ks, kc, cbuf, coff, ldc, mrows, ncols, load_c):
    """Run one register tile (``kernel_function``); offsets and strides in float32 elements.

    ``narrow`` (literal): 0 for the mr x nvec*lanes tile, 1 for the 2*mr x lanes one.
    """
    t = _TILES[ISAS[_literal(isa, "isa")]]
    shape = (2 * t.mr, 1) if _literal(narrow, "narrow") else (t.mr, t.nvec)
    _check_types("tile", (abuf, bbuf, cbuf), (aoff, a_rs, a_ps, a_ks, boff, b_ks, kc, coff, ldc, mrows, ncols, load_c))
    sig = types.none(isa, narrow, abuf, aoff, a_rs, a_ps, a_ks, bbuf, boff, b_ks, kc, cbuf, coff, ldc, mrows, ncols, load_c)

    def codegen(context, builder, signature, args):
        fn = kernel_function(builder.module, shape[0], shape[1], t.lanes, t.mr)
        x = _args(context, builder, signature, args)
        builder.call(fn, [builder.gep(x[2], [x[3]]), x[4], x[5], x[6], builder.gep(x[7], [x[8]]), x[9],
                          x[10], builder.gep(x[11], [x[12]]), x[13], x[14], x[15], x[16]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def _gemv(typingctx, isa, rows, abuf, aoff, a_rs, a_ks, bbuf, boff, ldb, k, cbuf, coff, ldc, ncols):
    """Run the streaming kernel (``gemv_function``) for ``rows`` (literal, 1 or 2) rows."""
    lanes = _TILES[ISAS[_literal(isa, "isa")]].lanes
    nrows = _literal(rows, "rows")
    if nrows not in (1, 2):
        raise TypingError("sgemm gemv: rows must be 1 or 2")
    _check_types("gemv", (abuf, bbuf, cbuf), (aoff, a_rs, a_ks, boff, ldb, k, coff, ldc, ncols))
    sig = types.none(isa, rows, abuf, aoff, a_rs, a_ks, bbuf, boff, ldb, k, cbuf, coff, ldc, ncols)

    def codegen(context, builder, signature, args):
        fn = gemv_function(builder.module, nrows, _GEMV_KB[nrows - 1], lanes)
        x = _args(context, builder, signature, args)
        builder.call(fn, [builder.gep(x[2], [x[3]]), x[4], x[5], builder.gep(x[6], [x[7]]), x[8], x[9],
                          builder.gep(x[10], [x[11]]), x[12], x[13]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def _pack_b(typingctx, isa, bbuf, boff, ldb, kc, ncols, dbuf):
    """Pack one KC x NR micro-panel of B (``pack_function``); offsets and strides in elements."""
    t = _TILES[ISAS[_literal(isa, "isa")]]
    _check_types("pack", (bbuf, dbuf), (boff, ldb, kc, ncols))
    sig = types.none(isa, bbuf, boff, ldb, kc, ncols, dbuf)

    def codegen(context, builder, signature, args):
        fn = pack_function(builder.module, t.nvec, t.lanes)
        x = _args(context, builder, signature, args)
        builder.call(fn, [builder.gep(x[1], [x[2]]), x[3], x[4], x[5], x[6]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _as_any(typingctx, arr):
    """The same array typed with layout 'A': one driver specialisation serves every caller layout
    (the drivers only take data pointers and strides)."""
    if not isinstance(arr, types.Array):
        raise TypingError("sgemm: expected an array")
    ret = arr.copy(layout="A")

    def codegen(context, builder, signature, args):
        return impl_ret_borrowed(context, builder, signature.return_type, args[0])

    return ret(arr), codegen


@intrinsic
def _num_threads(typingctx):
    """``numba.get_num_threads()`` without its ctypes global, which would make callers uncacheable."""
    from numba.np.ufunc.parallel import _launch_threads

    _launch_threads()  # registers the threading layer's symbols (cached parfors redo this on load)

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_I64, []), "get_num_threads")
        return builder.call(fn, [])

    return types.int64(), codegen


# --------------------------------------------------------------------------- Numba drivers


@njit(cache=True)
def _split(mt, npn, nt, mct):  # pragma: no cover - jitted
    """(row blocks, column blocks) for ``mt`` tiles x ``npn`` panels on ``nt`` threads.

    Row blocks hold at most ``mct`` tiles. Column blocks are added until the items spread over
    the threads with at most ~5% idle time (Numba's prange splits its range statically).
    """
    nmb = (mt + mct - 1) // mct
    if nt <= 1:
        return nmb, 1
    for nnb in range(1, npn + 1):
        items = nmb * nnb
        rounds = (items + nt - 1) // nt
        if items >= nt and items >= 0.95 * rounds * nt:
            return nmb, nnb
    return nmb, npn


def build(isa: str) -> Callable[..., None]:
    """The njit driver ``gemm(a, a_rs, a_ps, a_ks, m, k, b, c)`` with ``isa``'s kernels.

    ``c[:m] = A @ b`` with A[i, kk] at ``a.flat[(i // MR)*a_ps + (i % MR)*a_rs + kk*a_ks]``: A's
    rows (``a_rs = lda, a_ps = MR*lda, a_ks = 1``) or ``pack_a``'s panels flattened to 2-D
    (``1, k*MR, MR``). Run only ISAs in ``supported_isas()``; ``HOST_ISA``'s is built at import.
    """
    return _build(ISAS.index(isa))


@functools.cache
def _build(isa_id: int) -> Callable[..., None]:
    # Closure constants are literals for Numba (the intrinsics pick their tile from ISA) and are
    # hashed into the cache key; only ints are captured so the key stays stable across processes.
    ISA = isa_id
    MR_ = _MRS[isa_id]
    NR_ = _NRS[isa_id]
    LANES = _LANES[isa_id]
    MCT = _MCTS[isa_id]
    KC = _KCS[isa_id]

    @njit(cache=True, parallel=True)
    def gemm(a, a_rs, a_ps, a_ks, m, k, b, c):  # pragma: no cover - jitted
        n = c.shape[1]
        if m == 0 or n == 0:
            return
        if k == 0:
            c[:m, :] = np.float32(0.0)
            return
        ldb = b.strides[0] // 4
        ldc = c.strides[0] // 4
        nt = _num_threads()
        if m <= SMALL_M:
            # Stream B row by row over column chunks (one per thread, <= 8 KiB per row), two rows
            # of A per pass. The chains run in a private buffer, copied to C once at the end: C
            # is rewritten on every pass, and chunk edges sharing a cache line would ping-pong.
            per = (n + nt - 1) // nt
            cw = (min(per, 2048) + 15) // 16 * 16
            for ch in prange((n + cw - 1) // cw):
                j0 = ch * cw
                nc = min(cw, n - j0)
                raw = np.empty(m * cw + 16, np.float32)
                acc = raw[(64 - raw.ctypes.data % 64) % 64 // 4:]  # 64-byte aligned rows
                for i in range(0, m - 1, 2):
                    _gemv(ISA, 2, a, i * a_rs, a_rs, a_ks, b, j0, ldb, k, acc, i * cw, cw, nc)
                if m % 2 == 1:
                    i = m - 1
                    _gemv(ISA, 1, a, i * a_rs, a_rs, a_ks, b, j0, ldb, k, acc, i * cw, cw, nc)
                for i in range(m):
                    c[i, j0:j0 + nc] = acc[i * cw:i * cw + nc]
            return
        # Work items: row blocks (<= MCT tiles, their A slice stays in L2) x column blocks; each
        # packs its B micro-panels one K block at a time and sweeps its row tiles over each.
        nkb = (k + KC - 1) // KC
        kcs = (k + nkb - 1) // nkb
        mt = (m + MR_ - 1) // MR_
        npn = (n + NR_ - 1) // NR_
        nmb, nnb = _split(mt, npn, nt, MCT)
        for it in prange(nmb * nnb):
            mb = it // nnb
            nb = it - mb * nnb
            t0 = mb * mt // nmb
            t1 = (mb + 1) * mt // nmb
            p0 = nb * npn // nnb
            p1 = (nb + 1) * npn // nnb
            raw = np.empty(kcs * NR_ + 16, np.float32)
            bbuf = raw[(64 - raw.ctypes.data % 64) % 64 // 4:]  # one cache line per NR = 16 row
            for kb in range(nkb):
                k0 = kb * kcs
                kc = min(kcs, k - k0)
                for p in range(p0, p1):
                    j0 = p * NR_
                    nc = min(NR_, n - j0)
                    _pack_b(ISA, b, k0 * ldb + j0, ldb, kc, nc, bbuf)
                    if nc > LANES:
                        for t in range(t0, t1):
                            i0 = t * MR_
                            _kern(ISA, 0, a, t * a_ps + k0 * a_ks, a_rs, a_ps, a_ks, bbuf, 0, NR_, kc,
                                  c, i0 * ldc + j0, ldc, min(MR_, m - i0), nc, kb)
                    else:  # a last panel of <= LANES columns: tiles of 2 row panels x 1 vector
                        for t in range(t0, t1, 2):
                            i0 = t * MR_
                            rows = min(2 * MR_ if t + 1 < t1 else MR_, m - i0)
                            _kern(ISA, 1, a, t * a_ps + k0 * a_ks, a_rs, a_ps, a_ks, bbuf, 0, NR_, kc,
                                  c, i0 * ldc + j0, ldc, rows, nc, kb)

    return gemm


_GEMM = _build(_HOST)


@njit(cache=True)
def _check(m, k, b, c):  # pragma: no cover - jitted
    if b.shape[0] != k or c.shape[0] != m or b.shape[1] != c.shape[1]:
        raise ValueError("sgemm: shapes must be a [M, K], b [K, N], c [M, N]")
    n = c.shape[1]
    if k > 0 and ((n > 1 and b.strides[1] != 4) or b.strides[0] % 4 != 0):
        raise ValueError("sgemm: b needs unit column stride")
    if m > 0 and ((n > 1 and c.strides[1] != 4) or c.strides[0] % 4 != 0):
        raise ValueError("sgemm: c needs unit column stride")


@njit(cache=True)
def sgemm(a, b, c):  # pragma: no cover - jitted
    """c[M, N] = a[M, K] @ b[K, N] in float32, one ascending fma chain per element (see module).

    ``a``, ``b``, ``c``: 2-D float32 with unit column stride (row slices of bigger arrays are
    fine); ``c`` must not overlap ``a`` or ``b``. Parallel over Numba's threads.
    """
    m, k = a.shape
    _check(m, k, b, c)
    if m > 0 and ((k > 1 and a.strides[1] != 4) or a.strides[0] % 4 != 0):
        raise ValueError("sgemm: a needs unit column stride")
    lda = a.strides[0] // 4
    _GEMM(_as_any(a), lda, MR * lda, np.int64(1), m, k, _as_any(b), _as_any(c))


@njit(cache=True)
def sgemm_packed_a(pa, m, k, b, c):  # pragma: no cover - jitted
    """c[m, N] = A @ b with ``pa = pack_a(A)`` (C-contiguous, shape ``packed_a_shape(m, k)``).

    Bit-identical to ``sgemm(A, b, c)``. Reads A's panels contiguously instead of MR strided rows,
    which is what makes it worth packing constant weights once at compile time.
    """
    if pa.ndim != 3 or pa.shape[0] != (m + MR - 1) // MR or pa.shape[1] != k or pa.shape[2] != MR:
        raise ValueError("sgemm_packed_a: pa must be pack_a(A) for A [m, k] (see packed_a_shape)")
    _check(m, k, b, c)
    flat = pa.reshape((pa.shape[0], k * MR))
    _GEMM(_as_any(flat), np.int64(1), k * MR, np.int64(MR), m, k, _as_any(b), _as_any(c))


def packed_a_shape(m: int, k: int) -> tuple[int, int, int]:
    """Shape of ``pack_a`` for an [m, k] matrix on this host: (ceil(m / MR), k, MR)."""
    return (-(-m // MR), k, MR)


def pack_a(a: np.ndarray) -> np.ndarray:
    """float32 ``a[M, K]`` -> C-contiguous float32 ``[ceil(M/MR), K, MR]`` for ``sgemm_packed_a``.

    ``packed[t, k, r] = a[t*MR + r, k]`` (0 for rows past M): each MR-row panel is stored k-major,
    so the microkernel broadcasts the MR values of one k from one contiguous run. MR (``MR``, 6 on
    AVX2, 12 on AVX-512) depends on ``HOST_ISA``: pack on the machine (ISA) that runs the code.
    Deterministic: plain copies, no arithmetic.
    """
    a = np.asarray(a)
    if a.ndim != 2 or a.dtype != np.float32:
        raise ValueError(f"pack_a expects float32 [M, K], got {a.dtype} {a.shape}")
    m, k = a.shape
    mt = -(-m // MR)
    padded = np.zeros((mt * MR, k), np.float32)
    padded[:m] = a
    return np.ascontiguousarray(padded.reshape(mt, MR, k).transpose(0, 2, 1))
