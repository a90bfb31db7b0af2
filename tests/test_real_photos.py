"""The offline DINOv2 backbone on a real photo: raw LOST fails as measured, the default finds the quokka."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from lost_reg import Localizer, Lost, TokenCut
from lost_reg.backbone import Backbone
from lost_reg.images import decode_image
from lost_reg.recipes import resolve_method

from .conftest import ROOT


def iou(box, gt) -> float:
    return float(box_iou(torch.tensor([box], dtype=torch.float), torch.tensor([gt], dtype=torch.float))[0, 0])


def test_the_recipe_localises_the_quokka_and_raw_lost_on_keys_returns_the_whole_image(offline_backbone, quokka):
    path, gt = quokka
    image = decode_image(path)
    h, w = image.shape[:2]
    default = Localizer(offline_backbone, device="cpu")  # the recipe for DINOv2: TokenCut on values, resized
    assert (default.method, offline_backbone.features, default.prep) == (TokenCut(tau=0.5), "v", "resize")
    keys = Backbone(offline_backbone.model, features="k", name=offline_backbone.name)
    raw = Localizer(keys, Lost(affinity="raw"), device="cpu")  # the paper's graph: every key pair is positive
    assert raw.prep == "pad"
    (found,) = default.localize([image])
    (whole,) = raw.localize([image])
    assert iou(found.box, gt) >= 0.5, found.box
    assert whole.box == (0, 0, w, h)
    assert found.width == w and found.height == h


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16_bit_autocast_on_the_cpu_finds_the_same_quokka(offline_backbone, quokka, dtype):
    # float16 is what GPUs without bfloat16 (T4, V100) get; current torch runs it on the CPU too
    path, gt = quokka
    image = decode_image(path)
    (fp32,) = Localizer(offline_backbone, device="cpu").localize([image])
    (half,) = Localizer(offline_backbone, device="cpu", dtype=dtype).localize([image])
    assert iou(half.box, gt) >= 0.5 and iou(half.box, fp32.box) >= 0.9, (half.box, fp32.box)


PHOTOS = sorted((ROOT / "data" / "sample_voc" / "VOC2007" / "JPEGImages").glob("*.jpg"))


@pytest.mark.parametrize("method", ["tokencut", "lost"])
def test_bfloat16_gives_the_float32_boxes_on_the_sample_photos(offline_backbone, method):
    # what --dtype auto runs on a CPU with AVX512-BF16 or AMX (and on GPUs from sm 8.0): the recipe's method and
    # --method lost, each as the recipe sets it (README, Precision and compilation)
    images = [decode_image(p) for p in PHOTOS]
    boxes = {dtype: [d.box for d in Localizer(offline_backbone, resolve_method(offline_backbone.family, method),
                                              device="cpu", dtype=dtype).localize(images)]
             for dtype in ("float32", "bfloat16")}
    assert len(images) == 5 and boxes["bfloat16"] == boxes["float32"]
