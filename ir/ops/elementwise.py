"""Elementwise and broadcasting ops: arithmetic, comparisons, logic, math functions, activations, casts.

Most ops are registered from tables through a few helpers (`_unary`, `_binary`, `_variadic`) that share
one evaluation rule (`_eval`): narrow floats (float16, bfloat16, float8...) are computed in float32 and
rounded once at the end, every result is cast back to the dtype ONNX specifies for the output, and
float attributes are cast to the computation dtype so no float64 scalar promotes a float32 tensor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.special

from ..types import DType, TensorType, ValueType
from .core import (REQUIRED, Attr, EvalContext, InferContext, Kind, broadcast_infer, broadcast_shapes, defop, same_as_input)

if TYPE_CHECKING:
    pass

Infer = Callable[..., list[ValueType | None]]

#: Attributes of old opsets that carry no semantics (opset-1 memory planning hints).
_IGNORED_ATTRS = frozenset({"consumed_inputs"})
_FLT_MAX = 3.4028234663852886e38


def _no_extra(op: str, extra: dict[str, Any]) -> None:
    """Refuse attributes this definition does not know rather than ignore their meaning."""
    bad = sorted(k for k in extra if k not in _IGNORED_ATTRS)
    if bad:
        raise NotImplementedError(f"{op}: attribute(s) {bad} are not supported")


@functools.lru_cache(maxsize=None)
def _narrow_float(dt: np.dtype) -> bool:
    """Floats numpy cannot compute in at full precision (float16, bfloat16, float8, float4)."""
    try:
        return dt.itemsize < 4 and DType.from_numpy(dt).is_float
    except TypeError:
        return False


def _up(v: Any) -> Any:
    return v.astype(np.float32) if isinstance(v, np.ndarray) and _narrow_float(v.dtype) else v


def _eval(fn: Callable[..., Any], out: np.dtype, *xs: Any, **params: Any) -> np.ndarray:
    """`fn(*xs, **params)` with narrow floats widened to float32, float params cast to the computation
    dtype of the first input, and the result cast to `out` (numpy promotion never leaks through)."""
    xs = tuple(_up(x) for x in xs)
    ct = xs[0].dtype
    if ct.kind == "f":
        params = {k: ct.type(v) if isinstance(v, float) else v for k, v in params.items()}
    with np.errstate(all="ignore"):
        y = np.asarray(fn(*xs, **params))
        return y.astype(out, copy=False)


def _register(name: str, ref: Callable[..., Any], kind: Kind, *, doc: str = "", **kw: Any) -> None:
    ref.__name__ = ref.__qualname__ = name
    ref.__doc__ = doc or None
    defop(name, kind=kind, **kw)(ref)


# ---------------------------------------------------------------------------------------------
# Unary ops: math functions and activations.


def _unary(name: str, fn: Callable[..., Any], *, attrs: dict[str, Any] | None = None, since: int = 1,
           out: DType | None = None, doc: str = "") -> None:
    names = tuple(attrs or ())

    def ref(ctx: EvalContext, x: np.ndarray, **kw: Any) -> np.ndarray:
        params = {k: kw.pop(k) for k in names}
        _no_extra(name, kw)
        return _eval(fn, out.np if out is not None else x.dtype, x, **params)

    _register(name, ref, Kind.ELEMWISE, doc=doc, attrs=attrs, inputs=(1, 1), outputs=(1, 1), since_version=since,
              infer=same_as_input(dtype=out))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0, x)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    if approximate == "none":
        return 0.5 * x * (1 + scipy.special.erf(x / math.sqrt(2)))
    raise NotImplementedError(f"Gelu: approximate '{approximate}' is not supported")


def _shrink(x: np.ndarray, bias: float, lambd: float) -> np.ndarray:
    b = x.dtype.type(bias)  # the comparisons keep the float lambd: an integer x must not truncate it
    return np.where(x < -lambd, x + b, np.where(x > lambd, x - b, x.dtype.type(0)))


_SELU_ALPHA = Attr(1.6732000112533569, since={6: 1.67326319217681884765625})
_SELU_GAMMA = Attr(1.0506999492645264, since={6: 1.05070102214813232421875})

# (name, fn(x, **attrs), attrs, first opset, output dtype (None: the input's))
_UNARY: list[tuple[str, Callable[..., Any], dict[str, Any] | None, int, DType | None]] = [
    ("Abs", np.abs, None, 1, None),
    ("Neg", np.negative, None, 1, None),
    ("Reciprocal", np.reciprocal, None, 1, None),
    ("Sqrt", np.sqrt, None, 1, None),
    ("Exp", np.exp, None, 1, None),
    ("Log", np.log, None, 1, None),
    ("Ceil", np.ceil, None, 1, None),
    ("Floor", np.floor, None, 1, None),
    ("Round", np.round, None, 11, None),  # half to even, as ONNX specifies
    ("Sign", np.sign, None, 9, None),
    ("Erf", scipy.special.erf, None, 9, None),
    ("Sin", np.sin, None, 7, None),
    ("Cos", np.cos, None, 7, None),
    ("Tan", np.tan, None, 7, None),
    ("Asin", np.arcsin, None, 7, None),
    ("Acos", np.arccos, None, 7, None),
    ("Atan", np.arctan, None, 7, None),
    ("Sinh", np.sinh, None, 9, None),
    ("Cosh", np.cosh, None, 9, None),
    ("Asinh", np.arcsinh, None, 9, None),
    ("Acosh", np.arccosh, None, 9, None),
    ("Atanh", np.arctanh, None, 9, None),
    ("Tanh", np.tanh, None, 1, None),
    ("IsNaN", np.isnan, None, 9, DType.BOOL),
    ("IsInf", lambda x, detect_positive, detect_negative: (np.isposinf(x) & bool(detect_positive))
     | (np.isneginf(x) & bool(detect_negative)), {"detect_positive": 1, "detect_negative": 1}, 10, DType.BOOL),
    ("Not", np.logical_not, None, 1, None),
    ("BitwiseNot", np.invert, None, 18, None),
    # activations
    ("Relu", lambda x: np.maximum(x, x.dtype.type(0)), None, 1, None),
    ("LeakyRelu", lambda x, alpha: np.where(x < 0, x * alpha, x), {"alpha": 0.01}, 1, None),
    ("Elu", lambda x, alpha: np.where(x > 0, x, alpha * np.expm1(x)), {"alpha": 1.0}, 1, None),
    ("Selu", lambda x, alpha, gamma: gamma * np.where(x > 0, x, alpha * np.expm1(x)),
     {"alpha": _SELU_ALPHA, "gamma": _SELU_GAMMA}, 1, None),
    ("Celu", lambda x, alpha: np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(x / alpha)), {"alpha": 1.0}, 12, None),
    ("Sigmoid", scipy.special.expit, None, 1, None),
    ("HardSigmoid", lambda x, alpha, beta: np.clip(alpha * x + beta, 0, 1), {"alpha": 0.2, "beta": 0.5}, 1, None),
    ("HardSwish", lambda x: x * np.clip(x / 6 + 0.5, 0, 1), None, 14, None),
    ("Softplus", _softplus, None, 1, None),
    ("Softsign", lambda x: x / (1 + np.abs(x)), None, 1, None),
    ("ThresholdedRelu", lambda x, alpha: np.where(x > alpha, x, 0), {"alpha": 1.0}, 10, None),
    ("Gelu", _gelu, {"approximate": "none"}, 20, None),
    ("Mish", lambda x: x * np.tanh(_softplus(x)), None, 18, None),
    ("Swish", lambda x, alpha: x * scipy.special.expit(alpha * x), {"alpha": 1.0}, 24, None),
    ("Shrink", _shrink, {"bias": 0.0, "lambd": 0.5}, 9, None),
]
_DOCS = {
    "Round": "Rounds half to even (banker's rounding), as ONNX specifies.",
    "Selu": "gamma * (x if x > 0 else alpha * (exp(x) - 1)); the default constants changed at opset 6.",
    "Shrink": "x + bias below -lambd, x - bias above lambd, else 0; integer inputs compare against the float lambd.",
    "Gelu": "approximate 'none' uses erf, 'tanh' the tanh approximation.",
    "IsInf": "detect_positive / detect_negative select which infinities count.",
}
for _name, _fn, _attrs, _since, _out in _UNARY:
    _unary(_name, _fn, attrs=_attrs, since=_since, out=_out, doc=_DOCS.get(_name, ""))


# ---------------------------------------------------------------------------------------------
# Binary ops.


def _legacy_broadcast(a: np.ndarray, b: np.ndarray, axis: int | None) -> np.ndarray:
    """Opset < 7 `broadcast=1`: B is broadcast onto A, its dims aligned from `axis` (default: the end)."""
    if axis is None or b.ndim == 0:
        return b
    ax = axis % a.ndim if a.ndim else 0
    return b.reshape(b.shape + (1,) * (a.ndim - ax - b.ndim))


def _binary_infer(out: DType | None = None) -> Infer:
    base = broadcast_infer(out)

    def infer(ctx: InferContext, a: ValueType | None, b: ValueType | None, **attrs: Any) -> list[ValueType | None]:
        if attrs.get("broadcast") and isinstance(a, TensorType):  # legacy: the result has A's shape
            return [TensorType(out or a.dtype, a.shape)]
        return base(ctx, a, b)

    return infer


def _binary(name: str, fn: Callable[..., Any], *, since: int = 1, out: DType | None = None, legacy: bool = False,
            attrs: dict[str, Any] | None = None, doc: str = "") -> None:
    names = tuple(attrs or ())
    spec = {**({"broadcast": 0, "axis": None} if legacy else {}), **(attrs or {})}

    def ref(ctx: EvalContext, a: np.ndarray, b: np.ndarray, **kw: Any) -> np.ndarray:
        bcast, axis = kw.pop("broadcast", 0), kw.pop("axis", None)
        params = {k: kw.pop(k) for k in names}
        _no_extra(name, kw)
        if bcast:
            b = _legacy_broadcast(a, b, axis)
        return _eval(fn, out.np if out is not None else a.dtype, a, b, **params)

    _register(name, ref, Kind.BROADCAST, doc=doc, attrs=spec, inputs=(2, 2), outputs=(1, 1), since_version=since,
              infer=_binary_infer(out))


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu":  # integer division truncates toward zero, as in C
        q = np.floor_divide(a, b)
        if a.dtype.kind == "i":
            q = q + ((np.remainder(a, b) != 0) & ((a < 0) != (b < 0))).astype(q.dtype)
        return q
    return np.true_divide(a, b)


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu" and b.dtype.kind in "iu" and np.any(b < 0):
        # numpy refuses negative integer powers; those go through float64 (and truncate back).
        neg = b < 0
        return np.where(neg, np.power(a.astype(np.float64), b.astype(np.float64)), np.power(a, np.where(neg, 0, b)))
    return np.power(a, b)


def _mod(a: np.ndarray, b: np.ndarray, fmod: int) -> np.ndarray:
    if fmod not in (0, 1):
        raise NotImplementedError(f"Mod: fmod={fmod} is not supported")
    return np.fmod(a, b) if fmod else np.mod(a, b)  # fmod: sign of A (C fmod); else sign of B


def _bitshift(a: np.ndarray, b: np.ndarray, direction: str) -> np.ndarray:
    """Shifts by a negative amount or by >= the bit width give the sign fill (0, or -1 right of a negative)."""
    if direction not in ("LEFT", "RIGHT"):
        raise NotImplementedError(f"BitShift: direction '{direction}' is not supported")
    a, b = np.broadcast_arrays(a, b)
    ok = (b >= 0) & (b < a.dtype.itemsize * 8)
    s = np.where(ok, b, 0)
    if direction == "RIGHT":
        y = np.right_shift(a, s.astype(a.dtype))  # arithmetic for signed types
        fill = np.negative((a < 0).astype(a.dtype))
    else:  # LEFT: shift the two's complement bits as unsigned, bits past the sign are dropped
        u = np.dtype(f"u{a.dtype.itemsize}")
        y = np.left_shift(a.astype(u), s.astype(u)).astype(a.dtype)
        fill = np.zeros_like(a)
    return np.where(ok, y, fill)


# (name, fn(a, b, **attrs), first opset, output dtype (None: A's), legacy broadcast attrs, attrs)
_BINARY: list[tuple[str, Callable[..., Any], int, DType | None, bool, dict[str, Any] | None]] = [
    ("Add", np.add, 1, None, True, None),
    ("Sub", np.subtract, 1, None, True, None),
    ("Mul", np.multiply, 1, None, True, None),
    ("Div", _div, 1, None, True, None),
    ("Pow", _pow, 1, None, True, None),  # mixed dtypes: the result has the base's dtype
    ("Mod", _mod, 10, None, False, {"fmod": 0}),
    ("BitShift", _bitshift, 11, None, False, {"direction": REQUIRED}),
    ("BitwiseAnd", np.bitwise_and, 18, None, False, None),
    ("BitwiseOr", np.bitwise_or, 18, None, False, None),
    ("BitwiseXor", np.bitwise_xor, 18, None, False, None),
    ("And", np.logical_and, 1, DType.BOOL, True, None),
    ("Or", np.logical_or, 1, DType.BOOL, True, None),
    ("Xor", np.logical_xor, 1, DType.BOOL, True, None),
    ("Equal", np.equal, 1, DType.BOOL, True, None),  # strings too (object arrays)
    ("Greater", np.greater, 1, DType.BOOL, True, None),
    ("Less", np.less, 1, DType.BOOL, True, None),
    ("GreaterOrEqual", np.greater_equal, 12, DType.BOOL, False, None),
    ("LessOrEqual", np.less_equal, 12, DType.BOOL, False, None),
]
_BINARY_DOCS = {
    "Div": "Integer division truncates toward zero (C semantics), not numpy's floor.",
    "Pow": "The result has the base's dtype whatever the exponent's; negative integer powers go through float64.",
    "Mod": "fmod=0: the sign of the divisor (floor); fmod=1: the sign of the dividend (C fmod).",
    "BitShift": "Arithmetic right shift for signed types; amounts < 0 or >= the bit width give the sign fill.",
}
for _name, _fn, _since, _out, _legacy, _attrs in _BINARY:
    _binary(_name, _fn, since=_since, out=_out, legacy=_legacy, attrs=_attrs, doc=_BINARY_DOCS.get(_name, ""))


@defop("PRelu", kind=Kind.BROADCAST, inputs=(2, 2), outputs=(1, 1), infer=same_as_input())
def prelu(ctx: EvalContext, x: np.ndarray, slope: np.ndarray, **kw: Any) -> np.ndarray:
    """slope * x where x < 0. The slope broadcasts onto x; before opset 7 a 1-D slope of C values is
    per channel (axis 1)."""
    _no_extra("PRelu", kw)
    if ctx.opset < 7 and slope.ndim == 1 and slope.size > 1 and x.ndim >= 2:
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
    return _eval(lambda x, s: np.where(x < 0, x * s, x), x.dtype, x, slope)


# ---------------------------------------------------------------------------------------------
# Variadic ops.


def _variadic(name: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], mean: bool = False) -> None:
    def ref(ctx: EvalContext, *xs: np.ndarray, **kw: Any) -> np.ndarray:
        _no_extra(name, kw)

        def combine(*ys: np.ndarray) -> np.ndarray:
            r = functools.reduce(fn, ys)
            return r / len(ys) if mean else r

        return _eval(combine, xs[0].dtype, *xs)

    _register(name, ref, Kind.BROADCAST, inputs=(1, None), outputs=(1, 1), infer=broadcast_infer())


for _name, _fn in (("Sum", np.add), ("Mean", np.add), ("Max", np.maximum), ("Min", np.minimum)):
    _variadic(_name, _fn, mean=_name == "Mean")


# ---------------------------------------------------------------------------------------------
# Where, Clip, Dropout.


def _infer_where(ctx: InferContext, c: ValueType | None, x: ValueType | None, y: ValueType | None,
                 **_: Any) -> list[ValueType | None]:
    if not all(isinstance(t, TensorType) for t in (c, x, y)):
        return [None]
    return [TensorType(x.dtype, broadcast_shapes(c.shape, x.shape, y.shape))]  # type: ignore[union-attr]


@defop("Where", kind=Kind.BROADCAST, inputs=(3, 3), outputs=(1, 1), since_version=9, infer=_infer_where)
def where(ctx: EvalContext, cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(cond, x, y).astype(x.dtype, copy=False)


@defop("Clip", kind=Kind.BROADCAST, inputs=(1, 3), outputs=(1, 1), infer=same_as_input(),
       attrs={"min": Attr(None, since={6: -_FLT_MAX, 11: None}), "max": Attr(None, since={6: _FLT_MAX, 11: None})})
def clip(ctx: EvalContext, x: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None,
         **kw: Any) -> np.ndarray:
    """Min(max, Max(x, min)): when min > max every value becomes max. Bounds are attributes before
    opset 11 and optional scalar inputs from 11."""
    a_lo, a_hi = kw.pop("min"), kw.pop("max")
    _no_extra("Clip", kw)
    if ctx.opset < 11:
        lo, hi = a_lo, a_hi

    def f(x: np.ndarray, lo: Any, hi: Any) -> np.ndarray:
        if lo is not None:
            x = np.maximum(x, lo if isinstance(lo, np.ndarray) else x.dtype.type(lo))
        if hi is not None:
            x = np.minimum(x, hi if isinstance(hi, np.ndarray) else x.dtype.type(hi))
        return x

    return _eval(f, x.dtype, x, lo, hi)


def _infer_dropout(ctx: InferContext, x: ValueType | None, *_: Any, **__: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None, None]
    return [x, TensorType(DType.BOOL if ctx.opset >= 10 else x.dtype, x.shape)]


@defop("Dropout", kind=Kind.ELEMWISE, inputs=(1, 3), outputs=(1, 2), random=True, infer=_infer_dropout,
       attrs={"ratio": Attr(0.5, since={12: None}), "seed": None, "is_test": 0})
def dropout(ctx: EvalContext, x: np.ndarray, r: np.ndarray | None = None, t: np.ndarray | None = None,
            **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """Identity (mask all true) in inference; in training, y = x * mask / (1 - ratio).

    Training is `training_mode` (an input from opset 12) or `is_test == 0` before opset 7. With a
    `seed` the mask is drawn from numpy's RandomState(seed) (as ONNX's reference does), else from the
    interpreter's generator.
    """
    ratio, seed, is_test = kw.pop("ratio"), kw.pop("seed"), kw.pop("is_test")
    _no_extra("Dropout", kw)
    if ctx.opset >= 12:
        ratio = 0.5 if r is None else float(r)
        training = t is not None and bool(t)
    else:
        training = ctx.opset < 7 and not is_test
    mask_dtype = np.dtype(bool) if ctx.opset >= 10 else x.dtype
    if not training or ratio == 0:
        return x, np.ones(x.shape, mask_dtype)
    rng: Any = np.random.RandomState(seed) if seed is not None else ctx.rng
    mask = rng.uniform(0.0, 1.0, x.shape) >= ratio
    y = _eval(lambda v, m: v * m * (1.0 / (1.0 - ratio)), x.dtype, x, mask)
    return y, mask.astype(mask_dtype)


# ---------------------------------------------------------------------------------------------
# Cast, CastLike, BitCast.

_FLOAT8 = frozenset({DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ})
_ROUND_MODES = ("up", "down", "nearest")


def _to_dtype(to: Any) -> DType:
    if to is None:
        raise ValueError("Cast: attribute 'to' is required")
    return DType[to.upper()] if isinstance(to, str) else DType(int(to))  # Cast-1 names the type


def _parse_strings(x: np.ndarray, to: DType) -> np.ndarray:
    """Strings to numbers: float() reads '1e-5', 'INF', '+inf', '-INF', 'NaN' (any case)."""
    flat = x.ravel()
    if to.is_integer and to.np.kind in "iu":
        def num(s: Any) -> int:
            try:
                return int(s)
            except ValueError:
                return int(float(s))

        return np.array([num(s) for s in flat], dtype=to.np).reshape(x.shape)
    return np.array([float(s) for s in flat], dtype=np.float64).reshape(x.shape)


def _to_e8m0(x: np.ndarray, saturate: bool, round_mode: str) -> np.ndarray:
    """float -> float8e8m0: powers of two 2^-127..2^127 stored as exponent + 127 (0xFF is NaN).

    `round_mode` picks the power: up (the next one when x is not a power of two), down, or nearest
    (mantissa >= 1.5 goes up). Saturation keeps Inf and out-of-range values at the extremes (zero
    gives the smallest); without it they become NaN. The sign is ignored (the spec leaves it open).
    """
    v = np.abs(np.asarray(x, dtype=np.float64))
    m, e = np.frexp(v)  # v = m * 2**e with m in [0.5, 1)
    e = e.astype(np.int64) - 1  # v = (2m) * 2**(e - 1), mantissa in [1, 2)
    if round_mode == "up":
        e += 2 * m > 1
    elif round_mode == "nearest":
        e += 2 * m >= 1.5
    code = e + 127
    if saturate:
        code = np.where(np.isinf(v), 254, np.where(v == 0, 0, np.clip(code, 0, 254)))
    else:
        code = np.where((code < 0) | (code > 254) | np.isinf(v) | (v == 0), 255, code)
    code = np.where(np.isnan(v), 255, code)
    return code.astype(np.uint8).view(DType.FLOAT8E8M0.np)


def _format_strings(x: np.ndarray) -> np.ndarray:
    """Numbers to strings as onnxruntime writes them: '%.8g' floats, 'NaN', 'INF', '-INF', bools 1/0."""
    if x.dtype == np.bool_ or x.dtype.kind in "iu":
        return x.astype(np.int64 if x.dtype.kind != "u" else np.uint64).astype(np.str_).astype(object)
    v = np.asarray(x, dtype=np.float64)
    out = np.char.mod("%.8g", v)
    out = np.where(np.isnan(v), "NaN", np.where(np.isinf(v), np.where(v > 0, "INF", "-INF"), out))
    return out.astype(object)


def cast_array(x: np.ndarray, to: DType, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast semantics (shared with CastLike; usable by other op families)."""
    if round_mode not in _ROUND_MODES:
        raise NotImplementedError(f"Cast: round_mode '{round_mode}' is not supported")
    if to == DType.STRING:
        return x.copy() if x.dtype == object else _format_strings(x)
    if x.dtype == object:
        x = _parse_strings(x, to)
    with np.errstate(all="ignore"):
        if to == DType.FLOAT8E8M0:
            return _to_e8m0(x, bool(saturate), round_mode)
        if to in _FLOAT8 and saturate:  # out of range (and +-Inf) saturate to +-FLT_MAX; NaN stays
            import ml_dtypes

            hi = float(ml_dtypes.finfo(to.np).max)
            x = np.clip(x if x.dtype in (np.float32, np.float64) else x.astype(np.float64), -hi, hi)
        try:
            return x.astype(to.np)
        except (TypeError, ValueError):  # pairs of ml_dtypes types without a direct conversion
            return x.astype(np.float32).astype(to.np)


