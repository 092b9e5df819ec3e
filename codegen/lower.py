"""The lowering pipeline both native targets share: named steps from the optimized IR to a program.

    specialize   bind the inputs' concrete shapes; infer every shape, fold what became constant
    prepare      split Conv/Gemm biases off into Adds, so fusion makes them part of the epilogue;
                 QDQ Convs become integer convolutions
    fuse         group each Conv/Gemm/MatMul with its epilogue and elementwise runs (passes.fuse)
    select       pick a kernel per node or group (the target's rules, its generated elementwise
                 kernels, reference fallbacks)
    plan-memory  liveness, in-place reuse and arena offsets (codegen.memory); calls that got to
                 write over an input switch to their kernel's in-place entry (write_in_place)
    emit         the driver module's source (the target's emitter)

A `Target` is what differs between CPU and CUDA up to the program: its rule table and its
elementwise generator. Everything else, including the memory plan, is one code path, so a model
means the same on both and their programs can be printed and compared step by step.
`lower(graph, shapes, target, print_after={"select"})` prints the IR or program after the named steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

import passes
from ir import (
    DType,
    Graph,
    Node,
    TensorType,
    Value,
    format_graph,
    free_values,
    get_op,
    infer_node,
    infer_shapes,
)
from ir.ops import constant_value

from .memory import plan_memory
from .program import Arg, Call, Const, Kernel, Program, Use

Rule = Callable[[Node], "list[Call] | None"]


def static(v: Value | None) -> bool:
    """A tensor whose dtype and every dim are known numbers (what kernels are generated for)."""
    return (v is not None and v.shape is not None and v.dtype is not None
            and all(isinstance(d, int) for d in v.shape))


@dataclass(frozen=True)
class Target:
    """What a native target contributes to lowering: kernels for single nodes (`rules`, by op
    type), which nodes its elementwise generator takes (`fusable`), and the generator itself
    (`elementwise(run, escaping outputs)` -> calls, or None to split the run)."""

    name: str
    rules: Mapping[str, Rule]
    fusable: Callable[[Node], bool]
    elementwise: Callable[[list[Node], list[Value]], list[Call] | None]
    #: Graph outputs get arena buffers too (a GPU copies them back once) instead of fresh arrays.
    outputs_in_arena: bool = False
    #: Optional: a kernel for a node *and* the elementwise nodes after it in its fusion group
    #: (`epilogue(node, following, escaping value ids)` -> (calls, how many followers they cover)),
    #: for targets whose kernels apply an epilogue at their store.
    epilogue: Callable[[Node, list[Node], set[int]], "tuple[list[Call], int] | None"] | None = None


STEPS = ("specialize", "prepare", "fuse", "select", "plan-memory", "emit")

def specialize(graph: Graph, shapes: Mapping[str, tuple[int, ...]]) -> Graph:
    """A copy of `graph` (unfused) whose inputs have the given concrete shapes, re-inferred and folded."""
    g = graph.copy()
    passes.run(g, "unfuse")
    _raise_opset(g)
    for v in g.inputs:
        if v.name in shapes and isinstance(v.type, TensorType):
            v.type = TensorType(v.type.dtype, tuple(int(d) for d in shapes[v.name]))
    for node in g.all_nodes():
        for out in node.outputs:
            if isinstance(out.type, TensorType) and out.type.shape is not None and any(
                    not isinstance(d, int) for d in out.type.shape):
                out.type = TensorType(out.type.dtype, None)  # forget symbolic dims: they are bound now
    for _ in range(8):  # shapes feed Reshape/Resize targets: fold, infer again, until nothing moves
        _infer(g)
        folded = _fold_shapes(g)
        passes.run(g, "fold-constants,dce")
        if not folded:
            break
    _infer(g)
    return g


def _static_input(node: Node) -> bool:
    v = node.inputs[0]
    return v is not None and v.shape is not None and all(isinstance(d, int) for d in v.shape)


def _fold_shapes(g: Graph) -> bool:
    """Shape and Size of tensors whose shape is now known become constants (their own references
    compute the value from a placeholder of that shape)."""
    from ir import Interpreter

    interp = Interpreter()
    changed = False
    for node in list(g.nodes):
        if node.op_type not in ("Shape", "Size") or not _static_input(node) or node.outputs[0].is_graph_output:
            continue
        x = node.inputs[0]
        placeholder = np.broadcast_to(np.zeros((), x.dtype.np if x.dtype is not None else np.float32), x.shape)
        (value,) = interp.run_node(node, [placeholder])
        c = g.add_initializer(g.unique_name(node.outputs[0].name + "_static"), np.asarray(value))
        g.replace_value(node.outputs[0], c)
        g.remove(node)
        changed = True
    return changed


#: Kernels' favourite opset: LayerNormalization exists from 17, and canonicalize then recognises the
#: decomposed LayerNorm that exporters write for older opsets (one kernel instead of five).
LOWERING_OPSET = 17


def _raise_opset(g: Graph) -> None:
    """Move a graph at opset 13-16 to 17, with every attribute pinned to the value it had, so no
    default that changed in between (RoiAlign's, ScatterND's) changes meaning. Between 13 and 17 no
    op moved an attribute to an input, so the nodes mean exactly what they meant; then canonicalize
    can use the newer ops. The graph is the lowering's private copy: exported models are unchanged."""
    from ir import get_op

    opset = g.opset("")
    if not 13 <= opset < LOWERING_OPSET:
        return
    for node in g.all_nodes():
        op = get_op(node.op_type, node.domain)
        if op is not None and node.domain in ("", "ai.onnx"):
            resolved = op.resolve_attrs(node.attributes, node.opset)
            node.attributes = {k: v for k, v in resolved.items() if v is not None}
    g.opset_imports[""] = LOWERING_OPSET
    passes.run(g, "canonicalize,dce")


