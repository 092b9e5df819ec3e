"""Assorted ops: losses, random generators, Attention, RotaryEmbedding, NonMaxSuppression, Det."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..types import DType, TensorType, ValueType
from .core import REQUIRED, Attr, InferContext, Kind, defop, numel, same_as_input


def _np_dtype(code: int | None, fallback: np.dtype | None = None) -> np.dtype:
    """The numpy dtype for an ONNX element-type code (0/None: `fallback`)."""
    if not code:
        if fallback is None:
            raise ValueError("no element type given")
        return np.dtype(fallback)
    try:
        return DType(code).np
    except (ValueError, TypeError):
        raise NotImplementedError(f"element type {code} is not supported") from None


def _tt(t: ValueType | None) -> TensorType | None:
    return t if isinstance(t, TensorType) else None


# ---------------------------------------------------------------------------------------------
# Losses.


def _log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _nll(logp: np.ndarray, target: np.ndarray, weight: np.ndarray | None, ignore_index: int | None,
         reduction: str) -> np.ndarray:
    """-logp[n, target[n, ...], ...] * weight[target]; ignored targets weigh 0; `mean` is weighted."""
    t = target.astype(np.int64)
    keep = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    safe = np.where(keep, t, 0)
    picked = np.take_along_axis(logp, safe[:, None], axis=1)[:, 0]
    w = (weight[safe] if weight is not None else np.ones_like(picked)).astype(logp.dtype)
    w = np.where(keep, w, logp.dtype.type(0))
    loss = -picked * w
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(loss.sum(dtype=logp.dtype))
    if reduction == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(loss.sum(dtype=logp.dtype) / w.sum(dtype=logp.dtype))
    raise NotImplementedError(f"loss: reduction {reduction!r} is not supported")


def _infer_loss(ctx: InferContext, x: ValueType | None, target: ValueType | None = None, w: Any = None,
                **attrs: Any) -> list[ValueType | None]:
    tx, tt = _tt(x), _tt(target)
    if tx is None:
        return [None, None]
    shape = (tt.shape if tt is not None else None) if attrs.get("reduction", "mean") == "none" else ()
    return [TensorType(tx.dtype, shape), TensorType(tx.dtype, tx.shape)]


@defop("NegativeLogLikelihoodLoss", kind=Kind.REDUCTION, inputs=(2, 3), outputs=(1, 1), since_version=12,
       attrs={"ignore_index": None, "reduction": "mean"}, infer=_infer_loss)
def nll_loss(ctx, x: np.ndarray, target: np.ndarray, weight: np.ndarray | None = None, *,
             ignore_index: int | None, reduction: str) -> np.ndarray:
    """Picks the target class's (log-)probability; input (N, C, d...), target (N, d...)."""
    return _nll(x, target, weight, ignore_index, reduction)


@defop("SoftmaxCrossEntropyLoss", kind=Kind.REDUCTION, inputs=(2, 3), outputs=(1, 2), since_version=12,
       attrs={"ignore_index": None, "reduction": "mean"}, infer=_infer_loss)
def softmax_cross_entropy_loss(ctx, scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, *,
                               ignore_index: int | None, reduction: str) -> tuple[np.ndarray, np.ndarray]:
    """NLL of log_softmax over the class axis (1); the log-probabilities are the second output."""
    logp = _log_softmax(scores, axis=1)
    return _nll(logp, labels, weights, ignore_index, reduction), logp


# ---------------------------------------------------------------------------------------------
# Random generators: a `seed` attribute gives a generator of its own (reproducible runs of that node),
# otherwise the interpreter's ctx.rng. The streams are numpy's, so values differ from other runtimes.


def _rng(ctx: Any, seed: float | None) -> np.random.Generator:
    return ctx.rng if seed is None or np.isnan(seed) else np.random.default_rng(int(seed))


def _random_infer(like: bool):
    def infer(ctx: InferContext, *types: ValueType | None, **attrs: Any) -> list[ValueType | None]:
        src = _tt(types[0]) if like and types else None
        dt = DType(attrs["dtype"]) if attrs.get("dtype") else (src.dtype if src is not None else None)
        if dt is None:
            return [None]
        shape = (src.shape if src is not None else None) if like else tuple(attrs.get("shape") or ())
        return [TensorType(dt, shape)]

    return infer


