"""How each cell's setting is chosen: the protocols of ``lost-reg table``, one table of them.

A protocol turns a backbone into rows, each with the settings its cells choose among: one (the setting is
fixed) or a grid (chosen on ``--select-on``). Every setting is a :class:`~lost_reg.sweep.SweepSetting`, so a
cell's predictions are what ``lost-reg eval`` with the setting's flags writes.

- ``recipe``: the backbone family's recipe (:mod:`lost_reg.recipes`), exactly ``eval``'s ``auto``.
- ``paper``: LOST as the registers paper states it (Darcet et al., ICLR 2024, Sec. 3.3): keys for DINOv2,
  values for DeiT-III and OpenCLIP (keys for DINO v1, as the LOST paper), last block, k = 100, the papers'
  zero-padding; a "raw gram" row (LOST's own graph, bias 0) and a "bias grid" row, since the bias the paper
  adds to the gram matrix is unpublished. Its scale on an unnormalised gram differs per model, so the grid
  is taken on L2-normalised features (LOST's ``cos:T``, T = −b), where a bias means the same for every
  backbone, as its follow-up does.
- ``best``: Jiang et al. 2025's search: keys, queries and values × the last four blocks × a bias b in
  [−1, 0] on L2-normalised features (``cos:T``, T = −b), LOST with k = 100, zero-padded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..checkpoints import PUBLISHERS
from ..methods import Method
from ..methods.lost import check_affinity
from ..models import Source
from ..recipes import resolve, resolve_method
from ..sweep import Row, SweepSetting, expand

K_PATCHES = 100
"""LOST's k, as its paper and both registers papers use it."""
PREP = "pad"
"""The papers' preparation: LOST's code zero-pads to whole patches (README, Preparation)."""
KEY_PUBLISHERS = ("dino", "hf-vit-dino", "dinov2", "dinov2-reg", "hf-dinov2", "hf-dinov2-reg")
"""Publishers (:data:`~lost_reg.checkpoints.PUBLISHERS`) whose models ``paper`` reads keys of: DINO (the LOST
paper) and DINOv2 (the registers paper); every other model (DeiT-III, OpenCLIP…) gives values."""
BEST_FEATURES = ("k", "q", "v")
BEST_LAYERS = (-4, -3, -2, -1)


@dataclass(frozen=True)
class RowPlan:
    """One row of a backbone: what is added to its name, and the settings its cells choose among."""

    part: str
    candidates: tuple[SweepSetting, ...]
    optional: bool = False
    """Left out, with a note, when the table has no ``--select-on`` to choose among the candidates."""

    @property
    def fixed(self) -> bool:
        return len(self.candidates) == 1


@dataclass(frozen=True)
class Protocol:
    """A way of choosing each cell's setting, and where it comes from."""

    name: str
    summary: str
    rows: Callable[[Source, Sequence[float]], list[RowPlan]]


def graphs(biases: Sequence[float]) -> list[str]:
    """LOST's graph for each gram bias b on L2-normalised features: ``cos:T`` with T = −b."""
    out = [f"cos:{0.0 - round(b, 10):g}" for b in biases]
    for affinity in out:
        check_affinity(affinity)
    return out


def parse_biases(text: str) -> list[float]:
    """``--biases``: a comma list or ranges of gram biases b in [−1, 1] (the papers' grid: [−1, 0])."""
    values = expand(text, float)
    bad = [b for b in values if not -1 <= b <= 1]
    if bad:
        raise ValueError(f"--biases: {bad[0]:g} is outside [-1, 1], the range of a bias on cosine similarities")
    return values


def _lost(family: str, affinity: str) -> Method:
    return resolve_method(family, "lost", {"k_patches": K_PATCHES, "affinity": affinity})


def paper_features(source: Source) -> str:
    """What the registers paper reads for this model: keys for DINO and DINOv2 weights, values for the others."""
    key = next((k for k, p in PUBLISHERS.items() if p is source.publisher), None)
    return "k" if key in KEY_PUBLISHERS else "v"


def _recipe(source: Source, biases: Sequence[float]) -> list[RowPlan]:
    s = resolve(source.family)
    return [RowPlan("", (SweepSetting(s.prep, s.features, s.layer, s.method),))]


def _paper(source: Source, biases: Sequence[float]) -> list[RowPlan]:
    f, family = paper_features(source), source.family
    raw = SweepSetting(PREP, f, -1, _lost(family, "raw"))
    grid = tuple(SweepSetting(PREP, f, -1, _lost(family, g)) for g in graphs(biases))
    return [RowPlan("raw gram", (raw,)), RowPlan("bias grid", grid, optional=True)]


def _best(source: Source, biases: Sequence[float]) -> list[RowPlan]:
    grid = tuple(SweepSetting(PREP, f, layer, _lost(source.family, g))
                 for f in BEST_FEATURES for layer in BEST_LAYERS for g in graphs(biases))
    return [RowPlan("", grid)]


PROTOCOLS: dict[str, Protocol] = {
    "recipe": Protocol("recipe", "each backbone family's recipe (README, Defaults), one setting per cell, as "
                                 "`lost-reg eval` runs it", _recipe),
    "paper": Protocol("paper", "LOST as Darcet et al. (ICLR 2024, Sec. 3.3) state it: keys for DINO/DINOv2, values "
                               "for the others, last block, k 100, zero-padded; the raw gram, and a grid of gram "
                               "biases b (on L2-normalised features: cos:T, T = -b) since the paper's is unpublished",
                      _paper),
    "best": Protocol("best", "Jiang et al. 2025's search: keys/queries/values x the last 4 blocks x gram bias b on "
                             "L2-normalised features (cos:T, T = -b), LOST k 100, zero-padded", _best),
}


def choose(results: dict[SweepSetting, Row], candidates: Sequence[SweepSetting]) -> SweepSetting:
    """The candidate with the highest CorLoc (then fewer whole-image boxes, then higher mean IoU; then the first)."""
    return min(candidates, key=lambda s: (-results[s].corloc.corloc, results[s].whole, -results[s].mean_iou))
