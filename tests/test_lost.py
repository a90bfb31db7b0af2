"""LOST on hand-built feature maps whose answer is known."""

import numpy as np
import pytest
import torch

from lost_reg.methods import Lost, TokenCut
from lost_reg.methods.lost import affinity_matrix, lost


def feature_map(rows: int, cols: int, objects: dict[int, list[tuple[int, int]]], bg=(1.0, 0.0, 0.0)) -> torch.Tensor:
    """[1, rows*cols, 3]: background patches share one vector, each object's patches another."""
    f = torch.tensor(bg).repeat(rows * cols, 1)
    for vec_index, cells in objects.items():
        v = torch.zeros(3)
        v[vec_index] = 1.0
        for r, c in cells:
            f[r * cols + c] = v
    return f[None]


def block(r0: int, c0: int, h: int, w: int) -> list[tuple[int, int]]:
    return [(r, c) for r in range(r0, r0 + h) for c in range(c0, c0 + w)]


def test_single_object_box_seed_and_mask():
    f = feature_map(6, 8, {1: block(2, 3, 2, 3)})
    (res,) = lost(f, (6, 8), affinity="raw")
    assert res.seed == (2, 3)  # lowest degree; first in row-major order among equals
    assert res.box == (3, 2, 6, 4)
    assert res.mask.sum() == 6 and res.mask[2:4, 3:6].all()
    assert res.degree[2, 3] == 5 and res.degree[0, 0] == 6 * 8 - 6 - 1  # diagonal excluded
    assert res.expansion.sum() == 6


def test_ties_go_to_lowest_index_and_component_is_4_connected():
    # two equal objects; the seed is the first in row-major order, the box covers its component only
    f = feature_map(6, 6, {1: block(4, 0, 2, 2) + block(0, 4, 2, 2)})
    (res,) = lost(f, (6, 6), affinity="raw")
    assert res.seed == (0, 4)
    assert res.box == (4, 0, 6, 2)
    # diagonal neighbours are not connected
    f = feature_map(4, 4, {1: [(1, 1), (2, 2)]})
    (res,) = lost(f, (4, 4), affinity="raw")
    assert res.seed == (1, 1) and res.box == (1, 1, 2, 2)


def test_k_patches_limits_the_voters():
    f = feature_map(5, 5, {1: block(1, 1, 2, 2)})
    (res,) = lost(f, (5, 5), k_patches=1, affinity="raw")
    assert res.expansion.sum() == 1 and res.expansion[1, 1]
    assert res.box == (1, 1, 3, 3)


def test_raw_returns_whole_image_when_all_similarities_are_positive_and_centering_fixes_it():
    # every pair of patches correlates positively (as DINOv2 keys do): raw LOST sees no structure
    f = feature_map(6, 6, {1: block(1, 2, 2, 2)})
    f = f + torch.tensor([2.0, 0.0, 0.0])
    assert (affinity_matrix(f, "raw") > 0).all()
    (raw,) = lost(f, (6, 6), affinity="raw")
    assert raw.box == (0, 0, 6, 6)
    for affinity in ("centered", "cosine-mean"):
        (res,) = lost(f, (6, 6), affinity=affinity)
        assert res.box == (2, 1, 4, 3), affinity


def test_recipes_keep_the_paper_setting_for_dino_v1_only():
    from lost_reg.models import resolve_source
    from lost_reg.recipes import resolve

    family = resolve_source("vit_small_patch16_224.dino").family  # DINO v1 weights, wherever they come from
    dino = resolve(family)
    assert (dino.method, dino.features, dino.layer, dino.prep) == (Lost(100, "raw"), "k", -1, "pad")
    other = resolve(resolve_source("vit_small_patch14_reg4_dinov2.lvd142m").family)
    assert other.method != dino.method
    assert resolve(family, "lost", {"affinity": "centered"}).method == Lost(100, "centered")
    assert resolve(family, "tokencut").method == TokenCut()  # not the recipe's: own defaults
    assert resolve("other", "lost", {"affinity": "raw"}, prep="auto").prep == "pad"  # the reference graph pads
    with pytest.raises(ValueError, match="tau does not apply"):
        resolve(family, options={"tau": 0.3})


def test_fixed_bias_is_subtracted_from_the_gram_matrix():
    f = torch.randn(2, 12, 5)
    a = affinity_matrix(f, "bias:0.5")
    assert torch.allclose(a, f @ f.transpose(1, 2) - 0.5)
    g = torch.nn.functional.normalize(f, dim=-1)
    assert torch.allclose(affinity_matrix(f, "cos:0.3"), g @ g.transpose(1, 2) - 0.3)
    with pytest.raises(ValueError, match="unknown affinity"):
        affinity_matrix(f, "cosine")


@pytest.mark.parametrize("affinity", ["bias:nan", "bias:inf", "bias:1e30", "bias:", "cos:1.5", "cos:-inf", "auto",
                                      "wobbly"])
def test_bad_affinities_are_refused(affinity):
    with pytest.raises(ValueError, match="affinity"):
        Lost(affinity=affinity)


def test_batch_equals_single_images():
    torch.manual_seed(0)
    f = torch.randn(3, 7 * 9, 16)
    batched = lost(f, (7, 9), k_patches=10, affinity="centered")
    for i in range(3):
        (single,) = lost(f[i : i + 1], (7, 9), k_patches=10, affinity="centered")
        assert single.box == batched[i].box and single.seed == batched[i].seed
        np.testing.assert_array_equal(single.mask, batched[i].mask)


def test_exclude_removes_patches_from_the_graph():
    f = feature_map(6, 6, {1: block(0, 0, 2, 2), 2: block(3, 3, 3, 3)})
    (first,) = lost(f, (6, 6), affinity="raw")
    assert first.box == (0, 0, 2, 2)
    exclude = torch.zeros(1, 36, dtype=torch.bool)
    exclude[0, torch.from_numpy(first.mask.reshape(-1))] = True
    (second,) = lost(f, (6, 6), affinity="raw", exclude=exclude)
    assert second.box == (3, 3, 6, 6)


def test_box_pixels_clips_to_the_image():
    f = feature_map(3, 3, {1: block(2, 2, 1, 1)})
    (res,) = lost(f, (3, 3), affinity="raw")
    assert res.box_pixels(16, width=40, height=44) == (32, 32, 40, 44)


def test_grid_mismatch_is_an_error():
    with pytest.raises(ValueError, match="grid"):
        lost(torch.randn(1, 10, 4), (3, 3))


@pytest.mark.parametrize("affinity", ["centered", "cosine-mean"])
def test_kept_patches_form_the_graph_of_the_kept_features_alone(affinity):
    # the references (mean patch, mean similarity) come from the kept patches only
    torch.manual_seed(1)
    f = torch.randn(1, 20, 8) + 2.0
    keep = torch.ones(1, 20, dtype=torch.bool)
    keep[0, 3:9] = False
    a = affinity_matrix(f, affinity, keep=keep)[0]
    alone = affinity_matrix(f[:, keep[0]], affinity)[0]
    torch.testing.assert_close(a[keep[0]][:, keep[0]], alone)
    assert not a[~keep[0]].any() and not a[:, ~keep[0]].any()
