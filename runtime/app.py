"""The Open Inference Protocol (KServe V2) REST server as a plain ASGI application.

Hand-written, not FastAPI, on the hot path (infer, metadata, health): for a small model the
HTTP handling is the cost, so routing is a split of the path and responses are two ASGI
messages. Everything else (the OpenAPI document, /metrics, /appliance/...) goes to the
FastAPI application in `runtime.api`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from runtime import __version__
from runtime.api import admin_app
from runtime.auth import TokenCheck
from runtime.codec import HEADER_LENGTH, decode_request, encode_response
from runtime.errors import (
    BadRequestError,
    BusyError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
    UnauthorizedError,
    UnavailableError,
)
from runtime.parsing import ParserProcess
from runtime.state import LoadedModel, ModelRegistry

log = logging.getLogger("runtime.app")

# As the ASGI spec and its servers type them: a scope and messages are mappings.
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON = b"application/json"
TRITON_TYPES = {
    "BOOL": "TYPE_BOOL", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32", "UINT64": "TYPE_UINT64", "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16", "INT32": "TYPE_INT32", "INT64": "TYPE_INT64",
    "FP16": "TYPE_FP16", "FP32": "TYPE_FP32", "FP64": "TYPE_FP64",
}
# JSON larger than this is parsed in the parser process, off this one (see runtime.parsing).
OFFLOAD_JSON_BYTES = 1 << 20
PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch",
             "torch-export": "pytorch_libtorch"}


@dataclass(slots=True)
class Response:
    """What a handler answers."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] | None = None


def _json(doc: Any, status: int = 200) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":")).encode())


