"""Features equal to the upstream models', from every checkpoint layout users hold.

Each upstream model (Meta's DINOv2 and DINO's code at ../shared/upstream; Hugging Face transformers) is
built small with seeded random weights plus noise (so zero-initialised tokens and LayerScale matter),
saved the way its users get it, loaded with ``--weights``, and its last block's keys, queries, values
and output tokens are compared with lost_reg's at non-square and odd sizes, where the position table
is resampled. The resampling statements below are short transcriptions of each upstream
``interpolate_pos_encoding`` (cited by file), checked against :mod:`lost_reg.posembed` alone.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lost_reg import BackboneError, create_backbone
from lost_reg.models import resolve_source
from lost_reg.posembed import resample_table

from .conftest import ROOT

UPSTREAM = ROOT.parent / "shared" / "upstream"
TOL = 1e-3  # float32, features of magnitude ~10: a wrong resampling moves them by O(0.1–1)
KINDS = ("k", "q", "v", "tokens")


# ------------------------------------------------------------------ resampling, as each upstream states it

def dino_statement(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """facebookresearch/dino vision_transformer.py, interpolate_pos_encoding (and Meta's DINOv2 with
    interpolate_offset=0.1, interpolate_antialias=False): scale factors (n + 0.1) / sqrt(N), bicubic."""
    n = pos.shape[1]
    if h * w == n and h == w:
        return pos
    m = int(math.sqrt(n))
    grid = pos.reshape(1, m, m, -1).permute(0, 3, 1, 2)
    out = F.interpolate(grid, scale_factor=((h + 0.1) / math.sqrt(n), (w + 0.1) / math.sqrt(n)), mode="bicubic")
    return out.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])


def size_statement(antialias: bool):
    """Meta's DINOv2 with interpolate_offset=0 (size=(h, w), antialias as given); transformers' Dinov2Model
    and ViTModel (size, no antialias) and Dinov2WithRegistersModel (size, antialias=True)."""
    def resample(pos: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n = pos.shape[1]
        if h * w == n and h == w:
            return pos
        m = int(math.sqrt(n))
        grid = pos.reshape(1, m, m, -1).permute(0, 3, 1, 2).float()
        out = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
        return out.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])
    return resample


STATEMENTS = {"dino": dino_statement, "hf": size_statement(False), "timm": size_statement(True)}


@pytest.mark.parametrize("how", list(STATEMENTS))
@pytest.mark.parametrize("m,h,w", [(37, 27, 36), (37, 37, 37), (37, 41, 29), (14, 13, 7), (14, 30, 20), (8, 5, 11)])
def test_resampling_follows_each_upstream_statement(how, m, h, w):
    pos = torch.randn(1, m * m, 24, generator=torch.Generator().manual_seed(m + h + w))
    torch.testing.assert_close(resample_table(pos, (m, m), (h, w), how), STATEMENTS[how](pos, h, w),
                               rtol=0, atol=1e-6)


def test_the_three_resamplings_differ_where_it_matters():
    pos = torch.randn(1, 37 * 37, 8, generator=torch.Generator().manual_seed(0))
    out = {how: resample_table(pos, (37, 37), (27, 36), how) for how in STATEMENTS}
    assert (out["dino"] - out["hf"]).abs().max() > 0.05 and (out["hf"] - out["timm"]).abs().max() > 0.05


# ------------------------------------------------------------------------------ upstream models and hooks

@pytest.fixture(scope="module")
def upstream():
    if not (UPSTREAM / "dinov2" / "models").is_dir() or not (UPSTREAM / "dino").is_dir():
        pytest.skip(f"upstream model code not at {UPSTREAM}")
    return load_upstream()


def load_upstream() -> argparse.Namespace:
    """Meta's dinov2 package and DINO's vision_transformer module, read in place."""
    for path in (str(UPSTREAM), str(UPSTREAM / "dino")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "xFormers is not available"
        from dinov2.models.vision_transformer import DinoVisionTransformer
        import vision_transformer as dino_vit
    return argparse.Namespace(DinoVisionTransformer=DinoVisionTransformer, dino=dino_vit)


def noisy(model: nn.Module, seed: int, scale: float = 0.2) -> nn.Module:
    """Seeded weights plus noise on every parameter: zero-initialised tokens and LayerScale matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def meta_dinov2(upstream, registers: int = 0, noise: float = 0.2, **kwargs) -> nn.Module:
    """A small Meta DINOv2 ViT as Meta's hub builds it: offset 0.1 and no antialias without registers,
    offset 0 and antialias with them (dinov2/hub/backbones.py)."""
    kw = dict(patch_size=14, img_size=14 * 8, embed_dim=128, depth=2, num_heads=2, init_values=1.0, block_chunks=0,
              num_register_tokens=registers, interpolate_antialias=bool(registers),
              interpolate_offset=0.0 if registers else 0.1)
    return noisy(upstream.DinoVisionTransformer(**{**kw, **kwargs}), seed=registers + 1, scale=noise)


