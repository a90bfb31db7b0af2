"""`lost-reg table`: cells equal `lost-reg eval` image for image, selection held out and marked, resume, only new
backbones computed, one-line errors before any forward pass, published figures, the Wilson interval."""

from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path

import pytest

import lost_reg.table.runner as table_runner
from lost_reg.cli import main
from lost_reg.models import weights_identity
from lost_reg.registers import RegisterNeurons
from lost_reg.table import wilson
from lost_reg.table.published import published_for
from lost_reg.table.specs import BackboneSpec, parse_backbones

from .conftest import ROOT
from .test_eval_cli import make_voc

SAMPLE_VOC = ROOT / "data" / "sample_voc"
TINY = "vit_small_patch14_reg4_dinov2"
MODEL_ARGS = ["--model-arg", "depth=4", "--model-arg", "embed_dim=48", "--model-arg", "num_heads=3", "--device", "cpu",
              "--quiet"]


def table(out: Path, backbones: str, datasets: str, *extra: str) -> list[dict]:
    assert main(["table", "--backbones", backbones, "--datasets", datasets, "--out", str(out), *MODEL_ARGS,
                 *extra]) == 0
    return json.loads((out / "table.json").read_text())


def lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines())


def reproduce(cell: dict, out: Path) -> dict:
    """Run the cell's `lost-reg eval` command (its --out moved to ``out``); its summary."""
    command = cell["command"]
    assert command[:2] == ["lost-reg", "eval"]
    args = command[1:]
    args[args.index("--out") + 1] = str(out)
    assert main([*args, "--quiet"]) == 0
    return json.loads((out / "summary.json").read_text())


def test_each_cell_is_lost_reg_eval_with_its_command_image_for_image(tmp_path, capsys):
    neurons = tmp_path / "neurons.json"
    RegisterNeurons(TINY, weights_identity(TINY, "random"), {0: [3, 7], 2: [11]}, 2, 1.0).save(neurons)
    out = tmp_path / "table"
    cells = table(out, f"{TINY}=random+ttr:{neurons}", f"voc07:{SAMPLE_VOC}")
    printed = capsys.readouterr().out
    assert "2 cells: 2 backbone(s) × 1 dataset(s), protocol recipe" in printed
    assert [c["row"] for c in cells] == [f"{TINY}=random", f"{TINY}=random +ttr:neurons.json"]
    for i, cell in enumerate(cells):
        assert cell["setting"]["name"] == "resize/v-1/tokencut(tau=0.5,eps=1e-05,solver=lanczos,components=scipy)"
        summary = reproduce(cell, tmp_path / f"eval{i}")
        assert lines(tmp_path / f"eval{i}" / "predictions.jsonl") == lines(out / cell["predictions"])
        assert (cell["found"], cell["images"]) == (summary["found"], summary["total"]) and cell["images"] == 5
        assert cell["interval"] == wilson(cell["found"], 5)
        p = cell["provenance"]
        assert p["weights"] == weights_identity(TINY, "random") and p["publisher"] == "timm"
        assert p["pos_resample"] == "timm" and p["dtype"] == "float32" and p["device"] == "cpu"
        assert p["lost_reg"] and p["torch"] and p["timm"] and p["date"] and p["images_computed"] == 5
    assert cells[1]["provenance"]["test_time_registers"] == str(neurons)
    assert "--test-time-registers" in cells[1]["command"] and "--test-time-registers" not in cells[0]["command"]
    with (out / "table.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["row"], int(r["found"]), r["command"]) for r in rows] == [
        (c["row"], c["found"], shlex.join(c["command"])) for c in cells]
    md = (out / "table.md").read_text()
    assert f"| {cells[0]['row']} | {100 * cells[0]['corloc']:.1f} % ({cells[0]['found']}/5) [" in md
    assert "Wilson score interval" in md and shlex.join(cells[0]["command"]) in md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["backbones"] == f"{TINY}=random+ttr:{neurons}" and summary["images_computed"] == 10