@defop("RandomUniform", inputs=(0, 0), outputs=(1, 1), random=True, infer=_random_infer(False),
       attrs={"dtype": 1, "high": 1.0, "low": 0.0, "seed": None, "shape": Attr(None, type="ints")})
def random_uniform(ctx, *, dtype: int, high: float, low: float, seed: float | None, shape: list[int]) -> np.ndarray:
    """Uniform samples in [low, high)."""
    dt = _np_dtype(dtype)
    return (_rng(ctx, seed).random(tuple(shape)) * (high - low) + low).astype(dt)


@defop("RandomNormal", inputs=(0, 0), outputs=(1, 1), random=True, infer=_random_infer(False),
       attrs={"dtype": 1, "mean": 0.0, "scale": 1.0, "seed": None, "shape": Attr(None, type="ints")})
def random_normal(ctx, *, dtype: int, mean: float, scale: float, seed: float | None, shape: list[int]) -> np.ndarray:
    """Normal samples with the given mean and standard deviation."""
    dt = _np_dtype(dtype)
    return (_rng(ctx, seed).standard_normal(tuple(shape)) * scale + mean).astype(dt)


@defop("RandomUniformLike", inputs=(1, 1), outputs=(1, 1), random=True, infer=_random_infer(True),
       attrs={"dtype": None, "high": 1.0, "low": 0.0, "seed": None})
def random_uniform_like(ctx, x: np.ndarray, *, dtype: int | None, high: float, low: float,
                        seed: float | None) -> np.ndarray:
    """RandomUniform with the input's shape (and dtype unless `dtype` is given)."""
    return (_rng(ctx, seed).random(x.shape) * (high - low) + low).astype(_np_dtype(dtype, x.dtype))


@defop("RandomNormalLike", inputs=(1, 1), outputs=(1, 1), random=True, infer=_random_infer(True),
       attrs={"dtype": None, "mean": 0.0, "scale": 1.0, "seed": None})
def random_normal_like(ctx, x: np.ndarray, *, dtype: int | None, mean: float, scale: float,
                       seed: float | None) -> np.ndarray:
    """RandomNormal with the input's shape (and dtype unless `dtype` is given)."""
    return (_rng(ctx, seed).standard_normal(x.shape) * scale + mean).astype(_np_dtype(dtype, x.dtype))


@defop("Bernoulli", inputs=(1, 1), outputs=(1, 1), since_version=15, random=True, infer=_random_infer(True),
       attrs={"dtype": None, "seed": None})
def bernoulli(ctx, x: np.ndarray, *, dtype: int | None, seed: float | None) -> np.ndarray:
    """1 with probability x, else 0."""
    return (_rng(ctx, seed).random(x.shape) < x).astype(_np_dtype(dtype, x.dtype))


def _infer_multinomial(ctx: InferContext, x: ValueType | None, **attrs: Any) -> list[ValueType | None]:
    tx = _tt(x)
    batch = tx.shape[0] if tx is not None and tx.shape else None
    return [TensorType(DType(attrs.get("dtype") or 6), (batch, attrs.get("sample_size", 1)))]


@defop("Multinomial", inputs=(1, 1), outputs=(1, 1), since_version=7, random=True, infer=_infer_multinomial,
       attrs={"dtype": 6, "sample_size": 1, "seed": None})
def multinomial(ctx, x: np.ndarray, *, dtype: int, sample_size: int, seed: float | None) -> np.ndarray:
    """Class indices drawn from softmax(x) per row; x is (batch, classes) unnormalized log-probs."""
    p = np.exp(_log_softmax(x.astype(np.float64), axis=1))
    cdf = np.cumsum(p, axis=1)
    u = _rng(ctx, seed).random((x.shape[0], sample_size)) * cdf[:, -1:]
    idx = (u[:, :, None] >= cdf[:, None, :]).sum(axis=-1)  # first class whose cdf exceeds u
    return np.minimum(idx, x.shape[1] - 1).astype(_np_dtype(dtype))


# ---------------------------------------------------------------------------------------------
# Attention (opset 23+) and RotaryEmbedding.


