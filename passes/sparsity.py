"""Weight sparsity (unstructured, N:M, 4x1) with training-free reconstruction from calibration data.

Layers are the Conv, Gemm and MatMul nodes of the top-level graph whose weight (input 1) is a float
constant. Each weight is viewed as a matrix W [out, in]: output channels by the reduction axis (Conv:
Cin/group * kernel taps, channel-major as im2col lays them out; Gemm: B or B^T following transB;
MatMul: B^T). Patterns are defined on that matrix:

* `unstructured`: any weight may go;
* `N:M` (e.g. `2:4`): in every group of M consecutive input channels at a fixed (output channel,
  kernel tap) at most N weights are non-zero. A tail group of fewer than M channels (Cin/group not a
  multiple of M) also keeps at most N: the hardware rule, where the tail is zero-padded to M. A
  layer with fewer than M input channels per group (a stem conv on one channel, a depthwise conv)
  has no group at all and is skipped, with the reason in its report. The pattern fixes the
  sparsity: `sparsity` must be 1 - N/M (or 0: off);
* `4x1`: blocks of 4 consecutive output channels at one input position are zeroed together (the
  last block is shorter when the output channels are not a multiple of 4).

Scope `layer` prunes every layer to the target. Scope `global` ranks the units (weights or blocks)
of all layers together by their LAMP score (Lee et al., 2021: a unit's squared magnitude over the
sum of those of the units not smaller in its layer), which needs no data and spares the small,
sensitive layers (stem, depthwise, classifier), caps each layer at `max_layer_sparsity`, and then
prunes each layer to its share.

Reconstruction follows SparseGPT (Frantar & Alistarh, 2023), extended in two ways that matter on
small CNNs (digits CNN test accuracy, 97.99% dense: 2:4 goes from 94.2% to 97.6%, 70% per layer
from 34.6% to 96.0%, 70% global from 95.4% to 97.6%; magnitude alone gives 58.8%, 8.7% and 61.6%):

* the target is the original model: layers are processed in dependency stages, and for each layer
  H = X^T X of its input patches X (im2col rows for a Conv) in the graph as sparsified so far and
  C = X^T X0, with X0 its inputs in the original graph, are accumulated batch by batch (one K x K
  matrix each per group, never the activations). The weights are first re-targeted to
  argmin |X v - X0 w|^2 + lambda |v - w|^2, which undoes the error of the layers before;
* a constant bias joins W as a last column over a constant input of ones: never pruned, it takes
  the mean shift that pruning causes (what BatchNorm re-estimation would otherwise have to do).

Then, with U the upper Cholesky factor of (H + lambda I)^-1 (lambda: 1% of the mean diagonal), the
columns are visited in order; a column's pruned weights are zeroed and their error is spread over
the columns not yet visited along U's row (the OBS update), so the layer keeps computing what it
did on the calibration inputs. Masks are chosen per block of 128 columns on the weights as updated
so far, by the OBS saliency w^2 / U_ii^2; for N:M the columns are visited tap by tap and each
channel group is chosen right before it is visited. This costs one K x K inverse per layer, where a
masked least-squares solve would need one per output row (each row has its own mask).

Zeros already present stay zero, and a layer that already meets its target (by magnitude, in the
pattern) is left untouched: sparsity 0 changes nothing and a second run changes nothing either.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from ir import Graph, Interpreter, Node, Tensor, Value, free_values
from ir.clone import clone_graph
from ir.ops.core import constant_value, get_op
from ir.ops.nn import _conv_geometry, _im2col, _pad_spatial

from .base import Pass, register_pass

if TYPE_CHECKING:
    from compiler.calibration import CalibrationSource

#: Ops whose constant weight (input 1) is sparsified.
LAYER_OPS = ("Conv", "Gemm", "MatMul")
#: Columns per mask-selection block when reconstructing unstructured and 4x1 patterns (SparseGPT's).
BLOCK = 128
#: Hessian damping, as a fraction of the mean of its diagonal.
DAMPING = 0.01
_NM = re.compile(r"^(\d+):(\d+)$")

Select = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class SparsityConfig:
    """What to prune: the target fraction of zeros, the pattern, the scope and the layers to leave."""

    sparsity: float = 0.5
    pattern: str = "unstructured"  # "unstructured", "N:M" (e.g. "2:4") or "4x1"
    scope: str = "layer"  # "layer" or "global"
    exclude: tuple[str, ...] = ()  # node names left dense
    reconstruct: bool = True  # update the kept weights from calibration data (which it then needs)
    max_layer_sparsity: float = 0.95  # global scope: no layer is pruned beyond this


@dataclass
class LayerReport:
    """One layer's outcome: its weight count, non-zeros after, and why it was skipped, if it was."""

    name: str
    op: str
    params: int
    nonzeros: int
    sparsity: float  # fraction of zero weights after the pass
    pruned: int = 0  # weights this run set to zero
    skipped: str = ""  # why the layer was left alone ("" when it was considered)
    error: float | None = None  # |X w' - X0 w|^2 / |X0 w|^2 on calibration data (reconstruction only)


