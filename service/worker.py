"""The inference thread: the one consumer of a queue of prepared images, micro-batching them.

Requests queue images that decoding processes already decoded and padded, in a :class:`~service.fair.FairQueue`
(round-robin between requests). The thread takes the first, waits up to ``max_wait_s`` for more
(``max_batch`` in all, and no more than ``max_patches`` patches: a large image goes alone, so it holds up
no more than itself), groups them by features, method, objects per image and
padded shape (:func:`~lost_reg.pipeline.group_by_shape`), makes one
:meth:`~lost_reg.pipeline.Localizer.localize_prepared_multi` call (scored objects) per group and
resolves each image's future with its objects (their pixel masks are refined later, off this thread).
Only this thread touches the model, so it needs no lock.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

from lost_reg.backbone import FEATURES, Backbone, FeatureKind
from lost_reg.images import Prepared
from lost_reg.methods import Method
from lost_reg.pipeline import Detection, Localizer, group_by_shape

from .fair import FairQueue
from .metrics import Metrics

log = logging.getLogger("service")


@dataclass(frozen=True)
class RunKey:
    """What images of one backbone call share besides their padded shape."""

    features: FeatureKind
    method: Method
    """Resolved for the backbone (no ``auto`` left), so equal settings batch together."""
    max_objects: int = 1


@dataclass
class Job:
    """One queued image; ``future`` resolves to its detections, best first (or the batch's exception)."""

    prepared: Prepared
    key: RunKey
    warmup: bool = False
    """The start-up image: run like any other, counted in no metric."""
    future: Future[list[Detection]] = field(default_factory=Future)
    finished: float = 0.0
    """``time.perf_counter()`` when the result was ready."""


class InferenceWorker:
    """A thread running a Localizer on micro-batches, with every feature kind on the one model."""

    def __init__(self, localizer: Localizer, max_batch: int, max_wait_s: float, metrics: Metrics,
                 max_patches: int | None = None) -> None:
        self.localizer = localizer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_patches = max_patches
        self.metrics = metrics
        base = localizer.backbone
        # One hook per feature kind on the shared model: any kind runs without a second copy of the weights.
        self._backbones: dict[str, Backbone] = {
            kind: base if kind == base.features
            else Backbone(base.model, features=kind, layer=base.layer, name=base.name)
            for kind in FEATURES
        }
        self._localizer = functools.lru_cache(maxsize=32)(self._make_localizer)
        self._queue: FairQueue[Job] = FairQueue()
        self._thread = threading.Thread(target=self._run, name="lost-reg-inference", daemon=True)
        metrics.queue_depth.set_function(lambda: len(self._queue))

    @property
    def default_key(self) -> RunKey:
        return RunKey(self.localizer.backbone.features, self.localizer.method)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._queue.closed

    def start(self) -> None:
        self._thread.start()

    def submit(self, prepared: Prepared, key: RunKey, owner: Hashable = None, warmup: bool = False) -> Job:
        """Queue one image behind ``owner``'s (its request's) earlier ones; cancelling its future before the
        batch runs drops it. RuntimeError once closed."""
        job = Job(prepared, key, warmup)
        self._queue.put(owner, job)
        return job

    def cancel(self, owner: Hashable) -> int:
        """Drop ``owner``'s queued images (its request timed out or its client left); how many were dropped."""
        dropped = self._queue.drop(owner)
        for job in dropped:
            job.future.cancel()
        return len(dropped)

    def close(self, timeout: float) -> None:
        """Finish the images queued so far, then stop the thread."""
        self._queue.close()
        self._thread.join(timeout)

    def _make_localizer(self, key: RunKey) -> Localizer:
        if (key.features, key.method) == (self.default_key.features, self.default_key.method):
            return self.localizer
        return Localizer(self._backbones[key.features], key.method, device=str(self.localizer.device),
                         dtype=self.localizer.dtype)

    def _patches(self, job: Job) -> int:
        height, width = job.prepared.pixels.shape[-2:]
        return height * width // self.localizer.patch_size ** 2

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:  # None: closed and drained
            batch, patches = [job], self._patches(job)
            deadline = time.monotonic() + self.max_wait_s

            def fits(more: Job) -> bool:
                return self.max_patches is None or patches + self._patches(more) <= self.max_patches

            while len(batch) < self.max_batch:
                more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()), accept=fits)
                if more is None:
                    break
                batch.append(more)
                patches += self._patches(more)
            self._run_batch(batch)

    def _run_batch(self, jobs: list[Job]) -> None:
        by_key: dict[RunKey, list[Job]] = defaultdict(list)
        for job in jobs:
            if job.future.set_running_or_notify_cancel():  # False: its request timed out meanwhile
                by_key[job.key].append(job)
        for key, same in by_key.items():
            groups = group_by_shape([j.prepared for j in same])
            for shape in sorted(groups, key=lambda hw: hw[0] * hw[1]):  # small images first: they are quick
                self._run_group(key, [same[i] for i in groups[shape]])

    def _run_group(self, key: RunKey, group: list[Job]) -> None:
        start = time.perf_counter()
        try:
            localizer = self._localizer(RunKey(key.features, key.method))
            detections = localizer.localize_prepared_multi([j.prepared for j in group], key.max_objects)
        except Exception as e:  # the thread must outlive a failing batch (out of memory, driver error…)
            log.exception("inference failed on a batch of %d", len(group))
            for job in group:
                job.future.set_exception(e)
            return
        finally:  # every kind's hook fired on the shared forward: drop what this batch did not use (device memory)
            for backbone in self._backbones.values():
                backbone.release()
        end = time.perf_counter()
        counted = sum(not job.warmup for job in group)
        if counted:
            self.metrics.batch_size.observe(counted)
            self.metrics.inference.observe(end - start)
            self.metrics.images.inc(counted)
        for job, detection in zip(group, detections):
            job.finished = end
            job.future.set_result(detection)
