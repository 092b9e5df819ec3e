"""Structural channel pruning to a MAC budget, with training-free recovery.

`channel_prune(graph, config, calibration)` removes output channels of Conv/ConvTranspose/Gemm/MatMul
layers, and everything coupled to them, until `config.ratio` of the model's MACs are gone:

1. `depgraph.analyze` groups channels that must go together (residual Adds, concatenations,
   depthwise and grouped convs, shared weights) and locks those that cannot go (graph outputs,
   unknown ops, reductions over channels);
2. each class (one removable channel of a group) gets an importance aggregated over the whole group:
   L1/L2 norm of every weight slice it owns (output rows and the next layers' input columns), the
   BatchNorm |gamma| it meets, or, from calibration data, the energy its removal takes out of the next
   layers' outputs relative to theirs (`||W_next[:, c]||^2 * var(x_c) / E||y||^2`; the mean is not
   lost when recovery folds it away);
3. allocation: "global" removes, across all groups, the channel cheapest to lose per MAC saved until
   the budget is met (lazy greedy: a removal only shrinks what neighbouring removals save), "local"
   the same fraction of every group; no layer loses more than `max_per_layer` of its channels or
   keeps zero, and kept counts are multiples of `round_to` (or the original count);
4. `channel_surgery` slices the weights, biases, BatchNorm statistics, per-channel constants and index
   maps, and `prune_recovery` (with calibration data) folds removed channels' means into the next
   biases, refits the next layers by least squares and re-estimates BatchNorm statistics.

MACs are counted by each op's `macs` at `config.input_shapes`, else at the calibration data's input
shapes, else at the graph's own (symbolic dims count 1), always with batch 1. The graph should have been
through `cleanup` (weights are initializers, BatchNormalization still present).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

import ir
from ir import Graph, Node, TensorType, Value, get_op
from ir.ops import constant_value

from .base import Pass, register_pass
from .channel_surgery import apply_edits
from .depgraph import ChannelGraph, ConstSlice, Group, analyze
from .prune_recovery import Batches, Moments, fold_means, mean_corrections, observe, reconstruct

IMPORTANCE = ("l1", "l2", "bn", "activation")
ALLOCATION = ("global", "local")


@dataclass(frozen=True)
class ChannelPruneConfig:
    """What to prune. `importance` None: "activation" with calibration data, else "l2"."""

    ratio: float  # the fraction of the model's MACs to remove
    importance: str | None = None  # "l1" | "l2" | "bn" | "activation"
    allocation: str = "global"  # "global" | "local"
    max_per_layer: float = 0.8  # no layer loses more than this fraction of its channels
    round_to: int = 1  # kept channel counts are multiples of this (or the original count)
    exclude: Sequence[str] = ()  # names of layers whose output channels stay
    recover: bool = True  # with calibration data: mean folding, least squares, BatchNorm statistics
    input_shapes: Mapping[str, Sequence[int]] | None = None  # where MACs are counted (default: see module)


@dataclass(frozen=True)
class LayerReport:
    """One layer with a constant weight, before and after pruning."""

    name: str
    op: str
    channels_before: int
    channels_after: int
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int


# ---------------------------------------------------------------------------------------------
# MACs as channels go.


class MacModel:
    """The model's MACs as a function of kept channels: each node's MACs scale with the kept fraction
    of every layout it depends on (`ChannelGraph.macs`), which is exact for Conv, Gemm and MatMul."""

    def __init__(self, cg: ChannelGraph, base: Mapping[Node, int]) -> None:
        self.nodes = [n for n in cg.macs if base.get(n)]
        self.base = np.array([base[n] for n in self.nodes], np.float64)
        self.fixed = float(sum(m for n, m in base.items() if n not in cg.macs))
        layouts = [(i, lay) for i, n in enumerate(self.nodes) for lay in cg.macs[n] if lay.size]
        self.node_of = np.array([i for i, _ in layouts], np.int64)
        self.lens = np.array([lay.size for _, lay in layouts], np.float64)
        self.counts = np.zeros((len(layouts), cg.num_classes))
        for f, (_, lay) in enumerate(layouts):
            self.counts[f] = np.bincount(cg.classes[lay.atoms], minlength=cg.num_classes)

    def kept(self, removed: np.ndarray) -> np.ndarray:
        return self.lens - self.counts @ removed.astype(np.float64)

    def per_node(self, kept: np.ndarray) -> np.ndarray:
        frac = np.ones(len(self.nodes))
        np.multiply.at(frac, self.node_of, kept / self.lens)
        return self.base * frac

    def total(self, kept: np.ndarray) -> float:
        return self.fixed + float(self.per_node(kept).sum())


class _Limits:
    """Per-layer floors: a layer keeps >= 1 channel and loses at most `max_per_layer` of them."""

    def __init__(self, cg: ChannelGraph, max_per_layer: float) -> None:
        self.counts = np.zeros((len(cg.limits), cg.num_classes))
        for i, (lay, _) in enumerate(cg.limits):
            self.counts[i] = np.bincount(cg.classes[lay.atoms], minlength=cg.num_classes)
        self.size = np.array([lay.size for lay, _ in cg.limits], np.float64)
        self.floor = np.array([max(1, lay.size - math.floor(max_per_layer * lay.size)) if layer else 1
                               for lay, layer in cg.limits], np.float64)


class _State:
    """A removal in progress: what each MAC factor and each limited layout keeps, updated per chunk."""

    def __init__(self, model: MacModel, limits: _Limits, num_classes: int) -> None:
        self.model, self.limits = model, limits
        self.kept, self.room = model.lens.copy(), limits.size.copy()
        self.removed = np.zeros(num_classes, bool)

    @property
    def total(self) -> float:
        return self.model.total(self.kept)

    def saving(self, chunk: np.ndarray) -> float:
        return self.total - self.model.total(self.kept - self.model.counts[:, chunk].sum(1))

    def fits(self, chunk: np.ndarray) -> bool:
        return bool(np.all(self.room - self.limits.counts[:, chunk].sum(1) >= self.limits.floor))

    def remove(self, chunk: np.ndarray) -> None:
        self.kept = self.kept - self.model.counts[:, chunk].sum(1)
        self.room = self.room - self.limits.counts[:, chunk].sum(1)
        self.removed[chunk] = True


def _chunks(group: Group, order: np.ndarray, round_to: int) -> list[np.ndarray]:
    """The classes a group loses step by step (least important first): each step takes the kept
    count down to the next multiple of `round_to`, never below one channel or the locked ones."""
    size, locked = len(group.classes), len(group.classes) - len(group.removable)
    out, kept, pos = [], size, 0
    while (nxt := (kept - 1) // round_to * round_to) >= max(1, locked):
        out.append(order[pos:pos + kept - nxt])
        pos, kept = pos + kept - nxt, nxt
    return out


def _plans(cg: ChannelGraph, imp: np.ndarray, round_to: int) -> list[list[np.ndarray]]:
    return [_chunks(g, g.removable[np.argsort(imp[g.removable], kind="stable")], round_to) for g in cg.groups]


def allocate_global(cg: ChannelGraph, imp: np.ndarray, model: MacModel, limits: _Limits, target: float,
                    round_to: int) -> np.ndarray:
    """Remove the chunk with the least importance per MAC saved until MACs <= target (lazy greedy)."""
    state = _State(model, limits, cg.num_classes)
    plans = _plans(cg, imp, round_to)
    step = [0] * len(plans)

    def score(g: int) -> float:
        chunk = plans[g][step[g]]
        saving = state.saving(chunk)
        return float(imp[chunk].sum()) / saving if saving > 0 else math.inf

    heap = [(score(g), g) for g in range(len(plans)) if plans[g]]
    heapq.heapify(heap)
    while heap and state.total > target:
        _, g = heapq.heappop(heap)
        now = score(g)
        if math.isinf(now):
            continue
        if heap and now > heap[0][0]:
            heapq.heappush(heap, (now, g))  # stale: neighbours' removals shrank what it saves
            continue
        if not state.fits(plans[g][step[g]]):
            continue  # a layer of this group is at its floor: the group is done
        state.remove(plans[g][step[g]])
        step[g] += 1
        if step[g] < len(plans[g]):
            heapq.heappush(heap, (score(g), g))
    return state.removed


def allocate_local(cg: ChannelGraph, imp: np.ndarray, model: MacModel, limits: _Limits, target: float,
                   round_to: int) -> np.ndarray:
    """The smallest common fraction of every group's channels (bisection) that meets the target."""
    plans = _plans(cg, imp, round_to)

    def plan(p: float) -> _State:
        state = _State(model, limits, cg.num_classes)
        for g, chunks in zip(cg.groups, plans):
            budget = math.floor(p * len(g.classes))
            for chunk in chunks:
                if len(chunk) > budget or not state.fits(chunk):
                    break
                state.remove(chunk)
                budget -= len(chunk)
        return state

    lo, hi = 0.0, 1.0
    if plan(hi).total > target:
        return plan(hi).removed
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if plan(mid).total <= target else (mid, hi)
    return plan(hi).removed


