"""The float32 GEMM of the CPU target: accuracy, and the per-element fma-order contract.

The contract (see codegen/cpu/sgemm.py): c[i, j] = fma chain over k ascending from +0, whatever
the element's position, the call's shape, the path (packed A or not, small M, narrow last panel),
the ISA and the thread count. The oracle for the bits is a scalar Numba loop over llvm.fma.f32.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads its BLAS

import numba
import numpy as np
import pytest
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from codegen.cpu.sgemm import (
    HOST_ISA,
    ISAS,
    MR,
    SMALL_M,
    build,
    pack_a,
    packed_a_shape,
    sgemm,
    sgemm_packed_a,
)


@intrinsic
def _fma32(typingctx, x, y, z):  # type: ignore[no-untyped-def]
    """float32 fma(x, y, z) with one rounding (llvm.fma.f32), independent of the code under test."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        f32 = ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fma.f32")
        return builder.call(fn, list(args))

    return sig, codegen


@njit(cache=True)
def _fma_scalar(x, y, z):  # type: ignore[no-untyped-def]
    return _fma32(x, y, z)


@njit(cache=True)
def _reference(a, b):  # type: ignore[no-untyped-def]
    """The contract spelled out: acc = +0; acc = fma(a[i, k], b[k, j], acc) for k ascending."""
    m, k = a.shape
    n = b.shape[1]
    c = np.empty((m, n), np.float32)
    for i in range(m):
        for j in range(n):
            acc = np.float32(0.0)
            for kk in range(k):
                acc = _fma32(a[i, kk], b[kk, j], acc)
            c[i, j] = acc
    return c


@njit(cache=True)
def _batched(pa, m, k, x, y):  # type: ignore[no-untyped-def]
    """Calls from nopython code, as generated kernels do: y[i] = A @ x[i] with A packed once."""
    for i in range(x.shape[0]):
        sgemm_packed_a(pa, m, k, x[i], y[i])


@njit(cache=True)
def _batched_plain(a, x, y):  # type: ignore[no-untyped-def]
    for i in range(x.shape[0]):
        sgemm(a, x[i], y[i])


@njit(parallel=True, cache=True)
def _nested(a, x, y):  # type: ignore[no-untyped-def]
    for i in prange(x.shape[0]):
        sgemm(a, x[i], y[i])


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    c = np.full((a.shape[0], b.shape[1]), np.nan, np.float32)
    sgemm(a, b, c)
    return c


def _run_packed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    c = np.full((a.shape[0], b.shape[1]), np.nan, np.float32)
    sgemm_packed_a(pack_a(a), a.shape[0], a.shape[1], b, c)
    return c


# M, K, N: 1s, the M <= 4 streaming path, tiles and panels with ragged edges, a last panel of at
# most one vector (narrow tile), N = 1, K across the K block, K = 0.
SHAPES = [
    (1, 1, 1), (1, 7, 1), (1, 600, 37), (2, 1, 9), (3, 515, 1001), (4, 33, 8), (5, 13, 3),
    (6, 16, 16), (7, 600, 50), (13, 1025, 33), (64, 27, 200), (100, 3, 1), (37, 515, 161),
    (130, 70, 8), (97, 1100, 49), (19, 0, 5),
]


def test_reference_is_a_fused_multiply_add() -> None:
    x = np.float32(1 + 2.0**-12)
    # x*x = 1 + 2^-11 + 2^-24: rounded first it cancels to 0; fused it leaves 2^-24.
    assert _fma_scalar(x, x, np.float32(-(1 + 2.0**-11))) == np.float32(2.0**-24)
    assert np.float32(x * x) - np.float32(1 + 2.0**-11) == 0


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matches_float64(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m * 10007 + k * 101 + n)
    a, b = _rand(rng, m, k), _rand(rng, k, n)
    c = _run(a, b)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
    assert np.all(np.abs(c - exact) <= 1e-5 * scale + 1e-30)
    np.testing.assert_array_equal(_run_packed(a, b), c)


@pytest.mark.parametrize("m,k,n", [(1, 600, 37), (2, 70, 1001), (3, 9, 20), (4, 515, 3), (5, 700, 41),
                                   (13, 1030, 19), (31, 9, 70), (50, 1100, 40), (25, 40, 8)])
