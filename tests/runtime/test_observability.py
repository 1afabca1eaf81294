"""/metrics, the on-disk history, JSON-lines request logs and the log export archive."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.errors import ExportError
from runtime.export import write_export
from runtime.history import MetricsHistory
from runtime.logs import JsonLinesLog, id_digest
from tests.enginekit import wait_for
from tests.runtime.conftest import REPO, TOKEN, Server, http, start_server

MARKER = 1234.5678125  # a value we send as tensor data and must never find in a log


@pytest.fixture(scope="module")
def obs(onnx_models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    s = start_server(onnx_models_dir, tmp_path_factory.mktemp("obs") / "data", token=TOKEN,
                     extra_env={"RUNTIME_HISTORY_INTERVAL_S": "0.2"})
    yield s
    s.stop()


def _infer(s: Server, rid: str, value: float = 0.5) -> int:
    body = json.dumps({"id": rid, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 64],
                                              "data": [value] * 64}]}).encode()
    return http("POST", f"{s.url}/v2/models/mlp/infer", body, s.auth)[0]


def _families(s: Server) -> dict[str, object]:
    code, headers, raw = http("GET", f"{s.url}/metrics", headers=s.auth)
    assert code == 200 and headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(raw.decode())}


def _count(fams: dict[str, object], family: str, sample: str, **labels: str) -> float:
    fam = fams[family]
    return sum(x.value for x in fam.samples  # type: ignore[attr-defined]
               if x.name == sample and all(x.labels.get(k) == v for k, v in labels.items()))


def test_metrics_parse_and_count_requests(obs: Server) -> None:
    before = _families(obs)
    ok0 = _count(before, "runtime_requests", "runtime_requests_total", model="mlp", code="200")
    for i in range(5):
        assert _infer(obs, f"m-{i}") == 200
    assert http("POST", f"{obs.url}/v2/models/mlp/infer", b"{", obs.auth)[0] == 400
    fams = _families(obs)
    assert _count(fams, "runtime_requests", "runtime_requests_total", model="mlp",
                  code="200") == ok0 + 5
    assert _count(fams, "runtime_errors", "runtime_errors_total", model="mlp", code="400") >= 1
    assert _count(fams, "runtime_request_duration_seconds",
                  "runtime_request_duration_seconds_count", model="mlp") >= 5
    assert _count(fams, "runtime_batch_size", "runtime_batch_size_count", model="mlp") >= 1
    assert _count(fams, "runtime_queue_duration_seconds",
                  "runtime_queue_duration_seconds_count", model="mlp") >= 5
    assert _count(fams, "process_resident_memory_bytes", "process_resident_memory_bytes") > 1e6
    assert "runtime_cpu_percent" in fams and "process_cpu_seconds" in fams
    assert _count(fams, "runtime_model_ready", "runtime_model_ready", model="mlp") == 1
    assert not any(n.startswith("runtime_gpu") for n in fams)  # no GPU here


def test_request_logs_have_ids_and_no_tensor_data(obs: Server) -> None:
    assert _infer(obs, "log-me", MARKER) == 200
    log = obs.data_dir / "logs" / "runtime.jsonl"
    digest = id_digest((obs.data_dir / "log-id.key").read_bytes(), "log-me")
    line = wait_for(lambda: next((ln for ln in log.read_text().splitlines()
                                  if digest in ln), None), 10, "the request log line")
    assert line is not None  # wait_for returns only once the condition is truthy
    rec = json.loads(line)
    assert rec["event"] == "request" and rec["model"] == "mlp" and rec["status"] == 200
    assert rec["latency_ms"] > 0 and rec["id"] == digest
    assert str(MARKER)[:8] not in log.read_text()


def test_history_is_readable_and_survives_restart(
        onnx_models_dir: Path, tmp_path: Path) -> None:
    env = {"RUNTIME_HISTORY_INTERVAL_S": "0.2"}
    data = tmp_path / "data"
    s = start_server(onnx_models_dir, data, extra_env=env)
    try:
        for i in range(3):
            assert _infer(s, f"h-{i}") == 200

        def samples() -> list[dict[str, Any]]:
            code, _, raw = http("GET", f"{s.url}/appliance/metrics/history")
            assert code == 200
            return [x for x in json.loads(raw) if x["requests_total"] >= 3]
        first = wait_for(samples, 10, "a history sample counting the requests")
        assert first[0]["rss_bytes"] > 0 and "p99_ms" in first[0]
    finally:
        assert s.stop() == 0
    s = start_server(onnx_models_dir, data, extra_env=env)
    try:
        code, _, raw = http("GET", f"{s.url}/appliance/metrics/history")
        assert code == 200
        old = [x for x in json.loads(raw) if x["t"] <= first[0]["t"]]
        assert old and old[-1]["requests_total"] >= 3
        code, _, raw = http("GET", f"{s.url}/appliance/metrics/history?limit=1")
        assert code == 200 and len(json.loads(raw)) == 1
        code, _, raw = http("GET", f"{s.url}/appliance/metrics/history?since=1e12")
        assert code == 200 and json.loads(raw) == []
        assert http("GET", f"{s.url}/appliance/metrics/history?since=soon")[0] == 400
    finally:
        s.stop()


def test_history_is_capped_by_size_and_age(tmp_path: Path) -> None:
    h = MetricsHistory(tmp_path, max_bytes=64 * 1024, max_age_s=3600)
    for i in range(5000):
        h.append({"t": 1000.0 + i, "pad": "x" * 100}, now=1000.0 + i)
    total = sum(p.stat().st_size for p in h.segments())
    assert total <= 64 * 1024 + 8 * 1024
    kept = h.read()
    assert kept[-1]["t"] == 5999.0 and kept[0]["t"] > 1000.0
    os.utime(h.segments()[0], (0, 0))  # a segment from 1970 is past any age cap
    h.append({"t": 7000.0}, now=7000.0)
    assert all(p.stat().st_mtime > 0 for p in h.segments())


def test_logs_rotate_by_size_and_stay_capped(tmp_path: Path) -> None:
    log = JsonLinesLog(tmp_path, max_bytes=10_000, backups=2)
    for i in range(2000):
        log.write({"event": "request", "id": f"r{i}", "status": 200})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["runtime.jsonl", "runtime.jsonl.1", "runtime.jsonl.2"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 3 * 10_100
    last = json.loads((tmp_path / "runtime.jsonl").read_text().splitlines()[-1])
    assert last["id"] == "r1999"


def _members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        out = {}
        for m in tar.getmembers():
            assert m.isfile() and ".." not in m.name
            f = tar.extractfile(m)
            assert f is not None
            out[m.name.split("/", 1)[1]] = f.read()
    return out


def _check_sums(members: dict[str, bytes]) -> None:
    lines = members["SHA256SUMS"].decode().splitlines()
    listed = {name: digest for digest, name in (ln.split("  ", 1) for ln in lines)}
    assert set(listed) == set(members) - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256(members[name]).hexdigest() == digest


def test_export_endpoint_needs_token_and_returns_the_archive(obs: Server) -> None:
    assert http("POST", f"{obs.url}/appliance/logs/export")[0] == 401
    wait_for(lambda: any((obs.data_dir / "history").glob("*")), 30,
             "the first metrics history sample on disk")
    before = {p.relative_to(obs.data_dir) for p in obs.data_dir.rglob("*")}
    code, headers, raw = http("POST", f"{obs.url}/appliance/logs/export", b"", obs.auth)
    assert code == 200 and headers["content-type"] == "application/gzip"
    members = _members(raw)
    assert "logs/runtime.jsonl" in members and "system.json" in members
    assert any(n.startswith("history/") for n in members)
    release = json.loads(members["release.json"])
    assert release["models"][0]["name"] == "mlp"
    assert TOKEN not in raw.decode("latin-1")
    _check_sums(members)
    after = {p.relative_to(obs.data_dir) for p in obs.data_dir.rglob("*")}
    assert before <= after  # export deletes nothing


def _lan_address() -> str | None:
    """This host's first global IPv4 address (iproute2), if it has one."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"],
                             capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return None
    for line in out.splitlines():
        fields = line.split()
        if "inet" in fields:
            return fields[fields.index("inet") + 1].split("/")[0]
    return None


