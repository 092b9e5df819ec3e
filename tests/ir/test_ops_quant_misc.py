"""Quantization, recurrent, signal and misc ops (ir/ops/quant.py, rnn.py, signal.py, misc.py).

Each op runs through `compiler.compile(model).run` and is compared with onnxruntime; shape inference
is checked with symbolic dims on models imported without ONNX's own inference.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import compiler
import ir
from ir.types import DType, TensorType

RNG = np.random.default_rng(0)


def _model(op: str, inputs: dict[str, np.ndarray], consts: dict[str, np.ndarray | None] | None = None,
           n_out: int = 1, opset: int = 21, **attrs: Any) -> onnx.ModelProto:
    """One node; `inputs` are graph inputs, then `consts` initializers (None: an omitted input)."""
    consts = consts or {}
    names = [*inputs] + [("" if v is None else k) for k, v in consts.items()]
    node = helper.make_node(op, names, [f"y{i}" for i in range(n_out)], **attrs)
    ins = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in inputs.items()]
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items() if v is not None]
    outs = [onnx.ValueInfoProto(name=f"y{i}") for i in range(n_out)]
    return helper.make_model(helper.make_graph([node], "g", ins, outs, inits),
                             opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _check(model: onnx.ModelProto, feeds: dict[str, np.ndarray], rtol: float = 1e-5, atol: float = 1e-5,
           exact: bool = False) -> list[np.ndarray]:
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = list(compiler.compile(model).run(feeds).values())
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g.dtype == w.dtype or g.dtype.itemsize == w.dtype.itemsize == 1) and g.shape == w.shape, \
            (i, g.dtype, w.dtype, g.shape, w.shape)
        if w.dtype == np.uint8 and g.dtype != np.uint8:  # onnxruntime hands float8 out as raw bytes
            g = g.view(np.uint8)
        if exact:
            np.testing.assert_array_equal(g, w, err_msg=f"output {i}")
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {i}")
    return got


def _f32(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def _q(dtype: type, *shape: int) -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


# ---------------------------------------------------------------------------------------------
# QuantizeLinear / DequantizeLinear


def _qdq_model(scale: np.ndarray, zp: np.ndarray, shape: tuple[int, ...], axis: int = 1) -> onnx.ModelProto:
    """x -> QuantizeLinear -> q (output 0) -> DequantizeLinear -> y (output 1)."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], axis=axis),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], axis=axis)]
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "zp")]
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                          [onnx.ValueInfoProto(name="q"), onnx.ValueInfoProto(name="y")], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_qdq_per_tensor(dtype: type) -> None:
    x = _f32(2, 3, 5, scale=3.0)
    x.flat[:4] = [0.25, 0.75, -0.25, 1e4]  # ties (half to even) and saturation
    zp = np.array(3 if dtype == np.int8 else 128, dtype)
    q, y = _check(_qdq_model(np.array(0.5, np.float32), zp, x.shape), {"x": x}, exact=True)
    assert q.dtype == dtype and y.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_qdq_per_channel(dtype: type) -> None:
    x = _f32(2, 3, 4, scale=2.0)
    scale = np.array([0.02, 0.05, 0.1], np.float32)
    zp = np.array([-3, 0, 7] if dtype == np.int8 else [120, 128, 131], dtype)
    _check(_qdq_model(scale, zp, x.shape, axis=1), {"x": x}, exact=True)
    _check(_qdq_model(np.array([0.1, 0.2, 0.05, 0.3], np.float32), zp[:1].repeat(4), x.shape, axis=-1),
           {"x": x}, exact=True)


