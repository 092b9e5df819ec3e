"""Quantization accuracy tools: per-layer sensitivity, fp32 fallback under an error budget, cross-layer
equalization, bias correction and SmoothQuant.

* `layer_sensitivity`: SQNR (dB) of each linear layer's output when only that layer is int8, against
  fp32, over the calibration data: where int8 hurts, independent of what the other layers do.
* `quantize_with_budget`: static int8, then the least robust layers back to fp32 one at a time until
  the model's output error on the calibration data is within the budget.
* `equalize` (registered pass, exact up to rounding): cross-layer equalization (Nagel et al. 2019,
  data-free) of Conv -> [Relu | LeakyRelu] -> Conv chains, so per-channel weight ranges of depthwise
  convolutions stop spanning orders of magnitude (per-tensor int8 of the next activation benefits too).
* `bias_correction`: after quantization, subtract each layer's mean output error per channel.
* `smooth_quant` (exact in fp32): moves activation outlier channels of MatMul/Gemm inputs into the
  weights (Xiao et al. 2023), folding the division into the preceding LayerNormalization.

Calibration data is an iterable of feed dicts that can be iterated more than once (a list, or
compiler.calibration.Calibration); every measurement streams over it batch by batch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ir import DType, Graph, Interpreter, Node, Value
from ir.ops import constant_value

from .base import Pass, register_pass
from .quantize import LINEAR_RULES, QuantReport, quantize_static

Batches = Iterable[Mapping[str, np.ndarray]]  # feed dicts; iterated once per measurement

#: Activations through which a positive per-channel scale commutes: f(x / s) == f(x) / s for s > 0.
HOMOGENEOUS_ACTIVATIONS = ("Relu", "LeakyRelu")
_EQUALIZE_SWEEPS = 20  # chains of equalized pairs converge in a few sweeps (each pair balances exactly)
_EQUALIZE_TOL = 1e-4  # a sweep that moves no scale by more than this ends the iteration
_SMOOTH_CLAMP = 1e4  # smoothing scales stay within [1/clamp, clamp]: a dead channel never explodes
_SHAPE_READERS = ("Shape", "Size")  # read no values: indifferent to smoothing


# ---------------------------------------------------------------------------------------------
# Helpers.


def _std(n: Node) -> bool:
    return n.domain in ("", "ai.onnx")


def _f32_const(v: Value | None) -> np.ndarray | None:
    c = constant_value(v)
    return c if c is not None and c.dtype == np.float32 else None


def _set_const(graph: Graph, n: Node, i: int, array: np.ndarray, suffix: str) -> None:
    """Give input `i` of `n` a new initializer (the old one may be shared); drop the old one if unread."""
    old = n.input(i)
    base = old.name if old is not None and old.name else f"{n.name}_{i}"
    n.set_input(i, graph.add_initializer(graph.unique_name(f"{base}_{suffix}"), array.astype(np.float32)))
    if old is not None and old.is_initializer and not old.uses and not old.is_graph_output \
            and graph.initializers.get(old.name) is old:
        graph.remove_initializer(old)


def _run_observed(graph: Graph, feeds: Mapping[str, np.ndarray], names: set[str]) -> dict[str, np.ndarray]:
    """The values named in `names` (graph inputs included) when `graph` runs on `feeds`."""
    seen: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in feeds.items() if k in names}

    def observe(v: Value, arr: Any) -> None:
        if v.name in names and isinstance(arr, np.ndarray):
            seen[v.name] = arr

    Interpreter(observe=observe).run(graph, feeds)
    return seen


def _channel_reduce(x: np.ndarray, axis: int, fn: Callable[..., np.ndarray]) -> np.ndarray:
    """`fn` over every axis but `axis` (in float64)."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    return fn(x.reshape(x.shape[0], -1), axis=1)


def _linear_out_axis(n: Node, rank: int) -> int:
    """Channel axis of a linear node's output: 1 for convolutions, the last axis for Gemm/MatMul."""
    return 1 if n.op_type in ("Conv", "ConvTranspose") else rank - 1


