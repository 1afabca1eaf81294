"""Inference backends: ONNX Runtime and PyTorch (TorchScript, torch.export). Never unpickle."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from modelcontract import ModelSpec
from runtime.dtypes import DATATYPES
from runtime.errors import ModelLoadError
from runtime.gpu import CpuReason

log = logging.getLogger("runtime.backends")

Tensors = dict[str, np.ndarray]

# ONNX Runtime type strings for the V2 datatypes we serve.
_ORT_TYPES = {
    "tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
    "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
    "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
}


class Backend(Protocol):
    """A loaded model: named numpy inputs in, named numpy outputs out."""

    device: str  # and, optionally, `cpu_reason` when a GPU was assigned but it runs on CPU

    def run(self, inputs: Tensors) -> Tensors:
        """Run one (possibly merged) batch."""
        ...


def mapped_bytes(directory: Path, maps: Path = Path("/proc/self/maps")) -> dict[str, int]:
    """Bytes of each file under `directory` this process has memory-mapped (Linux; else {})."""
    try:
        text = maps.read_text()
    except OSError:
        return {}
    root = str(directory.resolve()) + "/"
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith(root):
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            name = parts[5][len(root):]
            out[name] = out.get(name, 0) + hi - lo
    return out


def _has_external_data(spec: ModelSpec) -> bool:
    # ONNX external data lives in files beside the graph; model.json is the only other file.
    return any(p.is_file() and p.name not in (spec.file, "model.json")
               for p in spec.directory.iterdir())


class OnnxBackend:
    """ONNX Runtime session; CUDA provider when a GPU is assigned.

    The session opens the file by path, so ONNX Runtime reads it and Python never holds a
    copy. Weights saved as ONNX external data are memory-mapped by ONNX Runtime; they stay
    mapped (page cache, shared, nothing copied) only without weight pre-packing, so
    pre-packing is off for such models unless model.json sets `prepack_weights: true`
    (faster large matrix products at batch size > 1, at the cost of a private copy).
    """

    def __init__(self, spec: ModelSpec, device: str, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning worker threads would steal the core the HTTP loop needs.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3
        external = _has_external_data(spec)
        prepack = spec.prepack_weights if spec.prepack_weights is not None else not external
        if not prepack:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        providers: list[Any] = ["CPUExecutionProvider"]
        self.device = "cpu"
        self.cpu_reason: CpuReason | None = None
        if device.startswith("cuda:"):
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers = [("CUDAExecutionProvider", {"device_id": int(device[5:])}),
                             "CPUExecutionProvider"]
                self.device = device
            else:
                log.warning("model %s: %s assigned but this onnxruntime has no CUDA provider; "
                            "runs on CPU (install onnxruntime-gpu)", spec.name, device)
                self.cpu_reason = CpuReason(
                    "no-cuda-provider", f"onnxruntime {ort.__version__} has no CUDA provider "
                    f"(it has {', '.join(ort.get_available_providers())})")
        try:
            self._session = ort.InferenceSession(str(spec.path), opts, providers=providers)
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelLoadError(f"ONNX Runtime cannot load {spec.path}: {first}") from e
        if self.device != "cpu" and "CUDAExecutionProvider" not in self._session.get_providers():
            # ONNX Runtime drops a provider whose libraries or driver fail to start and goes
            # on with the CPU one: the session, not the request, says where it runs.
            log.warning("model %s: the CUDA provider did not start on %s; runs on CPU",
                        spec.name, device)
            self.cpu_reason = CpuReason("cuda-init-failed",
                                        f"onnxruntime's CUDA provider did not start on {device}")
            self.device = "cpu"
        self._check_signature(spec)
        self._outputs = [o.name for o in spec.outputs]
        self.mapped = mapped_bytes(spec.directory)
        if self.mapped:
            log.info("model %s: weights memory-mapped from %s (%.1f MiB)", spec.name,
                     ", ".join(sorted(self.mapped)), sum(self.mapped.values()) / 2**20)
        elif spec.path.stat().st_size > 64 * 2**20 and not external:
            log.info("model %s: weights read into memory from %s (%.0f MiB); save the model "
                     "with ONNX external data to have them memory-mapped", spec.name,
                     spec.file, spec.path.stat().st_size / 2**20)

    def _check_signature(self, spec: ModelSpec) -> None:
        declared = {t.name: t for t in spec.inputs}
        actual = {i.name: i for i in self._session.get_inputs()}
        if set(declared) != set(actual):
            raise ModelLoadError(
                f"{spec.directory}/model.json declares inputs {sorted(declared)} but "
                f"{spec.file} has {sorted(actual)}; fix model.json"
            )
        out_names = {o.name for o in self._session.get_outputs()}
        missing = [o.name for o in spec.outputs if o.name not in out_names]
        if missing:
            raise ModelLoadError(
                f"{spec.directory}/model.json declares outputs {missing} that {spec.file} lacks"
            )
        for name, t in declared.items():
            got = _ORT_TYPES.get(actual[name].type)
            if got != t.datatype:
                raise ModelLoadError(
                    f"{spec.directory}/model.json says input {name} is {t.datatype} but "
                    f"{spec.file} wants {actual[name].type}; fix model.json"
                )
            dims = actual[name].shape
            if len(dims) != len(t.shape) or any(
                isinstance(d, int) and w != -1 and d != w
                for d, w in zip(dims, t.shape, strict=True)
            ):
                raise ModelLoadError(
                    f"{spec.directory}/model.json shape {list(t.shape)} for input {name} does "
                    f"not match {spec.file}'s {dims}; fix model.json"
                )

    def run(self, inputs: Tensors) -> Tensors:
        """Run one batch through the session."""
        results = self._session.run(self._outputs, inputs)
        return dict(zip(self._outputs, results, strict=True))


class TorchBackend:
    """A TorchScript (`torch.jit.load`) or torch.export (`torch.export.load`) archive."""

    def __init__(self, spec: ModelSpec, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self._torch = torch
        self.device = device if device.startswith("cuda:") and torch.cuda.is_available() else "cpu"
        self.cpu_reason: CpuReason | None = None
        if self.device != device:
            log.warning("model %s: %s assigned but this torch has no CUDA; runs on CPU",
                        spec.name, device)
            self.cpu_reason = _torch_cpu_reason(torch)
        try:
            if spec.framework == "torchscript":
                # TorchScript archives hold code and tensors, read by the JIT loader (no pickle
                # of arbitrary classes); map_location keeps weights off a GPU we were not given.
                self._module: Any = torch.jit.load(  # type: ignore[no-untyped-call]
                    str(spec.path), map_location=self.device)
                self._module.eval()
            else:
                program = torch.export.load(str(spec.path))
                self._module = program.module().to(self.device)
        except Exception as e:
            raise ModelLoadError(f"torch cannot load {spec.path}: {e}".splitlines()[0]) from e
        self._inputs = [t.name for t in spec.inputs]
        self._outputs = [t.name for t in spec.outputs]

    def run(self, inputs: Tensors) -> Tensors:
        """Run one batch; positional inputs in model.json order."""
        torch = self._torch
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self.device)
                    for n in self._inputs]
            result = self._module(*args)
        if isinstance(result, dict):
            result = [result[n] for n in self._outputs]
        elif not isinstance(result, list | tuple):
            result = [result]
        if len(result) != len(self._outputs):
            raise ModelLoadError(
                f"model returned {len(result)} outputs, model.json declares {len(self._outputs)}"
            )
        return {n: r.detach().cpu().numpy() for n, r in zip(self._outputs, result, strict=True)}


def _torch_cpu_reason(torch: Any) -> CpuReason:
    """Why torch cannot use CUDA: built without it, or its start-up failed."""
    if not getattr(torch.version, "cuda", None):
        return CpuReason("no-cuda-provider", f"torch {torch.__version__} is built without CUDA")
    try:
        torch.cuda.init()
    except Exception as e:  # torch raises RuntimeError/AssertionError with the driver's words
        return CpuReason("cuda-init-failed", str(e).splitlines()[0] if str(e) else repr(e))
    return CpuReason("cuda-init-failed", "torch.cuda.is_available() is false")


def load_backend(spec: ModelSpec, device: str, threads: int) -> Backend:
    """Open the weights of `spec` on `device` ("cpu" or "cuda:N").

    Raises:
        ModelLoadError: the framework is not servable or the weights do not load.
    """
    if spec.framework == "onnx":
        return OnnxBackend(spec, device, threads)
    if spec.framework in ("torchscript", "torch-export"):
        try:
            import torch  # noqa: F401
        except ImportError as e:
            raise ModelLoadError(
                f"model {spec.name} is {spec.framework} but torch is not installed in this image"
            ) from e
        return TorchBackend(spec, device, threads)
    raise ModelLoadError(
        f"model {spec.name}: framework {spec.framework} holds weights without a graph; "
        "export it as onnx or torch-export to serve it"
    )


def warm_up(spec: ModelSpec, backend: Backend) -> None:
    """Run one inference on zeros and check the outputs against model.json.

    Raises:
        ModelLoadError: the model fails, or answers with the wrong outputs.
    """
    inputs = {t.name: np.zeros(t.example_shape(1), DATATYPES[t.datatype]) for t in spec.inputs}
    try:
        outputs = backend.run(inputs)
    except ModelLoadError:
        raise
    except Exception as e:
        raise ModelLoadError(f"model {spec.name} fails its warm-up inference: {e}") from e
    for t in spec.outputs:
        out = outputs.get(t.name)
        if out is None or not t.accepts(out.shape):
            raise ModelLoadError(
                f"model {spec.name}: output {t.name} has shape "
                f"{None if out is None else list(out.shape)}, model.json says {list(t.shape)}"
            )
        if out.dtype != DATATYPES[t.datatype]:
            raise ModelLoadError(
                f"model {spec.name}: output {t.name} is {out.dtype}, model.json says {t.datatype}"
            )
