"""Options shared by every command that runs a backbone: which model, which features, which method."""

from __future__ import annotations

import argparse
import ast
import json
import platform
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from tqdm import tqdm

from .. import __version__
from ..backbone import FEATURES
from ..datasets import DATASETS, Dataset, build_dataset
from ..errors import LostRegError
from ..files import write_text
from ..images import MAX_PIXELS, PREPS, decode_image, prepare
from ..methods import METHODS, Method, all_option_specs
from .. import pipeline
from ..models import DEFAULT_BACKBONE, OFFLINE_BACKBONE, Source, resolve_source
from ..pipeline import DTYPES, Localizer
from ..posembed import POS_RESAMPLES
from ..recipes import AUTO, resolve_method


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark and where it is (eval, sweep)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", required=True, choices=[d for d in DATASETS if d != "folder"])
    g.add_argument("--root", type=Path, required=True,
                   help="VOC: folder holding VOC2007/ or VOC2012/; COCO20k: a COCO 2014 or 2017 download (folder "
                        "holding annotations/ and train2014/ or train2017/)")
    g.add_argument("--coco20k-list", type=Path, help="COCO20k file list (coco_20k_filenames.txt from the LOST repo)")
    g.add_argument("--coco-annotations", type=Path,
                   help="instances_train2014.json or instances_train2017.json (default: the first of them in "
                        "ROOT/annotations/)")
    g.add_argument("--coco-images", type=Path,
                   help="folder of the COCO train images (default: ROOT/train2014/ or ROOT/train2017/, as the "
                        "annotation file)")
    g.add_argument("--no-hard", action="store_true",
                   help="VOC: drop truncated/difficult boxes and images left without a box")
    g.add_argument("--limit", type=int, default=None, help="evaluate the first N images only")


def dataset_from_args(args: argparse.Namespace) -> Dataset:
    """The dataset of :func:`add_dataset_arguments`; annotations it had to skip are printed."""
    dataset = build_dataset(args.dataset, args.root, coco20k_list=args.coco20k_list,
                            coco_annotations=args.coco_annotations, coco_images=args.coco_images,
                            no_hard=args.no_hard)
    for line in skipped_lines(dataset.skipped):
        print(line)
    return dataset


def skipped_lines(skipped: list[tuple[str, str]], first: int = 3) -> list[str]:
    """One line per reason: an image's own, or how many share it and the first few (summary.json has all)."""
    by_reason: dict[str, list[str]] = {}
    for image_id, reason in skipped:
        by_reason.setdefault(reason, []).append(image_id)
    return [f"skipped {ids[0]}: {reason}" if len(ids) == 1 else
            f"skipped {len(ids):,} images, {reason}: {', '.join(ids[:first])}… (all in summary.json)"
            for reason, ids in by_reason.items()]


def dataset_args(args: argparse.Namespace) -> list[str]:
    """The command-line flags of :func:`add_dataset_arguments` that ``args`` holds (to print commands)."""
    out = ["--dataset", args.dataset, "--root", str(args.root)]
    for flag in ("coco20k_list", "coco_annotations", "coco_images", "limit"):
        if getattr(args, flag) is not None:
            out += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return out + (["--no-hard"] if args.no_hard else [])


def add_backbone_arguments(p: argparse.ArgumentParser, features: bool = True) -> None:
    """Which model and where it runs; with ``features``, also the one features kind and layer to read."""
    g = p.add_argument_group("backbone")
    g.add_argument("--backbone", default=None,
                   help="timm ViT name (with or without registers), Meta's torch.hub name (dinov2_vits14_reg, "
                        "dino_vits16…), Hugging Face repo (facebook/dinov2-with-registers-small), or "
                        f"{OFFLINE_BACKBONE} (no network needed); default: the architecture in --weights, "
                        f"else {DEFAULT_BACKBONE}")
    g.add_argument("--weights", default=None,
                   help="local weights instead of the pretrained download: a file or a Hugging Face folder, in "
                        "timm, DINO, DINOv2 (also training checkpoints) or transformers layout (README, Backbones "
                        "and weights); 'random' for an untrained model")
    g.add_argument("--pos-resample", choices=[AUTO, *POS_RESAMPLES], default=AUTO,
                   help="how the position table is resampled to other grids: auto = as the code the weights "
                        "were published with (README, Fidelity); timm, dino or hf to override")
    g.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra timm.create_model keyword, e.g. depth=2 (repeatable)")
    if features:
        g.add_argument("--features", choices=[AUTO, *FEATURES], default=AUTO,
                       help="which features build the method's graph (auto: the backbone family's recipe, "
                            "README Defaults)")
        g.add_argument("--layer", type=int, default=None,
                       help="transformer block to take features from, e.g. -1 for the last (default: the recipe's)")
    g.add_argument("--test-time-registers", default=None, metavar="NEURONS",
                   help="add a test-time register driven by these register neurons: a neurons.json of "
                        "`lost-reg registers find`, or preset:dinov2_vitl14 (README, Test-time registers)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32",
                   help="backbone autocast precision (bfloat16; float16 on GPUs without it; both on CPUs whose torch "
                        "autocasts to them)")