# ---------------------------------------------------------------------------------------------
# Importance.


def _rows(arr: np.ndarray, axis: int) -> np.ndarray:
    """`arr` as one float64 row per position along `axis`."""
    return np.moveaxis(np.asarray(arr, np.float64), axis, 0).reshape(arr.shape[axis], -1)


def _normalized(cg: ChannelGraph, score: np.ndarray) -> np.ndarray:
    """Scores divided by their group's mean (magnitudes are only comparable within a group)."""
    out = score.copy()
    for g in cg.groups:
        mean = float(score[g.removable].mean()) if len(g.removable) else 0.0
        out[g.classes] = score[g.classes] / mean if mean > 0 else 1.0
    return out


def importance(cg: ChannelGraph, kind: str, moments: Mapping[Value, Moments], recover: bool) -> np.ndarray:
    """Importance of each class, aggregated over every member of its group (see the module docstring)."""
    k = cg.num_classes
    if kind == "activation":
        score = np.zeros(k)
        for lin in cg.linears:
            x, y = lin.node.input(0), lin.node.outputs[0]
            if not lin.dense or x not in moments or y not in moments:
                continue
            rows = _rows(constant_value(lin.node.input(lin.weight)), lin.in_axis)  # type: ignore[arg-type]
            gain = np.einsum("ij,ij->i", rows, rows) * float(lin.node.attr("alpha", 1.0)) ** 2  # Gemm's alpha
            spread = moments[x].var if recover else moments[x].meansq  # type: ignore[index]
            energy = float(moments[y].meansq.sum())
            score += np.bincount(cg.classes[lin.inputs.atoms], gain * spread / max(energy, 1e-30), k)  # type: ignore[union-attr]
        return score
    magnitude = np.zeros(k)
    gamma = np.zeros(k)
    for e in cg.edits:
        if not isinstance(e, ConstSlice) or e.role not in ("weight", "scale"):
            continue
        arr = constant_value(e.node.input(e.index))
        for axis, lay in e.axes:
            r = _rows(arr, axis)  # type: ignore[arg-type]
            if e.role == "weight":
                magnitude += np.bincount(cg.classes[lay.atoms], np.abs(r).sum(1) if kind == "l1" else (r * r).sum(1), k)
            elif e.node.op_type == "BatchNormalization":
                gamma += np.bincount(cg.classes[lay.atoms], np.abs(r).sum(1), k)
    magnitude = magnitude if kind == "l1" else np.sqrt(magnitude)
    if kind == "bn":  # groups meeting no BatchNorm fall back to L2
        has_bn = np.zeros(k, bool)
        for g in cg.groups:
            has_bn[g.classes] = bool(gamma[g.classes].any())
        magnitude = np.where(has_bn, _normalized(cg, gamma), _normalized(cg, magnitude))
    return _normalized(cg, magnitude)