def test_best_chooses_on_the_dev_set_and_reports_only_that_setting_on_the_others(tmp_path):
    dev = make_voc(tmp_path / "dev", n=4)
    out = tmp_path / "table"
    cells = table(out, f"{TINY}=random", f"dev=voc07:{dev},voc07:{SAMPLE_VOC}", "--protocol", "best",
                  "--select-on", "dev", "--biases=-0.5:0:0.25")
    chosen, held = cells
    assert (chosen["dataset"], held["dataset"]) == ("dev", "voc07")
    # keys, queries, values × the last 4 blocks × 3 biases, chosen on dev: the best candidate there
    assert len(chosen["candidates"]) == 3 * 4 * 3 and not chosen["held_out"]
    assert chosen["found"] == max(c["found"] for c in chosen["candidates"])
    assert {c["setting"].split("/lost(")[1].split(",")[1] for c in chosen["candidates"]} == {
        "affinity=cos:0", "affinity=cos:0.25", "affinity=cos:0.5"}
    assert held["held_out"] and held["setting"] == chosen["setting"] and "chosen on dev" in held["selection"]
    assert held["candidates"] == []
    runs = out / held["provenance"]["run_folder"] / "settings"
    assert len(list(runs.iterdir())) == 1  # the held-out set never ran another setting
    summary = reproduce(held, tmp_path / "eval")
    assert lines(tmp_path / "eval" / "predictions.jsonl") == lines(out / held["predictions"])
    assert held["found"] == summary["found"]
    md = (out / "table.md").read_text()
    assert "dev (4 images; selection set †)" in md and "voc07 (5 images) |" in md
    row = next(line for line in md.splitlines() if line.startswith(f"| {TINY}=random |"))
    assert row.split(" | ")[1].endswith("†") and not row.split(" | ")[2].rstrip(" |").endswith("†")


def test_choosing_on_the_evaluation_set_itself_is_asked_for_and_marked_everywhere(tmp_path, capsys):
    out = tmp_path / "table"
    assert main(["table", "--backbones", f"{TINY}=random", "--datasets", f"voc07:{SAMPLE_VOC}", "--out", str(out),
                 "--protocol", "best", *MODEL_ARGS]) == 2
    assert "--select-on" in capsys.readouterr().err and not (out / "runs").exists()
    cells = table(out, f"{TINY}=random", f"voc07:{SAMPLE_VOC}", "--protocol", "paper", "--select-on", "itself",
                  "--biases", "0,-0.5")
    assert [c["row"] for c in cells] == [f"{TINY}=random · raw gram", f"{TINY}=random · bias grid"]
    raw, grid = cells
    assert raw["setting"]["options"]["affinity"] == "raw" and raw["setting"]["features"] == "v"  # timm: values
    assert raw["held_out"] and not grid["held_out"] and "itself" in grid["selection"]
    assert len(grid["candidates"]) == 2
    md = (out / "table.md").read_text()
    assert "chosen on its own evaluation set (optimistic)" in md and "optimistic, not held out" in md
    assert next(line for line in md.splitlines() if "bias grid |" in line).endswith("† |")
    with (out / "table.csv").open() as f:
        assert [r["held_out"] for r in csv.DictReader(f)] == ["True", "False"]
    # without --select-on, paper's bias grid is left out, and says so
    capsys.readouterr()
    cells = table(tmp_path / "raw_only", f"{TINY}=random", f"voc07:{SAMPLE_VOC}", "--protocol", "paper")
    assert [c["row"] for c in cells] == [f"{TINY}=random · raw gram"]
    assert "need --select-on; left out" in capsys.readouterr().out


