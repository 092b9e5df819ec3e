"""canonicalize: exporter-spelled patterns become single ops, at the right opsets, with exact semantics.

Each pattern is built with onnx.helper in every exporter variant (and both opset styles for Clip bounds,
Reduce axes and Pad amounts), imported, canonicalized, verified, exported, checked with the full ONNX
checker, and run in onnxruntime against the original model.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
import ir
import passes
from conftest import ort_run, rel_err
from models import ALL_BUILDERS, sample_inputs, transformer_recognizer_model
from passes.testing import check_pass

X_SHAPE = [2, 3, 4, 8]


class _Net:
    """A one-input ("x"), one-output ("y") model under construction, in one opset's spelling."""

    def __init__(self, opset: int, const_nodes: bool = False) -> None:
        self.opset, self.const_nodes = opset, const_nodes
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, X_SHAPE)]
        self._n = 0

    def _fresh(self, hint: str) -> str:
        self._n += 1
        return f"{hint}{self._n}"

    def c(self, value: Any, dtype: Any = np.float32) -> str:
        """A constant: an initializer, or a Constant node (Paddle's style) when `const_nodes`."""
        name = self._fresh("c")
        t = numpy_helper.from_array(np.asarray(value, dtype), name)
        if self.const_nodes:
            self.nodes.append(helper.make_node("Constant", [], [name], value=t))
        else:
            self.inits.append(t)
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs: Any) -> str:
        out = out or self._fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def clip(self, x: str, lo: float, hi: float, out: str | None = None) -> str:
        if self.opset < 11:
            return self.op("Clip", x, out=out, min=lo, max=hi)
        return self.op("Clip", x, self.c(lo), self.c(hi), out=out)

    def mean_over(self, x: str, axes: list[int]) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", x, self.c(axes, np.int64), keepdims=1)
        return self.op("ReduceMean", x, axes=axes, keepdims=1)

    def model(self, outputs: list[str] | None = None) -> onnx.ModelProto:
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in (outputs or ["y"])]
        g = helper.make_graph(self.nodes, "g", self.inputs, outs, initializer=self.inits)
        opsets = [helper.make_opsetid("", self.opset)]
        return helper.make_model(g, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def _feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = (rng.standard_normal(shape) * 4).astype(np.float32)  # spans every Clip region
    return feeds


def _canonicalize(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None = None) -> Counter[str]:
    """Import, run `canonicalize,dce`, verify, export, full-check and compare with onnxruntime;
    check the pass is idempotent and output names survive; returns the op census after."""
    g = compiler.import_onnx(model)
    passes.run(g, "canonicalize,dce")
    ir.verify(g)
    assert not passes.get_pass("canonicalize")().run(g), "canonicalize is not idempotent"
    assert [v.name for v in g.outputs] == [o.name for o in model.graph.output]
    out = compiler.export_onnx(g)
    onnx.checker.check_model(out, full_check=True)
    feeds = feeds if feeds is not None else _feeds(model)
    for got, want in zip(ort_run(out, feeds), ort_run(model, feeds), strict=True):
        assert rel_err(got, want) < 1e-5
    return Counter(n.op_type for n in g.all_nodes())


def _only(census: Counter[str], *ops: str) -> None:
    """The graph computes with exactly `ops` (Constant nodes holding reused weights aside)."""
    assert set(census) - {"Constant"} == set(ops), dict(census)


# ---------------------------------------------------------------------------------------------
# HardSwish and HardSigmoid


def _hardswish(net: _Net, form: str) -> None:
    if form == "hsig":
        net.op("Mul", "x", net.op("HardSigmoid", "x", alpha=1 / 6, beta=0.5), out="y")
        return
    relu6 = net.clip(net.op("Add", net.c(3.0), "x"), 0.0, 6.0)  # constant first: Add is commutative
    if form == "div":
        net.op("Div", net.op("Mul", "x", relu6), net.c(6.0), out="y")
    elif form == "mul":
        net.op("Mul", net.op("Mul", "x", relu6), net.c(1 / 6), out="y")
    elif form == "clip_first":
        net.op("Div", net.op("Mul", relu6, "x"), net.c(6.0), out="y")
    elif form == "gate_div":
        net.op("Mul", "x", net.op("Div", relu6, net.c(6.0)), out="y")
    elif form == "gate_mul":
        net.op("Mul", net.op("Mul", relu6, net.c(1 / 6)), "x", out="y")


@pytest.mark.parametrize("form", ["div", "mul", "clip_first", "gate_div", "gate_mul", "hsig"])
@pytest.mark.parametrize("opset", [10, 13, 14, 17])
def test_hardswish(opset: int, form: str) -> None:
    net = _Net(opset, const_nodes=opset == 13)
    _hardswish(net, form)
    census = _canonicalize(net.model())
    if opset >= 14:
        _only(census, "HardSwish")
    else:  # no HardSwish op yet: the exporters' own x * HardSigmoid(x)
        _only(census, "Mul", "HardSigmoid")


@pytest.mark.parametrize("scale", ["div", "mul"])
@pytest.mark.parametrize("opset", [10, 13])
def test_hardsigmoid_from_relu6(opset: int, scale: str) -> None:
    net = _Net(opset)
    relu6 = net.clip(net.op("Add", "x", net.c(3.0)), 0.0, 6.0)
    net.op(*(("Div", relu6, net.c(6.0)) if scale == "div" else ("Mul", net.c(1 / 6), relu6)), out="y")
    _only(_canonicalize(net.model()), "HardSigmoid")


@pytest.mark.parametrize("scale", ["Mul", "Div"])
@pytest.mark.parametrize("opset", [10, 11])
def test_hardsigmoid_paddle(opset: int, scale: str) -> None:
    net = _Net(opset, const_nodes=True)
    net.clip(net.op("Add", net.op(scale, "x", net.c(0.2 if scale == "Mul" else 5.0)), net.c(0.5)), 0.0, 1.0, out="y")
    m = net.model()
    g = compiler.import_onnx(m)
    passes.run(g, "canonicalize,dce")
    (node,) = g.nodes
    assert node.op_type == "HardSigmoid"
    assert node.attributes["alpha"] == pytest.approx(0.2) and node.attributes["beta"] == pytest.approx(0.5)
    _only(_canonicalize(m), "HardSigmoid")


# ---------------------------------------------------------------------------------------------
# GELU


def _gelu(net: _Net, grouping: str, scale: str) -> None:
    arg = net.op("Div", "x", net.c(math.sqrt(2))) if scale == "div" else net.op("Mul", net.c(1 / math.sqrt(2)), "x")
    gate = net.op("Add", net.op("Erf", arg), net.c(1.0))
    if grouping == "half_x_first":
        net.op("Mul", net.op("Mul", net.c(0.5), "x"), gate, out="y")
    elif grouping == "half_last":
        net.op("Mul", net.op("Mul", "x", gate), net.c(0.5), out="y")
    elif grouping == "half_gate":
        net.op("Mul", net.op("Mul", gate, net.c(0.5)), "x", out="y")
    else:
        net.op("Div", net.op("Mul", gate, "x"), net.c(2.0), out="y")


@pytest.mark.parametrize("scale", ["div", "mul"])
@pytest.mark.parametrize("grouping", ["half_x_first", "half_last", "half_gate", "div2"])
def test_gelu(grouping: str, scale: str) -> None:
    net = _Net(20)
    _gelu(net, grouping, scale)
    _only(_canonicalize(net.model()), "Gelu")


def test_gelu_below_opset_20_is_left_alone() -> None:
    net = _Net(18)
    _gelu(net, "half_last", "div")
    census = _canonicalize(net.model())
    assert census["Erf"] == 1 and "Gelu" not in census


# ---------------------------------------------------------------------------------------------
# LayerNorm


def _layernorm(net: _Net, affine: str = "both", square: str = "pow", axis: int = -1, eps: float = 1e-5) -> None:
    d = X_SHAPE[-1]
    mean = net.mean_over("x", [axis])
    centered = net.op("Sub", "x", mean)
    sq = net.op("Pow", centered, net.c(2.0)) if square == "pow" else net.op("Mul", centered, centered)
    std = net.op("Sqrt", net.op("Add", net.c(eps), net.mean_over(sq, [axis])))
    y = net.op("Div", centered, std, out="y" if affine == "none" else None)
    rng = np.random.default_rng(1)
    if affine in ("scale", "both"):
        gamma = rng.uniform(0.5, 1.5, [1, 1, 1, d] if affine == "scale" else [d])
        y = net.op("Mul", net.c(gamma), y, out="y" if affine == "scale" else None)
    if affine == "both":
        net.op("Add", y, net.c(rng.standard_normal(d)), out="y")


@pytest.mark.parametrize("affine", ["none", "scale", "both"])
@pytest.mark.parametrize("square", ["pow", "mul"])
@pytest.mark.parametrize("opset", [17, 18])
def test_layernorm(opset: int, square: str, affine: str) -> None:
    net = _Net(opset, const_nodes=square == "mul")
    _layernorm(net, affine, square, axis=-1 if opset == 17 else 3, eps=1e-3)
    m = net.model()
    census = _canonicalize(m)
    _only(census, "LayerNormalization")
    g = compiler.import_onnx(m)
    passes.run(g, "canonicalize,dce")
    (ln,) = g.nodes
    assert ln.attributes["epsilon"] == pytest.approx(1e-3) and ln.attributes["axis"] == -1
    assert len(ln.inputs) == (3 if affine == "both" else 2)


def test_layernorm_below_opset_17_is_left_alone() -> None:
    net = _Net(16)
    _layernorm(net)
    assert _canonicalize(net.model())["ReduceMean"] == 2


# ---------------------------------------------------------------------------------------------
# MatMul + Add -> Gemm


@pytest.mark.parametrize("bias_shape", [[5], [1, 5], [3, 5], [3, 1], []])
@pytest.mark.parametrize("opset", [11, 13])
def test_gemm(opset: int, bias_shape: list[int]) -> None:
    net = _Net(opset, const_nodes=bias_shape == [5])
    net.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])]
    rng = np.random.default_rng(2)
    mm = net.op("MatMul", "x", net.c(rng.standard_normal([4, 5])))
    net.op("Add", net.c(rng.standard_normal(bias_shape)), mm, out="y")
    _only(_canonicalize(net.model()), "Gemm")


