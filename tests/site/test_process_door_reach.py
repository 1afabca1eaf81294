"""What a person reads after an install behind the front door on the process engine is
what works: `appliance status` shows the stable `https://<LAN address>:<port>` URL, each
model's infer path and a curl line that answers when pasted into a shell; and a fallback
answering for its service is in the site's audit trail, from start to end, with counts.
Real HAProxy, real runtimes as processes, the installer as a subprocess."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess

import pytest

from appliance.site import audit
from appliance.site.door import lan_address
from tests.enginekit import need, wait_for
from tests.site.test_process_frontdoor import ProcDoor, door, serving  # noqa: F401

pytestmark = pytest.mark.slow


def test_status_shows_the_stable_url_infer_paths_and_a_curl_line_that_answers(
        serving: ProcDoor):  # noqa: F811
    need("curl")
    r = serving.cli("status")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    url = f"https://{lan_address()}:{serving.vendor.port}"
    lines = r.stdout.splitlines()
    assert any(x.strip() == f"mlp: POST {url}/v2/models/mlp/infer" for x in lines), r.stdout
    assert "certificate SHA-256 " in r.stdout and "CA file for clients: " in r.stdout
    curl = next(x for x in lines if "try: curl" in x).split("try: ", 1)[1]
    assert f"--cacert {serving.root / 'frontdoor'}" in curl and "Authorization: Bearer" in curl
    assert serving.token() not in r.stdout  # the token is named by its file, never printed
    # pasted as it is shown: the site's CA verifies the LAN address, the token is taken
    answer = subprocess.run(["bash", "-c", f"{curl} --silent --show-error --fail"],
                            capture_output=True, text=True, timeout=30, check=False)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["name"] == "mlp"
    doc = json.loads(serving.cli("status", "--json").stdout)
    assert doc["urls"] == {"mlp": url}


def _events(d: ProcDoor) -> list[audit.AuditEntry]:
    return [e for e in audit.verify(d.root) if e.event.startswith("fallback_")]


def test_fallback_answering_on_the_process_engine_is_audited_with_its_counts(
        door: ProcDoor):  # noqa: F811
    r = door.install(door.vendor.build(1, seed=0, fallback=True))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    child = int((door.root / "releases" / "1" / "run" / "mlp.child").read_text())
    record = json.loads((door.root / "frontdoor" / "door.json").read_text())
    ctx = ssl.create_default_context(cafile=record["ca_file"])

    def served_by() -> str:
        conn = http.client.HTTPSConnection("127.0.0.1", door.vendor.port, context=ctx,
                                           timeout=10)
        try:
            conn.request("GET", "/v2/models/mlp",
                         headers={"Authorization": f"Bearer {door.token()}"})
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200, resp.status
            return resp.getheader("X-Appliance-Served-By", "main")
        finally:
            conn.close()

    assert served_by() == "main"
    assert door.cli("status").returncode == 0
    assert _events(door) == []
    os.kill(child, signal.SIGSTOP)  # alive but answering nothing: its health check fails
    try:
        wait_for(lambda: served_by() == "fallback", 30, "the fallback to answer")
        for _ in range(4):
            assert served_by() == "fallback"
        text = door.cli("status").stdout  # status notices, as the watchdog would
        assert "mlp: answered by its fallback mlp-cpu NOW" in text, text
        started = _events(door)
        assert [e.event for e in started] == ["fallback_started"]
        assert started[0].fields["service"] == "mlp"
        assert started[0].fields["fallback"] == "mlp-cpu"
        assert started[0].fields["answered"] >= 5
    finally:
        os.kill(child, signal.SIGCONT)
    wait_for(lambda: served_by() == "main", 30, "the main runtime to answer again")
    doc = json.loads(door.cli("status", "--json").stdout)
    assert doc["fallback_answers"]["mlp"] >= 5
    ended = _events(door)
    assert [e.event for e in ended] == ["fallback_started", "fallback_stopped"]
    assert ended[1].fields["answered"] >= 5
