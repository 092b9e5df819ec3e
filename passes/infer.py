"""Shape inference as a pass."""

from __future__ import annotations

from ir import Graph, infer_shapes

from .base import Pass, register_pass


@register_pass
class InferShapes(Pass):
    """Refines every value's type from its op's inference (symbolic dims kept); never loses facts."""

    name = "infer-shapes"

    def run(self, graph: Graph) -> bool:
        return infer_shapes(graph) > 0
