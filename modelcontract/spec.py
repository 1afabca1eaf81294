"""model.json: a served model's signature and batching limits, and the directory walk."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelcontract.errors import ModelContractError

FRAMEWORKS = ("onnx", "torch-export", "torchscript", "safetensors")

# V2 datatype names and their size in bytes on the wire (binary tensor extension).
DATATYPES: dict[str, int] = {
    "BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8,
    "INT8": 1, "INT16": 2, "INT32": 4, "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8,
}


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: datatype and shape, -1 for a free dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(self.shape))  # a list from JSON or a caller

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether a concrete shape fits this signature."""
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )

    def example_shape(self, batch: int = 1) -> tuple[int, ...]:
        """A concrete shape for warm-up: free dimensions become `batch` (first) or 1."""
        return tuple(
            (batch if i == 0 else 1) if d == -1 else d for i, d in enumerate(self.shape)
        )

    def metadata(self) -> dict[str, Any]:
        """The V2 metadata form."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    """A model directory's model.json, checked."""

    name: str
    version: str
    framework: str
    directory: Path
    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 0
    max_queue_delay_ms: float = 0.0
    gpu_memory_mib: int = 0
    intra_op_threads: int = 0  # 0: the server's --ort-threads
    prepack_weights: bool | None = None  # ONNX; None: off when weights are external data

    @property
    def path(self) -> Path:
        """The weights file."""
        return self.directory / self.file

    @property
    def batched(self) -> bool:
        """Whether requests may be merged along the first axis."""
        return self.max_batch_size > 0 and all(
            t.shape and t.shape[0] == -1 for t in (*self.inputs, *self.outputs)
        )


def _tensor(raw: Any, where: str) -> TensorSpec:
    if not isinstance(raw, dict):
        raise ModelContractError(
            f"{where}: each tensor must be an object with name, datatype, shape")
    name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
    if not isinstance(name, str) or not name:
        raise ModelContractError(f"{where}: a tensor has no name; add \"name\"")
    if datatype not in DATATYPES:
        raise ModelContractError(
            f"{where}: tensor {name!r} has datatype {datatype!r}; use one of "
            + ", ".join(DATATYPES)
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and (d == -1 or d > 0) for d in shape
    ):
        raise ModelContractError(
            f"{where}: tensor {name!r} shape must be a list of -1 or positive ints")
    return TensorSpec(name, datatype, tuple(shape))


def load_spec(model_json: Path) -> ModelSpec:
    """Read and check one model.json.

    Raises:
        ModelContractError: missing file, bad JSON, a missing or ill-typed field.
    """
    where = str(model_json)
    try:
        doc = json.loads(model_json.read_bytes())
    except OSError as e:
        raise ModelContractError(f"cannot read {where}: {e.strerror}") from e
    except ValueError as e:
        raise ModelContractError(f"{where} is not valid JSON: {e}; fix the file") from e
    return check_spec(doc, model_json.parent, where)


def check_spec(doc: Any, directory: Path, where: str) -> ModelSpec:
    """Check a parsed model.json whose weights file lies in `directory`.

    The bundler checks the model.json it bakes into a layer with this too, so a
    bundle cannot carry a model this server would refuse.

    Raises:
        ModelContractError: a missing or ill-typed field, or the weights file is absent.
    """
    if not isinstance(doc, dict):
        raise ModelContractError(f"{where} must hold a JSON object")
    for key in ("name", "version", "framework", "file"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ModelContractError(f"{where}: \"{key}\" must be a non-empty string")
    if doc["framework"] not in FRAMEWORKS:
        raise ModelContractError(
            f"{where}: framework {doc['framework']!r} is not one of {', '.join(FRAMEWORKS)}"
        )
    file = Path(doc["file"])
    if file.is_absolute() or ".." in file.parts:
        raise ModelContractError(f"{where}: \"file\" must be a name inside the model directory")
    inputs = doc.get("inputs") or []
    outputs = doc.get("outputs") or []
    if not isinstance(inputs, list) or not inputs or not isinstance(outputs, list) or not outputs:
        raise ModelContractError(f"{where}: \"inputs\" and \"outputs\" must be non-empty lists")
    mbs = doc.get("max_batch_size", 0)
    delay = doc.get("max_queue_delay_ms", 0.0)
    gpu = doc.get("gpu_memory_mib", 0)
    threads = doc.get("intra_op_threads", 0)
    prepack = doc.get("prepack_weights")
    if not isinstance(mbs, int) or mbs < 0:
        raise ModelContractError(f"{where}: max_batch_size must be an integer >= 0")
    if not isinstance(delay, int | float) or delay < 0 or not math.isfinite(delay):
        raise ModelContractError(f"{where}: max_queue_delay_ms must be a number >= 0")
    if not isinstance(gpu, int) or gpu < 0:
        raise ModelContractError(f"{where}: gpu_memory_mib must be an integer >= 0")
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
        raise ModelContractError(
            f"{where}: intra_op_threads must be an integer >= 0 (0: the server's setting)")
    if prepack is not None and not isinstance(prepack, bool):
        raise ModelContractError(f"{where}: prepack_weights must be true or false")
    spec = ModelSpec(
        name=doc["name"], version=doc["version"], framework=doc["framework"],
        directory=directory, file=str(file),
        inputs=tuple(_tensor(t, where) for t in inputs),
        outputs=tuple(_tensor(t, where) for t in outputs),
        max_batch_size=mbs, max_queue_delay_ms=float(delay), gpu_memory_mib=gpu,
        intra_op_threads=threads, prepack_weights=prepack,
    )
    names = [t.name for t in spec.inputs] + [t.name for t in spec.outputs]
    if len(set(names)) != len(names):
        raise ModelContractError(f"{where}: tensor names must be unique")
    if not spec.path.is_file():
        raise ModelContractError(f"{where}: weights file {spec.file!r} is missing next to it")
    return spec


def discover(models_dir: Path) -> list[ModelSpec]:
    """Every model under `models_dir/<name>/<version>/model.json`, sorted.

    Raises:
        ModelContractError: the directory is missing or holds no model, or a model.json is bad.
    """
    if not models_dir.is_dir():
        raise ModelContractError(f"models directory {models_dir} does not exist; pass --models DIR")
    specs = [load_spec(p) for p in sorted(models_dir.glob("*/*/model.json"))]
    if not specs:
        raise ModelContractError(
            f"no model found in {models_dir}; expected {models_dir}/<name>/<version>/model.json"
        )
    seen: set[tuple[str, str]] = set()
    for s in specs:
        if (s.name, s.version) in seen:
            raise ModelContractError(
                f"model {s.name} version {s.version} appears twice in {models_dir}")
        seen.add((s.name, s.version))
    return specs
