"""The CUDA target: shared lowering, generated kernels and driver, artifacts, against the CPU target.

Without a GPU these run on Numba's CUDA simulator (tests/conftest.py sets NUMBA_ENABLE_CUDASIM=1),
which executes the very kernels a GPU would, thread by thread, in Python: shapes stay small. With
a GPU present the same tests run on it. The CPU target is the oracle for whole models (it is itself
checked against onnxruntime), onnxruntime and the reference interpreter for the rest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import DATA, ort_run, rel_err
from hypothesis import HealthCheck, given, settings
from onnx import TensorProto, helper
from test_elementwise import ELEMENTWISE

import compiler
import ir
from codegen.cuda import CudaModel
from codegen.cuda.lower import STEPS, lower
from codegen.memory import check_plan
from passes.testing import graphs

ROOT = Path(__file__).resolve().parents[2]
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _digits(n: int) -> dict[str, np.ndarray]:
    return {"image": np.load(DATA / "digits_data.npz")["test_images"][:n].astype(np.float32)}


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:  # type: ignore[assignment]
    return helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                             opset_imports=[helper.make_opsetid("", opset)], ir_version=9)


def test_digits_on_cuda_equals_cpu_and_onnxruntime() -> None:
    model = onnx.load(DATA / "digits_cnn.onnx")
    gpu = compiler.compile(model, target="cuda")
    cpu = compiler.compile(model, target="cpu")
    feeds = _digits(1 if SIM else 16)  # the simulator runs about 1 us per multiply-add: batch 1
    got = gpu.run(feeds)["logits"]
    assert rel_err(got, cpu.run(feeds)["logits"]) <= 1e-4
    assert rel_err(got, ort_run(model, feeds)[0]) <= 1e-4
    assert gpu.fallback_ops() == {}, gpu.fallback_ops()  # every op has a CUDA kernel


@pytest.mark.parametrize("options", [
    {"quantize": "int8"},
    pytest.param({"sparsity": 0.7}, marks=pytest.mark.slow),  # dense kernels on zeros: nothing new
    pytest.param({"channel_prune": 0.5}, marks=pytest.mark.slow),
], ids=["int8", "sparse70", "pruned50"])
def test_compressed_digits_on_cuda_equal_cpu(options: dict) -> None:  # type: ignore[type-arg]
    kw = dict(options, calibration=DATA / "digits_calibration.npz")
    gpu = compiler.compile(DATA / "digits_cnn.onnx", target="cuda", **kw)
    cpu = compiler.compile(DATA / "digits_cnn.onnx", target="cpu", **kw)
    feeds = _digits(1 if SIM else 16)
    got, want = gpu.run(feeds)["logits"], cpu.run(feeds)["logits"]
    # On a GPU, NVVM contracts a*b+c into one fma, as the CPU's code does not: a rescaled value can
    # land on the other side of the next QuantizeLinear's rounding, one quantization step away,
    # and that step carries to the logits. The simulator computes what the CPU does.
    tol = 1e-4 if SIM or "quantize" not in options else 1e-2
    assert rel_err(got, want) <= tol, rel_err(got, want)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    assert gpu.fallback_ops() == {}, gpu.fallback_ops()


@settings(max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(graphs(max_layers=5))
def test_random_graphs_on_cuda_equal_cpu(ex) -> None:  # type: ignore[no-untyped-def]
    """Whatever the property kit generates, cuda computes what cpu computes (and the reference)."""
    feeds = [ex.feeds[v.name] for v in ex.graph.inputs if v.const is None]
    want = CudaModel.__mro__[1](ex.graph.copy(), threads=1).run(feeds)  # the CPU model
    got = CudaModel(ex.graph.copy()).run(feeds)
    ref = ir.Interpreter().run(ex.graph, ex.feeds)
    for g, w, r in zip(got, want, ref):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert rel_err(g, w) <= 1e-4 and rel_err(g, r) <= 1e-4
    check_plan(lower(ex.graph.copy(), {k: v.shape for k, v in ex.feeds.items()}))


def test_quantize_in_an_epilogue_rounds_half_to_even_and_saturates() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [8])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, [8])
    inits = [onnx.numpy_helper.from_array(np.array(0.5, np.float32), "s"),
             onnx.numpy_helper.from_array(np.array(3, np.uint8), "z")]
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("QuantizeLinear", ["r", "s", "z"], ["y"])],
                   [x], [y], inits)
    xv = np.array([0.25, 0.75, 1.25, 1e9, -3.0, 126.0, 126.25, 2.0], np.float32)
    got = compiler.compile(model, target="cuda", pipeline="dce").run({"x": xv})["y"]
    assert got.dtype == np.uint8
    assert got.tolist() == ort_run(model, {"x": xv})[0].tolist()


def test_fallback_runs_on_the_host_between_kernels() -> None:
    """An op with no CUDA kernel (CumSum) runs its reference between two device kernels: the value
    goes down and comes back up, and the answer is still onnxruntime's."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])
    axis = onnx.numpy_helper.from_array(np.array(1, np.int64), "axis")
    model = _model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("CumSum", ["r", "axis"], ["c"]),
                    helper.make_node("Sigmoid", ["c"], ["y"])], [x], [y], [axis])
    m = compiler.compile(model, target="cuda", pipeline="dce")
    xv = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    assert rel_err(m.run({"x": xv})["y"], ort_run(model, {"x": xv})[0]) <= 1e-6
    assert m.fallback_ops() == {"CumSum": 1}
    source = next(iter(m.native.specializations.values())).emitted.source
    assert "copy_to_host" in source and "cuda.to_device" in source