@dataclass(frozen=True)
class _Pattern:
    """Blocks of `height` output channels by one input (unstructured: 1), or N of every M kept."""

    height: int = 1
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0


def _parse(config: SparsityConfig) -> _Pattern:
    """The config's pattern, after checking that the config makes sense."""
    if not 0.0 <= config.sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {config.sparsity}")
    if config.scope not in ("layer", "global"):
        raise ValueError(f"scope must be 'layer' or 'global', got {config.scope!r}")
    if config.scope == "global" and not config.sparsity <= config.max_layer_sparsity <= 1.0:
        raise ValueError(f"max_layer_sparsity {config.max_layer_sparsity} must lie in [sparsity, 1]")
    if config.pattern in ("unstructured", "4x1"):
        return _Pattern(height=4 if config.pattern == "4x1" else 1)
    m = _NM.match(config.pattern)
    if not m or not 0 < int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"pattern must be 'unstructured', '4x1' or 'N:M' with 0 < N < M, got {config.pattern!r}")
    n, mm = int(m.group(1)), int(m.group(2))
    if config.sparsity not in (0.0, 1 - n / mm):
        raise ValueError(f"pattern {config.pattern} fixes sparsity at {1 - n / mm:g} (or 0: off), got {config.sparsity}")
    if config.scope == "global":
        raise ValueError(f"pattern {config.pattern} is the same in every layer: use scope='layer'")
    return _Pattern(n=n, m=mm)


# ---------------------------------------------------------------------------------------------
# Layers: a weight seen as an [out, in] matrix, and its calibration statistics.


