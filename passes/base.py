"""Pass infrastructure: the Pass base class, the registry by name, text pipelines, the manager.

A pass is a class with a `name`, an `Options` dataclass (typed, with defaults) and a docstring that
states its rewrite; `run(graph)` edits the graph in place and returns whether it changed anything.
A plain function `Graph -> Graph | None` is accepted wherever a pass is (see `as_pass`).

Pipelines are text: `"dce,remove-identity"`, with options in braces: `"fuse{max-depth=64}"`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any, ClassVar

from ir import Graph, verify

_REGISTRY: dict[str, type[Pass]] = {}

#: Named pipelines; `default` is what `compress` and `compile` run.
PIPELINES: dict[str, str] = {
    # Fold what is constant, drop no-ops, rewrite exporters' spelled-out ops into canonical ones.
    "cleanup": "fold-constants,remove-identity,canonicalize,cse,dce",
    # Then fold BatchNormalization and per-channel affine ops into weights (compression runs between
    # cleanup and this step: channel pruning reads BatchNorm scales and re-estimates BatchNorm statistics).
    "optimize": "cleanup,fold-batchnorm,cse,fold-constants,dce",
    # What compress and compile run: optimize, then fuse into kernels.
    "default": "optimize,fuse",
}


class Pass:
    """Base class of all passes (subclass, set `name`, write `run` and a docstring)."""

    name: ClassVar[str] = ""
    #: Passes that trade accuracy for size or speed (pruning, quantization) are `lossy`: they are
    #: held to error bounds in their own tests instead of exact preservation (check_pass).
    lossy: ClassVar[bool] = False

    @dataclasses.dataclass
    class Options:
        pass

    def __init__(self, **options: Any) -> None:
        try:
            self.options = self.Options(**options)
        except TypeError:
            known = ", ".join(f.name for f in dataclasses.fields(self.Options)) or "none"
            raise PipelineError(f"pass {self.name!r}: unknown option in {sorted(options)}; options: {known}") from None

    def run(self, graph: Graph) -> bool:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> Graph:
        self.last_changed = bool(self.run(graph))
        return graph

    def __repr__(self) -> str:
        return f"{self.name}{_fmt_options(self.options)}"


class PipelineError(ValueError):
    """A pipeline string names an unknown pass or gives a bad option."""


def register_pass(cls: type[Pass]) -> type[Pass]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"pass {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def get_pass(name: str) -> type[Pass]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise PipelineError(f"unknown pass {name!r}; known passes: {', '.join(sorted(_REGISTRY))}") from None


def registered_passes() -> dict[str, type[Pass]]:
    return dict(sorted(_REGISTRY.items()))


class FunctionPass(Pass):
    """Adapts a function `Graph -> Graph | None` (editing in place or returning a new graph)."""

    def __init__(self, fn: Callable[[Graph], Graph | None]) -> None:
        super().__init__()
        self.fn = fn
        self.name = getattr(fn, "__name__", "function")  # type: ignore[misc]

    def __call__(self, graph: Graph) -> Graph:
        out = self.fn(graph)
        self.last_changed = True
        return graph if out is None else out

    def run(self, graph: Graph) -> bool:
        out = self.fn(graph)
        if out is not None and out is not graph:
            raise ValueError(f"{self.name} returns a new graph: call it through `apply`, not `run`")
        return True


class PipelinePass(Pass):
    """Several passes run in order, as one pass (what a pipeline string names)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.passes = parse_pipeline(text)
        self.name = text  # type: ignore[misc]

    def run(self, graph: Graph) -> bool:
        changed = False
        for p in self.passes:
            changed |= bool(p.run(graph))
        return changed


def as_pass(p: Pass | Callable[[Graph], Graph | None] | str) -> Pass:
    """A Pass from a Pass, a pipeline string (one or more passes) or a function `Graph -> Graph | None`."""
    if isinstance(p, Pass):
        return p
    if isinstance(p, str):
        passes = parse_pipeline(p)
        return passes[0] if len(passes) == 1 else PipelinePass(p)
    return FunctionPass(p)


