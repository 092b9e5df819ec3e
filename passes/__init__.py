"""Passes: infrastructure (registry, text pipelines, manager) and one module per pass family."""

from .base import (
    PIPELINES,
    FunctionPass,
    Pass,
    PassManager,
    PipelineError,
    as_pass,
    get_pass,
    parse_pipeline,
    register_pass,
    registered_passes,
    run,
)
from . import (  # noqa: F401  (registers passes)
    canonicalize,
    channel_prune,
    cleanup,
    cse,
    fold,
    fold_affine,
    fp16,
    fuse,
    infer,
    quant_accuracy,
    quantize,
    sparsity,
)

__all__ = [
    "PIPELINES", "FunctionPass", "Pass", "PassManager", "PipelineError", "as_pass", "get_pass",
    "parse_pipeline", "register_pass", "registered_passes", "run",
]
