"""int8 GEMM microkernels for the CPU target: u8 activations x s8 weights -> exact int32.

Quantized Conv/Gemm/MatMul lower to: activations quantized to uint8 (zero point zx), weights int8
symmetric (zero point 0; [-64, 63] from the quantizer's 7-bit reduce_range, full [-128, 127] also
supported), int32 accumulation here, scales applied by the caller. The kernels compute the raw
product ``sum_k a[., k] * w[., k]``; the activation zero point is the caller's job:
``sum_k (a - zx) * w = acc - zx * w.sum(axis=1)`` (row sums of the unpadded int8 weights; int32
is exact while K * 255 * 128 < 2**31, i.e. K < 65793).

Mechanism. The register-blocked microkernel is an LLVM function built with llvmlite's IRBuilder
and called through a Numba ``@intrinsic``: it is defined inside the module of the njit function
that calls it, so it is optimised, linked and cached (``cache=True``) like any njit code, while
packing, tiling and ``prange`` stay in plain Numba. (A separate llvmlite module called through
ctypes would need its own cache and a foreign call per tile.) The parallel drivers take raw
addresses and strides rather than arrays, so each compiles once whatever the layout, flags or
views of the caller's arrays; thin non-parallel njit wrappers check shapes and strides.

ISA paths (``HOST_ISA``, from the features Numba compiles for: the host's unless
NUMBA_CPU_FEATURES says otherwise):
  * ``avx512vnni``: ``vpdpbusd`` on zmm, 64 u8*s8 products per instruction, exact for all int8.
  * ``avxvnni``:    ``{vex} vpdpbusd`` on ymm (``llvm.x86.avx512.vpdpbusd.256``, which LLVM selects
                    as AVX-VNNI without AVX-512), exact for all int8.
  * ``avx2``:       ``vpmaddubsw`` (u8*s8 pairs -> i16, *saturating*), ``vpmaddwd`` by ones
                    (i16 pairs -> i32), ``vpaddd``. Exact only while |a0*w0 + a1*w1| <= 32767,
                    which holds for weights in [-64, 63] (2*255*64 = 32640). Full 8-bit weights
                    need ``exact8=True``: bytes are split in-register into zero/sign-extended i16
                    halves multiplied by two ``vpmaddwd`` (as many multiplies, twice the vector
                    ALU work: ~1.45x slower than the 7-bit path, still faster than fp32 sgemm).
  * ``generic``:    plain LLVM vector IR (i16 products, pairwise adds), for any target LLVM knows.
``exact8`` only changes the ``avx2`` path; the others are always exact.
The VNNI paths could not be run where this was written (AVX2-only host): they are checked to
select ``vpdpbusd`` for VNNI CPUs, and their tiling runs in the tests via the generic kernel.

Orientations (both register-blocked, parallel over output tiles with ``prange``):
  * ``qgemm_s8u8_nchw(packed_w, b, out)``: ``out[N, P] = W[N, K] @ B[K, P]``, the NCHW convolution
    form (``B`` = uint8 im2col columns, P = output pixels). Vectors run along P: a work item packs
    a panel of PW pixels x 4 k (``[K/4, PW, 4]``) into a private buffer and runs all its channel
    tiles on it while it is hot; each tile broadcasts 4 weight bytes per row per k-group. The
    conv lowering should use this one. AVX2 tile: 4 channels x 16 pixels (8 ymm accumulators).
  * ``qgemm_u8s8(a, packed_b, n, k, out)``: ``out[M, N] = A[M, K] @ W[N, K].T`` (Gemm/MatMul, or
    im2col rows = pixels). Vectors run along N over the packed weights; activations are broadcast
    straight from ``A``'s rows (only a ragged last block of rows is copied, zero-padded).
    AVX2 tile: 4 rows x 16 channels.
Both reach ~2x OpenBLAS fp32 sgemm on one Zen 3 core (85-90 GFLOP/s fp32 vs ~85-90 GMAC/s int8)
and scale to the second core; with Numba's TBB threading layer on a busy machine, calls of ~1 ms
can run on the calling thread alone (TBB's worker arrives too late), where workqueue/omp split.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import llvmlite.binding as llb
import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils, config
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .isa import declare as _declare
from .isa import splat as _splat
from .isa import target_features

__all__ = [
    "HOST_ISA",
    "ISAS",
    "Kernels",
    "kernels_for",
    "pack_weights",
    "padded_k",
    "qgemm_s8u8_nchw",
    "qgemm_u8s8",
    "quantize_u8",
    "supported_isas",
]

ISAS: tuple[str, ...] = ("generic", "avx2", "avxvnni", "avx512vnni")

# Output channels per packed weight block: the u8s8 kernel's vector width along N (16 channels on
# AVX2, 32 on AVX-512) and the NCHW kernel's rows per tile (4 or 8) divide it on every ISA, so
# pack_weights is ISA-independent.
_NW = 32


class _Tile(NamedTuple):
    """Register tile: ``rows`` broadcast rows x ``vecs`` vectors of ``lanes`` i32 accumulators."""

    lanes: int
    rows: int
    vecs: int


# (NCHW tile, u8s8 tile) per ISA. AVX2 has 16 ymm registers: 8 accumulators + 2 vector operands +
# up to 4 broadcasts + the ones vector fit; AVX-512 has 32 zmm for 16 accumulators.
_TILES: dict[str, tuple[_Tile, _Tile]] = {
    "generic": (_Tile(8, 4, 2), _Tile(8, 4, 2)),
    "avx2": (_Tile(8, 4, 2), _Tile(8, 4, 2)),
    "avxvnni": (_Tile(8, 4, 2), _Tile(8, 4, 2)),
    "avx512vnni": (_Tile(16, 8, 2), _Tile(16, 8, 2)),
}


def supported_isas(features: frozenset[str] | None = None) -> tuple[str, ...]:
    """ISAs whose kernels can run under ``features`` (default: what Numba targets), best last."""
    if features is None:
        features = target_features()
    if not llb.get_process_triple().startswith(("x86_64", "amd64")):
        return ("generic",)
    out = ["generic"]
    if "avx2" in features:
        out.append("avx2")
        if "avxvnni" in features or {"avx512vnni", "avx512vl"} <= features:
            out.append("avxvnni")
    if {"avx512vnni", "avx512f", "avx512bw"} <= features:
        out.append("avx512vnni")
    return tuple(out)


HOST_ISA: str = supported_isas()[-1]

# Start Numba's threading layer now. A caller compiled with cache=True that links these parallel
# drivers from an already cached library does not record that its code needs the thread pool, and
# when that caller is itself loaded from the cache the parfor launcher would run uninitialised and
# segfault (numba issue #8578). Any process running such code has imported this module first.
numba.get_num_threads()


# --------------------------------------------------------------------------- LLVM IR generation

_I8, _I16, _I32, _I64 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64)
_I8P, _I32P = _I8.as_pointer(), _I32.as_pointer()


@functools.cache
def _vnni_byte_operands() -> bool:
    """Whether this LLVM's vpdpbusd intrinsics take i8 vectors (recent LLVM) or i32 vectors.

    Older declarations are auto-upgraded, but emitting the native form avoids relying on that."""
    src = (
        "declare <8 x i32> @llvm.x86.avx512.vpdpbusd.256(<8 x i32>, <32 x i8>, <32 x i8>)\n"
        "define <8 x i32> @f(<8 x i32> %a, <32 x i8> %b) {\n"
        "  %r = call <8 x i32> @llvm.x86.avx512.vpdpbusd.256(<8 x i32> %a, <32 x i8> %b, <32 x i8> %b)\n"
        "  ret <8 x i32> %r\n}\n"
    )
    try:
        llb.parse_assembly(src).verify()
    except RuntimeError:
        return False
    return True


class _DotStep:
    """Emits ``acc + dot4(u, s)`` per i32 lane for one ISA (u: u8 bytes, s: s8 bytes).

    ``prep_u``/``prep_s`` run once per loaded operand, ``dot`` once per (row, vector) pair, so
    per-operand work (the exact8 byte split) is shared across the register tile.
    """

    def __init__(self, module: ir.Module, isa: str, exact8: bool, lanes: int) -> None:
        self.isa, self.exact8, self.lanes = isa, exact8, lanes
        self.acc_t = ir.VectorType(_I32, lanes)
        self.bytes_t = ir.VectorType(_I8, 4 * lanes)
        self.half_t = ir.VectorType(_I16, 2 * lanes)
        if isa in ("avx512vnni", "avxvnni"):
            name = "llvm.x86.avx512.vpdpbusd.512" if lanes == 16 else "llvm.x86.avx512.vpdpbusd.256"
            op_t = self.bytes_t if _vnni_byte_operands() else self.acc_t
            self.op_t = op_t
            self.vpdpbusd = _declare(module, name, self.acc_t, [self.acc_t, op_t, op_t])
        elif isa == "avx2":
            assert lanes == 8
            self.pmaddwd = _declare(module, "llvm.x86.avx2.pmadd.wd", self.acc_t, [self.half_t] * 2)
            self.pmaddubsw = _declare(
                module, "llvm.x86.avx2.pmadd.ub.sw", self.half_t, [self.bytes_t] * 2
            )
            self.ones = ir.Constant(self.half_t, [1] * (2 * lanes))
            self.c8 = ir.Constant(self.half_t, [8] * (2 * lanes))
            self.lowmask = ir.Constant(self.half_t, [0xFF] * (2 * lanes))
        elif isa != "generic":
            raise ValueError(f"unknown ISA {isa!r}")

    def prep_u(self, b: ir.IRBuilder, x: ir.Value) -> object:
        if self.isa == "avx2" and self.exact8:
            h = b.bitcast(x, self.half_t)
            return b.and_(h, self.lowmask), b.lshr(h, self.c8)  # bytes 0,2 | bytes 1,3, zext
        if self.isa == "generic":
            return b.zext(x, ir.VectorType(_I16, 4 * self.lanes))
        return x

    def prep_s(self, b: ir.IRBuilder, x: ir.Value) -> object:
        if self.isa == "avx2" and self.exact8:
            h = b.bitcast(x, self.half_t)
            return b.ashr(b.shl(h, self.c8), self.c8), b.ashr(h, self.c8)  # sext halves
        if self.isa == "generic":
            return b.sext(x, ir.VectorType(_I16, 4 * self.lanes))
        return x

    def dot(self, b: ir.IRBuilder, acc: ir.Value, u: object, s: object) -> ir.Value:
        if self.isa in ("avx512vnni", "avxvnni"):
            if self.op_t is not self.bytes_t:
                u, s = b.bitcast(u, self.op_t), b.bitcast(s, self.op_t)
            return b.call(self.vpdpbusd, [acc, u, s])
        if self.isa == "avx2":
            if self.exact8:
                lo = b.call(self.pmaddwd, [u[0], s[0]])
                hi = b.call(self.pmaddwd, [u[1], s[1]])
                return b.add(acc, b.add(lo, hi))
            pairs = b.call(self.pmaddubsw, [u, s])
            return b.add(acc, b.call(self.pmaddwd, [pairs, self.ones]))
        # generic: i16 products (exact: 255 * 128 < 2**15), then sums of adjacent pairs, twice
        n = self.lanes
        prod = b.mul(u, s)
        pair_t = ir.VectorType(_I32, 2 * n)
        even = b.shuffle_vector(prod, prod, ir.Constant(pair_t, [2 * i for i in range(2 * n)]))
        odd = b.shuffle_vector(prod, prod, ir.Constant(pair_t, [2 * i + 1 for i in range(2 * n)]))
        pairs = b.add(b.sext(even, pair_t), b.sext(odd, pair_t))
        even = b.shuffle_vector(pairs, pairs, ir.Constant(self.acc_t, [2 * i for i in range(n)]))
        odd = b.shuffle_vector(pairs, pairs, ir.Constant(self.acc_t, [2 * i + 1 for i in range(n)]))
        return b.add(acc, b.add(even, odd))


def _kloop(
    b: ir.IRBuilder,
    step: _DotStep,
    tile: _Tile,
    u_is_vector: bool,
    ops: tuple[ir.Value, ...],
    rowoff: list[ir.Value],
    zero: ir.Value,
    done: ir.Block,
) -> tuple[ir.Block, list[ir.Value]]:
    """Emit the K loop (entered from the current block, kg > 0); return its latch and final accs."""
    v0, s0, v_gs, s_gs, kg = ops
    pre = b.block
    loop = b.append_basic_block("kloop_x8" if step.exact8 else "kloop")
    b.branch(loop)
    b.position_at_end(loop)
    g = b.phi(_I64)
    vp = b.phi(_I8P)
    sp = b.phi(_I8P)
    accs = [b.phi(step.acc_t) for _ in range(tile.rows * tile.vecs)]
    vbytes = 4 * tile.lanes
    vecs = [
        b.load(b.bitcast(b.gep(vp, [_I64(j * vbytes)]), step.bytes_t.as_pointer()), align=1)
        for j in range(tile.vecs)
    ]
    rows = []
    for off in rowoff:
        word = b.load(b.bitcast(b.gep(sp, [off]), _I32P), align=1)
        rows.append(b.bitcast(_splat(b, word, tile.lanes), step.bytes_t))
    vprep, rprep = (step.prep_u, step.prep_s) if u_is_vector else (step.prep_s, step.prep_u)
    vops, rops = [vprep(b, x) for x in vecs], [rprep(b, x) for x in rows]
    new = []
    for r in range(tile.rows):
        for j in range(tile.vecs):
            acc = accs[r * tile.vecs + j]
            u, s = (vops[j], rops[r]) if u_is_vector else (rops[r], vops[j])
            new.append(step.dot(b, acc, u, s))
    g1 = b.add(g, _I64(1))
    vp1 = b.gep(vp, [v_gs])
    sp1 = b.gep(sp, [s_gs])
    b.cbranch(b.icmp_signed("<", g1, kg), loop, done)
    for phi, first, nxt in [(g, _I64(0), g1), (vp, v0, vp1), (sp, s0, sp1)] + [
        (acc, zero, nv) for acc, nv in zip(accs, new)
    ]:
        phi.add_incoming(first, pre)
        phi.add_incoming(nxt, loop)
    return loop, new


def tile_function(module: ir.Module, isa: str, u_is_vector: bool, tile: _Tile) -> ir.Function:
    """Define (once per module) the register-blocked microkernel and return it.

    ``void f(i8* v, i64 v_gstride, i8* s, i64 s_rstride, i64 s_gstride, i64 kgroups,
    i32* out, i64 ldo, i64 nrows, i64 ncols, i64 exact8)`` computes, for r < nrows, c < ncols,
    ``out[r*ldo + c] = sum_g dot4(v[g*v_gstride + 4c : +4], s[r*s_rstride + g*s_gstride : +4])``.
    The vector operand ``v`` is a panel of k-groups (``vecs*lanes`` columns x 4 bytes each,
    readable in full even at edges: it is padded); the broadcast operand ``s`` is read 4 bytes
    per row per k-group for all ``rows`` rows, valid or not, so callers pad it (NCHW: rows are
    channels of a zero-padded 32-channel weight block; u8s8: the driver swaps in a padded copy of
    A's last partial row block). All rows*vecs accumulators live in registers for the whole K
    loop; edges are stored through a stack buffer. ``u_is_vector`` says which operand holds the
    unsigned bytes; it is the NCHW form, whose weight rows are 4 bytes apart: that stride is then
    a constant folded into the load addresses, sparing a register per row (``s_rstride`` is
    ignored). ``exact8`` picks the non-saturating AVX2 loop (both loops are emitted).
    """
    name = f"mcc_qgemm_{isa}_{'uv' if u_is_vector else 'us'}_{tile.lanes}l{tile.rows}x{tile.vecs}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    steps = [_DotStep(module, isa, False, tile.lanes)]
    if isa == "avx2":
        steps.append(_DotStep(module, isa, True, tile.lanes))
    acc_t = steps[0].acc_t
    width = tile.lanes * tile.vecs
    fnty = ir.FunctionType(ir.VoidType(), [_I8P, _I64, _I8P, _I64, _I64, _I64, _I32P, _I64, _I64, _I64, _I64])
    fn = ir.Function(module, fnty, name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    v0, v_gs, s0, s_rs, s_gs, kg, out, ldo, nrows, ncols, exact8 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    entry = b.block
    spill = b.alloca(ir.ArrayType(_I32, tile.rows * width), name="edge")
    zero = ir.Constant(acc_t, None)
    rowoff = [_I64(4 * r) if u_is_vector else b.mul(s_rs, _I64(r)) for r in range(tile.rows)]
    done = fn.append_basic_block("done")
    start = fn.append_basic_block("start")
    b.cbranch(b.icmp_signed(">", kg, _I64(0)), start, done)
    b.position_at_end(start)
    ops = (v0, s0, v_gs, s_gs, kg)
    exits = []
    if len(steps) == 1:
        exits.append(_kloop(b, steps[0], tile, u_is_vector, ops, rowoff, zero, done))
    else:
        fast, exact = fn.append_basic_block("fast"), fn.append_basic_block("exact")
        b.cbranch(b.icmp_signed("!=", exact8, _I64(0)), exact, fast)
        for blk, step in ((fast, steps[0]), (exact, steps[1])):
            b.position_at_end(blk)
            exits.append(_kloop(b, step, tile, u_is_vector, ops, rowoff, zero, done))

    b.position_at_end(done)
    results = []
    for i in range(tile.rows * tile.vecs):
        res = b.phi(acc_t)
        res.add_incoming(zero, entry)
        for latch, new in exits:
            res.add_incoming(new[i], latch)
        results.append(res)
    full = b.and_(b.icmp_signed("==", nrows, _I64(tile.rows)), b.icmp_signed("==", ncols, _I64(width)))
    with b.if_else(full, likely=True) as (then, otherwise):
        with then:
            for r in range(tile.rows):
                row = b.gep(out, [b.mul(ldo, _I64(r))])
                for j in range(tile.vecs):
                    ptr = b.bitcast(b.gep(row, [_I64(j * tile.lanes)]), acc_t.as_pointer())
                    b.store(results[r * tile.vecs + j], ptr, align=4)
        with otherwise:
            base = b.bitcast(spill, _I32P)
            for i, res in enumerate(results):
                b.store(res, b.bitcast(b.gep(base, [_I64(i * tile.lanes)]), acc_t.as_pointer()), align=4)
            with cgutils.for_range(b, nrows) as r:
                src = b.gep(base, [b.mul(r.index, _I64(width))])
                dst = b.gep(out, [b.mul(r.index, ldo)])
                with cgutils.for_range(b, ncols) as c:
                    b.store(b.load(b.gep(src, [c.index])), b.gep(dst, [c.index]))
    b.ret_void()
    return fn


def pack_function(module: ir.Module, width: int) -> ir.Function:
    """Define ``void f(u8* b, i64 ldb, i64 kgroups, i64 ncols, u8* dst)``: one NCHW panel.

    ``dst[g, c, j] = b[(4g + j) * ldb + c]`` for c < ncols, 0 for ncols <= c < width: four rows
    of ``width`` bytes are interleaved with two shuffles per k-group (plain IR, LLVM picks the
    unpack/permute instructions). A ragged last panel (ncols < width) reads full rows too, the
    columns past ``ncols`` masked to zero, while the read stays inside the rows' extent; only its
    final k-group(s), whose read could run past the end of ``b``, go byte by byte.
    """
    name = f"mcc_qgemm_pack_{width}"
    existing = module.globals.get(name)
    if existing is not None:
        return existing
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [_I8P, _I64, _I64, _I64, _I8P]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    src, ldb, kg, ncols, dst = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    row_t = ir.VectorType(_I8, width)
    half_t = ir.VectorType(_I16, width)
    out_t = ir.VectorType(_I8, 4 * width)
    zip_mask = ir.Constant(ir.VectorType(_I32, 2 * width), [i // 2 + (i % 2) * width for i in range(2 * width)])
    lanes = ir.Constant(ir.VectorType(_I64, width), list(range(width)))
    keep = b.sext(b.icmp_signed("<", lanes, _splat(b, ncols, width)), row_t)  # 0xFF where c < ncols
    # k-groups whose four rows can be read ``width`` bytes wide without leaving b's extent
    # [0, (4kg - 1) * ldb + ncols): all when the panel is full, else while
    # (4g + 3) * ldb + width <= (4kg - 1) * ldb + ncols (ldb > 0; otherwise none).
    slack = b.add(b.mul(b.sub(kg, _I64(1)), b.mul(ldb, _I64(4))), b.sub(ncols, _I64(width)))
    fits = b.add(b.sdiv(slack, b.mul(ldb, _I64(4))), _I64(1))
    ok = b.and_(b.icmp_signed(">", ldb, _I64(0)), b.icmp_signed(">=", slack, _I64(0)))
    wide = b.select(b.icmp_signed("==", ncols, _I64(width)), kg,
                    b.select(ok, b.select(b.icmp_signed("<", fits, kg), fits, kg), _I64(0)))
    with cgutils.for_range(b, wide) as g:
        base = b.gep(src, [b.mul(g.index, b.mul(ldb, _I64(4)))])
        rows = [
            b.and_(b.load(b.bitcast(b.gep(base, [b.mul(ldb, _I64(j))]), row_t.as_pointer()), align=1), keep)
            for j in range(4)
        ]
        lo = b.bitcast(b.shuffle_vector(rows[0], rows[1], zip_mask), half_t)
        hi = b.bitcast(b.shuffle_vector(rows[2], rows[3], zip_mask), half_t)
        both = b.bitcast(b.shuffle_vector(lo, hi, zip_mask), out_t)
        b.store(both, b.bitcast(b.gep(dst, [b.mul(g.index, _I64(4 * width))]), out_t.as_pointer()), align=1)
    with cgutils.for_range(b, kg, start=wide) as g:
        group = b.gep(dst, [b.mul(g.index, _I64(4 * width))])
        cgutils.memset(b, group, _I64(4 * width), 0)
        with cgutils.for_range(b, _I64(4)) as j:
            srow = b.gep(src, [b.mul(b.add(b.mul(g.index, _I64(4)), j.index), ldb)])
            with cgutils.for_range(b, ncols) as c:
                dbyte = b.gep(group, [b.add(b.mul(c.index, _I64(4)), j.index)])
                b.store(b.load(b.gep(srow, [c.index])), dbyte)
    b.ret_void()
    return fn


# --------------------------------------------------------------------------- Numba intrinsics


def _literal(ty: types.Type, what: str) -> int:
    if not isinstance(ty, (types.IntegerLiteral, types.BooleanLiteral)):
        raise TypingError(f"qgemm: {what} must be a compile-time constant, got {ty}")
    return int(ty.literal_value)


def _is_base(ty: types.Type, dtypes: tuple[types.Type, ...]) -> bool:
    """A buffer operand: an array of one of ``dtypes``, or a raw address (integer)."""
    return isinstance(ty, types.Integer) or (isinstance(ty, types.Array) and ty.dtype in dtypes)


def _address(context, builder: ir.IRBuilder, ty: types.Type, val: ir.Value, off: ir.Value, elem: ir.Type) -> ir.Value:
    """``elem*`` to element ``off`` of an array's data, or of the buffer at an integer address."""
    if isinstance(ty, types.Array):
        base = builder.bitcast(context.make_array(ty)(context, builder, val).data, elem.as_pointer())
    else:
        base = builder.inttoptr(context.cast(builder, val, ty, types.int64), elem.as_pointer())
    return builder.gep(base, [off])


def _int64_args(context, builder: ir.IRBuilder, args: list[ir.Value], tys: tuple[types.Type, ...]) -> list:
    """Each non-array argument widened to i64 (None for arrays)."""
    return [None if isinstance(t, types.Array) else context.cast(builder, v, t, types.int64) for v, t in zip(args, tys)]


@intrinsic(prefer_literal=True)
def _tile(typingctx, isa, lanes, u_is_vector, rows, vecs,
          vbase, voff, v_gs, sbase, soff, s_rs, s_gs, kg, obase, ooff, ldo, nrows, ncols, exact8):
    """Run one register tile (``tile_function``).

    Buffers are arrays or integer addresses; v/s offsets and strides in bytes, out's in int32s.
    """
    literals = (isa, lanes, u_is_vector, rows, vecs)
    names = ("isa", "lanes", "u_is_vector", "rows", "vecs")
    isa_code, nl, uvec, nr, nv = (_literal(t, what) for t, what in zip(literals, names))
    tile = _Tile(nl, nr, nv)
    if not (_is_base(vbase, (types.uint8, types.int8)) and _is_base(sbase, (types.uint8, types.int8))):
        raise TypingError("qgemm tile: operands must be 8-bit arrays or addresses")
    if not _is_base(obase, (types.int32,)):
        raise TypingError("qgemm tile: out must be an int32 array or address")
    ints = (voff, v_gs, soff, s_rs, s_gs, kg, ooff, ldo, nrows, ncols, exact8)
    if not all(isinstance(x, (types.Integer, types.Boolean)) for x in ints):
        raise TypingError("qgemm tile: offsets, strides and counts must be integers")
    sig = types.none(*literals, vbase, voff, v_gs, sbase, soff, s_rs, s_gs, kg, obase, ooff, ldo, nrows, ncols, exact8)

    def codegen(context, builder, signature, args):
        fn = tile_function(builder.module, ISAS[isa_code], bool(uvec), tile)
        at = signature.args
        i64 = _int64_args(context, builder, args, at)
        v = _address(context, builder, at[5], args[5], i64[6], _I8)
        s = _address(context, builder, at[8], args[8], i64[9], _I8)
        o = _address(context, builder, at[13], args[13], i64[14], _I32)
        builder.call(fn, [v, i64[7], s, i64[10], i64[11], i64[12], o, *i64[15:]])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic(prefer_literal=True)
def _pack(typingctx, width, src, soff, ld, kg, ncols, dst, doff):
    """Pack one NCHW activation panel (``pack_function``); arrays or addresses, offsets in bytes."""
    w = _literal(width, "width")
    if not (_is_base(src, (types.uint8,)) and _is_base(dst, (types.uint8,))):
        raise TypingError("qgemm pack: buffers must be uint8 arrays or addresses")
    sig = types.none(width, src, soff, ld, kg, ncols, dst, doff)

    def codegen(context, builder, signature, args):
        fn = pack_function(builder.module, w)
        at = signature.args
        i64 = _int64_args(context, builder, args, at)
        s = _address(context, builder, at[1], args[1], i64[2], _I8)
        d = _address(context, builder, at[6], args[6], i64[7], _I8)
        builder.call(fn, [s, i64[3], i64[4], i64[5], d])
        return context.get_dummy_value()

    return sig, codegen


# --------------------------------------------------------------------------- public kernels


def pack_weights(w: np.ndarray) -> np.ndarray:
    """int8 ``w[N, K]`` -> int8 ``[ceil(N/32), ceil(K/4), 32*4]``, the layout both kernels read.

    ``packed[blk, g, 4*c + j] = w[32*blk + c, 4*g + j]`` (zero beyond N or K): per block of 32
    output channels, each k-group of 4 is one contiguous 128-byte line, so the u8s8 kernel loads
    whole vectors of channels and the NCHW kernel broadcasts one channel's 4 bytes. Zero padding
    makes padded K columns contribute nothing whatever the activation pad holds. ISA-independent.
    """
    w = np.asarray(w)
    if w.ndim != 2 or w.dtype != np.int8:
        raise ValueError(f"pack_weights expects int8 [N, K], got {w.dtype} {w.shape}")
    n, k = w.shape
    nblk, kg = -(-n // _NW), -(-k // 4)
    padded = np.zeros((nblk * _NW, kg * 4), np.int8)
    padded[:n, :k] = w
    packed = padded.reshape(nblk, _NW, kg, 4).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed).reshape(nblk, kg, _NW * 4)


def padded_k(k: int) -> int:
    """Row length of the activation buffers the kernels read: K rounded up to a multiple of 4."""
    return -(-k // 4) * 4


# The parallel drivers take raw addresses and strides, not arrays, so each compiles once whatever
# the layout, flags or views of the caller's arrays (a parfor function costs seconds to compile);
# thin per-ISA njit wrappers check the arrays and keep them alive for the call. The tile
# configuration travels as a tuple of integer literals: ``cfg[i]`` stays a compile-time constant
# inside the prange bodies, and one module-level driver serves every ISA and geometry.
# nchw cfg: (isa, lanes, rows, vecs, half_vecs, panel_width, nw, narrow_rows);
# u8s8 cfg: (isa, lanes, rows, vecs, vector_width, nw).

# Work items the NCHW driver aims for: ~8 per thread of the largest pool Numba may use, so that
# static scheduling balances. A frozen constant (get_num_threads() would make the driver
# uncacheable); it only shapes the partition, never the result.
_ITEMS = 8 * config.NUMBA_NUM_THREADS


@njit(cache=True, parallel=True)
def _nchw_driver(cfg: tuple, w: int, b: int, ldb: int, out: int, ldo: int, n: int, p: int, kg: int, x8: int) -> None:
    """One parallel region over (pixel panel, channel chunk) items: each packs its panel into a
    private buffer (hot in L1/L2 for the tiles that follow) and runs its channels' tiles.

    Channels are split into chunks (multiples of the 32-channel block, at least 64 channels where
    N allows) only when there are too few panels for ~8 items per thread; each extra chunk repacks
    its panel (K*PW bytes against >= 64*K*PW multiply-adds).
    """
    pw = cfg[5]
    nw = cfg[6]
    rows = cfg[2]
    npan = (p + pw - 1) // pw
    panel = kg * pw * 4
    nblk = (n + nw - 1) // nw
    want = min(max((_ITEMS + npan - 1) // npan, 1), nblk)  # chunks per panel
    per = max((nblk + want - 1) // want, min(2, nblk)) * nw  # channels per chunk, >= 64 if N allows
    nch = (n + per - 1) // per
    # A last panel at most half full runs a half-width tile instead of computing padding.
    narrow = cfg[4] > 0 and p - (npan - 1) * pw <= cfg[4] * cfg[1]
    for it in prange(npan * nch):
        pi = it // nch
        n_lo = (it - pi * nch) * per
        cols = min(pw, p - pi * pw)
        buf = np.empty(panel, np.uint8)
        _pack(cfg[5], b, pi * pw, ldb, kg, cols, buf, 0)
        if narrow and pi == npan - 1:  # half-width tile with twice the rows: same accumulators
            for n0 in range(n_lo, min(n, n_lo + per), cfg[7]):
                blk = n0 // nw
                soff = (blk * kg * nw + n0 - blk * nw) * 4
                _tile(cfg[0], cfg[1], True, cfg[7], cfg[4], buf, 0, pw * 4, w, soff, 4, nw * 4, kg,
                      out, n0 * ldo + pi * pw, ldo, min(cfg[7], n - n0), cols, x8)
        else:
            for n0 in range(n_lo, min(n, n_lo + per), rows):
                blk = n0 // nw
                soff = (blk * kg * nw + n0 - blk * nw) * 4
                _tile(cfg[0], cfg[1], True, cfg[2], cfg[3], buf, 0, pw * 4, w, soff, 4, nw * 4, kg,
                      out, n0 * ldo + pi * pw, ldo, min(rows, n - n0), cols, x8)


@njit(cache=True, parallel=True)
def _u8s8_driver(cfg: tuple, a: int, lda: int, tail: np.ndarray, w: int, out: int, ldo: int, m: int, n: int,
                 kg: int, x8: int) -> None:
    """Every (row tile, channel tile) pair in parallel. The smaller operand is swept in the inner
    order so it stays cached: row tiles outer when A is the larger (convolution rows), channel
    tiles outer when the weights are (few rows: the weights then stream from memory once).
    ``tail`` is A's last partial row block zero-padded to a full tile (the tile reads all rows)."""
    rows = cfg[2]
    vw = cfg[4]
    nw = cfg[5]
    ntm = (m + rows - 1) // rows
    ntn = (n + vw - 1) // vw
    rows_outer = m >= n
    for it in prange(ntm * ntn):
        if rows_outer:
            ti = it // ntn
            tj = it - ti * ntn
        else:
            tj = it // ntm
            ti = it - tj * ntm
        m0 = ti * rows
        j0 = tj * vw
        blk = j0 // nw
        voff = (blk * kg * nw + j0 - blk * nw) * 4
        if m0 + rows <= m:
            _tile(cfg[0], cfg[1], False, cfg[2], cfg[3], w, voff, nw * 4, a, m0 * lda, lda, 4, kg,
                  out, m0 * ldo + j0, ldo, rows, min(vw, n - j0), x8)
        else:
            _tile(cfg[0], cfg[1], False, cfg[2], cfg[3], w, voff, nw * 4, tail, 0, 4 * kg, 4, kg,
                  out, m0 * ldo + j0, ldo, m - m0, min(vw, n - j0), x8)


class Kernels(NamedTuple):
    """The two GEMM entry points compiled for one ISA."""

    isa: str
    qgemm_u8s8: Callable[..., None]
    qgemm_s8u8_nchw: Callable[..., None]


def kernels_for(isa: str, geometry: str | None = None) -> Kernels:
    """The njit entry points for ``isa`` (runnable if it is in ``supported_isas()``).

    ``geometry`` borrows another ISA's register tiles: ``kernels_for("generic", "avx512vnni")``
    runs the AVX-512 tiling and edge logic on any host, which is how the tests cover it where no
    AVX-512 is available.
    """
    if isa not in ISAS or (geometry or isa) not in ISAS:
        raise ValueError(f"unknown ISA {isa!r}/{geometry!r}; expected one of {ISAS}")
    return _build_kernels(isa, geometry or isa)


@functools.cache
def _build_kernels(isa: str, geometry: str) -> Kernels:
    """One pair of wrappers per (isa, geometry); their closures hold only integers, so Numba's
    cache key (which hashes closure contents) is the same in every process."""
    ct, rt = _TILES[geometry]
    assert _NW % (2 * ct.rows) == 0 and _NW % (rt.lanes * rt.vecs) == 0
    NW = _NW
    CFG_C = (ISAS.index(isa), ct.lanes, ct.rows, ct.vecs, ct.vecs // 2, ct.lanes * ct.vecs, _NW, 2 * ct.rows)
    CFG_R = (ISAS.index(isa), rt.lanes, rt.rows, rt.vecs, rt.lanes * rt.vecs, _NW)

    @njit(cache=True)
    def qgemm_s8u8_nchw(packed_w, b, out, exact8=False):
        n, p = out.shape
        nblk, kg, nw4 = packed_w.shape
        if nw4 != 4 * NW or b.shape[0] != 4 * kg or b.shape[1] != p or n > nblk * NW or n <= (nblk - 1) * NW:
            raise ValueError("qgemm_s8u8_nchw: expected packed_w [ceil(N/32), Kpad/4, 128], b [Kpad, P], out [N, P]")
        if n == 0 or p == 0:
            return
        if not packed_w.flags.c_contiguous:
            raise ValueError("qgemm_s8u8_nchw: packed_w must be C-contiguous")
        if (p > 1 and (b.strides[1] != 1 or out.strides[1] != 4)) or out.strides[0] % 4 != 0:
            raise ValueError("qgemm_s8u8_nchw: b and out need unit column stride")
        _nchw_driver(CFG_C, packed_w.ctypes.data, b.ctypes.data, b.strides[0], out.ctypes.data,
                     out.strides[0] // 4, n, p, kg, 1 if exact8 else 0)

    @njit(cache=True)
    def qgemm_u8s8(a, packed_b, n, k, out, exact8=False):
        m = a.shape[0]
        nblk, kg, nw4 = packed_b.shape
        bad_k = a.shape[1] < 4 * kg or k > 4 * kg or k <= 4 * (kg - 1)
        if nw4 != 4 * NW or bad_k or n > nblk * NW or n <= (nblk - 1) * NW:
            raise ValueError("qgemm_u8s8: expected a [M, Kpad], packed_b [ceil(N/32), Kpad/4, 128]")
        if out.shape[0] != m or out.shape[1] != n:
            raise ValueError("qgemm_u8s8: out must be int32 [M, N]")
        if m == 0 or n == 0:
            return
        if not packed_b.flags.c_contiguous:
            raise ValueError("qgemm_u8s8: packed_b must be C-contiguous")
        if (kg > 0 and a.strides[1] != 1) or (n > 1 and out.strides[1] != 4) or out.strides[0] % 4 != 0:
            raise ValueError("qgemm_u8s8: a and out need unit column stride")
        rows = CFG_R[2]
        full = m - m % rows
        tail = np.zeros((rows if full < m else 0, 4 * kg), np.uint8)
        for r in range(m - full):
            tail[r] = a[full + r, : 4 * kg]
        _u8s8_driver(CFG_R, a.ctypes.data, a.strides[0], tail, packed_b.ctypes.data, out.ctypes.data,
                     out.strides[0] // 4, m, n, kg, 1 if exact8 else 0)

    return Kernels(isa, qgemm_u8s8, qgemm_s8u8_nchw)


_HOST = kernels_for(HOST_ISA)

qgemm_u8s8 = _HOST.qgemm_u8s8
qgemm_u8s8.__doc__ = """qgemm_u8s8(a, packed_b, n, k, out, exact8=False) -> None

``out[m, j] = sum_k a[m, k] * w[j, k]`` exactly in int32, ``w`` being the int8 [n, k] matrix given
to ``pack_weights``. ``a``: uint8 [M, >= padded_k(k)] (columns past k may hold anything: the packed
weights are zero there); ``out``: int32 [M, n]. ``a`` and ``out`` need unit column stride, rows may
be strided (views into bigger buffers). ``exact8=True`` is required on AVX2 when weights use the
full [-128, 127] range (see the module docstring). Shape mismatches raise ValueError."""

qgemm_s8u8_nchw = _HOST.qgemm_s8u8_nchw
qgemm_s8u8_nchw.__doc__ = """qgemm_s8u8_nchw(packed_w, b, out, exact8=False) -> None

``out[j, p] = sum_k w[j, k] * b[k, p]`` exactly in int32 (``w`` as given to ``pack_weights``):
the NCHW convolution form with ``b`` = uint8 im2col columns [padded_k(K), P] (pad rows may hold
anything, e.g. the zero point) and ``out``: int32 [N, P]. ``b`` and ``out`` need unit column
stride, rows may be strided (e.g. ``out`` a channel slice of a concatenated NCHW buffer for one
image). ``exact8`` as for ``qgemm_u8s8``. Shape mismatches raise ValueError."""


@njit(cache=True, parallel=True)
def quantize_u8(x: np.ndarray, inv_scale: float, zero_point: int, out: np.ndarray) -> None:
    """``out[:M, :K] = clip(rint(x * inv_scale) + zero_point, 0, 255)`` in float32, half to even.

    Matches ONNX QuantizeLinear with a multiplication by ``inv_scale`` (float32 arithmetic, as
    ``np.rint(x * np.float32(inv_scale))``). ``out`` may be larger than ``x`` in either dimension,
    which is how the K padding is produced: extra columns for ``qgemm_u8s8``'s ``a`` [M, Kpad],
    extra rows for ``qgemm_s8u8_nchw``'s ``b`` [Kpad, P]; the pad is filled with the zero point
    (any value would do: padded weights are zero). NaN quantizes to 0. Parallel over rows.
    """
    m, k = x.shape
    mo, ko = out.shape
    if mo < m or ko < k:
        raise ValueError("quantize_u8: out must be at least as large as x")
    s = np.float32(inv_scale)
    zf = np.float32(zero_point)
    zp = np.uint8(min(max(zero_point, 0), 255))
    for i in prange(mo):
        if i < m:
            for j in range(k):
                v = np.rint(x[i, j] * s) + zf
                if not v >= np.float32(0.0):  # also NaN: max() would keep it
                    v = np.float32(0.0)
                v = min(v, np.float32(255.0))
                out[i, j] = np.uint8(v)
            for j in range(k, ko):
                out[i, j] = zp
        else:
            for j in range(ko):
                out[i, j] = zp
