"""Logs that cannot leak what a client sent, and cannot be flooded past their cap."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.logs import MAX_LINE_BYTES, JsonLinesLog, id_digest, load_id_key
from tests.enginekit import wait_for
from tests.runtime.conftest import TOKEN, Server, http, start_server

PHI = "accession=ACC998877 patient=DOE^JANE dob=19700101"


@pytest.fixture(scope="module")
def logged(onnx_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(onnx_models_dir, tmp_path_factory.mktemp("logs") / "data", token=TOKEN)
    yield s
    s.stop()


def _infer(s: Server, rid: str | None = None, header_id: str | None = None) -> int:
    doc: dict[str, object] = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                                          "data": [0.5] * 64}]}
    if rid is not None:
        doc["id"] = rid
    headers = dict(s.auth)
    if header_id is not None:
        headers["X-Request-Id"] = header_id
    return http("POST", f"{s.url}/v2/models/mlp/infer", json.dumps(doc).encode(), headers)[0]


def _log_text(s: Server) -> str:
    return "".join(p.read_text() for p in sorted((s.data_dir / "logs").glob("runtime.jsonl*")))


def test_client_ids_are_logged_and_exported_only_as_keyed_hashes(logged: Server) -> None:
    assert _infer(logged, rid=PHI) == 200
    assert _infer(logged, header_id=PHI + " via header") == 200
    key_file = logged.data_dir / "log-id.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_bytes()
    digest, header_digest = id_digest(key, PHI), id_digest(key, PHI + " via header")
    wait_for(lambda: header_digest in _log_text(logged), 10, "the request log lines")
    text = _log_text(logged)
    assert digest in text and "DOE^JANE" not in text and "ACC998877" not in text
    assert _infer(logged, rid=PHI) == 200  # the same id gives the same hash: correlatable
    wait_for(lambda: _log_text(logged).count(digest) == 2, 10, "the second log line")
    code, _, raw = http("POST", f"{logged.url}/appliance/logs/export", b"", logged.auth)
    assert code == 200
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        names = tar.getnames()
        blob = b"".join(f.read() for m in tar.getmembers()
                        if (f := tar.extractfile(m)) is not None)
    assert b"DOE^JANE" not in blob and b"ACC998877" not in blob
    assert digest.encode() in blob
    assert not any(n.endswith("log-id.key") for n in names) and key not in blob


def test_the_key_is_per_data_dir_and_kept(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = load_id_key(tmp_path / "a"), load_id_key(tmp_path / "b")
    assert len(a) == 32 and a != b
    assert load_id_key(tmp_path / "a") == a
    assert id_digest(a, PHI) != id_digest(b, PHI)


def test_a_huge_request_id_header_is_refused_and_writes_nothing_big(logged: Server) -> None:
    before = sum(p.stat().st_size for p in (logged.data_dir / "logs").iterdir())
    answer = b""
    with socket.create_connection(("127.0.0.1", logged.port), timeout=30) as c:
        # The server answers 431 and closes before it has read all 8 MiB: the rest of our
        # send, or our read, may then meet a reset instead.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nAuthorization: "
                      b"Bearer " + TOKEN.encode() + b"\r\nX-Request-Id: "
                      + b"x" * (8 * 1024 * 1024) + b"\r\nContent-Length: 2\r\n\r\n{}")
        with contextlib.suppress(ConnectionResetError):
            while chunk := c.recv(65536):
                answer += chunk
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 ")
    assert _infer(logged, header_id="y" * 30_000) == 200  # under the header cap
    wait_for(lambda: id_digest((logged.data_dir / "log-id.key").read_bytes(), "y" * 30_000)
             in _log_text(logged), 10, "the request's log line")
    after = sum(p.stat().st_size for p in (logged.data_dir / "logs").iterdir())
    assert after - before < 16 * 1024
    assert max(len(ln) for ln in _log_text(logged).splitlines()) < MAX_LINE_BYTES


def test_huge_fields_cannot_rotate_earlier_records_away(tmp_path: Path) -> None:
    log = JsonLinesLog(tmp_path, max_bytes=60_000, backups=2)
    for i in range(20):
        log.write({"event": "request", "id": f"early-{i}", "status": 200})
    for _ in range(6):
        log.write({"event": "request", "id": "z" * (30 * 1024 * 1024), "status": 200,
                   "extra": list(range(100_000))})
    log.close()
    text = "".join(p.read_text() for p in tmp_path.iterdir())
    assert all(f'"early-{i}"' in text for i in range(20))
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 3 * 60_000
    assert all(len(ln) <= MAX_LINE_BYTES for ln in text.splitlines())
    assert all(json.loads(ln) for ln in text.splitlines())


def test_log_files_are_0640_even_when_an_older_one_was_not(tmp_path: Path) -> None:
    old = tmp_path / "runtime.jsonl"
    old.write_text("")
    old.chmod(0o644)
    log = JsonLinesLog(tmp_path, max_bytes=2_000, backups=2)
    for i in range(100):
        log.write({"event": "request", "id": f"r{i}"})
    log.close()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert len(modes) == 3 and set(modes.values()) == {0o640}, modes
