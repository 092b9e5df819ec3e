"""Neural-network compute ops: MatMul, Gemm, Einsum, Conv, ConvTranspose, DeformConv and pooling.

Convolutions run as im2col (a strided `sliding_window_view`, copied once into a column matrix) and
one batched matmul over groups, so depthwise and grouped convs are vectorized like dense ones.
Pooling loops over kernel offsets (at most a few dozen strided slices), never over pixels.
The output size / padding rules (explicit pads, SAME_UPPER, SAME_LOWER, VALID, ceil_mode) are
computed by `_window_geometry`, shared by Conv, DeformConv and every pool; ConvTranspose has its own
inverse rule but splits SAME padding with the same `_split_pad`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..types import DType, Dim, Shape, TensorType, ValueType
from .core import Attr, InferContext, Kind, broadcast_shapes, defop
from .reduce import acc_dtype, count_elems

Ints = Sequence[int]

# ---------------------------------------------------------------------------------------------
# Shared geometry: pads, auto_pad, output sizes.


def _split_pad(total: int, auto_pad: str) -> tuple[int, int]:
    """(begin, end) of a total padding: SAME_UPPER puts the odd unit at the end, others at the start."""
    if auto_pad == "SAME_UPPER":
        return total // 2, total - total // 2
    return total - total // 2, total // 2


def _spatial_attrs(nd: int, strides: Ints | None, dilations: Ints | None, pads: Ints | None
                   ) -> tuple[list[int], list[int], list[int]]:
    """strides, dilations and pads (2*nd, begins then ends) with their defaults filled in."""
    return (list(strides) if strides else [1] * nd, list(dilations) if dilations else [1] * nd,
            list(pads) if pads else [0] * (2 * nd))


def _window_geometry(sizes: Sequence[Dim], kernel: Ints, strides: Ints, dilations: Ints, pads: Ints,
                     auto_pad: str, ceil_mode: int = 0) -> list[tuple[int | None, int, int]]:
    """(output size, pad begin, pad end) per spatial axis of a sliding window (Conv and pools).

    A non-integer input size gives output size None. In ceil mode a last window that would start
    in the end padding is dropped (ONNX and PyTorch rule).
    """
    nd = len(kernel)
    out: list[tuple[int | None, int, int]] = []
    for i, (n, k, s, d) in enumerate(zip(sizes, kernel, strides, dilations)):
        dk = (k - 1) * d + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            if not isinstance(n, int):
                out.append((None, 0, 0))
                continue
            o = -(-n // s)
            out.append((o, *_split_pad(max(0, (o - 1) * s + dk - n), auto_pad)))
            continue
        if auto_pad not in ("NOTSET", "VALID", "", None):
            raise NotImplementedError(f"auto_pad {auto_pad!r} is not supported")
        pb, pe = (0, 0) if auto_pad == "VALID" else (pads[i], pads[i + nd])
        if not isinstance(n, int):
            out.append((None, pb, pe))
            continue
        span = n + pb + pe - dk
        if ceil_mode:
            o = -(-span // s) + 1
            if (o - 1) * s >= n + pb:
                o -= 1
        else:
            o = span // s + 1
        out.append((o, pb, pe))
    return out


def _pad_spatial(x: np.ndarray, begin: Ints, end: Ints, value: Any = 0) -> np.ndarray:
    """x padded on its trailing len(begin) axes (negative pads crop)."""
    if not any(begin) and not any(end):
        return x
    nd = len(begin)
    lead = x.ndim - nd
    crop = tuple(slice(max(0, -b), x.shape[lead + i] - max(0, -e)) for i, (b, e) in enumerate(zip(begin, end)))
    x = x[(..., *crop)]
    widths = [(0, 0)] * lead + [(max(0, b), max(0, e)) for b, e in zip(begin, end)]
    return np.pad(x, widths, constant_values=value)


def _strided_slices(out: Ints, strides: Ints, dilations: Ints, kernel: Ints) -> Iterator[tuple[slice, ...]]:
    """For each kernel offset (row-major): the slices that pick its tap for every output position."""
    for off in itertools.product(*[range(k) for k in kernel]):
        yield tuple(slice(o * d, o * d + (n - 1) * s + 1, s) for o, d, n, s in zip(off, dilations, out, strides))


def _im2col(xp: np.ndarray, kernel: Ints, strides: Ints, dilations: Ints, out: Ints) -> np.ndarray:
    """Columns of a padded (N, C, *S) input as (N, C, prod(kernel), prod(out)), one copy."""
    nd = len(kernel)
    n, c = xp.shape[:2]
    pick = [slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides)]  # window starts of each output
    if all(k == 1 for k in kernel):  # 1x1: a strided view, no window axes
        return xp[(..., *pick)].reshape(n, c, 1, -1)
    win = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    v = sliding_window_view(xp, win, axis=tuple(range(2, 2 + nd)))  # (N, C, *S', *win)
    v = v[(..., *pick, *[slice(None, None, d) for d in dilations])]
    perm = (0, 1, *range(2 + nd, 2 + 2 * nd), *range(2, 2 + nd))  # window axes before output axes
    return v.transpose(perm).reshape(n, c, int(np.prod(kernel)), -1)


def _grouped_matmul(w: np.ndarray, cols: np.ndarray, group: int) -> np.ndarray:
    """(M, C/g, *K) weights times (N, C, K, L) columns -> (N, M, L), one batched matmul over groups."""
    n, c, kk, l_ = cols.shape
    m = w.shape[0]
    wr = w.reshape(group, m // group, -1)
    if group > 1 and c // group == 1 and m // group == 1:  # depthwise: a weighted sum over taps
        return np.einsum("ngkl,gk->ngl", cols.reshape(n, group, kk, l_), wr[:, 0, :]).reshape(n, m, l_)
    return np.matmul(wr, cols.reshape(n, group, (c // group) * kk, l_)).reshape(n, m, l_)


def _float_compute(*arrays: np.ndarray | None) -> tuple[np.dtype, list[np.ndarray | None]]:
    """(result dtype, arrays cast to the accumulation dtype): floats accumulate in float64.

    The reference rounds once to the result type, so its answer does not depend on how BLAS tiles a
    product: channels with equal inputs and weights give exactly equal outputs, as in exact math.
    """
    dt = arrays[0].dtype  # type: ignore[union-attr]
    acc = np.dtype(np.float64) if dt.kind == "f" or acc_dtype(dt).kind == "f" else acc_dtype(dt)
    return dt, [None if a is None else a.astype(acc, copy=False) for a in arrays]


def _out_dims(x: TensorType, channels: Dim, spatial: Sequence[Dim]) -> TensorType:
    return TensorType(x.dtype, (x.shape[0], channels, *spatial))  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# MatMul, Gemm, Einsum


def _matmul_shape(a: Shape, b: Shape) -> Shape:
    if a is None or b is None:
        return None
    if len(a) == 0 or len(b) == 0:
        raise ValueError("MatMul of a scalar")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = [*batch, a2[-2], b2[-1]]  # type: ignore[misc]
    if len(b) == 1:
        out.pop(-1)
    if len(a) == 1:
        out.pop(-1 if len(b) == 1 else -2)
    return tuple(out)


def _infer_matmul(ctx: InferContext, a: ValueType | None, b: ValueType | None, **_: Any) -> list[ValueType | None]:
    if not isinstance(a, TensorType) or not isinstance(b, TensorType):
        return [None]
    return [TensorType(a.dtype, _matmul_shape(a.shape, b.shape))]


def _dim1(d: Dim) -> int:
    return d if isinstance(d, int) else 1


def _macs_matmul(node: Any) -> int:
    """Output elements times the contracted size (batch dims included; symbolic dims count 1)."""
    a, y = node.inputs[0].shape, node.outputs[0].shape
    if a is None or y is None or len(a) == 0:
        return 0
    return count_elems(y) * _dim1(a[-1])


@defop("MatMul", kind=Kind.COMPLEX, inputs=(2, 2), outputs=(1, 1), infer=_infer_matmul, macs=_macs_matmul)
def matmul(ctx: Any, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    dt, (a2, b2) = _float_compute(a, b)
    return np.asarray(np.matmul(a2, b2)).astype(dt, copy=False)


def _gemm_mnk(a: Shape, b: Shape, trans_a: int, trans_b: int) -> tuple[Dim, Dim, Dim]:
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        raise ValueError("Gemm needs 2-D inputs")
    m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
    n = b[0] if trans_b else b[1]
    return m, n, k


def _infer_gemm(ctx: InferContext, a: ValueType | None, b: ValueType | None, c: ValueType | None = None, *,
                transA: int = 0, transB: int = 0, **_: Any) -> list[ValueType | None]:
    if not isinstance(a, TensorType) or not isinstance(b, TensorType):
        return [None]
    if a.shape is None or b.shape is None:
        return [TensorType(a.dtype, (None, None))]
    m, n, _k = _gemm_mnk(a.shape, b.shape, transA, transB)
    return [TensorType(a.dtype, (m, n))]


def _macs_gemm(node: Any) -> int:
    m, n, k = _gemm_mnk(node.inputs[0].shape, node.inputs[1].shape, node.attr("transA", 0), node.attr("transB", 0))
    return _dim1(m) * _dim1(n) * _dim1(k)


@defop("Gemm", kind=Kind.COMPLEX, inputs=(2, 3), outputs=(1, 1), infer=_infer_gemm, macs=_macs_gemm,
       attrs={"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0, "broadcast": 0})
def gemm(ctx: Any, a: np.ndarray, b: np.ndarray, c: np.ndarray | None = None, *, alpha: float, beta: float,
         transA: int, transB: int, broadcast: int = 0) -> np.ndarray:
    """alpha * A' @ B' + beta * C, C unidirectionally broadcast to (M, N)."""
    dt, (a2, b2, c2) = _float_compute(a, b, c)
    y = np.matmul(a2.T if transA else a2, b2.T if transB else b2)  # type: ignore[union-attr]
    if alpha != 1.0:
        y = y * alpha
    if c2 is not None and beta != 0.0:
        y = y + (c2 * beta if beta != 1.0 else c2)
    return np.asarray(y).astype(dt, copy=False)


_EINSUM_TERM = re.compile(r"^(?:[A-Za-z]|\.\.\.)*$")


def _einsum_terms(equation: str, n_inputs: int) -> tuple[list[str], str]:
    """Input terms and output term (implicit output: labels seen once, sorted, after '...')."""
    eq = equation.replace(" ", "")
    lhs, _, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs or not all(_EINSUM_TERM.match(t) for t in terms + [rhs]):
        raise ValueError(f"bad einsum equation {equation!r}")
    if "->" not in eq:
        letters = "".join(terms).replace("...", "")
        rhs = ("..." if "..." in lhs else "") + "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return terms, rhs


def _einsum_dims(terms: list[str], shapes: Sequence[Shape]) -> tuple[dict[str, Dim], Shape]:
    """Size of every label and the broadcast shape of the '...' dims."""
    sizes: dict[str, Dim] = {}
    ell: list[Shape] = []
    for t, s in zip(terms, shapes):
        if s is None:
            raise ValueError("unknown rank")
        labels = t.replace("...", "")
        n_ell = len(s) - len(labels)
        pre = t.split("...")[0] if "..." in t else t
        dims = list(s)
        if "..." in t:
            ell.append(tuple(dims[len(pre):len(pre) + n_ell]))
            dims = dims[:len(pre)] + dims[len(pre) + n_ell:]
        for c, d in zip(labels, dims):  # a label may broadcast (size 1) in one operand
            prev = sizes.get(c)
            sizes[c] = d if c not in sizes or prev is None or prev == 1 or (isinstance(d, int) and d != 1) else prev
    return sizes, broadcast_shapes(*ell) if ell else ()


def _infer_einsum(ctx: InferContext, *types: ValueType | None, equation: str = "", **_: Any) -> list[ValueType | None]:
    if not types or not all(isinstance(t, TensorType) for t in types):
        return [None]
    terms, rhs = _einsum_terms(equation, len(types))
    sizes, ell = _einsum_dims(terms, [t.shape for t in types])  # type: ignore[union-attr]
    if ell is None:
        return [TensorType(types[0].dtype, None)]  # type: ignore[union-attr]
    out: list[Dim] = []
    for part in re.findall(r"\.\.\.|[A-Za-z]", rhs):
        out.extend(ell if part == "..." else [sizes.get(part)])
    return [TensorType(types[0].dtype, tuple(out))]  # type: ignore[union-attr]


def _macs_einsum(node: Any) -> int:
    """Product of every label's size (the naive loop nest), symbolic dims counted as 1."""
    terms, _ = _einsum_terms(node.attr("equation", ""), len(node.inputs))
    sizes, ell = _einsum_dims(terms, [v.shape for v in node.inputs])
    return int(np.prod([_dim1(d) for d in sizes.values()], dtype=np.int64)) * count_elems(ell)


