"""CorLoc on hand-made boxes, and the prediction file surviving a killed run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lost_reg.datasets import Sample
from lost_reg.evaluation import (
    CorLoc,
    CorLocEvaluator,
    PredictionWriter,
    best_iou,
    load_predictions,
    prediction_record,
    summarize,
)


def sample(image_id: str, *boxes: tuple, size: tuple[int, int] | None = (100, 80)) -> Sample:
    gt = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Sample(image_id, Path(f"{image_id}.jpg"), gt, size)


def test_best_iou_on_hand_made_boxes():
    assert best_iou((0, 0, 10, 10), np.array([[0, 0, 10, 20]])) == 0.5
    assert best_iou((0, 0, 10, 10), np.array([[5, 0, 15, 10], [0, 0, 10, 10]])) == 1.0
    assert best_iou((0, 0, 10, 10), np.array([[20, 20, 30, 30]])) == 0.0
    assert best_iou((0, 0, 10, 10), np.zeros((0, 4))) is None and best_iou((0, 0, 10, 10), None) is None


def test_corloc_counts_images_with_a_hit_and_ignores_images_without_ground_truth():
    ev = CorLocEvaluator()
    records = [
        prediction_record(sample("hit", (0, 0, 10, 20), (50, 50, 60, 60)), (0, 0, 10, 10), seed=(0, 1)),  # IoU 0.5
        prediction_record(sample("miss", (0, 0, 10, 10)), torch.tensor([0, 0, 10, 21]), width=10, height=21),  # 100/210
        prediction_record(sample("hit2", (10, 10, 50, 50)), np.array([12, 10, 50, 50]), seed=np.array([3, 4])),
        prediction_record(sample("crowd-only"), (0, 0, 5, 5)),
        prediction_record(Sample("folder-image", Path("x.jpg"), None, None), (0, 0, 5, 5), width=5, height=5),
    ]
    for record in records:
        ev.add(record)
    result = ev.evaluate()
    assert result == CorLoc(corloc=2 / 3, found=2, total=3)
    assert str(result) == "CorLoc: 66.67% (2/3)"
    assert [r["found"] for r in records] == [True, False, True, None, None]
    assert records[1]["iou"] == pytest.approx(100 / 210) and records[3]["iou"] is None
    assert records[0] == {"image_id": "hit", "width": 100, "height": 80, "box": [0, 0, 10, 10], "seed": [0, 1],
                          "iou": 0.5, "found": True}
    assert records[1]["box"] == [0, 0, 10, 21] and (records[1]["width"], records[1]["height"]) == (10, 21)
    assert records[2]["seed"] == [3, 4] and records[4]["width"] == 5
    assert json.loads(json.dumps(records)) == records  # plain JSON types only
    assert summarize(records) == result

    ev.reset()
    assert ev.evaluate() == CorLoc(0.0, 0, 0) and str(ev.evaluate()) == "CorLoc: 0.00% (0/0)"


def test_writer_starts_fresh_unless_resuming(tmp_path):
    path = tmp_path / "run" / "predictions.jsonl"
    with PredictionWriter(path, resume=False) as w:
        w.write({"image_id": "a", "found": True})
    with PredictionWriter(path, resume=False) as w:
        assert w.done_ids() == set()
        w.write({"image_id": "b", "found": False})
    assert [r["image_id"] for r in load_predictions(path)] == ["b"]


def test_resume_drops_a_truncated_last_line_and_appends(tmp_path):
    path = tmp_path / "predictions.jsonl"
    good = [{"image_id": "a", "found": True, "box": [1, 2, 3, 4]}, {"image_id": "b", "found": False}]
    path.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"image_id": "c", "fou')
    assert [r["image_id"] for r in load_predictions(path)] == ["a", "b"]  # reading alone tolerates it

    writer = PredictionWriter(path, resume=True)
    assert writer.done_ids() == {"a", "b"} and writer.dropped_lines == 1
    assert path.read_text() == "".join(json.dumps(r) + "\n" for r in good)
    with writer:
        writer.write({"image_id": "c", "found": True})
    assert load_predictions(path) == [*good, {"image_id": "c", "found": True}]
    assert summarize(load_predictions(path)) == CorLoc(2 / 3, 2, 3)
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_keeps_a_complete_last_line_without_newline(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text('{"image_id": "a", "found": true}\n\x00\x00garbage\n{"image_id": "b", "found": null}')
    writer = PredictionWriter(path, resume=True)
    assert writer.done_ids() == {"a", "b"} and writer.dropped_lines == 1
    with writer:
        writer.write({"image_id": "c", "found": False})
    assert [r["image_id"] for r in load_predictions(path)] == ["a", "b", "c"]
    assert summarize(load_predictions(path)) == CorLoc(0.5, 1, 2)


def test_resume_without_a_file_and_repeated_images(tmp_path):
    path = tmp_path / "new" / "predictions.jsonl"
    with PredictionWriter(path, resume=True) as w:
        assert w.done_ids() == set()
        w.write({"image_id": "a", "found": False})
        w.write({"image_id": "a", "found": True})
    assert load_predictions(path) == [{"image_id": "a", "found": True}]
