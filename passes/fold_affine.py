"""Folding per-channel affine maps (BatchNormalization, constant Mul/Add) into Conv/Gemm weights.

Inference-time BatchNormalization is the per-channel affine map `y = x * k + (B - mean * k)` with
`k = scale / sqrt(var + epsilon)`. A linear op (Conv, ConvTranspose, Gemm) followed by such a map is
the same linear op with output channel c's weights multiplied by k[c] and its bias sent through the
map; a Mul by a per-channel constant (k = s, no shift) and an Add of one (k = 1) are the same case.

A Mul by a per-input-channel constant in front of a Conv scales the weights of each input channel
instead: zero padding commutes with the scaling (0 * s = 0). An Add in front does not (the padded
border would have to hold the shift), so it is never folded that way.

A BatchNormalization left with nothing to fold into becomes a constant Mul and Add, so no
BatchNormalization survives in an inference graph and fusion takes the pair as an epilogue.

Arithmetic is done in float64 and cast back to the weights' dtype once, so folding costs a single
rounding of each weight.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ir import Graph, Node, Tensor, Value

from .base import Pass, register_pass
from .pattern import Builder, Const, Match, Op, Rule, apply_rules, const_value

#: Linear ops whose output channels can absorb a per-channel affine map.
LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm")


# ---------------------------------------------------------------------------------------------
# Per-channel constants.


@dataclass(frozen=True)
class Affine:
    """The per-channel map `y = x * scale + shift` (float64 C-vectors; None stands for 1, resp. 0)."""

    scale: np.ndarray | None = None
    shift: np.ndarray | None = None


def per_channel(arr: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """`arr` as `channels` float64 values when broadcasting it onto an [N, C, ...] tensor of `rank`
    varies it along axis 1 only and leaves the tensor's shape alone; else None.

    For rank 4, shapes [C, 1, 1], [1, C, 1, 1], [1] and scalars qualify; [N, 1, 1, 1] (per sample)
    and [C, 1, 1, 1, 1] (grows the rank) do not: folding those would change the result.
    """
    if arr.dtype.kind != "f" or rank < 2 or arr.ndim > rank:
        return None
    shape = (1,) * (rank - arr.ndim) + tuple(int(d) for d in arr.shape)
    if shape[1] not in (1, channels) or any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    vec = np.broadcast_to(arr.astype(np.float64).reshape(-1), (channels,)).copy()
    return vec if bool(np.all(np.isfinite(vec))) else None


def channel_shape(channels: int, rank: int) -> tuple[int, ...]:
    """The shape [C, 1, ...] that lines a C-vector up with axis 1 of a rank-`rank` tensor."""
    return (channels,) + (1,) * (rank - 2)


def batchnorm_affine(m: Match) -> Affine | None:
    """BatchNormalization's map from its constant statistics (captured as scale, B, mean, var).

    None when the statistics are not C-vectors of floats or the map is not finite (var + eps <= 0):
    then x * k + shift would not reproduce the node's NaNs and infinities.
    """
    arrs = [m.consts[name] for name in ("scale", "B", "mean", "var")]
    if arrs[0].ndim != 1 or any(a.shape != arrs[0].shape or a.dtype.kind != "f" for a in arrs):
        return None
    scale, bias, mean, var = (a.astype(np.float64) for a in arrs)
    with np.errstate(all="ignore"):
        k = scale / np.sqrt(var + float(m.root.attr("epsilon", 1e-5)))
        shift = bias - mean * k
    if not (np.all(np.isfinite(k)) and np.all(np.isfinite(shift))):
        return None
    return Affine(k, shift)


def is_inference_batchnorm(node: Node) -> bool:
    """Y is the affine map of the given statistics: not training, statistics per channel
    (`spatial=1` before opset 9), and nobody reads the running/saved statistics outputs.

    Before opset 14 a node with more than one output trains (unless `is_test`, before opset 7),
    so its Y uses the batch's statistics and cannot be folded.
    """
    if any(v.uses or v.is_graph_output for v in node.outputs[1:]):
        return False
    opset = node.opset
    if opset >= 14:
        return not node.attr("training_mode", 0)
    if opset < 9 and not node.attr("spatial", 1):
        return False
    return len(node.outputs) == 1 or (opset < 7 and bool(node.attr("is_test", 0)))


# ---------------------------------------------------------------------------------------------
# Weight layouts.


def _group(node: Node) -> int:
    return int(node.attr("group", 1))


def out_channels(node: Node, w: np.ndarray) -> int:
    """Output channels of a linear op: Conv W is [Cout, Cin/g, ...], ConvTranspose W is
    [Cin, Cout/g, ...], Gemm B is [K, N] (or [N, K] with transB)."""
    if node.op_type == "Gemm":
        return int(w.shape[0] if node.attr("transB", 0) else w.shape[1])
    if node.op_type == "ConvTranspose":
        return int(w.shape[1]) * _group(node)
    return int(w.shape[0])


def out_rank(node: Node, w: np.ndarray) -> int:
    """Rank of a linear op's output: 2 for Gemm, the weight's rank for convolutions."""
    return 2 if node.op_type == "Gemm" else w.ndim


def _grouped(vec: np.ndarray, rows: int, group: int) -> np.ndarray:
    """The [rows, len(vec) / group] matrix whose row r holds the block of `vec` that belongs to r's
    group (rows split evenly into `group` consecutive blocks, as convolution groups are)."""
    return vec.reshape(group, vec.size // group)[np.arange(rows) // (rows // group)]


def _scale_leading(w: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """`w` times `factor`, whose axes line up with w's leading axes (the kernel axes broadcast)."""
    return w * factor.reshape(factor.shape + (1,) * (w.ndim - factor.ndim))


