"""Recurrent ops: RNN, GRU and LSTM, sharing one time-loop driver.

The input projections X @ W^T for every time step are one batched matmul; only the recurrence runs
step by step. Reverse directions reverse each sequence within its own length (`sequence_lens`), run
forward, and reverse the outputs back, so one masked forward loop serves every direction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..types import TensorType, ValueType
from .core import Attr, InferContext, Kind, defop

Fn = Callable[[np.ndarray], np.ndarray]

# name -> (function of (x, alpha, beta), default alpha, default beta); None: takes no parameter.
_ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray, float, float], np.ndarray], float | None, float | None]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: 1 / (1 + np.exp(-x)), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(np.minimum(x, 0)) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}


def _activations(names: list[str] | None, alphas: list[float] | None, betas: list[float] | None,
                 defaults: list[str], num_dirs: int, op: str) -> list[list[Fn]]:
    """Per-direction activation functions; alpha/beta lists are consumed by the functions that take them."""
    names = list(names) if names else defaults * num_dirs
    if len(names) == len(defaults) and num_dirs == 2:
        names = names * 2
    if len(names) != len(defaults) * num_dirs:
        raise ValueError(f"{op}: expected {len(defaults) * num_dirs} activations, got {len(names)}")
    ia, ib = iter(alphas or []), iter(betas or [])
    fns: list[Fn] = []
    for name in names:
        key = name.lower()
        if key not in _ACTIVATIONS:
            raise NotImplementedError(f"{op}: activation {name!r} is not supported")
        f, da, db = _ACTIVATIONS[key]
        a = next(ia, da) if da is not None else 0.0
        b = next(ib, db) if db is not None else 0.0
        fns.append(lambda x, f=f, a=a, b=b: f(x, a, b))
    k = len(defaults)
    return [fns[d * k:(d + 1) * k] for d in range(num_dirs)]


def _reverse_within(a: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Reverse axis 0 (time) of a (S, B, ...) array separately for each batch entry's length."""
    s = a.shape[0]
    t = np.arange(s)[:, None]
    idx = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)
    return a[idx, np.arange(a.shape[1])[None, :]]


Step = Callable[[np.ndarray, list[np.ndarray]], list[np.ndarray]]


def _recurrence(s_len: int, batch: int, seq_lens: np.ndarray | None, direction: str, layout: int,
                initial: list[np.ndarray | None], hidden: int, make_step: Callable[[int], tuple[np.ndarray, Step]],
                out_dtype: np.dtype, num_outputs: int) -> tuple[np.ndarray, ...]:
    """Run all directions; returns Y, then each final state (Y_h, [Y_c]) in the op's layout.

    `make_step(d)` gives the projected inputs (S, B, gates*H) and the step function of direction d.
    """
    if direction not in ("forward", "reverse", "bidirectional"):
        raise NotImplementedError(f"RNN: direction {direction!r} is not supported")
    if layout:
        initial = [None if s is None else s.swapaxes(0, 1) for s in initial]
    num_dirs = 2 if direction == "bidirectional" else 1
    lens = np.full(batch, s_len, np.int64) if seq_lens is None else seq_lens.astype(np.int64).reshape(batch)
    ys, finals = [], [[] for _ in initial]
    for d in range(num_dirs):
        reverse = direction == "reverse" or d == 1
        proj, step = make_step(d)
        if reverse:
            proj = _reverse_within(proj, lens)
        states = [np.zeros((batch, hidden), proj.dtype) if s is None else s[d].astype(proj.dtype) for s in initial]
        y = np.zeros((s_len, batch, hidden), proj.dtype)
        for t in range(s_len):
            new = step(proj[t], states)
            valid = (t < lens)[:, None]
            states = [np.where(valid, n, o) for n, o in zip(new, states)]
            y[t] = np.where(valid, new[0], 0)
        ys.append(_reverse_within(y, lens) if reverse else y)
        for f, st in zip(finals, states):
            f.append(st)
    y_all = np.stack(ys, axis=1)  # (S, dirs, B, H)
    outs = [y_all] + [np.stack(f) for f in finals]  # finals: (dirs, B, H)
    if layout:
        outs = [outs[0].transpose(2, 0, 1, 3)] + [o.swapaxes(0, 1) for o in outs[1:]]
    return tuple(o.astype(out_dtype) for o in outs[:num_outputs])


