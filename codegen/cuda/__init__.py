"""The CUDA target: fused graphs lowered to Numba CUDA kernels driven by generated code.

It shares everything up to the program with the CPU target (`codegen.lower`): the same steps, the
same fusion groups, the same memory plan. The differences are the rules (`rules`, `rules_gemm`,
`rules_extra`), the generated elementwise kernels (`elementwise`) and the driver (`emit`): one
device arena allocated once, weights uploaded once, every kernel launched on one stream, inputs
copied in and outputs copied out once per run.

Without a GPU, Numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1`, set before numba is imported)
runs the same kernels in Python threads: slowly, but exactly, which is how CI tests this target.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from types import ModuleType
from typing import Any

import numpy as np

from ir import Graph

from ..cpu import CpuModel
from ..cpu.runtime import cache_dir
from . import rules_all  # noqa: F401  (register the kernel rules)
from .emit import emit
from .lower import lower

if not hasattr(np, "row_stack"):  # numba-cuda 0.30 registers np.row_stack, which NumPy 2.5 removed:
    np.row_stack = np.vstack  # type: ignore[attr-defined]  # without it no kernel compiles there


class CudaUnavailable(RuntimeError):
    """The cuda target was asked for where it cannot run (no numba-cuda, no GPU or driver)."""


def _cuda() -> ModuleType:
    """numba.cuda, once it is known to work here (a GPU and driver, or the simulator)."""
    try:
        from numba import config, cuda
    except ImportError:  # pragma: no cover - numba-cuda is a dependency of the [cuda] and [test] extras
        raise CudaUnavailable("the cuda target needs numba-cuda: pip install 'mcc[cuda]'") from None
    if config.ENABLE_CUDASIM:
        return cuda
    try:
        ok = cuda.is_available()
    except Exception:  # noqa: BLE001 - the driver's own errors vary by version
        ok = False
    if not ok:
        raise CudaUnavailable("the cuda target needs an NVIDIA GPU and its driver, and none was found; "
                              "use --target cpu, or set NUMBA_ENABLE_CUDASIM=1 to run on Numba's CUDA simulator "
                              "(very slow)")
    return cuda


def device_info() -> dict[str, Any]:
    """What compiled code depends on: the GPU (name, compute capability) and the Numba versions."""
    import numba

    cuda = _cuda()
    try:
        import numba_cuda

        version = getattr(numba_cuda, "__version__", "?")
    except ImportError:  # pragma: no cover
        version = "?"
    if numba.config.ENABLE_CUDASIM:
        name, cc = "simulator", [0, 0]
    else:
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        cc = list(dev.compute_capability)
    return {"name": name, "compute_capability": cc, "numba": numba.__version__, "numba_cuda": version}


class CudaExecutable:
    """A loaded CUDA program: the arenas on the device, the driver bound to them and a stream.

    Every buffer a kernel touches is a fixed view of the arenas, so the launches of one run are
    the same every run. After the first run (which compiles the kernels) they are recorded once
    as a CUDA graph and replayed: one launch per inference instead of one Python call and one
    argument marshalling per kernel. Programs with host fallbacks, the simulator, or
    MCC_CUDA_GRAPHS=0 launch kernel by kernel.
    """

    def __init__(self, driver: ModuleType, consts: np.ndarray, arena_bytes: int,
                 fallbacks: list[Any], py_consts: list[np.ndarray]) -> None:
        cuda = _cuda()
        self.driver = driver
        self.stream = cuda.stream()
        self.consts = cuda.to_device(consts, stream=self.stream)  # weights: uploaded once
        self.arena = cuda.device_array(max(arena_bytes, 64), np.uint8)
        self.fallbacks = fallbacks
        self.py_consts = py_consts
        self._run = driver.bind(self.consts, self.arena, fallbacks, py_consts, self.stream)
        self.stream.synchronize()
        self.graph: Any = None
        self._graph_wanted = (hasattr(self._run, "parts") and not _simulator()
                              and os.environ.get("MCC_CUDA_GRAPHS", "1") != "0")

    def __call__(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        if self.graph is not None:
            copy_in, _, copy_out = self._run.parts
            copy_in(inputs)
            self.graph.launch(self.stream)
            return copy_out()
        out = self._run(inputs)
        if self._graph_wanted:  # kernels are compiled now: record the launches
            self._graph_wanted = False
            self.graph = _Graph.capture(self.stream, self._run.parts[1])
        return out


class _Graph:
    """A CUDA graph recorded from a stream (driver API through cuda-bindings, which numba-cuda uses)."""

    def __init__(self, graph: Any, exe: Any) -> None:
        self._graph, self._exe = graph, exe

    @classmethod
    def capture(cls, stream: Any, launches: Any) -> _Graph | None:
        """Record `launches()` on `stream`; None (launch kernel by kernel) if the driver refuses."""
        try:
            from cuda.bindings import driver as drv
        except ImportError:  # pragma: no cover - older numba-cuda without cuda-bindings
            return None
        handle = drv.CUstream(int(stream.handle))
        mode = drv.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        if drv.cuStreamBeginCapture(handle, mode)[0] != drv.CUresult.CUDA_SUCCESS:
            return None
        try:
            launches()
        finally:
            err, graph = drv.cuStreamEndCapture(handle)
        if err != drv.CUresult.CUDA_SUCCESS:
            return None
        err, exe = drv.cuGraphInstantiate(graph, 0)
        if err != drv.CUresult.CUDA_SUCCESS:
            drv.cuGraphDestroy(graph)
            return None
        return cls(graph, exe)

    def launch(self, stream: Any) -> None:
        from cuda.bindings import driver as drv

        (err,) = drv.cuGraphLaunch(self._exe, drv.CUstream(int(stream.handle)))
        if err != drv.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"CUDA graph launch failed: {err}")

    def __del__(self) -> None:
        try:
            from cuda.bindings import driver as drv

            drv.cuGraphExecDestroy(self._exe)
            drv.cuGraphDestroy(self._graph)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def _simulator() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


class CudaModel(CpuModel):
    """Runs a graph on the GPU; one specialisation (program, arena, driver) per set of input shapes."""

    def __init__(self, graph: Graph, threads: int | None = None, print_after: Iterable[str] = ()) -> None:
        _cuda()  # fail now, with the reason, rather than at the first run
        super().__init__(graph, threads=threads, print_after=print_after)

    _lower = staticmethod(lower)
    _emit = staticmethod(emit)

    def warm(self) -> None:
        """Generate code for the static shapes and, on a GPU, compile every kernel by one run on
        zeros. The simulator has nothing to compile, and a run there costs seconds: it skips it."""
        if _simulator():
            shapes = self.static_shapes(symbolic=1)
            if shapes is not None:
                self.specialize(shapes)
            return
        super().warm()

    def _executable(self, driver: Any, consts: np.ndarray, arena_bytes: int, fallbacks: list[Any],
                    py_consts: list[np.ndarray]) -> Any:
        return CudaExecutable(driver, consts, arena_bytes, fallbacks, py_consts)


__all__ = ["CudaModel", "CudaUnavailable", "CudaExecutable", "cache_dir", "device_info"]
