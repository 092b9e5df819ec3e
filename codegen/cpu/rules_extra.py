"""Kernel selection for softmax, normalization, reductions, data movement, Resize and ConvTranspose.

Each rule reads the op's attributes the way its reference (ir/ops) does, reusing the reference's
own helpers for the fiddly parts (slice clamping, resize coordinates and taps, transposed-convolution
geometry), so the native path and the reference cannot disagree on semantics. Anything the kernels
do not cover (other dtypes, non-constant parameters, non-contiguous reduction axes...) returns None
and the node falls back to the reference.

Data-movement ops (Transpose, Slice, Expand) are one strided copy: dims of size 1 are dropped and
neighbouring dims both sides walk contiguously are merged at compile time, so most copies end in a
long unit-stride inner loop; a transpose that reduces to swapping two axes gets a tiled kernel, and
one that only moves size-1 dims is a view. Pad (the same box, filled around), Concat and Split
(column blocks of [outer, axis * inner] views) and Gather (rows of [outer, n, inner]) have their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ir import DType, Node, Value
from ir.ops import constant_value
from ir.ops.image import (
    _filter_taps,
    _keys_kernel,
    _linear_kernel,
    _nearest_index,
    _norm_axes,
    _present,
    _resize_plan,
    _source_coords,
)
from ir.ops.nn import _convtranspose_geometry
from ir.ops.reduce import _reduce_axes
from ir.ops.tensor import _norm_indices, _pad_widths, _slice_bounds, _slice_len, _slice_spec

from ..program import Call, Const, Kernel, Lit, Scratch, Use
from .rules import arg, attrs, f32, k, rule, shape, static

MODULE = "codegen.cpu.kernels_extra"
F32 = np.dtype(np.float32)


def kx(name: str) -> Kernel:
    return k(name, MODULE)


def _prod(dims: Sequence[int]) -> int:
    return int(np.prod(dims, dtype=np.int64))


def _used(v: Value | None) -> bool:
    return v is not None and (bool(v.uses) or v.is_graph_output)


def _norm_axis(axis: int, rank: int) -> int | None:
    """`axis` in [0, rank), or None when out of range (the reference raises: let it)."""
    a = int(axis)
    return a + rank if -rank <= a < 0 else (a if 0 <= a < rank else None)


def _consts(node: Node, first: int, count: int) -> list[np.ndarray | None] | None:
    """Inputs first..first+count-1 as constants (None where omitted); None if any present one is not."""
    out: list[np.ndarray | None] = []
    for i in range(first, first + count):
        v = node.input(i)
        if v is None:
            out.append(None)
            continue
        c = constant_value(v)
        if c is None:
            return None
        out.append(c)
    return out


def _fill(value: float) -> Const:
    """A fill value as a one-element array (a literal could be NaN or inf, which has no Python spelling)."""
    return Const(np.array([value], np.float32))


def _ints(a: Sequence[int]) -> Const:
    return Const(np.asarray(list(a), np.int64))


# -- strided copies ---------------------------------------------------------------------------


def _c_strides(dims: Sequence[int]) -> list[int]:
    out, s = [], 1
    for d in reversed(dims):
        out.append(s)
        s *= d
    return out[::-1]


def simplify(dims: Sequence[int], xs: Sequence[int], ys: Sequence[int]
             ) -> tuple[list[int], list[int], list[int]]:
    """The same copy over fewer dims: size-1 dims dropped, neighbours both sides walk contiguously merged."""
    out: list[tuple[int, int, int]] = []
    for d, a, b in zip(dims, xs, ys):
        if d == 1:
            continue
        if out and out[-1][1] == a * d and out[-1][2] == b * d:
            out[-1] = (out[-1][0] * d, a, b)
        else:
            out.append((d, a, b))
    if not out:
        out = [(1, 1, 1)]
    return [o[0] for o in out], [o[1] for o in out], [o[2] for o in out]


def _strided(node: Node, x: Value, y: Value, dims: Sequence[int], xs: Sequence[int], xbase: int = 0,
             note: str = "") -> list[Call]:
    """y (C-ordered over `dims`) = x[xbase + sum i_k xs_k]: one strided copy, a tiled transpose, or a view."""
    ys = _c_strides(dims)
    d, a, b = simplify(dims, xs, ys)
    xn, yn = _prod(shape(x)), _prod(shape(y))
    if len(d) == 1 and a == [1] and b == [1] and xbase == 0 and xn == yn and constant_value(x) is None:
        return [Call(node, None, [Use(x)], [y], alias={id(y): x}, note="view")]
    if xbase == 0 and xn == yn and len(d) in (2, 3):
        lead = [] if len(d) == 2 else [d[0]]
        r, c = d[-2], d[-1]
        if b[-1] == 1 and a[-1] == r and a[-2] == 1 and (len(d) == 2 or a[0] == r * c):
            nb = lead[0] if lead else 1
            return [Call(node, kx("transpose2d"), [arg(x, (nb, c, r)), Use(y, (nb, r, c))], [y],
                         note=note or "tiled transpose")]
    return [Call(node, kx("strided_copy"), [arg(x, (xn,)), Use(y, (yn,)), _ints(d), _ints(a), _ints(b), Lit(int(xbase)),
                                            Lit(0)], [y], note=note)]


@rule("Transpose")
def transpose(node: Node) -> list[Call] | None:
    """A permutation is a strided read: output axis k walks input axis perm[k]."""
    x, y = node.inputs[0], node.outputs[0]
    if not f32(x, y):
        return None
    s = shape(x)
    perm = attrs(node).get("perm")
    p = list(range(len(s)))[::-1] if perm is None else [_norm_axis(int(a), len(s)) for a in perm]
    if sorted(q for q in p if q is not None) != list(range(len(s))) or len(p) != len(s):
        return None
    st = _c_strides(s)
    dims = [s[q] for q in p]  # type: ignore[index]
    if tuple(dims) != shape(y):
        return None
    return _strided(node, x, y, dims, [st[q] for q in p])  # type: ignore[index]


@rule("Slice")
def slice_(node: Node) -> list[Call] | None:
    """Constant starts/ends/axes/steps (any steps, negative too) as a strided copy."""
    x, y = node.inputs[0], node.outputs[0]
    if not f32(x, y):
        return None
    s = shape(x)
    if node.opset < 10:
        a = attrs(node)
        starts, ends, axes, steps = a.get("starts"), a.get("ends"), a.get("axes"), None
    else:
        c = _consts(node, 1, 4)
        if c is None:
            return None
        starts, ends, axes, steps = c
    try:
        spec = _slice_spec(len(s), starts, ends, axes, steps)
    except (ValueError, IndexError):
        return None
    st = _c_strides(s)
    dims, xs, base = list(s), list(st), 0
    for ax, (b, e, sp) in spec.items():
        try:
            lo, hi = _slice_bounds(b, e, sp, s[ax])
        except ValueError:
            return None
        dims[ax] = _slice_len(lo, hi, sp)
        xs[ax] = sp * st[ax]
        base += lo * st[ax]
    if tuple(dims) != shape(y):
        return None
    return _strided(node, x, y, dims, xs, base, note="slice")


@rule("Expand")
def expand(node: Node) -> list[Call] | None:
    """Broadcast copy: dims x repeats are read with stride 0."""
    x, y = node.inputs[0], node.outputs[0]
    if not f32(x, y):
        return None
    s, o = shape(x), shape(y)
    if len(s) > len(o):
        return None
    s = (1,) * (len(o) - len(s)) + s
    if any(a not in (1, b) for a, b in zip(s, o)):
        return None
    st = _c_strides(s)
    return _strided(node, x, y, o, [0 if a == 1 and b != 1 else t for a, b, t in zip(s, o, st)], note="broadcast")


@dataclass(frozen=True)
class PadPlan:
    """A Pad with constant amounts, as both targets' kernels see it: mode, fill value, per-dim
    (begin, end) widths, the kept (uncropped) extent of each input dim, input and output shapes."""

    mode: str
    value: float
    widths: list[tuple[int, int]]
    keep: list[int]
    x_shape: tuple[int, ...]
    y_shape: tuple[int, ...]


def pad_plan(node: Node) -> PadPlan | None:
    """Pads, fill value and axes read the way the reference reads them, at every opset; None when
    they are not constants or do not give the output's shape."""
    x, y = node.inputs[0], node.outputs[0]
    if not f32(x, y):
        return None
    a = attrs(node)
    s = shape(x)
    if node.opset < 11:
        pads = a.get("paddings") if node.opset < 2 else a.get("pads")
        value, axes = a.get("value"), None
    else:
        c = _consts(node, 1, 3)
        if c is None or c[0] is None:
            return None
        pads, value, axes = c
    try:
        widths = _pad_widths(len(s), [int(p) for p in np.asarray(pads).reshape(-1).tolist()], axes)
    except (ValueError, IndexError):
        return None
    v = float(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) else 0.0
    o = shape(y)
    keep = [d + min(b, 0) + min(e, 0) for d, (b, e) in zip(s, widths)]
    if any(n < 0 for n in keep) or tuple(d + b + e for d, (b, e) in zip(s, widths)) != o:
        return None
    return PadPlan(a.get("mode") or "constant", v, [(int(b), int(e)) for b, e in widths], keep, s, o)


