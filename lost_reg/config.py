"""The typed run configuration: every option declared once, with its type, default and help.

Options come in sections (pydantic models, one argument group each); a job's configuration is a flat
model made of sections, so ``config.weights``, ``LOST_REG_WEIGHTS`` and ``--weights`` are one field.
Generated from these declarations: the command-line flags (:mod:`lost_reg.cli.options`), the
service's ``LOST_REG_*`` settings (:mod:`service.settings`), its per-request options and so the web
form (:mod:`service.schemas`), ``summary.json``'s ``config`` (:meth:`Options.record`), which
``--config`` reads back, and the sweep's reproduce commands (:meth:`Options.argv`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, create_model

from .artifacts import MAX_SHARE, MIN_GAP, MIN_SEPARATION
from .backbone import FEATURES
from .datasets import DatasetOptions
from .devices import AUTO, DTYPES
from .images import MAX_PIXELS, PREPS
from .methods import METHODS, all_option_specs
from .models import DEFAULT_BACKBONE, OFFLINE_BACKBONE
from .options import Cli, Options
from .posembed import POS_RESAMPLES
from .refine import DEFAULT_REFINE, REFINERS

PATHS_HELP = "images: files, folders (searched recursively), glob patterns or .txt lists of paths"


# ------------------------------------------------------------------------------------------- sections


class ModelOptions(Options):
    """Which model, with which weights, where and in which precision."""

    group: ClassVar[str | None] = "backbone"
    backbone: str | None = Field(
        None, description="timm ViT name (with or without registers), Meta's torch.hub name (dinov2_vits14_reg, "
                          "dino_vits16…), Hugging Face repo (facebook/dinov2-with-registers-small), or "
                          f"{OFFLINE_BACKBONE} (no network needed); default: the architecture in --weights, "
                          f"else {DEFAULT_BACKBONE}")
    weights: str | None = Field(
        None, description="local weights instead of the pretrained download: a file or a Hugging Face folder, in "
                          "timm, DINO, DINOv2 (also training checkpoints) or transformers layout (README, Backbones "
                          "and weights); 'random' for an untrained model")
    pos_resample: Literal[(AUTO, *POS_RESAMPLES)] = Field(  # type: ignore[valid-type]
        AUTO, description="how the position table is resampled to other grids: auto = as the code the weights "
                          "were published with (README, Fidelity); timm, dino or hf to override")
    model_args: Annotated[dict[str, Any], Cli(flag="--model-arg", metavar="KEY=VALUE", pairs=True)] = Field(
        default_factory=dict, description="extra timm.create_model keyword, e.g. depth=2 (repeatable)")


class FeatureOptions(Options):
    """Which features of which block the method reads."""

    group: ClassVar[str | None] = "backbone"
    features: Literal[(AUTO, *FEATURES)] = Field(  # type: ignore[valid-type]
        AUTO, description="which features build the method's graph (auto: the backbone family's recipe, README "
                          "Defaults)")
    layer: int | None = Field(None, description="transformer block to take features from, e.g. -1 for the last "
                                                "(default: the recipe's)")


class RuntimeOptions(Options):
    """Test-time registers, device and precision."""

    group: ClassVar[str | None] = "backbone"
    test_time_registers: Annotated[str | None, Cli(metavar="NEURONS")] = Field(
        None, description="add a test-time register driven by these register neurons: a neurons.json of "
                          "`lost-reg registers find`, or preset:dinov2_vitl14 (README, Test-time registers)")
    device: str = Field(AUTO, description="auto, cpu, cuda or cuda:N")
    dtype: Literal[(AUTO, *DTYPES)] = Field(  # type: ignore[valid-type]
        AUTO, description="backbone autocast precision; auto: bfloat16 where the device runs it natively (GPUs from "
                          "sm 8.0, CPUs with AVX512-BF16 or AMX), else float32 (README, Precision); float16 for GPUs "
                          "without bfloat16")


class CompileOptions(Options):
    """Compiling the backbone, for long jobs."""

    group: ClassVar[str | None] = "backbone"
    compile: bool = Field(False, description="torch.compile the backbone (inductor): faster per image once each "
                                             "image shape has compiled, which takes tens of seconds; for long jobs "
                                             "(README, Precision and compilation)")


class _MethodOptions(Options):
    """The discovery method (each option applies to the methods it names) and the preparation."""

    group: ClassVar[str | None] = "discovery method"
    method: Literal[(AUTO, *METHODS)] = Field(  # type: ignore[valid-type]
        AUTO, description="how the object is found from the patch features (auto: the backbone family's recipe; "
                          "README, Methods); unset options of the recipe's method come from the recipe")

    def method_options(self) -> dict[str, Any]:
        """The method options that are set (the others come from the recipe or the method)."""
        return {name: getattr(self, name) for name in all_option_specs() if getattr(self, name) is not None}


MethodOptions = create_model(
    "MethodOptions", __base__=_MethodOptions, __doc__=_MethodOptions.__doc__,
    **{name: ((Literal[spec.choices] if spec.choices else spec.type) | None,
              Field(None, description=f"{spec.help} [{', '.join(owners)}; default {spec.default}]"))
       for name, (spec, owners) in all_option_specs().items()},
    prep=(Literal[(AUTO, *PREPS)], Field(  # type: ignore[valid-type]
        AUTO, description="onto the patch grid: pad (the papers' zero-padding) or resize (nearest multiple of the "
                          "patch size); auto: pad for LOST's raw graph, else the recipe's (README, Preparation)")),
    max_side=(Annotated[int | None, Cli(default_text="no downscaling, as in LOST")],
              Field(None, ge=1, description="downscale images whose longer side exceeds this")),
)
""":class:`_MethodOptions` plus one field per option of every method (``tau``, ``k_patches``…), then the
preparation and the largest side."""


class LocalizerOptions(ModelOptions, FeatureOptions, RuntimeOptions, CompileOptions,  # type: ignore[misc,valid-type]
                       MethodOptions):
    """Everything a :class:`~lost_reg.pipeline.Localizer` is built from (:func:`~lost_reg.pipeline.build_localizer`)."""


class MaskOptions(Options):
    """How an object's patches on the grid become its mask in the image's pixels."""

    group: ClassVar[str | None] = "masks"
    refine: Literal[tuple(REFINERS)] = Field(  # type: ignore[valid-type]
        DEFAULT_REFINE, description="from the patch grid to the image's pixels: none = each patch's square, "
                                    "bilinear, guided = onto the image's edges, crf = MaskCut's dense CRF (README: "
                                    "Every object)")


class RunOptions(Options):
    """How a batch run goes: batches, decoding workers, progress, the pixel limit."""

    group: ClassVar[str | None] = "run"
    batch_size: int = Field(16, ge=1, description="images per backbone call (one padded shape per call)")
    workers: int | None = Field(None, ge=0, description="image-decoding worker processes (default: 0 on the CPU, "
                                                        "min(8, cores-1) on CUDA)")
    quiet: bool = Field(False, description="no progress bar")
    max_pixels: int = Field(MAX_PIXELS, ge=1, description="skip (and report) images whose header declares more "
                                                          "pixels than this: decompression bombs")


# ----------------------------------------------------------------------------------------------- jobs


class EvalConfig(DatasetOptions, LocalizerOptions, RunOptions):
    """``lost-reg eval``: CorLoc of one setting on a benchmark, every prediction written out."""

    out: Path = Field(description="output folder: predictions.jsonl, summary.json")
    resume: bool = Field(False, description="keep OUT/predictions.jsonl and skip the images in it")
    save_vis: Annotated[Path | None, Cli(metavar="DIR")] = Field(
        None, description="write a PNG per image: box, GT, seed, mask, the method's heat map, CLS and register "
                          "attention")


class ArtifactsConfig(ModelOptions, FeatureOptions, RuntimeOptions):
    """``lost-reg artifacts``: the registers paper's high-norm token analysis of a backbone."""

    group: ClassVar[str | None] = "analysis"

    paths: Annotated[list[str], Cli(metavar="PATH", positional=True)] = Field(description=PATHS_HELP)
    out: Path = Field(description="output folder: report.json and histogram PNGs")
    max_side: int = Field(518, ge=1, description="resize images so the longer side is at most this")
    limit: int | None = Field(None, ge=1, description="analyse the first N images only")
    min_gap: float = Field(MIN_GAP, description="outliers need a median norm this many times the others'")
    min_separation: float = Field(MIN_SEPARATION, description="outliers need this Ashman's D (log-norms) from the "
                                                              "others")
    max_share: float = Field(MAX_SHARE, description="outliers are at most this share of tokens")
    max_pixels: int = Field(MAX_PIXELS, ge=1, description="skip (and report) images whose header declares more "
                                                          "pixels than this: decompression bombs")
    quiet: bool = Field(False, description="no progress bar")


