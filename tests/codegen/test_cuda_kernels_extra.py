"""CUDA kernels and rules for pooling, softmax, normalization, reductions, data movement, Pad and Resize.

Three layers, from the bottom:

* every `@cuda.jit` kernel compiles to PTX for real hardware (sm_90) in a process without the
  simulator (skipped where NVVM is missing);
* launchers run directly (on the GPU when there is one, else on Numba's CUDA simulator, see
  tests/conftest.py) against numpy, covering what the rule tests do not reach: NaN propagation,
  block striding over more rows than blocks, in-place LayerNorm, every Pad mode, bad Gather indices;
* rules: a one-op ONNX model is imported, specialized and prepared as the lowering does, the CUDA
  rule picks the calls for the node, and their launchers run on device copies of the arguments; the
  output must match onnxruntime (or the reference interpreter) within 1e-4 relative. The cases
  mirror tests/codegen/test_kernels_extra.py (the CPU versions), with smaller shapes where the
  simulator would be slow.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import ROOT, In, ort_run, rel_err
from conftest import one_op_model as model
from numba import cuda

import compiler
from codegen.cpu.lower import prepare, specialize
from codegen.cuda import kernels_extra as kx
from codegen.cuda import rules_extra  # registers the rules
from codegen.cuda.rules import RULES
from codegen.program import Call, Const, Lit, Scratch, Use
from ir import Interpreter
from ir.ops import constant_value

RNG = np.random.default_rng(0)
TOL = 1e-4


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# -- PTX for real hardware --------------------------------------------------------------------

_PTX_SCRIPT = textwrap.dedent("""
    import sys
    from types import SimpleNamespace
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher
    # Device functions are compiled for the current device's compute capability; there is no device
    # here, so say it is an H100 (sm_90), the same target compile_ptx is given.
    dispatcher.get_current_device = lambda: SimpleNamespace(compute_capability=(9, 0))
    from codegen.cuda import kernels_extra as ke
    kernels = {n for n, v in vars(ke).items()
               if isinstance(v, dispatcher.CUDADispatcher) and not v.targetoptions.get("device")}
    missing = kernels - set(ke.SIGNATURES)
    if missing:
        print("kernels without SIGNATURES:", sorted(missing))
        sys.exit(1)
    for name, sigs in ke.SIGNATURES.items():
        for sig in sigs:
            try:
                ptx, _ = cuda.compile_ptx(getattr(ke, name).py_func, sig, cc=(9, 0))
            except Exception as e:
                text = f"{type(e).__name__}: {e}"
                missing = ("cannot be found", "not found", "No such file", "DynamicLibNotFound")
                if any(w in text for w in ("NVVM", "nvvm", "nvrtc", "NVRTC")) and any(w in text for w in missing):
                    print("NO-NVVM", text)
                    sys.exit(3)
                print("FAIL", name, sig, text)
                sys.exit(1)
            assert ".entry" in ptx, name
            print("ok", name)
