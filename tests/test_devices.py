"""A GPU's branches on the CPU: its DevicePlan (whole-batch calls, pinning guarded, synchronising,
decoding workers), 16-bit autocast, and halving a batch when the device runs out of memory."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest
import torch

from lost_reg import Localizer, TokenCut
from lost_reg.backbone import Backbone, Features
from lost_reg.datasets import ImageFolder
from lost_reg.devices import (
    CPU_BF16_FLAGS,
    CPU_CHUNK,
    GRAPH_THREADS,
    NATIVE_BF16_ENV,
    BatchLimit,
    DevicePlan,
    bf16_hardware,
    can_pin,
    cpu_bf16_flags,
    graph_code,
    half_dtype,
    pin,
    plan_for,
    resolve_dtype,
    synchronize,
    using,
)
from lost_reg.images import decode_image
from lost_reg.loop import DatasetEvaluator, Failures, build_loader, inference_on_dataset
from lost_reg.methods import lost, tokencut
from lost_reg.recipes import RECIPES
from lost_reg.recipes import resolve_dtype as recipe_dtype

from .conftest import ROOT, tiny_backbone

PHOTOS = sorted((ROOT / "data" / "sample_voc" / "VOC2007" / "JPEGImages").glob("*.jpg"))
GPU = DevicePlan.of("cuda")



class Collect(DatasetEvaluator):
    """Calls ``fn(sample, output)`` for every image the loop processes."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def process(self, batch, outputs) -> None:
        for sample, output in zip(batch.samples, outputs):
            self.fn(sample, output)

def photos_of_one_shape(localizer: Localizer, n: int = 6) -> list:
    """``n`` prepared real photos of one padded shape: the sample photos and their mirror images, resized."""
    images = [decode_image(p) for p in PHOTOS]
    images += [im[:, ::-1].copy() for im in images]
    return [localizer.prepare(im[:280, :350].copy()) for im in images][:n]


def batch_sizes(localizer: Localizer) -> list[int]:
    """Records the batch size of every backbone call from now on."""
    sizes: list[int] = []
    localizer.backbone.model.patch_embed.register_forward_pre_hook(lambda _, args: sizes.append(len(args[0])))
    return sizes


def test_the_plans_differ_where_the_devices_do():
    cpu = DevicePlan.of("cpu")
    assert (cpu.backbone_chunk, cpu.pin_memory, cpu.synchronize, cpu.workers, cpu.batched_graphs) == (
        CPU_CHUNK, False, False, 0, False)
    assert (GPU.backbone_chunk, GPU.pin_memory, GPU.synchronize, GPU.batched_graphs) == (None, True, True, True)
    assert GPU.workers >= 1


@dataclasses.dataclass(frozen=True)
class PlanProbe(TokenCut):
    """TokenCut that notes whether its graphs are solved as one batch (the plan in force says)."""

    seen: list = dataclasses.field(default_factory=list, compare=False)

    def __call__(self, features, grid, exclude=None):
        self.seen.append(plan_for(features.device).batched_graphs)
        return super().__call__(features, grid, exclude)


def test_a_gpu_plan_on_the_cpu_calls_the_backbone_once_per_batch_and_finds_the_same_boxes():
    cpu = Localizer(tiny_backbone(), PlanProbe(tau=0.1), device="cpu", prep="resize")
    gpu = Localizer(tiny_backbone(), PlanProbe(tau=0.1), device="cpu", prep="resize", plan=GPU)
    batch = photos_of_one_shape(cpu)
    cpu_calls, gpu_calls = batch_sizes(cpu), batch_sizes(gpu)
    want, got = cpu.localize_prepared(batch), gpu.localize_prepared(batch)
    assert cpu_calls == [CPU_CHUNK, len(batch) - CPU_CHUNK] and gpu_calls == [len(batch)]
    assert cpu.method.seen == [False] and gpu.method.seen == [True]  # TokenCut's graphs solved as one batch
    assert not plan_for(torch.device("cpu")).batched_graphs  # outside the localizer: the CPU's own plan
    assert [d.box for d in got] == [d.box for d in want] and [d.seed for d in got] == [d.seed for d in want]
    assert gpu.timings.forward > 0 and gpu.timings.images == len(batch)


