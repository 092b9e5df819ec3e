"""The examples a newcomer copies from run and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import ROOT


def _run(script: str, *args: str) -> str:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                       timeout=600, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_run_digits_example() -> None:
    out = _run("run_digits.py")
    acc = float(re.search(r"accuracy ([\d.]+)%", out).group(1))
    assert acc == 97.99  # the trained model's accuracy on the held-out digits, exactly
    diff = float(re.search(r"max relative difference ([\d.e+-]+)", out).group(1))
    assert diff <= 1e-5


def _table(out: str) -> dict[str, tuple[float, float]]:
    """label -> (accuracy %, file kB) from the examples' result lines."""
    rows = re.findall(r"^(.+?)\s+accuracy\s+([\d.]+)%.*?file\s+([\d.]+) kB", out, flags=re.M)
    return {label.strip(): (float(a), float(kb)) for label, a, kb in rows}


def test_quantize_digits_example() -> None:
    rows = _table(_run("quantize_digits.py"))
    fp32_acc, fp32_kb = rows["fp32"]
    assert rows["int8"][0] >= fp32_acc - 0.5 and rows["int8"][1] <= 0.40 * fp32_kb
    assert rows["dynamic"][0] >= fp32_acc - 0.5
    assert rows["fp16"][0] >= fp32_acc - 0.1 and rows["fp16"][1] <= 0.55 * fp32_kb


def test_prune_digits_example() -> None:
    out = _run("prune_digits.py")
    rows = _table(out)
    macs = dict(re.findall(r"^(.+?)\s+accuracy.*?MACs\s+([\d.]+) M", out, flags=re.M))
    assert rows["original"][0] == 97.99
    pruned = next(k for k in rows if k.startswith("channels"))
    assert rows[pruned][0] >= 95.99 and float(macs[pruned]) <= 0.53 * float(macs["original"])
    assert rows["70% sparse"][0] >= 96.99 and rows["2:4 sparse"][0] >= 96.99


def test_compile_digits_example() -> None:
    out = _run("compile_digits.py", "--threads", "1")
    rows = {m.group(1): (float(m.group(2)), m.group(3)) for m in
            re.finditer(r"^(\w+(?: \d+%)?)\s+accuracy ([\d.]+)%.*reference fallbacks: (.*)$", out, re.M)}
    assert set(rows) == {"fp32", "int8", "sparse 70%", "pruned 50%"}, out
    assert rows["fp32"][0] == 97.99 and rows["int8"][0] == 97.99  # as onnxruntime gives on their ONNX
    assert rows["sparse 70%"][0] >= 97.0 and rows["pruned 50%"][0] >= 97.0
    assert all(fallbacks == "none" for _, fallbacks in rows.values()), out
