"""The graph IR: Values, Nodes and Graphs.

Ownership and links, in the manner of onnx-ir and MLIR:

* a Node owns its output Values; each Value knows its `producer` (None for graph inputs and
  initializers) and its `uses` as (node, input index) pairs, kept exact by every edit;
* a Graph owns its nodes, inputs, initializers and outputs; subgraphs (If/Loop/Scan bodies) are
  Graphs held in node attributes and may read Values of enclosing graphs (outer scope);
* graph edits go through a few methods (`append`, `insert_before`, `insert_after`, `remove`,
  `replace_all_uses`, `Node.set_input`), so passes never patch links by hand.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .tensor import Tensor
from .types import DType, Shape, TensorType, ValueType


class Value:
    """A value in SSA form: produced once (by a node, a graph input or an initializer)."""

    __slots__ = ("name", "type", "producer", "index", "_uses", "const", "graph", "doc")

    def __init__(self, name: str, type: ValueType | None = None, const: Tensor | None = None) -> None:
        self.name = name
        self.type: ValueType | None = type if type is not None or const is None else const.type
        self.producer: Node | None = None
        self.index: int = 0
        self._uses: list[tuple[Node, int]] = []
        self.const: Tensor | None = const
        self.graph: Graph | None = None
        self.doc: str = ""

    # -- type views ---------------------------------------------------------------------------
    @property
    def dtype(self) -> DType | None:
        return self.type.dtype if isinstance(self.type, TensorType) else None

    @property
    def shape(self) -> Shape:
        return self.type.shape if isinstance(self.type, TensorType) else None

    @property
    def rank(self) -> int | None:
        s = self.shape
        return None if s is None else len(s)

    # -- links --------------------------------------------------------------------------------
    @property
    def uses(self) -> list[tuple[Node, int]]:
        return list(self._uses)

    @property
    def consumers(self) -> list[Node]:
        """Distinct nodes that read this value, in first-use order."""
        seen: dict[int, Node] = {}
        for n, _ in self._uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and self.producer is None and self.const is None

    @property
    def is_initializer(self) -> bool:
        return self.const is not None and self.producer is None

    @property
    def is_graph_output(self) -> bool:
        return self.graph is not None and any(o is self for o in self.graph.outputs)

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operator application. `inputs` may hold None for an omitted optional input."""

    __slots__ = ("op_type", "domain", "name", "attributes", "_inputs", "outputs", "graph", "doc", "meta")

    def __init__(
        self,
        op_type: str,
        inputs: Sequence[Value | None] = (),
        outputs: Sequence[Value] | int = 1,
        attributes: dict[str, Any] | None = None,
        name: str = "",
        domain: str = "",
    ) -> None:
        self.op_type = op_type
        self.domain = domain
        self.name = name
        self.attributes: dict[str, Any] = dict(attributes or {})
        self._inputs: list[Value | None] = []
        self.graph: Graph | None = None
        self.doc = ""
        self.meta: dict[str, Any] = {}
        if isinstance(outputs, int):
            outputs = [Value("") for _ in range(outputs)]
        self.outputs: list[Value] = []
        for i, v in enumerate(outputs):
            if v.producer is not None:
                raise ValueError(f"value {v.name!r} already has a producer")
            v.producer, v.index = self, i
            self.outputs.append(v)
        for v in inputs:
            self._append_input(v)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        return tuple(self._inputs)

    @property
    def opset(self) -> int:
        """The opset version this node's domain is imported at in its graph."""
        g = self.graph
        if g is None:
            raise ValueError(f"node {self.name or self.op_type} is not in a graph")
        return g.opset(self.domain)

    @property
    def subgraphs(self) -> list[Graph]:
        out: list[Graph] = []
        for a in self.attributes.values():
            if isinstance(a, Graph):
                out.append(a)
            elif isinstance(a, list) and a and isinstance(a[0], Graph):
                out.extend(a)
        return out

    def _append_input(self, v: Value | None) -> None:
        if v is not None:
            v._uses.append((self, len(self._inputs)))
        self._inputs.append(v)

    def set_input(self, i: int, v: Value | None) -> None:
        """Rewire input `i` to read `v` (None: omit it); use lists stay exact."""
        if i == len(self._inputs):
            self._append_input(v)
            return
        old = self._inputs[i]
        if old is v:
            return
        if old is not None:
            old._uses.remove((self, i))
        if v is not None:
            v._uses.append((self, i))
        self._inputs[i] = v

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        self.detach_inputs()
        for v in values:
            self._append_input(v)

    def detach_inputs(self) -> None:
        for i, v in enumerate(self._inputs):
            if v is not None:
                v._uses.remove((self, i))
        self._inputs = []

    def input(self, i: int) -> Value | None:
        """Input `i`, or None when omitted or absent."""
        return self._inputs[i] if i < len(self._inputs) else None

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attributes.get(name, default)

    def __repr__(self) -> str:
        outs = ", ".join(f"%{v.name}" for v in self.outputs)
        ins = ", ".join("_" if v is None else f"%{v.name}" for v in self._inputs)
        return f"{outs} = {self.op_type}({ins})"


