"""`lost-reg sweep`: the settings grammar, one forward for many settings, rows equal to `eval`, the cache."""

from __future__ import annotations

import csv
import json

import pytest

from lost_reg.cli import main
from lost_reg.methods import Lost, TokenCut
from lost_reg.sweep import SweepSetting, expand, expand_settings

from .test_eval_cli import TINY_ARGS, make_voc


def test_expand_lists_and_ranges():
    assert expand("0:0.5:0.1", float) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert expand("cos:0:0.3:0.1,raw") == ["cos:0", "cos:0.1", "cos:0.2", "cos:0.3", "raw"]
    assert expand("bias:-1:0:0.5") == ["bias:-1", "bias:-0.5", "bias:0"]
    assert expand("50:200:50,100", int) == [50, 100, 150, 200]
    assert expand("-4:-1:1", int) == [-4, -3, -2, -1]
    assert expand("0.2") == ["0.2"]
    for bad in ("", "1,,2", "0:1:0", "1:0:0.5"):
        with pytest.raises(ValueError):
            expand(bad, float)
    with pytest.raises(ValueError, match="many"):
        expand("10,many", int)


def test_settings_are_the_product_of_each_methods_own_options():
    settings = expand_settings("other", ["lost", "tokencut"],
                               {"affinity": ["raw", "cos:0.2"], "k_patches": [50, 100], "tau": [0.1, 0.2, 0.3]},
                               ["k", "v"], [-1], ["resize"])
    assert len(settings) == (2 * 2 + 3) * 2
    assert SweepSetting("resize", "v", -1, Lost(50, "cos:0.2")) in settings
    assert SweepSetting("resize", "k", -1, TokenCut(tau=0.3)) in settings
    auto = expand_settings("dino", ["auto"], {}, ["k"], [-1], ["auto"])
    assert auto == [SweepSetting("pad", "k", -1, Lost(100, "raw"))]  # DINO v1: the LOST paper's setting
    with pytest.raises(ValueError, match="--tau applies to tokencut"):
        expand_settings("other", ["lost"], {"tau": [0.2]}, ["k"], [-1], ["pad"])


def read_lines(path):
    return sorted(path.read_text().splitlines())


