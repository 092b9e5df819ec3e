"""Channel pruning (issue 4): dependency groups, MAC-targeted allocation, surgery, recovery.

* the trained digits CNN loses half its MACs (counted independently from the exported protobuf) and at
  most 2 points of test accuracy (measured by onnxruntime);
* real-world-shaped models (MobileNetV3 with SE/HardSwish, an FPN detector with Resize/ConvTranspose,
  a MatMul transformer, a Paddle2ONNX export) lose >= 27% of their MACs at ratio 0.3 and stay valid
  (full ONNX check, onnxruntime at two input sizes);
* property tests on random conv nets: removing channels whose weights were first zeroed computes
  exactly what the zeroed model computes; ratio 0 changes nothing; the result always verifies;
* round_to, unknown ops, residual coupling, depthwise/grouped convs, exclude, the text pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import compiler
import ir
import passes
from conftest import count_macs, ort_run
from models import ALL_BUILDERS, sample_inputs
from passes.channel_prune import ChannelPruneConfig, LayerReport, channel_prune
from passes.channel_surgery import apply_edits
from passes.depgraph import ChannelGraph, ConstSlice, analyze
from passes.testing import Example, graphs



@pytest.fixture(autouse=True, scope="module")
def one_blas_thread() -> Iterator[None]:
    """The interpreter multiplies many small matrices; on a loaded machine BLAS threads only contend
    for them (ten times slower), so this module runs with one."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


# ---------------------------------------------------------------------------------------------
# Independent measurements: MACs from the protobuf, accuracy from onnxruntime.


def accuracy(model: onnx.ModelProto, data: Mapping[str, np.ndarray]) -> float:
    logits = ort_run(model, {"image": data["test_images"]})[0]
    return float((logits.argmax(1) == data["test_labels"]).mean())


def _cleaned(model: object) -> ir.Graph:
    g = compiler.import_onnx(model)
    passes.run(g, "cleanup")
    return g


# ---------------------------------------------------------------------------------------------
# The trained digits CNN.


def test_digits_half_the_macs_within_two_points(digits_path: object, digits_data: dict[str, np.ndarray]) -> None:
    g = _cleaned(digits_path)
    before = compiler.export_onnx(g)
    one = {"image": digits_data["test_images"][:1]}
    reports = channel_prune(g, ChannelPruneConfig(ratio=0.5), calibration={"image": digits_data["calibration"]})
    after = compiler.export_onnx(g)
    onnx.checker.check_model(after, full_check=True)
    cut = 1 - count_macs(after, one) / count_macs(before, one)
    acc0, acc1 = accuracy(before, digits_data), accuracy(after, digits_data)
    print(f"digits: MACs cut {cut:.1%}, accuracy {acc0:.2%} -> {acc1:.2%}")
    assert cut >= 0.47
    assert acc1 >= acc0 - 0.02
    assert all(isinstance(r, LayerReport) for r in reports)
    assert sum(r.macs_after for r in reports) <= 0.53 * sum(r.macs_before for r in reports)
    by_name = {r.name: r for r in reports}
    # stem and the residual branch's last conv write into one Add: one channel mask
    assert by_name["/stem/stem.0/Conv"].channels_after == by_name["/res/b/b.0/Conv"].channels_after
    assert by_name["/head/Gemm"].channels_after == 10  # graph output


def test_digits_round_to_8(digits_path: object, digits_data: dict[str, np.ndarray]) -> None:
    g = _cleaned(digits_path)
    reports = channel_prune(g, ChannelPruneConfig(ratio=0.4, round_to=8, recover=False),
                            calibration={"image": digits_data["calibration"][:32]})
    assert any(r.channels_after < r.channels_before for r in reports)
    for r in reports:
        assert r.channels_after == r.channels_before or r.channels_after % 8 == 0, r
    for w in compiler.export_onnx(g).graph.initializer:  # the weights agree
        if len(w.dims) == 4 and w.dims[0] != 10:
            assert w.dims[0] % 8 == 0, w.name


