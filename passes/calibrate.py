"""Activation statistics for static quantization: streaming histograms and range (clipping) methods.

Calibration runs the float graph through the reference interpreter batch by batch and keeps, per
observed tensor, a fixed-size summary: exact min/max and a 2048-bin histogram. Activations are never
kept, so memory is bounded by one batch whatever the size of the calibration set.

Histogram bins lie on a power-of-two grid: bin width `2**e`, bin `a` covering `[a * 2**e, (a+1) * 2**e)`.
When a batch falls outside the current bins, `e` grows until the union fits and old bins merge
exactly (each old bin lies inside one new bin). `e` is always the smallest exponent that fits the range
seen so far, so the final histogram is the exact bin count of all values at the final width: merging is
order-independent (bitwise) and calibrating on the same data always gives the same scales. Zero is
always a bin edge, which makes folding into a magnitude histogram exact.

Range methods (`RANGE_METHODS`) turn a histogram into the `[lo, hi]` a tensor is quantized over:

* `minmax`: the exact extremes; no clipping (what bounded outputs such as Softmax use).
* `percentile`: drop `100 - p` percent of the values at each tail (default p = 99.99).
* `entropy`: TensorRT's KL-divergence threshold on the magnitude histogram, as onnxruntime does:
  the clipping threshold whose 128 (256 for one-sided data and an asymmetric type) quantized bins
  lose the least information about the full distribution.
* `mse`: the clipping threshold minimizing the expected squared error (rounding inside the range
  plus clipping outside it), integrated exactly over each bin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ir import DType, Graph, Interpreter, TensorType, Value

NUM_BINS = 2048
#: Default percentile. Output RMS error after int8 (u8) quantization, relative to fp32, for p = 99.9 /
#: 99.99 / 99.999 / minmax: digits CNN 4.1 / 1.6 / 1.2 / 1.2%; random-weight mobilenetv3 1.6 / 0.9 / 1.2 /
#: 1.2%, fpn_detector 3.6 / 2.4 / 2.4 / 2.4%, transformer 5.5 / 5.1 / 5.1 / 5.1% (tests/models.py).
#: 99.9 clips real signal; 99.99 is best or within 0.4 points everywhere.
DEFAULT_PERCENTILE = 99.99
#: Smallest bin width (2**-140) and the widest dynamic range kept per histogram (2**50 bins from zero),
#: so bin indices stay exact int64 values however large or small the data.
_MIN_EXP = -140
_INDEX_BITS = 50
_KL_EPS = 1e-4  # smoothing mass for empty bins of the candidate distribution (TensorRT, onnxruntime)
_CHUNK = 128  # candidate thresholds evaluated per vectorized block (bounds memory to ~2 MB per matrix)
_COARSE = 128  # candidates of the coarse pass of a threshold search


@dataclass
class Histogram:
    """Streaming histogram of one tensor (see the module docstring for the bin grid)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BINS, np.int64))
    exp: int | None = None  # bin width is 2**exp; None until a finite value is seen
    start: int = 0  # absolute index of counts[0]
    min: float = math.inf
    max: float = -math.inf
    nonfinite: int = 0
    zeros: int = 0  # exact zeros (ReLU outputs, padding): always representable, so left out of clipping searches

    @property
    def width(self) -> float:
        return math.ldexp(1.0, self.exp if self.exp is not None else 0)

    @property
    def total(self) -> int:
        return int(self.counts.sum())

    @property
    def edges(self) -> np.ndarray:
        """NUM_BINS + 1 bin edges (float64)."""
        return (self.start + np.arange(NUM_BINS + 1, dtype=np.float64)) * self.width

    def update(self, x: np.ndarray) -> None:
        """Add a batch of values (non-finite values are counted apart and otherwise ignored)."""
        x = np.asarray(x).reshape(-1)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):  # nan or inf somewhere: count and drop them
            finite = np.isfinite(x)
            self.nonfinite += int(x.size - finite.sum())
            x = x[finite]
            if x.size == 0:
                return
            lo, hi = float(x.min()), float(x.max())
        self.zeros += int(x.size - np.count_nonzero(x))
        self._grow(min(lo, self.min), max(hi, self.max))
        self.min, self.max = min(lo, self.min), max(hi, self.max)
        idx = np.floor(np.ldexp(x.astype(np.float64), -self.exp)).astype(np.int64)  # type: ignore[operator]
        idx -= self.start
        self.counts += np.bincount(idx, minlength=NUM_BINS)

    def merge(self, other: Histogram) -> Histogram:
        """The histogram of both sets of values (equal to one built from their concatenation)."""
        out = Histogram(self.counts.copy(), self.exp, self.start, self.min, self.max, self.nonfinite + other.nonfinite,
                        self.zeros + other.zeros)
        if other.exp is None:
            return out
        lo, hi = min(out.min, other.min), max(out.max, other.max)
        out._grow(lo, hi)
        out.min, out.max = lo, hi
        out.counts += _rebin(other.counts, other.exp, other.start, out.exp, out.start)  # type: ignore[arg-type]
        return out

    def _grow(self, lo: float, hi: float) -> None:
        """Widen bins (exactly, by powers of two) until [lo, hi] fits."""
        e = _fit_exp(lo, hi)
        if self.exp is not None:
            e = max(e, self.exp)
        start = math.floor(math.ldexp(lo, -e))
        if self.exp is None:
            self.exp, self.start = e, start
            return
        if e != self.exp or start != self.start:
            self.counts = _rebin(self.counts, self.exp, self.start, e, start)
            self.exp, self.start = e, start

    def magnitude(self) -> tuple[np.ndarray, float]:
        """Histogram of nonzero |x| from zero: (counts, bin width), at most NUM_BINS bins (exactly re-binned)."""
        assert self.exp is not None
        nz = np.nonzero(self.counts)[0]
        absolute = self.start + nz
        folded = np.where(absolute >= 0, absolute, -absolute - 1)  # [-(j+1)w, -jw) -> [jw, (j+1)w)
        shift = 0
        top = int(folded.max()) if folded.size else 0
        while (top >> shift) >= NUM_BINS:
            shift += 1
        mag = np.bincount(folded >> shift, weights=self.counts[nz], minlength=(top >> shift) + 1)
        mag[0] -= self.zeros  # exact zeros sit in bin [0, w): zero is exact at every threshold
        return mag.astype(np.float64), math.ldexp(1.0, self.exp + shift)


