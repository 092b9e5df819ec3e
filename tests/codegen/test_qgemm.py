"""int8 GEMM microkernels: exact against numpy int64 on both orientations, every ISA path reachable
on this host, the AVX-512 tiling through the generic kernel, and the quantizer against numpy."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap

import llvmlite.binding as llb
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from llvmlite import ir

from codegen.cpu import qgemm as q

X86 = llb.get_process_triple().startswith(("x86_64", "amd64"))

# The host kernels, and the generic (plain LLVM vector) kernel run with the AVX-512 geometry
# (16 lanes, 8x2 tiles, 32-pixel panels) so that tiling is exercised on hosts without AVX-512.
KERNELS = [
    pytest.param(("host", None), id=f"host-{q.HOST_ISA}"),
    pytest.param(("generic", "avx512vnni"), id="generic-16lane"),
]


def _kernels(which: tuple[str, str | None]) -> q.Kernels:
    isa, geometry = which
    return q.kernels_for(q.HOST_ISA if isa == "host" else isa, geometry)


def _run(k: q.Kernels, w: np.ndarray, cols: np.ndarray, exact8: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Both orientations for w [N, K] and cols uint8 [Kpad, P]; returns (out [N, P], out2.T [N, P])."""
    n, p = w.shape[0], cols.shape[1]
    packed = q.pack_weights(w)
    out = np.full((n, p), -12345, np.int32)
    k.qgemm_s8u8_nchw(packed, cols, out, exact8)
    out2 = np.full((p, n), -12345, np.int32)
    k.qgemm_u8s8(np.ascontiguousarray(cols.T), packed, n, w.shape[1], out2, exact8)
    return out, out2.T


def _data(seed: int, n: int, k: int, p: int, wlo: int, whi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.integers(wlo, whi + 1, (n, k), dtype=np.int8)
    cols = rng.integers(0, 256, (q.padded_k(k), p), dtype=np.uint8)  # pad rows hold junk: must not matter
    ref = w.astype(np.int64) @ cols[:k].astype(np.int64)
    return w, cols, ref


def test_pack_weights_layout() -> None:
    w = np.random.default_rng(0).integers(-128, 128, (37, 10), dtype=np.int8)
    packed = q.pack_weights(w)
    assert packed.dtype == np.int8 and packed.shape == (2, 3, 128) and packed.flags.c_contiguous
    for n in range(64):
        for kk in range(12):
            want = w[n, kk] if n < 37 and kk < 10 else 0
            assert packed[n // 32, kk // 4, 4 * (n % 32) + kk % 4] == want
    assert np.array_equal(q.pack_weights(w), packed)
    with pytest.raises(ValueError):
        q.pack_weights(w.astype(np.int16))


@pytest.mark.parametrize("which", KERNELS)
@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 80),
    k=st.integers(1, 300),
    p=st.integers(1, 80),
    seed=st.integers(0, 2**32 - 1),
)
@example(n=1, k=1, p=1, seed=0)
@example(n=33, k=577, p=49, seed=1)  # K not a multiple of 4 or 32, N past a 32-block, narrow tail
@example(n=64, k=36, p=16, seed=2)  # exact tiles
@example(n=5, k=9, p=33, seed=3)
@example(n=150, k=40, p=20, seed=4)  # few panels: the NCHW driver splits channels into chunks
def test_exact_7bit(which: tuple[str, str | None], n: int, k: int, p: int, seed: int) -> None:
    """The default (reduce_range) weights in [-64, 63] are exact on every path without exact8."""
    w, cols, ref = _data(seed, n, k, p, -64, 63)
    out, out2 = _run(_kernels(which), w, cols)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out2, ref)


@pytest.mark.parametrize("which", KERNELS)
@settings(max_examples=10, deadline=None)
@given(n=st.integers(1, 70), k=st.integers(1, 200), p=st.integers(1, 70), seed=st.integers(0, 2**32 - 1))
@example(n=40, k=131, p=20, seed=0)
def test_exact_full_range_with_exact8(which: tuple[str, str | None], n: int, k: int, p: int, seed: int) -> None:
    w, cols, ref = _data(seed, n, k, p, -128, 127)
    out, out2 = _run(_kernels(which), w, cols, exact8=True)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(out2, ref)


@pytest.mark.parametrize("which", KERNELS)
@pytest.mark.parametrize(
    ("a", "wv", "exact8"),
    [(255, 63, False), (255, -64, False), (255, -128, True), (255, 127, True), (0, -128, True)],
)
@pytest.mark.parametrize(("n", "k", "p"), [(33, 579, 49), (1, 4608, 1), (64, 64, 24)])
def test_extremes(which: tuple[str, str | None], a: int, wv: int, exact8: bool, n: int, k: int, p: int) -> None:
    w = np.full((n, k), wv, np.int8)
    cols = np.full((q.padded_k(k), p), a, np.uint8)
    out, out2 = _run(_kernels(which), w, cols, exact8)
    assert np.all(out == k * a * wv) and np.all(out2 == k * a * wv)


