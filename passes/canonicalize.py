"""Canonicalization: the patterns exporters spell out, rewritten into the single ops that name them.

Exporters write an activation or a normalization as a chain of primitive ops when the target opset
(or the exporter) has no op for it: PyTorch below opset 14 writes hardswish as `x * Clip(x + 3, 0, 6)
/ 6`, Paddle2ONNX writes hard-sigmoid as `Clip(x * a + b, 0, 1)`, older exporters write LayerNorm as
seven reductions and arithmetic ops. Later passes (fusion, quantization, codegen) and runtimes handle
the one op far better than the chain, so the chains are recognised here, once, as data: each rule is a
`passes.pattern.Rule` (pattern, replacement, check) and one greedy driver applies them all.

Every rule keeps exact semantics: it checks the value is floating point, the constants are what the
op implies (within `Const`'s tolerance), scalars broadcast without changing the shape, reductions run
over the last axis, and the opset has the target op. A rule whose target op the opset lacks still
matches but its check refuses, so the chain stays as it is (GELU below opset 20, LayerNorm below 17);
hardswish below opset 14 becomes `x * HardSigmoid(x)`, the form the exporters use themselves.

Rules compose: `Clip(x + 3, 0, 6) / 6` becomes HardSigmoid first, and `x * HardSigmoid(x)` then
HardSwish; a bare LayerNorm gets unit scale, and a following `Mul(gamma)` / `Add(beta)` folds into it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ir import DType, Graph, Node, Value

from .base import Pass, register_pass
from .pattern import Builder, Const, Match, Op, Pattern, Rule, apply_rules, const_value

Check = Callable[[Match], bool]

#: Element types every target op (HardSigmoid, HardSwish, Gelu, LayerNormalization, Gemm) accepts.
FLOATS = frozenset({DType.FLOAT, DType.FLOAT16, DType.DOUBLE})
SQRT2 = math.sqrt(2.0)


# ---------------------------------------------------------------------------------------------
# Shared checks: numbers, Clip bounds, reduction axes, Pad amounts, broadcasting.


def _near(value: float | None, target: float) -> bool:
    """`value` equals `target` within the pattern DSL's constant tolerance."""
    return value is not None and Const(value=target).accepts(np.asarray(value, np.float64))


def _scalar(arr: np.ndarray | None) -> float | None:
    """The number a one-element numeric array holds, else None."""
    if arr is None or arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    return float(arr.reshape(-1)[0])


def clip_bounds(node: Node) -> tuple[float, float] | None:
    """A Clip's (min, max): attributes before opset 11, optional constant inputs from 11 on.

    A missing bound is infinite; a bound that is not a constant makes the answer None (unknown).
    """
    if node.opset < 11:
        lo, hi = node.attr("min", -math.inf), node.attr("max", math.inf)
        return float(lo), float(hi)
    bounds: list[float] = []
    for i, missing in ((1, -math.inf), (2, math.inf)):
        v = node.input(i)
        b = missing if v is None else _scalar(const_value(v))
        if b is None:
            return None
        bounds.append(b)
    return bounds[0], bounds[1]


def clips_to(lo: float, hi: float) -> Callable[[Node], bool]:
    """`where` predicate: the Clip's bounds are (lo, hi) in either opset style."""

    def where(node: Node) -> bool:
        b = clip_bounds(node)
        return b is not None and _near(b[0], lo) and _near(b[1], hi)

    return where


def reduce_axes(node: Node) -> list[int] | None:
    """A Reduce*'s axes: attribute before opset 18 (13 for ReduceSum), constant input after; None if
    absent (all axes) or not constant."""
    since = 13 if node.op_type == "ReduceSum" else 18
    if node.opset >= since:
        arr = const_value(node.input(1))
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    axes = node.attr("axes")
    return None if axes is None else [int(a) for a in axes]


def _is_last_axis(axes: Sequence[int] | None, rank: int | None) -> bool:
    if axes is None or len(axes) != 1:
        return False
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _input_rank(node: Node) -> int | None:
    x = node.input(0)
    return None if x is None else x.rank


def over_last_axis(node: Node) -> bool:
    """`where` predicate: a keepdims reduction over exactly the input's last axis."""
    return bool(node.attr("keepdims", 1)) and _is_last_axis(reduce_axes(node), _input_rank(node))


def ln_over_last_axis(node: Node) -> bool:
    """`where` predicate: a LayerNormalization normalizing only the last axis."""
    return _is_last_axis([int(node.attr("axis", -1))], _input_rank(node))


