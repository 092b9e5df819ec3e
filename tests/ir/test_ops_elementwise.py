"""Elementwise ops: mcc's reference against onnxruntime (values and dtypes), and symbolic shape inference.

Value tests build one-node models with onnx.helper (constant operands as initializers) and compare
`compiler.compile(model).run(feeds)` with onnxruntime. Where onnxruntime has no kernel for an opset
(signed BitShift, BitCast, e8m0 casts), the expected values are written out by hand.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh
from onnx import numpy_helper

import compiler
import ir
from ir import DType, Kind, TensorType

RNG = np.random.default_rng(0)


def _f(*shape: int, lo: float = -3.0, hi: float = 3.0, dt: Any = np.float32) -> np.ndarray:
    return RNG.uniform(lo, hi, shape).astype(dt)


from op_check import C, check, run, single_op_model  # noqa: E402,F401


# ---------------------------------------------------------------------------------------------
# Unary math and activations

_DOMAINS = {"Log": (0.1, 5), "Sqrt": (0, 5), "Reciprocal": (0.5, 3), "Asin": (-0.99, 0.99), "Acos": (-0.99, 0.99),
            "Atanh": (-0.9, 0.9), "Acosh": (1, 5)}
_UNARY = ["Abs", "Neg", "Reciprocal", "Sqrt", "Exp", "Log", "Ceil", "Floor", "Round", "Sign", "Erf", "Sin", "Cos",
          "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Tanh", "Relu", "Sigmoid",
          "Softplus", "Softsign", "HardSwish", "Mish", "Elu", "Selu", "Celu", "HardSigmoid", "LeakyRelu",
          "ThresholdedRelu", "Shrink", "Gelu", "IsNaN"]


@pytest.mark.parametrize("op", _UNARY)
def test_unary(op: str) -> None:
    lo, hi = _DOMAINS.get(op, (-3, 3))
    x = _f(3, 4, lo=lo, hi=hi)
    if op == "Round":
        x[0, :3] = [0.5, 1.5, -2.5]  # half to even
    check(op, {"x": x}, opset=22 if op != "Gelu" else 20, tol=2e-6)


def test_unary_attributes_and_dtypes() -> None:
    x = _f(2, 5)
    check("LeakyRelu", {"x": x}, alpha=0.3)
    check("Elu", {"x": x}, alpha=0.5)
    check("Selu", {"x": x}, alpha=2.0, gamma=3.0)
    check("Celu", {"x": x}, alpha=2.0, opset=12)
    check("HardSigmoid", {"x": x}, alpha=0.3, beta=0.4)
    check("ThresholdedRelu", {"x": x}, alpha=0.7)
    check("Shrink", {"x": x}, bias=1.5, lambd=0.8, opset=9)
    check("Shrink", {"x": np.arange(-5, 5, dtype=np.int32)}, bias=1.0, lambd=1.5, opset=9)
    check("Gelu", {"x": x}, approximate="tanh", opset=20, tol=1e-5)
    check("Relu", {"x": np.arange(-4, 4, dtype=np.int8)}, opset=14)
    check("Abs", {"x": np.arange(-4, 4, dtype=np.int32)})
    check("Not", {"x": x > 0}, opset=1)
    check("BitwiseNot", {"x": np.arange(-4, 4, dtype=np.int16)})
    check("Sign", {"x": np.array([-3, 0, 5], np.int64)}, opset=13)
    # float16 stays float16 (computed in float32, rounded once)
    check("Sigmoid", {"x": x.astype(np.float16)}, tol=1e-3)
    check("Exp", {"x": x.astype(np.float16)}, tol=1e-3)
    # float attributes must not promote float32 to float64
    assert run("LeakyRelu", {"x": x}, alpha=0.1)[0].dtype == np.float32


def test_isinf_isnan() -> None:
    x = np.array([1.0, np.inf, -np.inf, np.nan, 0.0], np.float32)
    for pos, neg in ((1, 1), (1, 0), (0, 1)):
        check("IsInf", {"x": x}, detect_positive=pos, detect_negative=neg, opset=20)
    check("IsNaN", {"x": x}, opset=20)


def test_swish_bf16() -> None:
    x = _f(3, 4)
    (y,) = run("Swish", {"x": x}, opset=24, alpha=1.5)
    np.testing.assert_allclose(y, x / (1 + np.exp(-1.5 * x)), rtol=1e-6)
    (yb,) = run("Relu", {"x": x.astype(ml_dtypes.bfloat16)}, opset=14)
    assert yb.dtype == ml_dtypes.bfloat16


def test_unsupported_modes_raise() -> None:
    with pytest.raises(ir.EvaluationError, match="approximate 'erf'"):
        run("Gelu", {"x": _f(2)}, opset=20, approximate="erf")
    with pytest.raises(ir.EvaluationError, match="direction 'UP'"):
        run("BitShift", {"a": np.array([1], np.uint8), "b": np.array([1], np.uint8)}, opset=11, direction="UP")


# ---------------------------------------------------------------------------------------------
# Binary ops


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow", "PRelu"])
def test_arithmetic_broadcast(op: str) -> None:
    a, b = _f(2, 3, 4, lo=0.5), _f(3, 1, lo=0.5)
    check(op, {"a": a, "b": b}, tol=1e-5)
    check(op, {"a": a, "b": C(b)}, opset=13, tol=1e-5)


def test_integer_division_and_mod() -> None:
    a = np.array([7, -7, 7, -7, 6, -6], np.int32)
    b = np.array([2, 2, -2, -2, 4, -4], np.int32)
    (q,) = check("Div", {"a": a, "b": b})
    assert q.tolist() == [3, -3, -3, 3, 1, 1]  # truncation toward zero, as in C
    check("Mod", {"a": a, "b": b})  # sign of the divisor
    check("Mod", {"a": a, "b": b}, fmod=1)  # sign of the dividend
    check("Mod", {"a": _f(6), "b": _f(6, lo=0.5)}, fmod=1)
    check("Div", {"a": np.array([200, 7], np.uint8), "b": np.array([3, 2], np.uint8)})


def test_pow_mixed_types() -> None:
    x = np.array([1.5, 2, 3], np.float32)
    for e in (np.array([2, 3, 1], np.int64), np.array([2, 3, 1], np.int32), np.array([0.5, 2, 3], np.float32)):
        check("Pow", {"x": x, "e": e}, opset=15, tol=1e-6)
    check("Pow", {"x": np.array([2, 3, 4], np.int64), "e": np.array([2.0, 3.0, 0.5], np.float32)}, opset=15)
    check("Pow", {"x": np.array([2, 3, 4], np.int32), "e": np.array([2, 3, 4], np.int32)}, opset=15)


def test_bitwise_and_shift() -> None:
    a, b = np.array([[12, 7, 255]], np.uint8), np.array([10, 3, 1], np.uint8)
    for op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor"):
        check(op, {"a": a, "b": b})
    for d in ("LEFT", "RIGHT"):
        check("BitShift", {"a": a, "b": np.array([1, 2, 7], np.uint8)}, opset=11, direction=d)
    # signed shifts (opset 28; onnxruntime has no kernel): arithmetic right shift, out-of-range amounts
    x, s = np.array([-8, 64, -1, 5, -3], np.int8), np.array([1, 1, 9, -1, 8], np.int8)
    assert run("BitShift", {"x": x, "s": s}, opset=28, direction="RIGHT")[0].tolist() == [-4, 32, -1, 0, -1]
    assert run("BitShift", {"x": x, "s": s}, opset=28, direction="LEFT")[0].tolist() == [-16, -128, 0, 0, 0]


def test_logic_and_comparisons() -> None:
    a, b = _f(3, 4) > 0, _f(4) > 0
    for op in ("And", "Or", "Xor"):
        check(op, {"a": a, "b": b}, opset=7)
    x, y = np.array([[1, 5, 3]], np.int32), np.array([[3], [1], [5]], np.int32)
    for op in ("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual"):
        check(op, {"x": x, "y": y}, opset=16)
        check(op, {"x": x.astype(np.float32), "y": y.astype(np.float32)}, opset=16)
    s = np.array(["a", "bc", ""], dtype=object)
    check("Equal", {"s": s, "t": np.array(["a"], dtype=object)}, opset=19)


def test_legacy_axis_broadcast() -> None:
    """Opset < 7: B aligned at `axis` of A when broadcast=1 (not numpy's suffix alignment)."""
    a, b = _f(2, 3, 4), _f(3)
    (y,) = run("Add", {"a": a, "b": b}, opset=6, broadcast=1, axis=1)
    np.testing.assert_allclose(y, a + b[:, None], rtol=1e-6)
    g = compiler.import_onnx(single_op_model("Add", {"a": a, "b": b}, {"broadcast": 1, "axis": 1}, 6, 1), infer_shapes=False)
    ir.infer_shapes(g)
    assert g.outputs[0].type == TensorType(DType.FLOAT, (2, 3, 4))


# ---------------------------------------------------------------------------------------------
# Variadic, Where, Clip, Dropout


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(op: str) -> None:
    check(op, {"a": _f(2, 3, 4), "b": _f(3, 1), "c": _f(4)}, opset=13, tol=1e-6)
    check(op, {"a": _f(5)}, opset=13)
    if op in ("Max", "Min"):
        check(op, {"a": np.array([1, -5, 3], np.int8), "b": np.array([0], np.int8)}, opset=13)


def test_where_clip() -> None:
    check("Where", {"c": _f(3, 1) > 0, "x": _f(3, 4), "y": _f(4)}, opset=16)
    check("Where", {"c": np.array([True, False]), "x": np.array(["a", "b"], object),
                    "y": np.array(["c", "d"], object)}, opset=16)
    x = _f(3, 4)
    check("Clip", {"x": x}, opset=6, min=-0.5, max=0.5)
    check("Clip", {"x": x}, opset=6)
    check("Clip", {"x": x, "lo": C(np.float32(-1)), "hi": C(np.float32(0.5))}, opset=13)
    check("Clip", {"x": x, "lo": None, "hi": C(np.float32(0.5))}, opset=13)
    check("Clip", {"x": x, "lo": C(np.float32(1)), "hi": C(np.float32(-1))}, opset=13)  # min > max -> max
    check("Clip", {"x": np.arange(-5, 5, dtype=np.int8), "lo": C(np.int8(-2))}, opset=13)


def test_dropout() -> None:
    x = _f(4, 5)
    check("Dropout", {"x": x}, opset=13, n_out=2)
    check("Dropout", {"x": x, "r": C(np.float32(0.3))}, opset=13, n_out=2)
    y, mask = run("Dropout", {"x": x}, opset=10, n_out=2, ratio=0.2)  # onnxruntime's opset-10 mask is all false
    assert (y == x).all() and mask.dtype == np.bool_ and mask.all()
    y, mask = run("Dropout", {"x": x, "r": C(np.float32(0.5)), "t": C(np.array(True))}, opset=13, n_out=2)
    assert mask.dtype == np.bool_ and y.dtype == np.float32
    np.testing.assert_allclose(y, np.where(mask, x * 2, 0), rtol=1e-6)
    assert 0 < mask.sum() < mask.size


# ---------------------------------------------------------------------------------------------
# Cast, CastLike, BitCast

_CASTS = [(np.float32, TP.FLOAT16), (np.float32, TP.DOUBLE), (np.float32, TP.INT32), (np.float32, TP.BOOL),
          (np.float32, TP.UINT8), (np.int64, TP.FLOAT), (np.int32, TP.INT8), (np.float16, TP.FLOAT),
          (np.float32, TP.STRING), (np.int32, TP.STRING), (np.bool_, TP.STRING), (np.bool_, TP.FLOAT)]


@pytest.mark.parametrize(("src", "to"), _CASTS)
def test_cast(src: Any, to: int) -> None:
    x = np.array([[0.0, 1.5, -2.25, 100.0], [3.75, -0.5, 7.0, 400.0]], np.float32).astype(src)
    check("Cast", {"x": x}, opset=21, to=to)
    like = np.zeros(1, oh.tensor_dtype_to_np_dtype(to)) if to != TP.STRING else np.array([""], object)
    check("CastLike", {"x": x, "like": C(like)} if to != TP.STRING else {"x": x, "like": like}, opset=21)


def test_cast_narrow_floats() -> None:
    """onnxruntime hands float8 back as raw bytes and cannot return bfloat16: compare bits to ml_dtypes."""
    x = np.array([0.3, -1.7, 1e6, -1e6, np.inf, np.nan, 448.0, 1e-9], np.float32)
    (y,) = run("Cast", {"x": x}, opset=21, to=TP.BFLOAT16)
    assert y.dtype == ml_dtypes.bfloat16 and (y.view(np.uint16) == x.astype(ml_dtypes.bfloat16).view(np.uint16)).all()
    m = single_op_model("Cast", {"x": x}, {"to": TP.FLOAT8E4M3FN}, 21, 1)
    (want,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    (got,) = run("Cast", {"x": x}, opset=21, to=TP.FLOAT8E4M3FN)  # saturating: +-1e6 and +-Inf to +-448
    assert got.dtype == ml_dtypes.float8_e4m3fn and (got.view(np.uint8) == want.view(np.uint8)).all()
    (y,) = run("Cast", {"x": x}, opset=21, to=TP.FLOAT8E5M2)
    assert y.astype(np.float32)[2:5].tolist() == [57344.0, -57344.0, 57344.0] and np.isnan(y.astype(np.float32)[5])
    (y,) = run("Cast", {"x": x}, opset=21, to=TP.FLOAT8E4M3FN, saturate=0)
    assert np.isnan(y.astype(np.float32)[2:6]).all()


def test_cast_special() -> None:
    check("Cast", {"x": np.array([0.1, 1 / 3, 1e20, 1e-5, -0.0, np.nan, np.inf, -np.inf], np.float64)}, opset=21,
          to=TP.STRING)
    check("Cast", {"x": np.array(["1.5", "-INF", "NaN", "1e-3"], object)}, opset=21, to=TP.FLOAT)
    check("Cast", {"x": np.array(["12", "-7"], object)}, opset=21, to=TP.INT64)
    (i4,) = run("Cast", {"x": np.arange(-8, 8, dtype=np.float32)}, opset=21, to=TP.INT4)
    assert i4.dtype == ml_dtypes.int4 and i4.astype(np.int8).tolist() == list(range(-8, 8))
    (e,) = run("Cast", {"x": np.array([0.124, 0.25, 1.1, 3.0, 8.0], np.float32)}, opset=25, to=TP.FLOAT8E8M0)
    assert e.dtype == ml_dtypes.float8_e8m0fnu
    assert e.astype(np.float32).tolist() == [0.125, 0.25, 2.0, 4.0, 8.0]  # round_mode 'up'
    (e,) = run("Cast", {"x": np.array([1.1, 1.5, 3.0], np.float32)}, opset=25, to=TP.FLOAT8E8M0,
               round_mode="nearest")
    assert e.astype(np.float32).tolist() == [1.0, 2.0, 4.0]
    (b,) = run("BitCast", {"x": np.array([1.0, -2.0], np.float32)}, opset=26, to=TP.INT32)
    assert b.dtype == np.int32 and b.tolist() == np.array([1.0, -2.0], np.float32).view(np.int32).tolist()


# ---------------------------------------------------------------------------------------------
# Registration and shape inference on symbolic shapes


def test_kinds_and_macs() -> None:
    assert ir.get_op("Exp").kind is Kind.ELEMWISE and ir.get_op("Add").kind is Kind.BROADCAST
    assert ir.get_op("Gelu").since_version == 20
    assert ir.get_op("Mul").macs is None  # MACs count the multiply-accumulates of Conv/Gemm/MatMul only


def _chain(dims: list[Any]) -> onnx.ModelProto:
    vi = oh.make_tensor_value_info
    nodes = [
        oh.make_node("Add", ["x", "b"], ["s"]),
        oh.make_node("Greater", ["s", "x"], ["g"]),
        oh.make_node("Where", ["g", "s", "x"], ["w"]),
        oh.make_node("Cast", ["w"], ["c"], to=TP.FLOAT16),
        oh.make_node("CastLike", ["c", "x"], ["cl"]),
        oh.make_node("Gelu", ["cl"], ["ge"]),
        oh.make_node("Max", ["ge", "b", "x"], ["mx"]),
        oh.make_node("IsNaN", ["mx"], ["n"]),
        oh.make_node("Clip", ["mx", "", "hi"], ["cp"]),
        oh.make_node("Dropout", ["cp"], ["d", "m"]),
    ]
    g = oh.make_graph(nodes, "g", [vi("x", TP.FLOAT, dims), vi("b", TP.FLOAT, [1, dims[-1]])],
                      [vi(o, 0, None) for o in ("g", "c", "cl", "n", "d", "m")],
                      initializer=[numpy_helper.from_array(np.array(1.0, np.float32), "hi")])
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", 20)], ir_version=9)


def test_infer_symbolic() -> None:
    g = compiler.import_onnx(_chain(["N", None, 4]), infer_shapes=False)
    ir.infer_shapes(g)
    types = {v.name: v.type for v in g.outputs}
    shape = ("N", None, 4)
    assert types["g"] == TensorType(DType.BOOL, shape)
    assert types["c"] == TensorType(DType.FLOAT16, shape)
    assert types["cl"] == TensorType(DType.FLOAT, shape)
    assert types["n"] == TensorType(DType.BOOL, shape)
    assert types["d"] == TensorType(DType.FLOAT, shape)
    assert types["m"] == TensorType(DType.BOOL, shape)


def test_infer_broadcast_symbolic() -> None:
    g = ir.Graph(opset_imports={"": 18})
    a = g.add_input("a", TensorType(DType.INT32, ("N", 1, 5)))
    b = g.add_input("b", TensorType(DType.INT32, ("S", 1)))
    for op, dt in (("Sub", DType.INT32), ("Equal", DType.BOOL), ("Mod", DType.INT32), ("Sum", DType.INT32)):
        node = g.make_node(op, [a, b], {})
        ir.infer_node(node)
        assert node.outputs[0].type == TensorType(dt, ("N", "S", 5)), op
