"""A table's files: ``table.md`` (the grid, its settings, the published figures), ``table.csv`` and ``table.json`` (a
list of cells), each written atomically."""

from __future__ import annotations

import csv
import io
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import write_text
from .config import ITSELF
from .runner import CONFIDENCE, Cell, Plan

CSV_FIELDS = ("row", "backbone", "dataset", "kind", "corloc", "found", "images", "skipped", "ci95_low", "ci95_high",
              "setting", "selection", "held_out", "published", "published_source", "predictions", "command")
SELECTION_MARK = "†"
"""Marks a cell whose setting was chosen on its own images (the selection set, or ``--select-on itself``)."""
APPROX_MARK = "≈"
"""Marks a published figure for other weights of the same architecture (the paper's were never released)."""


def pct(cell: Cell) -> str:
    """``54.0 % (27/50) [40.4–67.0]``: CorLoc, counts and the 95 % Wilson interval."""
    text = f"{100 * cell.corloc:.1f} % ({cell.found}/{cell.images})"
    if cell.interval is not None:
        text += f" [{100 * cell.interval[0]:.1f}–{100 * cell.interval[1]:.1f}]"
    return text


def write_table(plan: Plan, cells: Sequence[Cell], command: Sequence[str]) -> str:
    """``table.md``, ``table.csv`` and ``table.json`` in the table's folder; returns the markdown."""
    out = plan.config.out
    write_text(out / "table.json", json.dumps([c.to_json() for c in cells], indent=2, ensure_ascii=False) + "\n")
    write_text(out / "table.csv", _csv(cells))
    markdown = _markdown(plan, cells, command)
    write_text(out / "table.md", markdown)
    return markdown


def _csv(cells: Sequence[Cell]) -> str:
    buffer = io.StringIO(newline="")
    w = csv.writer(buffer)
    w.writerow(CSV_FIELDS)
    for c in cells:
        low, high = ("", "") if c.interval is None else (f"{c.interval[0]:.4f}", f"{c.interval[1]:.4f}")
        published = "; ".join(f"{p['corloc']}{'' if p['same_weights'] else APPROX_MARK}" for p in c.published)
        w.writerow([c.row, c.backbone, c.dataset, c.kind, f"{c.corloc:.4f}", c.found, c.images, c.skipped, low, high,
                    c.setting["name"], c.selection, c.held_out, published,
                    "; ".join(p["citation"] for p in c.published), c.predictions, shlex.join(c.command)])
    return buffer.getvalue()


