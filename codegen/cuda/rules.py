"""Kernel selection for the CUDA target: which launcher runs each node, with which arguments.

The same contract as the CPU target's rules (`codegen.cpu.rules`): a rule takes a node whose
tensors have static shapes and returns the calls that compute it, or None to leave the node to the
reference (run on the host between kernels). `Call.kernel` names a launcher (see `launch`).
Runs of elementwise ops never reach the rules: they become one generated kernel each.
"""

from __future__ import annotations

from collections.abc import Callable

from ir import Node

from ..cpu.rules import arg, attrs, f32, shape, static  # noqa: F401  (shared helpers for rule modules)
from ..cpu.rules import view as cpu_view
from ..program import Call, Kernel

Rule = Callable[[Node], "list[Call] | None"]
RULES: dict[str, Rule] = {}


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register `fn` as the CUDA lowering of `op_types` (default ONNX domain)."""
    def register(fn: Rule) -> Rule:
        for op in op_types:
            if op in RULES:
                raise ValueError(f"two CUDA rules for {op}")
            RULES[op] = fn
        return fn
    return register


def k(name: str, module: str) -> Kernel:
    """The launcher `module.name`."""
    return Kernel(module, name)


#: Shape-only ops share their input's buffer, on the GPU as on the CPU (arena buffers are contiguous).
view = rule("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")(cpu_view)