@rule("Pad")
def pad(node: Node) -> list[Call] | None:
    """Constant-mode padding with constant amounts, one pass: each output row is fill, or fill / the kept
    part of an input row / fill (negative pads crop)."""
    x, y = node.inputs[0], node.outputs[0]
    p = pad_plan(node)
    if p is None or p.mode != "constant":
        return None
    s, o, widths, keep, v = p.x_shape, p.y_shape, p.widths, p.keep, p.value
    xst = _c_strides(s)
    xbase = sum(max(-b, 0) * t for (b, _), t in zip(widths, xst))
    start = [max(b, 0) for b, _ in widths]
    box = _pad_box(list(o), start, keep, xst) if _prod(keep) else [(_prod(o), 0, 0, 1)]
    dims, st, kp, xs = ([b[i] for b in box] for i in range(4))
    return [Call(node, kx("pad_constant"), [arg(x, (_prod(s),)), Use(y, (_prod(o),)), _fill(v), _ints(dims), _ints(st),
                                            _ints(kp), _ints(xs), Lit(int(xbase))], [y])]


def _pad_box(dims: list[int], start: list[int], keep: list[int], xs: list[int]) -> list[tuple[int, int, int, int]]:
    """(size, start, kept length, x stride) per dim of the padded output, size-1 dims dropped and a dim
    merged into the one before it when it is neither padded nor cropped (its x rows are whole)."""
    out: list[tuple[int, int, int, int]] = []
    for d, b, kept, t in zip(dims, start, keep, xs):
        if d == 1 and len(dims) > 1:
            continue
        if out and b == 0 and kept == d and out[-1][3] == t * d:
            pd, pb, pk, _ = out[-1]
            out[-1] = (pd * d, pb * d, pk * d, t)
        else:
            out.append((d, b, kept, t))
    return out or [(1, 0, 1, 1)]