@pytest.mark.parametrize("case", ["rank3", "bias_grows_rank", "bias_widens", "weight_not_const"])
def test_gemm_negative(case: str) -> None:
    net = _Net(13)
    rng = np.random.default_rng(3)
    net.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4] if case == "rank3" else [3, 4])]
    w = net.c(rng.standard_normal([4, 1 if case == "bias_widens" else 5]))
    if case == "weight_not_const":
        w = net.op("Relu", w)
    bias = {"bias_grows_rank": [1, 1, 5], "bias_widens": [6]}.get(case, [5])
    net.op("Add", net.op("MatMul", "x", w), net.c(rng.standard_normal(bias)), out="y")
    census = _canonicalize(net.model())
    assert census["MatMul"] == 1 and "Gemm" not in census


# ---------------------------------------------------------------------------------------------
# Pad -> Conv


def _pad_conv(net: _Net, pads: list[int], *, mode: str = "constant", value: float | None = None,
              axes: list[int] | None = None, auto_pad: str | None = None) -> None:
    if net.opset < 11:
        padded = net.op("Pad", "x", pads=pads, mode=mode, **({} if value is None else {"value": value}))
    else:
        ins = ["x", net.c(pads, np.int64)]
        if value is not None or axes is not None:
            ins.append(net.c(value or 0.0) if value is not None else "")
        if axes is not None:
            ins.append(net.c(axes, np.int64))
        padded = net.op("Pad", *ins, mode=mode)
    w = net.c(np.random.default_rng(4).standard_normal([5, 3, 3, 3]))
    attrs: dict[str, Any] = {"auto_pad": auto_pad} if auto_pad else {"pads": [1, 0, 1, 0]}
    net.op("Conv", padded, w, net.c(np.arange(5.0)), out="y", kernel_shape=[3, 3], strides=[1, 2], **attrs)


