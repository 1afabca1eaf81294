"""The REST API's description and its admin side, as a FastAPI application.

FastAPI serves what it is good at: the OpenAPI document of the whole API (`GET
/openapi.json`) and the admin endpoints (`/metrics`, `/v2/repository/index`,
`/appliance/...`). The V2 health, metadata and infer endpoints are answered by the
hand-written router in `runtime.app`, which hands everything else to this application;
they are declared here only so the document describes them, with the JSON tensor schemas.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime import __version__
from runtime.errors import ForbiddenError, NotFoundError, RequestError
from runtime.state import ModelRegistry

Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                   "INT64", "FP16", "FP32", "FP64"]
Scalar = bool | int | float
NestedData = list[Any]  # values, or lists of values nested to the tensor's rank


class ErrorDoc(BaseModel):
    """Every error: one line saying what is wrong and what to do."""

    error: str


class TensorMetadata(BaseModel):
    """A model input or output: name, datatype and shape (-1 is any size)."""

    name: str
    datatype: Datatype
    shape: list[int]


class BinaryParameters(BaseModel):
    """Tensor parameters of the binary tensor data extension."""

    model_config = ConfigDict(extra="allow")
    binary_data_size: Annotated[int, Field(ge=0)] | None = None
    binary_data: bool | None = None


class RequestInput(BaseModel):
    """One input tensor: `data` as JSON (row-major), or its bytes after the JSON header."""

    name: str
    datatype: Datatype
    shape: list[Annotated[int, Field(ge=0)]]
    data: NestedData | None = None
    parameters: BinaryParameters | None = None


class RequestOutput(BaseModel):
    """An output the client asks for; `parameters.binary_data` asks for raw bytes."""

    name: str
    parameters: BinaryParameters | None = None


class InferenceRequest(BaseModel):
    """`POST .../infer` body (JSON, or the JSON header of a binary request)."""

    id: str | None = None
    inputs: Annotated[list[RequestInput], Field(min_length=1)]
    outputs: list[RequestOutput] | None = None
    parameters: dict[str, Any] | None = None


class ResponseOutput(BaseModel):
    """One output tensor of an answer."""

    name: str
    datatype: Datatype
    shape: list[int]
    data: list[Scalar] | None = None
    parameters: BinaryParameters | None = None


class InferenceResponse(BaseModel):
    """The answer to an infer request."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseOutput]


class ServerMetadata(BaseModel):
    """`GET /v2`."""

    name: str
    version: str
    extensions: list[str]


class CpuReasonDoc(BaseModel):
    """Why a model runs on the CPU: a stable cause code and what the runtime saw."""

    cause: str = Field(description="no-gpu-visible, no-cuda-provider, cuda-init-failed, "
                                   "no-gpu-memory or cpu-requested")
    detail: str


