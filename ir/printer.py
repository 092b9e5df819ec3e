"""A readable text form of the IR, for humans (`--dump-ir-after`, error messages, tests)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .graph import Graph, Node, Value
from .tensor import Tensor


def _attr(v: Any) -> str:
    if isinstance(v, Tensor):
        if v.array.size <= 4:
            return f"tensor<{v.type}>{np.array2string(v.array.reshape(-1), separator=',')}"
        return f"tensor<{v.type}>"
    if isinstance(v, Graph):
        return f"graph<{v.name}>"
    if isinstance(v, list) and len(v) > 8:
        return f"[{', '.join(map(str, v[:8]))}, ... ({len(v)})]"
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


def _val(v: Value | None) -> str:
    return "_" if v is None else f"%{v.name}"


def format_node(node: Node, indent: str = "") -> list[str]:
    outs = ", ".join(f"%{v.name}: {v.type}" for v in node.outputs)
    ins = ", ".join(_val(v) for v in node.inputs)
    dom = f"{node.domain}." if node.domain else ""
    attrs = {k: v for k, v in node.attributes.items() if not isinstance(v, Graph)}
    a = " {" + ", ".join(f"{k}={_attr(v)}" for k, v in sorted(attrs.items())) + "}" if attrs else ""
    lines = [f"{indent}{outs} = {dom}{node.op_type}({ins}){a}    # {node.name}" if node.name else
             f"{indent}{outs} = {dom}{node.op_type}({ins}){a}"]
    for k, v in sorted(node.attributes.items()):
        for sg in v if isinstance(v, list) else [v]:
            if isinstance(sg, Graph):
                lines.append(f"{indent}  {k}:")
                lines.extend(_graph_lines(sg, indent + "    "))
    return lines


def _graph_lines(g: Graph, indent: str) -> list[str]:
    ins = ", ".join(f"%{v.name}: {v.type}" for v in g.inputs)
    lines = [f"{indent}graph {g.name}({ins}) {{"]
    for v in g.initializers.values():
        lines.append(f"{indent}  %{v.name}: {v.type} = const")
    for n in g.nodes:
        lines.extend(format_node(n, indent + "  "))
    lines.append(f"{indent}  return {', '.join(_val(v) for v in g.outputs)}")
    lines.append(f"{indent}}}")
    return lines


def format_graph(g: Graph) -> str:
    """The whole graph, one node per line: `%y: float[N,8] = Relu(%x)`."""
    head = []
    if g.parent is None and g.opset_imports:
        head.append("opsets: " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(g.opset_imports.items())))
    return "\n".join(head + _graph_lines(g, ""))
