"""Generated elementwise kernels on both native targets, and the vectorizable float32 math they use.

The CPU's kernels must compute what the reference does and also stay vector code: an in-place call
(the planner writes an output over a dying input) runs a separate entry point that writes through
the input's array, because two overlapping arrays send LLVM's vector loop to its scalar fallback.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from onnx import TensorProto, helper

import compiler
import ir
from codegen.cpu import vmath
from codegen.cpu.lower import lower
from codegen.cpu.runtime import import_generated, write_source
from codegen.program import Const

ELEMENTWISE = ["Abs", "Exp", "Log", "Sqrt", "Floor", "Ceil", "Tanh", "Sin", "Cos", "Erf", "Round", "Sign",
               "Softplus", "Neg", "Reciprocal", "Relu", "Sigmoid", "Softsign", "HardSwish", "Gelu"]


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:  # type: ignore[assignment]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                             opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_every_elementwise_op_matches_the_reference_on_special_values(target: str) -> None:
    """One generated kernel per op, on values that catch the usual slips: NaN, +-inf, halves
    (rounding to even), negatives under Log and Sqrt, huge magnitudes (Floor past 2**23), and
    Exp's overflow, underflow and subnormal range."""
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5, 1.5, 2.5, -0.5, -2.5, 1e-3, -7.25, 3.0,
                        9e6, -9e6, 1e30, 20.0, -20.0, 0.75, 100.0, 88.7, 88.8, -87.0, -95.0, -104.5],
                       np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(special)])
    nodes, outs = [], []
    for op in ELEMENTWISE:
        nodes.append(helper.make_node(op, ["x"], [op]))
        outs.append(helper.make_tensor_value_info(op, TensorProto.FLOAT, [len(special)]))
    model = _model(nodes, [x], outs, opset=20)
    got = compiler.compile(model, target=target, pipeline="dce").run({"x": special})
    want = ir.Interpreter().run(compiler.import_onnx(model), {"x": special})
    for op, w in zip(ELEMENTWISE, want):
        g = got[op]
        finite = np.isfinite(w)
        assert np.array_equal(np.isnan(g), np.isnan(w)), (op, g, w)
        assert np.array_equal(g[np.isinf(w)], w[np.isinf(w)]), (op, g, w)
        assert np.allclose(g[finite], w[finite], rtol=2e-6, atol=1e-6), (op, g, w)


# -- vmath ------------------------------------------------------------------------------------


@njit
def _exp_all(x: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - jitted
    for i in range(x.shape[0]):
        y[i] = vmath.exp(x[i])


@njit
def _exp_neg_all(x: np.ndarray, y: np.ndarray) -> None:  # pragma: no cover - jitted
    for i in range(x.shape[0]):
        y[i] = vmath.exp_neg(x[i])


TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32
ULP = float(np.finfo(np.float32).eps)


def _check_exp(x: np.ndarray, got: np.ndarray, normal_ulps: float) -> None:
    want = np.exp(x.astype(np.float64))
    normal = (want >= TINY) & (want <= float(np.finfo(np.float32).max))
    assert np.all(np.abs(got[normal] - want[normal]) <= normal_ulps * ULP * want[normal]), x[normal]
    low = want < TINY
    assert np.all(np.abs(got[low] - want[low]) <= TINY), x[low]  # 0 or a subnormal near the truth


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-110, 95, width=32), min_size=1, max_size=64))
def test_exp_is_within_two_ulps_over_the_whole_range(xs: list[float]) -> None:
    x = np.array(xs, np.float32)
    y = np.empty_like(x)
    _exp_all(x, y)
    _check_exp(x, y, normal_ulps=2)
    assert np.all(np.isinf(y[np.exp(x.astype(np.float64)) > np.finfo(np.float32).max]))


def test_exp_special_values_and_a_dense_sweep() -> None:
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 88.72, 88.73, -103.97, -104.0, -1e30, 1e30], np.float32)
    y = np.empty_like(x)
    _exp_all(x, y)
    with np.errstate(over="ignore"):
        want = np.exp(x)
    assert np.isnan(y[0]) and y[1] == np.inf and y[2] == 0.0 and y[3] == 1.0 and y[4] == 1.0
    assert np.isfinite(y[5]) and y[6] == np.inf and y[9] == 0.0 and y[10] == np.inf
    assert abs(y[7] - want[7]) <= 2.0 ** -149 and y[8] == want[8]
    sweep = np.linspace(-100, 88, 400_001, dtype=np.float32)
    out = np.empty_like(sweep)
    _exp_all(sweep, out)
    _check_exp(sweep, out, normal_ulps=2)


