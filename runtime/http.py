"""uvicorn's httptools protocol with the limits it lacks: header size and count, and
timeouts for connections that send nothing, stop inside their headers or stall a body.

uvicorn arms only a keep-alive timer after a response; a connection that never finishes
its first request is otherwise kept forever, and httptools takes headers of any size.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeaderLimitError(Exception):
    """Raised inside a parser callback; turned into a 431 by `data_received`."""


SWEEP_S = 0.5  # how often deadlines are checked: timeouts are this precise


def guarded_protocol(header_timeout_s: float, idle_timeout_s: float, max_header_bytes: int,
                     max_header_count: int) -> type[asyncio.Protocol]:
    """An httptools protocol class closing connections that break these limits."""
    # Deadlines are plain numbers checked by one sweep for all connections: arming and
    # cancelling two timers per request would cost the hot path more than the check does.
    live: set[GuardedHttpToolsProtocol] = set()
    sweeper: list[asyncio.TimerHandle | None] = [None]

    def sweep(loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in list(live):
            conn.check_deadlines(now)
        sweeper[0] = loop.call_later(SWEEP_S, sweep, loop) if live else None

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """One connection: uvicorn's handling plus our limits."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._header_deadline: float | None = None
            self._idle_deadline: float | None = None
            self._in_headers = True  # nothing read yet counts as waiting for headers
            self._header_bytes = 0  # raw bytes read while waiting for headers
            self._header_count = 0

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            now = self.loop.time()
            self._header_deadline = now + header_timeout_s
            self._idle_deadline = now + idle_timeout_s
            live.add(self)
            if sweeper[0] is None:
                sweeper[0] = self.loop.call_later(SWEEP_S, sweep, self.loop)

        def connection_lost(self, exc: Exception | None) -> None:
            live.discard(self)
            super().connection_lost(exc)

        def check_deadlines(self, now: float) -> None:
            """Close the connection if its headers or its next byte are overdue."""
            hd, idle = self._header_deadline, self._idle_deadline
            if (hd is not None and now > hd) or (idle is not None and now > idle):
                self._expire()

        def _expire(self) -> None:
            self._header_deadline = self._idle_deadline = None
            # A response may be under way for a request read in full: never cut it.
            if self.cycle is not None and not self.cycle.response_complete and (
                    not self.cycle.more_body):
                return
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._in_headers:
                # Counted before parsing: httptools buffers a header it has not finished,
                # which the callbacks below would never see.
                if self._header_bytes > max_header_bytes:
                    self._refuse(f"request headers are over {max_header_bytes} bytes")
                    return
                self._header_bytes += len(data)
            if self.cycle is None or self.cycle.more_body:
                self._idle_deadline = self.loop.time() + idle_timeout_s
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserCallbackError as e:
                if isinstance(e.__context__, _HeaderLimitError):
                    self._refuse(str(e.__context__))
                    return
                self.send_400_response("Invalid HTTP request received.")
            except httptools.HttpParserError:
                self.send_400_response("Invalid HTTP request received.")
            except httptools.HttpParserUpgrade:
                self._unsupported_upgrade_warning()

        def _refuse(self, message: str) -> None:
            body = json.dumps({"error": f"{message}; send fewer or smaller headers"}).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                b"content-type: application/json\r\nconnection: close\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            self._header_deadline = self._idle_deadline = None
            self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_count = 0
            if not self._in_headers:  # the next request on a kept-alive connection
                self._in_headers = True
                self._header_bytes = 0
                self._header_deadline = self.loop.time() + header_timeout_s

        def on_url(self, url: bytes) -> None:
            if len(self.url) + len(url) > max_header_bytes:
                raise _HeaderLimitError(f"request target is over {max_header_bytes} bytes")
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > max_header_count:
                raise _HeaderLimitError(f"request has over {max_header_count} headers")
            if len(name) + len(value) > max_header_bytes:
                raise _HeaderLimitError(f"header is over {max_header_bytes} bytes")
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_deadline = None
            # For the body; cleared when the message is complete.
            self._idle_deadline = self.loop.time() + idle_timeout_s
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._idle_deadline = None
            super().on_message_complete()

    return GuardedHttpToolsProtocol
