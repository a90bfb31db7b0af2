"""What lives between start-up and shut-down: the model's worker thread, the decoding processes and the
fair pool that feeds them, admission, readiness, and the path of a request's files (headers → pixel
budget → decode in a process → inference queue → box), under the request's deadline and cancelled (queued
work dropped, running decodes killed) when it passes or the client leaves."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from lost_reg import masks as mask_tools
from lost_reg import pipeline
from lost_reg.decoders import DecodePool
from lost_reg.images import Prepared, prepare
from lost_reg.pipeline import Detection, Localizer, with_masks
from lost_reg.vis import heat

from .admission import Admission, Ticket
from .errors import ServiceError
from .fair import FairPool
from .metrics import Metrics
from .schemas import BoxResult, Mask, ObjectResult
from .settings import Settings
from .uploads import decode_upload, upload_size
from .worker import InferenceWorker, RunKey

log = logging.getLogger("service")

WARMUP_SIDE = 224
T = TypeVar("T")


def build_localizer(settings: Settings) -> Localizer:
    """The configured backbone on its device, its plan made once (downloads pretrained weights if needed)."""
    return pipeline.build_localizer(pipeline.plan_run(settings))


@dataclass
class Failed:
    """A file of a request that got no box, and why."""

    filename: str
    error: ServiceError


@dataclass
class BoxRequest:
    """One request's options, resolved against the server defaults."""

    key: RunKey
    max_side: int
    prep: str
    return_mask: bool
    return_heat: bool = False
    masks: str | None = None
    """``rle`` or ``polygon``: each object's pixel mask in the answer; None: none."""
    refine: str = "none"
    """The refiner of those masks (:data:`lost_reg.refine.REFINERS`)."""


