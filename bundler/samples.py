"""Small models made by code, for the demo, tests and benchmarks (nothing is downloaded).

Each maker writes a model directory in the layout the runtime serves:
`<dir>/model.json` plus the weights file, with deterministic weights from a seed.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np


def _model_json(
    directory: Path, name: str, version: str, framework: str, file: str,
    inputs: list[dict[str, Any]], outputs: list[dict[str, Any]],
    max_batch_size: int = 32, max_queue_delay_ms: float = 2.0,
) -> Path:
    doc = {
        "name": name, "version": version, "framework": framework, "file": file,
        "inputs": inputs, "outputs": outputs, "max_batch_size": max_batch_size,
        "max_queue_delay_ms": max_queue_delay_ms, "gpu_memory_mib": 0,
    }
    (directory / "model.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return directory


def _save_onnx(directory: Path, name: str, version: str, nodes: list[Any], inits: list[Any],
               x_dims: list[int], y_dims: list[int]) -> Path:
    """Check and save the FP32 graph x [batch, *x_dims] -> y [batch, *y_dims] as
    model.onnx (opset 17) beside its model.json."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *x_dims])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *y_dims])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save_model(model, str(directory / "model.onnx"))
    return _model_json(
        directory, name, version, "onnx", "model.onnx",
        [{"name": "x", "datatype": "FP32", "shape": [-1, *x_dims]}],
        [{"name": "y", "datatype": "FP32", "shape": [-1, *y_dims]}],
    )


def mlp_weights(sizes: tuple[int, ...], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deterministic (W, b) pairs for an MLP with layer widths `sizes`."""
    rng = np.random.default_rng(seed)
    return [
        ((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32),
         (rng.standard_normal(b) * 0.1).astype(np.float32))
        for a, b in itertools.pairwise(sizes)
    ]


def mlp_reference(
    x: np.ndarray, sizes: tuple[int, ...] = (64, 256, 10), seed: int = 0
) -> np.ndarray:
    """The MLP computed with numpy: what `make_mlp_onnx` must answer."""
    h = x.astype(np.float32)
    weights = mlp_weights(sizes, seed)
    for i, (w, b) in enumerate(weights):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0)
    return h


def make_mlp_onnx(
    directory: Path, name: str = "mlp", version: str = "1",
    sizes: tuple[int, ...] = (64, 256, 10), seed: int = 0,
) -> Path:
    """An ONNX MLP (Gemm + Relu) with input `x` [-1, sizes[0]] and output `y`."""
    from onnx import helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    nodes, inits = [], []
    prev = "x"
    weights = mlp_weights(sizes, seed)
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = "y" if i == len(weights) - 1 else f"h{i}"
        gemm_out = out if i == len(weights) - 1 else f"g{i}"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [gemm_out]))
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [gemm_out], [out]))
        prev = out
    return _save_onnx(directory, name, version, nodes, inits, [sizes[0]], [sizes[-1]])


def make_cnn_onnx(
    directory: Path, name: str = "cnn", version: str = "1", seed: int = 0,
    channels: tuple[int, int] = (16, 32),
) -> Path:
    """A small ONNX CNN: [-1,3,32,32] -> conv c1 -> relu -> conv c2 /2 -> relu -> GAP -> 10.

    `channels` (c1, c2) sets the compute per row: the default (16, 32) is cheap enough for
    the HTTP path to dominate; wider convolutions make a model where compute is the cost.
    """
    c1, c2 = channels
    from onnx import helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def arr(*shape: int) -> np.ndarray:
        out: np.ndarray = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(
            np.float32)
        return out

    inits = [
        numpy_helper.from_array(arr(c1, 3, 3, 3), "c1w"),
        numpy_helper.from_array(np.zeros(c1, np.float32), "c1b"),
        numpy_helper.from_array(arr(c2, c1, 3, 3), "c2w"),
        numpy_helper.from_array(np.zeros(c2, np.float32), "c2b"),
        numpy_helper.from_array(arr(c2, 10), "fw"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1w", "c1b"], ["a1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2w", "c2b"], ["a2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"]),
    ]
    return _save_onnx(directory, name, version, nodes, inits, [3, 32, 32], [10])


def make_torch_model(
    directory: Path, name: str = "tmlp", version: str = "1",
    sizes: tuple[int, ...] = (16, 32, 4), seed: int = 0, kind: str = "torchscript",
) -> Path:
    """A PyTorch MLP saved as TorchScript (`model.pt`) or torch.export (`model.pt2`).

    Its weights equal `mlp_weights(sizes, seed)`, so `mlp_reference` predicts its output.
    """
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    layers: list[torch.nn.Module] = []
    weights = mlp_weights(sizes, seed)
    for i, (w, b) in enumerate(weights):
        lin = torch.nn.Linear(w.shape[0], w.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        layers.append(lin)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    module = torch.nn.Sequential(*layers).eval()
    example = torch.zeros(2, sizes[0])
    if kind == "torchscript":
        file = "model.pt"
        torch.jit.save(torch.jit.trace(module, example),  # type: ignore[no-untyped-call]
                       str(directory / file))
        framework = "torchscript"
    elif kind == "torch-export":
        file = "model.pt2"
        batch = torch.export.Dim("batch", min=1, max=1024)
        exported = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(exported, str(directory / file))
        framework = "torch-export"
    else:
        raise ValueError(f"unknown torch model kind {kind!r}")
    return _model_json(
        directory, name, version, framework, file,
        [{"name": "x", "datatype": "FP32", "shape": [-1, sizes[0]]}],
        [{"name": "y", "datatype": "FP32", "shape": [-1, sizes[-1]]}],
    )
