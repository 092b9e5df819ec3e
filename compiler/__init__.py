"""mcc's front door: ONNX import/export, compress(), compile(), artifacts, the ONNX backend, the CLI."""

__version__ = "0.1.0"

from .api import CompiledModel, compile, compress, load  # noqa: E402
from .backend import Backend  # noqa: E402
from .errors import ArtifactError, InputError, MccError, ModelLoadError  # noqa: E402
from .onnx_export import export_onnx  # noqa: E402
from .onnx_import import import_onnx  # noqa: E402

__all__ = [
    "ArtifactError", "Backend", "CompiledModel", "InputError", "MccError", "ModelLoadError", "__version__",
    "compile", "compress", "export_onnx", "import_onnx", "load",
]
