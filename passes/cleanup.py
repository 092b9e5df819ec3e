"""Clean-up passes: dead-code elimination and identity removal."""

from __future__ import annotations

from ir import Graph, Node, get_op

from .base import Pass, register_pass


def _has_effects(node: Node) -> bool:
    op = get_op(node.op_type, node.domain)
    return op is None  # an op we do not know may have effects: keep it


@register_pass
class DeadCodeElimination(Pass):
    """Removes nodes whose outputs nobody reads, and initializers nobody reads (subgraphs too)."""

    name = "dce"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in reversed(graph.nodes):
            for sg in node.subgraphs:
                changed |= self.run(sg)
            if any(v.uses or v.is_graph_output for v in node.outputs) or _has_effects(node):
                continue
            graph.remove(node)
            changed = True
        inputs = {id(v) for v in graph.inputs}
        for v in list(graph.initializers.values()):
            if not v.uses and not v.is_graph_output and id(v) not in inputs:
                graph.remove_initializer(v)
                changed = True
        return changed


@register_pass
class RemoveIdentity(Pass):
    """Replaces `y = Identity(x)` by `x` (and inference-mode Dropout whose mask nobody reads likewise).

    When `y` is a graph output, the output keeps its name: `x` is renamed `y` if `x` is a plain
    intermediate value; otherwise the Identity stays (an output may not alias an input).
    """

    name = "remove-identity"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph.nodes:
            for sg in node.subgraphs:
                changed |= self.run(sg)
            if not self._is_identity(node):
                continue
            x, y = node.inputs[0], node.outputs[0]
            if x is None:
                continue
            if y.is_graph_output and not graph.can_carry_name(x):
                continue  # the output's name could not survive: keep the Identity
            graph.replace_value(y, x)
            graph.remove(node)
            changed = True
        return changed

    @staticmethod
    def _is_identity(node: Node) -> bool:
        if node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type == "Identity":
            return len(node.inputs) == 1
        if node.op_type == "Dropout" and not any(v.uses or v.is_graph_output for v in node.outputs[1:]):
            if node.opset < 7:
                return bool(node.attributes.get("is_test", 0))
            training = node.input(2)
            return training is None or (training.const is not None and not bool(training.const.array))
        return False
