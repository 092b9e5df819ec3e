"""Channel rules for layers and per-channel ops: linear layers mint atoms, elementwise and broadcast
ops couple their operands, normalizations and pooling pass channels (slicing per-channel parameters),
softmax and reductions over the channels stop them."""

from __future__ import annotations

from typing import Any

import numpy as np

from ir import Node
from ir.ops import constant_value

from .depgraph_base import ConstSlice, Edit, Layout, Propagation, Rule, Select, SetCount, Stop, ints_arg, norm_axis

#: Ops whose constant operands add into the channels (zeroing them zeroes a channel) rather than scale.
_ADDITIVE = frozenset({"Add", "Sub", "Sum", "Mean", "Max", "Min", "Where", "Clip", "Concat"})


def stop(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Unknown ops, control flow, ops mixing channels: what they read keeps its channels."""
    raise Stop


def ignore(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Shape and Size read channel counts at run time, so they follow any removal."""


def broadcast(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Numpy broadcasting: operands carrying channels must agree position by position (a residual
    Add unions its branches); a constant spanning the channels ([C, 1, 1]) is sliced with them."""
    out = node.outputs[0]
    carried = [(v, lay) for v in node.inputs if (lay := b.get(v)) is not None]
    if not carried:
        return
    rank = out.rank
    if rank is None or any(v.rank is None for v in node.inputs if v is not None):
        raise Stop
    axes = {lay.axis + rank - v.rank for v, lay in carried}  # type: ignore[operator]
    atoms = carried[0][1].atoms
    if len(axes) != 1 or any(lay.size != len(atoms) for _, lay in carried):
        raise Stop
    axis = axes.pop()
    if out.shape[axis] != len(atoms):  # type: ignore[index]
        raise Stop  # a one-channel source broadcast over many
    slices: list[Edit] = []
    for i, v in enumerate(node.inputs):
        if v is None or b.get(v) is not None:
            continue
        k = axis - (rank - v.rank)  # type: ignore[operator]
        dim = v.shape[k] if k >= 0 else 1  # type: ignore[index]
        if dim == 1:
            continue
        if dim != len(atoms) or constant_value(v) is None:
            raise Stop  # an operand whose channels cannot shrink
        role = "bias" if node.op_type in _ADDITIVE else "param"
        slices.append(ConstSlice(node, i, ((k, Layout(k, atoms)),), role))
    b.edits.extend(slices)
    for _, lay in carried[1:]:
        b.union(atoms, lay.atoms)
    b.put(node, Layout(axis, atoms))


def first_input(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Output 0 is input 0 transformed elementwise (CastLike's second input only gives a type)."""
    lay = b.get(node.input(0))
    if lay is not None:
        b.layouts[node.outputs[0]] = lay


def norm_params(roles: dict[int, str], any_axis: bool) -> Rule:
    """BatchNormalization/InstanceNormalization: per-channel parameters (on axis 1) are sliced; with
    `any_axis`, channels on another axis pass untouched (BatchNorm is elementwise there)."""

    def rule(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
        lay = b.get(node.input(0))
        if lay is None:
            return
        if any(v.uses or v.is_graph_output for v in node.outputs[1:]):
            raise Stop  # training statistics outputs are per channel too
        if lay.axis != 1:
            if not any_axis:
                raise Stop
            b.layouts[node.outputs[0]] = lay
            return
        params = [i for i in roles if node.input(i) is not None]
        if any(np.ndim(constant_value(node.input(i))) != 1 for i in params):
            raise Stop
        b.edits.extend(ConstSlice(node, i, ((0, lay),), roles[i]) for i in params)
        b.layouts[node.outputs[0]] = lay

    return rule


def window(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Pooling works per (sample, channel) over the spatial axes: channels pass, spatial axes stop."""
    lay = b.get(node.input(0))
    if lay is None:
        return
    if lay.axis > 1:
        raise Stop
    b.put(node, lay)


def softmax(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Over the channels it stops; before opset 13 the input is coerced to 2-D at `axis`."""
    lay = b.get(node.input(0))
    if lay is None:
        return
    axis = norm_axis(int(attrs["axis"]), node.input(0).rank)  # type: ignore[union-attr]
    if lay.axis == axis or (node.opset < 13 and lay.axis > axis):
        raise Stop
    b.layouts[node.outputs[0]] = lay


def reduce(statistic: bool) -> Rule:
    """A reduction over other axes passes the channels; one over the channels stops, unless
    `statistic` (ReduceMean keeping dims: LayerNorm/RMSNorm spelled out), whose statistics are then
    taken over the kept channels, as a pruned LayerNorm's are."""

    def rule(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
        x = node.input(0)
        lay = b.get(x)
        if lay is None:
            return
        if node.op_type in ("ArgMax", "ArgMin"):
            axes: list[int] | None = [int(attrs.get("axis") or 0)]
        else:
            axes = ints_arg(node, attrs, 1, 13 if node.op_type == "ReduceSum" else 18)
        if not axes:
            if attrs.get("noop_with_empty_axes"):
                b.layouts[node.outputs[0]] = lay
                return
            axes = list(range(x.rank or 0))  # type: ignore[union-attr]
        axes = [norm_axis(a, x.rank) for a in axes]  # type: ignore[union-attr]
        keep = bool(attrs.get("keepdims", 1))
        if lay.axis in axes:
            if statistic and keep and len(axes) == 1:
                return
            raise Stop
        b.layouts[node.outputs[0]] = Layout(lay.axis if keep else lay.axis - sum(a < lay.axis for a in axes),
                                            lay.atoms)

    return rule


def layernorm(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Normalizing over the channel axis alone: the statistics cover the kept channels and scale and
    bias are sliced (Torch-Pruning prunes LayerNorm this way); over more axes it stops."""
    x = node.input(0)
    lay = b.get(x)
    if lay is None:
        return
    rank = x.rank  # type: ignore[union-attr]
    axis = norm_axis(int(attrs.get("axis", -1)), rank)
    if lay.axis < axis:
        b.put(node, lay)
        return
    if axis != lay.axis or axis != rank - 1:  # type: ignore[operator]
        raise Stop
    params = {i: constant_value(node.input(i)) for i in (1, 2) if node.input(i) is not None}
    if any(p is None or p.shape[-1:] != (lay.size,) for p in params.values()):
        raise Stop
    b.edits.extend(ConstSlice(node, i, ((p.ndim - 1, lay),), "scale" if i == 1 else "bias")  # type: ignore[union-attr]
                   for i, p in params.items())
    b.layouts[node.outputs[0]] = lay


def qdq(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Quantize/Dequantize: per-tensor parameters pass; per-axis ones on the channels are sliced."""
    x = node.input(0)
    lay = b.get(x)
    if lay is None:
        return
    scale = constant_value(node.input(1))
    if scale is None:
        raise Stop
    if scale.size > 1 and norm_axis(int(attrs.get("axis", 1)), x.rank) == lay.axis:  # type: ignore[union-attr]
        if attrs.get("block_size") or scale.ndim != 1:
            raise Stop
        b.edits.extend(ConstSlice(node, i, ((0, lay),), "param") for i in (1, 2) if node.input(i) is not None)
    b.layouts[node.outputs[0]] = lay


def conv(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Conv/ConvTranspose: output channels are new atoms and input channels follow the producer; a
    grouped conv couples each group's inputs and outputs (whole groups go, `group` is rewritten), and
    a depthwise conv whose input cannot shrink gets a channel selection in front (see Select)."""
    x, bias = node.input(0), node.input(2)
    w = constant_value(node.input(1))
    if w is None or w.ndim < 3 or (bias is not None and constant_value(bias) is None):
        raise Stop
    g = int(attrs.get("group") or 1)
    transposed = node.op_type == "ConvTranspose"
    cout = w.shape[1] * g if transposed else w.shape[0]
    cin = w.shape[0] if transposed else w.shape[1] * g
    lay = b.get(x)
    if lay is not None and (lay.axis != 1 or lay.size != cin):
        b.lock(x)
        lay = None
    if g == 1:
        out = Layout(1, b.fresh(cout))
        out_axis, in_axis = (1, 0) if transposed else (0, 1)  # W is [Cout, Cin, ...], transposed [Cin, Cout, ...]
        b.linear(node, out, lay, out_axis, in_axis, bias=2)
        b.macs[node] = (out,) if lay is None else (out, lay)
        return
    if transposed:
        raise Stop  # a grouped ConvTranspose's weight rows mix groups and channels: left whole
    selected = node in b.selected
    if lay is None and not selected:
        return
    if selected:  # the input stays whole (the Gather indexes it as it is); the outputs become new atoms
        b.lock(x)
        heads = b.fresh(g)
        b.edits.append(Select(node, Layout(1, np.repeat(heads, cin // g))))
    else:
        members = lay.atoms.reshape(g, cin // g)  # type: ignore[union-attr]
        b.union(np.repeat(members[:, 0], cin // g), lay.atoms)  # type: ignore[union-attr]
        heads = members[:, 0]
    out = Layout(1, np.repeat(heads, cout // g))
    b.linear(node, out, None, 0, None, bias=2)
    b.edits.append(SetCount(node, "group", None, Layout(0, heads)))
    b.macs[node] = (out,)


def gemm(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """Gemm by a constant B: output columns are new atoms, A's columns (rows with transA) follow the
    producer; a C with one value per column is sliced with them."""
    a, c = node.input(0), node.input(2)
    w = constant_value(node.input(1))
    cv = None if c is None else constant_value(c)
    if w is None or w.ndim != 2 or (c is not None and cv is None):
        raise Stop
    trans_b = bool(attrs.get("transB"))
    lay = b.get(a)
    if lay is not None and lay.axis != (0 if attrs.get("transA") else 1):
        raise Stop
    out = Layout(1, b.fresh(w.shape[0] if trans_b else w.shape[1]))
    sliced_c = cv is not None and cv.ndim >= 1 and cv.shape[-1] == out.size > 1
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)  # B is [K, N], or [N, K] with transB
    b.linear(node, out, lay, out_axis, in_axis, bias=2 if sliced_c else None,
             bias_axis=cv.ndim - 1 if sliced_c else 0)  # type: ignore[union-attr]
    b.macs[node] = (out,) if lay is None else (out, lay)


def matmul(b: Propagation, node: Node, attrs: dict[str, Any]) -> None:
    """MatMul by a constant [K, N] weight is a linear layer over the last axis; channels on another
    axis of the activation pass through it."""
    a, out_v = node.input(0), node.outputs[0]
    w = constant_value(node.input(1))
    if w is None or w.ndim != 2 or a.rank is None or a.rank < 2 or out_v.rank is None:  # type: ignore[union-attr]
        raise Stop
    lay = b.get(a)
    if lay is not None and lay.axis != a.rank - 1:  # type: ignore[union-attr]
        passed = Layout(lay.axis + out_v.rank - a.rank, lay.atoms)  # type: ignore[operator,union-attr]
        b.layouts[out_v] = passed
        b.macs[node] = (passed,)
        return
    out = Layout(out_v.rank - 1, b.fresh(w.shape[1]))
    b.linear(node, out, lay, 1, 0)
    b.macs[node] = (out,) if lay is None else (out, lay)
