"""Multi-object discovery by prompts (lost_reg/multiobject.py) on planted feature maps, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lost_reg.methods import Lost, TokenCut
from lost_reg.multiobject import (BORDER, MULTI_MODES, NMS_IOU, SECOND_NMS_IOU, SECOND_TIER, VOTE_IOU, VOTES, box_iou,
                                  border_share, find_prompted, mask_iou, ncut_scores, prompt_regions)
from lost_reg.scores import find_objects, score

ROWS, COLS = 12, 16


def planted(objects: list[tuple[int, int, int, int]], seed: int = 0, noise: float = 0.05) -> torch.Tensor:
    """[1, ROWS*COLS, 16]: a background vector, one vector per object box (r0, c0, h, w), a little noise."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(torch.randn(len(objects) + 1, 16, generator=g), dim=-1)
    f = vectors[0].repeat(ROWS, COLS, 1)
    for i, (r0, c0, h, w) in enumerate(objects, 1):
        f[r0:r0 + h, c0:c0 + w] = vectors[i]
    return (f + noise * torch.randn(ROWS, COLS, 16, generator=g)).reshape(1, ROWS * COLS, 16)


FOUR = [(1, 1, 3, 3), (2, 8, 4, 3), (7, 2, 3, 5), (8, 11, 3, 3)]


def boxes_of(objects: list[tuple[int, int, int, int]]) -> set[tuple[int, int, int, int]]:
    return {(c0, r0, c0 + w, r0 + h) for r0, c0, h, w in objects}


def test_prompts_find_every_planted_object_first():
    f = planted(FOUR)
    method = TokenCut(tau=0.5)
    (found,) = find_prompted(method, f, (ROWS, COLS), max_objects=10)
    assert boxes_of(FOUR) <= {r.box for r, _ in found}
    # the four objects outrank every other region (background pieces touch the border, or are cut less cleanly)
    assert {r.box for r, _ in found[:4]} == boxes_of(FOUR)


@pytest.mark.parametrize("method", [TokenCut(tau=0.5), TokenCut(tau=0.2), Lost(20, "cos:0.2")])
def test_one_object_is_exactly_the_methods_answer_and_its_score(method):
    f = torch.cat([planted(FOUR, seed=s, noise=0.3) for s in range(3)])
    for mode in MULTI_MODES:
        single = MULTI_MODES[mode](method, f, (ROWS, COLS), max_objects=1)
        for (r, s), (old, old_s) in zip([x[0] for x in single], [x[0] for x in find_objects(method, f, (ROWS, COLS))]):
            assert r.box == old.box and (r.mask == old.mask).all() and r.seed == old.seed and s == old_s


@pytest.mark.parametrize("cap", [2, 3, 5, 50])
def test_cap_order_masks_and_no_duplicates(cap):
    torch.manual_seed(0)
    f = torch.cat([planted(FOUR, noise=0.3), torch.randn(1, ROWS * COLS, 16)])
    method = TokenCut(tau=0.3)
    firsts = method(f, (ROWS, COLS))
    for objects, first in zip(find_prompted(method, f, (ROWS, COLS), max_objects=cap), firsts):
        assert 1 <= len(objects) <= cap
        assert objects[0][0].box == first.box  # the method's object leads
        scores = [s for _, s in objects]
        assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
        masks = torch.from_numpy(np.stack([r.mask.reshape(-1) for r, _ in objects]))
        others = ~torch.eye(len(masks), dtype=torch.bool)
        assert (mask_iou(masks, masks)[others] <= SECOND_NMS_IOU).all()
        # the first tier (every score ≥ −BORDER; the second tier's are below) duplicates nothing, by mask or box
        top = masks[torch.tensor(scores) >= -BORDER]
        others = ~torch.eye(len(top), dtype=torch.bool)
        assert (mask_iou(top, top)[others] <= NMS_IOU).all() and (box_iou(top, (ROWS, COLS))[others] <= NMS_IOU).all()
        for r, _ in objects:
            assert r.mask.shape == (ROWS, COLS) and r.mask.any() and r.mask[r.seed]
            ys, xs = np.nonzero(r.mask)
            assert r.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert r.heat.shape == (ROWS, COLS)