def _infer(g: Graph) -> None:
    """Shape inference, except that control flow's outputs stay shapeless: If's branches may differ
    in shape and a loop's trip count is data, so whatever reads them is sized at run time."""
    for node in g.nodes:
        if node.subgraphs:
            for sg in node.subgraphs:
                infer_shapes(sg)
            for v in node.outputs:
                if isinstance(v.type, TensorType):
                    v.type = TensorType(v.type.dtype, None)
        else:
            infer_node(node)


def prepare(graph: Graph) -> Graph:
    """Conv(x, w, b) -> Add(Conv(x, w), b[C,1,1]); Gemm(a, b, c) -> Add(Gemm(a, b), beta*c);
    a QDQ-quantized Conv -> ConvInteger on the quantized tensors, scaled back (see `_integer_conv`)."""
    for node in list(graph.nodes):
        if node.op_type == "Conv":
            _integer_conv(graph, node)
    _fold_constant_dequantize(graph)
    for node in list(graph.nodes):
        if node.op_type == "Conv" and node.input(2) is not None:
            b = constant_value(node.input(2))
            y = node.outputs[0]
            if b is None or y.rank is None or y.dtype != DType.FLOAT:
                continue
            bias = graph.add_initializer(graph.unique_name(f"{node.name or 'conv'}_bias"),
                                         b.reshape((-1,) + (1,) * (y.rank - 2)).astype(np.float32))
            _split(graph, node, bias)
        elif node.op_type == "Gemm" and node.input(2) is not None:
            c = constant_value(node.input(2))
            y = node.outputs[0]
            if c is None or y.dtype != DType.FLOAT or node.attributes.get("transA"):
                continue
            beta = float(node.attributes.get("beta", 1.0))
            bias = graph.add_initializer(graph.unique_name(f"{node.name or 'gemm'}_bias"),
                                         (np.float32(beta) * c).astype(np.float32))
            node.attributes.pop("beta", None)
            _split(graph, node, bias)
    return graph


