"""Pictures of LOST's evidence and of prefix-token attention, on a tiny random ViT and a real photo."""

from types import SimpleNamespace

import cv2
import numpy as np
import torch

from lost_reg.backbone import prefix_attention
from lost_reg.methods.lost import lost
from lost_reg.pipeline import Localizer
from lost_reg.vis import Visualizer, figure

from .conftest import tiny_backbone
from .test_lost import block, feature_map


def test_prefix_attention_is_the_models_own_softmax():
    torch.manual_seed(0)
    bb = tiny_backbone(registers=4)
    attn = bb.model.blocks[-1].attn
    x = torch.randn(2, 3, 4 * 14, 5 * 14)
    got = prefix_attention(bb, x)
    assert got.shape == (2, 5, 3, 4, 5)
    seen = []
    attn.fused_attn = False  # the explicit path: softmax runs as a tensor method we can watch
    original = torch.Tensor.softmax
    try:
        torch.Tensor.softmax = lambda self, *a, **k: seen.append(original(self, *a, **k)) or seen[-1]
        with torch.inference_mode():
            bb.model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    finally:
        torch.Tensor.softmax = original
    want = seen[-1][:, :, :5, 5:].permute(0, 2, 1, 3).reshape(2, 5, 3, 4, 5)
    torch.testing.assert_close(got, want)
    assert bb(x).patches.shape == (2, 20, 48)  # the backbone's own hook still works afterwards


def test_figure_has_a_panel_per_map():
    (r,) = lost(feature_map(6, 8, {1: block(2, 3, 2, 3)}), (6, 8), affinity="raw")
    image = np.zeros((6 * 14, 8 * 14, 3), np.uint8)
    attention = np.random.default_rng(0).random((3, 6, 8))
    out = figure(image, (80, 100), [r], [0.3], 14, attention, num_registers=2, height=100, columns=10)
    panel_w = round(100 * 100 / 80)
    assert out.shape == (100 + 20, 5 * panel_w + 4 * 4, 3)
    assert figure(image, (84, 112), [], [], 14, height=50).shape == (70, round(112 * 50 / 84), 3)


def test_visualizer_writes_a_png_for_a_real_photo(tmp_path):
    from skimage import data

    photo = cv2.resize(data.chelsea(), (150, 100))
    path = tmp_path / "cat.png"
    cv2.imwrite(str(path), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    localizer = Localizer(tiny_backbone(registers=2), device="cpu")
    prepared = localizer.prepare(photo)
    (objects,) = localizer.localize_prepared_multi([prepared], max_objects=2)
    sample = SimpleNamespace(image_id="pets/../cat.jpg", path=path, gt_boxes=np.array([[10, 10, 90, 80]]))
    out = Visualizer(localizer, tmp_path / "vis", height=60)(sample, objects)
    assert out == tmp_path / "vis" / "pets" / "cat.jpg.png"
    picture = cv2.imread(str(out))
    assert picture.shape[0] == 2 * (60 + 20) + 4  # boxes, 1/degree, CLS, reg1 | reg2 on a second row
    plain = Visualizer(localizer, tmp_path / "vis2", attention=False, height=60)
    assert cv2.imread(str(plain(sample, [objects[0]]))).shape[0] == 80


def test_tokencut_pictures_show_its_eigenvector_with_the_foreground_bright():
    from lost_reg.methods import tokencut
    from lost_reg.vis import heat_panel

    f = feature_map(6, 8, {1: block(2, 3, 2, 3)}) + 0.05 * torch.randn(1, 48, 3)
    (r,) = tokencut(f, (6, 8), tau=0.5)
    assert r.HEAT == "eigenvector" and r.marks is None
    image = np.zeros((6 * 14, 8 * 14, 3), np.uint8)
    panel = heat_panel(image, r, 14)
    inside, outside = panel[2 * 14 + 7, 3 * 14 + 7], panel[0, 0]
    assert int(inside[0]) > int(outside[0])  # TURBO: red end for the foreground, blue for the rest
    assert figure(image, (84, 112), [r], [0.9], 14, height=50).shape == (70, 2 * round(112 * 50 / 84) + 4, 3)


def test_a_whole_image_box_shows_on_all_four_sides_and_heat_maps_carry_a_scale():
    # a 6x8 grid padded past the image (valid 80x100 of 84x112): the box spans every patch
    (r,) = lost(feature_map(6, 8, {}), (6, 8), affinity="raw")
    assert r.box == (0, 0, 8, 6)
    image = np.full((6 * 14, 8 * 14, 3), 90, np.uint8)
    out = figure(image, (80, 100), [r], [0.42], 14, height=200)
    green = np.array([40, 200, 60])
    w = round(100 * 200 / 80)
    boxes = out[20:, :w]  # the first tile, below its title band
    for edge in (boxes[:, 0], boxes[:, -1], boxes[0, :], boxes[-1, :]):  # left, right, top, bottom
        assert (np.abs(edge.astype(int) - green).sum(-1) < 60).mean() > 0.8
    band = out[:20, w + 4:]  # the heat map's title band holds the colour scale
    assert len({tuple(p) for p in band.reshape(-1, 3)}) > 40
