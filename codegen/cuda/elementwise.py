"""Generated CUDA kernels for runs of elementwise and broadcast ops (epilogues included).

The CPU generator's plan carries over: the same ops (`codegen.cpu.elementwise.supported`), the same
shape reduction (size-1 dims dropped, neighbours broadcast alike merged) and the same expression
emitters, so both targets evaluate one formula per element. What differs is the rendering: one
thread per output element in a grid-stride loop that turns the flat index back into the reduced
multi-index, and a prelude of device functions built on `math` (NumPy's ufuncs do not exist in
device code). Each generated module also holds the kernel's launcher (`launch.py` conventions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from ir import Node, Value

from ..cpu import elementwise as cpu_ew
from ..cpu.elementwise import Plan, _attrs, _dt, iteration_space, operands

supported = cpu_ew.supported

#: Ops whose CPU expression calls a NumPy ufunc: their device-code spelling.
UNARY = {
    "Abs": "abs({0})", "Exp": "_exp({0})", "Log": "_log({0})", "Sqrt": "_sqrt({0})",
    "Floor": "_floor({0})", "Ceil": "_ceil({0})", "Tanh": "_tanh({0})", "Sin": "_sin({0})",
    "Cos": "_cos({0})", "Erf": "_erf({0})", "Round": "_rint({0})", "Sign": "_sign({0})",
    "Softplus": "(_max({0}, _ZERO) + _log1p(_exp(-abs({0}))))", "Softsign": "({0} / (_ONE + abs({0})))",
}
EMITTERS = {**cpu_ew.EMITTERS, **{op: (lambda t: lambda a, at, n: t.format(*a))(t) for op, t in UNARY.items()}}

#: Device helpers every generated module defines (float32 in, float32 out; NaN as NumPy has it).
PRELUDE = '''
import math
import numpy as np
from numba import cuda

from codegen.cuda.launch import THREADS, blocks

_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)


@cuda.jit(device=True, inline=True)
def _max(a, b):
    # NumPy's maximum: NaN in either operand gives NaN
    if a != a or b != b:
        return a + b
    return a if a > b else b


@cuda.jit(device=True, inline=True)
def _min(a, b):
    if a != a or b != b:
        return a + b
    return a if a < b else b


@cuda.jit(device=True, inline=True)
def _add(a, b):
    return a + b


# The guards below give IEEE results where Python's math raises (overflow, domain errors), so the
# simulator computes what the GPU does; on the GPU they cost a compare each.
_EXP_MAX = np.float32(88.72284)
_EXP_MIN = np.float32(-103.97282)


@cuda.jit(device=True, inline=True)
def _exp(x):
    if x > _EXP_MAX:
        return np.float32(np.inf)
    if x < _EXP_MIN:
        return _ZERO
    return np.float32(math.exp(x))


@cuda.jit(device=True, inline=True)
def _log(x):
    if x < _ZERO:
        return np.float32(np.nan)
    if x == _ZERO:
        return np.float32(-np.inf)
    return np.float32(math.log(x))


@cuda.jit(device=True, inline=True)
def _log1p(x):
    if x < -_ONE:
        return np.float32(np.nan)
    if x == -_ONE:
        return np.float32(-np.inf)
    return np.float32(math.log1p(x))


@cuda.jit(device=True, inline=True)
def _sqrt(x):
    if x < _ZERO:
        return np.float32(np.nan)
    return np.float32(math.sqrt(x))


@cuda.jit(device=True, inline=True)
def _tanh(x):
    return np.float32(math.tanh(x))


@cuda.jit(device=True, inline=True)
def _sin(x):
    if abs(x) == np.float32(np.inf):
        return np.float32(np.nan)
    return np.float32(math.sin(x))


@cuda.jit(device=True, inline=True)
def _cos(x):
    if abs(x) == np.float32(np.inf):
        return np.float32(np.nan)
    return np.float32(math.cos(x))


@cuda.jit(device=True, inline=True)
def _erf(x):
    return np.float32(math.erf(x))


@cuda.jit(device=True, inline=True)
def _integral(x):
    # NaN, infinities and every float32 of magnitude 2**23 or more are already integers
    return x != x or abs(x) >= np.float32(8388608.0)


@cuda.jit(device=True, inline=True)
def _floor(x):
    if _integral(x):
        return x
    return np.float32(math.floor(x))


@cuda.jit(device=True, inline=True)
def _ceil(x):
    if _integral(x):
        return x
    return np.float32(math.ceil(x))


@cuda.jit(device=True, inline=True)
def _rint(x):
    # round half to even, as np.rint and QuantizeLinear do
    if _integral(x):
        return x
    f = np.float32(math.floor(x))
    d = x - f
    if d > _HALF or (d == _HALF and math.fmod(f, np.float32(2.0)) != _ZERO):
        f += _ONE
    return f


@cuda.jit(device=True, inline=True)
def _sign(x):
    if x > _ZERO:
        return _ONE
    if x < _ZERO:
        return -_ONE
    return x  # 0 and NaN


@cuda.jit(device=True, inline=True)
def _sigmoid(x):
    return _ONE / (_ONE + _exp(-x))


@cuda.jit(device=True, inline=True)
def _gelu(x):
    return _HALF * x * (_ONE + _erf(x * np.float32(0.7071067811865476)))


@cuda.jit(device=True, inline=True)
def _gelu_tanh(x):
    return _HALF * x * (_ONE + _tanh(np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)))


@cuda.jit(device=True, inline=True)
def _pow(a, b):
    if a != a or b != b:
        return a + b
    if a < _ZERO and not _integral(b) and np.float32(math.floor(b)) != b:
        return np.float32(np.nan)  # a negative base to a fractional power
    if a == _ZERO and b < _ZERO:
        return np.float32(np.inf)
    if a != _ZERO and abs(a) != np.float32(np.inf) and abs(b) != np.float32(np.inf):
        e = b * math.log2(abs(a))
        if e > np.float32(128.0):  # overflows float32 (the sign of a negative base is lost: inf)
            return np.float32(np.inf) if a > _ZERO or math.fmod(b, np.float32(2.0)) == _ZERO else np.float32(-np.inf)
        if e < np.float32(-150.0):
            return _ZERO
    return np.float32(math.pow(a, b))


@cuda.jit(device=True, inline=True)
def _prelu(x, s):
    return x if x >= _ZERO else s * x


@cuda.jit(device=True, inline=True)
def _leaky(x, alpha):
    return x if x >= _ZERO else alpha * x


@cuda.jit(device=True, inline=True)
def _elu(x, alpha):
    return x if x >= _ZERO else alpha * (_exp(x) - _ONE)


@cuda.jit(device=True, inline=True)
def _celu(x, alpha):
    return _max(_ZERO, x) + _min(_ZERO, alpha * (_exp(x / alpha) - _ONE))


@cuda.jit(device=True, inline=True)
def _hsig(x, alpha, beta):
    return _max(_ZERO, _min(_ONE, alpha * x + beta))


@cuda.jit(device=True, inline=True)
def _quant(x, s, zp, lo, hi):
    # QuantizeLinear: float32 division, round half to even, shift, saturate
    return _min(_max(_rint(x / s) + zp, lo), hi)
'''


def plan(nodes: Sequence[Node], outputs: Sequence[Value]) -> Plan | None:
    """The kernel for `nodes` (topologically ordered) computing `outputs`, or None if it cannot."""
    space = iteration_space(nodes, outputs)
    if space is None:
        return None
    inputs, out_shape, views = space
    rank = len(out_shape)
    names: dict[int, str] = {}
    hoisted: list[str] = []
    body: list[str] = []
    for k, (v, view) in enumerate(zip(inputs, views)):
        if all(n == 1 for n in view):  # a scalar operand: one load per thread, outside the loop
            hoisted.append(f"x{k} = i{k}[{', '.join('0' * rank)}]")
        else:
            idx = ", ".join("0" if view[d] == 1 and out_shape[d] != 1 else f"j{d}" for d in range(rank))
            body.append(f"x{k} = i{k}[{idx}]")
        names[id(v)] = f"x{k}"
    for t, n in enumerate(nodes):
        expr = EMITTERS[n.op_type]([names[id(v)] for v in operands(n)], _attrs(n), n)
        if expr is None:
            return None
        body.append(f"t{t} = {_dt(n.outputs[0].dtype)}({expr})")
        names[id(n.outputs[0])] = f"t{t}"
    idx_all = ", ".join(f"j{d}" for d in range(rank))
    body += [f"o{k}[{idx_all}] = {names[id(v)]}" for k, v in enumerate(outputs)]
    # the flat index back to (j0, ..., j{rank-1}), innermost first
    unflatten = ["r = j"] + [f"j{d} = r % n{d}\nr //= n{d}" for d in range(rank - 1, 0, -1)] + ["j0 = r"]
    lines = [f"n{d} = o0.shape[{d}]" for d in range(1, rank)] + hoisted + [
        "j = cuda.grid(1)", "step = cuda.gridsize(1)", "total = o0.size", "while j < total:"]
    lines += ["    " + ln for part in unflatten for ln in part.split("\n")]
    lines += ["    " + ln for ln in body] + ["    j += step"]
    params = ", ".join([f"i{k}" for k in range(len(inputs))] + [f"o{k}" for k in range(len(outputs))])
    text = "\n".join("    " + ln for ln in lines)
    digest = hashlib.sha1(text.encode()).hexdigest()[:16]
    name = f"ew_{digest}"
    source = (f"@cuda.jit(cache=True)\ndef {name}({params}):\n{text}\n\n\n"
              f"def launch_{name}(stream, {params}):\n"
              f"    {name}[blocks(o0.size), THREADS, stream]({params})\n")
    return Plan(f"launch_{name}", source, inputs, list(outputs), views, out_shape)

