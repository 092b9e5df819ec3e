"""mcc's CUDA target against PyTorch on the same GPU: the light ResNet-50 at batch 1 and 32.

    python benchmarks/bench_cuda.py                          # batch 1 and 32, 20 timed runs each
    python benchmarks/bench_cuda.py --batches 1,8,32 --repeat 50 --json out.json
    python benchmarks/bench_cuda.py --profile                # also the top kernels by GPU time

For each batch size: the model compiled with `target="cuda"` (compile time reported), its output
and its logits checked against the CPU target's on the same input (`--cpu-outputs FILE.npz` reads them instead of
compiling for the CPU here), and the median latency of `CompiledModel.run` from a host array to a
host array: inputs copied in, every kernel, outputs copied out. PyTorch runs torchvision's ResNet-50
(the same architecture and shapes; latency does not depend on the weights' values) the same way,
host to host, in eval mode under `torch.inference_mode`, twice: in strict fp32 (TF32 off, the
arithmetic mcc does) and with PyTorch's defaults (cuDNN may use TF32 tensor cores for convolutions).
The ratio is mcc / PyTorch: below 1 mcc is faster. Needs an NVIDIA GPU (not the simulator).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import onnx  # noqa: E402
import onnx.backend.test  # noqa: E402
from onnx import numpy_helper  # noqa: E402

LIGHT = Path(onnx.backend.test.__file__).parent / "data" / "light"


def resnet50(batch: int) -> onnx.ModelProto:
    """The light ResNet-50 with batch `batch` and real-looking weights.

    The light model stores its weights as ConstantOfShape (one value repeated), which makes every
    output the same 0.001: equal outputs would then prove nothing. Each such weight becomes a seeded
    He-normal tensor of its shape. The input's first dim and the [1, 2048] Reshape before the
    classifier (the exporter baked the batch size into it) become `batch`."""
    m = onnx.load(LIGHT / "light_resnet50.onnx")
    rng = np.random.default_rng(1234)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    keep = []
    for node in m.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            if len(shape) > 1:
                w = rng.standard_normal(shape) * np.sqrt(2.0 / int(np.prod(shape[1:])))
            elif "_riv_" in node.output[0]:  # BatchNorm variance
                w = rng.uniform(0.5, 1.5, shape)
            elif "_s_" in node.output[0]:  # BatchNorm scale: small, so 16 residual adds stay finite
                w = rng.uniform(0.2, 0.5, shape)
            else:
                w = rng.standard_normal(shape) * 0.1
            w = w.astype(np.float32)
            m.graph.initializer.append(numpy_helper.from_array(w, node.output[0]))
        else:
            keep.append(node)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    softmax = next(n for n in m.graph.node if n.op_type == "Softmax")  # the logits are an output too:
    m.graph.output.append(onnx.helper.make_tensor_value_info(  # a saturated softmax hides errors
        softmax.input[0], onnx.TensorProto.FLOAT, [batch, 1000]))
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
    for out in m.graph.output:
        if out.type.tensor_type.shape.dim:
            out.type.tensor_type.shape.dim[0].dim_value = batch
    for init in m.graph.initializer:
        a = numpy_helper.to_array(init)
        if init.name in {n.input[1] for n in m.graph.node if n.op_type == "Reshape"} and a.tolist() == [1, 2048]:
            init.CopyFrom(numpy_helper.from_array(np.array([batch, 2048], np.int64), init.name))
    return m


def median_ms(fn: Any, warmup: int, repeat: int, sync: Any = None) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if sync is not None:
            sync()
        t = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_latency(batch: int, x: np.ndarray, warmup: int, repeat: int) -> dict[str, float]:
    import torch
    import torchvision

    model = torchvision.models.resnet50(weights=None).eval().cuda()
    out: dict[str, float] = {}
    for label, tf32 in (("torch_fp32_ms", False), ("torch_default_ms", True)):
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = False

        def step() -> None:
            with torch.inference_mode():
                model(torch.from_numpy(x).cuda()).cpu()

        out[label] = median_ms(step, warmup, repeat, torch.cuda.synchronize)
        with torch.inference_mode():
            xd = torch.from_numpy(x).cuda()

            def resident() -> None:
                model(xd)

            out[label.replace("_ms", "_resident_ms")] = median_ms(resident, warmup, repeat, torch.cuda.synchronize)
    torch.backends.cudnn.allow_tf32 = True
    return out


def profile(m: Any, feeds: dict[str, np.ndarray], top: int = 15) -> str:
    """GPU time per kernel over five runs, through PyTorch's profiler (CUPTI sees Numba's kernels)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as tprofile

    with tprofile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            m.run(feeds)
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default: %(default)s)")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cpu-outputs", type=Path, help="npz of the CPU target's outputs, key 'b<batch>'")
    ap.add_argument("--save-cpu-outputs", type=Path, help="compute the CPU target's outputs and write them here")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--profile", action="store_true", help="print the kernels taking the most GPU time")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    args = ap.parse_args(argv)

    import compiler

    batches = [int(b) for b in args.batches.split(",")]
    inputs = {b: np.random.default_rng(b).standard_normal((b, 3, 224, 224)).astype(np.float32) for b in batches}
    if args.save_cpu_outputs:  # on a machine without a GPU: the reference outputs to carry along
        arrays = {}
        for b in batches:
            m = compiler.compile(resnet50(b), target="cpu")
            outs = m.run({"gpu_0/data_0": inputs[b]})
            arrays.update({f"b{b}_{i}": a for i, a in enumerate(outs.values())})
        np.savez(args.save_cpu_outputs, **arrays)
        print(f"wrote {args.save_cpu_outputs}")
        return 0

    from codegen.cuda import device_info

    info = device_info()
    print(f"device: {info['name']} (compute capability {info['compute_capability']}), numba {info['numba']}, "
          f"numba-cuda {info['numba_cuda']}")
    expected = dict(np.load(args.cpu_outputs)) if args.cpu_outputs else {}
    rows = []
    for b in batches:
        model = resnet50(b)
        t = time.perf_counter()
        m = compiler.compile(model, target="cuda")
        compile_s = time.perf_counter() - t
        feeds = {"gpu_0/data_0": inputs[b]}
        got = list(m.run(feeds).values())
        want = [expected[f"b{b}_{i}"] for i in range(len(got))] if f"b{b}_0" in expected else list(
            compiler.compile(model, target="cpu").run(feeds).values())
        err = max(float(np.max(np.abs(g - w)) / max(float(np.max(np.abs(w))), 1e-30)) for g, w in zip(got, want))
        ours = median_ms(lambda: m.run(feeds), args.warmup, args.repeat)
        row: dict[str, Any] = {"batch": b, "compile_s": round(compile_s, 1), "rel_err_vs_cpu": err,
                               "mcc_ms": round(ours, 3), "fallback_ops": m.fallback_ops()}
        if not args.no_torch:
            row.update({k: round(v, 3) for k, v in torch_latency(b, inputs[b], args.warmup, args.repeat).items()})
            row["ratio_fp32"] = round(ours / row["torch_fp32_ms"], 2)
            row["ratio_default"] = round(ours / row["torch_default_ms"], 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.profile:
            print(profile(m, feeds))
    print()
    print("| batch | mcc ms | PyTorch fp32 ms | ratio | PyTorch default (TF32) ms | ratio | max rel. err vs cpu |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['mcc_ms']:.2f} | {r.get('torch_fp32_ms', float('nan')):.2f} | "
              f"{r.get('ratio_fp32', float('nan')):.2f} | {r.get('torch_default_ms', float('nan')):.2f} | "
              f"{r.get('ratio_default', float('nan')):.2f} | {r['rel_err_vs_cpu']:.1e} |")
    if args.json:
        args.json.write_text(json.dumps({"device": info, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