# ---------------------------------------------------------------------------------------------
# The entry point.


def _layer_macs(graph: Graph, shapes: Mapping[str, Sequence[int]] | None) -> dict[Node, int]:
    """MACs per node at `shapes` (input name -> shape; batch taken as 1), on a copy of the graph."""
    g = graph.copy()
    for v in g.inputs:
        if shapes and v.name in shapes and isinstance(v.type, TensorType):
            v.type = TensorType(v.type.dtype, (1, *shapes[v.name][1:]))
    ir.infer_shapes(g)
    out: dict[Node, int] = {}
    for node, twin in zip(graph.nodes, g.nodes):
        op = get_op(node.op_type, node.domain)
        if op is not None and op.macs is not None:
            try:
                out[node] = int(op.macs(twin) or 0)
            except (TypeError, ValueError, IndexError):
                out[node] = 0  # MACs of a node whose shapes are unknown count nothing
    return out


def _params(node: Node) -> int:
    return sum(int(np.size(a)) for v in node.inputs if v is not None and (a := constant_value(v)) is not None)


def _collect(cg: ChannelGraph, batches: Batches) -> dict[Value, Moments]:
    """Per-channel moments of every dense layer's input and output over the calibration data."""
    wanted: dict[Value, Moments] = {}
    for lin in cg.linears:
        if lin.dense:
            wanted.setdefault(lin.node.input(0), Moments(lin.inputs.axis))  # type: ignore[arg-type,union-attr]
            wanted.setdefault(lin.node.outputs[0], Moments(lin.outputs.axis))
    by_name = {v.name: m for v, m in wanted.items()}
    for got in observe(cg.graph, batches("statistics"), set(by_name)):
        for name, arr in got.items():
            by_name[name].add(arr)
    return wanted