@rule("Concat")
def concat(node: Node) -> list[Call] | None:
    """Each input is a block of columns of the output seen as [outer, axis * inner]."""
    y = node.outputs[0]
    xs = [v for v in node.inputs if v is not None]
    if not xs or not f32(y, *xs):
        return None
    o = shape(y)
    axis = attrs(node).get("axis")
    ax = _norm_axis(axis, len(o)) if o and isinstance(axis, (int, np.integer)) else None
    if ax is None or any(len(shape(v)) != len(o) for v in xs):
        return None
    outer, inner = _prod(o[:ax]), _prod(o[ax + 1:])
    if sum(shape(v)[ax] for v in xs) != o[ax]:
        return None
    args = [arg(v, (outer, shape(v)[ax] * inner)) for v in xs]
    return [Call(node, kx("concat"), [Use(y, (outer, o[ax] * inner)), *args], [y])]


@rule("Split")
def split(node: Node) -> list[Call] | None:
    """Each output is a block of columns of the input seen as [outer, axis * inner] (sizes from its shape)."""
    x = node.inputs[0]
    ys = list(node.outputs)
    if not f32(x, *ys):
        return None
    s = shape(x)
    ax = _norm_axis(attrs(node).get("axis", 0), len(s)) if s else None
    if ax is None or any(len(shape(v)) != len(s) for v in ys) or sum(shape(v)[ax] for v in ys) != s[ax]:
        return None
    outer, inner = _prod(s[:ax]), _prod(s[ax + 1:])
    outs = [Use(v, (outer, shape(v)[ax] * inner)) for v in ys]
    return [Call(node, kx("split"), [arg(x, (outer, s[ax] * inner)), *outs], list(ys))]


