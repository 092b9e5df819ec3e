"""The data model of channel dependency analysis, and the propagation state the op rules edit.

A `Layout` says which axis of a value holds prunable channels and, per position along it, an atom id;
the `Edit` records say what removing atoms' classes changes; `Linear` records a layer with prunable
output channels. `Propagation` is what every rule of `depgraph.RULES` reads and extends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from ir import Node, Value
from ir.ops import constant_value


@dataclass(frozen=True, eq=False)
class Layout:
    """The prunable channels of a value: their axis and an atom id per position along it."""

    axis: int
    atoms: np.ndarray

    @property
    def size(self) -> int:
        return len(self.atoms)


# ---------------------------------------------------------------------------------------------
# What removing classes changes (applied by channel_surgery).


@dataclass(frozen=True, eq=False)
class ConstSlice:
    """Constant input `index` of `node` keeps, along each axis, the positions its layout keeps.

    `role` says what the constant is to importance criteria and tests: "weight" (a linear layer's),
    "bias" (added per channel), "scale" (BatchNorm gamma) or "param" (anything else).
    """

    node: Node
    index: int
    axes: tuple[tuple[int, Layout], ...]
    role: str


@dataclass(frozen=True, eq=False)
class SetCount:
    """Entry `entry` of constant input `target` (an index) or of attribute `target` (a name) states
    how many positions `layout` has (a Reshape's shape, a Resize's sizes, a grouped Conv's group)."""

    node: Node
    target: int | str
    entry: int | None
    layout: Layout


@dataclass(frozen=True, eq=False)
class SliceBounds:
    """A Slice along the channels: its start and end (entry `entry`) recounted in kept positions."""

    node: Node
    entry: int
    layout: Layout


@dataclass(frozen=True, eq=False)
class SplitSizes:
    """A Split along the channels: its sizes become the outputs' kept counts."""

    node: Node
    layouts: tuple[Layout, ...]


@dataclass(frozen=True, eq=False)
class Select:
    """A Gather of the positions `layout` keeps goes in front of input 0 of `node`: Network Slimming's
    channel selection, which lets a depthwise conv shrink although the tensor it reads cannot."""

    node: Node
    layout: Layout


Edit = Union[ConstSlice, SetCount, SliceBounds, SplitSizes, Select]


@dataclass(frozen=True, eq=False)
class Linear:
    """A layer with a constant weight (input `weight`) whose output channels are prunable.

    `in_axis`/`out_axis` are the weight axes of input/output channels (`in_axis` None: grouped, the
    input channels of a group go with it); `inputs` is the layout of the data the layer reads.
    """

    node: Node
    weight: int
    out_axis: int
    in_axis: int | None
    outputs: Layout
    inputs: Layout | None

    @property
    def dense(self) -> bool:
        """Every output reads every input channel (a reconstruction can remix them)."""
        return self.in_axis is not None and self.inputs is not None


class Stop(Exception):
    """A rule's verdict: the node cannot follow a channel removal, its inputs' channels lock."""


class Propagation:
    """What the rules read and extend: atoms minted so far, unions, locks, layouts, and records.

    `selected` names grouped convs to treat as channel selections, `exclude` layers whose outputs stay.
    """

    def __init__(self, selected: frozenset[Node], exclude: frozenset[str]) -> None:
        self.selected, self.exclude = selected, exclude
        self.count = 0
        self.pairs: list[tuple[np.ndarray, np.ndarray]] = []
        self.locks: list[np.ndarray] = []
        self.layouts: dict[Value, Layout] = {}
        self.weights: dict[Value, tuple[np.ndarray, np.ndarray | None]] = {}
        self.linears: list[Linear] = []
        self.edits: list[Edit] = []
        self.macs: dict[Node, tuple[Layout, ...]] = {}
        self.limits: list[tuple[Layout, bool]] = []

    def fresh(self, n: int) -> np.ndarray:
        atoms = np.arange(self.count, self.count + n)
        self.count += n
        return atoms

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        self.pairs.append((a, b))

    def lock(self, *values: Value | None) -> None:
        for v in values:
            lay = self.get(v)
            if lay is not None:
                self.locks.append(lay.atoms)

    def get(self, v: Value | None) -> Layout | None:
        return None if v is None else self.layouts.get(v)

    def put(self, node: Node, layout: Layout) -> None:
        """`layout` for every output of `node` shaped like output 0 (MaxPool indices, Dropout mask)."""
        rank = node.outputs[0].rank
        for o in node.outputs:
            if o.rank == rank:
                self.layouts[o] = layout

    def linear(self, node: Node, out: Layout, inp: Layout | None, out_axis: int, in_axis: int | None,
               bias: int | None = None, bias_axis: int = 0) -> None:
        """Record a layer with prunable outputs: weight slicing, bias slicing, MACs, limits, sharing."""
        w = node.input(1)
        assert w is not None
        axes = ((out_axis, out),) + (((in_axis, inp),) if in_axis is not None and inp is not None else ())
        self.edits.append(ConstSlice(node, 1, axes, "weight"))
        if bias is not None and node.input(bias) is not None:
            self.edits.append(ConstSlice(node, bias, ((bias_axis, out),), "bias"))
        self.linears.append(Linear(node, 1, out_axis, in_axis, out, inp))
        self.limits.append((out, True))
        if node.name in self.exclude:
            self.locks.append(out.atoms)
        sliced_in = None if in_axis is None or inp is None else inp.atoms
        first = self.weights.setdefault(w, (out.atoms, sliced_in))
        if first[0] is not out.atoms:  # layers sharing a weight keep sharing it: their channels go together
            self._tie(first[0], out.atoms)
            self._tie(first[1], sliced_in)
        self.layouts[node.outputs[0]] = out

    def _tie(self, a: np.ndarray | None, b: np.ndarray | None) -> None:
        """Union two users' positions of one weight axis; lock them where they cannot agree."""
        if a is not None and b is not None and len(a) == len(b):
            self.union(a, b)
        else:
            self.locks.extend(x for x in (a, b) if x is not None)


Rule = Callable[[Propagation, Node, dict[str, Any]], None]


# ---------------------------------------------------------------------------------------------
# Argument helpers shared by the rules.


def const_ints(v: Value | None) -> list[int] | None:
    arr = constant_value(v)
    return None if arr is None else [int(x) for x in np.asarray(arr).reshape(-1)]


def norm_axis(axis: int, rank: int | None) -> int:
    if rank is None:
        raise Stop
    return axis + rank if axis < 0 else axis


def ints_arg(node: Node, attrs: dict[str, Any], index: int, since: int, name: str = "axes") -> list[int] | None:
    """An ints argument that moved from attribute `name` to input `index` at opset `since`."""
    if node.opset < since:
        return None if attrs.get(name) is None else [int(a) for a in attrs[name]]
    v = node.input(index)
    if v is None:
        return None
    got = const_ints(v)
    if got is None:
        raise Stop  # computed at run time: where the channels go is unknown
    return got