def test_an_object_in_another_ones_box_is_found_and_ranked_after_the_first_tier():
    """A square inside a ring (their boxes at IoU 0.56, their masks apart): both found, after the separate object."""
    g = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    f = vectors[0].repeat(ROWS, COLS, 1)
    f[1:9, 1:9], f[2:8, 2:8], f[2:5, 11:14] = vectors[1], vectors[2], vectors[3]
    f = (f + 0.05 * torch.randn(ROWS, COLS, 16, generator=g)).reshape(1, ROWS * COLS, 16)
    (found,) = find_prompted(TokenCut(tau=0.5), f, (ROWS, COLS), max_objects=10)
    by_mask = {(r.box, int(r.mask.sum())): s for r, s in found}
    square, ring, apart = by_mask[(2, 2, 8, 8), 36], by_mask[(1, 1, 9, 9), 28], by_mask[(11, 2, 14, 5), 9]
    assert max(square, ring) < -BORDER <= apart  # the second tier: below every first-tier score


def test_scores_are_the_cut_less_the_border_plus_the_votes():
    f = planted(FOUR, noise=0.3)
    method = TokenCut(tau=0.4)
    (found,) = find_prompted(method, f, (ROWS, COLS), max_objects=50)
    ((regions, counts),) = prompt_regions(f, (ROWS, COLS))
    for r, s in found[1:]:
        mask = torch.from_numpy(r.mask.reshape(1, -1))
        votes = int(counts[mask_iou(mask, regions)[0] > VOTE_IOU].sum())
        expected = score(r, features=f[0], method=method) - BORDER * float(border_share(mask, (ROWS, COLS))[0]) \
            + VOTES * np.log(votes)
        assert s == pytest.approx(expected, abs=1e-4) or s == pytest.approx(expected - SECOND_TIER, abs=1e-4)
    assert 1 <= sum(s < -BORDER for _, s in found) < len(found) - 4  # both tiers are there


def test_min_score_empties_images_where_nothing_stands_out_and_keeps_clear_objects():
    torch.manual_seed(0)
    flat = torch.ones(1, ROWS * COLS, 16)  # an all-black image: every patch alike
    texture = flat + 0.2 * torch.randn(1, ROWS * COLS, 16)  # a texture: patches alike up to noise
    method = TokenCut(tau=0.5)
    empty = find_prompted(method, torch.cat([flat, texture]), (ROWS, COLS), max_objects=10, min_score=0.6)
    assert empty == [[], []]
    (kept,) = find_prompted(method, planted(FOUR), (ROWS, COLS), max_objects=10, min_score=0.6)
    assert boxes_of(FOUR) <= {r.box for r, _ in kept} and all(s >= 0.6 for _, s in kept)
    (alone,) = find_prompted(method, flat, (ROWS, COLS), max_objects=10)  # without --min-score: the whole image, once
    assert len(alone) == 1 and alone[0][0].mask.all()


def test_min_score_gates_the_image_on_its_objects_cut_not_its_votes():
    """Textures' regions are found by many prompts too: the image's gate is the method's object's cut less border."""
    f = planted(FOUR, noise=0.3)
    method = TokenCut(tau=0.4)
    (first,) = method(f, (ROWS, COLS))
    mask = torch.from_numpy(first.mask.reshape(1, -1))
    cut = score(first, features=f[0], method=method) - BORDER * float(border_share(mask, (ROWS, COLS))[0])
    (ranked,) = find_prompted(method, f, (ROWS, COLS), max_objects=10)
    assert ranked[0][1] > cut + 0.01  # its votes (and the raise to the best region) lift its score
    assert find_prompted(method, f, (ROWS, COLS), max_objects=10, min_score=cut + 0.005) == [[]]
    (kept,) = find_prompted(method, f, (ROWS, COLS), max_objects=10, min_score=cut - 0.005)
    assert kept[0][0].box == first.box and all(s >= cut - 0.005 for _, s in kept)


