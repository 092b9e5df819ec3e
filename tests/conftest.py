"""Shared test helpers: paths to bundled data, onnxruntime as the oracle, relative error."""

from __future__ import annotations

import os
import sys
from pathlib import Path
import copy
from collections.abc import Mapping
from typing import Any

# One BLAS thread: on a shared 2-core machine, oversubscribed BLAS threads make the reference
# interpreter's matmuls up to 100x slower; set before numpy loads its BLAS.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ["MCC_VERIFY"] = "1"  # every pass of every pipeline a test runs is followed by the IR verifier
# The CUDA target's tests run on a real GPU when one is present, else on Numba's CUDA simulator
# (which must be chosen before numba is imported). MCC_TEST_CUDA=real or =sim forces either.
_cuda_mode = os.environ.get("MCC_TEST_CUDA") or ("real" if Path("/proc/driver/nvidia").exists() else "sim")
if _cuda_mode == "sim":
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    # The simulator runs a block's threads as Python threads while its manager thread busy-polls
    # them; switching the GIL more often cuts its share: a digits convolution runs 3x faster.
    sys.setswitchinterval(5e-4)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
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



class In:
    """A graph input fed at run time (for `one_op_model`)."""

    def __init__(self, a: np.ndarray) -> None:
        self.a = a


_ONNX_TYPES = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int64): onnx.TensorProto.INT64,
               np.dtype(np.int32): onnx.TensorProto.INT32}


def one_op_model(op: str, inputs: Any, attrs: dict[str, Any] | None = None, opset: int = 17,
                 outputs: int = 1) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """One `op` node: `In` items are graph inputs, arrays are initializers, None is an omitted input."""
    from onnx import helper, numpy_helper

    names, feeds, graph_inputs, inits = [], {}, [], []
    for i, v in enumerate(inputs):
        if v is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(v, In):
            feeds[name] = v.a
            graph_inputs.append(helper.make_tensor_value_info(name, _ONNX_TYPES[v.a.dtype], list(v.a.shape)))
        else:
            inits.append(numpy_helper.from_array(np.asarray(v), name))
    outs = [f"out{i}" for i in range(outputs)]
    node = helper.make_node(op, names, outs, **(attrs or {}))
    graph = helper.make_graph([node], op.lower(), graph_inputs,
                              [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outs], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m, feeds


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


LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def count_macs(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> int:
    """Conv/ConvTranspose/Gemm/MatMul MACs of `model` on `feeds` (batch 1): weight shapes from the
    initializers, activation shapes from onnx.shape_inference with the inputs fixed; dims it cannot
    derive (past run-time Reshapes) are read from an onnxruntime run."""
    m = copy.deepcopy(model)
    for vi in m.graph.input:
        if vi.name in feeds:
            for d, n in zip(vi.type.tensor_type.shape.dim, feeds[vi.name].shape):
                d.Clear()
                d.dim_value = n
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]
              for vi in [*m.graph.value_info, *m.graph.output, *m.graph.input]}
    nodes = [n for n in m.graph.node if n.op_type in LINEAR_OPS]
    unknown = [v for n in nodes for v in (n.input[0], n.output[0]) if None in shapes.get(v, [None])]
    if unknown:
        probe = copy.deepcopy(m)
        del probe.graph.output[:]
        probe.graph.output.extend(onnx.ValueInfoProto(name=v) for v in dict.fromkeys(unknown))
        shapes.update({v: list(a.shape) for v, a in zip(dict.fromkeys(unknown), ort_run(probe, dict(feeds)))})
    weights = {t.name: list(t.dims) for t in m.graph.initializer}
    total = 0
    for n in nodes:
        x, y = shapes[n.input[0]], shapes[n.output[0]]
        if n.op_type == "Conv":
            total += int(np.prod(weights[n.input[1]])) * int(np.prod(y[2:]))
        elif n.op_type == "ConvTranspose":
            total += int(np.prod(weights[n.input[1]])) * int(np.prod(x[2:]))
        else:
            total += int(np.prod(y)) * x[-1 - int(n.op_type == "Gemm" and any(
                a.name == "transA" and a.i for a in n.attribute))]
    return total


def ctc_greedy(probs: np.ndarray) -> list[list[int]]:
    """[N, T, VOCAB] -> digit sequences: best class per position, repeats collapsed, blanks dropped."""
    out = []
    for row in probs.argmax(-1):
        seq, prev = [], 0  # blank is class 0; digit d is class d + 1
        for c in row.tolist():
            if c != prev and c != 0:
                seq.append(c - 1)
            prev = c
        out.append(seq)
    return out


def trained_accuracy(name: str, out: np.ndarray, labels: np.ndarray) -> float:
    """Held-out accuracy of a trained test model's output (the recognizer: greedy CTC sequence match)."""
    if name == "recognizer":
        return float(np.mean([s == l for s, l in zip(ctc_greedy(out), labels.tolist())]))
    return float((out.argmax(1) == labels).mean())
