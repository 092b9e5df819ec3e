"""The direct convolution kernel: same bits as im2col + sgemm, close to a float64 reference.

Why bits: the lowering may pick either path per layer (`direct_conv.worth_it`), and models must not
change their outputs with that choice; both compute each output as one fma chain over (c, i, j)
ascending, so they must agree exactly (up to the sign of an exact zero: the direct kernel skips
taps whose input row is padding, where im2col adds fma(w, 0, acc)).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codegen.cpu import direct_conv as dc
from codegen.cpu.kernels import conv2d
from codegen.cpu.sgemm import pack_a

# (N, Cin, Cout, H, W, kh, kw, sh, sw, ph_begin, pw_begin, ph_end, pw_end, dh, dw)
CASES = [
    (1, 3, 8, 20, 20, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # stride 1, same pads
    (1, 5, 7, 13, 37, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),  # stride 2, Cout % 4, W % 8
    (1, 3, 6, 24, 61, 3, 3, 2, 2, 0, 0, 1, 1, 1, 1),  # stride 2, asymmetric (end-only) pads
    (2, 4, 9, 11, 29, 5, 5, 1, 1, 2, 2, 2, 2, 2, 2),  # 5x5, dilation 2, batch 2
    (1, 3, 5, 9, 40, 1, 7, 1, 1, 0, 3, 0, 3, 1, 1),  # 1x7
    (1, 6, 4, 7, 50, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1),  # 1x1, no pads
    (1, 4, 3, 10, 35, 3, 3, 1, 1, 0, 2, 2, 0, 1, 1),  # asymmetric pads both ways
    (1, 3, 5, 12, 45, 3, 3, 3, 3, 1, 1, 1, 1, 1, 1),  # stride 3 (gathers)
    (1, 2, 3, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # 1x1 image
    (1, 2, 5, 2, 3, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # 2x3 image
    (1, 16, 16, 20, 40, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # parallel path (> PARALLEL_MIN MACs)
    (1, 8, 12, 21, 66, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),  # parallel, stride 2
    (1, 32, 8, 6, 72, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # 24-column tiles, no ragged end
    (1, 32, 5, 5, 96, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),  # 24-column tiles, stride 2
    (1, 3, 6, 4, 21, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # one masked 24-column tile (Wo = 21)
    (1, 32, 5, 4, 55, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # 24, 24 and a shifted 8-column tail over 2 blocks
    (1, 32, 9, 5, 57, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # 24, 24 and a shifted 16-column tail
    (1, 32, 3, 4, 45, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # 24 and a shifted 24-column tail, one block
    (1, 4, 3, 6, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # one masked 8-column tile, one channel block
    (1, 32, 6, 5, 52, 1, 5, 1, 1, 0, 2, 0, 2, 1, 1),  # 1x5: 8-column tail without the kw=3 unroll
    (1, 32, 7, 9, 38, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),  # stride 2, Wo = 19: masked 24-column tile
    (1, 3, 16, 30, 60, 7, 7, 2, 2, 3, 3, 3, 3, 1, 1),  # 7x7 stride 2 (ResNet's stem), parallel
]


def test_tile_width_takes_the_wide_tile_where_it_finishes_the_row_sooner() -> None:
    wos = (8, 13, 16, 21, 27, 48, 55, 80, 160)
    # 16 input channels: the wide tile is no faster per column, so only where it wastes less
    assert [dc.tile_width(wo, 16) for wo in wos] == [16, 16, 16, 24, 16, 16, 16, 16, 16]
    # 64: 0.94 of the time per column; 55 = 24 + 24 + an 8-column tail (56 columns, not 72)
    assert [dc.tile_width(wo, 64) for wo in wos] == [16, 16, 16, 24, 16, 24, 24, 24, 24]


def _out(h: int, k: int, s: int, p0: int, p1: int, d: int) -> int:
    return (h + p0 + p1 - d * (k - 1) - 1) // s + 1


def _im2col(x: np.ndarray, w: np.ndarray, geo: tuple[int, ...], ho: int, wo: int) -> np.ndarray:
    """The current lowering's path (as `rules.conv` calls it)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geo
    n, c = x.shape[:2]
    co = w.shape[0]
    wm = np.stack([pack_a(np.ascontiguousarray(w.reshape(co, -1)))])
    cols = np.empty((c * kh * kw, ho * wo), np.float32)
    y = np.empty((n, co, ho * wo), np.float32)
    conv2d(x, wm, cols, y, kh, kw, sh, sw, ph, pw, dh, dw, 1, wo)
    return y.reshape(n, co, ho, wo)


