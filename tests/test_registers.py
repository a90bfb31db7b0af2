"""Test-time registers on a tiny ViT with a planted register neuron that writes high-norm tokens."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from lost_reg.backbone import Backbone
from lost_reg.errors import BackboneError
from lost_reg.models import create_model
from lost_reg.registers import RegisterNeurons, attach, find_register_neurons

from .conftest import TINY

PLANTED = (1, 5)
"""(block, hidden unit) of the planted register neuron."""
BRIGHT = [(0, 1), (2, 3), (3, 0)]
"""(row, col) of the bright patches on a 4 x 5 grid: where the neuron fires."""


def planted_model(registers: int = 0) -> torch.nn.Module:
    """A 3-block ViT whose unit PLANTED fires on bright patches and adds a huge vector to them (an outlier).

    The patch embedding has no bias, so a dark patch (−2) and a bright one (+2) get opposite embeddings of one
    norm: nothing stands out until the planted unit fires."""
    model = create_model("vit_small_patch14_dinov2", "random", **{**TINY, "depth": 3}, reg_tokens=registers)
    with torch.no_grad():
        model.patch_embed.proj.weight[0] = 5.0 / (3 * 14 * 14)  # channel 0 = 5 × mean intensity
        model.patch_embed.proj.bias.zero_()
        model.pos_embed[..., 0] = 0
        block, unit = PLANTED
        mlp = model.blocks[block].mlp
        mlp.fc1.weight[unit] = 0
        mlp.fc1.weight[unit, 0] = 5.0
        mlp.fc1.bias[unit] = -10.0
        mlp.fc2.weight[:, unit] = 20.0
        model.blocks[block].ls2.gamma.fill_(1.0)
    return model.eval()


def images(n: int = 4, seed: int = 0) -> list[torch.Tensor]:
    """Normalised [1, 3, 56, 70] images: dark (−2) with BRIGHT patches at +2, and a little noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = -2.0 + 0.05 * rng.standard_normal((1, 3, 56, 70)).astype(np.float32)
        for r, c in BRIGHT:
            x[..., r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] += 4.0
        out.append(torch.from_numpy(x))
    return out


def block_output(model: torch.nn.Module, x: torch.Tensor, block: int) -> torch.Tensor:
    out = {}
    handle = model.blocks[block].register_forward_hook(lambda m, a, o: out.__setitem__("x", o))
    with torch.inference_mode():
        model.forward_intermediates(x, indices=[block], stop_early=True, intermediates_only=True)
    handle.remove()
    return out["x"]


def test_find_recovers_the_planted_neuron_and_the_register_removes_the_outliers():
    model = planted_model()
    data = images()
    neurons = find_register_neurons(model, lambda: iter(data), backbone="tiny", weights="planted")
    assert neurons.layers == {PLANTED[0]: [PLANTED[1]]} and neurons.stats["top_k"] == 1
    assert neurons.stats["outlier_share_before"] == pytest.approx(3 / 20)
    assert neurons.stats["outlier_share_after_on_trial_images"] == 0.0

    before = [block_output(model, x, 2) for x in data]
    detach = attach(model, neurons)
    after = [block_output(model, x, 2) for x in data]
    for b, a in zip(before, after):
        patches_b, patches_a = b[0, 1:], a[0, 2:]  # CLS | (test-time register) | 20 patches
        norms_b, norms_a = patches_b.norm(dim=-1), patches_a.norm(dim=-1)
        bright = torch.tensor([r * 5 + c for r, c in BRIGHT])
        dark = torch.tensor([i for i in range(20) if i not in bright])
        assert norms_b[bright].min() > 20 * norms_b[dark].max()  # the planted outliers
        assert norms_a.max() < 2 * norms_b[dark].max()  # gone
        assert a[0, 1].norm() > 20 * norms_a.max()  # the test-time register holds the outlier now
        cos = torch.nn.functional.cosine_similarity(patches_a[dark], patches_b[dark], dim=-1)
        assert cos.min() > 0.99  # the other patches barely change
    detach()
    assert torch.equal(block_output(model, data[0], 2), before[0]) and model.num_prefix_tokens == 1