@defop("Einsum", kind=Kind.COMPLEX, inputs=(1, None), outputs=(1, 1), since_version=12,
       attrs={"equation": Attr(None, type="string")}, infer=_infer_einsum, macs=_macs_einsum)
def einsum(ctx: Any, *xs: np.ndarray, equation: str) -> np.ndarray:
    dt, ys = _float_compute(*xs)
    eq = equation.replace(" ", "")
    return np.asarray(np.einsum(eq, *ys, optimize=len(ys) > 2)).astype(dt, copy=False)


# ---------------------------------------------------------------------------------------------
# Conv, ConvTranspose, DeformConv


_CONV_ATTRS = {"auto_pad": "NOTSET", "dilations": Attr(None, type="ints"), "group": 1,
               "kernel_shape": Attr(None, type="ints"), "pads": Attr(None, type="ints"),
               "strides": Attr(None, type="ints")}


def _conv_geometry(x_shape: Shape, kernel: Ints, auto_pad: str, dilations: Ints | None, pads: Ints | None,
                   strides: Ints | None) -> tuple[list[int], list[int], list[tuple[int | None, int, int]]]:
    s, d, p = _spatial_attrs(len(kernel), strides, dilations, pads)
    return s, d, _window_geometry(x_shape[2:], kernel, s, d, p, auto_pad)  # type: ignore[index]


