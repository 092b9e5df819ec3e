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
from . import canonicalize, cleanup, cse, fold, fold_affine, fp16, fuse, infer, quantize  # noqa: F401  (registers passes)
from . import sparsity  # noqa: F401  (registers passes)

__all__ = [
    "PIPELINES", "FunctionPass", "Pass", "PassManager", "PipelineError", "as_pass", "get_pass",
    "parse_pipeline", "register_pass", "registered_passes", "run",
]
