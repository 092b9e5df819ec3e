"""Quantize the bundled digits CNN three ways and compare accuracy and size (measured by onnxruntime).

    python examples/quantize_digits.py [--method percentile] [--report quant.html]

int8 static needs calibration samples (here the bundled 128 digits); dynamic int8 and fp16 do not.
Each result is standard ONNX: QuantizeLinear/DequantizeLinear around int8 weights, which onnxruntime
(and other runtimes) turn into int8 kernels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import compiler

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "data" / "digits_cnn.onnx"
DATA = ROOT / "tests" / "data" / "digits_data.npz"
CALIBRATION = ROOT / "tests" / "data" / "digits_calibration.npz"  # {"image": 128 samples}


def accuracy(model: bytes, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return float((sess.run(None, {"image": images})[0].argmax(1) == labels).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default=None, choices=("minmax", "percentile", "entropy", "mse"),
                    help="int8 calibration method (default: percentile)")
    ap.add_argument("--report", help="write the int8 per-layer report (.md or .html)")
    args = ap.parse_args()

    with np.load(DATA) as d:
        images, labels = d["test_images"], d["test_labels"]
    original = MODEL.read_bytes()
    print(f"{'fp32':<12} accuracy {accuracy(original, images, labels):7.2%}   file {len(original) / 1e3:6.1f} kB")
    for mode in ("int8", "dynamic", "fp16"):
        g = compiler.compress(MODEL, quantize=mode, calibration=CALIBRATION if mode == "int8" else None,
                              calibration_method=args.method, report=args.report if mode == "int8" else None)
        data = compiler.export_onnx(g).SerializeToString()
        print(f"{mode:<12} accuracy {accuracy(data, images, labels):7.2%}   file {len(data) / 1e3:6.1f} kB "
              f"({len(data) / len(original):.0%} of fp32)")


if __name__ == "__main__":
    main()
