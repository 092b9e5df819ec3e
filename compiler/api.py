"""The Python front door: compress(), compile(), CompiledModel, load()."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

import ir
import passes
from ir import DType, Graph, TensorType

from .calibration import Calibration, CalibrationSource, load_calibration
from .errors import ArtifactError, InputError, MccError, ModelLoadError
from .facts import fmt_count, model_facts
from .files import write_atomic
from .onnx_export import export_onnx
from .onnx_import import import_onnx
from .report import write_report

TARGETS = ("cpu", "cuda", "reference")
#: --quantize words -> passes.quantize modes.
QUANTIZE_MODES = {"int8": "int8", "dynamic": "int8-dynamic", "fp16": "fp16"}
ARTIFACT_FORMAT = 2


def _as_graph(model: str | os.PathLike[str] | onnx.ModelProto | Graph) -> Graph:
    return model if isinstance(model, Graph) else import_onnx(model)


def compress(
    model: str | os.PathLike[str] | onnx.ModelProto | Graph,
    pipeline: str = "default",
    *,
    channel_prune: float | None = None,
    sparsity: float | None = None,
    sparsity_pattern: str = "unstructured",
    quantize: str | None = None,
    calibration: CalibrationSource | None = None,
    calibration_method: str | None = None,
    max_error: float | None = None,
    exclude: Sequence[str] = (),
    report: str | os.PathLike[str] | None = None,
    prune_options: dict[str, Any] | None = None,
    progress: bool = False,
    verify: bool = False,
    dump_ir_after: set[str] | None = None,
    timings: dict[str, float] | None = None,
) -> Graph:
    """Optimize and compress a model; returns the new graph (the input is not changed).

    The pipeline (default: fold constants, canonicalize exporter patterns, fold BatchNormalization,
    merge duplicates, fuse) runs last. Compression runs after the `cleanup` steps and before
    BatchNormalization folding: `channel_prune` removes that fraction of the model's MACs by removing
    whole channels; `sparsity` zeroes that fraction of Conv/Gemm/MatMul weights in `sparsity_pattern`
    (unstructured, 2:4 or 4x1). With `calibration` (see compiler.calibration) both recover accuracy
    without training. `quantize` is "int8" (static QDQ; needs `calibration`, ranges by
    `calibration_method`: minmax, percentile, entropy or mse), "dynamic" or "fp16"; it runs after
    BatchNormalization folding. int8 biases are corrected for the mean error quantization adds; with
    `max_error` (relative L2 error of the outputs on the calibration data) the least robust layers
    fall back to fp32 until it holds. `exclude` names nodes to leave alone; `report` writes FILE.md or FILE.html.
    `verify` checks the IR after every pass; `dump_ir_after` prints it; `timings` gets seconds per pass.
    """
    g = _as_graph(model)
    g = g.copy() if isinstance(model, Graph) else g
    run = dict(verify_each=verify, dump_ir_after=dump_ir_after, timings=timings)
    _check_fraction("channel_prune", channel_prune)
    _check_fraction("sparsity", sparsity)
    if report is not None and Path(report).suffix not in (".md", ".html"):
        raise MccError(f"report {str(report)!r} should end in .md or .html")
    if quantize is not None and quantize not in QUANTIZE_MODES:
        raise MccError(f"unknown quantization {quantize!r}; choose one of: {', '.join(QUANTIZE_MODES)}")
    if quantize == "int8" and calibration is None:
        raise MccError("--quantize int8 needs --calibration: static activation ranges come from sample inputs")
    layers: list[dict[str, Any]] = []
    before = model_facts(g)
    cal = load_calibration(g, calibration) if calibration is not None else None  # a mismatch fails early
    if channel_prune or sparsity or quantize:
        passes.run(g, "cleanup", **run)
        if channel_prune:
            from passes.channel_prune import ChannelPruneConfig, channel_prune as prune

            config = ChannelPruneConfig(ratio=channel_prune, exclude=tuple(exclude), **(prune_options or {}))
            layers += _rows(prune(g, config, calibration=cal, progress=progress))
        passes.run(g, "optimize", **run)  # fold BatchNormalization: sparsify the weights that ship
        if sparsity:
            from passes.sparsity import SparsityConfig, sparsify

            # One threshold across layers spends the zeros where they cost least; N:M is per group anyway.
            scope = "layer" if ":" in sparsity_pattern else "global"
            sconfig = SparsityConfig(sparsity=sparsity, pattern=sparsity_pattern, scope=scope, exclude=tuple(exclude),
                                     reconstruct=cal is not None)
            layers += _rows(sparsify(g, sconfig, calibration=cal, progress=progress))
        if quantize:
            layers += _quantize(g, quantize, cal, calibration_method, max_error, tuple(exclude), progress,
                                sensitivity=report is not None)
    g = passes.run(g, pipeline, **run)
    if report is not None:
        after = model_facts(g)
        summary = {"MACs": f"{fmt_count(before['macs'])} -> {fmt_count(after['macs'])} "
                           f"({1 - after['macs'] / max(before['macs'], 1):.1%} fewer)",
                   "parameters": f"{fmt_count(before['params'])} -> {fmt_count(after['params'])}",
                   "nonzero weights": f"{fmt_count(_nonzeros(g))} of {fmt_count(after['params'])}"}
        write_report(report, "mcc compression report", summary, layers)
    return g


def _quantize(g: Graph, mode: str, cal: Any, method: str | None, max_error: float | None,
              exclude: tuple[str, ...], progress: bool, sensitivity: bool) -> list[dict[str, Any]]:
    """Quantize `g` in place; for int8 also correct biases and (for reports) measure each layer's SQNR."""
    from passes.quantize import quantize as quantize_graph

    if mode != "int8":
        return _rows(quantize_graph(g, QUANTIZE_MODES[mode], exclude=exclude, progress=progress))
    from passes import quant_accuracy as qa

    options: dict[str, Any] = {"method": method} if method else {}
    fp32 = g.copy()
    if max_error is not None:
        result = qa.quantize_with_budget(g, cal, max_error, exclude=exclude, **options)
    else:
        result = quantize_graph(g, "int8", calibration=cal, exclude=exclude, progress=progress, **options)
    qa.bias_correction(fp32, g, cal)
    rows = _rows(result)
    if sensitivity:  # a diagnostic for the report: 32 samples rank the layers well enough
        sample = Calibration(cal.graph_inputs, cal.source, cal.batch_size, limit=32)
        sqnr = qa.layer_sensitivity(fp32, sample, layers=[r["layer"] for r in rows], **options)
        for r in rows:
            r["sqnr_db"] = sqnr.get(r["layer"])
    return rows


