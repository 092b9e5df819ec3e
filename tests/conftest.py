"""Shared test helpers: paths to bundled data, onnxruntime as the oracle, relative error."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

# One BLAS thread: on a shared 2-core machine, oversubscribed BLAS threads make the reference
# interpreter's matmuls up to 100x slower; set before numpy loads its BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
sys.path.insert(0, str(ROOT / "tests"))  # tests/models.py and tests/compiler/onnx_suite.py are importable


def ort_run(model: Any, feeds: dict[str, np.ndarray], level: str = "ORT_DISABLE_ALL") -> list[np.ndarray]:
    """Outputs of onnxruntime (the independent oracle) for `model` (a ModelProto or path)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    so.intra_op_num_threads = 1
    if isinstance(model, (str, os.PathLike)):
        data: Any = str(model)
    else:
        data = model if isinstance(model, bytes) else model.SerializeToString()
    sess = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a-b| relative to the largest magnitude of b (the issue's 1e-4 criterion)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(b))) if b.size else 0.0, 1e-30)
    return float(np.max(np.abs(a - b))) / scale if a.size else 0.0


@pytest.fixture
def digits_path() -> Path:
    return DATA / "digits_cnn.onnx"


@pytest.fixture
def digits_data() -> dict[str, np.ndarray]:
    with np.load(DATA / "digits_data.npz") as z:
        return {k: z[k] for k in z.files}
