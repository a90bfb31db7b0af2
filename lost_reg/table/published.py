"""Published CorLoc figures, shipped as data (``published.json``, each with its citation), and which cells they go
beside: the same model's hub weights (or, marked ≈, the closest public ones), method, test-time registers and
benchmark."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Figure:
    """One published row: a model, a method, its CorLoc per benchmark, and where it was published."""

    source: str
    citation: str
    model: str
    method: str
    protocol: str
    backbones: tuple[str, ...]
    same_weights: bool
    test_time_registers: str | None
    corloc: dict[str, float]


@functools.cache
def figures() -> tuple[Figure, ...]:
    """Every figure of ``published.json``."""
    data = json.loads(resources.files("lost_reg.table").joinpath("published.json").read_text(encoding="utf-8"))
    sources = data["sources"]
    return tuple(Figure(f["source"], sources[f["source"]]["citation"], f["model"], f["method"], f["protocol"],
                        tuple(f["backbones"]), f["same_weights"], f["test_time_registers"], dict(f["corloc"]))
                 for f in data["figures"])


def published_for(backbone: str, weights: str | None, test_time_registers: str | None, method: str,
                  kind: str) -> list[dict[str, Any]]:
    """The published figures beside a cell: the backbone's hub weights (``weights`` None; local files may hold
    anything), with the same test-time registers and method, on benchmark ``kind``; exact weights first."""
    if weights is not None:
        return []
    found = [f for f in figures() if backbone in f.backbones and f.test_time_registers == test_time_registers
             and f.method == method and kind in f.corloc]
    return [{"corloc": f.corloc[kind], "same_weights": f.same_weights, "model": f.model, "protocol": f.protocol,
             "source": f.source, "citation": f.citation}
            for f in sorted(found, key=lambda f: not f.same_weights)]