class ModelMetadata(BaseModel):
    """`GET /v2/models/{model}`."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    device: str = Field(description="Extension: where this version runs (cpu, cuda:N)")
    cpu_reason: CpuReasonDoc | None = Field(
        None, description="Extension: why this version runs on the CPU though a GPU was "
                          "possible (None on a GPU, or on the CPU by choice)")


class Live(BaseModel):
    """`GET /v2/health/live`."""

    live: bool


class Ready(BaseModel):
    """`GET /v2/health/ready`."""

    ready: bool


class ModelReady(BaseModel):
    """`GET /v2/models/{model}/ready`."""

    name: str
    version: str
    ready: bool


class RepositoryEntry(BaseModel):
    """One model version in `/v2/repository/index`."""

    name: str
    version: str
    state: Literal["READY", "LOADING"]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "Bad request", 401: "Missing or wrong bearer token",
            403: "Not allowed from this host", 404: "No such model, version or path",
            405: "Wrong method", 413: "Body over the size cap",
            431: "Request headers too large", 503: "Not ready, or busy: retry later"}
    return {c: {"model": ErrorDoc, "description": text[c]} for c in codes}


_AUTH = (401,)
ModelName = Annotated[str, Path(description="model name", examples=["mlp"])]
VersionName = Annotated[str, Path(description="model version", examples=["1"])]


def _served_by_v2_router() -> None:
    """Declared for the document only: `runtime.app` answers these paths itself."""
    raise NotFoundError("this path is answered by the V2 router")


def _declare_v2(app: FastAPI) -> None:
    def route(path: str, method: str, model: Any, summary: str, codes: tuple[int, ...],
              body: bool = False, **extra: Any) -> None:
        async def endpoint(**_: Any) -> None:
            _served_by_v2_router()
        params = [p for p in ("model", "version") if "{" + p + "}" in path]
        endpoint.__signature__ = _signature(params, body)  # type: ignore[attr-defined]
        app.add_api_route(path, endpoint, methods=[method], response_model=model,
                          summary=summary, responses=_errors(*codes), tags=["V2"], **extra)

    route("/v2/health/live", "GET", Live, "Server is live", ())
    route("/v2/health/ready", "GET", Ready, "Server is ready (every model warmed up)", (503,))
    route("/v2", "GET", ServerMetadata, "Server metadata", _AUTH)
    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        route(prefix, "GET", ModelMetadata, "Model metadata", (*_AUTH, 404, 405))
        route(prefix + "/ready", "GET", ModelReady, "Model is ready", (*_AUTH, 404, 405, 503))
        route(prefix + "/config", "GET", dict[str, Any], "Triton model configuration",
              (*_AUTH, 404, 405))
        route(prefix + "/infer", "POST", InferenceResponse, "Run inference",
              (400, *_AUTH, 404, 405, 413, 503), body=True,
              openapi_extra={"responses": {"200": {"headers": {
                  "Inference-Header-Content-Length": {
                      "description": "JSON header length when binary outputs follow it",
                      "schema": {"type": "integer"}}}}}})


def _signature(params: list[str], body: bool) -> Any:
    import inspect

    p = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY,
                           annotation=ModelName if n == "model" else VersionName)
         for n in params]
    if body:
        p.append(inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY,
                                   annotation=InferenceRequest))
    return inspect.Signature(p)


def admin_app(registry: ModelRegistry, token_required: bool) -> FastAPI:
    """The FastAPI application behind the V2 router: admin endpoints and the document."""
    app = FastAPI(title="Appliance runtime", version=__version__, docs_url=None,
                  redoc_url=None, openapi_url="/openapi.json",
                  description="Open Inference Protocol (KServe V2) REST API, Triton's model "
                              "configuration, and the appliance's admin endpoints. Errors are "
                              "`{\"error\": \"...\"}`.")

    @app.exception_handler(RequestError)
    async def request_error(_: Request, e: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}"[:300]}, 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        message = {404: "no such endpoint; GET /openapi.json lists them",
                   405: "wrong method for this path; GET /openapi.json lists them"}
        return JSONResponse({"error": message.get(e.status_code, str(e.detail))},
                            e.status_code)

    _declare_v2(app)

    @app.get("/metrics", tags=["appliance"], summary="Prometheus text exposition",
             response_class=Response, responses={
                 200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
                 **_errors(*_AUTH)})
    async def metrics() -> Response:
        text, content_type = registry.render_metrics_for_scrape()
        return Response(text, media_type=content_type)

    @app.get("/v2/repository/index", tags=["V2"], response_model=list[RepositoryEntry],
             summary="Every model version and its state", responses=_errors(*_AUTH))
    async def repository_index() -> list[dict[str, str]]:
        return [{"name": m.spec.name, "version": m.spec.version,
                 "state": "READY" if m.ready else "LOADING"}
                for m in registry.models.values()]

    @app.get("/appliance/metrics/history", tags=["appliance"],
             response_model=list[dict[str, Any]], responses=_errors(400, *_AUTH),
             summary="Samples of the local on-disk metrics history, oldest first")
    async def history(
        since: Annotated[float, Query(description="epoch seconds", allow_inf_nan=False)] = 0.0,
        limit: Annotated[int, Query(description="newest N samples")] = 10_000,
    ) -> list[dict[str, Any]]:
        return registry.history_samples(since, max(0, min(limit, 100_000)))

    @app.post("/appliance/logs/export", tags=["appliance"], response_class=Response,
              summary="One archive of logs, metrics history, system and release info",
              responses={200: {"content": {"application/gzip": {
                  "schema": {"type": "string", "format": "binary"}}}},
                  **_errors(*_AUTH, 403)})
    async def export(request: Request) -> Response:
        peer = request.client.host if request.client else ""
        if not token_required and not _loopback(peer):
            # The archive holds every request's metadata: with no token to ask for,
            # only someone on the server itself may take it.
            raise ForbiddenError("log export needs a bearer token when asked from "
                                 "another host; export on the server itself, or start "
                                 "the runtime with --token-file")
        data, filename = await registry.export_bytes()
        return Response(data, media_type="application/gzip", headers={
            "content-disposition": f'attachment; filename="{filename}"'})

    _finish_document(app, token_required)
    return app


def _finish_document(app: FastAPI, token_required: bool) -> None:
    """Bad input is a 400 `ErrorDoc` here, never FastAPI's 422; mark what needs the token."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = original()
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for path, ops in doc["paths"].items():
            for op in ops.values():
                if op["responses"].pop("422", None) is not None and "400" not in op[
                        "responses"]:
                    op["responses"]["400"] = {"description": "Bad request", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ErrorDoc"}}}}
                if token_required and not path.startswith("/v2/health/"):
                    op["security"] = [{"bearer": []}]
        if token_required:
            doc.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _loopback(host: str) -> bool:
    """Whether a peer address is this host's loopback (IPv4, IPv6 or IPv4-mapped)."""
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # no address (a unix socket) or a name: not provably local
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback
