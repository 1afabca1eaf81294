"""A bounded, steady-rate load generator over keep-alive HTTP(S) connections, answers checked.

Each of `connections` threads owns one keep-alive connection and sends on its own
clock (rate / connections per second), so a slow answer delays only that thread's
next request. Every answer is checked (status 200, the output tensor's shape); a
failure is recorded with its reason, never retried.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

SERVED_BY = "x-appliance-served-by"


@dataclass
class LoadReport:
    """What a load run saw."""

    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    served_by: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0

    def summary(self) -> str:
        """One line for assertion messages."""
        return (f"sent {self.sent}, ok {self.ok}, failed {len(self.failures)}, reconnects "
                f"{self.reconnects}, served by {dict(self.served_by)}; first failures: "
                f"{self.failures[:5]}")


def infer_body(rows: int = 1, width: int = 64) -> bytes:
    """A V2 JSON request for the sample mlp: x [rows, width] FP32."""
    return json.dumps({"inputs": [{"name": "x", "shape": [rows, width], "datatype": "FP32",
                                   "data": [0.5] * (rows * width)}]}).encode()


class SteadyLoad:
    """Run load against host:port in background threads until `stop()`."""

    def __init__(self, host: str, port: int, path: str, *, rate: float, connections: int,
                 headers: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None,
                 body: bytes | None = None, out_width: int = 10) -> None:
        self.host, self.port, self.path = host, port, path
        self.interval = connections / rate
        self.connections = connections
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.ssl_context = ssl_context
        self.body = body or infer_body()
        self.out_width = out_width
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(connections)]

    def _connect(self) -> http.client.HTTPConnection:
        if self.ssl_context is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=10,
                                               context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=10)

    def _one(self, conn: http.client.HTTPConnection) -> tuple[str | None, str]:
        """Send one request; return (failure reason or None, who served it)."""
        conn.request("POST", self.path, body=self.body, headers=self.headers)
        r = conn.getresponse()
        data = r.read()
        served = r.getheader(SERVED_BY, "main")
        if r.status != 200:
            return f"HTTP {r.status}: {data[:120]!r}", served
        shape = json.loads(data)["outputs"][0]["shape"]
        return (None if shape == [1, self.out_width] else f"bad shape {shape}"), served

    def _run(self, index: int) -> None:
        conn = self._connect()
        # Spread the threads' clocks over one interval so the load is smooth.
        next_at = time.monotonic() + self.interval * index / self.connections
        while not self._stop.is_set():
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                break
            next_at += self.interval
            try:
                failure, served = self._one(conn)
            except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                failure, served = f"{type(e).__name__}: {e}", "none"
                conn.close()
                conn = self._connect()
                with self._lock:
                    self.report.reconnects += 1
            with self._lock:
                self.report.sent += 1
                self.report.served_by[served] += 1
                if failure is None:
                    self.report.ok += 1
                else:
                    self.report.failures.append(f"{time.monotonic():.3f} {failure}")
        conn.close()

    def start(self) -> SteadyLoad:
        """Start the threads."""
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> LoadReport:
        """Stop after each thread's current request and return the report."""
        self._stop.set()
        for t in self._threads:
            t.join(30)
        return self.report

    def sent(self) -> int:
        """Requests sent so far."""
        with self._lock:
            return self.report.sent

    def served(self, by: str) -> int:
        """Requests answered so far by `by` (fallback, main)."""
        with self._lock:
            return self.report.served_by[by]
