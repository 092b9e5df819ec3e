"""Quantization: static int8 in ONNX QDQ form, dynamic int8, and one entry point for all modes.

Every form is plain standard ONNX that onnxruntime runs at any optimization level:

* **Static int8** (`quantize_static`): weights of Conv/ConvTranspose/Gemm/MatMul become int8
  initializers (symmetric, per output channel) read through DequantizeLinear, biases int32 with scale
  `s_x * s_w`; activations get one QuantizeLinear -> DequantizeLinear pair per tensor, shared by all
  its readers, with ranges from calibration (`passes.calibrate`). `STATIC_RULES` says, per op, how
  quantization passes through it, so that onnxruntime's QDQ fusions keep whole regions in int8.
* **Dynamic int8** (`quantize_dynamic`): MatMul/Gemm with constant weights become
  `DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(x_scale * w_scale)`, the exact pattern that
  onnxruntime fuses into one `DynamicQuantizeMatMul` kernel; convolutions keep float compute with
  int8 weights (onnxruntime's ConvInteger takes only uint8 weights and has no fused kernel, so integer
  convolution with run-time scales is slower than float there: CNNs want static quantization).
* **float16**: see `passes.fp16`; `quantize(graph, mode)` runs any of the three.

Rounding is half to even, zero is exactly representable, and no scale is ever zero. Only the main
graph is quantized: control-flow bodies keep float. Run quantization last, after BatchNormalization
folding: fold-constants would turn int8 weights read through DequantizeLinear back into float.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ir import DType, Graph, Node, Tensor, TensorType, Value, infer_node, infer_shapes
from ir.ops import EvalContext, constant_value, get_op

from .base import Pass, PipelineError, register_pass
from .calibrate import DEFAULT_PERCENTILE, Histogram, collect_statistics, compute_range
from .canonicalize import clip_bounds

#: Default range method. Measured (output RMS error vs fp32) on the digits CNN and the random-weight
#: models of tests/models.py, percentile (99.99) is the best or near-best on CNNs and transformers alike
#: and the cheapest; entropy and mse are never better by more than noise (see passes.calibrate).
#: Bounded outputs (Softmax, Sigmoid: BOUNDED_OUTPUTS) always use min/max.
DEFAULT_METHOD = "percentile"
#: Default activation type: uint8 with int8 weights is the form onnxruntime fuses end to end on CPUs
#: (QLinearConv, QLinearAdd, QLinearConcat, QGemm...). With int8 activations it converts the QDQ pairs
#: back to uint8 on x86 and leaves most convolutions in float (measured on the digits CNN).
DEFAULT_ACTIVATION_TYPE = "u8"
#: 7-bit weights by default: onnxruntime's x86 kernels without VNNI add two uint8 * int8 products in
#: int16 (vpmaddubsw), which saturates with full-range weights. Measured on the digits CNN at
#: ORT_ENABLE_ALL: 91.6% with 8-bit weights, 98.0% with 7-bit (fp32: 98.0%); both are 98.0% at
#: ORT_DISABLE_ALL, where nothing saturates. Targets with VNNI or ARM dot products can take the 8th bit.
DEFAULT_REDUCE_RANGE = True
ACTIVATION_TYPES = {"u8": DType.UINT8, "s8": DType.INT8}
_QRANGE = {DType.UINT8: (0, 255), DType.INT8: (-128, 127)}
_WEIGHT_QMAX = 127  # symmetric int8 weights use [-127, 127]: the product tables stay symmetric
_WEIGHT_QMAX_REDUCED = 63  # reduce_range: 7-bit weights, so two u8 * s8 products fit in int16
_MIN_SCALE = 2.0**-40  # scale floor: x * s_w products stay normal float32, so no scale is ever zero
_BIAS_HEADROOM = 2.0**30  # quantized biases stay within +-2**30 (int32 accumulators keep headroom)


# ---------------------------------------------------------------------------------------------
# Tables: how each op is quantized.


class Role(enum.Enum):
    """How an op takes part in static quantization."""

    LINEAR = "linear"  # int8 weights per output channel, int32 bias, quantized inputs (QLinearConv...)
    SAME = "same"  # moves or selects values: outputs share the input's scale (onnxruntime drops the Q/DQ)
    CONCAT = "concat"  # inputs and output share one scale when the inputs have no other reader
    REQUANT = "requant"  # arithmetic: the output gets its own scale (QLinearAdd, QLinearAveragePool...)
    ACTIVATION = "activation"  # Relu/Clip: folded into the output's Q when its zero point is the minimum


@dataclass(frozen=True)
class StaticRule:
    """One op's static quantization: its role, the inputs carrying activations, an extra condition."""

    role: Role
    data: tuple[int, ...] | None = (0,)  # activation inputs (None: all inputs)
    where: Callable[[Node], bool] | None = None


def _single_output(n: Node) -> bool:
    return all(not (v.uses or v.is_graph_output) for v in n.outputs[1:])


def _range_preserving_resize(n: Node) -> bool:
    """nearest and linear Resize only output values within the input's range; cubic overshoots."""
    return n.attr("mode", "nearest") in ("nearest", "linear")


def _constant_clip(n: Node) -> bool:
    return clip_bounds(n) is not None


