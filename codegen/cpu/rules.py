"""Kernel selection for the CPU target: which kernel runs each node, with which arguments.

A rule takes a node whose tensors all have static shapes and returns the calls that compute it, or
None to let the node fall back to its reference semantics. Rules are looked up by op type; runs of
elementwise ops never reach them (they become one generated kernel, see `elementwise`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from ir import DType, Node, Value, get_op
from ir.ops import constant_value
from ir.ops.nn import _spatial_attrs, _window_geometry

from ..lower import match_epilogue, static
from ..program import Call, Const, Kernel, Lit, Scratch, Use
from . import direct_conv, qgemm, sparse
from .sgemm import pack_a

Rule = Callable[[Node], "list[Call] | None"]
RULES: dict[str, Rule] = {}
KERNELS = "codegen.cpu.kernels"


def rule(*op_types: str) -> Callable[[Rule], Rule]:
    """Register `fn` as the lowering of `op_types` (default ONNX domain)."""
    def register(fn: Rule) -> Rule:
        for op in op_types:
            if op in RULES:
                raise ValueError(f"two CPU rules for {op}")
            RULES[op] = fn
        return fn
    return register


def k(name: str, module: str = KERNELS) -> Kernel:
    return Kernel(module, name)


def attrs(node: Node) -> dict[str, Any]:
    op = get_op(node.op_type, node.domain)
    assert op is not None
    return op.resolve_attrs(node.attributes, node.opset)


def f32(*vs: Value | None) -> bool:
    return all(v is not None and static(v) and v.dtype == DType.FLOAT for v in vs)


def shape(v: Value) -> tuple[int, ...]:
    return tuple(v.shape)  # type: ignore[arg-type]


def arg(v: Value, view: tuple[int, ...] | None = None) -> Use | Const:
    """A value operand: constants go to the constants arena, the rest are planned buffers."""
    c = constant_value(v)
    if c is not None:
        a = np.ascontiguousarray(c)
        return Const(a.reshape(view) if view is not None else a)
    return Use(v, view)


def planewise(plane: str, arrays: int, lits: list[Lit]) -> Kernel:
    """A generated parallel loop over (image, channel) planes that calls `plane` (kernels.py) with
    the window's geometry written in as literals. LLVM then folds the strides, pads and sizes into
    the plane's loops and vectorises them: the same kernel taking them as run-time arguments ran
    MaxPool 2.3x slower. One small module per geometry, shared by every layer that has it."""
    args = ", ".join(f"a{i}" for i in range(arrays))
    consts = ", ".join(repr(v.value) for v in lits)
    work = lits[0].value * lits[1].value
    body = (f"    c = a0.shape[1]\n    planes = a0.shape[0] * c\n"
            f"    if planes * a{arrays - 1}.shape[2] * a{arrays - 1}.shape[3] * {work} < PARALLEL_MIN:\n"
            f"        for nc in range(planes):\n            {plane}({args}, nc // c, nc % c, {consts})\n"
            f"    else:\n        for nc in prange(planes):\n            {plane}({args}, nc // c, nc % c, {consts})\n")
    digest = hashlib.sha1(f"{plane}{body}".encode()).hexdigest()[:16]
    name = f"plane_{digest}"
    source = (f"from numba import njit, prange\n\nfrom codegen.cpu.kernels import PARALLEL_MIN, {plane}\n\n\n"
              f"@njit(cache=True, parallel=True, error_model='numpy')\ndef {name}({args}):\n{body}")
    return Kernel(f"mcc_{name}", name, source)


# -- views --------------------------------------------------------------------------------------


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout")
def view(node: Node) -> list[Call] | None:
    """Shape-only ops share their input's buffer (arena buffers are always contiguous)."""
    x, y = node.inputs[0], node.outputs[0]
    if len([o for o in node.outputs if o.uses or o.is_graph_output]) > 1 or not static(x) or not static(y):
        return None
    if x.dtype != y.dtype or constant_value(x) is not None:
        return None
    return [Call(node, None, [Use(x)], [y], alias={id(y): x})]


