"""Training-free recovery after channel pruning, from calibration data.

Removing a channel removes its contribution to the next layer. Three corrections win most of it back
without training, each checked against the original model on the same calibration batches:

(a) mean folding: a removed channel is replaced by its calibration mean, a constant the next layer
    absorbs in its bias (`next_bias += W_next[:, removed] @ mean_removed`, kernel taps summed);
(b) least-squares reconstruction (ThiNet / He et al.'s channel pruning): each layer whose input changed
    gets the weights and bias that best map its *pruned* input to its *original* output, solved from
    streamed normal equations (im2col patches for convs, positions subsampled) with a small ridge;
    layers are solved in dependency order, so each one also absorbs the error of the layers before;
(c) BatchNorm re-estimation: BatchNorms whose input changed get running statistics re-estimated on
    the pruned model, anchored to the original's (an unchanged input keeps them exactly), so their
    output keeps the original's calibration mean and spread.

Activations are never held beyond one batch: each pass over the calibration data accumulates Gram
matrices or per-channel moments only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

import ir
from ir import Graph, Node, Value
from ir.ops import constant_value

from .channel_surgery import replace_const
from .depgraph import ChannelGraph, Linear

#: The calibration batches, with a progress-bar title (None: no bar); each call iterates anew.
Batches = Callable[[str | None], Iterable[Mapping[str, np.ndarray]]]

RIDGE = 1e-3  # relative to the mean diagonal of the Gram matrix
MAX_ROWS = 4096  # positions sampled per layer and batch
MAX_FEATURES = 4096  # wider layers are left to mean folding (their normal equations get too large)
_FITTED = ("Conv", "Gemm", "MatMul")  # layers whose rows (im2col patches or matrix rows) are refitted


@dataclass
class Moments:
    """Streaming per-channel moments of a value along `axis` (float64)."""

    axis: int
    n: float = 0.0
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None

    def add(self, x: np.ndarray) -> None:
        x = np.moveaxis(np.asarray(x, np.float64), self.axis, 0)
        x = x.reshape(x.shape[0], -1)
        s1, s2 = x.sum(1), np.einsum("ij,ij->i", x, x)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += x.shape[1]

    @property
    def mean(self) -> np.ndarray:
        return self.s1 / max(self.n, 1.0)  # type: ignore[operator]

    @property
    def meansq(self) -> np.ndarray:
        return self.s2 / max(self.n, 1.0)  # type: ignore[operator]

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.meansq - self.mean**2, 0.0)


def observe(graph: Graph, batches: Iterable[Mapping[str, np.ndarray]],
            names: set[str]) -> Iterator[dict[str, np.ndarray]]:
    """For each batch, the arrays `graph` computes for the values named in `names`."""
    got: dict[str, np.ndarray] = {}

    def keep(v: Value, array: np.ndarray) -> None:
        if v.name in names:
            got[v.name] = array

    interp = ir.Interpreter(observe=keep)
    for feeds in batches:
        got.clear()
        interp.run(graph, feeds)
        yield dict(got)


# ---------------------------------------------------------------------------------------------
# Where a layer's weight and bias live.


def _bias_slot(node: Node) -> tuple[Node, int] | None:
    """The per-output-channel bias of a layer: its input 2 (Conv, Gemm), or the constant of the Add
    that alone reads a MatMul's output; None when it has none it can take."""
    if node.op_type != "MatMul":
        return node, 2
    y = node.outputs[0]
    uses = y.uses
    if len(uses) != 1 or y.is_graph_output or uses[0][0].op_type != "Add":
        return None
    add, i = uses[0]
    c = constant_value(add.input(1 - i))
    n = y.shape[-1] if y.shape else None
    return (add, 1 - i) if c is not None and c.size == n and c.shape[-1:] == (n,) else None


def read_bias(node: Node, n: int) -> np.ndarray | None:
    """The layer's effective bias as n float64 values (zeros when absent), None when not a vector."""
    slot = _bias_slot(node)
    if slot is None:
        return None
    c = constant_value(slot[0].input(slot[1]))
    if c is None:
        return np.zeros(n)
    if node.op_type == "Gemm":
        if c.size not in (1, n) or (c.ndim == 2 and c.shape[0] != 1):
            return None
        c = c * float(node.attr("beta", 1.0))
    return np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (n,)).copy()