def _fit_exp(lo: float, hi: float) -> int:
    """Smallest bin exponent that fits [lo, hi] into NUM_BINS bins (monotone in the range)."""
    mag = max(abs(lo), abs(hi))
    e = _MIN_EXP
    if mag > 0:
        e = max(e, math.frexp(mag)[1] - _INDEX_BITS)
    if hi > lo:
        e = max(e, math.frexp((hi - lo) / (NUM_BINS + 1))[1] - 2)  # a lower bound: the loop finds the exact one
    while math.floor(math.ldexp(hi, -e)) - math.floor(math.ldexp(lo, -e)) >= NUM_BINS:
        e += 1
    return e


def _rebin(counts: np.ndarray, exp: int, start: int, new_exp: int, new_start: int) -> np.ndarray:
    """Move counts from one power-of-two grid to a coarser (or shifted) one: exact, no smearing."""
    nz = np.nonzero(counts)[0]
    idx = ((start + nz) >> (new_exp - exp)) - new_start
    return np.bincount(idx, weights=counts[nz], minlength=NUM_BINS).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Range methods: histogram -> [lo, hi].


def _minmax(h: Histogram, **_: Any) -> tuple[float, float]:
    return h.min, h.max


def _percentile(h: Histogram, *, percentile: float = DEFAULT_PERCENTILE, **_: Any) -> tuple[float, float]:
    """Clip `100 - percentile` percent of the values at each tail (bin edges, never past min/max)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    cdf = np.cumsum(h.counts) / max(h.total, 1)
    tail = (100.0 - percentile) / 100.0
    edges = h.edges
    lo_bin = int(np.searchsorted(cdf, tail, side="right"))
    hi_bin = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
    lo = float(edges[min(lo_bin, NUM_BINS - 1)])
    hi = float(edges[min(hi_bin, NUM_BINS - 1) + 1])
    return max(lo, h.min), min(hi, h.max)


def _one_sided(h: Histogram) -> bool:
    return h.min >= 0 or h.max <= 0


def _clip_symmetric(h: Histogram, threshold: float) -> tuple[float, float]:
    return max(h.min, -threshold), min(h.max, threshold)


def _candidates(n_bins: int, first: int) -> np.ndarray:
    return np.arange(max(first, 1), n_bins + 1, dtype=np.int64)


def _entropy(h: Histogram, *, levels: int = 256, symmetric: bool = False, **_: Any) -> tuple[float, float]:
    """TensorRT's KL calibration on |x|: the threshold whose quantized distribution loses least."""
    mag, width = h.magnitude()
    n_q = levels if _one_sided(h) and not symmetric else levels // 2
    if mag.size <= n_q:
        return h.min, h.max
    best = _argmin_over_candidates(_candidates(mag.size, n_q), lambda c: _kl_divergence(mag, c, n_q))
    return _clip_symmetric(h, best * width)