def _infer_conv(ctx: InferContext, x: ValueType | None, w: ValueType | None, *rest: ValueType | None,
                kernel_shape: Ints | None = None, auto_pad: str = "NOTSET", dilations: Ints | None = None,
                pads: Ints | None = None, strides: Ints | None = None, **_: Any) -> list[ValueType | None]:
    """Conv and DeformConv: (N, M, *out) with out None where a spatial dim is not a known int."""
    if not isinstance(x, TensorType) or not isinstance(w, TensorType):
        return [None]
    if x.shape is None or w.shape is None:
        return [TensorType(x.dtype, None)]
    kernel = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        return [TensorType(x.dtype, (x.shape[0], w.shape[0], *[None] * (len(x.shape) - 2)))]
    _, _, geo = _conv_geometry(x.shape, kernel, auto_pad, dilations, pads, strides)  # type: ignore[arg-type]
    return [_out_dims(x, w.shape[0], [o for o, _, _ in geo])]


def _macs_conv(node: Any) -> int:
    """N * Cout * prod(out spatial) * Cin/group * prod(kernel) = output elements * prod(W.shape[1:])."""
    w, y = node.inputs[1].shape, node.outputs[0].shape
    if w is None or y is None:
        return 0
    return count_elems(y) * count_elems(w[1:])