def test_bits_equal_scalar_fma_chain(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(m + 7 * k + 13 * n)
    a, b = _rand(rng, m, k), _rand(rng, k, n)
    ref = _reference(a, b)
    np.testing.assert_array_equal(_run(a, b), ref)
    np.testing.assert_array_equal(_run_packed(a, b), ref)


@pytest.mark.parametrize("m,k,n", [(1000, 512, 169), (301, 700, 49), (4, 64, 1001)])
def test_equal_rows_and_columns_give_equal_bits(m: int, k: int, n: int) -> None:
    rng = np.random.default_rng(1)
    a = np.repeat(_rand(rng, 1, k), m, axis=0)
    b = _rand(rng, k, n)
    for c in (_run(a, b), _run_packed(a, b)):
        assert all(np.array_equal(c[i], c[0]) for i in range(m))
    a = _rand(rng, m, k)
    b = np.repeat(_rand(rng, k, 1), n, axis=1)
    for c in (_run(a, b), _run_packed(a, b)):
        assert all(np.array_equal(c[:, j], c[:, 0]) for j in range(n))


def test_result_does_not_depend_on_position_or_call_shape() -> None:
    rng = np.random.default_rng(2)
    m, k, n = 59, 1030, 77
    a, b = _rand(rng, m, k), _rand(rng, k, n)
    full = _run(a, b)
    for i0, i1 in [(0, 1), (5, 7), (10, 13), (20, 24), (30, 35), (1, 59), (52, 59)]:
        np.testing.assert_array_equal(_run(a[i0:i1], b), full[i0:i1])
        np.testing.assert_array_equal(_run_packed(a[i0:i1], b), full[i0:i1])
    for j0, j1 in [(0, 1), (3, 11), (16, 33), (40, 77), (70, 77)]:
        np.testing.assert_array_equal(_run(a, b[:, j0:j1]), full[:, j0:j1])
    perm = rng.permutation(m)
    np.testing.assert_array_equal(_run(a[perm], b), full[perm])
    np.testing.assert_array_equal(_run_packed(a[perm], b), full[perm])


def test_thread_count_does_not_change_bits() -> None:
    rng = np.random.default_rng(3)
    cases = [(_rand(rng, 200, 700), _rand(rng, 700, 300)), (_rand(rng, 1, 300), _rand(rng, 300, 500))]
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = [_run(a, b) for a, b in cases]
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        multi = [_run(a, b) for a, b in cases]
    finally:
        numba.set_num_threads(old)
    for s, t in zip(single, multi):
        np.testing.assert_array_equal(s, t)


@pytest.mark.parametrize("isa", [i for i in ISAS if i != HOST_ISA])
def test_every_isa_path_gives_the_same_bits(isa: str) -> None:
    # Any ISA's kernels compile for any x86/LLVM target (wider vectors are split), so all paths run
    # here; they must agree bit for bit with the host's.
    gemm = build(isa)
    mr = {"generic": 6, "avx2": 6, "avx512": 12}[isa]
    rng = np.random.default_rng(4)
    for m, k, n in [(3, 600, 45), (29, 530, 70), (40, 20, 12), (17, 9, 35)]:
        a, b = _rand(rng, m, k), _rand(rng, k, n)
        c = np.full((m, n), np.nan, np.float32)
        gemm(a, np.int64(k), np.int64(mr * k), np.int64(1), m, k, b, c)
        np.testing.assert_array_equal(c, _run(a, b))


def test_pack_a_layout() -> None:
    rng = np.random.default_rng(5)
    m, k = 2 * MR + 3, 5
    a = _rand(rng, m, k)
    pa = pack_a(a)
    assert pa.shape == packed_a_shape(m, k) == (3, k, MR)
    assert pa.dtype == np.float32 and pa.flags.c_contiguous
    for t in range(3):
        for r in range(MR):
            i = t * MR + r
            np.testing.assert_array_equal(pa[t, :, r], a[i] if i < m else np.zeros(k, np.float32))
    np.testing.assert_array_equal(pack_a(a.copy()), pa)
    np.testing.assert_array_equal(pack_a(np.asfortranarray(a)), pa)
    with pytest.raises(ValueError):
        pack_a(a.astype(np.float64))


def test_views_and_strided_output() -> None:
    rng = np.random.default_rng(6)
    big_a = _rand(rng, 50, 300)
    b = _rand(rng, 300, 45)
    a = big_a[7:40]
    out = np.full((60, 70), -7.0, np.float32)
    c = out[5:38, 11:56]  # row stride 70 > N, unit column stride
    sgemm(a, b, c)
    np.testing.assert_array_equal(c, _run(np.ascontiguousarray(a), b))
    mask = np.ones(out.shape, bool)
    mask[5:38, 11:56] = False
    assert np.all(out[mask] == -7.0)  # edge tiles write nothing outside C


def test_callable_from_nopython_code() -> None:
    rng = np.random.default_rng(7)
    a, x = _rand(rng, 20, 33), _rand(rng, 3, 33, 17)
    y = np.empty((3, 20, 17), np.float32)
    _batched(pack_a(a), 20, 33, x, y)
    y2 = np.empty_like(y)
    _batched_plain(a, x, y2)
    for i in range(3):
        np.testing.assert_array_equal(y[i], _run(a, x[i]))
    np.testing.assert_array_equal(y2, y)


def test_nested_in_a_parallel_region() -> None:
    rng = np.random.default_rng(8)
    a, x = _rand(rng, 30, 40), _rand(rng, 4, 40, 50)
    y = np.empty((4, 30, 50), np.float32)
    if numba.config.THREADING_LAYER == "workqueue":
        pytest.skip("the workqueue threading layer cannot nest parallel regions")
    _nested(a, x, y)
    for i in range(4):
        np.testing.assert_array_equal(y[i], _run(a, x[i]))


def test_degenerate_shapes_and_errors() -> None:
    c = np.full((3, 4), np.nan, np.float32)
    sgemm(np.empty((3, 0), np.float32), np.empty((0, 4), np.float32), c)
    assert np.all(c == 0) and not np.any(np.signbit(c))
    sgemm(np.empty((0, 5), np.float32), np.ones((5, 4), np.float32), np.empty((0, 4), np.float32))
    with pytest.raises(ValueError):
        sgemm(np.ones((3, 5), np.float32), np.ones((4, 4), np.float32), c)
    with pytest.raises(ValueError):
        sgemm(np.ones((3, 5), np.float32), np.ones((5, 8), np.float32)[:, ::2], c)
    with pytest.raises(ValueError):
        sgemm_packed_a(pack_a(np.ones((3, 5), np.float32)), 3, 6, np.ones((6, 4), np.float32), c)


def test_small_m_threshold_covers_batch_one() -> None:
    assert SMALL_M >= 1  # M = 1 (batch-1 Gemm) takes the streaming path tested above
    rng = np.random.default_rng(9)
    a, b = _rand(rng, 1, 2048), _rand(rng, 2048, 1000)
    np.testing.assert_array_equal(_run(a, b), _reference(a, b))
