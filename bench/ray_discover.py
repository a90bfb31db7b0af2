"""Weak-label a large image collection with LOST on Ray Data: decode on CPUs, localise on GPU actors.

The job docs/scaling.md describes, built from the same library code as ``lost-reg`` (``decode_image``
+ ``prepare`` for decoding, ``Localizer.localize_prepared`` per padded shape). Ray is not a
dependency of lost-reg: ``pip install "ray[data]"``. Run on one CPU machine (Ray 2.60, a CPU actor):
the boxes and seeds equal ``lost-reg discover``'s; never run on a GPU cluster, so throughput figures
in docs/scaling.md are estimates. On one machine without GPUs: ``--gpus-per-actor 0 --device cpu``.

    python bench/ray_discover.py --input s3://bucket/images/ --output s3://bucket/lost-boxes/ \\
        --backbone vit_small_patch14_reg4_dinov2.lvd142m --weights /shared/vits14_reg4.safetensors \\
        --actors 8 --batch-size 64 --dtype bfloat16

Output: Parquet (or ``--format json``: JSON lines), one row per input file: ``path``, ``x0 y0 x1 y1``
(original pixels, max exclusive, as ``lost-reg``), ``seed_row seed_col``, ``width height``, and
``error`` (empty, or why the file was skipped: unreadable files never stop the job).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

IMAGE_EXTENSIONS = ["jpg", "jpeg", "png", "bmp", "webp", "tif", "tiff"]


def decode_batch(batch: dict, patch_size: int, max_side: int | None) -> dict:
    """CPU stage: encoded bytes -> padded uint8 CHW pixels (as ``lost-reg``'s DataLoader workers do)."""
    import numpy as np

    from lost_reg.images import decode_image, prepare

    out: dict[str, list] = {k: [] for k in ("path", "pixels", "valid_h", "valid_w", "width", "height", "error")}
    for path, data in zip(batch["path"], batch["bytes"]):
        try:
            p = prepare(decode_image(bytes(data), name=str(path)), patch_size, max_side)
            pixels, (vh, vw), (w, h), error = p.pixels.numpy(), p.valid, p.size, ""
        except Exception as e:  # one bad file must not fail the task (Ray would retry it, then the job)
            pixels, vh, vw, w, h = np.zeros((3, patch_size, patch_size), np.uint8), 0, 0, 0, 0
            error = f"{type(e).__name__}: {e}"
        for key, value in zip(out, (str(path), pixels, vh, vw, w, h, error)):
            out[key].append(value)
    return out


class LostActor:
    """GPU stage: one Localizer per actor (the model loads once), LOST on each batch of pixels."""

    def __init__(self, backbone: str, weights: str | None, features: str, layer: int, model_args: dict,
                 method: str, options: dict, max_side: int | None, device: str, dtype: str) -> None:
        from lost_reg import create_backbone
        from lost_reg.methods import build_method
        from lost_reg.pipeline import Localizer

        bb = create_backbone(backbone, weights, features=features, layer=layer, **model_args)
        self.localizer = Localizer(bb, build_method(method, **options), max_side=max_side, device=device, dtype=dtype)

    def __call__(self, batch: dict) -> dict:
        import numpy as np
        import torch

        from lost_reg.images import Prepared
        from lost_reg.pipeline import group_by_shape

        n = len(batch["path"])
        ok = [i for i in range(n) if not batch["error"][i]]
        pin = self.localizer.device.type == "cuda"
        prepared = []
        for i in ok:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"][i]))
            prepared.append(Prepared(pixels.pin_memory() if pin else pixels,
                                     (int(batch["valid_h"][i]), int(batch["valid_w"][i])),
                                     (int(batch["width"][i]), int(batch["height"][i]))))
        rows: dict[int, tuple] = {}
        for indices in group_by_shape(prepared).values():
            for j, det in zip(indices, self.localizer.localize_prepared([prepared[j] for j in indices])):
                rows[ok[j]] = (*det.box, *det.seed)
        out = {k: [] for k in ("path", "x0", "y0", "x1", "y1", "seed_row", "seed_col", "width", "height", "error")}
        for i in range(n):
            x0, y0, x1, y1, sr, sc = rows.get(i, (-1,) * 6)
            for key, value in zip(out, (batch["path"][i], x0, y0, x1, y1, sr, sc, int(batch["width"][i]),
                                        int(batch["height"][i]), batch["error"][i])):
                out[key].append(value)
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from lost_reg.cli.common import add_backbone_arguments, add_method_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", required=True, nargs="+", help="folders/files/URIs Ray can read (local, s3://, gs://…)")
    p.add_argument("--output", required=True, help="output folder/URI")
    p.add_argument("--format", choices=("parquet", "json"), default="parquet")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start or join a local one)")
    p.add_argument("--actors", type=int, default=1, help="model actors (one model each; e.g. one per GPU)")
    p.add_argument("--gpus-per-actor", type=float, default=1.0,
                   help="0.5 puts two actors on a GPU so one's CPU work overlaps the other's forward; 0 = CPU actors")
    p.add_argument("--batch-size", type=int, default=64, help="images per actor call (split by padded shape)")
    p.add_argument("--decode-batch", type=int, default=32, help="images per CPU decoding task call")
    add_backbone_arguments(p)
    add_method_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import ray
    except ImportError:
        print('bench/ray_discover.py needs Ray Data, which lost-reg does not depend on: pip install "ray[data]"',
              file=sys.stderr)
        return 2

    from lost_reg import create_backbone
    from lost_reg.cli.common import method_from_args, model_kwargs
    from lost_reg.models import OFFLINE_MODELS

    model_args = model_kwargs(args.model_arg)
    # the patch size, from an untrained copy on the driver (no weights to fetch)
    patch = create_backbone(args.backbone, "random", features=args.features, layer=args.layer,
                            **model_args).patch_size
    weights = args.weights
    if weights is None and args.backbone not in OFFLINE_MODELS:
        print("note: no --weights: every actor downloads the pretrained weights (or finds them in its HF cache)")

    ray.init(address=args.address)
    ds = ray.data.read_binary_files(args.input, include_paths=True, file_extensions=IMAGE_EXTENSIONS)
    ds = ds.map_batches(decode_batch, fn_kwargs={"patch_size": patch, "max_side": args.max_side},
                        batch_size=args.decode_batch, num_cpus=1)
    ds = ds.map_batches(
        LostActor,
        fn_constructor_kwargs={"backbone": args.backbone, "weights": weights, "features": args.features,
                               "layer": args.layer, "model_args": model_args, "method": args.method,
                               "options": method_from_args(args).options(), "max_side": args.max_side,
                               "device": args.device,
                               "dtype": args.dtype},
        batch_size=args.batch_size, batch_format="numpy", num_gpus=args.gpus_per_actor,
        concurrency=args.actors,
    )
    if args.format == "parquet":
        ds.write_parquet(args.output)
    else:
        ds.write_json(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
