"""Signal-processing ops: DFT, STFT, the window generators and MelWeightMatrix.

Complex tensors follow ONNX's convention: a trailing dimension of 2 holds (real, imaginary), and of 1
a real signal. Transforms run in the input's precision (complex64 for float32/float16, complex128 for float64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import DType, TensorType, ValueType
from .core import InferContext, Kind, defop


def _to_complex(x: np.ndarray) -> np.ndarray:
    """(..., 1) real or (..., 2) complex -> complex array (complex128 for float64, else complex64)."""
    ct = np.complex128 if x.dtype == np.float64 else np.complex64
    if x.shape[-1] == 1:
        return x[..., 0].astype(ct)
    if x.shape[-1] == 2:
        return (x[..., 0] + 1j * x[..., 1]).astype(ct)
    raise ValueError(f"the last dimension must be 1 (real) or 2 (complex), got {x.shape[-1]}")


def _from_complex(c: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.stack([c.real, c.imag], axis=-1).astype(dtype)


def _scalar(a: np.ndarray | None) -> int | None:
    return None if a is None else int(np.asarray(a).reshape(-1)[0])


def _dft_axis(ctx: Any, axis_input: Any, axis_attr: int) -> int | None:
    """Opset 20 takes the axis as an input (default -2); opset 17 as an attribute (default 1)."""
    if ctx.opset >= 20:
        return -2 if axis_input is None else axis_input
    return axis_attr


def _infer_dft(ctx: InferContext, x: ValueType | None, *_: Any, **attrs: Any) -> list[ValueType | None]:
    if not isinstance(x, TensorType) or x.shape is None:
        return [None]
    inverse, onesided = attrs.get("inverse", 0), attrs.get("onesided", 0)
    shape: list[Any] = list(x.shape)
    shape[-1] = 1 if onesided and inverse else 2
    if ctx.opset >= 20 and ctx.node.input(2) is not None:
        axis = _scalar(ctx.const(2))
        if axis is None:  # axis known only at run time
            return [TensorType(x.dtype, tuple(shape[:1] + [None] * (len(shape) - 2) + shape[-1:]))]
    else:
        axis = _dft_axis(ctx, None, attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    dim = x.shape[axis]
    if ctx.node.input(1) is not None:
        n = _scalar(ctx.const(1))
    elif onesided and inverse:
        n = 2 * (dim - 1) if isinstance(dim, int) else None
    else:
        n = dim if isinstance(dim, int) else None
    shape[axis] = (n // 2 + 1 if onesided and not inverse else n) if n is not None else None
    return [TensorType(x.dtype, tuple(shape))]


@defop("DFT", kind=Kind.OPAQUE, inputs=(1, 3), outputs=(1, 1), since_version=17,
       attrs={"axis": 1, "inverse": 0, "onesided": 0}, infer=_infer_dft)
def dft(ctx, x: np.ndarray, dft_length: np.ndarray | None = None, axis_in: np.ndarray | None = None, *,
        axis: int, inverse: int, onesided: int) -> np.ndarray:
    """DFT along one signal axis: full complex, one-sided forward (RFFT) or one-sided inverse (IRFFT)."""
    ax = _dft_axis(ctx, _scalar(axis_in), axis)
    ax = ax + x.ndim if ax < 0 else ax
    if not 0 <= ax < x.ndim - 1:
        raise ValueError(f"DFT: axis {ax} is out of range for rank {x.ndim}")
    c = _to_complex(x)
    n = _scalar(dft_length)
    if onesided and inverse:  # IRFFT: one-sided spectrum -> real signal of length n
        n = n if n is not None else 2 * (c.shape[ax] - 1)
        return np.fft.irfft(c, n=n, axis=ax)[..., None].astype(x.dtype)
    y = np.fft.ifft(c, n=n, axis=ax) if inverse else np.fft.fft(c, n=n, axis=ax)
    if onesided:
        y = np.take(y, np.arange(y.shape[ax] // 2 + 1), axis=ax)
    return _from_complex(y, x.dtype)


def _infer_stft(ctx: InferContext, sig: ValueType | None, step: Any = None, win: ValueType | None = None,
                fl: Any = None, **attrs: Any) -> list[ValueType | None]:
    if not isinstance(sig, TensorType) or sig.shape is None or len(sig.shape) != 3:
        return [None]
    n = _scalar(ctx.const(3)) if ctx.node.input(3) is not None else None
    if n is None and isinstance(win, TensorType) and win.shape and ctx.node.input(3) is None:
        n = win.shape[0] if isinstance(win.shape[0], int) else None
    if n is None and ctx.node.input(3) is None and win is None:
        n = sig.shape[1] if isinstance(sig.shape[1], int) else None
    s = _scalar(ctx.const(1))
    length = sig.shape[1]
    frames = (length - n) // s + 1 if isinstance(length, int) and isinstance(n, int) and s else None
    bins = (n // 2 + 1 if attrs.get("onesided", 1) else n) if isinstance(n, int) else None
    return [TensorType(sig.dtype, (sig.shape[0], frames, bins, 2))]


@defop("STFT", kind=Kind.OPAQUE, inputs=(2, 4), outputs=(1, 1), since_version=17, attrs={"onesided": 1},
       infer=_infer_stft)
def stft(ctx, signal: np.ndarray, frame_step: np.ndarray, window: np.ndarray | None = None,
         frame_length: np.ndarray | None = None, *, onesided: int) -> np.ndarray:
    """DFT of each windowed frame: output (batch, frames, bins, 2)."""
    c = _to_complex(signal)  # (B, L)
    step = _scalar(frame_step)
    n = _scalar(frame_length)
    if n is None:
        n = window.shape[0] if window is not None else c.shape[1]
    if window is not None and window.shape[0] != n:
        raise ValueError(f"STFT: window length {window.shape[0]} differs from frame_length {n}")
    if not step or step <= 0 or n > c.shape[1]:
        raise ValueError(f"STFT: invalid frame_step {step} or frame_length {n} for signal length {c.shape[1]}")
    frames = np.lib.stride_tricks.sliding_window_view(c, n, axis=1)[:, ::step]  # (B, F, n)
    if window is not None:
        frames = frames * _to_complex(window.reshape(-1, 1))
    y = np.fft.fft(frames, axis=-1)
    if onesided:
        if np.iscomplexobj(signal) or signal.shape[-1] == 2:
            raise ValueError("STFT: onesided output needs a real signal")
        y = y[..., : n // 2 + 1]
    return _from_complex(y, signal.dtype)


def _infer_window(ctx: InferContext, size: Any = None, **attrs: Any) -> list[ValueType | None]:
    n = _scalar(ctx.const(0))
    return [TensorType(DType(attrs.get("output_datatype") or 1), (n if n is not None else ctx.dim("size"),))]


def _window(size: np.ndarray, periodic: int, output_datatype: int, coeffs: tuple[float, ...]) -> np.ndarray:
    """sum_k (-1)^k a_k cos(2 pi k n / N): N = size (periodic) or size - 1 (symmetric)."""
    m = _scalar(size)
    period = m if periodic else m - 1
    n = np.arange(m, dtype=np.float64)
    if period <= 0:
        w = np.ones(m)
    else:
        w = sum((-1) ** k * a * np.cos(2 * np.pi * k * n / period) for k, a in enumerate(coeffs))
    return np.asarray(w).astype(DType(output_datatype).np)


_WINDOW_ATTRS = {"output_datatype": 1, "periodic": 1}


@defop("HannWindow", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), since_version=17, attrs=_WINDOW_ATTRS,
       infer=_infer_window)
def hann_window(ctx, size: np.ndarray, *, output_datatype: int, periodic: int) -> np.ndarray:
    return _window(size, periodic, output_datatype, (0.5, 0.5))


@defop("HammingWindow", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), since_version=17, attrs=_WINDOW_ATTRS,
       infer=_infer_window)
def hamming_window(ctx, size: np.ndarray, *, output_datatype: int, periodic: int) -> np.ndarray:
    return _window(size, periodic, output_datatype, (25 / 46, 21 / 46))


@defop("BlackmanWindow", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), since_version=17, attrs=_WINDOW_ATTRS,
       infer=_infer_window)
def blackman_window(ctx, size: np.ndarray, *, output_datatype: int, periodic: int) -> np.ndarray:
    return _window(size, periodic, output_datatype, (0.42, 0.5, 0.08))


def _infer_mel(ctx: InferContext, *types: Any, **attrs: Any) -> list[ValueType | None]:
    bins, n = _scalar(ctx.const(0)), _scalar(ctx.const(1))
    return [TensorType(DType(attrs.get("output_datatype") or 1),
                       (n // 2 + 1 if n is not None else ctx.dim("bins"), bins if bins is not None else ctx.dim("mels")))]


@defop("MelWeightMatrix", kind=Kind.OPAQUE, inputs=(5, 5), outputs=(1, 1), since_version=17,
       attrs={"output_datatype": 1}, infer=_infer_mel)
def mel_weight_matrix(ctx, num_mel_bins: np.ndarray, dft_length: np.ndarray, sample_rate: np.ndarray,
                      lower_edge_hertz: np.ndarray, upper_edge_hertz: np.ndarray, *, output_datatype: int) -> np.ndarray:
    """Triangular filters (peak 1) evenly spaced on the mel scale, on integer DFT-bin edges."""
    mels, n, rate = _scalar(num_mel_bins), _scalar(dft_length), _scalar(sample_rate)
    lo, hi = (2595 * np.log10(1 + float(np.asarray(f).reshape(-1)[0]) / 700) for f in (lower_edge_hertz, upper_edge_hertz))
    points = lo + np.arange(mels + 2) * (hi - lo) / (mels + 2)
    hz = 700 * (10 ** (points / 2595) - 1)
    edges = np.floor((n + 1) * hz / rate).astype(np.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    j = np.arange(n // 2 + 1)[:, None]
    rising = np.where(center > left, (j - left) / np.maximum(center - left, 1), (j == center).astype(np.float64))
    falling = (right - j) / np.maximum(right - center, 1)
    out = np.where((j >= center) & (j < right), falling, np.where((j >= left) & (j <= center), rising, 0.0))
    return out.astype(DType(output_datatype).np)
