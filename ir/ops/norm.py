"""Normalization ops: BatchNormalization, InstanceNormalization, LayerNormalization, GroupNormalization,
RMSNormalization, LRN, LpNormalization, MeanVarianceNormalization.

Statistics are computed in float32 or better (float64 for double inputs) whatever the input type, as
the spec asks for float16 (BatchNormalization's float reductions, stash_type elsewhere); results are
cast back to the declared output type once, at the end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..types import DType, TensorType, ValueType
from .core import REQUIRED, Attr, InferContext, Kind, defop, same_as_input


# ---------------------------------------------------------------------------------------------
# Shared helpers.


def _acc(*dtypes: np.dtype) -> np.dtype:
    """Accumulation dtype: float64 if any operand is double, else float32 (float16/bfloat16 widen)."""
    return np.dtype(np.float64) if any(np.dtype(d) == np.float64 for d in dtypes) else np.dtype(np.float32)


def _stash(stash_type: int, x_dtype: np.dtype) -> np.dtype:
    """Stage-one dtype for stash_type: the stash type, widened to at least float32 (never narrower)."""
    try:
        st = DType(stash_type).np
    except (ValueError, TypeError):
        raise NotImplementedError(f"stash_type {stash_type} is not supported") from None
    return _acc(st, x_dtype)


def _standardize(x: np.ndarray, axes: tuple[int, ...], eps: float, dt: np.dtype) -> tuple[np.ndarray, ...]:
    """(x - mean) * inv_std over `axes` in dtype `dt`; returns (normalized, mean, inv_std), keepdims."""
    xf = x.astype(dt, copy=False)
    mean = xf.mean(axis=axes, keepdims=True)
    d = xf - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + dt.type(eps))
    return d * inv_std, mean, inv_std


def _channel_view(p: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel (C,) parameter shaped (C, 1, ..., 1) to broadcast against (N, C, D1, ...)."""
    return p.reshape(p.shape + (1,) * (rank - 1 - p.ndim))


def _axis(axis: int, rank: int, op: str) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"{op}: axis {axis} is out of range for rank {rank}")
    return axis % rank


# ---------------------------------------------------------------------------------------------
# BatchNormalization.


def _wants_extra_outputs(ctx: Any) -> bool:
    """Whether the node uses any output past Y (outputs named "" in ONNX are placeholders)."""
    node = ctx.node
    if node is None:
        return False
    omitted = set(node.meta.get("omitted_outputs", ()))
    return any(i not in omitted for i in range(1, len(node.outputs)))


def _infer_batchnorm(ctx: InferContext, x: ValueType | None, scale: Any = None, b: Any = None,
                     mean: ValueType | None = None, var: ValueType | None = None, **_: Any) -> list[ValueType | None]:
    y = TensorType(x.dtype, x.shape) if isinstance(x, TensorType) else None
    return [y, mean, var, mean, var]


@defop(
    "BatchNormalization",
    kind=Kind.BROADCAST,
    inputs=(5, 5),
    outputs=(1, 5),
    attrs={
        "epsilon": 1e-5,
        "momentum": 0.9,
        "training_mode": 0,  # opset >= 14
        "spatial": 1,  # opset < 9
        "is_test": 0,  # opset < 7
        "consumed_inputs": Attr(None, type="ints"),  # opset < 6, legacy and meaningless
    },
    infer=_infer_batchnorm
)
def batch_normalization(ctx, x, scale, b, mean, var, *, epsilon, momentum, training_mode, spatial, is_test,
                        consumed_inputs):
    """Y = (X - mean) / sqrt(var + eps) * scale + B, per channel (axis 1).

    Inference uses the given statistics. Training (training_mode=1 at opset >= 14; before 14, a node
    asking for more than Y, as onnxruntime decides) normalizes with the batch statistics and returns
    the running averages: input * momentum + batch * (1 - momentum). Before opset 14 the extra
    outputs saved_mean/saved_var are the batch mean and (population) variance.
    """
    rank = x.ndim
    training = bool(training_mode) if ctx.opset >= 14 else (_wants_extra_outputs(ctx) and not is_test)
    per_activation = ctx.opset < 9 and not spatial  # statistics of shape (C, D1, ...)
    dt = _acc(x.dtype, scale.dtype, mean.dtype)
    view = (lambda p: p) if per_activation else (lambda p: _channel_view(p, rank))
    if training:
        axes = (0,) if per_activation else (0, *range(2, rank))
        xf = x.astype(dt, copy=False)
        bmean = xf.mean(axis=axes)
        bvar = xf.var(axis=axes)
        m, v = bmean, bvar
    else:
        m, v = mean.astype(dt, copy=False), var.astype(dt, copy=False)
    k = scale.astype(dt, copy=False) / np.sqrt(v + dt.type(epsilon))
    shift = b.astype(dt, copy=False) - m * k
    y = (x.astype(dt, copy=False) * view(k) + view(shift)).astype(x.dtype, copy=False)
    if not training:
        return y
    mom = dt.type(momentum)
    run_mean = (mean.astype(dt) * mom + bmean * (1 - mom)).astype(mean.dtype)
    run_var = (var.astype(dt) * mom + bvar * (1 - mom)).astype(var.dtype)
    return y, run_mean, run_var, bmean.astype(mean.dtype), bvar.astype(var.dtype)


