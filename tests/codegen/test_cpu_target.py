"""The CPU target: lowering, memory planning, generated drivers, artifacts, against onnxruntime.

onnxruntime is the oracle for whole models; the reference interpreter for random graphs from the
property kit. Every lowering also checks its memory plan: no two live buffers may overlap.
"""

from __future__ import annotations

import io
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

import compiler
import ir
from codegen.cpu import CpuModel, native_report
from codegen.cpu.elementwise import reduce_shapes
from codegen.cpu.lower import STEPS, lower
from codegen.cpu.runtime import code_digest
from codegen.memory import check_plan
from codegen.program import Use
from passes.testing import assert_same_outputs, graphs
from tests.models import ALL_BUILDERS, sample_inputs

ROOT = Path(__file__).resolve().parents[2]
SIZES = [{"N": 1, "H": 32, "W": 32}, {"N": 3, "H": 48, "W": 80}]


def _digits_feeds(n: int = 4) -> dict[str, np.ndarray]:
    x = np.load(DATA / "digits_data.npz")["test_images"][:n].astype(np.float32)
    return {"image": x}


def test_default_target_is_cpu() -> None:
    m = compiler.compile(DATA / "digits_cnn.onnx")
    assert m.target == "cpu" and compiler.Backend.target == "cpu"


def test_digits_matches_onnxruntime_and_runs_natively() -> None:
    model = onnx.load(DATA / "digits_cnn.onnx")
    m = compiler.compile(model)
    for n in (1, 5):
        feeds = _digits_feeds(n)
        got = m.run(feeds)
        want = ort_run(model, feeds)
        assert rel_err(got["logits"], want[0]) <= 1e-4
    spec = next(iter(m.native.specializations.values()))
    assert not spec.fallback_ops, spec.fallback_ops  # every op of the digits CNN has a native kernel
    assert len(m.native.specializations) == 2  # batch 1 and batch 5: one driver per shape


@pytest.mark.parametrize("name", sorted(ALL_BUILDERS))
def test_real_world_models_plan_memory_soundly(name: str) -> None:
    """Outputs are checked against onnxruntime in tests/compiler/test_real_world_models.py; here the
    plans of the same models at the same sizes: no two live buffers overlap."""
    g = compiler.compress(ALL_BUILDERS[name]())
    for dims in SIZES:
        shapes = {v.name: tuple(d if isinstance(d, int) else dims[d] for d in v.shape)
                  for v in g.inputs if v.const is None and v.shape is not None}
        check_plan(lower(g, shapes))


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(graphs(max_layers=6))
def test_random_graphs_match_the_interpreter(ex) -> None:  # type: ignore[no-untyped-def]
    """Whatever the property kit generates, the native target computes what the reference does."""
    want = ir.Interpreter().run(ex.graph, ex.feeds)
    g = ex.graph.copy()
    m = CpuModel(g, threads=2)
    got = m.run([ex.feeds[v.name] for v in m.inputs])
    assert_same_outputs(want, got, "cpu target vs interpreter")
    shapes = {k: v.shape for k, v in ex.feeds.items()}
    check_plan(lower(g, shapes))


def test_memory_plan_reuses_and_never_overlaps() -> None:
    g = compiler.compress(ALL_BUILDERS["mobilenetv3"]())
    shapes = {v.name: tuple(d if isinstance(d, int) else 2 for d in v.shape) for v in g.inputs if v.const is None}
    program = lower(g, shapes)
    check_plan(program)
    total = sum(n for _, n in set(program.offsets.values()))
    assert program.arena_bytes < 0.6 * total, (program.arena_bytes, total)
    shared = [c for c in program.calls if c.inplace and any(
        program.offsets.get(id(o)) == program.offsets.get(id(i)) for o, i in c.inplace)]
    assert shared, "no epilogue was computed in place"


