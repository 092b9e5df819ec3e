"""The IR's structural invariants: links stay exact through edits, the verifier catches breakage."""

from __future__ import annotations

import numpy as np
import pytest

import ir
from ir import DType, Graph, Node, TensorType


def _chain() -> tuple[Graph, Node, Node]:
    g = Graph("g", {"": 17})
    x = g.add_input("x", TensorType(DType.FLOAT, ("N", 4)))
    c = g.add_initializer("c", np.ones(4, np.float32))
    add = g.make_node("Add", [x, c])
    relu = g.make_node("Relu", [add.outputs[0]])
    g.outputs = [relu.outputs[0]]
    return g, add, relu


def test_uses_and_producers_are_linked() -> None:
    g, add, relu = _chain()
    x, c = g.inputs[0], g.initializers["c"]
    assert add.outputs[0].producer is add and add.outputs[0].consumers == [relu]
    assert x.uses == [(add, 0)] and c.uses == [(add, 1)]
    assert x.is_graph_input and c.is_initializer and relu.outputs[0].is_graph_output
    ir.verify(g)


def test_replace_all_uses_and_remove() -> None:
    g, add, relu = _chain()
    x = g.inputs[0]
    g.replace_all_uses(add.outputs[0], x)
    assert relu.inputs[0] is x and add.outputs[0].uses == []
    g.remove(add)
    assert x.uses == [(relu, 0)] and g.initializers["c"].uses == []
    ir.verify(g)
    with pytest.raises(ValueError, match="still used"):
        g.remove(relu)


def test_insert_keeps_topological_order_and_unique_names() -> None:
    g, add, relu = _chain()
    neg = Node("Neg", [add.outputs[0]], 1)
    g.insert_after(add, neg)
    relu.set_input(0, neg.outputs[0])
    assert [n.op_type for n in g.nodes] == ["Add", "Neg", "Relu"]
    assert len({v.name for v in g.values()}) == len(list(g.values()))
    ir.verify(g)
    out = ir.evaluate(g, {"x": np.array([[-3, -1, 0, 2]], np.float32)})[0]
    np.testing.assert_array_equal(out, [[2, 0, 0, 0]])


def test_sort_repairs_order() -> None:
    g, add, relu = _chain()
    g._nodes.reverse()
    with pytest.raises(ir.VerificationError, match="not defined before"):
        ir.verify(g)
    g.sort()
    ir.verify(g)


@pytest.mark.parametrize("breakage", ["ssa", "undefined", "stale-use", "unknown-op", "output"])
def test_verifier_catches(breakage: str) -> None:
    g, add, relu = _chain()
    if breakage == "ssa":
        relu.outputs[0].name = add.outputs[0].name
    elif breakage == "undefined":
        stray = ir.Value("stray", TensorType(DType.FLOAT, (4,)))
        relu.set_input(0, stray)
    elif breakage == "stale-use":
        add.outputs[0]._uses.append((relu, 5))
    elif breakage == "unknown-op":
        relu.op_type = "NoSuchOp"
    else:
        g.outputs = [ir.Value("nowhere")]
    with pytest.raises(ir.VerificationError):
        ir.verify(g)


def test_copy_is_independent() -> None:
    g, add, relu = _chain()
    h = g.copy()
    ir.verify(h)
    h.remove(h.nodes[1], force=True)
    assert len(g.nodes) == 2 and len(h.nodes) == 1
    assert h.initializers["c"].const is g.initializers["c"].const  # tensors are shared: immutable


def test_printer_and_networkx_view() -> None:
    g, add, relu = _chain()
    text = str(g)
    assert "graph g(%x: float[N,4])" in text and "= Relu(%" in text and "return %" in text
    dg = ir.to_networkx(g)
    assert list(dg.edges()) == [(add, relu)]


def test_tensor_is_immutable() -> None:
    t = ir.Tensor(np.zeros(3, np.float32))
    with pytest.raises(ValueError):
        t.array[0] = 1
    assert t.type == TensorType(DType.FLOAT, (3,)) and t.nbytes == 12


def test_broadcast_shapes_symbolic() -> None:
    from ir.ops import broadcast_shapes

    assert broadcast_shapes(("N", 1, 4), (3, 1)) == ("N", 3, 4)
    assert broadcast_shapes(("N", 4), ("M", 4)) == (None, 4)
    assert broadcast_shapes(("N", 4), None) is None


def test_subgraph_inputs_may_shadow_but_outputs_may_not() -> None:
    g, add, relu = _chain()
    body = Graph("body", parent=g)
    inner = body.add_input("x_shadow", TensorType(DType.FLOAT, (4,)))
    inner.name = "x"  # the same name as the outer input: allowed for a formal input
    neg = Node("Neg", [inner], 1)
    body.append(neg)
    body.outputs = [neg.outputs[0]]
    holder = Node("Identity", [relu.outputs[0]], 1, {"body": body})
    g.append(holder)
    ir.verify(g)
    neg.outputs[0].name = add.outputs[0].name  # a node output reusing an outer name breaks SSA
    with pytest.raises(ir.VerificationError, match="assigned twice"):
        ir.verify(g)


def test_replace_value_moves_an_output_name_only_where_it_can() -> None:
    g, add, relu = _chain()
    out_name = relu.outputs[0].name
    neg = g.make_node("Neg", [add.outputs[0]], before=relu)
    g.replace_value(relu.outputs[0], neg.outputs[0])
    g.remove(relu)
    assert g.outputs[0] is neg.outputs[0] and neg.outputs[0].name == out_name
    ir.verify(g)
    x = g.inputs[0]
    g.replace_value(neg.outputs[0], x)  # an input cannot carry an output's name: the output becomes x
    assert g.outputs[0] is x and x.name == "x"