# ---------------------------------------------------------------------------------------------
# Instance, layer, group and RMS normalization.


@defop("InstanceNormalization", kind=Kind.REDUCTION, inputs=(3, 3), outputs=(1, 1),
       attrs={"epsilon": 1e-5, "consumed_inputs": Attr(None, type="ints")},  # the latter: opset 1, legacy
       infer=same_as_input())
def instance_normalization(ctx, x, scale, b, *, epsilon, consumed_inputs):
    """Per (instance, channel) standardization over the spatial axes, then a per-channel affine."""
    dt = _acc(x.dtype, scale.dtype)
    n, _, _ = _standardize(x, tuple(range(2, x.ndim)), epsilon, dt)
    y = n * _channel_view(scale.astype(dt), x.ndim) + _channel_view(b.astype(dt), x.ndim)
    return y.astype(x.dtype, copy=False)


def _infer_layernorm(ctx: InferContext, x: ValueType | None, *_: Any, axis: int, stash_type: int,
                     **__: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType):
        return [None, None, None]
    st = DType(stash_type)
    if x.shape is None:
        return [TensorType(x.dtype, None), TensorType(st, None), TensorType(st, None)]
    a = _axis(axis, len(x.shape), "LayerNormalization")
    stat = TensorType(st, tuple(x.shape[:a]) + (1,) * (len(x.shape) - a))
    return [TensorType(x.dtype, x.shape), stat, stat]


@defop(
    "LayerNormalization",
    kind=Kind.REDUCTION,
    inputs=(2, 3),
    outputs=(1, 3),
    since_version=17,
    attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
    infer=_infer_layernorm
)
def layer_normalization(ctx, x, scale, b=None, *, axis, epsilon, stash_type):
    """Standardize over axes [axis, rank) in stash precision, then Y = N * Scale + B (broadcast).

    Returns (Y, Mean, InvStdDev); Mean and InvStdDev have the stash type and keep reduced dims as 1.
    """
    a = _axis(axis, x.ndim, "LayerNormalization")
    dt = _stash(stash_type, x.dtype)
    n, mean, inv_std = _standardize(x, tuple(range(a, x.ndim)), epsilon, dt)
    y = n * scale.astype(dt, copy=False)
    if b is not None:
        y = y + b.astype(dt, copy=False)
    st = DType(stash_type).np
    return y.astype(x.dtype, copy=False), mean.astype(st, copy=False), inv_std.astype(st, copy=False)


@defop(
    "GroupNormalization",
    kind=Kind.REDUCTION,
    inputs=(3, 3),
    outputs=(1, 1),
    since_version=18,
    attrs={"num_groups": REQUIRED, "epsilon": 1e-5, "stash_type": 1},
    infer=same_as_input()
)
def group_normalization(ctx, x, scale, bias, *, num_groups, epsilon, stash_type):
    """Standardize each (instance, group of C/G channels); scale/bias are per group at opset 18,
    per channel from opset 21."""
    if num_groups is None:
        raise ValueError("GroupNormalization: attribute num_groups is required")
    n_, c = x.shape[0], x.shape[1]
    g = int(num_groups)
    if g <= 0 or c % g:
        raise ValueError(f"GroupNormalization: num_groups {g} does not divide the {c} channels")
    dt = _stash(stash_type if ctx.opset >= 21 else 1, x.dtype)
    grouped = x.reshape(n_, g, -1)
    normed, _, _ = _standardize(grouped, (2,), epsilon, dt)
    normed = normed.reshape(x.shape)
    if ctx.opset < 21:  # scale and bias have one value per group
        scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
    y = normed * _channel_view(scale.astype(dt), x.ndim) + _channel_view(bias.astype(dt), x.ndim)
    return y.astype(x.dtype, copy=False)