def _markdown(plan: Plan, cells: Sequence[Cell], command: Sequence[str]) -> str:
    config, first = plan.config, cells[0] if cells else None
    rows = list(dict.fromkeys(c.row for c in cells))
    columns = [col.spec.label for col in plan.columns]
    by = {(c.row, c.dataset): c for c in cells}
    selection = ("" if plan.select_on is None else
                 ", each setting chosen on its own evaluation set (optimistic)" if plan.select_on == ITSELF else
                 f", settings chosen on {plan.select_on}")
    lines = [f"# LOST table: protocol `{plan.protocol.name}`{selection}", "", f"Made by `{shlex.join(command)}`"]
    if first is not None:
        p = first.provenance
        commit = "" if not p.get("git_commit") else (f", commit {p['git_commit'][:10]}"
                                                     f"{' with local changes' if p.get('git_dirty') else ''}")
        lines[-1] += (f" on {p['date']} (lost_reg {p['lost_reg']}{commit}; torch {p['torch']}, timm {p['timm']}; "
                      f"{p['device']}, {p['dtype']}).")
    lines += ["", f"Protocol: {plan.protocol.summary}.", ""]
    if plan.select_on == ITSELF:
        lines += [f"**Every setting of a grid was chosen on the images it is reported on** (`--select-on {ITSELF}`): "
                  f"these figures are optimistic, not held out; each such cell is marked {SELECTION_MARK}.", ""]
    sizes = {col.spec.label: len(col.dataset) if config.limit is None else min(config.limit, len(col.dataset))
             for col in plan.columns}
    head = [f"{label} ({sizes[label]:,} images{'; selection set ' + SELECTION_MARK if label == plan.select_on else ''})"
            for label in columns]
    lines += ["| backbone | " + " | ".join(head) + " |", "|---" * (len(columns) + 1) + "|"]
    sources: dict[str, int] = {}
    for row in rows:
        cells_text = []
        for label in columns:
            c = by.get((row, label))
            if c is None:
                cells_text.append("—")
                continue
            text = pct(c) + ("" if c.held_out else f" {SELECTION_MARK}")
            if c.published:
                refs = []
                for p in c.published:
                    n = sources.setdefault(p["source"], len(sources) + 1)
                    refs.append(f"{p['corloc']:.1f}{'' if p['same_weights'] else APPROX_MARK} [{n}]")
                text += " · published " + ", ".join(refs)
            cells_text.append(text)
        lines.append(f"| {row} | " + " | ".join(cells_text) + " |")
    legend = f"Each cell: CorLoc % (found/n) [{100 * CONFIDENCE:.0f} % Wilson score interval]."
    if any(not c.held_out for c in cells):
        legend += f" {SELECTION_MARK}: the setting was chosen on these images (not held out)."
    if sources:
        legend += " Published figures are for the full benchmarks"
        legend += (f"; {APPROX_MARK}: for the paper's own model (never released), shown beside the closest public "
                   "weights of the same architecture." if any(not p["same_weights"] for c in cells for p in c.published)
                   else ".")
    lines += ["", legend]
    lines += _settings(cells)
    if sources:
        lines += ["", "## Published figures", ""]
        for src, n in sources.items():
            used = {(p["model"], p["protocol"]): p for c in cells for p in c.published if p["source"] == src}
            lines.append(f"{n}. {next(iter(used.values()))['citation']}: "
                         + "; ".join(f"{model} ({protocol})" for model, protocol in used) + ".")
    if plan.notes or any(c.skipped for c in cells):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in plan.notes]
        lines += [f"- {c.dataset}: {c.skipped} images skipped (unreadable files or annotations; "
                  f"see {Path(c.provenance['run_folder'])})" for c in cells if c.skipped and c.row == rows[0]]
    return "\n".join(lines) + "\n"


def _settings(cells: Sequence[Cell]) -> list[str]:
    """Per row and dataset: the setting, how it was chosen, the selection's range, the command reproducing it."""
    lines = ["", "## Settings", "", "| row | dataset | setting | how it was chosen | whole-image boxes |",
             "|---|---|---|---|---|"]
    for c in cells:
        how = c.selection
        if c.candidates:
            values = [100 * x["corloc"] for x in c.candidates]
            how += f"; CorLoc over the {len(values)} candidates here: {min(values):.1f}–{max(values):.1f} %"
        lines.append(f"| {c.row} | {c.dataset} | `{c.setting['name']}` | {how} | {c.whole_image} |")
    lines += ["", "Reproduce a cell (its predictions, image for image) with its `lost-reg eval` command:", "",
              "```bash"]
    lines += [shlex.join(c.command) for c in cells]
    return lines + ["```"]


def summary(plan: Plan, cells: Sequence[Cell], command: Sequence[str], wall_s: float) -> dict[str, Any]:
    """``summary.json``: the configuration (``--config`` reads it back), the command, totals and timings."""
    runs = {c.provenance["run_folder"]: {k: c.provenance[k] for k in ("images_computed", "images_from_cache",
                                                                      "forward_s", "wall_s")} for c in cells}
    return {"command": list(command), "protocol": plan.protocol.name, "select_on": plan.select_on,
            "cells": len(cells), "notes": plan.notes, "wall_s": round(wall_s, 3),
            "images_computed": sum(runs[f]["images_computed"] for f in runs),
            "images_from_cache": sum(runs[f]["images_from_cache"] for f in runs),
            "runs": runs,
            "config": plan.config.record()}