@pytest.mark.parametrize("registers", [0, 1, 4])
def test_the_test_time_register_joins_the_prefix_and_a_batch_equals_single_images(registers):
    model = planted_model(registers)
    attach(model, RegisterNeurons("tiny", "planted", {PLANTED[0]: [PLANTED[1]]}, 2, None))
    bb = Backbone(model, features="tokens")
    assert (bb.num_prefix_tokens, bb.num_registers, bb.test_time_registers) == (1 + registers + 1, registers + 1, 1)
    batch = torch.cat(images(4, seed=1))
    batch[1:] += 0.3 * torch.randn(3, 3, 56, 70)  # four different images
    together = bb(batch)
    assert together.patches.shape == (4, 20, 48) and together.grid == (4, 5)
    for i in range(4):
        alone = bb(batch[i:i + 1])
        torch.testing.assert_close(alone.patches[0], together.patches[i], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(alone.prefix[0], together.prefix[i], rtol=1e-4, atol=1e-4)


def test_no_outliers_is_a_clear_error_and_neurons_must_fit_the_model():
    model = create_model("vit_small_patch14_dinov2", "random", **TINY)
    data = [0.1 * torch.randn(1, 3, 56, 70) for _ in range(3)]
    with pytest.raises(BackboneError, match="nothing for test-time registers to move"):
        find_register_neurons(model, lambda: iter(data), backbone="tiny", weights="random")
    neurons = RegisterNeurons("tiny", "w1", {0: [500]}, 0, 1.0)
    with pytest.raises(BackboneError, match="past its 192 hidden units"):
        attach(model, neurons)
    with pytest.raises(BackboneError, match="found for tiny, not other"):
        neurons.check("other", "w1")
    with pytest.raises(BackboneError, match="other weights"):
        neurons.check("tiny", "w2")
    preset = RegisterNeurons.load("preset:dinov2_vitl14")
    assert preset.backbone == "vit_large_patch14_dinov2.lvd142m" and preset.count == 45
    assert sorted(preset.layers) == [12, 13, 14, 15, 16, 17] and "nickjiang2378" in preset.source


def test_the_cli_finds_neurons_and_every_command_takes_them(tmp_path, capsys):
    from safetensors.torch import save_file

    from lost_reg.cli import main

    weights = tmp_path / "planted.safetensors"
    save_file({k: v.contiguous() for k, v in planted_model().state_dict().items()}, str(weights))
    photos = tmp_path / "photos"
    photos.mkdir()
    mean = np.array([124, 116, 104])  # ImageNet's mean colour: ± 100 around it normalise to opposite values
    for i in range(4):  # dark with light 14 x 14 squares on the bright patches (what `images` holds, as photos)
        pixels = np.broadcast_to(mean - 100 + i, (56, 70, 3)).astype(np.uint8).copy()  # four slightly different
        for r, c in BRIGHT:
            pixels[r * 14:(r + 1) * 14, c * 14:(c + 1) * 14] = mean + 100
        cv2.imwrite(str(photos / f"{i}.png"), pixels[..., ::-1])
    model = ["--backbone", "vit_small_patch14_dinov2", "--weights", str(weights), "--device", "cpu",
             *[a for k, v in {**TINY, "depth": 3}.items() for a in ("--model-arg", f"{k}={v}")]]
    neurons = tmp_path / "neurons.json"
    assert main(["registers", "find", str(photos), "--out", str(neurons), "--quiet", *model]) == 0
    found = json.loads(neurons.read_text())
    assert found["layers"] == {str(PLANTED[0]): [PLANTED[1]]} and found["weights"].startswith("file sha256 ")
    assert "1 register neurons" in capsys.readouterr().out

    shares = {}
    for name, extra in (("without", []), ("with", ["--test-time-registers", str(neurons)])):
        out = tmp_path / f"artifacts_{name}"
        assert main(["artifacts", str(photos), "--out", str(out), "--quiet", *model, *extra]) == 0
        report = json.loads((out / "report.json").read_text())
        shares[name] = report["layers"][2]["outlier_share"]
        assert report["backbone"]["test_time_registers"] == (1 if extra else 0)
        assert report["backbone"]["test_time_register_neurons"] == (str(neurons) if extra else None)
    assert shares == {"without": pytest.approx(3 / 20), "with": 0.0}
    run = tmp_path / "discover.jsonl"
    assert main(["discover", str(photos), "--out", str(run), "--format", "jsonl", "--quiet",
                 "--test-time-registers", str(neurons), *model]) == 0
    assert len(run.read_text().splitlines()) == 4
    other = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() + 0 for k, v in planted_model().state_dict().items()}
              | {"cls_token": torch.ones(1, 1, 48)}, str(other))
    assert main(["discover", str(photos), "--out", str(run), "--quiet", "--test-time-registers", str(neurons),
                 *[str(other) if a == str(weights) else a for a in model]]) == 2
    assert "other weights" in capsys.readouterr().err

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(backbone="vit_small_patch14_dinov2", weights=str(weights), device="cpu",
                        model_args={**TINY, "depth": 3}, test_time_registers=str(neurons))
    with TestClient(create_app(settings)) as client:
        info = client.get("/v1/model").json()
        assert (info["registers"], info["test_time_registers"]) == (1, 1)
        upload = [("images", ("a.png", (photos / "0.png").read_bytes(), "image/png"))]
        assert client.post("/v1/boxes", files=upload).status_code == 200
