"""Calibration data: loading, validation against the model, and batching.

A calibration source is one of:

* a path to an `.npz` file holding one array per model input name, samples on axis 0;
* a path to a folder of such `.npz` files (read in name order, one at a time: memory-bounded);
* an iterable of feed dicts (input name -> array with a batch axis), as from Python.

Every problem (a missing input, a wrong rank, dtype or fixed dim, an empty source, a pickled file)
is a CalibrationError naming the file and the input, raised before any work is done on the model.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from ir import DType, Graph, TensorType

from .errors import MccError

CalibrationSource = Union[str, os.PathLike, Iterable[Mapping[str, np.ndarray]]]


class CalibrationError(MccError):
    """Calibration data that does not fit the model (or cannot be read)."""


@dataclass
class Calibration:
    """Validated calibration data: yields feed dicts of at most `batch_size` samples."""

    graph_inputs: dict[str, TensorType]
    source: CalibrationSource
    batch_size: int = 32
    limit: int | None = None  # at most this many samples in all

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        seen = 0
        for where, feeds in _chunks(self.source):
            feeds = _validate(feeds, self.graph_inputs, where)
            n = len(next(iter(feeds.values())))
            for start in range(0, n, self.batch_size):
                if self.limit is not None and seen >= self.limit:
                    return
                stop = min(n, start + self.batch_size)
                if self.limit is not None:
                    stop = min(stop, start + self.limit - seen)
                seen += stop - start
                yield {k: v[start:stop] for k, v in feeds.items()}

    @property
    def num_samples(self) -> int:
        """Samples in the source (reads only array headers for files)."""
        total = 0
        for _, feeds in _chunks(self.source, headers_only=True):
            total += len(next(iter(feeds.values())))
        return total if self.limit is None else min(total, self.limit)


def load_calibration(graph: Graph, source: CalibrationSource | Calibration, batch_size: int = 32,
                     limit: int | None = None) -> Calibration:
    """Check `source` against `graph`'s inputs now (one clear error), and return it ready to iterate."""
    if isinstance(source, Calibration):
        return source
    inputs = {v.name: v.type for v in graph.inputs if v.const is None and isinstance(v.type, TensorType)}
    if not isinstance(source, (str, os.PathLike, list, tuple)):
        source = list(source)  # a one-shot iterator from Python: it is in memory already
    first = next(iter(_chunks(source)), None)
    if first is None:
        raise CalibrationError(f"calibration data {_describe(source)} is empty")
    _validate(first[1], inputs, first[0])
    return Calibration(inputs, source, batch_size, limit)


def _describe(source: Any) -> str:
    return repr(str(source)) if isinstance(source, (str, os.PathLike)) else "given in Python"


def _chunks(source: CalibrationSource, headers_only: bool = False) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """(where, feeds) for each file of a path source, or each dict of an iterable source."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(path.glob("*.npz"))
            if not files:
                raise CalibrationError(f"calibration folder {str(path)!r} holds no .npz files")
        elif path.is_file():
            files = [path]
        else:
            raise CalibrationError(f"calibration data {str(path)!r}: no such file or folder")
        for f in files:
            yield str(f), _read_npz(f, headers_only)
        return
    for i, feeds in enumerate(source):
        if not isinstance(feeds, Mapping):
            raise CalibrationError(f"calibration batch {i} is a {type(feeds).__name__}, not a dict of input arrays")
        yield f"batch {i}", {k: np.asarray(v) for k, v in feeds.items()}


def _read_npz(path: Path, headers_only: bool) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            raise CalibrationError(f"calibration file {str(path)!r} is not an .npz file (a zip of .npy arrays, as "
                                   "numpy.savez writes)")
    try:
        with np.load(path, allow_pickle=False) as z:
            if headers_only:
                return {k: np.empty((z[k].shape[0],) if z[k].ndim else ()) for k in z.files}
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise CalibrationError(f"calibration file {str(path)!r} holds pickled objects; mcc reads plain arrays only") from None
        raise CalibrationError(f"calibration file {str(path)!r} is not a readable .npz ({e})") from None
    except (OSError, EOFError) as e:
        raise CalibrationError(f"calibration file {str(path)!r} is not a readable .npz ({e})") from None


def _validate(feeds: Mapping[str, np.ndarray], inputs: Mapping[str, TensorType], where: str) -> dict[str, np.ndarray]:
    missing = [n for n in inputs if n not in feeds]
    if missing:
        have = ", ".join(sorted(feeds)) or "nothing"
        raise CalibrationError(
            f"calibration data ({where}) has no array for model input(s) {', '.join(map(repr, missing))}; it holds: {have}"
        )
    out: dict[str, np.ndarray] = {}
    count = None
    for name, t in inputs.items():
        arr = np.asarray(feeds[name])
        if t.dtype not in (DType.UNDEFINED, DType.STRING) and arr.dtype != t.dtype.np:
            if arr.dtype.kind == t.dtype.np.kind == "f":
                arr = arr.astype(t.dtype.np)  # float64 samples for a float32 input: a lossless intent
            else:
                raise CalibrationError(f"calibration data ({where}) input {name!r} has dtype {arr.dtype}, "
                                       f"the model expects {t.dtype.np}")
        if t.shape is not None:
            if arr.ndim != len(t.shape):
                raise CalibrationError(
                    f"calibration data ({where}) input {name!r} has shape {list(arr.shape)}, the model expects rank "
                    f"{len(t.shape)} with samples on axis 0")
            for axis, (d, n) in enumerate(zip(t.shape, arr.shape)):
                if axis > 0 and isinstance(d, int) and d != n:
                    raise CalibrationError(f"calibration data ({where}) input {name!r} has shape {list(arr.shape)}, "
                                           f"the model expects dim {axis} = {d}")
        if arr.ndim == 0:
            raise CalibrationError(f"calibration data ({where}) input {name!r} is a scalar; samples go on axis 0")
        if count is not None and len(arr) != count:
            raise CalibrationError(f"calibration data ({where}) inputs hold different numbers of samples")
        count = len(arr)
        out[name] = arr
    if not count:
        raise CalibrationError(f"calibration data ({where}) holds no samples")
    return out
