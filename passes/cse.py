"""Common-subexpression elimination."""

from __future__ import annotations

from typing import Any

import numpy as np

from ir import Graph, Node, Tensor, get_op

from .base import Pass, register_pass


@register_pass
class CommonSubexpressionElimination(Pass):
    """Merges nodes that apply the same op, with the same attributes, to the same inputs.

    Equal constants (initializers with the same dtype, shape and bytes) are merged first, so two
    Reshapes of one tensor by two copies of a shape constant become one.
    """

    name = "cse"

    def run(self, graph: Graph) -> bool:
        changed = self._merge_initializers(graph)
        seen: dict[tuple[Any, ...], Node] = {}
        for node in graph.nodes:
            for sg in node.subgraphs:
                changed |= self.run(sg)
            key = self._key(node)
            if key is None:
                continue
            other = seen.get(key)
            if other is None:
                seen[key] = node
                continue
            if any(v.is_graph_output for v in node.outputs):
                continue
            for a, b in zip(node.outputs, other.outputs):
                graph.replace_all_uses(a, b)
            graph.remove(node)
            changed = True
        return changed

    @staticmethod
    def _key(node: Node) -> tuple[Any, ...] | None:
        op = get_op(node.op_type, node.domain)
        if op is None or op.random or node.subgraphs:
            return None
        try:
            attrs = tuple(sorted((k, _hashable(v)) for k, v in node.attributes.items()))
        except TypeError:
            return None
        return (node.domain, node.op_type, len(node.outputs), attrs, tuple(id(v) for v in node.inputs))

    @staticmethod
    def _merge_initializers(graph: Graph) -> bool:
        inputs = {id(v) for v in graph.inputs}
        seen: dict[tuple[Any, ...], Any] = {}
        changed = False
        for v in list(graph.initializers.values()):
            if id(v) in inputs or v.is_graph_output or v.const is None or v.const.array.dtype == object:
                continue
            a = v.const.array
            key = (v.const.dtype, a.shape, a.tobytes())
            if key in seen:
                graph.replace_all_uses(v, seen[key])
                graph.remove_initializer(v)
                changed = True
            else:
                seen[key] = v
        return changed


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, Tensor):
        a = v.array
        return ("tensor", str(a.dtype), a.shape, a.tobytes() if a.dtype != object else tuple(a.reshape(-1)))
    if isinstance(v, np.ndarray):
        return (str(v.dtype), v.shape, v.tobytes())
    hash(v)
    return v
