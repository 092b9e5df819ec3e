"""Reductions: Reduce*, ArgMax/ArgMin and the softmax family (Softmax, LogSoftmax, Hardmax).

All Reduce* ops share `_reduce_axes` (axes from the attribute before opset 13/18, from the optional
second input after; empty axes mean "all" unless noop_with_empty_axes) and one inference function.
Empty-set reductions give the identity of the operation (0, 1, -inf, +inf) as ONNX specifies.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..types import DType, Shape, TensorType, ValueType
from .core import Attr, InferContext, Kind, defop


def count_elems(shape: Shape) -> int:
    """Element count for MAC estimates: symbolic or unknown dims count as 1, unknown rank as 0."""
    if shape is None:
        return 0
    return int(np.prod([d if isinstance(d, int) else 1 for d in shape], dtype=np.int64))



def acc_dtype(dt: np.dtype) -> np.dtype:
    """Narrow floats (float16, bfloat16, float8) accumulate in float32, the rest in their own type."""
    if dt.kind == "f" and dt.itemsize >= 4:
        return dt
    if dt.kind in "biuc":
        return dt
    return np.dtype(np.float32)


# ---------------------------------------------------------------------------------------------
# Reduce*


def _reduce_axes(rank: int, axes_in: Any, axes_attr: Sequence[int] | None, noop: int) -> tuple[int, ...]:
    """Normalized axes to reduce. No axes means all of them, or none with noop_with_empty_axes: then
    the elementwise part still applies (ReduceSumSquare squares), as in onnxruntime and the ONNX reference."""
    axes = axes_attr if axes_in is None else np.asarray(axes_in).reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        return () if noop else tuple(range(rank))
    return tuple(sorted({int(a) + rank if int(a) < 0 else int(a) for a in axes}))


def _extreme(dt: np.dtype, largest: bool) -> Any:
    """The identity element of max (largest=False gives the smallest value) or min."""
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return info.max if largest else info.min
    if dt.kind == "b":
        return largest
    return np.inf if largest else -np.inf


def _log_sum_exp(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """log(sum(exp(x))) shifted by the max for stability; empty sets and all -inf give -inf."""
    m = np.max(x, axis=axes, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m


_REDUCERS: dict[str, Callable[[np.ndarray, tuple[int, ...]], np.ndarray]] = {
    "ReduceSum": lambda x, a: np.sum(x, axis=a, keepdims=True),
    "ReduceMean": lambda x, a: np.mean(x, axis=a, keepdims=True),
    "ReduceMax": lambda x, a: np.max(x, axis=a, keepdims=True, initial=_extreme(x.dtype, False)),
    "ReduceMin": lambda x, a: np.min(x, axis=a, keepdims=True, initial=_extreme(x.dtype, True)),
    "ReduceProd": lambda x, a: np.prod(x, axis=a, keepdims=True),
    "ReduceL1": lambda x, a: np.sum(np.abs(x), axis=a, keepdims=True),
    "ReduceL2": lambda x, a: np.sqrt(np.sum(np.square(x), axis=a, keepdims=True)),
    "ReduceLogSum": lambda x, a: np.log(np.sum(x, axis=a, keepdims=True)),
    "ReduceLogSumExp": _log_sum_exp,
    "ReduceSumSquare": lambda x, a: np.sum(np.square(x), axis=a, keepdims=True),
}


def _infer_reduce(ctx: InferContext, x: ValueType | None, axes_t: ValueType | None = None, *,
                  axes: Sequence[int] | None = None, keepdims: int = 1, noop_with_empty_axes: int = 0,
                  **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None]
    if x.shape is None:
        return [TensorType(x.dtype, None)]
    rank = len(x.shape)
    if axes_t is not None:  # axes given as an input: known only when constant
        const = ctx.const(1)
        if const is None:
            return [TensorType(x.dtype, (None,) * rank if keepdims else None)]
        red = _reduce_axes(rank, const, None, noop_with_empty_axes)
    else:
        red = _reduce_axes(rank, None, axes, noop_with_empty_axes)
    if keepdims:
        return [TensorType(x.dtype, tuple(1 if i in red else d for i, d in enumerate(x.shape)))]
    return [TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in red))]


def _def_reduce(op: str, axes_input_since: int) -> None:
    """Register Reduce`op`: one definition covering the attribute and the input form of axes."""
    fn = _REDUCERS[op]

    def reference(ctx: Any, x: np.ndarray, axes_in: np.ndarray | None = None, *, axes: Sequence[int] | None,
                  keepdims: int, noop_with_empty_axes: int, **_: Any) -> np.ndarray:
        if ctx.opset < axes_input_since and axes_in is not None:
            raise NotImplementedError(f"{op}: an axes input needs opset {axes_input_since}")
        red = _reduce_axes(x.ndim, axes_in, axes, noop_with_empty_axes)
        acc = acc_dtype(x.dtype)
        with np.errstate(divide="ignore"):
            y = fn(x.astype(acc, copy=False), red)
        if not keepdims:
            y = np.squeeze(y, axis=red)
        return np.asarray(y).astype(x.dtype, copy=False)

    reference.__name__ = reference.__qualname__ = op
    reference.__doc__ = f"{op} over `axes` (attribute before opset {axes_input_since}, input from it)."
    defop(op, kind=Kind.REDUCTION, inputs=(1, 2), outputs=(1, 1),
          attrs={"axes": Attr(None, type="ints"), "keepdims": 1, "noop_with_empty_axes": 0},
          infer=_infer_reduce)(reference)


for _op in _REDUCERS:
    _def_reduce(_op, 13 if _op == "ReduceSum" else 18)


# ---------------------------------------------------------------------------------------------
# ArgMax / ArgMin


def _arg(x: np.ndarray, axis: int, keepdims: int, select_last_index: int, fn: Callable[..., np.ndarray]) -> np.ndarray:
    axis = axis + x.ndim if axis < 0 else axis
    if select_last_index:  # first index in the reversed array is the last in the original
        idx = x.shape[axis] - 1 - fn(np.flip(x, axis), axis=axis, keepdims=True)
    else:
        idx = fn(x, axis=axis, keepdims=True)
    idx = idx.astype(np.int64, copy=False)
    return idx if keepdims else np.squeeze(idx, axis=axis)


def _infer_arg(ctx: InferContext, x: ValueType | None, *, axis: int = 0, keepdims: int = 1,
               **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None]
    if x.shape is None:
        return [TensorType(DType.INT64, None)]
    a = axis + len(x.shape) if axis < 0 else axis
    dims = [1 if i == a else d for i, d in enumerate(x.shape)] if keepdims else \
        [d for i, d in enumerate(x.shape) if i != a]
    return [TensorType(DType.INT64, tuple(dims))]


_ARG_ATTRS = {"axis": 0, "keepdims": 1, "select_last_index": 0}


@defop("ArgMax", kind=Kind.REDUCTION, attrs=_ARG_ATTRS, inputs=(1, 1), outputs=(1, 1), infer=_infer_arg)
def argmax(ctx: Any, x: np.ndarray, *, axis: int, keepdims: int, select_last_index: int) -> np.ndarray:
    return _arg(x, axis, keepdims, select_last_index, np.argmax)


@defop("ArgMin", kind=Kind.REDUCTION, attrs=_ARG_ATTRS, inputs=(1, 1), outputs=(1, 1), infer=_infer_arg)
def argmin(ctx: Any, x: np.ndarray, *, axis: int, keepdims: int, select_last_index: int) -> np.ndarray:
    return _arg(x, axis, keepdims, select_last_index, np.argmin)


# ---------------------------------------------------------------------------------------------
# Softmax family


def _along_axis(ctx: Any, x: np.ndarray, axis: int, fn: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Apply `fn` along `axis`; before opset 13 the input is first coerced to 2-D at `axis`."""
    axis = axis + x.ndim if axis < 0 else axis
    acc = acc_dtype(x.dtype)
    xa = x.astype(acc, copy=False)
    if ctx.opset < 13:
        lead = int(np.prod(x.shape[:axis], dtype=np.int64))
        y = fn(xa.reshape(lead, -1), 1).reshape(x.shape)
    else:
        y = fn(xa, axis)
    return y.astype(x.dtype, copy=False)


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    s = x - np.max(x, axis=axis, keepdims=True)
    return s - np.log(np.sum(np.exp(s), axis=axis, keepdims=True))