def _kl_divergence(hist: np.ndarray, cands: np.ndarray, n_q: int) -> np.ndarray:
    """KL(P || Q) for each candidate bin count i: P = hist[:i] with the outliers added to its last bin,
    Q = hist[:i] merged into `n_q` groups and spread back over each group's non-empty bins."""
    size = hist.size
    csum = np.concatenate([[0.0], np.cumsum(hist)])
    cnz = np.concatenate([[0], np.cumsum(hist > 0)])
    i = cands[:, None]
    g = np.arange(n_q + 1)[None, :]
    bounds = (g * i) // n_q  # group boundaries, shape (R, n_q + 1)
    group_sum = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]
    group_nz = cnz[bounds[:, 1:]] - cnz[bounds[:, :-1]]
    k = np.arange(size)[None, :]
    inside = k < i
    group = np.minimum(((k + 1) * n_q + i - 1) // i - 1, n_q - 1)
    per_bin = np.take_along_axis(group_sum / np.maximum(group_nz, 1), group, axis=1)
    q = np.where(inside & (hist[None, :] > 0), per_bin, 0.0)
    p = np.where(inside, hist[None, :], 0.0)
    p[np.arange(len(cands)), cands - 1] += csum[-1] - csum[cands]  # outliers into the last kept bin
    p /= csum[-1]
    q /= np.maximum(q.sum(axis=1, keepdims=True), 1e-300)
    # Smooth Q: empty bins inside the window get eps, taken proportionally from the others.
    zeros = inside & (q == 0)
    n_zero = zeros.sum(axis=1, keepdims=True)
    n_nonzero = inside.sum(axis=1, keepdims=True) - n_zero
    q = np.where(zeros, _KL_EPS, q * (1 - _KL_EPS * n_zero / np.maximum(n_nonzero, 1)))
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p / np.where(q > 0, q, 1.0)), 0.0)
    return terms.sum(axis=1)


