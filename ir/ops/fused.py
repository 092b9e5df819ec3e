"""`mcc.Fused`: a group of ops that codegen lowers as one kernel; its body is a subgraph."""

from __future__ import annotations

from typing import Any

from .core import Kind, defop, get_op


def _infer(ctx, *types: Any, body: Any = None, **_: Any) -> list[Any]:
    return [v.type for v in body.outputs] if body is not None else []


def _macs(node: Any) -> int:
    total = 0
    for n in node.attributes["body"].nodes:
        op = get_op(n.op_type, n.domain)
        if op is not None and op.macs is not None:
            total += int(op.macs(n) or 0)
    return total


@defop("Fused", domain="mcc", kind=Kind.OPAQUE, attrs={"body": None, "kind": "opaque"}, infer=_infer, macs=_macs)
def fused(ctx, *inputs: Any, body: Any, kind: str) -> Any:
    """Runs the group's body: a fused group means exactly what its ops mean in sequence."""
    outs = ctx.run_graph(body, list(inputs))
    return tuple(outs) if len(outs) != 1 else outs[0]