def dino_v1(upstream, noise: float = 0.2, **kwargs) -> nn.Module:
    """A small DINO ViT as dino's vit_small: qkv bias, LayerNorm eps 1e-6 (vision_transformer.py)."""
    kw = dict(img_size=[16 * 6], patch_size=16, embed_dim=128, depth=2, num_heads=2)
    return noisy(upstream.dino.VisionTransformer(**{**kw, **kwargs}, qkv_bias=True,
                                                 norm_layer=partial(nn.LayerNorm, eps=1e-6)), seed=7, scale=noise)


def tapped(model: nn.Module, qkv: str, block: str, prefix: int, run) -> dict[str, torch.Tensor]:
    """Patch-token k, q, v (heads concatenated) and output tokens of ``block`` while ``run()`` runs."""
    out: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    handles = [modules[qkv].register_forward_hook(lambda m, a, o: out.__setitem__("qkv", o)),
               modules[block].register_forward_hook(
                   lambda m, a, o: out.__setitem__("tokens", o[0] if isinstance(o, tuple) else o))]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    q, k, v = out["qkv"][:, prefix:].chunk(3, dim=-1)
    return {"q": q, "k": k, "v": v, "tokens": out["tokens"][:, prefix:]}


def hf_tapped(model: nn.Module, x: torch.Tensor, prefix: int) -> dict[str, torch.Tensor]:
    """The same from a transformers model: its separate q/k/v projections and its last layer's output."""
    out: dict[str, torch.Tensor] = {}
    names = [n for n, _ in model.named_modules() if re.search(r"\d+\.attention\.k_proj$", n)]
    last = names[-1].rsplit(".attention.", 1)[0]
    modules = dict(model.named_modules())
    handles = [modules[f"{last}.attention.{p}_proj"].register_forward_hook(
        lambda m, a, o, p=p: out.__setitem__(p, o)) for p in "qkv"]
    try:
        with torch.no_grad():
            extra = {"interpolate_pos_encoding": True} if isinstance(model, transformers.ViTModel) else {}
            hidden = model(pixel_values=x, output_hidden_states=True, **extra).hidden_states[-1]
    finally:
        for handle in handles:
            handle.remove()
    return {"q": out["q"][:, prefix:], "k": out["k"][:, prefix:], "v": out["v"][:, prefix:],
            "tokens": hidden[:, prefix:]}


def ours(weights, x: torch.Tensor, **kwargs) -> dict[str, torch.Tensor]:
    bb = create_backbone(kwargs.pop("backbone", None), weights, features="k", **kwargs)
    taps = bb.taps(x, [(kind, -1) for kind in KINDS])
    return {kind: taps[kind, -1].patches for kind in KINDS}


def assert_same(got: dict, expected: dict, label: str) -> None:
    for kind in KINDS:
        diff = (got[kind] - expected[kind]).abs().max().item()
        scale = expected[kind].abs().max().item()
        assert diff <= TOL, f"{label}: {kind} differs by {diff:.3g} (features up to {scale:.3g})"


def images(patch: int, grids=((5, 7), (9, 4), (11, 13), (6, 6))) -> list[torch.Tensor]:
    """Inputs at several grids: non-square, odd, and square but not the trained one."""
    g = torch.Generator().manual_seed(patch)
    return [torch.randn(1, 3, r * patch, c * patch, generator=g) for r, c in grids]


# -------------------------------------------------------------------------------------- Meta's DINOv2

@pytest.mark.parametrize("registers", [0, 4])
def test_meta_dinov2_pth(upstream, tmp_path, registers):
    model = meta_dinov2(upstream, registers)
    path = tmp_path / f"dinov2_vits14{'_reg4' if registers else ''}_pretrain.pth"
    torch.save(model.state_dict(), path)
    source = resolve_source(None, path)
    assert source.pos_resample == ("timm" if registers else "dino") and source.kwargs["reg_tokens"] == registers
    for x in images(14):
        expected = tapped(model, "blocks.1.attn.qkv", "blocks.1", 1 + registers, lambda: model.forward_features(x))
        assert_same(ours(path, x), expected, f"Meta DINOv2 ({registers} registers) at {tuple(x.shape[-2:])}")