def test_exp_neg_handles_softmax_shifts() -> None:
    """exp_neg(d) for d <= 0: within 2 ulps, exactly 0 far below, NaN through (x - max with NaN or inf)."""
    d = -np.abs(np.linspace(0, 120, 200_001, dtype=np.float32))
    y = np.empty_like(d)
    _exp_neg_all(d, y)
    _check_exp(d, y, normal_ulps=2)
    assert np.all(y[d <= -88.0] == 0.0)
    s = np.array([np.nan, -np.inf, -0.0], np.float32)
    ys = np.empty_like(s)
    _exp_neg_all(s, ys)
    assert np.isnan(ys[0]) and ys[1] == 0.0 and ys[2] == 1.0


# -- in place ---------------------------------------------------------------------------------


def _gelu_chain(bias_shape: tuple[int, ...]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """MatMul, Add+Erf-GELU+Exp, MatMul: the elementwise run may write over the first MatMul's
    output. A bias per column makes a 2-D loop nest, a scalar one a flat loop cut into chunks."""
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.standard_normal((16, 96)).astype(np.float32), "w")
    b = onnx.numpy_helper.from_array(rng.standard_normal(bias_shape).astype(np.float32), "b")
    w2 = onnx.numpy_helper.from_array(rng.standard_normal((96, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Gelu", ["a"], ["g"]), helper.make_node("Exp", ["g"], ["e"]),
             helper.make_node("MatMul", ["e", "w2"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [80, 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [80, 8])], [w, b, w2], opset=20)
    return model, {"x": rng.standard_normal((80, 16)).astype(np.float32) * 0.3}


BIASES = [pytest.param((96,), id="2d"), pytest.param((), id="flat")]


@pytest.mark.parametrize("bias_shape", BIASES)
def test_in_place_elementwise_calls_their_write_through_entry_and_stay_exact(bias_shape: tuple[int, ...]) -> None:
    model, feeds = _gelu_chain(bias_shape)
    program = lower(compiler.import_onnx(model), {"x": (80, 16)})
    through = [c for c in program.calls if c.kernel is not None and c.kernel.name.endswith("_inplace")]
    assert through, program.format()
    for c in through:
        (out, src), = c.inplace
        assert program.storage[id(out)] == program.storage[id(src)]
        assert all(not (hasattr(a, "value") and a.value is out) for a in c.args)  # no output argument
    got = compiler.compile(model, target="cpu").run(feeds)["y"]
    want = ort_run(model, feeds)[0]
    assert rel_err(got, want) <= 1e-5


def _vector_ops(asm: str) -> int:
    """Packed single-precision arithmetic instructions (SSE/AVX/AVX-512) in x86 assembly."""
    return len(re.findall(r"\bv?(?:add|sub|mul|div|fmadd\d*|fnmadd\d*|max|min)ps\b", asm))


@pytest.mark.parametrize("bias_shape", BIASES)
def test_in_place_entry_is_vector_code(bias_shape: tuple[int, ...]) -> None:
    """The write-through entry of a generated kernel compiles to packed arithmetic, as the
    two-array entry does: the regression this guards cost 6x on the recognizer's GELU."""
    model, _ = _gelu_chain(bias_shape)
    program = lower(compiler.import_onnx(model), {"x": (80, 16)})
    call = next(c for c in program.calls if c.kernel is not None and c.kernel.name.endswith("_inplace"))
    write_source(call.kernel.module, call.kernel.source)
    entry = getattr(import_generated(call.kernel.module), call.kernel.name)
    fresh = njit(error_model="numpy")(entry.py_func)  # type: ignore[attr-defined]  # (the cached one can't be inspected)
    rng = np.random.default_rng(1)
    args = [a.array if isinstance(a, Const) else rng.standard_normal(a.shape or a.value.shape).astype(np.float32)
            for a in call.args]
    fresh(*args)
    assert _vector_ops(next(iter(fresh.inspect_asm().values()))) >= 4
