"""The `mcc` command line: inspect, compress, compile, run, bench.

Every failure the user can cause (a bad file, option, input or op) prints one line
`mcc: error: ...` on stderr and exits non-zero; `--debug` shows the traceback instead. Output files
are written to a temporary name and renamed at the end, so a failure leaves nothing behind.

Threads: every core by default, `--threads N` (compile, run, bench) or MCC_NUM_THREADS otherwise. The
number goes to compile(threads=...), caps numpy's BLAS pool, and is exported as MCC_NUM_THREADS while
the command runs, so artifacts loaded by `run`/`bench` use it too.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import ir
import passes

from .api import TARGETS, CompiledModel, compile, compress, load
from .bench import AGAINST, DEFAULT_TARGET, bench_model, blas_limit, describe, parse_shapes, resolve_threads
from .facts import fmt_count, model_facts
from .files import write_atomic
from .errors import InputError, MccError
from .onnx_export import export_onnx
from .onnx_import import import_onnx

EXIT_ERROR = 1
EXIT_USAGE = 2


def _print_facts(path: str, f: dict[str, Any]) -> None:
    def shape(s: list[Any] | None) -> str:
        return "[*]" if s is None else "[" + ", ".join("?" if d is None else str(d) for d in s) + "]"

    print(f"model    {path}")
    for label, key in (("input ", "inputs"), ("output", "outputs")):
        for v in f[key]:
            print(f"{label}   {v['name']}: {v['dtype']}{shape(v['shape'])}")
    print(f"nodes    {f['nodes']}")
    print(f"kernels  {f['kernels']}")
    print(f"params   {fmt_count(f['params'])} ({f['params']})")
    print(f"MACs     {fmt_count(f['macs'])} ({f['macs']}; symbolic dims counted as 1)")
    print("ops")
    width = max((len(k) for k in f["op_counts"]), default=0)
    for op, n in sorted(f["op_counts"].items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {op:<{width}}  {n}")


# -- commands ---------------------------------------------------------------------------------


def cmd_inspect(args: argparse.Namespace) -> int:
    g = import_onnx(args.model)
    lowered = compress(g, args.passes or "default", **_pass_options(args))
    _report_timings(args)
    facts = model_facts(g, kernels=len(lowered.nodes))
    from codegen.cpu import native_report

    facts["cpu"] = native_report(lowered)
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        _print_facts(args.model, facts)
        cpu = facts["cpu"]
        print(f"cpu      {cpu['native']} native kernel calls; " + _fallback_line(cpu["fallback_ops"]))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    out = _check_output(args.output, (".onnx",))
    g = compress(import_onnx(args.model), args.passes, **_compression(args), **_pass_options(args))
    _report_timings(args)
    proto = export_onnx(g)
    write_atomic(out, proto.SerializeToString(deterministic=True))
    before, after = Path(args.model).stat().st_size, out.stat().st_size
    print(f"wrote {out} ({fmt_count(after)}B, {after / max(before, 1):.0%} of the input)")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    out = _check_output(args.output, (".mcc",))
    m = compile(args.model, target=args.target, pipeline=args.passes, threads=args.threads_n, **_compression(args),
                **_pass_options(args))
    _report_timings(args)
    m.save(out)
    print(f"wrote {out} (target {m.target})")
    if m.native is not None:
        print(_fallback_line(m.fallback_ops()))
    return 0


def _fallback_line(ops: dict[str, int]) -> str:
    if not ops:
        return "every op runs as a native kernel"
    listed = ", ".join(f"{op} x{n}" for op, n in ops.items())
    return f"{sum(ops.values())} node(s) run through the reference (no native kernel): {listed}"


def cmd_run(args: argparse.Namespace) -> int:
    out = _check_output(args.output, (".npz",)) if args.output else None
    path = Path(args.model)
    m: CompiledModel = (load(path, threads=args.threads_n) if path.suffix == ".mcc"
                        else compile(path, target=args.target, threads=args.threads_n))
    feeds: dict[str, np.ndarray] = {}
    for item in args.input or []:
        if "=" not in item:
            raise InputError(f"--input {item!r}: expected NAME=FILE.npy")
        name, file = item.split("=", 1)
        feeds[name] = _load_npy(Path(file), name)
    results = m.run(feeds)
    if out is not None:
        buf = io.BytesIO()
        np.savez(buf, **results)
        write_atomic(out, buf.getvalue())
        print(f"wrote {out}")
    for name, arr in results.items():
        a = np.asarray(arr)
        head = np.array2string(a.reshape(-1)[:6], precision=5, separator=", ")
        print(f"{name}: {a.dtype}{list(a.shape)} {head}{' ...' if a.size > 6 else ''}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    options = {k: v for k, v in _compression(args).items() if v not in (None, (), False) and k != "sparsity_pattern"}
    if args.sparsity:
        options["sparsity_pattern"] = args.sparsity_pattern
    result = bench_model(args.model, threads=args.threads_n, against=args.against, target=args.target,
                         warmup=args.warmup, repeat=args.repeat, shapes=parse_shapes(args.shape or []),
                         measure_peak=not args.no_peak, progress=sys.stderr.isatty(), name=args.model, **options)
    print(json.dumps(result.to_dict(), indent=2) if args.json else describe(result))
    return 0


def _load_npy(path: Path, name: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"--input {name}: {path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise InputError(f"--input {name}: {path}: not a readable .npy file ({e})") from None


def _check_output(path: str, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if p.suffix not in suffixes:
        raise MccError(f"output {path!r} should end in {' or '.join(suffixes)}")
    if not p.parent.is_dir():
        raise MccError(f"output folder {str(p.parent)!r} does not exist")
    return p


def _compression(args: argparse.Namespace) -> dict[str, Any]:
    """The compression options, named as in compiler.compress."""
    return {"channel_prune": args.channel_prune, "sparsity": args.sparsity, "sparsity_pattern": args.sparsity_pattern,
            "quantize": args.quantize, "calibration": args.calibration, "calibration_method": args.calibration_method,
            "max_error": args.max_error,
            "exclude": tuple(args.exclude or ()), "report": args.report, "progress": sys.stderr.isatty()}


def _pass_options(args: argparse.Namespace) -> dict[str, Any]:
    """Pipeline options shared by the commands: --debug verifies the IR after every pass."""
    if args.time_passes:
        args.timings = {}
    return {"verify": bool(getattr(args, "debug", False)), "dump_ir_after": set(args.dump_ir_after or []),
            "timings": getattr(args, "timings", None)}


def _report_timings(args: argparse.Namespace) -> None:
    timings = getattr(args, "timings", None)
    if timings:
        width = max(len(k) for k in timings)
        for name, seconds in sorted(timings.items(), key=lambda kv: -kv[1]):
            print(f"pass {name:<{width}}  {seconds * 1e3:9.1f} ms", file=sys.stderr)


# -- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="mcc", description="mcc: a model compression compiler for ONNX models.")
    ap.add_argument("--version", action="version", version=f"mcc {__version__}")
    ap.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    def common(p: argparse.ArgumentParser, pipeline: bool = True) -> None:
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks on errors and verify the IR after every pass")
        if pipeline:
            p.add_argument("--dump-ir-after", action="append", metavar="PASS",
                           help="print the IR after this pass (repeatable; 'all' for every pass)")
            p.add_argument("--time-passes", action="store_true", help="print the time spent in each pass")

    p = sub.add_parser("inspect", help="inputs, outputs, op counts, params, MACs, kernels")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("--passes", metavar="PIPELINE", help="pipeline whose result `kernels` counts (default: default)")
    p.add_argument("--json", action="store_true", help="print JSON")
    common(p)
    p.set_defaults(func=cmd_inspect)

    def threads(p: argparse.ArgumentParser) -> None:
        # Parsed as text and checked in main(), so a bad value gets mcc's one-line error.
        p.add_argument("--threads", metavar="N", help="threads to run on (default: MCC_NUM_THREADS, else every core)")

    def compression(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("compression")
        g.add_argument("--channel-prune", type=float, metavar="R", help="remove a fraction R of the MACs by removing whole channels")
        g.add_argument("--sparsity", type=float, metavar="S", help="zero a fraction S of Conv/Gemm/MatMul weights")
        g.add_argument("--sparsity-pattern", choices=("unstructured", "2:4", "4x1"), default="unstructured")
        g.add_argument("--quantize", choices=("int8", "dynamic", "fp16"),
                       help="int8: static QDQ (needs --calibration); dynamic: int8 weights, run-time activation "
                            "scales; fp16: half-precision weights and compute")
        g.add_argument("--calibration-method", choices=("minmax", "percentile", "entropy", "mse"),
                       help="how int8 activation ranges are chosen (default: percentile 99.99)")
        g.add_argument("--max-error", type=float, metavar="E",
                       help="int8: keep the least robust layers in fp32 until the outputs' relative L2 error "
                            "on the calibration data is at most E")
        g.add_argument("--calibration", metavar="FILE.npz|FOLDER",
                       help="samples to recover accuracy from: one array per input name, samples on axis 0")
        g.add_argument("--exclude", nargs="+", metavar="NODE_NAME", help="nodes to leave uncompressed")
        g.add_argument("--report", metavar="FILE.md|FILE.html", help="write a per-layer report")

    p = sub.add_parser("compress", help="optimize and compress; write standard ONNX")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    p.add_argument("--passes", metavar="PIPELINE", default="default", help="pass pipeline (default: %(default)s)")
    compression(p)
    common(p)
    p.set_defaults(func=cmd_compress)

    p = sub.add_parser("compile", help="optimize and generate code; write an .mcc artifact")
    p.add_argument("model", help="an ONNX file")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mcc")
    p.add_argument("--target", choices=TARGETS, default="cpu", help="code generation target (default: %(default)s)")
    p.add_argument("--passes", metavar="PIPELINE", default="default", help="pass pipeline (default: %(default)s)")
    compression(p)
    threads(p)
    common(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run an ONNX model or an .mcc artifact on .npy inputs")
    p.add_argument("model", help="an ONNX file or an .mcc artifact")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input (repeat per input)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here")
    p.add_argument("--target", choices=TARGETS, default="cpu", help="target when MODEL is ONNX (default: %(default)s)")
    threads(p)
    common(p, pipeline=False)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bench", help="latency, and the ratio to onnxruntime measured in the same process")
    p.add_argument("model", help="an ONNX file or an .mcc artifact")
    p.add_argument("--against", choices=AGAINST, help="also time this runtime on the same model, interleaved")
    threads(p)
    p.add_argument("--target", choices=TARGETS, default=DEFAULT_TARGET, help="target when MODEL is ONNX (default: %(default)s)")
    p.add_argument("--repeat", type=int, default=20, metavar="N", help="timed runs of each runtime (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs first (default: %(default)s)")
    p.add_argument("--shape", action="append", metavar="NAME=DIMS",
                   help="an input's shape (image=1x3x224x224) or a symbolic dim's size (batch=4); other symbolic dims are 1")
    p.add_argument("--no-peak", action="store_true", help="skip measuring the machine's fp32 peak")
    p.add_argument("--json", action="store_true", help="print JSON")
    compression(p)
    common(p, pipeline=False)
    p.set_defaults(func=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "command", None):
        ap.print_help()
        return EXIT_USAGE
    try:
        args.threads_n = resolve_threads(getattr(args, "threads", None))
        with _blas_threads(args.threads_n), _threads_env(getattr(args, "threads", None) and args.threads_n):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mcc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user, the traceback only with --debug
        if args.debug:
            raise
        print(f"mcc: error: {_message(e)}", file=sys.stderr)
        return EXIT_ERROR


def _blas_threads(n: int) -> Any:
    """Cap numpy's BLAS threads at the command's thread count while it runs.

    The reference interpreter issues many small matmuls: more BLAS threads than the command may use
    oversubscribe the cores, which on a busy machine makes it up to 100x slower. The cap never raises
    the pool above its current size (a user's OPENBLAS_NUM_THREADS stays in force).
    """
    return blas_limit(n)


@contextlib.contextmanager
def _threads_env(n: int | None) -> Iterator[None]:
    """Export --threads as MCC_NUM_THREADS while the command runs (restored after: main() may run in-process)."""
    if not n:
        yield
        return
    old = os.environ.get("MCC_NUM_THREADS")
    os.environ["MCC_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MCC_NUM_THREADS", None)
        else:
            os.environ["MCC_NUM_THREADS"] = old


def _message(e: BaseException) -> str:
    known = (MccError, ir.UnsupportedOpError, ir.EvaluationError, ir.VerificationError,
             passes.PipelineError, OSError, ValueError)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, known):
        return msg
    return f"internal error ({type(e).__name__}: {msg}); rerun with --debug and report it"


if __name__ == "__main__":
    sys.exit(main())