@pytest.mark.parametrize("opset,value,axes", [(10, None, None), (10, 0.0, None), (11, None, None), (13, 0.0, None),
                                              (18, None, [2, 3]), (18, 0.0, [-1, -2])])
def test_pad_into_conv(opset: int, value: float | None, axes: list[int] | None) -> None:
    net = _Net(opset)
    # Every spelling pads H by (2, 0) and W by (1, 3); the Conv's own pads are (1, 0, 1, 0).
    pads = [2, 1, 0, 3] if axes == [2, 3] else [1, 2, 3, 0] if axes else [0, 0, 2, 1, 0, 0, 0, 3]
    _pad_conv(net, pads, value=value, axes=axes)
    m = net.model()
    _only(_canonicalize(m), "Conv")
    g = compiler.import_onnx(m)
    passes.run(g, "canonicalize,dce")
    assert g.nodes[0].attributes["pads"] == [3, 1, 1, 3]


@pytest.mark.parametrize("case", ["reflect", "nonzero_value", "channel_pad", "negative_pad", "auto_pad"])
def test_pad_into_conv_negative(case: str) -> None:
    net = _Net(13)
    pads = {"channel_pad": [0, 1, 1, 1, 0, 0, 1, 1], "negative_pad": [0, 0, -1, 1, 0, 0, 1, 1]}.get(
        case, [0, 0, 1, 1, 0, 0, 1, 1])
    net.inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2 if case == "channel_pad" else 3, 6, 6])]
    _pad_conv(net, pads, mode="reflect" if case == "reflect" else "constant",
              value=1.0 if case == "nonzero_value" else None, auto_pad="SAME_UPPER" if case == "auto_pad" else None)
    census = _canonicalize(net.model())
    assert census["Pad"] == 1


