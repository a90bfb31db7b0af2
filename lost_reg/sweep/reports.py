"""The sweep's reports: ``results.csv``, ``results.md``, ``corloc.png`` and the best rows, each written atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..evaluation import CorLoc
from ..files import atomic_write, write_text
from ..methods import METHODS
from .grid import SweepSetting
from .rows import Row


def write_reports(rows: list[Row], out: Path, command: Callable[[SweepSetting], list[str]],
                  title: str) -> dict[str, Any]:
    """``results.csv``, ``results.md``, ``corloc.png`` and the best rows (returned, for ``best.json``), each row
    with ``command(setting)``: the ``lost-reg eval`` command line that reproduces it."""
    out.mkdir(parents=True, exist_ok=True)
    option_names = list(dict.fromkeys(k for r in rows for k in r.setting.method.options()))
    table = io.StringIO(newline="")
    w = csv.writer(table)
    w.writerow(["rank", "setting", "prep", "features", "layer", "method", *option_names, "corloc", "found",
                "total", "mean_iou", "whole_image", "robust", "method_ms_per_image", "predictions"])
    for rank, r in enumerate(rows, 1):
        s, opts = r.setting, r.setting.method.options()
        w.writerow([rank, s.name, s.prep, s.features, s.layer, s.method.name,
                    *(opts.get(k, "") for k in option_names), f"{r.corloc.corloc:.4f}", r.corloc.found,
                    r.corloc.total, f"{r.mean_iou:.4f}", r.whole, f"{r.robust:.4f}",
                    "" if r.ms is None else f"{r.ms:.2f}", f"settings/{s.slug}/predictions.jsonl"])
    write_text(out / "results.csv", table.getvalue())
    best = rows[0]
    robust = max(rows, key=lambda r: (r.robust, r.corloc.corloc, -r.whole))
    summary = {"best": _row_json(best, command), "robust": _row_json(robust, command)}
    lines = [f"# {title}", "",
             f"Best: `{best.setting.name}`: {_pct(best.corloc)}, {best.whole} whole-image boxes.", "",
             f"Most robust (its CorLoc averaged with its swept neighbours', {100 * robust.robust:.1f} %): "
             f"`{robust.setting.name}`: {_pct(robust.corloc)}.", "",
             "Reproduce the best row:", "", "```bash", " ".join(summary["best"]["command"]), "```", "",
             "| # | setting | CorLoc | mean IoU | whole-image boxes | robust | method ms/img |",
             "|---|---|---|---|---|---|---|"]
    for rank, r in enumerate(rows, 1):
        lines.append(f"| {rank} | `{r.setting.name}` | {_pct(r.corloc)} | {r.mean_iou:.3f} | "
                     f"{r.whole}/{r.corloc.total} | {100 * r.robust:.1f} % | "
                     f"{'—' if r.ms is None else f'{r.ms:.1f}'} |")
    write_text(out / "results.md", "\n".join(lines) + "\n")
    chart(rows, out / "corloc.png", title)
    return summary


def _pct(c: CorLoc) -> str:
    return f"{100 * c.corloc:.1f} % ({c.found}/{c.total})"


def _row_json(r: Row, command: Callable[[SweepSetting], list[str]]) -> dict[str, Any]:
    s = r.setting
    return {"setting": s.name, "prep": s.prep, "features": s.features, "layer": s.layer, "method": s.method.name,
            "options": s.method.options(), "corloc": r.corloc.corloc, "found": r.corloc.found,
            "total": r.corloc.total, "mean_iou": r.mean_iou, "whole_image": r.whole, "robust": r.robust,
            "command": command(s)}


def chart(rows: list[Row], path: Path, title: str, top: int = 40) -> None:
    """A horizontal bar chart of the ``top`` settings' CorLoc (whole-image boxes written beside each bar)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = rows[:top][::-1]
    colours = dict(zip(METHODS, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    fig, ax = plt.subplots(figsize=(11, 0.8 + 0.28 * len(shown)))
    ax.barh(range(len(shown)), [100 * r.corloc.corloc for r in shown],
            color=[colours.get(r.setting.method.name, "tab:grey") for r in shown])
    ax.set_yticks(range(len(shown)), [r.setting.name for r in shown], fontsize=7)
    for y, r in enumerate(shown):
        ax.text(100 * r.corloc.corloc + 0.5, y, f"{r.corloc.found}/{r.corloc.total}, whole {r.whole}",
                va="center", fontsize=6)
    ax.set_xlabel("CorLoc (%)")
    ax.set_xlim(0, 100)
    ax.set_title(title if len(rows) <= top else f"{title} (top {top} of {len(rows)})", fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
