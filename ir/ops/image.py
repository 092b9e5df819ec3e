"""Image ops: Resize, Upsample, GridSample, AffineGrid, RoiAlign.

Resize is separable: each resized axis is processed on its own by three small steps,
(1) map output indices to source coordinates (`_source_coords`, one function per
coordinate_transformation_mode), (2) turn coordinates into gather indices and weights
(`_nearest_index` or `_filter_taps` for the linear/cubic kernels, antialiased or not), and
(3) gather along the axis and sum the weighted taps (`_apply_taps`). Everything is vectorized
over whole axes; no Python loop runs per pixel.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..types import Dim, TensorType, ValueType
from .core import Attr, InferContext, Kind, defop


# ---------------------------------------------------------------------------------------------
# Shared helpers: precision and casting back.


def _work_dtype(dt: np.dtype) -> np.dtype:
    """Interpolation arithmetic: float64 for double inputs, float32 for everything else."""
    return np.dtype(np.float64) if dt == np.float64 else np.dtype(np.float32)


def _cast_back(y: np.ndarray, dt: np.dtype) -> np.ndarray:
    """Cast interpolated values to the input type: integers round to nearest and saturate."""
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return np.clip(np.rint(y), info.min, info.max).astype(dt)
    if dt == np.bool_:
        return y != 0
    return y.astype(dt, copy=False)


def _keys_kernel(a: float) -> Callable[[np.ndarray], np.ndarray]:
    """Keys' cubic convolution kernel with coefficient `a` (support |t| < 2)."""

    def k(t: np.ndarray) -> np.ndarray:
        t = np.abs(t)
        t2, t3 = t * t, t * t * t
        near = (a + 2) * t3 - (a + 3) * t2 + 1
        far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
        return np.where(t <= 1, near, np.where(t < 2, far, 0.0))

    return k


def _linear_kernel(t: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1 - np.abs(t))


# ---------------------------------------------------------------------------------------------
# Resize, step 1: output index -> source coordinate (float64), one axis at a time.