def _infer_rmsnorm(ctx: InferContext, x: ValueType | None, scale: ValueType | None = None,
                   **_: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType) or not isinstance(scale, TensorType):
        return [None]
    return [TensorType(scale.dtype, x.shape)]


@defop(
    "RMSNormalization",
    kind=Kind.REDUCTION,
    inputs=(2, 2),
    outputs=(1, 1),
    since_version=23,
    attrs={"axis": -1, "epsilon": 1e-5, "stash_type": 1},
    infer=_infer_rmsnorm
)
def rms_normalization(ctx, x, scale, *, axis, epsilon, stash_type):
    """Y = X / sqrt(mean(X^2 over [axis, rank)) + eps) * scale; Y has scale's type."""
    a = _axis(axis, x.ndim, "RMSNormalization")
    dt = _stash(stash_type, x.dtype)
    xf = x.astype(dt, copy=False)
    ms = (xf * xf).mean(axis=tuple(range(a, x.ndim)), keepdims=True)
    y = xf / np.sqrt(ms + dt.type(epsilon)) * scale.astype(dt, copy=False)
    return y.astype(scale.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# LRN, LpNormalization, MeanVarianceNormalization.


@defop("LRN", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 1),
       attrs={"alpha": 1e-4, "beta": 0.75, "bias": 1.0, "size": REQUIRED},
       infer=same_as_input())
def lrn(ctx, x, *, alpha, beta, bias, size):
    """Y = X / (bias + alpha/size * sum of X^2 over channels [c - (size-1)//2, c + ceil((size-1)/2)])^beta.

    The windowed sum is a difference of cumulative sums over the zero-padded channel axis.
    """
    if size is None:
        raise ValueError("LRN: attribute size is required")
    size = int(size)
    dt = _acc(x.dtype)
    sq = np.square(x.astype(dt, copy=False))
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    pad = [(0, 0)] * x.ndim
    pad[1] = (lo + 1, hi)  # one extra leading zero so that window sums are csum[c+size] - csum[c]
    csum = np.cumsum(np.pad(sq, pad), axis=1)
    c = x.shape[1]
    win = np.take(csum, np.arange(size, size + c), axis=1) - np.take(csum, np.arange(c), axis=1)
    y = x.astype(dt, copy=False) / (dt.type(bias) + dt.type(alpha / size) * win) ** dt.type(beta)
    return y.astype(x.dtype, copy=False)


@defop("LpNormalization", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 1), attrs={"axis": -1, "p": 2},
       infer=same_as_input())
def lp_normalization(ctx, x, *, axis, p):
    """X / ||X||_p along `axis` (p in {1, 2}); zero where the norm is zero."""
    if p not in (1, 2):
        raise NotImplementedError(f"LpNormalization: p={p} is not supported (only 1 and 2)")
    a = _axis(axis, x.ndim, "LpNormalization")
    dt = _acc(x.dtype)
    xf = x.astype(dt, copy=False)
    norm = np.abs(xf).sum(axis=a, keepdims=True) if p == 1 else np.sqrt((xf * xf).sum(axis=a, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(norm == 0, dt.type(0), xf / norm)
    return y.astype(x.dtype, copy=False)


@defop("MeanVarianceNormalization", kind=Kind.REDUCTION, inputs=(1, 1), outputs=(1, 1), since_version=9,
       attrs={"axes": Attr([0, 2, 3], type="ints")}, infer=same_as_input())
def mean_variance_normalization(ctx, x, *, axes: Sequence[int]):
    """(X - E[X]) / (sqrt(Var[X]) + 1e-9) over `axes` (the function body's epsilon)."""
    ax = tuple(sorted({_axis(int(a), x.ndim, "MeanVarianceNormalization") for a in axes}))
    dt = _acc(x.dtype)
    xf = x.astype(dt, copy=False)
    mean = xf.mean(axis=ax, keepdims=True)
    d = xf - mean
    std = np.sqrt((d * d).mean(axis=ax, keepdims=True))
    return (d / (std + dt.type(1e-9))).astype(x.dtype, copy=False)
