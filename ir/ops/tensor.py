"""Tensor-manipulation ops: constants, shape ops, gather/scatter, slicing, padding (mostly injective).

Shape inference here works on symbolic shapes: a dim is an int, a symbol (str) or None (unknown).
Ops whose output shape depends on an input's *value* (Reshape, Slice, Expand...) read it when it
is an initializer or a Constant node's output (`_const`) and fall back to unknown dims (keeping the
rank where it is known) otherwise; ops whose output size depends on the data (NonZero, Unique,
Compress...) get a fresh symbolic dim from `ctx.dim()`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..types import Dim, DType, Shape, TensorType, ValueType
from .core import (
    constant_value,
    REQUIRED,
    Attr,
    InferContext,
    Kind,
    broadcast_shapes,
    defop,
    same_as_input,
)

if TYPE_CHECKING:
    from ..graph import Value

_INT64 = DType.INT64
_INT_MAX = np.iinfo(np.int64).max

# ---------------------------------------------------------------------------------------------
# Shared helpers


def _axis(axis: int, rank: int) -> int:
    """Normalize a possibly negative axis against `rank`; IndexError when out of range."""
    a = int(axis)
    if not -rank <= a < rank:
        raise IndexError(f"axis {axis} is out of range for rank {rank}")
    return a + rank if a < 0 else a


def _axes(axes: Sequence[int] | np.ndarray, rank: int) -> list[int]:
    return [_axis(a, rank) for a in np.asarray(axes, np.int64).reshape(-1).tolist()]


def _ints(x: Any) -> list[int] | None:
    """A constant input or attribute as a list of ints (None stays None)."""
    return None if x is None else [int(v) for v in np.asarray(x).reshape(-1).tolist()]


def _scalar(x: Any) -> Any:
    """The single element of a scalar or one-element tensor."""
    return np.asarray(x).reshape(-1)[0]


def _shape(t: ValueType | None) -> Shape:
    return t.shape if isinstance(t, TensorType) else None


def _like(t: ValueType | None, shape: Shape, dtype: DType | None = None) -> TensorType | None:
    """A tensor type with `t`'s dtype (or `dtype`) and `shape`; None when the dtype is unknown."""
    if dtype is None:
        if not isinstance(t, TensorType):
            return None
        dtype = t.dtype
    return TensorType(dtype, None if shape is None else tuple(shape))


def _dim_prod(dims: Sequence[Dim]) -> Dim:
    """Product of dims: an int when all are known, the symbol when it is the only non-1 factor."""
    syms = [d for d in dims if not isinstance(d, int)]
    prod = int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64))
    if not syms:
        return prod
    if len(syms) == 1 and isinstance(syms[0], str) and prod == 1:
        return syms[0]
    return 0 if prod == 0 else None


def _dim_add(a: Dim, b: int) -> Dim:
    return a + b if isinstance(a, int) else (a if b == 0 else None)


def _dim_mul(a: Dim, k: int) -> Dim:
    return a * k if isinstance(a, int) else (a if k == 1 else (0 if k == 0 else None))


def _dim_div(a: Dim, k: int) -> Dim:
    return a // k if isinstance(a, int) else (a if k == 1 else None)


def _merge_dim(*dims: Dim) -> Dim:
    """The most specific of dims that should agree: an int, else a symbol, else None."""
    for d in dims:
        if isinstance(d, int):
            return d
    for d in dims:
        if isinstance(d, str):
            return d
    return None


def _quotient(num: Sequence[Dim], den: Sequence[Dim]) -> Dim:
    """prod(num) / prod(den) over symbolic dims (Reshape's -1); None when it is not derivable."""
    if any(d is None for d in list(num) + list(den)):
        return None
    ns = Counter(d for d in num if isinstance(d, str))
    ds = Counter(d for d in den if isinstance(d, str))
    if ds - ns:
        return None
    left = ns - ds
    n = int(np.prod([d for d in num if isinstance(d, int)], dtype=np.int64))
    m = int(np.prod([d for d in den if isinstance(d, int)], dtype=np.int64))
    if not left:
        return n // m if m and n % m == 0 else None
    syms = list(left.elements())
    return syms[0] if len(syms) == 1 and n == m else None


def _slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int]:
    """ONNX Slice clamping of (start, end) on an axis of size `dim` (end -1 means before index 0)."""
    if step == 0:
        raise ValueError("Slice: step 0 is not allowed")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return min(max(start, 0), dim), min(max(end, 0), dim)
    return min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)


