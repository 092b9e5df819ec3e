"""Quantization ops: (De)QuantizeLinear, DynamicQuantizeLinear and the integer/QLinear matmul and conv.

Integer accumulations are computed exactly: int8/uint8 products summed in float64 are exact far past
any realistic reduction length (|sum| < 2**53), so BLAS does the work and the result is then wrapped to
int32, which is what an int32 accumulator would hold. Rounding is half-to-even (np.rint) everywhere.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from ..types import DType, Shape, TensorType, ValueType
from .core import InferContext, Kind, broadcast_shapes, defop, numel
from .nn import _CONV_ATTRS, _conv_geometry, conv

_INT_RANGES: dict[DType, tuple[int, int]] = {
    DType.UINT8: (0, 255), DType.INT8: (-128, 127), DType.UINT16: (0, 65535), DType.INT16: (-32768, 32767),
    DType.UINT4: (0, 15), DType.INT4: (-8, 7), DType.UINT2: (0, 3), DType.INT2: (-2, 1),
}
_FLOAT8 = {DType.FLOAT8E4M3FN, DType.FLOAT8E4M3FNUZ, DType.FLOAT8E5M2, DType.FLOAT8E5M2FNUZ}
_QUANT_TYPES = set(_INT_RANGES) | _FLOAT8 | {DType.FLOAT4E2M1}


def _dtype_of(code: int, op: str) -> DType:
    try:
        return DType(code)
    except ValueError:
        raise NotImplementedError(f"{op}: element type {code} is not supported") from None


def _expand_param(p: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """Make a scale/zero point broadcastable to `shape`: per-tensor, per-axis or blocked."""
    if p.size == 1 and p.ndim <= 1:
        return p.reshape(())
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        raise ValueError(f"axis {axis} out of range for rank {len(shape)}")
    if not block_size:
        if p.ndim != 1 or p.shape[0] != shape[axis]:
            raise ValueError(f"per-axis parameter of shape {p.shape} does not match axis {axis} of {shape}")
        dims = [1] * len(shape)
        dims[axis] = p.shape[0]
        return p.reshape(dims)
    if block_size < 0 or p.ndim != len(shape):
        raise ValueError(f"blocked parameter of shape {p.shape} does not fit input shape {shape}")
    p = np.repeat(p, block_size, axis=axis)
    if p.shape[axis] < shape[axis]:
        raise ValueError(f"block_size {block_size} too small for axis {axis} of {shape}")
    p = np.take(p, np.arange(shape[axis]), axis=axis)
    if p.shape != tuple(shape):
        raise ValueError(f"blocked parameter shape {p.shape} does not match input shape {shape}")
    return p


def _as_float(a: np.ndarray) -> np.ndarray:
    """float16/32/64 kept; other scale types (bfloat16, float8e8m0, int32) computed on in float32."""
    return a if a.dtype in (np.float16, np.float32, np.float64) else a.astype(np.float32)


def to_quantized(values: np.ndarray, target: DType, saturate_fp8: bool = True) -> np.ndarray:
    """Convert real values (already rounded for integer targets) to a quantized type, saturating."""
    np_t = target.np
    if target in _INT_RANGES:
        lo, hi = _INT_RANGES[target]
        return np.clip(np.nan_to_num(values, nan=0.0), lo, hi).astype(np.int32).astype(np_t)
    if target in _FLOAT8 or target == DType.FLOAT4E2M1:
        values = values.astype(np.float32, copy=False)
        if saturate_fp8 or target == DType.FLOAT4E2M1:  # float4 has no inf/nan: always saturates
            mx = float(ml_dtypes.finfo(np_t).max)
            values = np.where(np.isnan(values), values, np.clip(values, -mx, mx))
        return values.astype(np_t)
    raise NotImplementedError(f"QuantizeLinear: output type {target.name} is not supported")


def _quant_out_dtype(zp_dtype: DType | None, output_dtype: int) -> DType:
    if output_dtype:
        dt = _dtype_of(output_dtype, "QuantizeLinear")
        if zp_dtype is not None and zp_dtype != dt:
            raise ValueError(f"QuantizeLinear: output_dtype {dt.name} differs from y_zero_point type {zp_dtype.name}")
        return dt
    return zp_dtype if zp_dtype is not None else DType.UINT8


def _infer_quantize(ctx: InferContext, x: ValueType | None, s: Any = None, zp: Any = None,
                    **attrs: Any) -> list[ValueType | None]:
    zp_dt = zp.dtype if isinstance(zp, TensorType) else None
    shape = x.shape if isinstance(x, TensorType) else None
    return [TensorType(_quant_out_dtype(zp_dt, attrs.get("output_dtype") or 0), shape)]


@defop("QuantizeLinear", kind=Kind.BROADCAST, inputs=(2, 3), outputs=(1, 1), since_version=10,
       attrs={"axis": 1, "saturate": 1, "block_size": 0, "output_dtype": 0, "precision": 0},
       infer=_infer_quantize)
def quantize_linear(ctx, x: np.ndarray, y_scale: np.ndarray, y_zero_point: np.ndarray | None = None, *,
                    axis: int, saturate: int, block_size: int, output_dtype: int, precision: int) -> np.ndarray:
    """y = saturate(round_half_even(x / scale) + zero_point); per-tensor, per-axis or blocked scales."""
    zp_dt = DType.from_numpy(y_zero_point.dtype) if y_zero_point is not None else None
    target = _quant_out_dtype(zp_dt, output_dtype)
    if target not in _QUANT_TYPES:
        raise NotImplementedError(f"QuantizeLinear: output type {target.name} is not supported")
    # The spec lets the scale's type set the division's precision; like onnxruntime we never divide in
    # less than float32 (fp16/bf16 scales) unless `precision` asks for it explicitly.
    prec = _dtype_of(precision, "QuantizeLinear").np if precision else np.result_type(_as_float(y_scale), np.float32)
    scale = _expand_param(y_scale, x.shape, axis, block_size)
    q = (x.astype(prec) / scale.astype(prec)).astype(np.float64)
    if target in _INT_RANGES:
        q = np.rint(q)
    if y_zero_point is not None:
        q = q + _expand_param(y_zero_point, x.shape, axis, block_size).astype(np.float64)
    return to_quantized(q, target, bool(saturate))


def _infer_dequantize(ctx: InferContext, x: ValueType | None, s: ValueType | None = None, zp: Any = None,
                      **attrs: Any) -> list[ValueType | None]:
    if attrs.get("output_dtype"):
        dt = _dtype_of(attrs["output_dtype"], "DequantizeLinear")
    elif isinstance(s, TensorType):
        dt = s.dtype
    else:
        return [None]
    return [TensorType(dt, x.shape if isinstance(x, TensorType) else None)]


@defop("DequantizeLinear", kind=Kind.BROADCAST, inputs=(2, 3), outputs=(1, 1), since_version=10,
       attrs={"axis": 1, "block_size": 0, "output_dtype": 0}, infer=_infer_dequantize)
def dequantize_linear(ctx, x: np.ndarray, x_scale: np.ndarray, x_zero_point: np.ndarray | None = None, *,
                      axis: int, block_size: int, output_dtype: int) -> np.ndarray:
    """y = (x - zero_point) * scale; the difference is exact (int32/float32), the product float32."""
    out = _dtype_of(output_dtype, "DequantizeLinear").np if output_dtype else x_scale.dtype
    if out == DType.FLOAT8E8M0.np:
        raise ValueError("DequantizeLinear: a float8e8m0 scale needs output_dtype")
    integer = x.dtype.kind in "iu" or DType.from_numpy(x.dtype) in _INT_RANGES
    dx = x.astype(np.int32) if integer else x.astype(np.float32)
    if x_zero_point is not None:
        zp = _expand_param(x_zero_point, x.shape, axis, block_size)
        dx = dx - (zp.astype(np.int32) if integer else zp.astype(np.float32))
    scale = _expand_param(x_scale, x.shape, axis, block_size).astype(np.float32)
    return (dx.astype(np.float32) * scale).astype(out)


def _infer_dynamic(ctx: InferContext, x: ValueType | None, **_: Any) -> list[ValueType | None]:
    shape = x.shape if isinstance(x, TensorType) else None
    return [TensorType(DType.UINT8, shape), TensorType(DType.FLOAT, ()), TensorType(DType.UINT8, ())]


@defop("DynamicQuantizeLinear", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(3, 3), since_version=11,
       infer=_infer_dynamic)
def dynamic_quantize_linear(ctx, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 asymmetric quantization with a range that always includes 0 (computed in float32)."""
    x = x.astype(np.float32, copy=False)
    hi = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0)
    lo = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0)
    if hi == lo:  # all zeros: any scale reproduces them; 1.0 as onnxruntime does
        return np.zeros(x.shape, np.uint8), np.array(1.0, np.float32), np.array(0, np.uint8)
    scale = np.float32((hi - lo) / np.float32(255))
    zp = np.rint(np.clip(np.float32(0) - lo / scale, 0, 255))
    y = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return y, np.array(scale, np.float32), np.array(zp, np.uint8)


