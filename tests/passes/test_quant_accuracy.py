"""Quantization accuracy tools: equalization and SmoothQuant are exact in fp32 and do what they are for
(balanced weight ranges, tamed activation outliers, better int8); bias correction removes the mean
output error of the int8 digits CNN; sensitivity and the fp32-fallback budget work on it end to end.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import ort_run, rel_err
from models import ALL_BUILDERS
from onnx import TensorProto, helper, numpy_helper

import compiler
import ir
import passes
from passes.quant_accuracy import (
    bias_correction,
    equalize,
    layer_sensitivity,
    output_error,
    quantize_with_budget,
    smooth_quant,
)
from passes.quantize import quantize_static
from passes.testing import check_pass

DATA = Path(__file__).resolve().parents[1] / "data"


def _batches(x: np.ndarray, name: str = "image", size: int = 32) -> list[dict[str, np.ndarray]]:
    return [{name: x[i:i + size]} for i in range(0, len(x), size)]


def _channel_max(graph: ir.Graph, feeds: dict[str, np.ndarray], name: str) -> np.ndarray:
    """max |x| per last-axis channel of the value `name` of `graph` on `feeds`."""
    seen: dict[str, np.ndarray] = {}
    ir.Interpreter(observe=lambda v, a: seen.__setitem__(v.name, a) if v.name == name else None).run(graph, feeds)
    a = np.abs(seen[name])
    return a.reshape(-1, a.shape[-1]).max(axis=0)


@pytest.fixture(scope="module")
def digits() -> dict[str, Any]:
    with np.load(DATA / "digits_data.npz") as z:
        data = {k: z[k] for k in z.files}
    g = compiler.import_onnx(DATA / "digits_cnn.onnx")
    passes.run(g, "optimize")
    return {"graph": g, "calibration": _batches(data["calibration"]), "test": _batches(data["test_images"], size=128),
            "data": data}


# ---------------------------------------------------------------------------------------------
# Cross-layer equalization.


def test_equalize_preserves_semantics() -> None:
    check_pass("equalize", max_examples=40)


def _depthwise_separable(act: str = "Relu") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    c, m = 4, 6
    dw = rng.standard_normal((c, 1, 3, 3)).astype(np.float32) * np.array([0.01, 1.0, 10.0, 0.1], np.float32)[:, None, None, None]
    pw = rng.standard_normal((m, c, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(dw, "dw_w"), numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), "dw_b"),
             numpy_helper.from_array(pw, "pw_w"), numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), "pw_b")]
    nodes = [helper.make_node("Conv", ["x", "dw_w", "dw_b"], ["h"], name="dw", group=c, pads=[1] * 4),
             helper.make_node(act, ["h"], ["a"], name="act"),
             helper.make_node("Conv", ["a", "pw_w", "pw_b"], ["y"], name="pw")]
    graph = helper.make_graph(nodes, "dws", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, m, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _dw_weight(g: ir.Graph) -> np.ndarray:
    return next(n for n in g.nodes if n.name == "dw").input(1).const.array  # type: ignore[union-attr]


def _spread(w: np.ndarray) -> float:
    r = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    return float(r.max() / r.min())


@pytest.mark.parametrize("act", ["Relu", "LeakyRelu"])
def test_equalize_depthwise_separable(act: str) -> None:
    g = compiler.import_onnx(_depthwise_separable(act))
    x = {"x": np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)}
    before, spread = ir.evaluate(g, x)[0], _spread(_dw_weight(g))
    assert equalize(g) and _spread(_dw_weight(g)) < spread / 10
    assert rel_err(ir.evaluate(g, x)[0], before) < 1e-5
    assert rel_err(ort_run(compiler.export_onnx(g), x)[0], before) < 1e-5


def test_equalize_skips_clipping_activations() -> None:
    model = _depthwise_separable("Relu")
    model.graph.node[1].op_type = "Sigmoid"  # not positively homogeneous: a scale cannot pass through
    assert not equalize(compiler.import_onnx(model))


# ---------------------------------------------------------------------------------------------
# SmoothQuant.


@pytest.fixture(scope="module")
def outlier_transformer() -> dict[str, Any]:
    """The transformer of tests/models.py with channel 5 of the first LayerNorm output scaled by 50."""
    g = compiler.import_onnx(ALL_BUILDERS["transformer_opset17"](num_classes=50))
    passes.run(g, "optimize")
    ln = next(n for n in g.nodes if n.op_type == "LayerNormalization")
    for i in (1, 2):
        c = ln.input(i).const.array.copy()  # type: ignore[union-attr]
        c[5] *= 50.0
        ln.set_input(i, g.add_initializer(f"{ln.input(i).name}_outlier", c))  # type: ignore[union-attr]
    rng = np.random.default_rng(0)
    cal = [{"image": rng.standard_normal((4, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    smoothed = g.copy()
    scales = smooth_quant(smoothed, cal, alpha=0.5)
    return {"graph": g, "smoothed": smoothed, "scales": scales, "calibration": cal, "ln_out": ln.outputs[0].name}


def test_smooth_quant_is_exact_in_fp32(outlier_transformer: dict[str, Any]) -> None:
    t = outlier_transformer
    assert t["ln_out"] in t["scales"]
    ir.verify(t["smoothed"])
    explicit = t["graph"].copy()
    assert len(smooth_quant(explicit, t["calibration"], explicit_mul=True)) > len(t["scales"])  # a Mul where no LN
    ir.verify(explicit)
    for feeds in t["calibration"][:2]:
        ref = ir.evaluate(t["graph"], feeds)[0]
        assert rel_err(ir.evaluate(t["smoothed"], feeds)[0], ref) < 1e-5
        assert rel_err(ir.evaluate(explicit, feeds)[0], ref) < 1e-5


def test_smooth_quant_tames_outlier_channel(outlier_transformer: dict[str, Any]) -> None:
    t = outlier_transformer
    feeds = t["calibration"][0]
    before = _channel_max(t["graph"], feeds, t["ln_out"])
    after = _channel_max(t["smoothed"], feeds, t["ln_out"])
    assert before.max() / np.median(before) > 10 and after.max() / np.median(after) < 0.5 * before.max() / np.median(before)


def test_smooth_quant_improves_int8(outlier_transformer: dict[str, Any]) -> None:
    """8-bit weights: smoothing moves range into the weights, which 7-bit weights (reduce_range) pay for."""
    t, cal = outlier_transformer, outlier_transformer["calibration"]
    errors = []
    for g in (t["graph"], t["smoothed"]):
        q = g.copy()
        quantize_static(q, cal, reduce_range=False)
        errors.append(output_error(t["graph"], q, cal))
    sqnr = [-20 * math.log10(e) for e in errors]
    assert sqnr[1] > sqnr[0] + 1.0, f"int8 output SQNR {sqnr[0]:.1f} dB -> {sqnr[1]:.1f} dB with SmoothQuant"


# ---------------------------------------------------------------------------------------------
# Digits CNN: bias correction, sensitivity, fp32 fallback.


def _mean_error(ref: ir.Graph, q: ir.Graph, batches: list[dict[str, np.ndarray]]) -> float:
    """Mean over logits of |E[y_q - y]| (the bias that correction removes)."""
    d = np.concatenate([ir.evaluate(q, f)[0] - ir.evaluate(ref, f)[0] for f in batches])
    return float(np.abs(d.mean(axis=0)).mean())


def test_bias_correction_reduces_mean_error(digits: dict[str, Any]) -> None:
    g, cal = digits["graph"], digits["calibration"]
    q = g.copy()
    quantize_static(q, cal)
    before = _mean_error(g, q, digits["test"])
    corrected = bias_correction(g, q, cal)
    assert corrected and all(math.isfinite(v) for v in corrected.values())
    assert _mean_error(g, q, digits["test"]) < 0.5 * before  # held-out data, not the calibration set
    m = compiler.export_onnx(q)
    onnx.checker.check_model(m, full_check=True)
    labels = digits["data"]["test_labels"]
    acc = float((ort_run(m, {"image": digits["data"]["test_images"]})[0].argmax(1) == labels).mean())
    fp32 = float((ir.evaluate(g, {"image": digits["data"]["test_images"]})[0].argmax(1) == labels).mean())
    assert acc >= fp32 - 0.005


def test_layer_sensitivity_covers_every_layer(digits: dict[str, Any]) -> None:
    g, cal = digits["graph"], digits["calibration"]
    report = quantize_static(g.copy(), cal)
    sens = layer_sensitivity(g, cal)
    assert set(sens) == {r.layer for r in report.layers}
    assert all(math.isfinite(v) and v > 10.0 for v in sens.values()), sens


def test_quantize_with_budget_falls_back(digits: dict[str, Any]) -> None:
    g, cal = digits["graph"], digits["calibration"]
    q = g.copy()
    quantize_static(q, cal)
    budget = 0.7 * output_error(g, q, cal)
    out = g.copy()
    report = quantize_with_budget(out, cal, max_error=budget)
    fell_back = {k for k, v in report.skipped.items() if v.startswith("fp32 fallback")}
    assert fell_back and not fell_back & {r.layer for r in report.layers}
    assert output_error(g, out, cal) <= budget
