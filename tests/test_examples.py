"""The examples a newcomer copies from run and print what they promise."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import ROOT


def test_run_digits_example() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "run_digits.py")], capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    acc = float(re.search(r"accuracy ([\d.]+)%", r.stdout).group(1))
    assert acc == 97.99  # the trained model's accuracy on the held-out digits, exactly
    diff = float(re.search(r"max relative difference ([\d.e+-]+)", r.stdout).group(1))
    assert diff <= 1e-5