class Runtime:
    """The loaded model and its helpers; ``ready`` once the model is warmed up."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.admission = Admission(settings.max_queue, metrics)
        self.worker: InferenceWorker | None = None
        self.pool: FairPool | None = None
        self.decoders: DecodePool | None = None
        self.downloads: asyncio.Semaphore | None = None
        self.ready = False

    async def start(self, localizer: Localizer | None) -> None:
        """Load the model (off the event loop) unless given, start the worker and warm it up."""
        localizer = localizer or await asyncio.to_thread(build_localizer, self.settings)
        s = self.settings
        self.worker = InferenceWorker(localizer, s.max_batch, s.max_wait_ms / 1000, self.metrics, s.max_batch_patches)
        self.worker.start()
        self.decoders = DecodePool(s.decode_workers, s.decode_timeout_s, s.max_pixels)
        await asyncio.to_thread(self.decoders.start)
        self.pool = FairPool(s.decode_workers, "lost-reg-decode", per_owner=max(1, s.decode_workers - 1))
        self.downloads = asyncio.Semaphore(s.label_studio_downloads)
        blank = prepare(np.zeros((WARMUP_SIDE, WARMUP_SIDE, 3), np.uint8), localizer.patch_size)
        await asyncio.wrap_future(self.worker.submit(blank, self.worker.default_key, warmup=True).future)
        self.ready = True
        bb = localizer.backbone
        log.info("ready: %s (%d registers) on %s, %s", bb.name, bb.num_registers, localizer.device, localizer.dtype)

    def stop(self) -> None:
        """Stop taking requests, finish queued images, release the threads."""
        self.ready = False
        if self.worker is not None:
            self.worker.close(timeout=self.settings.timeout_s)
        if self.pool is not None:
            self.pool.shutdown()
        if self.decoders is not None:
            self.decoders.close()

    def require_ready(self) -> InferenceWorker:
        """The worker, or 503 while loading, after its thread died, or while shutting down."""
        if not (self.ready and self.worker is not None and self.worker.alive):
            raise ServiceError(503, "not_ready", "the model is not loaded yet (or the server is stopping); "
                               "retry shortly", headers={"Retry-After": "5"})
        return self.worker

    def admit(self) -> InferenceWorker:
        """The worker, if it is ready and a place for an image is free; else 503, before anything is read."""
        worker = self.require_ready()
        self.admission.check()
        return worker

    def model_version(self) -> str:
        """What made the boxes: backbone, method and its options (Label Studio's ``model_version``)."""
        loc = self.require_ready().localizer
        return f"lost-reg {loc.backbone.name} {loc.method.describe()}"

    async def run(self, ticket: Ticket, receive: Receive, work: Coroutine[Any, Any, T], timeout_s: float,
                  setting: str = "LOST_REG_TIMEOUT_S") -> T:
        """``work`` (a request's, its body read) within ``timeout_s`` (else 504 naming ``setting``) while its
        client stays (else ClientDisconnect); either way the ticket's queued decodes and images are dropped."""
        task = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            done, _ = await asyncio.wait({task, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                dropped = self.cancel(ticket)
                await asyncio.gather(task, return_exceptions=True)
                log.debug("request abandoned: %d queued decodes and images dropped", dropped)
        if gone in done:
            raise ClientDisconnect()
        raise ServiceError(504, "timeout", f"no answer within {timeout_s:g} s ({setting}); "
                                           "send fewer or smaller images, or retry later")

    def cancel(self, ticket: Ticket) -> int:
        """Drop what ``ticket``'s request (admitted, so after start) still has queued for decoding or inference."""
        assert self.pool is not None and self.worker is not None
        return self.pool.cancel(ticket) + self.worker.cancel(ticket)

    async def in_pool(self, ticket: Ticket, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a pool thread, in turn with other requests' calls (round-robin)."""
        return await self.decoding(ticket, lambda _watch, _decoders: fn(*args))

    async def decoding(self, ticket: Ticket, fn: Callable[..., T], *args: Any) -> T:
        """``fn(watch, decoders, *args)`` on a pool thread, in turn with other requests' calls (round-robin): it
        hands its jobs for the decoding processes to ``watch``, so cancelling the request kills them."""
        assert self.pool is not None
        return await asyncio.wrap_future(self.pool.submit(ticket, fn, self.decoders, *args))

    async def decode(self, ticket: Ticket, data: bytes | BinaryIO, name: str, max_side: int, prep: str) -> Prepared:
        """Encoded bytes (or an upload's file) as a prepared image (a ServiceError saying why not), decoded in turn
        with other requests' files."""
        patch_size = self.require_ready().localizer.patch_size
        return await self.decoding(ticket, decode_upload, data, name, patch_size, max_side, prep)

    async def infer(self, ticket: Ticket, prepared: Prepared, key: RunKey) -> tuple[list[Detection], float]:
        """The image's detections (best first), micro-batched in turn with other requests' images; and when they
        were ready."""
        worker = self.require_ready()
        job = worker.submit(prepared, key, owner=ticket)
        return await asyncio.wrap_future(job.future), job.finished

    async def with_masks(self, ticket: Ticket, prepared: Prepared, found: list[Detection],
                         refine: str) -> list[Detection]:
        """The detections with their pixel masks, refined on a pool thread (never the model's)."""
        patch_size = self.require_ready().localizer.patch_size
        return await self.in_pool(ticket, lambda: with_masks(prepared, found, patch_size, refine))

    async def answer_objects(self, ticket: Ticket, prepared: Prepared, found: list[Detection],
                             request: BoxRequest) -> list[dict[str, Any]]:
        """Each detection's fields of the answer (:func:`answer_object`), masks refined and written on a pool
        thread."""
        if not request.masks:
            return [answer_object(d, None) for d in found]
        found = await self.with_masks(ticket, prepared, found, request.refine)
        return await self.in_pool(ticket, lambda: [answer_object(d, request.masks) for d in found])

    async def localize(self, uploads: list[UploadFile], request: BoxRequest,
                       ticket: Ticket) -> list[BoxResult | Failed]:
        """A box or a failure per file, in upload order. The headers are read first: past the request's pixel
        budget, 413 for the whole request before anything is decoded (one file within ``max_pixels`` cannot pass
        the budget: its decode checks its header itself, one trip to a decoding process fewer)."""
        names = [u.filename or f"images[{i}]" for i, u in enumerate(uploads)]
        if len(uploads) == 1 and self.settings.max_pixels <= self.settings.max_request_pixels:
            return [await self._one(uploads[0], names[0], request, ticket)]
        sizes = await asyncio.gather(*(self._size(ticket, u, name) for u, name in zip(uploads, names)))
        budget = self.settings.max_request_pixels
        if sum(w * h for w, h in (s for s in sizes if not isinstance(s, Failed))) > budget:
            raise ServiceError(413, "request_pixels",
                               f"the images of this request add up to over {budget:,} pixels, the budget per "
                               "request (LOST_REG_MAX_REQUEST_PIXELS); send fewer or smaller images per request")
        readable = [i for i, size in enumerate(sizes) if not isinstance(size, Failed)]
        boxes = await asyncio.gather(*(self._one(uploads[i], names[i], request, ticket) for i in readable))
        found = dict(zip(readable, boxes))
        return [found.get(i, size) for i, size in enumerate(sizes)]

    async def _size(self, ticket: Ticket, upload: UploadFile, name: str) -> tuple[int, int] | Failed:
        try:
            return await self.decoding(ticket, upload_size, upload.file, name)
        except ServiceError as e:
            return Failed(name, e)

    async def _one(self, upload: UploadFile, name: str, request: BoxRequest, ticket: Ticket) -> BoxResult | Failed:
        patch_size = self.require_ready().localizer.patch_size
        start = time.perf_counter()
        try:
            prepared = await self.decode(ticket, upload.file, name, request.max_side, request.prep)
            found, finished = await self.infer(ticket, prepared, request.key)
            objects = await self.answer_objects(ticket, prepared, found, request)
        except ServiceError as e:
            return Failed(name, e)
        except Exception as e:  # one file's failure must not fail the request's other files
            log.exception("%s: localisation failed", name)
            return Failed(name, ServiceError(500, "inference_failed",
                                             f"{name}: localisation failed ({type(e).__name__}); see the server log"))
        return _result(name, found, objects, prepared, (finished - start) * 1000, request, patch_size)


async def _disconnected(receive: Receive) -> None:
    """Return once the client has gone (the body is read: nothing else can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def answer_object(det: Detection, masks: str | None) -> dict[str, Any]:
    """One object's fields of the answer: box, score, seed, and its pixel mask in the format asked for."""
    fields: dict[str, Any] = {"box": det.box, "score": round(det.score, 4), "seed": det.seed}
    if masks == "rle" and det.segmentation is not None:
        fields["segmentation"] = Mask(size=tuple(det.segmentation["size"]), counts=det.segmentation["counts"])
    elif masks == "polygon" and det.segmentation is not None:
        fields["segmentation"] = mask_tools.coco_polygons(mask_tools.decode(det.segmentation))
    return fields


def _result(name: str, found: list[Detection], objects: list[dict[str, Any]], prepared: Prepared, ms: float,
            request: BoxRequest, patch_size: int) -> BoxResult:
    """One file's answer: the best object's fields, every object with max_objects over 1, and the grid extras."""
    width, height = prepared.size
    extra: dict[str, Any] = dict(objects[0]) if objects else {}
    if request.key.max_objects > 1:
        extra["objects"] = [ObjectResult(**o) for o in objects]
    if found and (request.return_mask or request.return_heat):
        result = found[0].result
        extra.update(grid=result.mask.shape, cell_px=tuple(patch_size / s for s in prepared.scale))
        if request.return_mask:
            rle = mask_utils.encode(np.asfortranarray(result.mask.astype(np.uint8)))
            extra["mask"] = Mask(size=tuple(rle["size"]), counts=rle["counts"].decode("ascii"))
        if request.return_heat:
            rows, cols = result.mask.shape
            coloured = cv2.cvtColor(heat(result.heat, (cols, rows)), cv2.COLOR_RGB2BGR)
            extra["heat"] = base64.b64encode(cv2.imencode(".png", coloured)[1].tobytes()).decode("ascii")
    return BoxResult(filename=name, width=width, height=height, ms=round(ms, 2), **extra)
