"""SIGKILL the headless installer when each step begins: the previous release keeps
serving, and running the install again completes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.site.plan import STEPS
from tests.site.bundlekit import make_bundle, vendor
from tests.site.installkit import REPO, process_site, ready
from tests.site.releasekit import free_port_pair

NO_GPU = Path(__file__).parent / "gpu_states" / "none.json"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill-bundles")
    v = vendor(tmp)
    port = free_port_pair()
    return v, port, make_bundle(tmp, v, 1, port=port), make_bundle(tmp, v, 2, port=port)


def kill_at(ps, bundle: Path, step: str) -> list[dict]:
    """Run the install in a subprocess and SIGKILL it when `step` begins."""
    cmd = [sys.executable, "-m", "appliance", "install", str(bundle), "--yes", "--json",
           "--gpu-state", str(NO_GPU), "--health-timeout", "15", *ps.cli_args()]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ps.cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:
        ev = json.loads(line)
        seen.append(ev)
        if ev["kind"] == "StepEvent" and ev["step"] == step and ev["status"] == "running":
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, f"install ended before {step}: {seen[-1:]}"
    return seen


@pytest.mark.parametrize("step", [s.name for s in STEPS])
def test_sigkill_at_each_step_keeps_previous_serving_and_rerun_completes(tmp_path, bundles,
                                                                        step):
    v, port, b1, b2 = bundles
    ps = process_site(tmp_path, v)
    try:
        ps.install(b1)
        kill_at(ps, b2, step)
        cur = ps.site.current()
        assert cur is not None and cur.sequence in (1, 2)
        # whatever `current` names answers; before the switch that is release 1
        assert ready(cur.record.endpoints["mlp"])
        if cur.sequence == 1:
            assert ready(f"http://127.0.0.1:{port}")
        result = ps.install(b2)
        current = ps.site.current()
        assert result.sequence == 2 and current is not None and current.sequence == 2
        assert ready(f"http://127.0.0.1:{port + 100}")
        assert ps.engine.running() == {2}
        assert ps.site.state().highest_sequence == 2
        assert not list(ps.site.root.glob(".current.*"))
        assert not list((ps.site.root / "blobs" / "tmp").iterdir())
    finally:
        ps.stop_all()
