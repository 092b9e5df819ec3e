"""Property-testing kit for passes (public): random valid graphs and a semantic-preservation check.

    from passes.testing import graphs, check_pass
    check_pass(my_pass)                       # raises AssertionError with a shrunk counterexample

`graphs()` is a hypothesis strategy of random valid `ir.Graph`s over a configurable op set: Conv
(grouped, depthwise, strided, padded), Gemm, MatMul, elementwise and broadcasting arithmetic,
activations, reductions, Reshape/Transpose/Concat/Split/Slice, BatchNormalization and pooling. Each
graph comes with random inputs. `check_pass` runs a pass on generated graphs and compares what the
graph computes before and after through the reference interpreter, within a tolerance for the dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ir
from ir import DType, Graph, TensorType, Value

OPSET = 18

UNARY = ("Relu", "Sigmoid", "Tanh", "Neg", "Abs", "LeakyRelu", "HardSigmoid", "HardSwish", "Softplus")
BINARY = ("Add", "Sub", "Mul", "Max", "Min", "Div")
STRUCTURAL = ("Conv", "DepthwiseConv", "Gemm", "MatMul", "BatchNormalization", "MaxPool", "AveragePool",
              "GlobalAveragePool", "ReduceMean", "ReduceSum", "ReduceMax", "Softmax", "Reshape", "Transpose",
              "Concat", "Split", "Slice", "Flatten")
#: Every op family `graphs()` can draw from (the default op set).
ALL_OPS: tuple[str, ...] = UNARY + BINARY + STRUCTURAL


@dataclass
class Example:
    """A generated graph with inputs to run it on."""

    graph: Graph
    feeds: dict[str, np.ndarray]

    def __repr__(self) -> str:
        feeds = ", ".join(f"{k}: {v.dtype}{list(v.shape)}" for k, v in self.feeds.items())
        return f"Example(feeds={{{feeds}}})\n{self.graph}"


class _Builder:
    """Grows a graph one random layer at a time from hypothesis draws."""

    def __init__(self, draw: Callable[[Any], Any], ops: Sequence[str], rng: np.random.Generator) -> None:
        self.draw, self.ops, self.rng = draw, list(ops), rng
        self.g = Graph("random", {"": OPSET})
        self.pool: list[Value] = []

    # -- helpers ------------------------------------------------------------------------------
    def shape(self, v: Value) -> tuple[int, ...]:
        return tuple(int(d) for d in v.shape)  # type: ignore[union-attr,arg-type]

    def const(self, shape: Sequence[int], low: float = -1.0, high: float = 1.0, name: str = "w") -> Value:
        return self.g.add_initializer(name, self.rng.uniform(low, high, size=tuple(shape)).astype(np.float32))

    def ints(self, values: Sequence[int], name: str = "axes") -> Value:
        return self.g.add_initializer(name, np.asarray(values, np.int64))

    def node(self, op: str, inputs: Sequence[Value | None], n_out: int = 1, **attrs: Any) -> list[Value]:
        n = self.g.make_node(op, list(inputs), attrs, n_out)
        ir.infer_node(n)
        for v in n.outputs:
            if not isinstance(v.type, TensorType) or not v.type.is_static:
                raise AssertionError(f"graphs(): no static shape inferred for {n!r}")
        return n.outputs

    def pick(self, pred: Callable[[Value], bool] = lambda v: True) -> Value | None:
        cands = [v for v in self.pool if pred(v)]
        return self.draw(st.sampled_from(cands)) if cands else None

    # -- layers -------------------------------------------------------------------------------
    def step(self) -> None:
        op = self.draw(st.sampled_from(self.ops))
        rank4 = lambda v: v.rank == 4  # noqa: E731
        out: list[Value] | None = None
        if op in UNARY:
            out = self.node(op, [self.pick()])
        elif op in BINARY:
            a = self.pick()
            assert a is not None
            s = self.shape(a)
            form = self.draw(st.sampled_from(["same", "scalar", "channel"]))
            other = self.pick(lambda v: v.shape == a.shape and v is not a) if form == "same" else None
            if other is None or op == "Div":
                bshape = () if form == "scalar" else ((s[1],) + (1,) * (len(s) - 2) if form == "channel" and len(s) >= 2 else s)
                other = self.const(bshape, 0.5, 1.5) if op == "Div" else self.const(bshape)
            out = self.node(op, [a, other] if self.draw(st.booleans()) or op == "Div" else [other, a])
        elif op in ("Conv", "DepthwiseConv"):
            x = self.pick(rank4)
            if x is None:
                return
            n, c, h, w = self.shape(x)
            k = self.draw(st.sampled_from([1, 3] if min(h, w) >= 3 else [1]))
            stride = self.draw(st.sampled_from([1, 2]))
            pad = self.draw(st.sampled_from([0, k // 2]))
            group = c if op == "DepthwiseConv" else 1
            cout = c if op == "DepthwiseConv" else self.draw(st.integers(1, 6))
            ins = [x, self.const((cout, c // group, k, k))]
            if self.draw(st.booleans()):
                ins.append(self.const((cout,)))
            out = self.node("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[pad] * 4, group=group)
        elif op == "Gemm":
            x = self.pick(lambda v: v.rank == 2)
            if x is None:
                return
            n, f = self.shape(x)
            m = self.draw(st.integers(1, 8))
            tb = self.draw(st.sampled_from([0, 1]))
            ins = [x, self.const((m, f) if tb else (f, m))]
            if self.draw(st.booleans()):
                ins.append(self.const((m,)))
            out = self.node("Gemm", ins, transB=tb, alpha=float(self.draw(st.sampled_from([1.0, 0.5]))))
        elif op == "MatMul":
            x = self.pick(lambda v: v.rank in (2, 3))
            if x is None:
                return
            out = self.node("MatMul", [x, self.const((self.shape(x)[-1], self.draw(st.integers(1, 6))))])
        elif op == "BatchNormalization":
            x = self.pick(rank4)
            if x is None:
                return
            c = self.shape(x)[1]
            out = self.node(op, [x, self.const((c,), 0.5, 1.5), self.const((c,)), self.const((c,)),
                                 self.const((c,), 0.5, 2.0)], epsilon=1e-5)
        elif op in ("MaxPool", "AveragePool"):
            x = self.pick(lambda v: v.rank == 4 and min(self.shape(v)[2:]) >= 2)
            if x is None:
                return
            s = self.draw(st.sampled_from([1, 2]))
            out = self.node(op, [x], kernel_shape=[2, 2], strides=[s, s])
        elif op == "GlobalAveragePool":
            x = self.pick(rank4)
            if x is None:
                return
            out = self.node(op, [x])
        elif op in ("ReduceMean", "ReduceSum", "ReduceMax"):
            x = self.pick(lambda v: v.rank >= 2)
            if x is None:
                return
            axis = self.draw(st.integers(1, x.rank - 1))  # type: ignore[operator]
            out = self.node(op, [x, self.ints([axis])], keepdims=1)
        elif op == "Softmax":
            x = self.pick()
            out = self.node(op, [x], axis=-1)
        elif op in ("Reshape", "Flatten"):
            x = self.pick(lambda v: v.rank >= 3)
            if x is None:
                return
            s = self.shape(x)
            if op == "Flatten":
                out = self.node(op, [x], axis=1)
            else:
                out = self.node(op, [x, self.ints([s[0], -1], "shape")])
        elif op == "Transpose":
            x = self.pick(lambda v: v.rank >= 2)
            if x is None:
                return
            perm = self.draw(st.permutations(list(range(x.rank))))  # type: ignore[arg-type]
            out = self.node(op, [x], perm=list(perm))
        elif op == "Concat":
            a = self.pick(lambda v: v.rank >= 2)
            if a is None:
                return
            axis = self.draw(st.integers(1, a.rank - 1))  # type: ignore[operator]
            same = lambda v: v.rank == a.rank and all(  # noqa: E731
                d1 == d2 for i, (d1, d2) in enumerate(zip(v.shape, a.shape)) if i != axis)  # type: ignore[arg-type]
            b = self.pick(same) or self.const(self.shape(a))
            out = self.node(op, [a, b], axis=axis)
        elif op == "Split":
            x = self.pick(lambda v: v.rank >= 2 and self.shape(v)[-1] >= 2)
            if x is None:
                return
            out = self.node(op, [x], n_out=2, axis=-1, num_outputs=2)
        elif op == "Slice":
            x = self.pick(lambda v: v.rank >= 2 and self.shape(v)[-1] >= 2)
            if x is None:
                return
            d = self.shape(x)[-1]
            start = self.draw(st.integers(0, d - 1))
            out = self.node(op, [x, self.ints([start], "starts"), self.ints([d], "ends"), self.ints([-1], "axes")])
        if out:
            self.pool.extend(out)


@st.composite
def graphs(
    draw: Callable[[Any], Any],
    ops: Sequence[str] = ALL_OPS,
    max_layers: int = 8,
    ranks: Sequence[int] = (2, 4),
    dtype: DType = DType.FLOAT,
) -> Example:
    """A random valid graph over `ops` (names from ALL_OPS), with inputs of the given `ranks`."""
    unknown = set(ops) - set(ALL_OPS)
    if unknown:
        raise ValueError(f"graphs(): unknown op(s) {sorted(unknown)}; choose from {ALL_OPS}")
    if dtype != DType.FLOAT:
        raise ValueError("graphs(): only float32 graphs are generated for now")
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    b = _Builder(draw, ops, rng)
    feeds: dict[str, np.ndarray] = {}
    for i in range(draw(st.integers(1, 2))):
        rank = draw(st.sampled_from(list(ranks)))
        n = draw(st.integers(1, 2))
        shape = (n, draw(st.integers(1, 4)), draw(st.integers(3, 6)), draw(st.integers(3, 6))) if rank == 4 \
            else (n, draw(st.integers(1, 8)))
        v = b.g.add_input(f"x{i}", TensorType(dtype, shape))
        b.pool.append(v)
        feeds[v.name] = rng.uniform(-2, 2, size=shape).astype(np.float32)
    for _ in range(draw(st.integers(1, max_layers))):
        b.step()
    produced = [v for v in b.pool if v.producer is not None]
    if not produced:
        b.step()
        produced = [v for v in b.pool if v.producer is not None] or b.pool[:1]
    outs = [produced[-1]]
    extra = [v for v in produced[:-1] if not v.uses]
    if extra and draw(st.booleans()):
        outs.append(draw(st.sampled_from(extra)))
    b.g.outputs = outs
    ir.verify(b.g)
    return Example(b.g, feeds)


def _tolerance(dtype: np.dtype) -> tuple[float, float]:
    if dtype == np.float16:
        return 1e-2, 1e-2
    if dtype.kind == "f":
        return 1e-4, 1e-5
    return 0.0, 0.0


def assert_same_outputs(before: Sequence[Any], after: Sequence[Any], context: str = "") -> None:
    """Outputs agree in number, dtype, shape and value (relative to each output's magnitude)."""
    if len(before) != len(after):
        raise AssertionError(f"{context}the pass changed the number of outputs ({len(before)} -> {len(after)})")
    for i, (a, b) in enumerate(zip(before, after)):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape or a.dtype != b.dtype:
            raise AssertionError(f"{context}output {i}: {a.dtype}{list(a.shape)} became {b.dtype}{list(b.shape)}")
        rtol, atol = _tolerance(a.dtype)
        scale = float(np.max(np.abs(a))) if a.size else 0.0
        if a.size and not np.allclose(b, a, rtol=rtol, atol=atol + rtol * scale, equal_nan=True):
            err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
            raise AssertionError(f"{context}output {i} changed: max abs difference {err:.3g} (scale {scale:.3g})")


def check_pass(
    pass_or_function: Any,
    max_examples: int = 100,
    ops: Sequence[str] = ALL_OPS,
    max_layers: int = 8,
    seed: int | None = 0,
) -> None:
    """Run a pass on random graphs; raise AssertionError with a shrunk counterexample when it changes
    what a graph computes or leaves the IR invalid.

    `pass_or_function` is a Pass, a pipeline string, or a function taking an ir.Graph and returning an
    ir.Graph (or None, having edited in place).
    """
    from .base import as_pass

    p = as_pass(pass_or_function)

    @settings(max_examples=max_examples, deadline=None, derandomize=seed is not None, database=None,
              report_multiple_bugs=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(graphs(ops=ops, max_layers=max_layers))
    def prop(ex: Example) -> None:
        interp = ir.Interpreter()
        before = interp.run(ex.graph, ex.feeds)
        try:
            g = p(ex.graph.copy())
            ir.verify(g)
            after = interp.run(g, ex.feeds)
            assert_same_outputs(before, after, f"{p.name}: ")
        except AssertionError as e:
            raise AssertionError(f"{e}\ncounterexample (shrunk by hypothesis):\n{ex!r}") from None
        except Exception as e:  # noqa: BLE001 - a crashing pass is a failing pass
            raise AssertionError(f"{p.name} raised {type(e).__name__}: {e}\ncounterexample:\n{ex!r}") from None

    prop()
