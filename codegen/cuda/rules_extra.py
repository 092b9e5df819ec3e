"""CUDA kernel selection for pooling, softmax, normalization, reductions, data movement and Resize.

Most of these ops are the CPU target's rules retargeted: each launcher in `kernels_extra` takes the
same arguments, views and host-built tables as the CPU kernel of the same name, so the CUDA rule runs
the CPU rule (`codegen.cpu.rules_extra`, `codegen.cpu.rules`) and swaps the kernel's module. The two
targets therefore agree on what runs natively and on every semantic detail (slice clamping, resize
coordinates and taps, reduction axes, negative indices) by construction. A CPU call naming a kernel
this module has no launcher for makes the rule return None (the node falls back), never a wrong call.

Own rules where the CPU's call cannot be reused as is:

* MaxPool / AveragePool: the CPU writes the window geometry into a generated kernel's source; here
  it is launcher arguments (same applicability as the CPU rules, same `_geometry`).
* Pad: every mode (constant, reflect, edge, wrap; negative pads crop), not only constant.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


from ir import Node

from ..cpu import rules as cpu_rules
from ..cpu import rules_extra as cpu_extra
from ..cpu.rules_extra import _c_strides, _fill, _ints, _pad_box, _prod
from ..program import Call, Kernel, Lit, Use
from . import kernels_extra
from .rules import arg, k, rule

MODULE = "codegen.cuda.kernels_extra"

#: The CPU kernels (by name) that have a launcher of the same name and arguments here.
LAUNCHERS = frozenset({
    "strided_copy", "transpose2d", "concat", "split", "gather", "softmax", "layernorm", "reduce",
    "resize_nearest", "resize_taps", "global_avgpool", "global_maxpool",
})


def kx(name: str) -> Kernel:
    """The launcher `name` of `kernels_extra`."""
    return k(name, MODULE)


def retarget(calls: list[Call] | None) -> list[Call] | None:
    """The CPU rule's calls with each kernel replaced by the launcher of the same name (views stay
    views); None if the CPU rule declined or chose a kernel without a CUDA launcher."""
    if calls is None:
        return None
    out = []
    for c in calls:
        if c.kernel is not None:
            if c.kernel.source is not None or c.kernel.name not in LAUNCHERS:
                return None
            c = dataclasses.replace(c, kernel=kx(c.kernel.name))
        out.append(c)
    return out


def _mirror(cpu_rule: Callable[[Node], list[Call] | None]) -> Callable[[Node], list[Call] | None]:
    """`cpu_rule` with its calls retargeted (see `retarget`)."""
    def lower(node: Node) -> list[Call] | None:
        return retarget(cpu_rule(node))

    lower.__name__ = cpu_rule.__name__
    lower.__qualname__ = cpu_rule.__qualname__
    lower.__doc__ = f"The CPU rule `{cpu_rule.__module__}.{cpu_rule.__name__}`, retargeted to CUDA launchers."
    return lower


transpose = rule("Transpose")(_mirror(cpu_extra.transpose))
slice_ = rule("Slice")(_mirror(cpu_extra.slice_))
expand = rule("Expand")(_mirror(cpu_extra.expand))
concat = rule("Concat")(_mirror(cpu_extra.concat))
split = rule("Split")(_mirror(cpu_extra.split))
gather = rule("Gather")(_mirror(cpu_extra.gather))
softmax = rule("Softmax", "LogSoftmax")(_mirror(cpu_extra.softmax))
layernorm = rule("LayerNormalization")(_mirror(cpu_extra.layernorm))
reduce = rule(*cpu_extra.REDUCE_OPS)(_mirror(cpu_extra.reduce))
resize = rule("Resize")(_mirror(cpu_extra.resize))
global_pool = rule("GlobalAveragePool", "GlobalMaxPool")(_mirror(cpu_rules.global_pool))


# -- pooling ----------------------------------------------------------------------------------


@rule("MaxPool")
def maxpool(node: Node) -> list[Call] | None:
    """1-D and 2-D max pooling (1-D seen as 1 x L), any strides, dilations, pads and ceil_mode; not
    when the Indices output is used (the CPU rule's window)."""
    window = cpu_rules.maxpool_window(node)
    if window is None:
        return None
    x4, y4, geometry = window
    return [Call(node, kx("maxpool2d"), [Use(node.inputs[0], x4), Use(node.outputs[0], y4), *geometry],
                 [node.outputs[0]])]


@rule("AveragePool")
def avgpool(node: Node) -> list[Call] | None:
    """2-D average pooling, in the cases the CPU rule takes (`cpu_rules.avgpool_window`)."""
    geometry = cpu_rules.avgpool_window(node)
    if geometry is None:
        return None
    return [Call(node, kx("avgpool2d"), [Use(node.inputs[0]), Use(node.outputs[0]), *geometry], [node.outputs[0]])]


# -- Pad --------------------------------------------------------------------------------------


PAD_MODES = {"constant": kernels_extra.PAD_CONSTANT, "reflect": kernels_extra.PAD_REFLECT,
             "edge": kernels_extra.PAD_EDGE, "wrap": kernels_extra.PAD_WRAP}


@rule("Pad")
def pad(node: Node) -> list[Call] | None:
    """Pads with constant amounts, one pass over the output: along each dim the input's kept part
    (negative pads crop it first, as the reference does) sits at its begin pad, and the rest is the
    fill value, or the kept part reflected, edge-extended or wrapped."""
    x, y = node.inputs[0], node.outputs[0]
    p = cpu_extra.pad_plan(node)
    mode = PAD_MODES.get(p.mode) if p is not None else None
    if p is None or mode is None:
        return None
    s, o, widths, keep, v = p.x_shape, p.y_shape, p.widths, p.keep, p.value
    if mode != kernels_extra.PAD_CONSTANT and any(n == 0 and d > 0 for n, d in zip(keep, o)):
        return None  # nothing to reflect or extend (the reference raises)
    xst = _c_strides(s)
    xbase = sum(max(-b, 0) * t for (b, _), t in zip(widths, xst))
    start = [max(b, 0) for b, _ in widths]
    if mode == kernels_extra.PAD_CONSTANT:
        # dims neither padded nor cropped merge into the one before (a constant fill only asks "inside?")
        box = _pad_box(list(o), start, keep, xst) if _prod(keep) else [(_prod(o), 0, 0, 1)]
    else:  # reflect/edge/wrap map each dim's index on its own: size-1 dims aside, no merging
        box = [t for t in zip(o, start, keep, xst) if t[0] != 1] or [(1, 0, 1, 1)]
    dims, st, kp, xs = ([b[i] for b in box] for i in range(4))
    return [Call(node, kx("pad"), [arg(x, (_prod(s),)), Use(y, (_prod(o),)), _fill(v), _ints(dims), _ints(st),
                                   _ints(kp), _ints(xs), Lit(int(xbase)), Lit(int(mode))], [y],
                 note=p.mode)]
