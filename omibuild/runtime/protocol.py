"""uvicorn's httptools protocol with the read deadlines it lacks.

uvicorn times out only a keep-alive connection that sits idle after a response. A client that
connects and sends nothing, or sends its headers a byte at a time (slowloris), or stops in the
middle of a body, holds its connection, and the ASGI app's receive(), for ever. Here a request's
line and headers must arrive within ``header_timeout`` of the connection (or of the request's
first byte on a kept-alive one), and its body within ``body_timeout`` of the headers; else the
connection is closed (the app sees a disconnect). Configured from OMI_HEADER_TIMEOUT_S and
OMI_BODY_TIMEOUT_S; OMI_MAX_CONNECTIONS caps connections through uvicorn's limit_concurrency."""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class TimedHttpTools(HttpToolsProtocol):
    header_timeout = 10.0
    body_timeout = 60.0

    @classmethod
    def configure(cls, config: Any) -> None:
        """Per process (uvicorn builds a protocol per connection from the class)."""
        cls.header_timeout = config.header_timeout
        cls.body_timeout = config.body_timeout

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()  # the app has the whole request; answering it takes what it takes

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()