def _sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, np.finfo(np.float64).tiny) / noise)


# ---------------------------------------------------------------------------------------------
# Error measurement.


def output_error(fp32: Graph, quantized: Graph, calibration: Batches, metric: str = "l2") -> float:
    """Error of `quantized`'s outputs against `fp32`'s over the calibration data.

    "l2": relative L2 error sqrt(sum |y_q - y|^2 / sum |y|^2) over all float outputs;
    "top1": the fraction of rows whose argmax (last axis of the first output) differs.
    """
    if metric not in ("l2", "top1"):
        raise ValueError(f"metric must be 'l2' or 'top1', got {metric!r}")
    interp = Interpreter()
    num = den = 0.0
    for feeds in calibration:
        ref, out = interp.run(fp32, feeds), interp.run(quantized, feeds)
        if metric == "top1":
            a, b = np.asarray(ref[0]), np.asarray(out[0])
            num += float(np.sum(a.argmax(-1) != b.argmax(-1)))
            den += float(a.size // a.shape[-1]) if a.ndim else 1.0
            continue
        for a, b in zip(ref, out):
            if isinstance(a, np.ndarray) and a.dtype.kind == "f":
                num += float(np.sum((np.asarray(b, np.float64) - a) ** 2))
                den += float(np.sum(np.asarray(a, np.float64) ** 2))
    if metric == "top1":
        return num / den if den else 0.0
    return math.sqrt(num / den) if den else math.sqrt(num)


def _layer_outputs(graph: Graph, names: Iterable[str]) -> dict[str, str]:
    """Node name -> name of its first output, for the named nodes of `graph`."""
    wanted = set(names)
    return {n.name: n.outputs[0].name for n in graph.nodes if n.name in wanted}


def _sqnr_per_layer(fp32: Graph, quantized: Graph, layers: Mapping[str, str],
                    calibration: Batches) -> dict[str, float]:
    """SQNR (dB) at each layer's output value (node name -> value name) of `quantized` vs `fp32`."""
    names = set(layers.values())
    signal = dict.fromkeys(names, 0.0)
    noise = dict.fromkeys(names, 0.0)
    for feeds in calibration:
        ref, got = _run_observed(fp32, feeds, names), _run_observed(quantized, feeds, names)
        for k in names & ref.keys() & got.keys():
            a = np.asarray(ref[k], np.float64)
            signal[k] += float(np.sum(a * a))
            noise[k] += float(np.sum((np.asarray(got[k], np.float64) - a) ** 2))
    return {layer: _sqnr_db(signal[v], noise[v]) for layer, v in layers.items()}


# ---------------------------------------------------------------------------------------------
# Sensitivity and fp32 fallback.


def quantizable_layers(graph: Graph, calibration: Batches, **quant_options: Any) -> list[str]:
    """Names of the linear nodes static int8 quantizes (on a copy: `graph` is unchanged)."""
    return [r.layer for r in quantize_static(graph.copy(), calibration, **quant_options).layers]


def layer_sensitivity(graph: Graph, calibration: Batches, layers: Sequence[str] | None = None,
                      **quant_options: Any) -> dict[str, float]:
    """SQNR (dB) of each layer's output when only that layer is int8 (higher: more robust).

    Each layer is quantized alone, so its score is its own damage, not the error it inherits from
    the layers before it (which would always rank the last layers worst). Costs one quantization and
    two passes over the calibration data per layer; `layers` restricts the set (default: every layer
    static int8 quantizes). `quant_options` go to quantize_static.
    """
    exclude = set(quant_options.pop("exclude", ()))
    names = [n for n in (layers if layers is not None else quantizable_layers(graph, calibration, **quant_options))
             if n not in exclude]
    linear = [n.name for n in graph.nodes if n.op_type in LINEAR_RULES]
    out: dict[str, float] = {}
    for name in names:
        q = graph.copy()
        quantize_static(q, calibration, exclude=[n for n in linear if n != name], **quant_options)
        out.update(_sqnr_per_layer(graph, q, _layer_outputs(graph, [name]), calibration))
    return out


def quantize_with_budget(graph: Graph, calibration: Batches, max_error: float, metric: str = "l2",
                         max_fallbacks: int = 8, bias_correct: bool = False, **quant_options: Any) -> QuantReport:
    """Static int8 in place, with the least robust layers kept in fp32 until the output error (see
    `output_error`, on the calibration data) is at most `max_error`.

    Layers fall back in order of `layer_sensitivity` (lowest SQNR first), at most `max_fallbacks`;
    the report's `skipped` says which fell back and why. Warns when the cap is reached first.
    """
    fp32 = graph.copy()
    exclude = list(quant_options.pop("exclude", ()))
    reasons: dict[str, str] = {}
    sensitivity: dict[str, float] | None = None

    def trial(g: Graph) -> QuantReport:
        report = quantize_static(g, calibration, exclude=exclude, **quant_options)
        if bias_correct:
            bias_correction(fp32, g, calibration)
        return report

    while True:
        q = fp32.copy()
        report = trial(q)
        err = output_error(fp32, q, calibration, metric)
        left = [r.layer for r in report.layers]
        if err <= max_error or len(reasons) >= max_fallbacks or not left:
            break
        if sensitivity is None:
            sensitivity = layer_sensitivity(fp32, calibration, layers=left, **quant_options)
        worst = min(left, key=lambda n: sensitivity.get(n, math.inf))  # type: ignore[union-attr]
        exclude.append(worst)
        reasons[worst] = f"fp32 fallback: SQNR {sensitivity.get(worst, math.inf):.1f} dB alone; " \
                         f"output {metric} error {err:.4g} > budget {max_error:.4g}"
    if err > max_error:
        warnings.warn(f"quantize_with_budget: output {metric} error {err:.4g} exceeds the budget {max_error:.4g} "
                      f"after {len(reasons)} fallbacks", stacklevel=2)
    report = trial(graph)
    report.skipped.update(reasons)
    return report


# ---------------------------------------------------------------------------------------------
# Bias correction.


def _bias_input(n: Node) -> tuple[Value, Value | None] | None:
    """(bias value, its DequantizeLinear scale or None for a float bias) of a linear node, if any."""
    rule = LINEAR_RULES.get(n.op_type)
    b = n.input(rule.bias) if rule is not None and rule.bias is not None else None
    if b is None:
        return None
    p = b.producer
    if p is not None and p.op_type == "DequantizeLinear" and constant_value(p.input(0)) is not None \
            and constant_value(p.input(1)) is not None:
        return b, p.input(1)
    return (b, None) if _f32_const(b) is not None else None


def bias_correction(fp32: Graph, quantized: Graph, calibration: Batches) -> dict[str, float]:
    """Subtract from each quantized layer's bias its mean output error per channel, E[y_q] - E[y].

    Empirical bias correction (Nagel et al. 2019): layers are corrected in order, each measured with
    the corrections before it in place, so an error corrected upstream is not corrected twice. An
    int32 bias read through DequantizeLinear stays int32 (the correction is a multiple of its scale).
    Returns, per corrected layer, the largest correction relative to the layer's output RMS.
    Layers without a constant bias are left alone. One fp32 pass, then one pass per layer.
    """
    ref = _layer_outputs(fp32, (n.name for n in quantized.nodes))
    layers = [n for n in quantized.nodes if n.op_type in LINEAR_RULES and ref.get(n.name) == n.outputs[0].name
              and _dequantized(n.input(1)) and _bias_input(n) is not None]
    names = [n.outputs[0].name for n in layers]
    expected = _channel_means(fp32, layers, calibration)
    rms = {k: math.sqrt(v[1]) for k, v in expected.items()}
    done: dict[str, float] = {}
    for n, name in zip(layers, names):
        if name not in expected:
            continue
        delta = _channel_means(quantized, [n], calibration)[name][0] - expected[name][0]
        _shift_bias(quantized, n, delta)
        done[n.name] = float(np.max(np.abs(delta))) / (rms[name] or 1.0)
    return done


def _channel_means(graph: Graph, layers: Sequence[Node], calibration: Batches) -> dict[str, tuple[np.ndarray, float]]:
    """Per layer output (by value name): its mean per output channel, and its mean square, over the data."""
    axes = {n.outputs[0].name: n for n in layers}
    sums: dict[str, np.ndarray] = {}
    sq: dict[str, float] = {}
    count: dict[str, float] = {}
    for feeds in calibration:
        for k, a in _run_observed(graph, feeds, set(axes)).items():
            axis = _linear_out_axis(axes[k], a.ndim)
            s = _channel_reduce(a, axis, np.sum)
            sums[k] = s if k not in sums else sums[k] + s
            sq[k] = sq.get(k, 0.0) + float(np.sum(np.square(a, dtype=np.float64)))
            count[k] = count.get(k, 0.0) + a.size / a.shape[axis]
    return {k: (sums[k] / count[k], sq[k] / (count[k] * sums[k].size)) for k in sums if count[k]}


def _dequantized(v: Value | None) -> bool:
    return v is not None and v.producer is not None and v.producer.op_type == "DequantizeLinear"


def _shift_bias(graph: Graph, n: Node, delta: np.ndarray) -> None:
    """bias -= delta (per output channel), in the bias's own representation."""
    b, scale = _bias_input(n)  # type: ignore[misc]
    if scale is None:
        rule = LINEAR_RULES[n.op_type]
        c = _f32_const(b)
        assert c is not None and rule.bias is not None
        _set_const(graph, n, rule.bias, c - delta.reshape(c.shape), "corrected")
        return
    dq = b.producer
    assert dq is not None
    q = constant_value(dq.input(0))
    s = np.broadcast_to(np.asarray(constant_value(scale), np.float64), q.shape)  # type: ignore[arg-type,union-attr]
    new = np.clip(np.rint(q.astype(np.float64) - delta.reshape(q.shape) / s), -(2**31), 2**31 - 1).astype(np.int32)
    old = dq.input(0)
    dq.set_input(0, graph.add_initializer(graph.unique_name(f"{old.name}_corrected"), new))  # type: ignore[union-attr]
    if old is not None and old.is_initializer and not old.uses and graph.initializers.get(old.name) is old:
        graph.remove_initializer(old)


# ---------------------------------------------------------------------------------------------
# Cross-layer equalization.


@dataclasses.dataclass
class _Pair:
    """A Conv whose output channels feed, through a homogeneous activation, only the inputs of `next`."""

    first: Node
    next: list[Node]


def _conv_weight(n: Node) -> np.ndarray | None:
    return _f32_const(n.input(1)) if n.op_type == "Conv" and _std(n) else None


def _equalize_pairs(graph: Graph) -> list[_Pair]:
    pairs: list[_Pair] = []
    for a in graph.nodes:
        w = _conv_weight(a)
        if w is None or w.ndim < 3 or (a.input(2) is not None and _f32_const(a.input(2)) is None):
            continue
        y = a.outputs[0]
        z = y
        if len(y.uses) == 1 and y.consumers[0].op_type in HOMOGENEOUS_ACTIVATIONS and _std(y.consumers[0]) \
                and not y.is_graph_output:
            z = y.consumers[0].outputs[0]
        readers = z.consumers
        if y.is_graph_output or z.is_graph_output or not readers:
            continue
        if all(_conv_weight(r) is not None and [i for m, i in z.uses if m is r] == [0]
               and _conv_weight(r).shape[1] * int(r.attr("group", 1)) == w.shape[0]  # type: ignore[union-attr]
               for r in readers):
            pairs.append(_Pair(a, readers))
    return pairs


def _input_channel_view(w: np.ndarray, group: int) -> np.ndarray:
    """A Conv weight [M, C/g, k...] as [g, M/g, C/g, -1]: input channel i is (i // (C/g), :, i % (C/g))."""
    return w.reshape(group, w.shape[0] // group, w.shape[1], -1)


def _input_ranges(w: np.ndarray, group: int) -> np.ndarray:
    """max |w| per input channel of a (grouped) Conv weight."""
    return np.abs(_input_channel_view(w, group)).max(axis=(1, 3)).reshape(-1)


def _scale_inputs(w: np.ndarray, group: int, s: np.ndarray) -> np.ndarray:
    v = _input_channel_view(w.astype(np.float64), group) * s.reshape(group, 1, -1, 1)
    return v.reshape(w.shape)


def equalize(graph: Graph) -> bool:
    """Cross-layer equalization in place; returns whether any weight changed.

    For each Conv -> [Relu | LeakyRelu] -> Conv(s) chain, output channel i of the first is divided by
    s_i = sqrt(r1_i * r2_i) / r2_i and input channel i of the readers multiplied by it (r: max |w| of
    the channel), so both ranges become sqrt(r1_i * r2_i). Exact: the activations commute with a
    positive scale. Sweeps repeat until the scales settle (chains share layers).
    """
    pairs = _equalize_pairs(graph)
    if not pairs:
        return False
    weights: dict[int, np.ndarray] = {}
    biases: dict[int, np.ndarray] = {}
    for p in pairs:
        for n in [p.first, *p.next]:
            weights.setdefault(id(n), _conv_weight(n).astype(np.float64))  # type: ignore[union-attr]
        b = _f32_const(p.first.input(2))
        if b is not None:
            biases[id(p.first)] = b.astype(np.float64)
    changed = False
    for _ in range(_EQUALIZE_SWEEPS):
        moved = 0.0
        for p in pairs:
            w1 = weights[id(p.first)]
            r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
            r2 = np.max([_input_ranges(weights[id(r)], int(r.attr("group", 1))) for r in p.next], axis=0)
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(r1 * np.where(ok, r2, 1.0)) / np.where(ok, r2, 1.0), 1.0)
            moved = max(moved, float(np.max(np.abs(np.log(s)))))
            weights[id(p.first)] = w1 / s.reshape((-1,) + (1,) * (w1.ndim - 1))
            if id(p.first) in biases:
                biases[id(p.first)] = biases[id(p.first)] / s
            for r in p.next:
                weights[id(r)] = _scale_inputs(weights[id(r)], int(r.attr("group", 1)), s)
        changed |= moved > 0.0
        if moved < _EQUALIZE_TOL:
            break
    if not changed:
        return False
    nodes = {id(n): n for p in pairs for n in [p.first, *p.next]}
    for k, w in weights.items():
        _set_const(graph, nodes[k], 1, w, "equalized")
    for k, b in biases.items():
        _set_const(graph, nodes[k], 2, b, "equalized")
    return True


@register_pass
class Equalize(Pass):
    """Cross-layer equalization (Nagel et al. 2019) of Conv -> [Relu | LeakyRelu] -> Conv chains: per
    output channel rescaling that balances weight ranges before per-tensor or per-channel int8 (exact)."""

    name = "equalize"

    def run(self, graph: Graph) -> bool:
        return equalize(graph)


# ---------------------------------------------------------------------------------------------
# SmoothQuant.


def _smoothable_weight(n: Node, x: Value) -> tuple[np.ndarray, int] | None:
    """(weight, its input-channel axis) when `n` is a MatMul/Gemm reading `x` as its data input only."""
    if not _std(n) or [i for m, i in x.uses if m is n] != [0]:
        return None
    w = _f32_const(n.input(1))
    if w is None or w.ndim != 2:
        return None
    if n.op_type == "MatMul":
        return w, 0
    if n.op_type == "Gemm" and not n.attr("transA", 0):
        return w, 1 if n.attr("transB", 0) else 0
    return None


def _smooth_targets(graph: Graph, explicit_mul: bool) -> list[tuple[Value, list[Node]]]:
    """Activations read only by MatMul/Gemm with constant 2-D weights whose 1/s has somewhere to go."""
    out: list[tuple[Value, list[Node]]] = []
    candidates = list(graph.inputs) + [v for n in graph.nodes for v in n.outputs]
    for x in candidates:
        readers = [r for r in x.consumers if r.op_type not in _SHAPE_READERS]
        if not readers or x.dtype != DType.FLOAT or constant_value(x) is not None \
                or not all(_smoothable_weight(r, x) for r in readers):
            continue
        if _ln_foldable(x) or explicit_mul:
            out.append((x, readers))
    return out


def _ln_foldable(x: Value) -> bool:
    """x = LayerNormalization(...) over its last axis with a constant 1-D scale (and bias), read only here."""
    p = x.producer
    if p is None or p.op_type != "LayerNormalization" or not _std(p) or x.index != 0 or x.is_graph_output:
        return False
    scale = _f32_const(p.input(1))
    axis = int(p.attr("axis", -1))
    rank = x.rank
    last = axis == -1 or (rank is not None and axis == rank - 1)
    bias_ok = p.input(2) is None or _f32_const(p.input(2)) is not None
    return last and scale is not None and scale.ndim == 1 and bias_ok


def smooth_quant(graph: Graph, calibration: Batches, alpha: float = 0.5,
                 explicit_mul: bool = False) -> dict[str, np.ndarray]:
    """SmoothQuant in place: per input channel j of MatMul/Gemm inputs X, s_j = max|X_j|^alpha /
    max|W_j|^(1 - alpha); W_j *= s_j and X_j /= s_j, exact in fp32. Activation outliers (a few
    channels 10-100x the rest, typical of LayerNorm outputs) then no longer set the int8 step of
    the whole tensor. The division folds into a preceding LayerNormalization's scale and bias; with
    `explicit_mul` other inputs get a Mul (an extra op). Returns activation name -> scales.
    """
    targets = _smooth_targets(graph, explicit_mul)
    if not targets:
        return {}
    names = {x.name for x, _ in targets}
    amax: dict[str, np.ndarray] = {}
    for feeds in calibration:
        for k, a in _run_observed(graph, feeds, names).items():
            m = _channel_reduce(np.abs(a), a.ndim - 1, np.max)
            amax[k] = m if k not in amax else np.maximum(amax[k], m)
    done: dict[str, np.ndarray] = {}
    for x, readers in targets:
        if x.name not in amax:
            continue
        ws = [_smoothable_weight(r, x) for r in readers]
        wmax = np.max([np.abs(w).max(axis=1 - ax) for w, ax in ws], axis=0)  # type: ignore[misc]
        xmax = amax[x.name]
        ok = (xmax > 0) & (wmax > 0)
        s = np.where(ok, np.where(ok, xmax, 1.0) ** alpha / np.where(ok, wmax, 1.0) ** (1.0 - alpha), 1.0)
        s = np.clip(s, 1.0 / _SMOOTH_CLAMP, _SMOOTH_CLAMP)
        for r, (w, ax) in zip(readers, ws):  # type: ignore[misc]
            shape = (-1, 1) if ax == 0 else (1, -1)
            _set_const(graph, r, 1, w.astype(np.float64) * s.reshape(shape), "smoothed")
        if _ln_foldable(x):
            ln = x.producer
            assert ln is not None
            for i in (1, 2):
                c = _f32_const(ln.input(i))
                if c is not None:
                    _set_const(graph, ln, i, c.astype(np.float64) / s, "smoothed")
        else:
            inv = graph.add_initializer(graph.unique_name(f"{x.name}_smooth_scale"), (1.0 / s).astype(np.float32))
            mul = Node("Mul", [x, inv], [Value(graph.unique_name(f"{x.name}_smoothed"), x.type)],
                       name=graph.unique_name(f"{x.name}_smooth_Mul"))
            if x.producer is not None:
                graph.insert_after(x.producer, mul)
            else:
                graph.insert_before(graph.nodes[0], mul)
            for r in readers:
                r.set_input(0, mul.outputs[0])
        done[x.name] = s.astype(np.float32)
    return done