def write_bias(node: Node, bias: np.ndarray, dtype: np.dtype) -> None:
    """Make `bias` the layer's effective bias (a Gemm's beta becomes 1)."""
    slot = _bias_slot(node)
    assert slot is not None and slot[0].graph is not None
    owner, index = slot
    old = constant_value(owner.input(index))
    shape = old.shape if node.op_type == "MatMul" and old is not None else (len(bias),)
    if node.op_type == "Gemm":
        node.attributes["beta"] = 1.0
    replace_const(owner.graph, owner, index, bias.astype(dtype).reshape(shape))  # type: ignore[arg-type]


def _as_matrix(lin: Linear, w: np.ndarray) -> np.ndarray:
    """The weight as [inputs * taps, outputs] (Gemm's alpha folded in)."""
    m = np.moveaxis(w.astype(np.float64), lin.out_axis, -1)
    if lin.node.op_type == "Gemm":
        m = m * float(lin.node.attr("alpha", 1.0))
    return m.reshape(-1, m.shape[-1])


def _write_weight(lin: Linear, m: np.ndarray, like: np.ndarray) -> None:
    """The inverse of `_as_matrix`: `m` back in the layout of `like` (a Gemm's alpha becomes 1)."""
    shape = list(np.moveaxis(like, lin.out_axis, -1).shape)
    shape[-1] = m.shape[1]
    w = np.moveaxis(m.reshape(shape), -1, lin.out_axis)
    if lin.node.op_type == "Gemm":
        lin.node.attributes["alpha"] = 1.0
    replace_const(lin.node.graph, lin.node, lin.weight, w.astype(like.dtype))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# (a) Mean folding.


#: What a constant input contributes per output position, as a share of its summed weights: a Gemm
#: scales by alpha; a ConvTranspose spreads each input position over prod(strides) outputs.
_TAP_SHARE: dict[str, Callable[[Node], float]] = {
    "Gemm": lambda n: float(n.attr("alpha", 1.0)),
    "ConvTranspose": lambda n: 1.0 / float(np.prod(n.attr("strides") or [1])),
}


def mean_corrections(cg: ChannelGraph, removed: np.ndarray,
                     moments: Mapping[Value, Moments]) -> list[tuple[Linear, np.ndarray]]:
    """Per layer losing input channels: the bias change that replaces them by their calibration
    means (computed on the original weights, before surgery)."""
    out: list[tuple[Linear, np.ndarray]] = []
    for lin in cg.linears:
        x = lin.node.input(0)
        if not lin.dense or x not in moments or _bias_slot(lin.node) is None:
            continue
        gone = ~cg.keep(removed, lin.inputs)  # type: ignore[arg-type]
        if not gone.any():
            continue
        w = np.moveaxis(constant_value(lin.node.input(lin.weight)), (lin.in_axis, lin.out_axis), (0, 1))  # type: ignore[arg-type]
        summed = w.reshape(*w.shape[:2], -1).sum(-1, dtype=np.float64)  # [inputs, outputs], kernel taps summed
        scale = _TAP_SHARE.get(lin.node.op_type, lambda n: 1.0)(lin.node)
        out.append((lin, scale * moments[x].mean[gone] @ summed[gone]))  # type: ignore[index]
    return out


def fold_means(cg: ChannelGraph, removed: np.ndarray, corrections: list[tuple[Linear, np.ndarray]]) -> None:
    """Add the (a) corrections, restricted to the kept outputs, to the pruned layers' biases."""
    for lin, delta in corrections:
        delta = delta[cg.keep(removed, lin.outputs)]
        w = constant_value(lin.node.input(lin.weight))
        bias = read_bias(lin.node, len(delta))
        if bias is not None and w is not None:
            write_bias(lin.node, bias + delta, w.dtype)


# ---------------------------------------------------------------------------------------------
# (b) Least squares and (c) BatchNorm statistics.


