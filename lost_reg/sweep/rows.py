"""A setting's result over its whole prediction file, and its robustness: CorLoc averaged with its neighbours'."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..evaluation import CorLoc
from .grid import SweepSetting

WHOLE_IMAGE = 0.9
"""A box covering at least this share of the image counts as a whole-image box (a non-answer)."""


@dataclass
class Row:
    """One setting's result over the whole prediction file."""

    setting: SweepSetting
    corloc: CorLoc
    mean_iou: float
    whole: int
    ms: float | None
    """The method's time per image in this run (None when this run computed nothing for it)."""
    robust: float = 0.0
    """Mean CorLoc of the setting and its neighbours (one method option one step away): near-best over a range."""


def is_whole(record: dict) -> bool:
    """Whether a prediction record's box covers at least :data:`WHOLE_IMAGE` of its image."""
    x0, y0, x1, y1 = record["box"]
    return (x1 - x0) * (y1 - y0) >= WHOLE_IMAGE * record["width"] * record["height"]


def _number(value: Any) -> tuple[str, float] | None:
    """(prefix, number) of a numeric option value such as 0.3, 100 or ``cos:0.3``; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return "", float(value)
    prefix, _, rest = str(value).rpartition(":")
    try:
        return prefix, float(rest)
    except ValueError:
        return None


def robustness(rows: list[Row]) -> None:
    """Sets each row's :attr:`Row.robust`: its CorLoc averaged with its neighbours' (same everything, but
    one numeric method option — k, τ, the T of cos:T… — at the next value swept below or above)."""
    values: dict[tuple, set] = defaultdict(set)
    for r in rows:
        for axis, v in r.setting.method.options().items():
            if (num := _number(v)) is not None:
                values[(r.setting.method.name, axis, num[0])].add(num[1])
    index = {(r.setting.prep, r.setting.features, r.setting.method.name,
              tuple(sorted(r.setting.method.options().items()))): r for r in rows}
    for r in rows:
        s, near = r.setting, [r.corloc.corloc]
        for axis, v in s.method.options().items():
            if (num := _number(v)) is None:
                continue
            line = sorted(values[(s.method.name, axis, num[0])])
            at = line.index(num[1])
            for j in (at - 1, at + 1):
                if 0 <= j < len(line):
                    other = line[j] if not num[0] else f"{num[0]}:{line[j]:g}"
                    other = int(other) if isinstance(v, int) else other
                    key = {**s.method.options(), axis: other}
                    n = index.get((s.prep, s.features, s.method.name, tuple(sorted(key.items()))))
                    if n is not None:
                        near.append(n.corloc.corloc)
        r.robust = float(np.mean(near))