def test_ratio_zero_changes_nothing(digits_path: object, digits_data: dict[str, np.ndarray]) -> None:
    g = _cleaned(digits_path)
    text = str(g)
    reports = channel_prune(g, ChannelPruneConfig(ratio=0.0), calibration={"image": digits_data["calibration"][:8]})
    assert str(g) == text
    assert all(r.channels_after == r.channels_before and r.macs_after == r.macs_before for r in reports)


# ---------------------------------------------------------------------------------------------
# Real-world-shaped models.

REAL_WORLD = ("mobilenetv3", "fpn_detector", "transformer", "paddle_style")


@pytest.mark.parametrize("name", REAL_WORLD)
@pytest.mark.parametrize("calibrated", [True, False], ids=["activation", "l2"])
def test_real_world_models_lose_27_percent(name: str, calibrated: bool) -> None:
    proto = ALL_BUILDERS[name]()
    g = _cleaned(proto)
    before = compiler.export_onnx(g)
    one = sample_inputs(proto, dims={"N": 1})
    if calibrated:  # activation importance and recovery; MACs counted at the calibration shapes
        channel_prune(g, ChannelPruneConfig(ratio=0.3), calibration=[sample_inputs(proto, seed=s, dims={"N": 4})
                                                                    for s in range(2)])
    else:
        channel_prune(g, ChannelPruneConfig(ratio=0.3, input_shapes={k: v.shape for k, v in one.items()}))
    ir.verify(g)
    after = compiler.export_onnx(g)
    onnx.checker.check_model(after, full_check=True)
    for dims in ({"N": 1}, {"N": 2, "H": 64, "W": 48}):
        feeds = sample_inputs(proto, dims=dims)
        got, want = ort_run(after, feeds), ort_run(before, feeds)
        assert [a.shape for a in got] == [b.shape for b in want]
        assert all(np.isfinite(a).all() for a in got)
    cut = 1 - count_macs(after, one) / count_macs(before, one)
    print(f"{name}: MACs cut {cut:.1%}")
    assert cut >= 0.27


def test_transformer_heads_stay_mlp_and_stream_shrink() -> None:
    """q, k and v are split into heads by run-time Reshapes: they stay. The MLP hidden layers shrink,
    and so does the residual stream (through the spelled-out LayerNorms, as pruned LayerNorms do)."""
    g = _cleaned(ALL_BUILDERS["transformer"]())
    sizes = sorted((len(grp.classes), len(grp.removable)) for grp in analyze(g).groups)
    assert sizes.count((48, 0)) == 6  # q, k, v of both layers
    assert sizes.count((96, 96)) == 2  # the MLP hidden layers
    assert sizes.count((48, 48)) == 1  # the residual stream: embedding, attention and MLP outputs
    assert (6625, 0) in sizes  # the head feeds the graph output


# ---------------------------------------------------------------------------------------------
# Property tests on random conv nets.

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))
BLOCKS = ("conv", "residual", "depthwise", "grouped", "concat", "bn", "relu", "pool", "scale", "shift", "split",
          "slice", "resize", "pad", "transpose", "nhwc", "reshape")


