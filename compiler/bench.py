"""Benchmarks: mcc's latency, and its ratio to onnxruntime measured in the same process.

DESIGN.md fixes how speed is reported: as a ratio to onnxruntime in one process with the same thread
count, never as an absolute time. So both runtimes get the same model bytes, the same inputs and the
same threads; their runs are interleaved (one of each per iteration, alternating which goes first)
so that a slow phase of a shared machine hits both alike; medians are reported. Achieved GFLOP/s
(2 x MACs / median latency) are set against the machine's fp32 peak, which is measured here rather
than looked up, so the share means the same thing on any machine.

`bench_model` and `compare_variants` are what `mcc bench` and `benchmarks/bench_cpu.py` call;
`format_table` / `markdown_table` print their results.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
import math
import os
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import ir

from .api import TARGETS, CompiledModel, compile, load
from .errors import ArtifactError, InputError, MccError
from .facts import fmt_count, model_facts
from .onnx_import import convert_type, load_model

#: The target benchmarks use unless told otherwise: the native CPU target once it exists.
DEFAULT_TARGET = "cpu" if "cpu" in TARGETS else "reference"
#: Competitors `against` accepts.
AGAINST = ("onnxruntime",)
#: A relative error above this between mcc and onnxruntime is more than fp32 rounding: flagged in reports.
SUSPECT_ERR = 1e-3
#: metadata_props key prefix giving an integer input's valid inclusive range "lo,hi" (tests/models.py).
INPUT_RANGE_KEY = "mcc.input_range."

ModelSource = str | os.PathLike[str] | onnx.ModelProto


# -- threads ------------------------------------------------------------------------------------


def all_cores() -> int:
    """The cores this process may run on (its affinity mask, not the machine's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_threads(value: int | str | None = None) -> int:
    """The thread count to use: `value` (e.g. --threads), else MCC_NUM_THREADS, else every core.

    Raises MccError with one line for anything but a positive whole number, naming where it came from.
    """
    if value is not None:
        where, raw = "--threads", value
    elif os.environ.get("MCC_NUM_THREADS", "").strip():
        where, raw = "MCC_NUM_THREADS", os.environ["MCC_NUM_THREADS"]
    else:
        return all_cores()
    try:
        n = int(str(raw).strip())
    except ValueError:
        n = 0
    if n < 1:
        raise MccError(f"{where} {raw!r} is not a number of threads: give a whole number of at least 1")
    return n


def blas_limit(threads: int) -> Any:
    """A context that caps numpy's BLAS pool at `threads` (never raises it above the current size).

    The reference interpreter issues many small matmuls: more BLAS threads than asked for oversubscribe
    the cores, which on a busy machine makes it up to 100x slower. Never raising the pool keeps a
    user's OPENBLAS_NUM_THREADS (or the tests' 1) in force.
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    current = [p["num_threads"] for p in threadpool_info() if p.get("user_api") == "blas"]
    return threadpool_limits(limits=min([threads, *current]), user_api="blas")


# -- peak ---------------------------------------------------------------------------------------


_PEAKS: dict[int, float] = {}


def measure_peak_gflops(threads: int, *, remeasure: bool = False) -> float:
    """The machine's fp32 peak in GFLOP/s on `threads` threads, as measured: the better of two probes.

    1. A register-resident FMA loop: LLVM IR (through llvmlite, which Numba uses) with 12 independent
       accumulator chains of the widest float32 vector the host has (AVX-512: 16 lanes, AVX: 8,
       else 4), each step one fused multiply-add per chain. Twelve chains hide the FMA latency on two
       FMA ports and still fit in 16 vector registers, so nothing touches memory. It runs on `threads`
       Python threads (at most one per core); ctypes releases the GIL, so they run in parallel. Each
       thread's rate is taken over its own CPU time, so other load on the machine does not lower it.
       This is the arithmetic peak.
    2. The best of a few 2048x2048 float32 matmuls through numpy's BLAS (capped at `threads`): a
       sanity floor that a broken probe 1 (e.g. an unexpected CPU) cannot fall under.

    The max of the two is returned and kept per thread count; `remeasure` measures again and keeps
    the higher figure (other load on the machine only ever lowers a measurement). A model's achieved
    GFLOP/s divided by this says how much of the machine a runtime uses, independent of the machine.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if threads in _PEAKS and not remeasure:
        return _PEAKS[threads]
    probes = [_sgemm_gflops(threads)]
    try:
        probes.append(_fma_gflops(threads))
    except Exception:  # noqa: BLE001, S110 - the JIT probe is best effort; sgemm still gives a peak
        pass
    _PEAKS[threads] = max(probes + [_PEAKS.get(threads, 0.0)])
    return _PEAKS[threads]


def _sgemm_gflops(threads: int, n: int = 2048, trials: int = 3) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    best = math.inf
    with blas_limit(threads):
        np.matmul(a, b, out=c)  # warm-up: thread pool start, page faults
        for _ in range(trials):
            t = time.perf_counter()
            np.matmul(a, b, out=c)
            best = min(best, time.perf_counter() - t)
    return 2.0 * n**3 / best / 1e9


_CHAINS = 12  # independent accumulators: latency (4-5 cycles) x FMA ports (2), within 16 registers
_ROUNDS = 2   # FMA rounds per loop trip, to keep loop overhead off the FMA ports


@functools.lru_cache(maxsize=1)
def _fma_kernel() -> tuple[Callable[[int, float, float], float], int, Any]:
    """JIT the FMA loop for the host; returns (function, flops per trip, engine to keep alive)."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    features = llvm.get_host_cpu_features()
    width = 16 if features.get("avx512f") else 8 if features.get("avx") else 4
    fma = bool(features.get("fma") or features.get("avx512f"))
    vt = f"<{width} x float>"

    def splat(name: str, arg: str) -> list[str]:
        return [f"  %{name}.0 = insertelement {vt} zeroinitializer, float %{arg}, i32 0",
                f"  %{name} = shufflevector {vt} %{name}.0, {vt} zeroinitializer, <{width} x i32> zeroinitializer"]

    lines = [f"declare {vt} @llvm.fma.v{width}f32({vt}, {vt}, {vt})", "",
             "define float @mcc_peak(i64 %n, float %a, float %b) {", "entry:", *splat("va", "a"), *splat("vb", "b"),
             "  br label %loop", "loop:", "  %i = phi i64 [0, %entry], [%i.next, %loop]"]
    for k in range(_CHAINS):
        init = "<" + ", ".join([f"float {k + 1}.0"] * width) + ">"  # distinct, so chains cannot merge
        lines.append(f"  %acc{k}.r0 = phi {vt} [{init}, %entry], [%acc{k}.r{_ROUNDS}, %loop]")
    for r in range(_ROUNDS):
        for k in range(_CHAINS):
            src, dst = f"%acc{k}.r{r}", f"%acc{k}.r{r + 1}"
            if fma:
                lines.append(f"  {dst} = call {vt} @llvm.fma.v{width}f32({vt} {src}, {vt} %va, {vt} %vb)")
            else:
                lines += [f"  {dst}.m = fmul {vt} {src}, %va", f"  {dst} = fadd {vt} {dst}.m, %vb"]
    lines += ["  %i.next = add i64 %i, 1", "  %done = icmp sge i64 %i.next, %n",
              "  br i1 %done, label %exit, label %loop", "exit:"]
    total = f"%acc0.r{_ROUNDS}"
    for k in range(1, _CHAINS):
        lines.append(f"  %sum{k} = fadd {vt} {total}, %acc{k}.r{_ROUNDS}")
        total = f"%sum{k}"
    lines += [f"  %res = extractelement {vt} {total}, i32 0", "  ret float %res", "}"]

    module = llvm.parse_assembly("\n".join(lines))
    module.verify()
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(cpu=llvm.get_host_cpu_name(), features=features.flatten(), opt=3)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    fn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64, ctypes.c_float, ctypes.c_float)(
        engine.get_function_address("mcc_peak"))
    return fn, 2 * width * _CHAINS * _ROUNDS, engine


def _fma_gflops(threads: int, seconds: float = 0.25, trials: int = 3) -> float:
    """Sum over min(threads, cores) threads of each one's flops per second of its own CPU time.

    CPU time rather than wall time: a thread that another process preempts is not charged for the
    wait, so the figure stays the machine's peak on a busy machine (threads past the cores would
    only time-slice, so they are not started).
    """
    fn, flops_per_trip, _ = _fma_kernel()
    a, b = 0.999999, 1e-6  # acc -> b / (1 - a): stays finite and normal however long it runs
    t = time.thread_time()
    fn(200_000, a, b)
    trips = max(10_000, int(200_000 * seconds / max(time.thread_time() - t, 1e-6)))
    n = min(threads, all_cores())
    best = 0.0
    for _ in range(trials):
        barrier = threading.Barrier(n)
        rates: list[float] = []

        def work(barrier: threading.Barrier = barrier, rates: list[float] = rates) -> None:
            barrier.wait()
            t0 = time.thread_time()
            fn(trips, a, b)
            rates.append(flops_per_trip * trips / max(time.thread_time() - t0, 1e-9))

        workers = [threading.Thread(target=work) for _ in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, sum(rates))
    return best / 1e9


# -- inputs -------------------------------------------------------------------------------------


def parse_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Parse --shape NAME=DIMS items: DIMS is `1x3x224x224` for an input, or one size for a symbolic dim."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, dims = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            sizes = tuple(int(d) for d in dims.lower().split("x"))
            if any(d < 1 for d in sizes):
                raise ValueError
        except ValueError:
            raise MccError(f"--shape {item!r}: expected NAME=DIMS, e.g. image=1x3x224x224 or batch=1") from None
        out[name] = sizes
    return out


def resolve_input_shapes(inputs: Sequence[ir.Value], shapes: Mapping[str, Sequence[int]] | None = None,
                         ) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the model's inputs.

    `shapes` maps an input name to its full shape, or a symbolic dim name to one size; every other
    symbolic or unknown dim is 1 (batch 1 is the latency case).
    """
    shapes = dict(shapes or {})
    names = {v.name for v in inputs}
    symbols = {d for v in inputs if v.shape is not None for d in v.shape if isinstance(d, str)}
    unknown = sorted(set(shapes) - names - symbols)
    if unknown:
        raise InputError(f"--shape {unknown[0]!r}: the model has no input or symbolic dim of that name "
                         f"(inputs: {', '.join(sorted(names))}; symbolic dims: {', '.join(sorted(symbols)) or 'none'})")
    out: dict[str, tuple[int, ...]] = {}
    for v in inputs:
        if v.name in shapes:
            full = tuple(int(d) for d in shapes[v.name])
            if v.shape is not None and (len(full) != len(v.shape) or any(
                    isinstance(d, int) and d != n for d, n in zip(v.shape, full))):
                want = "[" + ", ".join("?" if d is None else str(d) for d in v.shape) + "]"
                raise InputError(f"input {v.name!r} given shape {list(full)}, the model expects {want}")
            out[v.name] = full
            continue
        if v.shape is None:
            raise InputError(f"input {v.name!r} has unknown rank; give its shape with --shape {v.name}=DIMS")
        dims = []
        for d in v.shape:
            if isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str) and d in shapes:
                if len(shapes[d]) != 1:
                    raise InputError(f"--shape {d}: a symbolic dim takes one size, e.g. {d}=1")
                dims.append(int(shapes[d][0]))
            else:
                dims.append(1)
        out[v.name] = tuple(dims)
    return out