# -- convolution ------------------------------------------------------------------------------


def _geometry(node: Node, x: Value, kernel: list[int], a: dict[str, Any], ceil_mode: int = 0
              ) -> tuple[list[int], list[int], list[int]] | None:
    """strides, dilations, begin pads for a 2-D window op (1-D ops are seen as 1 x L)."""
    nd = len(kernel)
    s, d, p = _spatial_attrs(nd, a.get("strides"), a.get("dilations"), a.get("pads"))
    try:
        geo = _window_geometry(shape(x)[2:], kernel, s, d, p, a.get("auto_pad") or "NOTSET", ceil_mode)
    except NotImplementedError:
        return None
    begins = [g[1] for g in geo]
    if nd == 1:
        return [1, s[0]], [1, d[0]], [0, begins[0]]
    return s, d, begins


def _conv_window(node: Node, x: Value, wc: np.ndarray, a: dict[str, Any]) -> tuple[int, ...] | None:
    """(kh, kw, sh, sw, ph, pw, dh, dw) of a 1-D or 2-D convolution (1-D seen as 1 x L), begin pads."""
    kernel = list(a.get("kernel_shape") or wc.shape[2:])
    geo = _geometry(node, x, kernel, a)
    if geo is None:
        return None
    (sh, sw), (dh, dw), (ph, pw) = geo
    kh, kw = (1, kernel[0]) if len(kernel) == 1 else kernel
    return kh, kw, sh, sw, ph, pw, dh, dw


@rule("Conv")
def conv(node: Node) -> list[Call] | None:
    """Depthwise convolutions run direct loops; the rest im2col + sgemm (1x1 skips im2col).

    Biases were split off into the epilogue before fusion (see `prepare`), so only a bias that
    remains (none in practice) is added here.
    """
    x, w = node.inputs[0], node.inputs[1]
    b = node.input(2)
    y = node.outputs[0]
    wc = constant_value(w)
    if not f32(x, w, y) or wc is None or b is not None or len(shape(x)) not in (3, 4):
        return None
    a = attrs(node)
    window = _conv_window(node, x, wc, a)
    if window is None:
        return None
    kh, kw, sh, sw, ph, pw, dh, dw = window
    xs, ys = shape(x), shape(y)
    n, c = xs[0], xs[1]
    co = ys[1]
    x4 = (n, c, 1, xs[2]) if len(xs) == 3 else xs
    y4 = (n, co, 1, ys[2]) if len(ys) == 3 else ys
    group = int(a.get("group", 1))
    lits = [Lit(v) for v in (kh, kw, sh, sw, ph, pw, dh, dw)]
    if group == c and co == c and group > 1:
        return [Call(node, planewise("_depthwise_plane", 3, lits), [Use(x, x4), Const(wc.reshape(c, kh, kw)), Use(y, y4)],
                     [y], note="depthwise")]
    cig, cog = c // group, co // group
    direct = kh == kw == 1 and sh == sw == 1 and ph == pw == 0
    pixels = y4[2] * y4[3]
    if group == 1:
        sparse = _sparse_conv(node, wc, x, y, x4, y4, lits, direct)
        if sparse is not None:
            return sparse
        if direct_conv.worth_it(c, co, kh, kw, sh, y4[2], y4[3]):
            wd = direct_conv.pack(np.ascontiguousarray(wc.reshape(co, c, kh, kw), np.float32))
            return [Call(node, k("conv2d_direct", "codegen.cpu.direct_conv"), [Use(x, x4), Const(wd), Use(y, y4), *lits],
                         [y], note="direct")]
    wm = np.stack([pack_a(np.ascontiguousarray(wg, np.float32)) for wg in wc.reshape(group, cog, cig * kh * kw)])
    cols = Scratch((1, 1) if direct else (cig * kh * kw, pixels), np.dtype(np.float32))
    return [Call(node, k("conv2d"), [Use(x, x4), Const(wm), cols, Use(y, (n, co, y4[2] * y4[3])), *lits, Lit(group),
                                     Lit(y4[3])],
                 [y], note="1x1 as gemm" if direct else "im2col + gemm")]


