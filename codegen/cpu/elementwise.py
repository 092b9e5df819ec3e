"""Generated kernels for runs of elementwise and broadcast ops (epilogues included).

A run of ops becomes one loop nest over the output shape that evaluates every op per element and
stores each escaping value once: no intermediate tensor is ever written. Shapes are first reduced:
size-1 dims are dropped and neighbouring dims that every operand broadcasts the same way are merged,
so `[1, 64, 56, 56] + bias[64, 1, 1]` becomes a `[64, 3136]` nest reading `bias[64, 1]`. The
outermost loop is a `prange`; a single long dim is cut into chunks so both cores get work.
The source depends only on the op sequence and the broadcast pattern, never on sizes, so one
compiled kernel serves every shape with that pattern.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ir import DType, Node, Value, get_op
from ir.ops import constant_value

from ..lower import clip_bounds
from . import vmath

#: Per op: a function of (operand expressions, attributes, node) -> expression text.
Emit = Callable[[list[str], dict[str, Any], Node], "str | None"]


def _f(x: float) -> str:
    """A float32 literal (a bare Python float would widen float32 arithmetic to float64)."""
    if math.isnan(x):
        return "np.float32(np.nan)"
    if math.isinf(x):
        return "np.float32(np.inf)" if x > 0 else "np.float32(-np.inf)"
    return f"np.float32({float(np.float32(x))!r})"


def _clip(a: list[str], at: dict[str, Any], node: Node) -> str | None:
    bounds = clip_bounds(node)
    if bounds is None:
        return None
    lo, hi = bounds
    e = a[0]
    if lo is not None:
        e = f"_max({e}, {_f(lo)})"
    if hi is not None:
        e = f"_min({e}, {_f(hi)})"
    return e


def _variadic(fn: str) -> Emit:
    def emit(a: list[str], at: dict[str, Any], node: Node) -> str:
        e = a[0]
        for x in a[1:]:
            e = f"{fn}({e}, {x})"
        return e
    return emit


def _scalar(node: Node, i: int) -> float | None:
    v = node.input(i)
    if v is None:
        return 0.0
    c = constant_value(v)
    return None if c is None or c.size != 1 else float(c.reshape(-1)[0])


def _quantize(a: list[str], at: dict[str, Any], node: Node) -> str | None:
    s, zp = _scalar(node, 1), _scalar(node, 2)
    if s is None or zp is None:
        return None
    lo, hi = (0, 255) if node.outputs[0].dtype == DType.UINT8 else (-128, 127)
    return f"_quant({a[0]}, {_f(s)}, {_f(zp)}, {_f(lo)}, {_f(hi)})"


def _dequantize(a: list[str], at: dict[str, Any], node: Node) -> str | None:
    s, zp = _scalar(node, 1), _scalar(node, 2)
    if s is None or zp is None:
        return None
    return f"(np.float32(np.int32({a[0]}) - np.int32({int(zp)})) * {_f(s)})"


UNARY: dict[str, str] = {
    "Identity": "{0}", "Neg": "(-{0})", "Abs": "np.abs({0})", "Exp": "_exp({0})", "Log": "np.log({0})",
    "Sqrt": "np.sqrt({0})", "Reciprocal": "(_ONE / {0})", "Floor": "np.floor({0})", "Ceil": "np.ceil({0})",
    "Tanh": "np.tanh({0})", "Sin": "np.sin({0})", "Cos": "np.cos({0})", "Erf": "_erf({0})",
    "Relu": "_max({0}, _ZERO)", "Sigmoid": "_sigmoid({0})", "Round": "np.rint({0})", "Sign": "np.sign({0})",
    "Softplus": "(_max({0}, _ZERO) + np.log1p(np.exp(-np.abs({0}))))", "Softsign": "({0} / (_ONE + np.abs({0})))",
}

BINARY: dict[str, str] = {
    "Add": "({0} + {1})", "Sub": "({0} - {1})", "Mul": "({0} * {1})", "Div": "({0} / {1})",
    "Pow": "_pow({0}, {1})", "PRelu": "_prelu({0}, {1})",
}

EMITTERS: dict[str, Emit] = {
    **{op: (lambda t: lambda a, at, n: t.format(*a))(t) for op, t in UNARY.items()},
    **{op: (lambda t: lambda a, at, n: t.format(*a))(t) for op, t in BINARY.items()},
    "Max": _variadic("_max"), "Min": _variadic("_min"), "Sum": _variadic("_add"),
    "Mean": lambda a, at, n: f"({_variadic('_add')(a, at, n)} / {_f(len(a))})",
    "Clip": _clip,
    "LeakyRelu": lambda a, at, n: f"_leaky({a[0]}, {_f(at['alpha'])})",
    "Elu": lambda a, at, n: f"_elu({a[0]}, {_f(at['alpha'])})",
    "Selu": lambda a, at, n: f"({_f(at['gamma'])} * _elu({a[0]}, {_f(at['alpha'])}))",
    "Celu": lambda a, at, n: f"_celu({a[0]}, {_f(at['alpha'])})",
    "HardSigmoid": lambda a, at, n: f"_hsig({a[0]}, {_f(at['alpha'])}, {_f(at['beta'])})",
    "HardSwish": lambda a, at, n: f"({a[0]} * _hsig({a[0]}, {_f(1 / 6)}, {_f(0.5)}))",
    "ThresholdedRelu": lambda a, at, n: f"({a[0]} if {a[0]} > {_f(at['alpha'])} else _ZERO)",
    "Gelu": lambda a, at, n: {"none": f"_gelu({a[0]})", "tanh": f"_gelu_tanh({a[0]})"}.get(at.get("approximate")),
    "Cast": lambda a, at, n: a[0],
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
}

#: Ops whose operand 0 is the only tensor operand (the rest are constant scalars baked into the code).
FIRST_ONLY = {"Clip", "QuantizeLinear", "DequantizeLinear"}
#: Element types a kernel may read or write besides float32, per op (input types, output types).
INTEGER_IO: dict[str, tuple[set[DType], set[DType]]] = {
    "Cast": ({DType.FLOAT, DType.INT32, DType.UINT8, DType.INT8}, {DType.FLOAT}),
    "QuantizeLinear": ({DType.FLOAT}, {DType.UINT8, DType.INT8}),
    "DequantizeLinear": ({DType.UINT8, DType.INT8, DType.INT32}, {DType.FLOAT}),
}

#: Helpers every generated module defines (float32 in, float32 out; NaN handled as numpy does).
#: The vmath line names its source's digest: Numba's cache of a kernel that inlined an old `_exp`
#: is keyed on the kernel module's file, which must then change too.
PRELUDE = '''
import math
import numpy as np
from numba import njit, prange

from codegen.cpu.vmath import exp as _exp  # vmath {VMATH}

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)


@njit(inline="always")
def _max(a, b):
    # np.maximum/np.minimum propagate NaN like numpy and, unlike a conditional, vectorise
    return np.maximum(a, b)


@njit(inline="always")
def _min(a, b):
    return np.minimum(a, b)


@njit(inline="always")
def _add(a, b):
    return a + b


@njit(inline="always")
def _sigmoid(x):
    # branch-free (a branch keeps the loop scalar); exp(-x) overflowing to inf gives exactly 0
    return _ONE / (_ONE + _exp(-x))


@njit(inline="always")
def _erf(x):
    # float32 erf as a rational function of x (the approximation Eigen and XLA use, |error| about
    # 1e-7 after clamping to [-4, 4], where erf is +-1 in float32): no libm call, so it vectorises;
    # math.erf goes through double precision and a call per element, 10x slower
    x = np.minimum(np.maximum(x, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    p = x2 * np.float32(-2.72614225801306e-10) + np.float32(2.77068142495902e-08)
    p = p * x2 + np.float32(-2.10102402082508e-06)
    p = p * x2 + np.float32(-5.69250639462346e-05)
    p = p * x2 + np.float32(-7.34990630326855e-04)
    p = p * x2 + np.float32(-2.95459980854025e-03)
    p = p * x2 + np.float32(-1.60960333262415e-02)
    q = x2 * np.float32(-1.45660718464996e-05) + np.float32(-2.13374055278905e-04)
    q = q * x2 + np.float32(-1.68282697438203e-03)
    q = q * x2 + np.float32(-7.37332916720468e-03)
    q = q * x2 + np.float32(-1.42647390514189e-02)
    return x * p / q


@njit(inline="always")
def _gelu(x):
    return _HALF * x * (_ONE + _erf(x * np.float32(0.7071067811865476)))


@njit(inline="always")
def _gelu_tanh(x):
    return _HALF * x * (_ONE + np.tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))


@njit(inline="always")
def _pow(a, b):
    return np.float32(np.power(a, b))


@njit(inline="always")
def _prelu(x, s):
    return x if x >= _ZERO else s * x


@njit(inline="always")
def _leaky(x, alpha):
    return x if x >= _ZERO else alpha * x


@njit(inline="always")
def _elu(x, alpha):
    return x if x >= _ZERO else alpha * (_exp(x) - _ONE)


@njit(inline="always")
def _celu(x, alpha):
    return _max(_ZERO, x) + _min(_ZERO, alpha * (_exp(x / alpha) - _ONE))


@njit(inline="always")
def _hsig(x, alpha, beta):
    return _max(_ZERO, _min(_ONE, alpha * x + beta))


@njit(inline="always")
def _quant(x, s, zp, lo, hi):
    # QuantizeLinear: float32 division, round half to even, shift, saturate
    return _min(_max(np.rint(x / s) + zp, lo), hi)
'''.replace("{VMATH}", hashlib.sha1(Path(vmath.__file__).read_bytes()).hexdigest()[:16])

#: Chunk length when a single long dim is split across threads.
CHUNK = 16384
#: Below this many elements a kernel runs on one thread: waking the pool costs more than it saves.
PARALLEL_MIN = 32768


def supported(node: Node) -> bool:
    """Can this node be one step of a generated elementwise kernel?"""
    if node.domain not in ("", "ai.onnx") or node.op_type not in EMITTERS or node.subgraphs:
        return False
    if len(node.outputs) != 1:
        return False
    ins = operands(node)
    io = INTEGER_IO.get(node.op_type, ({DType.FLOAT}, {DType.FLOAT}))
    if any(v is None or v.dtype not in io[0] for v in ins) or node.outputs[0].dtype not in io[1]:
        return False
    for v in ins + list(node.outputs):
        if v.shape is None or not all(isinstance(d, int) and d > 0 for d in v.shape):
            return False
    return EMITTERS[node.op_type](["x"] * max(1, len(ins)), _attrs(node), node) is not None


def _dt(dtype: DType | None) -> str:
    return f"np.{np.dtype(dtype.np).name}"  # type: ignore[union-attr]


def _attrs(node: Node) -> dict[str, Any]:
    op = get_op(node.op_type, node.domain)
    assert op is not None
    return op.resolve_attrs(node.attributes, node.opset)


@dataclass
class Plan:
    """A generated kernel and how to call it: operand views in the reduced iteration space."""

    name: str
    source: str
    inputs: list[Value]
    outputs: list[Value]
    input_shapes: list[tuple[int, ...]]
    output_shape: tuple[int, ...]
    #: The entry point that writes outputs over their `inplace_pairs` inputs, if the source has one.
    inplace_entry: str | None = None

    def inplace_pairs(self) -> list[tuple[int, int]]:
        """(output, input) index pairs where the output may overwrite the input: the first input of
        each output's view and dtype that is not a constant and not already taken."""
        pairs: list[tuple[int, int]] = []
        for k, o in enumerate(self.outputs):
            for m, (v, view) in enumerate(zip(self.inputs, self.input_shapes)):
                if (view == self.output_shape and all(m != t for _, t in pairs)
                        and constant_value(v) is None and v.dtype == o.dtype):
                    pairs.append((k, m))
                    break
        return pairs