def test_a_killed_run_resumes_and_a_second_backbone_is_the_only_one_computed(tmp_path, monkeypatch):
    voc = make_voc(tmp_path / "voc", n=4, corrupt=1)
    out = tmp_path / "table"
    first = table(out, f"{TINY}=random", f"voc07:{voc},sample=voc07:{SAMPLE_VOC}")
    assert [c["skipped"] for c in first] == [1, 0]  # the corrupt photo: reported, remembered
    # a killed run: the last two records of a cell lost, the last line half written
    predictions = out / first[1]["predictions"]
    records = predictions.read_text().splitlines()
    predictions.write_text("\n".join(records[:-2]) + "\n" + records[-2][:20])

    created = []
    real = table_runner.create_backbone

    def spy(source, **kwargs):
        created.append(source.name)
        return real(source, **kwargs)

    monkeypatch.setattr(table_runner, "create_backbone", spy)
    other = f"{TINY}={tmp_path / 'other.safetensors'}"
    _save_other_weights(tmp_path / "other.safetensors")
    again = table(out, f"{TINY}=random,{other}", f"voc07:{voc},sample=voc07:{SAMPLE_VOC}")
    assert created == [TINY, TINY] and [c["backbone"] for c in again].count(f"{TINY}=random") == 2
    by = {(c["backbone"], c["dataset"]): c["provenance"]["images_computed"] for c in again}
    assert by == {(f"{TINY}=random", "voc07"): 0, (f"{TINY}=random", "sample"): 2,
                  (f"{TINY}=other.safetensors", "voc07"): 4, (f"{TINY}=other.safetensors", "sample"): 5}
    assert [c["found"] for c in again[:2]] == [c["found"] for c in first]
    fresh = table(tmp_path / "fresh", f"{TINY}=random", f"sample=voc07:{SAMPLE_VOC}")
    assert lines(predictions) == lines(tmp_path / "fresh" / fresh[0]["predictions"])

    created.clear()  # the finished table again, from its summary: nothing decoded, no backbone loaded, the same cells
    assert main(["table", "--config", str(out / "summary.json")]) == 0
    third = json.loads((out / "table.json").read_text())
    assert created == [] and [c["found"] for c in third] == [c["found"] for c in again]
    assert all(c["provenance"]["images_computed"] == 0 for c in third) and third[0]["skipped"] == 1


