"""Every error leaves the service as ``{"error": {"code", "message"}}`` with a fitting status."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from .metrics import Metrics
from .schemas import ErrorBody, ErrorResponse

log = logging.getLogger("service")

CLIENT_GONE = 499
"""Status recorded (nginx's convention; nothing is sent) when the client left before its answer."""
REJECTIONS = frozenset({"busy", "not_ready", "timeout", "slow_upload", "request_pixels", "request_too_large"})
"""Error codes counted in ``lost_reg_rejections_total`` too: refusals for load or limits, not for bad input."""


class ServiceError(Exception):
    """An error a client can act on: HTTP status, stable code, one-line message."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    @property
    def body(self) -> ErrorBody:
        return ErrorBody(code=self.code, message=self.message)


def problems(e: ValidationError) -> str:
    """pydantic's errors in one line: ``where: what; …`` (``body`` where it is the whole body, e.g. not JSON)."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'body'}: {err['msg']}" for err in e.errors())


def error_response(error: ServiceError) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=error.body).model_dump(), status_code=error.status, headers=error.headers)


def install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    """Map ServiceError, Starlette's HTTP errors, validation errors and crashes to the JSON shape."""

    def respond(error: ServiceError) -> JSONResponse:
        metrics.errors.labels(error.code).inc()
        if error.code in REJECTIONS:
            metrics.rejections.labels(error.code).inc()
        return error_response(error)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = HTTPStatus(exc.status_code).phrase.lower().replace(" ", "_").replace("-", "_")
        return respond(ServiceError(exc.status_code, code, str(exc.detail), dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(ServiceError(422, "invalid_request", str(exc)))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        """One log line, no traceback; the work it left is cancelled where it was queued."""
        log.warning("%s %s: the client left before its answer", request.method, request.url.path)
        metrics.rejections.labels("client_gone").inc()
        return Response(status_code=CLIENT_GONE)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return respond(ServiceError(500, "internal_error", "internal server error; see the server log"))
