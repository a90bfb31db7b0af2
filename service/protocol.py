"""uvicorn's h11 protocol with a deadline for request headers, which plain uvicorn does not have.

A connection must send a complete request head within ``header_timeout_s`` of opening, or of the first
byte of its next request on a kept-alive connection; otherwise it gets a 408 and is closed, so a client
trickling its headers (or sending nothing) cannot hold a connection. ``lost-reg serve`` uses it; with
plain uvicorn, ``--http service.protocol:HeaderDeadlineProtocol`` does. The deadline comes from the app's
lifespan state (``LOST_REG_HEADER_TIMEOUT_S``), which uvicorn hands to every connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("service")

STATE_KEY = "header_timeout_s"
"""The lifespan state entry holding the deadline (set by :func:`service.app.create_app`)."""
DEFAULT_S = 10.0
_MESSAGE = b"request headers not received in time\n"
REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
                   b"content-length: %d\r\n\r\n%s" % (len(_MESSAGE), _MESSAGE))


class HeaderDeadlineProtocol(H11Protocol):
    """:class:`H11Protocol` that answers 408 and closes when a request head is not complete in time."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout_s = float(self.app_state.get(STATE_KEY, DEFAULT_S))
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # its head is complete

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = "%s:%d" % self.client if self.client else "a client"
            log.info("%s: no complete request head within %g s; closed", client, self.header_timeout_s)
            self.transport.write(REQUEST_TIMEOUT)
            self.transport.close()
