"""Native CPU kernels for softmax, normalization, reductions, data movement, Resize and ConvTranspose.

Each case builds a one-op ONNX model, compiles it for the CPU target and checks two things: the
output matches onnxruntime (max error relative to the largest magnitude, 1e-5), and the op really
ran natively (the specialization has no fallback calls), so a rule that silently returned None
would fail here rather than pass through the reference.
"""

from __future__ import annotations

import os

os.environ["MCC_NUM_THREADS"] = "1"

from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402

import codegen.cpu.rules_extra  # noqa: E402,F401  (registers the rules until codegen.cpu imports them)
import compiler  # noqa: E402
from conftest import In, ort_run, rel_err  # noqa: E402
from conftest import one_op_model as model  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def check(m: onnx.ModelProto, feeds: dict[str, np.ndarray], fallbacks: dict[str, int] | None = None) -> None:
    """Compiled output == onnxruntime's, and only the expected ops (none by default) fell back."""
    cm = compiler.compile(m, target="cpu")
    got = cm.run(feeds)
    spec = next(iter(cm.native.specializations.values()))
    assert dict(spec.fallback_ops) == (fallbacks or {}), spec.emitted.source
    want = ort_run(m, feeds)
    for g, w in zip(got.values(), want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert rel_err(g, w) <= 1e-5, rel_err(g, w)


# -- softmax ----------------------------------------------------------------------------------


@pytest.mark.parametrize("op,shape,axis,opset", [
    ("Softmax", (3, 10), -1, 13),
    ("Softmax", (4, 33), -1, 13),          # -inf entries (an attention mask) give exact zeros
    ("LogSoftmax", (2, 3, 4, 5), 1, 13),   # per-axis with a strided inner axis
    ("Softmax", (2, 3, 4, 5), 1, 11),      # coerced to 2-D at axis 1
    ("LogSoftmax", (2, 3, 4), 2, 11),
    ("Softmax", (2, 7, 700), 1, 13),       # inner longer than one lane block
    ("Softmax", (64, 1000), 1, 13),        # the parallel branch
])
def test_softmax(op: str, shape: tuple[int, ...], axis: int, opset: int) -> None:
    x = rand(*shape) * 4
    if shape == (4, 33):
        x[:, 1::3] = -np.inf
    check(*model(op, [In(x)], {"axis": axis}, opset))


# -- layer normalization ----------------------------------------------------------------------


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
    check(*model("LayerNormalization", inputs, {"axis": axis, "epsilon": 1e-3}))


def test_layernorm_statistics_outputs() -> None:
    x = rand(3, 2, 8) + 2
    m, feeds = model("LayerNormalization", [In(x), rand(8), rand(8)], {"axis": -1}, outputs=3)
    check(m, feeds)


# -- reductions -------------------------------------------------------------------------------


@pytest.mark.parametrize("op,shape,axes,keepdims,opset,as_input", [
    ("ReduceMean", (2, 3, 4, 5), [2, 3], 1, 13, False),
    ("ReduceSum", (2, 3, 4, 5), [1], 0, 13, True),
    ("ReduceMax", (2, 3, 40), [-1], 1, 18, True),
    ("ReduceMin", (3, 4, 5), [0, 1], 0, 13, False),
    ("ReduceMean", (2, 1, 3, 4), [0, 2], 1, 18, True),  # contiguous once the size-1 dim is dropped
    ("ReduceSum", (3, 5), None, 0, 13, False),           # all axes
    ("ReduceMax", (6, 70, 90), [1], 0, 13, False),       # parallel branch, strided axis
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
    check(*model(op, inputs, attrs, opset))


def test_reduce_noop_and_non_contiguous_axes() -> None:
    x = rand(2, 3, 4)
    check(*model("ReduceSum", [In(x)], {"noop_with_empty_axes": 1}, 13))
    check(*model("ReduceMean", [In(x)], {"axes": [0, 2]}, 13), fallbacks={"ReduceMean": 1})


# -- data movement ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape,perm", [
    ((2, 3, 4), (0, 2, 1)),      # batched 2-D: tiled
    ((37, 45), None),            # default perm reverses: tiled
    ((2, 3, 4, 5), (0, 2, 1, 3)),  # rows stay contiguous
    ((2, 3, 4, 5), (3, 1, 0, 2)),
    ((1, 3, 1, 4), (0, 2, 1, 3)),  # only size-1 dims move: a view
    ((8, 64, 96), (0, 2, 1)),    # parallel branch
])
def test_transpose(shape: tuple[int, ...], perm: tuple[int, ...] | None) -> None:
    x = rand(*shape)
    check(*model("Transpose", [In(x)], {} if perm is None else {"perm": list(perm)}))


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat(axis: int) -> None:
    a, b, c = rand(2, 3, 4), rand(2, 3, 4), rand(2, 3, 4)
    check(*model("Concat", [In(a), b, In(c)], {"axis": axis}))


def test_concat_two_inputs_different_sizes() -> None:
    check(*model("Concat", [In(rand(2, 5)), In(rand(2, 1))], {"axis": 1}))


@pytest.mark.parametrize("opset,inputs,attrs,outputs", [
    (13, [np.array([2, 3, 1], np.int64)], {"axis": 1}, 3),
    (18, [], {"axis": -1, "num_outputs": 3}, 3),
    (11, [], {"axis": 0, "split": [1, 3]}, 2),
])
def test_split(opset: int, inputs: list[Any], attrs: dict[str, Any], outputs: int) -> None:
    x = rand(4, 6, 7)
    check(*model("Split", [In(x), *inputs], attrs, opset, outputs=outputs))


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1], [-1], [1], None),
    ([0, 1], [4, 100], [0, 2], [2, 1]),
    ([-1], [-100], [2], [-1]),             # reversed
    ([1, 0, 2], [3, 2, 5], [0, 1, 2], None),
    ([0], [3], [2], [3]),
])
def test_slice(starts: list[int], ends: list[int], axes: list[int], steps: list[int] | None) -> None:
    x = rand(4, 3, 6)
    ins: list[Any] = [In(x), np.array(starts, np.int64), np.array(ends, np.int64), np.array(axes, np.int64)]
    if steps is not None:
        ins.append(np.array(steps, np.int64))
    check(*model("Slice", ins, {}, 13))