def pad_amounts(node: Node, rank: int) -> list[int] | None:
    """A Pad's amounts as [begin per dim..., end per dim...] over all `rank` dims, when it pads with
    the constant 0 (pads as attribute before opset 11, inputs from 11, axes input from 18); else None."""
    if node.attr("mode", "constant") != "constant" or node.opset < 2:
        return None
    if node.opset < 11:
        pads, value, axes = node.attr("pads"), float(node.attr("value", 0.0)), None
    else:
        pads_arr = const_value(node.input(1))
        value_v = node.input(2)
        value = 0.0 if value_v is None else _scalar(const_value(value_v))
        pads = None if pads_arr is None else [int(p) for p in pads_arr.reshape(-1)]
        axes = None
        if node.input(3) is not None:
            axes_arr = const_value(node.input(3))
            if axes_arr is None:
                return None
            axes = [int(a) % rank for a in axes_arr.reshape(-1)]
    if pads is None or value != 0.0:
        return None
    axes = list(range(rank)) if axes is None else axes
    if len(pads) != 2 * len(axes) or len(set(axes)) != len(axes):
        return None
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[rank + a] = pads[i], pads[len(axes) + i]
    return full


def _fits(arr: np.ndarray, like: Value) -> bool:
    """One number that broadcasts against `like` without changing its shape."""
    rank = like.rank
    return arr.size == 1 and (arr.ndim == 0 or (rank is not None and arr.ndim <= rank))


def _lane_vector(arr: np.ndarray, like: Value) -> np.ndarray | None:
    """`arr`, a constant multiplied/added along `like`'s last axis, as a [D] vector of `like`'s dtype;
    None when it would broadcast over another axis or grow the shape, or D is not static."""
    shape = like.shape
    if shape is None or not shape or not isinstance(shape[-1], int) or like.dtype is None:
        return None
    d = shape[-1]
    if arr.ndim > len(shape) or any(s != 1 for s in arr.shape[:-1]) or (arr.ndim and arr.shape[-1] not in (1, d)):
        return None
    return np.broadcast_to(arr.reshape(-1) if arr.ndim else arr, (d,)).astype(like.dtype.np)


# -- check combinators: each rule's check is a conjunction of these ---------------------------


def all_of(*checks: Check) -> Check:
    return lambda m: all(c(m) for c in checks)


def floating(name: str = "x") -> Check:
    """The captured value is a float tensor (the target ops are defined for floats only)."""
    return lambda m: m.values[name].dtype in FLOATS


def scalars(*names: str, like: str = "x") -> Check:
    """Each captured constant (of those the rule has) is one number broadcasting against `like`
    without reshaping it."""
    return lambda m: all(_fits(m.consts[n], m.values[like]) for n in names if n in m.consts)


def nonzero(name: str) -> Check:
    return lambda m: _scalar(m.consts[name]) not in (None, 0.0)


def opset_at_least(version: int) -> Check:
    """The target op exists at the graph's opset (a rule below it matches but does nothing)."""
    return lambda m: m.root.opset >= version


# ---------------------------------------------------------------------------------------------
# Sub-patterns shared by several rules.


def relu6_of_x_plus_3(x: str = "x") -> Op:
    """`Clip(x + 3, 0, 6)`: Relu6 written as Clip, bounds as attributes or constant inputs."""
    return Op("Clip", Op("Add", x, Const("three", 3.0)), where=clips_to(0.0, 6.0), extra_inputs=True)


def mean_last(x: Pattern) -> Op:
    """`ReduceMean(x)` over the last axis, axes as attribute (< 18) or input (>= 18)."""
    return Op("ReduceMean", x, where=over_last_axis, extra_inputs=True)


def erf_gate(x: str = "x") -> list[Op]:
    """`1 + Erf(x / sqrt(2))`, the scale as a Div by sqrt(2) or a Mul by 1/sqrt(2)."""
    return [Op("Add", Op("Erf", Op(op, x, Const("k", k))), Const("one", 1.0))
            for op, k in (("Div", SQRT2), ("Mul", 1.0 / SQRT2))]


# ---------------------------------------------------------------------------------------------
# Replacements.


def _hardsigmoid(alpha: float, beta: float) -> Callable[[Builder, Match], Value]:
    return lambda b, m: b.op("HardSigmoid", m["x"], alpha=float(alpha), beta=float(beta))


def _hardswish(b: Builder, m: Match) -> Value:
    """HardSwish from opset 14; below it `x * HardSigmoid(x)`, the exporters' own spelling."""
    x = m["x"]
    if m.root.opset >= 14:
        return b.op("HardSwish", x)
    return b.op("Mul", x, b.op("HardSigmoid", x, alpha=1.0 / 6.0, beta=0.5))


