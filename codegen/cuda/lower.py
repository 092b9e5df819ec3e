"""The CUDA target's part of lowering: its rules and its generated elementwise kernels.

The steps are `codegen.lower`'s, shared with the CPU target (specialize, prepare, fuse, select,
plan-memory, emit); graph outputs get arena buffers too, since they are copied back to the host
once at the end of a run. `lower(graph, shapes, print_after={"select"})` prints after any step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial

from ir import Graph

from .. import lower as _shared
from ..lower import STEPS, Target, elementwise_call  # noqa: F401
from ..program import Program
from . import elementwise
from .rules import RULES
from .rules_gemm import conv_epilogue

CUDA = Target("cuda", RULES, elementwise.supported,
              partial(elementwise_call, plan=elementwise.plan, prelude=elementwise.PRELUDE, prefix="mcc_cuda_"),
              outputs_in_arena=True, epilogue=conv_epilogue)


def lower(graph: Graph, shapes: Mapping[str, tuple[int, ...]], *,
          print_after: Iterable[str] = (), printer: Callable[[str], None] = print) -> Program:
    """The CUDA program for `graph` at these input shapes (steps up to plan-memory)."""
    return _shared.lower(graph, shapes, CUDA, print_after=print_after, printer=printer)
