"""Headless `appliance install|status|releases|rollback`: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.site.bundlekit import make_bundle, sample
from tests.site.installkit import REPO, ready
from tests.site.releasekit import free_port_pair

NO_GPU = Path(__file__).parent / "gpu_states" / "none.json"


def appliance(ps, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance", *args], cwd=REPO,
                          env=ps.cli_env(), capture_output=True, text=True, timeout=120)


def install(ps, bundle: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return appliance(ps, "install", str(bundle), "--yes", "--trust", str(ps.vendor.root_path),
                     "--gpu-state", str(NO_GPU), "--health-timeout", "15", *ps.cli_args(),
                     *extra)


@pytest.mark.slow
def test_install_status_releases_rollback_headless(ps):
    port = free_port_pair()
    r = install(ps, make_bundle(ps.tmp, ps.vendor, 1, port=port))
    assert r.returncode == 0, r.stderr
    assert "==> preflight" in r.stdout and "WARN  gpu:" in r.stdout
    assert "release 1 is serving" in r.stdout and f"mlp: http://127.0.0.1:{port}" in r.stdout
    r = install(ps, make_bundle(ps.tmp, ps.vendor, 2, port=port), "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in r.stdout.splitlines()]
    assert events[-1] == {"kind": "StepEvent", "step": "stop_old", "status": "ok",
                          "done": 0, "total": 0, "message": "Stop the previous release"}

    st = appliance(ps, "status", "--json", *ps.cli_args())
    assert st.returncode == 0
    doc = json.loads(st.stdout)
    assert (doc["current"], doc["ready"], doc["highest_sequence"]) == (2, {"mlp": True}, 2)

    rel = appliance(ps, "releases", "--json", "--root", str(ps.site.root))
    rows = {x["sequence"]: (x["status"], x["current"]) for x in json.loads(rel.stdout)}
    assert rows == {1: ("stopped", False), 2: ("serving", True)}

    rb = appliance(ps, "rollback", *ps.cli_args(), "--health-timeout", "15")
    assert rb.returncode == 0, rb.stderr
    assert "release 1 is serving" in rb.stdout and ready(f"http://127.0.0.1:{port}")


@pytest.mark.slow
def test_exit_codes_scripts_can_use(ps):
    port = free_port_pair()
    r = appliance(ps, "install", "/nonexistent.tar", *ps.cli_args())
    assert r.returncode == 2 and "needs --yes" in r.stderr
    good = make_bundle(ps.tmp, ps.vendor, 2, port=port)
    r = appliance(ps, "install", str(good), "--yes", "--gpu-state", str(NO_GPU), *ps.cli_args())
    assert r.returncode == 3 and r.stderr.startswith("error: preflight failed: trust root")
    assert install(ps, good).returncode == 0
    older = install(ps, make_bundle(ps.tmp, ps.vendor, 1, port=port))
    assert older.returncode == 4, older.stderr
    bad = make_bundle(ps.tmp, ps.vendor, 3, port=port, samples=[sample([1, 1], [9, 9])])
    r = install(ps, bad)
    assert r.returncode == 7 and "release 2 keeps serving" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    big = make_bundle(ps.tmp, ps.vendor, 4, port=port, gpu="required", gpu_mib=99999)
    r = appliance(ps, "install", str(big), "--yes", "--gpu-state",
                  str(Path(__file__).parent / "gpu_states" / "four_l4.json"), *ps.cli_args())
    assert r.returncode == 5 and "does not fit on any GPU" in r.stderr
    r = appliance(ps, "status", *ps.cli_args())
    assert r.returncode == 0 and "release 2" in r.stdout and "ready" in r.stdout
