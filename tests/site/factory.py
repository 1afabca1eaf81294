"""Manifests made in code for tests that need one without building a bundle."""

from __future__ import annotations

from appliance.bundle.manifest import Image, Manifest, Model, Sample, Service
from modelcontract import TensorSpec

D = "sha256:" + "a" * 64


def model(name: str, gpu_mib: int = 0, image: str = "img",
          samples: list[Sample] | None = None) -> Model:
    return Model(name=name, version="1", framework="onnx", image=image, weights_digest=D,
                 weights_size=1, path=f"models/{name}/1",
                 inputs=[TensorSpec("x", "FP32", (-1, 2))],
                 outputs=[TensorSpec("y", "FP32", (-1, 2))],
                 gpu_memory_mib=gpu_mib, samples=samples or [])


def manifest(services: list[tuple[str, list[tuple[str, int]], str]],
             sequence: int = 1) -> Manifest:
    """services: (name, [(model, gpu_mib)], gpu policy)."""
    models = [model(m, mib) for _, ms, _ in services for m, mib in ms]
    svcs = [Service(name, "img", [m for m, _ in ms], 8000 + i, policy)
            for i, (name, ms, policy) in enumerate(services)]
    m = Manifest(name="demo", version="1.0.0", sequence=sequence,
                 created="2026-01-01T00:00:00Z", expires="2027-01-01T00:00:00Z",
                 platform="linux/amd64", members=[],
                 images=[Image("img", "appliance/demo:1", D, D, [D])],
                 models=models, services=svcs)
    m.validate()
    return m
