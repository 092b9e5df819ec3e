"""The CUDA convolution and matrix-product kernels (`codegen.cuda.gemm`) and their rules
(`codegen.cuda.rules_gemm`).

Launchers run on device arrays (Numba's simulator without a GPU: small shapes, small tiles) against
numpy references; rules are applied to nodes of tiny ONNX models after the CPU pipeline's
`specialize` + `prepare`, and their calls executed against onnxruntime or the reference
interpreter. Every kernel is also compiled to PTX for sm_90 in a subprocess without the simulator
(skipped where NVVM is missing), so code that only the simulator accepts cannot slip through.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import cuda
from onnx import TensorProto, helper, numpy_helper

import compiler
import ir
from codegen.cpu.lower import prepare, specialize
from codegen.cuda import gemm, rules_gemm
from codegen.cuda.rules import RULES
from codegen.program import Call, Const, Lit, Scratch, Use

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(1234)
TOL = 1e-4


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _stream() -> Any:
    return cuda.default_stream()


# -- numpy references -----------------------------------------------------------------------------


def _conv_ref(x: np.ndarray, w: np.ndarray, stride: tuple[int, int], pads: tuple[int, int],
              dil: tuple[int, int], group: int, zx: int = 0) -> np.ndarray:
    """Direct NCHW convolution (begin pads = end pads); int64 for integer inputs."""
    integer = x.dtype.kind in "iu"
    acc_t = np.int64 if integer else np.float64
    xc = x.astype(acc_t) - zx
    n, c, h, wd = x.shape
    co, cig, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pads, dil
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), acc_t)
    xp[:, :, ph:ph + h, pw:pw + wd] = xc
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, co, ho, wo), acc_t)
    cog = co // group
    for g in range(group):
        xg = xp[:, g * cig:(g + 1) * cig]
        wg = w[g * cog:(g + 1) * cog].astype(acc_t)
        for r in range(kh):
            for s in range(kw):
                patch = xg[:, :, r * dh:r * dh + sh * (ho - 1) + 1:sh, s * dw:s * dw + sw * (wo - 1) + 1:sw]
                y[:, g * cog:(g + 1) * cog] += np.einsum("nchw,oc->nohw", patch, wg[:, :, r, s])
    return y.astype(np.int32 if integer else np.float32)


def _run_conv(x: np.ndarray, w: np.ndarray, stride: tuple[int, int] = (1, 1), pads: tuple[int, int] = (0, 0),
              dil: tuple[int, int] = (1, 1), group: int = 1, bias: np.ndarray | None = None,
              tile: gemm.Tile | None = None, splits: int = 1, zx: int | None = None) -> np.ndarray:
    """`conv2d` (or `conv_integer` when `zx` is given) on device copies, packing as the rule does."""
    n, c, h, wd = x.shape
    co, cig, kh, kw = w.shape
    ho = (h + 2 * pads[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (wd + 2 * pads[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    tile = tile or gemm.choose_tile(co // group, n * ho * wo, group)
    wt = gemm.pack_conv_weights(w, group, tile)
    ktab = gemm.conv_ktab(cig, h, wd, kh, kw, dil[0], dil[1], wt.shape[1])
    integer = zx is not None
    b = bias if bias is not None else np.zeros(co, np.int32 if integer else np.float32)
    y = cuda.device_array((n, co, ho * wo), np.int32 if integer else np.float32)
    geometry = (c, h, wd, wo, stride[0], stride[1], pads[0], pads[1])
    args = (cuda.to_device(x.reshape(-1)), cuda.to_device(wt), cuda.to_device(ktab), cuda.to_device(b), y)
    if integer:
        gemm.conv_integer(_stream(), *args, zx, geometry, tile, splits)
    else:
        gemm.conv2d(_stream(), *args, geometry, tile, splits)
    return y.copy_to_host().reshape(n, co, ho, wo)


# -- SGEMM ------------------------------------------------------------------------------------


def _matmul(a: np.ndarray, b: np.ndarray, trans_a: bool, trans_b: bool, tile: gemm.Tile) -> np.ndarray:
    """c = op(a) @ op(b) through the launcher; a, b are 3-D in storage layout."""
    m = a.shape[2] if trans_a else a.shape[1]
    n = b.shape[1] if trans_b else b.shape[2]
    c = cuda.device_array((max(a.shape[0], b.shape[0]), m, n), np.float32)
    gemm.matmul(_stream(), cuda.to_device(a), cuda.to_device(b), c, trans_a, trans_b, tile)
    return c.copy_to_host()


@settings(max_examples=10, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(m=st.integers(1, 20), n=st.integers(1, 20), k=st.integers(1, 20), batch=st.sampled_from([(1, 1), (2, 2), (2, 1)]),
       trans_a=st.booleans(), trans_b=st.booleans(), tile=st.sampled_from(gemm.TILES))
def test_sgemm_matches_numpy(m: int, n: int, k: int, batch: tuple[int, int], trans_a: bool, trans_b: bool,
                             tile: gemm.Tile) -> None:
    """Random sizes (not multiples of the tile), batched with a broadcast B, either operand transposed."""
    rng = np.random.default_rng(m * 400 + n * 20 + k)
    a = rng.standard_normal((batch[0], m, k)).astype(np.float32)
    b = rng.standard_normal((batch[1], k, n)).astype(np.float32)
    a_s = np.ascontiguousarray(a.transpose(0, 2, 1)) if trans_a else a
    b_s = np.ascontiguousarray(b.transpose(0, 2, 1)) if trans_b else b
    got = _matmul(a_s, b_s, trans_a, trans_b, tile)
    assert rel_err(got, a @ b) <= TOL


def test_sgemm_several_k_tiles_and_blocks() -> None:
    """K spanning many double-buffered K steps, M and N several blocks with ragged edges."""
    a, b = _f32(1, 21, 37), _f32(1, 37, 11)
    for tile in gemm.TILES:
        assert rel_err(_matmul(a, b, False, False, tile), a @ b) <= TOL


def test_tiles_are_valid_and_choice_adapts_to_shape() -> None:
    for tile in gemm.HW_TILES + gemm.SIM_TILES:
        nt, a_loads, b_loads = gemm._check_tile(tile)
        assert nt <= 256 and a_loads >= 1 and b_loads >= 1
    with pytest.raises(ValueError):
        gemm._check_tile((64, 64, 8, 3, 4))
    big = gemm.choose_tile(4096, 4096)
    small = gemm.choose_tile(8, 8)
    assert big[0] * big[1] >= small[0] * small[1]
    assert small == gemm.TILES[-1]


# -- implicit-GEMM convolution ----------------------------------------------------------------


CONV_CASES = [
    # (N, C, H, W), (Cout, kh, kw), stride, pads, dilations, group
    ((2, 3, 7, 7), (5, 3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 4, 9, 8), (6, 3, 2), (2, 1), (1, 0), (1, 1), 1),
    ((1, 3, 9, 9), (4, 3, 3), (1, 2), (2, 1), (2, 2), 1),
    ((2, 6, 6, 5), (4, 3, 3), (1, 1), (1, 1), (1, 1), 2),
    ((1, 5, 1, 11), (3, 1, 3), (1, 2), (0, 1), (1, 1), 1),  # a 1-D convolution seen as 1 x L
    ((2, 8, 5, 5), (17, 1, 1), (1, 1), (0, 0), (1, 1), 1),  # 1x1, Cout not a multiple of any tile
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"x{c[0]}-w{c[1]}-s{c[2]}-p{c[3]}-d{c[4]}-g{c[5]}")
def test_conv2d_matches_reference(case: tuple[Any, ...]) -> None:
    (n, c, h, w), (co, kh, kw), stride, pads, dil, group = case
    x, wt = _f32(n, c, h, w), _f32(co, c // group, kh, kw)
    got = _run_conv(x, wt, stride, pads, dil, group)
    assert rel_err(got, _conv_ref(x, wt, stride, pads, dil, group)) <= TOL


def test_conv2d_every_tile_split_k_and_bias() -> None:
    """Same answer from every tile, with K split across blocks (atomics) and a bias in the epilogue."""
    x, w = _f32(1, 4, 5, 5), _f32(6, 4, 3, 3)
    bias = _f32(6)
    want = _conv_ref(x, w, (1, 1), (1, 1), (1, 1), 1) + bias.reshape(1, -1, 1, 1)
    for tile in gemm.TILES:
        for splits in (1, 3):
            got = _run_conv(x, w, (1, 1), (1, 1), bias=bias, tile=tile, splits=splits)
            assert rel_err(got, want) <= TOL, (tile, splits)


def test_conv_integer_is_exact() -> None:
    """uint8 x int8 with a zero point: int32 results equal the exact integer convolution (padding = 0)."""
    x = RNG.integers(0, 256, (2, 4, 6, 6), dtype=np.uint8)
    w = RNG.integers(-128, 128, (6, 2, 3, 3), dtype=np.int8)
    for splits in (1, 2):
        got = _run_conv(x, w, (2, 1), (1, 1), (1, 1), group=2, zx=117, splits=splits)
        np.testing.assert_array_equal(got, _conv_ref(x, w, (2, 1), (1, 1), (1, 1), 2, zx=117))


def test_depthwise_float_and_integer() -> None:
    x, w, b = _f32(2, 4, 7, 6), _f32(8, 1, 3, 3), _f32(8)  # channel multiplier 2
    y = cuda.device_array((2, 8, 4, 3), np.float32)
    gemm.depthwise_conv2d(_stream(), cuda.to_device(x), cuda.to_device(w.reshape(8, 3, 3)), cuda.to_device(b), y,
                          2, 2, 1, 1, 1, 1)
    want = _conv_ref(x, w, (2, 2), (1, 1), (1, 1), 4) + b.reshape(1, -1, 1, 1)
    assert rel_err(y.copy_to_host(), want) <= TOL
    xq = RNG.integers(0, 256, (1, 3, 6, 6), dtype=np.uint8)
    wq = RNG.integers(-128, 128, (3, 1, 3, 3), dtype=np.int8)
    yq = cuda.device_array((1, 3, 4, 4), np.int32)
    gemm.depthwise_conv_integer(_stream(), cuda.to_device(xq), cuda.to_device(wq.reshape(3, 3, 3)),
                                cuda.to_device(np.zeros(3, np.int32)), yq, 9, 1, 1, 0, 0, 1, 1)
    np.testing.assert_array_equal(yq.copy_to_host(), _conv_ref(xq, wq, (1, 1), (0, 0), (1, 1), 3, zx=9))


# -- rules: tiny ONNX models through specialize + prepare, calls executed on the device -------


def _model(node: onnx.NodeProto, inputs: dict[str, tuple[int, ...]], out_shape: tuple[int, ...] | None,
           inits: dict[str, np.ndarray], in_type: int = TensorProto.FLOAT, out_type: int = TensorProto.FLOAT,
           opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "t", [helper.make_tensor_value_info(n, in_type, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(node.output[0], out_type, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _calls(model: onnx.ModelProto, feeds: dict[str, np.ndarray], op: str, use_prepare: bool = True) -> list[Call]:
    g = specialize(compiler.import_onnx(model), {k: v.shape for k, v in feeds.items()})
    if use_prepare:
        prepare(g)
    node = next(n for n in g.nodes if n.op_type == op)
    calls = _rule(op)(node)
    assert calls is not None, f"no CUDA rule applied to {op}"
    return calls


def _rule(op: str) -> Any:
    assert RULES[op].__module__ == rules_gemm.__name__
    return RULES[op]


def _execute(call: Call, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run `call`'s launcher with device copies of its operands; its (single) output back on the host."""
    out = call.defines[0]
    dev: dict[int, Any] = {}
    args: list[Any] = []
    for a in call.args:
        if isinstance(a, Use):
            if id(a.value) not in dev:
                if a.value is out:
                    host = np.zeros(tuple(out.shape), out.dtype.np)
                else:
                    host = feeds[a.value.name]
                dev[id(a.value)] = cuda.to_device(np.ascontiguousarray(host))
            arr = dev[id(a.value)]
            args.append(arr.reshape(a.shape) if a.shape is not None else arr)
        elif isinstance(a, Const):
            args.append(cuda.to_device(a.array))
        elif isinstance(a, Scratch):
            args.append(cuda.device_array(a.shape, a.dtype))
        else:
            assert isinstance(a, Lit)
            args.append(a.value)
    assert call.kernel is not None
    launcher = getattr(importlib.import_module(call.kernel.module), call.kernel.name)
    launcher(_stream(), *args)
    return dev[id(out)].copy_to_host().reshape(tuple(out.shape))