# ---------------------------------------------------------------------------------------------
# Integer matmul and conv.


def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact int32 matmul of zero-point-adjusted integer tensors (float64 BLAS, then wrapped)."""
    return np.matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int64).astype(np.int32)


def _per_row(p: np.ndarray) -> np.ndarray:
    """A's scale or zero point: scalar, per-row (M,) vector -> (M, 1), or already broadcastable (..., M, 1)."""
    if p.size == 1:
        return p.reshape(())
    return p.reshape(-1, 1) if p.ndim == 1 else p


def _per_col(p: np.ndarray) -> np.ndarray:
    """B's scale or zero point: scalar, per-column (N,) vector or broadcastable (..., 1, N)."""
    return p.reshape(()) if p.size == 1 else p


def _centered(x: np.ndarray, zp: np.ndarray | None, layout: Any) -> np.ndarray:
    """x - zero_point in int32 (`layout` shapes the zero point for broadcasting)."""
    return x.astype(np.int32) - (0 if zp is None else layout(zp.astype(np.int32)))


def _matmul_shape(a: Shape, b: Shape) -> Shape:
    if a is None or b is None or not a or not b:
        return None
    a1, b1 = len(a) == 1, len(b) == 1
    a2 = (1,) + tuple(a) if a1 else tuple(a)
    b2 = tuple(b) + (1,) if b1 else tuple(b)
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    if batch is None:
        return None
    out = tuple(batch) + (a2[-2], b2[-1])
    if a1:
        out = out[:-2] + out[-1:]
    if b1:
        out = out[:-1]
    return out