def test_slice_opset9_attributes() -> None:
    check(*model("Slice", [In(rand(5, 6))], {"starts": [1, 2], "ends": [4, 5], "axes": [0, 1]}, 9))


@pytest.mark.parametrize("case", ["const_axis0", "embedding", "scalar_axis1", "negative_axis2_int32"])
def test_gather(case: str) -> None:
    if case == "const_axis0":
        check(*model("Gather", [In(rand(5, 4)), np.array([4, 0, 2, 2], np.int64)], {"axis": 0}))
    elif case == "embedding":
        ids = RNG.integers(-10, 10, size=(2, 7)).astype(np.int64)
        check(*model("Gather", [rand(10, 16), In(ids)], {"axis": 0}))
    elif case == "scalar_axis1":
        check(*model("Gather", [In(rand(3, 5, 4)), np.array(-2, np.int64)], {"axis": 1}))
    else:
        ids = np.array([3, -1, 0], np.int32)
        check(*model("Gather", [In(rand(2, 3, 5)), In(ids)], {"axis": 2}))


@pytest.mark.parametrize("opset,pads,value,axes", [
    (13, [0, 0, 1, 2, 0, 0, 2, 1], 1.5, None),
    (13, [0, 1, -1, 0, 0, 0, 2, -2], 0.0, None),   # negative pads crop
    (18, [1, 3, 0, 2], -2.0, [1, 3]),
    (10, [1, 0, 0, 0, 0, 0, 0, 1], 0.25, None),    # attributes
])
def test_pad(opset: int, pads: list[int], value: float, axes: list[int] | None) -> None:
    x = rand(2, 3, 4, 5)
    if opset < 11:
        check(*model("Pad", [In(x)], {"pads": pads, "value": value, "mode": "constant"}, opset))
        return
    ins: list[Any] = [In(x), np.array(pads, np.int64), np.array(value, np.float32)]
    if axes is not None:
        ins.append(np.array(axes, np.int64))
    check(*model("Pad", ins, {"mode": "constant"}, opset))


