"""Models shaped like what users export (PyTorch, PaddlePaddle; opsets 10-18; dynamic dims) run exactly.

Each model from tests/models.py runs through `compile` (the reference target and the native cpu target)
at two concrete sizes for its symbolic dims and must match onnxruntime within 1e-4 relative to the
output's largest magnitude.
"""

from __future__ import annotations

import numpy as np
import pytest

import compiler
import ir
from conftest import ort_run, rel_err
from tests.models import ALL_BUILDERS, sample_inputs

SIZES = [{"N": 1, "H": 32, "W": 32}, {"N": 3, "H": 48, "W": 80}]


@pytest.mark.parametrize("target", ["reference", "cpu"])
@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_matches_onnxruntime(name: str, target: str) -> None:
    model = ALL_BUILDERS[name]()
    m = compiler.compile(model, target=target, threads=2)
    for dims in SIZES:
        feeds = sample_inputs(model, seed=1, dims=dims)
        want = ort_run(model, feeds)
        got = m.run(feeds)
        assert list(got) == [o.name for o in model.graph.output]
        for (out_name, g), w in zip(got.items(), want):
            assert g.dtype == w.dtype, out_name
            assert rel_err(g, w) <= 1e-4, f"{name} {dims} {out_name}: {rel_err(g, w):.2e}"


@pytest.mark.parametrize("name", ["mobilenetv3", "transformer", "fpn_detector"])
def test_symbolic_dims_survive_import(name: str) -> None:
    """The batch dim stays symbolic through import and inference, from input to output."""
    g = compiler.import_onnx(ALL_BUILDERS[name]())
    batch = g.inputs[0].shape[0]
    assert isinstance(batch, str)
    assert all(o.shape is not None and o.shape[0] == batch for o in g.outputs)
    ir.verify(g)


def test_round_trip_keeps_constants_and_metadata() -> None:
    model = ALL_BUILDERS["paddle_style"]()
    model.metadata_props.add(key="author", value="mcc-tests")
    g = compiler.import_onnx(model)
    assert sum(n.op_type == "Constant" for n in g.nodes) >= 200
    out = compiler.export_onnx(g)
    assert {p.key: p.value for p in out.metadata_props}["author"] == "mcc-tests"
    assert sum(n.op_type == "Constant" for n in out.graph.node) == sum(n.op_type == "Constant" for n in model.graph.node)
    feeds = sample_inputs(model, seed=3)
    for a, b in zip(ort_run(out, feeds), ort_run(model, feeds)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_every_model_verifies(name: str) -> None:
    """Sibling subgraphs (If branches) may reuse value names; the verifier accepts real models."""
    ir.verify(compiler.import_onnx(ALL_BUILDERS[name]()))
