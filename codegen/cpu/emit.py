"""The driver emitter: a program becomes straight-line Python source that calls compiled kernels.

The generated module has one function, `bind(C, A, F, K)`, which slices every buffer view out of
the constants arena `C` and the activation arena `A` once, and returns `run(inputs)`: the model's
calls in order, each kernel called with views it already holds. An inference is then one Python
call per kernel and nothing else: no loop over nodes, no dictionary look-ups, no allocation but
the outputs'. (A driver compiled as one Numba function would save those few microseconds per call,
but Numba then compiles and LLVM optimises every kernel inlined into it: ResNet-50 took minutes.)
Fallback calls (`F[i]`) run an op's reference semantics between kernels; `K` holds the constant
arrays they read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ir import Value
from ir.ops import constant_value

from ..program import Arg, Call, Const, Kernel, Lit, Program, Scratch, Use


@dataclass
class Emitted:
    """The driver's source and what `bind` needs besides the arenas."""

    module: str
    source: str
    #: Sources of generated kernels, by module name (each is its own file, shared between drivers).
    kernels: dict[str, str]
    #: Calls whose nodes run through the reference, in the order `bind` receives them as `F`.
    fallbacks: list[Call]
    #: Constant arrays fallback calls read (`K`).
    py_consts: list[np.ndarray] = field(default_factory=list)


def _dt(dtype: np.dtype) -> str:
    return f"np.{np.dtype(dtype).name}"


class _Names:
    def __init__(self) -> None:
        self.names: dict[int, str] = {}

    def __call__(self, v: Value) -> str:
        if id(v) not in self.names:
            self.names[id(v)] = f"v{len(self.names)}"
        return self.names[id(v)]


def fixed_arg(program: Program, a: Arg, fresh_name: Callable[[str], str], bind: list[str]) -> str:
    """The driver's expression for a call argument that is the same on every run: a constant's or
    scratch buffer's view of its arena (`C`, `A`), bound once in `bind`, or a literal."""
    if isinstance(a, Const):
        off = program.const_offsets[id(a)]
        shape = a.array.shape if a.array.ndim else (1,)
        var = fresh_name("c")
        bind.append(f"{var} = C[{off}:{off + a.array.nbytes}].view({_dt(a.array.dtype)}).reshape({tuple(shape)})")
        return var
    if isinstance(a, Scratch):
        off = program.scratch_offsets[id(a)]
        n = int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
        var = fresh_name("s")
        bind.append(f"{var} = A[{off}:{off + n}].view({_dt(a.dtype)}).reshape({tuple(a.shape)})")
        return var
    assert isinstance(a, Lit)
    return repr(a.value)


def kernel_ref(kern: Kernel, kernels: dict[str, str], imports: set[str]) -> str:
    """How the driver names `kern`, recording the import (and a generated kernel's source)."""
    if kern.source is not None:
        kernels[kern.module] = kern.source
        imports.add(f"from {kern.module} import {kern.name}")
        return kern.name
    alias = "_" + kern.module.rsplit(".", 1)[-1]
    imports.add(f"import {kern.module} as {alias}")
    return f"{alias}.{kern.name}"


def emit(program: Program, title: str = "") -> Emitted:
    name = _Names()
    bind: list[str] = []      # once per load: arena and constant views
    run: list[str] = []       # per inference
    bound: dict[tuple[int, tuple[int, ...]], str] = {}
    runtime: dict[tuple[int, tuple[int, ...]], str] = {}
    kernels: dict[str, str] = {}
    imports: set[str] = set()
    fallbacks: list[Call] = []
    py_consts: list[np.ndarray] = []
    const_index: dict[int, int] = {}
    counter = [0]
    fresh: set[int] = set()

    def fresh_name(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def value(v: Value, shape: tuple[int, ...] | None = None) -> str:
        """An expression for `v` (seen with `shape`), defining bind-time or run-time views as needed."""
        own = tuple(v.shape) if v.shape is not None else None
        shape = tuple(shape) if shape is not None else own
        key = (id(v), shape)  # type: ignore[arg-type]
        if key in bound:
            return bound[key]
        if key in runtime:
            return runtime[key]
        if id(v) in program.offsets:
            off, n = program.offsets[id(v)]
            var = name(v) if shape == own else fresh_name(name(v) + "_")
            bind.append(f"{var} = A[{off}:{off + n}].view({_dt(v.dtype.np)}).reshape({shape})")  # type: ignore[union-attr]
            bound[key] = var
            return var
        c = constant_value(v)
        if c is not None:
            if id(v) not in const_index:
                const_index[id(v)] = len(py_consts)
                py_consts.append(c)
            return f"K[{const_index[id(v)]}]"
        base = runtime.get((id(v), own))  # type: ignore[arg-type]
        assert base is not None, f"value {v.name} is read before it is defined"
        if shape == own:
            return base
        var = fresh_name(name(v) + "_")
        run.append(f"{var} = {base}.reshape({shape})")
        runtime[key] = var
        return var

    for v in program.inputs:
        runtime[(id(v), tuple(v.shape) if v.shape is not None else None)] = name(v)  # type: ignore[index]

    for c in program.calls:
        if c.alias:
            for v in c.defines:
                src = c.alias[id(v)]
                if id(v) not in program.offsets:
                    var = name(v)
                    run.append(f"{var} = {value(src)}.reshape({tuple(v.shape)})")
                    runtime[(id(v), tuple(v.shape))] = var
            continue
        if c.kernel is None:
            fallbacks.append(c)
            args = [value(a.value) for a in c.args if isinstance(a, Use)]
            outs = "".join(f"{name(v)}, " for v in c.defines)
            run.append(f"{outs}= F[{len(fallbacks) - 1}]({', '.join(args)})  # {c.node.op_type}")
            for v in c.defines:
                runtime[(id(v), tuple(v.shape) if v.shape is not None else None)] = name(v)  # type: ignore[index]
            continue
        for v in c.defines:  # outputs the kernel writes into a new array (graph outputs)
            if id(v) not in program.offsets:
                run.append(f"{name(v)} = np.empty({tuple(v.shape)}, {_dt(v.dtype.np)})")  # type: ignore[union-attr]
                runtime[(id(v), tuple(v.shape))] = name(v)
                fresh.add(id(v))
        args: list[str] = []
        for a in c.args:
            if isinstance(a, Use):
                args.append(value(a.value, a.shape))
            else:
                args.append(fixed_arg(program, a, fresh_name, bind))
        fn = kernel_ref(c.kernel, kernels, imports)
        note = f"  # {c.node.op_type} {c.note}".rstrip()
        run.append(f"{fn}({', '.join(args)}){note}")

    result = []
    for v in program.outputs:
        expr = value(v)
        result.append(expr if id(v) in fresh else f"_own({expr})")
    inputs = "".join(f"{name(v)}, " for v in program.inputs)
    src = [f'"""mcc driver{": " + title if title else ""} (generated; do not edit)."""', "",
           "import numpy as np", *sorted(imports), "", "",
           "def _own(x):",
           "    return np.array(x, copy=True) if isinstance(x, np.ndarray) else x",
           "", "",
           "def bind(C, A, F, K):",
           *(f"    {line}" for line in bind), "",
           "    def run(inputs):",
           *([f"        {inputs}= inputs"] if inputs else []),
           *(f"        {line}" for line in run),
           f"        return [{', '.join(result)}]", "",
           "    return run", ""]
    source = "\n".join(src)
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    return Emitted(f"mcc_driver_{digest}", source, kernels, fallbacks, py_consts)
