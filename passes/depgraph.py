"""Channel dependencies (DepGraph on the IR): which channels of which layers must be removed together.

Removing output channel c of a Conv changes every tensor that channel flows into: the BatchNorm and
activations after it, the residual Add it meets (and so every other conv writing into that Add), the
Concat that places it at an offset, the Flatten that spreads it over H*W features, and at last the
input channels of the next Conv/Gemm. Torch-Pruning's DepGraph finds these couplings on the autograd
graph; here they are found on the IR by propagating *layouts*:

* a layout is the axis a value's prunable channels lie on and, per position along it, an *atom* id;
  layers whose output channels can be removed (Conv, ConvTranspose, Gemm, MatMul with a constant
  weight) mint fresh atoms for their outputs, and their input channels follow whatever feeds them;
* the per-op rules of `RULES` (falling back on the op's Kind) carry layouts forward: pass-through ops
  keep them, index-mapping ops (Concat, Split, Slice, Flatten, Reshape, Transpose) concatenate,
  slice, repeat or move them; operands that must agree channel by channel (a residual Add, a grouped
  conv's groups, layers sharing one weight) *union* atoms, and whatever cannot follow a removal
  (graph outputs, unknown ops, reductions and softmax over channels, reshapes that split channels)
  *locks* them;
* atoms joined by unions form *classes*, one removable channel each; classes that share a layer form
  a `Group`, pruned with one channel mask.

Propagation also records as data what removing classes changes (`Edit`s: constants to slice, counts
to rewrite, a channel selection to insert) and, per MAC-carrying node, the layouts its MACs are
proportional to. `channel_prune` chooses the classes; `channel_surgery` applies the edits.

The data model and propagation state are in `depgraph_base`; the rules in `depgraph_layers` (layers,
elementwise ops, normalizations, reductions) and `depgraph_index` (index maps); the table is here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ir import Graph, Kind, Node, Value, free_values, get_op

from . import depgraph_index as index
from . import depgraph_layers as layers
from .depgraph_base import (
    ConstSlice,
    Edit,
    Layout,
    Linear,
    Propagation,
    Rule,
    Select,
    SetCount,
    SliceBounds,
    SplitSizes,
    Stop,
)

__all__ = ["ChannelGraph", "ConstSlice", "Edit", "Group", "Layout", "Linear", "RULES", "Select", "SetCount",
           "SliceBounds", "SplitSizes", "analyze"]


@dataclass(frozen=True, eq=False)
class Group:
    """Classes coupled through the layers that write them: one channel mask prunes them all."""

    classes: np.ndarray  # every class of the group (its channel count)
    removable: np.ndarray  # the classes not locked
    layers: tuple[Node, ...]


@dataclass
class ChannelGraph:
    """The analysis of a graph: layouts, classes, groups, and the edits a removal implies."""

    graph: Graph
    layouts: dict[Value, Layout]
    linears: list[Linear]
    edits: list[Edit]
    macs: dict[Node, tuple[Layout, ...]]  # the layouts each MAC-carrying node's MACs scale with
    limits: list[tuple[Layout, bool]]  # layouts that keep >= 1 position; True: a layer's output
    classes: np.ndarray  # class id of every atom
    locked: np.ndarray  # per class
    groups: list[Group]

    @property
    def num_classes(self) -> int:
        return len(self.locked)

    def keep(self, removed: np.ndarray, layout: Layout) -> np.ndarray:
        """Which positions of `layout` survive removing the classes flagged in `removed`."""
        return ~removed[self.classes[layout.atoms]]


# ---------------------------------------------------------------------------------------------
# The rule table.

_POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
_REDUCES = ("ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
            "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin")

#: How each op type moves, couples or stops channels (default-domain ops; others stop).
RULES: dict[str, Rule] = {
    "Conv": layers.conv, "ConvTranspose": layers.conv, "Gemm": layers.gemm, "MatMul": layers.matmul,
    "BatchNormalization": layers.norm_params({1: "scale", 2: "bias", 3: "param", 4: "param"}, any_axis=True),
    "InstanceNormalization": layers.norm_params({1: "scale", 2: "bias"}, any_axis=False),
    "LayerNormalization": layers.layernorm, "RMSNormalization": layers.layernorm,
    **{op: layers.window for op in _POOLS},
    "Pad": index.pad, "Resize": index.resize, "Upsample": index.resize,
    "Concat": index.concat, "Split": index.split, "Slice": index.slice_, "Gather": index.gather,
    "Reshape": index.reshape, "Flatten": index.reshape, "Transpose": index.transpose,
    "Squeeze": index.squeeze, "Unsqueeze": index.unsqueeze,
    "Softmax": layers.softmax, "LogSoftmax": layers.softmax, "Hardmax": layers.softmax,
    "ReduceMean": layers.reduce(statistic=True), **{op: layers.reduce(statistic=False) for op in _REDUCES},
    "QuantizeLinear": layers.qdq, "DequantizeLinear": layers.qdq, "CastLike": layers.first_input,
    "Shape": layers.ignore, "Size": layers.ignore,
}

#: The fallback by op kind: elementwise and broadcasting ops pass channels (and couple operands).
KIND_RULES: dict[Kind, Rule] = {Kind.ELEMWISE: layers.broadcast, Kind.BROADCAST: layers.broadcast}


def rule_for(node: Node) -> Rule:
    """The node's rule: by op type, else by kind; unknown ops, other domains and control flow stop."""
    op = get_op(node.op_type, node.domain)
    if op is None or node.domain not in ("", "ai.onnx") or node.subgraphs:
        return layers.stop
    return RULES.get(node.op_type) or KIND_RULES.get(op.kind, layers.stop)


