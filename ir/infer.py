"""Shape and type inference over a graph, driven by each op's `infer` function.

Inference refines: a dim the graph already knows (from the importer or an earlier run) is never
replaced by a less specific one, so running it twice changes nothing.
"""

from __future__ import annotations

from .graph import Graph, Node
from .ops import InferContext, get_op
from .types import Dim, TensorType, ValueType


def merge_types(old: ValueType | None, new: ValueType | None) -> ValueType | None:
    """The more specific of two types for the same value (dim by dim for tensors)."""
    if new is None:
        return old
    if old is None or not isinstance(old, TensorType) or not isinstance(new, TensorType):
        return new if old is None else old
    if old.shape is None:
        return TensorType(old.dtype if old.dtype else new.dtype, new.shape)
    if new.shape is None or len(new.shape) != len(old.shape):
        return old
    dims: list[Dim] = []
    for a, b in zip(old.shape, new.shape):
        if isinstance(a, int):
            dims.append(a)
        elif isinstance(b, int):
            dims.append(b)
        else:
            dims.append(a if a is not None else b)
    return TensorType(old.dtype if old.dtype else new.dtype, tuple(dims))


def infer_node(node: Node) -> bool:
    """Refine the output types of `node`; True when something changed."""
    op = get_op(node.op_type, node.domain)
    if op is None or op.infer is None or node.opset < op.since_version:
        return False  # unknown ops keep the types the importer gave them
    attrs = op.resolve_attrs(node.attributes, node.opset)
    try:
        results = op.infer(InferContext(node, node.opset), *[None if v is None else v.type for v in node.inputs], **attrs)
    except (ValueError, TypeError, IndexError, KeyError, ZeroDivisionError):
        return False  # inference is best effort: a shape it cannot derive stays as it was
    changed = False
    for v, t in zip(node.outputs, results):
        merged = merge_types(v.type, t)
        if merged != v.type:
            v.type = merged
            changed = True
    return changed


def infer_shapes(graph: Graph) -> int:
    """Infer types for every node (subgraphs included); returns the number of values refined."""
    count = 0
    for node in graph.nodes:
        for sg in node.subgraphs:
            count += infer_shapes(sg)
        count += int(infer_node(node))
    return count
