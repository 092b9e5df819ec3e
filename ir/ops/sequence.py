"""Sequence and optional ops.

A sequence value is a Python list of arrays (never mutated in place: every op returns a new list);
an optional value is its element, or None when empty.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

import numpy as np

from ..types import DType, OptionalType, SequenceType, TensorType, ValueType
from .control import join_types, scalar
from .core import REQUIRED, Attr, EvalContext, InferContext, Kind, defop


def _elem(t: ValueType | None) -> ValueType | None:
    return t.elem if isinstance(t, SequenceType) else None


def _same_seq(ctx: InferContext, s: ValueType | None, *_: Any, **__: Any) -> list[ValueType | None]:
    """Inference: the input sequence's type."""
    return [s if isinstance(s, SequenceType) else None]


def _position(seq: list[Any], pos: Any, op: str, insert: bool = False) -> int:
    """A position in [-n, n-1] ([-n, n] for insertion), made non-negative."""
    n = len(seq)
    p = int(scalar(pos, f"{op}: position"))
    hi = n if insert else n - 1
    if not -n <= p <= hi:
        raise IndexError(f"{op}: position {p} is out of range for a sequence of length {n}")
    return p + n if p < 0 else p


def _seq_arg(x: Any, op: str) -> list[Any]:
    if not isinstance(x, list):
        raise TypeError(f"{op}: expected a sequence, got {type(x).__name__}")
    return x


# ---------------------------------------------------------------------------------------------


@defop("SequenceConstruct", kind=Kind.OPAQUE, inputs=(1, None), outputs=(1, 1), since_version=11,
       infer=lambda ctx, *ts, **_: [SequenceType(reduce(join_types, ts) if ts else None)])
def sequence_construct(ctx: EvalContext, *xs: Any) -> list[Any]:
    """A sequence of the inputs, in order."""
    return list(xs)


def _infer_empty(ctx: InferContext, *, dtype: int | None, **_: Any) -> list[ValueType | None]:
    return [SequenceType(TensorType(DType(dtype if dtype is not None else DType.FLOAT), None))]


@defop("SequenceEmpty", kind=Kind.OPAQUE, attrs={"dtype": Attr(None)}, inputs=(0, 0), outputs=(1, 1),
       since_version=11, infer=_infer_empty)
def sequence_empty(ctx: EvalContext, *, dtype: int | None) -> list[Any]:
    """An empty sequence (its element type lives in the value's type, default float)."""
    return []


@defop("SequenceAt", kind=Kind.OPAQUE, inputs=(2, 2), outputs=(1, 1), since_version=11,
       infer=lambda ctx, s, p, **_: [_elem(s)])
def sequence_at(ctx: EvalContext, seq: list[Any], position: Any) -> Any:
    """The element at `position` (negative counts from the back)."""
    seq = _seq_arg(seq, "SequenceAt")
    return seq[_position(seq, position, "SequenceAt")]


def _infer_insert(ctx: InferContext, s: ValueType | None, t: ValueType | None, *_: Any,
                  **__: Any) -> list[ValueType | None]:
    if not isinstance(s, SequenceType):
        return [None]
    return [SequenceType(join_types(s.elem, t))]


@defop("SequenceInsert", kind=Kind.OPAQUE, inputs=(2, 3), outputs=(1, 1), since_version=11, infer=_infer_insert)
def sequence_insert(ctx: EvalContext, seq: list[Any], tensor: Any, position: Any = None) -> list[Any]:
    """A new sequence with `tensor` inserted before `position` (default: appended)."""
    seq = list(_seq_arg(seq, "SequenceInsert"))
    p = len(seq) if position is None else _position(seq, position, "SequenceInsert", insert=True)
    seq.insert(p, tensor)
    return seq


@defop("SequenceErase", kind=Kind.OPAQUE, inputs=(1, 2), outputs=(1, 1), since_version=11, infer=_same_seq)
def sequence_erase(ctx: EvalContext, seq: list[Any], position: Any = None) -> list[Any]:
    """A new sequence without the element at `position` (default: the last)."""
    seq = list(_seq_arg(seq, "SequenceErase"))
    p = _position(seq, -1 if position is None else position, "SequenceErase")
    del seq[p]
    return seq


@defop("SequenceLength", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), since_version=11,
       infer=lambda ctx, *_, **__: [TensorType(DType.INT64, ())])
def sequence_length(ctx: EvalContext, seq: list[Any]) -> np.ndarray:
    return np.array(len(_seq_arg(seq, "SequenceLength")), np.int64)


# ---------------------------------------------------------------------------------------------


def _infer_split(ctx: InferContext, x: ValueType | None, split: ValueType | None = None, *, axis: int, keepdims: int,
                 **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType) or x.shape is None:
        return [SequenceType(TensorType(x.dtype, None)) if isinstance(x, TensorType) else None]
    ax = axis + len(x.shape) if axis < 0 else axis
    if not 0 <= ax < len(x.shape):
        return [None]
    if split is None:
        shape = x.shape[:ax] + ((1,) if keepdims else ()) + x.shape[ax + 1 :]
    else:
        shape = x.shape[:ax] + (None,) + x.shape[ax + 1 :]
    return [SequenceType(TensorType(x.dtype, shape))]


@defop("SplitToSequence", kind=Kind.OPAQUE, attrs={"axis": 0, "keepdims": 1}, inputs=(1, 2), outputs=(1, 1),
       since_version=11, infer=_infer_split)
