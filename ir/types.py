"""Element types and value types of the IR.

Element-type codes follow the ONNX numbering so import and export are a table lookup, but nothing
here depends on the onnx package. Narrow float types (bfloat16, float8, float4) and 4-bit integers
come from ml_dtypes, the numpy extension that ONNX itself uses for them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Union

import numpy as np

try:  # ml_dtypes provides numpy dtypes for bfloat16, float8, int4...; optional at import time.
    import ml_dtypes as _mld
except ImportError:  # pragma: no cover - ml_dtypes is a declared dependency
    _mld = None


class DType(enum.IntEnum):
    """Tensor element types, numbered as in ONNX's TensorProto.DataType."""

    UNDEFINED = 0
    FLOAT = 1
    UINT8 = 2
    INT8 = 3
    UINT16 = 4
    INT16 = 5
    INT32 = 6
    INT64 = 7
    STRING = 8
    BOOL = 9
    FLOAT16 = 10
    DOUBLE = 11
    UINT32 = 12
    UINT64 = 13
    COMPLEX64 = 14
    COMPLEX128 = 15
    BFLOAT16 = 16
    FLOAT8E4M3FN = 17
    FLOAT8E4M3FNUZ = 18
    FLOAT8E5M2 = 19
    FLOAT8E5M2FNUZ = 20
    UINT4 = 21
    INT4 = 22
    FLOAT4E2M1 = 23
    FLOAT8E8M0 = 24
    UINT2 = 25
    INT2 = 26

    @property
    def np(self) -> np.dtype:
        """The numpy dtype that holds this element type."""
        try:
            return _TO_NUMPY[self]
        except KeyError:
            raise TypeError(f"element type {self.name} has no numpy equivalent here") from None

    @property
    def is_float(self) -> bool:
        return self in _FLOATS

    @property
    def is_integer(self) -> bool:
        return self in _INTEGERS

    @property
    def itemsize(self) -> float:
        """Bytes per element (0.5 for 4-bit types)."""
        if self in (DType.UINT4, DType.INT4, DType.FLOAT4E2M1):
            return 0.5
        if self in (DType.UINT2, DType.INT2):
            return 0.25
        return self.np.itemsize if self != DType.STRING else 8

    @staticmethod
    def from_numpy(dtype: np.dtype | type) -> DType:
        dt = np.dtype(dtype)
        if dt.kind in ("U", "S", "O"):
            return DType.STRING
        try:
            return _FROM_NUMPY[dt]
        except KeyError:
            raise TypeError(f"numpy dtype {dt} has no IR element type") from None


_TO_NUMPY: dict[DType, np.dtype] = {
    DType.FLOAT: np.dtype(np.float32),
    DType.UINT8: np.dtype(np.uint8),
    DType.INT8: np.dtype(np.int8),
    DType.UINT16: np.dtype(np.uint16),
    DType.INT16: np.dtype(np.int16),
    DType.INT32: np.dtype(np.int32),
    DType.INT64: np.dtype(np.int64),
    DType.STRING: np.dtype(object),
    DType.BOOL: np.dtype(np.bool_),
    DType.FLOAT16: np.dtype(np.float16),
    DType.DOUBLE: np.dtype(np.float64),
    DType.UINT32: np.dtype(np.uint32),
    DType.UINT64: np.dtype(np.uint64),
    DType.COMPLEX64: np.dtype(np.complex64),
    DType.COMPLEX128: np.dtype(np.complex128),
}
if _mld is not None:
    for _code, _name in [
        (DType.BFLOAT16, "bfloat16"),
        (DType.FLOAT8E4M3FN, "float8_e4m3fn"),
        (DType.FLOAT8E4M3FNUZ, "float8_e4m3fnuz"),
        (DType.FLOAT8E5M2, "float8_e5m2"),
        (DType.FLOAT8E5M2FNUZ, "float8_e5m2fnuz"),
        (DType.UINT4, "uint4"),
        (DType.INT4, "int4"),
        (DType.FLOAT4E2M1, "float4_e2m1fn"),
        (DType.FLOAT8E8M0, "float8_e8m0fnu"),
        (DType.UINT2, "uint2"),
        (DType.INT2, "int2"),
    ]:
        if hasattr(_mld, _name):
            _TO_NUMPY[_code] = np.dtype(getattr(_mld, _name))
_FROM_NUMPY = {v: k for k, v in _TO_NUMPY.items() if k != DType.STRING}
_FLOATS = {
    DType.FLOAT, DType.FLOAT16, DType.DOUBLE, DType.BFLOAT16, DType.FLOAT8E4M3FN,
    DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ, DType.FLOAT4E2M1, DType.FLOAT8E8M0,
}
_INTEGERS = {
    DType.UINT8, DType.INT8, DType.UINT16, DType.INT16, DType.INT32, DType.INT64, DType.UINT32,
    DType.UINT64, DType.UINT4, DType.INT4, DType.UINT2, DType.INT2,
}

#: A dimension: a known size, a symbolic name ("batch"), or None for a dim nobody named.
Dim = Union[int, str, None]
#: A shape: a tuple of dims, or None when even the rank is unknown.
Shape = Union[tuple[Dim, ...], None]


@dataclass(frozen=True)
class TensorType:
    """A tensor's element type and shape (shape None: rank unknown)."""

    dtype: DType
    shape: Shape = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def __str__(self) -> str:
        dt = self.dtype.name.lower()
        if self.shape is None:
            return f"{dt}[*]"
        return f"{dt}[{','.join('?' if d is None else str(d) for d in self.shape)}]"


@dataclass(frozen=True)
class SequenceType:
    """A sequence of values of one type (ONNX seq(...))."""

    elem: ValueType | None

    def __str__(self) -> str:
        return f"seq<{self.elem}>"


@dataclass(frozen=True)
class OptionalType:
    """An optional value (ONNX optional(...))."""

    elem: ValueType | None

    def __str__(self) -> str:
        return f"opt<{self.elem}>"


ValueType = Union[TensorType, SequenceType, OptionalType]