@rule("Gather")
def gather(node: Node) -> list[Call] | None:
    """Rows of x [outer, n, inner] picked by indices (constant: checked now; else checked per run)."""
    x, ind, y = node.inputs[0], node.inputs[1], node.outputs[0]
    if not f32(x, y) or not static(ind) or ind.dtype not in (DType.INT64, DType.INT32):
        return None
    s = shape(x)
    ax = _norm_axis(attrs(node).get("axis", 0), len(s)) if s else None
    if ax is None:
        return None
    outer, n, inner = _prod(s[:ax]), s[ax], _prod(s[ax + 1:])
    m = _prod(shape(ind))
    if _prod(shape(y)) != outer * m * inner:
        return None
    ic = constant_value(ind)
    if ic is not None:
        try:
            idx: Use | Const = Const(np.ascontiguousarray(_norm_indices(ic, n), np.int64).reshape(m))
        except IndexError:
            return None
    else:
        idx = Use(ind, (m,))
    return [Call(node, kx("gather"), [arg(x, (outer, n, inner)), idx, Use(y, (outer, m, inner))], [y])]


# -- softmax, normalization, reductions -------------------------------------------------------


@rule("Softmax", "LogSoftmax")
def softmax(node: Node) -> list[Call] | None:
    """Before opset 13 the input is coerced to 2-D at `axis` (one row per outer index), from 13 the
    normalization runs along `axis` alone: both are axis 1 of an [outer, n, inner] view."""
    x, y = node.inputs[0], node.outputs[0]
    if not f32(x, y) or not shape(x):
        return None
    s = shape(x)
    ax = _norm_axis(attrs(node)["axis"], len(s))
    if ax is None:
        return None
    if node.opset < 13:
        view = (_prod(s[:ax]), _prod(s[ax:]), 1)
    else:
        view = (_prod(s[:ax]), s[ax], _prod(s[ax + 1:]))
    # Not in place: the exponentials are written to y before the last pass reads x again.
    return [Call(node, kx("softmax"), [arg(x, view), Use(y, view), Lit(node.op_type == "LogSoftmax")], [y])]


