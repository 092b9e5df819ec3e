"""The `mcc` command line: inspect, compress, compile, run.

Every failure the user can cause (a bad file, option, input or op) prints one line
`mcc: error: ...` on stderr and exits non-zero; `--debug` shows the traceback instead. Output files
are written to a temporary name and renamed at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

import ir
import passes

from .api import TARGETS, CompiledModel, compile, compress, load
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
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        _print_facts(args.model, facts)
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
    m = compile(args.model, target=args.target, pipeline=args.passes, **_compression(args), **_pass_options(args))
    _report_timings(args)
    m.save(out)
    print(f"wrote {out} (target {m.target})")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    out = _check_output(args.output, (".npz",)) if args.output else None
    path = Path(args.model)
    m: CompiledModel = load(path) if path.suffix == ".mcc" else compile(path, target=args.target)
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
    p.add_argument("--target", choices=TARGETS, default="reference")
    p.add_argument("--passes", metavar="PIPELINE", default="default", help="pass pipeline (default: %(default)s)")
    compression(p)
    common(p)
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("run", help="run an ONNX model or an .mcc artifact on .npy inputs")
    p.add_argument("model", help="an ONNX file or an .mcc artifact")
    p.add_argument("--input", action="append", metavar="NAME=FILE.npy", help="an input (repeat per input)")
    p.add_argument("-o", "--output", metavar="OUT.npz", help="write the outputs here")
    p.add_argument("--target", choices=TARGETS, default="reference", help="target when MODEL is ONNX")
    common(p, pipeline=False)
    p.set_defaults(func=cmd_run)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "command", None):
        ap.print_help()
        return EXIT_USAGE
    try:
        with _blas_threads():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("mcc: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user, the traceback only with --debug
        if args.debug:
            raise
        print(f"mcc: error: {_message(e)}", file=sys.stderr)
        return EXIT_ERROR


def _blas_threads() -> Any:
    """Cap numpy's BLAS threads at MCC_NUM_THREADS (default 1) while a command runs.

    The reference interpreter issues many small matmuls: threaded BLAS gains little there and, on a
    busy machine, oversubscribed threads make it up to 100x slower.
    """
    from threadpoolctl import threadpool_limits

    raw = os.environ.get("MCC_NUM_THREADS", "1")
    try:
        n = max(1, int(raw))
    except ValueError:
        raise MccError(f"MCC_NUM_THREADS={raw!r} is not a number of threads") from None
    return threadpool_limits(limits=n, user_api="blas")


def _message(e: BaseException) -> str:
    known = (MccError, ir.UnsupportedOpError, ir.EvaluationError, ir.VerificationError,
             passes.PipelineError, OSError, ValueError)
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, known):
        return msg
    return f"internal error ({type(e).__name__}: {msg}); rerun with --debug and report it"


if __name__ == "__main__":
    sys.exit(main())