def test_print_after_each_step(capsys: pytest.CaptureFixture[str]) -> None:
    g = compiler.compress(onnx.load(DATA / "digits_cnn.onnx"))
    program = lower(g, {"image": (2, 1, 16, 16)}, print_after=[s for s in STEPS if s != "emit"])
    out = capsys.readouterr().out
    for step in ("specialize", "prepare", "fuse", "select", "plan-memory"):
        assert f"after {step}" in out
    check_plan(program)
    assert all(id(v) in program.offsets for v in program.outputs)  # outputs live in the device arena


def _small_cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 1, 1])
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")]
    return _model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])],
                  [x], [y], inits)


def test_artifact_records_the_target_and_refuses_another_gpu(tmp_path: Path) -> None:
    model = _small_cnn()
    m = compiler.compile(model, target="cuda")
    path = tmp_path / "d.mcc"
    m.save(path)
    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
        assert any(n.startswith("sources/mcc_cuda_driver_") for n in z.namelist())
    assert manifest["target"] == "cuda" and "compute_capability" in manifest["host"]
    again = compiler.load(path)
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 2, 6, 6)).astype(np.float32)}
    got = again.run(feeds)["y"]
    assert rel_err(got, m.run(feeds)["y"]) <= 1e-6  # split-K sums with atomics: not bit-stable
    assert rel_err(got, ort_run(model, feeds)[0]) <= 1e-4
    manifest["host"]["name"] = "Some Other GPU"
    other = tmp_path / "other.mcc"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(other, "w") as dst:
        for item in src.infolist():
            data = json.dumps(manifest).encode() if item.filename == "manifest.json" else src.read(item)
            dst.writestr(item, data)
    with pytest.raises(compiler.ArtifactError, match="Some Other GPU"):
        compiler.load(other)