def _work_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def _clip(c: float | None) -> Fn:
    return (lambda v: np.clip(v, -c, c)) if c else (lambda v: v)


def _infer_rnn(num_states: int):
    def infer(ctx: InferContext, x: ValueType | None, w: ValueType | None = None, r: ValueType | None = None,
              *rest: Any, **attrs: Any) -> list[ValueType | None]:
        if not isinstance(x, TensorType) or x.shape is None or len(x.shape) != 3:
            return [None] * (1 + num_states)
        dirs = 2 if attrs.get("direction") == "bidirectional" else 1
        hid = attrs.get("hidden_size")
        if hid is None and isinstance(r, TensorType) and r.shape is not None:
            hid = r.shape[-1]
        seq, batch = (x.shape[1], x.shape[0]) if attrs.get("layout") else (x.shape[0], x.shape[1])
        if attrs.get("layout"):
            y, st = (batch, seq, dirs, hid), (batch, dirs, hid)
        else:
            y, st = (seq, dirs, batch, hid), (dirs, batch, hid)
        return [TensorType(x.dtype, y)] + [TensorType(x.dtype, st) for _ in range(num_states)]

    return infer


_COMMON = {"activation_alpha": Attr(None, type="floats"), "activation_beta": Attr(None, type="floats"),
           "activations": Attr(None, type="strings"), "clip": None, "direction": "forward", "hidden_size": None,
           "layout": 0}


