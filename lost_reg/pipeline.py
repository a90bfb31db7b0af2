"""Images in, boxes in original-image pixels out: backbone + LOST, batched on one device.

The CLI and the service both drive a :class:`Localizer`; images of one padded shape go
through the backbone together, so callers group by :attr:`Prepared.pixels` shape (see
:func:`group_by_shape`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from .backbone import Backbone
from .images import Prepared, normalize, prepare
from .lost import AFFINITIES, LostResult, lost

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LostConfig:
    """LOST's options (see :mod:`lost_reg.lost`)."""

    k_patches: int = 100
    affinity: str = "centered"
    max_side: int | None = None

    def __post_init__(self) -> None:
        if self.k_patches < 1:
            raise ValueError("k_patches must be at least 1")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError("max_side must be positive")
        if self.affinity not in AFFINITIES and not _is_bias(self.affinity):
            raise ValueError(f"affinity must be one of {', '.join(AFFINITIES)} or bias:VALUE, got {self.affinity!r}")


def _is_bias(affinity: str) -> bool:
    name, _, value = affinity.partition(":")
    try:
        float(value)
    except ValueError:
        return False
    return name == "bias"


@dataclass
class Detection:
    """One image's object box in original pixels, with LOST's evidence on the patch grid."""

    box: tuple[int, int, int, int]
    """(x0, y0, x1, y1) in original-image pixels, max exclusive, clipped to the image."""
    seed: tuple[int, int]
    width: int
    height: int
    lost: LostResult = field(repr=False)


@dataclass
class Timings:
    """Seconds spent per stage, summed over calls."""

    forward: float = 0.0
    lost: float = 0.0
    images: int = 0


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


class Localizer:
    """A backbone on a device plus LOST's configuration."""

    def __init__(
        self, backbone: Backbone, config: LostConfig | None = None, device: str = "auto", dtype: str = "float32"
    ) -> None:
        self.device = resolve_device(device)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        if dtype != "float32" and self.device.type != "cuda":
            raise ValueError(f"{dtype} runs on CUDA only; use float32 on {self.device.type}")
        self.backbone = backbone.to(self.device)
        self.config = config or LostConfig()
        self.dtype = dtype
        self.timings = Timings()

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    def prepare(self, image: np.ndarray) -> Prepared:
        """Pad (and resize past ``max_side``) one RGB uint8 image for this backbone."""
        return prepare(image, self.patch_size, self.config.max_side)

    def localize(self, images: Sequence[np.ndarray]) -> list[Detection]:
        """Boxes for RGB uint8 images of any sizes, in input order."""
        prepared = [self.prepare(im) for im in images]
        out: list[Detection | None] = [None] * len(prepared)
        for indices in group_by_shape(prepared).values():
            for i, det in zip(indices, self.localize_prepared([prepared[i] for i in indices])):
                out[i] = det
        return out  # type: ignore[return-value]

    def localize_prepared(self, batch: Sequence[Prepared]) -> list[Detection]:
        """Boxes for prepared images that share one padded shape."""
        start = time.perf_counter()
        pixels = torch.stack([p.pixels for p in batch]).to(self.device, non_blocking=True)
        x = normalize(pixels, [p.valid for p in batch], self.backbone.mean, self.backbone.std)
        with torch.autocast(self.device.type, dtype=DTYPES[self.dtype], enabled=self.dtype != "float32"):
            features = self.backbone(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        mid = time.perf_counter()
        results = lost(features.patches, features.grid, self.config.k_patches, self.config.affinity)
        self.timings.forward += mid - start
        self.timings.lost += time.perf_counter() - mid
        self.timings.images += len(batch)
        return [self._detection(p, r) for p, r in zip(batch, results)]

    def _detection(self, p: Prepared, r: LostResult) -> Detection:
        vh, vw = p.valid
        x0, y0, x1, y1 = r.box_pixels(self.patch_size, vw, vh)
        w, h = p.size
        s = p.scale
        box = (int(round(x0 / s)), int(round(y0 / s)), min(w, int(round(x1 / s))), min(h, int(round(y1 / s))))
        return Detection(box=box, seed=r.seed, width=w, height=h, lost=r)


def group_by_shape(prepared: Sequence[Prepared]) -> dict[tuple[int, int], list[int]]:
    """Indices of prepared images keyed by their padded (height, width)."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, p in enumerate(prepared):
        groups[tuple(p.pixels.shape[-2:])].append(i)
    return dict(groups)