def _source_coords(mode: str, n_out: int, n_in: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    """x_original for every output index along one axis (see the coordinate_transformation_mode spec).

    `scale` is the scale the user gave (or sizes/in): half_pixel_symmetric and align_corners use the
    fractional target length scale * n_in, as the ONNX reference does. The arithmetic is float32 in
    onnxruntime's order, so that nearest rounding at exact ties (x.0, x.5) agrees with it: with
    scale float32(0.6), (1 + 0.5) / scale - 0.5 is 2 in float32 but 1.9999999 in float64.
    """
    f = np.float32
    y = np.arange(n_out, dtype=f)
    s, n_in_f, n_out_f = f(scale), f(n_in), f(n_out)
    width = s * n_in_f  # possibly fractional output length
    if mode == "half_pixel":
        x = (y + f(0.5)) / s - f(0.5)
    elif mode == "pytorch_half_pixel":
        x = (y + f(0.5)) / s - f(0.5) if n_out > 1 else np.zeros(n_out, f)
    elif mode == "half_pixel_symmetric":  # onnxruntime adds the offset in double
        offset = n_in_f / f(2) * (f(1) - n_out_f / width)
        x = (np.float64(offset) + (y.astype(np.float64) + 0.5) / np.float64(s) - 0.5).astype(f)
    elif mode == "tf_half_pixel_for_nn":  # opsets 11-12
        x = (y + f(0.5)) / s
    elif mode == "align_corners":
        x = y * (n_in_f - f(1)) / (width - f(1)) if width != 1 else np.zeros(n_out, f)
    elif mode == "asymmetric":
        x = y / s
    elif mode == "tf_crop_and_resize":
        start, end = f(roi[0]), f(roi[1])
        if n_out > 1:
            x = start * (n_in_f - f(1)) + y * (end - start) * (n_in_f - f(1)) / (n_out_f - f(1))
        else:
            x = np.full(n_out, f(0.5) * (start + end) * (n_in_f - f(1)), f)
    else:
        raise NotImplementedError(f"Resize: coordinate_transformation_mode {mode!r} is not supported")
    return x.astype(np.float64)


# ---------------------------------------------------------------------------------------------
# Resize, step 2: coordinates -> (indices, weights).


def _nearest_index(x: np.ndarray, nearest_mode: str, scale: float, n_in: int) -> np.ndarray:
    """Nearest source index per nearest_mode; "legacy" is Resize-10/Upsample (floor, ceil if downscaling)."""
    if nearest_mode == "round_prefer_floor":
        i = np.ceil(x - 0.5)
    elif nearest_mode == "round_prefer_ceil":
        i = np.floor(x + 0.5)
    elif nearest_mode == "floor":
        i = np.floor(x)
    elif nearest_mode == "ceil":
        i = np.ceil(x)
    elif nearest_mode == "legacy":
        i = np.ceil(x) if scale < 1 else np.trunc(x)
    else:
        raise NotImplementedError(f"Resize: nearest_mode {nearest_mode!r} is not supported")
    return np.clip(i, 0, n_in - 1).astype(np.intp)


def _filter_taps(x: np.ndarray, kernel: Callable[[np.ndarray], np.ndarray], support: float, stretch: float,
                 n_in: int, normalize: bool, exclude_outside: bool) -> tuple[np.ndarray, np.ndarray]:
    """Indices and weights (n_out, taps) of a separable filter centred on each coordinate `x`.

    `stretch` >= 1 widens the kernel (antialiasing when downscaling: k(t / stretch)). Taps cover
    every j with |j - x| < support * stretch; out-of-range taps read the edge (clamped index) unless
    exclude_outside drops them, and the weights are renormalized when they may not sum to one.
    """
    half = max(1, math.ceil(support * stretch - 1e-9))
    base = np.floor(x)
    j = base[:, None] + np.arange(1 - half, half + 1)[None, :]
    w = kernel((j - x[:, None]) / stretch)
    if exclude_outside:
        w = np.where((j < 0) | (j > n_in - 1), 0.0, w)
    if normalize or exclude_outside:
        s = w.sum(axis=1, keepdims=True)
        w = w / np.where(s == 0, 1.0, s)
    return np.clip(j, 0, n_in - 1).astype(np.intp), w


# ---------------------------------------------------------------------------------------------
# Resize, step 3: gather along an axis and sum weighted taps.


def _apply_taps(data: np.ndarray, axis: int, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum_t w[o, t] * data[..., idx[o, t], ...] along `axis` (data in the working float type)."""
    shape = [1] * data.ndim
    shape[axis] = idx.shape[0]
    wd = w.astype(data.dtype)
    out = np.take(data, idx[:, 0], axis=axis) * wd[:, 0].reshape(shape)
    for t in range(1, idx.shape[1]):
        out += np.take(data, idx[:, t], axis=axis) * wd[:, t].reshape(shape)
    return out


def _extrapolate(out: np.ndarray, axis: int, outside: np.ndarray, value: Any) -> np.ndarray:
    shape = [1] * out.ndim
    shape[axis] = outside.shape[0]
    return np.where(outside.reshape(shape), np.asarray(value).astype(out.dtype), out)


def _resize_nd(x: np.ndarray, out_shape: Sequence[int], scales: Sequence[float], rois: Sequence[tuple[float, float]],
               *, mode: str, ctm: str, nearest_mode: str = "round_prefer_floor", cubic_a: float = -0.75,
               exclude_outside: bool = False, extrapolation_value: float = 0.0, antialias: bool = False) -> np.ndarray:
    """Resize every axis whose size, scale or roi makes it more than the identity."""
    if mode not in ("nearest", "linear", "cubic"):
        raise NotImplementedError(f"Resize: mode {mode!r} is not supported")
    crop = ctm == "tf_crop_and_resize"
    y = x if mode == "nearest" else x.astype(_work_dtype(x.dtype), copy=False)
    for axis, (n_out, scale, roi) in enumerate(zip(out_shape, scales, rois)):
        n_in = x.shape[axis]
        if n_out == n_in and scale == 1 and (not crop or roi == (0.0, 1.0)):
            continue
        if n_out == 0 or n_in == 0:
            shape = list(y.shape)
            shape[axis] = n_out
            y = np.zeros(shape, y.dtype)
            continue
        coords = _source_coords(ctm, n_out, n_in, scale, roi)
        if mode == "nearest":
            y = np.take(y, _nearest_index(coords, nearest_mode, scale, n_in), axis=axis)
        else:
            kernel, support = (_linear_kernel, 1.0) if mode == "linear" else (_keys_kernel(cubic_a), 2.0)
            stretch = 1 / scale if antialias and scale < 1 else 1.0
            idx, w = _filter_taps(coords, kernel, support, stretch, n_in, antialias, exclude_outside)
            y = _apply_taps(y, axis, idx, w)
        if crop:
            y = _extrapolate(y, axis, (coords < 0) | (coords > n_in - 1), extrapolation_value)
    return y if mode == "nearest" else _cast_back(y, x.dtype)


def _size_from_scale(n: int, s: float) -> int:
    """floor(n * scale) in float32, as onnxruntime and ONNX shape inference compute it."""
    return int(math.floor(np.float32(n) * np.float32(s)))


# ---------------------------------------------------------------------------------------------
# Resize: output shape and per-axis scales from scales/sizes/axes/keep_aspect_ratio_policy.


def _present(a: np.ndarray | None) -> np.ndarray | None:
    """An optional tensor input: None when omitted or given empty (older opsets' placeholder)."""
    return None if a is None or np.asarray(a).size == 0 else np.asarray(a)


def _norm_axes(axes: Sequence[int] | None, rank: int) -> list[int]:
    if axes is None:
        return list(range(rank))
    out = [int(a) + rank if int(a) < 0 else int(a) for a in axes]
    if any(not 0 <= a < rank for a in out) or len(set(out)) != len(out):
        raise ValueError(f"Resize: axes {list(axes)} are invalid for rank {rank}")
    return out


def _resize_plan(in_shape: Sequence[Dim], scales: np.ndarray | None, sizes: np.ndarray | None,
                 axes: list[int], policy: str) -> tuple[list[Dim], list[float | None]]:
    """(output dims, per-axis scale) for Resize; dims may be symbolic (str/None) in inference.

    With sizes, the scale is sizes/in (stretch) or the common min/max ratio over `axes`
    (not_larger/not_smaller, output rounded half up). A scale is None when it depends on
    an unknown dim.
    """
    rank = len(in_shape)
    out: list[Dim] = list(in_shape)
    sc: list[float | None] = [1.0] * rank
    if scales is not None:
        if len(scales) != len(axes):
            raise ValueError(f"Resize: {len(scales)} scales for {len(axes)} axes")
        for a, s in zip(axes, scales.tolist()):
            d = in_shape[a]
            sc[a] = float(np.float32(s))
            out[a] = _size_from_scale(d, s) if isinstance(d, int) else (d if s == 1 else None)
        return out, sc
    if sizes is None:
        raise ValueError("Resize: one of scales and sizes is required")
    if len(sizes) != len(axes):
        raise ValueError(f"Resize: {len(sizes)} sizes for {len(axes)} axes")
    sizes_l = [int(v) for v in sizes.tolist()]
    if policy == "stretch":
        for a, n in zip(axes, sizes_l):
            d = in_shape[a]
            out[a] = n
            sc[a] = float(np.float32(n) / np.float32(d)) if isinstance(d, int) and d > 0 else None
        return out, sc
    if policy not in ("not_larger", "not_smaller"):
        raise NotImplementedError(f"Resize: keep_aspect_ratio_policy {policy!r} is not supported")
    ins = [in_shape[a] for a in axes]
    if not all(isinstance(d, int) and d > 0 for d in ins):
        for a in axes:
            out[a], sc[a] = None, None
        return out, sc
    ratios = [float(np.float32(n) / np.float32(d)) for n, d in zip(sizes_l, ins)]  # type: ignore[arg-type]
    s = min(ratios) if policy == "not_larger" else max(ratios)
    for a in axes:
        out[a] = int(math.floor(float(np.float32(s) * np.float32(in_shape[a])) + 0.5))  # round half up
        sc[a] = s
    return out, sc


def _resize_inputs(ctx: Any, roi: Any, scales: Any, sizes: Any) -> tuple[Any, Any, Any]:
    """(roi, scales, sizes) whatever the opset: Resize-10 takes (X, scales)."""
    if ctx.opset < 11:
        return None, roi, None
    return roi, scales, sizes


def _resize_attrs(ctx: Any, attrs: dict[str, Any]) -> dict[str, Any]:
    """Resize-10 has only `mode`: asymmetric coordinates and legacy nearest rounding."""
    if ctx.opset < 11:
        attrs = {**attrs, "coordinate_transformation_mode": "asymmetric", "nearest_mode": "legacy"}
    return attrs


def _infer_resize(ctx: InferContext, x: ValueType | None, *_: ValueType | None,
                  **attrs: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    axes = _norm_axes(attrs.get("axes"), rank) if ctx.opset >= 18 else list(range(rank))
    consts = [_present(ctx.const(i)) for i in range(1, 4)]
    _, sc, sz = _resize_inputs(ctx, *consts)
    if sc is None and sz is None:  # data-dependent: only the axes that are not resized are known
        return [TensorType(x.dtype, tuple(d if a not in axes else None for a, d in enumerate(x.shape)))]
    out, _ = _resize_plan(x.shape, sc, sz, axes, attrs.get("keep_aspect_ratio_policy") or "stretch")
    return [TensorType(x.dtype, tuple(out))]


_RESIZE_ATTRS = {
    "mode": "nearest",
    "coordinate_transformation_mode": "half_pixel",  # opset >= 11; Resize-10 is asymmetric
    "nearest_mode": "round_prefer_floor",  # opset >= 11
    "cubic_coeff_a": -0.75,
    "exclude_outside": 0,
    "extrapolation_value": 0.0,
    "antialias": 0,  # opset >= 18
    "axes": Attr(None, type="ints"),  # opset >= 18
    "keep_aspect_ratio_policy": "stretch",  # opset >= 18
}


@defop("Resize", kind=Kind.INJECTIVE, inputs=(1, 4), outputs=(1, 1), since_version=10, attrs=_RESIZE_ATTRS,
       infer=_infer_resize)
def resize(ctx, x, roi=None, scales=None, sizes=None, **attrs: Any):
    """Resize X to floor(in * scale) or to `sizes`, over all axes or the given `axes` (opset 18).

    roi (tf_crop_and_resize only) holds [starts..., ends...] for the resized axes; optional inputs
    may be omitted or given as empty tensors.
    """
    attrs = _resize_attrs(ctx, attrs)
    roi, scales, sizes = (_present(a) for a in _resize_inputs(ctx, roi, scales, sizes))
    if scales is not None and sizes is not None:
        raise ValueError("Resize: only one of scales and sizes may be given")
    rank = x.ndim
    axes = _norm_axes(attrs["axes"], rank) if ctx.opset >= 18 else list(range(rank))
    out, sc = _resize_plan(x.shape, scales, sizes, axes, attrs["keep_aspect_ratio_policy"])
    rois = [(0.0, 1.0)] * rank
    ctm = attrs["coordinate_transformation_mode"]
    if ctm == "tf_crop_and_resize":
        if roi is None or roi.size != 2 * len(axes):
            raise ValueError("Resize: tf_crop_and_resize needs roi with 2 values per resized axis")
        r = roi.astype(np.float64).tolist()
        for i, a in enumerate(axes):
            rois[a] = (r[i], r[len(axes) + i])
    return _resize_nd(
        x, out, sc, rois, mode=attrs["mode"], ctm=ctm, nearest_mode=attrs["nearest_mode"],
        cubic_a=float(attrs["cubic_coeff_a"]), exclude_outside=bool(attrs["exclude_outside"]),
        extrapolation_value=float(attrs["extrapolation_value"]), antialias=bool(attrs["antialias"]),
    )


# ---------------------------------------------------------------------------------------------
# Upsample (deprecated since opset 10): scales as an attribute (7, 8) or an input (9).


def _upsample_scales(ctx: Any, attr: Sequence[float] | None, given: np.ndarray | None) -> np.ndarray | None:
    return np.asarray(attr, np.float32) if ctx.opset < 9 and attr is not None else _present(given)


def _upsample_mode(mode: str) -> str:
    m = {"nearest": "nearest", "linear": "linear", "bilinear": "linear"}.get(mode)
    if m is None:
        raise NotImplementedError(f"Upsample: mode {mode!r} is not supported")
    return m


def _infer_upsample(ctx: InferContext, x: ValueType | None, s: ValueType | None = None, *, scales: Any = None,
                    **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    sc = _upsample_scales(ctx, scales, ctx.const(1))
    if sc is None:
        return [TensorType(x.dtype, tuple(None for _ in x.shape))]
    out, _ = _resize_plan(x.shape, sc, None, list(range(len(x.shape))), "stretch")
    return [TensorType(x.dtype, tuple(out))]


@defop("Upsample", kind=Kind.INJECTIVE, inputs=(1, 2), outputs=(1, 1), since_version=7,
       attrs={"mode": "nearest", "scales": Attr(None, type="floats")}, infer=_infer_upsample)
def upsample(ctx, x, scales_in=None, *, mode, scales):
    """Resize with asymmetric coordinates (nearest: floor) to floor(in * scale)."""
    sc = _upsample_scales(ctx, scales, scales_in)
    if sc is None or sc.size != x.ndim:
        raise ValueError(f"Upsample: needs one scale per axis ({x.ndim})")
    out, s = _resize_plan(x.shape, sc, None, list(range(x.ndim)), "stretch")
    return _resize_nd(x, out, s, [(0.0, 1.0)] * x.ndim, mode=_upsample_mode(mode), ctm="asymmetric",
                      nearest_mode="legacy")


# ---------------------------------------------------------------------------------------------
# GridSample.


def _denormalize(g: np.ndarray, n: int, align_corners: bool) -> np.ndarray:
    """Grid value in [-1, 1] -> pixel coordinate (corner pixel centres, or corner edges)."""
    return (g + 1) / 2 * (n - 1) if align_corners else ((g + 1) * n - 1) / 2


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect coordinates about the borders [lo, hi] until they fall inside (PyTorch's rule)."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    d = np.where(below, lo - x, np.where(above, x - hi, 0.0))
    flips = np.floor(d / span)
    r = d - flips * span
    even = flips % 2 == 0
    ref = np.where(below, np.where(even, lo + r, hi - r), np.where(even, hi - r, lo + r))
    return np.where(below | above, ref, x)


def _grid_taps(c: np.ndarray, mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(integer index, weight) pairs sampling coordinate array `c` along one axis."""
    if mode == "nearest":
        return [(c, np.ones_like(c))]
    base = np.floor(c)
    f = c - base
    if mode == "linear":
        return [(base, 1 - f), (base + 1, f)]
    k = _keys_kernel(-0.75)
    return [(base + t, k(f - t)) for t in (-1, 0, 1, 2)]


@defop("GridSample", kind=Kind.OPAQUE, inputs=(2, 2), outputs=(1, 1), since_version=16,
       attrs={"mode": Attr("bilinear", since={20: "linear"}), "padding_mode": "zeros", "align_corners": 0},
       infer=lambda ctx, x, grid, **_: _infer_grid_sample(x, grid))  # defined below
def grid_sample(ctx, x, grid, *, mode, padding_mode, align_corners):
    """Sample X (N, C, D1..Dr) at normalized positions grid (N, O1..Ok, r); grid[..., 0] indexes Dr.

    Per spatial axis the grid is denormalized, padded (border: clamp, reflection: reflect, both only
    outside the borders; cubic skips this step), then sampled by nearest (round half to even),
    N-linear or N-cubic (Keys, a=-0.75) taps; tap indices outside the image read zero, the edge or
    the reflection. One advanced-index gather per tap combination (4 for bilinear, 16 for bicubic).
    """
    m = {"bilinear": "linear", "linear": "linear", "nearest": "nearest", "bicubic": "cubic", "cubic": "cubic"}.get(mode)
    if m is None:
        raise NotImplementedError(f"GridSample: mode {mode!r} is not supported")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise NotImplementedError(f"GridSample: padding_mode {padding_mode!r} is not supported")
    ac = bool(align_corners)
    dims = x.shape[2:]
    r = len(dims)
    if grid.shape[-1] != r or grid.shape[0] != x.shape[0]:
        raise ValueError(f"GridSample: grid {grid.shape} does not match X {x.shape}")
    wt = _work_dtype(np.result_type(x.dtype, grid.dtype) if x.dtype.kind == "f" else grid.dtype)
    n_idx = np.arange(x.shape[0]).reshape((-1,) + (1,) * (grid.ndim - 2))
    xt = np.moveaxis(x, 1, -1)  # (N, D1..Dr, C): one advanced-index gather fetches all channels
    per_axis = []
    for i, n in enumerate(dims):
        c = _denormalize(grid[..., r - 1 - i].astype(np.float64), n, ac)
        lo, hi = (0.0, n - 1.0) if ac else (-0.5, n - 0.5)
        if m == "nearest":
            c = np.rint(c)
        if m != "cubic":  # cubic pads its taps only, as PyTorch and onnxruntime do
            if padding_mode == "border":
                c = np.where((c < lo) | (c > hi), np.clip(c, 0, n - 1), c)
            elif padding_mode == "reflection":
                c = _reflect(c, lo, hi)
        taps = []
        for j, w in _grid_taps(c, m):
            if m == "nearest":
                j = np.trunc(j)
            if padding_mode == "zeros":
                w = np.where((j >= 0) & (j <= n - 1), w, 0.0)
            elif padding_mode == "reflection":
                j = np.trunc(_reflect(j, lo, hi))
            taps.append((np.clip(j, 0, n - 1).astype(np.intp), w))
        per_axis.append(taps)
    out = np.zeros(grid.shape[:-1] + (x.shape[1],), wt)
    for combo in itertools.product(*per_axis):
        w = np.prod([t[1] for t in combo], axis=0).astype(wt)
        vals = xt[(n_idx, *(t[0] for t in combo))]
        out += vals.astype(wt, copy=False) * w[..., None]
    return _cast_back(np.moveaxis(out, -1, 1), x.dtype)


def _infer_grid_sample(x: ValueType | None, grid: ValueType | None) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None]
    if not isinstance(grid, TensorType) or grid.shape is None or x.shape is None:
        return [TensorType(x.dtype, None)]
    n = x.shape[0] if isinstance(x.shape[0], int) or not isinstance(grid.shape[0], int) else grid.shape[0]
    return [TensorType(x.dtype, (n, x.shape[1], *grid.shape[1:-1]))]


# ---------------------------------------------------------------------------------------------
# AffineGrid.


def _base_coords(n: int, align_corners: bool) -> np.ndarray:
    """Normalized pixel positions along one axis: centres of n pixels spanning [-1, 1]."""
    if align_corners:
        return np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(n)
    return (2 * np.arange(n) + 1) / n - 1


def _infer_affine_grid(ctx: InferContext, theta: ValueType | None, size: ValueType | None = None,
                       **_: Any) -> list[ValueType | None]:
    if not isinstance(theta, TensorType):
        return [None]
    sz = ctx.const(1)
    if sz is not None:
        s = [int(v) for v in sz.tolist()]
        return [TensorType(theta.dtype, (s[0], *s[2:], len(s) - 2))]
    if isinstance(size, TensorType) and size.shape is not None and isinstance(size.shape[0], int):
        k = size.shape[0] - 2
        n = theta.shape[0] if theta.shape else None
        return [TensorType(theta.dtype, (n, *([None] * k), k))]
    return [TensorType(theta.dtype, None)]


@defop("AffineGrid", kind=Kind.OPAQUE, inputs=(2, 2), outputs=(1, 1), since_version=20,
       attrs={"align_corners": 0}, infer=_infer_affine_grid)
def affine_grid(ctx, theta, size, *, align_corners):
    """grid[n, d..., :] = theta[n] @ [x, y, (z,) 1] over the base grid of `size` (N, C, (D,) H, W)."""
    s = [int(v) for v in np.asarray(size).tolist()]
    spatial = s[2:]
    k = len(spatial)
    if k not in (2, 3) or theta.shape[1:] != (k, k + 1):
        raise ValueError(f"AffineGrid: theta {theta.shape} does not match size {s}")
    dt = _work_dtype(theta.dtype)
    axes = [_base_coords(n, bool(align_corners)) for n in spatial]
    mesh = np.meshgrid(*axes, indexing="ij")  # per spatial dim (D, H, W order)
    homo = np.stack([*mesh[::-1], np.ones(spatial)], axis=-1).astype(dt)  # (..., [x, y, (z,) 1])
    grid = np.einsum("...j,nij->n...i", homo, theta.astype(dt, copy=False))
    return grid.astype(theta.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# RoiAlign.


def _roi_axis(start: float, bin_size: float, pooled: int, grid: int, n: int) -> tuple[np.ndarray, ...]:
    """Bilinear taps along one axis for the sample points of every bin: (low, high, w_low, w_high).

    Shapes (pooled, grid). Samples beyond [-1, n] get zero weights; others clamp to [0, n-1]
    as onnxruntime's RoiAlign does.
    """
    p = np.arange(pooled)[:, None]
    g = np.arange(grid)[None, :]
    c = start + p * bin_size + (g + 0.5) * bin_size / grid
    valid = (c >= -1.0) & (c <= n)
    c = np.maximum(c, 0.0)
    low = np.floor(c).astype(np.intp)
    edge = low >= n - 1
    low = np.where(edge, n - 1, low)
    high = np.where(edge, n - 1, low + 1)
    c = np.where(edge, low, c)
    frac = c - low
    return low, high, np.where(valid, 1 - frac, 0.0), np.where(valid, frac, 0.0)


def _infer_roi_align(ctx: InferContext, x: ValueType | None, rois: ValueType | None = None,
                     bi: ValueType | None = None, *, output_height: int, output_width: int,
                     **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None]
    k: Dim = None
    for t in (rois, bi):
        if isinstance(t, TensorType) and t.shape:
            k = t.shape[0] if k is None or isinstance(t.shape[0], int) else k
    c = x.shape[1] if x.shape is not None else None
    return [TensorType(x.dtype, (k, c, int(output_height), int(output_width)))]


@defop("RoiAlign", kind=Kind.OPAQUE, inputs=(3, 3), outputs=(1, 1), since_version=10,
       attrs={"coordinate_transformation_mode": Attr("output_half_pixel", since={16: "half_pixel"}),
              "mode": "avg", "output_height": 1, "output_width": 1, "sampling_ratio": 0, "spatial_scale": 1.0},
       infer=_infer_roi_align)
def roi_align(ctx, x, rois, batch_indices, *, coordinate_transformation_mode, mode, output_height, output_width,
              sampling_ratio, spatial_scale):
    """Pool each RoI [x1, y1, x2, y2] of image batch_indices[k] into (output_height, output_width) bins,
    averaging (or max-ing, of the weighted corner values, as onnxruntime does) bilinear samples on a
    sampling_ratio (or adaptive ceil(roi/bin)) grid per bin. Loops over RoIs; each RoI is vectorized.
    """
    if mode not in ("avg", "max"):
        raise NotImplementedError(f"RoiAlign: mode {mode!r} is not supported")
    if coordinate_transformation_mode not in ("half_pixel", "output_half_pixel"):
        raise NotImplementedError(f"RoiAlign: coordinate_transformation_mode {coordinate_transformation_mode!r} "
                                  "is not supported")
    half = coordinate_transformation_mode == "half_pixel"
    ph, pw = int(output_height), int(output_width)
    _, c, h, w = x.shape
    dt = _work_dtype(x.dtype)
    out = np.zeros((rois.shape[0], c, ph, pw), dt)
    off = 0.5 if half else 0.0
    for k, (roi, b) in enumerate(zip(rois.astype(np.float64), batch_indices.astype(np.int64))):
        x1, y1, x2, y2 = roi * float(spatial_scale) - off
        rw, rh = x2 - x1, y2 - y1
        if not half:  # legacy mode forces malformed RoIs to 1x1
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        gh = int(sampling_ratio) if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = int(sampling_ratio) if sampling_ratio > 0 else math.ceil(rw / pw)
        if gh <= 0 or gw <= 0:
            continue
        ylo, yhi, wyl, wyh = _roi_axis(y1, rh / ph, ph, gh, h)
        xlo, xhi, wxl, wxh = _roi_axis(x1, rw / pw, pw, gw, w)
        img = x[b].astype(dt, copy=False)
        if mode == "avg":
            # Bilinear averaging is separable: out = Wy @ img @ Wx^T with (bins, pixels) weight matrices.
            wy, wx = np.zeros((ph, h)), np.zeros((pw, w))
            rows = np.arange(ph)[:, None]
            np.add.at(wy, (rows, ylo), wyl)
            np.add.at(wy, (rows, yhi), wyh)
            cols = np.arange(pw)[:, None]
            np.add.at(wx, (cols, xlo), wxl)
            np.add.at(wx, (cols, xhi), wxh)
            out[k] = (wy.astype(dt) @ img @ wx.T.astype(dt)) / dt.type(gh * gw)
        else:
            corners = []
            for yi, wy_ in ((ylo, wyl), (yhi, wyh)):
                for xi, wx_ in ((xlo, wxl), (xhi, wxh)):
                    v = img[:, yi[:, :, None, None], xi[None, None, :, :]]  # (C, ph, gh, pw, gw)
                    corners.append(v * (wy_[:, :, None, None] * wx_[None, None, :, :]).astype(dt))
            out[k] = np.max(np.maximum.reduce(corners), axis=(2, 4))
    return out.astype(x.dtype, copy=False)
