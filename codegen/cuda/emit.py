"""The CUDA driver emitter: a program becomes straight-line Python that launches kernels on a stream.

The generated module has one function, `bind(C, A, F, K, S)`: `C` is the constants arena and `A`
the activation arena, both already on the device, `S` the stream. `bind` slices every view out of
the arenas once and allocates one device buffer per input, then returns `run(inputs)`, which copies
the inputs in, launches every kernel in order on `S`, copies the outputs out and synchronises once.
Nothing else crosses the bus, except around a fallback: an op with no kernel runs its reference
semantics on the host (`F[i]`), so the values it reads come down and its results go back up.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ir import Value
from ir.ops import constant_value

from ..cpu.emit import Emitted, _dt, _Names, fixed_arg, kernel_ref
from ..program import Call, Program, Use


def emit(program: Program, title: str = "") -> Emitted:
    name = _Names()
    bind: list[str] = []
    run: list[str] = []
    dev: dict[tuple[int, tuple[int, ...]], str] = {}   # device views, bound once
    dev_rt: dict[tuple[int, tuple[int, ...]], str] = {}  # device copies of host values, per run
    host: dict[int, str] = {}                          # host arrays, per run
    kernels: dict[str, str] = {}
    imports: set[str] = set()
    fallbacks: list[Call] = []
    py_consts: list[np.ndarray] = []
    const_index: dict[int, int] = {}
    alias_of: dict[int, Value] = {}
    inputs = {id(v): v for v in program.inputs}
    staged: list[tuple[str, str]] = []                 # (device buffer, host input) copied in first
    counter = [0]

    def fresh(prefix: str) -> str:
        counter[0] += 1
        return f"{prefix}{counter[0]}"

    def own(v: Value) -> tuple[int, ...]:
        return tuple(v.shape)  # type: ignore[arg-type]

    def k_const(v: Value) -> str:
        if id(v) not in const_index:
            const_index[id(v)] = len(py_consts)
            py_consts.append(constant_value(v))  # type: ignore[arg-type]
        return f"K[{const_index[id(v)]}]"

    def device(v: Value, shape: tuple[int, ...] | None = None) -> str:
        """A device array holding `v` seen with `shape`."""
        shape = tuple(shape) if shape is not None else own(v)
        key = (id(v), shape)
        if key in dev:
            return dev[key]
        if key in dev_rt:
            return dev_rt[key]
        if id(v) in alias_of:
            return device(alias_of[id(v)], shape)
        if id(v) in program.offsets:
            off, n = program.offsets[id(v)]
            var = fresh(name(v) + "_")
            bind.append(f"{var} = A[{off}:{off + n}].view({_dt(v.dtype.np)}).reshape({shape})")  # type: ignore[union-attr]
            dev[key] = var
            return var
        if id(v) in inputs:
            base = (id(v), own(v))
            if base not in dev:
                var = f"d_{name(v)}"
                bind.append(f"{var} = cuda.device_array({own(v)}, {_dt(v.dtype.np)})")  # type: ignore[union-attr]
                dev[base] = var
                staged.append((var, name(v)))
            if shape != own(v):
                var = fresh(name(v) + "_")
                bind.append(f"{var} = {dev[base]}.reshape({shape})")
                dev[key] = var
            return dev[key]
        if constant_value(v) is not None:
            var = fresh("kc")
            bind.append(f"{var} = cuda.to_device(np.ascontiguousarray({k_const(v)}).reshape({shape}))")
            dev[key] = var
            return var
        var = fresh(name(v) + "_d")  # a fallback's result: up to the device where a kernel reads it
        run.append(f"{var} = cuda.to_device(np.ascontiguousarray({to_host(v)}).reshape({shape}), stream=S)")
        dev_rt[key] = var
        return var

    def to_host(v: Value) -> str:
        """A host array holding `v` (inputs and fallback results are there already)."""
        if id(v) in host:
            return host[id(v)]
        if id(v) in alias_of:
            var = fresh(name(v) + "_h")
            run.append(f"{var} = {to_host(alias_of[id(v)])}.reshape({own(v)})")
        elif constant_value(v) is not None:
            return k_const(v)
        else:
            var = fresh(name(v) + "_h")
            run.append(f"{var} = {device(v)}.copy_to_host(stream=S)")
            run.append("S.synchronize()")
        host[id(v)] = var
        return var

    for v in program.inputs:
        host[id(v)] = name(v)

    for c in program.calls:
        if c.alias:
            for v in c.defines:
                if id(v) not in program.offsets:
                    alias_of[id(v)] = c.alias[id(v)]
            continue
        if c.kernel is None:
            fallbacks.append(c)
            args = [to_host(a.value) for a in c.args if isinstance(a, Use)]
            outs = "".join(f"{name(v)}, " for v in c.defines)
            run.append(f"{outs}= F[{len(fallbacks) - 1}]({', '.join(args)})  # {c.node.op_type}")
            for v in c.defines:
                host[id(v)] = name(v)
            continue
        args: list[str] = []
        for a in c.args:
            if isinstance(a, Use):
                args.append(device(a.value, a.shape))
            else:
                args.append(fixed_arg(program, a, fresh, bind))
        fn = kernel_ref(c.kernel, kernels, imports)
        note = f"  # {c.node.op_type} {c.note}".rstrip()
        run.append(f"{fn}(S, {', '.join(args)}){note}")

    # outputs: arena values come back in one batch of copies and one synchronisation
    results: list[str] = []
    copies: list[str] = []
    for v in program.outputs:
        base = alias_of.get(id(v), v)
        if id(v) in program.offsets or id(base) in program.offsets:
            var = fresh("r")
            copies.append(f"{var} = {device(v)}.copy_to_host(stream=S)")
            results.append(var)
        else:
            results.append(f"_own({to_host(v)})")
    first = [f"{d}.copy_to_device({h}, stream=S)" for d, h in staged]
    names_in = "".join(f"{name(v)}, " for v in program.inputs)
    unpack = [f"{names_in}= inputs"] if names_in else []
    body = ["", "    def run(inputs):", *(f"        {line}" for line in unpack + first + run + copies),
            "        S.synchronize()", f"        return [{', '.join(results)}]", ""]
    if not fallbacks and not dev_rt and all(not r.startswith("_own") for r in results):
        # nothing but launches between the copies: the runtime may record them once as a CUDA graph
        # and replay it (`run.parts`), which costs one launch instead of one Python call per kernel
        body += ["    def copy_in(inputs):", *(f"        {line}" for line in unpack + first), "        return None", "",
                 "    def launch_all():", *(f"        {line}" for line in run), "        return None", "",
                 "    def copy_out():", *(f"        {line}" for line in copies), "        S.synchronize()",
                 f"        return [{', '.join(results)}]", "",
                 "    run.parts = (copy_in, launch_all, copy_out)"]
    src = [f'"""mcc CUDA driver{": " + title if title else ""} (generated; do not edit)."""', "",
           "import numpy as np", "from numba import cuda", *sorted(imports), "", "",
           "def _own(x):",
           "    return np.array(x, copy=True) if isinstance(x, np.ndarray) else x",
           "", "",
           "def bind(C, A, F, K, S):",
           *(f"    {line}" for line in bind),
           *body, "",
           "    return run", ""]
    source = "\n".join(src)
    digest = hashlib.sha1(source.encode()).hexdigest()[:16]
    return Emitted(f"mcc_cuda_driver_{digest}", source, kernels, fallbacks, py_consts)
