"""The offline DINOv2 backbone on a real photo: raw LOST fails as measured, the default finds the quokka."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from lost_reg import Localizer, Lost
from lost_reg.images import decode_image


def iou(box, gt) -> float:
    return float(box_iou(torch.tensor([box], dtype=torch.float), torch.tensor([gt], dtype=torch.float))[0, 0])


def test_default_affinity_localises_the_quokka_and_raw_returns_the_whole_image(offline_backbone, quokka):
    path, gt = quokka
    image = decode_image(path)
    h, w = image.shape[:2]
    default = Localizer(offline_backbone, device="cpu")  # the recipe for DINOv2
    raw = Localizer(offline_backbone, Lost(affinity="raw"), device="cpu")
    (found,) = default.localize([image])
    (whole,) = raw.localize([image])
    assert iou(found.box, gt) >= 0.5, found.box
    assert whole.box == (0, 0, w, h)
    assert found.width == w and found.height == h


def test_bfloat16_on_the_cpu_finds_the_same_quokka(offline_backbone, quokka):
    path, gt = quokka
    image = decode_image(path)
    (fp32,) = Localizer(offline_backbone, device="cpu").localize([image])
    (bf16,) = Localizer(offline_backbone, device="cpu", dtype="bfloat16").localize([image])
    assert iou(bf16.box, gt) >= 0.5 and iou(bf16.box, fp32.box) >= 0.9, (bf16.box, fp32.box)
    with pytest.raises(ValueError, match="float16 runs on CUDA only"):
        Localizer(offline_backbone, device="cpu", dtype="float16")