def _reference(x: np.ndarray, w: np.ndarray, geo: tuple[int, ...], ho: int, wo: int) -> np.ndarray:
    """float64 cross-correlation by explicit zero padding (independent of both kernels)."""
    kh, kw, sh, sw, ph, pw, dh, dw = geo
    n, c, h, wd = x.shape
    xp = np.zeros((n, c, h + ph + dh * kh + sh * ho, wd + pw + dw * kw + sw * wo))
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, w.shape[0], ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + sh * ho:sh, j * dw:j * dw + sw * wo:sw]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.float64))
    return y


def _run(case: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, c, co, h, wd, kh, kw, sh, sw, ph, pw, ph1, pw1, dh, dw = case
    ho, wo = _out(h, kh, sh, ph, ph1, dh), _out(wd, kw, sw, pw, pw1, dw)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((co, c, kh, kw)).astype(np.float32)
    geo = (kh, kw, sh, sw, ph, pw, dh, dw)
    y = np.full((n, co, ho, wo), np.nan, np.float32)  # NaN: any element left unwritten shows
    dc.conv2d_direct(x, dc.pack(w), y, *geo)
    return y, _im2col(x, w, geo, ho, wo), _reference(x, w, geo, ho, wo)


@pytest.mark.parametrize("case", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_same_bits_as_im2col(case: tuple[int, ...]) -> None:
    y, y_im2col, _ = _run(case)
    assert y.shape == y_im2col.shape
    # + 0.0 turns -0.0 into +0.0: the only difference allowed (see module docstring)
    assert np.array_equal(y + np.float32(0), y_im2col + np.float32(0))


@pytest.mark.parametrize("case", CASES, ids=[f"c{i}" for i in range(len(CASES))])
def test_close_to_float64(case: tuple[int, ...]) -> None:
    y, _, ref = _run(case, seed=1)
    scale = np.abs(ref).max() + 1e-30
    assert np.all(np.isfinite(y))
    assert np.abs(y - ref).max() <= 1e-5 * scale


def test_pack_layout() -> None:
    w = np.arange(6 * 2 * 3 * 3, dtype=np.float32).reshape(6, 2, 3, 3)
    p = dc.pack(w)
    assert p.shape == dc.packed_shape(6, 2, 3, 3) == (2, 2, 3, 3, dc.CB)
    assert p.flags.c_contiguous
    assert p[1, 1, 2, 0, 1] == w[dc.CB + 1, 1, 2, 0]
    assert np.all(p[1, :, :, :, 6 - dc.CB:] == 0)  # padded channels are zero


def test_rejects_wrong_packing() -> None:
    x = np.zeros((1, 3, 5, 5), np.float32)
    y = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError):
        dc.conv2d_direct(x, dc.pack(np.zeros((4, 2, 3, 3), np.float32)), y, 3, 3, 1, 1, 1, 1, 1, 1)


def test_detects_a_wrong_weight() -> None:
    """The equality check is sharp: one changed weight changes the outputs."""
    case = CASES[1]
    n, c, co, h, wd, kh, kw, sh, sw, ph, pw, ph1, pw1, dh, dw = case
    ho, wo = _out(h, kh, sh, ph, ph1, dh), _out(wd, kw, sw, pw, pw1, dw)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, wd)).astype(np.float32)
    w = rng.standard_normal((co, c, kh, kw)).astype(np.float32)
    geo = (kh, kw, sh, sw, ph, pw, dh, dw)
    w2 = w.copy()
    w2[co - 1, c - 1, kh - 1, kw - 1] += 1e-3
    y = np.empty((n, co, ho, wo), np.float32)
    dc.conv2d_direct(x, dc.pack(w2), y, *geo)
    assert not np.array_equal(y, _im2col(x, w, geo, ho, wo))