CONV_RULE_CASES = [
    # x shape, w shape, attrs, expected kernel
    ((2, 3, 6, 6), (4, 3, 3, 3), {"pads": [1, 1, 1, 1], "strides": [2, 2]}, "conv2d"),
    ((1, 4, 7, 5), (6, 2, 3, 3), {"pads": [0, 1, 2, 1], "dilations": [2, 1], "group": 2}, "conv2d"),  # asymmetric pads
    ((2, 4, 6, 6), (4, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 4}, "depthwise_conv2d"),
    ((2, 3, 10), (5, 3, 3), {"pads": [1, 1], "strides": [2]}, "conv2d"),  # 1-D
    ((1, 4, 16, 16), (5, 4, 1, 1), {}, "matmul"),  # 1x1 on a large image: per-image sgemm
    ((2, 4, 5, 5), (5, 4, 1, 1), {}, "conv2d"),  # 1x1 on a small image: batch folded into N
    ((1, 3, 6, 6), (4, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, "conv2d"),
]


@pytest.mark.parametrize("case", CONV_RULE_CASES, ids=lambda c: f"{c[3]}-x{c[0]}-w{c[1]}")
def test_conv_rule_matches_onnxruntime(case: tuple[Any, ...]) -> None:
    xs, ws, at, kernel = case
    w = _f32(*ws)
    model = _model(helper.make_node("Conv", ["x", "w"], ["y"], **at), {"x": xs}, None, {"w": w})
    feeds = {"x": _f32(*xs)}
    (call,) = _calls(model, feeds, "Conv")
    assert call.kernel is not None and call.kernel.name == kernel, call.kernel
    want = ort_run(model, feeds)[0]
    assert rel_err(_execute(call, feeds), want) <= TOL


def test_conv_rule_adds_a_remaining_bias() -> None:
    """A Conv that still has its bias (prepare not run) adds it in the implicit GEMM's epilogue."""
    w, b = _f32(4, 3, 3, 3), _f32(4)
    model = _model(helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]), {"x": (1, 3, 5, 5)}, None,
                   {"w": w, "b": b})
    feeds = {"x": _f32(1, 3, 5, 5)}
    (call,) = _calls(model, feeds, "Conv", use_prepare=False)
    assert rel_err(_execute(call, feeds), ort_run(model, feeds)[0]) <= TOL


