"""Settings from env and flags, and model.json checks: bad input is one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bundler.samples import make_mlp_onnx
from modelcontract import ModelContractError, discover, load_spec
from runtime.errors import SettingsError
from runtime.settings import Settings, from_args, from_env
from tests.runtime.conftest import REPO


def test_flags_override_env(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc\n")
    env = {"RUNTIME_PORT": "9000", "RUNTIME_HOST": "0.0.0.0", "RUNTIME_MAX_QUEUE": "7",
           "RUNTIME_TOKEN_FILE": str(token), "RUNTIME_REQUEST_LOG": "false"}
    s = from_args(["--port", "9100", "--models", str(tmp_path)], env)
    assert (s.port, s.host, s.max_queue, s.token_file, s.models) == (
        9100, "0.0.0.0", 7, token, tmp_path)
    assert s.request_log is False
    assert from_env({}) == Settings()


@pytest.mark.parametrize(("env", "text"), [
    ({"RUNTIME_PORT": "http"}, "RUNTIME_PORT='http' is not a valid int"),
    ({"RUNTIME_PORT": "70000"}, "out of range"),
    ({"RUNTIME_MAX_QUEUE": "0"}, "max_queue must be positive"),
    ({"RUNTIME_DEVICE": "tpu"}, "not auto, cpu or cuda:N"),
    ({"RUNTIME_SWITCH_INTERVAL_MS": "0"}, "switch_interval_ms"),
    ({"RUNTIME_TOKEN_FILE": "/nonexistent/token"}, "cannot read token file"),
    ({"RUNTIME_INFLIGHT_MAX_BYTES": "1000"}, "one largest request must fit"),
    ({"RUNTIME_HEADER_TIMEOUT_S": "0"}, "header_timeout_s must be positive"),
])
def test_bad_settings_name_the_problem(env: dict[str, str], text: str) -> None:
    with pytest.raises(SettingsError, match=text):
        from_args([], env)


def test_threads_default_to_half_the_cores() -> None:
    assert Settings(ort_threads=3).threads == 3
    assert Settings().threads >= 1


def _write(d: Path, **changes: object) -> Path:
    make_mlp_onnx(d)
    doc = json.loads((d / "model.json").read_text())
    doc.update(changes)
    (d / "model.json").write_text(json.dumps(doc))
    return d / "model.json"


@pytest.mark.parametrize(("changes", "text"), [
    ({"framework": "keras"}, "framework 'keras'"),
    ({"file": "../escape.onnx"}, "inside the model directory"),
    ({"file": "missing.onnx"}, "missing"),
    ({"inputs": []}, "non-empty"),
    ({"inputs": [{"name": "x", "datatype": "FP8", "shape": [-1, 64]}]}, "datatype 'FP8'"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 0]}]}, "shape"),
    ({"max_batch_size": -1}, "max_batch_size"),
])
def test_bad_model_json(tmp_path: Path, changes: dict[str, object], text: str) -> None:
    with pytest.raises(ModelContractError, match=text):
        load_spec(_write(tmp_path / "m", **changes))


def test_discover_needs_models(tmp_path: Path) -> None:
    with pytest.raises(ModelContractError, match="no model found"):
        discover(tmp_path)
    with pytest.raises(ModelContractError, match="does not exist"):
        discover(tmp_path / "nope")
    _write(tmp_path / "mlp" / "1")
    assert [(s.name, s.version) for s in discover(tmp_path)] == [("mlp", "1")]


def _run(models: Path, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", "--models", str(models), "--port", "0",
         "--data-dir", str(data)], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_server_refuses_bad_models_with_one_line(tmp_path: Path) -> None:
    r = _run(tmp_path / "nothing", tmp_path / "data")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: models directory")


def test_server_exits_nonzero_when_weights_do_not_match_model_json(tmp_path: Path) -> None:
    _write(tmp_path / "m" / "mlp" / "1",
           inputs=[{"name": "x", "datatype": "FP32", "shape": [-1, 32]}])
    r = _run(tmp_path / "m", tmp_path / "data")
    assert r.returncode == 1
    assert "does not match" in r.stderr


def test_appliance_serve_runs_the_runtime(tmp_path: Path) -> None:
    from tests.runtime.conftest import http, start_server

    make_mlp_onnx(tmp_path / "m" / "mlp" / "1")
    token = tmp_path / "token"
    token.write_text("t0k\n")
    s = start_server(tmp_path / "m", tmp_path / "data", module=("appliance", "serve"),
                     extra_env={"RUNTIME_TOKEN_FILE": str(token)})
    try:
        assert http("GET", f"{s.url}/v2/models/mlp")[0] == 401
        code, _, raw = http("GET", f"{s.url}/v2/models/mlp", headers={"Authorization":
                                                                       "Bearer t0k"})
        assert code == 200 and json.loads(raw)["name"] == "mlp"
    finally:
        assert s.stop() == 0
