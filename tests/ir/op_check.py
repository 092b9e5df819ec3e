"""Single-op models checked against onnxruntime: the shared harness of the op-family tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper as oh
from onnx import numpy_helper

import compiler


class C:
    """Marks an operand as a constant (an initializer)."""

    def __init__(self, value: Any) -> None:
        self.value = np.asarray(value)


def single_op_model(op: str, inputs: dict[str, Any], attrs: dict[str, Any], opset: int, n_out: int) -> onnx.ModelProto:
    """One `op` node reading `inputs` in order: arrays are graph inputs, C(...) initializers, None omitted."""
    names = [k if v is not None else "" for k, v in inputs.items()]
    while names and names[-1] == "":
        names.pop()
    outs = [f"y{i}" for i in range(n_out)]
    ins = [oh.make_tensor_value_info(k, oh.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in inputs.items() if isinstance(v, np.ndarray)]
    inits = [numpy_helper.from_array(v.value, k) for k, v in inputs.items() if isinstance(v, C)]
    g = oh.make_graph([oh.make_node(op, names, outs, **attrs)], "g", ins,
                      [oh.make_empty_tensor_value_info(o) for o in outs], initializer=inits)
    return oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)], ir_version=8)


def run(op: str, inputs: dict[str, Any], opset: int = 18, n_out: int = 1, **attrs: Any) -> list[np.ndarray]:
    m = single_op_model(op, inputs, attrs, opset, n_out)
    feeds = {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)}
    return [np.asarray(v) for v in compiler.compile(m).run(feeds).values()]


def check(op: str, inputs: dict[str, Any], opset: int = 18, n_out: int = 1, tol: float = 1e-6,
          **attrs: Any) -> list[np.ndarray]:
    """Run the op through mcc and onnxruntime; assert equal values, shapes and dtypes."""
    m = single_op_model(op, inputs, attrs, opset, n_out)
    feeds = {k: v for k, v in inputs.items() if isinstance(v, np.ndarray)}
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = run(op, inputs, opset, n_out, **attrs)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype, (op, g.dtype, w.dtype)
        assert g.shape == w.shape, (op, g.shape, w.shape)
        if g.dtype == object:
            assert g.tolist() == w.tolist()
        else:
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol, atol=tol, err_msg=op)
    return got