def _matmul_infer(ia: int, ib: int, dtype: DType | None = None, dtype_from: int | None = None):
    def infer(ctx: InferContext, *types: ValueType | None, **_: Any) -> list[ValueType | None]:
        ta, tb = types[ia], types[ib]
        if not isinstance(ta, TensorType) or not isinstance(tb, TensorType):
            return [None]
        src = types[dtype_from] if dtype_from is not None and dtype_from < len(types) else None
        dt = dtype or (src.dtype if isinstance(src, TensorType) else ta.dtype)
        return [TensorType(dt, _matmul_shape(ta.shape, tb.shape))]

    return infer


def _matmul_macs(ia: int, ib: int):
    def macs(node: Any) -> int:
        a, out = node.inputs[ia], node.outputs[0]
        k = a.shape[-1] if a is not None and a.shape else None
        n = numel(out.shape)
        return n * k if n is not None and isinstance(k, int) else 0

    return macs


@defop("MatMulInteger", kind=Kind.COMPLEX, inputs=(2, 4), outputs=(1, 1), since_version=10,
       infer=_matmul_infer(0, 1, DType.INT32), macs=_matmul_macs(0, 1))
def matmul_integer(ctx, a: np.ndarray, b: np.ndarray, a_zero_point: np.ndarray | None = None,
                   b_zero_point: np.ndarray | None = None) -> np.ndarray:
    """(A - a_zp) @ (B - b_zp) accumulated in int32; per-row A and per-column B zero points."""
    return _int_matmul(_centered(a, a_zero_point, _per_row), _centered(b, b_zero_point, _per_col))


def _requantize(acc: np.ndarray, multiplier: np.ndarray, y_zero_point: np.ndarray | None,
                fallback: np.dtype) -> np.ndarray:
    """Scale an int32 accumulator to the output's quantized type: rint(acc * m) + zp, saturated."""
    target = DType.from_numpy(y_zero_point.dtype if y_zero_point is not None else fallback)
    y = np.rint(acc.astype(np.float64) * multiplier.astype(np.float64))
    if y_zero_point is not None:
        y = y + y_zero_point.astype(np.float64)
    return to_quantized(y, target)


def _scale_ratio(*scales: np.ndarray) -> np.ndarray:
    """a_scale * b_scale / y_scale in the scales' own precision (as the spec's formula reads)."""
    a, b, y = (_as_float(s) for s in scales)
    return a * b / y


@defop("QLinearMatMul", kind=Kind.COMPLEX, inputs=(8, 8), outputs=(1, 1), since_version=10,
       infer=_matmul_infer(0, 3, dtype_from=7), macs=_matmul_macs(0, 3))
def qlinear_matmul(ctx, a: np.ndarray, a_scale: np.ndarray, a_zero_point: np.ndarray, b: np.ndarray,
                   b_scale: np.ndarray, b_zero_point: np.ndarray, y_scale: np.ndarray,
                   y_zero_point: np.ndarray) -> np.ndarray:
    """Quantized matmul: integer product of the centered operands, requantized to y's scale."""
    acc = _int_matmul(_centered(a, a_zero_point, _per_row), _centered(b, b_zero_point, _per_col))
    ratio = _scale_ratio(_per_row(a_scale), _per_col(b_scale), y_scale.reshape(()))
    return _requantize(acc, ratio, y_zero_point, a.dtype)



