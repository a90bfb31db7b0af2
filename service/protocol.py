"""uvicorn's h11 protocol with a timer on every state of a connection, which plain uvicorn does not have.

- Waiting for a request head: a connection must send a complete one within ``header_timeout_s`` of
  opening, or of the first byte of its next request on a kept-alive connection; otherwise it gets a 408
  and is closed, so a client trickling its headers (or sending nothing) cannot hold a connection.
- Reading a body: the app's own limits (``service.bodies``: size, minimum rate). Computing: its request
  deadline. Idle after an answer: uvicorn's keep-alive timeout.
- After an early answer (sent before the body was read: a 413, 401, 503, ``/healthz`` with a body…): the
  rest of the body is read and dropped for at most ``header_timeout_s``, then the connection is closed
  (uvicorn re-arms no timer there: one more body byte left the connection open for ever).
- A request with both ``Content-Length`` and ``Transfer-Encoding`` is answered and the connection closed
  (RFC 9112 §6.3).

``lost-reg serve`` uses it; with plain uvicorn, ``--http service.protocol:HeaderDeadlineProtocol`` does.
The deadline comes from the app's lifespan state (``LOST_REG_HEADER_TIMEOUT_S``), which uvicorn hands to
every connection. :func:`quiet_accept_errors` keeps running out of file descriptors to a log line every
``ACCEPT_LOG_EVERY_S`` (asyncio logs a traceback per failed ``accept``).
"""

from __future__ import annotations

import asyncio
import logging
import time
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
        self._drain_timer: asyncio.TimerHandle | None = None
        self._framed: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm()  # the first byte of a request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # its head is complete
        elif self._drain_timer is not None:  # the body after an early answer ended in time: keep-alive goes on
            self._drain_timer.cancel()
            self._drain_timer = None
        cycle = self.cycle
        if cycle is not None and cycle is not self._framed:
            self._framed = cycle
            names = {name for name, _ in cycle.scope["headers"]}
            if b"content-length" in names and b"transfer-encoding" in names:  # RFC 9112 §6.3: answer, then close
                cycle.keep_alive = False
                cycle.default_headers = [*cycle.default_headers, (b"connection", b"close")]

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            # answered before its body was read: drop the rest for a while, then close
            self._drain_timer = self.loop.call_later(self.header_timeout_s, self._drain_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
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

    def _drain_late(self) -> None:
        self._drain_timer = None
        if not self.transport.is_closing():
            client = "%s:%d" % self.client if self.client else "a client"
            log.info("%s: the body of an answered request did not end within %g s; closed", client,
                     self.header_timeout_s)
            self._unset_keepalive_if_required()
            self.transport.close()


ACCEPT_LOG_EVERY_S = 10.0
_OUT_OF_RESOURCES = "socket.accept() out of system resource"


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """On ``loop``, failed ``accept`` calls for want of file descriptors (asyncio retries each second, logging a
    traceback each time) become one log line per ``ACCEPT_LOG_EVERY_S`` with their count; anything else goes
    to the handler in place before."""
    previous = loop.get_exception_handler()
    state = {"count": 0, "logged": float("-inf")}

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if context.get("message") != _OUT_OF_RESOURCES:
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        state["count"] += 1
        now = time.monotonic()
        if now - state["logged"] >= ACCEPT_LOG_EVERY_S:
            log.warning("new connections wait: out of file descriptors (%s); %d failed accepts since the last "
                        "such line", context.get("exception"), state["count"])
            state["count"], state["logged"] = 0, now

    loop.set_exception_handler(handle)