@dataclass(eq=False)
class _Layer:
    """A node with a constant weight, seen as an [out, in] matrix, plus its calibration statistics."""

    node: Node
    weight: np.ndarray
    groups: int = 1
    taps: int = 1  # kernel positions per input channel (1 for Gemm/MatMul)
    bias: np.ndarray | None = None  # the bias as a column of the matrix over a constant input of ones
    #: Per group [groups, in, in] (in counts the bias column): X^T X, X^T X0 and X0^T X0, where X are
    #: the layer's input patches in the graph as sparsified so far and X0 in the original graph.
    stats: list[np.ndarray] | None = field(default=None, repr=False)

    @property
    def transposed(self) -> bool:
        """Whether the stored weight is [in, out] (MatMul, Gemm without transB)."""
        return self.node.op_type == "MatMul" or (self.node.op_type == "Gemm" and not self.node.attr("transB", 0))

    @property
    def shape(self) -> tuple[int, int]:
        """The [out, in] matrix shape."""
        s = self.weight.shape
        return (s[1], s[0]) if self.transposed else (s[0], int(np.prod(s[1:])))

    @property
    def channels(self) -> int:
        """Input channels per group: the axis N:M groups run along."""
        return self.shape[1] // self.taps

    def matrix(self) -> np.ndarray:
        w = self.weight.astype(np.float64)
        return w.T if self.transposed else w.reshape(w.shape[0], -1)

    def store(self, m: np.ndarray) -> np.ndarray:
        return (m.T if self.transposed else m.reshape(self.weight.shape)).astype(self.weight.dtype)

    def patches(self, x: np.ndarray) -> np.ndarray:
        """The layer's input `x` as [groups, samples, in] rows, one per output position."""
        x = np.asarray(x, np.float32)
        if self.node.op_type == "Conv":
            attrs = get_op("Conv").resolve_attrs(self.node.attributes, self.node.opset)  # type: ignore[union-attr]
            kernel = list(self.weight.shape[2:])
            s, d, geo = _conv_geometry(x.shape, kernel, attrs["auto_pad"], attrs["dilations"], attrs["pads"],
                                       attrs["strides"])
            cols = _im2col(_pad_spatial(x, [g[1] for g in geo], [g[2] for g in geo]), kernel, s, d,
                           [g[0] for g in geo])  # (N, C, taps, L)
            n, c, k, l_ = cols.shape
            p = cols.reshape(n, self.groups, c // self.groups * k, l_).transpose(1, 0, 3, 2).reshape(
                self.groups, n * l_, -1)
        else:
            p = (x.T if self.node.op_type == "Gemm" and self.node.attr("transA", 0) else x).reshape(1, -1, x.shape[-1])
        if self.bias is not None:
            p = np.concatenate([p, np.ones((*p.shape[:2], 1), p.dtype)], axis=2)
        return p

    def observe(self, x: np.ndarray, original: np.ndarray) -> None:
        """Add one batch of the layer's inputs, as they are now and as they were in the original graph."""
        p, p0 = self.patches(x), self.patches(original)
        batch = [np.matmul(a.transpose(0, 2, 1), b).astype(np.float64) for a, b in ((p, p), (p, p0), (p0, p0))]
        self.stats = batch if self.stats is None else [s + b for s, b in zip(self.stats, batch)]


def _bias(node: Node, out: int) -> np.ndarray | None:
    """The node's constant bias in matrix terms (Gemm: beta * C / alpha), when it is one per output."""
    b = constant_value(node.input(2))
    if b is None or b.dtype.kind != "f" or b.size != out or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
        return None
    if node.op_type != "Gemm":
        return b.astype(np.float64).ravel()
    alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
    return None if alpha == 0 or beta == 0 else b.astype(np.float64).ravel() * beta / alpha


def _store_bias(node: Node, bias: np.ndarray) -> np.ndarray:
    """A bias column back in the node's terms (the inverse of `_bias`)."""
    old = constant_value(node.input(2))
    assert old is not None
    if node.op_type == "Gemm":
        bias = bias * float(node.attr("alpha", 1.0)) / float(node.attr("beta", 1.0))
    return bias.reshape(old.shape).astype(old.dtype)


def _find_layers(graph: Graph, config: SparsityConfig, pattern: _Pattern) -> list[_Layer | LayerReport]:
    """Candidate layers in graph order: a _Layer to prune, or the report of a skipped one."""
    out: list[_Layer | LayerReport] = []
    for node in graph.nodes:
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx"):
            continue
        w, x = constant_value(node.input(1)), node.input(0)
        if w is None or x is None or x.const is not None or w.dtype.kind != "f":
            continue
        if w.ndim != 2 and node.op_type != "Conv":
            out.append(_report(node, w, skipped=f"{w.ndim}-d weight"))
            continue
        layer = _Layer(node, w, int(node.attr("group", 1)), int(np.prod(w.shape[2:])) if node.op_type == "Conv" else 1)
        layer.bias = _bias(node, layer.shape[0])
        reason = ""
        if node.name in config.exclude:
            reason = "excluded"
        elif pattern.is_nm and layer.channels < pattern.m:
            reason = f"{layer.channels} input channel(s) per group: no group of {pattern.m}"
        elif layer.shape[0] < pattern.height:
            reason = f"{layer.shape[0]} output channel(s): no block of {pattern.height}"
        out.append(_report(node, w, skipped=reason) if reason else layer)
    return out


