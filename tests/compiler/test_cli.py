"""The `mcc` command line on the bundled digits CNN: inspect, compress, compile, run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import DATA, ROOT, ort_run, rel_err


def mcc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([sys.executable, "-m", "compiler", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                       timeout=300)
    return r


def test_inspect_json_has_the_documented_keys() -> None:
    r = mcc("inspect", str(DATA / "digits_cnn.onnx"), "--json")
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert set(facts) == {"inputs", "outputs", "nodes", "op_counts", "params", "macs", "kernels", "cpu"}
    # what the cpu target runs natively, and what it leaves to the reference (with counts)
    assert facts["cpu"]["native"] >= facts["kernels"] - sum(facts["cpu"]["fallback_ops"].values())
    assert all(isinstance(n, int) and n > 0 for n in facts["cpu"]["fallback_ops"].values())
    assert facts["inputs"] == [{"name": "image", "dtype": "float", "shape": ["batch", 1, 16, 16]}]
    assert facts["outputs"][0]["name"] == "logits"
    assert facts["op_counts"]["Conv"] == 8 and facts["op_counts"]["BatchNormalization"] == 8
    assert facts["nodes"] == sum(facts["op_counts"].values()) >= facts["kernels"] > 0
    # parameters: every weight of the model (conv, BN statistics, head)
    m = onnx.load(DATA / "digits_cnn.onnx")
    assert facts["params"] == sum(int(np.prod(t.dims)) for t in m.graph.initializer)
    # MACs of the convs and the head at batch 1, counted independently here from the weights' shapes
    expected = 0
    hw = {"/stem/stem.0/Conv": 256, "/res/a/a.0/Conv": 256, "/res/b/b.0/Conv": 256}
    weights = {t.name: t.dims for t in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Conv":
            co, ci, kh, kw = weights[n.input[1]]
            expected += co * ci * kh * kw * hw.get(n.name, 64)
        elif n.op_type == "Gemm":
            expected += int(np.prod(weights[n.input[1]]))
    assert facts["macs"] == expected


def test_inspect_table() -> None:
    r = mcc("inspect", str(DATA / "digits_cnn.onnx"))
    assert r.returncode == 0, r.stderr
    assert "image: float[batch, 1, 16, 16]" in r.stdout and "Conv" in r.stdout and "MACs" in r.stdout


def test_compress_is_equivalent_and_deterministic(tmp_path: Path, digits_data: dict[str, np.ndarray]) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"d{i}.onnx"
        r = mcc("compress", str(DATA / "digits_cnn.onnx"), "-o", str(out))
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    onnx.checker.check_model(onnx.load_from_string(outs[0]), full_check=True)
    x = digits_data["test_images"][:32]
    got, want = ort_run(outs[0], {"image": x})[0], ort_run(DATA / "digits_cnn.onnx", {"image": x})[0]
    assert rel_err(got, want) <= 1e-6


def test_compile_then_run_artifact(tmp_path: Path, digits_data: dict[str, np.ndarray]) -> None:
    art = tmp_path / "digits.mcc"
    r = mcc("compile", str(DATA / "digits_cnn.onnx"), "-o", str(art), "--target", "reference")
    assert r.returncode == 0, r.stderr
    first = art.read_bytes()
    assert mcc("compile", str(DATA / "digits_cnn.onnx"), "-o", str(art), "--target", "reference").returncode == 0
    assert art.read_bytes() == first  # deterministic artifact
    r = mcc("compile", str(DATA / "digits_cnn.onnx"), "-o", str(art))  # the native target, the default
    assert r.returncode == 0, r.stderr
    assert "every op runs as a native kernel" in r.stdout  # else it lists the ops left to the reference
    first = art.read_bytes()
    assert mcc("compile", str(DATA / "digits_cnn.onnx"), "-o", str(art)).returncode == 0
    assert art.read_bytes() == first
    x = digits_data["test_images"][:5]
    np.save(tmp_path / "x.npy", x)
    r = mcc("run", str(art), "--input", f"image={tmp_path / 'x.npy'}", "-o", str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "out.npz") as z:
        got = z["logits"]
    assert rel_err(got, ort_run(DATA / "digits_cnn.onnx", {"image": x})[0]) <= 1e-4


def test_run_reports_bad_input_shape(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    r = mcc("run", str(DATA / "digits_cnn.onnx"), "--input", f"image={tmp_path / 'x.npy'}")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        "mcc: error: input 'image' has shape [1, 1, 8, 8], the model expects [batch, 1, 16, 16]"]


@pytest.mark.parametrize("args, message", [
    (["compress", "tests/data/digits_cnn.onnx", "-o", "out.txt"], "should end in .onnx"),
    (["compress", "tests/data/digits_cnn.onnx", "-o", "no/such/dir/x.onnx"], "does not exist"),
    (["inspect", "tests/data/digits_cnn.onnx", "--passes", "dce,bogus"], "unknown pass 'bogus'"),
])
def test_bad_options_give_one_line(args: list[str], message: str) -> None:
    r = mcc(*args)
    assert r.returncode != 0 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_compress_int8_from_the_command_line(tmp_path: Path, digits_data: dict[str, np.ndarray]) -> None:
    """The README's flow: int8 with the bundled calibration file, a report, onnxruntime accuracy."""
    out, report = tmp_path / "int8.onnx", tmp_path / "report.html"
    r = mcc("compress", str(DATA / "digits_cnn.onnx"), "-o", str(out), "--quantize", "int8",
            "--calibration", str(DATA / "digits_calibration.npz"), "--report", str(report))
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size <= 0.40 * (DATA / "digits_cnn.onnx").stat().st_size
    x, y = digits_data["test_images"], digits_data["test_labels"]
    acc = float((ort_run(out, {"image": x}, "ORT_ENABLE_ALL")[0].argmax(1) == y).mean())
    assert acc >= 0.9799 - 0.005
    html = report.read_text()
    assert "int8 per-channel" in html and "<svg" in html


def test_int8_without_calibration_is_refused(tmp_path: Path) -> None:
    r = mcc("compress", str(DATA / "digits_cnn.onnx"), "-o", str(tmp_path / "q.onnx"), "--quantize", "int8")
    assert r.returncode != 0 and "needs --calibration" in r.stderr and not (tmp_path / "q.onnx").exists()
