"""A table's plan (everything checked before any forward pass) and its run: one sweep per backbone × dataset.

Each backbone × dataset is a :class:`~lost_reg.sweep.Sweep` of the settings its rows need there, in its own
folder ``OUT/runs/<backbone>/<dataset>/`` named by a fingerprint of what the predictions depend on (weights,
model keywords, resampling, test-time registers, dtype; the dataset's files and options), so a changed input
never reuses stale predictions. Sweeps always resume: a finished cell is read back from its prediction files
without loading its backbone, a killed one goes on where it stopped, and a run with one more backbone computes
only that backbone. One forward pass per image serves every setting of a cell; with ``--cache`` the features
are kept on disk (:func:`~lost_reg.sweep.feature_cache`, shared with ``lost-reg sweep``). Where a row chooses
among settings, its selection dataset runs first with every candidate, and the others run the chosen one only.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import logging
import platform
import re
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from scipy.stats import binomtest
from tqdm import tqdm

from ..backbone import Backbone
from ..cache import FeatureCache
from ..config import EvalConfig
from ..datasets import Dataset, dataset_from
from ..devices import resolve_device
from ..errors import LostRegError
from ..files import sha256_file
from ..methods import option_values
from ..models import Source, cached_hub_weights, check_fetchable, create_backbone, resolve_source
from ..options import fields_in_order
from ..recipes import resolve_dtype
from ..registers import RegisterNeurons
from ..sweep import Row, Sweep, SweepSetting, feature_cache
from ..version import __version__
from .config import ITSELF, TableConfig
from .protocols import PROTOCOLS, Protocol, RowPlan, choose, parse_biases
from .published import published_for
from .specs import BackboneSpec, DatasetSpec, parse_backbones, parse_datasets

log = logging.getLogger(__name__)

CONFIDENCE = 0.95
"""Each cell's interval: the Wilson score interval of its binomial proportion at this level."""


@dataclass
class Cell:
    """One backbone row × one dataset: its CorLoc, the setting it ran, how that was chosen, and how to repeat it."""

    row: str
    """The row's name: the backbone as given, and the protocol's part of it (``raw gram``, ``bias grid``)."""
    backbone: str
    dataset: str
    """The column's label (its kind unless given LABEL=KIND:ROOT)."""
    kind: str
    corloc: float
    found: int
    images: int
    """Images judged: those with ground truth and a prediction (the n of CorLoc)."""
    skipped: int
    """Images left out: unreadable files and annotations the dataset had to skip."""
    interval: list[float] | None
    """95 % Wilson score interval of the CorLoc (None without images)."""
    mean_iou: float
    whole_image: int
    """Boxes covering ≥ 90 % of their image (non-answers)."""
    setting: dict[str, Any]
    selection: str
    """How the setting was chosen: fixed by the protocol, on another dataset (held out), or on this one."""
    held_out: bool
    """Whether this figure was measured on images other than those its setting was chosen on (fixed: yes)."""
    candidates: list[dict[str, Any]]
    """Where the choice was made here: every candidate setting's result on this dataset (the selection's evidence)."""
    command: list[str]
    """The ``lost-reg eval`` command that gives this cell's predictions, image for image."""
    predictions: str
    """This cell's ``predictions.jsonl``, relative to the table's folder."""
    published: list[dict[str, Any]]
    provenance: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackboneEntry:
    """A resolved row group: one backbone (with or without test-time registers) and its protocol rows."""

    spec: BackboneSpec
    label: str
    source: Source
    identity: str
    rows: list[RowPlan]


@dataclass
class Column:
    spec: DatasetSpec
    dataset: Dataset


@dataclass
class Plan:
    """What a table will run, checked: every backbone resolves, every dataset reads, the selection is possible."""

    config: TableConfig
    protocol: Protocol
    backbones: list[BackboneEntry]
    columns: list[Column]
    notes: list[str] = field(default_factory=list)

    @property
    def select_on(self) -> str | None:
        return self.config.select_on

    @property
    def cells(self) -> int:
        return sum(len(b.rows) for b in self.backbones) * len(self.columns)