def _split_heads(x: np.ndarray, heads: int | None) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D)."""
    if not heads:
        raise ValueError("Attention: 3-D inputs need q_num_heads and kv_num_heads")
    b, s, hidden = x.shape
    return x.reshape(b, s, heads, hidden // heads).transpose(0, 2, 1, 3)


def _masked_softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; an all -inf row gives zeros instead of NaN."""
    mx = x.max(axis=-1, keepdims=True)
    mx = np.where(np.isneginf(mx), x.dtype.type(0), mx)
    e = np.exp(x - mx)
    s = e.sum(axis=-1, keepdims=True)
    return e / np.where(s == 0, x.dtype.type(1), s)


def _attention_allowed(sq: int, skv: int, offset: np.ndarray | int, is_causal: bool, left: int, right: int
                       ) -> np.ndarray | None:
    """Keys each query may see from causality and the sliding window: (Sq, Skv) or (B, 1, Sq, Skv)."""
    if not is_causal and left < 0 and right < 0:
        return None
    off = np.asarray(offset).reshape(-1, 1, 1, 1) if np.ndim(offset) else offset
    diff = (np.arange(sq)[:, None] + off) - np.arange(skv)[None, :]  # query position - key position
    allowed = np.ones(np.shape(diff), bool)
    if is_causal:
        allowed &= diff >= 0
    if left >= 0:
        allowed &= diff <= left
    if right >= 0:
        allowed &= -diff <= right
    return allowed


def _infer_attention(ctx: InferContext, q: ValueType | None, k: ValueType | None = None, v: ValueType | None = None,
                     mask: Any = None, past_k: ValueType | None = None, past_v: ValueType | None = None,
                     nonpad: Any = None, **attrs: Any) -> list[ValueType | None]:
    tq, tk, tv, tpk = map(_tt, (q, k, v, past_k))
    if tq is None or tq.shape is None or tk is None or tk.shape is None or tv is None or tv.shape is None:
        return [None] * 4
    hq, hkv = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
    b, sq = tq.shape[0], tq.shape[-2] if len(tq.shape) == 4 else tq.shape[1]
    skv = tk.shape[-2] if len(tk.shape) == 4 else tk.shape[1]

    def div(a: Any, n: Any) -> Any:
        return a // n if isinstance(a, int) and isinstance(n, int) and n else None

    if len(tq.shape) == 4:
        hq, hkv = tq.shape[1], tk.shape[1]
        dk, dv = tk.shape[3], tv.shape[3]
        y = (b, hq, sq, dv)
    else:
        dk, dv = div(tk.shape[2], hkv), div(tv.shape[2], hkv)
        y = (b, sq, hq * dv if isinstance(hq, int) and isinstance(dv, int) else None)
    past = tpk.shape[2] if tpk is not None and tpk.shape is not None else 0
    total = past + skv if isinstance(past, int) and isinstance(skv, int) else None
    return [TensorType(tq.dtype, y), TensorType(tk.dtype, (b, hkv, total, dk)),
            TensorType(tv.dtype, (b, hkv, total, dv)), TensorType(tq.dtype, (b, hq, sq, total))]


def _attention_macs(node: Any) -> int:
    """Q @ K^T plus P @ V: rows (B * Hq * Sq) x total keys x (Dk + Dv)."""
    shapes = [None if node.input(i) is None else node.input(i).shape for i in range(5)]
    qs, ks, vs, ps = shapes[0], shapes[1], shapes[2], shapes[4]
    if any(sh is None or numel(sh) is None for sh in (qs, ks, vs)) or (node.input(4) is not None and numel(ps) is None):
        return 0
    skv = (ks[-2] if len(ks) == 4 else ks[1]) + (ps[2] if node.input(4) is not None else 0)
    if len(qs) == 4:
        rows, dk, dv = qs[0] * qs[1] * qs[2], qs[3], vs[3]
    else:
        hq, hkv = node.attr("q_num_heads") or 1, node.attr("kv_num_heads") or 1
        rows, dk, dv = qs[0] * qs[1] * hq, qs[2] // hq, vs[2] // hkv
    return int(rows * skv * (dk + dv))


