"""Failed requests at the stable address while the site changes under load, on podman.

    python bench/frontdoor_update_bench.py --rate 300 --connections 16

A site serves one ONNX service behind the front door (bundles carry the proxy image).
A steady load (RATE requests/s over CONNECTIONS keep-alive HTTPS connections with the
token, every answer checked) runs through these phases, one after another, each with
the headless installer as a field engineer runs it:

  steady      nothing changes (the baseline: what the load generator itself loses)
  (a) update  `appliance install` of a delta bundle with new weights
  (b) broken  `appliance install` of a bundle whose model cannot load (rolls back)
  (c) rollback `appliance rollback`

The table gives requests sent and failed per phase. Case (d), the proxy container
killed, is `bench/frontdoor_killgap.py`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.engines.docker import DockerEngine  # noqa: E402
from appliance.site.layout import Site  # noqa: E402
from images.build import build_runtime_image  # noqa: E402
from images.proxy import build_proxy_image  # noqa: E402
from tests.e2e.doorkit import Vendor, appliance, free_port, install, no_gpu, steady_load  # noqa: E402
from tests.enginekit import podman_service  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=300)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--steady-s", type=float, default=10)
    args = p.parse_args(argv)
    images = (build_runtime_image("slim").archive, build_proxy_image().archive)
    work = Path(tempfile.mkdtemp(prefix="door-bench-"))
    rows: list[tuple[str, float, int, int]] = []
    with podman_service() as url:
        vendor = Vendor(work, images, free_port())
        gpu = str(no_gpu(work))
        root = work / "site"
        first = vendor.build(1, seed=0)
        second = vendor.build(2, seed=1, base=first)
        broken = vendor.build(3, seed=2, base=first, broken=True)
        install(vendor, root, url, first)
        load = steady_load(root, vendor.port, args.rate, args.connections).start()
        try:
            def phase(name: str, action: object) -> None:
                sent0, failed0 = load.sent(), len(load.report.failures)
                t0 = time.monotonic()
                action() if callable(action) else time.sleep(float(str(action)))
                rows.append((name, time.monotonic() - t0, load.sent() - sent0,
                             len(load.report.failures) - failed0))

            phase("steady (baseline)", args.steady_s)
            phase("(a) update", lambda: install(vendor, root, url, second))
            phase("(b) broken update, rolled back", lambda: appliance(
                root, url, "install", str(broken), "--yes", "--gpu-state", gpu,
                "--health-timeout", "60"))
            phase("(c) appliance rollback", lambda: appliance(root, url, "rollback"))
        finally:
            report = load.stop()
            eng = DockerEngine(Site(root), base_url=url)
            for seq in eng.running():
                eng.stop(seq)
            eng.stop_proxy()
            eng.close()
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{args.rate:g} requests/s over {args.connections} keep-alive HTTPS connections "
          "(load generator on the same 2 cores)\n")
    print("| phase | seconds | requests | failed |\n| --- | --- | --- | --- |")
    for name, secs, sent, failed in rows:
        print(f"| {name} | {secs:.1f} | {sent} | {failed} |")
    if report.failures:
        print("\nfirst failures:", *report.failures[:5], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
