"""Control-flow ops: If, Loop, Scan.

Bodies are `ir.Graph`s held in attributes and run through `ctx.run_graph`, which makes the
enclosing scopes visible, so a body may read any outer value (ONNX's implicit inputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import DType, OptionalType, SequenceType, TensorType, ValueType
from .core import REQUIRED, Attr, EvalContext, InferContext, Kind, defop

# ---------------------------------------------------------------------------------------------
# Helpers shared with sequence.py.


def join_types(a: ValueType | None, b: ValueType | None) -> ValueType | None:
    """The most specific type that both `a` and `b` satisfy (dims that differ become unknown)."""
    if a is None or b is None:
        return None
    if isinstance(a, TensorType) and isinstance(b, TensorType):
        if a.dtype != b.dtype:
            return None
        if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
            return TensorType(a.dtype, None)
        return TensorType(a.dtype, tuple(x if x == y else None for x, y in zip(a.shape, b.shape)))
    if isinstance(a, SequenceType) and isinstance(b, SequenceType):
        return SequenceType(join_types(a.elem, b.elem))
    if isinstance(a, OptionalType) and isinstance(b, OptionalType):
        return OptionalType(join_types(a.elem, b.elem))
    return None


def scalar(x: Any, what: str) -> Any:
    """The single element of a one-element tensor (cond, trip count, position...)."""
    a = np.asarray(x)
    if a.size != 1:
        raise ValueError(f"{what} must hold exactly one element, got shape {list(a.shape)}")
    return a.reshape(-1)[0]


def _empty_stack(t: ValueType | None, lead: tuple[int, ...], what: str) -> np.ndarray:
    """Stacked scan output of zero iterations: its element type comes from the body's declaration."""
    if not isinstance(t, TensorType) or t.dtype == DType.UNDEFINED:
        raise NotImplementedError(f"{what}: zero iterations with an untyped scan output is not supported")
    shape = () if t.shape is None else tuple(d if isinstance(d, int) else 0 for d in t.shape)
    return np.zeros(lead + shape, t.dtype.np)


def _stack_type(t: ValueType | None, axis: int, dim: Any) -> ValueType | None:
    """A scan output's type: the body element type with the iteration axis inserted at `axis`."""
    if not isinstance(t, TensorType):
        return None
    if t.shape is None:
        return TensorType(t.dtype, None)
    r = len(t.shape) + 1
    ax = axis + r if axis < 0 else axis
    if not 0 <= ax < r:
        return None
    return TensorType(t.dtype, t.shape[:ax] + (dim,) + t.shape[ax:])


def _out_types(g: Any) -> list[ValueType | None]:
    return [v.type for v in g.outputs]


# ---------------------------------------------------------------------------------------------
# If


def _infer_if(ctx: InferContext, cond: Any, *, then_branch: Any, else_branch: Any, **_: Any) -> list[ValueType | None]:
    return [join_types(a, b) for a, b in zip(_out_types(then_branch), _out_types(else_branch))]


@defop("If", kind=Kind.OPAQUE, attrs={"then_branch": Attr(REQUIRED), "else_branch": Attr(REQUIRED)},
       inputs=(1, 1), outputs=(1, None), infer=_infer_if)
def if_(ctx: EvalContext, cond: Any, *, then_branch: Any, else_branch: Any) -> tuple[Any, ...]:
    """Runs one branch; outputs may be tensors, sequences (lists) or optionals (None when empty)."""
    branch = then_branch if bool(scalar(cond, "If: cond")) else else_branch
    return tuple(ctx.run_graph(branch, []))


# ---------------------------------------------------------------------------------------------
# Loop


def _infer_loop(ctx: InferContext, m: Any, cond: Any, *carried: ValueType | None, body: Any,
                **_: Any) -> list[ValueType | None]:
    outs = _out_types(body)[1:]
    n = len(carried)
    res: list[ValueType | None] = [join_types(c, o) for c, o in zip(carried, outs[:n])]
    trips = None
    mc = ctx.const(0)
    if mc is not None and ctx.node.input(1) is None and mc.size == 1 and _cond_passthrough(body):
        trips = max(0, int(mc.reshape(-1)[0]))  # a plain for-loop: the body cond is never false
    return res + [_stack_type(t, 0, trips) for t in outs[n:]]