def plan_table(config: TableConfig) -> Plan:
    """Parse and check the whole table before any forward pass: one-line errors for a dataset root that does not fit
    its kind, a missing COCO20k list, a backbone that does not resolve (or whose weights cannot be had), neurons that
    do not fit, a selection that names no column, a device torch does not see."""
    resolve_device(config.device)
    protocol = PROTOCOLS[config.protocol]
    biases = parse_biases(config.biases)
    specs = parse_datasets(config.datasets, config)
    labels = [d.label for d in specs]
    if config.select_on not in (None, ITSELF, *labels):
        raise LostRegError(f"--select-on {config.select_on!r} is not a column of --datasets ({', '.join(labels)}); "
                           f"name one, or {ITSELF!r} to choose on each evaluation set")
    notes: list[str] = []
    entries = []
    for spec in parse_backbones(config.backbones):
        source, identity = _resolve(spec, config)
        rows = protocol.rows(source, biases)
        if config.select_on is None:
            if any(r.optional for r in rows):
                parts = ", ".join(r.part for r in rows if r.optional)
                notes.append(f"{protocol.name}: the rows that choose among settings ({parts}) need --select-on; "
                             "left out")
            rows = [r for r in rows if not r.optional]
            grid = next((r for r in rows if not r.fixed), None)
            if grid is not None:
                raise LostRegError(f"--protocol {protocol.name} chooses among {len(grid.candidates)} settings: give "
                                   f"--select-on DATASET (a dev set, reported on the others) or --select-on {ITSELF} "
                                   "(chosen on each evaluation set: optimistic, marked as such)")
        entries.append(BackboneEntry(spec, spec.label, source, identity, rows))
    if config.select_on is not None and all(r.fixed for e in entries for r in e.rows):
        notes.append(f"--select-on {config.select_on}: protocol {protocol.name} chooses nothing (every setting fixed)")
    taken = Counter(e.label for e in entries)
    for e in entries:
        if taken[e.label] > 1:  # two weights files of one name: the rows keep their full text
            e.label = e.spec.text + (f" +ttr:{e.spec.test_time_registers}" if e.spec.test_time_registers else "")
    columns = []
    for spec in specs:
        try:
            columns.append(Column(spec, dataset_from(spec.options)))
        except LostRegError as e:
            raise type(e)(f"--datasets {spec.text}: {e}") from None
    return Plan(config, protocol, entries, columns, list(dict.fromkeys(notes)))


def _resolve(spec: BackboneSpec, config: TableConfig) -> tuple[Source, str]:
    """The backbone's source and weights identity, its hub weights reachable, its register neurons fitting it."""
    try:
        source = resolve_source(spec.name, spec.weights, config.pos_resample, **config.model_args)
        check_fetchable(source)
        identity = source.identity
        if spec.test_time_registers is not None:
            RegisterNeurons.load(spec.test_time_registers).check(source.name, identity)
    except LostRegError as e:
        raise type(e)(f"--backbones {spec.text}: {e}") from None
    return source, identity


# ------------------------------------------------------------------------------------------------ running


def run_table(plan: Plan, progress: bool = True) -> list[Cell]:
    """Every cell of the plan, backbone by backbone (each loaded at most once, and only if some image needs it)."""
    config = plan.config
    config.out.mkdir(parents=True, exist_ok=True)
    context = _context(config)
    cells: list[Cell] = []
    bar = tqdm(total=plan.cells, unit="cell", desc="cells", disable=not progress, dynamic_ncols=True)
    try:
        for entry in plan.backbones:
            cells += _run_backbone(plan, entry, context, bar)
    finally:
        bar.close()
    return cells


