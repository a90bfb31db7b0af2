"""Label Studio's ML-backend protocol on the service: live pre-annotations from LOST or TokenCut.

In Label Studio, *Settings → Model → Connect model* with ``http://HOST:8000/labelstudio`` (and, when
the service has an API key, *Basic Auth* with that key as the password). Label Studio then calls:

``GET /health``    the model is loaded (else 503).
``POST /setup``    answers the ``model_version``: backbone, method and options.
``POST /predict``  ``{"tasks": […], "label_config": "<View>…"}`` → ``{"results": [one prediction per task]}``:
                   up to ``max_objects`` objects per task, best first, each a ``rectanglelabels`` box in
                   percent with ``original_width/height`` for the first ``<RectangleLabels>`` of the config,
                   and a mask for the first ``<BrushLabels>`` (Label Studio's brush RLE) or
                   ``<PolygonLabels>`` (a polygon per part, in percent) on the same ``<Image>`` (names read
                   from the config, each control's first label), with its score and the model version.
``POST /webhook``  acknowledged (this model does not train).

Task images are URLs: relative ones (``/data/upload/…``, ``/data/local-files/?d=…``) are read from
``LOST_REG_LABEL_STUDIO_URL`` with ``LOST_REG_LABEL_STUDIO_API_KEY``; absolute ones only when they are on
that same origin, never anywhere else (no server-side request forgery); redirects are not followed; the
service's size and pixel limits apply. A task whose image cannot be fetched or read gets an empty result
and a logged reason, never a failed batch. Images go through the service's one inference worker, so
they are micro-batched with ``/v1/boxes`` traffic.

Bounds: the body (``label_studio_max_body_mb``, 413) and its tasks (``label_studio_max_tasks``, 413); a
request holds ``label_studio_downloads`` places of the admission queue and works through its tasks that many
at a time (503 when they are not free), yielding to the event loop after each; at most
``label_studio_downloads`` images are downloaded and not yet decoded at once, over all requests; each
download has ``label_studio_fetch_timeout_s`` in all and ``max_file_mb`` of decoded bytes (one gzip or
deflate layer is inflated a bounded piece at a time, nested encodings are refused), the request
``label_studio_timeout_s`` (504). Tasks without a prediction are logged one line each for the first
``LOGGED_TASKS`` of a request, then as a count per reason.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import zlib
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit
from xml.etree.ElementTree import ParseError

import httpx
from defusedxml.ElementTree import fromstring
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from lost_reg.export import ImageRecord, LabelStudioControls, labelstudio_prediction

from .admission import Ticket
from .bodies import read_body, require_json
from .errors import ServiceError, problems
from .runtime import Runtime
from .settings import Settings
from .worker import InferenceWorker, RunKey

log = logging.getLogger("service")

LOGGED_TASKS = 10
"""Tasks of one request whose failure is logged on a line of its own; the others are counted by reason."""
INFLATE = {"gzip": zlib.MAX_WBITS | 16, "x-gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}
"""The one content coding a task image may come in (zlib window bits); Label Studio is asked for none."""


class Skipped(ValueError):
    """A task that gets an empty prediction: ``reason`` is what it is counted under in the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


MASK_CONTROLS = {"BrushLabels": "brushlabels", "PolygonLabels": "polygonlabels"}
"""The label config's mask controls, and the result type each takes."""


@dataclass(frozen=True)
class Target:
    """Where predictions go in a project: the controls (boxes, masks) and the Image they label."""

    controls: LabelStudioControls
    data_key: str
    """The task data field holding the image URL (``$image`` → ``image``)."""

    @property
    def masks(self) -> bool:
        return self.controls.masks is not None


class PredictRequest(BaseModel):
    """What ``/predict`` needs of Label Studio's body (it sends more: project, params…). A task is any object:
    one that is not what is needed gets an empty prediction, not a refused batch."""

    model_config = ConfigDict(extra="allow")

    tasks: list[dict[str, Any]]
    label_config: str


def target_of(label_config: str) -> Target:
    """The first ``<RectangleLabels>`` on an ``<Image>`` of the config and the first ``<BrushLabels>`` or
    ``<PolygonLabels>`` on the same image (either may be missing, not both: ValueError)."""
    try:
        root = fromstring(label_config)
    except ParseError as e:  # a SyntaxError; defusedxml's refusals (entities…) are ValueErrors
        raise ValueError(f"the label config is not XML ({e})") from None
    images = {e.get("name"): e.get("value", "") for e in root.iter() if e.tag == "Image"}
    controls = [c for c in root.iter() if c.tag in ("RectangleLabels", *MASK_CONTROLS) and c.get("toName") in images]
    boxes = next((c for c in controls if c.tag == "RectangleLabels"), None)
    to_name = (boxes if boxes is not None else controls[0]).get("toName") if controls else None
    masks = next((c for c in controls if c.tag in MASK_CONTROLS and c.get("toName") == to_name), None)
    if to_name is None:
        raise ValueError("the label config has no <RectangleLabels>, <BrushLabels> or <PolygonLabels> labelling an "
                         "<Image>")
    labels = {}
    for control in (c for c in (boxes, masks) if c is not None):
        found = [e.get("value") for e in control if e.tag == "Label" and e.get("value")]
        if not found:
            raise ValueError(f"<{control.tag} name={control.get('name')!r}> has no <Label>")
        labels[control.tag] = found[0]
    return Target(LabelStudioControls(
        to_name=to_name,
        boxes=None if boxes is None else boxes.get("name"), box_label=labels.get("RectangleLabels", ""),
        masks=None if masks is None else masks.get("name"),
        mask_type=MASK_CONTROLS[masks.tag] if masks is not None else "brushlabels",
        mask_label=labels.get(masks.tag, "") if masks is not None else ""), images[to_name].lstrip("$"))


