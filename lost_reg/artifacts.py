"""The registers paper's §2 artifact analysis for any timm ViT: high-norm patch tokens.

Darcet et al. (2024) find that large, long-trained ViTs (DINOv2 ViT-g, OpenCLIP, DeiT-III) turn
a few percent of their patch tokens into high-norm outliers that hold global rather than local
information, that these outliers sit on patches very similar to their neighbours (redundant
background), and that register tokens take that role over. This module measures the same on
a set of images:

* per layer, the norms of the output patch tokens (block outputs before the final norm) and of
  the prefix tokens [CLS, registers…];
* per layer, a cutoff separating high-norm outliers (:func:`outlier_cutoff`) and their share;
* for one layer's outliers, the cosine similarity of their patch embeddings (the input of the
  first block, before position embeddings) to their 4 neighbours, against that of normal patches.

Cutoff rule. The paper uses a fixed norm of 150 for DINOv2 ViT-g; norms scale with the model,
so here the cutoff comes from the data: Otsu's threshold on log-norms, re-applied to the upper
part while the upper part holds more than ``max_share`` of the tokens (Otsu splits a large mode
before isolating a small cluster). The split is accepted only if the two sides are truly
separate modes: the median norms differ by a factor ``min_gap`` or more and Ashman's D
(√2·|μ₁−μ₂| / √(σ₁²+σ₂²) on log-norms) is at least ``min_separation``. Any unimodal
distribution fails this (splitting one normal mode gives D < 3.5), so it reports no outliers.

Images are resized to ``max_side`` and cropped to whole patches (no padding tokens).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from torch import nn

from .images import normalize

MIN_GAP = 2.0
MIN_SEPARATION = 4.0
MAX_SHARE = 0.25


@dataclass
class Cutoff:
    """Where high-norm outliers start, and how clearly they separate."""

    value: float | None
    """Norm above which a token is an outlier; None when the distribution has one mode."""
    split: float
    """The (recursive) Otsu threshold, in norm units, whether accepted or not."""
    gap: float
    """Median norm above the split / median norm below it."""
    separation: float
    """Ashman's D of the two sides on log-norms."""
    share: float
    """Share of tokens above the split."""


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of 1-D values: maximises the between-class variance of a histogram split."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)[:-1].astype(np.float64)
    w1 = hist.sum() - w0
    s0 = np.cumsum(hist * centres)[:-1]
    valid = (w0 > 0) & (w1 > 0)
    mu0 = np.where(valid, s0 / np.maximum(w0, 1), 0)
    mu1 = np.where(valid, (s0[-1] + hist[-1] * centres[-1] - s0) / np.maximum(w1, 1), 0)
    between = np.where(valid, w0 * w1 * (mu0 - mu1) ** 2, -1)
    return float(edges[1:-1][int(np.argmax(between))])


def outlier_cutoff(norms: np.ndarray, min_gap: float = MIN_GAP, min_separation: float = MIN_SEPARATION,
                   max_share: float = MAX_SHARE) -> Cutoff:
    """The high-norm cutoff of a set of token norms (see the module docstring for the rule)."""
    logs = np.log(np.asarray(norms, np.float64).ravel().clip(min=1e-12))
    if logs.size < 2 or np.ptp(logs) == 0:
        return Cutoff(None, float(np.exp(logs.max())) if logs.size else 0.0, 1.0, 0.0, 0.0)
    t = otsu_threshold(logs)
    for _ in range(8):
        upper = logs[logs > t]
        if upper.size <= max_share * logs.size or upper.size < 2 or np.ptp(upper) == 0:
            break
        t = otsu_threshold(upper)
    low, high = logs[logs <= t], logs[logs > t]
    if high.size == 0:
        return Cutoff(None, float(np.exp(t)), 1.0, 0.0, 0.0)
    gap = float(np.exp(np.median(high) - np.median(low)))
    spread = np.sqrt((low.var() + high.var()) / 2)
    separation = float(np.abs(high.mean() - low.mean()) / spread) if spread > 0 else float("inf")
    share = high.size / logs.size
    ok = gap >= min_gap and separation >= min_separation and share <= max_share
    return Cutoff(float(np.exp(t)) if ok else None, float(np.exp(t)), gap, separation, share)


def neighbour_cosine(embeddings: np.ndarray) -> np.ndarray:
    """[rows, cols]: mean cosine similarity of each patch embedding [rows, cols, D] to its 4 neighbours."""
    e = np.ascontiguousarray(embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True).clip(min=1e-12))
    total = np.zeros(e.shape[:2])
    count = np.zeros(e.shape[:2])
    # vertical, then horizontal pairs (C order: each dot product sums along memory), counted for both patches
    for lead, trail in ((np.s_[1:], np.s_[:-1]), (np.s_[:, 1:], np.s_[:, :-1])):
        sim = (e[lead] * e[trail]).sum(-1)
        total[lead] += sim
        total[trail] += sim
        count[lead] += 1
        count[trail] += 1
    return total / np.maximum(count, 1)


@dataclass
class TokenStats:
    """Token norms of every layer over a set of images, and each patch's neighbour similarity."""

    patch_norms: list[list[np.ndarray]] = field(default_factory=list)
    """[layer][image] → [rows, cols] norms of the output patch tokens."""
    prefix_norms: list[list[np.ndarray]] = field(default_factory=list)
    """[layer][image] → [P] norms of [CLS, registers…]."""
    neighbour_cos: list[np.ndarray] = field(default_factory=list)
    """[image] → [rows, cols] cosine similarity of each patch embedding to its 4 neighbours."""


