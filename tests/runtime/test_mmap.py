"""Weights saved as ONNX external data are memory-mapped and serve correct outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from bundler.samples import make_mlp_onnx, mlp_reference
from modelcontract import ModelContractError, load_spec
from runtime.backends import load_backend, mapped_bytes, warm_up
from runtime.errors import ModelLoadError
from tests.runtime.conftest import http, start_server

SIZES = (64, 512, 512, 10)


def _external(directory: Path) -> Path:
    """The MLP with its weights moved into model.onnx.data beside the graph."""
    make_mlp_onnx(directory, sizes=SIZES)
    model = onnx.load(str(directory / "model.onnx"))
    (directory / "model.onnx").unlink()
    onnx.save_model(model, str(directory / "model.onnx"), save_as_external_data=True,
                    location="model.onnx.data", size_threshold=1024)
    return directory


def test_external_data_is_mapped_and_serves_correct_outputs(tmp_path: Path) -> None:
    model_dir = _external(tmp_path / "models" / "mlp" / "1")
    assert (model_dir / "model.onnx").stat().st_size < 4096  # the weights really moved
    server = start_server(tmp_path / "models", tmp_path / "data")
    try:
        maps = Path(f"/proc/{server.proc.pid}/maps")
        mapped = mapped_bytes(model_dir, maps)
        assert mapped.get("model.onnx.data", 0) >= 0.9 * (model_dir / "model.onnx.data").stat(
        ).st_size, mapped
        x = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 64],
                                       "data": x.ravel().tolist()}]}).encode()
        status, _, raw = http("POST", f"{server.url}/v2/models/mlp/infer", body)
        assert status == 200, raw
        out = json.loads(raw)["outputs"][0]
        y = np.array(out["data"], np.float32).reshape(out["shape"])
        np.testing.assert_allclose(y, mlp_reference(x, SIZES), rtol=1e-4, atol=1e-4)
    finally:
        server.stop()


def test_single_file_weights_are_not_mapped(tmp_path: Path) -> None:
    make_mlp_onnx(tmp_path / "m", sizes=SIZES)
    spec = load_spec(tmp_path / "m" / "model.json")
    backend = load_backend(spec, "cpu", 1)
    warm_up(spec, backend)
    assert "model.onnx.data" not in mapped_bytes(tmp_path / "m")
    x = np.ones((2, 64), np.float32)
    np.testing.assert_allclose(backend.run({"x": x})["y"], mlp_reference(x, SIZES),
                               rtol=1e-4, atol=1e-4)


def test_mapped_bytes_reads_proc_maps_format(tmp_path: Path) -> None:
    d = tmp_path / "m"
    d.mkdir()
    maps = tmp_path / "maps"
    maps.write_text(
        f"7f0000000000-7f0000002000 r--p 00000000 08:01 12 {d.resolve()}/w.data\n"
        f"7f0000003000-7f0000004000 r--p 00002000 08:01 12 {d.resolve()}/w.data\n"
        "7f0000005000-7f0000006000 r-xp 00000000 08:01 13 /usr/lib/libc.so.6\n"
        "7f0000007000-7f0000008000 rw-p 00000000 00:00 0 \n"
    )
    assert mapped_bytes(d, maps) == {"w.data": 0x3000}
    assert mapped_bytes(d, tmp_path / "missing") == {}


def test_bad_prepack_weights_is_refused(tmp_path: Path) -> None:
    make_mlp_onnx(tmp_path / "m")
    doc = json.loads((tmp_path / "m" / "model.json").read_text())
    doc["prepack_weights"] = "yes"
    (tmp_path / "m" / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelContractError, match="prepack_weights must be true or false"):
        load_spec(tmp_path / "m" / "model.json")


def test_external_data_outside_the_model_directory_is_refused(tmp_path: Path) -> None:
    model_dir = _external(tmp_path / "outside")
    inner = tmp_path / "outside" / "inner"
    inner.mkdir()
    (inner / "model.json").write_text((model_dir / "model.json").read_text())
    model = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../model.onnx.data"
    (inner / "model.onnx").write_bytes(model.SerializeToString())
    spec = load_spec(inner / "model.json")
    with pytest.raises(ModelLoadError, match=r"ONNX Runtime cannot load .*escapes model directory"):
        load_backend(spec, "cpu", 1)
