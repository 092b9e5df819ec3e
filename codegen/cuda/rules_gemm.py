"""CUDA selection rules for convolution and matrix products: Conv, ConvInteger, MatMul, Gemm,
ConvTranspose, lowered to the kernels of `codegen.cuda.gemm`.

The applicability checks mirror the CPU rules (`codegen.cpu.rules`, `codegen.cpu.rules_extra`):
static shapes, float32 (uint8 x int8 for ConvInteger), constant weights for convolutions. Weights
are packed here, at lowering time, into the layouts the kernels read (`Const`), and the tile
configuration is chosen from the layer's shape and passed as a literal. 1-D convolutions are seen
as 1 x L images. Conv biases are normally split off into an Add before the rules run (`prepare`);
a constant bias that remains is added in the kernel's epilogue.
"""

from __future__ import annotations

import numpy as np

from ir import DType, Node, Value
from ir.ops import constant_value

from ..cpu.rules import _conv_window
from ..cpu.rules_extra import convtranspose_window
from ..lower import match_epilogue
from ..program import Call, Const, Lit, Use
from . import gemm
from .rules import arg, attrs, f32, k, rule, shape, static

KERNELS = "codegen.cuda.gemm"
#: 1x1 stride-1 convolutions with at least this many pixels per image run as per-image SGEMMs; smaller
#: images (late layers) go through the implicit GEMM, which folds the batch into N.
GEMM_1X1_MIN_PIXELS = 256


def _bias(b: Value | None, co: int, dtype: type) -> Const | Use | None:
    """The bias operand [Cout]: zeros when absent, None when it cannot be used."""
    if b is None:
        return Const(np.zeros(co, dtype))
    bc = constant_value(b)
    if bc is not None:
        if bc.size != co:
            return None
        return Const(np.ascontiguousarray(bc, dtype).reshape(co))
    if dtype is np.float32 and f32(b) and int(np.prod(shape(b))) == co:
        return Use(b, (co,))
    return None


def _views(x: Value, y: Value) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """4-D views of a 1-D or 2-D convolution's input and output (1-D as 1 x L)."""
    xs, ys = shape(x), shape(y)
    x4 = (xs[0], xs[1], 1, xs[2]) if len(xs) == 3 else xs
    y4 = (ys[0], ys[1], 1, ys[2]) if len(ys) == 3 else ys
    return x4, y4


def _implicit_gemm(node: Node, x: Value, y: Value, wc: np.ndarray, bias: Const | Use, group: int,
                   window: tuple[int, ...], integer: bool, zx: int = 0) -> list[Call]:
    """The implicit-GEMM call of a (grouped) convolution: weights packed, gather table, tile, splits."""
    kh, kw, sh, sw, ph, pw, dh, dw = window
    x4, y4 = _views(x, y)
    n, c, h, w = x4
    co, ho, wo = y4[1], y4[2], y4[3]
    cog, cig = co // group, c // group
    tile = gemm.choose_tile(cog, n * ho * wo, group)
    wt = gemm.pack_conv_weights(np.ascontiguousarray(wc).reshape(co, cig, kh, kw), group, tile)
    ktab = gemm.conv_ktab(cig, h, w, kh, kw, dh, dw, wt.shape[1])
    splits = gemm.choose_splits(tile, cog, n * ho * wo, group, wt.shape[1])
    geometry = Lit((c, h, w, wo, sh, sw, ph, pw))
    xv, yv = Use(x, (n * c * h * w,)), Use(y, (n, co, ho * wo))
    note = f"implicit gemm {tile[0]}x{tile[1]}" + (f" split-k {splits}" if splits > 1 else "") + (
        f" groups {group}" if group > 1 else "")
    if integer:
        return [Call(node, k("conv_integer", KERNELS), [xv, Const(wt), Const(ktab), bias, yv, Lit(zx), geometry,
                                                        Lit(tile), Lit(splits)], [y], note="int8 " + note)]
    return [Call(node, k("conv2d", KERNELS), [xv, Const(wt), Const(ktab), bias, yv, geometry, Lit(tile), Lit(splits)],
                 [y], note=note)]