def add_method_arguments(p: argparse.ArgumentParser, max_side_default: str = "no downscaling, as in LOST") -> None:
    """``--method`` and every option of every method (each applies to the methods it names), the preparation."""
    g = p.add_argument_group("discovery method")
    g.add_argument("--method", choices=[AUTO, *METHODS], default=AUTO,
                   help="how the object is found from the patch features (auto: the backbone family's recipe; "
                        "README, Methods); unset options of the recipe's method come from the recipe")
    for name, (spec, owners) in all_option_specs().items():
        g.add_argument("--" + name.replace("_", "-"), type=spec.type, choices=spec.choices, default=None,
                       help=f"{spec.help} [{', '.join(owners)}; default {spec.default}]")
    g.add_argument("--prep", choices=[AUTO, *PREPS], default=AUTO,
                   help="onto the patch grid: pad (the papers' zero-padding) or resize (nearest multiple of the patch "
                        "size); auto: pad for LOST's raw graph, else the recipe's (README, Preparation)")
    g.add_argument("--max-side", type=int, default=None,
                   help=f"downscale images whose longer side exceeds this (default: {max_side_default})")


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given on the command line."""
    return {name: getattr(args, name) for name in all_option_specs() if getattr(args, name, None) is not None}


def source_from_args(args: argparse.Namespace) -> Source:
    """Where ``--backbone`` / ``--weights`` come from, and how they resample positions."""
    return resolve_source(args.backbone, args.weights, args.pos_resample, **model_kwargs(args.model_arg))


def method_from_args(args: argparse.Namespace, family: str | None = None) -> Method:
    """The method named by ``--method`` (``auto``: the recipe of the weights' family) with the options given."""
    return resolve_method(family or source_from_args(args).family, args.method, method_options(args))


def add_run_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The batch-run options of eval and discover; returns the group for the command's own."""
    r = p.add_argument_group("run")
    r.add_argument("--batch-size", type=int, default=16, help="images per backbone call (one padded shape per call)")
    r.add_argument("--workers", type=int, default=None,
                   help="image-decoding worker processes (default: 0 on the CPU, min(8, cores-1) on CUDA)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help="skip (and report) images whose header declares more pixels than this: decompression bombs")
    return r


def model_kwargs(pairs: list[str]) -> dict[str, Any]:
    """``["depth=2", "embed_dim=64"]`` → ``{"depth": 2, "embed_dim": 64}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg wants KEY=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def build_localizer(args: argparse.Namespace) -> Localizer:
    return pipeline.build_localizer(
        args.backbone, args.weights, method=args.method, options=method_options(args), features=args.features,
        layer=args.layer, prep=args.prep, pos_resample=args.pos_resample, test_time_registers=args.test_time_registers,
        model_kwargs=model_kwargs(args.model_arg), max_side=args.max_side, device=args.device, dtype=args.dtype)


def run_info(args: argparse.Namespace, localizer: Localizer) -> dict[str, Any]:
    """Configuration and versions, for the summary files."""
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"}
    bb = localizer.backbone
    return {
        "config": config,
        "method": {"name": localizer.method.name, **localizer.method.options()},
        "backbone": {"name": bb.name, "patch_size": bb.patch_size, "registers": bb.num_registers,
                     "test_time_registers": bb.test_time_registers,
                     "test_time_register_neurons": getattr(bb.model, "test_time_register_source", None),
                     "prefix_tokens": bb.num_prefix_tokens, "features": bb.features, "layer": bb.layer,
                     "source": bb.source,
                     "prep": localizer.prep,
                     "device": str(localizer.device), "dtype": localizer.dtype},
        "versions": {"lost_reg": __version__, "torch": torch.__version__, "timm": timm.__version__,
                     "python": platform.python_version()},
    }


def whole_patch_images(dataset: Dataset, limit: int, patch_size: int, max_side: int | None, max_pixels: int,
                       errors: list[dict], progress: bool = True) -> Iterator[torch.Tensor]:
    """uint8 [3, H, W] crops of the first ``limit`` images onto whole patches (no padding: it would skew token
    norms), one at a time, for the token analyses (``artifacts``, ``registers find``); unreadable images go to
    ``errors``."""
    for i in tqdm(range(limit), unit="img", disable=not progress, dynamic_ncols=True):
        sample = dataset[i]
        try:
            p = prepare(decode_image(sample.path, name=sample.image_id, max_pixels=max_pixels), patch_size,
                        max_side, name=sample.image_id)
        except LostRegError as e:
            errors.append({"image_id": sample.image_id, "path": str(sample.path), "error": str(e)})
            tqdm.write(f"skipped {e}")
            continue
        vh, vw = (v // patch_size * patch_size for v in p.valid)
        yield p.pixels[:, :vh, :vw]


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically so a crash never leaves half a file."""
    write_text(path, json.dumps(data, indent=2) + "\n")
