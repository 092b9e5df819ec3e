"""Op definitions: one module per family, all registered in `core`'s registry on import."""

from .core import (
    REQUIRED,
    Attr,
    EvalContext,
    InferContext,
    Kind,
    OpDef,
    UnsupportedOpError,
    all_ops,
    broadcast_infer,
    broadcast_shapes,
    constant_value,
    defop,
    get_op,
    lookup,
    numel,
    op_def,
    same_as_input,
)
from . import (  # noqa: F401  (registration side effects)
    control,
    elementwise,
    fused,
    image,
    misc,
    nn,
    norm,
    quant,
    reduce,
    rnn,
    sequence,
    signal,
    strings,
    tensor,
)

__all__ = [
    "REQUIRED", "Attr", "EvalContext", "InferContext", "Kind", "OpDef", "UnsupportedOpError", "all_ops",
    "broadcast_infer", "broadcast_shapes", "constant_value", "defop", "get_op", "lookup", "numel", "op_def", "same_as_input",
]
