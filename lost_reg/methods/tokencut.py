"""TokenCut (Wang et al., CVPR 2022): the object is one side of a normalised cut of the patch graph.

Patches are nodes; two patches are linked (weight 1) when the cosine similarity of their
features exceeds τ, else weakly (weight ε, so the graph stays connected). The normalised cut
(Shi & Malik) is relaxed to the generalised eigenproblem (D − W) x = λ D x; its second-smallest
eigenvector x splits the patches at its mean: x > mean(x) is one side. The patch with the largest
|x| is the *seed* and its side is the foreground (the bipartition is flipped if needed). The
object is the 4-connected component of the foreground holding the seed, and its box is the box
of that component.

This follows the reference (github.com/YangtaoWANG95/TokenCut, ``object_discovery.py``, ``ncut``)
on the patch tokens alone: the prefix [CLS, registers…] is dropped by the backbone, where the
reference drops exactly one token. Differences, all documented: the eigenvector comes from a
batched torch solver (:mod:`.spectral`) instead of scipy's dense one, same boxes wherever λ₂ is
not degenerate; a graph with every edge above τ (no cut exists, all eigenvectors are equally
good) gives x = 0 and so the whole image, where the reference returns whatever LAPACK picks.

Sign: x and −x are both eigenvectors. The result does not depend on the one the solver returns
(the seed is picked by |x|, and its side is made the foreground); :attr:`TokenCutResult.heat`
is x oriented so the foreground is positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..devices import graph_code, plan_for
from .base import Discovery, Method, option
from .components import COMPONENTS, check_components, mask_box, seed_masks
from .spectral import SOLVERS, check_solver, fiedler


@dataclass
class TokenCutResult(Discovery):
    """TokenCut's answer for one image, on the patch grid."""

    eigenvector: np.ndarray
    """float [rows, cols]: the second-smallest generalised eigenvector, foreground side positive."""
    eigenvalues: tuple[float, float]
    """(λ₂, λ₃): λ₂ is the relaxed Ncut value; λ₃ − λ₂ near 0 means an ambiguous cut."""

    HEAT = "eigenvector"

    @property
    def heat(self) -> np.ndarray:
        return self.eigenvector


def cosine_graph(features: torch.Tensor, tau: float, eps: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """W [B, N, N]: 1 where the cosine similarity exceeds ``tau``, else ``eps``; 0 for removed patches."""
    f = torch.nn.functional.normalize(features.float(), dim=-1)
    w = torch.bmm(f, f.transpose(1, 2)).gt_(tau).mul_(1 - eps).add_(eps)  # in place: W is the largest tensor here
    if keep is not None:
        w.masked_fill_(~keep[:, :, None], 0).masked_fill_(~keep[:, None, :], 0)
    return w


@graph_code
def tokencut(
    features: torch.Tensor,
    grid: tuple[int, int],
    tau: float = 0.2,
    eps: float = 1e-5,
    exclude: torch.Tensor | None = None,
    solver: str = "lanczos",
    components: str = "scipy",
    batched: bool | None = None,
) -> list[TokenCutResult]:
    """Run TokenCut on a batch of patch features [B, rows*cols, D] that share one grid shape.

    ``exclude`` (bool [B, N]) takes patches out of the graph; every image must keep one patch.
    ``batched``: solve the batch's graphs at once, or one image at a time; None: as the plan in force
    says (:attr:`~lost_reg.devices.DevicePlan.batched_graphs`, by default the features' device's: at
    once on a GPU, one at a time on the CPU, where one image's N×N graph stays in cache). An image
    leaves the batched solver as it converges, so it takes the same steps as alone; only rounding
    differs, which can change a box only where the cut is near-degenerate (λ₃ ≈ λ₂: any answer is
    as good).
    """
    check_components(components)
    rows, cols = grid
    b, n, _ = features.shape
    if n != rows * cols:
        raise ValueError(f"features hold {n} patches but the grid is {rows}x{cols}")
    if not (plan_for(features.device).batched_graphs if batched is None else batched) and b > 1:
        return [r for i in range(b) for r in tokencut(features[i:i + 1], grid, tau, eps,
                                                       None if exclude is None else exclude[i:i + 1], solver,
                                                       components)]
    keep = torch.ones(b, n, dtype=torch.bool, device=features.device) if exclude is None else ~exclude
    w = cosine_graph(features, tau, eps, None if exclude is None else keep)
    cut = fiedler(w, solver)
    # no weak edge, nothing to cut: every kept row sums to the number of kept patches (weak edges add ε < 0.5)
    complete = ((cut.degree > keep.sum(-1, keepdim=True) - 0.5) | ~keep).all(-1)
    x = torch.where(complete[:, None] | ~keep, 0.0, cut.vector)

    mean = x.sum(-1, keepdim=True) / keep.sum(-1, keepdim=True)
    side = x > mean
    seed = torch.where(keep, x.abs(), -1.0).argmax(-1)
    flip = ~side.gather(1, seed[:, None])[:, 0]
    fg = torch.where(flip[:, None], ~side, side) & keep
    x = torch.where(flip[:, None], -x, x)

    masks = seed_masks(fg.view(b, rows, cols), seed, components)
    x, seed, lam = x.cpu().numpy(), seed.cpu().numpy(), cut.eigenvalues.cpu().numpy()
    return [
        TokenCutResult(seed=divmod(int(s), cols), box=mask_box(mask), mask=mask,
                       eigenvector=xi.reshape(rows, cols), eigenvalues=(float(li[0]), float(li[1])))
        for mask, s, xi, li in zip(masks, seed, x, lam)
    ]


@dataclass(frozen=True)
class TokenCut(Method):
    """TokenCut with its options; ``TokenCut(tau=0.2, eps=1e-5)`` is the paper's setting."""

    name = "tokencut"

    tau: float = option(0.2, "link two patches when their feature cosine exceeds this", minimum=-1, maximum=1)
    eps: float = option(1e-5, "weight of the other pairs (keeps the graph connected)", exclusiveMinimum=0,
                        exclusiveMaximum=1)
    solver: str = option("lanczos", "eigenvector solver: lanczos (iterative, fast) or eigh (dense, exact)", SOLVERS)
    components: str = option("scipy", "how the seed's component is found: scipy (CPU) or torch (on the device)",
                             COMPONENTS)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tau) and -1 <= self.tau <= 1):
            raise ValueError(f"tau is a cosine threshold in [-1, 1], got {self.tau}")
        if not (math.isfinite(self.eps) and 0 < self.eps < 1):
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        check_solver(self.solver)
        check_components(self.components)

    def __call__(self, features: torch.Tensor, grid: tuple[int, int],
                 exclude: torch.Tensor | None = None) -> list[TokenCutResult]:
        return tokencut(features, grid, self.tau, self.eps, exclude, self.solver, self.components)

    def cut_graph(self, features: torch.Tensor) -> torch.Tensor:
        """TokenCut's own graph W (self-loops included, as in its degree matrix D)."""
        return cosine_graph(features[None], self.tau, self.eps)[0]