def _report(node: Node, w: np.ndarray, **kw: Any) -> LayerReport:
    nz = int(np.count_nonzero(w))
    return LayerReport(node.name, node.op_type, int(w.size), nz, 1.0 - nz / max(w.size, 1), **kw)


# ---------------------------------------------------------------------------------------------
# Masks: which weights of a block of columns to zero, given their scores (lowest first).


def _units(scores: np.ndarray, forced: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and sizes of the blocks of `height` rows by one column; zeros that must stay (`forced`)
    cost nothing, and a block made only of them scores -inf."""
    rows, cols = scores.shape
    nb, pad = -(-rows // height), -rows % height
    s = np.pad(np.where(forced, 0.0, scores), ((0, pad), (0, 0))).reshape(nb, height, cols)
    f = np.pad(forced, ((0, pad), (0, 0)), constant_values=True).reshape(nb, height, cols)
    sizes = np.full((nb, cols), height)
    sizes[-1] -= pad
    return np.where(f.all(1), -np.inf, s.sum(1)), sizes


def _smallest(scores: np.ndarray, sizes: np.ndarray, target: int) -> np.ndarray:
    """Mask of the lowest-scoring units whose sizes add up to at least `target` (all when short)."""
    order = np.argsort(scores, axis=None, kind="stable")
    k = int(np.searchsorted(np.cumsum(sizes.ravel()[order]), target)) + 1 if target > 0 else 0
    out = np.zeros(scores.size, bool)
    out[order[:k]] = True
    return out.reshape(scores.shape)


def _count(fraction: float, size: int) -> int:
    """Weights to prune for `fraction` of `size`: rounded up, so the target is always met."""
    return math.ceil(fraction * size - 1e-9)


def _select(pattern: _Pattern, sparsity: float) -> Select:
    """The function (scores, forced zeros) -> prune mask of one block of columns [out, cols]."""

    def nm(scores: np.ndarray, forced: np.ndarray) -> np.ndarray:
        ranks = np.argsort(np.argsort(np.where(forced, -np.inf, scores), axis=1, kind="stable"), axis=1)
        return (ranks < scores.shape[1] - pattern.n) | forced

    def blocks(scores: np.ndarray, forced: np.ndarray) -> np.ndarray:
        units, sizes = _units(scores, forced, pattern.height)
        chosen = _smallest(units, sizes, _count(sparsity, scores.size))
        return np.repeat(chosen, pattern.height, axis=0)[: scores.shape[0]] | forced

    return nm if pattern.is_nm else blocks


def _order(layer: _Layer, pattern: _Pattern, block: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Column visiting order and its mask blocks: N:M goes tap by tap, one block per channel group;
    other patterns go in storage order, `block` columns at a time."""
    k = layer.shape[1]
    if not pattern.is_nm:
        return np.arange(k), [(a, min(a + block, k)) for a in range(0, k, block)]
    c, taps = layer.channels, layer.taps
    perm = (np.arange(c)[None, :] * taps + np.arange(taps)[:, None]).ravel()  # tap-major
    return perm, [(t * c + a, t * c + min(a + pattern.m, c)) for t in range(taps) for a in range(0, c, pattern.m)]


def _allocate(layers: list[_Layer], config: SparsityConfig, pattern: _Pattern) -> list[float]:
    """Per-layer sparsity from one global ranking of LAMP scores, each layer capped."""
    pools: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    total = 0
    for i, layer in enumerate(layers):
        w = layer.matrix()
        units, sizes = (a.ravel() for a in _units(w**2, np.zeros(w.shape, bool), pattern.height))
        order = np.argsort(units, kind="stable")
        units, sizes = units[order], sizes[order]
        with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero layer: 0/0, ranked first
            lamp = np.nan_to_num(units / np.cumsum(units[::-1])[::-1], nan=-1.0)
        n = int(np.searchsorted(np.cumsum(sizes), config.max_layer_sparsity * w.size, side="right"))
        pools.append((lamp[:n], sizes[:n], np.full(n, i)))
        total += w.size
    scores, sizes, owners = (np.concatenate([p[j] for p in pools]) for j in range(3))
    chosen = _smallest(scores, sizes, _count(config.sparsity, total))
    pruned = np.bincount(owners[chosen], sizes[chosen], len(layers))
    return [float(p) / layer.weight.size for p, layer in zip(pruned, layers)]


# ---------------------------------------------------------------------------------------------
# Pruning one layer.


def _magnitude(layer: _Layer, pattern: _Pattern, sparsity: float) -> np.ndarray:
    """The [out, in] matrix pruned by magnitude, the whole layer ranked at once."""
    perm, blocks = _order(layer, pattern, layer.shape[1])
    w = layer.matrix()[:, perm]
    select = _select(pattern, sparsity)
    for a, b in blocks:
        w[:, a:b][select(w[:, a:b] ** 2, w[:, a:b] == 0)] = 0.0
    return w[:, np.argsort(perm)]


def _reconstruct(layer: _Layer, pattern: _Pattern, sparsity: float) -> tuple[np.ndarray, np.ndarray | None]:
    """The [out, in] matrix pruned and reconstructed (see the module doc), and the new bias."""
    assert layer.stats is not None
    perm, blocks = _order(layer, pattern, BLOCK)
    k = layer.shape[1]
    w = layer.matrix()[:, perm]
    forced = w == 0
    if layer.bias is not None:  # the bias column goes last: it takes every column's error
        perm, w = np.append(perm, k), np.concatenate([w, layer.bias[:, None]], axis=1)
    gram, cross = (s[:, perm][:, :, perm] for s in layer.stats[:2])
    h = _damped(gram)
    w = _retarget(w, h, cross + (h - gram), layer.groups)
    w = _obs(w, h, blocks, _select(pattern, sparsity), forced, layer.groups)
    return w[:, :k][:, np.argsort(perm[:k])], (w[:, k] if layer.bias is not None else None)


def _damped(h: np.ndarray) -> np.ndarray:
    """H + lambda I per group (lambda = DAMPING * mean diagonal); inputs never seen get a unit diagonal."""
    h = h.copy()
    diag = np.einsum("gii->gi", h)  # a writable view
    diag[diag == 0] = 1.0
    diag += DAMPING * diag.mean(axis=1, keepdims=True)
    return h


def _grouped(w: np.ndarray, groups: int) -> np.ndarray:
    """[out, in] -> [groups, out/groups, in]: each group's rows see that group's inputs."""
    return w.reshape(groups, w.shape[0] // groups, w.shape[1])


def _retarget(w: np.ndarray, h: np.ndarray, cross: np.ndarray, groups: int) -> np.ndarray:
    """Rows v = argmin |X v - X0 w|^2 + lambda |v - w|^2, i.e. (H + lambda I)^-1 (X^T X0 + lambda I) w:
    the weights that best reproduce, from the inputs as they are now, the original layer's output."""
    w3 = _grouped(w, groups)
    return np.linalg.solve(h, cross @ w3.transpose(0, 2, 1)).transpose(0, 2, 1).reshape(w.shape)


def _obs(w: np.ndarray, h: np.ndarray, blocks: list[tuple[int, int]], select: Select, forced: np.ndarray,
         groups: int) -> np.ndarray:
    """SparseGPT's OBS pass over [out, in] weights with damped per-group Hessians [groups, in, in].

    Columns past the last block (the bias) are never pruned but take their share of the updates."""
    hinv = np.linalg.inv(h)
    u = np.swapaxes(np.linalg.cholesky((hinv + np.swapaxes(hinv, 1, 2)) / 2), 1, 2)  # H^-1 = U^T U
    d = np.einsum("gii->gi", u)
    rows = w.shape[0]
    w3 = _grouped(w, groups).copy()
    for a, b in blocks:
        scores = (w3[:, :, a:b] / d[:, None, a:b]) ** 2
        prune = select(scores.reshape(rows, b - a), forced[:, a:b]).reshape(groups, -1, b - a)
        for i in range(a, b):
            err = np.where(prune[:, :, i - a], w3[:, :, i], 0.0) / d[:, i, None]
            w3[:, :, i:] -= err[:, :, None] * u[:, None, i, i:]
        w3[:, :, a:b][prune] = 0.0  # exactly, not up to rounding
    return w3.reshape(w.shape)


def _error(layer: _Layer, new: np.ndarray, bias: np.ndarray | None) -> float:
    """|X w' - X0 w|^2 / |X0 w|^2 on the calibration data, from the accumulated statistics."""
    assert layer.stats is not None
    old = layer.matrix()
    if layer.bias is not None:
        old, new = (np.concatenate([m, b[:, None]], axis=1) for m, b in ((old, layer.bias), (new, bias)))
    old, new = _grouped(old, layer.groups), _grouped(new, layer.groups)
    gram, cross, gram0 = layer.stats

    def quad(a: np.ndarray, m: np.ndarray, b: np.ndarray) -> float:
        return float(np.einsum("gri,gij,grj->", a, m, b))

    ref = quad(old, gram0, old)
    return (quad(new, gram, new) - 2 * quad(new, cross, old) + ref) / max(ref, 1e-30)


# ---------------------------------------------------------------------------------------------
# Calibration: statistics per dependency stage.


class _Seen(Exception):
    """Raised from the interpreter's observer once a stage's inputs are all seen: skips the rest."""


def _stages(graph: Graph, layers: list[_Layer]) -> list[list[_Layer]]:
    """Layers grouped so that no layer depends on a layer of its own group or of a later one."""
    by_node = {id(layer.node): layer for layer in layers}
    reach: dict[int, int] = {}
    stages: list[list[_Layer]] = []
    for node in graph.nodes:
        reads = [v for v in node.inputs if v is not None] + [v for sg in node.subgraphs for v in free_values(sg)]
        r = max((reach.get(id(v), 0) for v in reads), default=0)
        if id(node) in by_node:
            stages.extend([] for _ in range(r + 1 - len(stages)))
            stages[r].append(by_node[id(node)])
            r += 1
        for v in node.outputs:
            reach[id(v)] = r
    return stages


def _inputs(graph: Graph, values: list[Value], feeds: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
    """The arrays of `values` (by id) for one batch, running `graph` only as far as they are computed."""
    got = {id(v): feeds[v.name] for v in values if v.is_graph_input}
    pending = {id(v) for v in values} - set(got)

    def observe(v: Value, x: Any) -> None:
        if id(v) in pending:
            got[id(v)] = x
            pending.discard(id(v))
            if not pending:
                raise _Seen

    if pending:
        try:
            Interpreter(observe=observe).run(graph, feeds)
        except _Seen:
            pass
    return got


def _measure(graph: Graph, original: Graph, vmap: Mapping[int, Value], batches: Iterable[Mapping[str, np.ndarray]],
             stage: list[_Layer]) -> None:
    """Accumulate the stage's statistics over the calibration batches, one batch of activations at a
    time, from `graph` (as sparsified so far) and `original` (its copy, values mapped by `vmap`)."""
    values = list({id(v): v for v in (layer.node.inputs[0] for layer in stage) if v is not None}.values())
    for feeds in batches:
        now, before = _inputs(graph, values, feeds), _inputs(original, [vmap[id(v)] for v in values], feeds)
        for layer in stage:
            v = layer.node.inputs[0]
            assert v is not None
            layer.observe(now[id(v)], before[id(vmap[id(v)])])


# ---------------------------------------------------------------------------------------------
# Entry points.


def sparsify(graph: Graph, config: SparsityConfig,
             calibration: CalibrationSource | Mapping[str, np.ndarray] | None = None,
             progress: bool = False) -> list[LayerReport]:
    """Sparsify `graph`'s Conv/Gemm/MatMul weights in place; one report per layer, in graph order.

    `calibration` is what `compiler.calibration.load_calibration` takes (a path, or an iterable of
    feed dicts) or a single feed dict; `config.reconstruct` needs it, magnitude pruning ignores it.
    """
    pattern = _parse(config)
    found = _find_layers(graph, config, pattern)
    layers = [x for x in found if isinstance(x, _Layer)]
    if config.sparsity == 0 or not layers:
        return [x if isinstance(x, LayerReport) else _report(x.node, x.weight) for x in found]
    targets = _allocate(layers, config, pattern) if config.scope == "global" else [config.sparsity] * len(layers)
    target = {id(layer): t for layer, t in zip(layers, targets)}
    stages: list[list[_Layer]] = [layers]
    measure: Callable[[list[_Layer]], None] | None = None
    if config.reconstruct:
        if calibration is None:
            raise ValueError("reconstruct=True needs calibration data: pass calibration=, or reconstruct=False")
        # Imported here: compiler imports passes.
        from compiler.calibration import load_calibration

        batches = load_calibration(graph, [calibration] if isinstance(calibration, Mapping) else calibration)
        vmap: dict[int, Value] = {}
        original = clone_graph(graph, vmap=vmap)
        stages = _stages(graph, layers)
        measure = partial(_measure, graph, original, vmap, batches)
    done: dict[int, LayerReport] = {}
    with tqdm(total=len(layers), desc="sparsify", unit="layer", disable=not progress) as bar:
        for stage in stages:
            todo = [layer for layer in stage if _needs_pruning(layer, pattern, target[id(layer)])]
            if measure is not None and todo:
                measure(todo)
            for layer in stage:
                done[id(layer)] = _apply(graph, layer, pattern, target[id(layer)]) if layer in todo \
                    else _report(layer.node, layer.weight)
                bar.update()
    return [x if isinstance(x, LayerReport) else done[id(x)] for x in found]


def _needs_pruning(layer: _Layer, pattern: _Pattern, sparsity: float) -> bool:
    """Whether magnitude pruning to the target would add a zero (else the layer is left untouched)."""
    return bool(np.count_nonzero(_magnitude(layer, pattern, sparsity)) < np.count_nonzero(layer.weight))


def _apply(graph: Graph, layer: _Layer, pattern: _Pattern, sparsity: float) -> LayerReport:
    """Prune one layer and give its node the new weight (and bias)."""
    if layer.stats is not None and not all(np.isfinite(s).all() for s in layer.stats):
        layer.stats = None  # inf/nan activations on the calibration data: no usable statistics
    if layer.stats is None:
        new, bias = _magnitude(layer, pattern, sparsity), None
    else:
        new, bias = _reconstruct(layer, pattern, sparsity)
    weight = layer.store(new)
    _replace(graph, layer.node, 1, weight, "sparse")
    if bias is not None:
        _replace(graph, layer.node, 2, _store_bias(layer.node, bias), "reconstructed")
    pruned = int(np.count_nonzero(layer.weight)) - int(np.count_nonzero(weight))
    return _report(layer.node, weight, pruned=pruned, error=None if layer.stats is None else _error(layer, new, bias))


def _replace(graph: Graph, node: Node, i: int, array: np.ndarray, suffix: str) -> None:
    """Make input `i` of `node` a new initializer; drop the old one when nothing else reads it."""
    old = node.inputs[i]
    assert old is not None
    node.set_input(i, graph.add_initializer(f"{old.name}_{suffix}", Tensor(array)))
    if old.is_initializer and not old.uses and old.name in graph.initializers and not old.is_graph_output:
        graph.remove_initializer(old)


@register_pass
class Sparsify(Pass):
    """Zero the smallest Conv/Gemm/MatMul weights to a target sparsity in a pattern (see the module).

    A text pipeline has no calibration data, so this pass prunes by magnitude (global scope: LAMP)
    without reconstruction; call `passes.sparsity.sparsify` with calibration data for accuracy at
    high sparsity.
    """

    name = "sparsify"
    lossy = True

    @dataclass
    class Options:
        sparsity: float = 0.5
        pattern: str = "unstructured"
        scope: str = "layer"

    def run(self, graph: Graph) -> bool:
        options = {f.name: getattr(self.options, f.name) for f in fields(self.Options)}
        return any(r.pruned for r in sparsify(graph, SparsityConfig(**options, reconstruct=False)))