# ---------------------------------------------------------------------------------------------
# Near misses stay as they are


def test_near_misses_are_left_alone() -> None:
    # Clip(x + 3, 0, 5) / 6: not a hard-sigmoid.
    net = _Net(13)
    net.op("Div", net.clip(net.op("Add", "x", net.c(3.0)), 0.0, 5.0), net.c(6.0), out="y")
    assert _canonicalize(net.model())["Clip"] == 1

    # Clip bounds that are not constants.
    net = _Net(13)
    net.inputs.append(helper.make_tensor_value_info("hi", TensorProto.FLOAT, []))
    net.op("Div", net.op("Clip", net.op("Add", "x", net.c(3.0)), net.c(0.0), "hi"), net.c(6.0), out="y")
    feeds = {**_feeds(net.model()), "hi": np.array(6.0, np.float32)}
    assert _canonicalize(net.model(), feeds)["Clip"] == 1

    # x * HardSigmoid(x) with the default alpha 0.2: not hardswish.
    net = _Net(14)
    net.op("Mul", "x", net.op("HardSigmoid", "x"), out="y")
    assert "HardSwish" not in _canonicalize(net.model())

    # LayerNorm over a non-last axis.
    net = _Net(17)
    _layernorm(net, axis=1)
    assert "LayerNormalization" not in _canonicalize(net.model())

    # An intermediate value (x + 3) is also a graph output: rewriting would duplicate work.
    net = _Net(14)
    shifted = net.op("Add", "x", net.c(3.0), out="shifted")
    net.op("Div", net.op("Mul", "x", net.clip(shifted, 0.0, 6.0)), net.c(6.0), out="y")
    census = _canonicalize(net.model(["y", "shifted"]))
    assert census["Clip"] == 1 and "HardSwish" not in census

    # x - mean read by a third op: no LayerNorm.
    net = _Net(17)
    _layernorm(net, affine="none")
    net.op("Neg", next(o for n in net.nodes if n.op_type == "Sub" for o in n.output), out="z")
    census = _canonicalize(net.model(["y", "z"]))
    assert "LayerNormalization" not in census


