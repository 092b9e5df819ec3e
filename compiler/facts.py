"""Facts about a model: inputs, outputs, op counts, parameters, MACs (what `mcc inspect` reports)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

import ir


def model_facts(g: ir.Graph, kernels: int | None = None) -> dict[str, Any]:
    """What `mcc inspect --json` prints: inputs, outputs, nodes, op_counts, params, macs, kernels.

    `kernels` is the number of top-level nodes left after a pipeline (fusion makes one node a kernel);
    the caller passes it, since facts describe the model as given.
    """
    nodes = [n for n in g.all_nodes() if n.domain != "mcc"]  # a fused group counts as the ops inside it
    macs = 0
    for n in nodes:
        op = ir.get_op(n.op_type, n.domain)
        if op is not None and op.macs is not None:
            try:
                macs += int(op.macs(n) or 0)
            except (TypeError, ValueError):
                pass  # a MAC count needs known shapes; unknown ones count as zero
    params = sum(v.const.array.size for v in g.initializers.values() if v.const is not None)
    params += sum(int(np.prod(t.shape)) for n in nodes if n.op_type == "Constant"
                  for t in [n.attributes.get("value")] if isinstance(t, ir.Tensor))
    return {
        "inputs": [_io(v) for v in g.inputs if v.const is None],
        "outputs": [_io(v) for v in g.outputs],
        "nodes": len(nodes),
        "op_counts": dict(sorted(Counter(n.op_type for n in nodes).items())),
        "params": int(params),
        "macs": int(macs),
        "kernels": len(nodes) if kernels is None else kernels,
    }


def _io(v: ir.Value) -> dict[str, Any]:
    return {"name": v.name, "dtype": v.dtype.name.lower() if v.dtype is not None else None,
            "shape": None if v.shape is None else list(v.shape)}


def fmt_count(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)