def test_check_plan_catches_overlap() -> None:
    g = compiler.compress(onnx.load(DATA / "digits_cnn.onnx"))
    program = lower(g, {"image": (1, 1, 8, 8)})
    check_plan(program)
    for c in program.calls:  # a call reading one buffer and writing another: both are live there
        used = [a.value for a in c.args if isinstance(a, Use) and id(a.value) in program.offsets]
        pairs = [(x, y) for x in used for y in used if program.storage[id(x)] != program.storage[id(y)]]
        if pairs:
            x, y = pairs[0]
            moved = program.storage[id(y)]
            for vid, sid in program.storage.items():
                if sid == moved:
                    program.offsets[vid] = (program.offsets[id(x)][0], program.offsets[vid][1])
            break
    with pytest.raises(AssertionError, match="overlap"):
        check_plan(program)


def test_print_after_each_step(capsys: pytest.CaptureFixture[str]) -> None:
    g = compiler.compress(onnx.load(DATA / "digits_cnn.onnx"))
    lower(g, {"image": (1, 1, 8, 8)}, print_after=[s for s in STEPS if s != "emit"])
    out = capsys.readouterr().out
    for step in ("specialize", "prepare", "fuse", "select", "plan-memory"):
        assert f"after {step}" in out
    assert "conv2d" in out and "arena" in out
    with pytest.raises(ValueError, match="unknown lowering step"):
        lower(g, {"image": (1, 1, 8, 8)}, print_after=["nonsense"])


def test_reduce_shapes_merges_alike_dims() -> None:
    full, views = reduce_shapes((1, 64, 56, 56), [(1, 64, 56, 56), (64, 1, 1)])
    assert full == (64, 3136) and views == [(64, 3136), (64, 1)]
    full, views = reduce_shapes((2, 3), [(2, 3), ()])
    assert full == (6,) and views == [(6,), (1,)]


def test_fallback_ops_are_reported_and_still_right() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])
    k = helper.make_tensor("k", TensorProto.INT64, [1], [3])
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("TopK", ["r", "k"], ["v", "i"], axis=1),
             helper.make_node("Sigmoid", ["v"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
                                                [k]), opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    m = compiler.compile(model)
    feeds = {"x": np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)}
    assert rel_err(m.run(feeds)["y"], ort_run(model, feeds)[0]) <= 1e-6
    assert m.fallback_ops() == {"TopK": 1}
    assert native_report(m.graph)["fallback_ops"] == {"TopK": 1}


def test_threads_give_the_same_answer() -> None:
    model = ALL_BUILDERS["fpn_detector"]()
    feeds = sample_inputs(model, seed=3, dims={"N": 1, "H": 64, "W": 64})
    one = compiler.compile(model, threads=1).run(feeds)
    two = compiler.compile(model, threads=2).run(feeds)
    for a, b in zip(one.values(), two.values()):
        assert rel_err(a, b) <= 1e-6


# -- artifacts --------------------------------------------------------------------------------


def test_artifact_loads_in_a_new_process_and_is_deterministic(tmp_path: Path) -> None:
    m = compiler.compile(DATA / "digits_cnn.onnx")
    feeds = _digits_feeds(3)
    want = m.run(feeds)["logits"]
    a, b = tmp_path / "a.mcc", tmp_path / "b.mcc"
    m.save(a)
    compiler.compile(DATA / "digits_cnn.onnx").run(feeds)
    m.save(b)
    assert a.read_bytes() == b.read_bytes()
    with zipfile.ZipFile(a) as z:
        names = z.namelist()
        assert "manifest.json" in names and "weights.npz" in names
        assert any(n.startswith("sources/mcc_driver_") for n in names)
        assert not any(n.endswith((".pkl", ".pickle")) for n in names)
    np.save(tmp_path / "x.npy", feeds["image"])
    code = ("import sys, numpy as np, compiler; m = compiler.load(sys.argv[1]); "
            "np.save(sys.argv[3], m.run({'image': np.load(sys.argv[2])})['logits']); "
            "print(m.native.specializations and 'native')")
    out = subprocess.run([sys.executable, "-c", code, str(a), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert "native" in out.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), want)


def _rewrite_manifest(src: Path, dst: Path, edit) -> None:  # type: ignore[no-untyped-def]
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(members["manifest.json"])
    edit(manifest)
    members["manifest.json"] = json.dumps(manifest).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    dst.write_bytes(buf.getvalue())