def _hardsigmoid_affine(divides: bool) -> Callable[[Builder, Match], Value]:
    """Paddle's `Clip(x * a + b, 0, 1)` -> HardSigmoid(alpha=a, beta=b); `x / a + b` gives alpha=1/a."""

    def replace(b: Builder, m: Match) -> Value:
        a, beta = _scalar(m.consts["a"]), _scalar(m.consts["b"])
        assert a is not None and beta is not None  # the rule's `scalars` check
        return b.op("HardSigmoid", m["x"], alpha=1.0 / a if divides else a, beta=beta)

    return replace


def _layernorm(b: Builder, m: Match) -> Value:
    """A bare LayerNorm: unit scale (a following Mul/Add folds into it), epsilon from the pattern."""
    x = m["x"]
    ones = np.ones((int(x.shape[-1]),), x.dtype.np)
    return b.op("LayerNormalization", x, b.const(ones, "ln_scale"), axis=-1,
                epsilon=float(_scalar(m.consts["eps"])))  # type: ignore[arg-type]


def _ln_scaled(b: Builder, m: Match) -> Value:
    """`LayerNorm(x, 1) * gamma` -> `LayerNorm(x, gamma)` (exact: n * 1 * g == n * g)."""
    ln, x = m.named["ln"], m["x"]
    return b.op("LayerNormalization", x, b.const(_lane_vector(m.consts["gamma"], x), "ln_scale"),
                **ln.attributes)


def _ln_shifted(b: Builder, m: Match) -> Value:
    """`LayerNorm(x, s) + beta` -> `LayerNorm(x, s, beta)` (exact: the same n * s + b)."""
    ln, x = m.named["ln"], m["x"]
    return b.op("LayerNormalization", x, ln.inputs[1], b.const(_lane_vector(m.consts["beta"], x), "ln_bias"),
                **ln.attributes)


def _gemm(b: Builder, m: Match) -> Value:
    return b.op("Gemm", m["a"], m.values["w"], m.values["c"])


def _conv_with_pads(m: Match) -> list[int] | None:
    """The Conv's pads with the Pad's spatial amounts added; None when the Pad touches N or C."""
    conv, x = m.named["conv"], m["x"]
    rank = x.rank if x.rank is not None else conv.inputs[1].rank  # type: ignore[union-attr]
    if rank is None or rank < 3:
        return None
    pads = pad_amounts(m.named["pad"], rank)
    if pads is None or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
        return None
    spatial = pads[2:rank] + pads[rank + 2:]
    own = list(conv.attr("pads") or [0] * len(spatial))
    return [a + p for a, p in zip(own, spatial)] if len(own) == len(spatial) else None


def _conv(b: Builder, m: Match) -> Value:
    conv = m.named["conv"]
    return b.op("Conv", m["x"], *conv.inputs[1:], **{**conv.attributes, "pads": _conv_with_pads(m)})


# -- checks that read more than one capture ----------------------------------------------------


def _hardsigmoid_sixth(node: Node) -> bool:
    """`where` predicate: HardSigmoid(alpha=1/6, beta=0.5), the gate of hardswish."""
    return _near(node.attr("alpha", 0.2), 1.0 / 6.0) and _near(node.attr("beta", 0.5), 0.5)


def _ln_ok(m: Match) -> bool:
    """Float input with a static last dim (for the scale) and a non-negative scalar epsilon."""
    x, eps = m["x"], _scalar(m.consts["eps"])
    return (x.shape is not None and bool(x.shape) and isinstance(x.shape[-1], int)
            and eps is not None and eps >= 0 and _fits(m.consts["eps"], x))


def _lane(name: str) -> Check:
    return lambda m: _lane_vector(m.consts[name], m["x"]) is not None


def _gemm_ok(m: Match) -> bool:
    """A is 2-D, W a 2-D [K, N] constant, C broadcasts into [M, N] without growing it."""
    a, w, c = m["a"], m.consts["w"], m.consts["c"]
    if a.rank != 2 or w.ndim != 2 or c.ndim > 2:
        return False
    out = (a.shape[0], w.shape[1])
    return all(s == 1 or s == o for s, o in zip(c.shape[::-1], out[::-1]))


def _conv_ok(m: Match) -> bool:
    return m.named["conv"].attr("auto_pad", "NOTSET") == "NOTSET" and _conv_with_pads(m) is not None


# ---------------------------------------------------------------------------------------------
# The rules.