class RegistersFindConfig(ModelOptions, RuntimeOptions):
    """``lost-reg registers find``: a ViT's register neurons on calibration images."""

    group: ClassVar[str | None] = "search"

    paths: Annotated[list[str], Cli(metavar="PATH", positional=True)] = Field(
        description="calibration images (~100): files, folders, glob patterns or .txt lists of paths")
    out: Path = Field(description="neurons.json to write")
    layer: int | None = Field(None, description="block whose high-norm patches are the outliers (default: the block "
                                                "with the most)")
    top_k: int | None = Field(None, ge=1, description="number of neurons (default: 1, 2, 4… until the outliers at "
                                                      "--layer drop to a tenth)")
    limit: int = Field(100, ge=1, description="calibration images to use")
    max_side: int = Field(518, ge=1, description="downscale images whose longer side exceeds this")
    max_pixels: int = Field(MAX_PIXELS, ge=1, description="skip larger images (decompression bombs)")
    quiet: bool = Field(False, description="no progress bar")


class SweepSettings(Options):
    """The settings a sweep runs: comma lists, ranges A:B:STEP (B included) keeping a prefix (cos:0:0.5:0.1)."""

    group: ClassVar[str | None] = "settings (comma lists; ranges A:B:STEP, B included, keep a prefix: cos:0:0.5:0.1)"
    features: str = Field(AUTO, description=f"features kinds: {', '.join(FEATURES)} or auto (the recipe's)")
    layers: Annotated[str, Cli(negative=True)] = Field(
        AUTO, description="blocks, e.g. -1,-2,-3,-4 or -4:-1:1 (auto: the recipe's)")
    method: str = Field(AUTO, description=f"methods: {', '.join(METHODS)} or auto (the recipe's)")
    prep: str = Field(AUTO, description=f"preparations: {', '.join(PREPS)} or auto")


