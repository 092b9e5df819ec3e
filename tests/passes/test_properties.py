"""Every pass of the project keeps what a graph computes; the kit catches wrong passes; idempotence."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

import ir
import passes
from passes.testing import check_pass, graphs

PASSES = sorted(passes.registered_passes())


@pytest.mark.parametrize("name", PASSES)
def test_every_pass_preserves_semantics(name: str) -> None:
    check_pass(name, max_examples=40)


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
