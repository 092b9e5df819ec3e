"""Runs the official ONNX backend test suite (shipped in the onnx package) through an onnx Backend.

Used by tests/compiler/test_onnx_backend.py and by hand:

    python tests/compiler/onnx_suite.py --kind node [--filter conv] [--failures] [--backend mcc|ort]

Each case runs the way onnx's own runner does (same data, rtol/atol and dtype checks), but in one
loop that records pass/fail/error per case instead of one unittest per case, so counts are cheap.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner

KINDS = ("node", "light", "simple", "pytorch-converted", "pytorch-operator")
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


@dataclass
class CaseResult:
    kind: str
    name: str
    status: str  # "pass", "fail" (wrong answer), "error" (raised)
    message: str = ""
    seconds: float = 0.0


def _load_pb(path: str) -> Any:
    data = open(path, "rb").read()
    t = onnx.TensorProto()
    t.ParseFromString(data)
    if t.data_type or t.dims or t.raw_data:
        return numpy_helper.to_array(t)
    seq = onnx.SequenceProto()
    seq.ParseFromString(data)
    return numpy_helper.to_list(seq)


def cases(kind: str) -> list[tuple[str, Any, list[tuple[list[Any], list[Any]]], float, float]]:
    """(name, model, [(inputs, expected outputs)], rtol, atol) for every case of `kind`."""
    out = []
    if kind == "light":
        for path in sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx"))):
            model = onnx.load(path)
            inits = {i.name for i in model.graph.initializer}
            ins = [Runner.generate_dummy_data(x) for x in model.graph.input if x.name not in inits]
            ref = [_load_pb(path[:-5] + "_output_0.pb")]
            out.append((os.path.basename(path)[:-5], model, [(ins, ref)], 1e-3, 1e-7))
        return out
    for tc in load_model_tests(kind=kind):
        if kind == "node":
            model, data = tc.model, tc.data_sets
        elif tc.model_dir is None:
            continue
        else:
            model = onnx.load(os.path.join(tc.model_dir, "model.onnx"))
            data = []
            for ds in sorted(glob.glob(os.path.join(tc.model_dir, "test_data_set_*"))):
                ins = [_load_pb(p) for p in sorted(glob.glob(os.path.join(ds, "input_*.pb")), key=_num)]
                outs = [_load_pb(p) for p in sorted(glob.glob(os.path.join(ds, "output_*.pb")), key=_num)]
                data.append((ins, outs))
        out.append((tc.name, model, data, tc.rtol, tc.atol))
    return out


def _num(p: str) -> int:
    return int(re.findall(r"(\d+)\.pb$", p)[0])


def run_case(backend: Any, kind: str, name: str, model: Any, data: Any, rtol: float, atol: float) -> CaseResult:
    t0 = time.perf_counter()
    try:
        rep = backend.prepare(model, "CPU")
        for ins, ref in data:
            ins = [numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x for x in ins]
            ref = [numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x for x in ref]
            outs = rep.run(ins)
            try:
                Runner.assert_similar_outputs(ref, outs, rtol=rtol, atol=atol)
            except AssertionError as e:
                msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else "mismatch"
                if _within_float16_ulps(ref, outs):
                    msg = f"{FP16_ROUNDING}: {msg}"
                return CaseResult(kind, name, "fail", msg, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - we record every failure kind
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        if os.environ.get("SUITE_TRACEBACK"):
            traceback.print_exc()
        return CaseResult(kind, name, "error", msg, time.perf_counter() - t0)
    return CaseResult(kind, name, "pass", "", time.perf_counter() - t0)


FP16_ROUNDING = "float16 rounding (within 2 ulps)"


def _within_float16_ulps(ref: list[Any], outs: Sequence[Any], ulps: int = 2) -> bool:
    """True when every mismatch is a float16 output off by at most `ulps` units in the last place.

    The suite's rtol of 1e-3 is finer than float16's epsilon (9.8e-4), so computing a float16 op in
    float32 and rounding once (as mcc and onnxruntime do) can miss by one ulp against a reference that
    rounds after every step; onnx's runner grants bfloat16 two ulps for the same reason.
    """
    if len(ref) != len(outs):
        return False
    for r, o in zip(ref, outs):
        r, o = np.asarray(r), np.asarray(o)
        if r.dtype != np.float16 or o.dtype != np.float16 or r.shape != o.shape:
            if not (r.shape == o.shape and r.dtype == o.dtype and np.array_equal(r, o, equal_nan=True)):
                return False
            continue
        spacing = np.spacing(np.maximum(np.abs(r), np.abs(o)).astype(np.float16)).astype(np.float32)
        if not np.all(np.abs(r.astype(np.float32) - o.astype(np.float32)) <= ulps * spacing):
            return False
    return True


def get_backend(name: str) -> Any:
    if name == "ort":
        import onnxruntime.backend as b

        return b
    from compiler import Backend

    return Backend


def run_suite(kind: str, backend: Any, pattern: str | None = None) -> list[CaseResult]:
    rx = re.compile(pattern) if pattern else None
    results = []
    for name, model, data, rtol, atol in cases(kind):
        if rx and not rx.search(name):
            continue
        results.append(run_case(backend, kind, name, model, data, rtol, atol))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kind", choices=KINDS + ("all",), default="node")
    ap.add_argument("--filter", help="regex on the test name")
    ap.add_argument("--backend", choices=("mcc", "ort"), default="mcc")
    ap.add_argument("--failures", action="store_true", help="list every failing case with its message")
    ap.add_argument("--summary", action="store_true", help="group failure messages")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")  # the suite's own data generation divides by zero on purpose
    backend = get_backend(args.backend)
    kinds = KINDS if args.kind == "all" else (args.kind,)
    for kind in kinds:
        t0 = time.perf_counter()
        res = run_suite(kind, backend, args.filter)
        c = Counter(r.status for r in res)
        print(f"{kind}: {c['pass']} passed, {c['fail']} failed, {c['error']} errors of {len(res)} "
              f"({time.perf_counter() - t0:.1f}s)")
        if args.failures:
            for r in res:
                if r.status != "pass":
                    print(f"  {r.status:5} {r.name}: {r.message}")
        if args.summary:
            msgs = Counter(re.sub(r"'[^']*'|\d+", "_", r.message)[:120] for r in res if r.status != "pass")
            for m, n in msgs.most_common(40):
                print(f"  {n:4} {m}")
        slow = sorted(res, key=lambda r: -r.seconds)[:5]
        if slow and slow[0].seconds > 5:
            print("  slowest: " + ", ".join(f"{r.name} {r.seconds:.1f}s" for r in slow))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
    sys.exit(main())
