"""ir.Graph -> ONNX ModelProto (standard ONNX that onnxruntime and onnx.checker accept)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

import ir
from ir import Graph, Node, OptionalType, SequenceType, Tensor, TensorType, Value, ValueType

_A = onnx.AttributeProto


def export_onnx(g: Graph, producer_version: str | None = None) -> onnx.ModelProto:
    """Export `g` as a ModelProto; model metadata the importer kept is written back."""
    from . import __version__

    if any(n.domain == "mcc" for n in g.all_nodes()):
        import passes  # fused groups are mcc's own: inline them so the file is plain standard ONNX

        g = passes.run(g.copy(), "unfuse")
    meta = g.meta
    opsets = [helper.make_opsetid(d, v) for d, v in sorted(g.opset_imports.items())]
    model = helper.make_model(
        export_graph(g),
        opset_imports=opsets,
        producer_name="mcc",
        producer_version=producer_version or __version__,
    )
    min_ir = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    model.ir_version = max(int(meta.get("ir_version") or 0), min_ir)
    if meta.get("domain"):
        model.domain = meta["domain"]
    if meta.get("model_version"):
        model.model_version = int(meta["model_version"])
    if meta.get("doc_string"):
        model.doc_string = meta["doc_string"]
    for k, v in sorted((meta.get("metadata_props") or {}).items()):
        model.metadata_props.add(key=k, value=v)
    return model


def export_type(t: ValueType | None) -> onnx.TypeProto:
    tp = onnx.TypeProto()
    if isinstance(t, TensorType):
        tp.tensor_type.elem_type = int(t.dtype)
        if t.shape is not None:
            tp.tensor_type.shape.SetInParent()
            for d in t.shape:
                dim = tp.tensor_type.shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                elif d is not None:
                    dim.dim_param = d
    elif isinstance(t, SequenceType):
        tp.sequence_type.elem_type.CopyFrom(export_type(t.elem))
    elif isinstance(t, OptionalType):
        tp.optional_type.elem_type.CopyFrom(export_type(t.elem))
    return tp


def _value_info(v: Value) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(name=v.name)
    if v.type is not None:
        vi.type.CopyFrom(export_type(v.type))
    if v.doc:
        vi.doc_string = v.doc
    return vi


def export_tensor(t: Tensor, name: str) -> onnx.TensorProto:
    arr = t.array
    if t.dtype == ir.DType.STRING:
        tp = helper.make_tensor(name, onnx.TensorProto.STRING, arr.shape,
                                [x if isinstance(x, bytes) else str(x).encode() for x in arr.reshape(-1)])
        return tp
    tp = numpy_helper.from_array(np.asarray(arr, order="C"), name)
    if t.dtype is not None and tp.data_type != int(t.dtype):
        tp = numpy_helper.from_array(np.asarray(arr.astype(t.dtype.np), order="C"), name)
    return tp


def export_graph(g: Graph) -> onnx.GraphProto:
    input_names = {v.name for v in g.inputs}
    gp = onnx.GraphProto(name=g.name)
    if g.doc:
        gp.doc_string = g.doc
    gp.input.extend(_value_info(v) for v in g.inputs)
    gp.initializer.extend(export_tensor(v.const, v.name) for v in g.initializers.values() if v.const is not None)
    gp.node.extend(_export_node(n) for n in g.nodes)
    gp.output.extend(_value_info(v) for v in g.outputs)
    outputs = {v.name for v in g.outputs}
    for n in g.nodes:
        for v in n.outputs:
            if v.type is not None and v.name not in outputs and v.name not in input_names:
                gp.value_info.append(_value_info(v))
    return gp


def _export_node(n: Node) -> onnx.NodeProto:
    omitted = set(n.meta.get("omitted_outputs", ()))
    outs = ["" if i in omitted else v.name for i, v in enumerate(n.outputs)]
    np_ = onnx.NodeProto(op_type=n.op_type, domain=n.domain, name=n.name)
    np_.input.extend("" if v is None else v.name for v in n.inputs)
    np_.output.extend(outs)
    if n.doc:
        np_.doc_string = n.doc
    spec = ir.get_op(n.op_type, n.domain)
    for k in sorted(n.attributes):
        hint = spec.attrs[k].type if spec is not None and k in spec.attrs else None
        np_.attribute.append(_export_attr(k, n.attributes[k], hint))
    return np_


def _export_attr(name: str, v: Any, hint: str | None) -> onnx.AttributeProto:
    a = onnx.AttributeProto(name=name)
    if isinstance(v, bool) or isinstance(v, (int, np.integer)):
        a.type, a.i = _A.INT, int(v)
    elif isinstance(v, (float, np.floating)):
        a.type, a.f = _A.FLOAT, float(v)
    elif isinstance(v, (str, bytes)):
        a.type, a.s = _A.STRING, v.encode() if isinstance(v, str) else v
    elif isinstance(v, Tensor):
        a.type = _A.TENSOR
        a.t.CopyFrom(export_tensor(v, v.name))
    elif isinstance(v, Graph):
        a.type = _A.GRAPH
        a.g.CopyFrom(export_graph(v))
    elif isinstance(v, (TensorType, SequenceType, OptionalType)):
        a.type = _A.TYPE_PROTO
        a.tp.CopyFrom(export_type(v))
    elif isinstance(v, (list, tuple)):
        kind = hint or _list_kind(v)
        if kind == "ints":
            a.type = _A.INTS
            a.ints.extend(int(x) for x in v)
        elif kind == "floats":
            a.type = _A.FLOATS
            a.floats.extend(float(x) for x in v)
        elif kind == "strings":
            a.type = _A.STRINGS
            a.strings.extend(x.encode() if isinstance(x, str) else x for x in v)
        elif kind == "tensors":
            a.type = _A.TENSORS
            a.tensors.extend(export_tensor(x, x.name) for x in v)
        elif kind == "graphs":
            a.type = _A.GRAPHS
            a.graphs.extend(export_graph(x) for x in v)
        elif kind == "type_protos":
            a.type = _A.TYPE_PROTOS
            a.type_protos.extend(export_type(x) for x in v)
        else:
            raise TypeError(f"attribute {name!r}: cannot export list {v!r}")
    else:
        raise TypeError(f"attribute {name!r}: cannot export value of type {type(v).__name__}")
    return a


def _list_kind(v: list[Any] | tuple[Any, ...]) -> str:
    if not v:
        return "ints"
    x = v[0]
    if isinstance(x, (bool, int, np.integer)):
        return "floats" if any(isinstance(y, (float, np.floating)) for y in v) else "ints"
    if isinstance(x, (float, np.floating)):
        return "floats"
    if isinstance(x, (str, bytes)):
        return "strings"
    if isinstance(x, Tensor):
        return "tensors"
    if isinstance(x, Graph):
        return "graphs"
    return "type_protos"