def scale_output_channels(node: Node, w: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The float64 weights of `node` with output channel c multiplied by k[c].

    ConvTranspose rows are input channels: group i's rows feed outputs i * Cout/g + j through
    column j, so each row scales by its group's block of k.
    """
    w = w.astype(np.float64)
    if node.op_type == "Gemm":
        return w * (k[:, None] if node.attr("transB", 0) else k[None, :])
    if node.op_type == "ConvTranspose":
        return _scale_leading(w, _grouped(k, w.shape[0], _group(node)))
    return _scale_leading(w, k)


def scale_input_channels(node: Node, w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """The float64 Conv weights [Cout, Cin/g, ...] for an input whose channel c is multiplied by s[c]:
    output o of group i reads input channel i * Cin/g + j through w[o, j]."""
    return _scale_leading(w.astype(np.float64), _grouped(s, w.shape[0], _group(node)))


def _layout_ok(node: Node, w: np.ndarray) -> bool:
    """A float weight of the rank and group split the op requires (a malformed one is left alone)."""
    if w.dtype.kind != "f":
        return False
    if node.op_type == "Gemm":
        return w.ndim == 2
    g = _group(node)
    return w.ndim >= 3 and g >= 1 and w.shape[0] % g == 0


# ---------------------------------------------------------------------------------------------
# Patterns and rewrites.


def _bias_ok(node: Node) -> bool:
    """At most one further input, the bias, and a constant one; Gemm from opset 7 (before that its
    C broadcasts by the legacy `broadcast` attribute)."""
    if len(node.inputs) > 3:
        return False
    if node.op_type == "Gemm" and node.opset < 7:
        return False
    bias = node.input(2)
    return bias is None or const_value(bias) is not None


def _linear(op_type: str) -> Op:
    """A linear op with a constant weight (captured as `w`), reading `x`; captured as `lin`."""
    return Op(op_type, "x", Const("w"), name="lin", extra_inputs=True, where=_bias_ok)


def _batchnorm(x: Op | str) -> Op:
    return Op("BatchNormalization", x, Const("scale"), Const("B"), Const("mean"), Const("var"),
              where=is_inference_batchnorm)


def _is_modern(m: Match) -> bool:
    """Mul/Add broadcast numpy-style (opset >= 7), so a per-channel constant means what it looks like."""
    return m.root.opset >= 7


def _output_affine(m: Match) -> Affine | None:
    """The affine map the matched root applies per output channel of `lin`, if it is one."""
    lin, w = m.named["lin"], m.consts["w"]
    if not _layout_ok(lin, w):
        return None
    channels = out_channels(lin, w)
    root = m.root.op_type
    if root == "BatchNormalization":
        aff = batchnorm_affine(m)
        return aff if aff is not None and aff.scale is not None and aff.scale.size == channels else None
    if not _is_modern(m):
        return None
    vec = per_channel(m.consts["c"], out_rank(lin, w), channels)
    if vec is None:
        return None
    return Affine(scale=vec) if root == "Mul" else Affine(shift=vec)


def _rebuild(b: Builder, node: Node, inputs: list[Value | None], **attributes: object) -> Value:
    """A copy of `node` (same op and attributes, bar overrides) reading `inputs`, before the root.

    The copy takes over the node's name (the node dies with this rewrite), so profiles and error
    messages still point at the layer the model's author named.
    """
    g: Graph = b.graph
    while inputs and inputs[-1] is None:
        inputs.pop()
    name = node.name
    if name:
        node.name = g.unique_name(f"{name}_replaced")
    new = g.make_node(node.op_type, inputs, {**node.attributes, **attributes},
                      name=name or g.unique_name(node.op_type), domain=node.domain, before=b.anchor)
    new.doc = node.doc
    return new.outputs[0]


def _constant(b: Builder, like: Value | None, base: str, arr: np.ndarray, dtype: np.dtype) -> Value:
    """A new initializer holding `arr` cast to `dtype`, named after the constant it replaces."""
    name = like.name if like is not None and like.name else base
    name = re.sub(r"_folded(_\d+)?$", "", name) + "_folded"  # folding again adds no second suffix
    return b.graph.add_initializer(name, Tensor(np.ascontiguousarray(arr.astype(dtype))))


def fold_output_affine(b: Builder, m: Match) -> Value | None:
    """`lin` rebuilt with weights W * k per output channel and bias (bias * k + shift)."""
    aff = _output_affine(m)
    if aff is None:
        return None
    lin, w, x = m.named["lin"], m.consts["w"], m.values["x"]
    bias_value = lin.input(2)
    bias = None if bias_value is None else const_value(bias_value)
    extra: dict[str, object] = {}
    c = None if bias is None else bias.astype(np.float64)
    if lin.op_type == "Gemm" and c is not None:
        c = c * float(lin.attr("beta", 1.0))  # beta moves into C
    if aff.scale is not None and c is not None:
        c = c * aff.scale  # broadcasts a Gemm's C of any allowed shape along its columns
    if aff.shift is not None:
        c = aff.shift if c is None else c + aff.shift
    if lin.op_type == "Gemm" and c is not None:
        extra["beta"] = 1.0
    base = lin.name or lin.op_type
    w_new = m.values["w"] if aff.scale is None else \
        _constant(b, m.values["w"], f"{base}_weight", scale_output_channels(lin, w, aff.scale), w.dtype)
    b_new = None if c is None else _constant(b, bias_value, f"{base}_bias", c, w.dtype)
    return _rebuild(b, lin, [x, w_new, b_new], **extra)


def _input_scale(m: Match) -> np.ndarray | None:
    """The per-input-channel factor of a Mul in front of the matched Conv, if it is one."""
    conv, w = m.root, m.consts["w"]
    if not _layout_ok(conv, w) or m.named["mul"].opset < 7:
        return None
    return per_channel(m.consts["c"], w.ndim, int(w.shape[1]) * _group(conv))


def fold_input_scale(b: Builder, m: Match) -> Value | None:
    """The Conv rebuilt reading x, with each input channel's weights scaled."""
    s = _input_scale(m)
    if s is None:
        return None
    conv, w = m.root, m.consts["w"]
    base = conv.name or conv.op_type
    w_new = _constant(b, m.values["w"], f"{base}_weight", scale_input_channels(conv, w, s), w.dtype)
    return _rebuild(b, conv, [m.values["x"], w_new, conv.input(2)])


def batchnorm_to_mul_add(b: Builder, m: Match) -> Value | None:
    """x * k + shift with constants shaped [C, 1, ...] (a 1-D [C] with the legacy `broadcast`,
    `axis=1` attributes before opset 7)."""
    aff = batchnorm_affine(m)
    if aff is None or aff.scale is None or aff.shift is None:
        return None
    x, bn = m.values["x"], m.root
    dtype = x.dtype.np if x.dtype is not None else m.consts["scale"].dtype
    if np.dtype(dtype).kind != "f":
        return None
    base = bn.name or "batchnorm"
    if bn.opset < 7:
        scale = b.graph.add_initializer(f"{base}_scale", Tensor(aff.scale.astype(dtype)))
        shift = b.graph.add_initializer(f"{base}_shift", Tensor(aff.shift.astype(dtype)))
        return b.op("Add", b.op("Mul", x, scale, broadcast=1, axis=1), shift, broadcast=1, axis=1)
    rank = x.rank if x.rank is not None else bn.outputs[0].rank
    if rank is None or rank < 2:
        return None  # the constants' shape depends on the rank
    shape = channel_shape(aff.scale.size, rank)
    scale = b.graph.add_initializer(f"{base}_scale", Tensor(aff.scale.astype(dtype).reshape(shape)))
    shift = b.graph.add_initializer(f"{base}_shift", Tensor(aff.shift.astype(dtype).reshape(shape)))
    return b.op("Add", b.op("Mul", x, scale), shift)


def _rules() -> list[Rule]:
    rules: list[Rule] = []
    for op in LINEAR_OPS:
        low = op.lower()
        rules += [
            Rule(f"batchnorm-into-{low}", _batchnorm(_linear(op)), fold_output_affine),
            Rule(f"mul-into-{low}", Op("Mul", _linear(op), Const("c")), fold_output_affine),
            Rule(f"add-into-{low}", Op("Add", _linear(op), Const("c")), fold_output_affine),
        ]
    rules.append(Rule("mul-into-conv-input",
                      Op("Conv", Op("Mul", "x", Const("c"), name="mul"), Const("w"), name="lin",
                         extra_inputs=True, where=_bias_ok),
                      fold_input_scale))
    rules.append(Rule("batchnorm-to-mul-add", _batchnorm("x"), batchnorm_to_mul_add))  # the fallback: last
    return rules


RULES: list[Rule] = _rules()


@register_pass
class FoldBatchNorm(Pass):
    """Folds BatchNormalization (and per-channel Mul/Add) into the neighbouring Conv/Gemm weights.

    * inference BatchNormalization after Conv (any groups, 1-D/2-D/3-D), ConvTranspose or Gemm
      (per output column, either transB), whose output nobody else reads -> weights W * k per output
      channel, bias b * k + (B - mean * k) (created when missing; a Gemm's beta moves into it);
    * a following Mul by / Add of a per-channel constant ([C, 1, 1], [1, C, 1, 1], scalar) -> the same
      fold with k = s, resp. shift = a;
    * a preceding Mul by a per-input-channel constant (x * s, s of shape [1, Cin, 1, 1] or a scalar)
      before a Conv -> each input channel's weights times s (zero padding commutes: 0 * s = 0);
    * any other inference BatchNormalization -> Mul and Add by constant per-channel scale and shift.

    Training-mode nodes, `spatial=0` statistics and non-finite maps (var + eps <= 0) are left alone.
    Graph outputs keep their names; the rewrite is exact up to one float64-then-cast rounding per
    weight, and idempotent.
    """

    name = "fold-batchnorm"

    def run(self, graph: Graph) -> bool:
        return apply_rules(graph, RULES) > 0
