"""Releases made in code: a manifest whose images and weights layers are real blobs.

Used by the engine tests; the install-plan tests use real bundles instead.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence

from appliance.bundle.manifest import Image, Manifest, Model, Sample, Service
from appliance.bundle.store import ContentStore
from modelcontract import TensorSpec
from tests.enginekit import layer_of, tiny_image


def free_port_pair() -> int:
    """A port p such that p and p+100 (the other slot) are both free right now."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + 100 > 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", p + 100))
            except OSError:
                continue
        return p
    raise RuntimeError("no free port pair")


def weights_layer(name: str, version: str, scale: float) -> bytes:
    """A weights layer for the fake runtime: y = x * scale."""
    doc = {"name": name, "version": version, "framework": "onnx", "file": "model.onnx",
           "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
           "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
           "max_batch_size": 4, "max_queue_delay_ms": 1.0, "gpu_memory_mib": 0,
           "scale": scale}
    return layer_of([("models", None, 0o755), (f"models/{name}", None, 0o755),
                     (f"models/{name}/{version}", None, 0o755),
                     (f"models/{name}/{version}/model.json", json.dumps(doc).encode(), 0o644),
                     (f"models/{name}/{version}/model.onnx", b"not really onnx", 0o644)])


def release_manifest(store: ContentStore, sequence: int, port: int, *,
                     cmd: Sequence[str] | None = None, scale: float = 2.0,
                     samples: Sequence[Sample] = (), gpu: str = "preferred",
                     tag: str = "t") -> Manifest:
    """A one-service release (model `mlp`) whose image runs healthd (or `cmd`)."""
    wl = weights_layer("mlp", "1", scale)
    wdigest = store.add_bytes(wl)
    image: Image = tiny_image(store, "mlp", f"localhost/appliance-test-{tag}:{sequence}",
                              cmd or ["/healthd", "--models", "/models", "--port", "8000"],
                              extra_layers=[wl])
    model = Model("mlp", "1", "onnx", "mlp", wdigest, len(wl), "models/mlp/1",
                  [TensorSpec("x", "FP32", (-1, 2))], [TensorSpec("y", "FP32", (-1, 2))],
                  samples=list(samples))
    m = Manifest("demo", f"1.0.{sequence}", sequence, "2026-01-01T00:00:00Z",
                 "2030-01-01T00:00:00Z", "linux/amd64", [], [image], [model],
                 [Service("mlp", "mlp", ["mlp"], port, gpu)])
    m.validate()
    return m
