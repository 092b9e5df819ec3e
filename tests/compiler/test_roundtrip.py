"""Import then export keeps a model: onnx.checker accepts it and onnxruntime computes the same outputs.

Covers every model of the official backend suites (node, simple, pytorch-converted, pytorch-operator;
the big light models in the slow run), with strict=False so ops mcc cannot run yet still round-trip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import compiler
from onnx_suite import cases


def _ort_outputs(model: onnx.ModelProto, inputs: list[Any]) -> list[Any] | None:
    """onnxruntime's outputs, or None when onnxruntime cannot run the model at all."""
    try:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return sess.run(None, dict(zip(names, inputs)))
    except Exception:  # noqa: BLE001 - onnxruntime lacks many ops; those cases compare structure only
        return None


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype == object or b.dtype == object:
        return a.shape == b.shape and a.tolist() == b.tolist()
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


def _check_kind(kind: str) -> tuple[int, int, list[str]]:
    """(models round-tripped, models compared by onnxruntime, failures)."""
    done = compared = 0
    failures = []
    for name, model, data, _, _ in cases(kind):
        try:
            exported = compiler.export_onnx(compiler.import_onnx(model, strict=False))
            try:
                onnx.checker.check_model(model, full_check=True)
                original_ok = True
            except Exception:  # noqa: BLE001 - a few suite models fail the checker themselves
                original_ok = False
            if original_ok:
                onnx.checker.check_model(exported, full_check=True)
        except Exception as e:  # noqa: BLE001
            failures.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        done += 1
        if not data:
            continue
        inputs = data[0][0]
        want = _ort_outputs(model, inputs)
        if want is None:
            continue
        got = _ort_outputs(exported, inputs)
        compared += 1
        if got is None or len(got) != len(want) or not all(_same(g, w) for g, w in zip(got, want)):
            failures.append(f"{name}: onnxruntime outputs differ after the round trip")
    return done, compared, failures


@pytest.mark.parametrize("kind", ["node", "simple", "pytorch-converted", "pytorch-operator"])
def test_round_trip_suite(kind: str) -> None:
    done, compared, failures = _check_kind(kind)
    assert not failures, f"{len(failures)} round-trip failures:\n" + "\n".join(failures[:30])
    assert compared > 0.5 * done  # most models are really executed and compared, not only parsed


@pytest.mark.slow
def test_round_trip_light_models() -> None:
    done, compared, failures = _check_kind("light")
    assert not failures, "\n".join(failures)
    assert done == 9 and compared == 9
