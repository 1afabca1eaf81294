"""Container health check: exit 0 when the runtime answers GET /v2/health/ready with 200.

Copied into the image as /opt/appliance/healthcheck.py (the image has python, not curl).
The port is the `--port` of the container's command, else $RUNTIME_PORT, else 8000.
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

DEFAULT_PORT = 8000
TIMEOUT_S = 3.0


def runtime_port(cmdline: list[str], env: dict[str, str]) -> int:
    """The port the runtime listens on, read from its command line or the environment."""
    for i, arg in enumerate(cmdline):
        if arg == "--port" and i + 1 < len(cmdline) and cmdline[i + 1].isdigit():
            return int(cmdline[i + 1])
        if arg.startswith("--port=") and arg[7:].isdigit():
            return int(arg[7:])
    value = env.get("RUNTIME_PORT", "")
    return int(value) if value.isdigit() else DEFAULT_PORT


def _pid1_cmdline() -> list[str]:
    try:
        raw = Path("/proc/1/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def main() -> int:
    """Probe readiness once; 0 = ready, 1 = not ready or unreachable."""
    port = runtime_port(_pid1_cmdline(), dict(os.environ))
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    # No proxy: a proxy variable in the container must not redirect a loopback probe.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except OSError as e:
        print(f"not ready: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
