"""Channel rules for index-mapping ops: Concat, Split, Slice and Gather place, cut or pick positions;
Reshape and Flatten may merge channels with static neighbours; Transpose, Squeeze and Unsqueeze move
the channel axis; Pad and Resize pass channels they leave alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from ir import Node, Value
from ir.ops import constant_value
from ir.types import Dim, Shape

from .depgraph_base import Layout, Propagation, SetCount, SliceBounds, SplitSizes, Stop, const_ints, ints_arg, norm_axis
from .depgraph_layers import broadcast


def _factor(dims: Sequence[Dim]) -> tuple[int, Counter[str]] | None:
    """A product of dims as (integer part, symbolic names); None when a dim is unknown."""
    n, syms = 1, Counter[str]()
    for d in dims:
        if isinstance(d, int):
            n *= d
        elif isinstance(d, str):
            syms[d] += 1
        else:
            return None
    return n, syms


def _landing(src: Shape, axis: int, dst: Shape) -> tuple[int, int, int]:
    """Where axis `axis` of a `src`-shaped tensor lands when reshaped to `dst`: (output axis, outer,
    inner) when it merges with `outer` positions before and `inner` after it (static ones) into one
    output axis. A reshape that splits the axis, or one it cannot follow, stops."""
    if src is None or dst is None:
        raise Stop
    for lo in range(axis, -1, -1):
        pre = _factor(src[:lo])
        outer = _factor(src[lo:axis])
        if pre is None or outer is None or outer[1]:
            break
        for j, d in enumerate(dst):
            if not isinstance(d, int) or _factor(dst[:j]) != pre:
                continue
            for hi in range(axis + 1, len(src) + 1):
                f = _factor(src[lo:hi])
                if f is None or f[1] or f[0] > d:
                    break
                if f[0] == d:
                    return j, outer[0], d // (outer[0] * int(src[axis]))  # type: ignore[arg-type]
    raise Stop


def _follows_shape_of(sizes: Value, x: Value) -> bool:
    """A run-time Resize `sizes` computed from Shape(x), as exporters write F.interpolate(size=...)."""
    stack, seen = [sizes], set()
    while stack:
        v = stack.pop()
        p = v.producer
        if p is None or id(p) in seen:
            continue
        seen.add(id(p))
        if p.op_type == "Shape" and p.input(0) is x:
            return True
        stack.extend(i for i in p.inputs if i is not None)
    return False


def pad(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Padding other axes passes the channels; padding the channel axis stops."""
    lay = b.get(node.input(0))
    if lay is None:
        return
    pads = const_ints(node.input(1)) if node.opset >= 11 else (attrs.get("pads") or attrs.get("paddings"))
    rank = node.input(0).rank  # type: ignore[union-attr]
    if pads is None or rank is None:
        raise Stop
    axes = const_ints(node.input(3)) if node.input(3) is not None else list(range(rank))
    if axes is None:
        raise Stop
    axes = [norm_axis(a, rank) for a in axes]
    if lay.axis in axes:
        k = axes.index(lay.axis)
        if pads[k] or pads[k + len(axes)]:
            raise Stop
    b.put(node, lay)