def test_pinning_happens_only_where_it_can():
    t = torch.zeros(3, 4, 4, dtype=torch.uint8)
    assert pin(t, GPU).is_pinned() == can_pin()  # on a machine without CUDA: skipped, not an error
    assert not pin(t, DevicePlan.of("cpu")).is_pinned()
    synchronize(torch.device("cpu"))  # the GPU plan's clock path, here a no-op


def test_the_engine_with_a_gpu_plan_decodes_in_workers_and_gives_the_same_boxes(caplog):
    dataset = ImageFolder([str(p) for p in PHOTOS])
    boxes = {}
    for name, plan in (("cpu", DevicePlan.of("cpu")), ("gpu", GPU)):
        localizer = Localizer(tiny_backbone(), device="cpu", plan=plan)
        found: dict[str, tuple] = {}
        failures = Failures()
        with caplog.at_level(logging.INFO, logger="lost_reg.loop"):
            stats = inference_on_dataset(localizer.localize_prepared, build_loader(localizer, dataset,
                                                                                   range(len(dataset))),
                                         [Collect(lambda s, d: found.__setitem__(s.image_id, d.box)), failures])
        assert stats.processed == len(PHOTOS) and not failures.images
        boxes[name] = found
    assert GPU.workers >= 1  # the GPU run above decoded in worker processes (workers=None: the plan's)
    assert boxes["gpu"] == boxes["cpu"]
    assert ("pinned memory asked for" in caplog.text) == (not can_pin())


def test_half_precision_is_bfloat16_where_the_hardware_has_it_else_float16():
    cpu = torch.device("cpu")
    assert half_dtype(cpu, native_bf16=False) == "float16"  # a T4 or V100
    assert half_dtype(cpu, native_bf16=True) == "bfloat16"
    assert half_dtype(cpu) == "bfloat16"  # current torch autocasts to bfloat16 on any CPU
    for dtype, want in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        localizer = Localizer(tiny_backbone(), device="cpu", dtype=dtype, plan=GPU)
        batch = photos_of_one_shape(localizer, 2)
        assert localizer.forward_taps(batch, [("k", -1)])[("k", -1)].patches.dtype == want  # autocast ran
        assert len(localizer.localize_prepared(batch)) == 2


def test_auto_is_bfloat16_only_where_the_device_multiplies_it_natively(monkeypatch, bf16_recipe):
    cpu = torch.device("cpu")
    assert resolve_dtype(cpu, "auto", native=True) == "bfloat16"
    assert resolve_dtype(cpu, "auto", native=False) == "float32"  # emulated bfloat16 is slower than float32
    assert resolve_dtype(cpu, "float16", native=False) == "float16"  # a name is taken as it is
    with pytest.raises(ValueError, match="auto or one of float32"):
        resolve_dtype(cpu, "int8")
    # the probe is the CPU's own: torch's capability probe agrees with the kernel's flags
    flags = next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo") if line.startswith("flags")), None) \
        if os.path.exists("/proc/cpuinfo") else None
    if flags is not None:
        assert cpu_bf16_flags() == tuple(f for f in CPU_BF16_FLAGS if f in flags)
    monkeypatch.delenv(NATIVE_BF16_ENV, raising=False)
    assert resolve_dtype(cpu) == ("bfloat16" if cpu_bf16_flags() else "float32")
    for forced, want, autocast_dtype in (("0", "float32", torch.float32), ("1", "bfloat16", torch.bfloat16)):
        monkeypatch.setenv(NATIVE_BF16_ENV, forced)  # forces the probe, as on a CPU with or without it
        localizer = Localizer(tiny_backbone(), device="cpu")  # the Python API's default: auto
        assert localizer.dtype == want and bf16_hardware(cpu) == (None if forced == "0" else
                                                                  f"forced ({NATIVE_BF16_ENV})")
        batch = photos_of_one_shape(localizer, 2)
        assert localizer.forward_taps(batch, [("k", -1)])[("k", -1)].patches.dtype == autocast_dtype