def _run_backbone(plan: Plan, entry: BackboneEntry, context: dict[str, Any], bar: tqdm) -> list[Cell]:
    config = plan.config

    @functools.cache
    def backbone() -> Backbone:
        log.info("loading %s", entry.label)
        return create_backbone(entry.source, test_time_registers=entry.spec.test_time_registers)

    dtype = _dtype(entry, config)
    cache = None if config.cache is None else feature_cache(
        config.cache, entry.source, model_args=config.model_args, max_side=None, dtype=dtype,
        test_time_registers=entry.spec.test_time_registers, cache_dtype=config.cache_dtype, identity=entry.identity)
    chosen: dict[int, SweepSetting] = {}
    cells: list[Cell] = []
    for column in sorted(plan.columns, key=lambda c: c.spec.label != plan.select_on):  # the selection set first
        here = plan.select_on in (ITSELF, column.spec.label)
        needed = [s for i, r in enumerate(entry.rows)
                  for s in (r.candidates if r.fixed or here else (chosen[i],))]
        bar.set_description(f"{entry.label} × {column.spec.label}")
        folder = config.out / "runs" / _backbone_key(entry, config) / _dataset_key(column.spec)
        here_context = context | {"dtype": dtype}  # what ran for this backbone: ``auto`` resolved
        results, run = _sweep(config, column, list(dict.fromkeys(needed)), folder, backbone, dtype, cache,
                              here_context)
        provenance = {**_provenance(entry, config), **here_context, **run, "run_folder": str(folder.relative_to(config.out))}
        for i, row in enumerate(entry.rows):
            if row.fixed:
                setting, how, held_out = row.candidates[0], "fixed by the protocol", True
            elif here:
                setting = choose(results, row.candidates)
                chosen[i] = setting
                how = (f"chosen on this evaluation set itself among {len(row.candidates)} settings (optimistic)"
                       if plan.select_on == ITSELF else
                       f"chosen here among {len(row.candidates)} settings: the selection set, not held out")
                held_out = False
            else:
                setting, how, held_out = chosen[i], f"chosen on {plan.select_on} (held out here)", True
            candidates = [] if row.fixed or not here else [
                {"setting": s.name, "corloc": results[s].corloc.corloc, "found": results[s].corloc.found,
                 "images": results[s].corloc.total} for s in row.candidates]
            cells.append(_cell(plan, entry, row, column, setting, results[setting], how, held_out, candidates,
                               folder, provenance, run["skipped"]))
            bar.update(1)
    backbone.cache_clear()
    return cells


