"""A faithful numpy/scipy statement of TokenCut's reference code, the oracle of the tests and benchmarks.

The reference (github.com/YangtaoWANG95/TokenCut, ``object_discovery.py``, ``ncut``) solves the dense
generalised problem with ``scipy.linalg.eigh(D - A, D, subset_by_index=[1, 2])``. Plain numpy and scipy
only (no pytest), so ``bench/`` can import it on a machine without the test tools.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy import ndimage

DEGENERATE = 1e-6


def reference_tokencut(feats: np.ndarray, grid: tuple[int, int], tau: float = 0.2, eps: float = 1e-5):
    """The reference's box (patch units) and (λ₂, λ₃) for one image's patch features [N, D]."""
    f = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
    a = f @ f.T
    a = a > tau
    a = np.where(a.astype(float) == 0, eps, a)
    d = np.diag(np.sum(a, axis=1))
    values, vectors = scipy.linalg.eigh(d - a, d, subset_by_index=[1, 2])
    second = vectors[:, 0]
    bipartition = second > np.sum(second) / len(second)
    seed = np.argmax(np.abs(second))
    if bipartition[seed] != 1:
        bipartition = np.logical_not(bipartition)
    objects, _ = ndimage.label(bipartition.reshape(grid).astype(float))
    ys, xs = np.where(objects == objects[np.unravel_index(seed, grid)])
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), (float(values[0]), float(values[1]))
