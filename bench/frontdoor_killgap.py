"""How long the front door is gone when its proxy container is killed (and comes back).

    python bench/frontdoor_killgap.py --rounds 3

The proxy image (out/proxy-image.tar, `make proxy-image`) runs on podman with the
hardened spec and restart policy `always`, in front of one runtime on 127.0.0.1. A
steady load (300 requests/s over 16 keep-alive HTTPS connections, answers checked)
runs while HAProxy's master process is killed with SIGKILL from the host, as a crash
would; podman restarts the container. The gap is from the kill to the last failed
request; the failed requests are counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.frontdoor import config, container, site  # noqa: E402
from bundler.samples import make_mlp_onnx  # noqa: E402
from tests.enginekit import podman_service, wait_for  # noqa: E402
from tests.frontdoor.load import SteadyLoad  # noqa: E402
from tests.runtime.conftest import free_port, start_server  # noqa: E402


def _round(client: Any, container_id: str, load: SteadyLoad) -> tuple[float, int, int]:
    """Kill HAProxy's master under load; return (gap s, failed, sent)."""
    load.start()
    try:
        wait_for(lambda: load.report.ok >= 300, 60, "300 answers")
        pid = client.api.inspect_container(container_id)["State"]["Pid"]
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: client.api.inspect_container(container_id)["State"]["Pid"]
                 not in (0, pid), 60, "the restart")
        ok_after = load.report.ok
        wait_for(lambda: load.report.ok >= ok_after + 300, 60, "answers again")
        report = load.stop()
    finally:
        load.stop()
    last = max((float(f.split()[0]) for f in report.failures), default=killed)
    return last - killed, len(report.failures), report.sent


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    import docker

    from images.proxy import build_proxy_image

    image = build_proxy_image(out_dir=REPO / "out")
    with tempfile.TemporaryDirectory(prefix="fdgap", dir="/tmp") as d, podman_service() as url:
        root = Path(d)
        make_mlp_onnx(root / "models" / "mlp" / "1")
        files = site.prepare(root, ["127.0.0.1"], dt.datetime.now(dt.UTC))
        port = free_port()
        runtime = start_server(root / "models", root / "data")
        settings = site.settings(files, in_container=True, stats_port=free_port())
        settings = dataclasses.replace(settings, bind="127.0.0.1", maxconn=4000)
        site.write_config(files, [config.ServiceDoor("mlp", port,
                                                     servers={"a": runtime.hostport})],
                          settings)
        container.own_for_proxy([files.conf_dir / "site.pem", files.run_dir])
        client = docker.DockerClient(base_url=url, version="1.41", timeout=120)
        spec = container.ProxyContainer(image.tag, f"fdgap-{port}", files.conf_dir,
                                        files.run_dir, (port,), nofile=16384)
        ct = client.containers.create(**container.create_kwargs(spec))
        ctx = ssl.create_default_context(cafile=str(files.ca_file))
        rows = []
        try:
            ct.start()
            for _ in range(args.rounds):
                load = SteadyLoad("127.0.0.1", port, "/v2/models/mlp/infer", rate=300,
                                  connections=16, ssl_context=ctx,
                                  headers={"Authorization": f"Bearer {files.token}"})
                rows.append(_round(client, ct.id, load))
        finally:
            ct.remove(force=True)
            runtime.stop()
            subprocess.run(["podman", "rm", "-f", spec.name], capture_output=True, check=False)
    print("podman, restart policy always; 300 requests/s over 16 keep-alive HTTPS connections")
    print(f"{'round':>5} {'gap (s)':>8} {'failed':>7} {'sent':>6}")
    for i, (gap, failed, sent) in enumerate(rows, 1):
        print(f"{i:5d} {gap:8.2f} {failed:7d} {sent:6d}")
    print(f"median gap {statistics.median(r[0] for r in rows):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
