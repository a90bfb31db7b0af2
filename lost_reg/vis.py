"""Pictures that show why a method chose a box, and what the CLS and register tokens attend to.

One PNG per image, a row of panels at the network's input resolution (cropped to the image):

``boxes``      the image, each object's mask tinted and its box drawn (first object green),
               the seed patch filled red, scores written on the boxes, ground truth in yellow;
heat map       the method's per-patch evidence: LOST's inverse degree (``1/degree``, bright =
               few positive edges = object-like) with the k lowest-degree patches that voted
               for the mask marked by white dots; TokenCut's ``eigenvector``, foreground side bright;
``CLS``, ``reg1``… the last block's attention of the CLS token and of each register token to the
               patches, averaged over heads (the registers paper's Figure 9).

Drawn with OpenCV and NumPy only. :class:`Visualizer` re-reads the image and runs one extra
forward pass for the attention, so it is a per-image callback for ``discover`` and ``eval``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import cv2
import numpy as np
import torch

from .backbone import prefix_attention
from .files import atomic_write
from .images import decode_image, normalize
from .methods import Discovery
from .loop import Batch, DatasetEvaluator
from .pipeline import Detection, Localizer

COLOURS = [(40, 200, 60), (255, 140, 0), (230, 40, 230), (0, 190, 255), (255, 230, 0), (140, 90, 255)]
"""RGB colour of the 1st, 2nd… object (cycled)."""
SEED = (230, 20, 20)
GT = (255, 230, 0)


def heat(values: np.ndarray, size: tuple[int, int], clip: float = 1.0) -> np.ndarray:
    """RGB uint8 [h, w, 3] heat map (TURBO) of a [rows, cols] map, patches kept square.

    Scaled between the ``clip`` and 100 − ``clip`` percentiles, so a few extreme patches do not
    leave the rest of the map dark.
    """
    lo, hi = np.percentile(values, [clip, 100 - clip])
    v = np.clip((values.astype(np.float64) - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros(values.shape)
    coloured = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    return cv2.cvtColor(cv2.resize(coloured, size, interpolation=cv2.INTER_NEAREST), cv2.COLOR_BGR2RGB)


def blend(image: np.ndarray, overlay: np.ndarray, alpha: float) -> np.ndarray:
    """``alpha`` · overlay + (1 − alpha) · image, uint8."""
    return cv2.addWeighted(overlay, alpha, image, 1 - alpha, 0)


def boxes_panel(image: np.ndarray, valid: tuple[int, int], results: Sequence[Discovery],
                scores: Sequence[float | None], patch_size: int, gt_boxes: np.ndarray | None = None,
                size: tuple[int, int] | None = None) -> np.ndarray:
    """``image`` (network input) cropped to ``valid`` and scaled to ``size``, with masks tinted, ground-truth
    boxes, each object's box (drawn inside the picture, so a whole-image box shows on all four sides), its
    seed patch, and a score tag inside the box's top-left corner. Lines and text are drawn at the final
    size, so they stay sharp and legible whatever the image's."""
    vh, vw = valid
    out = image.copy()
    for j, r in enumerate(results):
        mask = cv2.resize(r.mask.astype(np.uint8), (out.shape[1], out.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
        out[mask] = (0.6 * out[mask] + 0.4 * np.array(COLOURS[j % len(COLOURS)])).astype(np.uint8)
    out = np.ascontiguousarray(out[:vh, :vw])
    if size is not None:
        out = cv2.resize(out, size, interpolation=cv2.INTER_AREA)
    h, w = out.shape[:2]
    sx, sy = w / vw, h / vh

    def rect(box, step: float, thickness: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Corners of ``box`` (max exclusive, in units of ``step`` network pixels) inside the picture."""
        inset = thickness // 2
        x0, y0, x1, y1 = (round(v * step * k) for v, k in zip(box, (sx, sy, sx, sy)))
        return ((min(max(x0, 0) + inset, w - 1), min(max(y0, 0) + inset, h - 1)),
                (max(min(x1, w) - 1 - inset, 0), max(min(y1, h) - 1 - inset, 0)))

    for box in gt_boxes if gt_boxes is not None else []:
        cv2.rectangle(out, *rect(box[:4], 1, 1), GT, 1, cv2.LINE_AA)
    for j, r in enumerate(results):
        cv2.rectangle(out, *rect(r.box, patch_size, 2), COLOURS[j % len(COLOURS)], 2)
        sr, sc = r.seed
        cv2.rectangle(out, *rect((sc, sr, sc + 1, sr + 1), patch_size, 0), SEED, -1)
    for j, (r, s) in enumerate(zip(results, scores)):
        if s is not None:
            tag(out, f"{s:.2f}", rect(r.box, patch_size, 2)[0], COLOURS[j % len(COLOURS)])
    return out


def tag(image: np.ndarray, text: str, corner: tuple[int, int], colour: tuple[int, int, int]) -> None:
    """``text`` on a filled label of ``colour`` just inside ``corner`` (a box's top-left), kept in the image."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    (tw, th), base = cv2.getTextSize(text, font, scale, 1)
    h, w = image.shape[:2]
    x = min(corner[0] + 2, max(w - tw - 6, 0))
    y = min(corner[1] + 2, max(h - th - base - 4, 0))
    cv2.rectangle(image, (x, y), (x + tw + 4, y + th + base + 2), colour, -1)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    cv2.putText(image, text, (x + 2, y + th + 1), font, scale, ink, 1, cv2.LINE_AA)


def heat_panel(image: np.ndarray, result: Discovery, patch_size: int) -> np.ndarray:
    """The method's heat map over ``image``, its marked patches (LOST's voters) as white dots."""
    h, w = image.shape[:2]
    out = blend(image, heat(result.heat, (w, h)), 0.65)
    if result.marks is not None:
        for r, c in zip(*np.nonzero(result.marks)):
            centre = (int((c + 0.5) * patch_size), int((r + 0.5) * patch_size))
            cv2.circle(out, centre, max(1, patch_size // 6), (255, 255, 255), -1, cv2.LINE_AA)
    return out


def attention_panels(image: np.ndarray, attention: np.ndarray) -> list[np.ndarray]:
    """One heat map over ``image`` per prefix token of ``attention`` [P, rows, cols]."""
    h, w = image.shape[:2]
    return [blend(image, heat(a, (w, h)), 0.7) for a in attention]


def titled(panel: np.ndarray, title: str, colorbar: bool = False, band: int = 20) -> np.ndarray:
    """``panel`` under a white band holding ``title`` and, for heat maps, their colour scale (low → high)."""
    top = np.full((band, panel.shape[1], 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(top, title, (4, band - 6), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    if colorbar and panel.shape[1] >= 200:
        (lw, _), _ = cv2.getTextSize("low", font, 0.35, 1)
        (hw, _), _ = cv2.getTextSize("high", font, 0.35, 1)
        bar_w = 60
        x1 = panel.shape[1] - hw - 8
        x0 = x1 - bar_w
        ramp = cv2.applyColorMap(np.linspace(0, 255, bar_w).astype(np.uint8)[None].repeat(8, 0), cv2.COLORMAP_TURBO)
        top[band // 2 - 4: band // 2 + 4, x0:x1] = cv2.cvtColor(ramp, cv2.COLOR_BGR2RGB)
        cv2.putText(top, "low", (x0 - lw - 4, band - 6), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(top, "high", (x1 + 4, band - 6), font, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([top, panel])


def montage(tiles: Sequence[np.ndarray], columns: int = 4, gap: int = 4) -> np.ndarray:
    """Tiles of one size in a grid of ``columns``, separated by white ``gap`` pixels."""
    h, w = tiles[0].shape[:2]
    rows, cols = -(-len(tiles) // columns), min(columns, len(tiles))
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, columns)
        out[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w] = t
    return out


def figure(image: np.ndarray, valid: tuple[int, int], results: Sequence[Discovery], scores: Sequence[float | None],
           patch_size: int, attention: np.ndarray | None = None, num_registers: int = 0, test_time_registers: int = 0,
           gt_boxes: np.ndarray | None = None, height: int = 320, columns: int = 4) -> np.ndarray:
    """The whole picture (RGB uint8) for one image.

    ``image`` is the padded network input [Hp, Wp, 3] and ``valid`` its (height, width) without
    padding; ``attention`` is [P, rows, cols] for [CLS, registers…] whose last ``num_registers``
    are registers, of which the last ``test_time_registers`` were added at test time (panels
    ``tt-reg``; None: no attention panels);
    ``gt_boxes`` [K, 4] are in network-input pixels. Panels are scaled to ``height`` pixels.
    """
    vh, vw = valid
    size = (max(1, round(vw * height / vh)), height)
    heat = []  # (title, panel at network resolution), each drawn with its colour scale
    if results:
        heat.append((results[0].HEAT, heat_panel(image, results[0], patch_size)))
    if attention is not None:
        trained = num_registers - test_time_registers
        names = (["CLS"] * (len(attention) - num_registers) + [f"reg{i}" for i in range(1, trained + 1)]
                 + [f"tt-reg{i}" if test_time_registers > 1 else "tt-reg" for i in range(1, test_time_registers + 1)])
        heat += list(zip(names, attention_panels(image, attention)))
    tiles = [titled(boxes_panel(image, valid, results, scores, patch_size, gt_boxes, size), "boxes")]
    tiles += [titled(cv2.resize(p[:vh, :vw], size, interpolation=cv2.INTER_AREA), t, colorbar=True) for t, p in heat]
    return montage(tiles, columns)


def write_png(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB image as PNG, atomically."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode {path}")
    atomic_write(path, lambda tmp: tmp.write_bytes(data.tobytes()))


class Visualizer(DatasetEvaluator):
    """Writes ``OUT_DIR/<image_id>.png`` for an image and its detections: a hook of the inference loop (each
    output one detection, or a list of them) or a call ``vis(sample, detections)``; ground-truth boxes of
    the sample are drawn in yellow.
    """

    def __init__(self, localizer: Localizer, out_dir: Path, attention: bool = True, height: int = 320) -> None:
        self.localizer, self.out_dir, self.attention, self.height = localizer, Path(out_dir), attention, height

    def path_for(self, image_id: str) -> Path:
        """Where the picture of ``image_id`` goes: subfolders kept, nothing above ``out_dir``."""
        parts = [p for p in PurePosixPath(image_id.replace("\\", "/")).parts if p not in ("..", "/", ".")]
        return self.out_dir.joinpath(*parts[:-1], f"{parts[-1] if parts else 'image'}.png")

    def process(self, batch: Batch, outputs: Sequence[Detection | list[Detection]]) -> None:
        for sample, output in zip(batch.samples, outputs):
            self(sample, output if isinstance(output, list) else [output])

    def __call__(self, sample, detections: Sequence[Detection]) -> Path:
        """Draw ``detections`` of ``sample`` (a :class:`~lost_reg.datasets.Sample`); return the PNG path."""
        dets = list(detections)
        prepared = self.localizer.prepare(decode_image(sample.path, name=sample.image_id))
        attention = self.prefix_attention(prepared.pixels, prepared.valid) if self.attention else None
        gt = getattr(sample, "gt_boxes", None)
        sx, sy = prepared.scale
        gt = None if gt is None or len(gt) == 0 else np.asarray(gt, np.float64)[:, :4] * np.array([sx, sy, sx, sy])
        bb = self.localizer.backbone
        picture = figure(prepared.pixels.permute(1, 2, 0).numpy(), prepared.valid, [d.result for d in dets],
                         [d.score for d in dets], self.localizer.patch_size, attention, bb.num_registers,
                         bb.test_time_registers, gt, self.height)
        path = self.path_for(sample.image_id)
        write_png(path, picture)
        return path

    def prefix_attention(self, pixels: torch.Tensor, valid: tuple[int, int]) -> np.ndarray:
        """[P, rows, cols] last-block attention of [CLS, registers…], averaged over heads."""
        bb = self.localizer.backbone
        x = normalize(pixels[None].to(self.localizer.device), [valid], bb.mean, bb.std)
        return prefix_attention(bb, x)[0].mean(1).cpu().numpy()