@pytest.mark.parametrize("shape,target", [((3, 1), (2, 3, 4)), ((1, 4), (3, 4)), ((2, 1, 3), (2, 5, 3))])
def test_expand(shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    check(*model("Expand", [In(rand(*shape)), np.array(target, np.int64)], {}, 13))


# -- Resize -----------------------------------------------------------------------------------


def _resize(x: np.ndarray, attrs: dict[str, Any], scales: Sequence[float] | None = None,
            sizes: Sequence[int] | None = None, roi: Sequence[float] | None = None, opset: int = 13) -> None:
    """Omitted optional inputs are left out by name ("", as exporters write them at opset 13)."""
    ins: list[Any] = [In(x), None if roi is None else np.array(roi, np.float32),
                      None if scales is None else np.array(scales, np.float32)]
    if sizes is not None:
        ins.append(np.array(sizes, np.int64))
    check(*model("Resize", ins, attrs, opset))


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
    _resize(rand(2, 3, 6, 8), attrs, scales, sizes)


def test_resize_crop_and_opset10() -> None:
    x = rand(1, 2, 6, 8)
    _resize(x, {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
                "extrapolation_value": 5.0}, sizes=[1, 2, 5, 7], roi=[0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3])
    check(*model("Resize", [In(x), np.array([1, 1, 2, 2], np.float32)], {"mode": "nearest"}, 10))


# -- ConvTranspose ----------------------------------------------------------------------------


@pytest.mark.parametrize("xs,ws,attrs,bias", [
    ((1, 4, 5, 6), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True),
    ((2, 3, 4, 4), (3, 2, 4, 4), {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 0]}, False),
    ((1, 2, 5, 5), (2, 3, 3, 2), {"dilations": [2, 1], "strides": [1, 2]}, True),
    ((1, 4, 3, 5), (4, 3, 2, 2), {"group": 2, "strides": [2, 2]}, True),
    ((2, 6, 4, 4), (6, 1, 3, 3), {"group": 6, "strides": [2, 2], "pads": [1, 0, 1, 0]}, True),  # depthwise
    ((1, 3, 7), (3, 2, 3), {"strides": [3], "auto_pad": "SAME_UPPER"}, True),                   # 1-D
])
def test_conv_transpose(xs: tuple[int, ...], ws: tuple[int, ...], attrs: dict[str, Any], bias: bool) -> None:
    group = attrs.get("group", 1)
    ins: list[Any] = [In(rand(*xs)), rand(*ws)]
    if bias:
        ins.append(rand(ws[1] * group))
    check(*model("ConvTranspose", ins, attrs))


def test_resize_rule_reads_empty_optional_inputs() -> None:
    """Opset-11 exporters pass roi and scales as empty tensors: the rule treats them as omitted.

    (Checked on the rule itself: the lowering skips nodes with any zero-size input before asking it.)
    """
    from codegen.cpu import rules_extra
    from codegen.cpu.lower import specialize

    x = rand(1, 2, 4, 5)
    m, _ = model("Resize", [In(x), np.zeros(0, np.float32), np.zeros(0, np.float32),
                            np.array([1, 2, 8, 9], np.int64)], {"mode": "linear"}, 11)
    g = specialize(compiler.compress(m), {"in0": x.shape})
    node = next(n for n in g.nodes if n.op_type == "Resize")
    calls = rules_extra.resize(node)
    assert calls is not None and calls[0].kernel is not None and calls[0].kernel.name == "resize_taps"
