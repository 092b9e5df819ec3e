"""Constant folding through the ops' own reference semantics."""

from __future__ import annotations

import dataclasses

import numpy as np

from ir import EvaluationError, Graph, Interpreter, Node, Tensor, TensorType, get_op

from .base import Pass, register_pass
from .pattern import const_value


@register_pass
class FoldConstants(Pass):
    """Evaluates nodes whose inputs are all constants and replaces them by initializers.

    Constant nodes become initializers too. Folding is bounded: a result larger than `max-elements`
    stays computed at run time (folding an Expand or a Tile could blow a model up); random ops, ops
    with subgraphs, DequantizeLinear of quantized weights and ops mcc cannot evaluate are left alone.
    """

    name = "fold-constants"

    @dataclasses.dataclass
    class Options:
        max_elements: int = 1 << 24  # 64 MB of float32: real weights fold, an Expand to gigabytes does not

    def run(self, graph: Graph) -> bool:
        interp = Interpreter()
        changed = False
        for node in graph.nodes:
            for sg in node.subgraphs:
                changed |= self.run(sg)
            if not self._foldable(node):
                continue
            inputs = [None if v is None else const_value(v) for v in node.inputs]
            try:
                results = interp.run_node(node, inputs)
            except (EvaluationError, NotImplementedError, ValueError, TypeError):
                continue
            if any(not isinstance(r, np.ndarray) or r.size > self.options.max_elements for r in results):
                continue
            for v, r in zip(node.outputs, results):
                dtype = v.dtype if v.dtype is not None else None
                const = graph.add_initializer(f"{v.name}_folded", Tensor(np.asarray(r), dtype=dtype))
                const.type = const.const.type  # the folded value's exact (static) type
                _replace(graph, v, const)
            graph.remove(node)
            changed = True
        return changed

    @staticmethod
    def _foldable(node: Node) -> bool:
        op = get_op(node.op_type, node.domain)
        if op is None or op.random or node.subgraphs:
            return False
        if node.op_type == "DequantizeLinear":
            return False  # int8 weights + DequantizeLinear is how a quantized model stays small
        if any(v.is_graph_output for v in node.outputs) and node.op_type != "Constant":
            return False
        if not all(isinstance(v.type, TensorType) for v in node.outputs):
            return False  # an Optional(const) or a sequence must stay what its type says
        return all(v is None or const_value(v) is not None for v in node.inputs)


def _replace(graph: Graph, old, new) -> None:  # type: ignore[no-untyped-def]
    """Replace `old` by the initializer `new`; a graph output keeps its name via an Identity."""
    if old.is_graph_output:
        ident = graph.make_node("Identity", [new], before=old.producer)
        graph.replace_all_uses(old, ident.outputs[0])
        name = old.name
        old.name = graph.unique_name(f"{name}_old")
        ident.outputs[0].name = name
        ident.outputs[0].type = old.type
    else:
        graph.replace_all_uses(old, new)