def int_conv(x: np.ndarray, w: np.ndarray, **attrs: Any) -> np.ndarray:
    """Grouped N-d conv of centered integer tensors, exact in int32: the one Conv definition, whose
    float64 accumulation holds every int8 x int8 partial sum exactly."""
    y = conv(None, x.astype(np.float64), w.astype(np.float64), None, **attrs)
    return y.astype(np.int64).astype(np.int32)


def _per_channel(p: np.ndarray, rank: int, axis: int = 1) -> np.ndarray:
    """A scalar, or one value per output channel (M,) laid along `axis`: 0 for weights, 1 for outputs."""
    if p.size == 1:
        return p.reshape(())
    dims = [1] * rank
    dims[axis] = -1
    return p.reshape(dims)


def _scalar_param(p: np.ndarray) -> np.ndarray:
    return p.reshape(())


def _conv_infer(ix: int, iw: int, dtype: DType | None = None, dtype_from: int | None = None):
    def infer(ctx: InferContext, *types: ValueType | None, **attrs: Any) -> list[ValueType | None]:
        tx, tw = types[ix], types[iw]
        src = types[dtype_from] if dtype_from is not None and dtype_from < len(types) else None
        dt = dtype or (src.dtype if isinstance(src, TensorType) else tx.dtype if isinstance(tx, TensorType) else None)
        if dt is None:
            return [None]
        if not isinstance(tx, TensorType) or tx.shape is None or not isinstance(tw, TensorType) or tw.shape is None:
            return [TensorType(dt, None)]
        kernel = attrs.get("kernel_shape") or list(tw.shape[2:])
        if not all(isinstance(k, int) for k in kernel):
            return [TensorType(dt, (tx.shape[0], tw.shape[0]) + (None,) * (len(tx.shape) - 2))]
        _, _, geo = _conv_geometry(tx.shape, kernel, attrs.get("auto_pad") or "NOTSET", attrs.get("dilations"),
                                   attrs.get("pads"), attrs.get("strides"))
        return [TensorType(dt, (tx.shape[0], tw.shape[0]) + tuple(o for o, _, _ in geo))]

    return infer


def _conv_macs(ix: int, iw: int):
    def macs(node: Any) -> int:
        w, out = node.inputs[iw], node.outputs[0]
        n = numel(out.shape)
        per = numel(tuple(w.shape[1:])) if w is not None and w.shape else None
        return n * per if n is not None and per is not None else 0

    return macs


@defop("ConvInteger", kind=Kind.COMPLEX, inputs=(2, 4), outputs=(1, 1), since_version=10, attrs=_CONV_ATTRS,
       infer=_conv_infer(0, 1, DType.INT32), macs=_conv_macs(0, 1))
def conv_integer(ctx, x: np.ndarray, w: np.ndarray, x_zero_point: np.ndarray | None = None,
                 w_zero_point: np.ndarray | None = None, **attrs: Any) -> np.ndarray:
    """Conv of (x - x_zp) and (w - w_zp) accumulated in int32 (padding contributes zeros)."""
    wz = _centered(w, w_zero_point, lambda z: _per_channel(z, w.ndim, axis=0))
    return int_conv(_centered(x, x_zero_point, _scalar_param), wz, **attrs)


@defop("QLinearConv", kind=Kind.COMPLEX, inputs=(8, 9), outputs=(1, 1), since_version=10, attrs=_CONV_ATTRS,
       infer=_conv_infer(0, 3, dtype_from=7), macs=_conv_macs(0, 3))
def qlinear_conv(ctx, x: np.ndarray, x_scale: np.ndarray, x_zero_point: np.ndarray, w: np.ndarray,
                 w_scale: np.ndarray, w_zero_point: np.ndarray, y_scale: np.ndarray, y_zero_point: np.ndarray,
                 b: np.ndarray | None = None, **attrs: Any) -> np.ndarray:
    """Quantized conv: int32 conv (+ int32 bias), requantized with x_scale * w_scale / y_scale per channel."""
    wz = _centered(w, w_zero_point, lambda z: _per_channel(z, w.ndim, axis=0))
    acc = int_conv(_centered(x, x_zero_point, _scalar_param), wz, **attrs)
    if b is not None:
        acc = acc + _per_channel(b.astype(np.int32), acc.ndim)
    ratio = _scale_ratio(x_scale.reshape(()), _per_channel(w_scale, acc.ndim), y_scale.reshape(()))
    return _requantize(acc, ratio, y_zero_point, x.dtype)
