"""The timm adapter: patch tokens only, whatever the number of registers; weights from files."""

from __future__ import annotations

import os

import pytest
import torch

from lost_reg import BackboneError, create_backbone
from lost_reg.models import create_model

from .conftest import TINY, tiny_backbone


def manual_qkv(model, x: torch.Tensor, layer: int) -> torch.Tensor:
    """qkv of block ``layer`` computed step by step, independently of the hook."""
    h = model.norm_pre(model._pos_embed(model.patch_embed(x)))
    for blk in model.blocks[:layer]:
        h = blk(h)
    return model.blocks[layer].attn.qkv(model.blocks[layer].norm1(h))


@pytest.mark.parametrize("registers", [0, 1, 4])
@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_prefix_tokens_are_stripped(registers: int, kind: str):
    bb = tiny_backbone(registers, features=kind, layer=1)
    assert bb.num_registers == registers and bb.num_prefix_tokens == 1 + registers
    x = torch.randn(2, 3, 5 * 14, 7 * 14)
    out = bb(x)
    assert out.grid == (5, 7)
    assert out.patches.shape == (2, 35, 48) and out.prefix.shape == (2, 1 + registers, 48)
    with torch.no_grad():
        qkv = manual_qkv(bb.model, x, 1)
    expect = qkv[..., "qkv".index(kind) * 48 : ("qkv".index(kind) + 1) * 48]
    torch.testing.assert_close(out.patches, expect[:, 1 + registers :])
    torch.testing.assert_close(out.prefix, expect[:, : 1 + registers])


def test_tokens_and_earlier_layer():
    bb = tiny_backbone(4, features="tokens", layer=0)
    x = torch.randn(1, 3, 28, 42)
    out = bb(x)
    with torch.no_grad():
        tokens = bb.model.blocks[0](bb.model.norm_pre(bb.model._pos_embed(bb.model.patch_embed(x))))
    torch.testing.assert_close(out.patches, tokens[:, 5:])


def test_input_must_fit_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_backbone()(torch.randn(1, 3, 30, 28))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_round_trip(tmp_path, suffix):
    ref = create_model("vit_small_patch14_reg4_dinov2", "random", **TINY)
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    else:
        torch.save({"model": ref.state_dict()}, path)
    bb = create_backbone("vit_small_patch14_reg4_dinov2", path, **TINY)
    x = torch.randn(1, 3, 42, 56)
    ref_bb = create_backbone("vit_small_patch14_reg4_dinov2", "random", **TINY)
    ref_bb.model.load_state_dict(ref.state_dict())
    torch.testing.assert_close(bb(x).patches, ref_bb(x).patches)


def test_dino_training_checkpoint_layout(tmp_path):
    """Original DINO checkpoints nest the ViT under teacher/backbone. with a module. prefix."""
    ref = create_model("vit_small_patch16_224", "random", **TINY)
    path = tmp_path / "dino.pth"
    torch.save({"teacher": {f"module.backbone.{k}": v for k, v in ref.state_dict().items()}, "epoch": 1}, path)
    state = torch.load(path, weights_only=True)["teacher"]
    assert all(k.startswith("module.backbone.") for k in state)
    bb = create_backbone("vit_small_patch16_224", path, **TINY)
    torch.testing.assert_close(bb.model.pos_embed, ref.pos_embed)


def test_weight_errors_are_one_clear_line(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot read weights"):
        create_backbone("vit_small_patch14_dinov2", bad, **TINY)
    with pytest.raises(BackboneError, match="not found"):
        create_backbone("vit_small_patch14_dinov2", tmp_path / "missing.pth", **TINY)
    other = tmp_path / "other.pth"
    torch.save(create_model("vit_small_patch14_dinov2", "random", depth=1, embed_dim=32, num_heads=2).state_dict(), other)
    with pytest.raises(BackboneError, match="do not fit"):
        create_backbone("vit_small_patch14_dinov2", other, **TINY)
    with pytest.raises(BackboneError, match="unknown backbone"):
        create_backbone("vit_tiny_nonexistent_patch99")


def test_unknown_names_get_the_closest_vit_names():
    with pytest.raises(BackboneError, match=r"closest names: vit_small_patch14_reg4_dinov2, "):
        create_backbone("vit_small_patch14_reg4_dinov3")
    with pytest.raises(BackboneError, match="closest names: dinov2_vits14_imgfocus"):
        create_backbone("dinov2_vits14_imgfocux")
    with pytest.raises(BackboneError, match="closest names: dinov2_vits14_reg, "):
        create_backbone("dinov2_vits14_rag")
    with pytest.raises(BackboneError, match=r"no pretrained tag 'lvd142x'; it has: vit_small_patch14_reg4_dinov2\.lvd142m"):
        create_backbone("vit_small_patch14_reg4_dinov2.lvd142x")


def test_unreachable_hub_says_what_to_do():
    with pytest.raises(BackboneError, match="--weights FILE") as err:
        create_backbone("vit_small_patch14_reg4_dinov2.lvd142m", None, **TINY)
    assert "\n" not in str(err.value)


def test_an_unreachable_hub_fails_fast_with_one_line(tmp_path):
    """Without HF_HUB_OFFLINE and without network the download used to retry for ~50 s, printing 10 lines."""
    import socket
    import subprocess
    import sys
    import time

    from .conftest import ROOT

    with socket.socket() as s:  # a port nobody listens on: connections are refused at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "LOST_REG_"))}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(tmp_path / "hf"))
    command = [sys.executable, "-c", "import sys; from lost_reg.cli import main; sys.exit(main(sys.argv[1:]))",
               "eval", "--dataset", "voc07", "--root", str(ROOT / "data" / "sample_voc"), "--out", str(tmp_path / "o"),
               "--backbone", "vit_small_patch14_reg4_dinov2.lvd142m", "--quiet"]
    start = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - start < 30
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: could not fetch pretrained weights") and "is unreachable" in line
    assert "--weights FILE" in line