_HARD = all_of(floating(), scalars("three", "six", "a", "b"), opset_at_least(6))  # HardSigmoid is opset 6's
_GELU = all_of(floating(), scalars("k", "one", "half"), opset_at_least(20))
_LN = all_of(floating(), scalars("two"), opset_at_least(17), _ln_ok)

RULES: list[Rule] = [
    # HardSigmoid: Clip(x + 3, 0, 6) / 6 (or * 1/6); Paddle's Clip(x * a + b, 0, 1).
    Rule("hardsigmoid-div", Op("Div", relu6_of_x_plus_3(), Const("six", 6.0)), _hardsigmoid(1 / 6, 0.5), _HARD),
    Rule("hardsigmoid-mul", Op("Mul", relu6_of_x_plus_3(), Const("six", 1 / 6)), _hardsigmoid(1 / 6, 0.5), _HARD),
    *[Rule(f"hardsigmoid-affine-{op.lower()}",
           Op("Clip", Op("Add", Op(op, "x", Const("a")), Const("b")), where=clips_to(0.0, 1.0), extra_inputs=True),
           _hardsigmoid_affine(divides=op == "Div"), all_of(_HARD, nonzero("a")))
      for op in ("Mul", "Div")],
    # HardSwish: x * Clip(x + 3, 0, 6) / 6 (or * 1/6), and x * HardSigmoid(x, 1/6, 0.5).
    Rule("hardswish-div", Op("Div", Op("Mul", "x", relu6_of_x_plus_3()), Const("six", 6.0)), _hardswish, _HARD),
    Rule("hardswish-mul", Op("Mul", Op("Mul", "x", relu6_of_x_plus_3()), Const("six", 1 / 6)), _hardswish, _HARD),
    Rule("hardswish-gate", Op("Mul", "x", Op("HardSigmoid", "x", where=_hardsigmoid_sixth)),
         lambda b, m: b.op("HardSwish", m["x"]), all_of(floating(), opset_at_least(14))),
    # GELU: x * 0.5 * (1 + Erf(x / sqrt 2)) in its three groupings (and x * (1 + erf) / 2).
    *[Rule(f"gelu-{g}{i}", pattern, lambda b, m: b.op("Gelu", m["x"]), _GELU)
      for g, gate in enumerate(erf_gate()) for i, pattern in enumerate([
          Op("Mul", Op("Mul", "x", Const("half", 0.5)), gate),
          Op("Mul", Op("Mul", "x", gate), Const("half", 0.5)),
          Op("Mul", "x", Op("Mul", gate, Const("half", 0.5))),
          Op("Div", Op("Mul", "x", gate), Const("half", 2.0)),  # dividing by 2 is the "half" too
      ])],
    # LayerNorm: (x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps); then * gamma, + beta fold in.
    *[Rule("layernorm",
           Op("Div", Op("Sub", "x", mean_last("x"), name="d"), Op("Sqrt", Op("Add", mean_last(square), Const("eps")))),
           _layernorm, _LN)
      for square in (Op("Pow", "d", Const("two", 2.0)), Op("Mul", "d", "d"))],
    Rule("layernorm-scale",
         Op("Mul", Op("LayerNormalization", "x", Const("one", 1.0), where=ln_over_last_axis, name="ln"),
            Const("gamma")),
         _ln_scaled, all_of(floating(), _lane("gamma"))),
    Rule("layernorm-bias",
         Op("Add", Op("LayerNormalization", "x", Const("scale"), where=ln_over_last_axis, name="ln"), Const("beta")),
         _ln_shifted, all_of(floating(), _lane("beta"))),
    # Gemm: MatMul(A, W) + C with A 2-D and W, C constants.
    Rule("gemm", Op("Add", Op("MatMul", "a", Const("w")), Const("c")), _gemm,
         all_of(floating("a"), opset_at_least(7), _gemm_ok)),
    # Conv(Pad(x)): zero padding of the spatial dims moves into the Conv's pads.
    Rule("pad-conv", Op("Conv", Op("Pad", "x", name="pad", extra_inputs=True), "w", name="conv", extra_inputs=True),
         _conv, all_of(floating(), _conv_ok)),
]


@register_pass
class Canonicalize(Pass):
    """Rewrites exporter-spelled patterns into canonical single ops (see the module docstring):
    HardSwish, HardSigmoid, Gelu (opset >= 20), LayerNormalization (opset >= 17), MatMul+Add -> Gemm
    on 2-D inputs, and zero Pad -> Conv pads. Output names and semantics are kept; idempotent."""

    name = "canonicalize"

    def run(self, graph: Graph) -> bool:
        return apply_rules(graph, RULES) > 0
