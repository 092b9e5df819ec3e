"""The direct convolution kernel: same bits as im2col + sgemm, close to a float64 reference.

Why bits: the lowering may pick either path per layer (`direct_conv.worth_it`), and models must not
change their outputs with that choice; both compute each output as one fma chain over (c, i, j)
ascending, so they must agree exactly (up to the sign of an exact zero: the direct kernel skips
taps whose input row is padding, where im2col adds fma(w, 0, acc)).
"""

from __future__ import annotations

import numpy as np
import pytest

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
    (1, 4, 8, 6, 72, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # 24-column tiles, no ragged end
    (1, 3, 5, 5, 96, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1),  # 24-column tiles, stride 2
    (1, 3, 6, 4, 21, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1),  # one masked 24-column tile (Wo = 21)
]


def test_tile_width_takes_the_wide_tile_where_it_wastes_little() -> None:
    assert [dc.tile_width(wo) for wo in (8, 13, 16, 21, 27, 48, 55, 80, 160)] == [16, 16, 16, 24, 16, 24, 24, 16, 24]


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
    assert not dc.worth_it(32, 64, 3, 3, 2, 40, 40)  # stride 2, many output channels: sgemm wins
    assert not dc.worth_it(32, 32, 1, 1, 1, 80, 80)  # 1x1: a plain gemm wins