def reduce_shapes(full: tuple[int, ...], shapes: Sequence[tuple[int, ...]]) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """Drop size-1 dims of `full` and merge neighbours every operand treats alike."""
    r = len(full)
    padded = [(1,) * (r - len(s)) + tuple(s) for s in shapes]
    dims: list[tuple[int, tuple[bool, ...]]] = []  # (size, per operand: broadcast along this dim?)
    for i, n in enumerate(full):
        if n == 1:
            continue
        pattern = tuple(p[i] == 1 for p in padded)
        if dims and dims[-1][1] == pattern:
            dims[-1] = (dims[-1][0] * n, pattern)
        else:
            dims.append((n, pattern))
    if not dims:
        dims = [(1, tuple(False for _ in padded))]
    out_shape = tuple(n for n, _ in dims)
    views = [tuple(1 if pat[k] else n for n, pat in dims) for k in range(len(padded))]
    return out_shape, views


def operands(n: Node) -> list[Value]:
    """The tensor operands of one step (constant scalar parameters are baked into the code)."""
    return [n.inputs[0]] if n.op_type in FIRST_ONLY else [v for v in n.inputs if v is not None]


def iteration_space(nodes: Sequence[Node], outputs: Sequence[Value]
                    ) -> tuple[list[Value], tuple[int, ...], list[tuple[int, ...]]] | None:
    """(the run's inputs, the reduced output shape, each input's view of it), or None when the
    outputs differ in shape or an input is bigger than them (then it is not a pure epilogue).
    Both targets' generators start from this."""
    full = tuple(outputs[0].shape)  # type: ignore[arg-type]
    if any(tuple(v.shape) != full for v in outputs):  # type: ignore[arg-type]
        return None
    produced = {id(v) for n in nodes for v in n.outputs}
    inputs: list[Value] = []
    for n in nodes:
        for v in operands(n):
            if id(v) not in produced and all(v is not x for x in inputs):
                inputs.append(v)
    shapes = [tuple(v.shape) for v in inputs]  # type: ignore[arg-type]
    if any(len(s) > len(full) or any(a not in (1, b) for a, b in zip(s[::-1], full[::-1])) for s in shapes):
        return None
    out_shape, views = reduce_shapes(full, shapes)
    return inputs, out_shape, views


