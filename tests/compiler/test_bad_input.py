"""Bad input to `mcc inspect` and `mcc compile`: one clear line, non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import DATA, ROOT


def _mcc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "compiler", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _undefined_tensor(path: Path) -> None:
    node = helper.make_node("Relu", ["ghost"], ["y"], name="relu_reads_ghost")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _escaping_external_data(path: Path) -> None:
    """A model whose weight lives in '../secret.bin': outside the model's folder."""
    (path.parent.parent / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    w = numpy_helper.from_array(np.zeros(4, np.float32), "w")
    w.ClearField("float_data")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "../secret.bin"), ("offset", "0"), ("length", "16")):
        w.external_data.add(key=k, value=v)
    node = helper.make_node("Add", ["x", "w"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], initializer=[w])
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())


def _truncated(path: Path) -> None:
    data = (DATA / "digits_cnn.onnx").read_bytes()
    path.write_bytes(data[: len(data) // 3])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())


def _unknown_op(path: Path) -> None:
    node = helper.make_node("FancyOp", ["x"], ["y"], name="fancy", domain="com.example")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                         helper.make_opsetid("com.example", 1)]).SerializeToString())


CASES = {
    "truncated": (_truncated, "truncated or corrupt"),
    "random-bytes": (_random_bytes, "not a valid ONNX model"),
    "missing": (None, "no such file"),
    "undefined-tensor": (_undefined_tensor, "reads tensor 'ghost'"),
    "external-data-escape": (_escaping_external_data, "outside the model's folder"),
    "unknown-op": (_unknown_op, "unsupported op com.example::FancyOp at opset 1"),
}


@pytest.mark.parametrize("command", ["inspect", "compile"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_model_gives_one_clear_line(tmp_path: Path, case: str, command: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = models / "model.onnx"
    make, expected = CASES[case]
    if make is not None:
        make(path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["inspect", str(path)] if command == "inspect" else ["compile", str(path), "-o", str(out_dir / "m.mcc")]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = _mcc(*args, cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("mcc: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in r.stderr + r.stdout
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_import_api_raises_typed_errors(tmp_path: Path) -> None:
    import compiler
    import ir

    _unknown_op(tmp_path / "u.onnx")
    with pytest.raises(ir.UnsupportedOpError, match="unsupported op com.example::FancyOp at opset 1"):
        compiler.import_onnx(tmp_path / "u.onnx")
    with pytest.raises(compiler.ModelLoadError, match="no such file"):
        compiler.import_onnx(tmp_path / "nope.onnx")


def test_external_data_inside_folder_is_read(tmp_path: Path) -> None:
    """The safe case still works: external data next to the model is loaded."""
    import compiler

    m = onnx.load(DATA / "digits_cnn.onnx")
    onnx.save_model(m, tmp_path / "ext.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    g = compiler.import_onnx(tmp_path / "ext.onnx")
    ref = compiler.import_onnx(DATA / "digits_cnn.onnx")
    for name, v in ref.initializers.items():
        np.testing.assert_array_equal(g.initializers[name].const.array, v.const.array)


def test_run_rejects_wrong_inputs(digits_path: Path) -> None:
    import compiler

    m = compiler.compile(digits_path, target="reference")
    with pytest.raises(compiler.InputError, match="missing input"):
        m.run({})
    with pytest.raises(compiler.InputError, match="dtype float64"):
        m.run({"image": np.zeros((1, 1, 16, 16))})
    with pytest.raises(compiler.InputError, match="expects"):
        m.run({"image": np.zeros((1, 1, 8, 16), np.float32)})
    with pytest.raises(compiler.InputError, match="unknown input"):
        m.run({"image": np.zeros((1, 1, 16, 16), np.float32), "extra": np.zeros(1)})


def _calibration_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    x = np.zeros((4, 1, 16, 16), np.float32)
    cases = {}
    np.savez(tmp / "wrong_name.npz", images=x)
    cases["wrong-name"] = (tmp / "wrong_name.npz", "no array for model input(s) 'image'")
    np.savez(tmp / "wrong_shape.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    cases["wrong-shape"] = (tmp / "wrong_shape.npz", "the model expects dim 2 = 16")
    np.savez(tmp / "wrong_rank.npz", image=np.zeros((4, 16, 16), np.float32))
    cases["wrong-rank"] = (tmp / "wrong_rank.npz", "expects rank 4")
    np.savez(tmp / "wrong_dtype.npz", image=x.astype(np.int32))
    cases["wrong-dtype"] = (tmp / "wrong_dtype.npz", "has dtype int32")
    np.savez(tmp / "pickled.npz", image=np.array([{"a": 1}], dtype=object))
    cases["pickled"] = (tmp / "pickled.npz", "holds pickled objects")
    (tmp / "junk.npz").write_bytes(b"not a zip file at all")
    cases["not-npz"] = (tmp / "junk.npz", "is not an .npz file")
    cases["missing"] = (tmp / "nope.npz", "no such file or folder")
    (tmp / "empty").mkdir()
    cases["empty-folder"] = (tmp / "empty", "holds no .npz files")
    return cases


@pytest.mark.parametrize("case", ["wrong-name", "wrong-shape", "wrong-rank", "wrong-dtype", "pickled", "not-npz", "missing",
                                  "empty-folder"])
def test_calibration_that_does_not_match_the_model(tmp_path: Path, case: str) -> None:
    cal_dir = tmp_path / "cal"
    cal_dir.mkdir()
    path, expected = _calibration_cases(cal_dir)[case]
    out = tmp_path / "out"
    out.mkdir()
    r = _mcc("compress", str(DATA / "digits_cnn.onnx"), "-o", str(out / "m.onnx"), "--calibration", str(path),
             cwd=tmp_path)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcc: error: calibration") and expected in lines[0], r.stderr
    assert list(out.iterdir()) == []
