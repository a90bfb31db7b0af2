"""Scores of discovered boxes and multi-object discovery, on hand-built feature maps."""

import numpy as np
import pytest
import torch

from lost_reg.methods import Lost, LostResult, lost
from lost_reg.scores import DEFAULT_SCORE, SCORES, find_objects, score

from .test_lost import block, feature_map


def test_an_object_on_plain_background_scores_above_noise():
    torch.manual_seed(0)
    easy = feature_map(12, 12, {1: block(4, 5, 3, 3)}) + 0.05 * torch.randn(1, 144, 3)
    hard = torch.randn(1, 144, 3)  # nothing stands out
    (e,) = lost(easy, (12, 12), k_patches=20, affinity="centered")
    (h,) = lost(hard, (12, 12), k_patches=20, affinity="centered")
    assert e.box == (5, 4, 8, 7)
    method = Lost(20, "centered")
    assert score(e, features=easy[0], method=method) > 0.9 and score(h, features=hard[0], method=method) < 0.6
    for kind in SCORES:
        assert np.isfinite(score(e, kind=kind, features=easy[0], method=method))
        assert np.isfinite(score(h, kind=kind, features=hard[0], method=method))
    for kind in ("seed", "neighbourhood", "mask"):
        assert score(e, kind=kind) > score(h, kind=kind)


def test_ncut_score_bounds():
    f = feature_map(6, 6, {1: block(1, 1, 2, 2)})
    (r,) = lost(f, (6, 6), affinity="raw")
    method = Lost(affinity="raw")
    assert score(r, features=f[0], method=method) == pytest.approx(1.0)  # no edge between object and background
    everything = np.zeros((6, 6), bool)
    everything[1:3, 1:3] = True
    assert score(r, everything, features=f[0], method=method) == 0.0  # the mask is all that is left
    torch.manual_seed(0)
    noise = torch.randn(1, 36, 8)
    lone = LostResult(seed=(2, 2), box=(2, 2, 3, 3), mask=np.eye(6, dtype=bool) & (np.arange(6) == 2),
                      degree=np.zeros((6, 6), int), expansion=np.zeros((6, 6), bool))
    assert 0 < score(lone, features=noise[0], method=method) <= 0.5
    with pytest.raises(ValueError, match="features"):
        score(r)
    with pytest.raises(ValueError, match="method"):
        score(r, features=f[0])


def test_scores_ignore_removed_patches_and_reject_unknown_kinds():
    f = feature_map(6, 6, {1: block(1, 1, 2, 2)})
    (r,) = lost(f, (6, 6), affinity="raw")
    active = np.ones((6, 6), bool)
    active[:, 4:] = False
    assert score(r, active, "seed") == pytest.approx((np.median(r.degree[active]) - r.degree[1, 1]) / 23)
    assert score(r, None, "fill") == 1.0
    with pytest.raises(ValueError, match="unknown score"):
        score(r, kind="confidence")
    assert DEFAULT_SCORE in SCORES


@pytest.mark.parametrize("affinity", ["raw", "centered", "cosine-mean"])
def test_two_blobs_are_found_one_after_the_other(affinity):
    f = feature_map(10, 12, {1: block(1, 1, 3, 3), 2: block(5, 7, 4, 4)})
    (found,) = find_objects(Lost(30, affinity), f, (10, 12), max_objects=2)
    boxes = [r.box for r, _ in found]
    assert sorted(boxes) == sorted([(1, 1, 4, 4), (7, 5, 11, 9)])
    (first,) = lost(f, (10, 12), k_patches=30, affinity=affinity)
    assert found[0][0].box == first.box and found[0][0].seed == first.seed
    assert not (found[0][0].mask & found[1][0].mask).any()


def test_min_score_stops_on_plain_background_and_may_leave_an_image_without_box():
    f = feature_map(8, 8, {1: block(2, 2, 2, 2), 2: block(5, 5, 2, 2)})
    plain = torch.tensor([1.0, 0.0, 0.0]).repeat(1, 64, 1)
    found = find_objects(Lost(10, "raw"), torch.cat([f, plain]), (8, 8), max_objects=4, min_score=0.01)
    assert len(found[0]) == 2 and all(s >= 0.01 for _, s in found[0])
    assert found[1] == []


def test_stops_when_no_patch_is_left():
    f = feature_map(2, 2, {})
    (found,) = find_objects(Lost(affinity="raw"), f, (2, 2), max_objects=10)
    assert 1 <= len(found) <= 4
    covered = np.zeros((2, 2), bool)
    for r, _ in found:
        assert not (covered & r.mask).any()
        covered |= r.mask
    with pytest.raises(ValueError):
        find_objects(Lost(), f, (2, 2), max_objects=0)