@rule("LayerNormalization")
def layernorm(node: Node) -> list[Call] | None:
    """Rows [outer, prod(shape[axis:])], statistics in float64; Mean/InvStdDev written only when used."""
    x, scale, b = node.inputs[0], node.inputs[1], node.input(2)
    y = node.outputs[0]
    if not f32(x, y, scale) or (b is not None and not f32(b)):
        return None
    a = attrs(node)
    s = shape(x)
    ax = _norm_axis(a["axis"], len(s)) if s else None
    if ax is None:
        return None
    outer, n, tail = _prod(s[:ax]), _prod(s[ax:]), s[ax:]
    params: list[Use | Const] = []
    for p in (scale, b):
        if p is None:
            params.append(Const(np.zeros(n, np.float32)))
            continue
        if len(shape(p)) > len(tail):
            return None
        try:
            if np.broadcast_shapes(shape(p), tail) != tail:
                return None
        except ValueError:
            return None
        c = constant_value(p)
        if c is not None:
            params.append(Const(np.ascontiguousarray(np.broadcast_to(c.astype(np.float32), tail)).reshape(n)))
        elif _prod(shape(p)) == n:
            params.append(Use(p, (n,)))
        else:
            return None
    stats: list[Use | Scratch] = []
    defines = [y]
    for i in (1, 2):
        v = node.outputs[i] if i < len(node.outputs) else None
        if _used(v):
            assert v is not None
            if int(a.get("stash_type", 1)) != int(DType.FLOAT) or not f32(v) or _prod(shape(v)) != outer:
                return None
            stats.append(Use(v, (outer,)))
            defines.append(v)
        else:
            stats.append(Scratch((outer,), F32))
    eps = float(np.float32(a["epsilon"]))  # the reference adds it in float32
    args = [arg(x, (outer, n)), params[0], params[1], Use(y, (outer, n)), *stats, Lit(eps)]
    return [Call(node, kx("layernorm"), args, defines, inplace=[(y, x)])]


REDUCE_OPS = {"ReduceSum": 0, "ReduceMean": 1, "ReduceMax": 2, "ReduceMin": 3}


@rule(*REDUCE_OPS)
def reduce(node: Node) -> list[Call] | None:
    """Reductions over one contiguous block of axes (size-1 dims aside): [outer, r, inner] -> [outer, inner]."""
    x, y = node.inputs[0], node.outputs[0]
    if not f32(x, y):
        return None
    a = attrs(node)
    s = shape(x)
    since = 13 if node.op_type == "ReduceSum" else 18
    axes_in = None
    if node.input(1) is not None:
        if node.opset < since:
            return None
        axes_in = constant_value(node.input(1))
        if axes_in is None:
            return None
    red = set(_reduce_axes(len(s), axes_in, a.get("axes"), int(a.get("noop_with_empty_axes", 0))))
    if any(not 0 <= r < len(s) for r in red):
        return None
    kept = [(d, i in red) for i, d in enumerate(s) if d != 1]
    flags = [f for _, f in kept]
    first = flags.index(True) if True in flags else len(flags)
    last = len(flags) - flags[::-1].index(True) if True in flags else len(flags)
    if not all(flags[first:last]):
        return None  # the reduced axes are not one contiguous block
    dims = [d for d, _ in kept]
    outer, r, inner = _prod(dims[:first]), _prod(dims[first:last]), _prod(dims[last:])
    if _prod(shape(y)) != outer * inner:
        return None
    return [Call(node, kx("reduce"), [arg(x, (outer, r, inner)), Use(y, (outer, inner)), Lit(REDUCE_OPS[node.op_type])],
                 [y], note=node.op_type)]


# -- Resize -----------------------------------------------------------------------------------


