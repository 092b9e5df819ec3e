"""nn and reduce ops (ir/ops/nn.py, ir/ops/reduce.py) against onnxruntime, plus inference and MACs."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

import compiler
import ir
from ir.types import DType, TensorType

RNG = np.random.default_rng(0)


def _model(op: str, inputs: dict[str, np.ndarray], n_out: int = 1, opset: int = 22,
           consts: dict[str, np.ndarray] | None = None, **attrs: Any) -> onnx.ModelProto:
    """A one-node model: `inputs` become graph inputs, `consts` initializers (in that order)."""
    consts = consts or {}
    node = helper.make_node(op, [*inputs, *consts], [f"y{i}" for i in range(n_out)], **attrs)
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in inputs.items()]
    inits = [onnx.numpy_helper.from_array(v, k) for k, v in consts.items()]
    outs = [onnx.ValueInfoProto(name=f"y{i}") for i in range(n_out)]  # untyped: both sides infer
    return helper.make_model(helper.make_graph([node], "g", ins, outs, inits),
                             opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _check(op: str, inputs: dict[str, np.ndarray], n_out: int = 1, opset: int = 22, rtol: float = 1e-4,
           consts: dict[str, np.ndarray] | None = None, **attrs: Any) -> None:
    m = _model(op, inputs, n_out, opset, consts, **attrs)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)
    got = compiler.compile(m).run(inputs)
    for i, w in enumerate(want):
        g = got[f"y{i}"]
        assert g.dtype == w.dtype and g.shape == w.shape, (op, attrs, i, g.shape, w.shape)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=1e-5, err_msg=f"{op} {attrs} output {i}")


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


CONV_CASES = [
    dict(x=(2, 4, 9, 9), w=(6, 4, 3, 3)),
    dict(x=(1, 4, 10, 11), w=(6, 2, 3, 2), group=2, strides=[2, 1], dilations=[1, 2], pads=[1, 0, 2, 1]),
    dict(x=(1, 3, 8, 8), w=(4, 3, 3, 3), auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(x=(1, 3, 7, 8), w=(4, 3, 4, 3), auto_pad="SAME_LOWER", strides=[2, 3]),
    dict(x=(1, 3, 7, 8), w=(4, 3, 3, 3), auto_pad="VALID", strides=[2, 2]),
    dict(x=(2, 8, 6, 6), w=(8, 1, 3, 3), group=8, pads=[1, 1, 1, 1]),  # depthwise
    dict(x=(1, 8, 6, 6), w=(16, 1, 3, 3), group=8, strides=[2, 2]),  # depthwise, multiplier 2
    dict(x=(1, 6, 5, 5), w=(4, 6, 1, 1), strides=[2, 2]),  # 1x1 strided
    dict(x=(1, 2, 11), w=(3, 2, 3), strides=[2], dilations=[2], pads=[1, 2]),  # 1-D
    dict(x=(1, 2, 5, 6, 4), w=(4, 1, 2, 3, 2), group=2, pads=[0, 1, 1, 1, 0, 0]),  # 3-D
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case: dict[str, Any]) -> None:
    c = dict(case)
    x, w = _f32(*c.pop("x")), _f32(*c.pop("w"))
    _check("Conv", {"x": x}, consts={"w": w, "b": _f32(w.shape[0])}, **c)


CONVT_CASES = [
    dict(x=(1, 2, 3, 3), w=(2, 3, 3, 3)),
    dict(x=(2, 4, 3, 4), w=(4, 2, 3, 2), group=2, strides=[2, 3], pads=[1, 0, 0, 1], output_padding=[1, 2]),
    dict(x=(1, 2, 4, 4), w=(2, 2, 3, 3), strides=[2, 2], dilations=[2, 1]),
    dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), strides=[2, 2], output_shape=[8, 7]),
    dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), strides=[2, 2], output_shape=[6, 5]),  # odd total padding
    dict(x=(1, 2, 3, 3), w=(2, 2, 3, 3), strides=[3, 2], auto_pad="SAME_LOWER", dilations=[2, 1]),
    dict(x=(1, 2, 5), w=(2, 3, 4), strides=[3], pads=[2, 1]),
]


@pytest.mark.parametrize("case", CONVT_CASES)
def test_conv_transpose(case: dict[str, Any]) -> None:
    c = dict(case)
    x, w = _f32(*c.pop("x")), _f32(*c.pop("w"))
    _check("ConvTranspose", {"x": x}, consts={"w": w, "b": _f32(w.shape[1] * c.get("group", 1))}, **c)


POOL_CASES = [
    dict(kernel_shape=[3, 3], strides=[2, 2]),
    dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[2, 2], dilations=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[3, 3], ceil_mode=1),
]


@pytest.mark.parametrize("case", POOL_CASES)
def test_pools(case: dict[str, Any]) -> None:
    x = _f32(2, 3, 7, 8)
    _check("MaxPool", {"x": x}, n_out=2, **case)
    _check("MaxPool", {"x": x}, n_out=2, storage_order=1, **case)
    for cip in (0, 1):
        _check("AveragePool", {"x": x}, count_include_pad=cip, **case)
    _check("LpPool", {"x": x}, p=3, **case)


def test_global_pools_and_unpool() -> None:
    x = _f32(2, 3, 5, 4)
    for op in ("GlobalAveragePool", "GlobalMaxPool"):
        _check(op, {"x": x})
    _check("GlobalLpPool", {"x": x}, opset=2, p=3)  # onnxruntime implements GlobalLpPool up to opset 2
    x = _f32(2, 3, 4, 6)
    m = _model("MaxPool", {"x": x}, n_out=2, kernel_shape=[2, 2], strides=[2, 2])
    y, idx = compiler.compile(m).run({"x": x}).values()
    _check("MaxUnpool", {"y": y, "i": idx}, kernel_shape=[2, 2], strides=[2, 2])


@pytest.mark.parametrize("ta,tb,c_shape", [(0, 0, (4, 5)), (1, 0, (5,)), (0, 1, (1, 5)), (1, 1, None)])
def test_gemm(ta: int, tb: int, c_shape: tuple[int, ...] | None) -> None:
    a = _f32(3, 4) if ta else _f32(4, 3)
    b = _f32(5, 3) if tb else _f32(3, 5)
    consts = {"c": _f32(*c_shape)} if c_shape else {}
    _check("Gemm", {"a": a, "b": b}, consts=consts, transA=ta, transB=tb, alpha=0.5, beta=2.0)


@pytest.mark.parametrize("sa,sb", [((2, 3, 4, 5), (5, 6)), ((3, 1, 4, 5), (2, 5, 6)), ((5,), (2, 5, 3)),
                                   ((2, 4, 5), (5,))])
def test_matmul(sa: tuple[int, ...], sb: tuple[int, ...]) -> None:
    _check("MatMul", {"a": _f32(*sa), "b": _f32(*sb)})


def test_einsum() -> None:
    _check("Einsum", {"a": _f32(2, 3, 4), "b": _f32(2, 4, 5)}, equation="bij,bjk->bik")
    _check("Einsum", {"a": _f32(3, 3)}, equation="ii")
    _check("Einsum", {"a": _f32(2, 3, 4)}, equation="...ij->...ji")


REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_axes_input_and_attribute(op: str) -> None:
    x = RNG.uniform(0.5 if op == "ReduceLogSum" else -1.5, 1.5, (2, 3, 4)).astype(np.float32)
    _check(op, {"x": x}, opset=11, axes=[0, -1], keepdims=0)  # attribute form
    _check(op, {"x": x}, opset=18, consts={"axes": np.array([1], np.int64)})  # input form
    _check(op, {"x": x}, opset=18, keepdims=0)  # no axes: all
    _check(op, {"x": x}, opset=18, noop_with_empty_axes=1)  # no axes, noop


def test_arg_and_softmax() -> None:
    x = RNG.integers(0, 3, (3, 4, 5)).astype(np.float32)  # ties exercise select_last_index
    for op in ("ArgMax", "ArgMin"):
        _check(op, {"x": x}, axis=1, keepdims=0, select_last_index=1)
        _check(op, {"x": x}, axis=-1)
    for op in ("Softmax", "LogSoftmax", "Hardmax"):
        _check(op, {"x": x}, opset=11)  # coerced to 2-D at axis 1
        _check(op, {"x": x}, opset=11, axis=2)
        _check(op, {"x": x}, opset=13, axis=0)


# -- inference with symbolic dims, and MACs ---------------------------------------------------


def _graph_node(op: str, in_types: list[TensorType], attrs: dict[str, Any], consts: dict[int, np.ndarray] | None = None,
                n_out: int = 1, opset: int = 22) -> ir.Node:
    g = ir.Graph(opset_imports={"": opset})
    ins = []
    for i, t in enumerate(in_types):
        if consts and i in consts:
            ins.append(g.add_initializer(f"c{i}", consts[i]))
        else:
            ins.append(g.add_input(f"x{i}", t))
    node = g.make_node(op, ins, attrs, num_outputs=n_out)
    for v in node.outputs:
        v.type = None
    ir.infer_node(node)
    return node


def test_infer_symbolic() -> None:
    f = DType.FLOAT
    conv = _graph_node("Conv", [TensorType(f, ("N", 3, 224, 224)), TensorType(f, (64, 3, 7, 7))],
                       {"strides": [2, 2], "pads": [3, 3, 3, 3]})
    assert conv.outputs[0].type == TensorType(f, ("N", 64, 112, 112))
    conv = _graph_node("Conv", [TensorType(f, ("N", 3, "H", 32)), TensorType(f, (8, 3, 3, 3))],
                       {"auto_pad": "SAME_UPPER"})
    assert conv.outputs[0].type == TensorType(f, ("N", 8, None, 32))
    pool = _graph_node("MaxPool", [TensorType(f, ("B", 8, 9, None))], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                      "ceil_mode": 1}, n_out=2)
    assert pool.outputs[0].type == TensorType(f, ("B", 8, 4, None))
    assert pool.outputs[1].type == TensorType(DType.INT64, ("B", 8, 4, None))
    ct = _graph_node("ConvTranspose", [TensorType(f, ("N", 4, 5, 5)), TensorType(f, (4, 3, 3, 3))],
                     {"strides": [2, 2], "group": 2, "output_padding": [1, 1]})
    assert ct.outputs[0].type == TensorType(f, ("N", 6, 12, 12))
    mm = _graph_node("MatMul", [TensorType(f, ("B", 1, "S", 64)), TensorType(f, (3, 64, 32))], {})
    assert mm.outputs[0].type == TensorType(f, ("B", 3, "S", 32))
    gm = _graph_node("Gemm", [TensorType(f, (128, "B")), TensorType(f, (10, 128))], {"transA": 1, "transB": 1})
    assert gm.outputs[0].type == TensorType(f, ("B", 10))
    rs = _graph_node("ReduceMean", [TensorType(f, ("N", "C", 7, 7)), TensorType(DType.INT64, (2,))], {"keepdims": 0},
                     consts={1: np.array([-1, 2], np.int64)})
    assert rs.outputs[0].type == TensorType(f, ("N", "C"))
    am = _graph_node("ArgMax", [TensorType(f, ("N", 10))], {"axis": -1}, opset=13)
    assert am.outputs[0].type == TensorType(DType.INT64, ("N", 1))
    es = _graph_node("Einsum", [TensorType(f, ("B", 3, 4)), TensorType(f, ("B", 4, 5))], {"equation": "bij,bjk->bik"})
    assert es.outputs[0].type == TensorType(f, ("B", 3, 5))


def test_macs() -> None:
    f = DType.FLOAT
    conv = _graph_node("Conv", [TensorType(f, (2, 8, 16, 16)), TensorType(f, (12, 4, 3, 3))],
                       {"group": 2, "pads": [1, 1, 1, 1]})
    assert ir.get_op("Conv").macs(conv) == 2 * 12 * 16 * 16 * 4 * 3 * 3
    gemm = _graph_node("Gemm", [TensorType(f, (7, 5)), TensorType(f, (9, 7))], {"transA": 1, "transB": 1})
    assert ir.get_op("Gemm").macs(gemm) == 5 * 9 * 7
    mm = _graph_node("MatMul", [TensorType(f, (3, 4, 5, 6)), TensorType(f, (6, 2))], {})
    assert ir.get_op("MatMul").macs(mm) == 3 * 4 * 5 * 2 * 6
    mm = _graph_node("MatMul", [TensorType(f, ("B", 5, 6)), TensorType(f, (6, 2))], {})
    assert ir.get_op("MatMul").macs(mm) == 5 * 2 * 6  # symbolic batch counts as 1
    ct = _graph_node("ConvTranspose", [TensorType(f, (1, 4, 5, 5)), TensorType(f, (4, 3, 3, 3))], {"group": 2})
    assert ir.get_op("ConvTranspose").macs(ct) == 4 * 5 * 5 * 3 * 3 * 3
    assert ir.get_op("AveragePool").macs is None  # MACs count multiply-accumulates only