def _hardmax(x: np.ndarray, axis: int) -> np.ndarray:
    """One-hot of the first maximum along `axis`."""
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return y


def _infer_same(ctx: InferContext, x: ValueType | None, **_: Any) -> list[ValueType | None]:
    return [x if isinstance(x, TensorType) else None]


_SOFTMAX_ATTRS = {"axis": Attr(1, since={13: -1})}


@defop("Softmax", kind=Kind.REDUCTION, attrs=_SOFTMAX_ATTRS, inputs=(1, 1), outputs=(1, 1), infer=_infer_same)
def softmax(ctx: Any, x: np.ndarray, *, axis: int) -> np.ndarray:
    return _along_axis(ctx, x, axis, _softmax)


@defop("LogSoftmax", kind=Kind.REDUCTION, attrs=_SOFTMAX_ATTRS, inputs=(1, 1), outputs=(1, 1), infer=_infer_same)
def log_softmax(ctx: Any, x: np.ndarray, *, axis: int) -> np.ndarray:
    return _along_axis(ctx, x, axis, _log_softmax)


@defop("Hardmax", kind=Kind.REDUCTION, attrs=_SOFTMAX_ATTRS, inputs=(1, 1), outputs=(1, 1), infer=_infer_same)
def hardmax(ctx: Any, x: np.ndarray, *, axis: int) -> np.ndarray:
    return _along_axis(ctx, x, axis, _hardmax)
