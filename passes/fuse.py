"""Operator fusion: partition the graph into kernels, in the manner of TVM's FuseOps.

Ops carry a pattern kind (ir.Kind). Walking nodes in topological order, a node is fused into the
group of its immediate post-dominator when every node on every path between them allows it:

* a COMPLEX op (Conv, Gemm, MatMul) takes its elementwise/broadcast epilogue: bias, activation,
  residual Add, per-channel scale — everything up to its post-dominator, if that is all elementwise;
* an elementwise/broadcast op joins a following injective, elementwise or reduction op;
* an injective op joins a following injective op (phase 2, so epilogues are claimed first).

Each group of two or more nodes becomes one `mcc.Fused` node whose `body` subgraph holds the ops;
codegen lowers it as one kernel. `unfuse` inlines the groups again (the exporter does this, so
compressed models stay plain standard ONNX).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import networkx as nx

from ir import Graph, Kind, Node, Value, get_op

from .base import Pass, register_pass

_ORDER = {Kind.ELEMWISE: 0, Kind.BROADCAST: 1, Kind.INJECTIVE: 2, Kind.REDUCTION: 3, Kind.COMPLEX: 4, Kind.OPAQUE: 5}
_SINK = "sink"


def kind_of(node: Node) -> Kind:
    """The node's pattern kind; unknown ops, Constants and control flow are opaque."""
    if node.subgraphs or node.op_type == "Constant":
        return Kind.OPAQUE
    op = get_op(node.op_type, node.domain)
    if op is None or op.random:
        return Kind.OPAQUE
    return op.kind


class _Groups:
    """Union-find over nodes; a group's kind is its anchor's (the most complex member's)."""

    def __init__(self, nodes: list[Node]) -> None:
        self.parent = {id(n): id(n) for n in nodes}
        self.kind = {id(n): kind_of(n) for n in nodes}
        self.size = {id(n): 1 for n in nodes}

    def find(self, n: int) -> int:
        while self.parent[n] != n:
            self.parent[n] = self.parent[self.parent[n]]
            n = self.parent[n]
        return n

    def merge(self, a: int, into: int) -> None:
        ra, rb = self.find(a), self.find(into)
        if ra == rb:
            return
        self.parent[ra] = rb
        self.size[rb] += self.size[ra]
        if _ORDER[self.kind[ra]] > _ORDER[self.kind[rb]]:
            self.kind[rb] = self.kind[ra]


@register_pass
class Fuse(Pass):
    """Groups each Conv/Gemm/MatMul with its elementwise epilogue, and chains of elementwise/injective
    ops, into `mcc.Fused` nodes (one kernel each)."""

    name = "fuse"

    @dataclasses.dataclass
    class Options:
        max_depth: int = 64  # at most this many ops in one kernel

    def run(self, graph: Graph) -> bool:
        nodes = [n for n in graph.nodes if not (n.op_type == "Fused" and n.domain == "mcc")]
        if not nodes:
            return False
        dag = self._dag(graph, nodes)
        ipdom = nx.immediate_dominators(dag.reverse(copy=False), _SINK)
        by_id = {id(n): n for n in nodes}
        groups = _Groups(nodes)
        for phase in (0, 1):
            for n in nodes:
                dom = ipdom.get(id(n))
                if dom is None or dom == _SINK or dom == id(n):
                    continue
                self._try_fuse(n, by_id[dom], phase, dag, groups, by_id)
        members: dict[int, list[Node]] = {}
        for n in nodes:
            members.setdefault(groups.find(id(n)), []).append(n)
        changed = False
        for group in members.values():
            if len(group) > 1:
                _outline(graph, group, groups.kind[groups.find(id(group[0]))])
                changed = True
        if changed:
            graph.sort()
        return changed

    def _try_fuse(self, n: Node, dom: Node, phase: int, dag: nx.DiGraph, groups: _Groups,
                  by_id: dict[int, Node]) -> None:
        kind = groups.kind[groups.find(id(n))]
        dom_kind = groups.kind[groups.find(id(dom))]
        if kind == Kind.OPAQUE or dom_kind == Kind.OPAQUE:
            return
        fits: Callable[[Kind], bool]
        if kind == Kind.COMPLEX:
            if phase != 0 or _ORDER[dom_kind] > _ORDER[Kind.BROADCAST]:
                return
            fits = lambda k: _ORDER[k] <= _ORDER[Kind.BROADCAST]  # noqa: E731
        elif _ORDER[kind] <= _ORDER[Kind.BROADCAST]:
            if phase != 0 or _ORDER[dom_kind] > _ORDER[Kind.REDUCTION]:
                return
            fits = lambda k: _ORDER[k] <= _ORDER[Kind.INJECTIVE]  # noqa: E731
        elif kind == Kind.INJECTIVE:
            if phase != 1 or _ORDER[dom_kind] > _ORDER[Kind.INJECTIVE]:
                return
            fits = lambda k: _ORDER[k] <= _ORDER[Kind.INJECTIVE]  # noqa: E731
        else:
            return
        path = _between(dag, id(n), id(dom))
        if path is None or not all(fits(groups.kind[groups.find(p)]) for p in path):
            return
        roots = {groups.find(p) for p in path | {id(n), id(dom)}}
        if sum(groups.size[r] for r in roots) > self.options.max_depth:
            return
        for p in path | {id(n)}:
            groups.merge(p, id(dom))

    @staticmethod
    def _dag(graph: Graph, nodes: list[Node]) -> nx.DiGraph:
        """Node-level dependency DAG of this graph, with a virtual sink after graph outputs."""
        dag = nx.DiGraph()
        dag.add_node(_SINK)
        ids = {id(n) for n in nodes}
        for n in nodes:
            dag.add_node(id(n))
            for v in n.outputs:
                if v.is_graph_output or any(u.graph is not graph for u, _ in v.uses):
                    dag.add_edge(id(n), _SINK)  # read by the outside world or by a subgraph
                for u, _ in v.uses:
                    if id(u) in ids:
                        dag.add_edge(id(n), id(u))
                    elif u.graph is graph:
                        dag.add_edge(id(n), _SINK)  # read by a node we do not fuse
            if dag.out_degree(id(n)) == 0:
                dag.add_edge(id(n), _SINK)
        return dag


