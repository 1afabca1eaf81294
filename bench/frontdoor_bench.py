"""The front door's overhead: p50 at concurrency 1 and throughput at concurrency 32,
through HAProxy (HTTPS + token, and plain HTTP) against straight to the runtime, same run.

    python bench/frontdoor_bench.py --seconds 10 --repeat 3

wrk drives each path (closed loop, keep-alive) with the sample MLP's V2 JSON request;
the runtime, HAProxy and wrk share this machine's cores. Rounds alternate the paths so
drift in the box's load hits all of them; the table shows the median of the rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from appliance.frontdoor import config, tls, token  # noqa: E402
from bench.loadgen import LoadResult, wrk  # noqa: E402
from bundler.samples import make_mlp_onnx  # noqa: E402

BODY = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                               "data": [0.5] * 64}]}).encode()
PATH = "/v2/models/mlp/infer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float = 60) -> None:
    import ssl

    ctx = ssl._create_unverified_context()  # our own self-signed proxy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=ctx) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout} s")


@contextmanager
def _process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None,
                    help="HAProxy nbthread (default: one per CPU)")
    ap.add_argument("--busy-polling", action="store_true",
                    help="HAProxy busy-polling (its threads never sleep in the poller)")
    args = ap.parse_args(argv)
    load_before = os.getloadavg()[0]
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists() or shutil.which("wrk") is None:
        raise SystemExit("needs haproxy and wrk (apt-get install haproxy wrk)")
    with tempfile.TemporaryDirectory(prefix="fdbench-", dir="/tmp") as d:
        root = Path(d)
        make_mlp_onnx(root / "models" / "mlp" / "1")
        cert = tls.make_site_certificate(root / "tls", ["127.0.0.1"], dt.datetime.now(dt.UTC))
        tok = token.new_token()
        (root / "tokens.map").write_text(token.render_token_map([tok]))
        # The runtime checks the token too, as behind an installed front door, so every
        # path sends it and the baseline pays the runtime's own check as well.
        (root / "tokens").write_text(f"{tok}\n")
        rt, tls_port, plain_port = _free_port(), _free_port(), _free_port()
        with_tls = config.ProxySettings(
            socket=root / "admin.sock", stats_port=_free_port(), tls_pem=cert.pem_file,
            token_map=root / "tokens.map", bind="127.0.0.1", maxconn=4000, log=False,
            threads=args.threads, busy_polling=args.busy_polling)
        plain = dataclasses.replace(with_tls, socket=root / "admin2.sock",
                                    stats_port=_free_port(), tls_pem=None, token_map=None)
        for name, port, settings in (("tls", tls_port, with_tls), ("plain", plain_port, plain)):
            svc = config.ServiceDoor("mlp", port, servers={"a": f"127.0.0.1:{rt}"},
                                     server_maxconn=64)
            (root / f"{name}.cfg").write_text(config.render([svc], settings))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        runtime = [sys.executable, "-m", "runtime", "--models", str(root / "models"),
                   "--port", str(rt), "--host", "127.0.0.1", "--data-dir", str(root / "data"),
                   "--token-file", str(root / "tokens")]
        with _process(runtime, root / "runtime.log", env), \
                _process([haproxy, "-W", "-db", "-f", str(root / "tls.cfg")], root / "h1.log"), \
                _process([haproxy, "-W", "-db", "-f", str(root / "plain.cfg")], root / "h2.log"):
            _wait(f"http://127.0.0.1:{rt}/v2/health/ready")
            _wait(f"https://127.0.0.1:{tls_port}/v2/health/ready")
            _wait(f"http://127.0.0.1:{plain_port}/v2/health/ready")
            auth = {"Authorization": f"Bearer {tok}"}
            paths = {
                "direct (HTTP)": (f"http://127.0.0.1:{rt}{PATH}", auth),
                "proxy, plain HTTP": (f"http://127.0.0.1:{plain_port}{PATH}", auth),
                "proxy, HTTPS + token": (f"https://127.0.0.1:{tls_port}{PATH}", auth),
            }
            # Warm every path (ONNX Runtime, TLS sessions, connection pools) first.
            for url, headers in paths.values():
                wrk(url, BODY, 8, 2, headers)
            c1: dict[str, list[LoadResult]] = {k: [] for k in paths}
            c32: dict[str, list[LoadResult]] = {k: [] for k in paths}
            for _ in range(args.repeat):
                for name, (url, headers) in paths.items():
                    c1[name].append(wrk(url, BODY, 1, args.seconds, headers))
                    c32[name].append(wrk(url, BODY, 32, args.seconds, headers))
    base_p50 = statistics.median(r.p50_ms for r in c1["direct (HTTP)"])
    base_rps = statistics.median(r.rps for r in c32["direct (HTTP)"])
    busy = ", busy-polling" if args.busy_polling else ""
    print(f"{os.cpu_count()} cores shared by runtime, HAProxy ({args.threads or 'default'} "
          f"threads{busy}) and wrk; {args.repeat} rounds of {args.seconds:g} s, median; "
          f"load average before: {load_before:.1f}, after: {os.getloadavg()[0]:.1f}")
    print(f"{'path':24} {'p50 c=1 (ms)':>13} {'vs direct':>10} {'req/s c=32':>11} "
          f"{'vs direct':>10} {'errors':>7}")
    for name in paths:
        p50 = statistics.median(r.p50_ms for r in c1[name])
        rps = statistics.median(r.rps for r in c32[name])
        errors = sum(r.errors for r in c1[name] + c32[name])
        print(f"{name:24} {p50:13.3f} {p50 - base_p50:+10.3f} {rps:11.0f} "
              f"{(rps / base_rps - 1) * 100:+9.1f}% {errors:7d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
