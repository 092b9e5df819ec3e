"""Kernel time of compressed convolutions against the dense fp32 one, on this machine.

    python benchmarks/bench_kernels.py [--threads N] [--repeat N] [--markdown FILE|-]

Each row is one convolution layer compiled by mcc's cpu target as a one-node model, four ways:
fp32 dense (direct or im2col + sgemm, whichever the conv rule picks), int8 (QDQ weights and
activations: uint8 x int8 products, exact int32), 70% unstructured sparse weights (CSR kernel)
and 2:4 sparse weights. Reported: the median time of each and its ratio to fp32 dense (below 1:
faster). The int8 model's time includes quantizing its input and requantizing its output, as in a
real int8 network; the ratio of the integer product alone is lower still.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import compiler  # noqa: E402
from codegen.cpu import qgemm  # noqa: E402

LAYERS = [  # (Cin, Cout, H, W, k, stride)
    (64, 64, 56, 56, 3, 1),
    (128, 128, 28, 28, 3, 1),
    (256, 256, 14, 14, 3, 1),
    (256, 64, 56, 56, 1, 1),
    (512, 512, 7, 7, 3, 1),
]


def _conv_model(cin: int, cout: int, h: int, w: int, k: int, s: int, weight: np.ndarray):  # type: ignore[no-untyped-def]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, h, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    wt = helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.ravel())
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=[k // 2] * 4)
    return helper.make_model(helper.make_graph([node], "conv", [x], [y], [wt]),
                             opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _time(m: compiler.CompiledModel, feeds: dict[str, np.ndarray], repeat: int) -> float:
    for _ in range(3):
        m.run(feeds)
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        m.run(feeds)
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--markdown", default=None, help="write the table here ('-': stdout)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for cin, cout, h, w, k, s in LAYERS:
        weight = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        x = rng.standard_normal((1, cin, h, w)).astype(np.float32)
        feeds = {"x": x}
        calib = [{"x": rng.standard_normal((1, cin, h, w)).astype(np.float32)} for _ in range(4)]
        model = _conv_model(cin, cout, h, w, k, s, weight)
        variants = {
            "fp32": compiler.compile(model, threads=args.threads),
            "int8": compiler.compile(model, threads=args.threads, quantize="int8", calibration=calib),
            "sparse 70%": compiler.compile(model, threads=args.threads, sparsity=0.7),
            "2:4": compiler.compile(model, threads=args.threads, sparsity=0.5, sparsity_pattern="2:4"),
        }
        times = {name: _time(m, feeds, args.repeat) for name, m in variants.items()}
        rows.append(((cin, cout, h, w, k, s), times))
        base = times["fp32"]
        print(f"{cin}->{cout} {h}x{w} k{k} s{s}: " + ", ".join(f"{n} {t:.3f} ms ({t / base:.2f})" for n, t in times.items()),
              flush=True)
    threads = args.threads or int(os.environ.get("MCC_NUM_THREADS", 0) or len(os.sched_getaffinity(0)))
    lines = [f"Convolution kernels, batch 1, {threads} thread(s), int8 ISA {qgemm.HOST_ISA}; ratio to fp32 dense in "
             "parentheses (below 1: faster).", "",
             "| layer | fp32 ms | int8 ms | sparse 70% ms | 2:4 ms |", "|---|---:|---:|---:|---:|"]
    for (cin, cout, h, w, k, s), t in rows:
        b = t["fp32"]
        lines.append(f"| {cin}->{cout}, {h}x{w}, {k}x{k}/{s} | {b:.3f} | {t['int8']:.3f} ({t['int8'] / b:.2f}) | "
                     f"{t['sparse 70%']:.3f} ({t['sparse 70%'] / b:.2f}) | {t['2:4']:.3f} ({t['2:4'] / b:.2f}) |")
    text = "\n".join(lines) + "\n"
    if args.markdown == "-":
        print(text)
    elif args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