def _axis_taps(n_in: int, n_out: int, scale: float, roi: tuple[float, float], a: dict, crop: bool
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices [n_out, taps], float32 weights, outside flags) along one axis, as the reference computes them.

    An axis the reference leaves alone gets one tap of weight 1 (x * 1 is x exactly).
    """
    if n_out == n_in and scale == 1 and (not crop or roi == (0.0, 1.0)):
        return np.arange(n_in, dtype=np.int64)[:, None], np.ones((n_in, 1), np.float32), np.zeros(n_in, np.uint8)
    coords = _source_coords(a["coordinate_transformation_mode"], n_out, n_in, scale, roi)
    mode = a["mode"]
    if mode == "nearest":
        idx = _nearest_index(coords, a["nearest_mode"], scale, n_in)[:, None]
        w = np.ones(idx.shape, np.float64)
    else:
        kernel, support = (_linear_kernel, 1.0) if mode == "linear" else (_keys_kernel(float(a["cubic_coeff_a"])), 2.0)
        stretch = 1 / scale if a["antialias"] and scale < 1 else 1.0
        idx, w = _filter_taps(coords, kernel, support, stretch, n_in, bool(a["antialias"]), bool(a["exclude_outside"]))
    outside = ((coords < 0) | (coords > n_in - 1)) if crop else np.zeros(n_out, bool)
    return (np.ascontiguousarray(idx, np.int64), np.ascontiguousarray(w, np.float32),
            np.ascontiguousarray(outside, np.uint8))


@rule("Resize")
def resize(node: Node) -> list[Call] | None:
    """Resizes of the last two axes with constant scales/sizes: index and weight tables are built now
    by the reference's own coordinate and filter functions (every mode, nearest rounding and
    coordinate transformation), the kernels gather (nearest) or apply the separable taps."""
    x, y = node.inputs[0], node.outputs[0]
    if not f32(x, y) or len(shape(x)) < 2:
        return None
    a = dict(attrs(node))
    if node.opset < 11:
        a.update(coordinate_transformation_mode="asymmetric", nearest_mode="legacy")
        c = _consts(node, 1, 1)
        if c is None:
            return None
        roi, scales, sizes = None, _present(c[0]), None
    else:
        c = _consts(node, 1, 3)
        if c is None:
            return None
        roi, scales, sizes = (_present(v) for v in c)
    if a["mode"] not in ("nearest", "linear", "cubic") or (scales is not None and sizes is not None):
        return None
    s = shape(x)
    rank = len(s)
    try:
        axes = _norm_axes(a.get("axes"), rank) if node.opset >= 18 else list(range(rank))
        out, sc = _resize_plan(s, scales, sizes, axes, a.get("keep_aspect_ratio_policy") or "stretch")
    except (ValueError, NotImplementedError):
        return None
    if tuple(out) != shape(y) or any(v is None for v in sc):
        return None
    crop = a["coordinate_transformation_mode"] == "tf_crop_and_resize"
    rois = [(0.0, 1.0)] * rank
    if crop:
        if roi is None or roi.size != 2 * len(axes):
            return None
        r = roi.astype(np.float64).tolist()
        for i, ax in enumerate(axes):
            rois[ax] = (r[i], r[len(axes) + i])
    for i in range(rank - 2):  # only the last two axes may change
        if out[i] != s[i] or sc[i] != 1 or (crop and rois[i] != (0.0, 1.0)):
            return None
    try:
        th = _axis_taps(s[-2], out[-2], sc[-2], rois[-2], a, crop)  # type: ignore[arg-type]
        tw = _axis_taps(s[-1], out[-1], sc[-1], rois[-1], a, crop)  # type: ignore[arg-type]
    except NotImplementedError:
        return None
    nb = _prod(s[:-2])
    xv, yv = arg(x, (nb, s[-2], s[-1])), Use(y, (nb, out[-2], out[-1]))  # type: ignore[arg-type]
    fill = _fill(float(a["extrapolation_value"]))
    if a["mode"] == "nearest":
        return [Call(node, kx("resize_nearest"), [xv, yv, Const(th[0][:, 0].copy()), Const(tw[0][:, 0].copy()),
                                                  Const(th[2]), Const(tw[2]), fill, Lit(crop)], [y], note="nearest")]
    return [Call(node, kx("resize_taps"), [xv, yv, Const(th[0]), Const(th[1]), Const(tw[0]), Const(tw[1]),
                                           Const(th[2]), Const(tw[2]), fill, Lit(crop)], [y], note=a["mode"])]


# -- ConvTranspose ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TransposedWindow:
    """A ConvTranspose both targets' kernels take: its constant weights, groups, output channels per
    group, window (kh, kw, sh, sw, dh, dw, ph, pw) and 4-D views of x and y (1-D seen as 1 x L)."""

    weights: np.ndarray
    group: int
    per_group: int
    window: tuple[int, ...]
    x4: tuple[int, ...]
    y4: tuple[int, ...]


def convtranspose_window(node: Node) -> TransposedWindow | None:
    """The geometry of a 1-D/2-D float32 ConvTranspose with constant weights, exactly as the
    reference computes it (`_convtranspose_geometry`); None when the kernels do not take it."""
    x, w, b = node.inputs[0], node.inputs[1], node.input(2)
    y = node.outputs[0]
    wc = constant_value(w)
    if not f32(x, w, y) or wc is None or len(shape(x)) not in (3, 4) or (b is not None and not f32(b)):
        return None
    a = attrs(node)
    kernel = list(wc.shape[2:])
    if (a.get("kernel_shape") and list(a["kernel_shape"]) != kernel) or len(kernel) != len(shape(x)) - 2:
        return None
    try:
        st, dl, geo = _convtranspose_geometry(shape(x)[2:], kernel, a.get("auto_pad") or "NOTSET", a.get("dilations"),
                                              a.get("pads"), a.get("strides"), a.get("output_padding"),
                                              a.get("output_shape"))
    except (ValueError, NotImplementedError, TypeError):
        return None
    xs, ys = shape(x), shape(y)
    if tuple(g[0] for g in geo) != ys[2:]:
        return None
    n, c = xs[0], xs[1]
    group = int(a.get("group", 1))
    mg = wc.shape[1]
    if group < 1 or c % group or wc.shape[0] != c or ys[1] != group * mg:
        return None
    if len(kernel) == 1:
        window = (1, kernel[0], 1, st[0], 1, dl[0], 0, geo[0][1])
        x4, y4 = (n, c, 1, xs[2]), (n, ys[1], 1, ys[2])
    else:
        window = (kernel[0], kernel[1], st[0], st[1], dl[0], dl[1], geo[0][1], geo[1][1])
        x4, y4 = xs, ys
    return TransposedWindow(np.asarray(wc, np.float32), group, mg, tuple(int(v) for v in window), x4, y4)


@rule("ConvTranspose")
def conv_transpose(node: Node) -> list[Call] | None:
    """1-D/2-D, constant weights: per group one sgemm W^T @ X into columns, then col2im scatter-adds them
    (with the bias) into the output; one filter per channel (depthwise) runs direct loops instead."""
    t = convtranspose_window(node)
    if t is None:
        return None
    x, b, y = node.inputs[0], node.input(2), node.outputs[0]
    kh, kw, sh, sw, dh, dw, ph, pw = t.window
    x4, y4, group, mg = t.x4, t.y4, t.group, t.per_group
    c, ys = x4[1], y4
    m = ys[1]
    if b is None:
        bias: Use | Const = Const(np.zeros(m, np.float32))
    elif constant_value(b) is not None:
        bias = Const(np.ascontiguousarray(constant_value(b), np.float32).reshape(m))
    else:
        bias = Use(b, (m,))
    lits = [Lit(int(v)) for v in (sh, sw, ph, pw, dh, dw)]
    wf = t.weights
    if group == c and mg == 1 and group > 1:
        return [Call(node, kx("depthwise_conv_transpose2d"),
                     [arg(x, x4), Const(np.ascontiguousarray(wf.reshape(c, kh, kw))), bias, Use(y, y4), *lits],
                     [y], note="depthwise")]
    cig = c // group
    wt = np.ascontiguousarray(wf.reshape(group, cig, mg * kh * kw).transpose(0, 2, 1))
    cols = Scratch((mg * kh * kw, x4[2] * x4[3]), F32)
    return [Call(node, kx("conv_transpose2d"),
                 [arg(x, x4), Const(wt), bias, cols, Use(y, y4), Lit(int(kh)), Lit(int(kw)), *lits, Lit(group)],
                 [y], note="sgemm + col2im")]