@defop("Attention", kind=Kind.OPAQUE, inputs=(3, 7), outputs=(1, 4), since_version=23, macs=_attention_macs,
       infer=_infer_attention,
       attrs={"is_causal": 0, "kv_num_heads": None, "q_num_heads": None, "qk_matmul_output_mode": 0,
              "scale": None, "softcap": 0.0, "softmax_precision": None, "left_window_size": -1,
              "right_window_size": -1})
def attention(ctx, q: np.ndarray, k: np.ndarray, v: np.ndarray, attn_mask: np.ndarray | None = None,
              past_key: np.ndarray | None = None, past_value: np.ndarray | None = None,
              nonpad_kv_seqlen: np.ndarray | None = None, *, is_causal: int, kv_num_heads: int | None,
              q_num_heads: int | None, qk_matmul_output_mode: int, scale: float | None, softcap: float,
              softmax_precision: int | None, left_window_size: int, right_window_size: int) -> tuple[np.ndarray, ...]:
    """Scaled dot-product attention (MHA/GQA/MQA) with masks, KV cache, softcap and sliding windows.

    Arithmetic stays in the inputs' type, as the spec's pattern reads; only the softmax may run in
    `softmax_precision`. A query row with no visible key gives a zero output row (not NaN).
    """
    if (past_key is None) != (past_value is None):
        raise ValueError("Attention: past_key and past_value must be given together")
    if nonpad_kv_seqlen is not None and past_key is not None:
        raise ValueError("Attention: nonpad_kv_seqlen cannot be combined with past_key/past_value")
    if left_window_size < -1 or right_window_size < -1:
        raise ValueError("Attention: window sizes must be -1 or nonnegative")
    dt = q.dtype
    rank3 = q.ndim == 3
    if rank3:
        q, k, v = _split_heads(q, q_num_heads), _split_heads(k, kv_num_heads), _split_heads(v, kv_num_heads)
    if past_key is not None:
        k, v = np.concatenate((past_key, k), axis=2), np.concatenate((past_value, v), axis=2)
    present_k, present_v = k, v
    b, hq, sq, d = q.shape
    skv = k.shape[2]

    # Additive bias: float mask values where a key is allowed, -inf where it is not.
    bias: np.ndarray = np.zeros((sq, skv), dt)
    allowed: np.ndarray | None = None
    if attn_mask is not None:
        if attn_mask.shape[-1] < skv:  # a shorter mask: the missing keys are masked out
            pad = [(0, 0)] * (attn_mask.ndim - 1) + [(0, skv - attn_mask.shape[-1])]
            attn_mask = np.pad(attn_mask, pad, constant_values=False if attn_mask.dtype == bool else -np.inf)
        if attn_mask.dtype == bool:
            allowed = attn_mask
        else:
            bias = bias + attn_mask.astype(dt)
    if past_key is not None:
        offset: Any = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:
        offset = nonpad_kv_seqlen.reshape(-1).astype(np.int64) - sq
    else:
        offset = 0
    structural = _attention_allowed(sq, skv, offset, bool(is_causal), left_window_size, right_window_size)
    if structural is not None:
        allowed = structural if allowed is None else allowed & structural
    if nonpad_kv_seqlen is not None:
        pad_ok = (np.arange(skv)[None, :] < nonpad_kv_seqlen.reshape(-1, 1)).reshape(b, 1, 1, skv)
        allowed = pad_ok if allowed is None else allowed & pad_ok
    if allowed is not None:
        bias = np.where(allowed, bias, dt.type(-np.inf))

    if hq != k.shape[1]:  # grouped-query attention: each KV head serves hq/hkv query heads
        if hq % k.shape[1]:
            raise ValueError(f"Attention: {hq} query heads are not a multiple of {k.shape[1]} KV heads")
        k, v = np.repeat(k, hq // k.shape[1], axis=1), np.repeat(v, hq // k.shape[1], axis=1)
    s = dt.type(np.sqrt(scale if scale is not None else 1.0 / np.sqrt(d)))
    qk = np.matmul((q * s).astype(dt), np.swapaxes(k * s, -1, -2).astype(dt)).astype(dt)
    capped = (np.tanh(qk / dt.type(softcap)) * dt.type(softcap)).astype(dt) if softcap > 0 else qk
    logits = (capped + bias).astype(dt)
    probs = _masked_softmax(logits.astype(_np_dtype(softmax_precision, dt)))
    dead = np.isneginf(bias.max(axis=-1, keepdims=True))  # rows with no visible key
    probs = np.where(dead, probs.dtype.type(0), probs)
    y = np.matmul(probs.astype(dt), v).astype(dt)
    if rank3:
        y = y.transpose(0, 2, 1, 3).reshape(b, sq, -1)
    mode = qk_matmul_output_mode
    if mode not in (0, 1, 2, 3):
        raise NotImplementedError(f"Attention: qk_matmul_output_mode {mode} is not supported")
    qk_out = (qk, capped, np.broadcast_to(logits, qk.shape), probs)[mode].astype(dt)
    return y, present_k, present_v, qk_out


def _infer_linear_attention(ctx: InferContext, q: ValueType | None, k: ValueType | None = None,
                            v: ValueType | None = None, past: ValueType | None = None, *_: Any,
                            **attrs: Any) -> list[ValueType | None]:
    tq, tv, tp = map(_tt, (q, v, past))
    hq, hkv = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
    if tq is None or tq.shape is None or tv is None or tv.shape is None or not hq or not hkv:
        return [None, None]
    dk = tq.shape[2] // hq if isinstance(tq.shape[2], int) else None
    dv = tv.shape[2] // hkv if isinstance(tv.shape[2], int) else None
    state = TensorType(tp.dtype if tp is not None else tq.dtype, (tq.shape[0], hkv, dk, dv))
    return [TensorType(tq.dtype, (tq.shape[0], tq.shape[1], hq * dv if dv is not None else None)), state]


@defop("LinearAttention", kind=Kind.OPAQUE, inputs=(3, 6), outputs=(1, 2), since_version=27,
       infer=_infer_linear_attention,
       attrs={"chunk_size": 64, "kv_num_heads": None, "q_num_heads": None, "scale": 0.0,
              "update_rule": "gated_delta"})
def linear_attention(ctx, query: np.ndarray, key: np.ndarray, value: np.ndarray, past_state: np.ndarray | None = None,
                     decay: np.ndarray | None = None, beta: np.ndarray | None = None, *, chunk_size: int,
                     kv_num_heads: int | None, q_num_heads: int | None, scale: float,
                     update_rule: str) -> tuple[np.ndarray, np.ndarray]:
    """Recurrent (linear/gated/delta/gated-delta) attention, token by token, state in float32.

    Per KV head the state S (d_k, d_v) is decayed by exp(g), corrected towards v along k (delta rules)
    and updated with k (x) v; each query head reads the state of its KV group: o = scale * q^T S.
    """
    if update_rule not in ("linear", "gated", "delta", "gated_delta"):
        raise NotImplementedError(f"LinearAttention: update_rule {update_rule!r} is not supported")
    if not q_num_heads or not kv_num_heads or q_num_heads % kv_num_heads:
        raise ValueError("LinearAttention: q_num_heads must be a positive multiple of kv_num_heads")
    gated, delta = update_rule in ("gated", "gated_delta"), update_rule in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise ValueError(f"LinearAttention: update_rule {update_rule!r} needs exactly its decay/beta inputs")
    f32 = np.float32
    q, k, v = (_split_heads(a.astype(f32), h) for a, h in ((query, q_num_heads), (key, kv_num_heads),
                                                            (value, kv_num_heads)))
    b, _, t, dk = q.shape
    dv, group = v.shape[-1], q_num_heads // kv_num_heads
    g = None if decay is None else decay.astype(f32).reshape(b, t, kv_num_heads, -1).transpose(0, 2, 1, 3)
    bt = None if beta is None else beta.astype(f32).reshape(b, t, -1, 1).transpose(0, 2, 1, 3)
    state = np.zeros((b, kv_num_heads, dk, dv), f32) if past_state is None else past_state.astype(f32)
    s = f32(scale) if scale else f32(1.0 / np.sqrt(dk))
    out = np.empty((b, q_num_heads, t, dv), f32)
    for i in range(t):
        if g is not None:
            state = state * np.exp(g[:, :, i])[..., None]  # per head (.., 1) or per key dim (.., d_k)
        vt = v[:, :, i]
        if bt is not None:
            vt = bt[:, :, i] * (vt - np.einsum("bhdm,bhd->bhm", state, k[:, :, i]))
        state = state + k[:, :, i, :, None] * vt[:, :, None, :]
        qg = q[:, :, i].reshape(b, kv_num_heads, group, dk)  # query heads grouped by their KV head
        out[:, :, i] = s * np.einsum("bhgd,bhdm->bhgm", qg, state).reshape(b, q_num_heads, dv)
    y = out.transpose(0, 2, 1, 3).reshape(b, t, q_num_heads * dv).astype(query.dtype)
    return y, state.astype(past_state.dtype if past_state is not None else query.dtype)


def _infer_flex(ctx: InferContext, q: ValueType | None, k: ValueType | None = None, v: ValueType | None = None,
                **_: Any) -> list[ValueType | None]:
    tq, tv = _tt(q), _tt(v)
    if tq is None or tq.shape is None or tv is None or tv.shape is None:
        return [None]
    return [TensorType(tq.dtype, tuple(tq.shape[:3]) + (tv.shape[3],))]


@defop("FlexAttention", domain="ai.onnx.preview", kind=Kind.OPAQUE, inputs=(3, 3), outputs=(1, 1),
       infer=_infer_flex, attrs={"prob_mod": None, "score_mod": None, "scale": None, "softmax_precision": None})
def flex_attention(ctx, q: np.ndarray, k: np.ndarray, v: np.ndarray, *, prob_mod: Any, score_mod: Any,
                   scale: float | None, softmax_precision: int | None) -> np.ndarray:
    """Attention with user subgraphs on the scores (before softmax) and the probabilities (after).

    Scores come from the input type; the softmax, the modifiers and P @ V run in `softmax_precision`
    (float32 unless the inputs are float64).
    """
    hq, hkv = q.shape[1], k.shape[1]
    if hq % hkv:
        raise ValueError(f"FlexAttention: {hq} query heads are not a multiple of {hkv} KV heads")
    k, v = np.repeat(k, hq // hkv, axis=1), np.repeat(v, hq // hkv, axis=1)
    s = np.sqrt(np.float32(scale if scale is not None else 1.0 / np.sqrt(q.shape[3]))).astype(q.dtype)
    work = _np_dtype(softmax_precision, np.float64 if q.dtype == np.float64 else np.float32)
    scores = np.matmul(q * s, np.swapaxes(k * s, -1, -2)).astype(work)
    if score_mod is not None:
        scores = np.asarray(ctx.run_graph(score_mod, [scores])[0], dtype=work)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    if prob_mod is not None:
        probs = np.asarray(ctx.run_graph(prob_mod, [probs])[0], dtype=work)
    return np.matmul(probs, v.astype(work)).astype(q.dtype)


@defop("RotaryEmbedding", kind=Kind.OPAQUE, inputs=(3, 4), outputs=(1, 1), since_version=23,
       attrs={"interleaved": 0, "num_heads": None, "rotary_embedding_dim": 0}, infer=same_as_input())
def rotary_embedding(ctx, x: np.ndarray, cos_cache: np.ndarray, sin_cache: np.ndarray,
                     position_ids: np.ndarray | None = None, *, interleaved: int, num_heads: int | None,
                     rotary_embedding_dim: int) -> np.ndarray:
    """RoPE on (B, H, S, D) or (B, S, H*D) inputs; rotates the first `rotary_embedding_dim` features."""
    if x.ndim == 4:
        xs = x.transpose(0, 2, 1, 3)  # (B, S, H, D)
    else:
        if not num_heads:
            raise ValueError("RotaryEmbedding: 3-D input needs num_heads")
        xs = x.reshape(x.shape[0], x.shape[1], num_heads, -1)
    rd = rotary_embedding_dim or xs.shape[-1]
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    if cos_cache.shape[-1] != rd // 2 or sin_cache.shape[-1] != rd // 2:
        raise ValueError(f"RotaryEmbedding: caches must have {rd // 2} features, got {cos_cache.shape[-1]}")
    cos, sin = cos_cache[:, :, None, :], sin_cache[:, :, None, :]
    rot = xs[..., :rd]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else (rot[..., : rd // 2], rot[..., rd // 2:])
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rotated = np.stack((real, imag), axis=-1).reshape(rot.shape) if interleaved else np.concatenate((real, imag), -1)
    out = np.concatenate((rotated, xs[..., rd:]), axis=-1).astype(x.dtype)
    return out.transpose(0, 2, 1, 3) if x.ndim == 4 else out.reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Training optimizers (ai.onnx.preview.training): one update step for n tensors at once. Inputs are
# R, T, then n tensors of each operand group (X..., G..., state...); outputs X_new..., state_new...


def _num(a: np.ndarray) -> float:
    return float(np.asarray(a).reshape(-1)[0])


def _groups(tensors: tuple[np.ndarray, ...], k: int, op: str) -> list[tuple[np.ndarray, ...]]:
    if len(tensors) % k:
        raise ValueError(f"{op}: expected {k} groups of equally many tensors, got {len(tensors)} inputs")
    n = len(tensors) // k
    return list(zip(*(tensors[i * n:(i + 1) * n] for i in range(k))))


def _flat(per_tensor: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """[(x1, v1), (x2, v2)] -> (x1, x2, v1, v2): outputs grouped by kind."""
    return tuple(a for group in zip(*per_tensor) for a in group)


def _infer_optimizer(ctx: InferContext, *types: ValueType | None, **_: Any) -> list[ValueType | None]:
    return list(types[2:2 + len(ctx.node.outputs)])


_TRAINING = "ai.onnx.preview.training"


@defop("Adagrad", domain=_TRAINING, inputs=(3, None), outputs=(1, None), infer=_infer_optimizer,
       attrs={"decay_factor": 0.0, "epsilon": 1e-6, "norm_coefficient": 0.0})
def adagrad(ctx, r: np.ndarray, t: np.ndarray, *tensors: np.ndarray, decay_factor: float, epsilon: float,
            norm_coefficient: float) -> tuple[np.ndarray, ...]:
    """X -= r * G' / (sqrt(H + G'^2) + eps), G' = G + norm * X, r = R / (1 + T * decay)."""
    rate = _num(r) / (1 + _num(t) * decay_factor)
    out = []
    for x, g, h in _groups(tensors, 3, "Adagrad"):
        g = norm_coefficient * x + g
        h_new = h + g * g
        out.append(((x - rate * g / (np.sqrt(h_new) + epsilon)).astype(x.dtype), h_new.astype(h.dtype)))
    return _flat(out)


@defop("Momentum", domain=_TRAINING, inputs=(3, None), outputs=(1, None), infer=_infer_optimizer,
       attrs={"alpha": REQUIRED, "beta": REQUIRED, "mode": REQUIRED, "norm_coefficient": REQUIRED})
def momentum(ctx, r: np.ndarray, t: np.ndarray, *tensors: np.ndarray, alpha: float, beta: float, mode: str,
             norm_coefficient: float) -> tuple[np.ndarray, ...]:
    """Standard or Nesterov momentum: V = alpha V + beta' G'; X -= R V (or R (G' + alpha V))."""
    if mode not in ("standard", "nesterov"):
        raise NotImplementedError(f"Momentum: mode {mode!r} is not supported")
    b = beta if _num(t) > 0 else 1.0
    out = []
    for x, g, v in _groups(tensors, 3, "Momentum"):
        g = norm_coefficient * x + g
        v_new = alpha * v + b * g
        step = g + alpha * v_new if mode == "nesterov" else v_new
        out.append(((x - _num(r) * step).astype(x.dtype), v_new.astype(v.dtype)))
    return _flat(out)


@defop("Adam", domain=_TRAINING, inputs=(3, None), outputs=(1, None), infer=_infer_optimizer,
       attrs={"alpha": 0.9, "beta": 0.999, "epsilon": 1e-6, "norm_coefficient": 0.0,
              "norm_coefficient_post": 0.0})
def adam(ctx, r: np.ndarray, t: np.ndarray, *tensors: np.ndarray, alpha: float, beta: float, epsilon: float,
         norm_coefficient: float, norm_coefficient_post: float) -> tuple[np.ndarray, ...]:
    """Adam with bias-corrected step size and optional pre/post L2 regularization."""
    tt, rate = _num(t), _num(r)
    if tt > 0:
        rate *= np.sqrt(1 - beta ** tt) / (1 - alpha ** tt)
    out = []
    for x, g, v, h in _groups(tensors, 4, "Adam"):
        g = norm_coefficient * x + g
        v_new = alpha * v + (1 - alpha) * g
        h_new = beta * h + (1 - beta) * g * g
        x_new = (1 - norm_coefficient_post) * (x - rate * v_new / (np.sqrt(h_new) + epsilon))
        out.append((x_new.astype(x.dtype), v_new.astype(v.dtype), h_new.astype(h.dtype)))
    return _flat(out)


# ---------------------------------------------------------------------------------------------
# NonMaxSuppression and Det.


def _corners(boxes: np.ndarray, center_point_box: int) -> np.ndarray:
    """(N, 4) boxes -> (N, 4) as [y_min, x_min, y_max, x_max]."""
    if center_point_box:
        xc, yc, w, h = boxes.T
        return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=1)
    y1, x1, y2, x2 = boxes.T
    return np.stack([np.minimum(y1, y2), np.minimum(x1, x2), np.maximum(y1, y2), np.maximum(x1, x2)], axis=1)


def _iou_matrix(c: np.ndarray) -> np.ndarray:
    ih = np.clip(np.minimum(c[:, None, 2], c[None, :, 2]) - np.maximum(c[:, None, 0], c[None, :, 0]), 0, None)
    iw = np.clip(np.minimum(c[:, None, 3], c[None, :, 3]) - np.maximum(c[:, None, 1], c[None, :, 1]), 0, None)
    inter = ih * iw
    area = (c[:, 2] - c[:, 0]) * (c[:, 3] - c[:, 1])
    union = area[:, None] + area[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where((inter > 0) & (area[:, None] > 0) & (area[None, :] > 0) & (union > 0), inter / union, 0)
    return iou


def _infer_nms(ctx: InferContext, *types: Any, **_: Any) -> list[ValueType | None]:
    return [TensorType(DType.INT64, (ctx.dim("selected"), 3))]


@defop("NonMaxSuppression", kind=Kind.OPAQUE, inputs=(2, 5), outputs=(1, 1), since_version=10,
       attrs={"center_point_box": 0}, infer=_infer_nms)
def non_max_suppression(ctx, boxes: np.ndarray, scores: np.ndarray, max_output_boxes_per_class: Any = None,
                        iou_threshold: Any = None, score_threshold: Any = None, *,
                        center_point_box: int) -> np.ndarray:
    """Greedy per (batch, class) selection by descending score; IoU > threshold suppresses."""
    def scalar(a: Any, default: float) -> float:
        return default if a is None or np.size(a) == 0 else np.asarray(a).reshape(-1)[0].item()

    limit = max(int(scalar(max_output_boxes_per_class, 0)), 0)
    iou_t = scalar(iou_threshold, 0.0)
    selected: list[tuple[int, int, int]] = []
    for bi in range(boxes.shape[0]):
        iou = _iou_matrix(_corners(boxes[bi].astype(np.float64), center_point_box))
        for ci in range(scores.shape[1]):
            sc = scores[bi, ci]
            order = np.argsort(-sc.astype(np.float64), kind="stable")
            if score_threshold is not None and np.size(score_threshold):
                order = order[sc[order] > scalar(score_threshold, 0.0)]
            kept: list[int] = []
            for i in order:
                if len(kept) >= limit:
                    break
                if not kept or not np.any(iou[i, kept] > iou_t):
                    kept.append(int(i))
            selected.extend((bi, ci, i) for i in kept)
    return np.array(selected, np.int64).reshape(-1, 3)


def _infer_det(ctx: InferContext, x: ValueType | None, **_: Any) -> list[ValueType | None]:
    tx = _tt(x)
    if tx is None:
        return [None]
    return [TensorType(tx.dtype, None if tx.shape is None else tuple(tx.shape[:-2]))]


@defop("Det", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), since_version=11, infer=_infer_det)
def det(ctx, x: np.ndarray) -> np.ndarray:
    """Determinant of the trailing square matrices."""
    return np.asarray(np.linalg.det(x)).astype(x.dtype)
