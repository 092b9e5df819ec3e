"""The IR verifier: checks the invariants every pass must keep.

Single assignment, links (producer/uses) consistent, every input defined before use (in scope, for
subgraphs), acyclic node order, known types on graph inputs/outputs and initializers, ops known.
"""

from __future__ import annotations

from .graph import Graph, Value
from .ops import UnsupportedOpError, lookup
from .types import TensorType


class VerificationError(Exception):
    """The graph breaks an IR invariant (a bug in a pass, or a malformed model)."""


def verify(graph: Graph, check_ops: bool = True) -> None:
    """Raise VerificationError naming the first broken invariant."""
    names: dict[str, Value] = {}
    _verify(graph, names, set(), check_ops)


def _verify(graph: Graph, names: dict[str, Value], outer: set[int], check_ops: bool) -> None:
    defined: set[int] = set(outer)

    def define(v: Value, what: str, may_shadow: bool = False) -> None:
        if not v.name:
            raise VerificationError(f"{what} has an empty name in graph {graph.name!r}")
        other = names.get(v.name)
        if other is not None and other is not v and not may_shadow:
            raise VerificationError(f"value name {v.name!r} is assigned twice (SSA broken)")
        names[v.name] = v
        defined.add(id(v))

    for v in graph.inputs:
        # ONNX lets a subgraph's formal inputs shadow outer names; node outputs never may (SSA).
        define(v, "an input", may_shadow=graph.parent is not None)
        if not isinstance(v.type, TensorType) and v.type is None and graph.parent is None:
            raise VerificationError(f"graph input {v.name!r} has no type")
    for v in graph.initializers.values():
        if v.const is None:
            raise VerificationError(f"initializer {v.name!r} holds no tensor")
        if v.producer is not None:
            raise VerificationError(f"initializer {v.name!r} has a producer")
        if id(v) not in defined:
            define(v, "an initializer")
    for node in graph.nodes:
        if node.graph is not graph:
            raise VerificationError(f"node {node.name!r} does not point back to graph {graph.name!r}")
        if check_ops:
            try:
                lookup(node.op_type, node.domain, node.opset, node.name)
            except UnsupportedOpError as e:
                raise VerificationError(str(e)) from None
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                raise VerificationError(
                    f"node {node.name!r} ({node.op_type}) reads {v.name!r}, which is not defined before it"
                )
            if (node, i) not in v._uses:
                raise VerificationError(f"value {v.name!r} does not record its use by node {node.name!r}")
        for sg in node.subgraphs:
            if sg.parent is not graph:
                raise VerificationError(f"subgraph {sg.name!r} of node {node.name!r} has the wrong parent")
            _verify(sg, dict(names), defined, check_ops)  # sibling bodies may reuse names; none may shadow
        for i, v in enumerate(node.outputs):
            if v.producer is not node or v.index != i:
                raise VerificationError(f"output {v.name!r} of node {node.name!r} has a wrong producer link")
            define(v, f"output {i} of node {node.name!r}")
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerificationError(f"graph output {v.name!r} is not defined")
    for v in list(graph.values()):
        for user, i in v._uses:
            if user.input(i) is not v:
                raise VerificationError(f"value {v.name!r} records a stale use by node {user.name!r}")

