"""`mcc compress` with the default pipeline: equivalent standard ONNX, no BatchNormalization, few kernels.

Covers the light ResNet-50 of the ONNX suite, the trained digits CNN, and the exporter-pattern models
of tests/models.py. Equality is judged by onnxruntime on the written file (within 1e-4 relative);
kernel counts are what `mcc inspect OUT.onnx --json` reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import DATA, ROOT, ort_run, rel_err
from tests.models import ALL_BUILDERS, sample_inputs

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _mcc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compiler", *args], capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def _inspect(path: Path) -> dict:
    r = _mcc("inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _models(tmp: Path) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    out = {"resnet50": (LIGHT / "light_resnet50.onnx", {"gpu_0/data_0": rng.random((1, 3, 224, 224), np.float32)})}
    with np.load(DATA / "digits_data.npz") as d:
        out["digits"] = (DATA / "digits_cnn.onnx", {"image": d["test_images"][:64]})
    for name in ("mobilenetv3", "mobilenetv3_opset17", "fpn_detector", "transformer", "transformer_opset17",
                 "paddle_style", "control_flow"):
        model = ALL_BUILDERS[name]()
        path = tmp / f"{name}.onnx"
        onnx.save(model, path)
        out[name] = (path, sample_inputs(model, seed=2, dims={"N": 2, "H": 48, "W": 64}))
    return out


@pytest.fixture(scope="module")
def compressed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path, dict[str, np.ndarray]]]:
    tmp = tmp_path_factory.mktemp("compress")
    result = {}
    for name, (src, feeds) in _models(tmp).items():
        out = tmp / f"{name}.out.onnx"
        r = _mcc("compress", str(src), "-o", str(out))
        assert r.returncode == 0, r.stderr
        result[name] = (src, out, feeds)
    return result


@pytest.mark.parametrize("name", ["resnet50", "digits", "mobilenetv3", "mobilenetv3_opset17", "fpn_detector",
                                  "transformer", "transformer_opset17", "paddle_style", "control_flow"])
def test_compressed_model_is_equivalent(compressed: dict, name: str) -> None:
    src, out, feeds = compressed[name]
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops
    assert not any(o.domain == "mcc" for o in model.opset_import)  # plain standard ONNX
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_ALL"):
        for got, want in zip(ort_run(out, feeds, level), ort_run(src, feeds)):
            assert rel_err(got, want) <= 1e-4, f"{name} ({level}): {rel_err(got, want):.2e}"


@pytest.mark.parametrize("name", ["resnet50", "digits", "mobilenetv3", "mobilenetv3_opset17", "fpn_detector",
                                  "transformer", "transformer_opset17", "paddle_style", "control_flow"])
def test_kernels_at_most_half_the_nodes(compressed: dict, name: str) -> None:
    src, out, _ = compressed[name]
    nodes = _inspect(src)["nodes"]
    kernels = _inspect(out)["kernels"]
    assert kernels <= nodes / 2, f"{name}: {kernels} kernels for {nodes} nodes"


def test_resnet50_fuses_into_at_most_60_kernels(compressed: dict) -> None:
    """Every BatchNormalization, Relu and residual Add lands in a Conv's epilogue."""
    import compiler
    import passes

    facts = _inspect(compressed["resnet50"][1])
    assert facts["kernels"] <= 60
    g = passes.run(compiler.import_onnx(compressed["resnet50"][1]), "default")
    loose = [n.op_type for n in g.nodes if n.op_type != "Fused"]
    assert not {"BatchNormalization", "Relu", "Sum", "Add"} & set(loose), loose
    groups = [n for n in g.nodes if n.op_type == "Fused" and n.attributes["body"].nodes[0].op_type == "Conv"]
    shortcut_convs = [n for n in g.nodes if n.op_type == "Conv"]  # projection shortcuts: BN folded, nothing after
    assert len(groups) + len(shortcut_convs) == 53 and len(shortcut_convs) == 4
    assert sum(any(b.op_type in ("Sum", "Add") for b in n.attributes["body"].nodes) for n in groups) == 16


def test_compress_output_is_smaller_without_batchnorm(compressed: dict) -> None:
    src, out, _ = compressed["digits"]
    assert os.path.getsize(out) < os.path.getsize(src)
