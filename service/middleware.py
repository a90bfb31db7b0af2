"""Plain ASGI middleware around every request: its admission ticket and metrics, and the security headers."""

from __future__ import annotations

import time
from http import HTTPMethod

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .admission import Admission, Ticket
from .metrics import Metrics

METHODS = frozenset(HTTPMethod)
"""HTTP methods that get their own metrics label; any other is counted as ``other`` (labels stay few)."""
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
"""The web page's policy (no inline script or style; photos shown from blob: URLs, masks from data: URLs), sent
with every answer but the docs pages, which carry their own (:mod:`service.docs`)."""
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class Observe:
    """Give each request a :class:`Ticket` (``request.state.ticket``), release it once the answer is sent, and
    count the request: method, route template (``unmatched`` for none) and status, and its latency."""

    def __init__(self, app: ASGIApp, admission: Admission, metrics: Metrics) -> None:
        self.app = app
        self.admission = admission
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ticket = Ticket(self.admission)
        scope.setdefault("state", {})["ticket"] = ticket
        status = 500  # what the server answers when the app raised before starting a response
        start = time.perf_counter()

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            ticket.release()
            path = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(method, path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


class SecurityHeaders:
    """Add :data:`SECURITY_HEADERS` to every answer, keeping a Content-Security-Policy the route set itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in SECURITY_HEADERS if name not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
