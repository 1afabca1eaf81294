"""Large JSON request bodies are parsed in a child process, one at a time.

Parsing a 63 MiB JSON tensor makes about 300 MB of Python objects and holds the GIL for
more than a second (orjson, then numpy), which would stall every other request, health
checks included. The child does that work and hands back only the checked arrays.

The pipe carries our own framing, never pickle: parent to child a length-prefixed JSON
line (model.json path, header length) and the body; child to parent a length-prefixed JSON
header (request id, outputs, each input's datatype, shape and byte count, or an error
message) followed by the arrays' bytes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import numpy as np

from modelcontract import ModelSpec, load_spec
from runtime.codec import InferRequest, decode_request
from runtime.errors import BadRequestError, UnavailableError

log = logging.getLogger("runtime.parsing")

_LEN = struct.Struct(">Q")
MAX_META_BYTES = 1 << 20  # a frame's JSON part; anything larger is a broken peer


def _read_exact(f: IO[bytes], n: int) -> bytes:
    data = f.read(n)
    if data is None or len(data) != n:
        raise EOFError("pipe closed")
    return data


def _read_frame(f: IO[bytes]) -> tuple[dict[str, Any], int]:
    (meta_len,) = _LEN.unpack(_read_exact(f, _LEN.size))
    if meta_len > MAX_META_BYTES:
        raise EOFError("frame header too large")
    meta = json.loads(_read_exact(f, meta_len))
    (payload_len,) = _LEN.unpack(_read_exact(f, _LEN.size))
    return meta, payload_len


def _write_frame(f: IO[bytes], meta: dict[str, Any], payload: list[Any]) -> None:
    raw = json.dumps(meta, separators=(",", ":")).encode()
    f.write(_LEN.pack(len(raw)) + raw + _LEN.pack(sum(len(memoryview(p)) for p in payload)))
    for p in payload:
        f.write(p)
    f.flush()


def child_main() -> int:
    """The child's loop: read a body, decode and check it, answer arrays or an error."""
    stdin = sys.stdin.buffer
    # Frames go to a private copy of fd 1; fd 1 itself now points at stderr, so a stray
    # print from any library cannot corrupt the framing.
    stdout = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    specs: dict[str, ModelSpec] = {}
    while True:
        try:
            meta, size = _read_frame(stdin)
            body = _read_exact(stdin, size)
        except EOFError:
            return 0  # the server closed the pipe: it is stopping
        try:
            spec = specs.get(meta["model_json"])
            if spec is None:
                spec = specs[meta["model_json"]] = load_spec(Path(meta["model_json"]))
            req = decode_request(spec, body, meta["header_length"])
        except BadRequestError as e:
            _write_frame(stdout, {"error": str(e)}, [])
            continue
        del body
        arrays = [np.ascontiguousarray(a) for a in req.inputs.values()]
        _write_frame(stdout, {
            "id": req.id, "outputs": req.outputs,
            "inputs": [[name, a.dtype.str, list(a.shape), a.nbytes]
                       for name, a in zip(req.inputs, arrays, strict=True)],
        }, [a.data.cast("B") for a in arrays])


class ParserProcess:
    """Owns the child; `decode` runs one request through it off the event loop."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        # One thread: the child parses one body at a time, the rest wait their turn here.
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="json-parser")

    async def decode(self, spec: ModelSpec, body: bytes | bytearray,
                     header_length: int | None) -> InferRequest:
        """Decode and check `body` in the child.

        Raises:
            BadRequestError: what `decode_request` would raise.
            UnavailableError: the child died (it is restarted for the next request).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._decode, spec, body, header_length)

    def _start(self) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parents[1]),
                        os.environ.get("PYTHONPATH", "")] if p)}
        return subprocess.Popen([sys.executable, "-m", "runtime.parsing"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, close_fds=True)

    def _decode(self, spec: ModelSpec, body: bytes | bytearray,
                header_length: int | None) -> InferRequest:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            proc = self._proc
            assert proc.stdin is not None and proc.stdout is not None
            try:
                _write_frame(proc.stdin, {"model_json": str(spec.directory / "model.json"),
                                          "header_length": header_length}, [body])
                meta, size = _read_frame(proc.stdout)
                payload = _read_exact(proc.stdout, size)
            except (EOFError, OSError, ValueError) as e:
                proc.kill()
                proc.wait()
                self._proc = None
                log.error("the JSON parser process failed (%s); restarting it",
                          type(e).__name__)
                raise UnavailableError("the request parser restarted; retry the request") from e
        if "error" in meta:
            raise BadRequestError(meta["error"])
        inputs: dict[str, np.ndarray] = {}
        view = memoryview(payload)
        offset = 0
        for name, dtype, shape, nbytes in meta["inputs"]:
            inputs[name] = np.frombuffer(view[offset:offset + nbytes],
                                         dtype=np.dtype(dtype)).reshape(shape)
            offset += nbytes
        return InferRequest(meta["id"], inputs, [(n, b) for n, b in meta["outputs"]])

    def close(self) -> None:
        """Stop the child and the thread."""
        with self._lock:
            if self._proc is not None:
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                try:
                    self._proc.wait(5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
                if self._proc.stdout is not None:
                    self._proc.stdout.close()
                self._proc = None
        self._pool.shutdown(wait=False)


if __name__ == "__main__":
    sys.exit(child_main())