def conv_epilogue(node: Node, following: list[Node], escaping: set[int]) -> tuple[list[Call], int] | None:
    """A float32 Conv whose kernel can apply an epilogue at its store, with the Add(per-channel
    bias) and Relu or Clip after it in its fusion group (`match_epilogue`): the activation is
    written once, already biased and clamped, instead of written, then read and written again by
    an elementwise kernel. The bits are the same either way (one float32 add, then np.maximum /
    np.minimum). Kernels that take it: the direct convolution."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
        return None
    base = conv(node)
    if base is None or len(base) != 1 or base[0].kernel is None or base[0].kernel.name != "conv2d_direct":
        return None
    y = node.outputs[0]
    ep = match_epilogue(y, shape(y)[1], following, escaping, residual=False, clip=True)
    if ep is None:
        return None
    xv, wd, yv, *lits = base[0].args
    assert isinstance(yv, Use)
    bias = ep.bias if ep.bias is not None else np.zeros(0, np.float32)
    clamp = np.array([-np.inf if ep.lo is None else ep.lo, np.inf if ep.hi is None else ep.hi], np.float32)
    steps = ("+bias " if ep.bias is not None else "") + ("" if ep.lo is None and ep.hi is None else
                                                          "relu" if (ep.lo, ep.hi) == (0.0, None) else "clip")
    return [Call(node, k("conv2d_direct_ep", "codegen.cpu.direct_conv"),
                 [xv, wd, Const(bias), Const(clamp), Use(ep.out, yv.shape), *lits], [ep.out],
                 note=f"direct {steps}".rstrip())], ep.taken


def _sparse_conv(node: Node, wc: np.ndarray, x: Value, y: Value, x4: tuple[int, ...], y4: tuple[int, ...],
                 lits: list[Lit], direct: bool) -> list[Call] | None:
    """Sparse weights (70%+ zeros, or 2:4) run as sparse x dense products when the cost model of
    `codegen.cpu.sparse` says that beats the dense sgemm for this layer's size."""
    co, ci = wc.shape[0], wc.shape[1]
    pixels = y4[2] * y4[3]
    channel_major = wc.reshape(co, -1).astype(np.float32)
    tap_major = np.ascontiguousarray(wc.reshape(co, ci, -1).transpose(0, 2, 1).reshape(co, -1), np.float32)
    fmt = sparse.choose_format(channel_major, p=pixels)
    if fmt is None and sparse.is_two_of_four(tap_major):
        fmt = sparse.choose_format(tap_major, p=pixels)
    if fmt is None:
        return None
    cols = Scratch((1, 1) if direct else (channel_major.shape[1], pixels), np.dtype(np.float32))
    yv = Use(y, (y4[0], co, pixels))
    if fmt == "csr":
        sw = sparse.pack(channel_major, "csr")
        arrays = [Const(sw.arrays["indptr"]), Const(sw.arrays["indices"]), Const(sw.arrays["values"])]
        return [Call(node, k("conv2d_csr"), [Use(x, x4), *arrays, cols, yv, *lits, Lit(y4[3])], [y],
                     note=f"sparse csr, {1 - sw.nnz / channel_major.size:.0%} zeros")]
    sw = sparse.pack(tap_major, "2:4")
    return [Call(node, k("conv2d_24"), [Use(x, x4), Const(sw.arrays["values"]), Const(sw.arrays["idx"]), cols, yv,
                                        *lits, Lit(y4[3])], [y], note="sparse 2:4")]