SweepOptionLists = create_model(
    "SweepOptionLists", __base__=SweepSettings, __doc__="Every method option as a list to sweep.",
    **{name: (Annotated[str | None, Cli(metavar="LIST")], Field(None, description=f"{spec.help} [{', '.join(owners)}]"))
       for name, (spec, owners) in all_option_specs().items()},
    max_side=(int | None, Field(None, ge=1, description="downscale images whose longer side exceeds this")),
)


class CacheOptions(Options):
    """Patch features on disk, so a later sweep of new settings needs no backbone."""

    group: ClassVar[str | None] = "feature cache"
    cache: Annotated[Path | None, Cli(metavar="DIR")] = Field(
        None, description="store each image's features here (safetensors, per backbone/weights/layer/kind/"
                          "preparation fingerprint); a later sweep reads them instead of running the backbone")
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="float16 halves the cache; its rows may then differ slightly from eval's")


class SweepConfig(DatasetOptions, ModelOptions, RuntimeOptions, SweepOptionLists, CacheOptions, RunOptions):  # type: ignore[misc,valid-type]
    """``lost-reg sweep``: CorLoc of many settings from one forward pass per image."""

    out: Path = Field(description="output folder")
    resume: bool = Field(False, description="keep the settings' prediction files and skip what they hold")
