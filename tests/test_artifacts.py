"""High-norm token analysis: the cutoff rule on known distributions, and a tiny ViT with planted outliers."""

import numpy as np
import pytest
import torch

from lost_reg.artifacts import (
    analyse,
    collect,
    histogram_png,
    neighbour_cosine,
    otsu_threshold,
    outlier_cutoff,
)

from .conftest import tiny_backbone

rng = np.random.default_rng(0)


@pytest.mark.parametrize("norms", [
    np.exp(rng.normal(3, 0.2, 5000)),       # log-normal, narrow
    np.exp(rng.normal(3, 0.6, 5000)),       # log-normal, wide
    rng.normal(50, 10, 5000).clip(1),       # normal
    rng.exponential(10, 5000) + 0.1,        # long right tail
    rng.uniform(1, 100, 5000),
], ids=["lognormal-narrow", "lognormal-wide", "normal", "exponential", "uniform"])
def test_one_mode_gives_no_outliers(norms):
    assert outlier_cutoff(norms).value is None


@pytest.mark.parametrize("share,factor", [(0.02, 10), (0.003, 10), (0.05, 3)])
def test_a_separate_high_mode_is_cut_off(share, factor):
    n_out = int(10000 * share)
    normal = np.exp(rng.normal(3, 0.15, 10000 - n_out))
    high = np.exp(rng.normal(3 + np.log(factor), 0.1, n_out))
    cut = outlier_cutoff(np.concatenate([normal, high]))
    assert cut.value is not None and np.percentile(normal, 99.9) < cut.value < high.min()
    assert cut.share == pytest.approx(share, abs=0.001)


def test_otsu_splits_two_clusters():
    values = np.concatenate([np.zeros(100), np.ones(50) * 10])
    assert 0 < otsu_threshold(values) < 10


def test_neighbour_cosine_of_a_uniform_region_is_one_and_of_a_lone_patch_lower():
    e = np.ones((4, 5, 3))
    e[2, 2] = [1, -1, 0]
    cos = neighbour_cosine(e)
    assert cos[0, 0] == pytest.approx(1.0)
    assert cos[2, 2] == pytest.approx(0.0)
    assert cos[1, 2] == pytest.approx((3 + 0) / 4)


def test_planted_high_norm_tokens_are_found_on_a_tiny_vit():
    torch.manual_seed(0)
    bb = tiny_backbone(registers=2)
    model = bb.model
    planted = [3, 17, 40]  # patch indices scaled ×30 at the last block's output

    def plant(module, args, out):
        out = out.clone()
        out[:, [model.num_prefix_tokens + i for i in planted]] *= 30
        return out

    model.blocks[-1].register_forward_hook(plant)
    images = [torch.randn(1, 3, 7 * 14, 8 * 14) for _ in range(4)]
    stats = collect(model, images)
    report = analyse(stats, bb.num_registers)
    assert len(report["layers"]) == 2 and report["images"] == 4 and report["patches_per_layer"] == 4 * 56
    last, first = report["layers"][-1], report["layers"][0]
    assert last["cutoff"] is not None and last["outlier_share"] == pytest.approx(3 / 56)
    assert first["cutoff"] is None and first["outlier_share"] == 0.0
    assert len(last["register_norms"]) == 2 and last["cls_norm"] > 0
    flagged = stats.patch_norms[-1][0].ravel() > last["cutoff"]
    assert sorted(np.nonzero(flagged)[0]) == planted
    out = report["outliers"]
    assert out["count"] == 12 and out["images_with_outliers"] == 4
    assert out["neighbour_cosine"]["outliers"] is not None and out["neighbour_cosine"]["normal"] is not None
    png = histogram_png(stats.patch_norms[-1][0].ravel(), last["cutoff"], "layer 1", last["cls_norm"],
                        last["register_norms"])
    assert png.shape == (300, 480, 3) and png.dtype == np.uint8
