"""`mcc bench` and compiler.bench on the tiny digits CNN (reference target, a few runs: fast).

No timing is asserted anywhere: on a shared machine a speed says nothing; the tests check that the
numbers are measured, consistent with each other and reported as documented.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import DATA

from compiler import bench
from compiler.cli import main

DIGITS = str(DATA / "digits_cnn.onnx")
JSON_KEYS = {"model", "target", "threads", "shapes", "macs", "compile_s", "warmup", "repeat", "ours_ms",
             "ours_p10_ms", "ours_p90_ms", "gflops", "against", "ort_ms", "ort_p10_ms", "ort_p90_ms", "ratio",
             "ort_gflops", "peak_gflops", "peak_share", "ort_peak_share", "max_rel_err"}


def test_bench_model_against_onnxruntime() -> None:
    pytest.importorskip("onnxruntime")
    r = bench.bench_model(DIGITS, threads=1, target="reference", warmup=1, repeat=3, peak_gflops=100.0)
    assert r.ours_ms > 0 and r.ort_ms is not None and r.ort_ms > 0
    assert r.ours_p10_ms <= r.ours_ms <= r.ours_p90_ms
    assert r.ratio == r.ours_ms / r.ort_ms
    assert r.shapes == {"image": [1, 1, 16, 16]} and r.threads == 1 and r.target == "reference"
    assert r.macs > 0 and r.gflops == pytest.approx(2 * r.macs / (r.ours_ms * 1e-3) / 1e9)
    assert r.peak_share == pytest.approx(r.gflops / 100.0)
    assert r.max_rel_err is not None and r.max_rel_err <= 1e-4  # both ran the same model on the same inputs
    table = bench.format_table([r])
    assert "digits_cnn.onnx" in table and "1x1x16x16" in table and f"{r.ratio:.2f}" in table


def test_symbolic_dims_take_the_given_size() -> None:
    r = bench.bench_model(DIGITS, threads=1, target="reference", against=None, warmup=0, repeat=2,
                          shapes={"batch": [3]}, measure_peak=False)
    one = bench.bench_model(DIGITS, threads=1, target="reference", against=None, warmup=0, repeat=2,
                            measure_peak=False)
    assert r.shapes == {"image": [3, 1, 16, 16]} and r.macs == 3 * one.macs
    assert r.ort_ms is None and r.ratio is None and r.peak_share is None


def test_compare_variants_is_relative_to_the_first() -> None:
    rows = bench.compare_variants(DIGITS, {"fp32": {}, "sparse": {"sparsity": 0.5}}, threads=1,
                                  target="reference", warmup=0, repeat=2)
    assert [r.variant for r in rows] == ["fp32", "sparse"] and rows[0].ratio == 1.0
    assert rows[1].ratio == rows[1].ms / rows[0].ms
    assert "sparsity=0.5" in bench.format_variants(rows)


def test_cli_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    rc = main(["bench", DIGITS, "--against", "onnxruntime", "--threads", "1", "--repeat", "3", "--target",
               "reference", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    r = json.loads(out)
    assert set(r) == JSON_KEYS
    assert r["ours_ms"] > 0 and r["ort_ms"] > 0 and r["ratio"] == r["ours_ms"] / r["ort_ms"]
    assert r["threads"] == 1 and r["repeat"] == 3 and r["against"] == "onnxruntime"
    assert r["peak_gflops"] > 0 and r["peak_share"] == r["gflops"] / r["peak_gflops"]


def test_cli_bench_text_on_an_artifact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    art = tmp_path / "d.mcc"
    assert main(["compile", DIGITS, "-o", str(art), "--target", "reference", "--threads", "1"]) == 0
    capsys.readouterr()
    assert main(["bench", str(art), "--against", "onnxruntime", "--threads", "1", "--repeat", "2", "--no-peak"]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "ratio" in out and "d.mcc" in out


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads '0' is not a number of threads"),
    (["--threads", "-1"], "--threads '-1' is not a number of threads"),
    (["--threads", "x"], "--threads 'x' is not a number of threads"),
    (["--shape", "nope=3"], "no input or symbolic dim of that name"),
    (["--shape", "image=1x1x8x8"], "the model expects [batch, 1, 16, 16]"),
    (["--repeat", "0"], "repeat >= 1"),
])
def test_cli_bench_bad_options_give_one_line(args: list[str], message: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", DIGITS, "--target", "reference", "--no-peak", *args])
    err = capsys.readouterr().err
    assert rc != 0 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_bench_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", str(tmp_path / "nope.onnx"), "--target", "reference", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc != 0 and "no such file" in err and len(err.strip().splitlines()) == 1


def test_bad_thread_env_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MCC_NUM_THREADS", "many")
    rc = main(["bench", DIGITS, "--target", "reference"])
    err = capsys.readouterr().err
    assert rc != 0 and "MCC_NUM_THREADS 'many'" in err and len(err.strip().splitlines()) == 1


def test_missing_onnxruntime_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    rc = main(["bench", DIGITS, "--against", "onnxruntime", "--target", "reference", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc != 0 and "needs onnxruntime" in err and len(err.strip().splitlines()) == 1


def test_threads_default_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MCC_NUM_THREADS", raising=False)
    assert bench.resolve_threads() == bench.all_cores() >= 1
    monkeypatch.setenv("MCC_NUM_THREADS", "3")
    assert bench.resolve_threads() == 3 and bench.resolve_threads("2") == 2 and bench.resolve_threads(5) == 5


def test_threads_option_is_exported_while_the_command_runs(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """--threads reaches compile() and, through MCC_NUM_THREADS, whatever the command loads; restored after."""
    from compiler import cli

    seen: dict[str, object] = {}

    def fake_compile(model: object, target: str = "cpu", pipeline: str = "default", *, threads: int | None = None,
                     **options: object) -> object:
        import os

        seen.update(threads=threads, env=os.environ.get("MCC_NUM_THREADS"))
        raise bench.MccError("stop here")

    monkeypatch.delenv("MCC_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli, "compile", fake_compile)
    assert main(["run", DIGITS, "--threads", "3"]) != 0
    assert seen == {"threads": 3, "env": "3"}
    assert "MCC_NUM_THREADS" not in __import__("os").environ
    assert "stop here" in capsys.readouterr().err


def test_peak_is_positive_and_finite() -> None:
    peak = bench.measure_peak_gflops(1)
    assert math.isfinite(peak) and peak > 0


def test_parse_shapes() -> None:
    assert bench.parse_shapes(["image=1x3x224x224", "batch=4"]) == {"image": (1, 3, 224, 224), "batch": (4,)}
    for bad in ("image", "=3", "image=1xx2", "image=0x3"):
        with pytest.raises(bench.MccError):
            bench.parse_shapes([bad])


def test_markdown_table_aligns_numbers() -> None:
    text = bench.markdown_table(["name", "ms"], [["a", "1.50"], ["bb", None]])
    lines = text.splitlines()
    assert lines[1] == "|------|-----:|" and lines[3] == "| bb   |    – |"
