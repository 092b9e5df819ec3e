"""The lowered form of a graph: a straight list of kernel calls over planned buffers.

Lowering turns each node of a specialised, fused graph into `Call`s. A call names a kernel (an
importable Numba function, or one generated from a fused group's body) and its arguments: values
(read or written in place), constants (packed weights), scratch buffers and literals. Nodes no
kernel covers become fallback calls that run the op's reference semantics. The memory planner then
gives every intermediate value and scratch buffer an offset in one arena, and the emitter writes
the driver. Everything here is plain data, so each step's result can be printed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ir import Node, Value


@dataclass(frozen=True)
class Kernel:
    """A kernel: `module.name` is an njit function, or `source` defines it (generated kernels)."""

    module: str
    name: str
    source: str | None = None
    #: Another entry point of `source` that takes only the inputs and writes each in-place output
    #: through the input it overwrites (see `codegen.lower.write_in_place`).
    inplace_entry: str | None = None

    def __str__(self) -> str:
        return self.name if self.source is not None else f"{self.module.rsplit('.', 1)[-1]}.{self.name}"


@dataclass(eq=False)
class Use:
    """A value's buffer, optionally seen through a reshape (kernels take fixed ranks)."""

    value: Value
    shape: tuple[int, ...] | None = None


@dataclass(eq=False)
class Const:
    """A constant array (packed weights, tables) placed in the constants arena."""

    array: np.ndarray
    label: str = ""


@dataclass(eq=False)
class Scratch:
    """A temporary buffer that lives for one call (im2col columns, accumulators)."""

    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(eq=False)
class Lit:
    """A Python literal (int, float, bool or tuple of them) written into the driver source."""

    value: Any


Arg = Union[Use, Const, Scratch, Lit]


@dataclass(eq=False)
class Call:
    """One step of the driver: `kernel(*args)` writes `defines` in place; kernel None is a fallback."""

    node: Node
    kernel: Kernel | None
    args: list[Arg] = field(default_factory=list)
    defines: list[Value] = field(default_factory=list)
    #: (output, input) pairs the kernel may compute in place: the planner may give them one buffer.
    inplace: list[tuple[Value, Value]] = field(default_factory=list)
    #: output -> input it is a view of (Reshape and friends): no kernel runs, the buffer is shared.
    alias: dict[int, Value] = field(default_factory=dict)
    note: str = ""

    @property
    def native(self) -> bool:
        return self.kernel is not None or bool(self.alias)

    def reads(self) -> list[Value]:
        defined = {id(v) for v in self.defines}
        out: list[Value] = []
        for a in self.args:
            if isinstance(a, Use) and id(a.value) not in defined and all(a.value is not o for o in out):
                out.append(a.value)
        return out


@dataclass
class Program:
    """The lowered model for one set of input shapes."""

    calls: list[Call]
    inputs: list[Value]
    outputs: list[Value]
    #: Filled by the memory planner: value id -> (offset, nbytes) in the arena.
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    scratch_offsets: dict[int, int] = field(default_factory=dict)
    #: value id -> its storage (values that share one are views or in-place results of each other).
    storage: dict[int, int] = field(default_factory=dict)
    arena_bytes: int = 0
    consts: np.ndarray | None = None
    const_offsets: dict[int, int] = field(default_factory=dict)
    #: The specialised graph the calls' nodes live in (fallbacks evaluate its nodes).
    graph: Any = None

    def fallbacks(self) -> list[Call]:
        return [c for c in self.calls if not c.native]

    def format(self) -> str:
        """The step list, one call per line, with buffer offsets once planned."""
        lines = []
        for i, c in enumerate(self.calls):
            outs = ", ".join(f"%{v.name}{_loc(self, v)}" for v in c.defines)
            if c.alias:
                lines.append(f"{i:4d}  {outs} = view %{c.node.inputs[0].name}")  # type: ignore[union-attr]
                continue
            what = str(c.kernel) if c.kernel is not None else f"fallback {c.node.op_type}"
            args = ", ".join(_fmt_arg(self, a) for a in c.args)
            lines.append(f"{i:4d}  {outs} = {what}({args}){'  # ' + c.note if c.note else ''}")
        lines.append(f"arena {self.arena_bytes} bytes, constants {0 if self.consts is None else self.consts.nbytes} bytes")
        return "\n".join(lines)


def _loc(p: Program, v: Value) -> str:
    if id(v) in p.offsets:
        off, n = p.offsets[id(v)]
        return f"@{off}"
    return ""


def _fmt_arg(p: Program, a: Arg) -> str:
    if isinstance(a, Use):
        return f"%{a.value.name}" + (f".view{list(a.shape)}" if a.shape is not None else "")
    if isinstance(a, Const):
        return f"const{list(a.array.shape)}:{a.array.dtype}"
    if isinstance(a, Scratch):
        return f"scratch{list(a.shape)}:{np.dtype(a.dtype)}"
    return repr(a.value)