def _fold_constant_dequantize(graph: Graph) -> None:
    """DequantizeLinear of constants (weights of layers not lowered as integer ops) becomes the
    float constant: the graph-level folder keeps them on purpose, to preserve QDQ for export."""
    from ir import Interpreter

    interp = Interpreter()
    for node in list(graph.nodes):
        if node.op_type != "DequantizeLinear" or node.outputs[0].is_graph_output:
            continue
        ins = [constant_value(v) if v is not None else None for v in node.inputs]
        if any(v is not None and c is None for v, c in zip(node.inputs, ins)):
            continue
        (out,) = interp.run_node(node, ins)
        c = graph.add_initializer(graph.unique_name(node.outputs[0].name + "_const"), out)
        graph.replace_value(node.outputs[0], c)
        graph.remove(node)


def _dq(v: Value | None) -> tuple[Value, np.ndarray, np.ndarray] | None:
    """(quantized tensor, scale, zero point) when `v` is DequantizeLinear of an 8-bit tensor."""
    if v is None or v.producer is None or v.producer.op_type != "DequantizeLinear":
        return None
    dq = v.producer
    q = dq.inputs[0]
    s = constant_value(dq.input(1))
    zp = constant_value(dq.input(2)) if dq.input(2) is not None else np.zeros((), q.dtype.np if q.dtype else np.uint8)
    if s is None or zp is None or q.dtype not in (DType.UINT8, DType.INT8) or v.dtype != DType.FLOAT:
        return None
    return q, s.astype(np.float32), zp


def _integer_conv(graph: Graph, node: Node) -> bool:
    """Conv(DQ(xq), DQ(wq), b) -> Add(Mul(Cast(ConvInteger(xq, wq, zx)), sx*sw[C,1,1]), b[C,1,1]).

    The integer convolution is exact, and the scaling, bias, activation and the next layer's
    QuantizeLinear then fuse into its epilogue: int8 in, int8 out, floats only in registers.
    Taken when x is uint8 with one scale and zero point, and w is constant int8 with zero point 0
    (per-tensor or per-output-channel scales), which is what `mcc compress --quantize int8` writes.
    """
    x, w = _dq(node.inputs[0]), _dq(node.inputs[1])
    y = node.outputs[0]
    if x is None or w is None or y.rank is None or y.rank < 3:
        return False
    (xq, sx, zx), (wq, sw, zw) = x, w
    wc = constant_value(wq)
    if (xq.dtype != DType.UINT8 or sx.size != 1 or zx.size != 1 or wc is None or wc.dtype != np.int8
            or np.any(zw != 0) or sw.size not in (1, wc.shape[0])
            or (w[0].producer is not None and False)):
        return False
    if sw.size > 1 and node.inputs[1].producer.attributes.get("axis", 1) not in (0, -wc.ndim):  # type: ignore[union-attr]
        return False
    bias = None
    if node.input(2) is not None:
        bq = _dq(node.input(2))
        bc = constant_value(node.input(2))
        if bc is None and node.input(2).producer is not None and node.input(2).producer.op_type == "DequantizeLinear":
            p = node.input(2).producer
            raw, sb = constant_value(p.inputs[0]), constant_value(p.input(1))
            zb = constant_value(p.input(2)) if p.input(2) is not None else 0
            if raw is None or sb is None:
                return False
            bc = ((raw.astype(np.int64) - zb).astype(np.float32) * sb.astype(np.float32)).astype(np.float32)
        if bc is None:
            return False
        del bq
        bias = bc.astype(np.float32)
    co = wc.shape[0]
    per = (-1,) + (1,) * (y.rank - 2)
    name = node.name or "conv"
    zx_v = graph.add_initializer(graph.unique_name(f"{name}_x_zero_point"), zx.reshape(()).astype(np.uint8))
    ci = graph.make_node("ConvInteger", [xq, wq, zx_v], dict(node.attributes), 1,
                         name=graph.unique_name(f"{name}_int"), before=node)
    ci.outputs[0].type = TensorType(DType.INT32, y.shape)
    f = graph.make_node("Cast", [ci.outputs[0]], {"to": int(DType.FLOAT)}, 1, name=graph.unique_name(f"{name}_acc"),
                        before=node)
    f.outputs[0].type = y.type
    scale = graph.add_initializer(graph.unique_name(f"{name}_scale"),
                                  (np.broadcast_to(sx.reshape(()) * sw.reshape(-1), (co,)).astype(np.float32)).reshape(per))
    out = graph.make_node("Mul", [f.outputs[0], scale], {}, 1, name=graph.unique_name(f"{name}_rescale"), before=node)
    out.outputs[0].type = y.type
    if bias is not None:
        b = graph.add_initializer(graph.unique_name(f"{name}_bias"), np.broadcast_to(bias.reshape(-1), (co,)).reshape(per))
        out = graph.make_node("Add", [out.outputs[0], b], {}, 1, name=graph.unique_name(f"{name}_bias"), before=node)
        out.outputs[0].type = y.type
    graph.replace_value(y, out.outputs[0])
    graph.remove(node)
    return True