def _rows(records: Any) -> list[dict[str, Any]]:
    """Per-layer records of the compression steps as report rows (keyed by `layer`)."""
    rows = []
    for r in records:
        row = dataclasses.asdict(r)
        row.setdefault("layer", row.pop("name", ""))
        rows.append(row)
    return rows


def _check_fraction(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value < 1.0:
        raise MccError(f"{name} must be a fraction in [0, 1), got {value}")


def _nonzeros(g: Graph) -> int:
    return sum(int(np.count_nonzero(v.const.array)) for v in g.initializers.values()
               if v.const is not None and v.const.array.dtype != object)


def compile(  # noqa: A001 - the public name DESIGN.md fixes
    model: str | os.PathLike[str] | onnx.ModelProto | Graph,
    target: str = "cpu",
    pipeline: str = "default",
    *,
    threads: int | None = None,
    **pass_options: Any,
) -> CompiledModel:
    """Optimize and lower a model for `target`; returns a runnable CompiledModel.

    `threads` caps the threads kernels use (default: MCC_NUM_THREADS, else every core).
    `pass_options` (verify, dump_ir_after, timings and the compression options) are those of `compress`.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
    g = compress(model, pipeline, **pass_options)
    m = CompiledModel(g, target, threads=threads)
    m.warm()
    return m


class CompiledModel:
    """A model ready to run: `run(feeds)` returns a dict of outputs in graph order."""

    def __init__(self, graph: Graph, target: str = "cpu", threads: int | None = None) -> None:
        self.graph = graph
        self.target = target
        self._interp = ir.Interpreter()
        self.inputs = [v for v in graph.inputs if v.const is None]
        self.outputs = list(graph.outputs)
        self.native: Any = None
        if target == "cpu":
            from codegen.cpu import CpuModel

            self.native = CpuModel(graph, threads=threads)
        elif target == "cuda":
            try:
                from codegen.cuda import CudaModel, CudaUnavailable
            except ImportError as e:
                raise MccError(f"the cuda target needs numba-cuda ({e}): pip install 'mcc[cuda]'") from None
            try:
                self.native = CudaModel(graph)
            except CudaUnavailable as e:
                raise MccError(str(e)) from None

    def warm(self) -> None:
        """Generate and compile code now for the inputs' static shapes (symbolic ones wait for run)."""
        if self.native is not None:
            self.native.warm()

    @property
    def input_names(self) -> list[str]:
        return [v.name for v in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [v.name for v in self.outputs]

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Run on `feeds` (input name -> array); checks names, dtypes and shapes first."""
        arrays = check_feeds(self.graph, feeds)
        if self.native is not None:
            outs = self.native.run([arrays[v.name] for v in self.inputs])
        else:
            outs = self._interp.run(self.graph, arrays)
        return {v.name: o for v, o in zip(self.outputs, outs)}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the artifact: a zip of manifest.json, graph.onnx and, for native targets, the
        generated sources, weights.npz (packed constants) and fallback nodes as ONNX. No pickle;
        the same model and options give the same bytes."""
        manifest: dict[str, Any] = {
            "format": ARTIFACT_FORMAT,
            "mcc_version": _version(),
            "target": self.target,
            "inputs": [_describe(v) for v in self.inputs],
            "outputs": [_describe(v) for v in self.outputs],
        }
        members: dict[str, bytes] = {}
        if self.native is not None:
            manifest.update(_save_native(self.native, members, self.target))
        model = export_onnx(self.graph).SerializeToString(deterministic=True)
        write_atomic(path, _zip({"manifest.json": json.dumps(manifest, indent=2, sort_keys=True).encode(),
                                 "graph.onnx": model, **members}))

    def fallback_ops(self) -> dict[str, int]:
        """Ops that run through their reference semantics instead of a native kernel, with counts
        (for the shapes compiled so far)."""
        if self.native is None:
            return {}
        total: dict[str, int] = {}
        for spec in self.native.specializations.values():
            for op, n in spec.fallback_ops.items():
                total[op] = max(total.get(op, 0), n)
        return dict(sorted(total.items()))

    def __repr__(self) -> str:
        return f"CompiledModel(target={self.target!r}, inputs={self.input_names}, outputs={self.output_names})"


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz (a zip of .npy files) with fixed timestamps: numpy's own savez stamps the time."""
    members = {}
    for name, a in arrays.items():
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
        members[f"{name}.npy"] = buf.getvalue()
    return _zip(members, compress=False)


def _host(target: str) -> dict[str, Any]:
    """What a native artifact depends on: the CPU and its features, or the GPU and its capability."""
    if target == "cuda":
        from codegen.cuda import device_info

        return device_info()
    from codegen.cpu import host_cpu

    return host_cpu()


def _save_native(model: Any, members: dict[str, bytes], target: str) -> dict[str, Any]:
    from codegen.cpu import fallback_graph

    arrays: dict[str, np.ndarray] = {}
    specs = []
    for i, spec in enumerate(model.specializations.values()):
        em = spec.emitted
        for module, source in {**em.kernels, em.module: em.source}.items():
            members[f"sources/{module}.py"] = source.encode()
        arrays[f"consts_{i}"] = spec.consts
        for j, c in enumerate(em.py_consts):
            arrays[f"k_{i}_{j}"] = np.asarray(c)
        fallbacks = []
        for j, call in enumerate(em.fallbacks):
            name = f"fallback/{i}_{j}.onnx"
            members[name] = export_onnx(fallback_graph(call)).SerializeToString(deterministic=True)
            fallbacks.append(name)
        specs.append({"shapes": {k: list(v) for k, v in spec.shapes.items()}, "driver": em.module,
                      "kernels": sorted(em.kernels), "arena_bytes": spec.arena_bytes,
                      "py_consts": len(em.py_consts), "fallbacks": fallbacks,
                      "fallback_ops": dict(sorted(spec.fallback_ops.items()))})
    members["weights.npz"] = _npz(arrays)
    return {"host": _host(target), "specializations": specs}


def load(path: str | os.PathLike[str], threads: int | None = None) -> CompiledModel:
    """Load an artifact written by `CompiledModel.save`; native code comes from the kernel cache
    (or is compiled once if the cache lacks it). A cpu artifact only loads on the CPU and Numba it
    was built for."""
    p = Path(path)
    if not p.is_file():
        raise ArtifactError(f"{p}: no such artifact")
    try:
        with zipfile.ZipFile(p) as z:
            manifest = json.loads(z.read("manifest.json"))
            model = z.read("graph.onnx")
            names = set(z.namelist())
            extra = {n: z.read(n) for n in names if n.startswith(("sources/", "fallback/")) or n == "weights.npz"}
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, zlib.error):
        raise ArtifactError(f"{p}: not an mcc artifact (corrupt, truncated, or another kind of file)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != ARTIFACT_FORMAT:
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        raise ArtifactError(f"{p}: artifact format {fmt} is not supported by mcc {_version()}; recompile it")
    target = manifest.get("target")
    if target not in TARGETS:
        raise ArtifactError(f"{p}: artifact was built for target {target!r}, which this mcc cannot run")
    try:
        g = import_onnx(model)
    except ModelLoadError as e:
        raise ArtifactError(f"{p}: the artifact's graph is corrupt ({e})") from None
    m = CompiledModel(g, target, threads=threads)
    if m.native is not None:
        _load_native(p, m, manifest, extra)
    return m


def _load_native(p: Path, m: CompiledModel, manifest: dict[str, Any], extra: dict[str, bytes]) -> None:
    from codegen.cpu.emit import Emitted
    from codegen.cpu.runtime import fallback_fn
    from codegen.program import Call, Use

    built, here = manifest.get("host") or {}, _host(m.target)
    if built.get("mcc_version", manifest.get("mcc_version")) != _version():
        raise ArtifactError(f"{p}: built by mcc {manifest.get('mcc_version')}, this is mcc {_version()}; recompile it")
    keys = (("name", "GPU"), ("compute_capability", "compute capability"), ("numba", "Numba"),
            ("numba_cuda", "numba-cuda")) if m.target == "cuda" else (
            ("name", "CPU"), ("features", "CPU features"), ("numba", "Numba"), ("llvmlite", "llvmlite"))
    for key, what in keys:
        if built.get(key) != here[key]:
            raise ArtifactError(f"{p}: built for {what} {_short(built.get(key))}, this machine has {_short(here[key])}; "
                                f"recompile it here with `mcc compile`")
    try:
        with np.load(io.BytesIO(extra["weights.npz"]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        for i, spec in enumerate(manifest["specializations"]):
            kernels = {k: extra[f"sources/{k}.py"].decode() for k in spec["kernels"]}
            source = extra[f"sources/{spec['driver']}.py"].decode()
            py_consts = [arrays[f"k_{i}_{j}"] for j in range(spec["py_consts"])]
            fns, calls = [], []
            for name in spec["fallbacks"]:
                fg = import_onnx(extra[name])
                node = fg.nodes[0]
                fns.append(fallback_fn(node, list(fg.inputs)))
                calls.append(Call(node, None, [Use(v) for v in fg.inputs], list(node.outputs)))
            em = Emitted(spec["driver"], source, kernels, calls, py_consts)
            shapes = {k: tuple(v) for k, v in spec["shapes"].items()}
            m.native.load(shapes, em, arrays[f"consts_{i}"], int(spec["arena_bytes"]), fns, calls)
    except (KeyError, ValueError, TypeError, ModelLoadError, zipfile.BadZipFile) as e:
        raise ArtifactError(f"{p}: the artifact is incomplete or corrupt ({type(e).__name__}: {e}); recompile it") from None


def _short(x: Any) -> str:
    if isinstance(x, list):
        return "[" + ", ".join(map(str, x)) + "]"
    return str(x)


# ---------------------------------------------------------------------------------------------


def check_feeds(graph: Graph, feeds: Mapping[str, Any]) -> dict[str, Any]:
    """Validate run-time inputs against the graph: names, dtypes, ranks, static and symbolic dims."""
    expected = {v.name: v for v in graph.inputs if v.const is None}
    unknown = sorted(set(feeds) - set(expected) - {v.name for v in graph.inputs})
    if unknown:
        raise InputError(f"unknown input(s) {', '.join(map(repr, unknown))}; the model takes: {', '.join(expected)}")
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise InputError(f"missing input(s) {', '.join(map(repr, missing))}; the model takes: {', '.join(expected)}")
    out: dict[str, Any] = {}
    symbols: dict[str, tuple[int, str]] = {}
    for name, x in feeds.items():
        v = next(i for i in graph.inputs if i.name == name)
        if not isinstance(v.type, TensorType):
            out[name] = x
            continue
        arr = np.asarray(x)
        want = v.type.dtype
        if want != DType.UNDEFINED and want != DType.STRING and arr.dtype != want.np:
            raise InputError(f"input {name!r} has dtype {arr.dtype}, the model expects {want.np}")
        shape = v.type.shape
        if shape is not None:
            if arr.ndim != len(shape):
                raise InputError(f"input {name!r} has shape {list(arr.shape)}, the model expects rank {len(shape)} {_fmt_shape(shape)}")
            for axis, (d, n) in enumerate(zip(shape, arr.shape)):
                if isinstance(d, int) and d != n:
                    raise InputError(f"input {name!r} has shape {list(arr.shape)}, the model expects {_fmt_shape(shape)}")
                if isinstance(d, str):
                    if d in symbols and symbols[d][0] != n:
                        raise InputError(
                            f"input {name!r} dim {axis} is {n}, but {d!r} is {symbols[d][0]} in input {symbols[d][1]!r}"
                        )
                    symbols.setdefault(d, (n, name))
        out[name] = arr
    return out


def _fmt_shape(shape: tuple[Any, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _describe(v: ir.Value) -> dict[str, Any]:
    t = v.type
    if isinstance(t, TensorType):
        return {"name": v.name, "dtype": t.dtype.name.lower(), "shape": None if t.shape is None else list(t.shape)}
    return {"name": v.name, "type": str(t)}


def _version() -> str:
    from . import __version__

    return __version__


def _zip(members: dict[str, bytes], compress: bool = True) -> bytes:
    """A zip archive of `members` with fixed timestamps, so the same artifact gives the same bytes.

    Weights are stored uncompressed: loading must be fast, and float weights barely deflate.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in sorted(members.items()):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED if compress and not name.endswith(".npz") else zipfile.ZIP_STORED
            z.writestr(info, data)
    return buf.getvalue()
