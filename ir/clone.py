"""Deep copies of graphs (tensors are shared: they are immutable)."""

from __future__ import annotations

from typing import Any

from .graph import Graph, Node, Value


def clone_graph(g: Graph, parent: Graph | None = None, vmap: dict[int, Value] | None = None) -> Graph:
    """Copy `g` with fresh Values and Nodes; outer-scope values map through `vmap` when given."""
    vmap = {} if vmap is None else vmap
    new = Graph(g.name, dict(g._opsets) if parent is None else None, parent)
    new.doc, new.meta = g.doc, dict(g.meta)

    def copy_value(v: Value) -> Value:
        c = Value(v.name, v.type, v.const)
        c.doc = v.doc
        vmap[id(v)] = c
        return c

    for v in g.inputs:
        c = copy_value(v)
        c.graph = new
        new.inputs.append(c)
    for name, v in g.initializers.items():
        c = vmap.get(id(v)) or copy_value(v)
        c.graph = new
        new.initializers[name] = c
    for n in g.nodes:
        outs = [copy_value(v) for v in n.outputs]
        attrs: dict[str, Any] = {}
        for k, a in n.attributes.items():
            if isinstance(a, Graph):
                attrs[k] = clone_graph(a, new, vmap)
            elif isinstance(a, list) and a and isinstance(a[0], Graph):
                attrs[k] = [clone_graph(s, new, vmap) for s in a]
            else:
                attrs[k] = a
        ins = [None if v is None else vmap.get(id(v), v) for v in n.inputs]
        c = Node(n.op_type, ins, outs, attrs, n.name, n.domain)
        c.doc, c.meta = n.doc, dict(n.meta)
        c.graph = new
        for o in outs:
            o.graph = new
        for sg in c.subgraphs:
            sg.parent = new
        new._nodes.append(c)
    new.outputs = [vmap.get(id(v), v) for v in g.outputs]
    return new
