"""User-facing errors: each carries one clear line saying what is wrong and what to do."""

from __future__ import annotations


class MccError(Exception):
    """An error the user can act on; the CLI prints its message alone (no traceback)."""


class ModelLoadError(MccError):
    """The model file is missing, unreadable, malformed, or unsafe to load."""


class InputError(MccError):
    """Inputs given at run time do not match the model's inputs."""


class ArtifactError(MccError):
    """A compiled artifact is missing, corrupt, or was built for something else."""