@rule("Conv")
def conv(node: Node) -> list[Call] | None:
    """Depthwise convolutions (one filter per channel, or a channel multiplier) run direct; 1x1
    stride-1 unpadded ones on large images run as SGEMM per image; the rest as implicit GEMM."""
    x, w, b = node.inputs[0], node.inputs[1], node.input(2)
    y = node.outputs[0]
    wc = constant_value(w)
    if not f32(x, w, y) or wc is None or len(shape(x)) not in (3, 4) or len(shape(y)) != len(shape(x)):
        return None
    a = attrs(node)
    window = _conv_window(node, x, wc, a)
    if window is None:
        return None
    kh, kw, sh, sw, ph, pw, dh, dw = window
    x4, y4 = _views(x, y)
    n, c = x4[0], x4[1]
    co = y4[1]
    group = int(a.get("group", 1))
    if group < 1 or c % group or co % group or wc.shape[0] != co or wc.shape[1] != c // group:
        return None
    bias = _bias(b, co, np.float32)
    if bias is None:
        return None
    if group == c and group > 1:
        wd = np.ascontiguousarray(wc, np.float32).reshape(co, kh, kw)
        return [Call(node, k("depthwise_conv2d", KERNELS),
                     [Use(x, x4), Const(wd), bias, Use(y, y4), *(Lit(v) for v in (sh, sw, ph, pw, dh, dw))],
                     [y], note="depthwise")]
    pixels = y4[2] * y4[3]
    if (group == 1 and b is None and kh == kw == 1 and sh == sw == 1 and ph == pw == 0
            and pixels >= GEMM_1X1_MIN_PIXELS):
        tile = gemm.choose_tile(co, pixels, n)
        wt = np.ascontiguousarray(wc.reshape(co, c).T, np.float32).reshape(1, c, co)
        return [Call(node, k("matmul", KERNELS), [Const(wt), Use(x, (n, c, pixels)), Use(y, (n, co, pixels)),
                                                  Lit(True), Lit(False), Lit(tile)],
                     [y], note=f"1x1 as sgemm {tile[0]}x{tile[1]}")]
    return _implicit_gemm(node, x, y, np.asarray(wc, np.float32), bias, group, window, integer=False)


@rule("ConvInteger")
def conv_integer(node: Node) -> list[Call] | None:
    """uint8 x int8 -> int32 convolution, exact: implicit GEMM over int32, depthwise direct. The
    quantized tensors come from `prepare`'s QDQ rewrite (weight zero point 0, scalar x zero point)."""
    x, w = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    wc = constant_value(w)
    zxv = constant_value(node.input(2)) if node.input(2) is not None else np.zeros((), np.uint8)
    zw = constant_value(node.input(3)) if node.input(3) is not None else np.zeros((), np.int8)
    if (not static(x) or not static(y) or x.dtype != DType.UINT8 or y.dtype != DType.INT32 or wc is None
            or wc.dtype != np.int8 or zxv is None or zxv.size != 1 or zw is None or np.any(zw != 0)
            or len(shape(x)) not in (3, 4) or len(shape(y)) != len(shape(x))):
        return None
    a = attrs(node)
    window = _conv_window(node, x, wc, a)
    if window is None:
        return None
    kh, kw, sh, sw, ph, pw, dh, dw = window
    x4, y4 = _views(x, y)
    c, co = x4[1], y4[1]
    group = int(a.get("group", 1))
    if group < 1 or c % group or co % group or wc.shape[0] != co or wc.shape[1] != c // group:
        return None
    zx = int(zxv.reshape(-1)[0])
    bias = Const(np.zeros(co, np.int32))
    if group == c and group > 1:
        wd = np.ascontiguousarray(wc).reshape(co, kh, kw)
        return [Call(node, k("depthwise_conv_integer", KERNELS),
                     [Use(x, x4), Const(wd), bias, Use(y, y4), Lit(zx), *(Lit(v) for v in (sh, sw, ph, pw, dh, dw))],
                     [y], note="depthwise int8")]
    return _implicit_gemm(node, x, y, wc, bias, group, window, integer=True, zx=zx)