@defop("Conv", kind=Kind.COMPLEX, inputs=(2, 3), outputs=(1, 1), attrs=_CONV_ATTRS, infer=_infer_conv,
       macs=_macs_conv)
def conv(ctx: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, auto_pad: str,
         dilations: Ints | None, group: int, kernel_shape: Ints | None, pads: Ints | None,
         strides: Ints | None) -> np.ndarray:
    kernel = list(w.shape[2:])
    if kernel_shape and list(kernel_shape) != kernel:
        raise NotImplementedError("Conv: kernel_shape different from the weight's shape is not supported")
    s, d, geo = _conv_geometry(x.shape, kernel, auto_pad, dilations, pads, strides)
    out = [o for o, _, _ in geo]
    dt, (x2, w2, b2) = _float_compute(x, w, b)
    xp = _pad_spatial(x2, [g[1] for g in geo], [g[2] for g in geo])  # type: ignore[arg-type]
    y = _grouped_matmul(w2, _im2col(xp, kernel, s, d, out), group)  # type: ignore[arg-type]
    if b2 is not None:
        y += b2.reshape(1, -1, 1)
    return y.reshape(x.shape[0], w.shape[0], *out).astype(dt, copy=False)  # type: ignore[arg-type]


def _convtranspose_geometry(sizes: Sequence[Dim], kernel: Ints, auto_pad: str, dilations: Ints | None,
                            pads: Ints | None, strides: Ints | None, output_padding: Ints | None,
                            output_shape: Ints | None) -> tuple[list[int], list[int], list[tuple[Dim, int, int]]]:
    """strides, dilations and (output size, pad begin, pad end) per spatial axis of ConvTranspose."""
    nd = len(kernel)
    s, d, p = _spatial_attrs(nd, strides, dilations, pads)
    op = list(output_padding) if output_padding else [0] * nd
    target = list(output_shape)[-nd:] if output_shape else None
    geo: list[tuple[Dim, int, int]] = []
    for i, n in enumerate(sizes):
        full = None if not isinstance(n, int) else s[i] * (n - 1) + op[i] + (kernel[i] - 1) * d[i] + 1
        if target is not None or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            o = target[i] if target is not None else (n * s[i] if isinstance(n, int) else None)
            pb, pe = _split_pad(full - o, auto_pad) if full is not None and o is not None else (0, 0)
            geo.append((o, pb, pe))
        else:
            pb, pe = (0, 0) if auto_pad == "VALID" else (p[i], p[i + nd])
            geo.append((None if full is None else full - pb - pe, pb, pe))
    return s, d, geo


def _infer_convtranspose(ctx: InferContext, x: ValueType | None, w: ValueType | None, *rest: ValueType | None,
                         kernel_shape: Ints | None = None, auto_pad: str = "NOTSET", dilations: Ints | None = None,
                         pads: Ints | None = None, strides: Ints | None = None, group: int = 1,
                         output_padding: Ints | None = None, output_shape: Ints | None = None,
                         **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType) or not isinstance(w, TensorType):
        return [None]
    if x.shape is None or w.shape is None:
        return [TensorType(x.dtype, None)]
    m = w.shape[1] * group if isinstance(w.shape[1], int) else None
    kernel = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    if not all(isinstance(k, int) for k in kernel):
        return [TensorType(x.dtype, (x.shape[0], m, *[None] * (len(x.shape) - 2)))]
    _, _, geo = _convtranspose_geometry(x.shape[2:], kernel, auto_pad, dilations, pads, strides,
                                        output_padding, output_shape)  # type: ignore[arg-type]
    return [_out_dims(x, m, [o for o, _, _ in geo])]


