"""Helpers for bundle tests: synthetic models, specs, and hand-made (hostile) tars."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from appliance.bundle.manifest import ENVELOPE_PATH, MANIFEST_PATH, PAYLOAD_TYPE, Manifest
from appliance.bundle.store import ContentStore
from appliance.bundle.tarfmt import END_OF_ARCHIVE, file_header, padding
from signing import PrivateKey, sign

EPOCH = 1_790_000_000  # 2026-09-21: SOURCE_DATE_EPOCH for reproducible test bundles
BUILT_AT = datetime.fromtimestamp(EPOCH, UTC)
NOW = BUILT_AT + timedelta(days=1)


@contextlib.contextmanager
def source_date_epoch(value: int = EPOCH) -> Iterator[None]:
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = str(value)
    try:
        yield
    finally:
        if old is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old


def make_model_dir(directory: Path, name: str, payload: bytes, version: str = "1") -> Path:
    """A model directory with synthetic weights bytes (the bundler never parses them)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.onnx").write_bytes(payload)
    (directory / "model.json").write_text(json.dumps({
        "name": name, "version": version, "framework": "onnx", "file": "model.onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
        "max_batch_size": 8, "max_queue_delay_ms": 1.0, "gpu_memory_mib": 0,
    }))
    return directory


def write_spec(directory: Path, body: str) -> Path:
    path = directory / "appliance.yaml"
    path.write_text(body)
    return path


TWO_MODEL_SPEC = """\
name: test
version: 1.0.0
sequence: {sequence}
expires_days: 30
models:
  - name: alpha
    path: models/alpha
    provenance: {{code_commit: c1, data_version: d1, training_run: r1}}
  - name: beta
    path: models/beta
services:
  - name: svc-a
    models: [alpha]
    port: 8000
  - name: svc-b
    models: [alpha, beta]
    port: 8001
    gpu: none
"""


@dataclass
class Entry:
    """A tar member as the tests want it written, hostile ones included."""

    name: str
    data: bytes = b""
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""
    size: int | None = None  # header size when it should lie about the data


def read_entries(path: Path) -> list[Entry]:
    """The members of a bundle, in order (test-side reader via tarfile)."""
    with tarfile.open(path, "r:") as tar:
        out = []
        for m in tar.getmembers():
            f = tar.extractfile(m)
            out.append(Entry(m.name, f.read() if f else b"", m.type, m.linkname))
        return out


def write_entries(path: Path, entries: Sequence[Entry], end: bytes = END_OF_ARCHIVE) -> Path:
    with open(path, "wb") as f:
        for e in entries:
            if e.kind == tarfile.REGTYPE and e.size is None and len(e.name.encode()) <= 100:
                f.write(file_header(e.name, len(e.data)))
            else:
                ti = tarfile.TarInfo(e.name)
                ti.type, ti.linkname = e.kind, e.linkname
                ti.size = len(e.data) if e.size is None else e.size
                f.write(ti.tobuf(format=tarfile.USTAR_FORMAT if len(e.name) <= 100
                                 else tarfile.GNU_FORMAT))
            f.write(e.data)
            f.write(b"\0" * padding(len(e.data)))
        f.write(end)
    return path


def resign(entries: list[Entry], keys: Sequence[PrivateKey],
           edit: Callable[[dict[str, Any]], None] | None = None) -> list[Entry]:
    """Replace the manifest (optionally edited) and sign it again with `keys`."""
    doc = json.loads(entries[0].data)
    if edit is not None:
        edit(doc)
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    env = sign(data, PAYLOAD_TYPE, keys).to_json() if keys else json.dumps(
        {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(data).decode(),
         "signatures": []}).encode()
    assert entries[0].name == MANIFEST_PATH and entries[1].name == ENVELOPE_PATH
    return [Entry(MANIFEST_PATH, data), Entry(ENVELOPE_PATH, env), *entries[2:]]


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (offset of its data, size) in a bundle."""
    with tarfile.open(path, "r:") as tar:
        return {m.name: (m.offset_data, m.size) for m in tar.getmembers()}


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ (1 << bit)]))


def assert_store_clean(store: ContentStore, manifest: Manifest | None = None) -> None:
    """No temp file left, every blob hashes to its name, and (given a manifest) is pinned."""
    tmp = store.root / "blobs" / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir()), f"partial files: {list(tmp.iterdir())}"
    pinned = {m.sha256 for m in manifest.members} if manifest else None
    blobs = store.root / "blobs" / "sha256"
    for p in (blobs.iterdir() if blobs.exists() else []):
        assert hashlib.sha256(p.read_bytes()).hexdigest() == p.name, f"unverified blob {p}"
        if pinned is not None:
            assert p.name in pinned, f"blob {p.name} is not pinned by the manifest"

