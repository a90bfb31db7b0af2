"""The rows and columns of a table as given: ``--backbones`` and ``--datasets`` items, parsed and checked."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..datasets import BENCHMARKS, DataOptions, DatasetOptions
from ..errors import BackboneError, DataError

TTR = "+ttr:"
"""Marks a test-time-registers variant of a backbone: ``NAME+ttr:NEURONS``."""


@dataclass(frozen=True)
class BackboneSpec:
    """One row's backbone: what ``--backbone``, ``--weights`` and ``--test-time-registers`` would say."""

    text: str
    """The item as given (without its ``+ttr:`` part for the plain row)."""
    name: str | None
    weights: str | None
    test_time_registers: str | None = None

    @property
    def label(self) -> str:
        """The row's name in the table: the item as given, weights folders shortened to their last part."""
        base = self.name or Path(self.weights or "").name
        if self.name and self.weights:  # NAME=random keeps its name: Path("random").name
            base = f"{self.name}={Path(self.weights).name}"
        return base + (f" +ttr:{_short(self.test_time_registers)}" if self.test_time_registers else "")


def _short(neurons: str) -> str:
    return neurons if neurons.startswith("preset:") else Path(neurons).name


def parse_backbones(text: str) -> list[BackboneSpec]:
    """``--backbones``: each item a name, a weights file or folder, or ``NAME=WEIGHTS``, with an optional
    ``+ttr:NEURONS`` adding a test-time-registers row right after its plain row; repeats are dropped."""
    out: list[BackboneSpec] = []
    for item in _items(text, "--backbones"):
        plain, sep, neurons = item.partition(TTR)
        if sep and not neurons:
            raise BackboneError(f"--backbones {item!r}: +ttr: needs register neurons (a neurons.json, or preset:NAME)")
        name, eq, weights = plain.partition("=")
        if not eq:
            name, weights = (None, plain) if Path(plain).exists() else (plain, None)
        elif not name or not weights:
            raise BackboneError(f"--backbones {item!r}: NAME=WEIGHTS needs both a model name and local weights")
        base = BackboneSpec(plain, name or None, weights or None)
        for spec in (base, *([BackboneSpec(plain, base.name, base.weights, neurons)] if neurons else [])):
            if spec not in out:
                out.append(spec)
    return out


@dataclass(frozen=True)
class DatasetSpec:
    """One column: a benchmark kind, where it is, its label, and the options eval reads it with."""

    text: str
    """The item as given."""
    label: str
    kind: str
    root: str
    options: DatasetOptions

    @property
    def full_benchmark(self) -> bool:
        """Whether this is a whole benchmark as the papers evaluate it (no label of its own, trainval, every image, hard
        ones included): only then are published figures shown beside it."""
        o = self.options
        return self.label == self.kind and o.split == "trainval" and o.limit is None and not o.no_hard


_LABEL = re.compile(r"^[A-Za-z][\w.-]*$")


def parse_datasets(text: str, shared: DataOptions) -> list[DatasetSpec]:
    """``--datasets``: ``KIND:ROOT`` or ``LABEL=KIND:ROOT`` items, each with the shared data options."""
    out: list[DatasetSpec] = []
    for item in _items(text, "--datasets"):
        label, eq, rest = item.partition("=")
        if not eq or ":" in label:
            label, rest = "", item
        kind, colon, root = rest.partition(":")
        if not colon or not root:
            raise DataError(f"--datasets {item!r}: expected KIND:ROOT (or LABEL=KIND:ROOT), e.g. voc07:/data/VOCdevkit")
        if kind not in BENCHMARKS:
            raise DataError(f"--datasets {item!r}: unknown kind {kind!r}; choose one of {', '.join(BENCHMARKS)}")
        label = label or kind
        if not _LABEL.match(label):
            raise DataError(f"--datasets {item!r}: a label is letters, digits, '_', '.' or '-', starting with a letter")
        if any(d.label == label for d in out):
            raise DataError(f"--datasets: two columns named {label!r}; name one LABEL=KIND:ROOT")
        data = {name: getattr(shared, name) for name in DataOptions.model_fields}
        out.append(DatasetSpec(item, label, kind, root, DatasetOptions(dataset=kind, root=root, **data)))
    return out


def _items(text: str, flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise ValueError(f"{flag}: empty item in {text!r}")
    return items
