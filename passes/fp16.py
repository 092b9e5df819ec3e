"""float16 conversion: weights and compute in float16 where that is numerically safe.

float16 halves the file and doubles GPU throughput, but it holds only 11 bits of mantissa and
overflows above 65504. `FP16_KEEP` lists the ops computed in float32 and why (reductions that sum
many elements, exponentials, ops whose float inputs are float32 by the spec); their float32 results
stay float32 through the elementwise arithmetic that follows, until a linear op or a reduction
normalizes them. Casts are inserted where the two precisions meet, one per value and direction.
Graph inputs and outputs stay float32 by default, so the model's interface does not change; int
and bool tensors are never cast.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ir import DType, Graph, Kind, Node, Tensor, TensorType, Value, free_values, get_op, infer_shapes

from .base import Pass, register_pass
from .quantize import GraphEditor, QuantLayer, QuantReport

#: Ops computed in float32 inside a float16 model, and why.
FP16_KEEP: dict[str, str] = {
    **{op: "sums over many elements overflow float16 (max 65504)" for op in (
        "ReduceSum", "ReduceSumSquare", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
        "CumSum")},
    "Exp": "overflows float16 above 11.09",
    "Pow": "overflows float16 for moderate bases",
    "Softmax": "normalizes exps over a whole axis; small probabilities fall into float16 subnormals",
    "LogSoftmax": "log of a sum of exps over a whole axis",
    "Resize": "scales and roi are float32 by the spec; runtimes differ in float16 coordinate rounding",
    "Upsample": "scales are float32 by the spec",
    "Range": "loop counters: float16 has 11 bits of integer precision",
    "NonMaxSuppression": "box coordinates and scores compared for equality",
    "RoiAlign": "box coordinates: float16 loses pixel precision on large images",
    **{op: "output type set by an attribute" for op in (
        "ConstantOfShape", "EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
        "Multinomial", "Bernoulli")},
    **{op: "quantization op: its scales fix the float type" for op in (
        "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")},
}
#: Inputs / outputs that keep float32 when their node runs in float16.
FP16_FIXED_INPUTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2), "Upsample": (1,)}
FP16_FIXED_OUTPUTS: dict[str, tuple[int, ...]] = {"LayerNormalization": (1, 2)}  # mean, inv std: stash type
#: Ops that read any element type: they never need a Cast in front.
FP16_ANY_INPUT: frozenset[str] = frozenset({"Shape", "Size"})
_FP16_MAX = float(np.finfo(np.float16).max)


def _fp16_array(a: np.ndarray) -> np.ndarray:
    """float32 -> float16, saturating at +-65504 instead of overflowing to inf (infs and nans stay)."""
    finite = np.isfinite(a)
    return np.where(finite, np.clip(a, -_FP16_MAX, _FP16_MAX), a).astype(np.float16)


def convert_fp16(graph: Graph, keep_io_types: bool = True, exclude: Sequence[str] = ()) -> QuantReport:
    """Convert `graph` in place to float16 weights and compute (see `FP16_KEEP` for what stays float32).

    float32 results of kept ops flow on in float32 through elementwise arithmetic, so an overflow-prone
    sum is never squeezed into float16 before it is normalized. Int and bool tensors, and values that
    were float16 already, are never touched. With `keep_io_types` graph inputs and outputs stay float32.
    """
    infer_shapes(graph)
    report = QuantReport("fp16")
    ed = GraphEditor(graph)
    f32, f16 = DType.FLOAT, DType.FLOAT16
    sub_reads = {id(v) for n in graph.nodes for sg in n.subgraphs for v in free_values(sg)}
    is_f32 = lambda v: v is not None and v.dtype == f32  # noqa: E731
    low: dict[int, Node] = {}
    kept_out: set[int] = set()  # float32 results of kept nodes
    for n in graph.nodes:
        if not (any(is_f32(v) for v in n.outputs) or any(is_f32(v) for v in n.inputs)):
            continue
        why = _fp16_keep_reason(n, exclude, sub_reads)
        if why is None and get_op(n.op_type).kind in (Kind.ELEMWISE, Kind.BROADCAST) \
                and any(v is not None and id(v) in kept_out for v in n.inputs):
            why = "reads an overflow-prone float32 result"
        if why is not None:
            report.skipped[n.name] = why
            kept_out.update(id(v) for v in n.outputs if is_f32(v))
        else:
            low[id(n)] = n
    converted: set[int] = set()  # values that were float32 and are float16 now

    def to_f16(v: Value) -> None:
        v.type = TensorType(f16, v.shape)
        converted.add(id(v))

    for n in low.values():
        fixed = FP16_FIXED_OUTPUTS.get(n.op_type, ())
        for i, v in enumerate(n.outputs):
            if is_f32(v) and i not in fixed:
                to_f16(v)
        if n.op_type == "Cast" and n.attr("to") == int(f32):
            n.attributes["to"] = int(f16)
        report.layers.append(QuantLayer(n.name, n.op_type, "fp16"))
    if not keep_io_types:
        for v in graph.inputs:
            if is_f32(v) and v.const is None and id(v) not in sub_reads:
                to_f16(v)

    def wants(node: Node, i: int) -> DType | None:
        """The float type `node` reads input `i` in (None: any type)."""
        if node.graph is not graph:
            return f32  # subgraphs stay float32
        if node.op_type in FP16_ANY_INPUT or (node.op_type == "Cast" and i == 0):
            return None
        if id(node) in low and i not in FP16_FIXED_INPUTS.get(node.op_type, ()):
            return f16
        return f32

    for v in list(graph.initializers.values()):  # weights: converted, or copied when both types are read
        if not is_f32(v) or v.const is None or v in graph.inputs:
            continue
        uses = [(node, i, wants(node, i)) for node, i in v.uses]
        if not any(w == f16 for *_, w in uses):
            continue
        half = _fp16_array(v.const.array)
        if all(w != f32 for *_, w in uses) and not v.is_graph_output:
            v.const = Tensor(half)
            to_f16(v)
            continue
        hv = ed.const(f"{v.name}_fp16", half)
        converted.add(id(hv))
        for node, i, w in uses:
            if w == f16:
                node.set_input(i, hv)
    casts: dict[tuple[int, DType], Value] = {}

    def cast(v: Value, to: DType) -> Value:
        if (id(v), to) not in casts:
            c = ed.node("Cast", [v], f"{v.name}_Cast", [f"{v.name}_{'fp16' if to == f16 else 'fp32'}"],
                        {"to": int(to)}, after=v)
            c.outputs[0].type = TensorType(to, v.shape)
            casts[(id(v), to)] = c.outputs[0]
        return casts[(id(v), to)]

    for n in graph.nodes:  # a Cast wherever a value's type differs from the type its reader computes in
        for i, v in enumerate(n.inputs):
            if v is None or not (is_f32(v) or id(v) in converted):
                continue
            w = wants(n, i)
            if w is not None and w != v.dtype:
                n.set_input(i, cast(v, w))
    want_out = f32 if keep_io_types else f16
    for v in list(graph.outputs):
        if (is_f32(v) or id(v) in converted) and v.dtype != want_out:
            c = cast(v, want_out)
            graph.outputs = [c if o is v else o for o in graph.outputs]
            name = v.name
            v.name = graph.unique_name(f"{name}_{v.dtype.name.lower()}")  # type: ignore[union-attr]
            c.name = name
    ed.finish()
    return report


def _fp16_keep_reason(n: Node, exclude: Sequence[str], sub_reads: set[int]) -> str | None:
    if n.name in exclude:
        return "excluded"
    if n.domain not in ("", "ai.onnx") or get_op(n.op_type, n.domain) is None:
        return "not a standard ONNX op"
    if n.subgraphs:
        return "control flow: its bodies stay float32"
    if n.op_type in FP16_KEEP:
        return FP16_KEEP[n.op_type]
    if any(id(v) in sub_reads for v in n.outputs):
        return "read inside a subgraph (which stays float32)"
    if n.op_type == "Constant":
        return "constant node (folded into initializers by the pipeline)"
    return None


@register_pass
class ConvertFp16(Pass):
    """float16 weights and compute (overflow-prone ops stay float32); Casts keep a float32 interface."""

    lossy = True  # approximates by design: semantic-equality checks skip it
    name = "fp16"

    @dataclasses.dataclass
    class Options:
        keep_io_types: bool = True

    def run(self, graph: Graph) -> bool:
        return convert_fp16(graph, self.options.keep_io_types).changed
