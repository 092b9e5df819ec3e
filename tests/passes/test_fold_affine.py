"""fold-batchnorm: BatchNormalization and per-channel Mul/Add folded into Conv/ConvTranspose/Gemm weights.

Each small model is built with onnx.helper from random weights and statistics (positive variances),
folded with `fold-batchnorm,dce`, and checked three ways: the ops left are the expected ones (no
BatchNormalization, no Mul/Add where folded), the exported model passes the full ONNX checker, and
onnxruntime computes the same outputs as for the original (1e-5 relative).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import compiler
import ir
import passes
from conftest import ort_run, rel_err
from passes.fold_affine import per_channel
from passes.testing import check_pass

RNG = np.random.default_rng(0)
PIPELINE = "fold-batchnorm,dce"
IR_VERSION = 8  # onnxruntime reads IR versions up to 13; onnx.helper would write a newer one


# ---------------------------------------------------------------------------------------------
# Model builders.


def _f32(*shape: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, size=shape).astype(np.float32)


def _stats(c: int, prefix: str = "bn") -> dict[str, np.ndarray]:
    """BatchNormalization scale, B, mean, var (positive) for `c` channels."""
    return {f"{prefix}.scale": _f32(c, low=0.5, high=1.5), f"{prefix}.B": _f32(c), f"{prefix}.mean": _f32(c),
            f"{prefix}.var": _f32(c, low=0.5, high=2.0)}


def _bn(x: str, y: str, prefix: str = "bn", **attrs: object) -> onnx.NodeProto:
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}.{k}" for k in ("scale", "B", "mean", "var")],
                            [y], epsilon=1e-3, **attrs)


def _model(nodes: list[onnx.NodeProto], x_shape: Sequence[int], consts: dict[str, np.ndarray],
           opset: int = 17, outputs: Sequence[str] = ("y",)) -> onnx.ModelProto:
    """A model reading float input `x`, with `consts` as initializers and untyped outputs."""
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [onnx.ValueInfoProto(name=o) for o in outputs],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION)


def conv_bn(dims: int = 2, cin: int = 4, cout: int = 6, group: int = 1, bias: bool = True,
            transpose: bool = False) -> tuple[onnx.ModelProto, list[int]]:
    """Conv (or ConvTranspose) with `dims` spatial axes, then BatchNormalization."""
    k = (3,) * dims
    w = _f32(cin, cout // group, *k) if transpose else _f32(cout, cin // group, *k)
    consts = {"W": w, **({"b": _f32(cout)} if bias else {}), **_stats(cout)}
    attrs: dict[str, object] = {"group": group, "pads": [1] * 2 * dims}
    if transpose:
        attrs.update(strides=[2] * dims, output_padding=[1] * dims)
    conv = helper.make_node("ConvTranspose" if transpose else "Conv", ["x", "W"] + (["b"] if bias else []),
                            ["c"], name="conv", **attrs)
    shape = [2, cin] + [5] * dims
    return _model([conv, _bn("c", "y")], shape, consts), shape


def gemm_bn(trans_b: int, bias: bool = True) -> tuple[onnx.ModelProto, list[int]]:
    """Gemm (alpha, beta != 1 so both must survive folding) then BatchNormalization over columns."""
    k, n = 5, 7
    consts = {"B": _f32(n, k) if trans_b else _f32(k, n), **({"C": _f32(n)} if bias else {}), **_stats(n)}
    gemm = helper.make_node("Gemm", ["x", "B"] + (["C"] if bias else []), ["g"], transB=trans_b, alpha=0.7,
                            beta=0.5)
    return _model([gemm, _bn("g", "y")], [3, k], consts), [3, k]


def conv_mul_add(scale_shape: Sequence[int], shift_shape: Sequence[int]) -> tuple[onnx.ModelProto, list[int]]:
    """Conv, then Mul by and Add of per-channel constants (the constant first in the Add)."""
    c = 6
    consts = {"W": _f32(c, 3, 3, 3), "b": _f32(c), "s": _f32(*scale_shape, low=0.5, high=2.0),
              "a": _f32(*shift_shape)}
    nodes = [helper.make_node("Conv", ["x", "W", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "s"], ["m"]), helper.make_node("Add", ["a", "m"], ["y"])]
    return _model(nodes, [2, 3, 6, 6], consts), [2, 3, 6, 6]


def mul_conv(group: int, cin: int = 4, cout: int = 8,
             scale_shape: Sequence[int] | None = None) -> tuple[onnx.ModelProto, list[int]]:
    """x * s (per input channel) feeding a padded, strided Conv."""
    consts = {"s": _f32(*(scale_shape if scale_shape is not None else (1, cin, 1, 1)), low=-2.0, high=2.0),
              "W": _f32(cout, cin // group, 3, 3), "b": _f32(cout)}
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]),
             helper.make_node("Conv", ["m", "W", "b"], ["y"], group=group, pads=[1, 1, 1, 1], strides=[2, 2])]
    return _model(nodes, [2, cin, 7, 7], consts), [2, cin, 7, 7]


def relu_bn() -> tuple[onnx.ModelProto, list[int]]:
    """A BatchNormalization with no linear op to fold into."""
    return _model([helper.make_node("Relu", ["x"], ["r"]), _bn("r", "y")], [2, 5, 4, 4], _stats(5)), [2, 5, 4, 4]


# ---------------------------------------------------------------------------------------------
# The check every model goes through.


def _fold(model: onnx.ModelProto, shape: Sequence[int], expect_ops: list[str]) -> ir.Graph:
    """Fold, check the ops left, verify, check idempotence, export, and compare with onnxruntime."""
    g = compiler.import_onnx(model)
    passes.run(g, PIPELINE)
    assert [n.op_type for n in g.nodes] == expect_ops
    ir.verify(g)
    assert not passes.get_pass("fold-batchnorm")().run(g), "a second run changed the graph"
    assert [v.name for v in g.outputs] == [o.name for o in model.graph.output]
    out = compiler.export_onnx(g)
    onnx.checker.check_model(out, full_check=True)
    x = RNG.standard_normal(shape).astype(np.float32)
    want, got = ort_run(model, {"x": x}), ort_run(out, {"x": x})
    for w, o in zip(want, got, strict=True):
        assert rel_err(o, w) < 1e-5
    return g


@pytest.mark.parametrize("kwargs", [
    {},
    {"group": 2},
    {"group": 4, "cin": 4, "cout": 8},  # depthwise, channel multiplier 2
    {"bias": False},
    {"dims": 1},
    {"dims": 3, "cin": 2, "cout": 3},
], ids=["group1", "grouped", "depthwise", "no-bias", "conv1d", "conv3d"])
def test_conv_batchnorm(kwargs: dict[str, object]) -> None:
    g = _fold(*conv_bn(**kwargs), ["Conv"])  # type: ignore[arg-type]
    assert len(g.nodes[0].inputs) == 3  # a bias is created when missing
    assert g.nodes[0].name == "conv"  # the folded layer keeps its name


@pytest.mark.parametrize("group", [1, 2])
def test_conv_transpose_batchnorm(group: int) -> None:
    _fold(*conv_bn(cin=4, cout=6, group=group, transpose=True), ["ConvTranspose"])
    _fold(*conv_bn(cin=4, cout=6, group=group, transpose=True, bias=False), ["ConvTranspose"])


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
def test_gemm_batchnorm(trans_b: int, bias: bool) -> None:
    g = _fold(*gemm_bn(trans_b, bias), ["Gemm"])
    assert g.nodes[0].attr("beta") == 1.0 and g.nodes[0].attr("alpha") == pytest.approx(0.7)


@pytest.mark.parametrize("scale_shape,shift_shape", [((6, 1, 1), (1, 6, 1, 1)), ((), (6, 1, 1)), ((1,), (1, 1, 1))])
def test_conv_mul_add(scale_shape: Sequence[int], shift_shape: Sequence[int]) -> None:
    _fold(*conv_mul_add(scale_shape, shift_shape), ["Conv"])


def test_gemm_mul_add() -> None:
    consts = {"B": _f32(4, 5), "s": _f32(5), "a": _f32(1, 5)}
    nodes = [helper.make_node("Gemm", ["x", "B"], ["g"]), helper.make_node("Mul", ["s", "g"], ["m"]),
             helper.make_node("Add", ["m", "a"], ["y"])]
    _fold(_model(nodes, [3, 4], consts), [3, 4], ["Gemm"])


@pytest.mark.parametrize("group,scale_shape", [(1, None), (4, None), (2, None), (1, ()), (1, (4, 1, 1))],
                         ids=["group1", "depthwise", "grouped", "scalar", "chw"])
def test_mul_before_conv(group: int, scale_shape: Sequence[int] | None) -> None:
    _fold(*mul_conv(group, scale_shape=scale_shape), ["Conv"])


def test_standalone_batchnorm_becomes_mul_add() -> None:
    g = _fold(*relu_bn(), ["Relu", "Mul", "Add"])
    assert g.nodes[1].inputs[1].shape == (5, 1, 1)


def test_not_folded() -> None:
    """What must stay: an Add before a Conv (padding would see the shift), per-sample constants,
    a conv output read elsewhere (its BatchNormalization becomes Mul/Add instead)."""
    consts = {"a": _f32(1, 3, 1, 1), "W": _f32(4, 3, 3, 3)}
    nodes = [helper.make_node("Add", ["x", "a"], ["p"]), helper.make_node("Conv", ["p", "W"], ["y"], pads=[1] * 4)]
    _fold(_model(nodes, [2, 3, 5, 5], consts), [2, 3, 5, 5], ["Add", "Conv"])

    consts = {"W": _f32(4, 3, 3, 3), "s": _f32(2, 1, 1, 1)}  # [N, 1, 1, 1]: per sample, not per channel
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), helper.make_node("Mul", ["c", "s"], ["y"])]
    _fold(_model(nodes, [2, 3, 5, 5], consts), [2, 3, 5, 5], ["Conv", "Mul"])

    consts = {"W": _f32(4, 3, 3, 3), **_stats(4)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"]), _bn("c", "y"), helper.make_node("Relu", ["c"], ["z"])]
    _fold(_model(nodes, [2, 3, 5, 5], consts, outputs=("y", "z")), [2, 3, 5, 5], ["Conv", "Mul", "Add", "Relu"])


def test_chain_folds_completely() -> None:
    """Mul -> Conv -> Add -> BatchNormalization -> Mul: everything lands in one Conv."""
    consts = {"s": _f32(1, 3, 1, 1), "W": _f32(4, 3, 3, 3), "a": _f32(4, 1, 1), "t": _f32(1, 4, 1, 1),
              **_stats(4)}
    nodes = [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Conv", ["m", "W"], ["c"], pads=[1] * 4),
             helper.make_node("Add", ["c", "a"], ["d"]), _bn("d", "e"), helper.make_node("Mul", ["e", "t"], ["y"])]
    _fold(_model(nodes, [1, 3, 6, 6], consts), [1, 3, 6, 6], ["Conv"])


def test_training_and_legacy_forms() -> None:
    """Training nodes and spatial=0 stay; the opset-6 inference form (is_test) folds. ORT runs no
    opset < 7 model, so the reference interpreter is the oracle here."""
    x = RNG.standard_normal((2, 4, 3, 3)).astype(np.float32)
    names = [f"bn.{k}" for k in ("scale", "B", "mean", "var")]
    training = _model([helper.make_node("BatchNormalization", ["x", *names], ["y", "rm", "rv"], training_mode=1)],
                      x.shape, _stats(4), opset=15)
    per_activation = _model([helper.make_node("BatchNormalization", ["x", *names], ["y"], spatial=0)], x.shape,
                            {k: np.broadcast_to(v[:, None, None], (4, 3, 3)).copy() for k, v in _stats(4).items()},
                            opset=7)
    for model in (training, per_activation):
        g = compiler.import_onnx(model)
        assert not passes.get_pass("fold-batchnorm")().run(g)

    consts = {"W": _f32(4, 4, 3, 3), **_stats(4)}
    for nodes in ([helper.make_node("Conv", ["x", "W"], ["c"]), _bn("c", "y", is_test=1)],
                  [helper.make_node("Relu", ["x"], ["c"]), _bn("c", "y", is_test=1)]):
        model = _model(nodes, x.shape, consts, opset=6)
        g = compiler.import_onnx(model)
        want = ir.Interpreter().run(g, {"x": x})
        passes.run(g, PIPELINE)
        assert "BatchNormalization" not in {n.op_type for n in g.nodes}
        ir.verify(g)
        onnx.checker.check_model(compiler.export_onnx(g), full_check=True)  # legacy broadcast attributes
        assert rel_err(ir.Interpreter().run(g, {"x": x})[0], want[0]) < 1e-5


def test_per_channel_shapes() -> None:
    c = np.ones((3, 1, 1), np.float32)
    assert per_channel(c, 4, 3) is not None and per_channel(c, 3, 3) is None  # [C,1,1] of rank 3: axis 0
    assert per_channel(np.ones((1, 3, 1, 1, 1), np.float32), 4, 3) is None  # would grow the rank
    assert per_channel(np.float32(2.0) * np.ones((), np.float32), 4, 3).tolist() == [2.0] * 3  # type: ignore[union-attr]
    assert per_channel(np.array([np.inf], np.float32), 4, 3) is None
    assert per_channel(np.ones(3, np.int64), 2, 3) is None


# ---------------------------------------------------------------------------------------------
# Real models and random graphs.


def test_digits_cnn(digits_path: os.PathLike[str], digits_data: dict[str, np.ndarray]) -> None:
    model = onnx.load(str(digits_path))
    g = compiler.import_onnx(model)
    passes.run(g, PIPELINE)
    assert not any(n.op_type == "BatchNormalization" for n in g.nodes)
    ir.verify(g)
    out = compiler.export_onnx(g)
    onnx.checker.check_model(out, full_check=True)
    feeds = {"image": digits_data["test_images"]}
    want, got = ort_run(model, feeds)[0], ort_run(out, feeds)[0]
    assert rel_err(got, want) < 1e-5
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))


def test_light_resnet50() -> None:
    path = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light/light_resnet50.onnx")
    if not os.path.exists(path):
        pytest.skip("onnx's light ResNet-50 is not installed")
    model = onnx.load(path)
    g = compiler.import_onnx(model)
    passes.run(g, "fold-constants{max-elements=16777216},fold-batchnorm,dce")
    assert sum(n.op_type == "BatchNormalization" for n in g.nodes) == 0
    ir.verify(g)
    out = compiler.export_onnx(g)
    x = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    name = model.graph.input[0].name
    want, got = ort_run(model, {name: x})[0], ort_run(out, {name: x})[0]
    assert rel_err(got, want) < 1e-5


def test_random_graphs() -> None:
    check_pass("fold-batchnorm", max_examples=60)


def test_random_conv_gemm_graphs() -> None:
    check_pass("fold-batchnorm", max_examples=100,
               ops=("Conv", "DepthwiseConv", "Gemm", "BatchNormalization", "Relu", "Add", "Mul"))