def test_quantize_blocked_and_narrow_types() -> None:
    """Blocked int4 and float8 saturation, dequantized back (ORT cannot hand int4 to numpy)."""
    x = _f32(3, 8, scale=4.0)
    attrs = {"axis": 1, "block_size": 4}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y0"], **attrs)]
    inits = [numpy_helper.from_array(np.abs(_f32(3, 2)) + 0.1, "s"),
             numpy_helper.from_array(np.array([[1, -2], [0, 3], [-1, 7]], DType.INT4.np), "z")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
                          [onnx.ValueInfoProto(name="y0")], inits)
    _check(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), {"x": x})
    x8 = np.array([0.3, -1000.0, 1000.0, 3.1, np.inf], np.float32)
    m = _model("QuantizeLinear", {"x": x8}, {"s": np.array(1.0, np.float32),
                                             "zp": np.zeros(1, DType.FLOAT8E4M3FN.np)}, axis=0)
    q = _check(m, {"x": x8}, exact=True)[0]
    assert q.astype(np.float32).tolist()[1:3] == [-448.0, 448.0]


def test_quantize_fp16_divides_in_float32() -> None:
    """fp16 input and scale: onnxruntime divides in float32, so must we (fp16 division moves ties)."""
    x = RNG.uniform(-120, 120, 2000).astype(np.float16)
    m = _model("QuantizeLinear", {"x": x}, {"s": np.array(0.37, np.float16), "z": np.array(0, np.int8)})
    _check(m, {"x": x}, exact=True)


def test_dequantize_int32_and_fp16_scale() -> None:
    x = _q(np.int32, 4, 5) // 1000
    m = _model("DequantizeLinear", {"x": x}, {"s": np.array(0.001, np.float32)})
    _check(m, {"x": x})
    xq = _q(np.uint8, 2, 3)
    m = _model("DequantizeLinear", {"x": xq}, {"s": np.array([0.5, 0.25, 2.0], np.float16),
                                               "zp": np.array([1, 2, 3], np.uint8)}, axis=1)
    assert _check(m, {"x": xq})[0].dtype == np.float16


def test_dynamic_quantize_linear() -> None:
    for x in (_f32(3, 7, scale=5.0), np.abs(_f32(10)), -np.abs(_f32(4, 2)), np.zeros(5, np.float32)):
        _check(_model("DynamicQuantizeLinear", {"x": x}, n_out=3, opset=11), {"x": x}, exact=True)


# ---------------------------------------------------------------------------------------------
# Integer / QLinear matmul and conv


