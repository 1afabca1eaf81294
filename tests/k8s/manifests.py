"""Manifests built in code for render tests: real `Manifest` objects, validated."""

from __future__ import annotations

import hashlib

from appliance.bundle.manifest import Image, Manifest, Model, Service
from modelcontract import TensorSpec

MANIFEST_DIGEST = "sha256:" + hashlib.sha256(b"signed manifest bytes").hexdigest()


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def model(name: str, image: str, gpu_memory_mib: int = 0,
          weights_size: int = 3 * 1024 * 1024) -> Model:
    return Model(
        name=name, version="1", framework="onnx", image=image,
        weights_digest=digest(f"weights {name}"), weights_size=weights_size,
        path=f"models/{name}/1",
        inputs=[TensorSpec("x", "FP32", (-1, 64))],
        outputs=[TensorSpec("y", "FP32", (-1, 10))],
        gpu_memory_mib=gpu_memory_mib, max_batch_size=32, max_queue_delay_ms=2.0,
    )


def image(name: str) -> Image:
    return Image(
        name=name, reference=f"appliance/demo-{name}:1.0.0",
        manifest_digest=digest(f"manifest {name}"), config_digest=digest(f"config {name}"),
        layers=[digest("runtime layer"), digest(f"weights {name}")],
    )


def make_manifest(*, sequence: int = 3, services: list[Service] | None = None,
                  models: list[Model] | None = None) -> Manifest:
    """A demo release: `mlp` (GPU preferred, 2 GiB) and `cnn` (GPU required, 6 GiB)."""
    models = models or [model("mlp", "mlp", gpu_memory_mib=2048),
                        model("cnn", "cnn", gpu_memory_mib=6144, weights_size=40 * 1024 * 1024)]
    services = services or [Service("mlp", "mlp", ["mlp"], port=8000, gpu="preferred"),
                            Service("cnn", "cnn", ["cnn"], port=8001, gpu="required")]
    m = Manifest(
        name="demo", version="1.0.0", sequence=sequence,
        created="2026-11-01T00:00:00Z", expires="2027-11-01T00:00:00Z",
        platform="linux/amd64", members=[],
        images=[image(n) for n in sorted({md.image for md in models})],
        models=models, services=services,
    )
    m.validate()
    return m
