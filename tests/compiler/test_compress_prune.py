"""Pruning from the command line: `mcc compress --channel-prune / --sparsity` on the trained digits CNN.

Accuracy is measured by onnxruntime and MACs by an independent count on the written ONNX file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from conftest import DATA, ROOT, count_macs, ort_run

BASELINE = 0.9799


def _compress(tmp: Path, *args: str) -> onnx.ModelProto:
    out = tmp / "out.onnx"
    r = subprocess.run([sys.executable, "-m", "compiler", "compress", str(DATA / "digits_cnn.onnx"), "-o", str(out),
                        "--calibration", str(DATA / "digits_calibration.npz"), *args],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return onnx.load(out)


def _accuracy(model: onnx.ModelProto, data: dict[str, np.ndarray]) -> float:
    logits = ort_run(model, {"image": data["test_images"]})[0]
    return float((logits.argmax(1) == data["test_labels"]).mean())


def test_channel_prune_half_the_macs(tmp_path: Path, digits_data: dict[str, np.ndarray]) -> None:
    model = _compress(tmp_path, "--channel-prune", "0.5", "--report", str(tmp_path / "r.md"))
    one = {"image": digits_data["test_images"][:1]}
    cut = 1 - count_macs(model, one) / count_macs(onnx.load(DATA / "digits_cnn.onnx"), one)
    assert cut >= 0.47
    assert _accuracy(model, digits_data) >= BASELINE - 0.02
    report = (tmp_path / "r.md").read_text()
    assert "channels before" in report and (tmp_path / "r.svg").exists()


def _weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """Conv/Gemm weights as [out, in, ...] (Gemm's B transposed when transB=0)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type == "Conv":
            out.append(inits[n.input[1]])
        elif n.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i for a in n.attribute)
            out.append(inits[n.input[1]] if trans_b else inits[n.input[1]].T)
    return out


def test_sparsity_70(tmp_path: Path, digits_data: dict[str, np.ndarray]) -> None:
    model = _compress(tmp_path, "--sparsity", "0.7")
    ws = _weights(model)
    assert sum(int((w == 0).sum()) for w in ws) / sum(w.size for w in ws) >= 0.70
    assert _accuracy(model, digits_data) >= BASELINE - 0.01


def test_sparsity_2_4(tmp_path: Path, digits_data: dict[str, np.ndarray]) -> None:
    model = _compress(tmp_path, "--sparsity", "0.5", "--sparsity-pattern", "2:4")
    checked = 0
    for w in _weights(model):
        w2 = w.reshape(w.shape[0], w.shape[1], -1)
        if w2.shape[1] < 4:
            continue  # stem (1 input channel) and depthwise (1 per group): no group of 4 exists
        groups = np.moveaxis(w2, 1, -1)[..., : w2.shape[1] // 4 * 4].reshape(-1, 4)
        assert (np.count_nonzero(groups, axis=1) <= 2).all()
        checked += 1
    assert checked >= 6
    assert _accuracy(model, digits_data) >= BASELINE - 0.01
