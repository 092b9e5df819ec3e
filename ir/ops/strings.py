"""String ops: normalization, concatenation, splitting, regex matching (object arrays of str)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from ..types import DType, TensorType
from .core import Attr, Kind, broadcast_infer, defop, same_as_input


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _strings(a: np.ndarray) -> np.ndarray:
    return np.vectorize(_text, otypes=[object])(a) if a.size else a.astype(object)


@defop("StringNormalizer", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(1, 1), since_version=10,
       attrs={"case_change_action": "NONE", "is_case_sensitive": 0, "locale": "",
              "stopwords": Attr(None, type="strings")})
def string_normalizer(ctx, x, *, case_change_action, is_case_sensitive, locale, stopwords):
    """Drop stopwords, then change case; only [C] and [1, C] inputs, as the spec allows."""
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise ValueError(f"StringNormalizer takes a [C] or [1, C] tensor, got shape {list(x.shape)}")
    words = [_text(w) for w in x.reshape(-1)]
    stop = {_text(w) for w in stopwords or []}
    if is_case_sensitive:
        kept = [w for w in words if w not in stop]
    else:
        folded = {w.casefold() for w in stop}
        kept = [w for w in words if w.casefold() not in folded]
    change = {"LOWER": str.lower, "UPPER": str.upper, "NONE": lambda s: s}.get(case_change_action)
    if change is None:
        raise NotImplementedError(f"StringNormalizer: case_change_action {case_change_action!r} is not supported")
    out = np.array([change(w) for w in kept] or [""], dtype=object)
    return out.reshape((1, -1) if x.ndim == 2 else (-1,))


@defop("StringConcat", kind=Kind.BROADCAST, inputs=(2, 2), outputs=(1, 1), since_version=20,
       infer=broadcast_infer(DType.STRING))
def string_concat(ctx, a, b):
    return np.asarray(np.frompyfunc(lambda u, v: _text(u) + _text(v), 2, 1)(a, b), dtype=object)


@defop("RegexFullMatch", kind=Kind.ELEMWISE, inputs=(1, 1), outputs=(1, 1), since_version=20,
       attrs={"pattern": ""}, infer=same_as_input(dtype=DType.BOOL))
def regex_full_match(ctx, x, *, pattern):
    """RE2 syntax; Python's re agrees on the common subset used in practice."""
    rx = re.compile(pattern)
    return np.vectorize(lambda s: rx.fullmatch(_text(s)) is not None, otypes=[bool])(x).astype(bool).reshape(x.shape)


def _split_infer(ctx, x, **_: Any) -> list[Any]:
    if not isinstance(x, TensorType) or x.shape is None:
        return [None, None]
    return [TensorType(DType.STRING, x.shape + (None,)), TensorType(DType.INT64, x.shape)]


@defop("StringSplit", kind=Kind.OPAQUE, inputs=(1, 1), outputs=(2, 2), since_version=20,
       attrs={"delimiter": "", "maxsplit": None}, infer=_split_infer)
def string_split(ctx, x, *, delimiter, maxsplit):
    """Without a delimiter, runs of whitespace split and edges are trimmed (Python's str.split(None))."""
    limit = -1 if maxsplit is None else int(maxsplit)
    parts = [_text(s).split(delimiter or None, limit) for s in x.reshape(-1)]
    width = max((len(p) for p in parts), default=0)
    out = np.full((len(parts), width), "", dtype=object)
    for i, p in enumerate(parts):
        out[i, : len(p)] = p
    counts = np.array([len(p) for p in parts], np.int64).reshape(x.shape)
    return out.reshape(x.shape + (width,)), counts