STATIC_RULES: dict[str, StaticRule] = {
    "Conv": StaticRule(Role.LINEAR),
    "ConvTranspose": StaticRule(Role.LINEAR),
    "Gemm": StaticRule(Role.LINEAR),
    "MatMul": StaticRule(Role.LINEAR),
    "Relu": StaticRule(Role.ACTIVATION),
    "Clip": StaticRule(Role.ACTIVATION, where=_constant_clip),
    "MaxPool": StaticRule(Role.SAME, where=_single_output),
    "Reshape": StaticRule(Role.SAME),
    "Flatten": StaticRule(Role.SAME),
    "Transpose": StaticRule(Role.SAME),
    "Squeeze": StaticRule(Role.SAME),
    "Unsqueeze": StaticRule(Role.SAME),
    "Slice": StaticRule(Role.SAME),
    "Gather": StaticRule(Role.SAME),
    "Split": StaticRule(Role.SAME),
    "DepthToSpace": StaticRule(Role.SAME),
    "SpaceToDepth": StaticRule(Role.SAME),
    "Resize": StaticRule(Role.SAME, where=_range_preserving_resize),
    "Concat": StaticRule(Role.CONCAT, data=None),
    "Add": StaticRule(Role.REQUANT, data=(0, 1)),
    "Mul": StaticRule(Role.REQUANT, data=(0, 1)),
    "AveragePool": StaticRule(Role.REQUANT),
    "GlobalAveragePool": StaticRule(Role.REQUANT),
}


@dataclass(frozen=True)
class LinearRule:
    """Where a linear op keeps its weight and bias, and the weight's output-channel axis."""

    weight: int
    bias: int | None
    axis: Callable[[Node, int], int | None]  # (node, weight rank) -> axis, None: per-tensor only
    #: Quantize the output even when no quantized op reads it, so onnxruntime runs the int8 kernel
    #: (QLinearConv needs a Q after the conv; MatMul/Gemm have int8 kernels with a float output).
    always_quantize_output: bool = False


def _gemm_axis(n: Node, rank: int) -> int:
    return 0 if n.attr("transB", 0) else 1


LINEAR_RULES: dict[str, LinearRule] = {
    "Conv": LinearRule(1, 2, lambda n, r: 0, always_quantize_output=True),
    "ConvTranspose": LinearRule(1, 2, lambda n, r: 1 if n.attr("group", 1) == 1 else None,
                                always_quantize_output=True),
    "Gemm": LinearRule(1, 2, _gemm_axis),
    "MatMul": LinearRule(1, None, lambda n, r: r - 1 if r >= 2 else None),
}

#: Ops whose outputs have a known range: calibrated by min/max (never clipped) and kept inside it.
#: Clipping the peak of an attention or a gate probability costs more than a coarser step.
BOUNDED_OUTPUTS: dict[str, tuple[float, float]] = {
    "Softmax": (0.0, 1.0), "Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0), "Tanh": (-1.0, 1.0),
}


# ---------------------------------------------------------------------------------------------
# Report.


@dataclass
class QuantLayer:
    """What happened to one node (a row of the compression report)."""

    layer: str
    op: str
    mode: str  # "int8 static", "int8 dynamic", "int8 weights" (float compute) or "fp16"
    weights: str = ""  # "int8 per-channel (axis 0)", "int8 per-tensor", ...
    params_before: int | None = None
    weight_bytes_before: int | None = None
    weight_bytes_after: int | None = None
    input_scale: float | None = None


@dataclass
class QuantReport:
    """The outcome of a quantization step; iterating yields the per-layer records."""

    mode: str
    method: str | None = None
    layers: list[QuantLayer] = field(default_factory=list)
    #: Activation tensor -> (scale, zero point) of its QDQ pair (static only).
    activations: dict[str, tuple[float, int]] = field(default_factory=dict)
    #: Activation tensor -> calibrated [lo, hi] before grouping (static only).
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Relu/Clip nodes folded into the quantization of their input.
    folded: list[str] = field(default_factory=list)
    #: Nodes left in float, with the reason.
    skipped: dict[str, str] = field(default_factory=dict)

    def __iter__(self) -> Iterator[QuantLayer]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def changed(self) -> bool:
        return bool(self.layers or self.activations)

    def summary(self) -> dict[str, str]:
        before = sum(r.weight_bytes_before or 0 for r in self.layers)
        after = sum(r.weight_bytes_after or 0 for r in self.layers)
        out = {"quantization": self.mode + (f" ({self.method})" if self.method else ""),
               "quantized layers": str(len(self.layers))}
        if before:
            out["weight bytes"] = f"{before} -> {after} ({after / before:.0%})"
        if self.activations:
            out["quantized activations"] = str(len(self.activations))
        return out


# ---------------------------------------------------------------------------------------------
# Scales and zero points.


@dataclass(frozen=True)
class QParams:
    """Per-tensor activation quantization: real = (q - zero_point) * scale."""

    scale: np.float32
    zero_point: int
    dtype: DType