def image_url(url: str, settings: Settings) -> str:
    """The absolute URL to fetch, or ValueError when it is not on the configured Label Studio."""
    if not settings.label_studio_url:
        raise Skipped("no_label_studio_url", "LOST_REG_LABEL_STUDIO_URL is not set: the service does not know where "
                      "Label Studio is")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise Skipped("bad_url", f"{url!r} holds control characters: not a URL")
    base = settings.label_studio_url.rstrip("/") + "/"
    absolute = urljoin(base, url.lstrip("/")) if url.startswith("/") else url
    allowed, wanted = urlsplit(base), urlsplit(absolute)
    if (wanted.scheme, wanted.hostname, wanted.port) != (allowed.scheme, allowed.hostname, allowed.port):
        raise Skipped("off_origin", f"{url} is not on the Label Studio at {settings.label_studio_url}: not fetched")
    return absolute


async def fetch(client: httpx.AsyncClient, url: str, settings: Settings) -> bytes:
    """The image's bytes, read in chunks and given up past ``max_file_bytes`` (after inflating, one bounded
    piece per read) or, all of it, past ``label_studio_fetch_timeout_s``; no redirects."""
    headers = {"Accept-Encoding": "identity"}
    if settings.label_studio_api_key:
        headers["Authorization"] = f"Token {settings.label_studio_api_key.get_secret_value()}"
    deadline, limit = settings.label_studio_fetch_timeout_s, settings.max_file_bytes
    try:
        async with asyncio.timeout(deadline), client.stream("GET", url, headers=headers,
                                                            follow_redirects=False) as response:
            if response.status_code != 200:
                raise Skipped(f"http_{response.status_code}", f"{url}: Label Studio answered {response.status_code}")
            inflate = _inflater(url, response.headers.get_list("content-encoding", split_commas=True))
            chunks, size = [], 0
            async for raw in response.aiter_raw():
                chunk = raw if inflate is None else inflate.decompress(raw, limit - size + 1)
                size += len(chunk)
                if size > limit:
                    raise Skipped("too_large", f"{url}: larger than the {settings.max_file_mb:g} MB limit per file")
                chunks.append(chunk)
    except TimeoutError:
        raise Skipped("download_timeout", f"{url}: not downloaded within {deadline:g} s") from None
    except zlib.error as e:
        raise Skipped("content_encoding", f"{url}: its content coding does not inflate ({e})") from None
    return b"".join(chunks)


def _inflater(url: str, encodings: list[str]) -> Any:
    """A zlib decompressor for the response's one content coding (None for none); nested or other codings
    are refused: ``gzip, gzip`` of 3.5 KB would otherwise inflate to gigabytes in one read."""
    codings = [c.strip().lower() for c in encodings if c.strip().lower() not in ("", "identity")]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in INFLATE:
        raise Skipped("content_encoding", f"{url}: Content-Encoding {', '.join(codings)} refused (at most one "
                      f"of {', '.join(INFLATE)})")
    return zlib.decompressobj(INFLATE[codings[0]])