@rule("MatMul")
def matmul(node: Node) -> list[Call] | None:
    """A 2-D right-hand side makes one SGEMM over all rows of A; otherwise a batched SGEMM, with a
    batch-1 operand broadcast (all-or-nothing batch broadcasts, as on the CPU)."""
    a, b = node.inputs
    y = node.outputs[0]
    if not f32(a, b, y) or len(shape(a)) < 2 or len(shape(b)) < 2:
        return None
    sa, sb, sy = shape(a), shape(b), shape(y)
    m, kk = sa[-2], sa[-1]
    nn = sb[-1]
    if sb[-2] != kk:
        return None
    if len(sb) == 2:
        rows = int(np.prod(sa[:-1]))
        tile = gemm.choose_tile(rows, nn)
        return [Call(node, k("matmul", KERNELS), [arg(a, (1, rows, kk)), arg(b, (1, kk, nn)), Use(y, (1, rows, nn)),
                                                  Lit(False), Lit(False), Lit(tile)], [y], note=f"sgemm {tile[0]}x{tile[1]}")]
    batch = int(np.prod(sy[:-2]))
    ba, bb = int(np.prod(sa[:-2])), int(np.prod(sb[:-2]))
    if ba not in (1, batch) or bb not in (1, batch):
        return None
    if ba == batch and batch > 1 and sa[:-2] != sy[:-2] or bb == batch and batch > 1 and sb[:-2] != sy[:-2]:
        return None  # a batch broadcast that is not all-or-nothing
    tile = gemm.choose_tile(m, nn, batch)
    return [Call(node, k("matmul", KERNELS), [arg(a, (ba, m, kk)), arg(b, (bb, kk, nn)), Use(y, (batch, m, nn)),
                                              Lit(False), Lit(False), Lit(tile)],
                 [y], note=f"batched sgemm {tile[0]}x{tile[1]}")]


@rule("Gemm")
def gemm_rule(node: Node) -> list[Call] | None:
    """alpha and transB of a constant B are folded into the packed weights (C was split off into an
    Add by `prepare`); a run-time B is read transposed in place, transA likewise."""
    a, b = node.inputs[0], node.inputs[1]
    y = node.outputs[0]
    at = attrs(node)
    if node.input(2) is not None or not f32(a, b, y) or len(shape(a)) != 2 or len(shape(b)) != 2:
        return None
    trans_a, trans_b = bool(at.get("transA")), bool(at.get("transB"))
    alpha = float(at.get("alpha", 1.0))
    m, kk = shape(a)[::-1] if trans_a else shape(a)
    nn = shape(y)[1]
    tile = gemm.choose_tile(m, nn)
    av = arg(a, (1, *shape(a)))
    bc = constant_value(b)
    if bc is not None:
        bm = bc.T if trans_b else bc
        if alpha != 1.0:
            bm = bm * np.float32(alpha)
        bv: Use | Const = Const(np.ascontiguousarray(bm, np.float32).reshape(1, kk, nn))
        trans_b = False
    elif alpha != 1.0:
        return None
    else:
        bv = Use(b, (1, *shape(b)))
    return [Call(node, k("matmul", KERNELS), [av, bv, Use(y, (1, m, nn)), Lit(trans_a), Lit(trans_b), Lit(tile)],
                 [y], note=f"sgemm {tile[0]}x{tile[1]}")]


