"""One definition per op: the registry and the `OpDef` record.

An OpDef holds everything the rest of mcc needs to know about an operator:

* schema: input and output arity, attribute names with their defaults (per opset version);
* `reference`: numpy semantics, used by the interpreter, constant folding and the property tests;
* `infer`: shape/type inference with symbolic dims (optional: without it the importer's types stand);
* `kind`: the pattern kind that fusion reads (elementwise, broadcast, injective, reduction, ...);
* `macs`: multiply-accumulates for one execution, from the node's value shapes (only ops that do
  multiply-accumulate work define it: Conv, Gemm, MatMul and kin; symbolic dims count as 1).

Ops are declared with the `defop` decorator on their reference function::

    @defop("LeakyRelu", kind=Kind.ELEMWISE, attrs={"alpha": 0.01})
    def leaky_relu(ctx, x, *, alpha):
        return np.where(x >= 0, x, x * x.dtype.type(alpha))

The reference receives an `EvalContext`, the input arrays (None for omitted optionals; lists for
sequence values) and the attributes as keyword arguments, already filled with their defaults for the
node's opset. It returns one value or a tuple of values, one per output (a Python list is a single
sequence value; None an absent optional).

Opset differences are handled inside the one definition: `Attr(default, since={13: -1})` gives an
attribute a default that changes with the opset, and `ctx.opset` lets the reference branch where the
semantics changed (Softmax before 13 coerces to 2-D, for instance).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..types import DType, Shape, TensorType, ValueType

if TYPE_CHECKING:
    from ..graph import Graph, Node, Value


class Kind(enum.Enum):
    """Pattern kinds, in TVM's sense, from the most to the least fusible."""

    ELEMWISE = "elementwise"  # one output element from the same input element, same shape
    BROADCAST = "broadcast"  # elementwise with numpy broadcasting between inputs
    INJECTIVE = "injective"  # each output element reads one input element (reshape, transpose...)
    REDUCTION = "reduction"  # reduces over axes
    COMPLEX = "complex"  # out-fusable: Conv, Gemm, MatMul (an elementwise epilogue may follow)
    OPAQUE = "opaque"  # not fused: control flow, data-dependent shapes, random, strings...


class UnsupportedOpError(Exception):
    """An op (or an opset version of it) that mcc has no definition for."""

    def __init__(self, op_type: str, domain: str, opset: int | None, node: str = "") -> None:
        dom = f"{domain}::" if domain not in ("", "ai.onnx") else ""
        at = f" at opset {opset}" if opset is not None else ""
        where = f" (node {node!r})" if node else ""
        super().__init__(f"unsupported op {dom}{op_type}{at}{where}")
        self.op_type, self.domain, self.opset_version, self.node_name = op_type, domain, opset, node


REQUIRED = object()  # sentinel default: the attribute must be given


@dataclass(frozen=True)
class Attr:
    """An attribute's default, possibly changing with the opset: `Attr(1, since={13: -1})`."""

    default: Any = None
    since: dict[int, Any] = field(default_factory=dict)
    #: The attribute type for export when a value is ambiguous (an empty list): "ints", "floats", ...
    type: str | None = None

    def default_at(self, opset: int) -> Any:
        value = self.default
        for version in sorted(self.since):
            if opset >= version:
                value = self.since[version]
        return value


@dataclass
class OpDef:
    """Everything mcc knows about one operator (see the module docstring)."""

    op_type: str
    reference: Callable[..., Any]
    kind: Kind = Kind.OPAQUE
    domain: str = ""
    attrs: dict[str, Attr] = field(default_factory=dict)
    #: Minimal and maximal number of inputs (None: variadic) and outputs.
    inputs: tuple[int, int | None] = (0, None)
    outputs: tuple[int, int | None] = (1, None)
    #: Earliest opset the definition covers; older opsets are rejected as unsupported.
    since_version: int = 1
    infer: Callable[..., Sequence[ValueType | None]] | None = None
    macs: Callable[[Node], int] | None = None
    #: True when the op draws random numbers (never constant-folded).
    random: bool = False
    doc: str = ""

    def resolve_attrs(self, given: dict[str, Any], opset: int) -> dict[str, Any]:
        """The node's attributes with defaults filled in for `opset`; unknown names are kept."""
        out: dict[str, Any] = {}
        for name, spec in self.attrs.items():
            if name in given:
                out[name] = given[name]
            else:
                d = spec.default_at(opset)
                out[name] = None if d is REQUIRED else d
        for name, v in given.items():
            out.setdefault(name, v)
        return out


_REGISTRY: dict[tuple[str, str], OpDef] = {}


def _norm_domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def register(opdef: OpDef) -> OpDef:
    key = (_norm_domain(opdef.domain), opdef.op_type)
    if key in _REGISTRY:
        raise ValueError(f"op {opdef.op_type!r} in domain {opdef.domain!r} is defined twice")
    _REGISTRY[key] = opdef
    return opdef


