"""Loading and running lowered programs: generated modules, the kernel cache, threads, fallbacks.

Generated sources are written under the cache folder (`MCC_CACHE_DIR`, default the user cache
folder) with content-addressed names and imported as ordinary modules, so Numba's own on-disk cache
(`cache=True`) keeps their machine code next to them: a second process, or a second model with
the same kernels, loads instead of compiling.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ir import Interpreter, Node, Value
from ir.interpreter import EvalContext
from ir.ops import lookup

from ..program import Call, Use

_lock = threading.Lock()


def cache_dir() -> Path:
    """Where generated sources and compiled kernels live (MCC_CACHE_DIR, else ~/.cache/mcc)."""
    raw = os.environ.get("MCC_CACHE_DIR")
    if raw:
        return Path(raw).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mcc"


def code_digest() -> str:
    """A digest of the codegen package's sources. Numba keys a cached function on its own file
    only, while generated kernels inline or link package kernels (`_maxpool_plane`, `vmath.exp`):
    compiled code lives under a folder named by this digest, so a changed (or upgraded) mcc never
    runs machine code built from its old kernels."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha1()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def numba_cache_dir() -> Path:
    """Where Numba caches compiled kernels: per version of the kernels' sources (`code_digest`)."""
    return cache_dir() / "numba" / code_digest()


def source_dir() -> Path:
    d = cache_dir() / "py"
    d.mkdir(parents=True, exist_ok=True)
    if str(d) not in sys.path:
        sys.path.append(str(d))
    return d


def write_source(module: str, source: str) -> Path:
    """Write a generated module once; an existing identical file keeps its timestamp (and cache)."""
    path = source_dir() / f"{module}.py"
    if path.exists() and path.read_text() == source:
        return path
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(source)
    os.replace(tmp, path)
    return path


def import_generated(module: str) -> ModuleType:
    source_dir()
    with _lock:
        if module in sys.modules:
            return sys.modules[module]
        importlib.invalidate_caches()
        return importlib.import_module(module)


# -- threads ----------------------------------------------------------------------------------

_threads_set: int | None = None


def default_threads() -> int:
    raw = os.environ.get("MCC_NUM_THREADS")
    if raw:
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"MCC_NUM_THREADS={raw!r} is not a number of threads") from None
        if n < 1:
            raise ValueError(f"MCC_NUM_THREADS={raw!r} must be at least 1")
        return n
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def use_threads(n: int) -> None:
    """Numba's parallel loops run on `n` threads; BLAS on one (kernels split products themselves)."""
    global _threads_set
    if _threads_set == n:
        return
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(1, user_api="blas")
    _threads_set = n


# -- fallbacks --------------------------------------------------------------------------------


def fallback_fn(node: Node, reads: Sequence[Value]) -> Callable[..., tuple[Any, ...]]:
    """A callable running `node` through its reference definition; arrays come back contiguous."""
    interp = Interpreter()
    op = lookup(node.op_type, node.domain, node.opset, node.name)
    n_in = len(node.inputs)
    present = [i for i, v in enumerate(node.inputs) if v is not None]
    outer = list(reads[len(present):])
    dtypes = [v.dtype.np if v.dtype is not None and v.dtype.name != "UNDEFINED" else None for v in node.outputs]

    def run(*args: Any) -> tuple[Any, ...]:
        full: list[Any] = [None] * n_in
        for i, a in zip(present, args):
            full[i] = a
        env = {id(v): a for v, a in zip(outer, args[len(present):])}
        ctx = EvalContext(node, node.opset, interp._subgraph_runner(env, None), interp.rng)
        outs = interp._call(op, ctx, node, full)
        return tuple(_own(o, dt) for o, dt in zip(outs, dtypes))

    return run


def _own(o: Any, dtype: Any) -> Any:
    """A fallback's result as an array of its own: reference ops may return their input or a view
    of it (Identity, Reshape), and inputs can live in the arena, which later kernels overwrite."""
    if not isinstance(o, np.ndarray):
        return o
    if o.base is not None or not o.flags.c_contiguous or (dtype is not None and o.dtype != dtype):
        return np.array(o, dtype=dtype, order="C", copy=True)
    return o


class Executable:
    """A loaded program: `executable(inputs)` runs the generated driver."""

    def __init__(self, driver: ModuleType, consts: np.ndarray, arena_bytes: int,
                 fallbacks: list[Callable[..., Any]], py_consts: list[np.ndarray], threads: int) -> None:
        self.driver = driver
        self.consts = consts
        self.arena = np.zeros(max(arena_bytes, 64), np.uint8)
        self.fallbacks = fallbacks
        self.py_consts = py_consts
        self.threads = threads
        self._run = driver.bind(consts, self.arena, fallbacks, py_consts)

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        use_threads(self.threads)
        return self._run(inputs)


def make_fallbacks(calls: list[Call]) -> list[Callable[..., Any]]:
    return [fallback_fn(c.node, [a.value for a in c.args if isinstance(a, Use)]) for c in calls]