class V2App:
    """ASGI callable serving the models of a `ModelRegistry`."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.settings = registry.settings
        self.metrics = registry.metrics
        self._auth = TokenCheck(self.settings.token, self.settings.token_file)
        self._max_body = self.settings.max_body_bytes
        self._budget = self.settings.inflight_max_bytes
        self._inflight_bytes = 0
        self._parser = ParserProcess()
        self.admin = admin_app(registry, token_required=self._auth.enabled)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.registry.start(asyncio.get_running_loop())
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.registry.stop()
                self._parser.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        auth = length = header_length = request_id = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"content-length":
                length = v
            elif k == b"inference-header-content-length":
                header_length = v
            elif k == b"x-request-id":
                request_id = v
        model: LoadedModel | None = None
        rid: str | None = None
        try:
            if self._auth.enabled and not path.startswith("/v2/health/") and (
                    not self._auth.accepts(auth)):
                raise UnauthorizedError("missing or wrong bearer token; send "
                                        "'Authorization: Bearer <token>'")
            parts = path.strip("/").split("/")
            if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
                model, action = self._resolve(parts)
                if action == "infer":
                    if method != "POST":
                        raise MethodNotAllowedError(f"{path} takes POST")
                    held = [0]
                    try:
                        body = await self._body(receive, length, held)
                        resp, rid = await self._infer(
                            model, body, header_length,
                            request_id.decode(errors="replace") if request_id else None)
                    finally:
                        self._inflight_bytes -= held[0]
                else:
                    resp = self._model_get(model, action, method, path)
            else:
                hot = self._hot(parts, method, path)
                if hot is None:
                    await self._admin_app(scope, receive, send, start, path, method)
                    return
                resp = hot
        except RequestError as e:
            resp = _json({"error": str(e)}, e.status)
            if e.retry_after_s is not None:
                resp.headers = [(b"retry-after", str(e.retry_after_s).encode())]
        except Exception as e:  # a bug: answer 500, keep serving
            log.exception("internal error on %s %s", method, path)
            resp = _json({"error": f"internal error ({type(e).__name__}); see the runtime log"},
                         500)
        headers = [(b"content-type", resp.content_type),
                   (b"content-length", str(len(resp.body)).encode())]
        if resp.headers:
            headers += resp.headers
        if resp.status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": resp.body})
        if model is not None or (resp.status >= 400 and not path.startswith("/v2/health/")):
            self._account(model, path, method, resp.status, time.perf_counter() - start,
                          rid or (request_id.decode(errors="replace") if request_id else None))

    async def _admin_app(self, scope: Scope, receive: Receive, send: Send, start: float,
                         path: str, method: str) -> None:
        status = 500

        async def send_status(msg: MutableMapping[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(dict(msg))
        await self.admin(scope, receive, send_status)
        if status >= 400:
            self._account(None, path, method, status, time.perf_counter() - start, None)

    def _hot(self, parts: list[str], method: str, path: str) -> Response | None:
        route = "/" + "/".join(parts)
        if route == "/v2/health/live":
            return _json({"live": True})
        if route == "/v2/health/ready":
            if not self.registry.ready:
                raise UnavailableError(self.registry.not_ready_reason())
            return _json({"ready": True})
        if route == "/v2":
            return _json({"name": "appliance-runtime", "version": __version__,
                          "extensions": ["binary_tensor_data", "model_configuration",
                                         "model_repository"]})
        return None

    def _account(self, model: LoadedModel | None, path: str, method: str, status: int,
                 elapsed: float, rid: str | None) -> None:
        name = model.spec.name if model else "_none"
        version = model.spec.version if model else ""
        code = str(status)
        self.metrics.requests.inc((name, version, code))
        if status >= 400:
            self.metrics.errors.inc((name, code))
        if model is not None:
            self.metrics.latency.observe((name, model.device), elapsed)
        sink = self.registry.log_sink
        if sink is not None and self.settings.request_log:
            # A client's id may say who the patient is: only its keyed hash is written.
            sink.write({"event": "request",
                        "id": sink.client_id(rid) if rid else uuid.uuid4().hex,
                        "method": method,
                        "path": path[:200], "model": name, "version": version,
                        "status": status, "latency_ms": round(elapsed * 1000, 3)})

    def _hold(self, size: int, held: list[int]) -> None:
        """Count `size` more body bytes against the in-flight budget, or refuse.

        Raises:
            BusyError: the budget is spent (a request alone always fits: see Settings).
        """
        if self._inflight_bytes + size > self._budget and self._inflight_bytes > 0:
            raise BusyError(
                f"the server holds {self._inflight_bytes >> 20} MiB of request bodies, its "
                f"RUNTIME_INFLIGHT_MAX_BYTES budget; retry shortly")
        self._inflight_bytes += size
        held[0] += size

    async def _body(self, receive: Receive, length: bytes | None,
                    held: list[int]) -> bytes | bytearray:
        declared = _digits(length, "Content-Length") if length is not None else None
        if declared is not None:
            if declared > self._max_body:
                raise PayloadTooLargeError(
                    f"body of {declared} bytes is over the {self._max_body}-byte cap; send "
                    "smaller batches or raise RUNTIME_MAX_BODY_BYTES")
            self._hold(declared, held)
            if declared > OFFLOAD_JSON_BYTES:
                return await self._large_body(receive, declared)
        chunks = []
        size = 0
        while True:
            msg = await receive()
            chunk = msg.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self._max_body:
                    raise PayloadTooLargeError(
                        f"body is over the {self._max_body}-byte cap; send smaller batches")
                if declared is None:
                    self._hold(len(chunk), held)
                chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _large_body(self, receive: Receive, declared: int) -> bytearray:
        # One buffer of the declared size: joining chunks would briefly hold the body twice.
        buf = bytearray(declared)
        view = memoryview(buf)
        size = 0
        while True:
            msg = await receive()
            chunk = msg.get("body", b"")
            if chunk:
                if size + len(chunk) > declared:
                    raise BadRequestError("body is longer than its Content-Length")
                view[size:size + len(chunk)] = chunk
                size += len(chunk)
            if not msg.get("more_body", False):
                break
        if size != declared:
            raise BadRequestError(f"body ended after {size} of its {declared} bytes")
        return buf

    def _resolve(self, parts: list[str]) -> tuple[LoadedModel, str]:
        # parts: v2 models NAME [versions V] [ready|infer|config]
        name, rest = parts[2], parts[3:]
        version = None
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or not rest[1]:
                raise NotFoundError("missing version after /versions/")
            version, rest = rest[1], rest[2:]
        if len(rest) > 1 or (rest and rest[0] not in ("ready", "infer", "config")):
            raise NotFoundError(f"no such endpoint /{'/'.join(parts)}")
        return self.registry.get(name, version), (rest[0] if rest else "")

    async def _infer(self, model: LoadedModel, body: bytes | bytearray, header_length: bytes | None,
                     header_id: str | None) -> tuple[Response, str | None]:
        if not model.ready or model.batcher is None:
            raise UnavailableError(f"model {model.spec.name} is not ready yet; retry shortly")
        hlen = None
        if header_length is not None:
            hlen = _digits(header_length, "Inference-Header-Content-Length")
        if (len(body) if hlen is None else hlen) > OFFLOAD_JSON_BYTES:
            req = await self._parser.decode(model.spec, body, hlen)
        else:
            req = decode_request(model.spec, body, hlen)
        outputs = await model.batcher.submit(req.inputs)
        payload, json_len = encode_response(model.spec, req, outputs)
        if json_len is None:
            return Response(200, payload), req.id or header_id
        return (Response(200, payload, b"application/octet-stream",
                         [(HEADER_LENGTH.encode(), str(json_len).encode())]),
                req.id or header_id)

    def _model_get(self, model: LoadedModel, action: str, method: str, path: str) -> Response:
        if method != "GET":
            raise MethodNotAllowedError(f"{path} takes GET")
        spec = model.spec
        if action == "ready":
            if not model.ready:
                raise UnavailableError(f"model {spec.name} is not ready")
            return _json({"name": spec.name, "version": spec.version, "ready": True})
        if action == "config":
            return _json(triton_config(model))
        return _json({
            "name": spec.name, "versions": self.registry.versions(spec.name),
            "platform": PLATFORMS.get(spec.framework, spec.framework),
            "inputs": [t.metadata() for t in spec.inputs],
            "outputs": [t.metadata() for t in spec.outputs],
            "device": model.device,  # our extension: where this version actually runs
            # and why it is the CPU when a GPU was possible (None: on a GPU, or by choice)
            "cpu_reason": model.cpu_reason.to_dict() if model.cpu_reason else None,
        })


def _digits(value: bytes, header: str) -> int:
    """A header's non-negative decimal integer: ASCII digits only (int() takes ' 1_0').

    Raises:
        BadRequestError: anything else.
    """
    if not value.isdigit() or len(value) > 18:
        raise BadRequestError(f"{header} must be a decimal number of bytes")
    return int(value)


def triton_config(model: LoadedModel) -> dict[str, Any]:
    """Triton's model configuration JSON, so Triton's tools (perf_analyzer) can drive us."""
    spec = model.spec
    batched = spec.batched

    def dims(shape: tuple[int, ...]) -> list[int]:
        return list(shape[1:] if batched else shape)

    doc: dict[str, Any] = {
        "name": spec.name, "platform": PLATFORMS.get(spec.framework, spec.framework),
        "backend": "onnxruntime" if spec.framework == "onnx" else "pytorch",
        "version_policy": {"specific": {"versions": [spec.version]}},
        "max_batch_size": spec.max_batch_size if batched else 0,
        "input": [{"name": t.name, "data_type": TRITON_TYPES[t.datatype], "dims": dims(t.shape)}
                  for t in spec.inputs],
        "output": [{"name": t.name, "data_type": TRITON_TYPES[t.datatype],
                    "dims": dims(t.shape)} for t in spec.outputs],
        "instance_group": [{"count": 1, "kind": "KIND_GPU" if model.device.startswith("cuda")
                            else "KIND_CPU"}],
    }
    if batched:
        doc["dynamic_batching"] = {
            "max_queue_delay_microseconds": int(spec.max_queue_delay_ms * 1000)}
    return doc
