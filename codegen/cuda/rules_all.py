"""Every CUDA rule module, imported for its registrations (`rules.RULES`)."""

from . import rules, rules_extra, rules_gemm  # noqa: F401