class Graph:
    """A graph: ordered inputs, initializers, nodes and outputs, plus opset imports and metadata.

    `nodes` iterates in topological order. Nodes are kept in insertion order, which every edit
    method keeps topological; a full re-sort is available through `sort()`.
    """

    def __init__(
        self,
        name: str = "main",
        opset_imports: dict[str, int] | None = None,
        parent: Graph | None = None,
    ) -> None:
        self.name = name
        self._opsets: dict[str, int] = dict(opset_imports or {})
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self._nodes: list[Node] = []
        self.doc = ""
        #: Model-level facts kept for export: ir_version, producer, model metadata_props, ...
        self.meta: dict[str, Any] = {}
        self._names: set[str] | None = None
        self._counter = itertools.count()

    # -- opsets -------------------------------------------------------------------------------
    @property
    def root(self) -> Graph:
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    @property
    def opset_imports(self) -> dict[str, int]:
        return self.root._opsets

    def opset(self, domain: str = "") -> int:
        imports = self.opset_imports
        d = "" if domain in ("ai.onnx",) else domain
        if d not in imports:
            raise KeyError(f"graph imports no opset for domain {domain!r}")
        return imports[d]

    # -- iteration ----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """The nodes in topological order (a snapshot: safe to edit the graph while iterating)."""
        return list(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)

    def all_nodes(self) -> Iterator[Node]:
        """Every node of this graph and of its subgraphs, recursively."""
        for n in list(self._nodes):
            yield n
            for sg in n.subgraphs:
                yield from sg.all_nodes()

    def values(self) -> Iterator[Value]:
        """Every value defined in this graph (not in subgraphs): inputs, initializers, outputs of nodes."""
        yield from self.inputs
        yield from self.initializers.values()
        for n in self._nodes:
            yield from n.outputs

    # -- names --------------------------------------------------------------------------------
    def _all_names(self) -> set[str]:
        root = self.root
        if root._names is None:
            names: set[str] = set()
            stack = [root]
            while stack:
                g = stack.pop()
                names.update(v.name for v in g.values())
                names.update(n.name for n in g._nodes if n.name)
                for n in g._nodes:
                    stack.extend(n.subgraphs)
            root._names = names
        return root._names

    def unique_name(self, base: str) -> str:
        """A value/node name not yet used anywhere in the model."""
        names = self._all_names()
        base = base or "v"
        if base not in names:
            names.add(base)
            return base
        while True:
            cand = f"{base}_{next(self.root._counter)}"
            if cand not in names:
                names.add(cand)
                return cand

    def _claim(self, v: Value, base: str) -> None:
        if not v.name:
            v.name = self.unique_name(base)
        else:
            self._all_names().add(v.name)
        v.graph = self

    # -- building -----------------------------------------------------------------------------
    def add_input(self, name: str, type: ValueType | None = None) -> Value:
        v = Value(name, type)
        self._claim(v, "input")
        self.inputs.append(v)
        return v

    def add_initializer(self, name: str, data: Tensor | np.ndarray) -> Value:
        """Add a constant; `name` is made unique if taken."""
        t = data if isinstance(data, Tensor) else Tensor(np.asarray(data))
        if name in self._all_names():
            name = self.unique_name(name)
        v = Value(name, const=t)
        self._claim(v, "const")
        self.initializers[v.name] = v
        return v

    def _adopt(self, node: Node) -> None:
        if node.graph is not None:
            raise ValueError(f"node {node!r} is already in a graph")
        node.graph = self
        if node.name:
            self._all_names().add(node.name)
        for v in node.outputs:
            self._claim(v, f"{node.op_type.lower()}_out")
        for sg in node.subgraphs:
            sg.parent = self

    def append(self, node: Node) -> Node:
        """Add `node` at the end (its inputs must already be defined)."""
        self._adopt(node)
        self._nodes.append(node)
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self._adopt(node)
        self._nodes.insert(self._nodes.index(anchor), node)
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        self._adopt(node)
        self._nodes.insert(self._nodes.index(anchor) + 1, node)
        return node

    def make_node(
        self,
        op_type: str,
        inputs: Sequence[Value | None],
        attributes: dict[str, Any] | None = None,
        num_outputs: int = 1,
        name: str = "",
        domain: str = "",
        before: Node | None = None,
    ) -> Node:
        """Create a node and add it (at the end, or before `before`)."""
        node = Node(op_type, inputs, num_outputs, attributes, name=name, domain=domain)
        if not node.name:
            node.name = self.unique_name(op_type)
        return self.insert_before(before, node) if before is not None else self.append(node)

    def remove(self, node: Node, force: bool = False) -> None:
        """Remove `node`; its outputs must be unused unless `force` (then readers keep dangling links)."""
        if not force:
            for v in node.outputs:
                if v._uses or v.is_graph_output:
                    raise ValueError(f"cannot remove {node!r}: output %{v.name} is still used")
        node.detach_inputs()
        self._nodes.remove(node)
        node.graph = None

    def remove_initializer(self, v: Value) -> None:
        if v._uses:
            raise ValueError(f"initializer %{v.name} is still used")
        del self.initializers[v.name]

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Make every reader of `old` (nodes, subgraph nodes and graph outputs) read `new`."""
        if old is new:
            return
        for node, i in list(old._uses):
            node.set_input(i, new)
        for g in _graphs_owning_output(old):
            g.outputs = [new if o is old else o for o in g.outputs]

    def can_carry_name(self, v: Value) -> bool:
        """Whether `v` may take over a graph output's public name: a node output of this graph that is
        not already an output (an output may not alias an input, an initializer or another output)."""
        return v.producer is not None and v.producer.graph is self and not v.is_graph_output

    def replace_value(self, old: Value, new: Value) -> None:
        """`replace_all_uses`, keeping public names: when `old` is an output of this graph and `new` can
        carry its name, `new` takes it (and `old`, about to die, gets a fresh one)."""
        moves = old.is_graph_output and self.can_carry_name(new)
        self.replace_all_uses(old, new)
        if moves:
            name = old.name
            old.name = self.unique_name(f"{name}_replaced")
            new.name = name
            new.type = new.type if new.type is not None else old.type

    # -- order --------------------------------------------------------------------------------
    def sort(self) -> None:
        """Re-order nodes topologically (stable): needed only after edits that break the order."""
        index = {id(n): i for i, n in enumerate(self._nodes)}
        deps: dict[int, set[int]] = {i: set() for i in range(len(self._nodes))}
        users: dict[int, list[int]] = {i: [] for i in range(len(self._nodes))}
        for i, n in enumerate(self._nodes):
            for v in _reads(n):
                p = _ancestor_in(v.producer, self) if v.producer is not None else None
                if p is not None and id(p) in index and index[id(p)] != i:
                    j = index[id(p)]
                    if j not in deps[i]:
                        deps[i].add(j)
                        users[j].append(i)
        import heapq

        ready = [i for i, d in deps.items() if not d]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for u in users[i]:
                deps[u].discard(i)
                if not deps[u]:
                    heapq.heappush(ready, u)
        if len(order) != len(self._nodes):
            raise ValueError(f"graph {self.name!r} has a cycle")
        self._nodes = [self._nodes[i] for i in order]

    def copy(self) -> Graph:
        """A deep copy of the structure (tensors are shared: they are immutable)."""
        from .clone import clone_graph

        return clone_graph(self)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.inputs)} inputs, {len(self._nodes)} nodes, {len(self.outputs)} outputs)"

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)


def _reads(node: Node) -> Iterable[Value]:
    """Values a node reads: its inputs and the outer-scope values its subgraphs read."""
    for v in node.inputs:
        if v is not None:
            yield v
    for sg in node.subgraphs:
        yield from free_values(sg)


def free_values(g: Graph) -> list[Value]:
    """Values that `g` (or its subgraphs) reads but that are defined outside `g`."""
    defined: set[int] = set()
    out: dict[int, Value] = {}

    def walk(graph: Graph) -> None:
        for v in graph.values():
            defined.add(id(v))
        for n in graph._nodes:
            for v in n.inputs:
                if v is not None and id(v) not in defined:
                    out.setdefault(id(v), v)
            for sg in n.subgraphs:
                walk(sg)
        for v in graph.outputs:
            if id(v) not in defined:
                out.setdefault(id(v), v)

    walk(g)
    return [v for k, v in out.items() if k not in defined]


def _ancestor_in(node: Node | None, g: Graph) -> Node | None:
    """The node of `g` that is `node` or contains it in a subgraph."""
    while node is not None and node.graph is not g:
        owner = node.graph
        if owner is None or owner.parent is None:
            return None
        node = _owner_node(owner)
    return node


def _owner_node(sub: Graph) -> Node | None:
    parent = sub.parent
    if parent is None:
        return None
    for n in parent._nodes:
        if any(s is sub for s in n.subgraphs):
            return n
    return None


def _graphs_owning_output(v: Value) -> list[Graph]:
    out: list[Graph] = []
    g = v.graph
    if g is None:
        return out
    stack = [g.root]
    while stack:
        cur = stack.pop()
        if any(o is v for o in cur.outputs):
            out.append(cur)
        for n in cur._nodes:
            stack.extend(n.subgraphs)
    return out
