"""Compression reports: Markdown with an SVG plot beside it, or one HTML file; byte-deterministic."""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import MccError
from compiler.report import write_report

ROWS = [
    {"layer": "/stem/Conv", "op": "Conv", "channels_before": 32, "channels_after": 20, "macs_before": 73728,
     "macs_after": 46080, "params_before": 288, "params_after": 180},
    {"layer": "/head/Gemm", "op": "Gemm", "mode": "int8 static", "weights": "int8 per-channel (axis 0)",
     "sqnr_db": 49.3, "sparsity": 0.7},
]
SUMMARY = {"MACs": "7.58M -> 3.78M (50.2% fewer)"}


def test_markdown_report(tmp_path: Path) -> None:
    write_report(tmp_path / "r.md", "mcc compression report", SUMMARY, ROWS)
    md = (tmp_path / "r.md").read_text()
    assert "| /stem/Conv | Conv | 32 | 20 |" in md and "49.3" in md and "70.0%" in md and "![" in md
    svg = (tmp_path / "r.svg").read_text()
    assert svg.startswith("<svg") and "SQNR" in svg


def test_reports_are_deterministic(tmp_path: Path) -> None:
    for i in range(2):
        write_report(tmp_path / f"r{i}.html", "mcc compression report", SUMMARY, ROWS)
    a, b = (tmp_path / "r0.html").read_bytes(), (tmp_path / "r1.html").read_bytes()
    assert a == b and b"<svg" in a and b"/head/Gemm" in a


def test_report_suffix_is_checked(tmp_path: Path) -> None:
    with pytest.raises(MccError, match=r"\.md or \.html"):
        write_report(tmp_path / "r.txt", "t", SUMMARY, ROWS)
    assert not list(tmp_path.iterdir())
