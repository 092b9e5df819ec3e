"""sparsify: unstructured, 2:4 and 4x1 weight sparsity with SparseGPT-style reconstruction.

The digits CNN (BatchNorm folded first, so the sparsified weights are the final ones) is pruned with
its calibration set and judged on its held-out test set by onnxruntime on the exported model; zeros
are counted in the exported ONNX initializers. Property tests run on random graphs from
`passes.testing.graphs()` and read the patterns back from the weights with their own indexing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

import compiler
import ir
import passes
from conftest import ort_run
from ir import Graph, Node, Tensor
from passes.sparsity import LayerReport, SparsityConfig, sparsify
from passes.testing import Example, assert_same_outputs, check_pass, graphs

LAYER_OPS = ("Conv", "DepthwiseConv", "Gemm", "MatMul")
PROPS = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                 suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------------------------------------
# Helpers.


def digits_graph(path: os.PathLike[str]) -> Graph:
    g = compiler.import_onnx(path)
    passes.run(g, "optimize")
    return g


def accuracy(model: onnx.ModelProto, data: dict[str, np.ndarray]) -> float:
    """Test accuracy in percent, by onnxruntime."""
    logits = ort_run(model, {"image": data["test_images"]})[0]
    return 100.0 * float(np.mean(logits.argmax(1) == data["test_labels"]))


def onnx_weights(model: onnx.ModelProto) -> dict[str, tuple[onnx.NodeProto, np.ndarray]]:
    """Each Conv/Gemm node of the exported model with its weight initializer."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {n.name: (n, inits[n.input[1]]) for n in model.graph.node if n.op_type in ("Conv", "Gemm")}


def layers(g: Graph) -> Iterator[tuple[Node, np.ndarray]]:
    """Nodes that read a constant weight, with it."""
    for n in g.nodes:
        if n.op_type in ("Conv", "Gemm", "MatMul") and n.input(1) is not None and n.input(1).const is not None:
            yield n, n.input(1).const.array


def axes(node: Node | onnx.NodeProto, w: np.ndarray) -> tuple[int, int]:
    """(output axis, input axis) of a weight, read from the op's definition."""
    attrs = {a.name: a.i for a in node.attribute} if isinstance(node, onnx.NodeProto) else node.attributes
    if node.op_type == "Conv" or (node.op_type == "Gemm" and attrs.get("transB", 0)):
        return 0, 1
    return 1, 0