@st.composite
def conv_nets(draw: st.DrawFn) -> Example:
    """Random conv nets whose ops map zero channels to zero channels (so a zeroed channel is a
    removed one): convs (plain, residual, depthwise with multiplier, grouped), concatenated branches,
    BatchNorm, pooling, per-channel constants, channel Split/Slice, Resize (scales or sizes), Pad,
    Transposes, a MatMul over channels in NHWC, Reshapes stating the channel count; then a GAP or
    Flatten into a Gemm head, and sometimes an inner value as a second output."""
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    g = ir.Graph("net", {"": 17})
    n, c, h = draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.sampled_from([4, 6]))
    x = g.add_input("x", ir.TensorType(ir.DType.FLOAT, (n, c, h, h)))
    pool: list[ir.Value] = [x]

    def const(*shape: int, low: float = -1.0) -> ir.Value:
        return g.add_initializer("w", rng.uniform(low, 1.0, size=shape).astype(np.float32))

    def op(op_type: str, inputs: list[ir.Value], **attrs: object) -> list[ir.Value]:
        node = g.make_node(op_type, inputs, attrs, num_outputs=int(attrs.pop("outputs", 1)))  # type: ignore[call-overload]
        ir.infer_node(node)
        return node.outputs

    def conv(v: ir.Value, cout: int, k: int = 3, group: int = 1) -> ir.Value:
        cin = v.shape[1]  # type: ignore[index]
        return op("Conv", [v, const(cout, cin // group, k, k), const(cout)], pads=[k // 2] * 4, group=group)[0]

    for _ in range(draw(st.integers(1, 7))):
        v = draw(st.sampled_from(pool))
        cin = int(v.shape[1])  # type: ignore[index]
        block = draw(st.sampled_from(BLOCKS))
        out: list[ir.Value] = []
        if block == "conv":
            out = [conv(v, draw(st.integers(1, 8)), draw(st.sampled_from([1, 3])))]
        elif block == "residual":
            out = op("Add", [v, conv(op("Relu", [conv(v, draw(st.integers(1, 6)))])[0], cin)])
        elif block == "depthwise":
            out = [conv(v, cin * draw(st.integers(1, 2)), group=cin)]
        elif block == "grouped" and cin % 2 == 0:
            out = [conv(v, 2 * draw(st.integers(1, 3)), group=2)]
        elif block == "concat":
            out = op("Concat", [conv(v, draw(st.integers(1, 4)), 1), conv(v, draw(st.integers(1, 4)))], axis=1)
        elif block == "bn":
            out = op("BatchNormalization", [v, const(cin), const(cin), const(cin), const(cin, low=0.5)])
        elif block in ("relu", "pool"):
            out = op("Relu", [v]) if block == "relu" else op(draw(st.sampled_from(["MaxPool", "AveragePool"])), [v],
                                                                kernel_shape=[2, 2], pads=[0, 0, 1, 1])
        elif block in ("scale", "shift"):
            out = op("Mul" if block == "scale" else "Add", [v, const(cin, 1, 1)])
        elif block == "split" and cin >= 2:
            out = op("Split", [v, g.add_initializer("split", np.array([1, cin - 1], np.int64))], axis=1, outputs=2)
        elif block == "slice" and cin >= 2:
            ints = [g.add_initializer(k, np.array([a], np.int64)) for k, a in (("s", 1), ("e", cin), ("a", 1))]
            out = op("Slice", [v, *ints])
        elif block == "resize":
            shape = np.array(v.shape, np.int64) * [1, 1, 2, 1]  # type: ignore[arg-type]
            by = [g.add_initializer("scales", np.array([1, 1, 2, 1], np.float32))] if draw(st.booleans()) else \
                [g.add_initializer("scales", np.zeros(0, np.float32)), g.add_initializer("sizes", shape)]
            out = op("Resize", [v, g.add_initializer("roi", np.zeros(0, np.float32)), *by], mode="nearest")
        elif block == "pad":
            out = op("Pad", [v, g.add_initializer("pads", np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64))])
        elif block == "transpose":
            out = op("Transpose", [v], perm=[0, 1, 3, 2])
        elif block == "nhwc":  # a 1x1 conv written as Transpose, MatMul over the last axis, Transpose
            y = op("MatMul", [op("Transpose", [v], perm=[0, 2, 3, 1])[0], const(cin, draw(st.integers(1, 6)))])
            out = op("Transpose", y, perm=[0, 3, 1, 2])
        elif block == "reshape":  # the channel count spelled out in constant shapes
            n_, _, h_, w_ = v.shape  # type: ignore[misc]
            flat = op("Reshape", [v, g.add_initializer("shape", np.array([n_, cin, h_ * w_], np.int64))])
            out = op("Reshape", [op("Relu", flat)[0], g.add_initializer("shape", np.array(v.shape, np.int64))])
        pool.extend(o for o in out if o.shape is not None and len(o.shape) == 4)
    last = pool[-1]
    if draw(st.booleans()):
        flat = op("Flatten", op("GlobalAveragePool", [last]), axis=1)[0]
    else:
        flat = op("Flatten", [last], axis=1)[0]
    g.outputs = list(op("Gemm", [flat, const(3, int(flat.shape[1])), const(3)], transB=1))  # type: ignore[index]
    inner = [v for v in pool[1:-1] if v is not last]
    if inner and draw(st.booleans()):
        g.outputs.append(draw(st.sampled_from(inner)))
    ir.verify(g)
    return Example(g, {"x": rng.standard_normal((n, c, h, h)).astype(np.float32)})


def _pick_removal(cg: ChannelGraph, rng: np.random.Generator) -> np.ndarray:
    """About half the unlocked classes, leaving every limited layout at least one position."""
    removed = ~cg.locked & (rng.random(cg.num_classes) < 0.5)
    for lay, _ in cg.limits:
        if not cg.keep(removed, lay).any():
            removed[cg.classes[lay.atoms[0]]] = False
    return removed


def _zeroed(cg: ChannelGraph, removed: np.ndarray) -> ir.Graph:
    """A copy of the graph whose removed channels compute zeros: their weights, biases and BatchNorm
    scales (every per-channel constant that adds into or scales them) are zero."""
    g = cg.graph.copy()
    twins = dict(zip(cg.graph.nodes, g.nodes))
    for e in cg.edits:
        if not isinstance(e, ConstSlice) or e.role not in ("weight", "bias", "scale"):
            continue
        node = twins[e.node]
        arr = np.array(node.input(e.index).const.array)
        for axis, lay in e.axes:
            index: list[object] = [slice(None)] * arr.ndim
            index[axis] = ~cg.keep(removed, lay)
            arr[tuple(index)] = 0
        node.set_input(e.index, g.add_initializer(f"{node.input(e.index).name}_zeroed", arr))
    return g


@SETTINGS
@given(conv_nets(), st.integers(0, 2**32 - 1))
def test_removing_zeroed_channels_is_exact(ex: Example, seed: int) -> None:
    g = ex.graph
    cg = analyze(g)
    removed = _pick_removal(cg, np.random.default_rng(seed))
    reference = ir.Interpreter().run(_zeroed(cg, removed), ex.feeds)
    apply_edits(cg, removed)
    ir.verify(g)
    got = ir.Interpreter().run(g, ex.feeds)
    for a, b in zip(got, reference):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(b).max(initial=0))))