def random_feeds(inputs: Sequence[ir.Value], shapes: Mapping[str, tuple[int, ...]], seed: int = 0,
                 ranges: Mapping[str, tuple[int, int]] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs: floats standard normal, bools fair, ints in `ranges` (inclusive) or 1."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for v in inputs:
        if v.dtype is None or v.dtype in (ir.DType.UNDEFINED, ir.DType.STRING):
            raise InputError(f"input {v.name!r} has type {v.type}; bench can only make numeric inputs")
        dtype, shape = np.dtype(v.dtype.np), shapes[v.name]
        if np.issubdtype(dtype, np.floating) or dtype.kind == "V":  # ml_dtypes floats (bfloat16, ...) too
            feeds[v.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[v.name] = rng.random(shape) < 0.5
        else:
            lo, hi = (ranges or {}).get(v.name, (1, 1))
            feeds[v.name] = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    return feeds


def specialize(proto: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """A copy of `proto` whose graph inputs have the concrete `shapes`.

    Both runtimes get this same model: each may then specialize to the shapes it will run, as a
    deployed model with fixed input sizes allows, and MACs are counted at those sizes.
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for vi in out.graph.input:
        if vi.name in shapes and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for n in shapes[vi.name]:
                shape.dim.add().dim_value = int(n)
    return out


def graph_macs(graph: ir.Graph, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """The graph's MACs with its inputs at `shapes` (compiler.facts counts symbolic dims as 1)."""
    g = graph.copy()
    for v in g.inputs:
        if v.name in shapes and isinstance(v.type, ir.TensorType):
            v.type = ir.TensorType(v.type.dtype, tuple(shapes[v.name]))
    ir.infer_shapes(g)
    return int(model_facts(g)["macs"])


# -- measuring ----------------------------------------------------------------------------------


def interleaved_times(runners: Mapping[str, Callable[[], Any]], *, warmup: int, repeat: int,
                      progress: bool = False) -> dict[str, list[float]]:
    """Seconds per run of each runner: `warmup` untimed rounds, then `repeat` timed rounds.

    Each round runs every runner once, rotating which goes first, so drifts of a shared machine
    (frequency, other load, caches) fall on all of them alike. The garbage collector is off while
    timing so that a collection does not land on one runner's run.
    """
    names = list(runners)
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds: Any = range(warmup + repeat)
    if progress:
        from tqdm import tqdm

        rounds = tqdm(rounds, desc="bench", unit="round", leave=False)
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in rounds:
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                t = time.perf_counter()
                runners[name]()
                dt = time.perf_counter() - t
                if i >= warmup:
                    times[name].append(dt)
            gc.collect() if enabled and i % 16 == 15 else None
    finally:
        if enabled:
            gc.enable()
    return times


@dataclasses.dataclass
class BenchResult:
    """One model's benchmark. Times are medians in milliseconds; ratio = ours_ms / ort_ms (< 1: mcc faster)."""

    model: str
    target: str
    threads: int
    shapes: dict[str, list[int]]
    macs: int
    compile_s: float
    warmup: int
    repeat: int
    ours_ms: float
    ours_p10_ms: float
    ours_p90_ms: float
    gflops: float
    against: str | None = None
    ort_ms: float | None = None
    ort_p10_ms: float | None = None
    ort_p90_ms: float | None = None
    ratio: float | None = None
    ort_gflops: float | None = None
    peak_gflops: float | None = None
    peak_share: float | None = None
    ort_peak_share: float | None = None
    max_rel_err: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _stats(seconds: Sequence[float]) -> tuple[float, float, float]:
    """(median, p10, p90) in milliseconds."""
    p10, p50, p90 = np.percentile(np.asarray(seconds) * 1e3, [10, 50, 90])
    return float(p50), float(p10), float(p90)


def _gflops(macs: int, ms: float) -> float:
    return 2.0 * macs / (ms * 1e-3) / 1e9 if ms > 0 else 0.0


#: Whether onnxruntime's idle worker threads may spin (its default). Off for interleaved runs: a
#: spinning pool keeps a core busy while the other runtime's turn has started, and mcc's (TBB) pool
#: sleeps when idle, so leaving it on measures onnxruntime's spinning more than mcc. MCC_BENCH_ORT_SPIN=1
#: restores onnxruntime's default.
ORT_SPIN = os.environ.get("MCC_BENCH_ORT_SPIN", "0") == "1"


def _ort_session(model_bytes: bytes, threads: int, name: str) -> Any:
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    if not ORT_SPIN:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # errors only: no warnings about unused initializers between our lines
    try:
        return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MccError(f"onnxruntime cannot load {name}: {first}") from None


def require_onnxruntime() -> Any:
    """The onnxruntime module, or one clear error: it is a benchmark/test dependency, not a runtime one."""
    try:
        import onnxruntime
    except ImportError:
        raise MccError("--against onnxruntime needs onnxruntime, which is not installed: "
                       "pip install 'mcc[test]' (or pip install onnxruntime)") from None
    return onnxruntime


def _artifact_onnx(path: Path) -> bytes:
    """The ONNX graph an artifact stores (what onnxruntime runs when benching an artifact)."""
    try:
        with zipfile.ZipFile(path) as z:
            if "graph.onnx" not in z.namelist():
                raise ArtifactError(f"{path}: the artifact stores no graph.onnx, so onnxruntime has nothing to run; "
                                    "bench the original ONNX model instead")
            return z.read("graph.onnx")
    except zipfile.BadZipFile:
        raise ArtifactError(f"{path}: not an mcc artifact (corrupt, truncated, or another kind of file)") from None


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return math.inf
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-30)


def _input_ranges(proto: onnx.ModelProto | None) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for p in proto.metadata_props if proto is not None else ():
        if p.key.startswith(INPUT_RANGE_KEY):
            try:
                lo, hi = (int(x) for x in p.value.split(","))
            except ValueError:
                continue
            out[p.key[len(INPUT_RANGE_KEY):]] = (lo, hi)
    return out


@dataclasses.dataclass
class Prepared:
    """A model ready to time: ours compiled, the ONNX bytes onnxruntime gets, inputs, MACs."""

    name: str
    compiled: CompiledModel
    onnx_bytes: bytes | None
    feeds: dict[str, np.ndarray]
    shapes: dict[str, tuple[int, ...]]
    macs: int
    compile_s: float


def prepare(model: ModelSource, *, threads: int, target: str = DEFAULT_TARGET,
            shapes: Mapping[str, Sequence[int]] | None = None, feeds: Mapping[str, np.ndarray] | None = None,
            name: str | None = None, need_onnx: bool = True, seed: int = 0, **compile_options: Any) -> Prepared:
    """Load or compile `model` (ONNX path or proto, or an .mcc artifact) and make its inputs.

    ONNX input: the graph inputs are fixed to the shapes benchmarked (see `specialize`) and both
    runtimes get that model. Artifact input: mcc runs the artifact, onnxruntime its stored graph.onnx.
    `feeds`, when given, fix the shapes; otherwise inputs are random (see `resolve_input_shapes`).
    """
    is_artifact = not isinstance(model, onnx.ModelProto) and Path(model).suffix == ".mcc"
    label = name or (Path(model).name if not isinstance(model, onnx.ModelProto) else model.graph.name or "model")
    given = {k: np.asarray(v).shape for k, v in (feeds or {}).items()}
    if is_artifact:
        if compile_options:
            raise MccError(f"{model}: an artifact is already compiled; compression options apply to ONNX models")
        t = time.perf_counter()
        m = load(model)
        compile_s = time.perf_counter() - t
        shapes_ = resolve_input_shapes(m.inputs, {**(shapes or {}), **given})
        onnx_bytes = _artifact_onnx(Path(model)) if need_onnx else None
        ranges: dict[str, tuple[int, int]] = {}
    else:
        proto, _ = load_model(model)
        consts = {t.name for t in proto.graph.initializer}
        declared = [ir.Value(vi.name, convert_type(vi.type)) for vi in proto.graph.input if vi.name not in consts]
        shapes_ = resolve_input_shapes(declared, {**(shapes or {}), **given})
        fixed = specialize(proto, shapes_)
        onnx_bytes = fixed.SerializeToString()
        t = time.perf_counter()
        m = compile(fixed, target=target, threads=threads, **compile_options)
        compile_s = time.perf_counter() - t
        ranges = _input_ranges(proto)
    made = random_feeds(m.inputs, shapes_, seed=seed, ranges=ranges) if feeds is None else {}
    all_feeds = {**made, **{k: np.asarray(v) for k, v in (feeds or {}).items()}}
    return Prepared(label, m, onnx_bytes, all_feeds, shapes_, graph_macs(m.graph, shapes_), compile_s)


def bench_model(model: ModelSource, *, threads: int | None = None, against: str | None = "onnxruntime",
                target: str = DEFAULT_TARGET, warmup: int = 3, repeat: int = 20,
                feeds: Mapping[str, np.ndarray] | None = None, shapes: Mapping[str, Sequence[int]] | None = None,
                name: str | None = None, peak_gflops: float | None = None, measure_peak: bool = True,
                progress: bool = False, **compile_options: Any) -> BenchResult:
    """Benchmark one model: mcc's median latency and, `against` onnxruntime, its median in the same process.

    `threads` (default: MCC_NUM_THREADS, else every core) goes to both runtimes: mcc's compile, onnxruntime's
    intra-op pool (inter-op 1, ORT_ENABLE_ALL, CPUExecutionProvider), and numpy's BLAS cap. After `warmup`
    rounds, `repeat` rounds each run both once (interleaved). `shapes` maps input names to shapes or
    symbolic dims to sizes (others default to 1); `feeds` gives the inputs instead of random ones.
    `compile_options` (quantize, sparsity, calibration, ...) go to compiler.compile; onnxruntime runs the
    model as given. The peak (see measure_peak_gflops) is measured once per thread count unless
    `peak_gflops` is given or `measure_peak` is False.
    """
    threads = resolve_threads(threads)
    if warmup < 0 or repeat < 1:
        raise MccError(f"need warmup >= 0 and repeat >= 1 (got warmup {warmup}, repeat {repeat})")
    if against is not None:
        if against not in AGAINST:
            raise MccError(f"cannot bench against {against!r}; choose one of: {', '.join(AGAINST)}")
        require_onnxruntime()  # fail before a long compile
    with blas_limit(threads):
        p = prepare(model, threads=threads, target=target, shapes=shapes, feeds=feeds, name=name,
                    need_onnx=against is not None, **compile_options)
        feeds_ = p.feeds
        runners: dict[str, Callable[[], Any]] = {"ours": lambda: p.compiled.run(feeds_)}
        err = None
        if against is not None:
            assert p.onnx_bytes is not None
            sess = _ort_session(p.onnx_bytes, threads, p.name)
            ort_names = [i.name for i in sess.get_inputs()]
            missing = [n for n in ort_names if n not in feeds_]
            if missing:
                raise InputError(f"onnxruntime wants input(s) {', '.join(map(repr, missing))} that mcc's model lacks")
            ort_feeds = {n: feeds_[n] for n in ort_names}
            runners["ort"] = lambda: sess.run(None, ort_feeds)
            ours, theirs = p.compiled.run(feeds_), sess.run(None, ort_feeds)
            err = max((_rel_err(a, b) for a, b in zip(ours.values(), theirs)), default=0.0)
        times = interleaved_times(runners, warmup=warmup, repeat=repeat, progress=progress)
    ours_ms, ours_p10, ours_p90 = _stats(times["ours"])
    r = BenchResult(model=p.name, target=p.compiled.target, threads=threads,
                    shapes={k: list(v) for k, v in p.shapes.items()}, macs=p.macs, compile_s=p.compile_s,
                    warmup=warmup, repeat=repeat, ours_ms=ours_ms, ours_p10_ms=ours_p10, ours_p90_ms=ours_p90,
                    gflops=_gflops(p.macs, ours_ms), against=against, max_rel_err=err)
    if against is not None:
        r.ort_ms, r.ort_p10_ms, r.ort_p90_ms = _stats(times["ort"])
        r.ratio = r.ours_ms / r.ort_ms
        r.ort_gflops = _gflops(p.macs, r.ort_ms)
    if peak_gflops is None and measure_peak:
        peak_gflops = measure_peak_gflops(threads)
    if peak_gflops:
        r.peak_gflops = peak_gflops
        r.peak_share = r.gflops / peak_gflops
        r.ort_peak_share = None if r.ort_gflops is None else r.ort_gflops / peak_gflops
    return r


@dataclasses.dataclass
class VariantResult:
    """One compiled variant of a model, timed against the others: ratio = ms / the first variant's ms."""

    variant: str
    options: dict[str, Any]
    ms: float
    p10_ms: float
    p90_ms: float
    ratio: float
    macs: int
    compile_s: float


def compare_variants(model: ModelSource, variants: Mapping[str, Mapping[str, Any]], *, threads: int | None = None,
                     target: str = DEFAULT_TARGET, warmup: int = 3, repeat: int = 20,
                     shapes: Mapping[str, Sequence[int]] | None = None, progress: bool = False,
                     ) -> list[VariantResult]:
    """mcc against mcc: compile `model` once per variant (name -> compile options), time them interleaved.

    The first variant is the baseline of the ratios (e.g. the plain fp32 compile).
    """
    threads = resolve_threads(threads)
    with blas_limit(threads):
        prepared = {k: prepare(model, threads=threads, target=target, shapes=shapes, need_onnx=False, **opts)
                    for k, opts in variants.items()}
        feeds = next(iter(prepared.values())).feeds
        times = interleaved_times({k: (lambda p=p: p.compiled.run(feeds)) for k, p in prepared.items()},
                                  warmup=warmup, repeat=repeat, progress=progress)
    base = _stats(times[next(iter(variants))])[0]
    out = []
    for k, p in prepared.items():
        ms, p10, p90 = _stats(times[k])
        opts = {o: (Path(v).name if isinstance(v, (str, os.PathLike)) and Path(v).is_file() else v)
                for o, v in variants[k].items()}  # a calibration file by its name: tables stay narrow
        out.append(VariantResult(k, opts, ms, p10, p90, ms / base, p.macs, p.compile_s))
    return out


# -- tables -------------------------------------------------------------------------------------


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers right-aligned, columns padded so it reads as plain text too."""
    cells = [[str(c) for c in headers]] + [["–" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) and len(cells) > 1 for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _is_number(s: str) -> bool:
    try:
        float(s.rstrip("%x").replace(",", ""))
        return True
    except ValueError:
        return s == "–"


def _shape_text(shapes: Mapping[str, Sequence[int]]) -> str:
    return ", ".join("x".join(map(str, s)) for s in shapes.values())


def format_table(results: Sequence[BenchResult]) -> str:
    """The benchmark table of `mcc bench` and benchmarks/bench_cpu.py (markdown)."""
    headers = ["model", "input", "MACs", "mcc ms", "onnxruntime ms", "mcc/ORT", "mcc GFLOP/s", "mcc % peak",
               "ORT % peak", "compile s", "rel err"]
    rows = []
    for r in results:
        rows.append([r.model, _shape_text(r.shapes), fmt_count(r.macs), f"{r.ours_ms:.3f}",
                     None if r.ort_ms is None else f"{r.ort_ms:.3f}",
                     None if r.ratio is None else f"{r.ratio:.2f}", f"{r.gflops:.1f}",
                     None if r.peak_share is None else f"{r.peak_share:.1%}",
                     None if r.ort_peak_share is None else f"{r.ort_peak_share:.1%}", f"{r.compile_s:.1f}",
                     None if r.max_rel_err is None else f"{r.max_rel_err:.0e}"])
    return markdown_table(headers, rows)


def format_variants(results: Sequence[VariantResult]) -> str:
    """The mcc-against-mcc table (e.g. int8 and sparse against fp32 dense)."""
    base = results[0].variant if results else ""
    rows = [[r.variant, ", ".join(f"{k}={v}" for k, v in r.options.items()) or "–", f"{r.ms:.3f}",
             f"{r.p10_ms:.3f}–{r.p90_ms:.3f}", f"{r.ratio:.2f}", f"{r.compile_s:.1f}"] for r in results]
    return markdown_table(["variant", "options", "mcc ms", "p10–p90 ms", f"vs {base}", "compile s"], rows)


def describe(r: BenchResult) -> str:
    """The plain-text report `mcc bench` prints for one model."""
    plural = "s" if r.threads != 1 else ""
    shapes = ", ".join(f"{k}: {_shape_text({k: v})}" for k, v in r.shapes.items())
    ours = (f"{r.ours_ms:.3f} ms median (p10 {r.ours_p10_ms:.3f}, p90 {r.ours_p90_ms:.3f}; "
            f"{r.repeat} runs after {r.warmup} warm-up)  {r.gflops:.2f} GFLOP/s")
    lines = [f"model        {r.model}", f"inputs       {shapes}", f"target       {r.target}, {r.threads} thread{plural}",
             f"compile      {r.compile_s:.2f} s", f"MACs         {fmt_count(r.macs)}", f"mcc          {ours}"]
    if r.ort_ms is not None:
        theirs = (f"{r.ort_ms:.3f} ms median (p10 {r.ort_p10_ms:.3f}, p90 {r.ort_p90_ms:.3f}; "
                  f"interleaved, ORT_ENABLE_ALL)  {r.ort_gflops:.2f} GFLOP/s")
        err = f"{r.max_rel_err:.2e} (mcc against onnxruntime)"
        if r.max_rel_err is not None and r.max_rel_err > SUSPECT_ERR:
            err += f"  <- above {SUSPECT_ERR:g}: more than fp32 rounding; check the compiled model (or the compression)"
        lines += [f"onnxruntime  {theirs}", f"ratio        {r.ratio:.3f} (mcc / onnxruntime; below 1: mcc is faster)",
                  f"max rel err  {err}"]
    if r.peak_gflops:
        share = f"mcc {r.peak_share:.1%}" + ("" if r.ort_peak_share is None else f", onnxruntime {r.ort_peak_share:.1%}")
        lines.append(f"peak         {r.peak_gflops:.1f} GFLOP/s fp32 measured on {r.threads} thread{plural}: {share}")
    return "\n".join(lines)
