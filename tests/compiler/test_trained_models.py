"""The trained models of tests/data/make_trained_models.py: valid, accurate as recorded, and run exactly by mcc.

mobilenet_digits.onnx (MobileNetV3-style, opset 13), recognizer_digits.onnx (conv stem + transformer + CTC
head over 6625 classes, opset 13) and attention_classifier.onnx (ViT-style, opset 17) carry trained
weights, so later compression work can be judged on real weight and activation statistics. Each records
onnxruntime's accuracy on its held-out set (tests/data/trained_data.npz) in metadata "mcc.test_accuracy".
"""

from __future__ import annotations

from collections import Counter
from functools import cache

import numpy as np
import onnx
import pytest
from conftest import trained_accuracy as accuracy
from conftest import DATA, ort_run, rel_err

import compiler

MODELS = {"mobilenet": "mobilenet_digits.onnx", "recognizer": "recognizer_digits.onnx",
          "attention": "attention_classifier.onnx"}
VOCAB, BLANK = 6625, 0  # recognizer: blank = class 0, digit d = class d + 1


@cache
def _data() -> dict[str, np.ndarray]:
    with np.load(DATA / "trained_data.npz") as z:
        return {k: z[k] for k in z.files}


@cache
def _model(name: str) -> onnx.ModelProto:
    return onnx.load(str(DATA / MODELS[name]))


def _census(name: str) -> Counter[str]:
    return Counter(n.op_type for n in _model(name).graph.node)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_is_valid_and_small(name: str) -> None:
    onnx.checker.check_model(_model(name), full_check=True)
    assert (DATA / MODELS[name]).stat().st_size < 1.5e6
    data = _data()
    assert data[f"{name}_calibration"].shape[1:] == data[f"{name}_test_images"].shape[1:]
    assert data[f"{name}_calibration"].dtype == data[f"{name}_test_images"].dtype == np.float32
    assert len(data[f"{name}_test_labels"]) == len(data[f"{name}_test_images"]) >= 300


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_accuracy_is_as_recorded(name: str) -> None:
    data = _data()
    (out,) = ort_run(_model(name), {"image": data[f"{name}_test_images"]})
    acc = accuracy(name, out, data[f"{name}_test_labels"])
    recorded = {p.key: p.value for p in _model(name).metadata_props}["mcc.test_accuracy"]
    assert acc == float(recorded)
    assert acc >= {"mobilenet": 0.95, "recognizer": 0.90, "attention": 0.95}[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_reference_matches_onnxruntime(name: str) -> None:
    x = _data()[f"{name}_test_images"][:64]
    want = ort_run(_model(name), {"image": x})
    got = compiler.compile(DATA / MODELS[name], target="reference").run({"image": x})
    assert len(got) == len(want) == 1
    (g,), (w,) = got.values(), want
    assert g.shape == w.shape and g.dtype == w.dtype
    assert rel_err(g, w) <= 1e-4, f"{name}: {rel_err(g, w):.2e}"
    # the compiled model classifies every sample as onnxruntime does (no near-ties in these 64)
    np.testing.assert_array_equal(g.argmax(-1), w.argmax(-1))


def test_recognizer_runs_other_widths() -> None:
    """Width is dynamic: a strip of 4 digits (16x64) gives 16 positions; mcc agrees with onnxruntime."""
    x = _data()["recognizer_test_images"][:8]
    x = np.concatenate([x, x[:, :, :, :16]], axis=3)
    (want,) = ort_run(_model("recognizer"), {"image": x})
    assert want.shape == (8, 16, VOCAB)
    got = compiler.compile(DATA / MODELS["recognizer"], target="reference").run({"image": x})["probs"]
    assert rel_err(got, want) <= 1e-4


def test_mobilenet_census() -> None:
    ops = _census("mobilenet")
    # torch writes nn.Hardswish at opset 13 as x * HardSigmoid(x); squeeze-excitation gates use HardSigmoid too
    assert ops["HardSigmoid"] == 8 and "HardSwish" not in ops
    # the blocks spell hard-swish out: x * Clip(x + 3, 0, 6) / 6
    assert ops["Clip"] == 8 and ops["Div"] == 8
    assert ops["GlobalAveragePool"] == 6 and ops["BatchNormalization"] >= 20 and ops["Gemm"] == 2
    convs = [n for n in _model("mobilenet").graph.node if n.op_type == "Conv"]
    depthwise = [n for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    assert len(depthwise) == 7
    assert _model("mobilenet").opset_import[0].version == 13


def test_recognizer_census() -> None:
    m = _model("recognizer")
    ops = _census("recognizer")
    assert m.opset_import[0].version == 13
    # LayerNorm x5 (2 per layer + final) decomposed: ReduceMean (mean, variance), Sub, Pow, Sqrt, Div
    assert ops["ReduceMean"] == 10 and ops["Pow"] == 5 and ops["Sqrt"] == 5 and ops["Sub"] == 5
    assert "LayerNormalization" not in ops
    assert ops["Erf"] == 2                           # exact GELU, one per layer
    assert ops["MatMul"] >= 12 and ops["Transpose"] >= 8
    # softmax: 2 attention + 1 over the vocabulary, producing the output
    assert ops["Softmax"] == 3
    final = next(n for n in m.graph.node if n.output[0] == m.graph.output[0].name)
    assert final.op_type == "Softmax"
    dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", VOCAB]
    in_dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert in_dims == ["batch", 1, 16, "width"]


def test_attention_census() -> None:
    ops = _census("attention")
    assert _model("attention").opset_import[0].version == 17
    assert ops["LayerNormalization"] == 5 and ops["Erf"] == 2 and ops["Softmax"] == 2 and ops["MatMul"] >= 12