def test_timm_resampling_differs_from_meta_without_registers(upstream, tmp_path):
    """What lost_reg computed before: the same weights resampled as timm does (--pos-resample timm)."""
    model = meta_dinov2(upstream)
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(model.state_dict(), path)
    x = images(14)[0]
    expected = tapped(model, "blocks.1.attn.qkv", "blocks.1", 1, lambda: model.forward_features(x))
    assert (ours(path, x, pos_resample="timm")["k"] - expected["k"]).abs().max() > 0.1


def test_meta_dinov2_block_chunks_and_swiglu(upstream, tmp_path):
    model = meta_dinov2(upstream, 4, depth=4, block_chunks=2, ffn_layer="swiglu")
    assert any(re.match(r"blocks\.1\.3\.", k) for k in model.state_dict())
    path = tmp_path / "chunked.pth"
    torch.save(model.state_dict(), path)
    assert "block_chunks" in resolve_source(None, path).layout
    for x in images(14)[:2]:
        expected = tapped(model, "blocks.1.3.attn.qkv", "blocks.1.3", 5, lambda: model.forward_features(x))
        assert_same(ours(path, x), expected, f"block_chunks + SwiGLU at {tuple(x.shape[-2:])}")


def test_dinov2_training_checkpoints(upstream, tmp_path):
    """eval/…/teacher_checkpoint.pth (teacher: backbone + dino_head + ibot_head) and fvcore's model_*.pth
    (model: student.* and teacher.*, optimizer, iteration)."""
    model = meta_dinov2(upstream)
    state = model.state_dict()
    heads = {"dino_head.mlp.0.weight": torch.randn(8, 128), "ibot_head.last_layer.weight_g": torch.randn(8, 1)}
    teacher = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": {**{f"backbone.{k}": v for k, v in state.items()}, **heads}}, teacher)
    fvcore = tmp_path / "model_0012499.pth"
    student = {f"student.backbone.{k}": torch.randn_like(v) for k, v in state.items()}
    torch.save({"model": {**student, **{f"teacher.backbone.{k}": v for k, v in state.items()},
                          **{f"teacher.{k}": v for k, v in heads.items()}},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "iteration": 12499}, fvcore)
    x = images(14)[1]
    expected = tapped(model, "blocks.1.attn.qkv", "blocks.1", 1, lambda: model.forward_features(x))
    for path in (teacher, fvcore):
        layout = resolve_source(None, path).layout
        assert "teacher" in layout and "Meta DINOv2" in layout, layout
        assert_same(ours(path, x), expected, path.name)


# ---------------------------------------------------------------------------------------------- DINO

def test_dino_pretrain_pth(upstream, tmp_path):
    model = dino_v1(upstream)
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(model.state_dict(), path)
    source = resolve_source(None, path)
    assert (source.pos_resample, source.family) == ("dino", "dino")
    for x in images(16):
        expected = tapped(model, "blocks.1.attn.qkv", "blocks.1", 1, lambda: model(x))
        assert_same(ours(path, x), expected, f"DINO at {tuple(x.shape[-2:])}")
    # the same file under timm's DINO name: the name's tag agrees
    named = resolve_source("vit_small_patch16_224.dino", path, embed_dim=128, depth=2, num_heads=2)
    assert named.pos_resample == "dino"


def test_dino_training_checkpoint_is_read_safely(upstream, tmp_path):
    """DINO's checkpoint.pth: student (DDP: module.backbone.*, module.head.*), teacher (backbone.*, head.*),
    optimizer, epoch, args (an argparse Namespace, allowed), dino_loss; the teacher is taken."""
    model = dino_v1(upstream)
    state = model.state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"student": {**{f"module.backbone.{k}": torch.randn_like(v) for k, v in state.items()},
                            "module.head.last_layer.weight_g": torch.randn(8, 1)},
                "teacher": {**{f"backbone.{k}": v for k, v in state.items()}, "head.mlp.0.weight": torch.randn(8, 128)},
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}, "epoch": 3,
                "args": argparse.Namespace(arch="vit_small", patch_size=16, lr=0.0005),
                "dino_loss": {"center": torch.zeros(1, 8)}}, path)
    source = resolve_source(None, path)
    assert "teacher (a student too)" in source.layout and source.pos_resample == "dino"
    x = images(16)[2]
    expected = tapped(model, "blocks.1.attn.qkv", "blocks.1", 1, lambda: model(x))
    assert_same(ours(path, x), expected, "DINO checkpoint.pth")


