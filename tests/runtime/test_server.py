"""The V2 REST API against a real uvicorn server, driven by the unmodified tritonclient."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from bundler.samples import mlp_reference
from tests.runtime.conftest import Server, http, start_server


@pytest.fixture
def client(server: Server) -> triton.InferenceServerClient:
    c = triton.InferenceServerClient(server.hostport)
    yield c
    c.close()


def _x(rows: int, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, width)).astype(np.float32)


def test_health_and_metadata_through_tritonclient(server: Server, client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp", headers=server.auth)
    meta = client.get_server_metadata(headers=server.auth)
    assert "binary_tensor_data" in meta["extensions"]
    m = client.get_model_metadata("mlp", headers=server.auth)
    assert m["versions"] == ["1", "2"]
    assert m["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert m["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}]
    assert m["device"] == "cpu"  # our extension field; tritonclient passes it through


@pytest.mark.parametrize("binary", [True, False])
def test_infer_mlp_matches_numpy_reference(server: Server, client, binary: bool) -> None:
    x = _x(3)
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton.InferRequestedOutput("y", binary_data=binary)
    result = client.infer("mlp", [inp], outputs=[out], model_version="1", headers=server.auth,
                          request_id="r-1")
    y = result.as_numpy("y")
    assert y.shape == (3, 10)
    np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
    assert result.get_response()["id"] == "r-1"


def test_versions_are_distinct_models(server: Server, client) -> None:
    x = _x(2)
    inp = triton.InferInput("x", [2, 64], "FP32")
    inp.set_data_from_numpy(x)
    y1 = client.infer("mlp", [inp], model_version="1", headers=server.auth).as_numpy("y")
    y2 = client.infer("mlp", [inp], model_version="2", headers=server.auth).as_numpy("y")
    latest = client.infer("mlp", [inp], headers=server.auth).as_numpy("y")
    np.testing.assert_allclose(y1, mlp_reference(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(y2, mlp_reference(x, seed=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(latest, y2)


@pytest.mark.parametrize("model", ["tmlp", "emlp"])
def test_infer_torch_models(server: Server, client, model: str) -> None:
    x = _x(4, 16)
    inp = triton.InferInput("x", [4, 16], "FP32")
    inp.set_data_from_numpy(x)
    y = client.infer(model, [inp], headers=server.auth).as_numpy("y")
    np.testing.assert_allclose(y, mlp_reference(x, sizes=(16, 32, 4)), rtol=1e-4, atol=1e-5)


def test_infer_cnn(server: Server, client) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    inp = triton.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    assert client.infer("cnn", [inp], headers=server.auth).as_numpy("y").shape == (2, 10)


def test_model_config_is_tritons_shape(server: Server, client) -> None:
    cfg = client.get_model_config("mlp", headers=server.auth)
    assert cfg["max_batch_size"] == 32
    assert cfg["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [64]}]
    assert cfg["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [10]}]


def test_nested_json_data(server: Server) -> None:
    x = _x(2)
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 64],
                                   "data": x.tolist()}]}).encode()
    status, _, raw = http("POST", f"{server.url}/v2/models/mlp/versions/1/infer", body,
                          server.auth)
    assert status == 200
    out = json.loads(raw)["outputs"][0]
    assert out["shape"] == [2, 10]
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 10), mlp_reference(x),
                               rtol=1e-4, atol=1e-5)


BAD_BODIES = [
    (b"{not json", 400, "not valid JSON"),
    (b"[]", 400, "JSON object"),
    (json.dumps({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 64],
                             "data": [0.0] * 64}]}).encode(), 400, "unknown input"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "INT32", "shape": [1, 64],
                             "data": [0] * 64}]}).encode(), 400, "wants FP32"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 63],
                             "data": [0.0] * 63}]}).encode(), 400, "shape"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                             "data": [0.0] * 10}]}).encode(), 400, "do not fill"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [33, 64],
                             "data": [0.0] * 33 * 64}]}).encode(), 400, "at most 32"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                             "data": ["a"] * 64}]}).encode(), 400, "not FP32"),
    (json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                             "data": [0.0] * 64}], "outputs": [{"name": "q"}]}).encode(),
     400, "unknown output"),
]


@pytest.mark.parametrize(("body", "status", "text"), BAD_BODIES)
def test_bad_requests_get_one_line_errors_and_server_keeps_serving(
    server: Server, client, body: bytes, status: int, text: str
) -> None:
    code, _, raw = http("POST", f"{server.url}/v2/models/mlp/infer", body, server.auth)
    assert code == status
    err = json.loads(raw)
    assert set(err) == {"error"} and text in err["error"] and "\n" not in err["error"]
    assert client.is_server_ready()
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(_x(1))
    assert client.infer("mlp", [inp], headers=server.auth).as_numpy("y").shape == (1, 10)


def test_unknown_model_and_version_are_404(server: Server, client) -> None:
    for path in ("/v2/models/nope", "/v2/models/mlp/versions/9", "/v2/models/nope/infer",
                 "/v2/nothing", "/v2/models/mlp/versions/1/bogus"):
        code, _, raw = http("GET", server.url + path, headers=server.auth)
        assert code == 404, path
        assert "error" in json.loads(raw)
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("nope", headers=server.auth)


def test_body_over_cap_is_413(onnx_models_dir, tmp_path) -> None:
    s = start_server(onnx_models_dir, tmp_path / "data",
                     extra_env={"RUNTIME_MAX_BODY_BYTES": "100000"})
    try:
        code, _, raw = http("POST", f"{s.url}/v2/models/mlp/infer", b"x" * 100_001)
        assert code == 413 and "cap" in json.loads(raw)["error"]
        assert http("GET", f"{s.url}/v2/health/ready")[0] == 200
    finally:
        assert s.stop() == 0


def test_bearer_token_guards_all_but_health(server: Server) -> None:
    assert http("GET", f"{server.url}/v2/health/live")[0] == 200
    assert http("GET", f"{server.url}/v2/health/ready")[0] == 200
    for path in ("/v2", "/v2/models/mlp", "/metrics", "/appliance/metrics/history"):
        code, _, raw = http("GET", server.url + path)
        assert code == 401, path
        assert "bearer token" in json.loads(raw)["error"]
        wrong = {"Authorization": "Bearer wrong"}
        assert http("GET", server.url + path, headers=wrong)[0] == 401
        assert http("GET", server.url + path, headers=server.auth)[0] == 200


def test_binary_input_with_header_length(server: Server) -> None:
    x = _x(2)
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 64],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
                        ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header)), **server.auth}
    code, rh, raw = http("POST", f"{server.url}/v2/models/mlp/versions/1/infer",
                         header + x.tobytes(), headers)
    assert code == 200
    hlen = int(rh["inference-header-content-length"])
    doc = json.loads(raw[:hlen])
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 2 * 10 * 4
    y = np.frombuffer(raw[hlen:], dtype="<f4").reshape(2, 10)
    np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)
    # A header length past the body is a 400, not a crash.
    bad = {"Inference-Header-Content-Length": str(len(header) + 10_000), **server.auth}
    assert http("POST", f"{server.url}/v2/models/mlp/infer", header, bad)[0] == 400


def test_concurrent_requests_are_batched_and_answered_correctly(server: Server) -> None:
    xs = [_x(1, seed=i) for i in range(64)]

    def one(x: np.ndarray) -> np.ndarray:
        c = triton.InferenceServerClient(server.hostport)
        try:
            inp = triton.InferInput("x", [1, 64], "FP32")
            inp.set_data_from_numpy(x)
            return c.infer("mlp", [inp], model_version="1", headers=server.auth).as_numpy("y")
        finally:
            c.close()

    with ThreadPoolExecutor(16) as pool:
        ys = list(pool.map(one, xs))
    for x, y in zip(xs, ys, strict=True):
        np.testing.assert_allclose(y, mlp_reference(x), rtol=1e-4, atol=1e-5)


def test_wrong_method_is_405(server: Server) -> None:
    code, _, raw = http("GET", f"{server.url}/v2/models/mlp/infer", headers=server.auth)
    assert code == 405 and "POST" in json.loads(raw)["error"]
