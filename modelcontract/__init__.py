"""The model contract: what model.json says a served model takes and gives, and its limits.

The bundler checks a model against it before signing, the manifest records it, and
the runtime serves by it, so a bundle can never carry a model the server refuses.
Pure Python (no numpy, no onnxruntime): a core install imports it.
"""

from modelcontract.errors import ModelContractError
from modelcontract.gpu import GpuState
from modelcontract.spec import (
    DATATYPES,
    FRAMEWORKS,
    ModelSpec,
    TensorSpec,
    check_spec,
    discover,
    load_spec,
)

__all__ = [
    "DATATYPES",
    "FRAMEWORKS",
    "GpuState",
    "ModelContractError",
    "ModelSpec",
    "TensorSpec",
    "check_spec",
    "discover",
    "load_spec",
]