def _split_bias(b: np.ndarray | None, d: int, gates: int, hidden: int, dt: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    if b is None:
        z = np.zeros(gates * hidden, dt)
        return z, z
    return b[d, : gates * hidden].astype(dt), b[d, gates * hidden:].astype(dt)


@defop("RNN", kind=Kind.OPAQUE, inputs=(3, 6), outputs=(0, 2), attrs=_COMMON, infer=_infer_rnn(1))
def rnn(ctx, x: np.ndarray, w: np.ndarray, r: np.ndarray, b: np.ndarray | None = None,
        sequence_lens: np.ndarray | None = None, initial_h: np.ndarray | None = None, *,
        activation_alpha: list[float] | None, activation_beta: list[float] | None, activations: list[str] | None,
        clip: float | None, direction: str, hidden_size: int | None, layout: int) -> tuple[np.ndarray, ...]:
    """Elman RNN: H = f(X W^T + H R^T + Wb + Rb)."""
    dt, hid = _work_dtype(x), hidden_size or r.shape[-1]
    acts = _activations(activations, activation_alpha, activation_beta, ["Tanh"], w.shape[0], "RNN")
    cl = _clip(clip)
    xs = (x.swapaxes(0, 1) if layout else x).astype(dt)

    def make(d: int) -> tuple[np.ndarray, Step]:
        wb, rb = _split_bias(b, d, 1, hid, dt)
        rt, (f,) = r[d].astype(dt).T, acts[d]
        return xs @ w[d].astype(dt).T + wb + rb, lambda xt, st: [f(cl(xt + st[0] @ rt))]

    return _recurrence(*xs.shape[:2], sequence_lens, direction, layout, [initial_h], hid, make, x.dtype, 2)


@defop("GRU", kind=Kind.OPAQUE, inputs=(3, 6), outputs=(0, 2), attrs={**_COMMON, "linear_before_reset": 0},
       infer=_infer_rnn(1))
def gru(ctx, x: np.ndarray, w: np.ndarray, r: np.ndarray, b: np.ndarray | None = None,
        sequence_lens: np.ndarray | None = None, initial_h: np.ndarray | None = None, *,
        activation_alpha: list[float] | None, activation_beta: list[float] | None, activations: list[str] | None,
        clip: float | None, direction: str, hidden_size: int | None, layout: int,
        linear_before_reset: int) -> tuple[np.ndarray, ...]:
    """GRU with gates (z, r, h); `linear_before_reset` applies the reset gate after H R_h^T + Rb_h."""
    dt, hid = _work_dtype(x), hidden_size or r.shape[-1]
    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh"], w.shape[0], "GRU")
    cl = _clip(clip)
    xs = (x.swapaxes(0, 1) if layout else x).astype(dt)

    def make(d: int) -> tuple[np.ndarray, Step]:
        wb, rb = _split_bias(b, d, 3, hid, dt)
        rzr, rh = r[d, : 2 * hid].astype(dt).T, r[d, 2 * hid:].astype(dt).T
        f, g = acts[d]

        def step(xt: np.ndarray, st: list[np.ndarray]) -> list[np.ndarray]:
            h = st[0]
            zr = f(cl(xt[:, : 2 * hid] + h @ rzr + rb[: 2 * hid]))
            z, rr = zr[:, :hid], zr[:, hid:]
            if linear_before_reset:
                hh = g(cl(xt[:, 2 * hid:] + rr * (h @ rh + rb[2 * hid:])))
            else:
                hh = g(cl(xt[:, 2 * hid:] + (rr * h) @ rh + rb[2 * hid:]))
            return [(1 - z) * hh + z * h]

        return xs @ w[d].astype(dt).T + wb, step

    return _recurrence(*xs.shape[:2], sequence_lens, direction, layout, [initial_h], hid, make, x.dtype, 2)


@defop("LSTM", kind=Kind.OPAQUE, inputs=(3, 8), outputs=(0, 3), attrs={**_COMMON, "input_forget": 0},
       infer=_infer_rnn(2))
def lstm(ctx, x: np.ndarray, w: np.ndarray, r: np.ndarray, b: np.ndarray | None = None,
         sequence_lens: np.ndarray | None = None, initial_h: np.ndarray | None = None,
         initial_c: np.ndarray | None = None, p: np.ndarray | None = None, *,
         activation_alpha: list[float] | None, activation_beta: list[float] | None, activations: list[str] | None,
         clip: float | None, direction: str, hidden_size: int | None, layout: int,
         input_forget: int) -> tuple[np.ndarray, ...]:
    """LSTM with gates (i, o, f, c), optional peepholes P = (Pi, Po, Pf) and coupled input/forget gates."""
    dt, hid = _work_dtype(x), hidden_size or r.shape[-1]
    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"], w.shape[0],
                        "LSTM")
    cl = _clip(clip)
    xs = (x.swapaxes(0, 1) if layout else x).astype(dt)

    def make(d: int) -> tuple[np.ndarray, Step]:
        wb, rb = _split_bias(b, d, 4, hid, dt)
        rt = r[d].astype(dt).T
        pi, po, pf = (np.zeros(hid, dt),) * 3 if p is None else np.split(p[d].astype(dt), 3)
        f, g, hf = acts[d]

        def step(xt: np.ndarray, st: list[np.ndarray]) -> list[np.ndarray]:
            h, c = st
            gates = xt + h @ rt
            i = f(cl(gates[:, :hid] + pi * c))
            fg = 1 - i if input_forget else f(cl(gates[:, 2 * hid: 3 * hid] + pf * c))
            c_new = fg * c + i * g(cl(gates[:, 3 * hid:]))
            o = f(cl(gates[:, hid: 2 * hid] + po * c_new))
            return [o * hf(c_new), c_new]

        return xs @ w[d].astype(dt).T + wb + rb, step

    return _recurrence(*xs.shape[:2], sequence_lens, direction, layout, [initial_h, initial_c], hid, make, x.dtype, 3)