@rule("ConvInteger")
def conv_integer(node: Node) -> list[Call] | None:
    """u8 x s8 convolution through the integer microkernels of `qgemm` (exact int32); depthwise
    ones run direct loops. The quantized tensors come from `prepare`'s QDQ rewrite."""
    x, w = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    wc = constant_value(w)
    zxv = constant_value(node.input(2)) if node.input(2) is not None else np.zeros((), np.uint8)
    zw = constant_value(node.input(3)) if node.input(3) is not None else np.zeros((), np.int8)
    if (not static(x) or not static(y) or x.dtype != DType.UINT8 or wc is None or wc.dtype != np.int8
            or zxv is None or zxv.size != 1 or zw is None or np.any(zw != 0) or len(shape(x)) != 4):
        return None
    a = attrs(node)
    window = _conv_window(node, x, wc, a)
    if window is None:
        return None
    kh, kw, sh, sw, ph, pw, dh, dw = window
    xs, ys = shape(x), shape(y)
    c, co = xs[1], ys[1]
    group = int(a.get("group", 1))
    zx = int(zxv.reshape(-1)[0])
    lits = [Lit(v) for v in (kh, kw, sh, sw, ph, pw, dh, dw)]
    if group == c == co and group > 1:
        return [Call(node, k("depthwise_integer"), [Use(x), Const(np.ascontiguousarray(wc.reshape(c, kh, kw))),
                                                    Lit(zx), Use(y), *lits], [y], note="depthwise int8")]
    if group != 1:
        return None
    wm = np.ascontiguousarray(wc.reshape(co, -1))
    kk = wm.shape[1]
    exact8 = bool(wm.min() < -64 or wm.max() > 63)  # 7-bit weights cannot saturate vpmaddubsw
    direct = kh == kw == 1 and sh == sw == 1 and ph == pw == 0 and c % 4 == 0
    cols = Scratch((1, 1) if direct else (qgemm.padded_k(kk), ys[2] * ys[3]), np.dtype(np.uint8))
    return [Call(node, k("conv_integer"), [Use(x), Const(qgemm.pack_weights(wm)),
                                           Const(wm.astype(np.int32).sum(axis=1).astype(np.int32)), Lit(zx), cols,
                                           Use(y, (ys[0], co, ys[2] * ys[3])), *lits, Lit(ys[3]), Lit(exact8)],
                 [y], note=f"int8 {qgemm.HOST_ISA}{' exact8' if exact8 else ''}")]


# -- matrix products --------------------------------------------------------------------------


@rule("MatMul")
def matmul(node: Node) -> list[Call] | None:
    """A constant right-hand side makes one sgemm over all rows; otherwise one per batch entry."""
    a, b = node.inputs
    y = node.outputs[0]
    if not f32(a, b, y) or len(shape(a)) < 2 or len(shape(b)) < 2:
        return None
    sa, sb, sy = shape(a), shape(b), shape(y)
    m, kk = sa[-2], sa[-1]
    nn = sb[-1]
    bc = constant_value(b)
    if len(sb) == 2:
        rows = int(np.prod(sa[:-1]))
        return [Call(node, k("matmul"), [Use(a, (rows, kk)), arg(b), Use(y, (rows, nn))], [y])]
    batch = int(np.prod(sy[:-2]))
    ba, bb = int(np.prod(sa[:-2])), int(np.prod(sb[:-2]))
    if ba not in (1, batch) or bb not in (1, batch) or (ba != batch and len(sa) > 2 and sa[:-2] != sy[:-2] and ba != 1):
        return None
    if ba == batch and sa[:-2] != sy[:-2] or bb == batch and sb[:-2] != sy[:-2]:
        return None  # a batch broadcast that is not all-or-nothing
    b_arg = Const(np.ascontiguousarray(bc).reshape(bb, kk, nn)) if bc is not None else Use(b, (bb, kk, nn))
    return [Call(node, k("batched_matmul"), [Use(a, (ba, m, kk)), b_arg, Use(y, (batch, m, nn))], [y])]


@rule("Gemm")
def gemm(node: Node) -> list[Call] | None:
    """alpha and a transposed constant B are folded into the packed weights; C was split off."""
    a, b = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    at = attrs(node)
    if node.input(2) is not None or at.get("transA") or not f32(a, b, y) or len(shape(a)) != 2:
        return None
    alpha = float(at.get("alpha", 1.0))
    bc = constant_value(b)
    if bc is not None:
        bm = bc.T if at.get("transB") else bc
        if alpha != 1.0:
            bm = bm * np.float32(alpha)
        return [Call(node, k("matmul"), [Use(a), Const(np.ascontiguousarray(bm, np.float32)), Use(y)], [y])]
    if alpha != 1.0:
        return None
    return [Call(node, k("matmul_bt" if at.get("transB") else "matmul"), [Use(a), Use(b), Use(y)], [y])]


