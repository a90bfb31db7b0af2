"""What lives between start-up and shut-down: the model's worker thread, the decoding pool, readiness,
and the per-file path of a request (read and decode in the pool → inference queue → box)."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils
from starlette.datastructures import UploadFile

from lost_reg.images import Prepared, prepare
from lost_reg import pipeline
from lost_reg.pipeline import Localizer, ScoredDetection
from lost_reg.vis import heat

from .errors import ServiceError
from .metrics import Metrics
from .schemas import BoxResult, Mask
from .settings import Settings
from .uploads import load_upload
from .worker import InferenceWorker, RunKey

log = logging.getLogger("service")

WARMUP_SIDE = 224


def build_localizer(settings: Settings) -> Localizer:
    """The configured backbone on its device (downloads pretrained weights if needed)."""
    s = settings
    return pipeline.build_localizer(
        s.backbone, s.weights, method=s.method, options=s.method_options(), features=s.features, layer=s.layer,
        prep=s.prep, pos_resample=s.pos_resample, test_time_registers=s.test_time_registers,
        model_kwargs=s.model_args, max_side=s.max_side, device=s.device, dtype=s.dtype)


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


class Runtime:
    """The loaded model and its helpers; ``ready`` once the model is warmed up."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.worker: InferenceWorker | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.ready = False

    async def start(self, localizer: Localizer | None) -> None:
        """Load the model (off the event loop) unless given, start the worker and warm it up."""
        localizer = localizer or await asyncio.to_thread(build_localizer, self.settings)
        s = self.settings
        self.worker = InferenceWorker(localizer, s.max_batch, s.max_wait_ms / 1000, self.metrics)
        self.worker.start()
        self.pool = ThreadPoolExecutor(s.decode_workers, thread_name_prefix="lost-reg-decode")
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
            self.pool.shutdown(wait=False, cancel_futures=True)

    def require_ready(self) -> InferenceWorker:
        """The worker, or 503 while loading, after its thread died, or while shutting down."""
        if not (self.ready and self.worker is not None and self.worker.alive):
            raise ServiceError(503, "not_ready", "the model is not loaded yet (or the server is stopping); "
                               "retry shortly", headers={"Retry-After": "5"})
        return self.worker

    def admit(self, images: int) -> InferenceWorker:
        """The worker, if it is ready and its queue has room for ``images`` more; else 503."""
        worker = self.require_ready()
        if worker.depth + images > self.settings.max_queue:
            raise ServiceError(503, "busy", f"{worker.depth} images are waiting already; retry shortly",
                               headers={"Retry-After": "1"})
        return worker

    def model_version(self) -> str:
        """What made the boxes: backbone, method and its options (Label Studio's ``model_version``)."""
        loc = self.require_ready().localizer
        return f"lost-reg {loc.backbone.name} {loc.method.describe()}"

    async def localize(self, uploads: list[UploadFile], request: BoxRequest) -> list[BoxResult | Failed]:
        """A box or a failure per file, in upload order; 503 when the queue is full, 504 on timeout."""
        self.admit(len(uploads))
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                return await asyncio.gather(*(self._one(i, u, request) for i, u in enumerate(uploads)))
        except TimeoutError:
            raise ServiceError(504, "timeout", f"no answer within {self.settings.timeout_s:g} s; "
                                               "send fewer or smaller images, or retry later") from None

    async def _one(self, index: int, upload: UploadFile, request: BoxRequest) -> BoxResult | Failed:
        name = upload.filename or f"images[{index}]"
        s = self.settings
        assert self.worker is not None and self.pool is not None
        start = time.perf_counter()
        try:
            prepared = await asyncio.get_running_loop().run_in_executor(
                self.pool, load_upload, upload.file, name, self.worker.localizer.patch_size, request.max_side,
                s.max_pixels, request.prep)
            job = self.worker.submit(prepared, request.key)
            detection = await asyncio.wrap_future(job.future)
        except ServiceError as e:
            return Failed(name, e)
        except Exception as e:  # one file's failure must not fail the request's other files
            log.exception("%s: localisation failed", name)
            return Failed(name, ServiceError(500, "inference_failed",
                                             f"{name}: localisation failed ({type(e).__name__}); see the server log"))
        return _result(name, detection, prepared, (job.finished - start) * 1000, request,
                       self.worker.localizer.patch_size)


def _result(name: str, found: ScoredDetection, prepared: Prepared, ms: float, request: BoxRequest,
            patch_size: int) -> BoxResult:
    det = found.detection
    extra: dict[str, Any] = {}
    if request.return_mask or request.return_heat:
        extra = {"grid": det.result.mask.shape, "cell_px": tuple(patch_size / s for s in prepared.scale)}
    if request.return_mask:
        rle = mask_utils.encode(np.asfortranarray(det.result.mask.astype(np.uint8)))
        extra["mask"] = Mask(size=tuple(rle["size"]), counts=rle["counts"].decode("ascii"))
    if request.return_heat:
        rows, cols = det.result.mask.shape
        coloured = cv2.cvtColor(heat(det.result.heat, (cols, rows)), cv2.COLOR_RGB2BGR)
        extra["heat"] = base64.b64encode(cv2.imencode(".png", coloured)[1].tobytes()).decode("ascii")
    return BoxResult(filename=name, width=det.width, height=det.height, box=det.box, score=round(found.score, 4),
                     seed=det.seed, ms=round(ms, 2), **extra)
