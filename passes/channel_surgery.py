"""Physically removing channel classes from a graph: the edits `depgraph.analyze` recorded, applied.

Every edit is data naming a node, an input or attribute, and the layouts that decide which positions
survive; `APPLY` maps each edit type to the function that carries it out. Constants are never changed
in place (Tensors are immutable): a sliced weight is a new initializer, shared by every layer that
shared the old one. Types are kept exact: the channel dim of every value with a layout is set to its
kept count (shape inference alone would keep the stale static dims), then shapes are re-inferred.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

import ir
from ir import Graph, Node, Tensor, TensorType, Value
from ir.ops import constant_value

from .depgraph import ChannelGraph, ConstSlice, Layout, Select, SetCount, SliceBounds, SplitSizes


class _Surgeon:
    """Applies edits for one removal; remembers replaced constants to drop them once unused."""

    def __init__(self, cg: ChannelGraph, removed: np.ndarray) -> None:
        self.cg, self.removed = cg, removed
        self.graph: Graph = cg.graph
        self.made: dict[tuple[int, bytes], Value] = {}
        self.replaced: list[Value] = []

    def keep(self, layout: Layout) -> np.ndarray:
        return self.cg.keep(self.removed, layout)

    def set_const(self, node: Node, index: int, arr: np.ndarray, key: bytes = b"") -> None:
        """Input `index` of `node` reads `arr`; with a `key`, layers slicing one constant alike share
        the result (a shared weight stays shared)."""
        old = node.input(index)
        new = self.made.get((id(old), key)) if key else None
        if new is None:
            new = new_const(self.graph, node, index, arr)
            if key:
                self.made[(id(old), key)] = new
        node.set_input(index, new)
        if old is not None:
            self.replaced.append(old)

    def drop_unused(self) -> None:
        for v in self.replaced:
            drop_if_unused(self.graph, v)


def new_const(graph: Graph, node: Node, index: int, arr: np.ndarray) -> Value:
    """An initializer holding `arr`, named after the constant input `index` of `node` it replaces."""
    old = node.input(index)
    base = old.name if old is not None and old.name else f"{node.name}_{index}"
    return graph.add_initializer(f"{base.removesuffix('_pruned')}_pruned", Tensor(np.ascontiguousarray(arr)))


def drop_if_unused(graph: Graph, v: Value) -> None:
    """Remove a replaced constant (initializer or Constant node) once nothing reads it."""
    if v.uses or v.is_graph_output:
        return
    if v.is_initializer and graph.initializers.get(v.name) is v:
        graph.remove_initializer(v)
    elif v.producer is not None and v.producer.op_type == "Constant" and v.producer.graph is graph:
        graph.remove(v.producer)


def replace_const(graph: Graph, node: Node, index: int, arr: np.ndarray) -> None:
    """Input `index` of `node` (appended when missing) reads a new constant `arr`; the old one goes
    when unused."""
    old = node.input(index)
    node.set_input(index, new_const(graph, node, index, arr))
    if old is not None:
        drop_if_unused(graph, old)


def _const_slice(s: _Surgeon, e: ConstSlice) -> None:
    masks = [(axis, s.keep(lay)) for axis, lay in e.axes]
    if all(m.all() for _, m in masks):
        return
    arr = constant_value(e.node.input(e.index))
    assert arr is not None
    for axis, m in masks:
        arr = np.compress(m, arr, axis=axis)
    s.set_const(e.node, e.index, arr, b"".join(bytes([a]) + np.packbits(m).tobytes() for a, m in masks))


def _set_count(s: _Surgeon, e: SetCount) -> None:
    count = int(s.keep(e.layout).sum())
    if count == e.layout.size:
        return
    if isinstance(e.target, str):
        old = e.node.attributes[e.target]
        if e.entry is None:
            e.node.attributes[e.target] = count
        else:
            e.node.attributes[e.target] = [count if i == e.entry else v for i, v in enumerate(old)]
        return
    arr = np.array(constant_value(e.node.input(e.target)))
    arr.reshape(-1)[e.entry] = count
    s.set_const(e.node, e.target, arr)


def _slice_bounds(s: _Surgeon, e: SliceBounds) -> None:
    keep = s.keep(e.layout)
    if keep.all():
        return
    n = e.layout.size
    kept_before = np.concatenate([[0], np.cumsum(keep)])

    def recount(v: int) -> int:
        return int(kept_before[min(max(v + n if v < 0 else v, 0), n)])

    if e.node.opset < 10:
        for name in ("starts", "ends"):
            e.node.attributes[name] = [recount(v) if i == e.entry else v for i, v in enumerate(e.node.attributes[name])]
        return
    for index in (1, 2):
        arr = np.array(constant_value(e.node.input(index)))
        arr.reshape(-1)[e.entry] = recount(int(arr.reshape(-1)[e.entry]))
        s.set_const(e.node, index, arr)


def _split_sizes(s: _Surgeon, e: SplitSizes) -> None:
    sizes = [int(s.keep(lay).sum()) for lay in e.layouts]
    if sizes == [lay.size for lay in e.layouts]:
        return
    if e.node.opset < 13:
        e.node.attributes["split"] = sizes
        return
    e.node.attributes.pop("num_outputs", None)  # explicit sizes replace an even split
    s.set_const(e.node, 1, np.asarray(sizes, np.int64))


def _select(s: _Surgeon, e: Select) -> None:
    keep = s.keep(e.layout)
    if keep.all():
        return
    x = e.node.input(0)
    assert x is not None
    indices = s.graph.add_initializer(f"{e.node.name}_channels", Tensor(np.flatnonzero(keep).astype(np.int64)))
    gather = s.graph.make_node("Gather", [x, indices], {"axis": 1}, name=s.graph.unique_name(f"{e.node.name}_select"),
                               before=e.node)
    y = gather.outputs[0]
    if isinstance(x.type, TensorType) and x.shape is not None:
        y.type = TensorType(x.type.dtype, tuple(int(keep.sum()) if i == 1 else d for i, d in enumerate(x.shape)))
    e.node.set_input(0, y)


#: How each kind of edit is carried out.
APPLY: dict[type, Callable[[Any, Any], None]] = {
    ConstSlice: _const_slice, SetCount: _set_count, SliceBounds: _slice_bounds, SplitSizes: _split_sizes,
    Select: _select,
}


def apply_edits(cg: ChannelGraph, removed: np.ndarray) -> None:
    """Remove the classes flagged in `removed` (a bool per class) from `cg.graph`, in place."""
    s = _Surgeon(cg, removed)
    for e in cg.edits:
        APPLY[type(e)](s, e)
    for v, lay in cg.layouts.items():
        if isinstance(v.type, TensorType) and v.shape is not None and isinstance(v.shape[lay.axis], int):
            count = int(s.keep(lay).sum())
            v.type = TensorType(v.type.dtype, tuple(count if i == lay.axis else d for i, d in enumerate(v.shape)))
    s.drop_unused()
    ir.infer_shapes(cg.graph)
