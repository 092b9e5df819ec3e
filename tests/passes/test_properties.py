"""Every pass of the project keeps what a graph computes; the kit catches wrong passes; idempotence."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import ir
import passes
from passes.testing import check_pass, graphs

PASSES = sorted(name for name, cls in passes.registered_passes().items() if not cls.lossy)
LOSSY = sorted(name for name, cls in passes.registered_passes().items() if cls.lossy)


@pytest.mark.parametrize("name", PASSES)
def test_every_pass_preserves_semantics(name: str) -> None:
    check_pass(name, max_examples=40)


def test_lossy_passes_are_declared() -> None:
    """Every pass that changes results on purpose says so (and is tested against error bounds)."""
    assert {"sparsify"} <= set(LOSSY)


def test_default_pipeline_preserves_semantics() -> None:
    check_pass("default", max_examples=60)


def _add_to_sub(g: ir.Graph) -> None:
    for n in g.nodes:
        if n.op_type == "Add":
            n.op_type = "Sub"


def _drop_transpose(g: ir.Graph) -> None:
    for n in g.nodes:
        if n.op_type == "Transpose":
            g.replace_all_uses(n.outputs[0], n.inputs[0])
            g.remove(n)


def _scale_conv_bias_twice(g: ir.Graph) -> None:
    """A subtle bug: a 'fold' that applies the Conv bias twice."""
    for n in g.nodes:
        if n.op_type == "Conv" and n.input(2) is not None:
            n.set_input(2, g.make_node("Add", [n.inputs[2], n.inputs[2]], before=n).outputs[0])


@pytest.mark.parametrize("wrong, ops", [
    (_add_to_sub, ("Add", "Relu", "Conv")),
    (_drop_transpose, ("Transpose", "Relu", "Add")),
    (_scale_conv_bias_twice, ("Conv", "Relu")),
])
def test_check_pass_catches_wrong_passes(wrong, ops) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AssertionError, match="counterexample"):
        check_pass(wrong, max_examples=200, ops=ops)


def test_wrong_pass_is_caught_with_the_default_op_set() -> None:
    with pytest.raises(AssertionError, match="counterexample"):
        check_pass(_add_to_sub, max_examples=200)


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(graphs())
def test_default_pipeline_is_idempotent(ex) -> None:  # type: ignore[no-untyped-def]
    g = passes.run(ex.graph.copy(), "default")
    once = str(g)
    passes.run(g, "default")
    assert str(g) == once


@pytest.mark.parametrize("name", ["mobilenetv3", "transformer_opset17", "fpn_detector", "paddle_style",
                                  "control_flow"])
def test_default_pipeline_is_idempotent_on_real_models(name: str) -> None:
    import compiler
    from tests.models import ALL_BUILDERS

    g = passes.run(compiler.import_onnx(ALL_BUILDERS[name]()), "default")
    once = str(g)
    passes.run(g, "default")
    assert str(g) == once


def test_pass_manager_runs_to_a_fixpoint() -> None:
    """Each round of this pass removes one Neg pair; the manager repeats it until nothing changes."""
    g = ir.Graph("g", {"": 18})
    v = g.add_input("x", ir.TensorType(ir.DType.FLOAT, (2,)))
    for _ in range(6):
        v = g.make_node("Neg", [v]).outputs[0]
    g.outputs = [v]

    class OnePair(passes.Pass):
        """Removes the first Neg(Neg(x)) it finds (one per run, to need several rounds)."""

        name = "one-pair"

        def run(self, graph: ir.Graph) -> bool:
            for n in graph.nodes:
                inner = n.inputs[0].producer if n.op_type == "Neg" else None
                if inner is not None and inner.op_type == "Neg" and len(n.inputs[0].uses) == 1:
                    graph.replace_all_uses(n.outputs[0], inner.inputs[0])
                    graph.remove(n)
                    graph.remove(inner)
                    return True
            return False

    pm = passes.PassManager([OnePair()], verify=True, fixpoint=True)
    pm.run(g)
    assert [n.op_type for n in g.nodes] == [] and g.outputs[0] is g.inputs[0]
    assert "one-pair" in pm.timings
