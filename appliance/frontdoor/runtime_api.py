"""A small client of HAProxy's runtime API over its unix socket (one command per connection).

Point a server slot at a release's runtime, make it ready, drain or park it, set canary
weights, read per-server figures, change the token map and the served certificate, all
without a reload and without closing a client connection.
"""

from __future__ import annotations

import csv
import io
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from appliance.errors import ProxyApiError

ServerState = Literal["ready", "drain", "maint"]
_REFUSALS = ("no such", "unknown", "require", "not found", "failed", "invalid", "can't",
             "cannot", "error", "unable", "permission denied")
_READ_BYTES = 1 << 16


@dataclass(frozen=True)
class ServerStats:
    """One server's figures from `show stat` (counters since the proxy started)."""

    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, NOLB, "UP 1/2", ...
    weight: int
    current_sessions: int
    requests: int  # sessions handled (stot)
    responses_5xx: int
    connection_errors: int
    avg_response_ms: int  # HAProxy's rtime: mean over the last 1024 requests
    address: str

    @property
    def up(self) -> bool:
        """The server passed its health checks and takes new requests.

        Not "UP 1/2": that is how a slot just out of maintenance shows before its
        first check, and it takes no requests yet.
        """
        return self.status == "UP"


class ProxyApi:
    """HAProxy's runtime API at `socket`."""

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def command(self, line: str, payload: str | None = None) -> str:
        """Send one command (and an optional multi-line payload); return HAProxy's answer.

        Raises:
            ProxyApiError: the socket is unreachable.
        """
        data = line if payload is None else f"{line} <<\n{payload.rstrip(chr(10))}\n"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(self.timeout)
                s.connect(str(self.socket_path))
                s.sendall(data.encode() + b"\n")
                chunks = []
                while chunk := s.recv(_READ_BYTES):
                    chunks.append(chunk)
        except OSError as e:
            raise ProxyApiError(f"HAProxy's runtime API at {self.socket_path} does not answer "
                                f"({e.strerror or e}): is the proxy running?") from e
        return b"".join(chunks).decode(errors="replace")

    def _must(self, line: str, payload: str | None = None) -> str:
        answer = self.command(line, payload)
        first = answer.strip().splitlines()[0] if answer.strip() else ""
        low = first.lower()
        if any(word in low for word in _REFUSALS) and "changed from" not in low:
            raise ProxyApiError(f"HAProxy refused `{line.split(' <<')[0]}`: {first}")
        return answer

    def point(self, backend: str, server: str, host: str, port: int) -> None:
        """Point a server slot at `host:port` (its health check follows).

        Raises:
            ProxyApiError: no such backend/server, or a bad address.
        """
        self._must(f"set server {backend}/{server} addr {host} port {port}")

    def set_state(self, backend: str, server: str, state: ServerState) -> None:
        """ready: take requests; drain: finish what it has, take no new; maint: parked.

        Raises:
            ProxyApiError: no such backend/server.
        """
        self._must(f"set server {backend}/{server} state {state}")

    def set_weight(self, backend: str, server: str, weight: int) -> None:
        """Set a server's weight (0..256); the shares of a canary.

        Raises:
            ProxyApiError: no such server or a weight out of range.
        """
        self._must(f"set weight {backend}/{server} {weight}")

    def servers(self, backend: str) -> dict[str, ServerStats]:
        """Each server of `backend` with its figures.

        Raises:
            ProxyApiError: the socket is unreachable or the backend is unknown.
        """
        text = self.command("show stat").lstrip("# ")
        rows = [r for r in csv.DictReader(io.StringIO(text))
                if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")]
        if not rows:
            raise ProxyApiError(f"HAProxy has no backend {backend!r} with servers: check the "
                                "rendered haproxy.cfg")
        return {r["svname"]: ServerStats(
            name=r["svname"], status=r["status"], weight=_int(r["weight"]),
            current_sessions=_int(r["scur"]), requests=_int(r["stot"]),
            responses_5xx=_int(r["hrsp_5xx"]), connection_errors=_int(r["econ"]),
            avg_response_ms=_int(r["rtime"]), address=r.get("addr", ""),
        ) for r in rows}

    def add_token(self, map_file: Path, digest: str) -> None:
        """Accept a token (by its SHA-256 hex) from now on; no reload.

        Raises:
            ProxyApiError: the map is not loaded by this proxy.
        """
        self._must(f"add map {map_file} {digest} 1")

    def del_token(self, map_file: Path, digest: str) -> None:
        """Stop accepting a token (by its SHA-256 hex).

        Raises:
            ProxyApiError: the map is not loaded or holds no such token.
        """
        self._must(f"del map {map_file} {digest}")

    def tokens(self, map_file: Path) -> set[str]:
        """The token digests the proxy accepts now.

        Raises:
            ProxyApiError: the map is not loaded by this proxy.
        """
        answer = self._must(f"show map {map_file}")
        return {cols[1] for cols in (ln.split() for ln in answer.splitlines()) if len(cols) >= 2}

    def replace_certificate(self, pem_file: Path, pem: str) -> None:
        """Serve a new certificate (leaf, chain, key in `pem`) for new connections; no reload.

        Raises:
            ProxyApiError: HAProxy refused the PEM (bad, or key does not match).
        """
        self._must(f"set ssl cert {pem_file}", pem)
        answer = self.command(f"commit ssl cert {pem_file}")
        if "success" not in answer.lower():
            self.command(f"abort ssl cert {pem_file}")
            raise ProxyApiError(f"HAProxy did not commit the certificate {pem_file}: "
                                f"{' '.join(answer.split())[:200]}")


def _int(text: str | None) -> int:
    return int(text) if text else 0
