"""Prune the bundled digits CNN without retraining, and see what it costs and what it saves.

    python examples/prune_digits.py [--ratio 0.5] [--sparsity 0.7] [--report prune.md]

Channel pruning removes whole channels (the model gets physically smaller and needs fewer MACs);
unstructured sparsity zeroes individual weights (the file compresses, sparse kernels skip zeros).
Both recover accuracy from the calibration set instead of fine-tuning.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import compiler
from compiler.facts import model_facts

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "data" / "digits_cnn.onnx"
DATA = ROOT / "tests" / "data" / "digits_data.npz"


def evaluate(graph, images: np.ndarray, labels: np.ndarray) -> float:  # type: ignore[no-untyped-def]
    """Top-1 accuracy of a graph, run by mcc's reference target."""
    logits = compiler.compile(graph, target="reference").run({"image": images})["logits"]
    return float((logits.argmax(1) == labels).mean())


def describe(label: str, graph, images: np.ndarray, labels: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    facts = model_facts(graph)
    size = len(compiler.export_onnx(graph).SerializeToString())
    weights = [v.const.array for v in graph.initializers.values() if v.const is not None and v.const.array.ndim > 1]
    zeros = sum(int((w == 0).sum()) for w in weights) / max(sum(w.size for w in weights), 1)
    print(f"{label:<22} accuracy {evaluate(graph, images, labels):7.2%}   MACs {facts['macs'] / 1e6:6.2f} M   "
          f"params {facts['params'] / 1e3:6.1f} k   file {size / 1e3:6.1f} kB   zero weights {zeros:5.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", type=float, default=0.5, help="fraction of MACs to remove by channel pruning")
    ap.add_argument("--sparsity", type=float, default=0.7, help="fraction of weights to zero")
    ap.add_argument("--report", help="write a per-layer report (.md or .html) for the channel-pruned model")
    args = ap.parse_args()

    with np.load(DATA) as d:
        calibration, images, labels = d["calibration"], d["test_images"], d["test_labels"]
    feeds = [{"image": calibration}]  # one batch of 128 samples; a path to an .npz works too

    describe("original", compiler.compress(MODEL), images, labels)
    pruned = compiler.compress(MODEL, channel_prune=args.ratio, calibration=feeds, report=args.report)
    describe(f"channels -{args.ratio:.0%} MACs", pruned, images, labels)
    sparse = compiler.compress(MODEL, sparsity=args.sparsity, calibration=feeds)
    describe(f"{args.sparsity:.0%} sparse", sparse, images, labels)
    semi = compiler.compress(MODEL, sparsity=0.5, sparsity_pattern="2:4", calibration=feeds)
    describe("2:4 sparse", semi, images, labels)


if __name__ == "__main__":
    main()
