"""The object is the 4-connected component of a foreground map that holds the seed (LOST, TokenCut).

``scipy``: ``ndimage.label`` per image on the CPU (its default structure is 4-connected).
``torch``: :func:`seed_components`, a batched flood fill on the map's device; same masks
(tests/test_components.py), so a GPU run need not copy whole maps to the host first.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

COMPONENTS = ("scipy", "torch")


def check_components(components: str) -> None:
    if components not in COMPONENTS:
        raise ValueError(f"components must be one of {', '.join(COMPONENTS)}, got {components!r}")


def seed_masks(fg: torch.Tensor, seed: torch.Tensor, components: str = "scipy") -> np.ndarray:
    """bool [B, rows, cols]: the component of ``fg`` [B, rows, cols] holding each flattened ``seed`` [B].

    A seed outside the foreground (possible in LOST when the seed gets no vote) is its object alone.
    """
    check_components(components)
    if components == "torch":
        return seed_components(fg, seed).cpu().numpy()
    fg_np, seeds = fg.cpu().numpy(), seed.cpu().numpy()
    cols = fg_np.shape[2]
    out = np.zeros_like(fg_np)
    for i, (f, s) in enumerate(zip(fg_np, seeds)):
        at = divmod(int(s), cols)
        labels, _ = ndimage.label(f)
        if labels[at]:
            out[i] = labels == labels[at]
        else:
            out[i][at] = True
    return out


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of a non-empty bool [rows, cols] mask, max exclusive."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def seed_components(fg: torch.Tensor, seed: torch.Tensor) -> torch.Tensor:
    """bool [B, rows, cols]: the 4-connected component of ``fg`` [B, rows, cols] holding each seed.

    ``seed`` [B] is a flattened (row-major) index; a seed outside ``fg`` gets itself alone. A
    batched flood fill on ``fg``'s device: each step marks every horizontal run of ``fg`` that
    touches a marked patch, then every vertical run, until nothing changes (a handful of steps:
    one per turn of the component, not one per patch).
    """
    b, rows, cols = fg.shape
    start = torch.zeros(b, rows * cols, dtype=torch.bool, device=fg.device)
    start.scatter_(1, seed.view(b, 1), True)
    start = start.view(b, rows, cols)
    marked = start & fg
    while True:
        before = marked
        marked = _fill_runs(fg, marked)
        marked = _fill_runs(fg.transpose(1, 2), marked.transpose(1, 2)).transpose(1, 2)
        if torch.equal(marked, before):
            return marked | start


def _fill_runs(fg: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
    """Marks every run of ``fg`` along the last axis that holds a marked patch."""
    fg = fg.contiguous()
    flat = fg.view(-1)
    starts = fg & torch.nn.functional.pad(~fg[..., :-1], (1, 0), value=True)  # a run begins here
    run = torch.where(flat, starts.view(-1).cumsum(0), 0)  # run number (from 1) of each fg patch
    hit = torch.zeros(flat.numel() + 1, dtype=torch.bool, device=fg.device)
    hit.index_fill_(0, torch.where(marked.reshape(-1), run, 0), True)  # slot 0 collects the rest
    return (hit[run] & flat).view(fg.shape)