def normalised(crops: Iterable[torch.Tensor], device: torch.device, mean: tuple, std: tuple) -> Iterator[torch.Tensor]:
    """Uint8 [3, H, W] crops (whole patches) as the normalised [1, 3, H, W] images :func:`collect` reads."""
    return (normalize(c[None].to(device), [tuple(c.shape[-2:])], mean, std) for c in crops)


@torch.inference_mode()
def collect(model: nn.Module, images: Iterable[torch.Tensor]) -> TokenStats:
    """Run ``model`` (a timm ViT) on normalised images [1, 3, H, W] (whole patches) and gather norms."""
    depth = len(model.blocks)
    stats = TokenStats([[] for _ in range(depth)], [[] for _ in range(depth)], [])
    ps = int(model.patch_embed.patch_size[0])
    for x in images:
        rows, cols = x.shape[-2] // ps, x.shape[-1] // ps
        layers = model.forward_intermediates(x, indices=depth, return_prefix_tokens=True, norm=False,
                                             output_fmt="NLC", intermediates_only=True)
        for i, (patches, prefix) in enumerate(layers):
            stats.patch_norms[i].append(patches[0].float().norm(dim=-1).reshape(rows, cols).cpu().numpy())
            stats.prefix_norms[i].append(prefix[0].float().norm(dim=-1).cpu().numpy())
        embedded = model.patch_embed(x).float().reshape(rows, cols, -1)
        stats.neighbour_cos.append(neighbour_cosine(embedded.cpu().numpy()))
    return stats


def analyse(stats: TokenStats, num_registers: int, layer: int = -1, **cutoff_kwargs: float) -> dict:
    """The report: per-layer norms, cutoffs and outlier shares; neighbour similarity at ``layer``."""
    depth = len(stats.patch_norms)
    layer = layer % depth
    layers = []
    for i in range(depth):
        norms = np.concatenate([n.ravel() for n in stats.patch_norms[i]])
        cut = outlier_cutoff(norms, **cutoff_kwargs)
        prefix = np.stack(stats.prefix_norms[i])
        cls = prefix[:, : prefix.shape[1] - num_registers]
        layers.append({
            "layer": i, "cutoff": cut.value, "outlier_share": float((norms > cut.value).mean()) if cut.value else 0.0,
            "split": {"norm": cut.split, "gap": cut.gap, "separation": cut.separation, "share": cut.share},
            "patch_norm": {"median": float(np.median(norms)), "p99": float(np.percentile(norms, 99)),
                           "max": float(norms.max())},
            "cls_norm": float(cls.mean()) if cls.size else None,
            "register_norms": [float(v) for v in prefix[:, prefix.shape[1] - num_registers :].mean(0)],
        })
    cutoff = layers[layer]["cutoff"]
    flags = [n > cutoff if cutoff else np.zeros_like(n, dtype=bool) for n in stats.patch_norms[layer]]
    cos = np.concatenate([c.ravel() for c in stats.neighbour_cos])
    out = np.concatenate([f.ravel() for f in flags])
    return {
        "images": len(stats.neighbour_cos), "patches_per_layer": int(out.size), "registers": num_registers,
        "cutoff_rule": {"method": "recursive Otsu on log-norms, accepted for two separate modes",
                        "min_gap": cutoff_kwargs.get("min_gap", MIN_GAP),
                        "min_separation": cutoff_kwargs.get("min_separation", MIN_SEPARATION),
                        "max_share": cutoff_kwargs.get("max_share", MAX_SHARE)},
        "layers": layers,
        "outliers": {"layer": layer, "cutoff": cutoff, "count": int(out.sum()), "share": float(out.mean()),
                     "images_with_outliers": int(sum(f.any() for f in flags)),
                     "neighbour_cosine": {"outliers": float(cos[out].mean()) if out.any() else None,
                                          "normal": float(cos[~out].mean()) if (~out).any() else None}},
    }


def histogram_png(norms: np.ndarray, cutoff: float | None, title: str, cls_norm: float | None = None,
                  register_norms: Sequence[float] = (), size: tuple[int, int] = (480, 300),
                  bins: int = 60) -> np.ndarray:
    """BGR uint8 histogram of patch-token norms (log-scaled counts), with the outlier cutoff, the CLS norm
    and the register norms marked and named in a legend (matplotlib, drawn off-screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dpi = 100
    fig, ax = plt.subplots(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    ax.hist(norms, bins=bins, color="#3c6e96", log=True)
    if cutoff:
        ax.axvline(cutoff, color="#d62728", linewidth=1.5, label=f"outlier cutoff {cutoff:.3g}")
    if cls_norm is not None:
        ax.axvline(cls_norm, color="#1f3fbf", linestyle="--", linewidth=1.2, label=f"CLS {cls_norm:.3g}")
    for i, v in enumerate(register_norms):
        ax.axvline(v, color="#2ca02c", linestyle=":", linewidth=1.2,
                   label="registers" if i == 0 else None)
    ax.set_xlabel("patch-token norm (L2, block output)", fontsize=8)
    ax.set_ylabel("patches (log)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(6))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper right", frameon=False)
    fig.tight_layout(pad=0.4)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    plt.close(fig)
    return cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGR)

