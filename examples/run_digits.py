"""Import the bundled digits CNN, look at its IR, compile it, and check it against onnxruntime.

    python examples/run_digits.py

The first thing a newcomer runs: it shows the Python API end to end on a real trained model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import compiler
import ir

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "data" / "digits_cnn.onnx"
DATA = ROOT / "tests" / "data" / "digits_data.npz"


def main() -> None:
    g = compiler.import_onnx(MODEL)
    ir.verify(g)
    print(f"imported {MODEL.name}: {len(g.nodes)} nodes, inputs {[str(v) for v in g.inputs]}")
    print("\n".join(str(g).splitlines()[:8]) + "\n  ...")

    model = compiler.compile(MODEL, target="reference")
    with np.load(DATA) as d:
        x, y = d["test_images"], d["test_labels"]
    logits = model.run({"image": x})["logits"]
    accuracy = float((logits.argmax(1) == y).mean())
    print(f"reference target: accuracy {accuracy:.2%} on {len(y)} held-out digits")

    try:
        import onnxruntime as ort
    except ImportError:
        return
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {"image": x})
    err = float(np.abs(logits - want).max() / np.abs(want).max())
    print(f"onnxruntime agrees: max relative difference {err:.1e}")


if __name__ == "__main__":
    main()