def _macs_convtranspose(node: Any) -> int:
    """Every input element meets Cout/group * prod(kernel) weights: numel(X) * prod(W.shape[1:])."""
    x, w = node.inputs[0].shape, node.inputs[1].shape
    if x is None or w is None:
        return 0
    return count_elems(x) * count_elems(w[1:])


@defop("ConvTranspose", kind=Kind.COMPLEX, inputs=(2, 3), outputs=(1, 1), infer=_infer_convtranspose,
       macs=_macs_convtranspose,
       attrs={**_CONV_ATTRS, "output_padding": Attr(None, type="ints"), "output_shape": Attr(None, type="ints")})
def conv_transpose(ctx: Any, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, *, auto_pad: str,
                   dilations: Ints | None, group: int, kernel_shape: Ints | None, pads: Ints | None,
                   strides: Ints | None, output_padding: Ints | None, output_shape: Ints | None) -> np.ndarray:
    """col2im: one batched matmul W^T @ X per group, then one strided add per kernel offset."""
    n, c = x.shape[:2]
    kernel = list(w.shape[2:])
    if kernel_shape and list(kernel_shape) != kernel:
        raise NotImplementedError("ConvTranspose: kernel_shape different from the weight's shape is not supported")
    s, d, geo = _convtranspose_geometry(x.shape[2:], kernel, auto_pad, dilations, pads, strides,
                                        output_padding, output_shape)
    dt, (x2, w2, b2) = _float_compute(x, w, b)
    mg, kk, sizes = w.shape[1], int(np.prod(kernel)), x.shape[2:]
    wt = w2.reshape(group, c // group, mg * kk).transpose(0, 2, 1)  # type: ignore[union-attr]
    cols = np.matmul(wt, x2.reshape(n, group, c // group, -1))  # type: ignore[union-attr]
    cols = cols.reshape(n, group * mg, *kernel, *sizes)
    out = [int(o) for o, _, _ in geo]  # type: ignore[arg-type]
    y = np.zeros((n, group * mg, *out), dtype=cols.dtype)
    for off in itertools.product(*[range(k) for k in kernel]):
        src, dst = [], []
        for i, (k, (o, pb, _)) in enumerate(zip(off, geo)):
            shift = k * d[i] - pb  # output position of input index j is j * s + shift
            lo = max(0, -(shift // s[i]))
            hi = min(sizes[i] - 1, (o - 1 - shift) // s[i])  # type: ignore[operator]
            if lo > hi:
                break
            src.append(slice(lo, hi + 1))
            dst.append(slice(lo * s[i] + shift, hi * s[i] + shift + 1, s[i]))
        else:
            y[(slice(None), slice(None), *dst)] += cols[(slice(None), slice(None), *off, *src)]
    if b2 is not None:
        y += b2.reshape(1, -1, *[1] * len(out))
    return y.astype(dt, copy=False)


def _bilinear_cols(x: np.ndarray, ph: np.ndarray, pw: np.ndarray) -> np.ndarray:
    """Bilinear samples of x (N, G, Cg, H, W) at positions (N, G, P) -> (N, G, Cg, P); zero outside."""
    n, g, cg, h, w = x.shape
    flat = x.reshape(n, g, cg, h * w)
    h0, w0 = np.floor(ph), np.floor(pw)
    lh, lw = ph - h0, pw - w0
    h0, w0 = h0.astype(np.int64), w0.astype(np.int64)
    out = np.zeros((n, g, cg, ph.shape[-1]), dtype=x.dtype)
    for dh, dw, wt in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw), (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
        hi, wi = h0 + dh, w0 + dw
        ok = (hi >= 0) & (hi < h) & (wi >= 0) & (wi < w)
        idx = np.where(ok, np.clip(hi, 0, h - 1) * w + np.clip(wi, 0, w - 1), 0)
        vals = np.take_along_axis(flat, idx[:, :, None, :], axis=3)
        out += vals * np.where(ok, wt, 0).astype(x.dtype)[:, :, None, :]
    return out


@defop("DeformConv", kind=Kind.COMPLEX, inputs=(3, 5), outputs=(1, 1), since_version=19, infer=_infer_conv,
       macs=_macs_conv,
       attrs={"dilations": Attr(None, type="ints"), "group": 1, "kernel_shape": Attr(None, type="ints"),
              "offset_group": 1, "pads": Attr(None, type="ints"), "strides": Attr(None, type="ints")})
def deform_conv(ctx: Any, x: np.ndarray, w: np.ndarray, offset: np.ndarray, b: np.ndarray | None = None,
                mask: np.ndarray | None = None, *, dilations: Ints | None, group: int, kernel_shape: Ints | None,
                offset_group: int, pads: Ints | None, strides: Ints | None) -> np.ndarray:
    """Conv whose taps are bilinearly sampled at offset positions (2-D only), times the mask."""
    if x.ndim != 4:
        raise NotImplementedError("DeformConv: only 2-D inputs are supported")
    kernel = list(w.shape[2:])
    s, d, geo = _conv_geometry(x.shape, kernel, "NOTSET", dilations, pads, strides)
    (oh, pt, _), (ow, pl, _) = geo
    n, c, h, wd = x.shape
    kk, og = kernel[0] * kernel[1], offset_group
    dt, (x2, w2, b2, off2, m2) = _float_compute(x, w, b, offset, mask)
    off2 = off2.reshape(n, og, kk, 2, oh * ow)  # type: ignore[union-attr, operator]
    ki, kj = np.meshgrid(np.arange(kernel[0]), np.arange(kernel[1]), indexing="ij")
    yy, xx = np.meshgrid(np.arange(oh) * s[0] - pt, np.arange(ow) * s[1] - pl, indexing="ij")  # type: ignore[operator]
    ph = (yy.reshape(1, -1) + (ki * d[0]).reshape(-1, 1))[None, None] + off2[:, :, :, 0]  # (N, og, KK, L)
    pw = (xx.reshape(1, -1) + (kj * d[1]).reshape(-1, 1))[None, None] + off2[:, :, :, 1]
    xg = x2.reshape(n, og, c // og, h, wd)  # type: ignore[union-attr]
    cols = _bilinear_cols(xg, ph.reshape(n, og, -1), pw.reshape(n, og, -1))
    cols = cols.reshape(n, og, c // og, kk, oh * ow)  # type: ignore[operator]
    if m2 is not None:
        cols = cols * m2.reshape(n, og, 1, kk, oh * ow)  # type: ignore[operator]
    y = _grouped_matmul(w2, cols.reshape(n, c, kk, -1), group)  # type: ignore[arg-type]
    if b2 is not None:
        y += b2.reshape(1, -1, 1)
    return y.reshape(n, w.shape[0], oh, ow).astype(dt, copy=False)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Pooling


_POOL_ATTRS = {"auto_pad": "NOTSET", "ceil_mode": 0, "dilations": Attr(None, type="ints"),
               "kernel_shape": Attr(None, type="ints"), "pads": Attr(None, type="ints"),
               "strides": Attr(None, type="ints")}


class _Pool:
    """Geometry of one pooling call: padded input layout, output sizes, per-axis pads."""

    def __init__(self, x: np.ndarray, kernel_shape: Ints | None, auto_pad: str, ceil_mode: int,
                 dilations: Ints | None, pads: Ints | None, strides: Ints | None) -> None:
        if not kernel_shape:
            raise ValueError("kernel_shape is required")
        self.kernel = list(kernel_shape)
        self.nd = nd = len(self.kernel)
        self.strides, self.dilations, p = _spatial_attrs(nd, strides, dilations, pads)
        geo = _window_geometry(x.shape[2:], self.kernel, self.strides, self.dilations, p, auto_pad, ceil_mode)
        self.out = [int(o) for o, _, _ in geo]  # type: ignore[arg-type]
        self.pb = [pb for _, pb, _ in geo]
        self.pe = [pe for _, _, pe in geo]
        self.sizes = list(x.shape[2:])
        # ceil mode may need taps past the end padding; they are padded too but never counted
        self.extra = [max(0, (o - 1) * s + (k - 1) * d + 1 - (n + b + e)) for o, s, k, d, n, b, e in
                      zip(self.out, self.strides, self.kernel, self.dilations, self.sizes, self.pb, self.pe)]

    def pad(self, x: np.ndarray, value: Any) -> np.ndarray:
        return _pad_spatial(x, self.pb, [e + x_ for e, x_ in zip(self.pe, self.extra)], value)

    def taps(self) -> Iterator[tuple[slice, ...]]:
        return _strided_slices(self.out, self.strides, self.dilations, self.kernel)

    def window_sum(self, xp: np.ndarray) -> np.ndarray:
        acc = None
        for sl in self.taps():
            acc = xp[(..., *sl)].copy() if acc is None else np.add(acc, xp[(..., *sl)], out=acc)
        return acc  # type: ignore[return-value]

    def counts(self, include_pad: int) -> np.ndarray:
        """Taps per window that are counted by an average: in the input, or in its explicit pads."""
        if include_pad:
            mask = np.ones([n + b + e for n, b, e in zip(self.sizes, self.pb, self.pe)], np.float32)
            mask = _pad_spatial(mask, [0] * self.nd, self.extra)
        else:
            mask = self.pad(np.ones(self.sizes, np.float32), 0)
        return self.window_sum(mask)


def _infer_pool(ctx: InferContext, x: ValueType | None, *rest: ValueType | None, kernel_shape: Ints | None = None,
                auto_pad: str = "NOTSET", ceil_mode: int = 0, dilations: Ints | None = None, pads: Ints | None = None,
                strides: Ints | None = None, **_: Any) -> list[ValueType | None]:
    """Pools: (N, C, *out); MaxPool's optional Indices output has the same shape in int64."""
    if not isinstance(x, TensorType) or not kernel_shape:
        return [None, None]
    if x.shape is None:
        return [TensorType(x.dtype, None), TensorType(DType.INT64, None)]
    s, d, p = _spatial_attrs(len(kernel_shape), strides, dilations, pads)
    geo = _window_geometry(x.shape[2:], kernel_shape, s, d, p, auto_pad, ceil_mode)
    y = _out_dims(x, x.shape[1], [o for o, _, _ in geo])
    return [y, TensorType(DType.INT64, y.shape)]


@defop("MaxPool", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 2), infer=_infer_pool,
       attrs={**_POOL_ATTRS, "storage_order": 0})
def max_pool(ctx: Any, x: np.ndarray, *, auto_pad: str, ceil_mode: int, dilations: Ints | None,
             kernel_shape: Ints | None, pads: Ints | None, storage_order: int,
             strides: Ints | None) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Max over each window (padding never wins); Indices are flat indices into X, as ONNX defines."""
    pool = _Pool(x, kernel_shape, auto_pad, ceil_mode, dilations, pads, strides)
    low = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
    xp = pool.pad(x, low)
    want_idx = ctx.num_outputs > 1
    best: np.ndarray | None = None
    arg: np.ndarray | None = None
    for t, sl in enumerate(pool.taps()):
        v = xp[(..., *sl)]
        if best is None:
            best = v.copy()
            arg = np.zeros(v.shape, np.int64) if want_idx else None
        elif want_idx:
            better = v > best  # strict: the first maximum in scan order wins
            best = np.where(better, v, best)
            arg[better] = t  # type: ignore[index]
        else:
            np.maximum(best, v, out=best)
    if not want_idx:
        return best  # type: ignore[return-value]
    # tap index -> input coordinates -> flat index (row-major, or column-major spatial when storage_order=1)
    taps = np.array(list(itertools.product(*[range(k) for k in pool.kernel])), np.int64).reshape(-1, pool.nd)
    n, c = x.shape[:2]
    spatial = 0
    order = range(pool.nd - 1, -1, -1) if storage_order else range(pool.nd)
    for i in order:
        pos = np.arange(pool.out[i]).reshape([-1 if j == i else 1 for j in range(pool.nd)])
        coord = pos * pool.strides[i] - pool.pb[i] + taps[arg, i] * pool.dilations[i]  # type: ignore[index]
        spatial = spatial * pool.sizes[i] + coord
    base = (np.arange(n * c, dtype=np.int64) * int(np.prod(pool.sizes))).reshape(n, c, *[1] * pool.nd)
    return best, base + spatial  # type: ignore[return-value]


@defop("AveragePool", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 1), infer=_infer_pool,
       attrs={**_POOL_ATTRS, "count_include_pad": 0})
def average_pool(ctx: Any, x: np.ndarray, *, auto_pad: str, ceil_mode: int, count_include_pad: int,
                 dilations: Ints | None, kernel_shape: Ints | None, pads: Ints | None,
                 strides: Ints | None) -> np.ndarray:
    pool = _Pool(x, kernel_shape, auto_pad, ceil_mode, dilations, pads, strides)
    dt, (x2,) = _float_compute(x)
    total = pool.window_sum(pool.pad(x2, 0))  # type: ignore[arg-type]
    return (total / pool.counts(count_include_pad).astype(total.dtype)).astype(dt, copy=False)


@defop("LpPool", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 1), infer=_infer_pool,
       attrs={**_POOL_ATTRS, "p": 2})
def lp_pool(ctx: Any, x: np.ndarray, *, auto_pad: str, ceil_mode: int, dilations: Ints | None,
            kernel_shape: Ints | None, p: float, pads: Ints | None, strides: Ints | None) -> np.ndarray:
    """(sum over the window of |x|^p)^(1/p); padding contributes zero."""
    pool = _Pool(x, kernel_shape, auto_pad, ceil_mode, dilations, pads, strides)
    dt, (x2,) = _float_compute(x)
    total = pool.window_sum(pool.pad(np.abs(x2) ** p, 0))  # type: ignore[operator]
    return (total ** (1.0 / p)).astype(dt, copy=False)


def _infer_global(ctx: InferContext, x: ValueType | None, **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    return [TensorType(x.dtype, (*x.shape[:2], *[1] * (len(x.shape) - 2)))]


def _global(x: np.ndarray, fn: Any) -> np.ndarray:
    dt, (x2,) = _float_compute(x)
    return np.asarray(fn(x2, tuple(range(2, x.ndim)))).astype(dt, copy=False)


@defop("GlobalAveragePool", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 1), infer=_infer_global)
def global_average_pool(ctx: Any, x: np.ndarray) -> np.ndarray:
    return _global(x, lambda a, ax: np.mean(a, axis=ax, keepdims=True))


@defop("GlobalMaxPool", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 1), infer=_infer_global)
def global_max_pool(ctx: Any, x: np.ndarray) -> np.ndarray:
    return _global(x, lambda a, ax: np.max(a, axis=ax, keepdims=True))


@defop("GlobalLpPool", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 1), infer=_infer_global, attrs={"p": 2})
def global_lp_pool(ctx: Any, x: np.ndarray, *, p: float) -> np.ndarray:
    return _global(x, lambda a, ax: np.sum(np.abs(a) ** p, axis=ax, keepdims=True) ** (1.0 / p))


def _unpool_shape(sizes: Sequence[Dim], kernel: Ints, pads: Ints | None, strides: Ints | None) -> list[Dim]:
    s, _, p = _spatial_attrs(len(kernel), strides, None, pads)
    nd = len(kernel)
    return [(n - 1) * s[i] + kernel[i] - p[i] - p[i + nd] if isinstance(n, int) else None
            for i, n in enumerate(sizes)]


def _infer_maxunpool(ctx: InferContext, x: ValueType | None, i: ValueType | None, shape: ValueType | None = None, *,
                     kernel_shape: Ints | None = None, pads: Ints | None = None, strides: Ints | None = None,
                     **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType) or x.shape is None or not kernel_shape:
        return [None]
    if shape is not None:
        const = ctx.const(2)
        return [TensorType(x.dtype, None if const is None else tuple(int(v) for v in const))]
    return [_out_dims(x, x.shape[1], _unpool_shape(x.shape[2:], kernel_shape, pads, strides))]


@defop("MaxUnpool", kind=Kind.INJECTIVE, inputs=(2, 3), outputs=(1, 1), since_version=9, infer=_infer_maxunpool,
       attrs={"kernel_shape": Attr(None, type="ints"), "pads": Attr(None, type="ints"),
              "strides": Attr(None, type="ints")})
def max_unpool(ctx: Any, x: np.ndarray, indices: np.ndarray, output_shape: np.ndarray | None = None, *,
               kernel_shape: Ints, pads: Ints | None, strides: Ints | None) -> np.ndarray:
    """Zeros with X scattered at the flat Indices MaxPool produced.

    Indices address the shape inferred from the attributes; an explicit output_shape then pads (or
    crops) that result at the end of each axis, as the ONNX reference and its test data do.
    """
    shape = [*x.shape[:2], *_unpool_shape(x.shape[2:], kernel_shape, pads, strides)]
    y = np.zeros(int(np.prod(shape)), dtype=x.dtype)  # type: ignore[arg-type]
    y[indices.reshape(-1)] = x.reshape(-1)
    y = y.reshape(shape)  # type: ignore[arg-type]
    if output_shape is None:
        return y
    target = [int(v) for v in output_shape]
    out = np.zeros(target, dtype=x.dtype)
    common = tuple(slice(0, min(a, b)) for a, b in zip(shape, target))  # type: ignore[type-var]
    out[common] = y[common]
    return out


def _infer_maxroipool(ctx: InferContext, x: ValueType | None, rois: ValueType | None, *,
                      pooled_shape: Ints | None = None, **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType) or not pooled_shape:
        return [None]
    n = rois.shape[0] if isinstance(rois, TensorType) and rois.shape else None
    c = x.shape[1] if x.shape else None
    return [TensorType(x.dtype, (n, c, *pooled_shape))]


@defop("MaxRoiPool", kind=Kind.REDUCTION, inputs=(2, 2), outputs=(1, 1), infer=_infer_maxroipool,
       attrs={"pooled_shape": Attr(None, type="ints"), "spatial_scale": 1.0})
def max_roi_pool(ctx: Any, x: np.ndarray, rois: np.ndarray, *, pooled_shape: Ints, spatial_scale: float) -> np.ndarray:
    """Caffe-style RoI max pooling; loops over RoIs and bins (few), each bin a vectorized max over C."""
    ph, pw = pooled_shape
    _, c, h, w = x.shape
    y = np.zeros((rois.shape[0], c, ph, pw), dtype=x.dtype)
    for r, (bi, x1, y1, x2, y2) in enumerate(rois.astype(np.float64)):
        xs, ys, xe, ye = (int(np.round(v * spatial_scale)) for v in (x1, y1, x2, y2))
        bh, bw = max(ye - ys + 1, 1) / ph, max(xe - xs + 1, 1) / pw
        for i in range(ph):
            h0, h1 = min(max(int(np.floor(i * bh)) + ys, 0), h), min(max(int(np.ceil((i + 1) * bh)) + ys, 0), h)
            for j in range(pw):
                w0, w1 = min(max(int(np.floor(j * bw)) + xs, 0), w), min(max(int(np.ceil((j + 1) * bw)) + xs, 0), w)
                if h1 > h0 and w1 > w0:
                    y[r, :, i, j] = x[int(bi), :, h0:h1, w0:w1].max(axis=(1, 2))
    return y