def activation_params(lo: float, hi: float, dtype: DType = DType.UINT8, symmetric: bool = False) -> QParams:
    """Scale and zero point covering [lo, hi] (widened to hold 0, which maps to an integer exactly)."""
    qmin, qmax = _QRANGE[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        zp = 0 if dtype == DType.INT8 else 128
        scale = max(-lo, hi) / ((qmax - qmin) // 2)
    else:
        scale = (hi - lo) / (qmax - qmin)
    s = np.float32(scale) if math.isfinite(scale) and scale > 0 else np.float32(1.0)
    s = max(s, np.float32(_MIN_SCALE))
    if not symmetric:
        zp = int(np.clip(np.rint(qmin - lo / float(s)), qmin, qmax))
    return QParams(np.float32(s), zp, dtype)


def weight_scales(w: np.ndarray, axis: int | None, floor: np.ndarray | float = 0.0,
                  qmax: int = _WEIGHT_QMAX) -> np.ndarray:
    """Symmetric int8 scales, per channel along `axis` (None: one scale), never zero.

    An all-zero channel gets the floor (any scale represents it exactly); `floor` also lets a bias
    stay within int32 (the bias scale is s_x * s_w).
    """
    a = np.abs(w.astype(np.float64))
    absmax = a.max() if axis is None else a.max(axis=tuple(i for i in range(w.ndim) if i != axis))
    scale = np.maximum(absmax / qmax, np.maximum(floor, _MIN_SCALE))
    return np.asarray(scale, np.float64).astype(np.float32)


def quantize_weight(w: np.ndarray, scale: np.ndarray, axis: int | None, qmax: int = _WEIGHT_QMAX) -> np.ndarray:
    """int8 weights: round half to even of w / scale, saturated to [-qmax, qmax]."""
    s = scale.astype(np.float64)
    if axis is not None:
        shape = [1] * w.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return np.clip(np.rint(w.astype(np.float64) / s), -qmax, qmax).astype(np.int8)


def quantize_bias(b: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """int32 bias at scale s_x * s_w (round half to even, saturated)."""
    q = np.rint(b.astype(np.float64) / scale.astype(np.float64))
    return np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Graph helpers.


def _is_float_activation(v: Value | None) -> bool:
    return v is not None and v.dtype == DType.FLOAT and constant_value(v) is None


def _float_const(v: Value | None) -> np.ndarray | None:
    c = constant_value(v)
    return c if c is not None and c.dtype == np.float32 else None


def _std(n: Node) -> bool:
    return n.domain in ("", "ai.onnx")


def _data_inputs(n: Node, rule: StaticRule) -> list[Value | None]:
    idx = range(len(n.inputs)) if rule.data is None else rule.data
    return [n.input(i) for i in idx if i < len(n.inputs)]


class GraphEditor:
    """Adds initializers and Q/DQ/Cast nodes with readable unique names, and records new nodes."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.new_nodes: list[Node] = []
        self._shared: dict[tuple[str, tuple[int, ...], bytes], Value] = {}
        self._read = {id(v) for v in graph.initializers.values() if v.uses}  # what becomes unread was replaced
        self._made: set[int] = set()

    def const(self, name: str, array: np.ndarray, shared: bool = False) -> Value:
        """A new initializer; `shared` reuses an equal one made earlier (zero points are mostly zeros)."""
        a = np.asarray(array, order="C")
        key = (a.dtype.str, a.shape, a.tobytes())
        if shared and key in self._shared:
            return self._shared[key]
        v = self.graph.add_initializer(self.graph.unique_name(name), Tensor(a))
        self._made.add(id(v))
        if shared:
            self._shared[key] = v
        return v

    def node(self, op: str, inputs: Sequence[Value | None], name: str, out_names: Sequence[str],
             attrs: dict[str, Any] | None = None, *, after: Value | None = None, before: Node | None = None) -> Node:
        """A node placed right after `after`'s producer (or first, for inputs), or before `before`."""
        g = self.graph
        outs = [Value(g.unique_name(o)) for o in out_names]
        node = Node(op, inputs, outs, attrs, name=g.unique_name(name))
        if before is not None:
            g.insert_before(before, node)
        elif after is not None and after.producer is not None and after.producer.graph is g:
            g.insert_after(after.producer, node)
        else:
            g.insert_before(g.nodes[0], node) if len(g) else g.append(node)
        self.new_nodes.append(node)
        return node

    def finish(self) -> None:
        """Infer the new nodes' types; drop the initializers the edits replaced (float weights)."""
        for n in self.new_nodes:
            if n.graph is self.graph:
                infer_node(n)
        inputs = {id(v) for v in self.graph.inputs}
        for v in list(self.graph.initializers.values()):
            if (id(v) in self._read or id(v) in self._made) and not v.uses and not v.is_graph_output \
                    and id(v) not in inputs:
                self.graph.remove_initializer(v)


def _rewire(v: Value, new: Value, keep: Node) -> None:
    """Readers of `v` (except `keep`, and graph outputs: the interface keeps float) read `new`."""
    for node, i in v.uses:
        if node is not keep:
            node.set_input(i, new)


def _replace_output(graph: Graph, old: Value, new: Value) -> None:
    """Readers (and graph outputs) of `old` read `new`; `new` takes over the public name."""
    name = old.name
    graph.replace_all_uses(old, new)
    old.name = graph.unique_name(f"{name}_replaced")
    new.name = name
    if new.type is None:
        new.type = old.type


def _require_opset(graph: Graph, version: int, what: str) -> None:
    if graph.opset("") < version:
        raise PipelineError(f"{what} needs opset >= {version}; the model imports opset {graph.opset('')}")


# ---------------------------------------------------------------------------------------------
# Static int8.


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, k: int) -> int:
        self.parent.setdefault(k, k)
        while self.parent[k] != k:
            self.parent[k] = self.parent[self.parent[k]]
            k = self.parent[k]
        return k

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class _Plan:
    """Which nodes are quantized, which tensors get a QDQ pair, and which tensors share parameters."""

    nodes: dict[int, Node]
    linear: dict[int, Node]
    tensors: dict[int, Value]
    order: dict[int, int]  # tensor id -> topological position (group ids are deterministic)
    groups: _UnionFind
    skipped: dict[str, str]


def _linear_eligible(n: Node, rule: LinearRule) -> str | None:
    """None when `n` can be quantized, else why not."""
    x, w = n.input(0), n.input(rule.weight)
    if any(_dequantized(v) for v in n.inputs):
        return "already quantized"
    if not _is_float_activation(x):
        return "input is not a float32 activation"
    if n.op_type == "Gemm" and n.attr("transA", 0):
        return "Gemm with transA"
    if _float_const(w) is None and not (n.op_type == "MatMul" and _is_float_activation(w)):
        return "weight is not a float32 constant"
    if any(v.dtype != DType.FLOAT for v in n.outputs):
        return "output is not float32"
    return None


def _plan_static(graph: Graph, exclude: set[str]) -> _Plan:
    """Quantized region: linear ops, plus pass-through ops whose activation inputs are all quantized
    and whose output some quantized op reads (so no Q/DQ pair is ever added for nothing)."""
    skipped: dict[str, str] = {}
    linear: dict[int, Node] = {}
    nodes: dict[int, Node] = {}
    quantized: set[int] = set()
    topo = graph.nodes
    for n in topo:
        rule = LINEAR_RULES.get(n.op_type)
        if rule is None or not _std(n):
            continue
        why = "excluded" if n.name in exclude else _linear_eligible(n, rule)
        if why:
            skipped[n.name] = why
            continue
        linear[id(n)] = nodes[id(n)] = n
        quantized.update(id(v) for v in _linear_activations(n, rule))
    for n in topo:  # forward: pass-through ops join when all their activation inputs are quantized
        if id(n) in linear:
            quantized.update(id(v) for v in n.outputs)
            continue
        srule = STATIC_RULES.get(n.op_type)
        if srule is None or srule.role == Role.LINEAR or not _std(n) or n.name in exclude:
            continue
        if srule.where is not None and not srule.where(n):
            continue
        data = _data_inputs(n, srule)
        if data and all(_is_float_activation(v) and id(v) in quantized and not _dequantized(v) for v in data) \
                and all(v.dtype == DType.FLOAT for v in n.outputs):
            nodes[id(n)] = n
            quantized.update(id(v) for v in n.outputs)
    for n in reversed(topo):  # backward: drop pass-through ops no quantized op reads from
        if id(n) in nodes and id(n) not in linear and not _read_by(n.outputs, nodes):
            del nodes[id(n)]
    tensors: dict[int, Value] = {}
    for n in topo:
        if id(n) not in nodes:
            continue
        if id(n) in linear:
            lrule = LINEAR_RULES[n.op_type]
            ins = _linear_activations(n, lrule)
            outs = [v for v in n.outputs if _read_by([v], nodes)
                    or (lrule.always_quantize_output and not v.is_graph_output and v.uses)]
        else:
            ins = [v for v in _data_inputs(n, STATIC_RULES[n.op_type]) if v is not None]
            outs = [v for v in n.outputs if _read_by([v], nodes)]
        for v in ins + outs:
            tensors[id(v)] = v
    order = {id(v): i for i, v in enumerate(list(graph.inputs) + [o for n in topo for o in n.outputs])}
    groups = _UnionFind()
    for n in nodes.values():
        role = STATIC_RULES[n.op_type].role
        ins = [v for v in _data_inputs(n, STATIC_RULES[n.op_type]) if v is not None]
        outs = [v for v in n.outputs if id(v) in tensors]
        if role == Role.SAME:
            for v in outs:
                groups.union(order[id(ins[0])], order[id(v)])
        elif role == Role.CONCAT and outs and all(
                len(v.uses) == 1 and not v.is_graph_output and not v.is_graph_input for v in ins):
            for v in ins:
                groups.union(order[id(v)], order[id(outs[0])])
    for n in topo:
        if id(n) not in nodes and n.op_type in STATIC_RULES and n.name not in skipped and _std(n) \
                and n.op_type not in LINEAR_RULES and any(id(v) in tensors for v in n.inputs if v is not None):
            skipped[n.name] = "inputs not all quantized, or output read by no quantized op"
    return _Plan(nodes, linear, tensors, order, groups, skipped)


def _dequantized(v: Value | None) -> bool:
    """A DequantizeLinear output: the tensor has its QDQ pair already (never give it a second one)."""
    return v is not None and v.producer is not None and v.producer.op_type == "DequantizeLinear"


def _linear_activations(n: Node, rule: LinearRule) -> list[Value]:
    w = n.input(rule.weight)
    return [n.input(0)] + ([w] if _is_float_activation(w) else [])  # type: ignore[list-item]


def _read_by(values: Iterable[Value], nodes: Mapping[int, Node]) -> bool:
    return any(id(c) in nodes for v in values for c in v.consumers)


def _tensor_range(v: Value, h: Histogram, method: str, dtype: DType, symmetric: bool,
                  percentile: float) -> tuple[float, float]:
    bounded = BOUNDED_OUTPUTS.get(v.producer.op_type) if v.producer is not None else None
    if bounded is not None:
        lo, hi = compute_range(h, "minmax")
        return max(lo, min(bounded[0], 0.0)), min(hi, bounded[1])
    return compute_range(h, method, percentile=percentile, levels=256, symmetric=symmetric)


def quantize_static(
    graph: Graph,
    calibration: Iterable[Mapping[str, np.ndarray]],
    method: str = DEFAULT_METHOD,
    activation_type: str = DEFAULT_ACTIVATION_TYPE,
    symmetric_activations: bool = False,
    per_channel: bool = True,
    exclude: Sequence[str] = (),
    progress: bool = False,
    percentile: float = DEFAULT_PERCENTILE,
    reduce_range: bool = DEFAULT_REDUCE_RANGE,
) -> QuantReport:
    """Quantize `graph` in place to int8 QDQ form with activation ranges from `calibration` (feed dicts).

    Run it on an optimized graph (BatchNormalization folded). `method` is a calibration range method
    (passes.calibrate.RANGE_METHODS); activations are `activation_type` ("u8" or "s8"), asymmetric
    unless `symmetric_activations`; `reduce_range` keeps weights in 7 bits ([-63, 63]) so x86 CPUs
    without VNNI cannot saturate (see DEFAULT_REDUCE_RANGE). `exclude` names nodes kept in float.
    """
    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation_type must be one of {sorted(ACTIVATION_TYPES)}, got {activation_type!r}")
    _require_opset(graph, 10, "static quantization (QuantizeLinear)")
    qtype = ACTIVATION_TYPES[activation_type]
    infer_shapes(graph)
    plan = _plan_static(graph, set(exclude))
    report = QuantReport("int8 static", method, skipped=plan.skipped)
    if not plan.linear:
        return report
    stats = collect_statistics(graph, calibration, list(plan.tensors.values()), progress=progress)
    # Ranges per tensor, then per group (union of its members' ranges), then scale and zero point.
    group_range: dict[int, tuple[float, float]] = {}
    for v in plan.tensors.values():
        r = _tensor_range(v, stats[v.name], method, qtype, symmetric_activations, percentile)
        report.ranges[v.name] = r
        g = plan.groups.find(plan.order[id(v)])
        lo, hi = group_range.get(g, (0.0, 0.0))
        group_range[g] = (min(lo, r[0]), max(hi, r[1]))
    group_params = {g: activation_params(lo, hi, qtype, symmetric_activations) for g, (lo, hi) in group_range.items()}
    params: dict[int, QParams] = {k: group_params[plan.groups.find(plan.order[k])] for k in plan.tensors}

    ed = GraphEditor(graph)
    report.folded = _fold_activations(graph, plan, params)
    per_channel = per_channel and graph.opset("") >= 13  # DequantizeLinear's axis arrives in opset 13
    weight_cache: dict[tuple[int, int | None, bytes, float], Value] = {}
    qmax = _WEIGHT_QMAX_REDUCED if reduce_range else _WEIGHT_QMAX
    for n in graph.nodes:
        if id(n) in plan.linear:
            x_scale = params[id(n.input(0))].scale  # type: ignore[arg-type]
            report.layers.append(_quantize_linear_node(ed, n, x_scale, per_channel, qmax, weight_cache))
    qparam_consts: dict[int, tuple[Value, Value]] = {}
    for v in sorted(plan.tensors.values(), key=lambda t: plan.order[id(t)]):
        p = params[id(v)]
        if id(p) not in qparam_consts:
            qparam_consts[id(p)] = (ed.const(f"{v.name}_scale", np.array(p.scale, np.float32)),
                                    ed.const(f"{v.name}_zero_point", np.array(p.zero_point, p.dtype.np), shared=True))
        scale, zp = qparam_consts[id(p)]
        q = ed.node("QuantizeLinear", [v, scale, zp], f"{v.name}_QuantizeLinear", [f"{v.name}_quantized"], after=v)
        q.outputs[0].type = TensorType(p.dtype, v.shape)
        dq = ed.node("DequantizeLinear", [q.outputs[0], scale, zp], f"{v.name}_DequantizeLinear",
                     [f"{v.name}_dequantized"], after=q.outputs[0])
        dq.outputs[0].type = v.type
        _rewire(v, dq.outputs[0], keep=q)
        report.activations[v.name] = (float(p.scale), p.zero_point)
    ed.finish()
    return report


def _quantize_scalar(value: float, p: QParams) -> int:
    """QuantizeLinear of one value, by the op's own definition (rounding and saturation live there)."""
    op = get_op("QuantizeLinear")
    attrs = op.resolve_attrs({}, 21)
    q = op.reference(EvalContext(None, 21), np.array(value, np.float32), np.float32(p.scale),
                     np.array(p.zero_point, p.dtype.np), **attrs)
    return int(q)


def _fold_activations(graph: Graph, plan: _Plan, params: dict[int, QParams]) -> list[str]:
    """Remove Relu/Clip whose input is quantized with the output's parameters anyway: when the
    output's zero point is the type's minimum (and Clip's max saturates), Q(act(x)) == Q(x) exactly."""
    folded: list[str] = []
    for n in graph.nodes:
        if id(n) not in plan.nodes or STATIC_RULES[n.op_type].role != Role.ACTIVATION:
            continue
        x, y = n.input(0), n.outputs[0]
        if x is None or id(x) not in plan.tensors or id(y) not in plan.tensors or y.is_graph_output \
                or x.is_graph_output or len(x.uses) != 1:
            continue
        p = params[id(y)]
        qmin, qmax = _QRANGE[p.dtype]
        lo, hi = clip_bounds(n) if n.op_type == "Clip" else (0.0, math.inf)  # type: ignore[misc]
        if not (lo <= 0.0 and _quantize_scalar(lo, p) == qmin and (hi == math.inf or _quantize_scalar(hi, p) == qmax)):
            continue
        params[id(x)] = p
        graph.replace_all_uses(y, x)
        graph.remove(n)
        del plan.tensors[id(y)]
        del plan.nodes[id(n)]
        folded.append(n.name)
    return folded


def _quantize_linear_node(ed: GraphEditor, n: Node, x_scale: np.float32, per_channel: bool, qmax: int,
                          cache: dict[tuple[int, int | None, bytes, float], Value]) -> QuantLayer:
    """int8 weights (+ DequantizeLinear) and int32 bias for one linear node with quantized input."""
    rule = LINEAR_RULES[n.op_type]
    w_v = n.input(rule.weight)
    w = _float_const(w_v)
    layer = QuantLayer(n.name, n.op_type, "int8 static", input_scale=float(x_scale))
    if w is None:  # MatMul of two activations: both inputs are quantized tensors
        layer.weights = "activation"
        return layer
    w = w.astype(np.float32)
    alpha = float(n.attr("alpha", 1.0)) if n.op_type == "Gemm" else 1.0
    if n.op_type == "Gemm":
        w = _fold_gemm_scalars(n, w, rule)
    axis = rule.axis(n, w.ndim) if per_channel and w.ndim >= 1 else None
    b_v = n.input(rule.bias) if rule.bias is not None else None
    b = _float_const(b_v)
    channels = w.shape[axis] if axis is not None else None
    out_channels = _out_channels(n, w)
    if b is not None and tuple(b.shape) not in ((out_channels,), (1, out_channels)):
        b = None  # a Gemm C that broadcasts over rows or is a full matrix stays float
    floor: np.ndarray | float = 0.0
    if b is not None:
        bias_floor = np.abs(b.reshape(-1).astype(np.float64)) / (float(x_scale) * _BIAS_HEADROOM)
        floor = _fit_floor(bias_floor, n, axis, channels)
    scale = weight_scales(w, axis, floor, qmax)
    key = (id(w_v), axis, scale.tobytes(), alpha)
    shared = key in cache
    if not shared:
        cache[key] = _dequantized_weight(ed, w_v.name, w, scale, axis, qmax, n)  # type: ignore[union-attr]
    n.set_input(rule.weight, cache[key])
    layer.weights = f"int8 per-channel (axis {axis})" if axis is not None else "int8 per-tensor"
    layer.weights += " (shared)" if shared else ""
    layer.params_before = int(w.size)
    layer.weight_bytes_before = 0 if shared else int(w.nbytes)  # a weight shared by layers counts once
    layer.weight_bytes_after = 0 if shared else int(w.size) + 4 * int(scale.size)
    if b is not None and rule.bias is not None:
        b_scale = _bias_scale(x_scale, scale, n, axis)
        bq = quantize_bias(b.reshape(-1), b_scale)
        base = b_v.name if b_v is not None and b_v.name else f"{n.name}_bias"
        bqv = ed.const(f"{base}_quantized", bq)
        bsv = ed.const(f"{base}_scale", b_scale if b_scale.size > 1 else b_scale.reshape(()))
        bzv = ed.const(f"{base}_zero_point", np.zeros(b_scale.shape if b_scale.size > 1 else (), np.int32), shared=True)
        attrs = {"axis": 0} if b_scale.size > 1 else None
        bdq = ed.node("DequantizeLinear", [bqv, bsv, bzv], f"{base}_DequantizeLinear", [f"{base}_dequantized"],
                      attrs, before=n).outputs[0]
        bdq.type = TensorType(DType.FLOAT, (int(bq.size),))
        n.set_input(rule.bias, bdq)
        layer.weight_bytes_before += int(b.nbytes)
        layer.weight_bytes_after += 4 * int(bq.size) + 4 * int(b_scale.size)
    return layer


def _dequantized_weight(ed: GraphEditor, base: str, w: np.ndarray, scale: np.ndarray, axis: int | None,
                        qmax: int, before: Node) -> Value:
    """int8 initializer (+ scale, zero point) read through a DequantizeLinear placed before `before`."""
    q = quantize_weight(w, scale, axis, qmax)
    qv = ed.const(f"{base}_quantized", q)
    sv = ed.const(f"{base}_scale", scale if axis is not None else scale.reshape(()))
    zv = ed.const(f"{base}_zero_point", np.zeros(scale.shape if axis is not None else (), np.int8), shared=True)
    dq = ed.node("DequantizeLinear", [qv, sv, zv], f"{base}_DequantizeLinear", [f"{base}_dequantized"],
                 {"axis": axis} if axis is not None else None, before=before).outputs[0]
    dq.type = TensorType(DType.FLOAT, tuple(w.shape))
    return dq


def _fold_gemm_scalars(n: Node, w: np.ndarray, rule: LinearRule) -> np.ndarray:
    """Gemm's alpha goes into the weight and beta into a constant C, so the int32 bias matches."""
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    if alpha != 1.0:
        w = (w.astype(np.float64) * alpha).astype(np.float32)
        n.attributes["alpha"] = 1.0
    c_v = n.input(rule.bias) if rule.bias is not None else None
    c = _float_const(c_v)
    if beta != 1.0 and c is not None and rule.bias is not None:
        g = n.graph
        assert g is not None
        n.set_input(rule.bias, g.add_initializer(g.unique_name(f"{c_v.name}_scaled"),  # type: ignore[union-attr]
                                                 (c.astype(np.float64) * beta).astype(np.float32)))
        n.attributes["beta"] = 1.0
    return w


def _out_channels(n: Node, w: np.ndarray) -> int:
    if n.op_type == "Conv":
        return int(w.shape[0])
    if n.op_type == "ConvTranspose":
        return int(w.shape[1]) * int(n.attr("group", 1))
    if n.op_type == "Gemm":
        return int(w.shape[0] if n.attr("transB", 0) else w.shape[1])
    return int(w.shape[-1])


def _fit_floor(bias_floor: np.ndarray, n: Node, axis: int | None, channels: int | None) -> np.ndarray | float:
    """The bias-driven scale floor, laid out like the weight scales (per channel or one value)."""
    if axis is None:
        return float(bias_floor.max()) if bias_floor.size else 0.0
    if n.op_type == "ConvTranspose" and channels != bias_floor.size:
        return bias_floor.reshape(-1, channels).max(axis=0)  # type: ignore[arg-type]
    return bias_floor


def _bias_scale(x_scale: np.float32, w_scale: np.ndarray, n: Node, axis: int | None) -> np.ndarray:
    """s_x * s_w in float32, per output channel (what QLinearConv / QGemm assume for an int32 bias)."""
    s = (np.float32(x_scale) * w_scale.astype(np.float32)).astype(np.float32)
    if axis is not None and n.op_type == "ConvTranspose":
        s = np.tile(s, int(n.attr("group", 1)))
    return np.maximum(s, np.float32(np.finfo(np.float32).tiny)).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Dynamic int8.


def quantize_dynamic(graph: Graph, per_channel: bool = True, exclude: Sequence[str] = (),
                     reduce_range: bool = DEFAULT_REDUCE_RANGE) -> QuantReport:
    """Quantize `graph` in place for dynamic int8: activations quantized at run time.

    MatMul with a constant 2-D weight and Gemm (no transA) become DynamicQuantizeLinear ->
    MatMulInteger -> Cast -> Mul(x_scale * w_scale) [-> Add(bias)], which onnxruntime fuses into
    `DynamicQuantizeMatMul`; Conv and ConvTranspose get int8 weights + DequantizeLinear (float compute).
    `reduce_range` keeps MatMulInteger weights in 7 bits (see DEFAULT_REDUCE_RANGE: a uint8 * int8
    MatMulInteger with full-range weights saturates in onnxruntime on x86 without VNNI).
    """
    _require_opset(graph, 10, "dynamic quantization (DequantizeLinear)")
    infer_shapes(graph)
    report = QuantReport("int8 dynamic")
    ed = GraphEditor(graph)
    integer_ok = graph.opset("") >= 11  # DynamicQuantizeLinear
    per_axis = per_channel and graph.opset("") >= 13
    dql: dict[int, Node] = {}
    for n in graph.nodes:
        rule = LINEAR_RULES.get(n.op_type)
        if rule is None or not _std(n):
            continue
        if n.name in exclude:
            report.skipped[n.name] = "excluded"
            continue
        w = _float_const(n.input(rule.weight))
        if w is None or not _is_float_activation(n.input(0)) or n.outputs[0].dtype != DType.FLOAT:
            report.skipped[n.name] = "weight is not a float32 constant"
            continue
        if integer_ok and _dynamic_integer_ok(n, w):
            qmax = _WEIGHT_QMAX_REDUCED if reduce_range else _WEIGHT_QMAX
            report.layers.append(_dynamic_matmul(ed, n, w, per_channel, qmax, dql))
        else:
            report.layers.append(_weight_only(ed, n, w, rule, per_axis))
    ed.finish()
    return report


def _dynamic_integer_ok(n: Node, w: np.ndarray) -> bool:
    if w.ndim != 2:
        return False
    if n.op_type == "MatMul":
        return True
    if n.op_type != "Gemm" or n.attr("transA", 0):
        return False
    c = n.input(2)
    return c is None or _float_const(c) is not None or float(n.attr("beta", 1.0)) == 1.0


def _dynamic_matmul(ed: GraphEditor, n: Node, w: np.ndarray, per_channel: bool, qmax: int,
                    dql: dict[int, Node]) -> QuantLayer:
    """y = float(MatMulInteger(q(x), W_q, zp_x, 0)) * (s_x * s_w) [+ beta * C]."""
    x, y = n.input(0), n.outputs[0]
    assert x is not None
    gemm = n.op_type == "Gemm"
    wk = w.astype(np.float64)
    if gemm:
        wk = (wk.T if n.attr("transB", 0) else wk) * float(n.attr("alpha", 1.0))
    wk = wk.astype(np.float32)  # [K, N]
    axis = 1 if per_channel else None
    scale = weight_scales(wk, axis, qmax=qmax)
    q = quantize_weight(wk, scale, axis, qmax)
    base = n.input(1).name  # type: ignore[union-attr]
    if id(x) not in dql:
        dql[id(x)] = ed.node("DynamicQuantizeLinear", [x], f"{x.name}_DynamicQuantizeLinear",
                             [f"{x.name}_quantized", f"{x.name}_scale", f"{x.name}_zero_point"], after=x)
    xq, xs, xz = dql[id(x)].outputs
    qv = ed.const(f"{base}_quantized", q)
    sv = ed.const(f"{base}_scale", scale if axis is not None else scale.reshape(()))
    zv = ed.const(f"{base}_zero_point", np.zeros(scale.shape if axis is not None else (), np.int8), shared=True)
    mm = ed.node("MatMulInteger", [xq, qv, xz, zv], f"{n.name}_MatMulInteger", [f"{y.name}_int32"], before=n)
    cast = ed.node("Cast", [mm.outputs[0]], f"{n.name}_Cast", [f"{y.name}_int32_float"], {"to": int(DType.FLOAT)},
                   before=n)
    s = ed.node("Mul", [xs, sv], f"{n.name}_scale_Mul", [f"{y.name}_scale"], before=n)
    out = ed.node("Mul", [cast.outputs[0], s.outputs[0]], f"{n.name}_Mul", [f"{y.name}_rescaled"], before=n).outputs[0]
    c = n.input(2) if gemm else None
    if c is not None:
        cc = _float_const(c)
        beta = float(n.attr("beta", 1.0))
        if cc is not None and beta != 1.0:
            c = ed.const(f"{c.name}_scaled", (cc.astype(np.float64) * beta).astype(np.float32))
        out = ed.node("Add", [out, c], f"{n.name}_bias_Add", [f"{y.name}_biased"], before=n).outputs[0]
    out.type = y.type
    _replace_output(ed.graph, y, out)
    ed.graph.remove(n)
    return QuantLayer(n.name, n.op_type, "int8 dynamic",
                      f"int8 per-channel (axis {axis})" if axis is not None else "int8 per-tensor",
                      int(w.size), int(w.nbytes), int(q.size) + 4 * int(scale.size))


def _weight_only(ed: GraphEditor, n: Node, w: np.ndarray, rule: LinearRule, per_axis: bool) -> QuantLayer:
    """int8 weights read through DequantizeLinear; compute stays float."""
    axis = rule.axis(n, w.ndim) if per_axis else None
    scale = weight_scales(w, axis)
    dq = _dequantized_weight(ed, n.input(rule.weight).name, w, scale, axis, _WEIGHT_QMAX, n)  # type: ignore[union-attr]
    n.set_input(rule.weight, dq)
    return QuantLayer(n.name, n.op_type, "int8 weights",
                      f"int8 per-channel (axis {axis})" if axis is not None else "int8 per-tensor",
                      int(w.size), int(w.nbytes), int(w.size) + 4 * int(scale.size))


# ---------------------------------------------------------------------------------------------
# One entry point and registered passes.

#: Quantization modes by name, as compress(quantize=...) and the CLI name them.
QUANT_MODES: dict[str, str] = {
    "int8": "static int8 QDQ (needs calibration data)",
    "int8-dynamic": "int8 weights, activations quantized at run time (MatMul/Gemm)",
    "fp16": "float16 weights and compute, float32 interface",
}


def quantize(graph: Graph, mode: str, *, calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
             exclude: Sequence[str] = (), progress: bool = False, **options: Any) -> QuantReport:
    """Quantize `graph` in place by `mode` (see QUANT_MODES); `options` go to the mode's function.

    Run it last: after BatchNormalization folding (the `optimize` pipeline) and before fusion.
    """
    if mode == "int8":
        if calibration is None:
            raise ValueError("int8 quantization needs calibration data (static activation ranges)")
        return quantize_static(graph, calibration, exclude=exclude, progress=progress, **options)
    if mode == "int8-dynamic":
        return quantize_dynamic(graph, exclude=exclude, **options)
    if mode == "fp16":
        from .fp16 import convert_fp16

        return convert_fp16(graph, exclude=exclude, **options)
    raise ValueError(f"unknown quantization mode {mode!r}; choose one of: {', '.join(QUANT_MODES)}")


@register_pass
class QuantizeStatic(Pass):
    """Static int8 QDQ quantization with calibration data from an .npz file or folder (see compiler.calibration)."""

    lossy = True  # approximates by design: semantic-equality checks skip it
    name = "quantize-static"

    @dataclasses.dataclass
    class Options:
        calibration: str = ""
        method: str = DEFAULT_METHOD
        activation_type: str = DEFAULT_ACTIVATION_TYPE
        per_channel: bool = True
        symmetric_activations: bool = False
        reduce_range: bool = DEFAULT_REDUCE_RANGE

    def run(self, graph: Graph) -> bool:
        if not self.options.calibration:
            raise PipelineError("pass 'quantize-static' needs calibration=PATH (an .npz file or a folder of them)")
        from compiler.calibration import load_calibration  # the loader validates the data against the model

        o = self.options
        data = load_calibration(graph, o.calibration)
        return quantize_static(graph, data, o.method, o.activation_type, o.symmetric_activations,
                               o.per_channel, reduce_range=o.reduce_range).changed


@register_pass
class QuantizeDynamic(Pass):
    """Dynamic int8: int8 weights, MatMul/Gemm activations quantized at run time (DynamicQuantizeLinear)."""

    lossy = True  # approximates by design: semantic-equality checks skip it
    name = "quantize-dynamic"

    @dataclasses.dataclass
    class Options:
        per_channel: bool = True
        reduce_range: bool = DEFAULT_REDUCE_RANGE

    def run(self, graph: Graph) -> bool:
        return quantize_dynamic(graph, self.options.per_channel, reduce_range=self.options.reduce_range).changed
