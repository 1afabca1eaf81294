"""Load for the runtime benchmark: `wrk` for closed loops, an asyncio open-loop Poisson client.

The open-loop client sends on a Poisson clock whatever the server does: a request never
waits for an earlier answer (it takes an idle connection or opens one), so a slow server
cannot slow the arrivals down. Latency runs from the moment a request is written; event-loop
timers fire up to about a millisecond late, which would otherwise count as server time.
"""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class LoadResult:
    """Throughput, latency and errors of one load run."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    client_late_p99_ms: float = 0.0  # open loop: how late the client sent (its own delay)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, body: bytes, connections: int, seconds: float,
        headers: dict[str, str] | None = None) -> LoadResult:
    """Closed loop: `connections` keep-alive connections, each sending as fast as answered."""
    with tempfile.TemporaryDirectory() as d:
        body_file = Path(d) / "body.json"
        body_file.write_bytes(body)
        script = Path(d) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items())
            + f'local f = io.open("{body_file}", "rb")\nwrk.body = f:read("*all")\nf:close()\n'
        )
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
             "--timeout", "10s", "-s", str(script), url],
            capture_output=True, text=True, check=True,
        ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(g) for g in m.groups())
    return LoadResult(rps, p50, p99, errors, total)


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection answering one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        m = re.search(rb"content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        if len(self.buf) < end + 4 + length:
            return
        status = int(head[9:12])
        del self.buf[:end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(status)


async def _poisson(host: str, port: int, path: str, body: bytes, rate: float,
                   seconds: float, seed: int, headers: dict[str, str]) -> LoadResult:
    loop = asyncio.get_running_loop()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body
    idle: deque[_Conn] = deque()
    latencies: list[float] = []
    lateness: list[float] = []
    errors = 0
    rng = random.Random(seed)

    async def one(scheduled: float) -> None:
        nonlocal errors
        try:
            conn = idle.pop() if idle else None
            while conn is not None and conn.lost:
                conn = idle.pop() if idle else None
            if conn is None:
                _, conn = await loop.create_connection(_Conn, host, port)
            conn.waiter = loop.create_future()
            assert conn.transport is not None
            sent = time.perf_counter()
            conn.transport.write(request)
            status = await asyncio.wait_for(conn.waiter, 10)
            latencies.append(time.perf_counter() - sent)
            lateness.append(sent - scheduled)
            if status != 200:
                errors += 1
            idle.append(conn)
        except (OSError, TimeoutError, ConnectionError):
            errors += 1

    tasks = []
    start = time.perf_counter()
    t = start
    while t - start < seconds:
        t += rng.expovariate(rate)
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(t)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for c in idle:
        if c.transport is not None:
            c.transport.close()
    lat = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    late = np.array(lateness) * 1000 if lateness else np.array([0.0])
    return LoadResult(len(latencies) / elapsed, float(np.percentile(lat, 50)),
                      float(np.percentile(lat, 99)), errors, len(tasks),
                      float(np.percentile(late, 99)))


def poisson(url: str, body: bytes, rate: float, seconds: float, seed: int = 0,
            headers: dict[str, str] | None = None) -> LoadResult:
    """Open loop: Poisson arrivals at `rate` per second for `seconds`."""
    m = re.fullmatch(r"http://([^:/]+):(\d+)(/.*)", url)
    if not m:
        raise ValueError(f"cannot parse {url}")
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run  # type: ignore[assignment]
    return runner(_poisson(m.group(1), int(m.group(2)), m.group(3), body, rate, seconds, seed,
                           headers or {}))