def resize(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Channels pass when their scale is 1; constant `sizes` are rewritten, run-time `sizes` must be
    computed from the input's own Shape (so they follow the removal)."""
    x = node.input(0)
    lay = b.get(x)
    if lay is None:
        return
    rank = x.rank  # type: ignore[union-attr]
    if rank is None:
        raise Stop
    axes = [norm_axis(a, rank) for a in attrs.get("axes") or range(rank)]
    if lay.axis in axes:
        k = axes.index(lay.axis)
        scales_v = node.input(2 if node.op_type == "Resize" and node.opset >= 11 else 1)
        scales = constant_value(scales_v) if scales_v is not None else attrs.get("scales")
        if scales_v is not None and scales is None:
            raise Stop
        if scales is not None and np.size(scales) and float(np.asarray(scales).reshape(-1)[k]) != 1.0:
            raise Stop
        sizes = node.input(3) if node.op_type == "Resize" else None
        if sizes is not None:
            if constant_value(sizes) is not None:
                b.edits.append(SetCount(node, 3, k, lay))
            elif not _follows_shape_of(sizes, x):  # type: ignore[arg-type]
                raise Stop
    b.put(node, lay)


def concat(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Along the channels: positions concatenate (each input keeps its own atoms at an offset); along
    another axis the inputs must agree channel by channel, as for broadcasting."""
    out = node.outputs[0]
    carried = [lay for v in node.inputs if (lay := b.get(v)) is not None]
    if not carried:
        return
    axis = norm_axis(int(attrs["axis"]), out.rank)
    if any(lay.axis != axis for lay in carried):
        return broadcast(b, node, attrs)
    parts: list[np.ndarray] = []
    fixed: list[np.ndarray] = []
    for v in node.inputs:
        lay = b.get(v)
        if lay is None:
            dim = v.shape[axis] if v is not None and v.shape is not None else None
            if not isinstance(dim, int):
                raise Stop
            fixed.append(b.fresh(dim))  # a position that stays: its own locked atom
            parts.append(fixed[-1])
        else:
            parts.append(lay.atoms)
    b.locks.extend(fixed)
    b.layouts[out] = Layout(axis, np.concatenate(parts))


def split(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Along the channels each output takes its run of positions (and keeps at least one)."""
    lay = b.get(node.input(0))
    if lay is None:
        return
    axis = norm_axis(int(attrs.get("axis") or 0), node.input(0).rank)  # type: ignore[union-attr]
    if lay.axis != axis:
        for o in node.outputs:
            b.layouts[o] = lay
        return
    sizes = [o.shape[axis] if o.shape is not None else None for o in node.outputs]
    if not all(isinstance(s, int) and s > 0 for s in sizes) or sum(sizes) != lay.size:  # type: ignore[arg-type]
        raise Stop
    bounds = np.cumsum([0, *sizes])
    outs = tuple(Layout(axis, lay.atoms[s:e]) for s, e in zip(bounds[:-1], bounds[1:]))
    b.edits.append(SplitSizes(node, outs))
    for o, out in zip(node.outputs, outs):
        b.layouts[o] = out
        b.limits.append((out, False))


def slice_(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """A unit-step Slice along the channels takes a run of positions; its bounds get recounted."""
    x = node.input(0)
    lay = b.get(x)
    if lay is None:
        return
    if node.opset >= 10:
        starts, ends = const_ints(node.input(1)), const_ints(node.input(2))
        axes = const_ints(node.input(3)) if node.input(3) is not None else None
        steps = const_ints(node.input(4)) if node.input(4) is not None else None
        if starts is None or ends is None or (node.input(3) is not None and axes is None) or \
                (node.input(4) is not None and steps is None):
            raise Stop
    else:
        starts, ends, axes, steps = attrs.get("starts"), attrs.get("ends"), attrs.get("axes"), None
        if starts is None or ends is None:
            raise Stop
    axes = [norm_axis(a, x.rank) for a in (axes if axes is not None else range(len(starts)))]  # type: ignore[union-attr]
    if lay.axis not in axes:
        b.layouts[node.outputs[0]] = lay
        return
    k = axes.index(lay.axis)
    if steps is not None and steps[k] != 1:
        raise Stop
    n = lay.size
    lo, hi = (min(max(v + n if v < 0 else v, 0), n) for v in (starts[k], ends[k]))
    if hi <= lo:
        raise Stop
    out = Layout(lay.axis, lay.atoms[lo:hi])
    b.edits.append(SliceBounds(node, k, lay))
    b.limits.append((out, False))
    b.layouts[node.outputs[0]] = out


def gather(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Gathering along another axis moves the channel axis by the indices' rank; along it, stops."""
    lay = b.get(node.input(0))
    if b.get(node.input(1)) is not None:
        raise Stop
    if lay is None:
        return
    axis = norm_axis(int(attrs.get("axis") or 0), node.input(0).rank)  # type: ignore[union-attr]
    q = node.input(1).rank  # type: ignore[union-attr]
    if lay.axis == axis or q is None:
        raise Stop
    b.layouts[node.outputs[0]] = Layout(lay.axis if lay.axis < axis else lay.axis + q - 1, lay.atoms)


def transpose(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """The channel axis goes where `perm` sends it."""
    lay = b.get(node.input(0))
    if lay is None:
        return
    rank = node.input(0).rank  # type: ignore[union-attr]
    if rank is None:
        raise Stop
    perm = list(attrs.get("perm") or reversed(range(rank)))
    b.layouts[node.outputs[0]] = Layout(perm.index(lay.axis), lay.atoms)


def squeeze(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Removed axes before the channel axis shift it; squeezing the channel axis itself stops."""
    x = node.input(0)
    lay = b.get(x)
    if lay is None:
        return
    axes = ints_arg(node, attrs, 1, 13)
    if axes is None:
        if x.shape is None:  # type: ignore[union-attr]
            raise Stop
        axes = [i for i, d in enumerate(x.shape) if d == 1]  # type: ignore[union-attr]
    axes = [norm_axis(a, x.rank) for a in axes]  # type: ignore[union-attr]
    if lay.axis in axes:
        raise Stop
    b.layouts[node.outputs[0]] = Layout(lay.axis - sum(a < lay.axis for a in axes), lay.atoms)


def unsqueeze(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Inserted axes before the channel axis shift it."""
    lay = b.get(node.input(0))
    if lay is None:
        return
    axes = ints_arg(node, attrs, 1, 13)
    rank = node.outputs[0].rank
    if axes is None:
        raise Stop
    new = {norm_axis(a, rank) for a in axes}
    kept = [i for i in range(rank) if i not in new]  # type: ignore[arg-type]
    b.layouts[node.outputs[0]] = Layout(kept[lay.axis], lay.atoms)


def reshape(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Reshape/Flatten may merge the channels with static neighbours (each channel then owns
    `inner` consecutive features, as Flatten into a Gemm does); splitting them stops."""
    x, out = node.input(0), node.outputs[0]
    lay = b.get(x)
    if lay is None:
        return
    j, outer, inner = _landing(x.shape, lay.axis, out.shape)  # type: ignore[union-attr]
    mapped = Layout(j, np.tile(np.repeat(lay.atoms, inner), outer))
    if node.op_type == "Reshape":
        target: int | str = "shape" if node.opset < 5 else 1
        shape = attrs.get("shape") if node.opset < 5 else const_ints(node.input(1))
        if shape is None or len(shape) != out.rank:
            raise Stop
        merged = outer * inner != 1
        if any(d == 0 and (i == lay.axis) != (i == j and not merged) for i, d in enumerate(shape)):
            raise Stop  # a 0 copying the channel count to where it no longer belongs
        if shape[j] > 0:
            b.edits.append(SetCount(node, target, j, mapped))
    b.layouts[out] = mapped