def split_to_sequence(ctx: EvalContext, x: np.ndarray, split: Any = None, *, axis: int, keepdims: int) -> list[Any]:
    """Splits along `axis` into parts of sizes `split` (scalar: equal chunks, last smaller; none: 1s)."""
    x = np.asarray(x)
    ax = axis + x.ndim if axis < 0 else axis
    if not 0 <= ax < x.ndim:
        raise ValueError(f"SplitToSequence: axis {axis} is out of range for rank {x.ndim}")
    dim = x.shape[ax]
    if split is None:
        parts = [np.take(x, [i], axis=ax) for i in range(dim)]
        return parts if keepdims else [np.squeeze(p, axis=ax) for p in parts]
    s = np.asarray(split).astype(np.int64)
    if s.ndim == 0:
        step = int(s)
        if step <= 0:
            raise ValueError(f"SplitToSequence: split must be positive, got {step}")
        sizes = [min(step, dim - i) for i in range(0, dim, step)]
    elif s.ndim == 1:
        sizes = [int(v) for v in s]
        if any(v < 0 for v in sizes) or sum(sizes) != dim:
            raise ValueError(f"SplitToSequence: split {sizes} does not add up to dim {dim}")
    else:
        raise ValueError("SplitToSequence: split must be a scalar or a 1-D tensor")
    bounds = np.cumsum([0] + sizes)
    return [np.take(x, np.arange(bounds[i], bounds[i + 1]), axis=ax) for i in range(len(sizes))]


def _infer_concat(ctx: InferContext, s: ValueType | None, *, axis: int, new_axis: int,
                  **_: Any) -> list[ValueType | None]:
    e = _elem(s)
    if not isinstance(e, TensorType):
        return [None]
    if e.shape is None:
        return [TensorType(e.dtype, None)]
    r = len(e.shape) + (1 if new_axis else 0)
    ax = axis + r if axis < 0 else axis
    if not 0 <= ax < r:
        return [None]
    shape = list(e.shape)
    if new_axis:
        shape.insert(ax, None)
    else:
        shape[ax] = None
    return [TensorType(e.dtype, tuple(shape))]


@defop("ConcatFromSequence", kind=Kind.OPAQUE, attrs={"axis": Attr(REQUIRED), "new_axis": 0}, inputs=(1, 1),
       outputs=(1, 1), since_version=11, infer=_infer_concat)
def concat_from_sequence(ctx: EvalContext, seq: list[Any], *, axis: int, new_axis: int) -> np.ndarray:
    """Concatenates the elements along `axis` (stacks them on a new axis when `new_axis`)."""
    seq = _seq_arg(seq, "ConcatFromSequence")
    if axis is None:
        raise ValueError("ConcatFromSequence: attribute axis is required")
    if not seq:
        raise NotImplementedError("ConcatFromSequence: an empty sequence is not supported")
    xs = [np.asarray(x) for x in seq]
    r = xs[0].ndim + (1 if new_axis else 0)
    if not -r <= axis < r:
        raise ValueError(f"ConcatFromSequence: axis {axis} is out of range for rank {r}")
    return np.stack(xs, axis=axis) if new_axis else np.concatenate(xs, axis=axis)


# ---------------------------------------------------------------------------------------------


def _infer_map(ctx: InferContext, *types: ValueType | None, body: Any, **_: Any) -> list[ValueType | None]:
    return [SequenceType(v.type) for v in body.outputs]


@defop("SequenceMap", kind=Kind.OPAQUE, attrs={"body": Attr(REQUIRED)}, inputs=(1, None), outputs=(1, None),
       since_version=17, infer=_infer_map)
def sequence_map(ctx: EvalContext, seq: list[Any], *extra: Any, body: Any) -> tuple[list[Any], ...]:
    """Runs the body per element; extra sequence inputs are zipped, extra tensors passed whole."""
    seq = _seq_arg(seq, "SequenceMap")
    n = len(seq)
    for e in extra:
        if isinstance(e, list) and len(e) != n:
            raise ValueError(f"SequenceMap: input sequences have lengths {n} and {len(e)}")
    outs: list[list[Any]] = [[] for _ in body.outputs]
    for i in range(n):
        feeds = [seq[i]] + [e[i] if isinstance(e, list) else e for e in extra]
        for acc, y in zip(outs, ctx.run_graph(body, feeds)):
            acc.append(y)
    return tuple(outs)


# ---------------------------------------------------------------------------------------------


def _infer_optional(ctx: InferContext, x: ValueType | None = None, *, type: ValueType | None = None,
                    **_: Any) -> list[ValueType | None]:
    t = x if x is not None else type
    return [OptionalType(t) if t is not None else None]


@defop("Optional", kind=Kind.OPAQUE, attrs={"type": Attr(None)}, inputs=(0, 1), outputs=(1, 1), since_version=15,
       infer=_infer_optional)
def optional(ctx: EvalContext, x: Any = None, *, type: ValueType | None = None) -> Any:  # noqa: A002
    """An optional holding the input, or an empty one (None) of type `type` when there is no input."""
    if x is None and type is None:
        raise ValueError("Optional: an empty optional needs the type attribute")
    return x


@defop("OptionalHasElement", kind=Kind.OPAQUE, inputs=(0, 1), outputs=(1, 1), since_version=15,
       infer=lambda ctx, *_, **__: [TensorType(DType.BOOL, ())])
def optional_has_element(ctx: EvalContext, x: Any = None) -> np.ndarray:
    """False for an omitted input or an empty optional; true otherwise (tensors and sequences too)."""
    return np.array(x is not None)


def _infer_get(ctx: InferContext, x: ValueType | None = None, **_: Any) -> list[ValueType | None]:
    return [x.elem if isinstance(x, OptionalType) else x]


@defop("OptionalGetElement", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), since_version=15, infer=_infer_get)
def optional_get_element(ctx: EvalContext, x: Any) -> Any:
    """The optional's element (a tensor or sequence input is returned as is); empty is an error."""
    if x is None:
        raise ValueError("OptionalGetElement: the optional is empty")
    return x