def _split(graph: Graph, node: Node, bias: Value) -> None:
    y = node.outputs[0]
    core = graph.make_node(node.op_type, list(node.inputs[:2]), dict(node.attributes), 1,
                           name=graph.unique_name(f"{node.name or node.op_type}_core"), before=node)
    core.outputs[0].type = y.type
    add = graph.make_node("Add", [core.outputs[0], bias], {}, 1, name=graph.unique_name(f"{node.name}_bias"),
                          before=node)
    add.outputs[0].type = y.type
    graph.replace_value(y, add.outputs[0])
    graph.remove(node)


def fuse(graph: Graph) -> Graph:
    passes.run(graph, "fuse")
    return graph


# -- select -----------------------------------------------------------------------------------


def select(graph: Graph, target: Target) -> Program:
    """The graph as a list of calls: fused groups and single nodes, fallbacks where no kernel fits."""
    calls: list[Call] = []
    for node in graph.nodes:
        if node.op_type == "Fused" and node.domain == "mcc":
            body: Graph = node.attributes["body"]
            subst = {id(b): v for b, v in zip(body.inputs, node.inputs)}
            subst.update({id(b): v for b, v in zip(body.outputs, node.outputs)})
            group = _lower_nodes(target, list(body.nodes), body.outputs)
            if group is None:
                calls.append(_fallback(node))
            else:
                calls.extend(_substitute(c, subst) for c in group)
        elif node.op_type == "Constant" and not any(v.is_graph_output for v in node.outputs):
            continue  # its value is read as a constant wherever it is used
        else:
            calls.extend(_lower_nodes(target, [node], list(node.outputs)) or [_fallback(node)])
    inputs = [v for v in graph.inputs if v.const is None]
    return _finish(Program(calls, inputs, list(graph.outputs)))


def _lower_nodes(target: Target, nodes: list[Node], escaping: Sequence[Value]) -> list[Call] | None:
    """Calls for a group's nodes: maximal elementwise runs become one generated kernel each."""
    out: list[Call] = []
    run: list[Node] = []
    members = {id(n) for n in nodes}
    escape = {id(v) for v in escaping}

    def flush() -> bool:
        if not run:
            return True
        inside = {id(n) for n in run}
        outs = [v for n in run for v in n.outputs
                if id(v) in escape or any(id(u) not in inside for u, _ in v.uses) or v.is_graph_output]
        calls = target.elementwise(run, outs)
        if calls is None:  # split: each op on its own
            for n in run:
                one = target.elementwise([n], list(n.outputs))
                if one is None:
                    return False
                out.extend(one)
        else:
            out.extend(calls)
        run.clear()
        return True

    i = 0
    while i < len(nodes):
        n = nodes[i]
        i += 1
        if target.fusable(n):
            run.append(n)
            continue
        if not flush():
            return None
        if target.epilogue is not None and static(n.outputs[0]):
            taken = target.epilogue(n, nodes[i:], escape)
            if taken is not None:
                out.extend(taken[0])
                i += taken[1]
                continue
        calls = _single(target, n)
        if calls is None:
            if len(nodes) == 1:
                return None
            calls = [_fallback(n)]
        out.extend(calls)
    if not flush():
        return None
    del members
    return out