def plan(nodes: Sequence[Node], outputs: Sequence[Value]) -> Plan | None:
    """The kernel for `nodes` (topologically ordered) computing `outputs`, or None if it cannot."""
    space = iteration_space(nodes, outputs)
    if space is None:
        return None
    inputs, out_shape, views = space
    rank = len(out_shape)
    names = {id(v): f"i{k}" for k, v in enumerate(inputs)}
    body: list[str] = []
    idx_all = ", ".join(f"j{d}" for d in range(rank))
    hoisted: list[str] = []
    for k, (v, view) in enumerate(zip(inputs, views)):
        if all(n == 1 for n in view):  # a scalar operand: read once, before the loops (loads inside
            hoisted.append(f"x{k} = i{k}[{', '.join('0' * rank)}]")  # them may alias the stores, and
            names[id(v)] = f"x{k}"  # then LLVM reloads them every element and gives up vectorising)
            continue
        idx = ", ".join("0" if view[d] == 1 and out_shape[d] != 1 else f"j{d}" for d in range(rank))
        body.append(f"x{k} = i{k}[{idx}]")
        names[id(v)] = f"x{k}"
    for t, n in enumerate(nodes):
        expr = EMITTERS[n.op_type]([names[id(v)] for v in operands(n)], _attrs(n), n)
        if expr is None:
            return None
        body.append(f"t{t} = {_dt(n.outputs[0].dtype)}({expr})")
        names[id(n.outputs[0])] = f"t{t}"
    for k, v in enumerate(outputs):
        body.append(f"o{k}[{idx_all}] = {names[id(v)]}")
    params = [f"i{k}" for k in range(len(inputs))] + [f"o{k}" for k in range(len(outputs))]
    indent = "    "

    def nest(loop: str) -> list[str]:
        if rank == 1:
            # the inner loop counts from 0: counting from `c * CHUNK`, LLVM leaves an in-place loop scalar
            head = [f"for c in {loop}((n0 + {CHUNK - 1}) // {CHUNK}):",
                    f"    lo = c * {CHUNK}",
                    f"    for jj in range(min(n0 - lo, {CHUNK})):",
                    "        j0 = lo + jj"]
            depth = 2
        else:
            head = [f"for j0 in {loop}(n0):"] + [f"{indent * d}for j{d} in range(n{d}):" for d in range(1, rank)]
            depth = rank
        return head + [indent * depth + line for line in body]

    lines = [f"n{d} = o0.shape[{d}]" for d in range(rank)] + hoisted
    parallel = int(np.prod(out_shape)) >= PARALLEL_MIN
    if parallel:  # small shapes get a serial kernel: it compiles in a fraction of the time
        lines += [f"if {' * '.join(f'n{d}' for d in range(rank))} < {PARALLEL_MIN}:"]
        lines += [indent + line for line in nest("range")]
        lines += ["else:"] + [indent + line for line in nest("prange")]
    else:
        lines += nest("range")
    text = "\n".join(indent + line for line in lines)
    digest = hashlib.sha1(f"{parallel}{text}".encode()).hexdigest()[:16]
    name = f"ew_{digest}"
    deco = f"@njit(cache=True, error_model='numpy'{', parallel=True' if parallel else ''})"
    p = Plan(name, f"{deco}\ndef {name}({', '.join(params)}):\n{text}\n", inputs, list(outputs), views, out_shape)
    pairs = p.inplace_pairs()
    if pairs:
        # The same loops writing each in-place output through its input's array. Given two arrays
        # that overlap, LLVM's vectorised loop fails its run-time overlap check and the scalar one
        # runs (6x slower on an erf); one array it sees as a plain read-then-write of each element.
        # Numba compiles an entry point only when it is first called, so this costs nothing unused.
        p.inplace_entry = f"{name}_inplace"
        through = {k: m for k, m in pairs}
        entry = [f"i{k}" for k in range(len(inputs))] + [f"o{k}" for k in range(len(outputs)) if k not in through]
        alias = "".join(f"{indent}o{k} = i{m}\n" for k, m in pairs)
        p.source += f"\n\n{deco}\ndef {p.inplace_entry}({', '.join(entry)}):\n{alias}{text}\n"
    return p
