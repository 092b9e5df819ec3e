"""The CPU target's part of lowering: its rules and its generated elementwise kernels.

The steps themselves live in `codegen.lower`, shared with the CUDA target:

    specialize, prepare, fuse, select, plan-memory, emit

`lower(graph, shapes, print_after={"select"})` runs them for the CPU and prints the IR or program
after the named steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial

from ir import Graph

from .. import lower as _shared
from ..lower import STEPS, Target, elementwise_call, fuse, prepare, select, specialize  # noqa: F401
from ..program import Program
from . import elementwise
from .rules import RULES, conv_epilogue


CPU = Target("cpu", RULES, elementwise.supported,
             partial(elementwise_call, plan=elementwise.plan, prelude=elementwise.PRELUDE, prefix="mcc_"),
             epilogue=conv_epilogue)


def lower(graph: Graph, shapes: Mapping[str, tuple[int, ...]], *,
          print_after: Iterable[str] = (), printer: Callable[[str], None] = print) -> Program:
    """The CPU program for `graph` at these input shapes (steps up to plan-memory)."""
    return _shared.lower(graph, shapes, CPU, print_after=print_after, printer=printer)
