"""``lost-reg sweep``: CorLoc of many settings from one forward pass per image, and the best one.

Writes to ``OUT``: ``results.csv`` and ``results.md`` (every setting, best first), ``corloc.png``,
``best.json`` (the best and the most robust setting, each with the ``lost-reg eval`` command that
reproduces it), ``summary.json`` and ``settings/<setting>/predictions.jsonl`` (as ``eval`` writes
them). See :mod:`lost_reg.sweep`.
"""

from __future__ import annotations

import functools
import shlex

import torch

from ..backbone import FEATURES, Backbone
from ..config import EvalConfig, LocalizerOptions, ModelOptions, RuntimeOptions, SweepConfig
from ..devices import bf16_hardware
from ..images import PREPS
from ..methods import all_option_specs, option_values
from ..models import create_backbone
from ..pipeline import plan_run
from ..recipes import AUTO
from ..sweep import Sweep, SweepSetting, expand, expand_settings, feature_cache, write_reports
from .common import dataset_of, write_json

CONFIG = SweepConfig
REPRODUCE = ("dataset", "root", "coco20k_list", "coco_annotations", "coco_images", "split", "limit", "no_hard",
             "backbone", "weights", "pos_resample", "test_time_registers", "model_args", "max_side", "dtype", "out")
"""The fields of the ``eval`` command that reproduces a row, before the row's own (its setting's) flags."""


def run(config: SweepConfig) -> int:
    """Every setting of ``config`` on its dataset; the reports, and the command reproducing the best row."""
    specs = all_option_specs()
    options = {name: expand(getattr(config, name), specs[name][0].type) for name in specs
               if getattr(config, name) is not None}
    # the backbone's plan (an ``auto`` setting is the plan's); each setting's method and preparation: expand_settings
    plan = plan_run(LocalizerOptions(**{k: getattr(config, k) for k in (*ModelOptions.model_fields,
                                                                        *RuntimeOptions.model_fields)}))
    source, device, dtype = plan.source, torch.device(plan.device), plan.dtype  # dtype keys the cache
    layers = [plan.layer] if config.layers == AUTO else expand(config.layers, int)
    features = [plan.features if f == AUTO else f for f in expand(config.features)]
    for kind in features:
        if kind not in FEATURES:
            raise ValueError(f"--features: {kind!r} is not one of {', '.join(FEATURES)}")
    preps = expand(config.prep)
    for prep in preps:
        if prep not in (AUTO, *PREPS):
            raise ValueError(f"--prep: {prep!r} is not one of auto, {', '.join(PREPS)}")
    settings = expand_settings(source.family, expand(config.method), options, features, layers, preps)
    dataset = dataset_of(config)
    indices = list(range(len(dataset) if config.limit is None else min(config.limit, len(dataset))))
    cache = None if config.cache is None else feature_cache(
        config.cache, source, model_args=config.model_args, max_side=config.max_side, dtype=dtype,
        test_time_registers=config.test_time_registers, cache_dtype=config.cache_dtype)

    @functools.cache
    def backbone() -> Backbone:
        print(f"loading {source.name}")
        return create_backbone(source, test_time_registers=config.test_time_registers)

    taps = len({(s.prep, s.tap) for s in settings})
    print(f"{len(settings)} settings on {len(indices)} images: {len({s.prep for s in settings})} forward pass(es) "
          f"per image for {taps} feature map(s)")
    sweep = Sweep(settings, dataset, indices, config.out, backbone, device=str(device), dtype=dtype,
                  max_side=config.max_side, cache=cache, unreadable=config.cache and config.cache / "unreadable",
                  resume=config.resume, batch_size=config.batch_size, workers=config.workers,
                  progress=not config.quiet, max_pixels=config.max_pixels)
    rows = sweep.run()
    shared = {name: getattr(config, name) for name in REPRODUCE if name != "out"} | {"dtype": dtype}

    def reproduce(s: SweepSetting) -> list[str]:
        """The ``lost-reg eval`` command of one setting: the sweep's data and backbone, then the setting's flags."""
        own = {"method": s.method.name, "features": s.features, "layer": s.layer, "prep": s.prep,
               **option_values(s.method)}
        ev = EvalConfig(**shared, **own, out=config.out / "best")
        return ["lost-reg", "eval", *ev.argv(REPRODUCE), *ev.argv(own)]

    title = f"lost-reg sweep: {source.name} on {config.dataset} {config.root} ({len(indices)} images)"
    best = write_reports(rows, config.out, reproduce, title)
    write_json(config.out / "best.json", best)
    st = sweep.stats
    write_json(config.out / "summary.json", {
        "settings": len(settings), "images": len(indices), "images_processed": st.processed,
        "images_from_cache": st.from_cache, "images_failed": len(st.errors),
        "errors": [e.to_json() for e in st.errors.values()],
        "annotations_skipped": [{"image_id": i, "reason": r} for i, r in dataset.skipped],
        "timings": {"wall_s": st.wall_s, "forward_s": st.forward_s,
                    "methods_s": sum(sweep.seconds.values())},
        "device": str(device), "dtype": dtype, "native_bf16": bf16_hardware(device),
        "config": config.record(),
    })
    if st.errors:
        print(f"{len(st.errors)} images could not be read; see {config.out / 'summary.json'} (errors)")
    print(f"\n{'CorLoc':>22}  whole  setting")
    for r in rows[:10]:
        c = r.corloc
        print(f"{100 * c.corloc:6.1f} % ({c.found:>4}/{c.total:<4})  {r.whole:>5}  {r.setting.name}")
    print(f"\n{len(rows)} settings -> {config.out / 'results.md'}; reproduce the best:\n"
          f"{shlex.join(best['best']['command'])}")
    return 0