def _sweep(config: TableConfig, column: Column, settings: list[SweepSetting], folder: Path,
           backbone: Callable[[], Backbone], dtype: str, cache: FeatureCache | None,
           context: dict[str, Any]) -> tuple[dict[SweepSetting, Row], dict[str, Any]]:
    """One backbone × dataset: its settings' results over the whole prediction files, and what this run did.

    Files that could not be decoded are remembered in the folder (until they change), so a finished cell is read
    back without decoding them or loading the backbone."""
    dataset = column.dataset
    limit = len(dataset) if config.limit is None else min(config.limit, len(dataset))
    sweep = Sweep(settings, dataset, range(limit), folder, backbone, device=config.device, dtype=dtype, cache=cache,
                  unreadable=folder / "unreadable", resume=True, batch_size=config.batch_size,
                  workers=config.workers, progress=not config.quiet, max_pixels=config.max_pixels)
    rows = {r.setting: r for r in sweep.run()}
    st = sweep.stats
    run = {"images_computed": st.processed - st.from_cache, "images_from_cache": st.from_cache,
           "forward_s": round(st.forward_s, 3), "wall_s": round(st.wall_s, 3),
           "skipped": len(st.errors) + len(dataset.skipped)}
    if st.processed:
        entry = {k: run[k] for k in ("images_computed", "images_from_cache", "forward_s", "wall_s")}
        entry |= {k: context[k] for k in ("date", "device", "dtype", "lost_reg", "git_commit", "git_dirty")}
        with (folder / "runs.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
    run["history"] = _history(folder / "runs.jsonl")
    return rows, run


def _cell(plan: Plan, entry: BackboneEntry, row: RowPlan, column: Column, setting: SweepSetting, result: Row,
          how: str, held_out: bool, candidates: list[dict[str, Any]], folder: Path, provenance: dict[str, Any],
          skipped: int) -> Cell:
    config, c = plan.config, result.corloc
    name = entry.label + (f" · {row.part}" if row.part else "")
    spec = column.spec
    published = (published_for(entry.source.name, entry.spec.weights, entry.spec.test_time_registers,
                               setting.method.name, spec.kind) if spec.full_benchmark else [])
    return Cell(
        row=name, backbone=entry.label, dataset=spec.label, kind=spec.kind, corloc=c.corloc, found=c.found,
        images=c.total, skipped=skipped, interval=wilson(c.found, c.total), mean_iou=result.mean_iou,
        whole_image=result.whole,
        setting={"name": setting.name, "method": setting.method.name, "options": setting.method.options(),
                 "features": setting.features, "layer": setting.layer, "prep": setting.prep},
        selection=how, held_out=held_out, candidates=candidates,
        command=reproduce(config, entry.spec, spec, setting, config.out / "eval" / _slug(name) / spec.label),
        predictions=str((folder / "settings" / setting.slug / "predictions.jsonl").relative_to(config.out)),
        published=published, provenance=provenance)


def reproduce(config: TableConfig, backbone: BackboneSpec, dataset: DatasetSpec, setting: SweepSetting,
              out: Path) -> list[str]:
    """The ``lost-reg eval`` command whose predictions are this cell's, image for image."""
    opts = option_values(setting.method)
    ev = EvalConfig(**dataset.options.model_dump(), backbone=backbone.name, weights=backbone.weights,
                    pos_resample=config.pos_resample, model_args=config.model_args,
                    test_time_registers=backbone.test_time_registers, device=config.device, dtype=config.dtype,
                    method=setting.method.name, features=setting.features, layer=setting.layer, prep=setting.prep,
                    **opts, batch_size=config.batch_size, max_pixels=config.max_pixels, out=out)
    return ["lost-reg", "eval", *ev.argv([name for name, _ in fields_in_order(EvalConfig)])]


def wilson(found: int, n: int, confidence: float = CONFIDENCE) -> list[float] | None:
    """The Wilson score interval of ``found`` of ``n`` (scipy's), or None without images."""
    if n == 0:
        return None
    ci = binomtest(found, n).proportion_ci(confidence_level=confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


# ---------------------------------------------------------------------------------------------- provenance


def _provenance(entry: BackboneEntry, config: TableConfig) -> dict[str, Any]:
    s = entry.source
    hub = cached_hub_weights(s)
    blob = hub.resolve().name if hub is not None else None
    return {"weights": entry.identity,
            "weights_sha256": blob if blob and re.fullmatch(r"[0-9a-f]{64}", blob) else None,
            "arch": s.arch, "layout": s.layout, "publisher": s.publisher.name, "pos_resample": s.pos_resample,
            "test_time_registers": entry.spec.test_time_registers, "model_args": config.model_args}


def _context(config: TableConfig) -> dict[str, Any]:
    """What every cell of this run shares: versions, commit, device, precision, date."""
    commit, dirty = _git()
    return {"lost_reg": __version__, "git_commit": commit, "git_dirty": dirty, "torch": torch.__version__,
            "timm": timm.__version__, "python": platform.python_version(),
            "device": str(resolve_device(config.device)), "dtype": config.dtype, "date": _now()}


def _git() -> tuple[str | None, bool | None]:
    """The commit of the checkout lost_reg runs from, and whether its tracked files differ; (None, None) outside one."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None, None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(status.strip())


def _history(path: Path) -> list[dict[str, Any]]:
    """Every run that computed something in a run folder (``runs.jsonl``): when, on which device, how much."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _dtype(entry: BackboneEntry, config: TableConfig) -> str:
    """The precision ``entry``'s backbone runs in (``auto`` resolved for its family and the device)."""
    return resolve_dtype(entry.source.family, resolve_device(config.device), config.dtype)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------- folders


def _backbone_key(entry: BackboneEntry, config: TableConfig) -> str:
    """A backbone's folder: its label, and a hash of everything its features depend on."""
    neurons = None
    if entry.spec.test_time_registers is not None:
        n = RegisterNeurons.load(entry.spec.test_time_registers)
        neurons = {"layers": n.layers, "weights": n.weights}
    return _key(entry.label, {"name": entry.source.name, "arch": entry.source.arch, "weights": entry.identity,
                              "pos_resample": entry.source.pos_resample, "model_args": config.model_args,
                              "test_time_registers": neurons, "dtype": _dtype(entry, config)})


def _dataset_key(spec: DatasetSpec) -> str:
    """A dataset's folder: its label, and a hash of its files and options (the list by content)."""
    o = spec.options
    what = {"kind": spec.kind, "root": str(Path(spec.root).resolve()), "split": o.split, "no_hard": o.no_hard,
            "coco20k_list": o.coco20k_list and sha256_file(o.coco20k_list),
            "coco_annotations": o.coco_annotations and str(Path(o.coco_annotations).resolve()),
            "coco_images": o.coco_images and str(Path(o.coco_images).resolve())}
    return _key(spec.label, what)


def _key(label: str, what: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{_slug(label)[:60]}-{digest}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", text).strip("_")