def _slice_len(start: int, end: int, step: int) -> int:
    return max(0, -(-(end - start) // step)) if step > 0 else max(0, -(-(start - end) // -step))


# ---------------------------------------------------------------------------------------------
# Constant, Identity


def _constant_value(value: Any = None, value_float: Any = None, value_floats: Any = None, value_int: Any = None,
                    value_ints: Any = None, value_string: Any = None, value_strings: Any = None,
                    sparse_value: Any = None) -> np.ndarray:
    if value is not None:
        return value.array
    if sparse_value is not None:
        return sparse_value.array
    if value_float is not None:
        return np.array(value_float, np.float32)
    if value_floats is not None:
        return np.array(value_floats, np.float32)
    if value_int is not None:
        return np.array(value_int, np.int64)
    if value_ints is not None:
        return np.array(value_ints, np.int64)
    if value_string is not None:
        return np.array(value_string, dtype=object)
    if value_strings is not None:
        return np.array(value_strings, dtype=object)
    raise ValueError("Constant has no value attribute")


_CONSTANT_ATTRS = {k: None for k in ("value", "value_float", "value_floats", "value_int", "value_ints",
                                     "value_string", "value_strings", "sparse_value")}


def _infer_constant(ctx: InferContext, **attrs: Any) -> list[TensorType]:
    arr = _constant_value(**{k: attrs.get(k) for k in _CONSTANT_ATTRS})
    dt = attrs["value"].dtype if attrs.get("value") is not None else DType.from_numpy(arr.dtype)
    return [TensorType(dt, tuple(arr.shape))]


@defop("Constant", kind=Kind.INJECTIVE, attrs=_CONSTANT_ATTRS, inputs=(0, 0), outputs=(1, 1), infer=_infer_constant)
def constant(ctx, **attrs: Any) -> np.ndarray:
    """The tensor held in whichever value* attribute is set."""
    return _constant_value(**{k: attrs.get(k) for k in _CONSTANT_ATTRS})


def _infer_identity(ctx: InferContext, t: ValueType | None, **_: Any) -> list[ValueType | None]:
    return [t]  # tensors, sequences and optionals pass through unchanged


@defop("Identity", kind=Kind.ELEMWISE, inputs=(1, 1), outputs=(1, 1), infer=_infer_identity)
def identity(ctx, x):
    return x


def _sym_value(v: Value | None, depth: int = 0) -> list[Dim] | None:
    """The elements of a small int tensor built from shapes, as symbolic dims (None: unknown element).

    Follows the shape arithmetic exporters emit for Reshape/Expand targets: constants, Shape, and
    Gather / Slice / Concat / (Un)Squeeze / Cast / Identity over them. None when `v` is anything else.
    """
    c = constant_value(v)
    if c is not None:
        return _ints(c) if c.ndim <= 1 and c.dtype.kind in "iu" else None
    p = None if v is None else v.producer
    if p is None or depth > 16 or p.domain not in ("", "ai.onnx"):
        return None
    op, src = p.op_type, p.input(0)
    if op == "Shape":
        s = src.shape if src is not None else None
        return None if s is None else list(s)[slice(p.attributes.get("start", 0), p.attributes.get("end"))]
    if op in ("Identity", "Cast", "Squeeze", "Unsqueeze"):
        return _sym_value(src, depth + 1)
    if op == "Concat":
        parts = [_sym_value(x, depth + 1) for x in p.inputs]
        return None if any(q is None for q in parts) else [d for q in parts for d in q]  # type: ignore[union-attr]
    if op == "Gather" and p.attributes.get("axis", 0) in (0, -1):
        data, idx = _sym_value(src, depth + 1), _ints(constant_value(p.input(1)))
        return None if data is None or idx is None else [data[i] for i in idx]
    if op == "Slice" and p.graph is not None and p.opset >= 10:
        data = _sym_value(src, depth + 1)
        bounds = [_ints(constant_value(p.input(i))) for i in range(1, 5)]
        if data is None or bounds[0] is None or bounds[1] is None or any(
                p.input(i) is not None and bounds[i - 1] is None for i in (3, 4)):
            return None
        spec = _slice_spec(1, bounds[0], bounds[1], bounds[2], bounds[3])
        if list(spec) != [0]:
            return None
        st, en, sp = spec[0]
        b, e = _slice_bounds(st, en, sp, len(data))
        return data[slice(b, e if e >= 0 else None, sp)]
    return None


# ---------------------------------------------------------------------------------------------
# Reshape, Flatten, Squeeze, Unsqueeze, Transpose


def _reshape_target(in_shape: Sequence[int], shape: Sequence[int], allowzero: int) -> list[int]:
    out = [int(s) for s in shape]
    if not allowzero:
        out = [in_shape[i] if s == 0 and i < len(in_shape) else s for i, s in enumerate(out)]
    return out


def _infer_reshape(ctx: InferContext, data: ValueType | None, shape_t: ValueType | None = None, *,
                   allowzero: int = 0, shape: Any = None, **_: Any) -> list[ValueType | None]:
    target = _ints(shape) if ctx.opset < 5 else _sym_value(ctx.node.input(1))
    if target is None:
        s = _shape(shape_t)
        n = s[0] if s is not None and len(s) == 1 else None
        return [_like(data, (None,) * n if isinstance(n, int) else None)]
    ins = _shape(data)
    out: list[Dim] = []
    for i, d in enumerate(target):
        if d == 0 and not allowzero:
            out.append(ins[i] if ins is not None and i < len(ins) else None)
        else:
            out.append(d)
    if -1 in out:
        k = out.index(-1)
        out[k] = None if ins is None else _quotient(ins, out[:k] + out[k + 1:])
    return [_like(data, out)]


@defop("Reshape", kind=Kind.INJECTIVE, attrs={"allowzero": 0, "shape": None}, inputs=(1, 2), outputs=(1, 1),
       infer=_infer_reshape)
def reshape(ctx, data, shape_in=None, *, allowzero: int = 0, shape: Any = None, **_: Any):
    """Reshape (shape attribute before opset 5): 0 copies the input dim unless allowzero, -1 is inferred."""
    target = _ints(shape if ctx.opset < 5 else shape_in)
    if target is None:
        raise ValueError("Reshape: no target shape")
    return np.reshape(data, _reshape_target(data.shape, target, allowzero))


def _infer_flatten(ctx: InferContext, x: ValueType | None, *, axis: int = 1, **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    if s is None:
        return [_like(x, (None, None))]
    a = axis + len(s) if axis < 0 else axis
    if not 0 <= a <= len(s):
        raise IndexError(f"Flatten: axis {axis} out of range")
    return [_like(x, (_dim_prod(s[:a]), _dim_prod(s[a:])))]


@defop("Flatten", kind=Kind.INJECTIVE, attrs={"axis": 1}, inputs=(1, 1), outputs=(1, 1), infer=_infer_flatten)
def flatten(ctx, x, *, axis: int):
    a = axis + x.ndim if axis < 0 else axis
    if not 0 <= a <= x.ndim:
        raise ValueError(f"Flatten: axis {axis} out of range for rank {x.ndim}")
    return x.reshape(int(np.prod(x.shape[:a], dtype=np.int64)), -1 if x.size else int(np.prod(x.shape[a:])))


def _axes_arg(ctx: Any, given: Any, attr: Any) -> list[int] | None:
    """Squeeze/Unsqueeze axes: an attribute before opset 13, an (optional) input from 13."""
    return _ints(attr) if ctx.opset < 13 else _ints(given)


def _infer_squeeze(ctx: InferContext, x: ValueType | None, axes_t: ValueType | None = None, *,
                   axes: Any = None, **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    if ctx.opset < 13 or ctx.node.input(1) is None:
        ax = _ints(axes) if ctx.opset < 13 else None
    else:
        ax = _ints(ctx.const(1))
        if ax is None:  # axes computed at run time: only the rank is known, from the axes' length
            n = _shape(axes_t)
            known = s is not None and n is not None and len(n) == 1 and isinstance(n[0], int)
            return [_like(x, (None,) * (len(s) - n[0]) if known else None)]  # type: ignore[arg-type, index]
    if s is None:
        return [_like(x, None)]
    if ax is None:  # all size-1 dims: only derivable when no dim is symbolic
        if not all(isinstance(d, int) for d in s):
            return [_like(x, None)]
        return [_like(x, tuple(d for d in s if d != 1))]
    drop = set(_axes(ax, len(s)))
    return [_like(x, tuple(d for i, d in enumerate(s) if i not in drop))]


@defop("Squeeze", kind=Kind.INJECTIVE, attrs={"axes": None}, inputs=(1, 2), outputs=(1, 1), infer=_infer_squeeze)
def squeeze(ctx, x, axes_in=None, *, axes: Any = None):
    """Squeeze (axes attribute before opset 13, optional input from 13; none: all size-1 dims)."""
    ax = _axes_arg(ctx, axes_in, axes)
    if ax is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(_axes(ax, x.ndim))) if ax else x


def _unsqueeze_shape(s: Sequence[Dim], ax: Sequence[int]) -> list[Dim]:
    rank = len(s) + len(ax)
    pos = set(_axes(ax, rank))
    if len(pos) != len(ax):
        raise ValueError("Unsqueeze: repeated axes")
    it = iter(s)
    return [1 if i in pos else next(it) for i in range(rank)]


def _infer_unsqueeze(ctx: InferContext, x: ValueType | None, axes_t: ValueType | None = None, *,
                     axes: Any = None, **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    ax = _ints(axes) if ctx.opset < 13 else _ints(ctx.const(1))
    if s is None or ax is None:
        n = _shape(axes_t)
        rank = len(s) + n[0] if s is not None and n is not None and len(n) == 1 and isinstance(n[0], int) else None
        return [_like(x, None if rank is None else (None,) * rank)]
    return [_like(x, _unsqueeze_shape(s, ax))]


@defop("Unsqueeze", kind=Kind.INJECTIVE, attrs={"axes": None}, inputs=(1, 2), outputs=(1, 1),
       infer=_infer_unsqueeze)
def unsqueeze(ctx, x, axes_in=None, *, axes: Any = None):
    """Unsqueeze (axes attribute before opset 13, input from 13); axes index the output rank."""
    ax = _axes_arg(ctx, axes_in, axes)
    if ax is None:
        raise ValueError("Unsqueeze: axes are required")
    return x.reshape(_unsqueeze_shape(x.shape, ax))


def _perm(perm: Any, rank: int) -> list[int]:
    return list(range(rank))[::-1] if perm is None else _axes(perm, rank)


def _infer_transpose(ctx: InferContext, x: ValueType | None, *, perm: Any = None, **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    if s is None:
        return [_like(x, None if perm is None else (None,) * len(perm))]
    return [_like(x, tuple(s[p] for p in _perm(perm, len(s))))]


@defop("Transpose", kind=Kind.INJECTIVE, attrs={"perm": None}, inputs=(1, 1), outputs=(1, 1),
       infer=_infer_transpose)
def transpose(ctx, x, *, perm: Any):
    return np.transpose(x, _perm(perm, x.ndim))


# ---------------------------------------------------------------------------------------------
# Concat, Split, Slice


def _infer_concat(ctx: InferContext, *types: ValueType | None, axis: int, **_: Any) -> list[ValueType | None]:
    shapes = [_shape(t) for t in types if t is not None]
    dt = next((t.dtype for t in types if isinstance(t, TensorType)), None)
    if dt is None:
        return [None]
    known = [s for s in shapes if s is not None]
    if not known:
        return [TensorType(dt, None)]
    rank = len(known[0])
    a = _axis(axis, rank)
    out = [_merge_dim(*(s[i] for s in known)) for i in range(rank)]
    if len(known) < len(shapes):
        out[a] = None
    else:
        along = [s[a] for s in known]
        nonzero = [d for d in along if d != 0]
        out[a] = (sum(along) if all(isinstance(d, int) for d in along)  # type: ignore[arg-type]
                  else nonzero[0] if len(nonzero) == 1 else None)
    return [TensorType(dt, tuple(out))]


@defop("Concat", kind=Kind.INJECTIVE, attrs={"axis": Attr(1, since={4: REQUIRED})}, inputs=(1, None),
       outputs=(1, 1), infer=_infer_concat)
def concat(ctx, *xs, axis: int):
    if axis is None:
        raise ValueError("Concat: axis is required")
    return np.concatenate(xs, axis=_axis(axis, xs[0].ndim))


def _split_sizes(ctx: Any, dim: Dim, n_out: int, split: Any, num_outputs: Any) -> list[Dim]:
    """Split sizes from the `split` list, `num_outputs` (opset 18: last chunk smaller) or equal parts."""
    if split is not None:
        sizes = _ints(split) or []
        if len(sizes) != n_out:
            raise ValueError(f"Split: {len(sizes)} split sizes for {n_out} outputs")
        return list(sizes)
    n = int(num_outputs) if num_outputs is not None else n_out
    if not isinstance(dim, int):
        return [None] * n
    if num_outputs is not None or ctx.opset >= 18:
        chunk = -(-dim // n)
        if n > 1 and chunk * (n - 1) >= dim > 0:  # e.g. 5 into 4: chunks of 2 leave nothing for the last
            raise ValueError(f"Split: dim {dim} cannot be split into {n} chunks of {chunk}")
        return [min(chunk, dim - i * chunk) for i in range(n)]
    if dim % n:
        raise ValueError(f"Split: dim {dim} does not split evenly into {n} outputs")
    return [dim // n] * n


def _split_arg(ctx: Any, split_in: Any, split_attr: Any) -> Any:
    # opset 1 accepted split as an input or an attribute; 2-12 as an attribute; 13+ as an input.
    if ctx.opset >= 13:
        return split_in
    return split_attr if split_attr is not None else split_in


def _infer_split(ctx: InferContext, x: ValueType | None, split_t: ValueType | None = None, *, axis: int = 0,
                 split: Any = None, num_outputs: Any = None, **_: Any) -> list[ValueType | None]:
    n_out = len(ctx.node.outputs)
    s = _shape(x)
    if s is None:
        return [_like(x, None)] * n_out
    a = _axis(axis, len(s))
    sp = split if ctx.opset < 13 and split is not None else (ctx.const(1) if ctx.node.input(1) is not None else None)
    if ctx.node.input(1) is not None and sp is None:
        sizes: list[Dim] = [None] * n_out
    else:
        sizes = _split_sizes(ctx, s[a], n_out, sp, num_outputs)
    return [_like(x, s[:a] + (d,) + s[a + 1:]) for d in sizes]


@defop("Split", kind=Kind.INJECTIVE, attrs={"axis": 0, "split": None, "num_outputs": None}, inputs=(1, 2),
       outputs=(1, None), infer=_infer_split)
def split(ctx, x, split_in=None, *, axis: int, split: Any = None, num_outputs: Any = None):
    """Split along `axis`: sizes from `split` (attribute before 13, input after), `num_outputs` (18) or equal."""
    a = _axis(axis, x.ndim)
    sizes = _split_sizes(ctx, x.shape[a], ctx.num_outputs, _split_arg(ctx, split_in, split), num_outputs)
    if sum(sizes) != x.shape[a]:  # type: ignore[arg-type]
        raise ValueError(f"Split: sizes {sizes} do not add up to dim {x.shape[a]}")
    return tuple(np.split(x, np.cumsum(sizes[:-1]).astype(np.int64), axis=a))


def _slice_args(ctx: Any, args: Sequence[Any], attrs: dict[str, Any]) -> tuple[Any, Any, Any, Any]:
    """(starts, ends, axes, steps): attributes before opset 10, inputs after."""
    if ctx.opset < 10:
        return attrs.get("starts"), attrs.get("ends"), attrs.get("axes"), None
    padded = list(args) + [None] * (4 - len(args))
    return padded[0], padded[1], padded[2], padded[3]


def _slice_spec(rank: int, starts: Any, ends: Any, axes: Any, steps: Any) -> dict[int, tuple[int, int, int]]:
    """axis -> (start, end, step) as given (unclamped); validates the lengths."""
    if starts is None or ends is None:
        raise ValueError("Slice: starts and ends are required")
    st, en = _ints(starts) or [], _ints(ends) or []
    ax = list(range(len(st))) if axes is None else _axes(axes, rank)
    sp = [1] * len(st) if steps is None else _ints(steps) or []
    if not len(st) == len(en) == len(ax) == len(sp) or len(set(ax)) != len(ax):
        raise ValueError("Slice: starts, ends, axes and steps must have equal lengths and distinct axes")
    return {a: (s, e, p) for a, s, e, p in zip(ax, st, en, sp)}


def _infer_slice(ctx: InferContext, data: ValueType | None, *inputs: ValueType | None,
                 **attrs: Any) -> list[ValueType | None]:
    s = _shape(data)
    if s is None:
        return [_like(data, None)]
    if ctx.opset < 10:
        starts, ends, axes, steps = attrs.get("starts"), attrs.get("ends"), attrs.get("axes"), None
    else:
        consts = [ctx.const(i) for i in range(1, 5)]
        present = [ctx.node.input(i) is not None for i in range(1, 5)]
        if any(p and c is None for p, c in zip(present, consts)):
            return [_like(data, (None,) * len(s))]  # the rank is kept, the sliced dims are unknown
        starts, ends, axes, steps = consts
    out = list(s)
    for a, (st, en, sp) in _slice_spec(len(s), starts, ends, axes, steps).items():
        d = s[a]
        if isinstance(d, int):
            out[a] = _slice_len(*_slice_bounds(st, en, sp, d), sp)
        else:
            out[a] = d if (st == 0 and sp == 1 and en >= _INT_MAX // 2) else None
    return [_like(data, tuple(out))]


@defop("Slice", kind=Kind.INJECTIVE, attrs={"starts": None, "ends": None, "axes": None}, inputs=(1, 5),
       outputs=(1, 1), infer=_infer_slice)
def slice_(ctx, data, *args, **attrs: Any):
    """Slice with ONNX clamping (negative steps, out-of-range bounds); attributes before opset 10."""
    starts, ends, axes, steps = _slice_args(ctx, args, attrs)
    index = [slice(None)] * data.ndim
    for a, (st, en, sp) in _slice_spec(data.ndim, starts, ends, axes, steps).items():
        b, e = _slice_bounds(st, en, sp, data.shape[a])
        index[a] = slice(b, e if e >= 0 else None, sp)
    return data[tuple(index)]


# ---------------------------------------------------------------------------------------------
# Expand, Tile, Pad, CenterCropPad


def _infer_expand(ctx: InferContext, x: ValueType | None, shape_t: ValueType | None = None,
                  **_: Any) -> list[ValueType | None]:
    target = _sym_value(ctx.node.input(1))
    if target is None:
        n, s = _shape(shape_t), _shape(x)
        if n is None or len(n) != 1 or not isinstance(n[0], int) or s is None:
            return [_like(x, None)]
        return [_like(x, (None,) * max(n[0], len(s)))]
    return [_like(x, broadcast_shapes(_shape(x), tuple(target)))]


@defop("Expand", kind=Kind.INJECTIVE, inputs=(2, 2), outputs=(1, 1), since_version=8, infer=_infer_expand)
def expand(ctx, x, shape):
    """Bidirectional broadcast of `x` to `shape` (a dim of 1 in `shape` keeps x's dim)."""
    return np.array(np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape) or ()))))


def _tile_repeats(ctx: Any, rank: int, args: Sequence[Any]) -> list[int] | None:
    """Repeats per axis; opset 1 took (tiles, axis) scalars instead of a repeats vector."""
    if ctx.opset < 6:
        tiles, axis = args[0], args[1]
        if tiles is None or axis is None:
            return None
        reps = [1] * rank
        reps[_axis(int(_scalar(axis)), rank)] = int(_scalar(tiles))
        return reps
    return _ints(args[0])


def _infer_tile(ctx: InferContext, x: ValueType | None, *rest: ValueType | None, **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    if s is None:
        return [_like(x, None)]
    if ctx.opset < 6:
        reps: list[Dim] | None = _tile_repeats(ctx, len(s), [ctx.const(i) for i in range(1, 1 + len(rest))])
    else:
        reps = _sym_value(ctx.node.input(1))
    if reps is None or len(reps) != len(s):
        return [_like(x, (None,) * len(s))]
    return [_like(x, tuple(_dim_mul(d, r) if isinstance(r, int) else None for d, r in zip(s, reps)))]


@defop("Tile", kind=Kind.INJECTIVE, inputs=(2, 3), outputs=(1, 1), infer=_infer_tile)
def tile(ctx, x, *args):
    reps = _tile_repeats(ctx, x.ndim, args)
    if reps is None or len(reps) != x.ndim:
        raise ValueError("Tile: repeats must have one entry per input dim")
    return np.tile(x, reps)


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad_widths(rank: int, pads: Sequence[int], axes: Any) -> list[tuple[int, int]]:
    """Per-axis (begin, end) from ONNX's [b1, b2, ..., e1, e2, ...] over `axes` (default: all)."""
    ax = list(range(rank)) if axes is None else _axes(axes, rank)
    if len(pads) != 2 * len(ax):
        raise ValueError(f"Pad: {len(pads)} pads for {len(ax)} axes")
    widths = [(0, 0)] * rank
    for i, a in enumerate(ax):
        widths[a] = (pads[i], pads[i + len(ax)])
    return widths


def _pad_args(ctx: Any, args: Sequence[Any], attrs: dict[str, Any]) -> tuple[list[int], Any, Any]:
    """(pads, constant value, axes): `paddings` attribute at opset 1, `pads` to 10, inputs from 11."""
    if ctx.opset < 11:
        pads = attrs.get("paddings") if ctx.opset < 2 else attrs.get("pads")
        return _ints(pads) or [], attrs.get("value"), None
    padded = list(args) + [None] * (3 - len(args))
    return _ints(padded[0]) or [], padded[1], padded[2]


def _infer_pad(ctx: InferContext, data: ValueType | None, *rest: ValueType | None,
               **attrs: Any) -> list[ValueType | None]:
    s = _shape(data)
    if s is None:
        return [_like(data, None)]
    if ctx.opset < 11:
        pads, axes = _pad_args(ctx, [], attrs)[0], None
    else:
        p, axes = ctx.const(1), ctx.const(3)
        if p is None or (ctx.node.input(3) is not None and axes is None):
            return [_like(data, (None,) * len(s))]
        pads = _ints(p) or []
    widths = _pad_widths(len(s), pads, axes)
    return [_like(data, tuple(_dim_add(d, b + e) for d, (b, e) in zip(s, widths)))]


def _pad_array(x: np.ndarray, widths: Sequence[tuple[int, int]], mode: str, value: Any) -> np.ndarray:
    """np.pad with ONNX extras: negative widths crop first (as onnxruntime does: wrap sees the cropped axis)."""
    if mode not in _PAD_MODES:
        raise NotImplementedError(f"Pad: mode {mode!r} is not supported")
    if any(b < 0 or e < 0 for b, e in widths):
        if any(x.shape[i] + min(b, 0) + min(e, 0) < 0 for i, (b, e) in enumerate(widths)):
            raise ValueError(f"Pad: negative pads {list(widths)} crop more than the input shape {x.shape}")
        x = x[tuple(slice(-min(b, 0), x.shape[i] + min(e, 0)) for i, (b, e) in enumerate(widths))]
    pos = [(max(b, 0), max(e, 0)) for b, e in widths]
    if not any(b or e for b, e in pos):
        return x
    if mode == "constant":
        v = _scalar(value) if value is not None and np.size(value) else 0
        return np.pad(x, pos, mode="constant", constant_values=np.asarray(v).astype(x.dtype))
    return np.pad(x, pos, mode=_PAD_MODES[mode])


@defop("Pad", kind=Kind.INJECTIVE, attrs={"mode": "constant", "pads": None, "paddings": None, "value": 0.0},
       inputs=(1, 4), outputs=(1, 1), infer=_infer_pad)
def pad(ctx, data, *args, mode: str, **attrs: Any):
    """Pad in constant/reflect/edge/wrap mode; negative pads crop. Pads are attributes before opset 11."""
    pads, value, axes = _pad_args(ctx, args, attrs)
    return _pad_array(data, _pad_widths(data.ndim, pads, axes), mode, value)


def _crop_pad_axes(rank: int, n: int, axes: Any) -> list[int]:
    ax = list(range(rank)) if axes is None else _axes(axes, rank)
    if len(ax) != n:
        raise ValueError(f"CenterCropPad: {n} target dims for {len(ax)} axes")
    return ax


def _infer_center_crop_pad(ctx: InferContext, x: ValueType | None, shape_t: ValueType | None = None, *,
                           axes: Any = None, **_: Any) -> list[ValueType | None]:
    s, target = _shape(x), _ints(ctx.const(1))
    if s is None:
        return [_like(x, None)]
    out: list[Dim] = list(s)
    if target is None:
        for a in (range(len(s)) if axes is None else _axes(axes, len(s))):
            out[a] = None
    else:
        for a, t in zip(_crop_pad_axes(len(s), len(target), axes), target):
            out[a] = t
    return [_like(x, tuple(out))]


@defop("CenterCropPad", kind=Kind.INJECTIVE, attrs={"axes": None}, inputs=(2, 2), outputs=(1, 1),
       since_version=18, infer=_infer_center_crop_pad)
def center_crop_pad(ctx, x, shape, *, axes: Any = None):
    """Crop (start rounded down) or zero-pad (extra pixel on the right) each axis to the target size."""
    target = _ints(shape) or []
    out_shape = list(x.shape)
    src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
    for a, t in zip(_crop_pad_axes(x.ndim, len(target), axes), target):
        d = x.shape[a]
        out_shape[a] = t
        if t < d:
            b = (d - t) // 2
            src[a] = slice(b, b + t)
        elif t > d:
            b = (t - d) // 2
            dst[a] = slice(b, b + d)
    out = np.zeros(out_shape, x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out


# ---------------------------------------------------------------------------------------------
# Gather / scatter family


def _norm_indices(idx: np.ndarray, dim: int | np.ndarray) -> np.ndarray:
    """Indices with negatives wrapped once; IndexError when any is out of [-dim, dim)."""
    idx = np.asarray(idx).astype(np.int64, copy=False)
    if idx.size and (np.any(idx >= dim) or np.any(idx < -np.asarray(dim))):
        raise IndexError("index out of range")
    return np.where(idx < 0, idx + dim, idx)


def _infer_gather(ctx: InferContext, data: ValueType | None, indices: ValueType | None, *, axis: int = 0,
                  **_: Any) -> list[ValueType | None]:
    s, i = _shape(data), _shape(indices)
    if s is None or i is None:
        return [_like(data, None)]
    a = _axis(axis, len(s))
    return [_like(data, s[:a] + i + s[a + 1:])]


@defop("Gather", kind=Kind.INJECTIVE, attrs={"axis": 0}, inputs=(2, 2), outputs=(1, 1), infer=_infer_gather)
def gather(ctx, data, indices, *, axis: int):
    a = _axis(axis, data.ndim)
    return np.take(data, _norm_indices(indices, data.shape[a]), axis=a)


def _elements_index(data: np.ndarray, indices: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Advanced index for Gather/ScatterElements: position itself on every dim but `axis`.

    `indices` may be smaller than `data` on the other dims, so take_along_axis does not fit.
    """
    a = _axis(axis, data.ndim)
    index = list(np.indices(indices.shape, sparse=True))
    index[a] = _norm_indices(indices, data.shape[a])
    return tuple(index)


@defop("GatherElements", kind=Kind.INJECTIVE, attrs={"axis": 0}, inputs=(2, 2), outputs=(1, 1), since_version=11,
       infer=lambda ctx, data, indices, **_: [_like(data, _shape(indices))])
def gather_elements(ctx, data, indices, *, axis: int):
    return data[_elements_index(data, indices, axis)]


def _infer_gather_nd(ctx: InferContext, data: ValueType | None, indices: ValueType | None, *, batch_dims: int = 0,
                     **_: Any) -> list[ValueType | None]:
    s, i = _shape(data), _shape(indices)
    if s is None or i is None or not isinstance(i[-1], int):
        return [_like(data, None)]
    b, k = batch_dims, i[-1]
    return [_like(data, tuple(_merge_dim(x, y) for x, y in zip(s[:b], i[:b])) + i[b:-1] + s[b + k:])]


@defop("GatherND", kind=Kind.INJECTIVE, attrs={"batch_dims": 0}, inputs=(2, 2), outputs=(1, 1), since_version=11,
       infer=_infer_gather_nd)
def gather_nd(ctx, data, indices, *, batch_dims: int):
    """Gather slices indexed by the last axis of `indices`; the first `batch_dims` dims are shared."""
    b, k = batch_dims, indices.shape[-1]
    batch = data.shape[:b]
    nb = int(np.prod(batch, dtype=np.int64))
    d = data.reshape((nb,) + data.shape[b:])
    m = int(np.prod(indices.shape[b:-1], dtype=np.int64))
    idx = _norm_indices(indices.reshape(nb, m, k), np.array(data.shape[b:b + k], np.int64))
    out = d[(np.arange(nb)[:, None],) + tuple(np.moveaxis(idx, -1, 0))]
    return out.reshape(batch + indices.shape[b:-1] + data.shape[b + k:])


_REDUCE_AT = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}
_REDUCE_SINCE = {"add": 16, "mul": 16, "max": 18, "min": 18}


def _scatter_into(ctx: Any, op: str, data: np.ndarray, index: tuple[Any, ...], updates: np.ndarray,
                  reduction: str) -> np.ndarray:
    """Copy of `data` with `updates` written (or reduced) at advanced `index`."""
    if reduction != "none" and (reduction not in _REDUCE_AT or ctx.opset < _REDUCE_SINCE[reduction]):
        raise NotImplementedError(f"{op}: reduction {reduction!r} is not supported at opset {ctx.opset}")
    out = np.array(data, copy=True)
    if reduction == "none":
        out[index] = updates
    else:
        _REDUCE_AT[reduction].at(out, index, updates)
    return out


def _scatter_elements(ctx: Any, op: str, data: np.ndarray, indices: np.ndarray, updates: np.ndarray, axis: int,
                      reduction: str) -> np.ndarray:
    return _scatter_into(ctx, op, data, _elements_index(data, indices, axis), updates, reduction)


@defop("ScatterElements", kind=Kind.OPAQUE, attrs={"axis": 0, "reduction": "none"}, inputs=(3, 3),
       outputs=(1, 1), since_version=11, infer=same_as_input())
def scatter_elements(ctx, data, indices, updates, *, axis: int, reduction: str):
    """data with updates written at indices along axis (reduction add/mul from 16, max/min from 18)."""
    return _scatter_elements(ctx, "ScatterElements", data, indices, updates, axis, reduction)


@defop("Scatter", kind=Kind.OPAQUE, attrs={"axis": 0}, inputs=(3, 3), outputs=(1, 1), since_version=9,
       infer=same_as_input())
def scatter(ctx, data, indices, updates, *, axis: int):
    """Deprecated alias of ScatterElements without reduction."""
    return _scatter_elements(ctx, "Scatter", data, indices, updates, axis, "none")


@defop("ScatterND", kind=Kind.OPAQUE, attrs={"reduction": "none"}, inputs=(3, 3), outputs=(1, 1),
       since_version=11, infer=same_as_input())
def scatter_nd(ctx, data, indices, updates, *, reduction: str):
    k = indices.shape[-1]
    idx = _norm_indices(indices.reshape(-1, k), np.array(data.shape[:k], np.int64))
    upd = updates.reshape((idx.shape[0],) + data.shape[k:])
    return _scatter_into(ctx, "ScatterND", data, tuple(idx.T), upd, reduction)


@defop("TensorScatter", kind=Kind.OPAQUE, attrs={"mode": "linear", "axis": -2}, inputs=(2, 3), outputs=(1, 1),
       since_version=24, infer=same_as_input())
def tensor_scatter(ctx, past, update, write_indices=None, *, mode: str, axis: int):
    """KV-cache update: update[b, ..., s, ...] goes to past[b, ..., write_indices[b] + s, ...]."""
    if mode not in ("linear", "circular"):
        raise NotImplementedError(f"TensorScatter: mode {mode!r} is not supported")
    a = _axis(axis, past.ndim)
    if a == 0:
        raise ValueError("TensorScatter: axis cannot be the batch axis")
    batch, seq, max_seq = past.shape[0], update.shape[a], past.shape[a]
    w = np.zeros(batch, np.int64) if write_indices is None else np.asarray(write_indices, np.int64).reshape(-1)
    pos = w[:, None] + np.arange(seq, dtype=np.int64)[None, :]  # (batch, seq)
    if mode == "circular":
        pos %= max_seq
    elif pos.size and (pos.max() >= max_seq or pos.min() < 0):
        raise IndexError("TensorScatter: write position past the cache length")
    shape = [1] * past.ndim
    shape[0], shape[a] = batch, seq
    out = np.array(past, copy=True)
    np.put_along_axis(out, np.broadcast_to(pos.reshape(shape), update.shape), update, axis=a)
    return out


# ---------------------------------------------------------------------------------------------
# Shape, Size, ConstantOfShape, Range, EyeLike, OneHot


def _infer_shape(ctx: InferContext, x: ValueType | None, *, start: int = 0, end: Any = None,
                 **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    n = None if s is None else len(range(len(s))[slice(start, end)])
    return [TensorType(_INT64, (n,))]


@defop("Shape", kind=Kind.OPAQUE, attrs={"start": 0, "end": None}, inputs=(1, 1), outputs=(1, 1),
       infer=_infer_shape)
def shape(ctx, x, *, start: int, end: Any):
    """The input's dims [start:end] (Python-style clamping, from opset 15) as int64."""
    return np.array(np.shape(x)[slice(start, end)], np.int64)


@defop("Size", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), infer=lambda ctx, x, **_: [TensorType(_INT64, ())])
def size(ctx, x):
    return np.array(np.size(x), np.int64)


def _infer_constant_of_shape(ctx: InferContext, s: ValueType | None, *, value: Any = None,
                             **_: Any) -> list[ValueType | None]:
    dt = value.dtype if value is not None else DType.FLOAT
    target = _sym_value(ctx.node.input(0))
    if target is not None:
        return [TensorType(dt, tuple(target))]
    n = _shape(s)
    return [TensorType(dt, (None,) * n[0] if n is not None and len(n) == 1 and isinstance(n[0], int) else None)]


@defop("ConstantOfShape", kind=Kind.OPAQUE, attrs={"value": None}, inputs=(1, 1), outputs=(1, 1), since_version=9,
       infer=_infer_constant_of_shape)
def constant_of_shape(ctx, shape, *, value: Any):
    """A tensor of `shape` filled with the one-element `value` (float32 0 by default)."""
    v = np.zeros(1, np.float32) if value is None else value.array
    return np.full(_ints(shape) or [], v.reshape(-1)[0], dtype=v.dtype)


def _range_len(start: Any, limit: Any, delta: Any) -> int:
    if np.issubdtype(np.asarray(start).dtype, np.integer):
        s, l, d = int(start), int(limit), int(delta)
        if d == 0:
            raise ValueError("Range: delta is 0")
        return max(-((s - l) // d), 0)
    return max(int(np.ceil((float(limit) - float(start)) / float(delta))), 0)


def _infer_range(ctx: InferContext, start: ValueType | None, *_args: ValueType | None,
                 **__: Any) -> list[ValueType | None]:
    vals = [ctx.const(i) for i in range(3)]
    n = _range_len(*(_scalar(v) for v in vals)) if all(v is not None for v in vals) else ctx.dim("range")
    return [_like(start, (n,))]


@defop("Range", kind=Kind.OPAQUE, attrs={"stash_type": Attr(None, since={27: 1})}, inputs=(3, 3), outputs=(1, 1),
       since_version=11, infer=_infer_range)
def range_(ctx, start, limit, delta, *, stash_type: Any = None):
    """start + i * delta for i < ceil((limit - start) / delta); floats are computed wide then cast back.

    From opset 27 `stash_type` fixes the accumulation type of float16/bfloat16 ranges.
    """
    s, l, d = _scalar(start), _scalar(limit), _scalar(delta)
    dt = np.asarray(start).dtype
    n = _range_len(s, l, d)
    if np.issubdtype(dt, np.integer):
        return (np.int64(s) + np.arange(n, dtype=np.int64) * np.int64(d)).astype(dt)
    low = DType.from_numpy(dt) in (DType.FLOAT16, DType.BFLOAT16)
    acc = DType(int(stash_type)).np if low and stash_type is not None else np.dtype(np.float64)
    return (acc.type(s) + np.arange(n, dtype=acc) * acc.type(d)).astype(dt)


def _infer_eye_like(ctx: InferContext, x: ValueType | None, *, dtype: Any = None, **_: Any) -> list[ValueType | None]:
    return [_like(x, _shape(x), DType(dtype) if dtype is not None else None)]


@defop("EyeLike", kind=Kind.OPAQUE, attrs={"dtype": None, "k": 0}, inputs=(1, 1), outputs=(1, 1), since_version=9,
       infer=_infer_eye_like)
def eye_like(ctx, x, *, dtype: Any, k: int):
    if x.ndim != 2:
        raise ValueError("EyeLike: input must be 2-D")
    return np.eye(x.shape[0], x.shape[1], k=k, dtype=DType(dtype).np if dtype is not None else x.dtype)


def _infer_one_hot(ctx: InferContext, indices: ValueType | None, depth: ValueType | None, values: ValueType | None,
                   *, axis: int = -1, **_: Any) -> list[ValueType | None]:
    s = _shape(indices)
    if s is None:
        return [_like(values, None)]
    dv = ctx.const(1)
    d: Dim = int(_scalar(dv)) if dv is not None else ctx.dim("depth")
    a = _axis(axis, len(s) + 1)
    return [_like(values, s[:a] + (d,) + s[a:])]


@defop("OneHot", kind=Kind.INJECTIVE, attrs={"axis": -1}, inputs=(3, 3), outputs=(1, 1), since_version=9,
       infer=_infer_one_hot)
def one_hot(ctx, indices, depth, values, *, axis: int):
    """values[1] where the new `axis` equals the index (negatives wrap), values[0] elsewhere."""
    d = int(_scalar(depth))
    a = _axis(axis, indices.ndim + 1)
    idx = np.expand_dims(np.asarray(indices).astype(np.int64), a)
    idx = np.where(idx < 0, idx + d, idx)
    ar = np.arange(d, dtype=np.int64).reshape([d if i == a else 1 for i in range(indices.ndim + 1)])
    off, on = np.asarray(values).reshape(-1)[:2]
    return np.where(idx == ar, on, off).astype(values.dtype)


# ---------------------------------------------------------------------------------------------
# Trilu, Compress, NonZero, Unique, TopK, ReverseSequence


@defop("Trilu", kind=Kind.INJECTIVE, attrs={"upper": 1}, inputs=(1, 2), outputs=(1, 1), since_version=14,
       infer=same_as_input())
def trilu(ctx, x, k=None, *, upper: int):
    """Upper (triu) or lower (tril) triangle of the last two dims, shifted by diagonal k."""
    kk = 0 if k is None else int(_scalar(k))
    return np.triu(x, kk) if upper else np.tril(x, kk)


def _infer_compress(ctx: InferContext, x: ValueType | None, cond: ValueType | None, *, axis: Any = None,
                    **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    if axis is None:
        return [_like(x, (ctx.dim("n"),))]
    if s is None:
        return [_like(x, None)]
    a = _axis(axis, len(s))
    return [_like(x, s[:a] + (ctx.dim("n"),) + s[a + 1:])]


@defop("Compress", kind=Kind.OPAQUE, attrs={"axis": None}, inputs=(2, 2), outputs=(1, 1), since_version=9,
       infer=_infer_compress)
def compress(ctx, x, condition, *, axis: Any):
    cond = np.asarray(condition).astype(bool).reshape(-1)
    if axis is None:
        return np.compress(cond, x.reshape(-1))
    return np.compress(cond, x, axis=_axis(axis, x.ndim))


def _infer_nonzero(ctx: InferContext, x: ValueType | None, **_: Any) -> list[ValueType | None]:
    r = _shape(x)
    return [TensorType(_INT64, (None if r is None else len(r), ctx.dim("nnz")))]


@defop("NonZero", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), since_version=9, infer=_infer_nonzero)
def nonzero(ctx, x):
    """Indices of non-zero elements, one row per input dim: int64 [rank, nnz]."""
    x = np.asarray(x)
    if x.ndim == 0:
        return np.zeros((0, int(bool(x))), np.int64)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


def _sort_key(x: np.ndarray) -> np.ndarray:
    """An array that sorts like `x` with numpy (ml_dtypes' narrow types are widened to float32)."""
    return x.astype(np.float32) if x.dtype.kind == "V" else x


def _infer_unique(ctx: InferContext, x: ValueType | None, *, axis: Any = None, **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    n = ctx.dim("unique")
    if axis is None:
        y: Shape = (n,)
        m: Dim = None if s is None else _dim_prod(s)
    elif s is None:
        y, m = None, None
    else:
        a = _axis(axis, len(s))
        y, m = s[:a] + (n,) + s[a + 1:], s[a]
    return [_like(x, y), TensorType(_INT64, (n,)), TensorType(_INT64, (m,)), TensorType(_INT64, (n,))]


@defop("Unique", kind=Kind.OPAQUE, attrs={"axis": None, "sorted": 1}, inputs=(1, 1), outputs=(1, 4),
       since_version=11, infer=_infer_unique)
def unique(ctx, x, *, axis: Any, sorted: int):
    """Unique elements (axis None: of the flattened input) or sub-tensors along `axis`.

    Outputs: Y, first-occurrence indices, inverse indices, counts (int64). sorted=0 keeps the order of
    first occurrence.
    """
    if axis is None:
        data, a = x.reshape(-1), 0
    else:
        data, a = x, _axis(axis, x.ndim)
    key = _sort_key(data)
    if axis is not None:  # unique rows of the axis-major 2-D view
        key = np.moveaxis(key, a, 0).reshape(data.shape[a], -1)
    _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True,
                                          axis=None if axis is None else 0)
    inverse = inverse.reshape(-1)
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    y = np.take(data, first, axis=a)
    return y, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)


def _topk_k(ctx: Any, k_in: Any, k_attr: Any) -> int | None:
    if ctx.opset < 10:
        return None if k_attr is None else int(k_attr)
    return None if k_in is None else int(_scalar(k_in))


def _infer_topk(ctx: InferContext, x: ValueType | None, k_t: ValueType | None = None, *, axis: int = -1,
                k: Any = None, **_: Any) -> list[ValueType | None]:
    s = _shape(x)
    if s is None:
        return [_like(x, None), TensorType(_INT64, None)]
    kk = _topk_k(ctx, ctx.const(1), k)
    a = _axis(axis, len(s))
    out = s[:a] + (kk if kk is not None else ctx.dim("k"),) + s[a + 1:]
    return [_like(x, out), TensorType(_INT64, out)]


@defop("TopK", kind=Kind.OPAQUE, attrs={"axis": -1, "largest": 1, "sorted": 1, "k": None}, inputs=(1, 2),
       outputs=(2, 2), infer=_infer_topk)
def top_k(ctx, x, k_in=None, *, axis: int, largest: int, sorted: int, k: Any = None):
    """The k largest (or smallest) values along axis and their int64 indices; ties keep the lower index.

    k is an attribute before opset 10, an input after. Results are always sorted (also for sorted=0,
    where ONNX leaves the order unspecified).
    """
    kk = _topk_k(ctx, k_in, k)
    if kk is None:
        raise ValueError("TopK: k is required")
    a = _axis(axis, x.ndim)
    n = x.shape[a]
    if not 0 <= kk <= n:
        raise ValueError(f"TopK: k={kk} out of range for axis of size {n}")
    key = _sort_key(x)
    if largest:  # stable descending order with ties by lower index, without negating (unsigned types)
        order = (n - 1) - np.flip(np.argsort(np.flip(key, a), axis=a, kind="stable"), a)
    else:
        order = np.argsort(key, axis=a, kind="stable")
    idx = np.take(order, np.arange(kk), axis=a)
    return np.take_along_axis(x, idx, axis=a), idx.astype(np.int64)


@defop("ReverseSequence", kind=Kind.INJECTIVE, attrs={"batch_axis": 1, "time_axis": 0}, inputs=(2, 2),
       outputs=(1, 1), since_version=10, infer=same_as_input())
def reverse_sequence(ctx, x, sequence_lens, *, batch_axis: int, time_axis: int):
    """Reverse the first sequence_lens[b] steps along time_axis for each batch entry b."""
    ba, ta = _axis(batch_axis, x.ndim), _axis(time_axis, x.ndim)
    if {ba, ta} != {0, 1}:
        raise ValueError("ReverseSequence: batch_axis and time_axis must be 0 and 1")
    lens = np.asarray(sequence_lens, np.int64).reshape(-1, 1)
    t = np.arange(x.shape[ta], dtype=np.int64)[None, :]
    src = np.where(t < lens, lens - 1 - t, t)  # (batch, time)
    if ta == 0:
        src = src.T
    src = src.reshape(src.shape + (1,) * (x.ndim - 2))
    return np.take_along_axis(x, np.broadcast_to(src, x.shape), axis=ta)


# ---------------------------------------------------------------------------------------------
# DepthToSpace, SpaceToDepth, Col2Im


def _infer_block(to_space: bool) -> Any:
    def infer(ctx: InferContext, x: ValueType | None, *, blocksize: int, **_: Any) -> list[ValueType | None]:
        s = _shape(x)
        if s is None:
            return [_like(x, (None,) * 4)]
        b2 = blocksize * blocksize
        if to_space:
            out = (s[0], _dim_div(s[1], b2), _dim_mul(s[2], blocksize), _dim_mul(s[3], blocksize))
        else:
            out = (s[0], _dim_mul(s[1], b2), _dim_div(s[2], blocksize), _dim_div(s[3], blocksize))
        return [_like(x, out)]

    return infer


def _block_mode(op: str, mode: str) -> str:
    if mode not in ("DCR", "CRD"):
        raise NotImplementedError(f"{op}: mode {mode!r} is not supported")
    return mode


@defop("DepthToSpace", kind=Kind.INJECTIVE, attrs={"blocksize": REQUIRED, "mode": "DCR"}, inputs=(1, 1),
       outputs=(1, 1), infer=_infer_block(True))
def depth_to_space(ctx, x, *, blocksize: int, mode: str):
    """NCHW: channel blocks into bs x bs spatial blocks; DCR (depth-column-row) or CRD order."""
    b, c, h, w = x.shape
    bs = blocksize
    if _block_mode("DepthToSpace", mode) == "DCR":
        t = x.reshape(b, bs, bs, c // (bs * bs), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(b, c // (bs * bs), bs, bs, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(b, c // (bs * bs), h * bs, w * bs)


@defop("SpaceToDepth", kind=Kind.INJECTIVE, attrs={"blocksize": REQUIRED, "mode": "DCR"}, inputs=(1, 1),
       outputs=(1, 1), infer=_infer_block(False))
def space_to_depth(ctx, x, *, blocksize: int, mode: str):
    """Inverse of DepthToSpace (mode CRD from opset 28)."""
    b, c, h, w = x.shape
    bs = blocksize
    t = x.reshape(b, c, h // bs, bs, w // bs, bs)
    perm = (0, 3, 5, 1, 2, 4) if _block_mode("SpaceToDepth", mode) == "DCR" else (0, 1, 3, 5, 2, 4)
    return t.transpose(perm).reshape(b, c * bs * bs, h // bs, w // bs)


def _infer_col2im(ctx: InferContext, x: ValueType | None, *_args: ValueType | None,
                  **__: Any) -> list[ValueType | None]:
    s, img, blk = _shape(x), _ints(ctx.const(1)), _ints(ctx.const(2))
    if s is None:
        return [_like(x, None)]
    k = int(np.prod(blk)) if blk is not None else None
    if img is None:  # sizes unknown; the rank still follows from image_shape's length
        n = _shape(_args[0]) if _args else None
        if n is None or len(n) != 1 or not isinstance(n[0], int):
            return [_like(x, None)]
        img = [None] * n[0]  # type: ignore[list-item]
    return [_like(x, (s[0], _dim_div(s[1], k) if k else None) + tuple(img))]


@defop("Col2Im", kind=Kind.OPAQUE, attrs={"strides": None, "pads": None, "dilations": None}, inputs=(3, 3),
       outputs=(1, 1), since_version=18, infer=_infer_col2im)
def col2im(ctx, x, image_shape, block_shape, *, strides: Any, pads: Any, dilations: Any):
    """Sum column blocks (N, C*prod(block), L) back into images (N, C, *image_shape), like torch fold."""
    img, blk = _ints(image_shape) or [], _ints(block_shape) or []
    nd = len(img)
    st = _ints(strides) or [1] * nd
    dl = _ints(dilations) or [1] * nd
    pd = _ints(pads) or [0] * (2 * nd)
    n, ck, _ = x.shape
    kprod = int(np.prod(blk, dtype=np.int64))
    c = ck // kprod
    padded = [img[d] + pd[d] + pd[d + nd] for d in range(nd)]
    nb = [(padded[d] - (dl[d] * (blk[d] - 1) + 1)) // st[d] + 1 for d in range(nd)]
    if int(np.prod(nb, dtype=np.int64)) != x.shape[2] or c * kprod != ck:
        raise ValueError(f"Col2Im: input shape {x.shape} does not match blocks {nb} of kernel {blk}")
    vals = np.moveaxis(x.reshape([n, c] + blk + nb), (0, 1), (-2, -1))  # (*K, *nb, N, C)
    grids = []
    for d in range(nd):  # padded position of kernel offset k_d in block b_d: b_d * stride + k_d * dilation
        kshape = [1] * (2 * nd)
        kshape[d] = blk[d]
        bshape = [1] * (2 * nd)
        bshape[nd + d] = nb[d]
        grids.append(np.arange(blk[d]).reshape(kshape) * dl[d] + np.arange(nb[d]).reshape(bshape) * st[d])
    out = np.zeros(padded + [n, c], x.dtype)
    np.add.at(out, tuple(grids), vals)
    out = out[tuple(slice(pd[d], pd[d] + img[d]) for d in range(nd))]
    return np.ascontiguousarray(np.moveaxis(out, (-2, -1), (0, 1)))


# ---------------------------------------------------------------------------------------------
# CumSum, CumProd


def _cumulative(ufunc: np.ufunc, x: np.ndarray, axis: Any, exclusive: int, reverse: int) -> np.ndarray:
    a = _axis(int(_scalar(axis)), x.ndim)
    y = np.flip(x, a) if reverse else x
    y = ufunc.accumulate(y, axis=a, dtype=x.dtype)
    if exclusive:  # shift by one along the axis, the identity (0 or 1) first
        head = (slice(None),) * a
        shifted = np.full_like(y, ufunc.identity)
        shifted[head + (slice(1, None),)] = y[head + (slice(None, -1),)]
        y = shifted
    return np.flip(y, a) if reverse else y


@defop("CumSum", kind=Kind.REDUCTION, attrs={"exclusive": 0, "reverse": 0}, inputs=(2, 2), outputs=(1, 1),
       since_version=11, infer=same_as_input())
def cumsum(ctx, x, axis, *, exclusive: int, reverse: int):
    """Running sum along axis (exclusive: shifted by one, starting at 0; reverse: from the end)."""
    return _cumulative(np.add, x, axis, exclusive, reverse)


@defop("CumProd", kind=Kind.REDUCTION, attrs={"exclusive": 0, "reverse": 0}, inputs=(2, 2), outputs=(1, 1),
       since_version=26, infer=same_as_input())
def cumprod(ctx, x, axis, *, exclusive: int, reverse: int):
    """Running product along axis (exclusive: shifted by one, starting at 1; reverse: from the end)."""
    return _cumulative(np.multiply, x, axis, exclusive, reverse)