def _mse(h: Histogram, *, levels: int = 256, symmetric: bool = False, **_: Any) -> tuple[float, float]:
    """The threshold T minimizing expected squared error: rounding to steps of T / n inside [-T, T]
    (n levels per side) plus (|x| - T)^2 for clipped values, integrated over each bin uniformly."""
    mag, width = h.magnitude()
    n = levels - 1 if _one_sided(h) and not symmetric else (levels - 1) / 2 if not symmetric else levels // 2 - 1
    best = _argmin_over_candidates(_candidates(mag.size, max(1, mag.size // 64)),
                                   lambda c: _expected_sq_error(mag, width, c, float(n)))
    return _clip_symmetric(h, best * width)


def _expected_sq_error(hist: np.ndarray, width: float, cands: np.ndarray, n: float) -> np.ndarray:
    a = np.arange(hist.size, dtype=np.float64)[None, :] * width  # bin lower edges
    b = a + width
    t = cands[:, None].astype(np.float64) * width
    step = t / n

    def sawtooth_integral(x: np.ndarray) -> np.ndarray:
        """Integral over [0, x] of (t - step * round(t / step))^2, closed form per period."""
        u = x / step + 0.5
        m = np.floor(u)
        r = u - m - 0.5
        return step**3 * (m / 12 + (r**3 + 0.125) / 3) - step**3 / 24

    rounding = (sawtooth_integral(np.minimum(b, t)) - sawtooth_integral(np.minimum(a, t))) / width
    clipped = (np.maximum(b - t, 0) ** 3 - np.maximum(a - t, 0) ** 3) / (3 * width)
    return (hist[None, :] * (rounding + clipped)).sum(axis=1)


def _argmin_over_candidates(cands: np.ndarray, cost: Callable[[np.ndarray], np.ndarray]) -> int:
    """The candidate of least cost, coarse to fine: every `stride`-th candidate, then all candidates
    around the best of those (ties go to the first: deterministic). Costs are evaluated in blocks."""
    stride = max(1, len(cands) // _COARSE)
    coarse = cands[::stride]
    j = int(np.argmin(_costs(coarse, cost)))
    lo, hi = max(0, (j - 1) * stride), min(len(cands), (j + 1) * stride + 1)
    fine = cands[lo:hi]
    return int(fine[int(np.argmin(_costs(fine, cost)))])


def _costs(cands: np.ndarray, cost: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return np.concatenate([cost(cands[s:s + _CHUNK]) for s in range(0, len(cands), _CHUNK)])


RangeMethod = Callable[..., tuple[float, float]]
#: Range methods by name (see the module docstring); each takes a Histogram and keyword options.
RANGE_METHODS: dict[str, RangeMethod] = {
    "minmax": _minmax,
    "percentile": _percentile,
    "entropy": _entropy,
    "mse": _mse,
}


def compute_range(h: Histogram, method: str = "percentile", **options: Any) -> tuple[float, float]:
    """`[lo, hi]` to quantize a tensor over, by `method`; always contains 0 (zero must be exact)."""
    try:
        fn = RANGE_METHODS[method]
    except KeyError:
        raise ValueError(f"unknown calibration method {method!r}; choose one of: {', '.join(RANGE_METHODS)}") from None
    if h.exp is None:  # never saw a finite value
        return 0.0, 0.0
    lo, hi = fn(h, **options)
    return min(float(lo), 0.0), max(float(hi), 0.0)


# ---------------------------------------------------------------------------------------------
# Collection.


def collect_statistics(
    graph: Graph,
    batches: Iterable[Mapping[str, np.ndarray]],
    values: Collection[Value] | None = None,
    *,
    progress: bool = False,
    max_batch: int = 32,
) -> dict[str, Histogram]:
    """Histograms (by value name) of `values` (default: every float tensor) over calibration batches.

    Runs the reference interpreter on each batch; only the histograms are kept between batches.
    Batches of more than `max_batch` samples (axis 0) are split: the interpreter's working set stays
    small, and the histograms do not depend on how the data is split.
    """
    wanted = {id(v): v for v in (values if values is not None else _float_values(graph))}
    stats: dict[str, Histogram] = {v.name: Histogram() for v in wanted.values()}

    def observe(v: Value, arr: Any) -> None:
        if id(v) in wanted and isinstance(arr, np.ndarray) and arr.dtype.kind == "f":
            stats[v.name].update(arr)

    interp = Interpreter(observe=observe)
    it: Iterable[Mapping[str, np.ndarray]] = batches
    if progress:
        from tqdm import tqdm

        it = tqdm(batches, desc="calibrating", unit="batch")
    for batch in it:
        for feeds in _split(batch, max_batch):
            for v in graph.inputs:
                if id(v) in wanted and v.name in feeds:
                    stats[v.name].update(np.asarray(feeds[v.name]))
            interp.run(graph, feeds)
    return stats


def _split(feeds: Mapping[str, np.ndarray], size: int) -> Iterable[Mapping[str, np.ndarray]]:
    """`feeds` in chunks of at most `size` samples when every input has the same leading dim."""
    arrays = {k: np.asarray(v) for k, v in feeds.items()}
    lead = {a.shape[0] if a.ndim else None for a in arrays.values()}
    if len(lead) != 1 or None in lead or next(iter(lead)) <= size:
        return [feeds]
    n = int(next(iter(lead)))
    return [{k: a[s:s + size] for k, a in arrays.items()} for s in range(0, n, size)]


def _float_values(graph: Graph) -> list[Value]:
    out = [v for v in graph.inputs if v.const is None]
    out += [v for n in graph.nodes for v in n.outputs]
    return [v for v in out if isinstance(v.type, TensorType) and v.type.dtype in (DType.FLOAT, DType.FLOAT16)]
