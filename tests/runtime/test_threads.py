"""Per-model intra-op threads: model.json's `intra_op_threads` over the server's setting."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from bundler.samples import make_cnn_onnx, make_mlp_onnx
from modelcontract import ModelContractError, discover, load_spec
from runtime.gpu import RecordedSource
from runtime.settings import Settings
from runtime.state import ModelRegistry


def _set(model_dir: Path, **changes: object) -> None:
    path = model_dir / "model.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_bad_intra_op_threads_is_refused(tmp_path: Path, bad: object) -> None:
    make_mlp_onnx(tmp_path / "m")
    _set(tmp_path / "m", intra_op_threads=bad)
    with pytest.raises(ModelContractError, match="intra_op_threads must be an integer >= 0"):
        load_spec(tmp_path / "m" / "model.json")


def test_model_json_threads_win_over_the_server_setting(tmp_path: Path) -> None:
    models = tmp_path / "models"
    make_mlp_onnx(models / "mlp" / "1")
    make_cnn_onnx(models / "cnn" / "1")
    _set(models / "cnn" / "1", intra_op_threads=2)
    settings = Settings(models=models, data_dir=tmp_path / "data", ort_threads=1)
    registry = ModelRegistry(settings, discover(models), gpu=RecordedSource(None),
                             log_sink=None, history=None)

    async def go() -> dict[str, int]:
        await registry.start(asyncio.get_running_loop())
        deadline = time.monotonic() + 60
        while not registry.ready and registry.failure is None:
            assert time.monotonic() < deadline, "models did not load in 60 s"
            await asyncio.sleep(0.02)
        try:
            assert registry.failure is None, registry.failure
            return {
                name: registry.get(name, "1").backend._session  # type: ignore[union-attr]
                .get_session_options().intra_op_num_threads
                for name in ("mlp", "cnn")
            }
        finally:
            await registry.stop()

    assert asyncio.run(go()) == {"mlp": 1, "cnn": 2}
