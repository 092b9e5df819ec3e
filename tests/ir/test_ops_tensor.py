"""Tensor-manipulation ops: mcc's reference against onnxruntime, and symbolic shape inference.

Value tests build one-node models with onnx.helper (constant operands as initializers) and compare
`compiler.compile(model).run(feeds)` with onnxruntime, dtype included. Inference tests build an
ir.Graph directly, so what is checked is mcc's own `infer` (not onnx's shape inference).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import compiler
import ir
from ir import DType, TensorType

RNG = np.random.default_rng(0)


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


from op_check import C, check, single_op_model  # noqa: E402,F401

I64 = np.int64


# ---------------------------------------------------------------------------------------------
# Reshape, Flatten, Squeeze, Unsqueeze, Transpose


def test_reshape() -> None:
    x = _f(2, 3, 4)
    check("Reshape", {"x": x, "s": C(np.array([0, -1], I64))}, opset=13)
    check("Reshape", {"x": x, "s": C(np.array([4, 0, 2], I64))}, opset=5)
    check("Reshape", {"x": _f(0, 3), "s": C(np.array([3, 0], I64))}, opset=14, allowzero=1)


def test_flatten_transpose() -> None:
    x = _f(2, 3, 4, 5)
    for axis in (0, 2, -1, 4):
        check("Flatten", {"x": x}, axis=axis, opset=13)
    check("Transpose", {"x": x})
    check("Transpose", {"x": x}, perm=[2, 0, 3, 1])


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset: int) -> None:
    x = _f(1, 3, 1, 2)
    if opset < 13:
        check("Squeeze", {"x": x}, opset=opset, axes=[0, -2])
        check("Unsqueeze", {"x": x}, opset=opset, axes=[-1, 0, 3])
    else:
        check("Squeeze", {"x": x, "a": C(np.array([0, -2], I64))}, opset=opset)
        check("Unsqueeze", {"x": x, "a": C(np.array([-1, 0, 3], I64))}, opset=opset)
    check("Squeeze", {"x": x}, opset=opset)


# ---------------------------------------------------------------------------------------------
# Concat, Split, Slice


def test_concat() -> None:
    check("Concat", {"a": _f(2, 3), "b": _f(2, 1), "c": _f(2, 0)}, axis=-1, opset=13)
    check("Concat", {"a": _f(2, 3), "b": _f(1, 3)}, axis=0, opset=4)


def test_split() -> None:
    x = _f(7, 4)
    check("Split", {"x": x}, n_out=3, opset=11, split=[2, 4, 1])
    check("Split", {"x": x, "s": C(np.array([3, 0, 4], I64))}, n_out=3, opset=13)
    check("Split", {"x": _f(6, 4)}, n_out=3, opset=13)
    check("Split", {"x": x}, n_out=3, opset=18, num_outputs=3)  # uneven: 3, 3, 1
    check("Split", {"x": x}, n_out=2, opset=18, num_outputs=2, axis=-1)


@pytest.mark.parametrize("starts,ends,axes,steps", [
    ([1, 0], [3, 10], [0, 1], [1, 2]),
    ([-1, 100], [-100, 0], [0, -1], [-1, -2]),
    ([2**63 - 1], [-(2**63)], [1], [-1]),
    ([0, -3], [2**63 - 1, -1], None, None),
    ([5], [2], [0], [1]),  # empty
])
def test_slice(starts: list[int], ends: list[int], axes: list[int] | None, steps: list[int] | None) -> None:
    x = _f(4, 6)
    inputs = {"x": x, "s": C(np.array(starts, I64)), "e": C(np.array(ends, I64)),
              "a": None if axes is None else C(np.array(axes, I64)),
              "p": None if steps is None else C(np.array(steps, I64))}
    check("Slice", inputs, opset=13)


def test_slice_attributes() -> None:
    check("Slice", {"x": _f(4, 6)}, opset=9, starts=[1, -4], ends=[100, -1], axes=[0, 1])


# ---------------------------------------------------------------------------------------------
# Expand, Tile, Pad, CenterCropPad


def test_expand_tile() -> None:
    check("Expand", {"x": _f(3, 1), "s": C(np.array([2, 1, 4], I64))}, opset=13)
    check("Expand", {"x": _f(1, 3, 2), "s": C(np.array([3, 1], I64))}, opset=13)
    check("Tile", {"x": _f(2, 3), "r": C(np.array([2, 3], I64))}, opset=13)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes(mode: str) -> None:
    x = _f(3, 5)
    check("Pad", {"x": x, "p": C(np.array([1, 2, 2, 1], I64)), "v": C(np.array(1.5, np.float32))}, opset=19, mode=mode)
    check("Pad", {"x": x, "p": C(np.array([-1, 2, 1, -2], I64))}, opset=19, mode=mode)  # negative: crop
    check("Pad", {"x": x, "p": C(np.array([2, 1], I64)), "v": None, "a": C(np.array([-1], I64))}, opset=19, mode=mode)


def test_pad_attribute() -> None:
    check("Pad", {"x": _f(2, 3)}, opset=2, pads=[0, 1, 1, 2], value=3.0)
    check("Pad", {"x": _f(2, 3)}, opset=2, pads=[1, 1, 1, 1], mode="edge")


def test_center_crop_pad() -> None:
    x = _f(5, 4, 3)
    check("CenterCropPad", {"x": x, "s": C(np.array([3, 7, 3], I64))})
    check("CenterCropPad", {"x": x, "s": C(np.array([2, 6], I64))}, axes=[0, -2])


# ---------------------------------------------------------------------------------------------
# Gather / scatter


def test_gather_family() -> None:
    x = _f(3, 4, 5)
    check("Gather", {"x": x, "i": C(np.array([[0, -1], [2, 1]], I64))}, axis=1, opset=13)
    check("Gather", {"x": x, "i": C(np.array(-2, np.int32))}, opset=13)
    check("GatherElements", {"x": x, "i": C(np.array(RNG.integers(-5, 5, (3, 2, 5))))}, axis=-1, opset=13)
    check("GatherND", {"x": x, "i": C(np.array([[0, 1], [2, -1]], I64))}, opset=13)
    check("GatherND", {"x": x, "i": C(np.array([[[1], [0]], [[3], [2]], [[0], [0]]], I64))}, batch_dims=1, opset=13)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_reductions(reduction: str) -> None:
    data = _f(3, 4)
    idx = np.array([[1, 0, 3], [2, 2, 1]], I64) if reduction != "none" else np.array([[1, 0, 3], [2, -1, 1]], I64)
    check("ScatterElements", {"d": data, "i": C(idx), "u": _f(2, 3)}, opset=18, axis=1, reduction=reduction)
    nd_idx = np.array([[0, 1], [2, 3], [0, 1]], I64) if reduction != "none" else np.array([[0, 1], [2, -1]], I64)
    check("ScatterND", {"d": data, "i": C(nd_idx), "u": _f(len(nd_idx))}, opset=18, reduction=reduction)


def test_scatter_deprecated_and_nd_slices() -> None:
    check("Scatter", {"d": _f(3, 3), "i": C(np.array([[1, 0, 2], [0, 2, 1]], I64)), "u": _f(2, 3)}, opset=10)
    check("ScatterND", {"d": _f(4, 3), "i": C(np.array([[3], [1]], I64)), "u": _f(2, 3)}, opset=13)


def test_scatter_unsupported_reduction() -> None:
    m = single_op_model("ScatterElements", {"d": _f(2, 2), "i": C(np.zeros((1, 2), I64)), "u": _f(1, 2)},
               {"reduction": "max"}, 16, 1)
    with pytest.raises(Exception, match="reduction 'max'"):
        compiler.compile(m).run({"d": _f(2, 2), "u": _f(1, 2)})


def test_tensor_scatter() -> None:
    """No onnxruntime reference at opset 24 here: checked against the spec's pseudocode."""
    past, upd = _f(2, 3, 5, 2), _f(2, 3, 2, 2)
    w = np.array([1, 4], I64)
    for mode in ("linear", "circular"):
        wi = w if mode == "circular" else np.array([1, 3], I64)
        want = past.copy()
        for b in range(2):
            for s in range(2):
                want[b, :, (wi[b] + s) % 5] = upd[b, :, s]
        node = ir.Node("TensorScatter", [], 1, {"mode": mode})
        g = ir.Graph(opset_imports={"": 24})
        g.append(node)
        got = ir.Interpreter().run_node(node, [past, upd, wi])[0]
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------
# Shape, Size, ConstantOfShape, Range, EyeLike, OneHot


