"""Memory planning: every intermediate tensor of a program gets an offset in one arena.

Liveness is per storage: a storage starts where its first value is defined and ends at the last read
of any value sharing it (views made by Reshape share their input's storage; an elementwise kernel
may write its output over an input that dies at that call). Storages are then placed greedily, the
largest first, at the lowest offset that no storage alive at the same time overlaps (the classic
interval-colouring heuristic of TVM's and onnxruntime's planners). Constants get their own arena,
laid out once in call order, so the same program always gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ir import Value

from .program import Const, Program, Scratch, Use

ALIGN = 64


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def nbytes_of(v: Value) -> int:
    shape, dt = v.shape, v.dtype
    assert shape is not None and dt is not None and all(isinstance(d, int) for d in shape), v
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dt.np).itemsize


@dataclass(eq=False)
class _Storage:
    nbytes: int
    start: int
    members: list[Value] = field(default_factory=list)
    end: int = -1
    offset: int = -1


def plan_memory(program: Program, inplace: bool = True, outputs_in_arena: bool = False) -> Program:
    """Assign arena offsets to the program's native intermediates and scratch buffers (in place).
    With `outputs_in_arena`, graph outputs written by kernels get arena buffers too (they live to
    the end); otherwise the driver allocates them fresh on every run, since callers keep them."""
    calls = program.calls
    outputs = {id(v) for v in program.outputs}
    last_use: dict[int, int] = {}
    for t, c in enumerate(calls):
        for v in c.reads():
            last_use[id(v)] = t
        for out, src in c.alias.items():
            last_use[id(src)] = t
    for v in program.outputs:
        last_use[id(v)] = len(calls)

    storage: dict[int, _Storage] = {}  # value id -> its storage
    scratch: list[tuple[Scratch, _Storage]] = []

    def end_of(s: _Storage) -> int:
        return max(last_use.get(id(m), -1) for m in s.members)

    for t, c in enumerate(calls):
        if c.alias:
            for v in c.defines:
                src = c.alias.get(id(v))
                if src is not None and id(src) in storage:
                    s = storage[id(src)]
                    s.members.append(v)
                    storage[id(v)] = s
            continue
        if c.kernel is None:
            continue
        shared = {id(o): i for o, i in c.inplace} if inplace else {}
        for v in c.defines:
            if id(v) in outputs and not outputs_in_arena:
                continue  # graph outputs are allocated fresh on every run: callers keep them
            src = shared.get(id(v))
            s = storage.get(id(src)) if src is not None else None
            if (s is not None and end_of(s) == t and s.nbytes == nbytes_of(v)
                    and not any(id(m) in outputs for m in s.members)):
                s.members.append(v)
                storage[id(v)] = s
            else:
                storage[id(v)] = _Storage(nbytes_of(v), t, [v])
        for a in c.args:
            if isinstance(a, Scratch):
                n = int(np.prod(a.shape, dtype=np.int64)) * np.dtype(a.dtype).itemsize
                scratch.append((a, _Storage(n, t, end=t)))

    unique = {id(s): s for s in storage.values()}
    for s in unique.values():
        s.end = max(end_of(s), s.start)
    everything = list(unique.values()) + [s for _, s in scratch]
    program.arena_bytes = _place(everything)
    program.offsets = {vid: (s.offset, s.nbytes) for vid, s in storage.items()}
    index = {id(s): i for i, s in enumerate(unique.values())}
    program.storage = {vid: index[id(s)] for vid, s in storage.items()}
    program.scratch_offsets = {id(a): s.offset for a, s in scratch}
    _layout_consts(program)
    return program


def _place(storages: list[_Storage]) -> int:
    """Greedy placement by decreasing size; returns the arena size."""
    placed: list[_Storage] = []
    top = 0
    for s in sorted(storages, key=lambda s: (-s.nbytes, s.start, s.end)):
        busy = sorted((p.offset, p.offset + _align(p.nbytes)) for p in placed
                      if not (p.end < s.start or s.end < p.start))
        offset = 0
        for lo, hi in busy:
            if offset + _align(s.nbytes) <= lo:
                break
            offset = max(offset, hi)
        s.offset = offset
        placed.append(s)
        top = max(top, offset + _align(s.nbytes))
    return top


def _layout_consts(program: Program) -> None:
    """One uint8 array holding every constant argument, each 64-byte aligned, in call order."""
    order: list[Const] = []
    seen: set[int] = set()
    for c in program.calls:
        for a in c.args:
            if isinstance(a, Const) and id(a) not in seen:
                seen.add(id(a))
                order.append(a)
    size = 0
    offsets: dict[int, int] = {}
    for a in order:
        offsets[id(a)] = size
        size += _align(a.array.nbytes)
    buf = np.zeros(max(size, ALIGN), np.uint8)
    for a in order:
        raw = np.ascontiguousarray(a.array).reshape(-1).view(np.uint8)
        buf[offsets[id(a)]:offsets[id(a)] + raw.size] = raw
    program.consts = buf
    program.const_offsets = offsets


def check_plan(program: Program) -> None:
    """Assert that no two buffers alive at the same time overlap (used by the tests).

    Liveness is recomputed from the calls independently of the planner: a value lives from the
    first call that mentions it to the last; values sharing one storage (views, in-place results)
    count as one buffer.
    """
    spans: list[tuple[int, int, int, int, str]] = []
    lives: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    where: dict[int, tuple[int, int]] = {}
    for t, c in enumerate(program.calls):
        for a in c.args:
            if isinstance(a, Use) and id(a.value) in program.offsets:
                key = program.storage[id(a.value)]
                lives.setdefault(key, []).append(t)
                names.setdefault(key, a.value.name)
                where[key] = program.offsets[id(a.value)]
            if isinstance(a, Scratch):
                off = program.scratch_offsets[id(a)]
                n = int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
                spans.append((t, t, off, off + n, f"scratch of call {t}"))
    for v in program.outputs:
        if id(v) in program.offsets:
            lives.setdefault(program.storage[id(v)], []).append(len(program.calls))
            where[program.storage[id(v)]] = program.offsets[id(v)]
    for key, ts in lives.items():
        off, n = where[key]
        spans.append((min(ts), max(ts), off, off + n, f"%{names.get(key, '?')}"))
    for i, (s1, e1, lo1, hi1, n1) in enumerate(spans):
        for s2, e2, lo2, hi2, n2 in spans[i + 1:]:
            if not (e1 < s2 or e2 < s1) and lo1 < hi2 and lo2 < hi1:
                raise AssertionError(f"buffers {n1} [{lo1},{hi1}) calls {s1}-{e1} and {n2} [{lo2},{hi2}) "
                                     f"calls {s2}-{e2} overlap while both are live")