def test_sweep_rows_equal_eval_and_a_cached_sweep_needs_no_backbone(tmp_path, monkeypatch, capsys):
    root = make_voc(tmp_path / "voc", n=5, corrupt=1)
    out, cache = tmp_path / "sweep", tmp_path / "cache"
    args = ["sweep", "--dataset", "voc07", "--root", str(root), "--out", str(out), "--cache", str(cache), "--quiet",
            "--features", "k,tokens", "--layers=-1,-2", "--method", "lost,tokencut", "--affinity", "raw,cos:0:0.2:0.1",
            "--tau", "0.2,0.4", "--prep", "pad,resize", *TINY_ARGS]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # (4 LOST graphs + 2 TokenCut taus) × 2 features × 2 layers × 2 preparations
    assert "48 settings on 6 images: 2 forward pass(es) per image for 8 feature map(s)" in printed
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 48
    assert all(r["total"] == "5" for r in rows)  # the corrupt image is reported and skipped
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images_failed"] == 1 and summary["errors"][0]["image_id"] == "000005"
    best = json.loads((out / "best.json").read_text())
    assert {"best", "robust"} <= set(best)
    assert (out / "results.md").read_text().count("\n| ") == len(rows) + 1 and (out / "corloc.png").stat().st_size

    # any row, reproduced by `lost-reg eval` with its command, gives identical predictions
    for row in (rows[0], rows[len(rows) // 2], rows[-1]):
        setting = next(r for r in rows if r["setting"] == row["setting"])
        command = best["best"]["command"][:best["best"]["command"].index("--method")]
        flags = ["--method", setting["method"], "--features", setting["features"], "--layer", setting["layer"],
                 "--prep", setting["prep"]]
        if setting["method"] == "lost":
            flags += ["--k-patches", setting["k_patches"], "--affinity", setting["affinity"]]
        else:
            flags += ["--tau", setting["tau"], "--eps", setting["eps"]]
        run = tmp_path / f"eval{rows.index(row)}"
        command = [c if c != str(out / "best") else str(run) for c in command]
        assert main([*command[1:], *flags, "--quiet"]) == 0
        assert read_lines(run / "predictions.jsonl") == read_lines(out / setting["predictions"])
    capsys.readouterr()

    # a second sweep of new settings reads the cache: the backbone is never created
    import lost_reg.cli.sweep_cmd

    def no_backbone(*a, **k):
        raise AssertionError("the backbone was loaded although every feature is cached")

    monkeypatch.setattr(lost_reg.cli.sweep_cmd, "create_backbone", no_backbone)
    again = tmp_path / "again"
    new = [str(again) if a == str(out) else "0.2,0.3,0.4" if a == "0.2,0.4" else a for a in args]
    assert main(new) == 0
    again_summary = json.loads((again / "summary.json").read_text())
    assert again_summary["images_from_cache"] == 5 * 2  # 5 readable images × 2 preparations
    assert again_summary["images_failed"] == 1  # remembered as unreadable: not decoded again
    assert again_summary["settings"] == 48 + 8
    for row in rows:
        assert read_lines(again / row["predictions"]) == read_lines(out / row["predictions"])


def test_cache_fingerprints_separate_weights_and_preparation(tmp_path):
    from lost_reg.cache import FeatureCache
    from lost_reg.models import weights_identity

    a = tmp_path / "a.safetensors"
    a.write_bytes(b"one")
    b = tmp_path / "b.safetensors"
    b.write_bytes(b"two")
    assert weights_identity("x", str(a)) != weights_identity("x", str(b))
    cache = FeatureCache(tmp_path / "c", {"backbone": "x", "weights": weights_identity("x", str(a))})
    other = FeatureCache(tmp_path / "c", {"backbone": "x", "weights": weights_identity("x", str(b))})
    assert cache.folder("pad", ("k", -1)) != other.folder("pad", ("k", -1))
    assert cache.folder("pad", ("k", -1)) != cache.folder("resize", ("k", -1)) != cache.folder("pad", ("k", -2))
    assert cache.folder("pad", ("k", -1)) == FeatureCache(tmp_path / "c", cache.description).folder("pad", ("k", -1))
    assert json.loads((cache.folder("pad", ("v", -3)) / "fingerprint.json").read_text())["layer"] == -3
    broken = cache.path("pad", ("k", -1), "img/1")
    broken.write_bytes(b"not safetensors")
    assert broken.name == "img%2F1.safetensors" and cache.load("pad", ("k", -1), "img/1") is None


def test_resume_computes_only_what_is_missing(tmp_path, capsys):
    root = make_voc(tmp_path / "voc", n=4)
    out = tmp_path / "sweep"
    base = ["sweep", "--dataset", "voc07", "--root", str(root), "--out", str(out), "--quiet", "--method", "tokencut",
            "--tau", "0.2,0.3", "--prep", "pad", *TINY_ARGS]
    assert main([*base, "--limit", "2"]) == 0
    assert main([*base, "--resume"]) == 0
    assert json.loads((out / "summary.json").read_text())["images_processed"] == 2
    fresh = tmp_path / "fresh"
    assert main([*(a if a != str(out) else str(fresh) for a in base)]) == 0
    for folder in (out / "settings").iterdir():
        assert read_lines(folder / "predictions.jsonl") == read_lines(fresh / "settings" / folder.name /
                                                                       "predictions.jsonl")


def test_robust_score_averages_a_setting_with_its_swept_neighbours():
    from lost_reg.evaluation import corloc
    from lost_reg.sweep.rows import Row, robustness

    rows = [Row(SweepSetting("pad", "k", -1, TokenCut(tau=t)), corloc(found, 10), 0.5, 0, None)
            for t, found in ((0.1, 2), (0.2, 9), (0.3, 3), (0.4, 3))]
    robustness(rows)
    assert [round(r.robust, 4) for r in rows] == [0.55, round((2 + 9 + 3) / 30, 4), 0.5, 0.3]


def test_the_cache_keeps_features_of_each_precision_apart(tmp_path, monkeypatch, bf16_recipe):
    root = make_voc(tmp_path / "voc", n=3)
    cache = tmp_path / "cache"

    def sweep(name: str, forced: str, *flags: str) -> dict:
        monkeypatch.setenv("LOST_REG_NATIVE_BF16", forced)  # forces the CPU probe behind --dtype auto
        assert main(["sweep", "--dataset", "voc07", "--root", str(root), "--out", str(tmp_path / name), "--quiet",
                     "--cache", str(cache), "--method", "tokencut", "--prep", "pad", *TINY_ARGS, *flags]) == 0
        return json.loads((tmp_path / name / "summary.json").read_text())

    first = sweep("bf16", "1")  # auto on a CPU with native bfloat16: features computed in bfloat16
    assert (first["dtype"], first["images_from_cache"]) == ("bfloat16", 0)
    fp32 = sweep("fp32", "1", "--dtype", "float32")  # not served the bfloat16 features
    assert (fp32["dtype"], fp32["images_from_cache"], fp32["images_processed"]) == ("float32", 0, 3)
    no_bf16 = sweep("no_bf16", "0")  # auto without native bfloat16 is float32: its features are cached now
    assert (no_bf16["dtype"], no_bf16["images_from_cache"]) == ("float32", 3)
    again = sweep("again", "1")
    assert (again["dtype"], again["images_from_cache"]) == ("bfloat16", 3)
    fingerprints = sorted(json.loads(f.read_text())["dtype"] for f in cache.glob("*/fingerprint.json"))
    assert fingerprints == ["bfloat16", "float32"]
    best = json.loads((tmp_path / "bf16" / "best.json").read_text())["best"]["command"]
    assert best[best.index("--dtype") + 1] == "bfloat16"  # the reproducing eval runs what the sweep ran


def test_a_sweep_runs_its_settings_in_the_localizer_halving_on_out_of_memory(tmp_path):
    """Every setting runs through the localizer (its device plan, its method limit), on decoded and on cached
    features: a method that overflows the device on more than one image goes on, with the boxes of one that fits."""
    import functools
    import shutil

    from lost_reg.cache import FeatureCache
    from lost_reg.datasets import DatasetOptions, dataset_from
    from lost_reg.sweep import Sweep

    from .conftest import tiny_backbone
    from .test_devices import SmallMemoryTokenCut

    voc = make_voc(tmp_path / "voc", n=4) / "VOC2007"
    for i in range(1, 4):  # one shape: the whole dataset is one batch
        shutil.copy(voc / "JPEGImages/000000.jpg", voc / f"JPEGImages/00000{i}.jpg")
        shutil.copy(voc / "Annotations/000000.xml", voc / f"Annotations/00000{i}.xml")
    dataset = dataset_from(DatasetOptions(dataset="voc07", root=voc.parent))
    cache = FeatureCache(tmp_path / "cache", {"backbone": "tiny"})

    def predictions(method, name: str):
        setting = SweepSetting("resize", "k", -1, method)
        sweep = Sweep([setting], dataset, range(4), tmp_path / name, functools.cache(tiny_backbone), device="cpu",
                      dtype="float32", cache=None if name == "roomy" else cache, progress=False)
        sweep.run()
        return read_lines(sweep.predictions(setting)), sweep.stats.from_cache

    roomy, _ = predictions(TokenCut(tau=0.1), "roomy")
    assert predictions(SmallMemoryTokenCut(tau=0.1), "decoded") == (roomy, 0)
    assert predictions(SmallMemoryTokenCut(tau=0.1), "cached") == (roomy, 4)


def test_a_method_keeps_its_own_options_when_another_declares_the_name_otherwise(monkeypatch):
    """Method options share one namespace of flags and form fields, but no declaration shadows another's: a method
    declaring a name unlike its first declaration gets its own field, METHOD_NAME, everywhere (build, sweep, flags);
    the first declaration's field and its methods stay as they are."""
    import dataclasses

    import lost_reg.methods as methods
    from lost_reg.methods.base import option

    @dataclasses.dataclass(frozen=True)
    class Rival(TokenCut):
        name = "rival"
        components: str = option("torch", "its own meaning", ("torch",))

    monkeypatch.setitem(methods.METHODS, "rival", Rival)
    fields = methods.all_option_specs()
    assert fields["components"][0].default == "scipy" and fields["components"][1] == ["lost", "tokencut"]
    assert fields["rival_components"][0].choices == ("torch",) and fields["rival_components"][1] == ["rival"]
    assert fields["tau"][1] == ["tokencut", "rival"]  # declared alike: one field
    assert methods.build_method("rival", rival_components="torch") == methods.build_method("rival", components="torch")
    with pytest.raises(ValueError, match="rival_components does not apply to method lost"):
        methods.build_method("lost", rival_components="torch")
    settings = expand_settings("other", ["lost", "rival"], {"components": ["torch"], "rival_components": ["torch"],
                                                            "tau": [0.3]}, ["k"], [-1], ["pad"])
    assert [(s.method.name, s.method.components) for s in settings] == [("lost", "torch"), ("rival", "torch")]
    assert settings[1].method == Rival(tau=0.3)
    assert methods.option_values(settings[1].method)["rival_components"] == "torch"  # the flag of its own option