@SETTINGS
@given(graphs(max_layers=10), st.sampled_from([0.0, 0.3, 0.6]), st.sampled_from(["l1", "l2", "bn"]),
       st.sampled_from(["global", "local"]), st.sampled_from([1, 2]))
def test_pruned_graph_verifies(ex: Example, ratio: float, kind: str, allocation: str, round_to: int) -> None:
    g = ex.graph
    text = str(g)
    before = ir.Interpreter().run(g, ex.feeds)
    channel_prune(g, ChannelPruneConfig(ratio, kind, allocation, round_to=round_to))
    ir.verify(g)
    after = ir.Interpreter().run(g, ex.feeds)
    assert [np.shape(a) for a in after] == [np.shape(b) for b in before]
    if ratio == 0.0:
        assert str(g) == text


# ---------------------------------------------------------------------------------------------
# Structure: unknown ops, grouped and depthwise convs, exclude, recovery on a small model.


def _model(nodes: list[onnx.NodeProto], weights: dict[str, np.ndarray], x_shape: list[int],
           outputs: tuple[str, ...] = ("y",), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [onnx.ValueInfoProto(name=o) for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def _w(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def test_unknown_and_ruleless_ops_stop_propagation() -> None:
    g = ir.Graph("g", {"": 17, "custom": 1})
    x = g.add_input("x", ir.TensorType(ir.DType.FLOAT, (1, 3, 8, 8)))
    a = g.make_node("Conv", [x, g.add_initializer("wa", _w(8, 3, 3, 3))], {"pads": [1, 1, 1, 1]}, name="a").outputs[0]
    b = g.make_node("Conv", [x, g.add_initializer("wb", _w(8, 3, 3, 3))], {"pads": [1, 1, 1, 1]}, name="b").outputs[0]
    c = g.make_node("Conv", [x, g.add_initializer("wc", _w(8, 3, 3, 3))], {"pads": [1, 1, 1, 1]}, name="c").outputs[0]
    unknown = g.make_node("Mystery", [a], domain="custom", name="mystery").outputs[0]
    lrn = g.make_node("LRN", [b], {"size": 3}, name="lrn").outputs[0]  # known op, mixes channels, no rule
    relu = g.make_node("Relu", [c], name="relu").outputs[0]
    for v in (unknown, lrn, relu):
        v.type = ir.TensorType(ir.DType.FLOAT, (1, 8, 8, 8))
    g.outputs = [g.make_node("Conv", [v, g.add_initializer(f"w{v.name}", _w(4, 8, 1, 1))], name=f"head_{v.name}")
                 .outputs[0] for v in (unknown, lrn, relu)]
    ir.infer_shapes(g)
    removable = {n.name: len(grp.removable) for grp in analyze(g).groups for n in grp.layers}
    assert removable["a"] == removable["b"] == 0
    assert removable["c"] == 8


def test_grouped_and_depthwise_convs_stay_valid() -> None:
    """A grouped conv (4 groups) loses whole groups; a depthwise conv with channel multiplier 2
    follows its input; a depthwise conv reading a tensor that cannot shrink (a graph output) gets a
    channel selection in front."""
    weights = {"w0": _w(16, 3, 3, 3), "wg": _w(16, 4, 3, 3), "wd": _w(32, 1, 3, 3), "w1": _w(8, 32, 1, 1),
               "ws": _w(8, 1, 3, 3), "w2": _w(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "wg"], ["c"], group=4, pads=[1, 1, 1, 1], name="grouped"),
        helper.make_node("Conv", ["c", "wd"], ["d"], group=16, pads=[1, 1, 1, 1], name="depthwise_x2"),
        helper.make_node("Conv", ["d", "w1"], ["e"], name="pointwise"),
        helper.make_node("Relu", ["e"], ["f"]),
        helper.make_node("Conv", ["f", "ws"], ["g"], group=8, pads=[1, 1, 1, 1], name="depthwise_selected"),
        helper.make_node("Conv", ["g", "w2"], ["y"], name="head"),
    ]
    proto = _model(nodes, weights, [1, 3, 8, 8], outputs=("y", "f"))
    g = _cleaned(proto)
    ir.infer_shapes(g)
    removable = {n.name: len(grp.removable) for grp in analyze(g).groups for n in grp.layers}
    assert removable == {"stem": 4, "grouped": 4, "depthwise_x2": 4, "pointwise": 0, "depthwise_selected": 8,
                         "head": 0}
    reports = {r.name: r for r in channel_prune(g, ChannelPruneConfig(ratio=0.5, importance="l1", allocation="local"))}
    after = compiler.export_onnx(g)
    onnx.checker.check_model(after, full_check=True)
    feeds = {"x": _w(1, 3, 8, 8)}
    assert [a.shape for a in ort_run(after, feeds)] == [(1, 4, 8, 8), (1, 8, 8, 8)]
    convs = {n.name: n for n in after.graph.node if n.op_type == "Conv"}
    shapes = {t.name: list(t.dims) for t in after.graph.initializer}
    group = next(a.i for a in convs["grouped"].attribute if a.name == "group")
    assert group < 4 and reports["grouped"].channels_after == 4 * group  # whole groups of 4 outputs went
    assert shapes[convs["grouped"].input[1]][1] == 4  # each group still reads 4 channels
    assert reports["depthwise_x2"].channels_after == 2 * reports["grouped"].channels_after
    assert reports["depthwise_selected"].channels_after < 8
    assert [n.op_type for n in after.graph.node].count("Gather") == 1


def test_per_channel_quantize_dequantize_is_sliced() -> None:
    weights = {"w0": _w(8, 3, 3, 3), "s": np.linspace(0.01, 0.08, 8, dtype=np.float32),
               "z": np.full(8, 128, np.uint8), "w1": _w(4, 8, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("QuantizeLinear", ["a", "s", "z"], ["q"], axis=1),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=1),
        helper.make_node("Relu", ["d"], ["r"]),
        helper.make_node("Conv", ["r", "w1"], ["y"], name="head"),
    ]
    g = _cleaned(_model(nodes, weights, [1, 3, 8, 8]))
    reports = {r.name: r for r in channel_prune(g, ChannelPruneConfig(ratio=0.4))}
    kept = reports["conv"].channels_after
    assert kept < 8
    after = compiler.export_onnx(g)
    onnx.checker.check_model(after, full_check=True)
    scales = [numpy_helper.to_array(t) for t in after.graph.initializer if t.data_type == TensorProto.FLOAT
              and len(t.dims) == 1]
    assert any(len(s) == kept for s in scales)
    assert ort_run(after, {"x": _w(1, 3, 8, 8)})[0].shape == (1, 4, 8, 8)


def test_exclude_keeps_named_layers(digits_path: object) -> None:
    g = _cleaned(digits_path)
    keep = ("/res/a/a.0/Conv", "/b2/b2.0/Conv")
    reports = {r.name: r for r in channel_prune(g, ChannelPruneConfig(ratio=0.3, exclude=keep))}
    assert all(reports[n].channels_after == reports[n].channels_before for n in keep)
    assert sum(r.macs_after for r in reports.values()) <= 0.71 * sum(r.macs_before for r in reports.values())


def test_recovery_matches_the_original_closely_on_a_small_model() -> None:
    proto = ALL_BUILDERS["small_cnn"]()
    g = _cleaned(proto)
    before = compiler.export_onnx(g)
    calib = [sample_inputs(proto, seed=s) for s in range(32)]
    errors = {}
    for recover in (False, True):
        pruned = g.copy()
        channel_prune(pruned, ChannelPruneConfig(ratio=0.3, recover=recover), calibration=calib)
        feeds = sample_inputs(proto, seed=99)
        got, want = ort_run(compiler.export_onnx(pruned), feeds)[0], ort_run(before, feeds)[0]
        errors[recover] = float(np.abs(got - want).mean() / np.abs(want).mean())
    assert errors[True] < 0.5 * errors[False]


# ---------------------------------------------------------------------------------------------
# The API around it.


def test_text_pipeline_and_options(digits_path: object) -> None:
    g = _cleaned(digits_path)
    passes.run(g, "channel-prune{ratio=0.3,importance=l1,allocation=local,round-to=4},dce")
    ir.verify(g)
    assert any(w.dims[0] not in (32, 64, 10) for w in compiler.export_onnx(g).graph.initializer if len(w.dims) == 4)
    with pytest.raises(passes.PipelineError):
        passes.run(g, "channel-prune{ratio=abc}")


def test_bad_configs_are_refused(digits_path: object) -> None:
    g = _cleaned(digits_path)
    with pytest.raises(ValueError, match="calibration"):
        channel_prune(g, ChannelPruneConfig(ratio=0.3, importance="activation"))
    for bad in (ChannelPruneConfig(ratio=1.0), ChannelPruneConfig(ratio=0.3, importance="l3"),
                ChannelPruneConfig(ratio=0.3, allocation="uniform"), ChannelPruneConfig(ratio=0.3, round_to=0)):
        with pytest.raises(ValueError):
            channel_prune(g, bad)


def test_progress_bar(digits_path: object, digits_data: dict[str, np.ndarray],
                      capsys: pytest.CaptureFixture[str]) -> None:
    g = _cleaned(digits_path)
    channel_prune(g, ChannelPruneConfig(ratio=0.2), calibration={"image": digits_data["calibration"][:64]},
                  progress=True)
    assert "channel-prune: statistics" in capsys.readouterr().err