@dataclass(frozen=True)
class Epilogue:
    """What follows a kernel's output `y` in its fusion group and can be applied at its store:
    a per-channel constant Add (the bias `prepare` split off), an Add of a tensor shaped like y
    (a residual), then Relu or Clip (lo, hi; None is unbounded), each optional, in that order."""

    bias: np.ndarray | None
    residual: Value | None
    lo: float | None
    hi: float | None
    out: Value  #: the value the last step taken defines
    taken: int  #: how many of the following nodes it covers


def match_epilogue(y: Value, channels: int, following: list[Node], escaping: set[int], *,
                   residual: bool, clip: bool) -> Epilogue | None:
    """The longest `Epilogue` after y (channel axis 1) within `following`, or None if none.

    Every value in between must be read only by the next step (and not escape the group), so
    computing it in registers loses nothing. `residual` and `clip` say what the kernel can take."""
    cur, taken = y, 0
    bias: np.ndarray | None = None
    res: Value | None = None
    lo = hi = None

    def step(op: str) -> Node | None:
        if taken >= len(following):
            return None
        nxt = following[taken]
        sole = (id(cur) not in escaping and not cur.is_graph_output and len(cur.uses) == 1
                and cur.uses[0][0] is nxt)
        return nxt if nxt.op_type == op and nxt.domain in ("", "ai.onnx") and sole else None

    rank = len(y.shape)
    if (n := step("Add")) is not None:
        other = [v for v in n.inputs if v is not cur]
        c = constant_value(other[0]) if len(other) == 1 else None
        if (c is not None and c.ndim <= rank and c.size == channels
                and (1,) * (rank - c.ndim) + c.shape == (1, channels) + (1,) * (rank - 2)):
            bias = np.ascontiguousarray(c, np.float32).reshape(channels)
            cur, taken = n.outputs[0], 1
    if residual and (n := step("Add")) is not None:
        other = [v for v in n.inputs if v is not cur]
        if (len(other) == 1 and constant_value(other[0]) is None and other[0].dtype == y.dtype
                and other[0].shape == y.shape):
            res, cur, taken = other[0], n.outputs[0], taken + 1
    if (n := step("Relu")) is not None:
        lo, cur, taken = 0.0, n.outputs[0], taken + 1
    elif clip and (n := step("Clip")) is not None:
        bounds = clip_bounds(n)
        if bounds is not None:
            (lo, hi), cur, taken = bounds, n.outputs[0], taken + 1
    if taken == 0 or cur.dtype != y.dtype or cur.shape != y.shape:
        return None
    return Epilogue(bias, res, lo, hi, cur, taken)


def clip_bounds(node: Node) -> tuple[float | None, float | None] | None:
    """A Clip's constant (min, max), None where unbounded; None if a bound is not a constant."""
    if node.opset < 11:
        op = get_op(node.op_type, node.domain)
        assert op is not None
        at = op.resolve_attrs(node.attributes, node.opset)
        lo, hi = at.get("min"), at.get("max")
        return (None if lo is None else float(lo), None if hi is None else float(hi))
    bounds: list[float | None] = []
    for i in (1, 2):
        v = node.input(i)
        c = None if v is None else constant_value(v)
        if v is not None and (c is None or c.size != 1):
            return None
        bounds.append(None if c is None else float(c.reshape(-1)[0]))
    return bounds[0], bounds[1]


def elementwise_call(run: list[Node], outputs: list[Value], *, plan: Callable[..., Any], prelude: str,
                     prefix: str) -> list[Call] | None:
    """One call of a generated kernel for an elementwise run (`plan` renders it for a target):
    constant operands go to the constants arena, and an output may overwrite an input of its
    shape and type (the planner decides whether it does)."""
    if not outputs:
        return []
    p = plan(run, outputs)
    if p is None:
        return None
    kernel = Kernel(f"{prefix}{p.name}", p.name, prelude + "\n\n" + p.source, p.inplace_entry)
    args: list[Arg] = [_arg(v, view) for v, view in zip(p.inputs, p.input_shapes)]
    args += [Use(v, p.output_shape) for v in p.outputs]
    inplace = [(p.outputs[k], p.inputs[m]) for k, m in p.inplace_pairs()]
    ops = "+".join(n.op_type for n in run)
    return [Call(run[-1], kernel, args, list(p.outputs), inplace=inplace, note=ops)]