@pytest.mark.parametrize("field,value,message", [
    ("name", "sapphirerapids", "built for CPU sapphirerapids"),
    ("features", ["avx512f"], "CPU features"),
    ("numba", "0.1.0", "Numba 0.1.0"),
])
def test_artifact_for_another_machine_is_refused(tmp_path: Path, field: str, value: object, message: str) -> None:
    m = compiler.compile(DATA / "digits_cnn.onnx")
    m.run(_digits_feeds(1))
    m.save(tmp_path / "a.mcc")

    def edit(man: dict) -> None:  # type: ignore[type-arg]
        man["host"][field] = value

    _rewrite_manifest(tmp_path / "a.mcc", tmp_path / "b.mcc", edit)
    with pytest.raises(compiler.ArtifactError, match=message) as e:
        compiler.load(tmp_path / "b.mcc")
    assert "recompile" in str(e.value)


def test_corrupt_artifact_is_one_clear_error(tmp_path: Path) -> None:
    m = compiler.compile(DATA / "digits_cnn.onnx")
    m.run(_digits_feeds(1))
    m.save(tmp_path / "a.mcc")
    data = (tmp_path / "a.mcc").read_bytes()
    (tmp_path / "t.mcc").write_bytes(data[: len(data) // 2])
    with pytest.raises(compiler.ArtifactError, match="corrupt|truncated"):
        compiler.load(tmp_path / "t.mcc")

    def drop_weights(man: dict) -> None:  # type: ignore[type-arg]
        man["specializations"][0]["driver"] = "mcc_driver_missing"

    _rewrite_manifest(tmp_path / "a.mcc", tmp_path / "c.mcc", drop_weights)
    with pytest.raises(compiler.ArtifactError, match="incomplete or corrupt"):
        compiler.load(tmp_path / "c.mcc")


# -- compressed models ------------------------------------------------------------------------


@pytest.mark.parametrize("options", [
    {"quantize": "int8"},
    {"sparsity": 0.7},
    {"sparsity": 0.5, "sparsity_pattern": "2:4"},
    {"channel_prune": 0.5},
], ids=["int8", "sparse70", "sparse2of4", "pruned50"])
def test_compressed_digits_keep_onnxruntime_accuracy(options: dict) -> None:  # type: ignore[type-arg]
    """Compiled for cpu, a compressed model is as accurate as onnxruntime running its ONNX."""
    data = np.load(DATA / "digits_data.npz")
    x, y = data["test_images"].astype(np.float32), data["test_labels"]
    g = compiler.compress(DATA / "digits_cnn.onnx", calibration=DATA / "digits_calibration.npz", **options)
    proto = compiler.export_onnx(g)
    ours = compiler.compile(g).run({"image": x})["logits"].argmax(1)
    theirs = ort_run(proto, {"image": x}, level="ORT_ENABLE_ALL")[0].argmax(1)
    acc_ours, acc_ort = float((ours == y).mean()), float((theirs == y).mean())
    assert abs(acc_ours - acc_ort) <= 0.005, (acc_ours, acc_ort)
    assert acc_ours >= 0.97
    program = lower(g, {"image": (64, 1, 16, 16)})
    notes = " ".join(c.note for c in program.calls)
    if "sparsity" in options:
        assert "sparse" in notes  # at batch 64 the cost model takes the sparse kernels
    if "quantize" in options:
        assert any(c.node.op_type == "ConvInteger" for c in program.calls)
        assert not any(c.node.op_type == "DequantizeLinear" and c.kernel is None for c in program.calls)


def test_kernels_are_cached_under_mcc_cache_dir(tmp_path: Path) -> None:
    """A fresh cache folder fills with the generated sources and Numba's compiled code; a second
    process finds them (it compiles nothing, so it is much faster to its first result)."""
    code = ("import time, numpy as np, compiler; t = time.perf_counter(); "
            "m = compiler.compile('tests/data/digits_cnn.onnx'); "
            "m.run({'image': np.zeros((2, 1, 16, 16), np.float32)}); print(time.perf_counter() - t)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MCC_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("NUMBA_CACHE_DIR", None)
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr + runs[1].stderr
    sources = list((tmp_path / "cache" / "py").glob("mcc_driver_*.py"))
    assert len(sources) == 2  # batch 1 (ahead of time) and batch 2 (at run time)
    cached = list((tmp_path / "cache" / "numba").rglob("*.nbi"))
    assert cached, "Numba cached nothing under MCC_CACHE_DIR"
    assert {p.relative_to(tmp_path / "cache" / "numba").parts[0] for p in cached} == {code_digest()}
    cold, warm = (float(r.stdout.split()[-1]) for r in runs)
    assert warm < cold


def test_the_numba_cache_folder_follows_the_kernel_sources(tmp_path: Path) -> None:
    """Generated kernels inline package kernels, which Numba's cache does not track: a change to
    any codegen source must give compiled code a new folder."""
    import shutil

    copy = tmp_path / "codegen"
    shutil.copytree(ROOT / "codegen", copy, ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import codegen.cpu.runtime as r; "
              "print(r.code_digest(), r.numba_cache_dir())")
    env = {**os.environ, "MCC_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}

    def digest() -> list[str]:
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                             env=env, cwd=tmp_path, check=True).stdout.split()
        return out

    before = digest()
    assert before[0] == code_digest() and before[1] == str(tmp_path / "cache" / "numba" / before[0])
    vmath = copy / "cpu" / "vmath.py"
    vmath.write_text(vmath.read_text() + "\n# an edit\n")
    assert digest()[0] != before[0]


# -- epilogues ----------------------------------------------------------------------------------


def _conv_act_model(act: str, *, expose_conv: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x -> Conv(3x3, bias) -> act; with `expose_conv` the Conv's output is a graph output too."""
    rng = np.random.default_rng(11)
    w = helper.make_tensor("w", TensorProto.FLOAT, (12, 6, 3, 3), rng.standard_normal(12 * 6 * 9).astype(np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, (12,), rng.standard_normal(12).astype(np.float32))
    inits = [w, b]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])]
    if act == "Relu":
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    else:
        inits += [helper.make_tensor("lo", TensorProto.FLOAT, (), [0.0]), helper.make_tensor("hi", TensorProto.FLOAT, (), [1.5])]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"]))
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if expose_conv:
        outs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "conv_act", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (1, 6, 20, 30))],
                          outs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = rng.standard_normal((1, 6, 20, 30)).astype(np.float32)
    return m, {"x": x}


