"""Tensor-manipulation ops: constants, shape ops, gather/scatter, slicing, padding (mostly injective)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import TensorType
from .core import Attr, InferContext, Kind, defop, same_as_input


def _constant_value(value: Any = None, value_float: Any = None, value_floats: Any = None, value_int: Any = None,
                    value_ints: Any = None, value_string: Any = None, value_strings: Any = None,
                    sparse_value: Any = None) -> np.ndarray:
    if value is not None:
        return value.array
    if sparse_value is not None:
        return sparse_value.array
    if value_float is not None:
        return np.array(value_float, np.float32)
    if value_floats is not None:
        return np.array(value_floats, np.float32)
    if value_int is not None:
        return np.array(value_int, np.int64)
    if value_ints is not None:
        return np.array(value_ints, np.int64)
    if value_string is not None:
        return np.array(value_string, dtype=object)
    if value_strings is not None:
        return np.array(value_strings, dtype=object)
    raise ValueError("Constant has no value attribute")


_CONSTANT_ATTRS = {k: None for k in ("value", "value_float", "value_floats", "value_int", "value_ints",
                                     "value_string", "value_strings", "sparse_value")}


def _infer_constant(ctx: InferContext, **attrs: Any) -> list[TensorType]:
    arr = _constant_value(**{k: attrs.get(k) for k in _CONSTANT_ATTRS})
    from ..types import DType

    dt = attrs["value"].dtype if attrs.get("value") is not None else DType.from_numpy(arr.dtype)
    return [TensorType(dt, tuple(arr.shape))]


@defop("Constant", kind=Kind.INJECTIVE, attrs=_CONSTANT_ATTRS, inputs=(0, 0), outputs=(1, 1), infer=_infer_constant)
def constant(ctx, **attrs: Any) -> np.ndarray:
    """The tensor held in whichever value* attribute is set."""
    return _constant_value(**{k: attrs.get(k) for k in _CONSTANT_ATTRS})


@defop("Identity", kind=Kind.ELEMWISE, inputs=(1, 1), outputs=(1, 1), infer=same_as_input())
def identity(ctx, x):
    return x
