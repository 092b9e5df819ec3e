"""Deterministic builders for realistic ONNX test models.

Each builder reproduces the graph *shapes* that real exporters emit (PyTorch's
``torch.onnx.export`` and Paddle2ONNX), not just the layer types: decomposed
activations, shape arithmetic feeding ``Reshape``/``Resize``, opset-dependent
operator forms, ``Constant``-node weights, control flow reading outer scope.
That is what import/export, the reference interpreter, pruning, quantization
and codegen have to cope with, so tests should exercise it.

Weights are random but seeded (numpy ``default_rng``), so a builder called
twice with the same arguments returns byte-identical models.  Every model is
small (< 2 MB of weights) and runs in onnxruntime in milliseconds.

Valid ranges for integer inputs (e.g. a TopK ``k``) are recorded in the model's
``metadata_props`` under ``mcc.input_range.<input name>`` as ``"lo,hi"``
(inclusive), which :func:`sample_inputs` honours.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

Dim = int | str
"""A tensor dimension: a concrete size or a symbolic name (``dim_param``)."""

DEFAULT_DIMS: dict[str, int] = {"N": 2, "H": 32, "W": 32}
"""Sizes :func:`sample_inputs` uses for symbolic dims the caller does not give."""

INPUT_RANGE_KEY = "mcc.input_range."
"""``metadata_props`` key prefix giving the valid inclusive range of an integer input."""

PRODUCER = "mcc.tests.models"


class _GraphBuilder:
    """Accumulates the nodes and weights of one (sub)graph.

    The op helpers pick the operator form the target opset requires (attribute
    vs. input for Clip bounds, Squeeze/Unsqueeze/Reduce axes, Resize inputs),
    so one builder body produces a valid model at every supported opset.
    """

    def __init__(
        self,
        opset: int,
        rng: np.random.Generator,
        *,
        weights_as_constants: bool = False,
        paddle_names: bool = False,
        counts: Counter[str] | None = None,
    ) -> None:
        self.opset = opset
        self.rng = rng
        self.weights_as_constants = weights_as_constants
        self.paddle_names = paddle_names
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: Counter[str] = counts if counts is not None else Counter()

    # ----------------------------------------------------------- naming & plumbing
    def _next(self, key: str) -> int:
        index = self._counts[key]
        self._counts[key] += 1
        return index

    def fresh(self, hint: str) -> str:
        """A new activation name; Paddle-style models get Paddle's ``op_N.tmp_0`` names."""
        index = self._next(hint)
        return f"{hint}_{index}.tmp_0" if self.paddle_names else f"{hint}_{index}"

    def fresh_weight(self, hint: str) -> str:
        """A new weight name (``conv2d_3.w_0`` Paddle-style, ``conv.weight_3`` otherwise)."""
        index = self._next("w:" + hint)
        return f"{hint}_{index}.w_0" if self.paddle_names else f"{hint}.weight_{index}"

    def subgraph(self) -> _GraphBuilder:
        """A builder for an If/Loop body sharing names and RNG with this one.

        Body-local constants become ``Constant`` nodes, as exporters emit them.
        """
        return _GraphBuilder(
            self.opset,
            self.rng,
            weights_as_constants=True,
            paddle_names=self.paddle_names,
            counts=self._counts,
        )

    def op_multi(
        self,
        op_type: str,
        inputs: Sequence[str],
        n_out: int,
        *,
        outs: Sequence[str] | None = None,
        hint: str | None = None,
        **attrs: object,
    ) -> list[str]:
        """Append one node with ``n_out`` outputs (fresh unless ``outs`` names them)."""
        outputs = list(outs) if outs is not None else [self.fresh(hint or op_type.lower()) for _ in range(n_out)]
        name = f"{op_type}_{self._next('node:' + op_type)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs

    def op(
        self, op_type: str, inputs: Sequence[str], *, out: str | None = None, hint: str | None = None, **attrs: object
    ) -> str:
        """Append a single-output node and return its output name (``out`` if given)."""
        return self.op_multi(op_type, inputs, 1, outs=None if out is None else [out], hint=hint, **attrs)[0]

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        """Add a tensor as an initializer, or as a ``Constant`` node in Paddle/subgraph mode."""
        name = self.fresh_weight(hint)
        tensor = numpy_helper.from_array(value, name)
        if self.weights_as_constants:
            self.op("Constant", [], out=name, value=tensor)
        else:
            self.initializers.append(tensor)
        return name

    def f32(self, value: float | Sequence[float]) -> str:
        return self.const(np.asarray(value, dtype=np.float32), "const")

    def i64(self, value: int | Sequence[int]) -> str:
        return self.const(np.asarray(value, dtype=np.int64), "const")

    def weight(self, shape: Sequence[int], fan_in: int, hint: str) -> str:
        """He-initialised float32 weight, scaled so deep stacks stay finite."""
        std = math.sqrt(2.0 / fan_in)
        return self.const((self.rng.standard_normal(shape) * std).astype(np.float32), hint)

    def bias(self, n: int, hint: str) -> str:
        return self.const((self.rng.standard_normal(n) * 0.05).astype(np.float32), hint)

    # ---------------------------------------------------------- opset-aware forms
    def clip(self, x: str, lo: float, hi: float) -> str:
        """Clip: bounds are attributes before opset 11 and inputs from 11 on."""
        if self.opset < 11:
            return self.op("Clip", [x], min=lo, max=hi)
        return self.op("Clip", [x, self.f32(lo), self.f32(hi)])

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        """Unsqueeze: axes attribute before opset 13, int64 input from 13 on."""
        if self.opset < 13:
            return self.op("Unsqueeze", [x], axes=list(axes))
        return self.op("Unsqueeze", [x, self.i64(list(axes))])

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        """Squeeze: axes attribute before opset 13, int64 input from 13 on."""
        if self.opset < 13:
            return self.op("Squeeze", [x], axes=list(axes))
        return self.op("Squeeze", [x, self.i64(list(axes))])

    def reduce(self, op_type: str, x: str, axes: Sequence[int], *, keepdims: bool, out: str | None = None) -> str:
        """Reduce*: axes become an input at opset 13 for ReduceSum, at 18 for the rest."""
        if self.opset >= (13 if op_type == "ReduceSum" else 18):
            return self.op(op_type, [x, self.i64(list(axes))], out=out, keepdims=int(keepdims))
        return self.op(op_type, [x], out=out, axes=list(axes), keepdims=int(keepdims))

    def slice(self, x: str, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int]) -> str:
        """Slice with starts/ends/axes as inputs (opset >= 10)."""
        return self.op("Slice", [x, self.i64(list(starts)), self.i64(list(ends)), self.i64(list(axes))])

    def resize_to(self, x: str, sizes: str) -> str:
        """Nearest Resize to a computed ``sizes`` tensor, as PyTorch exports ``F.interpolate(size=...)``.

        Opsets 11-12 require (empty) roi and scales inputs; 13+ leave them out.
        """
        if self.opset < 13:
            empty = np.zeros([0], dtype=np.float32)
            inputs = [x, self.const(empty, "roi"), self.const(empty, "scales"), sizes]
        else:
            inputs = [x, "", "", sizes]
        return self.op(
            "Resize",
            inputs,
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        )

    # ---------------------------------------------------------------- layers
    def conv(
        self,
        x: str,
        cin: int,
        cout: int,
        k: int,
        *,
        stride: int | tuple[int, int] = 1,
        group: int = 1,
        bias: bool = True,
        hint: str = "conv",
    ) -> str:
        """Conv with the full attribute set PyTorch writes (dilations, group, pads, strides)."""
        strides = [stride, stride] if isinstance(stride, int) else list(stride)
        w = self.weight([cout, cin // group, k, k], (cin // group) * k * k, hint)
        inputs = [x, w, self.bias(cout, hint + ".bias")] if bias else [x, w]
        return self.op(
            "Conv",
            inputs,
            hint=hint,
            dilations=[1, 1],
            group=group,
            kernel_shape=[k, k],
            pads=[k // 2] * 4,
            strides=strides,
        )

    def batchnorm(self, x: str, c: int) -> str:
        """Inference-mode BatchNormalization with non-trivial statistics."""
        scale = self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32), "bn.scale")
        shift = self.const((self.rng.standard_normal(c) * 0.1).astype(np.float32), "bn.bias")
        mean = self.const((self.rng.standard_normal(c) * 0.1).astype(np.float32), "bn.mean")
        var = self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32), "bn.var")
        return self.op("BatchNormalization", [x, scale, shift, mean, var], hint="bn", epsilon=1e-5)

    def relu(self, x: str) -> str:
        return self.op("Relu", [x])

    def hardswish(self, x: str) -> str:
        """``x * Clip(x + 3, 0, 6) / 6``: how PyTorch < opset 14 and Paddle export hardswish."""
        gate = self.clip(self.op("Add", [x, self.f32(3.0)]), 0.0, 6.0)
        return self.op("Div", [self.op("Mul", [x, gate]), self.f32(6.0)])

    def hardsigmoid_decomposed(self, x: str) -> str:
        """``Clip(x + 3, 0, 6) / 6``: PyTorch's ``F.hardsigmoid`` written out."""
        return self.op("Div", [self.clip(self.op("Add", [x, self.f32(3.0)]), 0.0, 6.0), self.f32(6.0)])

    def linear(self, x: str, din: int, dout: int, hint: str = "linear") -> str:
        """``x @ W + b`` as MatMul + Add: the form nn.Linear takes on >2-D inputs."""
        y = self.op("MatMul", [x, self.weight([din, dout], din, hint)])
        return self.op("Add", [y, self.bias(dout, hint + ".bias")])

    def layernorm(self, x: str, d: int, eps: float = 1e-5) -> str:
        """LayerNorm over the last axis decomposed into the primitive ops older exporters emit."""
        mean = self.reduce("ReduceMean", x, [-1], keepdims=True)
        centered = self.op("Sub", [x, mean])
        var = self.reduce("ReduceMean", self.op("Pow", [centered, self.f32(2.0)]), [-1], keepdims=True)
        std = self.op("Sqrt", [self.op("Add", [var, self.f32(eps)])])
        normed = self.op("Div", [centered, std])
        gamma = self.const(self.rng.uniform(0.8, 1.2, d).astype(np.float32), "ln.weight")
        beta = self.const((self.rng.standard_normal(d) * 0.05).astype(np.float32), "ln.bias")
        return self.op("Add", [self.op("Mul", [normed, gamma]), beta])

    def gelu(self, x: str) -> str:
        """Exact GELU, ``x * 0.5 * (1 + Erf(x / sqrt(2)))``, as exported before opset 20."""
        erf = self.op("Erf", [self.op("Div", [x, self.f32(math.sqrt(2.0))])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [erf, self.f32(1.0)])]), self.f32(0.5)])

    # ----------------------------------------------------------------- output
    def model(
        self,
        name: str,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
        *,
        doc: str,
        props: Mapping[str, str] | None = None,
    ) -> onnx.ModelProto:
        """Wrap the graph in a model with the minimal IR version the opset needs."""
        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs), initializer=self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(
            graph,
            opset_imports=opsets,
            ir_version=helper.find_min_ir_version_for(opsets),
            producer_name=PRODUCER,
            doc_string=doc,
        )
        helper.set_model_props(model, dict(props or {}))
        return model


