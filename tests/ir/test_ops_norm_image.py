"""Normalization and image ops (ir/ops/norm.py, ir/ops/image.py) against onnxruntime, plus shape inference.

Each case is a one-node model built with onnx.helper and run through `compiler.compile(model).run`;
onnxruntime is the oracle. The inference checks import a model with symbolic dims, clear the node's
output types and ask `ir.infer_node` for them again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
import ir
from ir import DType, TensorType

RNG = np.random.default_rng(0)
EMPTY = np.zeros(0, np.float32)


def _model(op: str, inputs: list[tuple[str, Any]], attrs: dict[str, Any], opset: int,
           inits: list[tuple[str, np.ndarray]] = (), node_inputs: list[str] | None = None,
           n_out: int = 1) -> onnx.ModelProto:
    """One-node model; `inputs` are (name, array) or (name, (elem_type, shape)) for symbolic shapes."""
    vis = []
    for name, a in inputs:
        et, shape = (helper.np_dtype_to_tensor_dtype(a.dtype), a.shape) if isinstance(a, np.ndarray) else a
        vis.append(helper.make_tensor_value_info(name, et, shape))
    names = node_inputs if node_inputs is not None else [n for n, _ in inputs] + [n for n, _ in inits]
    outs = [f"y{i}" for i in range(n_out)]
    g = helper.make_graph([helper.make_node(op, names, outs, **attrs)], "g", vis,
                          [helper.make_empty_tensor_value_info(o) for o in outs],
                          initializer=[numpy_helper.from_array(a, n) for n, a in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset < 21 else 10  # what this onnxruntime accepts
    return m


def _check(m: onnx.ModelProto, feeds: dict[str, np.ndarray], tol: float = 1e-5) -> list[np.ndarray]:
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = list(compiler.compile(m).run(feeds).values())
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and g.shape == r.shape, (g.dtype, g.shape, r.dtype, r.shape)
        np.testing.assert_allclose(g.astype(np.float64), r.astype(np.float64), rtol=tol, atol=tol)
    return got


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


X = _f32(2, 4, 5, 6)
C = 4


# ---------------------------------------------------------------------------------------------
# Normalization.


@pytest.mark.parametrize("opset", [7, 9, 15])
def test_batchnorm_inference(opset: int) -> None:
    var = np.abs(_f32(C)) + 0.1
    m = _model("BatchNormalization", [("x", X)], {"epsilon": 1e-3}, opset,
               [("s", _f32(C)), ("b", _f32(C)), ("m", _f32(C)), ("v", var)])
    _check(m, {"x": X})


def test_batchnorm_training_mode_outputs_running_stats() -> None:
    var = np.abs(_f32(C)) + 0.1
    m = _model("BatchNormalization", [("x", X)], {"training_mode": 1, "momentum": 0.8}, 15,
               [("s", _f32(C)), ("b", _f32(C)), ("m", _f32(C)), ("v", var)], n_out=3)
    _check(m, {"x": X})


def test_batchnorm_float16_input_float32_stats() -> None:
    xh = X.astype(np.float16)
    m = _model("BatchNormalization", [("x", xh)], {}, 15,
               [("s", _f32(C)), ("b", _f32(C)), ("m", _f32(C)), ("v", np.abs(_f32(C)) + 0.1)])
    _check(m, {"x": xh}, tol=2e-3)


@pytest.mark.parametrize("axis", [-1, 1])
def test_layernorm_with_mean_and_inv_std(axis: int) -> None:
    shape = X.shape[axis % 4:]
    m = _model("LayerNormalization", [("x", X)], {"axis": axis, "epsilon": 1e-4}, 17,
               [("s", _f32(*shape)), ("b", _f32(*shape))], n_out=3)
    _check(m, {"x": X})


def test_layernorm_float16_computes_in_float32() -> None:
    xh = (X * 100 + 1000).astype(np.float16)  # large mean: float16 stats would lose the variance
    m = _model("LayerNormalization", [("x", xh)], {}, 17, [("s", np.ones(6, np.float16))])
    _check(m, {"x": xh}, tol=3e-3)


@pytest.mark.parametrize("opset,groups", [(18, 2), (21, 2), (21, 4), (21, 1)])
def test_groupnorm(opset: int, groups: int) -> None:
    n = groups if opset < 21 else C  # opset 18: per-group scale/bias; 21: per-channel
    m = _model("GroupNormalization", [("x", X)], {"num_groups": groups, "epsilon": 1e-4}, opset,
               [("s", _f32(n)), ("b", _f32(n))])
    _check(m, {"x": X})


def test_instance_lrn_lp_mvn_rms() -> None:
    _check(_model("InstanceNormalization", [("x", X)], {"epsilon": 1e-4}, 6, [("s", _f32(C)), ("b", _f32(C))]),
           {"x": X})
    _check(_model("LRN", [("x", X)], {"size": 3, "alpha": 0.01, "beta": 0.7, "bias": 1.5}, 13), {"x": X})
    xz = X.copy()
    xz[0, :, 0, 0] = 0  # a zero norm gives zeros
    _check(_model("LpNormalization", [("x", xz)], {"p": 1, "axis": 1}, 1), {"x": xz})
    _check(_model("MeanVarianceNormalization", [("x", X)], {"axes": [2, 3]}, 13), {"x": X})
    _check(_model("RMSNormalization", [("x", X)], {"axis": -2}, 23, [("s", _f32(5, 6))]), {"x": X})


def test_lp_normalization_rejects_other_p() -> None:
    m = _model("LpNormalization", [("x", X)], {"p": 3}, 1)
    with pytest.raises(ir.EvaluationError, match="not supported"):
        compiler.compile(m).run({"x": X})


# ---------------------------------------------------------------------------------------------
# Resize and Upsample.


def _resize(x: np.ndarray, attrs: dict[str, Any], opset: int, scales: Any = None, sizes: Any = None,
            roi: np.ndarray = EMPTY) -> onnx.ModelProto:
    """Resize with constant scales or sizes; optional inputs empty (opset 11-12) or omitted (13+)."""
    sc = EMPTY if scales is None else np.asarray(scales, np.float32)
    if opset < 13:
        inits = [("roi", roi), ("scales", sc)] + ([] if sizes is None else [("sizes", np.asarray(sizes, np.int64))])
        return _model("Resize", [("x", x)], attrs, opset, inits)
    if sizes is None:
        names = ["x", "roi" if roi.size else "", "scales"]
        inits = ([("roi", roi)] if roi.size else []) + [("scales", sc)]
    else:
        names = ["x", "roi" if roi.size else "", "", "sizes"]
        inits = ([("roi", roi)] if roi.size else []) + [("sizes", np.asarray(sizes, np.int64))]
    return _model("Resize", [("x", x)], attrs, opset, inits, node_inputs=names)


PT_NEAREST = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}


@pytest.mark.parametrize("opset", [11, 13])
def test_resize_nearest_as_pytorch_exports(opset: int) -> None:
    _check(_resize(X, PT_NEAREST, opset, scales=[1, 1, 2, 2]), {"x": X})
    _check(_resize(X, PT_NEAREST, opset, sizes=[2, 4, 7, 13]), {"x": X})


@pytest.mark.parametrize("ctm", ["half_pixel", "align_corners", "pytorch_half_pixel"])
@pytest.mark.parametrize("how", ["scales", "sizes"])
def test_resize_linear(ctm: str, how: str) -> None:
    attrs = {"mode": "linear", "coordinate_transformation_mode": ctm}
    m = (_resize(X, attrs, 13, scales=[1, 1, 2, 0.5]) if how == "scales"
         else _resize(X, attrs, 13, sizes=[2, 4, 9, 4]))
    _check(m, {"x": X})


@pytest.mark.parametrize("mode,extra", [("nearest", {"nearest_mode": "round_prefer_ceil"}),
                                        ("cubic", {"cubic_coeff_a": -0.5, "exclude_outside": 1}),
                                        ("cubic", {"antialias": 1}), ("linear", {"antialias": 1})])
def test_resize_other_modes(mode: str, extra: dict[str, Any]) -> None:
    _check(_resize(X, {"mode": mode, **extra}, 18, scales=[1, 1, 0.6, 0.45]), {"x": X})


def test_resize_crop_axes_and_aspect_policy() -> None:
    attrs = {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "extrapolation_value": 5.0,
             "axes": [2, 3]}
    _check(_resize(X, attrs, 18, sizes=[4, 5], roi=np.array([-0.1, 0.2, 0.8, 1.2], np.float32)), {"x": X})
    _check(_resize(X, {"mode": "nearest", "axes": [3, 2], "keep_aspect_ratio_policy": "not_smaller"}, 18,
                   sizes=[8, 8]), {"x": X})


def test_resize_opset10_and_upsample() -> None:
    _check(_model("Resize", [("x", X)], {"mode": "linear"}, 10, [("s", np.array([1, 1, 1.5, 0.5], np.float32))]),
           {"x": X})
    for mode in ("nearest", "linear"):
        _check(_model("Upsample", [("x", X)], {"mode": mode}, 9, [("s", np.array([1, 1, 2, 1.5], np.float32))]),
               {"x": X})
    _check(_model("Upsample", [("x", X)], {"mode": "nearest", "scales": [1.0, 1.0, 3.0, 2.0]}, 7), {"x": X})


def test_resize_uint8_nearest_keeps_dtype() -> None:
    xi = (RNG.random((1, 3, 4, 5)) * 255).astype(np.uint8)
    _check(_resize(xi, PT_NEAREST, 13, scales=[1, 1, 2, 2]), {"x": xi})


# ---------------------------------------------------------------------------------------------
# GridSample, AffineGrid, RoiAlign.


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_gridsample(mode: str, padding: str) -> None:
    grid = (RNG.random((2, 3, 7, 2)) * 3 - 1.5).astype(np.float32)
    for ac in (0, 1):
        attrs = {"mode": mode, "padding_mode": padding, "align_corners": ac}
        _check(_model("GridSample", [("x", X), ("g", grid)], attrs, 20), {"x": X, "g": grid})


def test_gridsample_opset16_names_and_volumetric() -> None:
    grid = (RNG.random((2, 3, 7, 2)) * 2.4 - 1.2).astype(np.float32)
    _check(_model("GridSample", [("x", X), ("g", grid)], {"mode": "bicubic"}, 16), {"x": X, "g": grid})
    x5, g5 = _f32(1, 2, 3, 4, 5), (RNG.random((1, 2, 3, 4, 3)) * 2.4 - 1.2).astype(np.float32)
    _check(_model("GridSample", [("x", x5), ("g", g5)], {"padding_mode": "border"}, 20), {"x": x5, "g": g5})


def test_affine_grid_feeds_gridsample() -> None:
    for ac in (0, 1):
        th = _f32(2, 2, 3)
        _check(_model("AffineGrid", [("th", th)], {"align_corners": ac}, 20, [("size", np.array([2, 3, 5, 7]))]),
               {"th": th})
    th3 = _f32(1, 3, 4)
    _check(_model("AffineGrid", [("th", th3)], {}, 20, [("size", np.array([1, 2, 3, 4, 5]))]), {"th": th3})


@pytest.mark.parametrize("ctm", ["half_pixel", "output_half_pixel"])
def test_roialign(ctm: str) -> None:
    x = _f32(2, 3, 10, 12)
    rois = np.array([[0, 0, 9, 9], [1.3, 2.2, 7.7, 8.1], [-2, -1, 4, 3], [5, 5, 14, 13]], np.float32)
    bi = np.array([0, 1, 1, 0], np.int64)
    for sr in (0, 2):
        attrs = {"coordinate_transformation_mode": ctm, "sampling_ratio": sr, "output_height": 3, "output_width": 4,
                 "spatial_scale": 0.8}
        _check(_model("RoiAlign", [("x", x), ("r", rois), ("bi", bi)], attrs, 16), {"x": x, "r": rois, "bi": bi})


# ---------------------------------------------------------------------------------------------
# Shape inference with symbolic and unknown dims.


def _infer(m: onnx.ModelProto) -> list[TensorType | None]:
    g = compiler.import_onnx(m)
    node = g.nodes[0]
    for v in node.outputs:
        v.type = None
    ir.infer_node(node)
    return [v.type for v in node.outputs]


F = TensorProto.FLOAT


def test_infer_norms_symbolic() -> None:
    x = ("x", (F, ["N", 4, "H", None]))
    stats = [("s", _f32(C)), ("b", _f32(C)), ("m", _f32(C)), ("v", _f32(C))]
    assert _infer(_model("BatchNormalization", [x], {"training_mode": 1}, 15, stats, n_out=3)) == [
        TensorType(DType.FLOAT, ("N", 4, "H", None)), TensorType(DType.FLOAT, (4,)), TensorType(DType.FLOAT, (4,))]
    ln = _infer(_model("LayerNormalization", [x], {"axis": 2}, 17, [("s", _f32(1))], n_out=3))
    assert ln[0] == TensorType(DType.FLOAT, ("N", 4, "H", None))
    assert ln[1] == ln[2] == TensorType(DType.FLOAT, ("N", 4, 1, 1))
    assert _infer(_model("GroupNormalization", [x], {"num_groups": 2}, 21, [("s", _f32(C)), ("b", _f32(C))]))[0] \
        == TensorType(DType.FLOAT, ("N", 4, "H", None))
    rms = _infer(_model("RMSNormalization", [x], {}, 23, [("s", np.ones(1, np.float16))]))
    assert rms[0] == TensorType(DType.FLOAT16, ("N", 4, "H", None))  # Y has the scale's type


def test_infer_resize_symbolic() -> None:
    x = ("x", (F, ["N", 3, "H", 8]))
    # scale 1 keeps a symbolic dim, other scales of a symbolic dim are unknown, ints are computed
    assert _infer(_resize_sym(x, scales=[1, 1, 2, 2.5]))[0] == TensorType(DType.FLOAT, ("N", 3, None, 20))
    assert _infer(_resize_sym(x, sizes=[1, 3, 16, 16]))[0] == TensorType(DType.FLOAT, (1, 3, 16, 16))
    # sizes computed at run time: only the non-resized axes are known
    m = _model("Resize", [x, ("sz", (TensorProto.INT64, [2]))], {"axes": [2, 3]}, 18, node_inputs=["x", "", "", "sz"])
    assert _infer(m)[0] == TensorType(DType.FLOAT, ("N", 3, None, None))
    up = _model("Upsample", [x], {"mode": "nearest"}, 9, [("s", np.array([1, 1, 2, 2], np.float32))])
    assert _infer(up)[0] == TensorType(DType.FLOAT, ("N", 3, None, 16))


def _resize_sym(x: tuple[str, Any], scales: Any = None, sizes: Any = None) -> onnx.ModelProto:
    if sizes is None:
        return _model("Resize", [x], {}, 13, [("sc", np.array(scales, np.float32))], node_inputs=["x", "", "sc"])
    return _model("Resize", [x], {}, 13, [("sz", np.array(sizes, np.int64))], node_inputs=["x", "", "", "sz"])


def test_infer_gridsample_affine_roialign() -> None:
    gs = _model("GridSample", [("x", (F, ["N", 3, "H", "W"])), ("g", (F, ["N", "Ho", "Wo", 2]))], {}, 20)
    assert _infer(gs)[0] == TensorType(DType.FLOAT, ("N", 3, "Ho", "Wo"))
    ag = _model("AffineGrid", [("th", (F, ["N", 2, 3]))], {}, 20, [("size", np.array([2, 3, 5, 7]))])
    assert _infer(ag)[0] == TensorType(DType.FLOAT, (2, 5, 7, 2))
    ra = _model("RoiAlign", [("x", (F, ["N", 8, "H", "W"])), ("r", (F, ["R", 4])), ("bi", (TensorProto.INT64, ["R"]))],
                {"output_height": 7, "output_width": 5}, 16)
    assert _infer(ra)[0] == TensorType(DType.FLOAT, ("R", 8, 7, 5))


def test_kinds() -> None:
    assert ir.get_op("BatchNormalization").kind == ir.Kind.BROADCAST
    assert ir.get_op("LayerNormalization").kind == ir.Kind.REDUCTION
    assert ir.get_op("Resize").kind == ir.Kind.INJECTIVE
    assert ir.get_op("GridSample").kind == ir.Kind.OPAQUE
