"""``lost-reg sweep``: CorLoc of many settings from one forward pass per image, and the best one.

Writes to ``OUT``: ``results.csv`` and ``results.md`` (every setting, best first), ``corloc.png``,
``best.json`` (the best and the most robust setting, each with the ``lost-reg eval`` command that
reproduces it), ``summary.json`` and ``settings/<setting>/predictions.jsonl`` (as ``eval`` writes
them). See :mod:`lost_reg.sweep`.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

from ..backbone import FEATURES
from ..images import PREPS
from ..methods import METHODS, all_option_specs
from ..recipes import AUTO, recipe_for
from .common import (
    add_backbone_arguments,
    add_dataset_arguments,
    add_run_arguments,
    dataset_args,
    dataset_from_args,
    model_kwargs,
    write_json,
)

NEGATIVE_LIST = re.compile(r"^-\d*\.?\d+(?:e-?\d+)?(?:[,:]-?[\d.]+(?:e-?\d+)?)*$")
"""Values such as ``-1,-2`` or ``-4:-1:1``: argparse must read them as values, not as options."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p._negative_number_matcher = NEGATIVE_LIST  # argparse's own hook for what "looks like a negative number"
    add_dataset_arguments(p)
    add_backbone_arguments(p, features=False)
    s = p.add_argument_group("settings (comma lists; ranges A:B:STEP, B included, keep a prefix: cos:0:0.5:0.1)")
    s.add_argument("--features", default=AUTO, help=f"features kinds: {', '.join(FEATURES)} or auto (the recipe's)")
    s.add_argument("--layers", default=AUTO, help="blocks, e.g. -1,-2,-3,-4 or -4:-1:1 (auto: the recipe's)")
    s.add_argument("--method", default=AUTO, help=f"methods: {', '.join(METHODS)} or auto (the recipe's)")
    s.add_argument("--prep", default=AUTO, help=f"preparations: {', '.join(PREPS)} or auto")
    for name, (spec, owners) in all_option_specs().items():
        s.add_argument("--" + name.replace("_", "-"), default=None, metavar="LIST",
                       help=f"{spec.help} [{', '.join(owners)}]")
    s.add_argument("--max-side", type=int, default=None, help="downscale images whose longer side exceeds this")
    c = p.add_argument_group("feature cache")
    c.add_argument("--cache", type=Path, default=None, metavar="DIR",
                   help="store each image's features here (safetensors, per backbone/weights/layer/kind/preparation "
                        "fingerprint); a later sweep reads them instead of running the backbone")
    c.add_argument("--cache-dtype", choices=("float32", "float16"), default="float32",
                   help="float16 halves the cache; its rows may then differ slightly from eval's")
    r = add_run_arguments(p)
    r.add_argument("--out", type=Path, required=True, help="output folder")
    r.add_argument("--resume", action="store_true", help="keep the settings' prediction files and skip what they hold")


def main(args: argparse.Namespace) -> int:
    from ..cache import FeatureCache, weights_identity
    from ..models import create_backbone
    from .common import source_from_args
    from ..pipeline import Localizer
    from ..registers import RegisterNeurons
    from ..sweep import Sweep, expand, expand_settings, write_reports

    specs = all_option_specs()
    options = {name: expand(getattr(args, name), specs[name][0].type) for name in specs
               if getattr(args, name) is not None}
    source = source_from_args(args)
    recipe = recipe_for(source.family)
    layers = [recipe.layer] if args.layers == AUTO else expand(args.layers, int)
    features = [recipe.features if f == AUTO else f for f in expand(args.features)]
    for kind in features:
        if kind not in FEATURES:
            raise ValueError(f"--features: {kind!r} is not one of {', '.join(FEATURES)}")
    preps = expand(args.prep)
    for prep in preps:
        if prep not in (AUTO, *PREPS):
            raise ValueError(f"--prep: {prep!r} is not one of auto, {', '.join(PREPS)}")
    settings = expand_settings(source.family, expand(args.method), options, features, layers, preps)
    dataset = dataset_from_args(args)
    indices = list(range(len(dataset) if args.limit is None else min(args.limit, len(dataset))))
    kwargs = model_kwargs(args.model_arg)
    cache = None
    if args.cache is not None:
        n = None if args.test_time_registers is None else RegisterNeurons.load(args.test_time_registers)
        cache = FeatureCache(args.cache, {"backbone": source.name, "weights": weights_identity(source.name,
                             args.weights), "pos_resample": source.pos_resample, "model_args": kwargs, "max_side": args.max_side, "dtype": args.dtype,
                             "test_time_registers": n and {"layers": n.layers, "weights": n.weights}},
                             args.cache_dtype)
    backbone = None

    def localizer_for(prep: str) -> Localizer:
        nonlocal backbone
        if backbone is None:
            print(f"loading {source.name}")
            backbone = create_backbone(source, test_time_registers=args.test_time_registers)
        return Localizer(backbone, settings[0].method, prep=prep, max_side=args.max_side, device=args.device,
                         dtype=args.dtype)

    taps = len({(s.prep, s.tap) for s in settings})
    print(f"{len(settings)} settings on {len(indices)} images: {len({s.prep for s in settings})} forward pass(es) "
          f"per image for {taps} feature map(s)")
    sweep = Sweep(settings, dataset, indices, args.out, localizer_for, cache=cache, resume=args.resume,
                  batch_size=args.batch_size, workers=args.workers, progress=not args.quiet,
                  max_pixels=args.max_pixels)
    rows = sweep.run()
    command = ["lost-reg", "eval", *dataset_args(args), *(["--backbone", args.backbone] if args.backbone else []),
               *(["--weights", args.weights] if args.weights else []),
               *(["--pos-resample", args.pos_resample] if args.pos_resample != AUTO else []),
               *(["--test-time-registers", args.test_time_registers] if args.test_time_registers else []),
               *(a for pair in args.model_arg for a in ("--model-arg", pair)),
               *(["--max-side", str(args.max_side)] if args.max_side else []),
               *(["--dtype", args.dtype] if args.dtype != "float32" else []), "--out", str(args.out / "best")]
    title = f"lost-reg sweep: {source.name} on {args.dataset} {args.root} ({len(indices)} images)"
    best = write_reports(rows, args.out, command, title)
    write_json(args.out / "best.json", best)
    st = sweep.stats
    write_json(args.out / "summary.json", {
        "settings": len(settings), "images": len(indices), "images_processed": st.processed,
        "images_from_cache": st.from_cache, "images_failed": len(st.errors), "errors": list(st.errors.values()),
        "annotations_skipped": [{"image_id": i, "reason": r} for i, r in dataset.skipped],
        "timings": {"wall_s": st.wall_s, "forward_s": st.forward_s,
                    "methods_s": sum(sweep.seconds.values())},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "func"},
    })
    if st.errors:
        print(f"{len(st.errors)} images could not be read; see {args.out / 'summary.json'} (errors)")
    print(f"\n{'CorLoc':>22}  whole  setting")
    for r in rows[:10]:
        c = r.corloc
        print(f"{100 * c.corloc:6.1f} % ({c.found:>4}/{c.total:<4})  {r.whole:>5}  {r.setting.name}")
    print(f"\n{len(rows)} settings -> {args.out / 'results.md'}; reproduce the best:\n"
          f"{shlex.join(best['best']['command'])}")
    return 0
