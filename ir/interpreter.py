"""The reference interpreter: runs a graph by calling each op's numpy reference in order.

It is the meaning of the IR. Constant folding, the `reference` target and the property tests all
evaluate through it, so an op's semantics live in exactly one place (its OpDef).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .graph import Graph, Node, Value
from .ops import EvalContext, lookup


class EvaluationError(RuntimeError):
    """An op failed while evaluating; names the node so the user can find it."""


class Interpreter:
    """Evaluates graphs; one instance may be reused across runs (it keeps no per-run state)."""

    def __init__(self, seed: int = 0, observe: Callable[[Value, Any], None] | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        #: Called with every value the top-level graph computes (calibration, activation statistics).
        self.observe = observe

    def run(self, graph: Graph, feeds: Mapping[str, Any]) -> list[Any]:
        """Outputs of `graph` (in graph order) for `feeds`, a name -> array mapping of its inputs."""
        env: dict[int, Any] = {}
        for v in graph.inputs:
            if v.name in feeds:
                env[id(v)] = feeds[v.name]
            elif v.const is not None:  # an input with a default (initializer of the same name)
                env[id(v)] = v.const.array
            else:
                raise KeyError(f"missing input {v.name!r}")
        return self._run(graph, env, None)

    def run_node(self, node: Node, inputs: Sequence[Any], opset: int | None = None) -> list[Any]:
        """Evaluate a single node on given input values (used by constant folding)."""
        op = lookup(node.op_type, node.domain, opset if opset is not None else node.opset, node.name)
        ctx = EvalContext(node, opset if opset is not None else node.opset, self._subgraph_runner({}, None), self.rng)
        return self._call(op, ctx, node, list(inputs))

    # -- internals ----------------------------------------------------------------------------
    def _run(self, graph: Graph, env: dict[int, Any], outer: _Scope | None) -> list[Any]:
        scope = _Scope(env, outer)
        for v in graph.initializers.values():
            env.setdefault(id(v), v.const.array)  # type: ignore[union-attr]
        for node in graph.nodes:
            op = lookup(node.op_type, node.domain, node.opset, node.name)
            args = [None if v is None else scope.get(v) for v in node.inputs]
            ctx = EvalContext(node, node.opset, self._subgraph_runner(env, outer), self.rng)
            results = self._call(op, ctx, node, args)
            for v, r in zip(node.outputs, results):
                env[id(v)] = r
                if self.observe is not None and outer is None:
                    self.observe(v, r)
        return [scope.get(v) for v in graph.outputs]

    def _subgraph_runner(self, env: dict[int, Any], outer: _Scope | None) -> Any:
        def run_sub(sub: Graph, feeds: Sequence[Any]) -> list[Any]:
            inner: dict[int, Any] = {}
            for v, x in zip(sub.inputs, feeds):
                inner[id(v)] = x
            return self._run(sub, inner, _Scope(env, outer))

        return run_sub

    @staticmethod
    def _call(op: Any, ctx: EvalContext, node: Node, args: list[Any]) -> list[Any]:
        attrs = op.resolve_attrs(node.attributes, ctx.opset)
        try:
            out = op.reference(ctx, *args, **attrs)
        except (EvaluationError, KeyError) as e:
            if isinstance(e, KeyError) and not str(e).startswith("'missing"):
                raise EvaluationError(f"{node.op_type} node {node.name!r} failed: {e!r}") from e
            raise
        except Exception as e:  # re-raised with the node's name: the user needs to find it
            raise EvaluationError(f"{node.op_type} node {node.name!r} failed: {e}") from e
        out = list(out) if isinstance(out, tuple) else [out]  # a list is one sequence value
        if len(out) < len(node.outputs):
            raise EvaluationError(
                f"{node.op_type} node {node.name!r} produced {len(out)} outputs, the graph expects {len(node.outputs)}"
            )
        return [_as_array(o) for o in out[: len(node.outputs)]]


def _as_array(x: Any) -> Any:
    if isinstance(x, (np.ndarray, list)) or x is None:
        return x
    if isinstance(x, np.generic):
        return np.asarray(x)
    return x


class _Scope:
    """Value lookup through nested graph scopes (a subgraph sees its enclosing graphs' values)."""

    __slots__ = ("env", "outer")

    def __init__(self, env: dict[int, Any], outer: _Scope | None) -> None:
        self.env, self.outer = env, outer

    def get(self, v: Value) -> Any:
        s: _Scope | None = self
        while s is not None:
            if id(v) in s.env:
                return s.env[id(v)]
            s = s.outer
        if v.const is not None:
            return v.const.array
        raise EvaluationError(f"value {v.name!r} is read before it is defined")


def evaluate(graph: Graph, feeds: Mapping[str, Any]) -> list[Any]:
    """Convenience: run `graph` on `feeds` with a fresh interpreter."""
    return Interpreter().run(graph, feeds)