@rule("ConvTranspose")
def conv_transpose(node: Node) -> list[Call] | None:
    """1-D/2-D ConvTranspose with constant weights as a gather (each output sums the taps that reach
    it), bias added in the kernel; the geometry is the CPU rule's (`convtranspose_window`)."""
    t = convtranspose_window(node)
    if t is None:
        return None
    kh, kw, sh, sw, dh, dw, ph, pw = t.window
    bias = _bias(node.input(2), t.y4[1], np.float32)
    if bias is None:
        return None
    wp = gemm.pack_conv_transpose_weights(t.weights.reshape(t.x4[1], t.per_group, kh, kw), t.group)
    return [Call(node, k("conv_transpose2d", KERNELS),
                 [arg(node.inputs[0], t.x4), Const(wp), bias, Use(node.outputs[0], t.y4),
                  *(Lit(v) for v in (sh, sw, ph, pw, dh, dw)), Lit(t.group)],
                 [node.outputs[0]], note="gather")]


# -- epilogues ----------------------------------------------------------------------------------


def conv_epilogue(node: Node, following: list[Node], escaping: set[int]) -> tuple[list[Call], int] | None:
    """A float32 convolution and the epilogue after it in its fusion group, as one implicit GEMM:
    Add(per-channel constant: the bias `prepare` split off), then an Add of a tensor shaped like
    the output (a residual), then Relu, each optional but in that order. Every value in between
    must be read only by the next step. The output is then written once, already activated,
    instead of written, read and written again by an elementwise kernel (ResNet-50 at batch 32:
    one pass over every activation less). Split-K sums cannot take a ReLU or residual: those
    layers keep the separate kernel."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input(2) is not None:
        return None
    x, w, y = node.inputs[0], node.inputs[1], node.outputs[0]
    wc = constant_value(w)
    if not f32(x, w, y) or wc is None or len(shape(x)) != 4 or len(shape(y)) != 4:
        return None
    a = attrs(node)
    group = int(a.get("group", 1))
    window = _conv_window(node, x, wc, a)
    co = shape(y)[1]
    if window is None or (group == shape(x)[1] and group > 1) or wc.shape[0] != co:
        return None
    ep = match_epilogue(y, co, following, escaping, residual=True, clip=False)
    if ep is None:
        return None
    cur, taken, res, relu = ep.out, ep.taken, ep.residual, ep.lo is not None
    bias = Const(ep.bias if ep.bias is not None else np.zeros(co, np.float32))
    base = _implicit_gemm(node, x, cur, np.asarray(wc, np.float32), bias, group, window, integer=False)
    xv, wt, ktab, _, yv, geometry, tile, splits = base[0].args
    epilogue = ("add" if res is not None else "") + ("_relu" if relu and res is not None else "relu" if relu else "")
    if splits.value != 1 and epilogue:  # type: ignore[union-attr]
        return None
    if not epilogue:  # a bias alone: the plain kernel adds it (split-K included)
        return [Call(node, base[0].kernel, [xv, wt, ktab, bias, yv, geometry, tile, splits], [cur],
                     note=base[0].note + " +bias")], taken
    rv = Use(res, shape(cur)[:2] + (shape(cur)[2] * shape(cur)[3],)) if res is not None else yv
    # the output may overwrite a dying residual (each element is read, then written, by one thread),
    # but never the convolution's own input, which other blocks still gather from
    inplace = [(cur, res)] if res is not None and _root(res) is not _root(x) else []
    return [Call(node, k("conv2d_fused", KERNELS), [xv, wt, ktab, bias, rv, yv, geometry, tile, Lit(epilogue)],
                 [cur], inplace=inplace,
                 note=f"{base[0].note} +bias {epilogue.replace('_', '+')}")], taken


def _root(v: Value) -> Value:
    """The tensor whose buffer `v` is, through shape-only ops (which share their input's buffer)."""
    while v.producer is not None and v.producer.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"):
        v = v.producer.inputs[0]
    return v