def _infer_cast(ctx: InferContext, x: ValueType | None, *, to: Any, **_: Any) -> list[ValueType | None]:
    return [TensorType(_to_dtype(to), x.shape if isinstance(x, TensorType) else None)]


@defop("Cast", kind=Kind.ELEMWISE, inputs=(1, 1), outputs=(1, 1), infer=_infer_cast,
       attrs={"to": REQUIRED, "saturate": 1, "round_mode": "up"})
def cast(ctx: EvalContext, x: np.ndarray, *, to: Any, saturate: int, round_mode: str) -> np.ndarray:
    """Numeric, string and narrow-float conversions; `saturate` applies to float8 targets,
    `round_mode` to float8e8m0."""
    return cast_array(x, _to_dtype(to), saturate, round_mode)


def _infer_cast_like(ctx: InferContext, x: ValueType | None, like: ValueType | None,
                     **_: Any) -> list[ValueType | None]:
    if not isinstance(like, TensorType):
        return [None]
    return [TensorType(like.dtype, x.shape if isinstance(x, TensorType) else None)]


@defop("CastLike", kind=Kind.BROADCAST, inputs=(2, 2), outputs=(1, 1), since_version=15, infer=_infer_cast_like, attrs={"saturate": 1, "round_mode": "up"})
def cast_like(ctx: EvalContext, x: np.ndarray, like: np.ndarray, *, saturate: int, round_mode: str) -> np.ndarray:
    """Cast to the element type of the second input."""
    return cast_array(x, DType.from_numpy(like.dtype), saturate, round_mode)


def _infer_bitcast(ctx: InferContext, x: ValueType | None, *, to: Any, **_: Any) -> list[ValueType | None]:
    return [TensorType(_to_dtype(to), x.shape if isinstance(x, TensorType) else None)]


@defop("BitCast", kind=Kind.ELEMWISE, inputs=(1, 1), outputs=(1, 1), since_version=26, infer=_infer_bitcast,
       attrs={"to": REQUIRED})
def bitcast(ctx: EvalContext, x: np.ndarray, *, to: int) -> np.ndarray:
    """Reinterpret the bits of each element as another type of the same width."""
    src, dst = DType.from_numpy(x.dtype), _to_dtype(to)
    if DType.STRING in (src, dst):
        raise ValueError("BitCast: strings cannot be bit-cast")
    if src.itemsize != dst.itemsize:
        raise ValueError(f"BitCast: {src.name} and {dst.name} have different widths")
    if src.itemsize < 1:
        raise NotImplementedError(f"BitCast: sub-byte type {src.name} is not supported")
    return np.asarray(x, order="C").view(dst.np)
