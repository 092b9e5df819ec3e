"""Elementwise and broadcasting ops: arithmetic, comparisons, logic, math functions, activations."""

from __future__ import annotations

import numpy as np

from ..types import DType
from .core import Attr, Kind, broadcast_infer, defop, same_as_input


def _macs_elementwise(node) -> int:  # one operation per output element
    from .core import numel

    return numel(node.outputs[0].shape) or 0


@defop("Relu", kind=Kind.ELEMWISE, inputs=(1, 1), outputs=(1, 1), infer=same_as_input())
def relu(ctx, x):
    return np.maximum(x, x.dtype.type(0))


@defop("Add", kind=Kind.BROADCAST, inputs=(2, 2), outputs=(1, 1), infer=broadcast_infer())
def add(ctx, a, b):
    return (a + b).astype(a.dtype, copy=False)
