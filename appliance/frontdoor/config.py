"""Render haproxy.cfg for the services of a release (pure: text in, text out, no IO).

One frontend per service on its declared host port; one backend per service with
named server slots (`a`, `b`) that the runtime API points at a release's runtime on
loopback or an engine network, plus an optional `backup` server for a declared
fallback service. The rendered text also holds the current slot addresses, so a proxy
restart comes back serving the release that was serving before it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.errors import ProxyConfigError

SLOTS = ("a", "b")
FALLBACK = "fallback"
SERVED_BY = "X-Appliance-Served-By"
HEALTH_PATH = "/v2/health/ready"
# An address HAProxy accepts for a slot that serves nothing yet (it starts in maintenance).
PARKED = "127.0.0.1:9"
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
_ADDR = re.compile(r"[0-9A-Za-z.:\[\]_-]+:\d{1,5}")
UNAUTHORIZED = ('{"error": "missing or wrong token: send the header '
                '\\"Authorization: Bearer <token>\\" with the site token"}')


@dataclass(frozen=True)
class Timeouts:
    """Proxy timeouts in seconds (HAProxy's `timeout` lines)."""

    connect: float = 3
    client: float = 120  # an inference on a large model may take a while
    server: float = 120
    http_request: float = 10  # a client that trickles its headers is dropped
    keep_alive: float = 60
    queue: float = 5
    check: float = 2


@dataclass(frozen=True)
class ServiceDoor:
    """One service's front door: its stable port and what serves behind it.

    `servers` maps a slot to the `host:port` of a release's runtime, or None while
    the slot is parked. `weights` sets a canary share (HAProxy weights, 0..256).
    `fallback` is the `host:port` of a fallback service's runtime: it answers while
    no slot is healthy, or past `max_queue` requests waiting for a slot.
    """

    name: str
    port: int
    servers: Mapping[str, str | None] = field(default_factory=dict)
    weights: Mapping[str, int] = field(default_factory=dict)
    fallback: str | None = None
    max_queue: int = 64
    server_maxconn: int = 64


@dataclass(frozen=True)
class ProxySettings:
    """Everything about the proxy process that is not per service.

    `tls_pem` None means plain HTTP and `token_map` None means no token check: both
    only when asked for explicitly. `bind` is the listening address of the frontends.
    """

    socket: Path
    stats_port: int
    tls_pem: Path | None
    token_map: Path | None
    bind: str = "0.0.0.0"  # noqa: S104 - the front door is the one LAN-facing listener
    stats_bind: str = "127.0.0.1"
    maxconn: int = 20000
    timeouts: Timeouts = field(default_factory=Timeouts)
    log: bool = True
    threads: int | None = None  # None: one per CPU (HAProxy's default)
    # HAProxy's `busy-polling`: its threads never sleep in the poller, saving the wakeup
    # on each request at the cost of a core always busy; off, since on a small appliance
    # that core is taken from inference (measured in bench/frontdoor_bench.py).
    busy_polling: bool = False
    # Started as root (the process engine): read the files and bind the ports, then run
    # as this uid and gid. None where HAProxy starts unprivileged (the proxy container).
    uid: int | None = None


def backend_name(service: str) -> str:
    """The HAProxy backend that serves `service` (what the runtime API addresses)."""
    return f"be_{service}"


def _check(services: list[ServiceDoor], s: ProxySettings) -> None:
    ports: dict[int, str] = {s.stats_port: "the stats port"}
    for svc in services:
        if not _NAME.fullmatch(svc.name):
            raise ProxyConfigError(f"service name {svc.name!r} is not a proxy name: use "
                                   "lower-case letters, digits, - and _")
        if not 0 < svc.port < 65536:
            raise ProxyConfigError(f"service {svc.name}: port {svc.port} is not 1-65535")
        if svc.port in ports:
            raise ProxyConfigError(f"service {svc.name}: port {svc.port} is already "
                                   f"{ports[svc.port]}; give each service its own port")
        ports[svc.port] = f"service {svc.name}'s"
        for slot, addr in [*svc.servers.items(), (FALLBACK, svc.fallback)]:
            if slot not in (*SLOTS, FALLBACK):
                raise ProxyConfigError(f"service {svc.name}: slot {slot!r} is not one of "
                                       f"{', '.join(SLOTS)}")
            if addr is not None and not _ADDR.fullmatch(addr):
                raise ProxyConfigError(f"service {svc.name}: {addr!r} is not host:port")
        for slot, weight in svc.weights.items():
            if slot not in SLOTS or not 0 <= weight <= 256:
                raise ProxyConfigError(f"service {svc.name}: weight {slot}={weight} must name "
                                       "a slot and be 0..256")


def render(services: list[ServiceDoor], s: ProxySettings) -> str:
    """The whole haproxy.cfg for these services.

    Raises:
        ProxyConfigError: a bad service name, address, weight, or two services on one port.
    """
    _check(services, s)
    t = s.timeouts
    out = [
        "# Rendered by appliance.frontdoor.config; the installer rewrites it on every switch.",
        "global",
        f"    maxconn {s.maxconn}",
        *([f"    nbthread {s.threads}"] if s.threads else []),
        *(["    busy-polling"] if s.busy_polling else []),
        *([f"    uid {s.uid}", f"    gid {s.uid}"] if s.uid is not None else []),
        # expose-fd lets a reloaded process take over the listening sockets: no refused
        # connection during a reload.
        f"    stats socket {s.socket} mode 600 level admin expose-fd listeners",
        "    stats timeout 30s",
        "    ssl-default-bind-options ssl-min-ver TLSv1.2 no-tls-tickets",
        "    ssl-default-bind-ciphers ECDHE+AESGCM:ECDHE+CHACHA20",
        "    tune.http.maxhdr 64",
        "    tune.bufsize 32768",
        # An old process left after a reload ends here at the latest.
        "    hard-stop-after 5m",
    ]
    if s.log:
        out.append("    log stderr format short local0 notice")
    out += [
        "",
        "defaults",
        "    mode http",
        "    log global" if s.log else "    no log",
        "    option dontlognull",
        "    option http-keep-alive",
        # Every retry goes through the balancer again: once a refused connection has
        # marked a server down, the retry lands on another slot or on the fallback.
        "    option redispatch 1",
        "    retries 3",
        # Retry only what the runtime cannot have answered (inference has no side
        # effects, so an empty answer is safe to repeat on another server).
        "    retry-on conn-failure empty-response junk-response",
        # L7 retries can resend only a request held whole in the buffer (tune.bufsize).
        "    option http-buffer-request",
        "    http-reuse safe",
        f"    timeout connect {t.connect:g}s",
        f"    timeout client {t.client:g}s",
        f"    timeout server {t.server:g}s",
        f"    timeout http-request {t.http_request:g}s",
        f"    timeout http-keep-alive {t.keep_alive:g}s",
        f"    timeout queue {t.queue:g}s",
        f"    timeout check {t.check:g}s",
        "",
        "frontend stats",
        f"    bind {s.stats_bind}:{s.stats_port}",
        "    no log",
        "    http-request use-service prometheus-exporter if { path /metrics }",
        "    stats enable",
        "    stats uri /stats",
        "    stats refresh 5s",
    ]
    for svc in services:
        out += ["", *_frontend(svc, s), "", *_backend(svc)]
        if svc.fallback is not None:
            out += ["", *_fallback_backend(svc)]
    return "\n".join(out) + "\n"


def _frontend(svc: ServiceDoor, s: ProxySettings) -> list[str]:
    be = backend_name(svc.name)
    tls = f" ssl crt {s.tls_pem} alpn http/1.1" if s.tls_pem is not None else ""
    lines = [f"frontend fe_{svc.name}", f"    bind {s.bind}:{svc.port}{tls}",
             f"    maxconn {s.maxconn}", "    option forwardfor"]
    if s.token_map is not None:
        # RFC 7235: the scheme is case-insensitive; the map holds SHA-256s of tokens.
        lines += [
            "    acl health path_beg /v2/health/",
            "    acl bearer req.hdr(authorization) -m reg -i ^bearer[[:space:]]+[^[:space:]]+$",
            "    acl token_ok req.hdr(authorization),regsub(^[^[:space:]]+[[:space:]]+,),"
            f"sha2(256),hex,lower,map({s.token_map}) -m found",
            f"    http-request return status 401 content-type application/json "
            f"string '{UNAUTHORIZED}' hdr WWW-Authenticate 'Bearer realm=\"appliance\"' "
            "if !health !bearer || !health !token_ok",
        ]
    if svc.fallback is not None:
        lines.append(f"    use_backend fb_{svc.name} if {{ queue({be}) ge {svc.max_queue} }}")
    lines.append(f"    default_backend {be}")
    return lines


def _server_opts(svc: ServiceDoor) -> str:
    # A refused or reset connection marks the server down at once (not after two
    # missed checks), so the retry of that very request goes to the fallback.
    return (f"check inter 1s fall 2 rise 2 maxconn {svc.server_maxconn} "
            "observe layer4 error-limit 1 on-error mark-down")


def _backend(svc: ServiceDoor) -> list[str]:
    lines = [
        f"backend {backend_name(svc.name)}",
        "    balance roundrobin",
        f"    option httpchk GET {HEALTH_PATH}",
        "    http-check expect status 200",
    ]
    for slot in SLOTS:
        addr = svc.servers.get(slot)
        weight = svc.weights.get(slot, 100)
        state = "" if addr is not None else " disabled"
        lines.append(f"    server {slot} {addr or PARKED} {_server_opts(svc)} "
                     f"weight {weight}{state}")
    if svc.fallback is not None:
        lines.append(f"    server {FALLBACK} {svc.fallback} backup track fb_{svc.name}/"
                     f"{FALLBACK} maxconn {svc.server_maxconn}")
        lines.append(f"    http-response set-header {SERVED_BY} {FALLBACK} "
                     f"if {{ srv_name {FALLBACK} }}")
    return lines


def _fallback_backend(svc: ServiceDoor) -> list[str]:
    return [
        f"backend fb_{svc.name}",
        f"    option httpchk GET {HEALTH_PATH}",
        "    http-check expect status 200",
        f"    server {FALLBACK} {svc.fallback} {_server_opts(svc)}",
        f"    http-response set-header {SERVED_BY} {FALLBACK}",
    ]