def _cond_passthrough(body: Any) -> bool:
    """True when the body returns its cond input unchanged (directly or through Identity)."""
    if len(body.inputs) < 2 or not body.outputs:
        return False
    v = body.outputs[0]
    while v.producer is not None and v.producer.op_type == "Identity" and v.producer.graph is body:
        v = v.producer.input(0)
    return v is body.inputs[1]


@defop("Loop", kind=Kind.OPAQUE, attrs={"body": Attr(REQUIRED)}, inputs=(2, None), outputs=(1, None),
       infer=_infer_loop)
def loop(ctx: EvalContext, m: Any, cond: Any, *initial: Any, body: Any) -> tuple[Any, ...]:
    """`for i in range(M) while cond`: carried values thread through; scan outputs stack on axis 0."""
    n = len(initial)
    n_scan = len(body.outputs) - 1 - n
    if n_scan < 0 or len(body.inputs) != 2 + n:
        raise ValueError(f"Loop: body takes {len(body.inputs)} inputs and returns {len(body.outputs)} outputs "
                         f"for {n} loop-carried values")
    trips = None if m is None else int(scalar(m, "Loop: M"))
    keep = True if cond is None else bool(scalar(cond, "Loop: cond"))
    state = list(initial)
    scans: list[list[Any]] = [[] for _ in range(n_scan)]
    i = 0
    while keep and (trips is None or i < trips):
        outs = ctx.run_graph(body, [np.array(i, np.int64), np.array(keep), *state])
        keep = bool(scalar(outs[0], "Loop: body cond"))
        state = list(outs[1 : 1 + n])
        for acc, x in zip(scans, outs[1 + n :]):
            acc.append(np.asarray(x))
        i += 1
    stacked = [
        np.stack(acc) if acc else _empty_stack(body.outputs[1 + n + k].type, (0,), "Loop")
        for k, acc in enumerate(scans)
    ]
    return tuple(state + stacked)


# ---------------------------------------------------------------------------------------------
# Scan


def _norm(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"Scan: {what} {axis} is out of range for rank {rank}")
    return axis + rank if axis < 0 else axis


def _scan_steps(ctx: EvalContext, body: Any, state: list[Any], xs: list[Any], axes: list[int], dirs: list[int],
                length: int) -> tuple[list[Any], list[list[Any]]]:
    """Run the body over `length` steps; returns the final state and each scan output's elements."""
    n = len(state)
    acc: list[list[Any]] = [[] for _ in range(len(body.outputs) - n)]
    for t in range(length):
        slices = [np.take(x, length - 1 - t if d else t, axis=a) for x, a, d in zip(xs, axes, dirs)]
        outs = ctx.run_graph(body, [*state, *slices])
        state = list(outs[:n])
        for lst, y in zip(acc, outs[n:]):
            lst.append(np.asarray(y))
    return state, acc


def _scan_attrs_infer(ctx: InferContext, *types: ValueType | None, body: Any, num_scan_inputs: int,
                      scan_input_axes: Any = None, scan_output_axes: Any = None, **_: Any) -> list[ValueType | None]:
    outs = _out_types(body)
    if ctx.opset < 9:  # (sequence_lens, states..., scan inputs...) all with a batch axis 0
        states = types[1 : len(types) - num_scan_inputs]
        n = len(states)
        xs = types[len(types) - num_scan_inputs :]
        batch = seq = None
        if xs and isinstance(xs[0], TensorType) and xs[0].shape is not None and len(xs[0].shape) >= 2:
            batch, seq = xs[0].shape[0], xs[0].shape[1]
        res: list[ValueType | None] = [join_types(s, _stack_type(o, 0, batch)) for s, o in zip(states, outs[:n])]
        scans = [_stack_type(_stack_type(o, 0, seq), 0, batch) for o in outs[n:]]
        return res + scans
    n = len(types) - num_scan_inputs
    xs = types[n:]
    seq = None
    if xs and isinstance(xs[0], TensorType) and xs[0].shape is not None:
        a = (scan_input_axes or [0])[0]
        if -len(xs[0].shape) <= a < len(xs[0].shape):
            seq = xs[0].shape[a]
    out_axes = scan_output_axes or [0] * (len(outs) - n)
    return [join_types(s, o) for s, o in zip(types[:n], outs[:n])] + [
        _stack_type(o, a, seq) for o, a in zip(outs[n:], out_axes)
    ]