def _batches(calibration: Any, progress: bool, title: str | None) -> Iterable[Mapping[str, np.ndarray]]:
    if not progress or title is None:
        return calibration
    from tqdm.auto import tqdm

    return tqdm(calibration, desc=f"channel-prune: {title}", unit="batch",
                total=math.ceil(calibration.num_samples / calibration.batch_size))


def _check(config: ChannelPruneConfig) -> None:
    if not 0.0 <= config.ratio < 1.0:
        raise ValueError(f"channel pruning: ratio must be in [0, 1), got {config.ratio}")
    if config.importance is not None and config.importance not in IMPORTANCE:
        raise ValueError(f"channel pruning: importance {config.importance!r} is not one of {', '.join(IMPORTANCE)}")
    if config.allocation not in ALLOCATION:
        raise ValueError(f"channel pruning: allocation {config.allocation!r} is not one of {', '.join(ALLOCATION)}")
    if not 0.0 < config.max_per_layer <= 1.0 or config.round_to < 1:
        raise ValueError("channel pruning: max_per_layer must be in (0, 1] and round_to >= 1")


def channel_prune(graph: Graph, config: ChannelPruneConfig, calibration: Any = None,
                  progress: bool = False) -> list[LayerReport]:
    """Prune `graph` in place (see the module docstring); one LayerReport per layer with a weight.

    `calibration`: one feed dict (input name -> samples) or any source that
    `compiler.calibration.load_calibration` accepts (an .npz path, a folder, an iterable of feed
    dicts); it enables activation importance and recovery. `progress` shows a progress bar per pass
    over the calibration data.
    """
    _check(config)
    calib = None
    if calibration is not None:
        from compiler.calibration import load_calibration  # compiler imports passes: resolve late

        calib = load_calibration(graph, [calibration] if isinstance(calibration, Mapping) else calibration)
    kind = config.importance or ("activation" if calib is not None else "l2")
    if kind == "activation" and calib is None:
        raise ValueError("channel pruning: importance 'activation' needs calibration data")
    types = {v: v.type for v in graph.values()}
    ir.infer_shapes(graph)
    cg = analyze(graph, config.exclude)
    shapes = config.input_shapes
    if shapes is None and calib is not None:
        shapes = {k: np.shape(a) for k, a in next(iter(calib)).items()}
    base = _layer_macs(graph, shapes)
    model = MacModel(cg, base)
    batches: Batches = lambda title: _batches(calib, progress, title)  # noqa: E731
    recover = config.recover and calib is not None
    moments = _collect(cg, batches) if calib is not None and (kind == "activation" or recover) else {}
    imp = importance(cg, kind, moments, recover)
    allocate = allocate_global if config.allocation == "global" else allocate_local
    target = (1.0 - config.ratio) * model.total(model.lens)
    removed = allocate(cg, imp, model, _Limits(cg, config.max_per_layer), target, config.round_to)
    params = {lin.node: _params(lin.node) for lin in cg.linears}
    if removed.any():
        orig = graph.copy() if recover else None
        corrections = mean_corrections(cg, removed, moments) if recover else []
        apply_edits(cg, removed)
        if orig is not None:
            fold_means(cg, removed, corrections)
            reconstruct(orig, cg, removed, batches)
        ir.verify(graph)
    else:
        for v, t in types.items():
            v.type = t
    after = dict(zip(model.nodes, model.per_node(model.kept(removed))))
    return [LayerReport(lin.node.name, lin.node.op_type, lin.outputs.size, int(cg.keep(removed, lin.outputs).sum()),
                        base.get(lin.node, 0), int(round(after.get(lin.node, base.get(lin.node, 0)))),
                        params[lin.node], _params(lin.node))
            for lin in cg.linears]


@register_pass
class ChannelPrune(Pass):
    """Removes output channels of Conv/ConvTranspose/Gemm/MatMul layers (with everything coupled to
    them: residual partners, BatchNorms, concatenations, next layers' inputs) until `ratio` of the
    model's MACs are gone, ranking channels by weight magnitude ("l1", "l2") or BatchNorm scale ("bn").

    Run after cleanup and before fold-batchnorm. Without calibration data there is no recovery: for
    activation importance and recovery, call `passes.channel_prune.channel_prune` with calibration.
    """

    name = "channel-prune"
    lossy = True  # removes channels on purpose: held to MAC and accuracy bounds in its own tests

    @dataclass
    class Options:
        ratio: float = 0.5
        importance: str = "l2"
        allocation: str = "global"
        max_per_layer: float = 0.8
        round_to: int = 1

    def run(self, graph: Graph) -> bool:
        reports = channel_prune(graph, ChannelPruneConfig(**asdict(self.options)))
        return any(r.channels_after != r.channels_before for r in reports)