def nonzeros_per_run(w: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Non-zeros in each run of `size` along `axis` (the tail run zero-padded)."""
    w = np.moveaxis(w, axis, 0)
    pad = -w.shape[0] % size
    w = np.concatenate([w, np.zeros((pad, *w.shape[1:]), w.dtype)])
    return np.count_nonzero(w.reshape(-1, size, *w.shape[1:]), axis=1)


def assert_two_of_four(node: Node | onnx.NodeProto, w: np.ndarray) -> None:
    assert nonzeros_per_run(w, axes(node, w)[1], 4).max() <= 2, f"{node.name}: more than 2 non-zeros in a group of 4"


def assert_four_by_one(node: Node | onnx.NodeProto, w: np.ndarray, before: np.ndarray) -> None:
    """Every block of 4 output channels at one input is all zero, or pruned nowhere (old zeros aside)."""
    out = axes(node, w)[0]
    new = nonzeros_per_run(w, out, 4)
    kept = nonzeros_per_run(before, out, 4)
    assert np.all((new == 0) | (new == kept)), f"{node.name}: a 4x1 block is partly pruned"


def set_weights(g: Graph, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replace every layer weight w by fn(w) (new tensors: the IR's are immutable)."""
    for n, w in list(layers(g)):
        n.set_input(1, g.add_initializer(f"{n.input(1).name}_t", Tensor(fn(w))))


def calibratable(ex: Example) -> bool:
    """Whether the feeds can serve as calibration data (the same number of samples in every input)."""
    return len({x.shape[0] for x in ex.feeds.values()}) == 1


def with_zeros(draw: st.DrawFn) -> Example:
    """A random graph with Conv/Gemm/MatMul layers, some of whose weights already hold zeros."""
    ex = draw(graphs(ops=LAYER_OPS + ("Relu", "Add"), max_layers=6).filter(calibratable))
    if draw(st.booleans()):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        set_weights(ex.graph, lambda w: np.where(rng.random(w.shape) < 0.3, 0, w).astype(w.dtype))
    return ex


examples = st.composite(with_zeros)()


# ---------------------------------------------------------------------------------------------
# The digits CNN.


@pytest.fixture
def dense_accuracy(digits_path: os.PathLike[str], digits_data: dict[str, np.ndarray]) -> float:
    return accuracy(onnx.load(str(digits_path)), digits_data)


def test_digits_unstructured_70(digits_path: os.PathLike[str], digits_data: dict[str, np.ndarray],
                                dense_accuracy: float) -> None:
    """70% zeros over all Conv/Gemm weights for at most 1 point of accuracy; a second run changes nothing."""
    g = digits_graph(digits_path)
    config = SparsityConfig(sparsity=0.7, scope="global")
    reports = sparsify(g, config, {"image": digits_data["calibration"]})
    model = compiler.export_onnx(g)
    weights = [w for _, w in onnx_weights(model).values()]
    zeros = sum(int(np.sum(w == 0)) for w in weights) / sum(w.size for w in weights)
    acc = accuracy(model, digits_data)
    print(f"unstructured 70% global: zeros {zeros:.2%}, accuracy {dense_accuracy:.2f}% -> {acc:.2f}%")
    assert zeros >= 0.7
    assert acc >= dense_accuracy - 1.0
    assert len(reports) == 9 and all(r.sparsity <= config.max_layer_sparsity for r in reports)
    assert all(r.error is not None and r.error < 0.5 for r in reports)

    again = sparsify(g, config, {"image": digits_data["calibration"]})
    assert all(r.pruned == 0 for r in again)
    assert accuracy(compiler.export_onnx(g), digits_data) == acc


def test_digits_two_of_four(digits_path: os.PathLike[str], digits_data: dict[str, np.ndarray],
                            dense_accuracy: float) -> None:
    """2:4 along the input channels of every layer with >= 4 of them per group, for at most 1 point."""
    g = digits_graph(digits_path)
    reports = sparsify(g, SparsityConfig(sparsity=0.5, pattern="2:4"), {"image": digits_data["calibration"]},
                       progress=True)
    skipped = {r.name: r.skipped for r in reports if r.skipped}
    assert set(skipped) == {"/stem/stem.0/Conv", "/dw/dw.0/dw.0.0/Conv"}  # 1 input channel per group
    assert all("no group of 4" in why for why in skipped.values())
    model = compiler.export_onnx(g)
    checked = 0
    for name, (node, w) in onnx_weights(model).items():
        if name in skipped:
            assert np.count_nonzero(w) == w.size
            continue
        assert_two_of_four(node, w)
        checked += 1
    assert checked == 7
    acc = accuracy(model, digits_data)
    print(f"2:4: accuracy {dense_accuracy:.2f}% -> {acc:.2f}%, skipped {sorted(skipped)}")
    assert acc >= dense_accuracy - 1.0


@pytest.mark.slow
@pytest.mark.parametrize("config", [SparsityConfig(0.7), SparsityConfig(0.5, pattern="4x1", scope="global"),
                                    SparsityConfig(0.8, scope="global")], ids=str)
def test_digits_other_settings(config: SparsityConfig, digits_path: os.PathLike[str],
                               digits_data: dict[str, np.ndarray], dense_accuracy: float) -> None:
    """Per-layer 70% (stem and depthwise included), global 4x1 at 50% and global 80% stay usable."""
    g = digits_graph(digits_path)
    sparsify(g, config, {"image": digits_data["calibration"]}, progress=True)
    assert accuracy(compiler.export_onnx(g), digits_data) >= dense_accuracy - 2.5


def test_digits_magnitude_only_is_worse(digits_path: os.PathLike[str], digits_data: dict[str, np.ndarray]) -> None:
    """Without reconstruction the same 70% loses most of the accuracy: reconstruction is what works."""
    g = digits_graph(digits_path)
    sparsify(g, SparsityConfig(sparsity=0.7, scope="global", reconstruct=False))
    assert accuracy(compiler.export_onnx(g), digits_data) < 90.0


# ---------------------------------------------------------------------------------------------
# Properties on random graphs.


@PROPS
@given(examples, st.sampled_from([0.3, 0.5, 0.7, 0.9]), st.booleans())
def test_unstructured_meets_target_per_layer(ex: Example, sparsity: float, reconstruct: bool) -> None:
    before = {n.name: w for n, w in layers(ex.graph)}
    reports = sparsify(ex.graph, SparsityConfig(sparsity, reconstruct=reconstruct), ex.feeds)
    assert [r.name for r in reports] == list(before)
    for r in reports:
        assert r.sparsity >= sparsity, r
    for n, w in layers(ex.graph):
        assert np.count_nonzero(w == 0) >= sparsity * w.size
        assert np.all(w[before[n.name] == 0] == 0)
    ir.verify(ex.graph)


@PROPS
@given(examples, st.booleans())
def test_two_of_four_holds(ex: Example, reconstruct: bool) -> None:
    before = {n.name: w for n, w in layers(ex.graph)}
    reports = {r.name: r for r in sparsify(ex.graph, SparsityConfig(0.5, pattern="2:4", reconstruct=reconstruct),
                                           ex.feeds)}
    for n, w in layers(ex.graph):
        if w.shape[axes(n, w)[1]] < 4:  # fewer than 4 input channels (per group): no group of 4
            assert reports[n.name].skipped and np.array_equal(w, before[n.name])
            continue
        assert not reports[n.name].skipped
        assert_two_of_four(n, w)
        assert np.all(w[before[n.name] == 0] == 0)


@PROPS
@given(examples, st.sampled_from([0.25, 0.5, 0.75]), st.booleans(), st.sampled_from(["layer", "global"]))
def test_four_by_one_holds(ex: Example, sparsity: float, reconstruct: bool, scope: str) -> None:
    before = {n.name: w for n, w in layers(ex.graph)}
    config = SparsityConfig(sparsity, pattern="4x1", scope=scope, reconstruct=reconstruct, max_layer_sparsity=1.0)
    reports = sparsify(ex.graph, config, ex.feeds)
    for n, w in layers(ex.graph):
        assert_four_by_one(n, w, before[n.name])
        assert np.all(w[before[n.name] == 0] == 0)
    considered = [r for r in reports if not r.skipped]
    if scope == "layer":
        assert all(r.sparsity >= sparsity for r in considered)
    elif considered:
        total = sum(r.params for r in considered)
        assert sum(r.params - r.nonzeros for r in considered) >= sparsity * total


@PROPS
@given(examples, st.sampled_from(["unstructured", "2:4", "4x1"]), st.booleans())
def test_sparsity_zero_changes_nothing(ex: Example, pattern: str, reconstruct: bool) -> None:
    before = [(n.input(1), n.input(2)) for n in ex.graph.nodes]
    reports = sparsify(ex.graph, SparsityConfig(0.0, pattern=pattern, reconstruct=reconstruct), ex.feeds)
    assert [(n.input(1), n.input(2)) for n in ex.graph.nodes] == before
    assert all(r.pruned == 0 for r in reports)


def test_check_pass_at_zero() -> None:
    check_pass("sparsify{sparsity=0}", max_examples=60)


@PROPS
@given(examples, st.sampled_from([("unstructured", 0.6), ("2:4", 0.5), ("4x1", 0.5)]),
       st.sampled_from(["layer", "global"]))
def test_magnitude_is_idempotent(ex: Example, pattern_sparsity: tuple[str, float], scope: str) -> None:
    """Without reconstruction a second run keeps the same mask and the same weights."""
    pattern, sparsity = pattern_sparsity
    config = SparsityConfig(sparsity, pattern=pattern, scope="layer" if pattern == "2:4" else scope,
                            reconstruct=False)
    sparsify(ex.graph, config)
    once = {n.name: w for n, w in layers(ex.graph)}
    again = sparsify(ex.graph, config)
    assert all(r.pruned == 0 for r in again)
    assert all(np.array_equal(w, once[n.name]) for n, w in layers(ex.graph))


@PROPS
@given(examples, st.sampled_from([("unstructured", 0.6), ("2:4", 0.5), ("4x1", 0.5)]))
def test_reconstruction_is_idempotent(ex: Example, pattern_sparsity: tuple[str, float]) -> None:
    """With reconstruction a second run finds every layer at its target and leaves the graph as is."""
    pattern, sparsity = pattern_sparsity
    config = SparsityConfig(sparsity, pattern=pattern)
    sparsify(ex.graph, config, ex.feeds)
    interp = ir.Interpreter()
    out = interp.run(ex.graph, ex.feeds)
    again = sparsify(ex.graph, config, ex.feeds)
    assert all(r.pruned == 0 for r in again)
    assert_same_outputs(out, interp.run(ex.graph, ex.feeds))


# ---------------------------------------------------------------------------------------------
# API and pass.


def test_pass_in_a_pipeline(digits_path: os.PathLike[str]) -> None:
    g = digits_graph(digits_path)
    passes.run(g, "sparsify{sparsity=0.5,pattern=2:4},dce")
    checked = [n for n, w in layers(g) if w.shape[1] >= 4]
    assert len(checked) == 7
    for n in checked:
        assert_two_of_four(n, n.input(1).const.array)
    assert all(n.input(1).name.endswith("_sparse") for n in checked)
    assert sum(name.endswith("weight_folded") for name in g.initializers) == 2  # only the skipped layers' weights


def test_layer_scope_ignores_the_global_cap(digits_path: os.PathLike[str]) -> None:
    reports = sparsify(digits_graph(digits_path), SparsityConfig(0.97, reconstruct=False))
    assert all(r.sparsity >= 0.97 for r in reports)


def test_report_fields(digits_path: os.PathLike[str]) -> None:
    g = digits_graph(digits_path)
    reports = sparsify(g, SparsityConfig(0.5, exclude=("/head/Gemm",), reconstruct=False))
    assert all(isinstance(r, LayerReport) for r in reports)
    head = reports[-1]
    assert (head.name, head.op, head.params, head.nonzeros, head.skipped) == ("/head/Gemm", "Gemm", 640, 640, "excluded")
    stem = reports[0]
    assert stem.op == "Conv" and stem.params == 288 and stem.nonzeros == 144 and stem.sparsity == 0.5
    assert stem.pruned == 144 and stem.error is None


@pytest.mark.parametrize("config, message", [
    (SparsityConfig(1.0), "sparsity must be in"),
    (SparsityConfig(0.5, pattern="3x1"), "pattern must be"),
    (SparsityConfig(0.7, pattern="2:4"), "fixes sparsity at 0.5"),
    (SparsityConfig(0.5, pattern="2:4", scope="global"), "use scope='layer'"),
    (SparsityConfig(0.5, scope="row"), "scope must be"),
    (SparsityConfig(0.9, scope="global", max_layer_sparsity=0.8), "max_layer_sparsity"),
    (SparsityConfig(0.5), "needs calibration data"),
])
def test_bad_config(config: SparsityConfig, message: str, digits_path: os.PathLike[str]) -> None:
    with pytest.raises(ValueError, match=message):
        sparsify(digits_graph(digits_path), config)
