"""The CPU target: fused graphs lowered to Numba kernels driven by generated code.

`CpuModel(graph)` specialises the graph for each set of concrete input shapes it meets (kernels are
shape-generic, the driver is not), lowers it through the steps of `lower`, emits a driver, and runs
it. Compiled kernels are cached on disk under `MCC_CACHE_DIR`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .runtime import numba_cache_dir

if not os.environ.get("NUMBA_CACHE_DIR"):
    import numba

    numba.config.CACHE_DIR = str(numba_cache_dir())  # before any cache=True kernel is defined

from ir import Graph, Node, TensorType, Value  # noqa: E402

from ..program import Call, Use  # noqa: E402
from . import rules, rules_extra  # noqa: E402,F401  (register the kernel rules)
from .emit import Emitted, emit  # noqa: E402
from .lower import STEPS, lower  # noqa: E402
from .runtime import Executable, default_threads, import_generated, make_fallbacks, write_source  # noqa: E402

__all__ = ["CpuModel", "Specialization", "STEPS", "emit", "fallback_graph", "host_cpu", "lower", "native_report"]


def host_cpu() -> dict[str, Any]:
    """What compiled code depends on: the CPU model and the vector features kernels may use."""
    import llvmlite
    import llvmlite.binding as llvm
    import numba

    features = llvm.get_host_cpu_features()
    keep = sorted(k for k, v in features.items() if v and k.startswith(("avx", "fma", "f16c", "sse4")))
    return {"name": llvm.get_host_cpu_name(), "features": keep,
            "numba": numba.__version__, "llvmlite": llvmlite.__version__}


@dataclass
class Specialization:
    """One compiled program: for these input shapes, this driver, constants and arena size."""

    shapes: dict[str, tuple[int, ...]]
    emitted: Emitted
    consts: np.ndarray
    arena_bytes: int
    fallback_calls: list[Call]
    executable: Any
    native: int
    fallback_ops: Counter[str]


class CpuModel:
    """Runs a graph natively; one specialisation per distinct set of input shapes."""

    def __init__(self, graph: Graph, threads: int | None = None, print_after: Iterable[str] = ()) -> None:
        self.graph = graph
        self.threads = threads or default_threads()
        self.print_after = set(print_after)
        self.inputs = [v for v in graph.inputs if v.const is None]
        self.specializations: dict[tuple[Any, ...], Specialization] = {}

    def static_shapes(self, symbolic: int | None = None) -> dict[str, tuple[int, ...]] | None:
        """The inputs' shapes when every dim is a number, else None; with `symbolic`, named dims
        take that size (ahead-of-time code for batch 1; other sizes compile when they arrive)."""
        out = {}
        for v in self.inputs:
            s = v.shape
            if not isinstance(v.type, TensorType) or s is None:
                return None
            if symbolic is not None:
                s = tuple(d if isinstance(d, int) else symbolic for d in s)
            if not all(isinstance(d, int) for d in s):
                return None
            out[v.name] = tuple(s)  # type: ignore[arg-type]
        return out

    def specialize(self, shapes: dict[str, tuple[int, ...]]) -> Specialization:
        key = self._key(shapes)
        if key in self.specializations:
            return self.specializations[key]
        program = self._lower(self.graph, shapes, print_after=self.print_after)
        emitted = self._emit(program, title=", ".join(f"{k}{list(v)}" for k, v in shapes.items()))
        if "emit" in self.print_after:
            print(f"// ----- after emit -----\n{emitted.source}")
        spec = self.load(shapes, emitted, program.consts, program.arena_bytes,  # type: ignore[arg-type]
                         make_fallbacks(emitted.fallbacks), program.fallbacks())
        self.specializations[key] = spec
        return spec

    def load(self, shapes: dict[str, tuple[int, ...]], emitted: Emitted, consts: np.ndarray, arena_bytes: int,
             fallbacks: list[Any], fallback_calls: list[Call], native: int | None = None) -> Specialization:
        """Import a driver (compiling what the cache lacks) and register it for `shapes`."""
        for module, source in sorted(emitted.kernels.items()):
            write_source(module, source)
        write_source(emitted.module, emitted.source)
        driver = import_generated(emitted.module)
        exe = self._executable(driver, consts, arena_bytes, fallbacks, emitted.py_consts)
        ops = Counter(c.node.op_type for c in fallback_calls)
        spec = Specialization(dict(shapes), emitted, consts, arena_bytes, fallback_calls, exe,
                              native if native is not None else 0, ops)
        self.specializations[self._key(shapes)] = spec
        return spec

    # what a target changes: its lowering, emitter and loaded form (see codegen.cuda.CudaModel)
    _lower = staticmethod(lower)
    _emit = staticmethod(emit)

    def _executable(self, driver: Any, consts: np.ndarray, arena_bytes: int, fallbacks: list[Any],
                    py_consts: list[np.ndarray]) -> Any:
        return Executable(driver, consts, arena_bytes, fallbacks, py_consts, self.threads)

    def _key(self, shapes: dict[str, tuple[int, ...]]) -> tuple[Any, ...]:
        return tuple(tuple(shapes[v.name]) if v.name in shapes else None for v in self.inputs)

    def run(self, arrays: Sequence[Any]) -> list[Any]:
        shapes = {v.name: a.shape for v, a in zip(self.inputs, arrays) if isinstance(a, np.ndarray)}
        spec = self.specialize(shapes)
        return spec.executable([np.require(a, requirements='C') if isinstance(a, np.ndarray) else a for a in arrays])

    def warm(self) -> None:
        """Generate code ahead of time when the input shapes are known, and compile it by one run on
        zeros when every call is native (fallback ops may reject zeros: those compile on first use)."""
        shapes = self.static_shapes(symbolic=1)
        if shapes is not None:
            spec = self.specialize(shapes)
            if not spec.fallback_calls and all(v.dtype is not None for v in self.inputs):
                spec.executable([np.zeros(shapes[v.name], v.dtype.np) for v in self.inputs])  # type: ignore[union-attr]


def native_report(graph: Graph, shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """What the CPU target would run natively, without generating code: kernel calls and the ops
    left to the reference. Symbolic input dims count as 1 unless `shapes` says otherwise."""
    inputs = [v for v in graph.inputs if v.const is None]
    if shapes is None:
        shapes = {v.name: tuple(d if isinstance(d, int) else 1 for d in (v.shape or ()))
                  for v in inputs if isinstance(v.type, TensorType) and v.shape is not None}
    program = lower(graph, shapes)
    ops = Counter(c.node.op_type for c in program.fallbacks())
    return {"native": sum(1 for c in program.calls if c.kernel is not None),
            "fallback_ops": dict(sorted(ops.items()))}


def fallback_graph(call: Call) -> Graph:
    """A standalone graph holding one fallback node, so an artifact can store it as ONNX."""
    node: Node = call.node
    reads: list[Value] = [a.value for a in call.args if isinstance(a, Use)]
    src = node.graph
    g = Graph(node.name or node.op_type, opset_imports=dict(src.root.opset_imports) if src is not None else {})
    mapping: dict[int, Value] = {}
    for v in reads:
        if id(v) not in mapping:
            mapping[id(v)] = g.add_input(v.name, v.type)
    clone = g.make_node(node.op_type, [None if v is None else mapping[id(v)] for v in node.inputs],
                        dict(node.attributes), len(node.outputs), name=node.name, domain=node.domain)
    for old, new in zip(node.outputs, clone.outputs):
        new.type = old.type
        new.name = old.name
    g.outputs = list(clone.outputs)
    return g