@pytest.mark.parametrize("act", ["Relu", "Clip"])
def test_conv_bias_and_activation_are_applied_at_the_direct_convs_store(act: str) -> None:
    """Conv + bias + Relu/Clip is one call of the direct kernel's epilogue entry (no elementwise
    pass over the output), and it matches onnxruntime."""
    m, feeds = _conv_act_model(act)
    g = compiler.import_onnx(m)
    program = lower(g, {"x": (1, 6, 20, 30)})
    kernels = [c.kernel.name for c in program.calls if c.kernel is not None]
    assert kernels == ["conv2d_direct_ep"], [c.note for c in program.calls]
    assert program.calls[0].note == ("direct +bias relu" if act == "Relu" else "direct +bias clip")
    ours = compiler.compile(g).run(feeds)["y"]
    theirs = ort_run(m, feeds)[0]
    assert rel_err(ours, theirs) < 1e-5
    assert (ours >= 0).all() and (act == "Relu" or (ours <= 1.5).all())


def test_a_conv_output_that_escapes_keeps_its_own_store() -> None:
    """When the Conv's (biased) output is also a graph output, the epilogue stops there: the
    Relu cannot replace it, and runs as an elementwise kernel after."""
    m, feeds = _conv_act_model("Relu", expose_conv=True)
    g = compiler.import_onnx(m)
    program = lower(g, {"x": (1, 6, 20, 30)})
    assert [c.note for c in program.calls] == ["direct +bias", "Relu"]
    out = compiler.compile(g).run(feeds)
    theirs = ort_run(m, feeds)
    assert rel_err(out["y"], theirs[0]) < 1e-5 and rel_err(out["c"], theirs[1]) < 1e-5
    assert (out["c"] < 0).any()