# ---------------------------------------------------------------------------------------------
# The analysis.


def _propagate(graph: Graph, selected: frozenset[Node], exclude: frozenset[str]) -> Propagation:
    b = Propagation(selected, exclude)
    for node in graph.nodes:
        op = get_op(node.op_type, node.domain)
        attrs = op.resolve_attrs(node.attributes, node.opset) if op is not None else {}
        try:
            rule_for(node)(b, node, attrs)
        except Stop:
            b.lock(*node.inputs)
        for sg in node.subgraphs:
            b.lock(*free_values(sg))
    b.lock(*graph.outputs)
    return b


def _components(n: int, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Connected-component label of each of `n` nodes joined by the (a[i], b[i]) pairs."""
    pairs = list(pairs)
    if not pairs or n == 0:
        return np.arange(n)
    a = np.concatenate([p[0] for p in pairs])
    c = np.concatenate([p[1] for p in pairs])
    return connected_components(coo_matrix((np.ones(len(a)), (a, c)), shape=(n, n)), directed=False)[1]


def _finish(graph: Graph, b: Propagation) -> ChannelGraph:
    classes = _components(b.count, b.pairs)
    k = int(classes.max()) + 1 if b.count else 0
    locked = np.zeros(k, bool)
    if b.locks:
        locked[classes[np.concatenate(b.locks)]] = True
    outs = [lin for lin in b.linears if lin.outputs.size]
    group_of = _components(k, ((classes[lin.outputs.atoms[:1]].repeat(lin.outputs.size), classes[lin.outputs.atoms])
                               for lin in outs))  # a layer's channels belong to one group
    members: dict[int, list[Node]] = {}
    for lin in outs:
        members.setdefault(int(group_of[classes[lin.outputs.atoms[0]]]), []).append(lin.node)
    groups = []
    for gid, nodes in members.items():
        cls = np.flatnonzero(group_of == gid)
        groups.append(Group(cls, cls[~locked[cls]], tuple(nodes)))
    return ChannelGraph(graph, b.layouts, b.linears, b.edits, b.macs, b.limits, classes, locked, groups)


def analyze(graph: Graph, exclude: Iterable[str] = ()) -> ChannelGraph:
    """The channel dependencies of `graph` (shapes inferred); `exclude`: layers whose outputs stay.

    Depthwise/grouped convs reading channels that turn out locked are analysed again as channel
    selections (see Select), until no more turn up.
    """
    exclude = frozenset(exclude)
    selected: frozenset[Node] = frozenset()
    while True:
        cg = _finish(graph, _propagate(graph, selected, exclude))
        more = {lin.node for lin in cg.linears
                if lin.node.op_type == "Conv" and lin.in_axis is None and lin.node not in selected
                and (lay := cg.layouts.get(lin.node.input(0))) is not None  # type: ignore[arg-type]
                and bool(cg.locked[cg.classes[lay.atoms]].all()) and lin.node.name not in exclude}
        if not more:
            return cg
        selected = selected | more
