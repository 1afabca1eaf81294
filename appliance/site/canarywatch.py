"""A canary's watch: its figures from each runtime's latency histogram, and the guard
that ends it in the old release's favour if the installer dies mid-window."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from appliance.errors import ProxyApiError
from appliance.frontdoor import site as files_of
from appliance.frontdoor import switch
from appliance.frontdoor.canary import WindowFigures
from appliance.frontdoor.config import backend_name
from appliance.frontdoor.runtime_api import ProxyApi, ServerStats
from appliance.site.layout import Site

CANARY_FILE = "canary.json"  # a canary under way: each service's old slot
TICK_S = 2.0  # how often the figures of a running canary are read and reported


def start_guard(root: Path) -> subprocess.Popen[bytes] | None:
    """A detached process that ends the canary (old release takes everything back) if
    this installer dies before it does: `appliance frontdoor-guard`."""
    me = [sys.executable] if getattr(sys, "frozen", False) else [sys.executable, "-m",
                                                                   "appliance"]
    try:
        return subprocess.Popen([*me, "frontdoor-guard", "--root", str(root), "--pid",
                                 str(os.getpid())], start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None


def guard_canary(site: Site, pid: int, poll_s: float = 0.2) -> bool:
    """Wait while installer `pid` lives and a canary is under way; if the installer dies
    first, end the canary in the old release's favour. True when it had to."""
    canary = site.root / files_of.CONF_DIR / CANARY_FILE
    while canary.exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            end_left_canary(site)
            return True
        except PermissionError:
            pass
        time.sleep(poll_s)
    return False


LATENCY_BUCKET = "runtime_request_duration_seconds_bucket"


def latency_buckets(url: str, token: str = "") -> dict[float, float]:
    """A runtime's request latency histogram (upper bound in seconds -> count, all series
    summed) from its /metrics (asked with the site's `token`); empty when it does not
    answer."""
    out: dict[float, float] = {}
    req = urllib.request.Request(f"{url}/metrics")  # noqa: S310 - loopback
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - loopback
            text = r.read().decode()
    except OSError:
        return out
    for line in text.splitlines():
        if line.startswith(LATENCY_BUCKET + "{"):
            labels, _, value = line.rpartition(" ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(value)
    return out


def p99_ms(start: dict[float, float], end: dict[float, float]) -> float:
    """The 99th percentile (bucket upper bound, ms) of the requests between two scrapes."""
    diff = sorted((b, end[b] - start.get(b, 0.0)) for b in end)
    total = diff[-1][1] if diff else 0.0
    if total <= 0:
        return 0.0
    finite = [b for b, _ in diff if b != float("inf")]
    for bound, count in diff:
        if count >= 0.99 * total:
            return (bound if bound != float("inf") else (finite[-1] if finite else 0.0)) * 1e3
    return 0.0  # pragma: no cover - the +Inf bucket holds every request


def figures(start: ServerStats, end: ServerStats, p99: float) -> WindowFigures:
    """One slot's requests and errors over the window, from HAProxy's counters."""
    errors = (end.responses_5xx - start.responses_5xx) + (
        end.connection_errors - start.connection_errors)
    return WindowFigures(end.requests - start.requests, errors, p99)


def end_left_canary(site: Site) -> None:
    """End a canary a killed installer left: all new requests to the old release."""
    path = site.root / files_of.CONF_DIR / CANARY_FILE
    try:
        old_slots = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return
    api = ProxyApi(site.root / files_of.RUN_DIR / files_of.SOCKET)
    for svc, old in old_slots.items():
        try:
            switch.end_canary(api, svc, old, promote=False)
        except ProxyApiError:
            continue  # the proxy restarts from its file, which names the old release
    path.unlink(missing_ok=True)


def window_figures(api: ProxyApi, service: str, old_slot: str,
                   start: dict[str, ServerStats],
                   buckets: tuple[dict[float, float], dict[float, float]],
                   urls: tuple[str, str], token: str = "") -> tuple[WindowFigures, WindowFigures]:
    """The old and the new release's figures since the window began (`start`: each slot's
    counters then; `buckets`, `urls`: the old and new runtimes' histograms then, and their
    addresses; `token`: the site's, which the runtimes ask for).

    Raises:
        ProxyApiError: the proxy does not answer.
    """
    now = api.servers(backend_name(service))
    new_slot = switch.other_slot(old_slot)
    old = figures(start[old_slot], now[old_slot],
                  p99_ms(buckets[0], latency_buckets(urls[0], token)))
    new = figures(start[new_slot], now[new_slot],
                  p99_ms(buckets[1], latency_buckets(urls[1], token)))
    return old, new