def test_auto_keeps_float32_for_a_recipe_whose_boxes_bfloat16_moved():
    cpu = torch.device("cpu")
    for family in RECIPES:  # the shipped recipes: bfloat16 moved boxes (other) or is unmeasured (dino)
        assert not RECIPES[family].bf16
        assert recipe_dtype(family, cpu, "auto", native=True) == "float32"
        assert recipe_dtype(family, cpu, "bfloat16", native=False) == "bfloat16"  # asked for by name: as asked
    assert Localizer(tiny_backbone(), device="cpu").dtype == "float32"


def test_a_batch_limit_halves_on_out_of_memory_and_keeps_going():
    seen: list[tuple[int, int]] = []

    def call(part: slice) -> list[int]:
        if part.stop - part.start > 3:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated: a device that holds 3)")
        seen.append((part.start, part.stop))
        return list(range(part.start, part.stop))

    limit = BatchLimit()
    assert [i for part in limit.run(10, call) for i in part] == list(range(10))
    assert seen == [(0, 3), (3, 6), (6, 9), (9, 10)] and limit.size == 3 and limit.halvings == 2
    with pytest.raises(torch.cuda.OutOfMemoryError):
        BatchLimit().run(1, lambda part: call(slice(0, 4)))  # one image that does not fit is an error


class SmallMemoryBackbone(Backbone):
    """The real backbone on a device that holds at most four images per call."""

    def forward(self, images: torch.Tensor) -> Features:
        if len(images) > 4:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated: {len(images)} images)")
        return super().forward(images)


@dataclasses.dataclass(frozen=True)
class SmallMemoryTokenCut(TokenCut):
    """TokenCut on a device whose memory holds the graphs of at most two images."""

    def __call__(self, features, grid, exclude=None):
        if len(features) > 2:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (simulated: {len(features)} graphs)")
        return super().__call__(features, grid, exclude)


def test_the_localizer_halves_its_batches_on_out_of_memory_and_gives_the_same_boxes(caplog):
    want_loc = Localizer(tiny_backbone(), TokenCut(tau=0.1), device="cpu", prep="resize", plan=GPU)
    batch = photos_of_one_shape(want_loc, 6)
    want = want_loc.localize_prepared(batch)
    backbone = SmallMemoryBackbone(tiny_backbone().model, features="k")
    small = Localizer(backbone, SmallMemoryTokenCut(tau=0.1), device="cpu", prep="resize", plan=GPU)
    with caplog.at_level(logging.WARNING, logger="lost_reg.devices"):
        got = small.localize_prepared(batch)
        again = small.localize_prepared(batch)
    assert [d.box for d in got] == [d.box for d in want] == [d.box for d in again]
    assert (small.forward_limit.size, small.forward_limit.halvings) == (3, 1)  # 6 failed, then 3 + 3
    assert (small.method_limit.size, small.method_limit.halvings) == (2, 2)  # 6, 3 failed; then 2 + 2 + 2
    assert caplog.text.count("out of device memory") == 3  # the limits stay halved: the second batch fits
    multi = small.localize_prepared_multi(batch, max_objects=2)
    assert [m[0].box for m in multi] == [d.box for d in want]


def test_graph_code_runs_at_its_own_thread_count():
    probe = graph_code(lambda features: torch.get_num_threads())
    before, x, plan = torch.get_num_threads(), torch.zeros(1), DevicePlan.of("cpu")
    assert plan.graph_threads == DevicePlan.of("cuda").graph_threads == GRAPH_THREADS  # LOST_REG_GRAPH_THREADS
    assert probe(x) == (GRAPH_THREADS or before)
    with using(dataclasses.replace(plan, graph_threads=1)):
        assert probe(x) == 1
    with using(dataclasses.replace(plan, graph_threads=0)):
        assert probe(x) == before  # 0: torch's own count
    assert torch.get_num_threads() == before
    assert tokencut.__wrapped__ and lost.__wrapped__  # both methods' graph code runs under it