""")


def test_every_kernel_compiles_to_ptx() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    if r.returncode == 3:
        pytest.skip("no NVVM here: " + r.stdout.strip()[-300:])
    assert r.returncode == 0, r.stdout + r.stderr


# -- launchers against numpy ------------------------------------------------------------------


def launch(fn: Any, *args: Any) -> list[np.ndarray]:
    """Run `fn(stream, *args)` with numpy arrays copied to the device; returns every array argument
    copied back (in order), after synchronizing the stream."""
    stream = cuda.stream()
    dev = [cuda.to_device(np.ascontiguousarray(a), stream=stream) if isinstance(a, np.ndarray) else a for a in args]
    fn(stream, *dev)
    stream.synchronize()
    return [d.copy_to_host() for d, a in zip(dev, args) if isinstance(a, np.ndarray)]


@pytest.mark.parametrize("op", [0, 1, 2, 3])
@pytest.mark.parametrize("shape", [(5, 70, 1), (3, 9, 7)])  # a block per row (5 rows > blocks) / a thread per lane
def test_reduce_launcher(op: int, shape: tuple[int, int, int]) -> None:
    x = rand(*shape)
    x[1, 3, 0] = np.nan
    y = np.zeros((shape[0], shape[2]), np.float32)
    got = launch(kx.reduce, x, y, op)[1]
    want = [np.sum, np.mean, np.max, np.min][op](x.astype(np.float64), axis=1)
    assert np.isnan(got[1, 0]) and np.isnan(want[1, 0])
    ok = ~np.isnan(want)
    assert rel_err(got[ok], want[ok]) <= TOL


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", [(5, 37, 1), (2, 6, 5)])
def test_softmax_launcher(log: bool, shape: tuple[int, int, int]) -> None:
    x = rand(*shape) * 4
    x[:, 1::3] = -np.inf  # an attention mask: exact zeros (or -inf)
    y = np.zeros_like(x)
    got = launch(kx.softmax, x, y, log)[1]
    d = x.astype(np.float64) - x.max(axis=1, keepdims=True)
    want = d - np.log(np.exp(d).sum(axis=1, keepdims=True)) if log else np.exp(d) / np.exp(d).sum(axis=1, keepdims=True)
    fin = np.isfinite(want)
    assert np.array_equal(np.isfinite(got), fin)
    assert rel_err(got[fin], want[fin]) <= TOL


def test_layernorm_launcher_in_place() -> None:
    """The CPU rule lets the planner run LayerNorm in place (y is x): the kernel must allow it."""
    x = rand(5, 300) * 3 + 1
    scale, bias = rand(300), rand(300)
    stream = cuda.stream()
    dx = cuda.to_device(x, stream=stream)
    mean, inv = cuda.device_array(5, np.float32, stream=stream), cuda.device_array(5, np.float32, stream=stream)
    kx.layernorm(stream, dx, cuda.to_device(scale), cuda.to_device(bias), dx, mean, inv, 1e-5)
    stream.synchronize()
    xd = x.astype(np.float64)
    mu = xd.mean(1, keepdims=True)
    istd = 1 / np.sqrt(((xd - mu) ** 2).mean(1, keepdims=True) + 1e-5)
    assert rel_err(dx.copy_to_host(), (xd - mu) * istd * scale + bias) <= TOL
    assert rel_err(mean.copy_to_host(), mu[:, 0]) <= TOL and rel_err(inv.copy_to_host(), istd[:, 0]) <= TOL


def test_global_pool_launchers() -> None:
    x = rand(6, 45)
    x[4, 7] = np.nan
    (_, avg) = launch(kx.global_avgpool, x, np.zeros(6, np.float32))
    (_, mx) = launch(kx.global_maxpool, x, np.zeros(6, np.float32))
    assert np.isnan(avg[4]) and np.isnan(mx[4])
    assert rel_err(np.delete(avg, 4), np.delete(x.mean(1), 4)) <= TOL
    assert np.array_equal(np.delete(mx, 4), np.delete(x.max(1), 4))


@pytest.mark.parametrize("shape", [(2, 13, 19), (1, 8, 8), (3, 1, 5)])
def test_transpose2d_launcher(shape: tuple[int, int, int]) -> None:
    x = rand(*shape)
    (_, y) = launch(kx.transpose2d, x, np.zeros((shape[0], shape[2], shape[1]), np.float32))
    assert np.array_equal(y, x.transpose(0, 2, 1))


def test_strided_copy_launcher_reversed_and_broadcast() -> None:
    x = rand(4, 5)
    # y[i, j, k] = x[3 - i, k] for a [4, 2, 5] box: a reversed axis, a broadcast one, a unit one
    dims, xs = np.array([4, 2, 5]), np.array([-5, 0, 1])
    y = launch(kx.strided_copy, x.reshape(-1), np.zeros(40, np.float32), dims, xs, np.array([10, 5, 1]), 15, 0)[1]
    assert np.array_equal(y.reshape(4, 2, 5), np.broadcast_to(x[::-1, None, :], (4, 2, 5)))


def test_concat_split_launchers() -> None:
    a, b = rand(3, 4), rand(3, 6)
    y = launch(kx.concat, np.zeros((3, 10), np.float32), a, b)[0]
    assert np.array_equal(y, np.concatenate([a, b], 1))
    _, p, q = launch(kx.split, y, np.zeros((3, 4), np.float32), np.zeros((3, 6), np.float32))
    assert np.array_equal(p, a) and np.array_equal(q, b)


@pytest.mark.parametrize("dtype", [np.int64, np.int32])
def test_gather_launcher_bad_index_is_nan(dtype: type) -> None:
    x = rand(2, 5, 3)
    idx = np.array([4, -1, 7, -6, 0], dtype)
    y = launch(kx.gather, x, idx, np.zeros((2, 5, 3), np.float32))[2]
    assert np.array_equal(y[:, [0, 1, 4]], x[:, [4, 4, 0]])
    assert np.isnan(y[:, [2, 3]]).all()


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_launcher_large_pads(mode: str) -> None:
    """Pads longer than the axis (reflect repeats, as numpy's does) and a cropped axis."""
    x = rand(3, 4)
    kept = x[:, 1:]  # pads (5, 2) on axis 0; (-1, 6) on axis 1: crop one column, then pad 6
    want = np.pad(kept, [(5, 2), (0, 6)], mode=mode, **({"constant_values": 1.5} if mode == "constant" else {}))
    dims = np.array(want.shape)
    y = launch(kx.pad, x.reshape(-1), np.zeros(want.size, np.float32), np.array([1.5], np.float32), dims,
                    np.array([5, 0]), np.array([3, 3]), np.array([4, 1]), 1, rules_extra.PAD_MODES[mode])[1]
    assert np.array_equal(y.reshape(want.shape), want)


# -- rules ------------------------------------------------------------------------------------


def lower_node(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> tuple[Any, list[Call] | None]:
    """(graph, the CUDA rule's calls) for the model's one node, specialized and prepared as the lowering does."""
    g = specialize(compiler.import_onnx(m), {k: v.shape for k, v in feeds.items()})
    prepare(g)
    (node,) = [n for n in g.nodes if n.op_type == m.graph.node[0].op_type]
    return g, RULES[node.op_type](node)


def run_calls(g: Any, calls: list[Call], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Execute the calls' launchers on device copies of their arguments; the graph's outputs."""
    host: dict[int, np.ndarray] = {id(v): feeds[v.name] for v in g.inputs if v.name in feeds}
    stream = cuda.stream()
    for call in calls:
        if call.alias:
            for v in call.defines:
                src = call.alias[id(v)]
                host[id(v)] = host[id(src)].reshape(v.shape)
            continue
        assert call.kernel is not None, "a rule returned a fallback call"
        args: list[Any] = []
        outs: list[tuple[Any, Any]] = []
        for a in call.args:
            if isinstance(a, Use):
                v = a.value
                if id(v) in host:
                    arr = host[id(v)]
                elif constant_value(v) is not None:
                    arr = np.asarray(constant_value(v))
                else:
                    assert any(v is d for d in call.defines), v.name
                    arr = np.full(v.shape, np.nan, v.dtype.np)
                d = cuda.to_device(np.ascontiguousarray(arr).reshape(a.shape or arr.shape), stream=stream)
                if any(v is o for o in call.defines):
                    outs.append((v, d))
                args.append(d)
            elif isinstance(a, Const):
                args.append(cuda.to_device(a.array, stream=stream))
            elif isinstance(a, Scratch):
                args.append(cuda.device_array(a.shape, a.dtype, stream=stream))
            else:
                assert isinstance(a, Lit)
                args.append(a.value)
        launcher = getattr(importlib.import_module(call.kernel.module), call.kernel.name)
        launcher(stream, *args)
        stream.synchronize()
        for v, d in outs:
            host[id(v)] = d.copy_to_host().reshape(v.shape)
    return [host[id(v)] for v in g.outputs]


def check(m: onnx.ModelProto, feeds: dict[str, np.ndarray], kernel: str | None = None,
          oracle: str = "ort") -> list[Call]:
    """The CUDA rule's calls for the one node match onnxruntime (or the reference) within 1e-4."""
    g, calls = lower_node(m, feeds)
    assert calls is not None, "the CUDA rule declined"
    got = run_calls(g, calls, feeds)
    want = ort_run(m, feeds) if oracle == "ort" else Interpreter().run(compiler.import_onnx(m), feeds)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
        assert rel_err(a, b) <= TOL, rel_err(a, b)
    if kernel is not None:
        assert [c.kernel.name if c.kernel else "view" for c in calls] == [kernel]
    return calls


@pytest.mark.parametrize("op,shape,axis,opset", [
    ("Softmax", (3, 10), -1, 13),
    ("Softmax", (4, 33), -1, 13),          # -inf entries (an attention mask) give exact zeros
    ("LogSoftmax", (2, 3, 4, 5), 1, 13),   # per-axis with a strided inner axis
    ("Softmax", (2, 3, 4, 5), 1, 11),      # coerced to 2-D at axis 1
    ("LogSoftmax", (2, 3, 4), 2, 11),
    ("Softmax", (6, 300), 1, 13),          # more rows than blocks, longer than a block
])
def test_softmax(op: str, shape: tuple[int, ...], axis: int, opset: int) -> None:
    x = rand(*shape) * 4
    if shape == (4, 33):
        x[:, 1::3] = -np.inf
    check(*model(op, [In(x)], {"axis": axis}, opset), kernel="softmax")


@pytest.mark.parametrize("shape,axis,bias,const_scale", [
    ((2, 5, 16), -1, True, True),
    ((3, 4, 6), 1, False, True),
    ((4, 32), -1, True, False),
])
def test_layernorm(shape: tuple[int, ...], axis: int, bias: bool, const_scale: bool) -> None:
    x = rand(*shape) * 3 + 1
    tail = shape[axis:]
    scale = rand(*tail)
    inputs: list[Any] = [In(x), scale if const_scale else In(scale)]
    if bias:
        inputs.append(rand(*tail))
    check(*model("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-3}), kernel="layernorm")


def test_layernorm_statistics_outputs() -> None:
    x = rand(3, 2, 8) + 2
    check(*model("LayerNormalization", [In(x), rand(8), rand(8)], {"axis": -1}, outputs=3), kernel="layernorm")


@pytest.mark.parametrize("op,shape,axes,keepdims,opset,as_input", [
    ("ReduceMean", (2, 3, 4, 5), [2, 3], 1, 13, False),
    ("ReduceSum", (2, 3, 4, 5), [1], 0, 13, True),
    ("ReduceMax", (2, 3, 40), [-1], 1, 18, True),
    ("ReduceMin", (3, 4, 5), [0, 1], 0, 13, False),
    ("ReduceMean", (2, 1, 3, 4), [0, 2], 1, 18, True),  # contiguous once the size-1 dim is dropped
    ("ReduceSum", (3, 5), None, 0, 13, False),           # all axes
    ("ReduceMax", (3, 20, 30), [1], 0, 13, False),       # strided axis
])
def test_reduce(op: str, shape: tuple[int, ...], axes: list[int] | None, keepdims: int, opset: int,
                as_input: bool) -> None:
    x = rand(*shape)
    attrs: dict[str, Any] = {"keepdims": keepdims}
    inputs: list[Any] = [In(x)]
    if axes is not None:
        if as_input:
            inputs.append(np.array(axes, np.int64))
        else:
            attrs["axes"] = axes
    check(*model(op, inputs, attrs, opset), kernel="reduce")


def test_reduce_noop_and_non_contiguous_axes() -> None:
    x = rand(2, 3, 4)
    check(*model("ReduceSum", [In(x)], {"noop_with_empty_axes": 1}, 13))
    assert lower_node(*model("ReduceMean", [In(x)], {"axes": [0, 2]}, 13))[1] is None  # falls back


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pool(op: str) -> None:
    check(*model(op, [In(rand(2, 3, 5, 7))]), kernel=op.replace("Global", "global_").replace("AveragePool", "avgpool")
          .replace("MaxPool", "maxpool"))


@pytest.mark.parametrize("xs,attrs", [
    ((1, 2, 7, 9), {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((2, 3, 8, 8), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((1, 2, 9, 10), {"kernel_shape": [3, 2], "dilations": [2, 1], "ceil_mode": 1, "strides": [2, 3]}),
    ((1, 3, 11), {"kernel_shape": [3], "strides": [2], "auto_pad": "SAME_UPPER"}),  # 1-D
])
def test_maxpool(xs: tuple[int, ...], attrs: dict[str, Any]) -> None:
    check(*model("MaxPool", [In(rand(*xs))], attrs, 13), kernel="maxpool2d")


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "count_include_pad": 1},
    {"kernel_shape": [2, 3], "strides": [1, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER"},
])
def test_avgpool(attrs: dict[str, Any]) -> None:
    check(*model("AveragePool", [In(rand(1, 2, 7, 9))], attrs, 13), kernel="avgpool2d")


def test_pool_fallbacks() -> None:
    """As on the CPU: used MaxPool indices and dilated AveragePool are left to the reference."""
    assert lower_node(*model("MaxPool", [In(rand(1, 1, 4, 4))], {"kernel_shape": [2, 2]}, 13, outputs=2))[1] is None
    assert lower_node(*model("AveragePool", [In(rand(1, 1, 6, 6))], {"kernel_shape": [2, 2], "dilations": [2, 2]},
                             19))[1] is None


@pytest.mark.parametrize("shape,perm,kernel", [
    ((2, 3, 4), (0, 2, 1), "transpose2d"),      # batched 2-D: tiled
    ((37, 45), None, "transpose2d"),            # default perm reverses: tiled
    ((2, 3, 4, 5), (0, 2, 1, 3), "strided_copy"),  # rows stay contiguous
    ((2, 3, 4, 5), (3, 1, 0, 2), "strided_copy"),
    ((1, 3, 1, 4), (0, 2, 1, 3), "view"),       # only size-1 dims move: a view
])
def test_transpose(shape: tuple[int, ...], perm: tuple[int, ...] | None, kernel: str) -> None:
    check(*model("Transpose", [In(rand(*shape))], {} if perm is None else {"perm": list(perm)}), kernel=kernel)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis: int) -> None:
    a, b, c = rand(2, 3, 4), rand(2, 3, 4), rand(2, 3, 4)
    check(*model("Concat", [In(a), b, In(c)], {"axis": axis}), kernel="concat")


@pytest.mark.parametrize("opset,inputs,attrs,outputs", [
    (13, [np.array([2, 3, 1], np.int64)], {"axis": 1}, 3),
    (18, [], {"axis": -1, "num_outputs": 3}, 3),
    (11, [], {"axis": 0, "split": [1, 3]}, 2),
])
def test_split(opset: int, inputs: list[Any], attrs: dict[str, Any], outputs: int) -> None:
    check(*model("Split", [In(rand(4, 6, 7)), *inputs], attrs, opset, outputs=outputs), kernel="split")


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [-1], [1], None),
    ([0, 1], [4, 100], [0, 2], [2, 1]),
    ([-1], [-100], [2], [-1]),             # reversed
    ([1, 0, 2], [3, 2, 5], [0, 1, 2], None),
    ([0], [3], [2], [3]),
])
def test_slice(starts: list[int], ends: list[int], axes: list[int], steps: list[int] | None) -> None:
    ins: list[Any] = [In(rand(4, 3, 6)), np.array(starts, np.int64), np.array(ends, np.int64), np.array(axes, np.int64)]
    if steps is not None:
        ins.append(np.array(steps, np.int64))
    check(*model("Slice", ins, {}, 13), kernel="strided_copy")


def test_slice_opset9_attributes() -> None:
    check(*model("Slice", [In(rand(5, 6))], {"starts": [1, 2], "ends": [4, 5], "axes": [0, 1]}, 9))


@pytest.mark.parametrize("shape,target", [((3, 1), (2, 3, 4)), ((1, 4), (3, 4)), ((2, 1, 3), (2, 5, 3))])
def test_expand(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    check(*model("Expand", [In(rand(*shape)), np.array(target, np.int64)], {}, 13), kernel="strided_copy")


@pytest.mark.parametrize("case", ["const_axis0", "embedding", "scalar_axis1", "negative_axis2_int32"])
def test_gather(case: str) -> None:
    if case == "const_axis0":
        check(*model("Gather", [In(rand(5, 4)), np.array([4, 0, 2, 2], np.int64)], {"axis": 0}), kernel="gather")
    elif case == "embedding":
        ids = RNG.integers(-10, 10, size=(2, 7)).astype(np.int64)
        check(*model("Gather", [rand(10, 16), In(ids)], {"axis": 0}), kernel="gather")
    elif case == "scalar_axis1":
        check(*model("Gather", [In(rand(3, 5, 4)), np.array(-2, np.int64)], {"axis": 1}), kernel="gather")
    else:
        check(*model("Gather", [In(rand(2, 3, 5)), In(np.array([3, -1, 0], np.int32))], {"axis": 2}), kernel="gather")


@pytest.mark.parametrize("opset,pads,value,axes,mode", [
    (13, [0, 0, 1, 2, 0, 0, 2, 1], 1.5, None, "constant"),
    (13, [0, 1, -1, 0, 0, 0, 2, -2], 0.0, None, "constant"),   # negative pads crop
    (18, [1, 3, 0, 2], -2.0, [1, 3], "constant"),
    (10, [1, 0, 0, 0, 0, 0, 0, 1], 0.25, None, "constant"),    # attributes
    (13, [0, 0, 1, 2, 0, 0, 2, 1], None, None, "reflect"),
    (13, [0, 1, 2, 3, 0, 1, 1, 0], None, None, "edge"),
    (13, [0, 0, -1, 2, 0, 0, 2, -1], None, None, "reflect"),   # crop, then reflect the cropped axis
    (19, [0, 0, 3, 4, 0, 0, 2, 6], None, None, "wrap"),
])
def test_pad(opset: int, pads: list[int], value: float | None, axes: list[int] | None, mode: str) -> None:
    x = rand(2, 3, 4, 5)
    if opset < 11:
        check(*model("Pad", [In(x)], {"pads": pads, "value": value, "mode": mode}, opset), kernel="pad")
        return
    ins: list[Any] = [In(x), np.array(pads, np.int64), None if value is None else np.array(value, np.float32)]
    if axes is not None:
        ins.append(np.array(axes, np.int64))
    check(*model("Pad", ins, {"mode": mode}, opset), kernel="pad")


def test_pad_reflect_beyond_the_axis() -> None:
    """Pads longer than the axis: onnxruntime rejects them, the reference (numpy) repeats the reflection."""
    ins = [In(rand(2, 3)), np.array([0, 4, 0, 5], np.int64)]
    check(*model("Pad", ins, {"mode": "reflect"}, 13), kernel="pad", oracle="reference")


def _resize(x: np.ndarray, attrs: dict[str, Any], scales: Sequence[float] | None = None,
            sizes: Sequence[int] | None = None, roi: Sequence[float] | None = None, opset: int = 13) -> list[Call]:
    ins: list[Any] = [In(x), None if roi is None else np.array(roi, np.float32),
                      None if scales is None else np.array(scales, np.float32)]
    if sizes is not None:
        ins.append(np.array(sizes, np.int64))
    return check(*model("Resize", ins, attrs, opset))


@pytest.mark.parametrize("attrs,scales,sizes", [
    ({"mode": "nearest"}, [1, 1, 2, 2], None),
    ({"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, [1, 1, 2, 3], None),
    ({"mode": "nearest", "coordinate_transformation_mode": "align_corners", "nearest_mode": "round_prefer_ceil"},
     None, [2, 3, 7, 5]),
    ({"mode": "nearest", "nearest_mode": "ceil"}, [1, 1, 0.5, 0.6], None),
    ({"mode": "linear"}, [1, 1, 2, 2], None),
    ({"mode": "linear", "coordinate_transformation_mode": "align_corners"}, None, [2, 3, 9, 7]),
    ({"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}, [1, 1, 0.5, 0.75], None),
    ({"mode": "linear", "coordinate_transformation_mode": "asymmetric"}, [1, 1, 1, 1.5], None),
    ({"mode": "cubic"}, [1, 1, 1.5, 2], None),
])
def test_resize(attrs: dict[str, Any], scales: list[float] | None, sizes: list[int] | None) -> None:
    calls = _resize(rand(2, 3, 6, 8), attrs, scales, sizes)
    assert calls[0].kernel is not None
    assert calls[0].kernel.name == ("resize_nearest" if attrs["mode"] == "nearest" else "resize_taps")


def test_resize_crop_and_opset10() -> None:
    x = rand(1, 2, 6, 8)
    _resize(x, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                "extrapolation_value": 5.0}, sizes=[1, 2, 5, 7], roi=[0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3])
    _resize(x, {"mode": "nearest", "coordinate_transformation_mode": "tf_crop_and_resize",
                "extrapolation_value": -1.0}, sizes=[1, 2, 5, 7], roi=[0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3])
    check(*model("Resize", [In(x), np.array([1, 1, 2, 2], np.float32)], {"mode": "nearest"}, 10))


def test_every_retargeted_kernel_has_a_launcher() -> None:
    assert all(callable(getattr(kx, n, None)) for n in rules_extra.LAUNCHERS)


def test_retarget_declines_kernels_without_a_launcher() -> None:
    """A CPU call this module has no launcher for (or a generated kernel) makes the rule fall back."""
    from codegen.program import Kernel

    _, calls = lower_node(*model("Softmax", [In(rand(2, 3))], {"axis": -1}, 13))
    assert calls is not None
    node = calls[0].node
    assert rules_extra.retarget([Call(node, Kernel("codegen.cpu.kernels_extra", "conv_transpose2d"))]) is None
    assert rules_extra.retarget([Call(node, Kernel("m", "plane_x", "source"))]) is None
    assert rules_extra.retarget(None) is None


# -- end to end through the CUDA target -------------------------------------------------------


def _e2e(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> None:
    """compile(target="cuda") runs the node natively (no fallback) and matches onnxruntime."""
    try:
        cm = compiler.compile(m, target="cuda")
    except compiler.MccError as e:  # pragma: no cover - no GPU and no simulator
        pytest.skip(str(e))
    got = cm.run(feeds)
    spec = next(iter(cm.native.specializations.values()))
    assert dict(spec.fallback_ops) == {}, spec.emitted.source
    want = ort_run(m, feeds)
    for g, w in zip(got.values(), want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_err(g, w) <= TOL, rel_err(g, w)


@pytest.mark.parametrize("case", [
    "softmax", "logsoftmax_lanes", "layernorm_stats", "reduce_mean", "global_max", "maxpool", "avgpool",
    "transpose", "slice_reversed", "expand", "pad_edge", "concat", "split", "gather_ids", "resize_cubic",
])
def test_end_to_end(case: str) -> None:
    cases: dict[str, Any] = {
        "softmax": lambda: model("Softmax", [In(rand(3, 50))], {"axis": -1}, 13),
        "logsoftmax_lanes": lambda: model("LogSoftmax", [In(rand(2, 3, 4, 5))], {"axis": 1}, 13),
        "layernorm_stats": lambda: model("LayerNormalization", [In(rand(3, 2, 8)), rand(8), rand(8)], {"axis": -1},
                                         outputs=3),
        "reduce_mean": lambda: model("ReduceMean", [In(rand(2, 3, 4, 5))], {"axes": [2, 3], "keepdims": 1}, 13),
        "global_max": lambda: model("GlobalMaxPool", [In(rand(1, 3, 4, 5))]),
        "maxpool": lambda: model("MaxPool", [In(rand(1, 2, 7, 9))], {"kernel_shape": [3, 3], "strides": [2, 2],
                                                                     "pads": [1, 1, 1, 1]}, 13),
        "avgpool": lambda: model("AveragePool", [In(rand(1, 2, 6, 6))], {"kernel_shape": [2, 2], "strides": [2, 2]},
                                 13),
        "transpose": lambda: model("Transpose", [In(rand(2, 3, 4, 5))], {"perm": [3, 1, 0, 2]}),
        "slice_reversed": lambda: model("Slice", [In(rand(4, 3, 6)), np.array([-1], np.int64),
                                                  np.array([-100], np.int64), np.array([2], np.int64),
                                                  np.array([-1], np.int64)], {}, 13),
        "expand": lambda: model("Expand", [In(rand(3, 1)), np.array([2, 3, 4], np.int64)], {}, 13),
        "pad_edge": lambda: model("Pad", [In(rand(1, 2, 3, 4)), np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64)],
                                  {"mode": "edge"}, 13),
        "concat": lambda: model("Concat", [In(rand(2, 5)), In(rand(2, 1)), rand(2, 3)], {"axis": 1}),
        "split": lambda: model("Split", [In(rand(4, 6, 7)), np.array([2, 3, 1], np.int64)], {"axis": 1}, 13,
                               outputs=3),
        "gather_ids": lambda: model("Gather", [rand(10, 16), In(RNG.integers(-10, 10, size=(2, 7)).astype(np.int64))],
                                    {"axis": 0}),
        "resize_cubic": lambda: model("Resize", [In(rand(1, 2, 5, 6)), None, np.array([1, 1, 1.5, 2], np.float32)],
                                      {"mode": "cubic"}, 13),
    }
    _e2e(*cases[case]())