_SCAN_ATTRS = {
    "body": Attr(REQUIRED),
    "num_scan_inputs": Attr(REQUIRED),
    "directions": Attr(None, type="ints"),  # opset 8
    "scan_input_axes": Attr(None, type="ints"),
    "scan_input_directions": Attr(None, type="ints"),
    "scan_output_axes": Attr(None, type="ints"),
    "scan_output_directions": Attr(None, type="ints"),
}


@defop("Scan", kind=Kind.OPAQUE, attrs=_SCAN_ATTRS, inputs=(1, None), outputs=(1, None), since_version=8,
       infer=_scan_attrs_infer)
def scan(ctx: EvalContext, *args: Any, body: Any, num_scan_inputs: int, directions: Any = None,
         scan_input_axes: Any = None, scan_input_directions: Any = None, scan_output_axes: Any = None,
         scan_output_directions: Any = None) -> tuple[Any, ...]:
    """Iterates the body over slices of the scan inputs, threading state; stacks the scan outputs."""
    if ctx.opset < 9:
        return _scan8(ctx, args[0], list(args[1:]), body, num_scan_inputs, directions)
    m = num_scan_inputs
    n = len(args) - m
    state, xs = list(args[:n]), [np.asarray(x) for x in args[n:]]
    k = len(body.outputs) - n
    axes = [_norm(a, x.ndim, "scan_input_axes") for a, x in zip(scan_input_axes or [0] * m, xs)]
    dirs = list(scan_input_directions or [0] * m)
    out_axes, out_dirs = list(scan_output_axes or [0] * k), list(scan_output_directions or [0] * k)
    if len(axes) != m or len(dirs) != m or len(out_axes) != k or len(out_dirs) != k:
        raise ValueError("Scan: axes/directions attributes do not match the number of scan inputs/outputs")
    lengths = {x.shape[a] for x, a in zip(xs, axes)}
    if len(lengths) > 1:
        raise ValueError(f"Scan: scan inputs have different lengths {sorted(lengths)}")
    length = lengths.pop() if lengths else 0
    state, acc = _scan_steps(ctx, body, state, xs, axes, dirs, length)
    outs: list[Any] = []
    for j, (elems, a, d) in enumerate(zip(acc, out_axes, out_dirs)):
        if not elems:
            y = _empty_stack(body.outputs[n + j].type, (0,), "Scan")
        else:
            y = np.stack(elems[::-1] if d else elems)
        outs.append(np.moveaxis(y, 0, _norm(a, y.ndim, "scan_output_axes")))
    return tuple(state + outs)


def _scan8(ctx: EvalContext, seq_lens: Any, args: list[Any], body: Any, m: int, directions: Any) -> tuple[Any, ...]:
    """Opset 8 Scan: batch axis 0, sequence axis 1, optional per-batch lengths (outputs zero-padded)."""
    n = len(args) - m
    states, xs = [np.asarray(s) for s in args[:n]], [np.asarray(x) for x in args[n:]]
    if not xs:
        raise ValueError("Scan: at least one scan input is required")
    batch, max_len = xs[0].shape[0], xs[0].shape[1]
    lens = [max_len] * batch if seq_lens is None else [int(v) for v in np.asarray(seq_lens).reshape(-1)]
    if len(lens) != batch or any(not 0 <= v <= max_len for v in lens):
        raise ValueError(f"Scan: sequence_lens {lens} do not fit batch {batch} and length {max_len}")
    dirs = list(directions or [0] * m)
    k = len(body.outputs) - n
    finals: list[list[Any]] = [[] for _ in range(n)]
    scans: list[list[np.ndarray]] = [[] for _ in range(k)]
    for b in range(batch):
        # reverse scans read the valid prefix backwards: slice it first so padding is never read
        xb = [x[b, : lens[b]] for x in xs]
        st, acc = _scan_steps(ctx, body, [s[b] for s in states], xb, [0] * m, dirs, lens[b])
        for lst, s in zip(finals, st):
            lst.append(np.asarray(s))
        for j, elems in enumerate(acc):
            if elems:
                y = np.stack(elems)
                pad = np.zeros((max_len - lens[b],) + y.shape[1:], y.dtype)
                scans[j].append(np.concatenate([y, pad]))
            else:
                scans[j].append(_empty_stack(body.outputs[n + j].type, (max_len,), "Scan"))
    if batch == 0:
        raise NotImplementedError("Scan: an empty batch is not supported")
    return tuple([np.stack(f) for f in finals] + [np.stack(s) for s in scans])
