"""mcc's intermediate representation: pure data and semantics (no onnx import here)."""

from .graph import Graph, Node, Value, free_values
from .interpreter import EvaluationError, Interpreter, evaluate
from .ops import Kind, OpDef, UnsupportedOpError, all_ops, get_op, lookup, op_def
from .tensor import Tensor
from .types import DType, Dim, OptionalType, SequenceType, Shape, TensorType, ValueType
from .infer import infer_shapes, infer_node
from .verifier import VerificationError, verify
from .printer import format_graph
from .nxview import to_networkx

__all__ = [
    "DType", "Dim", "EvaluationError", "Graph", "Interpreter", "Kind", "Node", "OpDef", "OptionalType",
    "SequenceType", "Shape", "Tensor", "TensorType", "UnsupportedOpError", "Value", "ValueType",
    "VerificationError", "all_ops", "evaluate", "format_graph", "free_values", "get_op", "infer_node",
    "infer_shapes", "lookup", "op_def", "to_networkx", "verify",
]