def _save_other_weights(path: Path) -> None:
    """Seeded weights of the tiny model that are not ``random``'s, as a timm state dict file."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    model = timm.create_model(TINY, pretrained=False, depth=4, embed_dim=48, num_heads=3, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


@pytest.mark.parametrize("backbones, datasets, extra, message", [
    (f"{TINY}=random", "voc07:/nowhere", [], "--datasets voc07:/nowhere: no VOC2007 dataset at /nowhere/VOC2007"),
    (f"{TINY}=random", "coco20k:/nowhere", [], "--datasets coco20k:/nowhere: coco20k needs its image list "
                                                "(--coco20k-list)"),
    (f"{TINY}=random", "voc2007:/nowhere", [], "unknown kind 'voc2007'; choose one of voc07, voc12, coco20k"),
    ("vit_smal_patch14_reg4_dinov2", f"voc07:{SAMPLE_VOC}", [], "--backbones vit_smal_patch14_reg4_dinov2: unknown "
                                                                "backbone"),
    ("vit_small_patch14_reg4_dinov2.lvd142m", f"voc07:{SAMPLE_VOC}", [],
     "--backbones vit_small_patch14_reg4_dinov2.lvd142m: could not fetch pretrained weights"),
    (f"{TINY}=/no/such/weights.pth", f"voc07:{SAMPLE_VOC}", [], "weights file not found: /no/such/weights.pth"),
    (f"{TINY}=random+ttr:preset:dinov2_vitl14", f"voc07:{SAMPLE_VOC}", [],
     "these register neurons were found for vit_large_patch14_dinov2.lvd142m"),
    (f"{TINY}=random", f"voc07:{SAMPLE_VOC}", ["--select-on", "voc12"], "--select-on 'voc12' is not a column"),
    (f"{TINY}=random", f"voc07:{SAMPLE_VOC},voc07:{SAMPLE_VOC}", [], "two columns named 'voc07'"),
    (f"{TINY}=random", f"voc07:{SAMPLE_VOC}", ["--biases", "-2"], "--biases: -2 is outside [-1, 1]"),
    (f"{TINY}=random", f"voc07:{SAMPLE_VOC}", ["--device", "cuda"], "--device cuda asked for, but torch sees no CUDA"),
])
def test_bad_tables_end_in_one_line_before_any_forward_pass(tmp_path, capsys, monkeypatch, backbones, datasets,
                                                             extra, message):
    def no_backbone(*args, **kwargs):
        raise AssertionError("a backbone was loaded before the table was checked")

    import torch
    from huggingface_hub import constants

    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    monkeypatch.setattr(table_runner, "create_backbone", no_backbone)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache, the hub offline
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "table"
    assert main(["table", "--backbones", backbones, "--datasets", datasets, "--out", str(out), *MODEL_ARGS,
                 *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not out.exists()


def test_hub_weights_in_the_local_cache_pass_the_check(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from lost_reg.models import cached_hub_weights, check_fetchable, resolve_source

    source = resolve_source("vit_small_patch14_reg4_dinov2.lvd142m")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(Exception, match="could not fetch pretrained weights"):
        check_fetchable(source)
    repo = tmp_path / "models--timm--vit_small_patch14_reg4_dinov2.lvd142m"
    blob = repo / "blobs" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c0ffee")
    (repo / "snapshots" / "c0ffee").mkdir(parents=True)
    (repo / "snapshots" / "c0ffee" / "model.safetensors").symlink_to(blob)
    check_fetchable(source)
    assert cached_hub_weights(source).resolve() == blob


def test_published_figures_go_beside_the_same_model_method_and_registers():
    def values(*args):
        return [(p["corloc"], p["same_weights"], p["source"]) for p in published_for(*args)]

    assert values("vit_large_patch14_dinov2.lvd142m", None, None, "lost", "voc07") == [
        (32.2, True, "jiang2025"), (35.3, False, "darcet2024")]
    assert values("vit_large_patch14_dinov2.lvd142m", None, "preset:dinov2_vitl14", "lost", "coco20k") == [
        (41.9, True, "jiang2025")]
    assert values("vit_large_patch14_reg4_dinov2.lvd142m", None, None, "lost", "voc12") == [
        (60.2, True, "jiang2025"), (60.0, False, "darcet2024")]
    assert values("vit_small_patch16_224.dino", None, None, "tokencut", "voc12") == [(72.1, True, "wang2022")]
    assert values("vit_small_patch16_224.dino", None, None, "lost", "coco20k") == [(50.7, True, "simeoni2021")]
    assert values("vit_large_patch14_dinov2.lvd142m", None, None, "tokencut", "voc07") == []
    assert values("vit_large_patch14_dinov2.lvd142m", "my.pth", None, "lost", "voc07") == []  # other weights


def test_backbone_items_parse_as_eval_reads_them(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    specs = parse_backbones(f"dinov2_vitl14+ttr:preset:dinov2_vitl14,{folder},vit_small_patch14_dinov2=w.pth,"
                            "dinov2_vitl14")
    assert specs == [BackboneSpec("dinov2_vitl14", "dinov2_vitl14", None),
                     BackboneSpec("dinov2_vitl14", "dinov2_vitl14", None, "preset:dinov2_vitl14"),
                     BackboneSpec(str(folder), None, str(folder)),
                     BackboneSpec("vit_small_patch14_dinov2=w.pth", "vit_small_patch14_dinov2", "w.pth")]
    assert [s.label for s in specs] == ["dinov2_vitl14", "dinov2_vitl14 +ttr:preset:dinov2_vitl14", "hf",
                                        "vit_small_patch14_dinov2=w.pth"]


def test_the_interval_is_wilsons_score_interval():
    z = 1.959963984540054
    for found, n in ((27, 50), (0, 5), (5, 5), (3102, 5011)):
        p = found / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson(found, n) == pytest.approx([centre - half, centre + half], abs=1e-9)
    assert wilson(0, 0) is None


def test_published_figures_stand_beside_whole_benchmarks_only_with_their_citation(tmp_path, monkeypatch):
    from lost_reg.table.published import figures

    lost = next(f for f in figures() if f.source == "darcet2024" and not f.same_weights and f.backbones)
    asked = []

    def beside(backbone, weights, ttr, method, kind):
        asked.append((backbone, weights, ttr, method, kind))
        return [{"corloc": lost.corloc[kind], "same_weights": False, "model": lost.model, "protocol": lost.protocol,
                 "source": lost.source, "citation": lost.citation}]

    monkeypatch.setattr(table_runner, "published_for", beside)
    dev = make_voc(tmp_path / "dev", n=2)
    cells = table(tmp_path / "t", f"{TINY}=random", f"voc07:{SAMPLE_VOC},dev=voc07:{dev}", "--protocol", "paper")
    assert asked == [(TINY, "random", None, "lost", "voc07")]  # the labelled dev set is no whole benchmark
    assert cells[0]["published"][0]["corloc"] == lost.corloc["voc07"] and cells[1]["published"] == []
    md = (tmp_path / "t" / "table.md").read_text()
    assert f"· published {lost.corloc['voc07']:.1f}≈ [1] |" in md and f"1. {lost.citation}: {lost.model}" in md
    assert "≈: for the paper's own model (never released)" in md
    with (tmp_path / "t" / "table.csv").open() as f:
        assert next(csv.DictReader(f))["published"] == f"{lost.corloc['voc07']}≈"
