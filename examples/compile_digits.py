"""Compile the bundled digits CNN to native code, plain and compressed, and run the artifacts.

    python examples/compile_digits.py [--threads N] [--out DIR] [--target cpu|cuda]

For each variant (fp32, int8, 70% sparse, 50% channel-pruned) it compiles for the target (`cpu` by
default; `cuda` on a machine with an NVIDIA GPU),
saves an .mcc artifact, loads it back (no recompilation: kernels come from the cache under
MCC_CACHE_DIR), and prints the accuracy on the held-out digits, the ops left to the reference (if
any) and the latency of a batch of 64 next to the fp32 one.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import compiler

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "data" / "digits_cnn.onnx"
DATA = ROOT / "tests" / "data" / "digits_data.npz"
CALIBRATION = ROOT / "tests" / "data" / "digits_calibration.npz"

VARIANTS = {
    "fp32": {},
    "int8": {"quantize": "int8", "calibration": CALIBRATION},
    "sparse 70%": {"sparsity": 0.7, "calibration": CALIBRATION},
    "pruned 50%": {"channel_prune": 0.5, "calibration": CALIBRATION},
}


def latency_ms(m: compiler.CompiledModel, x: np.ndarray, repeat: int = 30) -> float:
    m.run({"image": x})
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        m.run({"image": x})
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="kernel threads (default: every core)")
    ap.add_argument("--out", type=Path, default=None, help="where to write the .mcc files (default: a temp dir)")
    ap.add_argument("--target", choices=("cpu", "cuda"), default="cpu", help="code generation target")
    args = ap.parse_args()
    data = np.load(DATA)
    images, labels = data["test_images"].astype(np.float32), data["test_labels"]
    out = args.out or Path(tempfile.mkdtemp(prefix="mcc_digits_"))
    out.mkdir(parents=True, exist_ok=True)
    base = None
    for name, options in VARIANTS.items():
        path = out / f"digits_{name.split()[0]}.mcc"
        compiler.compile(MODEL, target=args.target, threads=args.threads, **options).save(path)
        m = compiler.load(path, threads=args.threads)
        acc = float((m.run({"image": images})["logits"].argmax(1) == labels).mean())
        ms = latency_ms(m, images[:64])
        base = base or ms
        fallbacks = ", ".join(f"{op} x{n}" for op, n in m.fallback_ops().items()) or "none"
        print(f"{name:<11} accuracy {100 * acc:.2f}%  batch-64 latency {ms:.3f} ms ({ms / base:.2f}x fp32)  "
              f"artifact {path.stat().st_size / 1e3:.0f} kB  reference fallbacks: {fallbacks}")


if __name__ == "__main__":
    main()