def test_shape_size() -> None:
    x = _f(2, 3, 4)
    check("Shape", {"x": x}, opset=13)
    for start, end in [(1, None), (-2, -1), (5, 1), (-10, 10)]:
        kw = {"start": start} | ({} if end is None else {"end": end})
        check("Shape", {"x": x}, opset=15, **kw)
    check("Size", {"x": x}, opset=13)


def test_constant_of_shape_range() -> None:
    check("ConstantOfShape", {"s": np.array([2, 3], I64)}, opset=9)
    check("ConstantOfShape", {"s": np.array([2, 0], I64)}, opset=9,
          value=numpy_helper.from_array(np.array([7], np.int32)))
    check("Range", {"a": np.array(10, I64), "b": np.array(1, I64), "c": np.array(-3, I64)}, opset=11)
    check("Range", {"a": np.array(0.5, np.float32), "b": np.array(3.1, np.float32), "c": np.array(0.7, np.float32)},
          opset=11)
    check("Range", {"a": np.array(5, np.int32), "b": np.array(1, np.int32), "c": np.array(2, np.int32)}, opset=11)


def test_eyelike_onehot() -> None:
    check("EyeLike", {"x": _f(3, 5)}, k=1, opset=9)
    check("EyeLike", {"x": np.zeros((4, 2), np.int32)}, k=-1, dtype=onnx.TensorProto.DOUBLE, opset=9)
    ind = np.array([[1, -1, 5], [0, 3, -4]], I64)
    vals = np.array([0.5, 2.0], np.float32)
    for axis in (-1, 0, 1):
        check("OneHot", {"i": ind, "d": C(np.array(4, I64)), "v": C(vals)}, axis=axis, opset=11)
    check("OneHot", {"i": ind.astype(np.float32), "d": C(np.array([4.0], np.float32)), "v": C(vals)}, opset=11)