def _float_input(name: str, shape: Sequence[Dim | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


# ------------------------------------------------------------------ MobileNetV3
def _squeeze_excite(b: _GraphBuilder, x: str, c: int, *, decomposed_gate: bool) -> str:
    """SE block; the two variants cover both ways hard-sigmoid reaches ONNX.

    ``decomposed_gate`` pools with ReduceMean and gates with Add/Clip/Div (PyTorch's
    ``F.hardsigmoid``); otherwise GlobalAveragePool and the HardSigmoid op.
    """
    pooled = b.reduce("ReduceMean", x, [2, 3], keepdims=True) if decomposed_gate else b.op("GlobalAveragePool", [x])
    squeezed = b.relu(b.conv(pooled, c, c // 4, 1, hint="se.fc1"))
    excited = b.conv(squeezed, c // 4, c, 1, hint="se.fc2")
    if decomposed_gate:
        gate = b.hardsigmoid_decomposed(excited)
    else:
        gate = b.op("HardSigmoid", [excited], alpha=1 / 6, beta=0.5)
    return b.op("Mul", [x, gate])


def _inverted_residual(
    b: _GraphBuilder, x: str, cin: int, cexp: int, cout: int, *, stride: int, folded_bn: bool
) -> str:
    """MobileNetV3 bneck: expand 1x1, depthwise 3x3, SE, project 1x1, residual when shapes allow.

    ``folded_bn`` mimics an export after BN folding (biased convs, hardswish, decomposed SE
    gate); otherwise BatchNormalization nodes follow bias-free convs (ReLU, HardSigmoid op).
    """

    def conv_bn(y: str, ci: int, co: int, k: int, **kw: int) -> str:
        if folded_bn:
            return b.conv(y, ci, co, k, **kw)
        return b.batchnorm(b.conv(y, ci, co, k, bias=False, **kw), co)

    act = b.hardswish if folded_bn else b.relu
    y = act(conv_bn(x, cin, cexp, 1))
    y = act(conv_bn(y, cexp, cexp, 3, stride=stride, group=cexp))
    y = _squeeze_excite(b, y, cexp, decomposed_gate=folded_bn)
    y = conv_bn(y, cexp, cout, 1)
    return b.op("Add", [x, y]) if stride == 1 and cin == cout else y


def mobilenetv3_block_model(
    opset: int = 13,
    batch: Dim = "N",
    hw: tuple[Dim, Dim] = ("H", "W"),
    num_classes: int = 10,
    seed: int = 0,
) -> onnx.ModelProto:
    """MobileNetV3-style classifier: the op mix of mobile vision exports.

    Stem Conv+BatchNormalization+hardswish (Add/Clip/Mul/Div); a stride-1 bneck with BN
    nodes, depthwise conv, GlobalAveragePool SE with the HardSigmoid op and a residual
    Add; a stride-2 bneck with folded BN and a ReduceMean SE gated by Add/Clip/Div;
    head GlobalAveragePool/Flatten/Gemm/Softmax.  Input ``input`` float32
    ``[batch, 3, *hw]``; output ``prob`` ``[batch, num_classes]``.  Works for opset >= 10
    (Clip bounds are attributes below 11, inputs from 11).
    """
    if opset < 10:
        raise ValueError("mobilenetv3_block_model needs opset >= 10")
    b = _GraphBuilder(opset, np.random.default_rng(seed))
    y = b.hardswish(b.batchnorm(b.conv("input", 3, 16, 3, stride=2, bias=False, hint="stem"), 16))
    y = _inverted_residual(b, y, 16, 48, 16, stride=1, folded_bn=False)
    y = _inverted_residual(b, y, 16, 64, 24, stride=2, folded_bn=True)
    y = b.hardswish(b.conv(y, 24, 96, 1, hint="head.conv"))
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    fc_w = b.weight([num_classes, 96], 96, "classifier")
    logits = b.op("Gemm", [y, fc_w, b.bias(num_classes, "classifier.bias")], alpha=1.0, beta=1.0, transB=1)
    b.op("Softmax", [logits], out="prob", axis=1)
    return b.model(
        "mobilenetv3_block",
        [_float_input("input", [batch, 3, *hw])],
        [_float_input("prob", [batch, num_classes])],
        doc=mobilenetv3_block_model.__doc__ or "",
    )


# ----------------------------------------------------------------- FPN detector
def fpn_detector_model(
    opset: int = 13,
    batch: Dim = "N",
    hw: tuple[Dim, Dim] = ("H", "W"),
    num_classes: int = 3,
    seed: int = 0,
) -> onnx.ModelProto:
    """Three-level FPN detector: the dynamic-shape plumbing of detection exports.

    Four stride-2 backbone convs give levels C2..C4 (strides 4, 8, 16); 1x1 laterals;
    top-down path upsamples C4->C3 with ConvTranspose and C3->C2 with a nearest Resize
    whose ``sizes`` are computed at runtime (Shape/Gather/Unsqueeze/Slice/Concat/Cast, as
    PyTorch exports ``F.interpolate(size=lateral.shape[-2:])``).  A shared head (weights
    reused on every level) ends in Sigmoid; per-level ``[N, HW, 4 + num_classes]`` maps
    are Concat-ed into output ``detections``.  H and W must be multiples of 16 so the
    ConvTranspose output matches the lateral.  Needs opset >= 11 (Resize ``sizes``).
    """
    if opset < 11:
        raise ValueError("fpn_detector_model needs opset >= 11")
    b = _GraphBuilder(opset, np.random.default_rng(seed))
    widths = [8, 16, 24, 32]
    feats: list[str] = []
    y, cin = "input", 3
    for i, cout in enumerate(widths):
        y = b.relu(b.conv(y, cin, cout, 3, stride=2, hint=f"backbone.{i}"))
        feats.append(y)
        cin = cout
    c2, c3, c4 = feats[1:]
    fpn = 16
    l2, l3, l4 = (b.conv(c, ci, fpn, 1, hint="lateral") for c, ci in zip((c2, c3, c4), widths[1:]))

    up_w = b.weight([fpn, fpn, 2, 2], fpn * 4, "upsample")
    up4 = b.op("ConvTranspose", [l4, up_w, b.bias(fpn, "upsample.bias")], kernel_shape=[2, 2], strides=[2, 2])
    p3 = b.op("Add", [l3, up4])

    shape_l2 = b.op("Shape", [l2])
    h = b.unsqueeze(b.op("Gather", [shape_l2, b.i64(2)], axis=0), [0])
    w = b.unsqueeze(b.op("Gather", [shape_l2, b.i64(3)], axis=0), [0])
    batch_channels = b.slice(b.op("Shape", [p3]), [0], [2], [0])
    sizes = b.op("Cast", [b.op("Concat", [batch_channels, h, w], axis=0)], to=TensorProto.INT64)
    p2 = b.op("Add", [l2, b.resize_to(p3, sizes)])

    head_c = 4 + num_classes
    head_w1 = b.weight([fpn, fpn, 3, 3], fpn * 9, "head.conv")
    head_b1 = b.bias(fpn, "head.conv.bias")
    head_w2 = b.weight([head_c, fpn, 1, 1], fpn, "head.pred")
    head_b2 = b.bias(head_c, "head.pred.bias")
    flat_shape = b.i64([0, head_c, -1])
    per_level: list[str] = []
    for p in (p2, p3, l4):
        t = b.relu(b.op("Conv", [p, head_w1, head_b1], kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
        t = b.op("Sigmoid", [b.op("Conv", [t, head_w2, head_b2], kernel_shape=[1, 1])])
        per_level.append(b.op("Transpose", [b.op("Reshape", [t, flat_shape])], perm=[0, 2, 1]))
    b.op("Concat", per_level, out="detections", axis=1)
    return b.model(
        "fpn_detector",
        [_float_input("input", [batch, 3, *hw])],
        [_float_input("detections", [batch, None, head_c])],
        doc=fpn_detector_model.__doc__ or "",
    )


# ---------------------------------------------------------- Transformer recognizer
def _dynamic_shape(b: _GraphBuilder, x: str, runtime_axes: Sequence[int], tail: Sequence[int]) -> str:
    """Reshape target ``[x.shape[a] for a in runtime_axes] + tail`` computed at runtime.

    This is the Shape/Gather/Unsqueeze/Concat chain PyTorch emits for ``x.view(n, t, h, d)``.
    """
    shape = b.op("Shape", [x])
    parts = [b.unsqueeze(b.op("Gather", [shape, b.i64(a)], axis=0), [0]) for a in runtime_axes]
    return b.op("Concat", [*parts, b.i64(list(tail))], axis=0)


def _self_attention(b: _GraphBuilder, x: str, d: int, heads: int, *, scale_by_div: bool) -> str:
    """Multi-head self-attention from MatMul/Reshape/Transpose/Softmax.

    ``scale_by_div`` selects ``scores / sqrt(dh)`` (Div) vs ``scores * (1/sqrt(dh))`` (Mul):
    both occur in real exports and fusion passes must recognise either.
    """
    dh = d // heads
    split_shape = _dynamic_shape(b, x, [0, 1], [heads, dh])
    q, k, v = (b.op("Reshape", [b.linear(x, d, d, f"attn.{n}"), split_shape]) for n in ("q", "k", "v"))
    q = b.op("Transpose", [q], perm=[0, 2, 1, 3])
    k = b.op("Transpose", [k], perm=[0, 2, 3, 1])
    v = b.op("Transpose", [v], perm=[0, 2, 1, 3])
    scores = b.op("MatMul", [q, k])
    if scale_by_div:
        scores = b.op("Div", [scores, b.f32(math.sqrt(dh))])
    else:
        scores = b.op("Mul", [scores, b.f32(1.0 / math.sqrt(dh))])
    attn = b.op("Softmax", [scores], axis=-1)
    ctx = b.op("Transpose", [b.op("MatMul", [attn, v])], perm=[0, 2, 1, 3])
    ctx = b.op("Reshape", [ctx, _dynamic_shape(b, x, [0, 1], [d])])
    return b.linear(ctx, d, d, "attn.out")


def transformer_recognizer_model(
    opset: int = 13,
    batch: Dim = "N",
    width: Dim = "W",
    seq: str = "T",
    num_classes: int = 6625,
    d_model: int = 48,
    num_heads: int = 4,
    num_layers: int = 2,
    seed: int = 0,
) -> onnx.ModelProto:
    """Text recognizer (PaddleOCR/SVTR-like): conv stem + pre-norm transformer + big softmax.

    Input ``image`` ``[batch, 3, 32, width]``.  Two stride-2 convs and a height-8
    AveragePool give ``[N, C, 1, W/4]``; Squeeze and Transpose make the ``[N, T, C]``
    sequence (T = W/4).  Each layer: decomposed LayerNorm (ReduceMean/Sub/Pow/ReduceMean/
    Add/Sqrt/Div/Mul/Add), self-attention whose head split/merge Reshapes take runtime
    shapes (Shape/Gather/Unsqueeze/Concat; even layers scale with Div, odd with Mul),
    Erf GELU MLP, residual Adds.  Head MatMul to ``num_classes`` (6625, the PaddleOCR
    Chinese dictionary) and Softmax: output ``probs`` ``[batch, seq, num_classes]``.
    Squeeze/Unsqueeze use axes attributes below opset 13 and inputs from 13; needs opset >= 11.
    """
    if opset < 11:
        raise ValueError("transformer_recognizer_model needs opset >= 11")
    b = _GraphBuilder(opset, np.random.default_rng(seed))
    y = b.relu(b.conv("image", 3, 16, 3, stride=2, hint="stem.0"))
    y = b.relu(b.conv(y, 16, 32, 3, stride=2, hint="stem.1"))
    y = b.op("AveragePool", [y], kernel_shape=[8, 1], strides=[8, 1])
    y = b.op("Transpose", [b.squeeze(y, [2])], perm=[0, 2, 1])
    y = b.linear(y, 32, d_model, "embed")
    for layer in range(num_layers):
        attn = _self_attention(b, b.layernorm(y, d_model), d_model, num_heads, scale_by_div=layer % 2 == 0)
        y = b.op("Add", [y, attn])
        hidden = b.gelu(b.linear(b.layernorm(y, d_model), d_model, 2 * d_model, "mlp.fc1"))
        mlp = b.linear(hidden, 2 * d_model, d_model, "mlp.fc2")
        y = b.op("Add", [y, mlp])
    logits = b.linear(b.layernorm(y, d_model), d_model, num_classes, "head")
    b.op("Softmax", [logits], out="probs", axis=-1)
    return b.model(
        "transformer_recognizer",
        [_float_input("image", [batch, 3, 32, width])],
        [_float_input("probs", [batch, seq, num_classes])],
        doc=transformer_recognizer_model.__doc__ or "",
    )


# ------------------------------------------------------------------ control flow
def control_flow_model(
    opset: int = 13,
    batch: Dim = "N",
    features: int = 8,
    hidden: int = 16,
    classes: int = 4,
    seed: int = 0,
) -> onnx.ModelProto:
    """Data-dependent If plus an int64 scalar input: what breaks static-graph assumptions.

    Inputs ``x`` float32 ``[batch, features]`` and ``k`` int64 scalar (shape ``[]``, valid
    range ``1..classes``, recorded in metadata).  ``h = Relu(x W1 + b1)``; an If on
    ``ReduceSum(x) > 0`` whose branches both read the outer activation ``h`` and outer
    initializers (then: ``h Wt + bt``; else: ``2 * Sigmoid(h We)`` with a branch-local
    Constant).  ``k`` is TopK's k (via Unsqueeze), a Range limit and a Gather index.
    Outputs ``values``/``indices`` ``[batch, k]``, ``score`` ``[batch]`` (TopK values
    weighted by ``Range(0, k)``), ``picked`` ``[batch]`` (``h[:, k]``).  Needs opset >= 11.
    """
    if opset < 11:
        raise ValueError("control_flow_model needs opset >= 11")
    b = _GraphBuilder(opset, np.random.default_rng(seed))
    h = b.relu(b.linear("x", features, hidden, "fc1"))
    cond = b.op("Greater", [b.op("ReduceSum", ["x"], keepdims=0), b.f32(0.0)])

    then_w = b.weight([hidden, classes], hidden, "then")
    then_b = b.bias(classes, "then.bias")
    else_w = b.weight([hidden, classes], hidden, "else")
    branch_out = [_float_input("branch_out", [batch, classes])]

    then_sub = b.subgraph()
    then_sub.op("Add", [then_sub.op("MatMul", [h, then_w]), then_b], out="branch_out")
    then_graph = helper.make_graph(then_sub.nodes, "then_branch", [], branch_out)

    else_sub = b.subgraph()
    gate = else_sub.op("Sigmoid", [else_sub.op("MatMul", [h, else_w])])
    else_sub.op("Mul", [gate, else_sub.f32(2.0)], out="branch_out")
    else_graph = helper.make_graph(else_sub.nodes, "else_branch", [], branch_out)

    y = b.op("If", [cond], then_branch=then_graph, else_branch=else_graph)
    b.op_multi("TopK", [y, b.unsqueeze("k", [0])], 2, outs=["values", "indices"], axis=1)
    ramp = b.op("Cast", [b.op("Range", [b.i64(0), "k", b.i64(1)])], to=TensorProto.FLOAT)
    b.reduce("ReduceSum", b.op("Mul", ["values", ramp]), [1], keepdims=False, out="score")
    b.op("Gather", [h, "k"], out="picked", axis=1)
    return b.model(
        "control_flow",
        [_float_input("x", [batch, features]), helper.make_tensor_value_info("k", TensorProto.INT64, [])],
        [
            _float_input("values", [batch, None]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, [batch, None]),
            _float_input("score", [batch]),
            _float_input("picked", [batch]),
        ],
        doc=control_flow_model.__doc__ or "",
        props={INPUT_RANGE_KEY + "k": f"1,{classes}"},
    )


# ----------------------------------------------------------------- Paddle style
def _paddle_block(b: _GraphBuilder, x: str, c: int, *, se: bool) -> str:
    """PP-LCNet-style depthwise-separable block with optional SE and a residual Add.

    The SE goes through a ``[N, C]`` matrix (Squeeze -> MatMul/Add -> HardSigmoid op ->
    Unsqueeze), which is how Paddle2ONNX writes ``paddle.nn.Linear`` between pools.
    """
    y = b.hardswish(b.batchnorm(b.conv(x, c, c, 3, group=c, bias=False, hint="depthwise_conv2d"), c))
    if se:
        s = b.squeeze(b.op("GlobalAveragePool", [y], hint="pool2d"), [2, 3])
        s = b.relu(b.linear(s, c, c // 4, "linear"))
        s = b.op("HardSigmoid", [b.linear(s, c // 4, c, "linear")], hint="hard_sigmoid", alpha=0.1666667, beta=0.5)
        y = b.op("Mul", [y, b.unsqueeze(s, [2, 3])], hint="elementwise_mul")
    y = b.hardswish(b.batchnorm(b.conv(y, c, c, 1, bias=False, hint="conv2d"), c))
    return b.op("Add", [x, y], hint="elementwise_add")


def paddle_style_model(
    opset: int = 11,
    batch: Dim = "N",
    hw: tuple[Dim, Dim] = ("H", "W"),
    channels: int = 16,
    num_blocks: int = 10,
    num_classes: int = 10,
    seed: int = 0,
) -> onnx.ModelProto:
    """A Paddle2ONNX-flavoured classifier, reproducing the exporter's quirks.

    Every weight and every scalar (including each hardswish's 3/0/6/6) is its own
    ``Constant`` node rather than an initializer (> 200 of them by default); tensor names
    follow Paddle (``conv2d_0.tmp_0``, ``save_infer_model/scale_0.tmp_0``); HardSigmoid
    uses Paddle's slope 0.1666667; Squeeze/Unsqueeze carry axes attributes at opset 11.
    Stem conv+BN+hardswish, ``num_blocks`` depthwise-separable blocks (SE on every other),
    then two outputs from input ``x`` ``[batch, 3, *hw]``:
    ``save_infer_model/scale_0.tmp_0`` — GlobalAveragePool/Flatten/MatMul/Softmax class
    probabilities ``[batch, num_classes]``; ``save_infer_model/scale_1.tmp_0`` — the
    per-channel spatial mean ``[batch, channels]`` computed through Paddle's int32 shape
    handling: Shape -> Cast(int32) -> Slice -> Concat -> Cast(int64) -> Reshape, and
    ReduceSum divided by a Cast(float) ReduceProd of the spatial dims.  Needs opset >= 11.
    """
    if opset < 11:
        raise ValueError("paddle_style_model needs opset >= 11")
    b = _GraphBuilder(opset, np.random.default_rng(seed), weights_as_constants=True, paddle_names=True)
    y = b.hardswish(b.batchnorm(b.conv("x", 3, channels, 3, stride=2, bias=False, hint="conv2d"), channels))
    for i in range(num_blocks):
        y = _paddle_block(b, y, channels, se=i % 2 == 0)

    pooled = b.op("Flatten", [b.op("GlobalAveragePool", [y], hint="pool2d")], hint="flatten", axis=1)
    logits = b.linear(pooled, channels, num_classes, "linear")
    b.op("Softmax", [logits], out="save_infer_model/scale_0.tmp_0", axis=1)

    shape = b.op("Cast", [b.op("Shape", [y], hint="shape")], hint="cast", to=TensorProto.INT32)
    target = b.op("Concat", [b.slice(shape, [0], [2], [0]), b.const(np.array([-1], np.int32))], axis=0)
    flat = b.op("Reshape", [y, b.op("Cast", [target], hint="cast", to=TensorProto.INT64)], hint="reshape2")
    area = b.reduce("ReduceProd", b.slice(shape, [2], [4], [0]), [0], keepdims=False)
    total = b.reduce("ReduceSum", flat, [2], keepdims=False)
    b.op("Div", [total, b.op("Cast", [area], hint="cast", to=TensorProto.FLOAT)], out="save_infer_model/scale_1.tmp_0")
    return b.model(
        "paddle_style",
        [_float_input("x", [batch, 3, *hw])],
        [
            _float_input("save_infer_model/scale_0.tmp_0", [batch, num_classes]),
            _float_input("save_infer_model/scale_1.tmp_0", [batch, channels]),
        ],
        doc=paddle_style_model.__doc__ or "",
    )


# -------------------------------------------------------------------- small CNN
def small_cnn_model(
    opset: int = 13, batch: int = 1, size: int = 16, num_classes: int = 10, seed: int = 0
) -> onnx.ModelProto:
    """Tiny fully static CNN for fast tests: 2x(Conv/BatchNormalization/Relu), MaxPool, GAP, Gemm.

    Input ``input`` ``[batch, 3, size, size]``; output ``logits`` ``[batch, num_classes]``.
    """
    b = _GraphBuilder(opset, np.random.default_rng(seed))
    y = b.relu(b.batchnorm(b.conv("input", 3, 8, 3, bias=False), 8))
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.relu(b.batchnorm(b.conv(y, 8, 16, 3, bias=False), 16))
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    fc_w = b.weight([num_classes, 16], 16, "fc")
    b.op("Gemm", [y, fc_w, b.bias(num_classes, "fc.bias")], out="logits", transB=1)
    return b.model(
        "small_cnn",
        [_float_input("input", [batch, 3, size, size])],
        [_float_input("logits", [batch, num_classes])],
        doc=small_cnn_model.__doc__ or "",
    )


# --------------------------------------------------------------------- registry
ALL_BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mobilenetv3": mobilenetv3_block_model,
    "mobilenetv3_opset10": partial(mobilenetv3_block_model, opset=10),
    "mobilenetv3_opset11": partial(mobilenetv3_block_model, opset=11),
    "mobilenetv3_opset17": partial(mobilenetv3_block_model, opset=17),
    "fpn_detector": fpn_detector_model,
    "fpn_detector_opset11": partial(fpn_detector_model, opset=11),
    "transformer": transformer_recognizer_model,
    "transformer_opset11": partial(transformer_recognizer_model, opset=11),
    "transformer_opset17": partial(transformer_recognizer_model, opset=17),
    "transformer_opset18": partial(transformer_recognizer_model, opset=18),
    "control_flow": control_flow_model,
    "paddle_style": paddle_style_model,
    "paddle_style_opset13": partial(paddle_style_model, opset=13),
    "small_cnn": small_cnn_model,
}
"""Default configurations (plus opset variants) keyed by name; each value builds a fresh model."""


def op_census(model: onnx.ModelProto) -> Counter[str]:
    """Count op types over the main graph and, recursively, every subgraph."""
    census: Counter[str] = Counter()

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            census[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        visit(g)

    visit(model.graph)
    return census


def sample_inputs(
    model: onnx.ModelProto, seed: int = 0, dims: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Seeded random feeds for every graph input that is not an initializer.

    Symbolic dims resolve through ``dims``, then :data:`DEFAULT_DIMS`, then 1 (as do
    dims with neither value nor name).  Floats are standard normal; integer inputs are
    drawn from the inclusive range recorded under ``mcc.input_range.<name>`` in the
    model metadata, defaulting to the value 1; bools are fair coin flips.
    """
    rng = np.random.default_rng(seed)
    sizes = {**DEFAULT_DIMS, **(dims or {})}
    ranges: dict[str, tuple[int, ...]] = {
        prop.key[len(INPUT_RANGE_KEY) :]: tuple(int(v) for v in prop.value.split(","))
        for prop in model.metadata_props
        if prop.key.startswith(INPUT_RANGE_KEY)
    }
    initializers = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in initializers:
            continue
        tensor_type = vi.type.tensor_type
        shape = [
            d.dim_value if d.HasField("dim_value") else sizes.get(d.dim_param, 1) for d in tensor_type.shape.dim
        ]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.random(shape) < 0.5
        else:
            lo, hi = ranges.get(vi.name, (1, 1))
            feeds[vi.name] = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
    return feeds