@pytest.mark.skipif(not SIM or Path("/proc/driver/nvidia").exists(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_clear_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "MCC_TEST_CUDA")}
    out = tmp_path / "x.mcc"
    r = subprocess.run([sys.executable, "-m", "compiler", "compile", str(DATA / "digits_cnn.onnx"), "--target", "cuda",
                        "-o", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and not out.exists()
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "NVIDIA GPU" in lines[0] and "NUMBA_ENABLE_CUDASIM" in lines[0], r.stderr


PTX_SCRIPT = """
import importlib, sys
from numba import cuda
sys.path.insert(0, sys.argv[1])
mod = importlib.import_module(sys.argv[2])
kernel = getattr(mod, sys.argv[3])
try:
    ptx, _ = cuda.compile_ptx(kernel.py_func, sys.argv[4], cc=(9, 0))
except Exception as e:  # no NVVM/NVRTC on this machine: the caller skips
    if any(w in str(e) for w in ("libnvvm", "NVVM", "nvrtc", "NVRTC", "driver")):
        print("SKIP", type(e).__name__, e)
        sys.exit(0)
    raise
print("PTX", len(ptx), ".f64" in ptx)
"""


@pytest.mark.skipif(not SIM, reason="on a GPU every kernel is compiled for real anyway")
def test_generated_elementwise_kernels_compile_to_ptx() -> None:
    """The simulator runs any Python; NVVM does not. Compile the generated kernels of the op test
    above for sm_90 (where NVVM is installed) and check they stay in float32."""
    from codegen.cpu.runtime import source_dir

    special = np.zeros(4, np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    outs = [helper.make_tensor_value_info(op, TensorProto.FLOAT, [4]) for op in ELEMENTWISE]
    model = _model([helper.make_node(op, ["x"], [op]) for op in ELEMENTWISE], [x], outs, opset=20)
    m = compiler.compile(model, target="cuda", pipeline="dce")
    m.run({"x": special})
    spec = next(iter(m.native.specializations.values()))
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    for module in sorted(spec.emitted.kernels)[:6]:
        kernel = module.removeprefix("mcc_cuda_launch_")
        r = subprocess.run([sys.executable, "-c", PTX_SCRIPT, str(source_dir()), module, kernel,
                            "void(float32[::1], float32[::1])"], capture_output=True, text=True, env=env,
                           cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        if r.stdout.startswith("SKIP"):
            pytest.skip(r.stdout)
        assert r.stdout.startswith("PTX") and r.stdout.split()[2] == "False", (module, r.stdout)


@pytest.mark.skipif(SIM, reason="CUDA graphs need a GPU")
def test_launches_are_replayed_as_a_cuda_graph() -> None:
    """After the first run the kernel launches are one recorded graph; replays still compute
    each new input's answer."""
    model = _small_cnn()
    m = compiler.compile(model, target="cuda")
    rng = np.random.default_rng(3)
    for _ in range(3):
        feeds = {"x": rng.standard_normal((1, 2, 6, 6)).astype(np.float32)}
        assert rel_err(m.run(feeds)["y"], ort_run(model, feeds)[0]) <= 1e-4
    assert next(iter(m.native.specializations.values())).executable.graph is not None


def test_convolution_epilogues_fuse_into_the_store() -> None:
    """Conv + bias + residual Add + Relu is one kernel writing the activated output (in place
    over the residual, which dies there); a value also read elsewhere stops the fusion."""
    rng = np.random.default_rng(4)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5, 5]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3, 5, 5])]
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((3, 3, 3, 3)).astype(np.float32), n) for n in "wv"]
    inits += [onnx.numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Conv", ["r", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "r"], ["s"]), helper.make_node("Relu", ["s"], ["y"]),
             helper.make_node("Conv", ["y", "v", "b"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["d"], ["e"]), helper.make_node("Add", ["e", "d"], ["z"])]
    model = _model(nodes, [x], outs, inits)
    m = compiler.compile(model, target="cuda")
    feeds = {"x": rng.standard_normal((2, 3, 5, 5)).astype(np.float32)}
    got, want = m.run(feeds), ort_run(model, feeds)
    assert rel_err(got["y"], want[0]) <= 1e-5 and rel_err(got["z"], want[1]) <= 1e-5
    program = lower(compiler.compress(model), {"x": (2, 3, 5, 5)})
    fused = [c.args[-1].value for c in program.calls if c.kernel is not None and c.kernel.name == "conv2d_fused"]
    assert fused == ["add_relu"]  # the second conv's output is read twice: it keeps its own kernel
    check_plan(program)