def test_worth_it_rule() -> None:
    assert dc.worth_it(16, 16, 3, 3, 1, 80, 80) is True
    assert dc.worth_it(8, 16, 3, 3, 2, 80, 80) is True
    assert dc.worth_it(3, 64, 7, 7, 2, 112, 112) is True  # ResNet's stem
    assert not dc.worth_it(512, 512, 3, 3, 2, 7, 7)  # under 10x10: too few rows, im2col is cheap
    assert not dc.worth_it(32, 32, 1, 1, 1, 80, 80)  # 1x1: a plain gemm wins
    assert not dc.worth_it(8, 8, 3, 3, 3, 40, 40)  # stride 3: not measured, im2col


@pytest.mark.parametrize("clamp", [(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-1.0, 0.5)],
                         ids=["none", "relu", "relu6", "clip"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "nobias"])
def test_epilogue_has_the_bits_of_the_unfused_add_and_clamp(clamp: tuple[float, float], with_bias: bool) -> None:
    """conv2d_direct_ep = np.minimum(np.maximum(conv + bias, lo), hi) in float32, bit for bit
    (what the elementwise kernel computes after an unfused conv), NaN kept, -0 kept by max."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 8, 14, 27)).astype(np.float32)
    x[0, 2, 5, 7] = np.nan  # reaches 9 outputs per channel
    w = rng.standard_normal((10, 8, 3, 3)).astype(np.float32)
    geo = (3, 3, 1, 1, 1, 1, 1, 1)
    plain = np.empty((1, 10, 14, 27), np.float32)
    dc.conv2d_direct(x, dc.pack(w), plain, *geo)
    bias = rng.standard_normal(10).astype(np.float32) if with_bias else np.zeros(0, np.float32)
    lo, hi = np.float32(clamp[0]), np.float32(clamp[1])
    expect = plain + bias.reshape(10, 1, 1) if with_bias else plain.copy()
    expect = np.minimum(np.maximum(expect, lo), hi)
    y = np.full_like(plain, -7.0)
    dc.conv2d_direct_ep(x, dc.pack(w), bias, np.array([lo, hi], np.float32), y, *geo)
    assert np.isnan(y).sum() == np.isnan(expect).sum() == 90
    np.testing.assert_array_equal(y.view(np.uint32), expect.view(np.uint32))


def test_epilogue_rejects_a_bias_of_the_wrong_length() -> None:
    x = np.zeros((1, 2, 12, 12), np.float32)
    w = np.zeros((4, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="bias"):
        dc.conv2d_direct_ep(x, dc.pack(w), np.zeros(3, np.float32), np.zeros(2, np.float32),
                            np.empty((1, 4, 12, 12), np.float32), 3, 3, 1, 1, 1, 1, 1, 1)


@settings(max_examples=200, deadline=None)
@given(ho=st.integers(1, 240), ncb=st.integers(1, 128), threads=st.integers(1, 16), cin=st.integers(1, 512),
       wo=st.integers(1, 240))
def test_partition_covers_the_layer_within_the_buffer_bound(ho: int, ncb: int, threads: int, cin: int,
                                                            wo: int) -> None:
    """Work items tile every (row, channel block) once, and copy at most BUFFER_MAX bytes of
    input rows unless they hold a single output row."""
    row_bytes = 4 * cin * (wo + 26)
    pr, pc = dc._partition(1, ho, ncb, threads, dc.CB * wo * cin * 9, 64 * cin * (wo + 26), 1, 3, row_bytes)
    assert 1 <= pr <= ho and 1 <= pc <= ncb
    assert pr == 1 or (pr + 2) * row_bytes <= dc.BUFFER_MAX


def test_partition_balances_small_images_on_two_threads() -> None:
    """13 rows x 64 channel blocks (SqueezeNet's last 3x3s): an even number of equal items, where
    blocks of rows alone gave one thread 8 rows and the other 5."""
    pr, pc = dc._partition(1, 13, 64, 2, dc.CB * 13 * 64 * 9, 64 * 64 * 19, 1, 3, 4 * 64 * 19)
    items = -(-13 // pr) * -(-64 // pc)
    assert items % 2 == 0 and 13 % pr == 0 and 64 % pc == 0
