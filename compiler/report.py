"""Compression reports: a per-layer table and a plot, as Markdown (plot beside it) or one HTML file.

The plot is SVG with fixed ids and no date, so the same compression writes byte-identical reports.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import MccError
from .facts import fmt_count
from .files import write_atomic

COLUMNS = [("layer", "layer"), ("op", "op"), ("channels_before", "channels before"),
           ("channels_after", "channels after"), ("sparsity", "sparsity"), ("skipped", "skipped"),
           ("mode", "quantization"), ("weights", "weights"), ("sqnr_db", "SQNR alone (dB)"), ("macs_before", "MACs before"),
           ("macs_after", "MACs after"), ("params_before", "params before"), ("params_after", "params after"),
           ("weight_bytes_before", "weight bytes before"), ("weight_bytes_after", "weight bytes after")]


def write_report(path: str | Path, title: str, summary: dict[str, Any], layers: Sequence[dict[str, Any]]) -> None:
    """Write `summary` (label -> value) and per-layer rows to FILE.md (+ FILE.svg) or FILE.html."""
    p = Path(path)
    if p.suffix not in (".md", ".html"):
        raise MccError(f"report {str(p)!r} should end in .md or .html")
    svg = _plot(title, layers)
    if p.suffix == ".md":
        plot = p.with_suffix(".svg")
        write_atomic(plot, svg.encode())
        write_atomic(p, _markdown(title, summary, layers, plot.name).encode())
    else:
        write_atomic(p, _html(title, summary, layers, svg).encode())


def _cell(key: str, value: Any) -> str:
    if value is None or value == "":
        return "–"
    if key == "sparsity":
        return f"{float(value):.1%}"
    if key == "sqnr_db":
        return f"{float(value):.1f}"
    if key.startswith(("macs", "params", "weight_bytes")):
        return fmt_count(int(value))
    return str(value)


def _columns(layers: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(k, label) for k, label in COLUMNS if any(row.get(k) not in (None, "") for row in layers)]


def _markdown(title: str, summary: dict[str, Any], layers: Sequence[dict[str, Any]], plot: str) -> str:
    cols = _columns(layers)
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", f"![per-layer changes]({plot})", "", "## Layers", ""]
    lines.append("| " + " | ".join(label for _, label in cols) + " |")
    lines.append("|" + "---|" * len(cols))
    lines += ["| " + " | ".join(_cell(k, row.get(k)) for k, _ in cols) + " |" for row in layers]
    return "\n".join(lines) + "\n"


def _html(title: str, summary: dict[str, Any], layers: Sequence[dict[str, Any]], svg: str) -> str:
    cols = _columns(layers)
    esc = html.escape
    rows = "".join("<tr>" + "".join(f"<td>{esc(_cell(k, r.get(k)))}</td>" for k, _ in cols) + "</tr>\n" for r in layers)
    facts = "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>\n" for k, v in summary.items())
    head = "".join(f"<th>{esc(label)}</th>" for _, label in cols)
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{esc(title)}</title>\n"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}th{background:#f4f4f4}</style>"
            f"</head><body>\n<h1>{esc(title)}</h1>\n<table>{facts}</table>\n{svg}\n<h2>Layers</h2>\n"
            f"<table><tr>{head}</tr>\n{rows}</table>\n</body></html>\n")


def _plot(title: str, layers: Sequence[dict[str, Any]]) -> str:
    """Bars per layer: MACs kept (pruning) and weight sparsity; SVG text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams["svg.hashsalt"] = "mcc"  # deterministic element ids
    names = [str(r.get("layer", "")) for r in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 3.6))
    x = range(len(layers))
    kept = [(r["macs_after"] / r["macs_before"]) if r.get("macs_before") else None for r in layers]
    if any(k is not None for k in kept):
        ax.bar([i - 0.2 for i in x], [k or 0 for k in kept], width=0.4, label="MACs kept")
    sparsity = [r.get("sparsity") for r in layers]
    if any(s is not None for s in sparsity):
        ax.bar([i + 0.2 for i in x], [s or 0 for s in sparsity], width=0.4, label="weight sparsity")
    sqnr = [r.get("sqnr_db") for r in layers]
    if any(v is not None for v in sqnr):  # int8: each layer's SQNR when quantized alone
        ax2 = ax.twinx()
        ax2.plot([i for i, v in zip(x, sqnr) if v is not None], [v for v in sqnr if v is not None], "o-",
                 color="tab:red", label="SQNR alone (dB)")
        ax2.set_ylabel("SQNR (dB)")
        ax2.legend(loc="lower right", fontsize=8)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": "mcc"})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]
