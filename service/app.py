"""The HTTP API. ``create_app(settings, localizer)`` builds it; ``app`` (settings from ``LOST_REG_*``) is
what ``uvicorn service.app:app`` serves. Building an app loads nothing: the model loads and warms up
in the lifespan start-up (or comes ready-made as ``localizer``, as ``lost-reg serve`` and tests do).

``POST /v1/boxes`` parses its multipart body itself, after authentication and under size and rate limits,
taking a place for each image as its part starts (:mod:`service.admission`), so an unauthenticated,
oversized or unadmitted upload is refused before it is spooled.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.trustedhost import TrustedHostMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.params import Depends as DependsParam
from fastapi.responses import FileResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.responses import Response

from lost_reg import __version__
from lost_reg.export import ExportOptions, ImageRecord, render
from lost_reg.methods import all_option_specs
from lost_reg.pipeline import Detection, Localizer
from lost_reg.recipes import resolve_method, resolve_prep

from . import labelstudio, protocol
from .admission import Ticket
from .bodies import limited, read_body, require_json, too_large
from .docs import install_docs
from .errors import ServiceError, error_response, install_error_handlers, problems
from .metrics import Metrics
from .middleware import Observe, SecurityHeaders
from .runtime import BoxRequest, Failed, Runtime
from .schemas import (
    BoxesResponse,
    BoxOptions,
    ErrorResponse,
    ExportRequest,
    FileError,
    ModelInfo,
    Readiness,
    boxes_request_schema,
)
from .settings import Settings
from .uploads import MultipartForm
from .worker import InferenceWorker, RunKey

MAX_OPTION_FIELDS = 16
MAX_OPTION_BYTES = 64 * 1024
MAX_EXPORT_BYTES = 32 * 2**20
STATIC = Path(__file__).parent / "static"
"""The web page at ``/``: plain HTML, CSS and JavaScript, no build step, nothing from a CDN."""
ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in [
    (400, "not a complete multipart/form-data body, or more than 16 option fields"),
    (401, "missing or wrong bearer token"),
    (408, "the body arrived slower than the minimum upload rate"),
    (413, "request, file or image too large, too many files, or over the request's pixel budget"),
    (415, "a file is not an image, or (JSON routes) the body is not declared JSON"),
    (422, "bad option, empty, corrupt or too small image"),
    (503, "model not ready, or no place left for more images (Retry-After)"),
    (504, "no answer within the request timeout"),
]}


def create_app(settings: Settings | None = None, localizer: Localizer | None = None) -> FastAPI:
    """The service: routes, limits, auth and metrics; the model loads when the app starts."""
    settings = settings or Settings()
    metrics = Metrics()
    runtime = Runtime(settings, metrics)
    app = FastAPI(title="lost-reg", version=__version__, lifespan=_lifespan(runtime, settings, localizer),
                  docs_url=None, redoc_url=None,
                  description="Object boxes and masks per image: LOST or TokenCut on a register-aware ViT.")
    app.state.runtime = runtime
    install_error_handlers(app, metrics)
    install_docs(app)
    _add_middleware(app, settings, runtime, metrics)
    protected = [_bearer_auth(settings.api_key.get_secret_value())] if settings.api_key else []
    app.include_router(labelstudio.router(runtime, settings))
    _add_probes(app, runtime, settings)
    _add_model(app, runtime, settings, protected)
    _add_export(app, runtime, settings, protected)
    _add_page_and_metrics(app, metrics, protected)
    _add_boxes(app, runtime, settings, metrics, protected)
    app.openapi = _openapi(app, runtime, settings)  # type: ignore[method-assign]
    return app


def _lifespan(runtime: Runtime, settings: Settings, localizer: Localizer | None) -> Callable[[FastAPI], Any]:
    """Start-up: the model loaded and warmed up (or ``localizer``); shut-down: the worker and decoders stopped."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, float]]:
        try:
            protocol.quiet_accept_errors(asyncio.get_running_loop())
            await runtime.start(localizer)
            yield {protocol.STATE_KEY: settings.header_timeout_s}  # read by the connections' HTTP protocol
        finally:
            runtime.stop()

    return lifespan


def _add_middleware(app: FastAPI, settings: Settings, runtime: Runtime, metrics: Metrics) -> None:
    """CORS and trusted hosts when configured, security headers, and the observer (added innermost first: it sees
    every answer, the Host check's included)."""
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    if settings.allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts, www_redirect=False)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(Observe, admission=runtime.admission, metrics=metrics)


def _add_probes(app: FastAPI, runtime: Runtime, settings: Settings) -> None:
    """``/healthz`` and ``/readyz``, open to all (probes)."""

    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and warmed up, and a place for an image is free",
             response_model=Readiness, responses={503: ERRORS[503]})
    async def readyz() -> Readiness | Response:
        """Overload and start-up are reported, not counted as refused requests: probes poll this."""
        try:
            runtime.admit()
        except ServiceError as e:
            return error_response(e)
        return Readiness(status="ready", images_in_flight=runtime.admission.in_flight, max_queue=settings.max_queue)


