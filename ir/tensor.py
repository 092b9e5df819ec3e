"""Constant tensors: numpy-backed data carried by initializers and attributes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .types import DType, TensorType


@dataclass(eq=False)
class Tensor:
    """An immutable constant tensor.

    The IR never mutates `array` in place: a pass that changes weights makes a new Tensor, so the
    same data may be shared safely between graphs (for example a graph and its optimized copy).
    """

    array: np.ndarray
    name: str = ""
    dtype: DType | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            self.array = np.asarray(self.array)
        if self.dtype is None:
            self.dtype = DType.from_numpy(self.array.dtype)
        self.array.flags.writeable = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.array.shape)

    @property
    def type(self) -> TensorType:
        assert self.dtype is not None
        return TensorType(self.dtype, self.shape)

    @property
    def nbytes(self) -> int:
        assert self.dtype is not None
        return int(np.ceil(self.array.size * self.dtype.itemsize))

    def numpy(self) -> np.ndarray:
        return self.array

    def __repr__(self) -> str:
        return f"Tensor({self.name or '<anon>'}: {self.type})"
