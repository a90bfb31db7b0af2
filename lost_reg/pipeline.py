"""Images in, boxes in original-image pixels out: backbone + a discovery method, batched on one device.

The CLI and the service both drive a :class:`Localizer`; images of one padded shape go
through the backbone together, so callers group by :attr:`Prepared.pixels` shape (see
:func:`group_by_shape`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .backbone import Backbone, Features, Tap
from .devices import (
    DTYPES,
    BatchLimit,
    DevicePlan,
    autocast,
    autocast_supported,
    resolve_device,
    synchronize,
    using,
)
from .images import Prepared, normalize, prepare
from .masks import RLE, encode
from .methods import Discovery, Method
from .models import Source, create_backbone, resolve_source
from .recipes import AUTO, resolve, resolve_dtype, resolve_method, resolve_prep
from .multiobject import DEFAULT_MULTI, MULTI_MODES
from .refine import refine_masks
from .scores import DEFAULT_SCORE

if TYPE_CHECKING:
    from .config import LocalizerOptions, ModelOptions


@dataclass
class Detection:
    """One object's box in an image's original pixels, its score, and the method's evidence on the patch grid
    (the library's box in pixels; :class:`~lost_reg.methods.Discovery` is its box on the grid)."""

    box: tuple[int, int, int, int] = field(metadata={"description": "x0, y0, x1, y1 in original pixels, max exclusive"})
    """(x0, y0, x1, y1) in original-image pixels, max exclusive, clipped to the image."""
    seed: tuple[int, int] | None = field(metadata={"description": "row, col of the seed patch the object grew from"})
    """(row, col) of the seed patch on the network's patch grid."""
    width: int
    height: int
    """The image's size, which the box lies in."""
    score: float | None = field(default=None, metadata={
        "description": "the box's ncut score in [0, 1] (README, Scores): higher = more object-like"})
    """Confidence (:mod:`lost_reg.scores`; higher = more object-like); None where nothing scored it."""
    segmentation: RLE | None = field(default=None, metadata={
        "description": "the object's pixel mask in original pixels, COCO RLE: size [height, width], counts"})
    """The object's pixel mask, COCO RLE in original pixels (:mod:`lost_reg.masks`), refined from the grid mask
    (:mod:`lost_reg.refine`); None when masks are off."""
    result: Discovery | None = field(default=None, repr=False, compare=False)
    """The method's answer on the patch grid (mask, heat map, its own evidence); None once read back from a file."""


@dataclass
class Timings:
    """Seconds spent per stage, summed over calls."""

    forward: float = 0.0
    discovery: float = 0.0
    masks: float = 0.0
    images: int = 0


class Discoverer:
    """A discovery method on one device, its plan in force around each call, which is halved when the device runs
    out of memory: boxes from features (a :class:`Localizer` adds the backbone; the sweep reads cached features)."""

    def __init__(self, method: Method, device: str = "auto", plan: DevicePlan | None = None) -> None:
        self.device = resolve_device(device)
        self.plan = plan or DevicePlan.of(self.device)
        """The device's choices (:class:`~lost_reg.devices.DevicePlan`); tests pass a GPU's to run its branches here."""
        self.method = method
        self.timings = Timings()
        self.method_limit = BatchLimit(None, "method call")
        """Images per method call (the whole batch until the device runs out of memory)."""

    def localize_features(self, batch: Sequence[Prepared], features: Features, patch_size: int,
                          method: Method | None = None) -> list[Detection]:
        """Boxes for prepared images from their features, by this method or ``method``."""
        results = self._discover(features, method or self.method)
        return [detection(p, r, patch_size) for p, r in zip(batch, results)]

    def _discover(self, features: Features, find: Callable[[torch.Tensor, tuple[int, int]], list]) -> list:
        """``find(patches, grid)`` over the batch, one result per image (timed), in calls of at most
        :attr:`method_limit` images."""
        start = time.perf_counter()
        with using(self.plan):
            parts = self.method_limit.run(len(features.patches), lambda part: find(features.patches[part], features.grid))
        self.timings.discovery += time.perf_counter() - start
        self.timings.images += len(features.patches)
        return [r for part in parts for r in part]


class Localizer(Discoverer):
    """A backbone on a device, a discovery method, and how images are prepared for them."""

    def __init__(self, backbone: Backbone, method: Method | None = None, *, prep: str = AUTO,
                 max_side: int | None = None, device: str = "auto", dtype: str = "auto",
                 plan: DevicePlan | None = None, compile: bool = False) -> None:
        super().__init__(method or resolve_method(backbone.family), device, plan)  # default: the family's recipe
        self.dtype = resolve_dtype(backbone.family, self.device, dtype)
        """The backbone's autocast precision that runs (``auto`` resolved: :func:`~lost_reg.recipes.resolve_dtype`)."""
        if not autocast_supported(self.device, DTYPES[self.dtype]):
            raise ValueError(f"{self.dtype} autocast does not run on {self.device} with this torch; use float32")
        if max_side is not None and max_side < backbone.patch_size:
            raise ValueError(f"max_side must be at least the patch size ({backbone.patch_size}), got {max_side}")
        self.backbone = backbone.to(self.device)
        if compile:
            self.backbone.compile_model()
        self.prep = resolve_prep(backbone.family, self.method, prep)
        """``pad`` or ``resize`` (:data:`~lost_reg.images.PREPS`); ``auto``: :func:`~lost_reg.recipes.resolve_prep`."""
        self.max_side = max_side
        self.forward_limit = BatchLimit(self.plan.backbone_chunk, "backbone call")
        """Images per backbone call; halved for good when the device runs out of memory."""

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    def prepare(self, image: np.ndarray) -> Prepared:
        """One RGB uint8 image onto this backbone's patch grid (see :func:`lost_reg.images.prepare`)."""
        return prepare(image, self.patch_size, self.max_side, self.prep)

    def localize(self, images: Sequence[np.ndarray]) -> list[Detection]:
        """Boxes for RGB uint8 images of any sizes, in input order."""
        prepared = [self.prepare(im) for im in images]
        out: dict[int, Detection] = {}
        for indices in group_by_shape(prepared).values():
            out.update(zip(indices, self.localize_prepared([prepared[i] for i in indices])))
        return [out[i] for i in range(len(prepared))]

    def localize_prepared(self, batch: Sequence[Prepared]) -> list[Detection]:
        """Boxes for prepared images that share one padded shape."""
        return self.localize_features(batch, self._forward(batch), self.patch_size)

    def localize_prepared_multi(
        self, batch: Sequence[Prepared], max_objects: int = 1, min_score: float | None = None,
        score: str = DEFAULT_SCORE, refine: str | None = None, mode: str = DEFAULT_MULTI,
    ) -> list[list[Detection]]:
        """Up to ``max_objects`` scored boxes per prepared image (one padded shape), best first; with
        ``refine`` (a :data:`~lost_reg.refine.REFINERS` name) each with its pixel mask.

        The first box is the method's; ``mode`` (:data:`lost_reg.multiobject.MULTI_MODES`) finds the others:
        ``prompts`` ranks the regions that prompts on the patch graph grow, ``iterative`` runs the method again
        on the patches earlier masks left. An image whose first box scores below ``min_score`` gets no box.
        """
        if mode not in MULTI_MODES:
            raise ValueError(f"unknown multi-object mode {mode!r}: use one of {', '.join(MULTI_MODES)}")
        find = MULTI_MODES[mode]
        features = self._forward(batch)
        found = self._discover(features, lambda patches, grid: find(
            self.method, patches, grid, max_objects=max_objects, min_score=min_score, kind=score))
        out = [[detection(p, r, self.patch_size, s) for r, s in objects] for p, objects in zip(batch, found)]
        if refine is not None:
            start = time.perf_counter()
            out = [with_masks(p, dets, self.patch_size, refine) for p, dets in zip(batch, out)]
            self.timings.masks += time.perf_counter() - start
        return out

    def forward_taps(self, batch: Sequence[Prepared], taps: Sequence[Tap]) -> dict[Tap, Features]:
        """Features of several (kind, layer) taps of prepared images of one padded shape, from one forward
        pass (the sweep reads every setting's features this way)."""
        parts = self._forward(batch, lambda x: self.backbone.taps(x, taps))
        return {tap: _concat([p[tap] for p in parts]) for tap in taps}

    def _forward(self, batch: Sequence[Prepared], run: Callable[[torch.Tensor], Any] | None = None) -> Any:
        """Backbone features of prepared images that share one padded shape (timed); with ``run``, what
        it returns, one item per backbone call (calls of at most :attr:`forward_limit` images)."""
        start = time.perf_counter()
        # each (pinned, from the engine) image straight to the device: no pageable staging copy
        pixels = torch.stack([p.pixels.to(self.device, non_blocking=True) for p in batch])
        x = normalize(pixels, [p.valid for p in batch], self.backbone.mean, self.backbone.std)

        def call(part: slice) -> Any:
            with autocast(self.device, self.dtype):
                return (run or self.backbone)(x[part])

        out = self.forward_limit.run(len(x), call)
        if self.plan.synchronize:
            synchronize(self.device)
        self.timings.forward += time.perf_counter() - start
        return out if run else _concat(out)


def _concat(parts: list[Features]) -> Features:
    """One batch of features from consecutive chunks of it."""
    if len(parts) == 1:
        return parts[0]
    return Features(patches=torch.cat([f.patches for f in parts]), prefix=torch.cat([f.prefix for f in parts]),
                    grid=parts[0].grid)


def detection(p: Prepared, r: Discovery, patch_size: int, score: float | None = None) -> Detection:
    """A method's result on the grid of a prepared image → its box in original pixels."""
    vh, vw = p.valid
    w, h = p.size
    return Detection(box=p.to_original(r.box_pixels(patch_size, vw, vh)), seed=r.seed, width=w, height=h,
                     score=score, result=r)


def with_masks(p: Prepared, dets: Sequence[Detection], patch_size: int, refine: str) -> list[Detection]:
    """One image's detections with their pixel masks (:attr:`Detection.segmentation`), refined from their grid
    masks by the ``refine`` refiner (:func:`~lost_reg.refine.refine_masks`)."""
    grids = []
    for d in dets:
        if d.result is None:
            raise ValueError("a detection read back from a file has no grid mask to refine")
        grids.append(d.result.mask)
    return [replace(d, segmentation=encode(m)) for d, m in zip(dets, refine_masks(p, grids, patch_size, refine))]


def group_by_shape(prepared: Sequence[Prepared]) -> dict[tuple[int, int], list[int]]:
    """Indices of prepared images keyed by their padded (height, width)."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, p in enumerate(prepared):
        groups[tuple(p.pixels.shape[-2:])].append(i)
    return dict(groups)


def source_of(options: ModelOptions) -> Source:
    """Where the configured backbone and its weights come from (:func:`~lost_reg.models.resolve_source`)."""
    return resolve_source(options.backbone, options.weights, options.pos_resample, **options.model_args)


@dataclass(frozen=True)
class RunPlan:
    """One job's every choice with no ``auto`` left (made by :func:`plan_run`): what builds its backbone and
    :class:`Localizer`, and what its ``summary.json`` records (``plan``)."""

    source: Source
    method: Method
    features: str
    layer: int
    prep: str
    device: str
    dtype: str
    test_time_registers: str | None = None
    max_side: int | None = None
    compile: bool = False

    def describe(self) -> dict[str, Any]:
        """The plan as ``summary.json`` records it."""
        return {"backbone": self.source.describe(), "method": {"name": self.method.name, **self.method.options()},
                **{f.name: getattr(self, f.name) for f in fields(self)[2:]}}


def plan_run(options: LocalizerOptions, source: Source | None = None) -> RunPlan:
    """The one place a job's defaults are decided: names and weights → publisher and family
    (:func:`~lost_reg.models.resolve_source`, unless ``source`` is given), the family's recipe → method and its
    options, features, layer, preparation (:func:`~lost_reg.recipes.resolve`), the device → device and dtype."""
    source = source or source_of(options)
    s = resolve(source.family, options.method, options.method_options(), options.features, options.layer,
                options.prep)
    device = resolve_device(options.device)
    return RunPlan(source, s.method, s.features, s.layer, s.prep, str(device),
                   resolve_dtype(source.family, device, options.dtype), options.test_time_registers,
                   options.max_side, options.compile)


def build_localizer(plan: RunPlan) -> Localizer:
    """The plan's backbone on its device with its method: what the CLI, the engines and the service run."""
    bb = create_backbone(plan.source, features=plan.features, layer=plan.layer,
                         test_time_registers=plan.test_time_registers)
    return Localizer(bb, plan.method, prep=plan.prep, max_side=plan.max_side, device=plan.device, dtype=plan.dtype,
                     compile=plan.compile)
