"""The torch flood fill (``components="torch"``) finds exactly scipy's seed component."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from lost_reg.methods.components import seed_components
from lost_reg.methods.lost import lost


def scipy_component(fg: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    labels, _ = ndimage.label(fg)
    if labels[seed]:
        return labels == labels[seed]
    mask = np.zeros_like(fg)
    mask[seed] = True
    return mask


@pytest.mark.parametrize("density", [0.3, 0.5, 0.6, 0.8])
@pytest.mark.parametrize("shape", [(27, 36), (36, 27), (1, 17), (13, 1), (5, 5)])
def test_flood_fill_matches_scipy_on_random_masks(density, shape):
    rng = np.random.default_rng(hash((density, shape)) % 2**32)
    b = 24
    fg = rng.random((b, *shape)) < density
    seeds = rng.integers(0, shape[0] * shape[1], b)
    # half the seeds inside the foreground (the usual case), the rest wherever they fell
    for i in range(0, b, 2):
        inside = np.flatnonzero(fg[i])
        if len(inside):
            seeds[i] = rng.choice(inside)
    got = seed_components(torch.from_numpy(fg), torch.from_numpy(seeds)).numpy()
    for i in range(b):
        want = scipy_component(fg[i], divmod(int(seeds[i]), shape[1]))
        np.testing.assert_array_equal(got[i], want, err_msg=f"image {i}")


def test_flood_fill_follows_a_long_snake():
    # a one-patch-wide serpentine: many turns, one component; a separate blob stays out
    fg = np.zeros((11, 12), bool)
    for r in range(0, 11, 2):
        fg[r, :10] = True
        fg[r + 1 if r + 1 < 11 else r, 9 if (r // 2) % 2 == 0 else 0] = True
    fg[:, 11] = True  # separated from the snake by column 10
    got = seed_components(torch.from_numpy(fg[None]), torch.tensor([0])).numpy()[0]
    np.testing.assert_array_equal(got, scipy_component(fg, (0, 0)))
    assert not got[:, 11].any()


@pytest.mark.parametrize("affinity", ["raw", "cosine-mean"])
def test_lost_gives_the_same_results_with_either_component_labelling(affinity):
    torch.manual_seed(0)
    f = torch.randn(6, 9 * 11, 16) + 0.3 * torch.randn(6, 1, 16)
    f[0, 5] = 0  # a zero feature vector: the seed gets no vote and stands alone
    want = lost(f, (9, 11), k_patches=20, affinity=affinity, components="scipy")
    got = lost(f, (9, 11), k_patches=20, affinity=affinity, components="torch")
    for w, g in zip(want, got):
        assert (w.seed, w.box) == (g.seed, g.box)
        np.testing.assert_array_equal(w.mask, g.mask)
        np.testing.assert_array_equal(w.degree, g.degree)
        np.testing.assert_array_equal(w.expansion, g.expansion)


def test_unknown_component_backend_is_an_error():
    with pytest.raises(ValueError, match="components must be one of scipy, torch"):
        lost(torch.randn(1, 4, 3), (2, 2), components="opencv")
