"""Quantization judged on trained weights (random weights hide outlier channels and saturation).

A MobileNetV3-style classifier (squeeze-excitation, HardSwish) and a transformer-style text
recognizer (LayerNorm, attention, GELU, softmax over 6,625 classes), trained by
tests/data/make_trained_models.py. Accuracy and agreement are measured by onnxruntime on the
exported ONNX, on held-out inputs never used for calibration.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import pytest

import compiler
from conftest import DATA, trained_accuracy

MODELS = {"mobilenet": "mobilenet_digits.onnx", "recognizer": "recognizer_digits.onnx"}
# mode -> (minimum top-1 agreement with fp32, maximum file size as a fraction of fp32)
BARS = {"int8": (0.99, 0.40), "dynamic": (0.98, 0.40), "fp16": (0.999, 0.55)}


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


@pytest.mark.parametrize("mode", sorted(BARS))
@pytest.mark.parametrize("key", sorted(MODELS))
def test_quantized_trained_model(key: str, mode: str) -> None:
    path = DATA / MODELS[key]
    with np.load(DATA / "trained_data.npz") as d:
        cal, x, y = d[f"{key}_calibration"], d[f"{key}_test_images"], d[f"{key}_test_labels"]
    original = path.read_bytes()
    ref = _run(original, x)
    g = compiler.compress(path, quantize=mode, calibration=[{"image": cal}] if mode == "int8" else None)
    data = compiler.export_onnx(g).SerializeToString()
    out = _run(data, x)
    agreement = float((out.argmax(-1) == ref.argmax(-1)).mean())
    min_agreement, max_size = BARS[mode]
    assert agreement >= min_agreement, f"{key} {mode}: top-1 agreement {agreement:.4f}"
    assert len(data) <= max_size * os.path.getsize(path), f"{key} {mode}: {len(data) / len(original):.1%} of fp32"
    assert trained_accuracy(key, out, y) >= trained_accuracy(key, ref, y) - 0.005