def defop(
    op_type: str,
    *,
    kind: Kind = Kind.OPAQUE,
    attrs: dict[str, Any] | None = None,
    domain: str = "",
    inputs: tuple[int, int | None] = (0, None),
    outputs: tuple[int, int | None] = (1, None),
    since_version: int = 1,
    infer: Callable[..., Sequence[ValueType | None]] | None = None,
    macs: Callable[[Node], int] | None = None,
    random: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator that registers a reference function as op `op_type` (see module docstring).

    `attrs` maps names to a default value or an `Attr` (a plain value v means `Attr(v)`).
    """

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        specs = {k: v if isinstance(v, Attr) else Attr(v) for k, v in (attrs or {}).items()}
        register(
            OpDef(
                op_type, fn, kind, domain, specs, inputs, outputs, since_version, infer, macs, random,
                (fn.__doc__ or "").strip(),
            )
        )
        return fn

    return wrap


def get_op(op_type: str, domain: str = "") -> OpDef | None:
    return _REGISTRY.get((_norm_domain(domain), op_type))


def lookup(op_type: str, domain: str, opset: int, node: str = "") -> OpDef:
    """The definition of `op_type`, or UnsupportedOpError naming the op and opset."""
    d = get_op(op_type, domain)
    if d is None or opset < d.since_version:
        raise UnsupportedOpError(op_type, domain, opset, node)
    return d


def all_ops() -> list[OpDef]:
    return sorted(_REGISTRY.values(), key=lambda d: (d.domain, d.op_type))


def op_def(node: Node) -> OpDef:
    return lookup(node.op_type, node.domain, node.opset, node.name)


# ---------------------------------------------------------------------------------------------
# Contexts handed to reference and inference functions.


class EvalContext:
    """What a reference function may ask about the node it evaluates."""

    def __init__(
        self,
        node: Node | None,
        opset: int,
        run_graph: Callable[[Graph, Sequence[Any]], list[Any]] | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.node = node
        self.opset = opset
        self._run_graph = run_graph
        self.rng = rng if rng is not None else np.random.default_rng(0)

    @property
    def num_outputs(self) -> int:
        return 1 if self.node is None else len(self.node.outputs)

    @property
    def output_types(self) -> list[ValueType | None]:
        return [] if self.node is None else [v.type for v in self.node.outputs]

    def output_dtype(self, i: int = 0) -> np.dtype | None:
        """The numpy dtype the graph declares for output `i`, when known."""
        if self.node is None or i >= len(self.node.outputs):
            return None
        dt = self.node.outputs[i].dtype
        return None if dt is None or dt == DType.UNDEFINED else dt.np

    def run_graph(self, graph: Graph, feeds: Sequence[Any]) -> list[Any]:
        """Run a subgraph (If/Loop/Scan body) on positional `feeds`; outer scope is visible."""
        if self._run_graph is None:
            raise RuntimeError("this context cannot run subgraphs")
        return self._run_graph(graph, feeds)


class InferContext:
    """What an inference function may ask: opset, constant inputs, fresh symbolic dims."""

    def __init__(self, node: Node, opset: int) -> None:
        self.node = node
        self.opset = opset

    def const(self, i: int) -> np.ndarray | None:
        """The value of input `i` when it is a constant (initializer or Constant node), else None."""
        return constant_value(self.node.input(i))

    def dim(self, hint: str = "d") -> str:
        """A fresh symbolic dim name (for data-dependent sizes such as NonZero's)."""
        g = self.node.graph
        base = f"{self.node.name or self.node.op_type}_{hint}"
        return g.unique_name(base) if g is not None else base


# ---------------------------------------------------------------------------------------------
# Helpers shared by op families.


def constant_value(v: Value | None) -> np.ndarray | None:
    """`v`'s value when it is an initializer or the output of a Constant node, else None.

    A Constant node is decoded by evaluating its own definition, so its attribute forms
    (value, value_float, value_ints, ...) are known in exactly one place.
    """
    if v is None:
        return None
    if v.const is not None:
        return v.const.array
    p = v.producer
    if p is None or p.op_type != "Constant" or _norm_domain(p.domain) != "":
        return None
    op = get_op("Constant")
    if op is None:
        return None
    try:
        return np.asarray(op.reference(EvalContext(p, 1), **op.resolve_attrs(p.attributes, 1)))
    except ValueError:
        return None


def broadcast_shapes(*shapes: Shape) -> Shape:
    """Numpy broadcasting over symbolic shapes; an unknown rank gives an unknown result."""
    if any(s is None for s in shapes):
        return None
    rank = max((len(s) for s in shapes), default=0)  # type: ignore[arg-type]
    out: list[Any] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]  # type: ignore[arg-type]
        known = {d for d in dims if d != 1}
        if not known:
            out.append(1)
        elif len(known) == 1:
            out.append(known.pop())
        else:
            ints = {d for d in known if isinstance(d, int)}
            out.append(ints.pop() if len(ints) == 1 else None)
    return tuple(out)


def numel(shape: Shape) -> int | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def same_as_input(i: int = 0, dtype: DType | None = None) -> Callable[..., list[ValueType | None]]:
    """Inference: one output with input `i`'s shape (and its dtype unless `dtype` is given)."""

    def infer(ctx: InferContext, *types: ValueType | None, **_: Any) -> list[ValueType | None]:
        t = types[i] if i < len(types) else None
        if not isinstance(t, TensorType):
            return [None]
        return [TensorType(dtype or t.dtype, t.shape)]

    return infer


def broadcast_infer(dtype: DType | None = None) -> Callable[..., list[ValueType | None]]:
    """Inference for broadcasting ops: broadcast shape, input 0's dtype unless `dtype`."""

    def infer(ctx: InferContext, *types: ValueType | None, **_: Any) -> list[ValueType | None]:
        ts = [t for t in types if t is not None]
        if not ts or not all(isinstance(t, TensorType) for t in ts):
            return [None]
        return [TensorType(dtype or ts[0].dtype, broadcast_shapes(*(t.shape for t in ts)))]  # type: ignore[union-attr]

    return infer