def router(runtime: Runtime, settings: Settings) -> APIRouter:
    """The ``/labelstudio`` routes, behind the service's API key (Bearer, or Basic with the key as password)."""
    key = settings.api_key.get_secret_value() if settings.api_key else None
    api = APIRouter(prefix="/labelstudio", include_in_schema=False,  # Label Studio's protocol, not this API's
                    dependencies=[Depends(_auth(key))] if key else [])
    capped = create_model("CappedPredictRequest", __base__=PredictRequest,  # past the cap, validation stops
                          tasks=(list[dict[str, Any]], Field(max_length=settings.label_studio_max_tasks)))

    @api.get("/health", summary="Label Studio: is the model loaded")
    async def health() -> dict[str, str]:
        runtime.require_ready()
        return {"status": "UP", "model_class": "lost-reg"}

    @api.post("/setup", summary="Label Studio: connect a project")
    async def setup(request: Request) -> dict[str, str]:
        require_json(request)
        return {"model_version": runtime.model_version()}

    @api.post("/webhook", summary="Label Studio: project events (acknowledged; nothing is trained)")
    async def webhook(request: Request) -> dict[str, str]:
        require_json(request)
        return {"status": "ok"}

    @api.post("/predict", summary="Label Studio: boxes and masks per task, as a pre-annotation")
    async def predict(request: Request) -> dict[str, Any]:
        require_json(request)
        worker = runtime.admit()
        body = await read_body(request, settings, settings.label_studio_max_body_bytes)
        try:
            wanted = capped.model_validate_json(body)
            target = target_of(wanted.label_config)
        except ValidationError as e:
            if any(error["type"] == "too_long" and error["loc"] == ("tasks",) for error in e.errors()):
                raise ServiceError(413, "too_many_tasks", f"more than {settings.label_studio_max_tasks:,} tasks in "
                                   "one prediction request (LOST_REG_LABEL_STUDIO_MAX_TASKS); send fewer at once"
                                   ) from None
            raise ServiceError(422, "invalid_request", f"not a Label Studio prediction request: {problems(e)}") from None
        except ValueError as e:
            raise ServiceError(422, "invalid_request", f"not a Label Studio prediction request: {e}") from None
        ticket: Ticket = request.state.ticket
        lanes = min(len(wanted.tasks), settings.label_studio_downloads)
        ticket.take(lanes)
        version = runtime.model_version()
        prep = worker.localizer.prep  # the server's plan
        tasks = iter(enumerate(wanted.tasks))
        results: list[dict[str, Any]] = [{}] * len(wanted.tasks)
        skipped: Counter[str] = Counter()

        async def lane(client: httpx.AsyncClient) -> None:
            for i, task in tasks:  # the lanes share one iterator: each task is taken once
                results[i] = await _one(task, target, version, prep, client, worker, ticket, skipped)
                await asyncio.sleep(0)  # a task that fails at once awaits nothing: let the loop serve others

        async def work() -> None:
            async with httpx.AsyncClient(timeout=settings.label_studio_fetch_timeout_s) as client, \
                    asyncio.TaskGroup() as group:
                for _ in range(lanes):
                    group.create_task(lane(client))

        try:
            await runtime.run(ticket, request.receive, work(), settings.label_studio_timeout_s,
                              "LOST_REG_LABEL_STUDIO_TIMEOUT_S")
        finally:
            if skipped:
                log.warning("Label Studio: %d of %d tasks without a prediction (%s)", skipped.total(),
                            len(wanted.tasks), ", ".join(f"{reason}: {n}" for reason, n in skipped.most_common()))
        return {"results": results}

    async def _one(task: dict[str, Any], target: Target, version: str, prep: str, client: httpx.AsyncClient,
                   worker: InferenceWorker, ticket: Ticket, skipped: Counter[str]) -> dict[str, Any]:
        task_id = task.get("id")
        key = RunKey(worker.default_key.features, worker.default_key.method, settings.max_objects)
        try:
            url = image_url(_task_image(task, target), settings)
            assert runtime.downloads is not None
            async with runtime.downloads:  # held until decoded: downloaded bytes never pile up
                data = await fetch(client, url, settings)
                prepared = await runtime.decode(ticket, data, url, settings.max_side, prep)
            del data
            found, _ = await runtime.infer(ticket, prepared, key)
            if target.masks:
                found = await runtime.with_masks(ticket, prepared, found, settings.refine)
            record = ImageRecord(str(task_id), "", *prepared.size, found)
            return await runtime.in_pool(ticket, labelstudio_prediction, record, version, target.controls)
        except Exception as e:  # this task's loss, never the batch's
            known = isinstance(e, ServiceError | ValueError | httpx.HTTPError | httpx.InvalidURL)
            skipped[e.code if isinstance(e, ServiceError) else e.reason if isinstance(e, Skipped)
                    else "download_failed" if known else "localisation_failed"] += 1
            if skipped.total() <= LOGGED_TASKS:
                if known:
                    reason = str(e) if isinstance(e, ServiceError | Skipped) else f"{type(e).__name__}: {e}"
                    log.warning("Label Studio task %s: no prediction (%s)", task_id, reason)
                else:  # e.g. inference failing: the traceback is for the server log
                    log.exception("Label Studio task %s: no prediction (localisation failed)", task_id)
            return {"result": [], "score": 0.0, "model_version": version}

    return api


def _task_image(task: dict[str, Any], target: Target) -> str:
    """The task's image URL (ValueError when it has none)."""
    data = task.get("data")
    if not isinstance(data, dict) or not isinstance(data.get(target.data_key), str):
        raise Skipped("no_image_url", f"the task has no image URL in data.{target.data_key}")
    return data[target.data_key]


def _auth(secret: str):
    """401 unless ``Authorization`` carries the key: ``Bearer KEY``, or ``Basic`` with KEY as the password
    (what Label Studio sends when *Basic Auth* is chosen for the model)."""
    expected = secret.encode()

    async def check(request: Request) -> None:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        given = b""
        if scheme.lower() == "bearer":
            given = value.strip().encode()
        elif scheme.lower() == "basic":
            with suppress(ValueError):  # not base64: no key given
                given = base64.b64decode(value.strip(), validate=True).partition(b":")[2]
        if not hmac.compare_digest(given, expected):
            raise ServiceError(401, "unauthorized", "missing or wrong API key: send 'Authorization: Bearer <key>', "
                               "or Basic auth with the key as the password", headers={"WWW-Authenticate": "Basic"})

    return check
