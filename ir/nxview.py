"""A networkx view of a graph, for analyses that want graph algorithms (dominators, components)."""

from __future__ import annotations

import networkx as nx

from .graph import Graph


def to_networkx(g: Graph) -> nx.MultiDiGraph:
    """Nodes are ir.Node objects; an edge u->v per value u produces and v reads (key: value name).

    Graph inputs and initializers are not nodes: analyses care about operator dependencies.
    """
    dg = nx.MultiDiGraph()
    for n in g.nodes:
        dg.add_node(n, op_type=n.op_type)
    for n in g.nodes:
        for v in n.inputs:
            if v is not None and v.producer is not None and v.producer.graph is g:
                dg.add_edge(v.producer, n, key=v.name, value=v)
    return dg
