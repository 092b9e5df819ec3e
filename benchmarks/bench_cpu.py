"""mcc against onnxruntime on the CPU: the issue's benchmark table in one command.

    python benchmarks/bench_cpu.py                       # every model, every core, target cpu
    python benchmarks/bench_cpu.py --threads 1 --models resnet50,digits --repeat 50
    python benchmarks/bench_cpu.py --markdown -          # the table as markdown on stdout
    python benchmarks/bench_cpu.py --compressed          # also int8 and sparse against fp32 (digits CNN)

Per model: mcc's median latency, onnxruntime's (ORT_ENABLE_ALL, same threads, same process, runs
interleaved), the ratio mcc/onnxruntime (below 1: mcc is faster), achieved GFLOP/s (2 x MACs / median)
and its share of the machine's fp32 peak, which is measured first (see compiler.bench.measure_peak_gflops),
and the compile time. docs/benchmarks.md explains the method.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # mcc from this checkout; tests/models.py builds models

import onnx
import onnx.backend.test

from compiler import __version__
from compiler.bench import (
    DEFAULT_TARGET,
    SUSPECT_ERR,
    BenchResult,
    bench_model,
    compare_variants,
    format_table,
    format_variants,
    measure_peak_gflops,
    resolve_threads,
)
from compiler.errors import MccError

LIGHT = Path(onnx.backend.test.__file__).parent / "data" / "light"
DATA = ROOT / "tests" / "data"


@dataclass
class Case:
    """One benchmark model: how to get it and the input sizes it runs at."""

    title: str
    source: Callable[[], str | onnx.ModelProto]
    shapes: dict[str, list[int]] = field(default_factory=dict)


def _recognizer() -> onnx.ModelProto:
    """The transformer text recognizer at PaddleOCR's 48x320 input (the builder fixes height 32)."""
    from models import transformer_recognizer_model

    m = transformer_recognizer_model()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 48  # 48 -> 12 after the stem -> 1 after the pool
    return m


def _builder(name: str, **kwargs: Any) -> Callable[[], onnx.ModelProto]:
    def build() -> onnx.ModelProto:
        import models

        return getattr(models, name)(**kwargs)

    return build


CASES: dict[str, Case] = {
    "resnet50": Case("ResNet-50 (onnx light)", lambda: str(LIGHT / "light_resnet50.onnx")),
    "squeezenet": Case("SqueezeNet (onnx light)", lambda: str(LIGHT / "light_squeezenet.onnx")),
    "digits": Case("digits CNN", lambda: str(DATA / "digits_cnn.onnx"), {"batch": [1]}),
    "detector": Case("FPN detector 320x320", _builder("fpn_detector_model"), {"N": [1], "H": [320], "W": [320]}),
    "recognizer": Case("transformer recognizer 48x320", _recognizer, {"N": [1], "W": [320]}),
    "classifier": Case("MobileNetV3-style classifier 48x192", _builder("mobilenetv3_block_model"),
                       {"N": [1], "H": [48], "W": [192]}),
}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _header(threads: int, peak: float, target: str) -> str:
    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = "not installed"
    return (f"mcc {__version__} (target {target}) against onnxruntime {ort}; {_cpu_name()}, {threads} thread"
            f"{'s' if threads != 1 else ''}; measured fp32 peak {peak:.1f} GFLOP/s. Medians of interleaved runs; "
            "mcc/ORT below 1: mcc is faster.")


def run(args: argparse.Namespace) -> str:
    threads = resolve_threads(args.threads)
    names = list(CASES) if not args.models else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise MccError(f"unknown model(s) {', '.join(unknown)}; choose from: {', '.join(CASES)}")
    peak = measure_peak_gflops(threads)
    print(f"fp32 peak: {peak:.1f} GFLOP/s on {threads} thread(s)", file=sys.stderr)
    results: list[BenchResult] = []
    for key in names:
        case = CASES[key]
        print(f"{case.title} ...", file=sys.stderr, flush=True)
        r = bench_model(case.source(), threads=threads, against=None if args.no_ort else "onnxruntime",
                        target=args.target, warmup=args.warmup, repeat=args.repeat, shapes=case.shapes,
                        name=case.title, peak_gflops=peak, progress=sys.stderr.isatty())
        ratio = "" if r.ratio is None else f", onnxruntime {r.ort_ms:.3f} ms, mcc/ORT {r.ratio:.2f}"
        print(f"  mcc {r.ours_ms:.3f} ms{ratio}, {r.gflops:.1f} GFLOP/s ({r.peak_share:.1%} of peak), "
              f"compile {r.compile_s:.1f} s, max rel err {'-' if r.max_rel_err is None else f'{r.max_rel_err:.1e}'}"
              + (" <- outputs differ from onnxruntime" if (r.max_rel_err or 0) > SUSPECT_ERR else ""), file=sys.stderr)
        results.append(r)
    peak = measure_peak_gflops(threads, remeasure=True)  # again, now that the models' load has passed: keep the best
    for r in results:
        r.peak_gflops, r.peak_share = peak, r.gflops / peak
        r.ort_peak_share = None if r.ort_gflops is None else r.ort_gflops / peak
    text = _header(threads, peak, args.target) + "\n\n" + format_table(results) + "\n"
    if args.compressed:
        rows = compare_variants(
            str(DATA / "digits_cnn.onnx"),
            {"fp32 dense": {},
             "int8": {"quantize": "int8", "calibration": str(DATA / "digits_calibration.npz")},
             "sparse 70%": {"sparsity": 0.7}},
            threads=threads, target=args.target, warmup=args.warmup, repeat=args.repeat, shapes={"batch": [1]},
            progress=sys.stderr.isatty())
        text += "\nCompressed variants of the digits CNN, mcc against mcc (batch 1):\n\n" + format_variants(rows) + "\n"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", metavar="N", help="threads for both runtimes (default: MCC_NUM_THREADS, else every core)")
    ap.add_argument("--models", metavar="A,B", help=f"comma-separated subset of: {', '.join(CASES)}")
    ap.add_argument("--repeat", type=int, default=20, metavar="N", help="timed runs per runtime (default: %(default)s)")
    ap.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed runs first (default: %(default)s)")
    ap.add_argument("--target", default=DEFAULT_TARGET, help="mcc target (default: %(default)s)")
    ap.add_argument("--markdown", metavar="FILE", help="write the table(s) as markdown here ('-': stdout)")
    ap.add_argument("--compressed", action="store_true",
                    help="also compare int8 and 70%% sparse compiles of the digits CNN with the plain one")
    ap.add_argument("--no-ort", action="store_true", help="time mcc alone (onnxruntime not needed)")
    args = ap.parse_args(argv)
    try:
        text = run(args)
    except MccError as e:
        print(f"bench_cpu: error: {e}", file=sys.stderr)
        return 1
    if args.markdown == "-" or not args.markdown:
        print(text, end="")
    else:
        Path(args.markdown).write_text(text)
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