def test_export_without_a_token_is_only_for_this_host(onnx_models_dir: Path,
                                                      tmp_path: Path) -> None:
    lan = _lan_address()
    if lan is None:
        pytest.skip("this host has no non-loopback IPv4 address to ask from")
    s = start_server(onnx_models_dir, tmp_path / "data", host="0.0.0.0")
    try:
        code, _, raw = http("POST", f"http://{lan}:{s.port}/appliance/logs/export")
        assert code == 403
        assert b"needs a bearer token when asked from another host" in raw
        assert http("GET", f"http://{lan}:{s.port}/v2/health/ready")[0] == 200  # still served
        code, headers, raw = http("POST", f"{s.url}/appliance/logs/export")
        assert code == 200 and headers["content-type"] == "application/gzip"
        _check_sums(_members(raw))
    finally:
        s.stop()


def test_cli_export_writes_a_complete_archive(obs: Server, tmp_path: Path) -> None:
    out = tmp_path / "stick"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "appliance", "logs", "export", "--to", str(out),
                        "--data-dir", str(obs.data_dir)], cwd=REPO, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    archive = Path(r.stdout.strip())
    assert archive.parent == out and archive.name.endswith(".tar.gz")
    assert [p.name for p in out.iterdir()] == [archive.name]  # no temp file left
    _check_sums(_members(archive.read_bytes()))
    r = subprocess.run([sys.executable, "-m", "appliance", "logs", "export", "--to",
                        str(tmp_path / "absent"), "--data-dir", str(obs.data_dir)], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not a directory" in r.stderr


def test_export_to_a_full_stick_leaves_nothing_that_looks_complete(tmp_path: Path) -> None:
    stick = tmp_path / "stick"
    stick.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(stick)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        data = tmp_path / "data"
        (data / "logs").mkdir(parents=True)
        (data / "logs" / "runtime.jsonl").write_bytes(os.urandom(1024 * 1024))
        with pytest.raises(ExportError, match="check space"):
            write_export(data, stick)
        assert list(stick.iterdir()) == []
        assert (data / "logs" / "runtime.jsonl").stat().st_size == 1024 * 1024
    finally:
        subprocess.run(["umount", str(stick)], check=True)