def test_batched_equals_one_image_at_a_time():
    torch.manual_seed(1)
    f = torch.cat([planted(FOUR, seed=s, noise=0.2) for s in range(3)])
    method = TokenCut(tau=0.5)
    together = find_prompted(method, f, (ROWS, COLS), max_objects=8)
    for i in range(3):
        (alone,) = find_prompted(method, f[i:i + 1], (ROWS, COLS), max_objects=8)
        assert [r.box for r, _ in alone] == [r.box for r, _ in together[i]]
        assert [s for _, s in alone] == pytest.approx([s for _, s in together[i]], abs=1e-5)


def test_tiny_grids_and_regions():
    method = TokenCut(tau=0.5)
    for grid in [(1, 1), (1, 3), (2, 2)]:
        f = torch.randn(2, grid[0] * grid[1], 8)
        for objects in find_prompted(method, f, grid, max_objects=5):
            assert 1 <= len(objects) <= 5
    ((regions, counts),) = prompt_regions(planted(FOUR), (ROWS, COLS), components="torch")
    ((same, same_counts),) = prompt_regions(planted(FOUR), (ROWS, COLS), components="scipy")
    assert torch.equal(regions, same) and torch.equal(counts, same_counts)


def test_batched_ncut_equals_the_score_of_one_mask():
    f = planted(FOUR, noise=0.3)
    method = TokenCut(tau=0.4)
    (r,) = method(f, (ROWS, COLS))
    batched = ncut_scores(torch.from_numpy(r.mask.reshape(1, -1)), method.cut_graph(f[0]).float())
    assert float(batched[0]) == pytest.approx(score(r, features=f[0], method=method), abs=1e-5)
    with pytest.raises(ValueError, match="max_objects"):
        find_prompted(method, f, (ROWS, COLS), max_objects=0)


def test_localizer_on_bad_images_and_both_modes():
    from lost_reg.images import prepare
    from lost_reg.pipeline import Localizer
    from lost_reg.refine import refine_masks

    from .conftest import tiny_backbone

    localizer = Localizer(tiny_backbone(features="v"), TokenCut(tau=0.2), prep="resize", max_side=112, device="cpu")
    rng = np.random.default_rng(0)
    images = {"black": np.zeros((60, 90, 3), np.uint8), "noise": rng.integers(0, 256, (70, 70, 3), dtype=np.uint8),
              "huge": rng.integers(0, 256, (1500, 900, 3), dtype=np.uint8),  # downscaled by max_side
              "one patch": rng.integers(0, 256, (14, 20, 3), dtype=np.uint8)}
    for name, image in images.items():
        p = prepare(image, 14, 112, "resize")
        single = localizer.localize_prepared_multi([p], max_objects=1)[0]
        for mode in MULTI_MODES:
            (objects,) = localizer.localize_prepared_multi([p], max_objects=4, mode=mode)
            assert 1 <= len(objects) <= 4, name
            assert objects[0].box == single[0].box and objects[0].score >= single[0].score - 0.5
            for d in objects:
                x0, y0, x1, y1 = d.box
                assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
                mask = refine_masks(p, [d.result.mask], 14, "guided")[0]
                assert mask.shape == image.shape[:2]
    with pytest.raises(ValueError, match="multi-object mode"):
        localizer.localize_prepared_multi([prepare(images["noise"], 14)], max_objects=2, mode="magic")


def test_discover_takes_the_mode_by_name(tmp_path, capsys):
    import json

    import cv2
    from skimage import data

    from lost_reg.cli import main

    from .test_discover import TINY_ARGS

    image = tmp_path / "cat.jpg"
    cv2.imwrite(str(image), cv2.cvtColor(cv2.resize(data.chelsea(), (90, 60)), cv2.COLOR_RGB2BGR))
    boxes = {}
    for mode in MULTI_MODES:
        out = tmp_path / f"{mode}.jsonl"
        assert main(["discover", str(image), "--out", str(out), "--format", "jsonl", "--max-objects", "5",
                     "--multi", mode, *TINY_ARGS]) == 0
        boxes[mode] = [o["box"] for o in json.loads(out.read_text())["objects"]]
        assert 1 <= len(boxes[mode]) <= 5
    assert boxes["prompts"][0] == boxes["iterative"][0]
    with pytest.raises(SystemExit):
        main(["discover", str(image), "--out", str(tmp_path / "x.jsonl"), "--multi", "magic", *TINY_ARGS])
    assert "--multi" in capsys.readouterr().err
