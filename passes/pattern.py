"""Peephole rewrites as data: (pattern, replacement, check) rules applied by one greedy driver.

A pattern is a tree of `Op` nodes whose leaves are capture names (str: any value), `Const` (a
constant, captured as a numpy array, optionally required to equal a number) or nested `Op`s::

    # x * Clip(x + 3, 0, 6) / 6  ->  HardSwish(x)
    Rule("hardswish",
         Op("Div", Op("Mul", "x", Op("Clip", Op("Add", "x", Const(3.0)), ...)), Const(6.0)),
         lambda b, m: b.op("HardSwish", m["x"]))

Matching starts at a root node and walks producers. A name used twice must bind the same Value,
and a leaf may repeat an `Op(..., name=n)`'s name to mean that op's (first) output: a value read twice
inside the pattern, like LayerNorm's `x - mean` (read by Pow and by Div);
commutative ops (Add, Mul, ...) match their two inputs in either order; every value inside the match
except the root's outputs must have no reader outside the match (so the rewrite never duplicates work);
an `Op(..., where=fn)` check runs on the node and `Rule.check` on the whole match.

The replacement receives a `Builder` (to create nodes before the root) and the `Match`, and returns the
value(s) that replace the root's outputs; the driver rewires readers and deletes the dead nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from ir import Graph, Node, Value
from ir.ops import constant_value as const_value  # the constant a value holds, else None

COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Xor", "Equal"})


@dataclass(frozen=True)
class Const:
    """A constant leaf: captured under `name` (as an array); equal to `value` when one is given."""

    name: str = ""
    value: float | None = None
    rtol: float = 1e-6

    def accepts(self, arr: np.ndarray) -> bool:
        if self.value is None:
            return True
        if arr.dtype == object or arr.size == 0:
            return False
        a = arr.astype(np.float64)
        return bool(np.allclose(a, self.value, rtol=self.rtol, atol=self.rtol * 1e-3))


@dataclass(frozen=True)
class Op:
    """An op leaf: `op_type` with input patterns; `where(node)` may add a check (attributes...)."""

    op_type: str
    inputs: tuple[Pattern, ...] = ()
    where: Callable[[Node], bool] | None = None
    name: str = ""  # capture the node itself in Match.nodes under this name
    #: Inputs beyond the listed patterns are allowed (e.g. optional inputs checked by `where`).
    extra_inputs: bool = False

    def __init__(self, op_type: str, *inputs: Pattern, where: Callable[[Node], bool] | None = None,
                 name: str = "", extra_inputs: bool = False) -> None:
        object.__setattr__(self, "op_type", op_type)
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "where", where)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "extra_inputs", extra_inputs)


Pattern = Union[str, Const, Op]


@dataclass
class Match:
    """What a pattern bound: values by capture name, constants as arrays, nodes in match order."""

    root: Node
    values: dict[str, Value] = field(default_factory=dict)
    consts: dict[str, np.ndarray] = field(default_factory=dict)
    named: dict[str, Node] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)

    def __getitem__(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        if name in self.consts:
            return self.consts[name]
        return self.named[name]


def match(pattern: Pattern, root: Node) -> Match | None:
    """Match `pattern` (an Op) with `root` as its top node."""
    if not isinstance(pattern, Op):
        raise TypeError("a rule's pattern must be an Op")
    m = Match(root)
    if not _match_node(pattern, root, m):
        return None
    # Intermediate values may be read only inside the match: rewriting must not duplicate work.
    inside = {id(n) for n in m.nodes}
    for n in m.nodes:
        if n is root:
            continue
        for v in n.outputs:
            if v.is_graph_output or any(id(u) not in inside for u, _ in v.uses):
                return None
    return m


def _match_node(p: Op, node: Node, m: Match) -> bool:
    if node.op_type != p.op_type or node.domain not in ("", "ai.onnx") or node in m.nodes:
        return False
    n_in = len(node.inputs)
    if n_in < len(p.inputs) or (n_in > len(p.inputs) and not p.extra_inputs):
        return False
    if p.where is not None and not p.where(node):
        return False
    orders: Iterable[Sequence[int]] = [range(len(p.inputs))]
    if p.op_type in COMMUTATIVE and len(p.inputs) == 2:
        orders = [(0, 1), (1, 0)]
    for order in orders:
        trial = Match(m.root, dict(m.values), dict(m.consts), dict(m.named), m.nodes + [node])
        if p.name:
            bound = trial.values.get(p.name)  # a leaf of this name, matched earlier: must be our output
            if bound is not None and (not node.outputs or bound is not node.outputs[0]):
                return False
            trial.named[p.name] = node
        if all(_match_value(p.inputs[i], node.inputs[j], trial) for i, j in enumerate(order)):
            m.values, m.consts, m.named, m.nodes = trial.values, trial.consts, trial.named, trial.nodes
            return True
    return False


def _match_value(p: Pattern, v: Value | None, m: Match) -> bool:
    if v is None:
        return False
    if isinstance(p, str):
        op = m.named.get(p)
        if op is not None:  # a leaf naming a matched Op: that op's first output
            return bool(op.outputs) and op.outputs[0] is v
        bound = m.values.get(p)
        if bound is not None:
            return bound is v
        m.values[p] = v
        return True
    if isinstance(p, Const):
        arr = const_value(v)
        if arr is None or not p.accepts(arr):
            return False
        if p.name:
            m.consts[p.name] = arr
            m.values[p.name] = v
        return True
    return v.producer is not None and _match_node(p, v.producer, m)


class Builder:
    """Creates replacement nodes just before the matched root, with fresh unique names."""

    def __init__(self, graph: Graph, anchor: Node, prefix: str) -> None:
        self.graph, self.anchor, self.prefix = graph, anchor, prefix

    def op(self, op_type: str, *inputs: Value | None, num_outputs: int = 1, domain: str = "",
           **attributes: Any) -> Any:
        """Add a node, its output types inferred at once (a later node of the replacement reads them);
        returns its output Value (or the list of them when num_outputs > 1)."""
        from ir import infer_node

        node = self.graph.make_node(op_type, list(inputs), attributes, num_outputs,
                                    name=self.graph.unique_name(f"{self.prefix}/{op_type}"), domain=domain,
                                    before=self.anchor)
        infer_node(node)
        return node.outputs[0] if num_outputs == 1 else node.outputs

    def const(self, array: Any, name: str = "c") -> Value:
        return self.graph.add_initializer(f"{self.prefix}/{name}", np.asarray(array))


Replacement = Callable[[Builder, Match], Union[Value, Sequence[Value], None]]


@dataclass(frozen=True)
class Rule:
    """A peephole rewrite: replace what `pattern` matches by what `replace` builds, if `check` holds."""

    name: str
    pattern: Op
    replace: Replacement
    check: Callable[[Match], bool] | None = None


def apply_rules(graph: Graph, rules: Sequence[Rule], max_rounds: int = 16) -> int:
    """Greedy driver: apply rules anywhere (subgraphs too) until none matches; returns rewrites made."""
    from ir import infer_node

    total = 0
    for _ in range(max_rounds):
        count = 0
        for node in graph.nodes:
            for sg in node.subgraphs:
                total += apply_rules(sg, rules, max_rounds)
            if node.graph is not graph:
                continue  # removed by an earlier rewrite in this round
            for rule in rules:
                m = match(rule.pattern, node)
                if m is None or (rule.check is not None and not rule.check(m)):
                    continue
                b = Builder(graph, node, node.name or rule.name)
                out = rule.replace(b, m)
                if out is None:
                    continue
                new = [out] if isinstance(out, Value) else list(out)
                for old, repl in zip(node.outputs, new):
                    if repl.type is None:
                        repl.type = old.type
                    graph.replace_value(old, repl)
                for n in m.nodes:  # root first: each removal frees its producers
                    if n.graph is graph and not any(v.uses or v.is_graph_output for v in n.outputs):
                        graph.remove(n)
                for v in new:
                    if v.producer is not None:
                        infer_node(v.producer)
                count += 1
                break
        total += count
        if not count:
            break
    return total