def _conv_rows(node: Node, x: np.ndarray, y: np.ndarray, kernel: tuple[int, ...],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """im2col rows of `x` and the matching rows of `y` at up to MAX_ROWS random output positions."""
    nd = len(kernel)
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return None
    strides = node.attr("strides") or [1] * nd
    dil = node.attr("dilations") or [1] * nd
    pads = node.attr("pads") or [0] * (2 * nd)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    v = sliding_window_view(xp, [(k - 1) * d + 1 for k, d in zip(kernel, dil)], axis=tuple(range(2, 2 + nd)))
    v = v[(slice(None), slice(None), *[slice(None, None, s) for s in strides], *[slice(None, None, d) for d in dil])]
    if v.shape[2:2 + nd] != y.shape[2:]:
        return None
    total = y.shape[0] * int(np.prod(y.shape[2:]))
    pick = np.unravel_index(rng.choice(total, min(MAX_ROWS, total), replace=False), (y.shape[0], *y.shape[2:]))
    rows = v[(pick[0], slice(None), *pick[1:])]
    return rows.reshape(len(rows), -1), y[(pick[0], slice(None), *pick[1:])]


def _dense_rows(node: Node, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a Gemm's/MatMul's input and output (leading axes flattened), up to MAX_ROWS of them."""
    x = x.T if node.op_type == "Gemm" and node.attr("transA", 0) else x
    x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
    if len(x) > MAX_ROWS:
        pick = rng.choice(len(x), MAX_ROWS, replace=False)
        x, y = x[pick], y[pick]
    return x, y


def match_batchnorm(bn: Node, mu_p: np.ndarray, var_p: np.ndarray, mu_o: np.ndarray, var_o: np.ndarray) -> None:
    """Running statistics under which the pruned input (mu_p, var_p) normalizes the way the original
    (mu_o, var_o) did: unchanged inputs keep the statistics, shifted or shrunk ones are corrected."""
    mean, var = (constant_value(bn.input(i)) for i in (3, 4))
    if mean is None or var is None:
        return
    eps = float(bn.attr("epsilon", 1e-5))
    ratio = np.sqrt(np.where(var_o > 1e-12, var_p / np.maximum(var_o, 1e-12), 1.0))
    std = np.sqrt(var.astype(np.float64) + eps) * ratio
    new_mean = mu_p - (mu_o - mean) * ratio
    replace_const(bn.graph, bn, 3, new_mean.astype(mean.dtype))  # type: ignore[arg-type]
    replace_const(bn.graph, bn, 4, np.maximum(std**2 - eps, 0.0).astype(var.dtype))  # type: ignore[arg-type]


@dataclass(eq=False)
class _Fit:
    """Normal equations of one layer: pruned input rows -> original output rows (kept channels)."""

    lin: Linear
    target: str  # the original value the layer (with its bias) must reproduce
    keep_out: np.ndarray | None  # its channels the pruned layer keeps (None: all)
    intercept: bool
    bn: Node | None  # a BatchNorm that alone reads the layer's output, matched analytically
    rng: np.random.Generator
    gram: np.ndarray | None = None
    cross: np.ndarray | None = None
    target_moments: Moments = field(default_factory=lambda: Moments(1))
    skip: bool = False

    @property
    def reads(self) -> tuple[list[str], list[str]]:
        return [self.target], [self.lin.node.input(0).name]  # type: ignore[union-attr]

    def add(self, orig: Mapping[str, np.ndarray], pruned: Mapping[str, np.ndarray]) -> None:
        node, y = self.lin.node, orig[self.target]
        if self.keep_out is not None:
            y = np.compress(self.keep_out, y, axis=self.lin.outputs.axis)
        x = pruned[node.input(0).name].astype(np.float64)  # type: ignore[union-attr]
        kernel = constant_value(node.input(self.lin.weight)).shape[2:]  # type: ignore[union-attr]
        rows = _conv_rows(node, x, y, kernel, self.rng) if node.op_type == "Conv" else _dense_rows(node, x, y, self.rng)
        if rows is None or rows[0].shape[1] + 1 > MAX_FEATURES:
            self.skip = True
            return
        p, t = rows[0], rows[1].astype(np.float64)
        if self.intercept:
            p = np.concatenate([p, np.ones((len(p), 1))], axis=1)
        g, c = p.T @ p, p.T @ t
        self.gram = g if self.gram is None else self.gram + g
        self.cross = c if self.cross is None else self.cross + c
        self.target_moments.add(t)

    def solve(self) -> None:
        if self.skip or self.gram is None:
            return
        node, g, c = self.lin.node, self.gram, self.cross
        w = constant_value(node.input(self.lin.weight))
        current = _as_matrix(self.lin, w)  # type: ignore[arg-type]
        if self.intercept:
            current = np.concatenate([current, read_bias(node, current.shape[1])[None]], axis=0)  # type: ignore[index]
        f = len(g) - int(self.intercept)
        ridge = np.zeros(len(g))
        ridge[:f] = RIDGE * max(float(np.trace(g[:f, :f])) / max(f, 1), 1e-12)
        try:
            fitted = np.linalg.solve(g + np.diag(ridge), c)
        except np.linalg.LinAlgError:
            fitted = np.linalg.lstsq(g + np.diag(ridge), c, rcond=None)[0]

        def err(m: np.ndarray) -> float:
            return float(-2 * np.sum(m * c) + np.sum(m * (g @ m)))

        best = fitted if err(fitted) < err(current) else current
        if best is fitted:
            _write_weight(self.lin, fitted[:f], w)  # type: ignore[arg-type]
            if self.intercept:
                write_bias(node, fitted[f], w.dtype)  # type: ignore[union-attr]
        if self.bn is not None and self.intercept:  # the fitted output's moments follow from the Gram matrix
            n = g[-1, -1]
            mean = g[-1] @ best / n
            var = np.maximum(np.einsum("ij,ij->j", best, g @ best) / n - mean**2, 0.0)
            match_batchnorm(self.bn, mean, var, self.target_moments.mean, self.target_moments.var)


@dataclass(eq=False)
class _BatchNormFit:
    """Per-channel moments of a BatchNorm's input in the original and the pruned model."""

    bn: Node
    keep: np.ndarray | None
    orig: Moments = field(default_factory=lambda: Moments(1))
    pruned: Moments = field(default_factory=lambda: Moments(1))

    @property
    def reads(self) -> tuple[list[str], list[str]]:
        name = self.bn.input(0).name  # type: ignore[union-attr]
        return [name], [name]

    def add(self, orig: Mapping[str, np.ndarray], pruned: Mapping[str, np.ndarray]) -> None:
        name = self.bn.input(0).name  # type: ignore[union-attr]
        self.orig.add(orig[name] if self.keep is None else np.compress(self.keep, orig[name], axis=1))
        self.pruned.add(pruned[name])

    def solve(self) -> None:
        match_batchnorm(self.bn, self.pruned.mean, self.pruned.var, self.orig.mean, self.orig.var)


def _sole_batchnorm(v: Value) -> Node | None:
    uses = v.uses
    if len(uses) == 1 and not v.is_graph_output and uses[0][0].op_type == "BatchNormalization" and uses[0][1] == 0:
        bn = uses[0][0]
        return bn if len(bn.outputs) == 1 and constant_value(bn.input(3)) is not None else None
    return None


def reconstruct(orig: Graph, cg: ChannelGraph, removed: np.ndarray, batches: Batches, seed: int = 0) -> None:
    """(b) and (c): refit every layer and BatchNorm downstream of a change, level by level (a level's
    units read only values that earlier levels already corrected), one calibration pass per level."""
    graph = cg.graph
    masks = {v.name: cg.keep(removed, lay) for v, lay in cg.layouts.items()}
    dirty = {name for name, m in masks.items() if not m.all()}
    linears = {lin.node: lin for lin in cg.linears if lin.in_axis is not None and lin.node.op_type in _FITTED}
    rng = np.random.default_rng(seed)
    units: dict[Node, _Fit | _BatchNormFit] = {}
    paired: set[Node] = set()
    for node in graph.nodes:
        x = node.input(0)
        if x is not None and x.name in dirty and node not in paired:
            lin = linears.get(node)
            if lin is not None:
                slot = _bias_slot(node)
                carrier = (node if slot is None else slot[0]).outputs[0]
                bn = _sole_batchnorm(carrier)
                if bn is not None:
                    paired.add(bn)
                n_out = constant_value(node.input(lin.weight)).shape[lin.out_axis]  # type: ignore[union-attr]
                intercept = read_bias(node, n_out) is not None
                units[node] = _Fit(lin, carrier.name, masks.get(carrier.name), intercept, bn, rng)
            elif node.op_type == "BatchNormalization" and len(node.outputs) == 1:
                units[node] = _BatchNormFit(node, masks.get(x.name))
        if any(v is not None and v.name in dirty for v in node.inputs):
            dirty.update(o.name for o in node.outputs)
    levels = _levels(graph, units)
    for level, group in enumerate(levels):
        wanted_o = {n for u in group for n in u.reads[0]}
        wanted_p = {n for u in group for n in u.reads[1]}
        title = f"recovery {level + 1}/{len(levels)}"
        for o, p in zip(observe(orig, batches(title), wanted_o), observe(graph, batches(None), wanted_p)):
            for u in group:
                u.add(o, p)
        for u in group:
            u.solve()


def _levels(graph: Graph, units: Mapping[Node, _Fit | _BatchNormFit]) -> list[list[_Fit | _BatchNormFit]]:
    """Units by dependency depth: a unit's level is one more than the deepest unit it reads from."""
    depth: dict[Value, int] = {}
    levels: list[list[_Fit | _BatchNormFit]] = []
    for node in graph.nodes:
        d = max((depth.get(v, -1) for v in node.inputs if v is not None), default=-1)
        if node in units:
            d += 1
            levels.extend([] for _ in range(d + 1 - len(levels)))
            levels[d].append(units[node])
        for o in node.outputs:
            depth[o] = d
    return levels
