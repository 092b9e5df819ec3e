"""ONNX -> ir.Graph.

The importer is one of the two places that know ONNX protobuf (the exporter is the other). It keeps
what a user's model holds: names, initializers, Constant nodes, subgraphs, opset imports, metadata,
and the shapes ONNX's own inference can derive (symbolic dims included). It refuses, with one clear
line, anything unsafe or malformed: an unreadable file, external data outside the model's folder, a
node that reads a tensor nobody defines, an op mcc has no definition for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

import ir
from ir import DType, Graph, Node, OptionalType, SequenceType, Tensor, TensorType, Value, ValueType

from .errors import ModelLoadError

_A = onnx.AttributeProto


def load_model(model: str | os.PathLike[str] | bytes | onnx.ModelProto) -> tuple[onnx.ModelProto, Path | None]:
    """Read a model from a path, bytes or a ModelProto; external data is resolved safely."""
    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, (bytes, bytearray)):
        return _parse(bytes(model), "<bytes>"), None
    path = Path(model)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not an ONNX file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read ({e.strerror})") from None
    proto = _parse(data, str(path))
    _load_external_data(proto, path)
    return proto, path


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception:
        raise ModelLoadError(f"{where}: not a valid ONNX model (the file is truncated or corrupt)") from None
    if not proto.HasField("graph") or (not proto.opset_import and proto.ir_version == 0):
        raise ModelLoadError(f"{where}: not a valid ONNX model (no graph or opset in the file)")
    return proto


def _external_tensors(proto: onnx.ModelProto) -> list[onnx.TensorProto]:
    out: list[onnx.TensorProto] = []

    def walk(g: onnx.GraphProto) -> None:
        out.extend(t for t in g.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
        for n in g.node:
            for a in n.attribute:
                if a.type == _A.TENSOR and a.t.data_location == onnx.TensorProto.EXTERNAL:
                    out.append(a.t)
                for sg in ([a.g] if a.type == _A.GRAPH else list(a.graphs)):
                    walk(sg)

    walk(proto.graph)
    return out


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Read external tensor data, refusing any location outside the model's folder."""
    base = path.parent.resolve()
    for t in _external_tensors(proto):
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        target = (base / loc).resolve()
        if not loc or os.path.isabs(loc) or (base != target and base not in target.parents):
            raise ModelLoadError(
                f"{path}: tensor {t.name!r} points to external data {loc!r} outside the model's folder; refusing to read it"
            )
        if not target.is_file():
            raise ModelLoadError(f"{path}: external data file {loc!r} for tensor {t.name!r} is missing")
        offset, length = int(info.get("offset", 0)), info.get("length")
        with open(target, "rb") as f:
            f.seek(offset)
            raw = f.read(int(length)) if length is not None else f.read()
        if length is not None and len(raw) != int(length):
            raise ModelLoadError(f"{path}: external data file {loc!r} is shorter than tensor {t.name!r} needs")
        t.raw_data = raw
        t.data_location = onnx.TensorProto.DEFAULT
        del t.external_data[:]


# ---------------------------------------------------------------------------------------------


def import_onnx(
    model: str | os.PathLike[str] | bytes | onnx.ModelProto,
    *,
    strict: bool = True,
    infer_shapes: bool = True,
) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) into an `ir.Graph`.

    Raises ModelLoadError for unreadable/malformed/unsafe files, and (when `strict`) ir.UnsupportedOpError
    for ops mcc has no definition for. `strict=False` keeps such ops as opaque nodes, which is enough to
    inspect, edit and export a model but not to run it.
    """
    proto, path = load_model(model)
    where = str(path) if path is not None else "model"
    opsets = {("" if o.domain == "ai.onnx" else o.domain): int(o.version) for o in proto.opset_import}
    opsets.setdefault("", 1)
    if infer_shapes:
        proto = _with_inferred_shapes(proto)
    functions = {(f.domain, f.name): f for f in proto.functions}
    g = Graph(proto.graph.name or "main", opsets)
    _Importer(where, functions).graph_into(proto.graph, g, {})
    g.meta.update(
        ir_version=int(proto.ir_version),
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        domain=proto.domain,
        model_version=int(proto.model_version),
        doc_string=proto.doc_string,
        metadata_props={p.key: p.value for p in proto.metadata_props},
    )
    g.doc = proto.graph.doc_string
    g._names = None  # the name index is rebuilt on first use, now that every value is in place
    if strict:
        for node in g.all_nodes():
            ir.lookup(node.op_type, node.domain, node.opset, node.name)  # unsupported -> clear error
    ir.infer_shapes(g)
    return g


def _with_inferred_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX's own shape inference, best effort: a model it cannot handle imports without it."""
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False, data_prop=True)
    except Exception:
        return proto


