"""Dead-code elimination, identity removal, and the text-pipeline machinery."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import compiler
import ir
import passes
from conftest import ort_run


def _model() -> object:
    nodes = [
        helper.make_node("Identity", ["x"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Neg", ["a"], ["dead"]),  # read by nobody
        helper.make_node("Dropout", ["b"], ["c"]),  # inference mode: identity
        helper.make_node("Identity", ["c"], ["y"]),  # feeds the graph output: its name must survive
    ]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          initializer=[helper.make_tensor("unused", TensorProto.FLOAT, [2], [1, 2])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_default_pipeline_removes_dead_code_and_identities() -> None:
    m = _model()
    g = compiler.compress(m)
    ir.verify(g)
    assert [n.op_type for n in g.nodes] == ["Relu"]
    assert g.outputs[0].name == "y" and not g.initializers
    x = np.array([[-1, 0, 2]], np.float32)
    out = compiler.export_onnx(g)
    np.testing.assert_array_equal(ort_run(out, {"x": x})[0], ort_run(m, {"x": x})[0])


def test_identity_between_input_and_output_stays() -> None:
    node = helper.make_node("Identity", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    out = compiler.compress(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert [n.op_type for n in out.nodes] == ["Identity"]


def test_pipeline_parsing_and_errors() -> None:
    ps = passes.parse_pipeline("dce, remove-identity ,fuse{max-depth=3}")
    assert [p.name for p in ps] == ["dce", "remove-identity", "fuse"] and ps[2].options.max_depth == 3
    named = passes.parse_pipeline("default")  # named pipelines expand in place
    assert [p.name for p in named] == [p.name for p in passes.parse_pipeline("optimize")] + ["fuse"]
    with pytest.raises(passes.PipelineError, match="not a valid int"):
        passes.parse_pipeline("fuse{max-depth=many}")
    with pytest.raises(passes.PipelineError, match="unknown pass 'nope'"):
        passes.parse_pipeline("dce,nope")
    with pytest.raises(passes.PipelineError, match="has no option"):
        passes.parse_pipeline("dce{depth=3}")


def test_function_is_accepted_as_pass() -> None:
    g = compiler.import_onnx(_model())
    seen = []
    passes.run(g, [passes.as_pass(lambda graph: seen.append(len(graph.nodes)))])
    assert seen == [5]