def _add_model(app: FastAPI, runtime: Runtime, settings: Settings, protected: list[DependsParam]) -> None:
    """``GET /v1/model``: the loaded model, the request defaults and the server's limits."""

    @app.get("/v1/model", dependencies=protected, responses=ERRORS)
    async def model() -> ModelInfo:
        loc = runtime.require_ready().localizer
        bb = loc.backbone
        return ModelInfo(
            backbone=bb.name, patch_size=bb.patch_size, registers=bb.num_registers,
            test_time_registers=bb.test_time_registers, features=bb.features,
            layer=bb.layer, device=str(loc.device), dtype=loc.dtype, method=loc.method.describe(),
            defaults={"method": loc.method.name, **loc.method.options(), "max_side": settings.max_side,
                      "features": bb.features, "max_objects": settings.max_objects, "refine": settings.refine},
            limits={"max_files": settings.max_files, "max_file_bytes": settings.max_file_bytes,
                    "max_pixels": settings.max_pixels, "max_request_pixels": settings.max_request_pixels,
                    "max_queue": settings.max_queue, "timeout_s": settings.timeout_s,
                    "max_objects": settings.max_objects_limit},
        )


def _add_export(app: FastAPI, runtime: Runtime, settings: Settings, protected: list[DependsParam]) -> None:
    """``POST /v1/export``: boxes as an annotation tool's file."""

    @app.post("/v1/export", dependencies=protected, response_class=Response, summary="Boxes as an export file",
              responses={200: {"content": {"application/json": {}, "application/x-ndjson": {}},
                               "description": "the file, as an attachment"},
                         **{k: v for k, v in ERRORS.items() if k in (401, 408, 413, 415, 422)}})
    async def export_boxes(request: Request) -> Response:
        """Boxes and masks (what ``/v1/boxes`` answered, e.g. the web page's session) as a COCO, COCO results, JSON
        lines or Label Studio file, written by the same code as ``lost-reg discover --format``."""
        require_json(request)
        body = await read_body(request, settings, MAX_EXPORT_BYTES)
        try:
            wanted = ExportRequest.model_validate_json(body)
        except ValidationError as e:
            raise ServiceError(422, "invalid_request", problems(e)) from None
        masked = sum(i.width * i.height for i in wanted.images if any(o.segmentation for o in i.objects))
        if masked > settings.max_request_pixels:
            raise ServiceError(413, "request_pixels", f"the images with masks add up to over "
                               f"{settings.max_request_pixels:,} pixels, the budget per request "
                               "(LOST_REG_MAX_REQUEST_PIXELS); export fewer images per request")
        records = [ImageRecord(i.file_name, i.file_name, i.width, i.height, [
            Detection(o.box, None, i.width, i.height, o.score,
                      None if o.segmentation is None else o.segmentation.model_dump(mode="json"))
            for o in i.objects]) for i in wanted.images]
        version = wanted.model_version or runtime.model_version()
        options = ExportOptions(wanted.image_url_prefix, version, mask_format=wanted.mask_format)
        text = await asyncio.to_thread(render, records, wanted.format, options)  # masks to polygons: off the loop
        name, media = ("boxes.jsonl", "application/x-ndjson") if wanted.format == "jsonl" else (
            f"boxes-{wanted.format}.json", "application/json")
        return Response(text, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _add_page_and_metrics(app: FastAPI, metrics: Metrics, protected: list[DependsParam]) -> None:
    """The web page at ``/`` (and ``/static``), and Prometheus' ``/metrics``."""

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/metrics", dependencies=protected, response_class=Response, summary="Prometheus metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _add_boxes(app: FastAPI, runtime: Runtime, settings: Settings, metrics: Metrics,
               protected: list[DependsParam]) -> None:
    """``POST /v1/boxes``: the multipart body read under the limits, each file decoded and localised."""

    @app.post("/v1/boxes", dependencies=protected, response_model=BoxesResponse, response_model_exclude_none=True,
              responses=ERRORS, summary="Object boxes (and masks) per uploaded image")
    async def boxes(request: Request) -> BoxesResponse:
        worker = runtime.admit()
        ticket: Ticket = request.state.ticket
        form = await _read_form(request, settings, ticket)
        try:
            uploads, options = _uploads(form), _box_request(form, settings, worker)
            results = await runtime.run(ticket, request.receive, runtime.localize(uploads, options, ticket),
                                        settings.timeout_s)
        finally:
            await form.close()
        failed = [r.error for r in results if isinstance(r, Failed)]
        if len(failed) == len(results):
            raise ServiceError(failed[0].status, failed[0].code, "; ".join(e.message for e in failed))
        for error in failed:
            metrics.errors.labels(error.code).inc()
        return BoxesResponse(backbone=worker.localizer.backbone.name, results=[
            FileError(filename=r.filename, error=r.error.body) if isinstance(r, Failed) else r for r in results
        ])


def _openapi(app: FastAPI, runtime: Runtime, settings: Settings) -> Callable[[], dict[str, Any]]:
    """FastAPI's schema, with the body of ``POST /v1/boxes`` (parsed by hand) saying what is enforced; it
    depends on the loaded model (patch size, default method), so it is kept only once that is ready."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        loc = runtime.worker.localizer if runtime.ready and runtime.worker else None
        patch = loc.patch_size if loc else 1
        method = (loc.method if loc else resolve_method("other", settings.method, settings.method_options())).name
        schema["paths"]["/v1/boxes"]["post"]["requestBody"] = boxes_request_schema(
            settings.max_files, (patch, settings.max_side), method, settings.max_objects_limit)
        export = ExportRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        schema["components"]["schemas"].update(export.pop("$defs", {}), ExportRequest=export)
        schema["paths"]["/v1/export"]["post"]["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ExportRequest"}}}}
        if loc is not None:
            app.openapi_schema = schema
        return schema

    return openapi


def _bearer_auth(secret: str) -> DependsParam:
    """401 unless ``Authorization: Bearer <secret>`` (constant-time comparison)."""
    expected = secret.encode()
    scheme = HTTPBearer(auto_error=False, description="the server's LOST_REG_API_KEY")

    async def check(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise ServiceError(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               headers={"WWW-Authenticate": "Bearer"})

    return Depends(check)


async def _read_form(request: Request, settings: Settings, ticket: Ticket) -> FormData:
    """The multipart body, refused with 413 once it passes ``max_request_bytes`` (declared or streamed) or a
    file passes ``max_file_bytes``, with 503 as soon as a file part finds no place left (admission), with 408
    when it arrives too slowly (in each case the rest is never read), 400 when it is no complete multipart body."""
    limit = settings.max_request_bytes
    error = too_large(limit, f" ({settings.max_files} files of {settings.max_file_mb:g} MB at most)")
    body = limited(request, settings, limit, error)
    content_type, _ = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":  # a url-encoded form holds no files: the images are missing (422)
        return await body.form(max_files=0, max_fields=MAX_OPTION_FIELDS, max_part_size=MAX_OPTION_BYTES)
    form = MultipartForm(request.headers["content-type"], max_files=settings.max_files,
                         max_fields=MAX_OPTION_FIELDS, max_part_size=MAX_OPTION_BYTES,
                         max_file_size=settings.max_file_bytes, on_file=ticket.take)
    return await form.parse(body.stream())


def _uploads(form: FormData) -> list[UploadFile]:
    values = form.getlist("images")
    if not values:
        raise ServiceError(422, "no_images", "send one or more files in the multipart form field 'images'")
    if not all(isinstance(v, UploadFile) for v in values):
        raise ServiceError(422, "invalid_request", "the form field 'images' must hold files, not text")
    return values  # type: ignore[return-value]


def _box_request(form: FormData, settings: Settings, worker: InferenceWorker) -> BoxRequest:
    """The request's options, checked, with the server's defaults for those it leaves out."""
    sent = [k for k, _ in form.multi_items() if k != "images"]
    twice = sorted({k for k in sent if sent.count(k) > 1})
    if twice:
        raise ServiceError(422, "invalid_option", f"{', '.join(twice)}: given more than once")
    try:
        options = BoxOptions.model_validate({k: v for k, v in form.multi_items() if k != "images"})
    except ValidationError as e:
        raise ServiceError(422, "invalid_option", problems(e)) from None
    max_side = options.max_side or settings.max_side
    if max_side > settings.max_side:
        raise ServiceError(422, "invalid_option", f"max_side: at most {settings.max_side} on this server")
    if max_side < worker.localizer.patch_size:
        raise ServiceError(422, "invalid_option", f"max_side: at least the patch size ({worker.localizer.patch_size})")
    defaults = worker.default_key
    name = options.method or defaults.method.name
    base = defaults.method.options() if name == defaults.method.name else {}  # else the recipe's, as in the CLI
    given = {k: getattr(options, k) for k in all_option_specs() if getattr(options, k) is not None}
    try:
        method = resolve_method(worker.localizer.backbone.family, name, {**base, **given})
    except ValueError as e:
        raise ServiceError(422, "invalid_option", str(e)) from None
    prep = resolve_prep(worker.localizer.backbone.family, method, settings.prep)
    max_objects = options.max_objects or settings.max_objects
    if max_objects > settings.max_objects_limit:
        raise ServiceError(422, "invalid_option", f"max_objects: at most {settings.max_objects_limit} on this server")
    return BoxRequest(RunKey(options.features or defaults.features, method, max_objects), max_side, prep,
                      options.return_mask, options.return_heat, options.masks, options.refine or settings.refine)


app = create_app()
