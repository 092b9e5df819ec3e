"""Fusion: Conv/Gemm/MatMul take their elementwise epilogues; chains of light ops become one kernel."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import compiler
import ir
import passes
from conftest import ort_run, rel_err
from passes.testing import check_pass


def _conv_block() -> object:
    """conv -> add(bias) -> relu -> add(residual x) -> relu, plus a side branch read by the output."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((4, 1, 1)).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "b"], ["cb"]),
        helper.make_node("Relu", ["cb"], ["r"]),
        helper.make_node("Add", ["r", "x"], ["s"]),
        helper.make_node("Relu", ["s"], ["y"]),
        helper.make_node("Transpose", ["y"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["t", "shape"], ["z"]),
    ]
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), "shape")
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 5, 5])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
                           helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w, b, shape])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_epilogue_and_injective_groups() -> None:
    m = _conv_block()
    g = compiler.import_onnx(m)
    passes.run(g, "fuse", verify_each=True)
    fused = [n for n in g.nodes if n.op_type == "Fused"]
    assert len(g.nodes) == 2 and len(fused) == 2
    conv_group = next(n for n in fused if n.attributes["kind"] == "complex")
    assert [n.op_type for n in conv_group.attributes["body"].nodes] == ["Conv", "Add", "Relu", "Add", "Relu"]
    assert [o.name for o in g.outputs] == ["z", "y"]  # public names survive
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5)).astype(np.float32)
    for a, b in zip(compiler.compile(g).run({"x": x}).values(), ort_run(m, {"x": x})):
        assert rel_err(a, b) <= 1e-5


def test_export_inlines_groups_back_to_standard_onnx() -> None:
    import onnx

    m = _conv_block()
    g = passes.run(compiler.import_onnx(m), "fuse")
    out = compiler.export_onnx(g)
    onnx.checker.check_model(out, full_check=True)
    assert {o.domain for o in out.opset_import} == {""}
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in m.graph.node]
    x = np.random.default_rng(2).standard_normal((1, 4, 5, 5)).astype(np.float32)
    for a, b in zip(ort_run(out, {"x": x}), ort_run(m, {"x": x})):
        np.testing.assert_array_equal(a, b)


def test_opaque_ops_and_side_readers_limit_groups() -> None:
    """A value read outside the group escapes as a second output; If nodes are never fused."""
    m = _conv_block()
    g = compiler.import_onnx(m)
    passes.run(g, "fuse{max-depth=2}")
    assert all(len(n.attributes["body"].nodes) <= 2 for n in g.nodes if n.op_type == "Fused")
    ir.verify(g)


def test_fuse_then_unfuse_round_trip() -> None:
    g = compiler.import_onnx(_conv_block())
    before = [n.op_type for n in g.nodes]
    passes.run(g, "fuse,unfuse", verify_each=True)
    assert [n.op_type for n in g.nodes] == before
    assert "mcc" not in g.opset_imports


def test_fuse_preserves_semantics() -> None:
    check_pass("fuse", max_examples=60)
    check_pass("fuse,unfuse", max_examples=30)