def convert_type(tp: onnx.TypeProto) -> ValueType | None:
    which = tp.WhichOneof("value")
    if which == "tensor_type" or which == "sparse_tensor_type":
        tt = getattr(tp, which)
        shape = None
        if tt.HasField("shape"):
            shape = tuple(
                int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
            )
        return TensorType(DType(tt.elem_type), shape)
    if which == "sequence_type":
        return SequenceType(convert_type(tp.sequence_type.elem_type))
    if which == "optional_type":
        return OptionalType(convert_type(tp.optional_type.elem_type))
    return None


def convert_tensor(t: onnx.TensorProto) -> Tensor:
    arr = numpy_helper.to_array(t)
    return Tensor(np.array(arr), t.name, DType(t.data_type))


class _Importer:
    def __init__(self, where: str, functions: dict[tuple[str, str], onnx.FunctionProto]) -> None:
        self.where = where
        self.functions = functions

    def graph_into(self, gp: onnx.GraphProto, g: Graph, outer: dict[str, Value]) -> None:
        scope: dict[str, Value] = dict(outer)
        types = {vi.name: convert_type(vi.type) for vi in list(gp.value_info) + list(gp.output)}
        init_names = set()
        for t in gp.initializer:
            v = Value(t.name, const=convert_tensor(t))
            v.graph = g
            g.initializers[t.name] = v
            scope[t.name] = v
            init_names.add(t.name)
        for t in gp.sparse_initializer:
            dense = numpy_helper.to_array(t)  # type: ignore[arg-type]
            v = Value(t.values.name, const=Tensor(np.array(dense), t.values.name))
            v.graph = g
            g.initializers[v.name] = v
            scope[v.name] = v
        for vi in gp.input:
            if vi.name in init_names:  # an input with a default value: same Value, listed as input
                v = g.initializers[vi.name]
                v.type = convert_type(vi.type) or v.type
                g.inputs.append(v)
                continue
            v = Value(vi.name, convert_type(vi.type))
            v.graph, v.doc = g, vi.doc_string
            g.inputs.append(v)
            scope[vi.name] = v
        for np_ in gp.node:
            self.node_into(np_, g, scope, types)
        outs = []
        for vi in gp.output:
            v = scope.get(vi.name)
            if v is None:
                raise ModelLoadError(f"{self.where}: graph output {vi.name!r} is not produced by any node")
            if v.type is None:
                v.type = convert_type(vi.type)
            outs.append(v)
        g.outputs = outs

    def node_into(self, np_: onnx.NodeProto, g: Graph, scope: dict[str, Value], types: dict[str, ValueType | None]) -> None:
        label = np_.name or f"{np_.op_type} #{len(g)}"
        ins: list[Value | None] = []
        for name in np_.input:
            if not name:
                ins.append(None)
                continue
            v = scope.get(name)
            if v is None:
                raise ModelLoadError(
                    f"{self.where}: node {label!r} ({np_.op_type}) reads tensor {name!r}, which no node, input or initializer defines"
                )
            ins.append(v)
        key = (np_.domain, np_.op_type)
        if key in self.functions and ir.get_op(np_.op_type, np_.domain) is None:
            self._inline_function(np_, self.functions[key], ins, g, scope, types)
            return
        attrs = {a.name: self.attribute(a, g, scope) for a in np_.attribute}
        names = list(np_.output)
        while names and not names[-1]:
            names.pop()  # trailing omitted optional outputs
        outs = []
        omitted = []
        for i, name in enumerate(names):
            if not name:
                omitted.append(i)
                name = g.unique_name(f"{np_.name or np_.op_type}_unused{i}")
            if name in scope and scope[name].graph is g:
                raise ModelLoadError(f"{self.where}: tensor {name!r} is produced twice (node {label!r})")
            outs.append(Value(name, types.get(name)))
        node = Node(np_.op_type, ins, outs, attrs, np_.name, np_.domain)
        node.doc = np_.doc_string
        if omitted:
            node.meta["omitted_outputs"] = omitted
        g.append(node)
        for v in outs:
            scope[v.name] = v

    def attribute(self, a: onnx.AttributeProto, g: Graph, scope: dict[str, Value]) -> Any:
        t = a.type
        if t == _A.FLOAT:
            return float(a.f)
        if t == _A.INT:
            return int(a.i)
        if t == _A.STRING:
            return _decode(a.s)
        if t == _A.TENSOR:
            return convert_tensor(a.t)
        if t == _A.SPARSE_TENSOR:
            return Tensor(np.array(numpy_helper.to_array(a.sparse_tensor)))  # type: ignore[arg-type]
        if t == _A.GRAPH:
            return self.subgraph(a.g, g, scope)
        if t == _A.FLOATS:
            return [float(x) for x in a.floats]
        if t == _A.INTS:
            return [int(x) for x in a.ints]
        if t == _A.STRINGS:
            return [_decode(s) for s in a.strings]
        if t == _A.TENSORS:
            return [convert_tensor(x) for x in a.tensors]
        if t == _A.GRAPHS:
            return [self.subgraph(x, g, scope) for x in a.graphs]
        if t == _A.TYPE_PROTO:
            return convert_type(a.tp)
        if t == _A.TYPE_PROTOS:
            return [convert_type(x) for x in a.type_protos]
        raise ModelLoadError(f"{self.where}: attribute {a.name!r} has an unsupported type ({t})")

    def subgraph(self, gp: onnx.GraphProto, parent: Graph, scope: dict[str, Value]) -> Graph:
        sg = Graph(gp.name or "body", None, parent)
        self.graph_into(gp, sg, scope)
        return sg

    def _inline_function(
        self,
        call: onnx.NodeProto,
        fn: onnx.FunctionProto,
        ins: list[Value | None],
        g: Graph,
        scope: dict[str, Value],
        types: dict[str, ValueType | None],
    ) -> None:
        """Expand a call of a model-local function in place; body names get a unique prefix."""
        for o in fn.opset_import:
            g.opset_imports.setdefault("" if o.domain == "ai.onnx" else o.domain, int(o.version))
        prefix = g.unique_name(call.name or fn.name)
        rename = {formal: "" for formal in fn.input}
        rename.update({formal: v.name for formal, v in zip(fn.input, ins) if v is not None})
        given = {a.name: a for a in fn.attribute_proto}
        given.update({a.name: a for a in call.attribute})
        for body in fn.node:
            b = onnx.NodeProto()
            b.CopyFrom(body)
            b.name = f"{prefix}/{body.name or body.op_type}"
            del b.attribute[:]
            for a in body.attribute:
                if not a.ref_attr_name:
                    b.attribute.append(a)
                elif a.ref_attr_name in given:
                    b.attribute.append(given[a.ref_attr_name])
                    b.attribute[-1].name = a.name
            rename.update({o: f"{prefix}/{o}" for o in body.output if o})
            b.ClearField("input")
            b.input.extend(rename.get(n, n) for n in body.input)
            b.ClearField("output")
            b.output.extend(rename[o] if o else "" for o in body.output)
            self.node_into(b, g, scope, types)
        for formal, actual in zip(fn.output, call.output):
            if actual:
                out = Node("Identity", [scope[rename[formal]]], [Value(actual, types.get(actual))],
                           name=g.unique_name(f"{prefix}/output"))
                g.append(out)
                scope[actual] = out.outputs[0]


def _decode(s: bytes) -> str | bytes:
    try:
        return s.decode("utf-8")
    except UnicodeDecodeError:
        return s
