"""The OpenAPI document and the admin endpoints served by FastAPI behind the V2 router."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.runtime.conftest import TOKEN, Server, http, start_server


@pytest.fixture(scope="module")
def api(onnx_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(onnx_models_dir, tmp_path_factory.mktemp("api") / "data", token=TOKEN)
    yield s
    s.stop()


def _doc(s: Server) -> dict[str, object]:
    code, headers, raw = http("GET", f"{s.url}/openapi.json", headers=s.auth)
    assert code == 200 and headers["content-type"] == "application/json"
    doc: dict[str, object] = json.loads(raw)
    return doc


def test_openapi_document_describes_v2_and_admin_endpoints(api: Server) -> None:
    doc = _doc(api)
    paths = doc["paths"]
    assert isinstance(paths, dict)
    for p in ("/v2/health/live", "/v2/health/ready", "/v2", "/v2/models/{model}",
              "/v2/models/{model}/versions/{version}/infer", "/v2/models/{model}/config",
              "/v2/repository/index", "/metrics", "/appliance/metrics/history",
              "/appliance/logs/export"):
        assert p in paths, p
    infer = paths["/v2/models/{model}/infer"]["post"]
    body = infer["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schemas = doc["components"]["schemas"]  # type: ignore[index]
    request = schemas[body.rsplit("/", 1)[1]]
    assert request["required"] == ["inputs"]
    tensor = schemas["RequestInput"]
    assert set(tensor["properties"]) >= {"name", "datatype", "shape", "data", "parameters"}
    assert "FP32" in tensor["properties"]["datatype"]["enum"]
    for code in ("400", "404", "503"):
        ref = infer["responses"][code]["content"]["application/json"]["schema"]["$ref"]
        assert ref.endswith("/ErrorDoc")
    assert schemas["ErrorDoc"]["required"] == ["error"]
    assert "422" not in json.dumps(doc["paths"])  # FastAPI's own error shape is not ours
    assert infer["security"] == [{"bearer": []}]
    assert "security" not in paths["/v2/health/ready"]["get"]


def test_the_document_needs_the_token_like_everything_but_health(api: Server) -> None:
    code, _, raw = http("GET", f"{api.url}/openapi.json")
    assert code == 401 and set(json.loads(raw)) == {"error"}


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/nothing/here", 404),
    ("GET", "/docs", 404),  # the docs UI would fetch scripts from the internet: not served
    ("GET", "/appliance/logs/export", 405),
    ("POST", "/metrics", 405),
    ("GET", "/appliance/metrics/history?limit=many", 400),
    ("GET", "/appliance/metrics/history?since=nan", 400),
])
def test_admin_errors_are_one_line_error_objects(api: Server, method: str, path: str,
                                                 status: int) -> None:
    code, headers, raw = http(method, api.url + path, headers=api.auth)
    assert code == status
    assert headers["content-type"] == "application/json"
    doc = json.loads(raw)
    assert set(doc) == {"error"} and "\n" not in doc["error"] and doc["error"]


def test_repository_index_through_fastapi(api: Server) -> None:
    code, _, raw = http("GET", f"{api.url}/v2/repository/index", headers=api.auth)
    assert code == 200 and json.loads(raw) == [{"name": "mlp", "version": "1",
                                                 "state": "READY"}]