def test_conv_rule_declines_what_it_cannot_run() -> None:
    """A run-time weight stays with the reference, as on the CPU."""
    model = _model(helper.make_node("Conv", ["x", "w"], ["y"]), {"x": (1, 3, 5, 5), "w": (2, 3, 3, 3)}, None, {})
    g = specialize(compiler.import_onnx(model), {"x": (1, 3, 5, 5), "w": (2, 3, 3, 3)})
    assert _rule("Conv")(next(n for n in g.nodes if n.op_type == "Conv")) is None


@pytest.mark.parametrize("group,cout", [(1, 5), (2, 4), (3, 3)])
def test_conv_integer_rule_is_exact(group: int, cout: int) -> None:
    """ConvInteger(x uint8, w int8, x_zero_point) -> int32, exactly the reference interpreter's."""
    c = 3 if group == 3 else 4
    w = RNG.integers(-128, 128, (cout, c // group, 3, 3), dtype=np.int8)
    zx = np.array(131, np.uint8)
    node = helper.make_node("ConvInteger", ["x", "w", "zx"], ["y"], pads=[1, 1, 1, 1], strides=[1, 2], group=group)
    model = _model(node, {"x": (2, c, 5, 6)}, None, {"w": w, "zx": zx}, in_type=TensorProto.UINT8,
                   out_type=TensorProto.INT32)
    feeds = {"x": RNG.integers(0, 256, (2, c, 5, 6), dtype=np.uint8)}
    (call,) = _calls(model, feeds, "ConvInteger")
    assert call.kernel.name == ("depthwise_conv_integer" if group == c else "conv_integer")  # type: ignore[union-attr]
    want = ir.Interpreter().run(compiler.import_onnx(model), feeds)[0]
    np.testing.assert_array_equal(_execute(call, feeds), want)


def test_qdq_conv_becomes_an_exact_integer_conv() -> None:
    """A QDQ-quantized Conv: prepare's ConvInteger is what the CUDA rule takes."""
    w = RNG.integers(-127, 128, (4, 3, 3, 3), dtype=np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw"], ["wd"]),
        helper.make_node("Conv", ["xd", "wd"], ["y"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 3, 5, 5))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(0.05, np.float32), "sx"),
                               numpy_helper.from_array(np.array(128, np.uint8), "zx"),
                               numpy_helper.from_array(w, "wq"),
                               numpy_helper.from_array(np.array(0.01, np.float32), "sw")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    g = specialize(compiler.import_onnx(model), {"x": (1, 3, 5, 5)})
    prepare(g)
    node = next(n for n in g.nodes if n.op_type == "ConvInteger")
    (call,) = _rule("ConvInteger")(node)
    xq = node.inputs[0]
    feeds = {"x": _f32(1, 3, 5, 5)}
    q = ir.Interpreter().run_node(xq.producer, [feeds["x"], np.array(0.05, np.float32), np.array(128, np.uint8)])[0]
    got = _execute(call, {xq.name: q})
    np.testing.assert_array_equal(got, ir.Interpreter().run_node(node, [q, w, np.array(128, np.uint8)])[0])


MATMUL_CASES = [
    ((7, 5), (5, 6), False),
    ((2, 3, 7, 5), (5, 9), True),  # 2-D constant B: one sgemm over all rows
    ((3, 4, 6), (3, 6, 5), False),  # batched, run-time B
    ((3, 4, 6), (1, 6, 5), False),  # B broadcast across the batch
    ((1, 4, 6), (3, 6, 5), True),  # A broadcast, constant B
]


@pytest.mark.parametrize("case", MATMUL_CASES, ids=lambda c: f"{c[0]}x{c[1]}{'-const' if c[2] else ''}")
def test_matmul_rule_matches_onnxruntime(case: tuple[Any, ...]) -> None:
    sa, sb, const_b = case
    b = _f32(*sb)
    inputs = {"a": sa} if const_b else {"a": sa, "b": sb}
    model = _model(helper.make_node("MatMul", ["a", "b"], ["y"]), inputs, None, {"b": b} if const_b else {})
    feeds = {"a": _f32(*sa)} | ({} if const_b else {"b": b})
    (call,) = _calls(model, feeds, "MatMul")
    assert rel_err(_execute(call, feeds), ort_run(model, feeds)[0]) <= TOL


@pytest.mark.parametrize("trans_a,trans_b,const_b,alpha", [(0, 1, True, 0.5), (0, 0, True, 1.0), (1, 1, False, 1.0),
                                                           (0, 1, False, 1.0)])
def test_gemm_rule_matches_onnxruntime(trans_a: int, trans_b: int, const_b: bool, alpha: float) -> None:
    m, k, n = 5, 7, 6
    sa = (k, m) if trans_a else (m, k)
    sb = (n, k) if trans_b else (k, n)
    b = _f32(*sb)
    node = helper.make_node("Gemm", ["a", "b"], ["y"], transA=trans_a, transB=trans_b, alpha=alpha)
    model = _model(node, {"a": sa} | ({} if const_b else {"b": sb}), None, {"b": b} if const_b else {})
    feeds = {"a": _f32(*sa)} | ({} if const_b else {"b": b})
    (call,) = _calls(model, feeds, "Gemm")
    assert rel_err(_execute(call, feeds), ort_run(model, feeds)[0]) <= TOL


def test_gemm_with_c_is_split_by_prepare() -> None:
    """prepare turns Gemm(a, b, c) into Add(Gemm(a, b), beta * c): the rule sees the core."""
    b, c = _f32(4, 3), _f32(3)
    model = _model(helper.make_node("Gemm", ["a", "b", "c"], ["y"], beta=2.0), {"a": (2, 4)}, None, {"b": b, "c": c})
    feeds = {"a": _f32(2, 4)}
    (call,) = _calls(model, feeds, "Gemm")
    assert rel_err(_execute(call, feeds) + 2.0 * c, ort_run(model, feeds)[0]) <= TOL


CONVT_CASES = [
    ((1, 3, 4, 4), (3, 2, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, True),
    ((2, 4, 3, 5), (4, 3, 2, 3), {"strides": [2, 1], "dilations": [1, 2], "group": 2, "pads": [0, 1, 1, 0]}, False),
    ((1, 4, 3, 3), (4, 1, 3, 3), {"group": 4, "strides": [2, 2]}, True),  # depthwise
    ((2, 3, 5), (3, 2, 4), {"strides": [3], "pads": [1, 2]}, True),  # 1-D
    ((1, 2, 3, 3), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [6, 6], "auto_pad": "SAME_UPPER"}, False),
]


@pytest.mark.parametrize("case", CONVT_CASES, ids=lambda c: f"x{c[0]}-w{c[1]}")
def test_conv_transpose_rule_matches_onnxruntime(case: tuple[Any, ...]) -> None:
    xs, ws, at, with_bias = case
    w = _f32(*ws)
    inits = {"w": w} | ({"b": _f32(ws[1] * at.get("group", 1))} if with_bias else {})
    node = helper.make_node("ConvTranspose", ["x", "w"] + (["b"] if with_bias else []), ["y"], **at)
    model = _model(node, {"x": xs}, None, inits)
    feeds = {"x": _f32(*xs)}
    (call,) = _calls(model, feeds, "ConvTranspose")
    assert rel_err(_execute(call, feeds), ort_run(model, feeds)[0]) <= TOL


# -- end to end through the CUDA target, when the framework is there ------------------------


def test_small_cnn_end_to_end_on_the_cuda_target() -> None:
    """Conv (grouped, strided, 1x1), depthwise, Gemm through compiler.compile(target="cuda")."""
    try:
        from codegen.cuda import CudaModel  # noqa: F401
    except ImportError:
        pytest.skip("the CUDA target is not available")
    w1, b1 = _f32(8, 3, 3, 3), _f32(8)
    w2 = _f32(8, 1, 3, 3)
    w3 = _f32(6, 8, 1, 1)
    wf = _f32(6 * 3 * 3, 5)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("Conv", ["c2", "w3"], ["c3"]),
        helper.make_node("Flatten", ["c3"], ["f"]),
        helper.make_node("Gemm", ["f", "wf"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ("N", 3, 6, 6))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in
                               {"w1": w1, "b1": b1, "w2": w2, "w3": w3, "wf": wf}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    m = compiler.compile(model, target="cuda")
    feeds = {"x": _f32(2, 3, 6, 6)}
    got = m.run(feeds)
    got = got["y"] if isinstance(got, dict) else got[0]
    assert rel_err(got, ort_run(model, feeds)[0]) <= TOL


# -- real-hardware compilation ----------------------------------------------------------------


PTX_SCRIPT = textwrap.dedent("""
    import sys
    from numba import cuda
    from codegen.cuda import gemm
    assert not gemm.launch.SIMULATOR
    I = "int64"
    try:
        cuda.compile_ptx(gemm._fill3.py_func, "void(float32[:, :, ::1], float32)", cc=(9, 0))
    except Exception as e:  # no NVVM / libdevice on this machine
        if any(s in str(e).lower() for s in ("nvvm", "libdevice", "cannot find", "not found", "no such file")):
            print("NO-NVVM", e)
            sys.exit(0)
        raise
    jobs = []
    for i, tile in enumerate(gemm.HW_TILES):  # every tile; the transposed loads and int8 on a few
        for ta, tb in [(False, False)] + ([(True, False), (False, True), (True, True)] if i == 0 else []):
            jobs.append((gemm.sgemm_kernel(tile, ta, tb), "void(float32[:, :, ::1], float32[:, :, ::1], float32[:, :, ::1])"))
        for integer in (False, True) if i in (0, len(gemm.HW_TILES) - 1) else (False,):
            xt, wt, at = ("uint8", "int8", "int32") if integer else ("float32", "float32", "float32")
            for epi in ("", "add_relu") if not integer else ("",):
                jobs.append((gemm.conv_kernel(tile, integer, epi), f"void({xt}[::1], {wt}[:, :, ::1], int32[:, ::1], "
                             f"{at}[::1], {at}[:, :, ::1], {at}[:, :, ::1], {at}, " + ", ".join([I] * 11) + ")"))
    for integer in (False, True):
        xt, wt, at = ("uint8", "int8", "int32") if integer else ("float32", "float32", "float32")
        jobs.append((gemm.depthwise_kernel(integer), f"void({xt}[:, :, :, ::1], {wt}[:, :, ::1], {at}[::1], "
                     f"{at}[:, :, :, ::1], {at}, " + ", ".join([I] * 6) + ")"))
    jobs.append((gemm._conv_transpose_kernel, "void(float32[:, :, :, ::1], float32[:, :, :, ::1], float32[::1], "
                 "float32[:, :, :, ::1], " + ", ".join([I] * 7) + ")"))
    jobs.append((gemm._fill3, "void(int32[:, :, ::1], int32)"))
    spills = []
    for kernel, sig in jobs:
        try:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(9, 0))
        except Exception as e:  # a toolkit library (NVRTC, libdevice) missing for this one: skip
            if any(s in str(e).lower() for s in ("nvvm", "nvrtc", "libdevice")) and any(
                    s in str(e).lower() for s in ("cannot find", "not found", "no such file")):
                print("NO-NVVM", e)
                sys.exit(0)
            raise
        assert ".entry" in ptx
        if "ld.local" in ptx or "st.local" in ptx:
            spills.append(sig)
    print("COMPILED", len(jobs), "LOCAL", len(spills))
    for s in spills:
        print("local memory:", s)
""")


def test_every_kernel_compiles_to_ptx_for_sm90() -> None:
    """Real (non-simulated) compilation of every kernel and tile configuration; register-blocked
    kernels must keep their accumulators in registers (no local memory)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", PTX_SCRIPT], check=False, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if proc.returncode == 0 and "NO-NVVM" in proc.stdout:
        pytest.skip("NVVM is not installed: " + proc.stdout.strip()[:200])
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "COMPILED" in proc.stdout, proc.stdout
    assert "local memory:" not in proc.stdout, proc.stdout