def test_unsafe_pickles_are_refused_in_one_clean_line(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"teacher": {"x": torch.zeros(1)}, "args": Path("/tmp")}, path)
    with pytest.raises(BackboneError) as err:
        resolve_source(None, path)
    message = str(err.value)
    assert "PosixPath" in message and "\x1b" not in message and "\n" not in message


def test_unknown_layouts_say_what_was_expected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8)}, path)
    with pytest.raises(BackboneError, match=r"not a ViT checkpoint .*2 keys, e\.g\. \['conv1\.weight'"):
        resolve_source(None, path)


# ------------------------------------------------------------------------------- Hugging Face transformers

transformers = pytest.importorskip("transformers", reason="the Hugging Face comparisons need transformers")


def hf_model(kind: str, noise: float = 0.2, grid: int | None = None, **config) -> nn.Module:
    """A small transformers model of ``kind`` (``config`` overrides its size)."""
    config = {**dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2), **config}
    if kind == "dinov2":
        model = transformers.Dinov2Model(transformers.Dinov2Config(image_size=14 * (grid or 8), patch_size=14,
                                                                   **config))
    elif kind == "dinov2_with_registers":
        model = transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            image_size=14 * (grid or 8), patch_size=14, num_register_tokens=4, **config))
    else:
        model = transformers.ViTModel(transformers.ViTConfig(
            image_size=16 * (grid or 6), patch_size=16, **{"intermediate_size": 4 * config["hidden_size"], **config}))
    return noisy(model, seed=len(kind), scale=noise)


HF_CASES = [("dinov2", 14, 1, "hf"), ("dinov2_with_registers", 14, 5, "timm"), ("vit", 16, 1, "hf")]


@pytest.mark.parametrize("kind,patch,prefix,resample", HF_CASES)
def test_hugging_face_folders(tmp_path, kind, patch, prefix, resample):
    model = hf_model(kind)
    folder = tmp_path / kind
    model.save_pretrained(folder)
    source = resolve_source(None, folder)
    assert source.pos_resample == resample and kind in source.layout
    for x in images(patch):
        assert_same(ours(folder, x), hf_tapped(model, x, prefix), f"transformers {kind} at {tuple(x.shape[-2:])}")
    # the weights file alone (no config: heads = width / 64)
    assert_same(ours(folder / "model.safetensors", x), hf_tapped(model, x, prefix), f"{kind} model.safetensors")


def test_hugging_face_repo_names_resolve_through_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    model = hf_model("dinov2_with_registers")
    repo = tmp_path / "hub" / "models--facebook--dinov2-with-registers-small"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    model.save_pretrained(repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    x = images(14)[0]
    assert_same(ours(None, x, backbone="facebook/dinov2-with-registers-small"), hf_tapped(model, x, 5),
                "facebook/dinov2-with-registers-small from the cache")
    with pytest.raises(BackboneError, match=r"could not fetch pretrained weights for 'facebook/dinov2-small'"):
        resolve_source("facebook/dinov2-small")


def test_meta_hub_names_are_aliases():
    source = resolve_source("dinov2_vits14")
    assert source.arch == "vit_small_patch14_dinov2.lvd142m" and source.pos_resample == "dino"
    assert resolve_source("dinov2_vitl14_reg").arch == "vit_large_patch14_reg4_dinov2.lvd142m"
    assert resolve_source("dino_vits16").pos_resample == "dino" and resolve_source("dino_vits16").family == "dino"
    assert resolve_source("vit_small_patch14_reg4_dinov2.lvd142m").pos_resample == "timm"
    assert resolve_source("vit_small_patch14_dinov2").arch == "vit_small_patch14_dinov2.lvd142m"  # timm's default tag
    assert resolve_source("vit_small_patch14_dinov2", "random").pos_resample == "timm"


def test_a_layout_that_does_not_fit_says_what_it_is_and_what_to_pass(upstream, tmp_path):
    path = tmp_path / "reg4.pth"
    torch.save(meta_dinov2(upstream, 4).state_dict(), path)
    with pytest.raises(BackboneError) as err:  # the name says no registers; the file has four
        create_backbone("vit_small_patch14_dinov2", path, embed_dim=128, depth=2, num_heads=2)
    message = str(err.value)
    assert "(Meta DINOv2 with 4 registers) do not fit vit_small_patch14_dinov2: they hold a ViT with patch 14, " \
           "width 128, 2 blocks, 4 registers, the model has patch 14, width 128, 2 blocks, 0 registers" in message
    assert "leave out --backbone to take the architecture from the weights" in message and "\n" not in message
    assert create_backbone(None, path).num_registers == 4  # which works