# ---------------------------------------------------------------------------------------------
# Trilu, Compress, NonZero, Unique, TopK, ReverseSequence, CumSum


def test_trilu_compress_nonzero() -> None:
    x = _f(2, 4, 5)
    for upper in (0, 1):
        check("Trilu", {"x": x}, upper=upper, opset=14)
        check("Trilu", {"x": x, "k": C(np.array(-2, I64))}, upper=upper, opset=14)
    check("Compress", {"x": x, "c": C(np.array([True, False, True], bool))}, axis=1, opset=11)
    check("Compress", {"x": x, "c": C(np.array([0, 1, 1, 0, 1], bool))}, opset=11)
    check("NonZero", {"x": np.array([[0, 1, 0], [2, 0, 3]], np.int32)}, opset=13)


@pytest.mark.parametrize("axis", [None, 0, 1, -1])
@pytest.mark.parametrize("sorted_", [0, 1])
def test_unique(axis: int | None, sorted_: int) -> None:
    x = np.array([[2, 1, 2], [0, 1, 0], [2, 1, 2], [0, 5, 0]], np.float32)
    kw = {"sorted": sorted_} | ({} if axis is None else {"axis": axis})
    if axis is None or sorted_:
        check("Unique", {"x": x}, n_out=4, opset=11, **kw)
        return
    # onnxruntime does not implement sorted=0 with an axis: first-occurrence order, computed by hand
    got = list(compiler.compile(single_op_model("Unique", {"x": x}, kw, 11, 4)).run({"x": x}).values())
    subs = [np.take(x, i, axis=axis) for i in range(x.shape[axis])]
    first = [i for i, t in enumerate(subs) if not any(np.array_equal(t, subs[j]) for j in range(i))]
    inverse = [next(k for k, f in enumerate(first) if np.array_equal(t, subs[f])) for t in subs]
    np.testing.assert_array_equal(got[0], np.take(x, first, axis=axis))
    np.testing.assert_array_equal(got[1], first)
    np.testing.assert_array_equal(got[2], inverse)
    np.testing.assert_array_equal(got[3], np.bincount(inverse))


@pytest.mark.parametrize("largest", [0, 1])
def test_top_k(largest: int) -> None:
    x = np.array([[3, 1, 3, 2, 1], [5, 5, 5, 0, 9]], np.float32)
    check("TopK", {"x": x, "k": C(np.array([3], I64))}, n_out=2, largest=largest, opset=11)
    check("TopK", {"x": x, "k": C(np.array([1], I64))}, n_out=2, largest=largest, axis=0, opset=11)
    check("TopK", {"x": x.astype(np.int64), "k": C(np.array([2], I64))}, n_out=2, largest=largest, opset=11)
    check("TopK", {"x": x}, n_out=2, k=2, opset=9)