# -- pooling ----------------------------------------------------------------------------------


def maxpool_window(node: Node) -> tuple[tuple[int, ...], tuple[int, ...], list[Lit]] | None:
    """(x and y as 4-D views, window literals kh, kw, sh, sw, ph, pw, dh, dw) of a 1-D or 2-D
    float32 MaxPool whose Indices output is unused; None otherwise. Both targets' rules use it."""
    x, y = node.inputs[0], node.outputs[0]
    a = attrs(node)
    if len(node.outputs) > 1 and (node.outputs[1].uses or node.outputs[1].is_graph_output):
        return None
    if not f32(x, y) or len(shape(x)) not in (3, 4):
        return None
    kernel = list(a["kernel_shape"])
    geo = _geometry(node, x, kernel, a, int(a.get("ceil_mode", 0)))
    if geo is None:
        return None
    (sh, sw), (dh, dw), (ph, pw) = geo
    kh, kw = (1, kernel[0]) if len(kernel) == 1 else kernel
    xs, ys = shape(x), shape(y)
    x4 = (xs[0], xs[1], 1, xs[2]) if len(xs) == 3 else xs
    y4 = (ys[0], ys[1], 1, ys[2]) if len(ys) == 3 else ys
    return x4, y4, [Lit(int(v)) for v in (kh, kw, sh, sw, ph, pw, dh, dw)]


@rule("MaxPool")
def maxpool(node: Node) -> list[Call] | None:
    window = maxpool_window(node)
    if window is None:
        return None
    x4, y4, geometry = window
    return [Call(node, planewise("_maxpool_plane", 2, geometry), [Use(node.inputs[0], x4), Use(node.outputs[0], y4)],
                 [node.outputs[0]])]


def avgpool_window(node: Node) -> list[Lit] | None:
    """Window literals (kh, kw, sh, sw, ph, pw, count_include_pad) of a 2-D float32 AveragePool the
    kernels take: no dilations; count_include_pad only with symmetric explicit pads and no ceil_mode
    (the window counts then follow from the begin pads alone). Both targets' rules use it."""
    x, y = node.inputs[0], node.outputs[0]
    a = attrs(node)
    if not f32(x, y) or len(shape(x)) != 4 or any(d != 1 for d in (a.get("dilations") or [1])):
        return None
    kernel = list(a["kernel_shape"])
    s, _, p = _spatial_attrs(2, a.get("strides"), None, a.get("pads"))
    include = int(a.get("count_include_pad", 0))
    ceil = int(a.get("ceil_mode", 0))
    if include and (ceil or p[0] != p[2] or p[1] != p[3] or (a.get("auto_pad") or "NOTSET") != "NOTSET"):
        return None
    geo = _geometry(node, x, kernel, a, ceil)
    if geo is None:
        return None
    (sh, sw), _, (ph, pw) = geo
    return [Lit(int(v)) for v in (kernel[0], kernel[1], sh, sw, ph, pw)] + [Lit(bool(include))]


@rule("AveragePool")
def avgpool(node: Node) -> list[Call] | None:
    geometry = avgpool_window(node)
    if geometry is None:
        return None
    return [Call(node, planewise("_avgpool_plane", 2, geometry), [Use(node.inputs[0]), Use(node.outputs[0])],
                 [node.outputs[0]])]


@rule("GlobalAveragePool", "GlobalMaxPool")
def global_pool(node: Node) -> list[Call] | None:
    x, y = node.inputs[0], node.outputs[0]
    if not f32(x, y) or len(shape(x)) < 3:
        return None
    xs = shape(x)
    rows = xs[0] * xs[1]
    fn = "global_avgpool" if node.op_type == "GlobalAveragePool" else "global_maxpool"
    return [Call(node, k(fn), [Use(x, (rows, int(np.prod(xs[2:])))), Use(y, (rows,))], [y])]
