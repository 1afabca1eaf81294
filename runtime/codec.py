"""V2 inference requests and responses: JSON tensors and the binary tensor data extension."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelcontract import ModelSpec
from runtime.backends import Tensors
from runtime.dtypes import DATATYPES, WIRE_DTYPES
from runtime.errors import BadRequestError

HEADER_LENGTH = "inference-header-content-length"

try:  # orjson parses a large tensor's JSON several times faster than the standard library
    import orjson

    _loads: Callable[[bytes | bytearray], Any] = orjson.loads

    def _dumps(doc: Any) -> bytes:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)

    _FAST = True
except ImportError:  # pragma: no cover - the runtime extra installs orjson
    _loads = json.loads

    def _dumps(doc: Any) -> bytes:
        return json.dumps(doc, separators=(",", ":")).encode()

    _FAST = False


@dataclass(slots=True)
class InferRequest:
    """A decoded, checked request: what to run and how to answer."""

    id: str | None
    inputs: Tensors
    outputs: list[tuple[str, bool]]  # (name, as binary)


def _json(raw: bytes | bytearray) -> Any:
    try:
        return _loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequestError(f"request body is not valid JSON: {e}") from e


def _flag(params: Any, key: str) -> bool:
    return isinstance(params, dict) and params.get(key) is True


def decode_request(spec: ModelSpec, body: bytes | bytearray,
                   header_length: int | None) -> InferRequest:
    """Check a request body against the model's signature and build its input arrays.

    Raises:
        BadRequestError: bad JSON, unknown or missing inputs, a wrong datatype or shape,
            data that does not match the shape, a batch over max_batch_size.
    """
    binary: bytes | memoryview
    if header_length is None:
        header, binary = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise BadRequestError(
                f"Inference-Header-Content-Length {header_length} is outside the body "
                f"of {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    doc = _json(header)
    if not isinstance(doc, dict):
        raise BadRequestError("request body must be a JSON object with \"inputs\"")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequestError("request needs a non-empty \"inputs\" list")
    want = {t.name: t for t in spec.inputs}
    inputs: Tensors = {}
    offset = 0
    for raw in raw_inputs:
        if not isinstance(raw, dict):
            raise BadRequestError("each input must be an object with name, datatype, shape, data")
        name = raw.get("name")
        t = want.get(name) if isinstance(name, str) else None
        if t is None or not isinstance(name, str):
            raise BadRequestError(
                f"unknown input {name!r} for model {spec.name}; it takes {sorted(want)}"
            )
        if name in inputs:
            raise BadRequestError(f"input {name!r} appears twice")
        if raw.get("datatype") != t.datatype:
            raise BadRequestError(
                f"input {name!r} has datatype {raw.get('datatype')!r}; model {spec.name} "
                f"wants {t.datatype}"
            )
        shape = raw.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ) or not t.accepts(shape):
            raise BadRequestError(
                f"input {name!r} has shape {shape}; model {spec.name} wants {list(t.shape)} "
                "(-1 is any size)"
            )
        if spec.batched and shape[0] > spec.max_batch_size:
            raise BadRequestError(
                f"input {name!r} has batch {shape[0]}; model {spec.name} takes at most "
                f"{spec.max_batch_size} per request"
            )
        count = math.prod(shape)
        wire = WIRE_DTYPES[t.datatype]
        size = _binary_size(raw.get("parameters"))
        if size is not None:
            if size != count * wire.itemsize:
                raise BadRequestError(
                    f"input {name!r}: binary_data_size {size} != {count} x {wire.itemsize} bytes"
                )
            if offset + size > len(binary):
                raise BadRequestError(f"input {name!r}: binary data ends before {size} bytes")
            chunk = binary[offset:offset + size]
            arr = np.frombuffer(chunk, dtype=wire).astype(DATATYPES[t.datatype], copy=False)
            offset += size
        else:
            data = raw.get("data")
            if not isinstance(data, list):
                raise BadRequestError(f"input {name!r} needs \"data\" (a list) or binary data")
            _check_kinds(name, t.datatype, data)
            try:
                arr = np.asarray(data, dtype=DATATYPES[t.datatype])
            except (ValueError, TypeError, OverflowError) as e:
                raise BadRequestError(
                    f"input {name!r}: data is not {t.datatype}: {str(e)[:120]}") from e
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise BadRequestError(
                    f"input {name!r}: a value is out of range for {t.datatype}; send finite "
                    "numbers the datatype can hold")
            if arr.size != count:
                raise BadRequestError(
                    f"input {name!r}: {arr.size} values do not fill shape {shape}"
                )
        inputs[name] = arr.reshape(shape)
    missing = sorted(set(want) - set(inputs))
    if missing:
        raise BadRequestError(f"model {spec.name} needs inputs {missing}")
    if offset != len(binary):
        raise BadRequestError(
            f"body has {len(binary) - offset} bytes of binary data no input claims"
        )
    if spec.batched and len({a.shape[0] for a in inputs.values()}) > 1:
        raise BadRequestError("all inputs must have the same batch size (first dimension)")
    return InferRequest(_request_id(doc.get("id")), inputs, _outputs(spec, doc))


# The JSON value types each datatype takes: numpy would turn true into 1.0 and 1.5 into 1.
_KINDS: dict[str, frozenset[type]] = {"BOOL": frozenset({bool})}
for _dt in ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"):
    _KINDS[_dt] = frozenset({int})
for _dt in ("FP16", "FP32", "FP64"):
    _KINDS[_dt] = frozenset({int, float})


_JSON_NAMES = {bool: "true/false", int: "an integer", float: "a number with a fraction",
               str: "a string", type(None): "null", dict: "an object"}


def _check_kinds(name: str, datatype: str, data: list[Any]) -> None:
    """Raise unless every (possibly nested) value is of a JSON type `datatype` takes."""
    allowed = _KINDS.get(datatype, frozenset())
    level: list[Any] = data
    while True:
        kinds = set(map(type, level))  # C speed: one pass, no Python loop per value
        if list in kinds:
            if kinds != {list}:
                raise BadRequestError(f"input {name!r}: data mixes lists and values")
            level = [v for sub in level for v in sub]
            continue
        bad = kinds - allowed
        if bad:
            got = sorted(_JSON_NAMES.get(k, "an object") for k in bad)
            want = ("true or false" if datatype == "BOOL" else "numbers"
                    if float in allowed else "integers")
            raise BadRequestError(
                f"input {name!r}: data is not {datatype}: it takes {want}, got "
                f"{' and '.join(got)}")
        return


def _binary_size(params: Any) -> int | None:
    if not isinstance(params, dict) or "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BadRequestError("binary_data_size must be a non-negative integer")
    return size


def _request_id(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise BadRequestError("request \"id\" must be a string")
    return raw


def _outputs(spec: ModelSpec, doc: dict[str, Any]) -> list[tuple[str, bool]]:
    binary_default = _flag(doc.get("parameters"), "binary_data_output")
    raw = doc.get("outputs")
    if raw is None:
        return [(t.name, binary_default) for t in spec.outputs]
    if not isinstance(raw, list):
        raise BadRequestError("\"outputs\" must be a list of {\"name\": ...}")
    names = {t.name for t in spec.outputs}
    out = []
    for o in raw:
        if not isinstance(o, dict) or not isinstance(o.get("name"), str) or (
                o["name"] not in names):
            got = o.get("name") if isinstance(o, dict) else o
            raise BadRequestError(
                f"unknown output {str(got)[:100]!r} for model {spec.name}; "
                f"it has {sorted(names)}")
        params = o.get("parameters")
        binary = params.get("binary_data", binary_default) if isinstance(params, dict) else (
            binary_default)
        out.append((o["name"], binary is True))
    return out


def encode_response(
    spec: ModelSpec, req: InferRequest, results: Tensors
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it."""
    outputs = []
    blobs: list[bytes] = []
    types = {t.name: t.datatype for t in spec.outputs}
    for name, binary in req.outputs:
        arr = results[name]
        datatype = types[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            raw = np.ascontiguousarray(arr, dtype=WIRE_DTYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            flat = arr.ravel()
            entry["data"] = np.ascontiguousarray(flat) if _FAST else flat.tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": spec.name, "model_version": spec.version}
    if req.id is not None:
        doc["id"] = req.id
    doc["outputs"] = outputs
    header = _dumps(doc)
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
