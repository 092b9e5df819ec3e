"""Checks that the realistic test models in ``tests/models.py`` are what they claim to be.

Every other suite trusts these builders, so a model that silently lost its symbolic
dims, its If, or the op forms of its opset would make those suites test less than
they say.  Each model must pass the full ONNX checker, run in onnxruntime at two
different sizes, and contain the ops its docstring promises.
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from tests.models import (
    ALL_BUILDERS,
    DEFAULT_DIMS,
    INPUT_RANGE_KEY,
    control_flow_model,
    op_census,
    sample_inputs,
)

NAMES = sorted(ALL_BUILDERS)
ALT_DIMS = {"N": 3, "H": 48, "W": 80}
"""Second concrete size for symbolic dims; H and W stay multiples of 16 for the FPN."""

REQUIRED_OPS: dict[str, set[str]] = {
    "mobilenetv3": {
        "Conv", "BatchNormalization", "Add", "Clip", "Mul", "Div", "HardSigmoid", "Relu",
        "GlobalAveragePool", "ReduceMean", "Flatten", "Gemm", "Softmax",
    },
    "fpn_detector": {
        "Conv", "ConvTranspose", "Resize", "Shape", "Gather", "Unsqueeze", "Slice", "Concat",
        "Cast", "Reshape", "Transpose", "Sigmoid", "Add",
    },
    "transformer": {
        "Conv", "AveragePool", "Squeeze", "Transpose", "Shape", "Gather", "Unsqueeze", "Concat",
        "Reshape", "ReduceMean", "Sub", "Pow", "Sqrt", "Div", "Mul", "Add", "MatMul", "Softmax", "Erf",
    },
    "control_flow": {"If", "ReduceSum", "Greater", "TopK", "Range", "Gather", "Cast", "Unsqueeze"},
    "paddle_style": {
        "Constant", "HardSigmoid", "Squeeze", "Unsqueeze", "Shape", "Slice", "Concat", "Reshape",
        "Cast", "Flatten", "Clip", "BatchNormalization",
    },
    "small_cnn": {"Conv", "BatchNormalization", "Relu", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"},
}  # fmt: skip


def _family(name: str) -> str:
    return name.split("_opset")[0]


def _opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


@functools.cache
def _model(name: str) -> onnx.ModelProto:
    """One build per name; tests must not mutate the result."""
    return ALL_BUILDERS[name]()


def _make_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """Single-threaded CPU session: these models are tiny and CI machines are shared."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@functools.cache
def _session(name: str) -> ort.InferenceSession:
    return _make_session(_model(name))


def _run(name: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return _session(name).run(None, feeds)


def _symbols(model: onnx.ModelProto) -> set[str]:
    return {d.dim_param for vi in model.graph.input for d in vi.type.tensor_type.shape.dim if d.dim_param}


def _nodes(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == op_type]


def _weight_bytes(model: onnx.ModelProto) -> int:
    tensors = list(model.graph.initializer)
    tensors += [a.t for n in _nodes(model, "Constant") for a in n.attribute if a.name == "value"]
    return sum(numpy_helper.to_array(t).nbytes for t in tensors)


DYNAMIC = [n for n in NAMES if _symbols(_model(n))]
STATIC = [n for n in NAMES if n not in DYNAMIC]


def test_registry_covers_every_family_and_requested_opsets() -> None:
    assert {_family(n) for n in NAMES} == set(REQUIRED_OPS)
    assert {"mobilenetv3_opset11", "mobilenetv3_opset17", "transformer_opset11", "transformer_opset17"} <= set(NAMES)
    assert STATIC == ["small_cnn"]


@pytest.mark.parametrize("name", NAMES)
def test_passes_full_checker(name: str) -> None:
    onnx.checker.check_model(_model(name), full_check=True)


@pytest.mark.parametrize("name", NAMES)
def test_is_deterministic_and_small(name: str) -> None:
    model = _model(name)
    assert ALL_BUILDERS[name]().SerializeToString() == model.SerializeToString()
    assert _weight_bytes(model) < 2 * 1024 * 1024


@pytest.mark.parametrize("name", NAMES)
def test_contains_promised_ops(name: str) -> None:
    missing = REQUIRED_OPS[_family(name)] - set(op_census(_model(name)))
    assert not missing, f"{name} lacks {sorted(missing)}"


@pytest.mark.parametrize("name", DYNAMIC)
def test_runs_at_two_sizes(name: str) -> None:
    model = _model(name)
    small = _run(name, sample_inputs(model, seed=0))
    large = _run(name, sample_inputs(model, seed=1, dims=ALT_DIMS))
    for outs, batch in ((small, DEFAULT_DIMS["N"]), (large, ALT_DIMS["N"])):
        for out in outs:
            assert out.shape[0] == batch
            assert np.isfinite(out).all()
    assert [o.shape for o in small] != [o.shape for o in large]


@pytest.mark.parametrize("name", STATIC)
def test_static_model_runs_at_declared_shape(name: str) -> None:
    model = _model(name)
    outs = _run(name, sample_inputs(model))
    for out, vi in zip(outs, model.graph.output):
        assert list(out.shape) == [d.dim_value for d in vi.type.tensor_type.shape.dim]
        assert np.isfinite(out).all()


# ---------------------------------------------------------------- MobileNetV3
@pytest.mark.parametrize("name", [n for n in NAMES if _family(n) == "mobilenetv3"])
def test_mobilenet_structure(name: str) -> None:
    model = _model(name)
    weights = {t.name: t for t in model.graph.initializer}
    depthwise = [
        n
        for n in _nodes(model, "Conv")
        if (g := onnx.helper.get_node_attr_value(n, "group")) > 1 and g == weights[n.input[1]].dims[0]
    ]
    assert depthwise, "no depthwise (group == channels) conv"
    clip_attrs = {a.name for n in _nodes(model, "Clip") for a in n.attribute}
    clip_arity = {len(n.input) for n in _nodes(model, "Clip")}
    if _opset(model) < 11:
        assert clip_attrs == {"min", "max"} and clip_arity == {1}
    else:
        assert not clip_attrs and clip_arity == {3}
    # hardswish (3x) and the decomposed hard-sigmoid both end in Div; the op form is there too.
    census = op_census(model)
    assert census["Div"] >= 4 and census["HardSigmoid"] == 1
    probs = _run(name, sample_inputs(model))[0]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------- detector
@pytest.mark.parametrize("name", [n for n in NAMES if _family(n) == "fpn_detector"])
def test_detector_resize_sizes_are_computed(name: str) -> None:
    model = _model(name)
    (resize,) = _nodes(model, "Resize")
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    assert produced_by[resize.input[3]] == "Cast"
    assert onnx.helper.get_node_attr_value(resize, "mode") == b"nearest"
    (out,) = _run(name, sample_inputs(model, dims=ALT_DIMS))
    h, w = ALT_DIMS["H"], ALT_DIMS["W"]
    assert out.shape[1] == sum((h // s) * (w // s) for s in (4, 8, 16))
    assert ((out > 0) & (out < 1)).all()


# -------------------------------------------------------------- transformer
@pytest.mark.parametrize("name", [n for n in NAMES if _family(n) == "transformer"])
def test_transformer_structure(name: str) -> None:
    model = _model(name)
    axes_as_input = _opset(model) >= 13
    for node in _nodes(model, "Squeeze") + _nodes(model, "Unsqueeze"):
        has_attr = any(a.name == "axes" for a in node.attribute)
        assert (len(node.input) == 2) == axes_as_input and has_attr != axes_as_input
    assert {n.op_type for n in model.graph.node} >= {"Erf", "Pow", "Sqrt"}
    (probs,) = _run(name, sample_inputs(model, dims=ALT_DIMS))
    assert probs.shape == (ALT_DIMS["N"], ALT_DIMS["W"] // 4, 6625)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, rtol=1e-4)


# ------------------------------------------------------------- control flow
def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    local = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    return {i for n in graph.node for i in n.input if i and i not in local}


def test_control_flow_structure() -> None:
    model = _model("control_flow")
    (k_input,) = [vi for vi in model.graph.input if vi.name == "k"]
    assert k_input.type.tensor_type.elem_type == TensorProto.INT64
    assert len(k_input.type.tensor_type.shape.dim) == 0
    (if_node,) = _nodes(model, "If")
    initializers = {t.name for t in model.graph.initializer}
    for attr in if_node.attribute:
        reads = _outer_reads(attr.g)
        assert reads & initializers, f"{attr.name} reads no outer initializer"
        assert reads - initializers, f"{attr.name} reads no outer activation"


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
def test_control_flow_both_branches_match_reference(sign: float) -> None:
    model = _model("control_flow")
    feeds = sample_inputs(model, seed=3, dims={"N": 5})
    feeds["x"] = sign * np.abs(feeds["x"])
    props = {p.key: p.value for p in model.metadata_props}
    lo, hi = (int(v) for v in props[INPUT_RANGE_KEY + "k"].split(","))
    for k in range(lo, hi + 1):
        feeds["k"] = np.array(k, dtype=np.int64)
        got = _run("control_flow", feeds)
        want = ReferenceEvaluator(model).run(None, feeds)
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        assert got[0].shape == (5, k)


def test_control_flow_branches_differ() -> None:
    model = control_flow_model(seed=7)
    feeds = sample_inputs(model, seed=0)
    positive = {**feeds, "x": np.abs(feeds["x"])}
    session = _make_session(model)
    then_values = session.run(["values"], positive)[0]
    else_values = session.run(["values"], {**positive, "x": -positive["x"]})[0]
    # The else branch is 2 * Sigmoid(.), so it lies in (0, 2); the then branch is unbounded affine.
    assert ((else_values > 0) & (else_values < 2)).all()
    assert not np.allclose(then_values, else_values)


# -------------------------------------------------------------- Paddle style
@pytest.mark.parametrize("name", [n for n in NAMES if _family(n) == "paddle_style"])
def test_paddle_style_quirks(name: str) -> None:
    model = _model(name)
    census = op_census(model)
    assert census["Constant"] >= 200
    assert not model.graph.initializer, "weights must be Constant nodes"
    cast_targets = {onnx.helper.get_node_attr_value(n, "to") for n in _nodes(model, "Cast")}
    assert {TensorProto.INT64, TensorProto.FLOAT} <= cast_targets
    if _opset(model) < 13:
        for node in _nodes(model, "Squeeze") + _nodes(model, "Unsqueeze"):
            assert len(node.input) == 1 and any(a.name == "axes" for a in node.attribute)
    probs, spatial_mean = _run(name, sample_inputs(model, dims=ALT_DIMS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert spatial_mean.shape == (ALT_DIMS["N"], 16)


# ------------------------------------------------------------ sample_inputs
def test_sample_inputs_resolves_dims_and_is_seeded() -> None:
    model = _model("mobilenetv3")
    default = sample_inputs(model)
    assert default["input"].shape == (DEFAULT_DIMS["N"], 3, DEFAULT_DIMS["H"], DEFAULT_DIMS["W"])
    assert default["input"].dtype == np.float32
    assert sample_inputs(model, dims={"H": 20})["input"].shape == (DEFAULT_DIMS["N"], 3, 20, DEFAULT_DIMS["W"])
    np.testing.assert_array_equal(default["input"], sample_inputs(model)["input"])
    assert not np.array_equal(default["input"], sample_inputs(model, seed=1)["input"])


def test_sample_inputs_int_scalar_respects_recorded_range() -> None:
    model = _model("control_flow")
    ks = {int(sample_inputs(model, seed=s)["k"]) for s in range(40)}
    assert ks == {1, 2, 3, 4}
    k = sample_inputs(model)["k"]
    assert k.shape == () and k.dtype == np.int64
