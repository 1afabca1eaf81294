"""The acceptance gate's comparison, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from appliance.bundle.manifest import Sample
from appliance.errors import AcceptanceError, HealthTimeoutError
from appliance.site.acceptance import check_samples, wait_ready
from tests.site.factory import manifest, model


class Canned(BaseHTTPRequestHandler):
    answer: object = {}
    code = 200

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps(type(self).answer).encode()
        self.send_response(type(self).code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[Canned]]]:
    handler = type("H", (Canned,), {})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", handler
    srv.shutdown()
    srv.server_close()


def release(expected: list, tol: float = 1e-3):
    s = Sample({"x": {"datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}},
               {"y": {"datatype": "FP32", "shape": [1, 3], "data": expected}}, tol)
    m = manifest([("mlp", [("mlp", 0)], "preferred")])
    return replace(m, models=[model("mlp", samples=[s])])


def answer(data: list) -> dict:
    return {"outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 3], "data": data}]}


def test_within_tolerance_passes(server):
    url, h = server
    h.answer = answer([1.0, 2.0005, 3.0])
    assert check_samples(release([1, 2, 3]), {"mlp": url}) == 1


def test_worst_difference_is_named(server):
    url, h = server
    h.answer = answer([1.01, 2.5, 3.0])
    with pytest.raises(AcceptanceError, match=r"output y\[1\]: got 2.5, expected 2 \(difference "
                                              r"0.5, tolerance 0.001\)"):
        check_samples(release([1, 2, 3]), {"mlp": url})


@pytest.mark.parametrize("ans,match", [
    ({"outputs": [{"name": "z", "data": [1, 2, 3]}]}, "output 'y' missing"),
    (answer([1, 2]), "has 2 values, the signed sample 3"),
    (answer([1, float("nan"), 3]), "difference inf"),
    ({"error": "boom"}, "the answer has no outputs"),
])
def test_malformed_answers_fail(server, ans, match):
    url, h = server
    h.answer = ans
    with pytest.raises(AcceptanceError, match=match):
        check_samples(release([1, 2, 3]), {"mlp": url})


def test_http_error_fails_with_the_status(server):
    url, h = server
    h.code, h.answer = 400, {"error": "bad input"}
    with pytest.raises(AcceptanceError, match="answered 400"):
        check_samples(release([1, 2, 3]), {"mlp": url})


def test_wait_ready_fails_fast_when_the_service_died():
    with pytest.raises(HealthTimeoutError, match=r"stopped before it was ready.*oom killed"):
        wait_ready({"mlp": "http://127.0.0.1:9/v2/health/ready"}, lambda s: False, 30,
                   lambda s: "loading\noom killed")