_ITEM = re.compile(r"\s*([A-Za-z0-9_\-]+)\s*(\{[^}]*\})?\s*(?:,|$)")


def parse_pipeline(text: str) -> list[Pass]:
    """`"a,b{k=v,k2=v2},c"` -> pass instances; named pipelines (e.g. `default`) expand in place."""
    out: list[Pass] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _ITEM.match(text, pos)
        if not m or m.end() == pos:
            raise PipelineError(f"cannot parse pipeline {text!r} at position {pos}")
        name, opts = m.group(1), m.group(2)
        pos = m.end()
        if name in PIPELINES and not opts:
            out.extend(parse_pipeline(PIPELINES[name]))
            continue
        cls = get_pass(name)
        out.append(cls(**_parse_options(cls, opts[1:-1] if opts else "")))
    return out


def _parse_options(cls: type[Pass], text: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise PipelineError(f"pass {cls.name!r}: option {item!r} must be key=value")
        key, raw = (s.strip() for s in item.split("=", 1))
        attr = key.replace("-", "_")
        if attr not in fields:
            raise PipelineError(f"pass {cls.name!r} has no option {key!r}; options: {', '.join(fields) or 'none'}")
        options[attr] = _coerce(raw, fields[attr].type, cls.name, key)
    return options


def _coerce(raw: str, typ: Any, pass_name: str, key: str) -> Any:
    t = typ if isinstance(typ, str) else getattr(typ, "__name__", str(typ))
    try:
        if t == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return raw.lower() in ("1", "true", "yes")
        if t == "int":
            return int(raw)
        if t == "float":
            return float(raw)
    except ValueError:
        raise PipelineError(f"pass {pass_name!r}: option {key}={raw!r} is not a valid {t}") from None
    return raw


def _fmt_options(options: Any) -> str:
    items = dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
    return "{" + ",".join(f"{k.replace('_', '-')}={v}" for k, v in items.items()) + "}" if items else ""


@dataclasses.dataclass
class PassManager:
    """Runs passes in order, optionally to a fixpoint, verifying and timing each one."""

    passes: list[Pass]
    verify: bool = False
    fixpoint: bool = False
    max_iterations: int = 8
    dump_ir_after: set[str] = dataclasses.field(default_factory=set)
    timings: dict[str, float] = dataclasses.field(default_factory=dict)

    def run(self, graph: Graph) -> Graph:
        for _ in range(self.max_iterations if self.fixpoint else 1):
            changed = False
            for p in self.passes:
                t0 = time.perf_counter()
                before = graph
                graph = p(graph)
                changed |= graph is not before or bool(getattr(p, "last_changed", True))
                self.timings[p.name] = self.timings.get(p.name, 0.0) + time.perf_counter() - t0
                if self.verify:
                    verify(graph)
                if p.name in self.dump_ir_after or "all" in self.dump_ir_after:
                    print(f"// ----- IR after {p!r} -----\n{graph}", file=sys.stderr)
            if not changed:
                break
        return graph


def run(graph: Graph, pipeline: str | list[Pass] = "default", *, verify_each: bool = False,
        fixpoint: bool = False, dump_ir_after: set[str] | None = None,
        timings: dict[str, float] | None = None) -> Graph:
    """Run a text pipeline (or pass list) on `graph`; returns the graph (edited in place).

    `timings`, when given, receives the seconds spent in each pass (summed by pass name). With
    MCC_VERIFY=1 in the environment (the test suite sets it) every pass is verified.
    """
    verify_each = verify_each or os.environ.get("MCC_VERIFY") == "1"
    passes = parse_pipeline(pipeline) if isinstance(pipeline, str) else pipeline
    pm = PassManager(passes, verify_each, fixpoint, dump_ir_after=dump_ir_after or set())
    graph = pm.run(graph)
    if timings is not None:
        for k, v in pm.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    return graph