@pytest.mark.skipif("avx2" not in q.supported_isas(), reason="no AVX2")
def test_avx2_path_and_its_saturation() -> None:
    """The AVX2 kernels (also where a VNNI path is preferred), and why exact8 exists there:
    255*-128 + 255*-128 = -65280 saturates to -32768 per byte pair in vpmaddubsw."""
    avx2 = q.kernels_for("avx2")
    w, cols, ref = _data(11, 45, 203, 37, -64, 63)
    for got in _run(avx2, w, cols):
        np.testing.assert_array_equal(got, ref)
    k = 64
    w = np.full((8, k), -128, np.int8)
    cols = np.full((k, 16), 255, np.uint8)
    out, out2 = _run(avx2, w, cols, exact8=False)
    assert np.all(out == (k // 2) * -32768) and np.all(out2 == (k // 2) * -32768)
    out, out2 = _run(avx2, w, cols, exact8=True)
    assert np.all(out == k * 255 * -128) and np.all(out2 == k * 255 * -128)


def test_public_kernels_are_the_host_ones() -> None:
    assert q.HOST_ISA == q.supported_isas()[-1]
    assert q.qgemm_u8s8 is q.kernels_for(q.HOST_ISA).qgemm_u8s8
    assert q.qgemm_s8u8_nchw is q.kernels_for(q.HOST_ISA).qgemm_s8u8_nchw
    w, cols, ref = _data(7, 19, 50, 21, -64, 63)
    out = np.empty((19, 21), np.int32)
    q.qgemm_s8u8_nchw(q.pack_weights(w), cols, out)  # default exact8
    np.testing.assert_array_equal(out, ref)
    out2 = np.empty((21, 19), np.int32)
    q.qgemm_u8s8(np.ascontiguousarray(cols.T), q.pack_weights(w), 19, 50, out2)
    np.testing.assert_array_equal(out2.T, ref)


def test_strided_views_and_empty() -> None:
    """Row-strided inputs/outputs (views into bigger buffers) work; nothing outside is written."""
    w, cols, ref = _data(3, 20, 30, 25, -64, 63)
    packed = q.pack_weights(w)
    big_cols = np.zeros((32, 40), np.uint8)
    big_cols[:, 5:30] = cols
    big_out = np.full((24, 40), 7, np.int32)
    q.qgemm_s8u8_nchw(packed, big_cols[:, 5:30], big_out[2:22, 9:34])
    np.testing.assert_array_equal(big_out[2:22, 9:34], ref)
    mask = np.ones(big_out.shape, bool)
    mask[2:22, 9:34] = False
    assert np.all(big_out[mask] == 7)
    big_a = np.zeros((25, 50), np.uint8)
    big_a[:, :32] = cols.T
    big_out2 = np.full((25, 30), 7, np.int32)
    q.qgemm_u8s8(big_a, packed, 20, 30, big_out2[:, 4:24])
    np.testing.assert_array_equal(big_out2[:, 4:24].T, ref)
    assert np.all(big_out2[:, :4] == 7) and np.all(big_out2[:, 24:] == 7)
    out = np.empty((20, 0), np.int32)
    q.qgemm_s8u8_nchw(packed, np.zeros((32, 0), np.uint8), out)
    out2 = np.empty((0, 20), np.int32)
    q.qgemm_u8s8(np.zeros((0, 32), np.uint8), packed, 20, 30, out2)


def test_shape_mismatch_raises() -> None:
    packed = q.pack_weights(np.ones((20, 30), np.int8))
    with pytest.raises(ValueError):
        q.qgemm_s8u8_nchw(packed, np.zeros((28, 5), np.uint8), np.empty((20, 5), np.int32))  # Kpad 28 != 32
    with pytest.raises(ValueError):
        q.qgemm_s8u8_nchw(packed, np.zeros((32, 5), np.uint8), np.empty((40, 5), np.int32))  # N > packed
    with pytest.raises(ValueError):
        q.qgemm_u8s8(np.zeros((5, 32), np.uint8), packed, 20, 30, np.empty((5, 21), np.int32))
    with pytest.raises(ValueError):
        q.qgemm_u8s8(np.zeros((5, 32), np.uint8), packed, 20, 26, np.empty((5, 20), np.int32))  # k vs Kpad


def test_quantize_matches_numpy() -> None:
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((13, 37)) * 40).astype(np.float32)
    x[0, :8] = [0.5, 1.5, 2.5, -0.5, -1.5, 1e9, -1e9, 127.5]  # ties to even, saturation
    x[1, 0] = np.nan
    inv, zp = np.float32(1.0), 128
    out = np.full((15, 40), 1, np.uint8)
    q.quantize_u8(x, inv, zp, out)
    ref = np.clip(np.rint(x * inv) + zp, 0, 255)
    ref[1, 0] = 0  # NaN -> 0, documented
    np.testing.assert_array_equal(out[:13, :37], ref.astype(np.uint8))
    assert np.all(out[13:] == zp) and np.all(out[:, 37:] == zp)
    inv2 = np.float32(1 / 0.37)
    out2 = np.empty((13, 40), np.uint8)
    q.quantize_u8(x, inv2, 3, out2)
    ref2 = np.clip(np.rint(x * inv2) + 3, 0, 255)
    ref2[1, 0] = 0
    np.testing.assert_array_equal(out2[:, :37], ref2.astype(np.uint8))
    with pytest.raises(ValueError):
        q.quantize_u8(x, inv, zp, np.empty((13, 36), np.uint8))


def test_quantized_conv_with_zero_point() -> None:
    """The caller's zero-point correction: sum((a - zx) * w) = acc - zx * rowsum(w)."""
    rng = np.random.default_rng(9)
    k, p, n, zx = 27, 30, 8, 77
    x = rng.uniform(-1, 2, (k, p)).astype(np.float32)
    w = rng.integers(-64, 64, (n, k), dtype=np.int8)
    cols = np.empty((q.padded_k(k), p), np.uint8)
    q.quantize_u8(x, np.float32(80.0), zx, cols)
    acc = np.empty((n, p), np.int32)
    q.qgemm_s8u8_nchw(q.pack_weights(w), cols, acc)
    got = acc - zx * w.astype(np.int32).sum(axis=1, keepdims=True)
    want = w.astype(np.int64) @ (cols[:k].astype(np.int64) - zx)
    np.testing.assert_array_equal(got, want)


@pytest.mark.skipif(not X86, reason="x86 ISA selection")
def test_isa_selection_from_features() -> None:
    assert q.supported_isas(frozenset({"sse4.2", "fma"})) == ("generic",)
    assert q.supported_isas(frozenset({"avx2", "fma"})) == ("generic", "avx2")
    assert q.supported_isas(frozenset({"avx2", "avxvnni"})) == ("generic", "avx2", "avxvnni")
    avx512 = frozenset({"avx2", "avx512f", "avx512bw", "avx512vl", "avx512vnni"})
    assert q.supported_isas(avx512)[-1] == "avx512vnni"
    assert q.supported_isas(avx512 - {"avx512vnni"})[-1] == "avx2"


@pytest.mark.skipif(not X86 or q.HOST_ISA == "generic", reason="no x86 dot-product instructions")
def test_host_tile_uses_dot_instructions() -> None:
    """The host microkernel's hot loop is built on the ISA's integer dot-product instruction."""
    asm = _tile_asm(q.HOST_ISA, llb.get_host_cpu_name(), llb.get_host_cpu_features().flatten())
    mnemonic = "vpmaddubsw" if q.HOST_ISA == "avx2" else "vpdpbusd"
    assert asm.count(mnemonic) >= 8  # at least one per accumulator of the smallest tile
    if q.HOST_ISA == "avx2":
        assert "vpmaddwd" in asm
    else:
        assert "vpmaddubsw" not in asm


def test_fresh_process_thread_pool_and_vnni_codegen() -> None:
    """In a fresh process: importing qgemm starts Numba's thread pool (cached callers of the
    parallel drivers segfault without it, numba #8578), and on x86 the VNNI tiles, which cannot
    run here, select vpdpbusd for CPUs that have it (isolated: an LLVM selection failure aborts)."""
    code = "\n".join([
        "import sys",
        f"sys.path[:0] = {sys.path!r}",
        "import numba",
        "import llvmlite.binding as llb",
        "from llvmlite import ir",
        "from codegen.cpu import qgemm as q",
        "numba.threading_layer()  # raises ValueError if the pool was never started",
        inspect.getsource(_tile_asm),
        textwrap.dedent(
            f"""
            for isa, cpu in (("avx512vnni", "sapphirerapids"), ("avx512vnni", "znver4"), ("avxvnni", "alderlake")):
                if not {X86}:
                    break
                asm = _tile_asm(isa, cpu, "")
                assert asm.count("vpdpbusd") >= 16 and "vpmaddubsw" not in asm, (isa, cpu)
                assert ("zmm" in asm) == (isa == "avx512vnni"), (isa, cpu)
            print("ok")
            """
        ),
    ])
    res = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]


def _tile_asm(isa: str, cpu: str, features: str) -> str:
    """Assembly of both orientations' microkernels for ``isa`` compiled for ``cpu``."""
    llb.initialize_native_target()
    llb.initialize_native_asmprinter()
    module = ir.Module("qgemm_test")
    module.triple = llb.get_process_triple()
    nchw, rows = q._TILES[isa]
    for u_is_vector, tile in ((True, nchw), (False, rows)):
        q.tile_function(module, isa, u_is_vector, tile).linkage = ""  # keep: no callers here
    mod = llb.parse_assembly(str(module))
    mod.verify()
    tm = llb.Target.from_triple(module.triple).create_target_machine(cpu=cpu, features=features, opt=3)
    pb = llb.create_pass_builder(tm, llb.create_pipeline_tuning_options(speed_level=3))
    pb.getModulePassManager().run(mod, pb)
    return tm.emit_assembly(mod)