def test_reverse_sequence() -> None:
    x = _f(4, 3, 2)
    check("ReverseSequence", {"x": x, "l": C(np.array([4, 1, 3], I64))}, opset=10)
    check("ReverseSequence", {"x": x, "l": C(np.array([2, 3, 1, 3], I64))}, batch_axis=0, time_axis=1, opset=10)


@pytest.mark.parametrize("exclusive,reverse", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_cumsum(exclusive: int, reverse: int) -> None:
    check("CumSum", {"x": _f(3, 4), "a": C(np.array(-1, I64))}, exclusive=exclusive, reverse=reverse, opset=14)
    check("CumSum", {"x": np.arange(12, dtype=np.int32).reshape(3, 4), "a": C(np.array(0, np.int32))},
          exclusive=exclusive, reverse=reverse, opset=14)


def test_cumprod() -> None:
    """CumProd (opset 26) against numpy."""
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    g = ir.Graph(opset_imports={"": 26})
    node = g.append(ir.Node("CumProd", [], 1, {"exclusive": 1, "reverse": 1}))
    got = ir.Interpreter().run_node(node, [x, np.array(1, I64)])[0]
    np.testing.assert_array_equal(got, np.array([[6, 3, 1], [30, 6, 1]], np.float32))


# ---------------------------------------------------------------------------------------------
# DepthToSpace, SpaceToDepth, Col2Im


def test_depth_space() -> None:
    x = _f(2, 8, 3, 2)
    for mode in ("DCR", "CRD"):
        check("DepthToSpace", {"x": x}, blocksize=2, mode=mode, opset=13)
    check("SpaceToDepth", {"x": _f(2, 3, 4, 6)}, blocksize=2, opset=13)


def test_col2im() -> None:
    x = _f(2, 2 * 6, 9)  # C=2, kernel 2x3; image 5x6 with pads/strides/dilations
    check("Col2Im", {"x": x, "i": C(np.array([5, 6], I64)), "b": C(np.array([2, 3], I64))},
          strides=[2, 1], pads=[1, 0, 0, 1], dilations=[1, 2])
    check("Col2Im", {"x": _f(1, 4, 9), "i": C(np.array([4, 4], I64)), "b": C(np.array([2, 2], I64))})


# ---------------------------------------------------------------------------------------------
# Shape inference on symbolic shapes (mcc's own `infer`)


def _infer(op: str, in_types: list[TensorType | None], consts: dict[int, np.ndarray] | None = None,
           opset: int = 18, n_out: int = 1, **attrs: Any) -> list[Any]:
    """Types that mcc infers for one `op` node (inputs: graph inputs of `in_types`, or constants)."""
    g = ir.Graph(opset_imports={"": opset})
    consts = consts or {}
    ins = []
    for i in range(max([len(in_types)] + [k + 1 for k in consts])):
        if i in consts:
            ins.append(g.add_initializer(f"c{i}", np.asarray(consts[i])))
        elif i < len(in_types) and in_types[i] is not None:
            ins.append(g.add_input(f"x{i}", in_types[i]))
        else:
            ins.append(None)
    node = g.make_node(op, ins, attrs, num_outputs=n_out)
    ir.infer_node(node)
    return [v.type for v in node.outputs]


def T(*shape: Any, dt: DType = DType.FLOAT) -> TensorType:
    return TensorType(dt, tuple(shape))


def test_infer_reshape() -> None:
    assert _infer("Reshape", [T("N", 3, 4)], {1: np.array([0, -1], I64)}) == [T("N", 12)]
    assert _infer("Reshape", [T("N", 3, 4)], {1: np.array([-1, 4], I64)}) == [T(None, 4)]  # N*3: not a dim
    assert _infer("Reshape", [T("N", 3, 4)], {1: np.array([3, -1, 4], I64)}) == [T(3, "N", 4)]
    assert _infer("Reshape", [T("N", 6)], {1: np.array([0, 2, -1], I64)}) == [T("N", 2, 3)]
    assert _infer("Reshape", [T("N", "S", 8)], {1: np.array([0, 0, 2, 4], I64)}) == [T("N", "S", 2, 4)]
    assert _infer("Reshape", [T(None, 4)], {1: np.array([-1, 2], I64)}) == [T(None, 2)]
    assert _infer("Reshape", [T(2, 0)], {1: np.array([0, 3], I64)}, allowzero=1) == [T(0, 3)]
    assert _infer("Reshape", [T(2, 3), T(3, dt=DType.INT64)]) == [T(None, None, None)]


def test_infer_movement() -> None:
    assert _infer("Transpose", [T("N", 3, "S")]) == [T("S", 3, "N")]
    assert _infer("Transpose", [T("N", 3, "S")], perm=[0, 2, 1]) == [T("N", "S", 3)]
    assert _infer("Flatten", [T("N", 3, 4)]) == [T("N", 12)]
    assert _infer("Flatten", [T("N", 3, 4)], axis=0) == [T(1, None)]
    assert _infer("Flatten", [T(2, 3, "S")], axis=-1) == [T(6, "S")]
    assert _infer("Concat", [T("N", 3), T("N", 5)], axis=1) == [T("N", 8)]
    assert _infer("Concat", [T("N", 3), T("M", 3)], axis=0) == [T(None, 3)]
    assert _infer("Concat", [T(None, 3), T("N", 3)], axis=-1) == [T("N", 6)]
    assert _infer("Expand", [T("N", 1)], {1: np.array([1, 4], I64)}) == [T("N", 4)]
    assert _infer("Tile", [T("N", 2)], {1: np.array([1, 3], I64)}) == [T("N", 6)]
    assert _infer("DepthToSpace", [T("N", 8, 3, 2)], blocksize=2) == [T("N", 2, 6, 4)]
    assert _infer("SpaceToDepth", [T("N", 2, 6, 4)], blocksize=2) == [T("N", 8, 3, 2)]


def test_infer_squeeze_unsqueeze() -> None:
    assert _infer("Squeeze", [T("N", 1, 3, 1)], {1: np.array([-1, 1], I64)}, opset=13) == [T("N", 3)]
    assert _infer("Squeeze", [T("N", 1, 3, 1)], opset=11, axes=[1]) == [T("N", 3, 1)]
    assert _infer("Squeeze", [T(1, 3, 1)], opset=13) == [T(3)]
    assert _infer("Squeeze", [T("N", 1, 3)], opset=13) == [TensorType(DType.FLOAT, None)]  # N may be 1
    assert _infer("Unsqueeze", [T("N", 3)], {1: np.array([0, -1], I64)}, opset=13) == [T(1, "N", 3, 1)]
    assert _infer("Unsqueeze", [T("N", 3)], opset=11, axes=[1]) == [T("N", 1, 3)]


def test_infer_slice_split() -> None:
    c = {1: np.array([1, 0], I64), 2: np.array([-1, 2**63 - 1], I64), 3: np.array([1, 0], I64)}
    assert _infer("Slice", [T("N", 10)], c) == [T("N", 8)]
    c = {1: np.array([-1], I64), 2: np.array([-(2**63)], I64), 3: np.array([0], I64), 4: np.array([-2], I64)}
    assert _infer("Slice", [T(7, "S")], c) == [T(4, "S")]
    assert _infer("Slice", [T(7, "S")], opset=9, starts=[2], ends=[100]) == [T(5, "S")]
    assert _infer("Slice", [T(7, "S"), T(1, dt=DType.INT64), T(1, dt=DType.INT64)]) == [T(None, None)]
    assert _infer("Split", [T("N", 7)], {1: np.array([3, 4], I64)}, n_out=2, axis=1) == [T("N", 3), T("N", 4)]
    assert _infer("Split", [T("N", 7)], n_out=3, axis=1, num_outputs=3) == [T("N", 3), T("N", 3), T("N", 1)]
    assert _infer("Split", [T(6, "N")], n_out=2, opset=11, split=[2, 4]) == [T(2, "N"), T(4, "N")]


def test_infer_gather_pad_shape() -> None:
    i64 = DType.INT64
    assert _infer("Gather", [T("N", 5, 6), T("B", 2, dt=i64)], axis=1) == [T("N", "B", 2, 6)]
    assert _infer("GatherElements", [T("N", 5), T("N", 2, dt=i64)], axis=1) == [T("N", 2)]
    assert _infer("GatherND", [T("B", 5, 6), T("B", 3, 1, dt=i64)], batch_dims=1) == [T("B", 3, 6)]
    assert _infer("ScatterND", [T("N", 5), T(2, 2, dt=i64), T(2)]) == [T("N", 5)]
    assert _infer("Pad", [T("N", 5)], {1: np.array([0, 1, 0, 2], I64)}) == [T("N", 8)]
    assert _infer("Pad", [T("N", 5)], {1: np.array([1, 0, 0, 0], I64)}) == [T(None, 5)]
    assert _infer("Pad", [T("N", 5)], {1: np.array([1, 1], I64), 3: np.array([-1], I64)}) == [T("N", 7)]
    assert _infer("Pad", [T("N", 5)], opset=2, pads=[0, 1, 0, 1]) == [T("N", 7)]
    assert _infer("CenterCropPad", [T("N", 5, 3)], {1: np.array([4, 4], I64)}, axes=[1, 2]) == [T("N", 4, 4)]
    assert _infer("Shape", [T("N", 5, 3)]) == [T(3, dt=i64)]
    assert _infer("Shape", [T("N", 5, 3)], start=-2, end=-1) == [T(1, dt=i64)]
    assert _infer("Size", [T("N", 5)]) == [T(dt=i64)]
    assert _infer("ConstantOfShape", [None], {0: np.array([2, 3], I64)}) == [T(2, 3)]
    assert _infer("ConstantOfShape", [T(2, dt=i64)], value=ir.Tensor(np.array([1], np.int32))) == \
        [T(None, None, dt=DType.INT32)]
    assert _infer("Range", [], {0: np.array(1, I64), 1: np.array(10, I64), 2: np.array(3, I64)}) == [T(3, dt=i64)]
    assert _infer("OneHot", [T("N", 3, dt=i64)], {1: np.array(5, I64), 2: np.array([0, 1], np.float32)},
                  axis=1) == [T("N", 5, 3)]
    assert _infer("EyeLike", [T(3, 4)], dtype=int(DType.INT32)) == [T(3, 4, dt=DType.INT32)]


def test_infer_data_dependent() -> None:
    i64 = DType.INT64
    (nz,) = _infer("NonZero", [T("N", 4)])
    assert nz.dtype == i64 and nz.shape[0] == 2 and isinstance(nz.shape[1], str)
    y, idx, inv, cnt = _infer("Unique", [T(4, 3)], n_out=4)
    assert y.shape == idx.shape == cnt.shape and isinstance(y.shape[0], str) and inv == T(12, dt=i64)
    y, idx, inv, cnt = _infer("Unique", [T("N", 3)], n_out=4, axis=1)
    assert y.shape[0] == "N" and isinstance(y.shape[1], str) and inv == T(3, dt=i64)
    assert _infer("TopK", [T("N", 9)], {1: np.array([4], I64)}, n_out=2, opset=11) == [T("N", 4), T("N", 4, dt=i64)]
    assert _infer("TopK", [T("N", 9)], n_out=2, opset=9, k=2, axis=0) == [T(2, 9), T(2, 9, dt=i64)]
    (c,) = _infer("Compress", [T("N", 9), T(9, dt=DType.BOOL)], axis=1)
    assert c.shape[0] == "N" and isinstance(c.shape[1], str)
    assert _infer("Col2Im", [T("N", 12, 12)], {1: np.array([5, 6], I64), 2: np.array([2, 3], I64)}) == \
        [T("N", 2, 5, 6)]


def test_infer_shape_arithmetic() -> None:
    """Reshape/Expand targets computed from Shape -> Gather/Slice -> Concat, as exporters emit them."""
    g = ir.Graph(opset_imports={"": 18})
    x = g.add_input("x", T("N", "S", 48))
    shp = g.make_node("Shape", [x]).outputs[0]
    ns = g.make_node("Gather", [shp, g.add_initializer("i", np.array([0, 1], I64))]).outputs[0]
    tail = g.make_node("Constant", [], {"value": ir.Tensor(np.array([4, -1], I64))}).outputs[0]
    target = g.make_node("Concat", [ns, tail], {"axis": 0}).outputs[0]
    r = g.make_node("Reshape", [x, target])
    last = g.make_node("Slice", [shp, g.add_initializer("b", np.array([-1], I64)),
                                 g.add_initializer("e", np.array([2**62], I64))]).outputs[0]
    one = g.add_initializer("one", np.array([1], I64))
    e = g.make_node("Expand", [g.add_input("y", T(1, 1, dt=DType.FLOAT)),
                               g.make_node("Concat", [one, last], {"axis": 0}).outputs[0]])
    ir.infer_shapes(g)
    assert r.outputs[0].type == T("N", "S", 4, 12)
    assert e.outputs[0].type == T(1, 48)