def test_integer_patterns_are_left_alone() -> None:
    """The target ops are float-only: an int64 Clip(x + 3, 0, 6) / 6 stays."""
    net = _Net(13)
    net.inputs = [helper.make_tensor_value_info("x", TensorProto.INT64, [4])]
    net.op("Div", net.op("Clip", net.op("Add", "x", net.c(3, np.int64)), net.c(0, np.int64), net.c(6, np.int64)),
           net.c(6, np.int64), out="y")
    m = net.model()
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.INT64
    census = _canonicalize(m, {"x": np.arange(-8, 8, 4, dtype=np.int64)})
    assert census["Clip"] == 1


# ---------------------------------------------------------------------------------------------
# Realistic models and random graphs


@pytest.mark.parametrize("name,expect", [
    ("mobilenetv3", {"HardSigmoid": 6, "HardSwish": 0, "Clip": 0}),
    ("mobilenetv3_opset17", {"HardSwish": 4, "HardSigmoid": 2, "Clip": 0}),
    ("transformer_opset17", {"LayerNormalization": 5, "ReduceMean": 0, "Pow": 0, "Sqrt": 0, "Erf": 2, "Gelu": 0}),
    ("transformer_opset18", {"LayerNormalization": 5, "ReduceMean": 0, "Pow": 0, "Sqrt": 0, "Erf": 2, "Gelu": 0}),
    ("transformer_opset20", {"LayerNormalization": 5, "Gelu": 2, "Erf": 0}),
    ("paddle_style", {"Gemm": 11, "MatMul": 0, "HardSigmoid": 26, "HardSwish": 0, "Clip": 0}),
])
def test_models(name: str, expect: dict[str, int]) -> None:
    build = ALL_BUILDERS.get(name) or (lambda: transformer_recognizer_model(opset=20))
    model = build()
    census = _canonicalize(model, sample_inputs(model))
    assert {op: census[op] for op in expect} == expect


def test_random_graphs() -> None:
    check_pass("canonicalize", max_examples=50)
    check_pass("canonicalize", max_examples=30, ops=("MatMul", "Add"))  # exercises the Gemm rule


def test_pattern_leaf_may_name_a_matched_op() -> None:
    """The DSL extension the LayerNorm rule relies on: a leaf repeating an Op's `name` means that op's
    output, whichever of the two is matched first."""
    from ir import DType, Graph, TensorType
    from passes.pattern import Op, match

    def mul_of_relu_and(first_is_relu: bool) -> ir.Node:
        g = Graph("g", {"": 17})
        x = g.add_input("x", TensorType(DType.FLOAT, (2,)))
        r = g.make_node("Relu", [x]).outputs[0]
        return g.make_node("Mul", [r if first_is_relu else x, g.make_node("Neg", [r]).outputs[0]])

    for pattern in (Op("Mul", "d", Op("Neg", Op("Relu", "x", name="d"))),
                    Op("Mul", Op("Relu", "x", name="d"), Op("Neg", "d"))):
        m = match(pattern, mul_of_relu_and(True))
        assert m is not None and m.named["d"].op_type == "Relu"
        assert match(pattern, mul_of_relu_and(False)) is None
