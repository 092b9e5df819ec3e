"""Control flow, sequence and optional ops: mcc's reference against onnxruntime, and import/export round trips.

Each model is small and built with onnx.helper; it uses only Add/Identity/Relu besides the ops under test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper as oh

import compiler
import ir
from ir import DType, OptionalType, SequenceType, TensorType

F, I64, B = TP.FLOAT, TP.INT64, TP.BOOL


def _model(nodes: list[onnx.NodeProto], ins: list[Any], outs: list[Any], opset: int = 17,
           inits: list[onnx.TensorProto] | None = None) -> onnx.ModelProto:
    g = oh.make_graph(nodes, "g", ins, outs, initializer=inits or [])
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _vi(name: str, t: int, shape: Any) -> onnx.ValueInfoProto:
    return oh.make_tensor_value_info(name, t, shape)


# ---------------------------------------------------------------------------------------------
# Models


def if_model() -> onnx.ModelProto:
    """If whose branches read outer-scope x and y (then: x + y; else: relu(x) + bias initializer)."""
    then_g = oh.make_graph([oh.make_node("Add", ["x", "y"], ["t_out"])], "then", [], [_vi("t_out", F, [3])])
    else_g = oh.make_graph([oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Add", ["r", "bias"], ["e_out"])],
                           "else", [], [_vi("e_out", F, [3])])
    node = oh.make_node("If", ["c"], ["out"], then_branch=then_g, else_branch=else_g)
    bias = onnx.numpy_helper.from_array(np.array([10, 20, 30], np.float32), "bias")
    return _model([node], [_vi("c", B, []), _vi("x", F, [3]), _vi("y", F, [3])], [_vi("out", F, [3])], inits=[bias])


def loop_model() -> onnx.ModelProto:
    """Loop: acc += x (outer) each step, cnt += iteration number; scan output stacks each acc."""
    body = oh.make_graph(
        [
            oh.make_node("Identity", ["cond_in"], ["cond_out"]),
            oh.make_node("Add", ["acc_in", "x"], ["acc_out"]),
            oh.make_node("Add", ["cnt_in", "i"], ["cnt_out"]),
            oh.make_node("Identity", ["acc_out"], ["scan_out"]),
        ],
        "body",
        [_vi("i", I64, []), _vi("cond_in", B, []), _vi("acc_in", F, [2]), _vi("cnt_in", I64, [])],
        [_vi("cond_out", B, []), _vi("acc_out", F, [2]), _vi("cnt_out", I64, []), _vi("scan_out", F, [2])],
    )
    node = oh.make_node("Loop", ["M", "cond", "acc0", "cnt0"], ["acc", "cnt", "scans"], body=body)
    return _model([node], [_vi("M", I64, []), _vi("cond", B, []), _vi("acc0", F, [2]), _vi("cnt0", I64, []),
                           _vi("x", F, [2])],
                  [_vi("acc", F, [2]), _vi("cnt", I64, []), _vi("scans", F, [None, 2])])


def loop_while_model() -> onnx.ModelProto:
    """Loop without M (a while loop): cond_out = flags[i] from an outer sequence; s += step each time."""
    body = oh.make_graph(
        [oh.make_node("SequenceAt", ["flags", "i"], ["cond_out"]), oh.make_node("Add", ["s_in", "step"], ["s_out"])],
        "body",
        [_vi("i", I64, []), _vi("cin", B, []), _vi("s_in", F, [2])],
        [_vi("cond_out", B, []), _vi("s_out", F, [2])],
    )
    nodes = [
        oh.make_node("SequenceConstruct", ["t", "t", "f", "t"], ["flags"]),
        oh.make_node("Loop", ["", "cond", "s0"], ["s"], body=body),
    ]
    inits = [onnx.numpy_helper.from_array(np.array(v), n) for n, v in [("t", True), ("f", False)]]
    return _model(nodes, [_vi("cond", B, []), _vi("s0", F, [2]), _vi("step", F, [2])], [_vi("s", F, [2])],
                  inits=inits)


def scan_model(opset: int = 11, **attrs: Any) -> onnx.ModelProto:
    """Scan: running sum of x slices (state) and the running sums stacked (scan output)."""
    body = oh.make_graph(
        [oh.make_node("Add", ["s_in", "x_t"], ["s_out"]), oh.make_node("Identity", ["s_out"], ["y_t"])],
        "body", [_vi("s_in", F, [2]), _vi("x_t", F, [2])], [_vi("s_out", F, [2]), _vi("y_t", F, [2])],
    )
    node = oh.make_node("Scan", ["s0", "x"], ["s", "y"], body=body, num_scan_inputs=1, **attrs)
    in_axis = (attrs.get("scan_input_axes") or [0])[0]
    x_shape = [3, 2] if in_axis in (0, -2) else [2, 3]
    return _model([node], [_vi("s0", F, [2]), _vi("x", F, x_shape)], [_vi("s", F, [2]), _vi("y", F, None)],
                  opset=opset)


def scan8_model(directions: list[int]) -> onnx.ModelProto:
    """Opset 8 Scan over a batch of two sequences with per-batch lengths."""
    body = oh.make_graph(
        [oh.make_node("Add", ["s_in", "x_t"], ["s_out"]), oh.make_node("Identity", ["s_out"], ["y_t"])],
        "body", [_vi("s_in", F, [2]), _vi("x_t", F, [2])], [_vi("s_out", F, [2]), _vi("y_t", F, [2])],
    )
    node = oh.make_node("Scan", ["lens", "s0", "x"], ["s", "y"], body=body, num_scan_inputs=1, directions=directions)
    return _model([node], [_vi("lens", I64, [2]), _vi("s0", F, [2, 2]), _vi("x", F, [2, 3, 2])],
                  [_vi("s", F, [2, 2]), _vi("y", F, [2, 3, 2])], opset=8)


def sequence_model() -> onnx.ModelProto:
    """Split, insert, erase, at, length, map (with an extra tensor input), concat and stack of a sequence."""
    map_body = oh.make_graph([oh.make_node("Add", ["e", "b"], ["e2"])], "map",
                             [_vi("e", F, [1, 3]), _vi("b", F, [3])], [_vi("e2", F, [1, 3])])
    nodes = [
        oh.make_node("SplitToSequence", ["x"], ["s1"], axis=0),
        oh.make_node("SequenceInsert", ["s1", "y", "pos"], ["s2"]),
        oh.make_node("SequenceErase", ["s2"], ["s3"]),
        oh.make_node("SequenceAt", ["s3", "neg"], ["last"]),
        oh.make_node("SequenceLength", ["s3"], ["n"]),
        oh.make_node("SequenceMap", ["s3", "b"], ["s4"], body=map_body),
        oh.make_node("ConcatFromSequence", ["s4"], ["cat"], axis=0),
        oh.make_node("ConcatFromSequence", ["s4"], ["stk"], axis=-1, new_axis=1),
        oh.make_node("SequenceConstruct", ["y", "y"], ["pair"]),
        oh.make_node("SequenceEmpty", [], ["empty"], dtype=F),
        oh.make_node("SequenceInsert", ["empty", "last"], ["one"]),
        oh.make_node("SplitToSequence", ["x", "three"], ["chunks"], axis=0),
        oh.make_node("SplitToSequence", ["x"], ["rows"], axis=0, keepdims=0),
    ]
    seq = lambda n: oh.make_tensor_sequence_value_info(n, F, None)  # noqa: E731
    inits = [onnx.numpy_helper.from_array(np.array(v, t), n)
             for n, v, t in [("pos", 1, np.int64), ("neg", -1, np.int64), ("three", 3, np.int64)]]
    return _model(nodes, [_vi("x", F, [4, 3]), _vi("y", F, [1, 3]), _vi("b", F, [3])],
                  [_vi("last", F, None), _vi("n", I64, []), _vi("cat", F, None), _vi("stk", F, None), seq("pair"),
                   seq("one"), seq("chunks"), seq("rows")], inits=inits)


def optional_model() -> onnx.ModelProto:
    """Optional wrap/unwrap, an empty optional, and an If that yields a sequence."""
    ftype = oh.make_tensor_type_proto(F, [3])
    then_g = oh.make_graph([oh.make_node("SequenceConstruct", ["x", "x"], ["ts"])], "then", [],
                           [oh.make_tensor_sequence_value_info("ts", F, [3])])
    else_g = oh.make_graph([oh.make_node("SequenceConstruct", ["x"], ["es"])], "else", [],
                           [oh.make_tensor_sequence_value_info("es", F, [3])])
    nodes = [
        oh.make_node("Optional", ["x"], ["ox"]),
        oh.make_node("OptionalHasElement", ["ox"], ["has"]),
        oh.make_node("OptionalGetElement", ["ox"], ["got"]),
        oh.make_node("Optional", [], ["none"], type=ftype),
        oh.make_node("OptionalHasElement", ["none"], ["has_none"]),
        oh.make_node("If", ["c"], ["seq"], then_branch=then_g, else_branch=else_g),
    ]
    return _model(nodes, [_vi("x", F, [3]), _vi("c", B, [])],
                  [_vi("has", B, []), _vi("got", F, [3]), _vi("has_none", B, []),
                   oh.make_tensor_sequence_value_info("seq", F, [3])], opset=18)


# ---------------------------------------------------------------------------------------------
# Helpers

rng = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _ort(model: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    so = ort.SessionOptions()
    so.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _assert_same(got: Any, want: Any) -> None:
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same(g, w)
        return
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _check(model: onnx.ModelProto, feeds: dict[str, Any]) -> list[Any]:
    want = _ort(model, feeds)
    outs = compiler.compile(model).run(feeds)
    got = [outs[o.name] for o in model.graph.output]
    for g, w in zip(got, want):
        _assert_same(g, w)
    return got


CASES = {
    "if_then": (if_model, lambda: {"c": np.array(True), "x": _f(3), "y": _f(3)}),
    "if_else": (if_model, lambda: {"c": np.array(False), "x": _f(3), "y": _f(3)}),
    "loop": (loop_model, lambda: {"M": np.array(4, np.int64), "cond": np.array(True), "acc0": _f(2),
                                  "cnt0": np.array(0, np.int64), "x": _f(2)}),
    "loop_cond_false": (loop_model, lambda: {"M": np.array(4, np.int64), "cond": np.array(False), "acc0": _f(2),
                                             "cnt0": np.array(7, np.int64), "x": _f(2)}),
    "loop_while": (loop_while_model, lambda: {"cond": np.array(True), "s0": _f(2), "step": _f(2)}),
    "scan": (scan_model, lambda: {"s0": _f(2), "x": _f(3, 2)}),
    "scan_axes_dirs": (lambda: scan_model(scan_input_axes=[1], scan_input_directions=[1], scan_output_axes=[-1],
                                          scan_output_directions=[1]), lambda: {"s0": _f(2), "x": _f(2, 3)}),
    "scan8_lens": (lambda: scan8_model([0]), lambda: {"lens": np.array([3, 1], np.int64), "s0": _f(2, 2),
                                                     "x": _f(2, 3, 2)}),
    "scan8_reverse": (lambda: scan8_model([1]), lambda: {"lens": np.array([2, 3], np.int64), "s0": _f(2, 2),
                                                         "x": _f(2, 3, 2)}),
    "sequence": (sequence_model, lambda: {"x": _f(4, 3), "y": _f(1, 3), "b": _f(3)}),
    "optional_then": (optional_model, lambda: {"x": _f(3), "c": np.array(True)}),
    "optional_else": (optional_model, lambda: {"x": _f(3), "c": np.array(False)}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_onnxruntime(case: str) -> None:
    build, feeds = CASES[case]
    _check(build(), feeds())


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_export_round_trip(case: str) -> None:
    build, make_feeds = CASES[case]
    model, feeds = build(), make_feeds()
    exported = compiler.export_onnx(compiler.import_onnx(model))
    onnx.checker.check_model(exported, full_check=True)
    for g, w in zip(_ort(exported, feeds), _ort(model, feeds)):
        _assert_same(g, w)


def test_if_and_loop_values() -> None:
    """Known answers, independent of onnxruntime."""
    x, y = np.array([1, -2, 3], np.float32), np.array([1, 1, 1], np.float32)
    m = compiler.compile(if_model())
    np.testing.assert_array_equal(m.run({"c": np.array(True), "x": x, "y": y})["out"], x + y)
    np.testing.assert_array_equal(m.run({"c": np.array(False), "x": x, "y": y})["out"], [11, 20, 33])
    acc0, xx = np.zeros(2, np.float32), np.array([1, 2], np.float32)
    feeds = {"M": np.array(3, np.int64), "cond": np.array(True), "acc0": acc0, "cnt0": np.array(0, np.int64), "x": xx}
    out = compiler.compile(loop_model()).run(feeds)
    np.testing.assert_array_equal(out["acc"], [3, 6])
    assert int(out["cnt"]) == 0 + 1 + 2
    np.testing.assert_array_equal(out["scans"], [[1, 2], [2, 4], [3, 6]])


def test_loop_zero_iterations_gives_typed_empty_scan_output() -> None:
    feeds = {"M": np.array(0, np.int64), "cond": np.array(True), "acc0": _f(2), "cnt0": np.array(5, np.int64),
             "x": _f(2)}
    got = _check(loop_model(), feeds)
    assert got[2].shape == (0, 2) and got[2].dtype == np.float32


def test_scan_opset8_batched_with_sequence_lens() -> None:
    """Opset 8 Scan: batch axis 0; shorter sequences have their scan outputs zero-padded."""
    x = np.arange(12, dtype=np.float32).reshape(2, 3, 2)
    feeds = {"lens": np.array([3, 2], np.int64), "s0": np.zeros((2, 2), np.float32), "x": x}
    out = compiler.compile(scan8_model([1])).run(feeds)
    np.testing.assert_array_equal(out["s"], [x[0].sum(0), x[1, :2].sum(0)])
    np.testing.assert_array_equal(out["y"][1], [x[1, 1], x[1, 1] + x[1, 0], [0, 0]])
    np.testing.assert_array_equal(out["y"][0], np.cumsum(x[0, ::-1], axis=0))


def _infer_fresh(model: onnx.ModelProto) -> dict[str, Any]:
    """Types from mcc's own inference alone (ONNX's inference off, node output types cleared)."""
    g = compiler.import_onnx(model, infer_shapes=False)
    for n in g.all_nodes():
        for v in n.outputs:
            v.type = None
    ir.infer_shapes(g)
    return {v.name: v.type for n in g.all_nodes() for v in n.outputs}


def test_inferred_types() -> None:
    t = _infer_fresh(loop_model())
    assert t["acc"] == TensorType(DType.FLOAT, (2,)) and t["cnt"] == TensorType(DType.INT64, ())
    assert t["scans"] == TensorType(DType.FLOAT, (None, 2))
    t = _infer_fresh(if_model())
    assert t["out"] == TensorType(DType.FLOAT, (3,))
    t = _infer_fresh(scan_model(scan_input_axes=[1], scan_output_axes=[-1]))
    assert t["s"] == TensorType(DType.FLOAT, (2,)) and t["y"] == TensorType(DType.FLOAT, (2, 3))
    t = _infer_fresh(sequence_model())
    assert t["s1"] == SequenceType(TensorType(DType.FLOAT, (1, 3)))
    assert t["s2"] == SequenceType(TensorType(DType.FLOAT, (1, 3)))
    assert t["rows"] == SequenceType(TensorType(DType.FLOAT, (3,)))
    assert t["last"] == TensorType(DType.FLOAT, (1, 3)) and t["n"] == TensorType(DType.INT64, ())
    assert t["s4"] == SequenceType(TensorType(DType.FLOAT, (1, 3)))
    assert t["cat"] == TensorType(DType.FLOAT, (None, 3)) and t["stk"] == TensorType(DType.FLOAT, (1, 3, None))
    t = _infer_fresh(optional_model())
    f3 = TensorType(DType.FLOAT, (3,))
    assert t["none"] == OptionalType(f3) and t["ox"] == OptionalType(f3)
    assert t["got"] == TensorType(DType.FLOAT, (3,)) and t["has"] == TensorType(DType.BOOL, ())
    assert t["seq"] == SequenceType(TensorType(DType.FLOAT, (3,)))


def test_errors_are_loud() -> None:
    seq = ir.get_op("SequenceAt").reference
    with pytest.raises(IndexError):
        seq(None, [np.zeros(1)], np.array(3))
    with pytest.raises(ValueError):
        ir.get_op("OptionalGetElement").reference(None, None)
    with pytest.raises(NotImplementedError):
        ir.get_op("ConcatFromSequence").reference(None, [], axis=0, new_axis=0)