def test_matmul_integer() -> None:
    a, b = _q(np.uint8, 2, 4, 6), _q(np.uint8, 6, 5)
    m = _model("MatMulInteger", {"a": a, "b": b}, {"az": np.array(7, np.uint8), "bz": np.array(130, np.uint8)},
               opset=10)
    _check(m, {"a": a, "b": b}, exact=True)
    a8, b8 = _q(np.int8, 3, 6), _q(np.int8, 6, 4)
    _check(_model("MatMulInteger", {"a": a8, "b": b8}, opset=10), {"a": a8, "b": b8}, exact=True)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_qlinear_matmul(dtype: type) -> None:
    a, b = _q(dtype, 2, 3, 8), _q(dtype, 2, 8, 4)
    zp = np.array(-2 if dtype == np.int8 else 128, dtype)
    consts = {"as": np.array(0.05, np.float32), "az": zp}
    m = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y0"])
    inits = {**consts, "bs": np.array(0.02, np.float32), "bz": zp, "ys": np.array(0.4, np.float32), "yz": zp}
    g = helper.make_graph([m], "g", [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                                     for n, v in (("a", a), ("b", b))],
                          [onnx.ValueInfoProto(name="y0")], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    _check(model, {"a": a, "b": b}, exact=True)


@pytest.mark.parametrize("case", [
    {"x": (1, 3, 7, 7), "w": (4, 3, 3, 3), "pads": [1, 1, 1, 1]},
    {"x": (2, 4, 8, 6), "w": (6, 2, 3, 2), "group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 0, 2, 1]},
    {"x": (1, 4, 9, 9), "w": (4, 1, 3, 3), "group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]},
])
def test_qlinear_conv(case: dict[str, Any]) -> None:
    case = dict(case)
    xs, ws = case.pop("x"), case.pop("w")
    # |w| < 64: onnxruntime's u8s8 x86 kernels saturate pairwise int16 sums for full-range weights
    x, w = _q(np.uint8, *xs), RNG.integers(-64, 64, ws).astype(np.int8)
    inits = {"xs": np.array(0.02, np.float32), "xz": np.array(120, np.uint8), "w": w,
             "ws": (np.abs(_f32(ws[0])) * 0.01 + 0.005).astype(np.float32), "wz": np.zeros(ws[0], np.int8),
             "ys": np.array(0.3, np.float32), "yz": np.array(125, np.uint8),
             "b": RNG.integers(-500, 500, ws[0]).astype(np.int32)}
    node = helper.make_node("QLinearConv", ["x", *inits], ["y0"], **case)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, xs)],
                          [onnx.ValueInfoProto(name="y0")], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    _check(model, {"x": x}, exact=True)


def test_conv_integer() -> None:
    x, w = _q(np.uint8, 1, 2, 6, 5), _q(np.uint8, 3, 2, 3, 2)
    m = _model("ConvInteger", {"x": x, "w": w}, {"xz": np.array(100, np.uint8)}, opset=10, pads=[1, 0, 1, 1])
    _check(m, {"x": x, "w": w}, exact=True)


# ---------------------------------------------------------------------------------------------
# Recurrent


def test_lstm_bidirectional_full() -> None:
    t, b, i, h = 5, 3, 4, 6
    feeds = {"x": _f32(t, b, i)}
    consts = {"w": _f32(2, 4 * h, i, scale=0.5), "r": _f32(2, 4 * h, h, scale=0.5), "b": _f32(2, 8 * h, scale=0.1),
              "sl": np.array([5, 2, 4], np.int32), "h0": _f32(2, b, h), "c0": _f32(2, b, h),
              "p": _f32(2, 3 * h, scale=0.1)}
    m = _model("LSTM", feeds, consts, n_out=3, opset=14, hidden_size=h, direction="bidirectional")
    _check(m, feeds, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lbr", [0, 1])
def test_gru_reverse(lbr: int) -> None:
    t, b, i, h = 4, 2, 3, 5
    feeds = {"x": _f32(t, b, i)}
    consts = {"w": _f32(1, 3 * h, i, scale=0.5), "r": _f32(1, 3 * h, h, scale=0.5), "b": _f32(1, 6 * h, scale=0.1)}
    m = _model("GRU", feeds, consts, n_out=2, opset=14, hidden_size=h, direction="reverse", linear_before_reset=lbr)
    _check(m, feeds, rtol=1e-4, atol=1e-5)


def test_rnn_activation_and_layout1() -> None:
    """Relu RNN against onnxruntime; layout=1 (which onnxruntime lacks) against the transposed layout 0."""
    b, t, i, h = 2, 3, 4, 3
    feeds = {"x": _f32(t, b, i)}
    consts = {"w": _f32(1, h, i), "r": _f32(1, h, h), "b": _f32(1, 2 * h), "sl": np.array([3, 2], np.int32)}
    y, yh = _check(_model("RNN", feeds, consts, n_out=2, opset=14, hidden_size=h, activations=["Relu"]), feeds)
    m1 = _model("RNN", {"x": feeds["x"].swapaxes(0, 1).copy()}, consts, n_out=2, opset=14, hidden_size=h,
                activations=["Relu"], layout=1)
    y1, yh1 = compiler.compile(m1).run({"x": feeds["x"].swapaxes(0, 1).copy()}).values()
    np.testing.assert_allclose(y1, y.transpose(2, 0, 1, 3), rtol=1e-6)
    np.testing.assert_allclose(yh1, yh.swapaxes(0, 1), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Losses, signal, misc


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_softmax_cross_entropy(reduction: str) -> None:
    feeds = {"x": _f32(3, 5, 2), "t": np.array([[0, 4], [2, 1], [3, 3]], np.int64)}
    m = _model("SoftmaxCrossEntropyLoss", feeds, {"w": np.abs(_f32(5)) + 0.1}, n_out=2, opset=13,
               reduction=reduction, ignore_index=1)
    _check(m, feeds)


def test_dft_and_window() -> None:
    feeds = {"x": _f32(2, 8, 1)}
    _check(_model("DFT", feeds, opset=17, axis=1, onesided=1), feeds, atol=1e-4)
    m = _model("HannWindow", {}, {"n": np.array(8, np.int64)}, opset=17, periodic=0)
    np.testing.assert_allclose(next(iter(compiler.compile(m).run({}).values())), np.hanning(8), atol=1e-6)


def test_attention_gqa_causal_against_numpy() -> None:
    q, k, v = _f32(2, 4, 3, 8), _f32(2, 2, 5, 8), _f32(2, 2, 5, 8)
    m = _model("Attention", {"q": q, "k": k, "v": v}, opset=23, is_causal=1)
    y = next(iter(compiler.compile(m).run({"q": q, "k": k, "v": v}).values()))
    kk, vv = np.repeat(k, 2, axis=1), np.repeat(v, 2, axis=1)
    s = q @ kk.swapaxes(-1, -2) / np.sqrt(8) + np.where(np.tri(3, 5, 0, bool), 0, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(y, (p / p.sum(-1, keepdims=True)) @ vv, rtol=1e-4, atol=1e-5)


def test_nms_and_det() -> None:
    boxes = np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 2, 1, 3], [0, 10, 1, 11]]], np.float32)
    feeds = {"b": boxes, "s": np.array([[[0.9, 0.8, 0.7, 0.1]]], np.float32)}
    m = _model("NonMaxSuppression", feeds, {"m": np.array([3], np.int64), "i": np.array([0.5], np.float32),
                                            "t": np.array([0.05], np.float32)}, opset=11)
    _check(m, feeds, exact=True)
    x = _f32(3, 4, 4)
    _check(_model("Det", {"x": x}, opset=11), {"x": x}, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Shape inference with symbolic dims (ONNX's own inference off: only mcc's infer functions run).


def _sym_types(model: onnx.ModelProto) -> list[Any]:
    g = compiler.import_onnx(model, infer_shapes=False)
    return [v.type for v in g.outputs]


def _sym_model(op: str, ins: dict[str, tuple[int, tuple[Any, ...]]], consts: dict[str, np.ndarray | None] | None = None,
               n_out: int = 1, opset: int = 21, **attrs: Any) -> onnx.ModelProto:
    consts = consts or {}
    names = [*ins] + [("" if v is None else k) for k, v in consts.items()]
    node = helper.make_node(op, names, [f"y{i}" for i in range(n_out)], **attrs)
    vis = [helper.make_tensor_value_info(k, dt, shape) for k, (dt, shape) in ins.items()]
    inits = [numpy_helper.from_array(v, k) for k, v in consts.items() if v is not None]
    outs = [onnx.ValueInfoProto(name=f"y{i}") for i in range(n_out)]
    return helper.make_model(helper.make_graph([node], "g", vis, outs, inits),
                             opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


F, U8, I8 = onnx.TensorProto.FLOAT, onnx.TensorProto.UINT8, onnx.TensorProto.INT8


def test_infer_quant_symbolic() -> None:
    m = _sym_model("QuantizeLinear", {"x": (F, ("N", 3, "H"))}, {"s": np.array(0.1, np.float32),
                                                                 "z": np.array(0, np.int8)})
    assert _sym_types(m) == [TensorType(DType.INT8, ("N", 3, "H"))]
    m = _sym_model("QuantizeLinear", {"x": (F, ("N", 4))}, {"s": np.array(0.1, np.float32)},
                   output_dtype=onnx.TensorProto.UINT4)
    assert _sym_types(m) == [TensorType(DType.UINT4, ("N", 4))]
    m = _sym_model("DequantizeLinear", {"x": (U8, ("N", 3))}, {"s": np.ones(3, np.float16)})
    assert _sym_types(m) == [TensorType(DType.FLOAT16, ("N", 3))]
    m = _sym_model("DynamicQuantizeLinear", {"x": (F, ("B", 7))}, n_out=3, opset=11)
    assert _sym_types(m) == [TensorType(DType.UINT8, ("B", 7)), TensorType(DType.FLOAT, ()),
                             TensorType(DType.UINT8, ())]


def test_infer_matmul_conv_symbolic() -> None:
    m = _sym_model("MatMulInteger", {"a": (U8, ("B", "M", 6)), "b": (U8, (6, 5))}, opset=10)
    assert _sym_types(m) == [TensorType(DType.INT32, ("B", "M", 5))]
    m = _sym_model("QLinearMatMul", {"a": (I8, ("B", 2, 6)), "as": (F, ()), "az": (I8, ()), "b": (I8, (6, 4)),
                                     "bs": (F, ()), "bz": (I8, ()), "ys": (F, ()), "yz": (I8, ())})
    assert _sym_types(m) == [TensorType(DType.INT8, ("B", 2, 4))]
    m = _sym_model("ConvInteger", {"x": (U8, ("N", 3, 9, "W")), "w": (U8, (8, 3, 3, 3))}, opset=10,
                   pads=[1, 1, 1, 1], strides=[2, 2])
    assert _sym_types(m) == [TensorType(DType.INT32, ("N", 8, 5, None))]
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    types = [(U8, ("N", 3, 8, 8)), (F, ()), (U8, ()), (I8, (4, 3, 3, 3)), (F, (4,)), (I8, (4,)), (F, ()), (U8, ())]
    m = _sym_model("QLinearConv", dict(zip(names, types)), auto_pad="SAME_UPPER")
    assert _sym_types(m) == [TensorType(DType.UINT8, ("N", 4, 8, 8))]


def test_infer_rnn_attention_symbolic() -> None:
    m = _sym_model("LSTM", {"x": (F, ("T", "B", 4)), "w": (F, (2, 24, 4)), "r": (F, (2, 24, 6))}, n_out=3,
                   opset=14, hidden_size=6, direction="bidirectional")
    assert _sym_types(m) == [TensorType(DType.FLOAT, ("T", 2, "B", 6)), TensorType(DType.FLOAT, (2, "B", 6)),
                             TensorType(DType.FLOAT, (2, "B", 6))]
    m = _sym_model("GRU", {"x": (F, ("B", "T", 4)), "w": (F, (1, 15, 4)), "r": (F, (1, 15, 5))}, n_out=2,
                   opset=14, layout=1)
    assert _sym_types(m) == [TensorType(DType.FLOAT, ("B", "T", 1, 5)), TensorType(DType.FLOAT, ("B", 1, 5))]
    m = _sym_model("Attention", {"q": (F, ("B", "S", 64)), "k": (F, ("B", "L", 32)), "v": (F, ("B", "L", 32))},
                   opset=23, q_num_heads=8, kv_num_heads=4)
    assert _sym_types(m) == [TensorType(DType.FLOAT, ("B", "S", 64))]
    m = _sym_model("SoftmaxCrossEntropyLoss", {"x": (F, ("N", 5, "D")), "t": (onnx.TensorProto.INT64, ("N", "D"))},
                   n_out=2, opset=13, reduction="none")
    assert _sym_types(m) == [TensorType(DType.FLOAT, ("N", "D")), TensorType(DType.FLOAT, ("N", 5, "D"))]


def test_macs_and_kinds() -> None:
    m = _sym_model("MatMulInteger", {"a": (U8, (2, 3, 6)), "b": (U8, (6, 5))}, opset=10)
    g = compiler.import_onnx(m, infer_shapes=False)
    node = next(iter(g.nodes))
    assert ir.op_def(node).macs(node) == 2 * 3 * 5 * 6
    assert ir.get_op("QuantizeLinear").kind == ir.Kind.BROADCAST
    assert ir.get_op("QLinearConv").kind == ir.Kind.COMPLEX
    assert ir.get_op("SoftmaxCrossEntropyLoss").kind == ir.Kind.REDUCTION
    assert ir.get_op("RandomNormal").random and ir.get_op("Bernoulli").random