def _between(dag: nx.DiGraph, src: int, dst: int) -> set[int] | None:
    """Nodes strictly between src and dst on paths src -> dst (dst post-dominates src)."""
    seen: set[int] = set()
    stack = [s for s in dag.successors(src)]
    while stack:
        x = stack.pop()
        if x == dst or x in seen:
            continue
        if x == _SINK:
            return None
        seen.add(x)
        stack.extend(dag.successors(x))
    return seen


def _outline(graph: Graph, group: list[Node], kind: Kind) -> Node:
    """Move `group` (topologically ordered) into the body of a new mcc.Fused node."""
    inside = {id(n) for n in group}
    graph.opset_imports.setdefault("mcc", 1)
    anchor = next((n for n in group if kind_of(n) == kind), group[0])
    body = Graph(graph.unique_name(f"fused_{anchor.name or anchor.op_type}"), parent=graph)
    mapping: dict[int, Value] = {}
    ext_inputs: list[Value] = []
    for n in group:
        for v in n.inputs:
            if v is None or id(v) in mapping:
                continue
            if v.producer is None or id(v.producer) not in inside:
                if v.const is not None and v.producer is None:
                    mapping[id(v)] = v  # initializers stay in the outer graph and are read from scope
                    continue
                mapping[id(v)] = body.add_input(graph.unique_name(f"{v.name}_in"), v.type)
                ext_inputs.append(v)
        clone = body.make_node(n.op_type, [None if v is None else mapping[id(v)] for v in n.inputs],
                               dict(n.attributes), len(n.outputs), name=n.name or "", domain=n.domain)
        clone.meta.update(n.meta)
        for old, new in zip(n.outputs, clone.outputs):
            new.type = old.type
            mapping[id(old)] = new
    escaping = [v for n in group for v in n.outputs
                if v.is_graph_output or any(id(u) not in inside for u, _ in v.uses)]
    body.outputs = [mapping[id(v)] for v in escaping]
    fused = graph.make_node("Fused", ext_inputs, {"body": body, "kind": kind.value}, len(escaping),
                            name=body.name, domain="mcc", before=group[-1])
    for old, new in zip(escaping, fused.outputs):
        new.type = old.type
        name = old.name
        graph.replace_all_uses(old, new)
        old.name, new.name = graph.unique_name(f"{name}_unfused"), name  # every escaping value keeps its name
    for n in reversed(group):
        graph.remove(n)
    return fused


@register_pass
class Unfuse(Pass):
    """Inlines every `mcc.Fused` node's body back into its graph (standard ONNX again)."""

    name = "unfuse"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph.nodes:
            if node.op_type == "Fused" and node.domain == "mcc":
                _inline(graph, node)
                changed = True
            else:
                for sg in node.subgraphs:
                    changed |= self.run(sg)
        if changed and not any(n.domain == "mcc" for n in graph.all_nodes()) and graph.parent is None:
            graph.opset_imports.pop("mcc", None)
        return changed


def _inline(graph: Graph, fused: Node) -> None:
    body: Graph = fused.attributes["body"]
    mapping: dict[int, Value] = {id(b): v for b, v in zip(body.inputs, fused.inputs) if v is not None}
    for v in body.initializers.values():  # constants a pass created inside the group move out with it
        mapping[id(v)] = graph.add_initializer(graph.unique_name(v.name), v.const)  # type: ignore[arg-type]
    for n in body.nodes:
        ins = [None if v is None else mapping.get(id(v), v) for v in n.inputs]
        clone = graph.make_node(n.op_type, ins, dict(n.attributes), len(n.outputs), name=n.name, domain=n.domain,
                                before=fused)
        clone.meta.update(n.meta)
        for old, new in zip(n.outputs, clone.outputs):
            new.type = old.type
            mapping[id(old)] = new
    for out, inner in zip(fused.outputs, body.outputs):
        graph.replace_value(out, mapping.get(id(inner), inner))
    graph.remove(fused)