def _arg(v: Value, view: tuple[int, ...]) -> Use | Const:
    c = constant_value(v)
    if c is not None:
        return Const(np.ascontiguousarray(c).reshape(view))
    return Use(v, view)


def _single(target: Target, node: Node) -> list[Call] | None:
    fn = target.rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if fn is None:
        return None
    tensors = [v for v in list(node.inputs) + list(node.outputs) if v is not None]
    if not all(static(v) for v in tensors if constant_value(v) is None or v in node.outputs):
        return None
    if any(d == 0 for v in tensors if v.shape is not None and constant_value(v) is None for d in v.shape):
        return None  # empty constants are how old exporters omit optional inputs (Resize's roi)
    return fn(node)


def _fallback(node: Node) -> Call:
    reads = [v for v in node.inputs if v is not None]
    for sg in node.subgraphs:
        reads += [v for v in free_values(sg) if all(v is not r for r in reads)]
    return Call(node, None, [Use(v) for v in reads], list(node.outputs), note="reference")


def _substitute(call: Call, subst: dict[int, Value]) -> Call:
    def s(v: Value) -> Value:
        return subst.get(id(v), v)

    args = [Use(s(a.value), a.shape) if isinstance(a, Use) else a for a in call.args]
    return Call(call.node, call.kernel, args, [s(v) for v in call.defines],
                [(s(o), s(i)) for o, i in call.inplace], {id(s_o): s(src) for s_o, src in
                                                          ((s(o), src) for o, src in _alias_items(call))},
                call.note)


def _alias_items(call: Call) -> Iterable[tuple[Value, Value]]:
    for v in call.defines:
        if id(v) in call.alias:
            yield v, call.alias[id(v)]


def write_in_place(program: Program) -> Program:
    """Calls whose every in-place output got its input's buffer call the kernel's in-place entry
    (`Kernel.inplace_entry`), which takes no output arrays: it writes through the inputs."""
    for c in program.calls:
        k = c.kernel
        if k is None or k.inplace_entry is None or not c.inplace:
            continue
        if all(id(o) in program.storage and program.storage.get(id(o)) == program.storage.get(id(i))
               for o, i in c.inplace):
            outs = {id(o) for o, _ in c.inplace}
            c.args = [a for a in c.args if not (isinstance(a, Use) and id(a.value) in outs)]
            c.kernel = replace(k, name=k.inplace_entry, inplace_entry=None)
    return program


def _finish(p: Program) -> Program:
    """Constant operands of native calls become Const arguments (they live in the constants arena)."""
    for c in p.calls:
        if c.kernel is None:
            continue
        c.args = [Const(np.ascontiguousarray(constant_value(a.value)).reshape(a.shape or constant_value(a.value).shape))
                  if isinstance(a, Use) and constant_value(a.value) is not None else a
                  for a in c.args]
    return p


# -- the pipeline -----------------------------------------------------------------------------


def lower(graph: Graph, shapes: Mapping[str, tuple[int, ...]], target: Target, *,
          print_after: Iterable[str] = (), printer: Callable[[str], None] = print) -> Program:
    """Run the steps up to plan-memory for `target`; its emitter turns the program into source."""
    show = set(print_after)
    unknown = show - set(STEPS)
    if unknown:
        raise ValueError(f"unknown lowering step(s) {sorted(unknown)}; the steps are: {', '.join(STEPS)}")

    def dump(step: str, what: Graph | Program) -> None:
        if step in show:
            printer(f"// ----- after {step} -----\n"
                    + (format_graph(what) if isinstance(what, Graph) else what.format()))

    g = specialize(graph, shapes)
    dump("specialize", g)
    prepare(g)
    passes.run(g, "dce")
    dump("prepare", g)
    fuse(g)
    dump("fuse", g)
    program = select(g, target)
    program.graph = g
    dump("select", program)
    plan_memory(program, outputs_in_arena=target.outputs_in_arena)
    write_in_place(program)
    dump("plan-memory", program)
    return program
