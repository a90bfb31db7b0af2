"""Request bodies read under limits: a size (413), a minimum upload rate (408), and a content type (415).

The rate is a credit: after ``upload_grace_s`` a body must have arrived at ``min_upload_kb_s`` on average,
so each chunk is awaited only until the moment the bytes so far stop covering the elapsed time. A body
dripping a byte a second is cut once the grace is spent; a large upload on a slow link that keeps up the
average passes, however long it takes.
"""

from __future__ import annotations

import asyncio

from python_multipart.multipart import parse_options_header
from starlette.requests import Request
from starlette.types import Message

from .errors import ServiceError
from .settings import Settings

KB = 1024


class LimitedReceive:
    """The request's ``receive``, refusing a body once it passes ``limit`` bytes or falls behind the rate."""

    def __init__(self, request: Request, settings: Settings, limit: int, too_large: ServiceError) -> None:
        self.receive = request.receive
        self.limit = limit
        self.too_large = too_large
        self.rate = settings.min_upload_kb_s * KB
        self.start = asyncio.get_running_loop().time() + settings.upload_grace_s
        self.received = 0

    async def __call__(self) -> Message:
        if self.rate:
            try:
                async with asyncio.timeout_at(self.start + self.received / self.rate):
                    message = await self.receive()
            except TimeoutError:
                raise ServiceError(408, "slow_upload", f"the body arrived slower than {self.rate / KB:g} KB/s "
                                   f"(after {self.received:,} bytes); send it faster, or in smaller requests",
                                   headers={"Connection": "close"}) from None
        else:
            message = await self.receive()
        self.received += len(message.get("body", b""))
        if self.received > self.limit:
            raise self.too_large
        return message


def too_large(limit: int, what: str = "") -> ServiceError:
    return ServiceError(413, "request_too_large", f"request body over {limit / 2**20:g} MB{what}")


def limited(request: Request, settings: Settings, limit: int, error: ServiceError) -> Request:
    """``request`` with its body read under ``limit`` and the minimum rate; ``error`` at once when the declared
    ``Content-Length`` passes ``limit``: nothing is read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise error
    return Request(request.scope, LimitedReceive(request, settings, limit, error))


async def read_body(request: Request, settings: Settings, limit: int) -> bytes:
    """The whole body, under the size limit and the minimum rate."""
    return await limited(request, settings, limit, too_large(limit)).body()


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON: a cross-site form or ``text/plain`` POST is never parsed."""
    media_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if media_type != b"application/json":
        raise ServiceError(415, "unsupported_media_type", "send the body as JSON, with 'Content-Type: application/json'")
