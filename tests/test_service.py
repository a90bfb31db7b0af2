"""The HTTP service in-process (FastAPI TestClient, lifespan running) on a tiny random ViT."""

from __future__ import annotations

import io
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as mask_utils

from lost_reg.backbone import Backbone
from lost_reg.images import decode_image
from lost_reg.methods import Lost, TokenCut
from lost_reg.pipeline import Localizer
from lost_reg.refine import DEFAULT_REFINE, REFINERS
from service.app import create_app
from service.metrics import Metrics
from service.settings import Settings
from service.worker import InferenceWorker, RunKey

from .conftest import TINY, tiny_backbone


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """RGB uint8: a noisy gradient with a bright ellipse off-centre, like an object on a background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    image = np.stack([x * 120 // max(width, 1), y * 120 // max(height, 1), np.full_like(x, 60)], -1)
    inside = ((x - width * 0.6) / (width * 0.2)) ** 2 + ((y - height * 0.4) / (height * 0.25)) ** 2 < 1
    image[inside] = (230, 200, 40)
    return np.clip(image + rng.integers(0, 25, image.shape), 0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    im = Image.fromarray(image)
    (im.convert(mode) if mode else im).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims ``width`` x ``height``: only a header check stops it."""
    data = bytearray(encode(np.zeros((1, 1, 3), np.uint8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def files(*items: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("images", (name, content, "application/octet-stream")) for name, content in items]


def tiny_localizer() -> Localizer:
    """LOST on the paper's graph (zero-padded images): the server default most tests exercise."""
    return Localizer(tiny_backbone(), Lost(), device="cpu")


@pytest.fixture
def make_client(monkeypatch):
    """``make(localizer=None, **settings)``: a started TestClient; the environment cannot leak in."""
    for name in list(os.environ):
        if name.startswith("LOST_REG_"):
            monkeypatch.delenv(name)
    clients: list[TestClient] = []

    def make(localizer: Localizer | None = None, **settings) -> TestClient:
        client = TestClient(create_app(Settings(**settings), localizer or tiny_localizer()))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client) -> TestClient:
    return make_client()


def error_of(response) -> str:
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    return body["error"]["code"]


def test_health_ready_model_and_docs(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    info = client.get("/v1/model").json()
    assert info["backbone"] == "vit_small_patch14_dinov2"
    assert (info["patch_size"], info["registers"], info["device"]) == (14, 4, "cpu")
    assert info["dtype"] == "float32"  # the Localizer's default, auto: the shipped recipes keep float32
    assert info["limits"]["max_files"] == 16 and info["defaults"]["max_side"] == 1024
    assert client.get("/docs").status_code == 200
    body = client.get("/openapi.json").json()["paths"]["/v1/boxes"]["post"]["requestBody"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert {"images", "k_patches", "features", "affinity", "max_side", "return_mask"} <= set(schema["properties"])


def test_the_model_reports_the_precision_that_runs(make_client, monkeypatch, bf16_recipe):  # no LOST_REG_* leaks in
    tiny = {"backbone": "vit_small_patch14_dinov2", "weights": "random", "model_args": {**TINY, "reg_tokens": 4},
            "device": "cpu"}
    for forced, dtype, runs in (("1", "auto", "bfloat16"), ("0", "auto", "float32"), ("1", "float32", "float32")):
        monkeypatch.setenv("LOST_REG_NATIVE_BF16", forced)  # forces the CPU probe: with / without AVX512-BF16
        with TestClient(create_app(Settings(**tiny, dtype=dtype))) as client:  # the model built from the settings
            assert client.get("/v1/model").json()["dtype"] == runs
            response = client.post("/v1/boxes", files=files(("a.png", encode(photo(100, 80)))))
            assert response.status_code == 200 and response.json()["results"][0]["width"] == 100


def test_not_ready_before_startup():
    client = TestClient(create_app(Settings(), tiny_localizer()))  # no `with`: the lifespan has not run
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and error_of(response) == "not_ready"
    response = client.post("/v1/boxes", files=files(("a.png", encode(photo(64, 64)))))
    assert response.status_code == 503 and response.headers["retry-after"]


def test_boxes_match_the_localizer_in_upload_order(make_client):
    localizer = tiny_localizer()
    client = make_client(localizer)
    uploads = [
        ("rgb.png", encode(photo(120, 90, 1))),
        ("photo.jpg", encode(photo(200, 150, 2), "JPEG")),
        ("grey.png", encode(photo(70, 100, 3), mode="L")),
        ("alpha.png", encode(photo(90, 90, 4), mode="RGBA")),
    ]
    response = client.post("/v1/boxes", files=files(*uploads))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["backbone"] == "vit_small_patch14_dinov2"
    assert [r["filename"] for r in body["results"]] == [name for name, _ in uploads]
    for (name, data), result in zip(uploads, body["results"]):
        expected = localizer.localize([decode_image(data, name)])[0]
        assert (result["width"], result["height"]) == (expected.width, expected.height)
        assert tuple(result["box"]) == expected.box and tuple(result["seed"]) == expected.seed
        assert result["ms"] > 0 and "mask" not in result


def test_real_photo(client, quokka):
    path, _ = quokka
    response = client.post("/v1/boxes", files=files(("quokka.jpg", path.read_bytes())))
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    with Image.open(path) as im:
        assert (result["width"], result["height"]) == im.size
    x0, y0, x1, y1 = result["box"]
    assert 0 <= x0 < x1 <= result["width"] and 0 <= y0 < y1 <= result["height"]


def test_return_mask_decodes_to_the_detection_mask(make_client):
    localizer = tiny_localizer()
    client = make_client(localizer)
    data = encode(photo(150, 100, 5))
    response = client.post("/v1/boxes", files=files(("a.png", data)), data={"return_mask": "true"})
    (result,) = response.json()["results"]
    expected = localizer.localize([decode_image(data)])[0].result.mask
    rle = {"size": result["mask"]["size"], "counts": result["mask"]["counts"].encode()}
    np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), expected)
    assert tuple(result["grid"]) == expected.shape == (8, 11) and result["cell_px"] == [14, 14]


def test_per_request_options_use_their_own_features_and_lost_settings(make_client):
    localizer = tiny_localizer()
    client = make_client(localizer)
    data = encode(photo(300, 200, 6))
    options = {"features": "q", "k_patches": "5", "affinity": "raw", "max_side": "112"}
    response = client.post("/v1/boxes", files=files(("a.png", data)), data={**options, "return_mask": "1"})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    bb = localizer.backbone
    q = Localizer(Backbone(bb.model, features="q", layer=bb.layer), Lost(5, "raw"), max_side=112, device="cpu")
    expected = q.localize([decode_image(data)])[0]
    assert tuple(result["box"]) == expected.box and tuple(result["seed"]) == expected.seed
    assert (result["width"], result["height"]) == (300, 200)
    assert tuple(result["grid"]) == (6, 8) and result["cell_px"] == pytest.approx([14 * 300 / 112, 14 * 200 / 75])


def test_method_form_field_picks_tokencut_and_its_options(make_client):
    localizer = tiny_localizer()
    client = make_client(localizer)
    data = encode(photo(200, 150, 7))
    response = client.post("/v1/boxes", files=files(("a.png", data)), data={"method": "tokencut", "tau": "0.3"})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    expected = Localizer(localizer.backbone, TokenCut(tau=0.3), device="cpu").localize([decode_image(data)])[0]
    assert tuple(result["box"]) == expected.box and tuple(result["seed"]) == expected.seed
    response = client.post("/v1/boxes", files=files(("a.png", data)), data={"method": "lost", "tau": "0.3"})
    assert response.status_code == 422 and "tau does not apply to method lost" in response.text
    model = client.get("/v1/model").json()
    assert model["method"].startswith("lost(") and model["defaults"]["method"] == "lost"
    schema = client.get("/openapi.json").json()["paths"]["/v1/boxes"]["post"]["requestBody"]
    fields = schema["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"method", "tau", "eps", "solver", "k_patches", "affinity"} <= set(fields)


@pytest.mark.parametrize("options", [
    {"k_patches": "0"}, {"k_patches": "many"}, {"features": "cls"}, {"affinity": "nope"},
    {"max_side": "5000"}, {"return_mask": "perhaps"}, {"k_patch": "5"}, {"method": "maskcut"},
    {"tau": "7"}, {"affinity": "bias:nan"}, {"masks": "png"}, {"max_objects": "0"}, {"max_objects": "11"},
    {"refine": "crf9"},
])
def test_bad_options_are_422(client, options):
    response = client.post("/v1/boxes", files=files(("a.png", encode(photo(64, 64)))), data=options)
    assert response.status_code == 422 and error_of(response) == "invalid_option"
    assert next(iter(options)) in response.json()["error"]["message"]


def test_a_body_without_its_closing_boundary_is_400(client):
    body = (b'--xyz\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + encode(photo(40, 40)))
    response = client.post("/v1/boxes", content=body, headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.status_code == 400 and error_of(response) == "bad_multipart"
    assert "closing boundary" in response.json()["error"]["message"]


def test_missing_or_textual_images_are_422(client):
    response = client.post("/v1/boxes", data={"k_patches": "5"})
    assert response.status_code == 422 and error_of(response) == "no_images"
    response = client.post("/v1/boxes", data={"images": "/etc/passwd"})
    assert response.status_code == 422 and error_of(response) == "invalid_request"


@pytest.mark.parametrize(("content", "status", "code"), [
    (b"just some text, no pixels", 415, "not_an_image"),
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", 415, "not_an_image"),
    (encode(photo(64, 64))[:200], 422, "corrupt_image"),
    (b"", 422, "empty_file"),
    (encode(photo(10, 60)), 422, "image_too_small"),
    (png_bomb(100_000, 100_000), 413, "too_many_pixels"),
])
def test_bad_file_gets_its_status_and_the_server_goes_on(client, content, status, code):
    response = client.post("/v1/boxes", files=files(("bad.png", content)))
    assert response.status_code == status and error_of(response) == code
    assert "bad.png" in response.json()["error"]["message"]
    assert client.post("/v1/boxes", files=files(("ok.png", encode(photo(64, 64))))).status_code == 200


def test_a_bomb_is_refused_with_the_configured_limit_not_pils(make_client):
    response = make_client(max_pixels=1_000_000).post("/v1/boxes", files=files(("bomb.png", png_bomb(20_000, 20_000))))
    message = response.json()["error"]["message"]
    assert response.status_code == 413 and "20000x20000" in message and "limit of 1,000,000 per image" in message
    assert "178956970" not in message and "178,956,970" not in message


def test_too_small_after_max_side(client):
    response = client.post("/v1/boxes", files=files(("wide.png", encode(photo(600, 20)))), data={"max_side": "300"})
    assert response.status_code == 422 and "downscaled to 300x10" in response.json()["error"]["message"]


def test_mixed_request_reports_each_file(client):
    good = encode(photo(80, 80))
    response = client.post("/v1/boxes", files=files(("a.png", good), ("b.txt", b"hello"), ("c.png", b""),
                                                    ("d.png", good)))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["filename"] for r in results] == ["a.png", "b.txt", "c.png", "d.png"]
    assert results[0]["box"] == results[3]["box"]
    assert results[1]["error"]["code"] == "not_an_image" and results[2]["error"]["code"] == "empty_file"
    metrics = client.get("/metrics").text
    assert 'lost_reg_errors_total{code="not_an_image"} 1.0' in metrics
    assert 'lost_reg_errors_total{code="empty_file"} 1.0' in metrics


def test_all_bad_files_fail_the_request(client):
    response = client.post("/v1/boxes", files=files(("x.txt", b"text"), ("y.png", b"")))
    assert response.status_code == 415 and error_of(response) == "not_an_image"
    assert "x.txt" in response.json()["error"]["message"] and "y.png" in response.json()["error"]["message"]


def test_size_limits(make_client):
    client = make_client(max_file_mb=0.05, max_files=2, max_pixels=100 * 100)
    noise = encode(np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))  # ~120 kB
    response = client.post("/v1/boxes", files=files(("big.png", noise)))
    assert response.status_code == 413 and error_of(response) == "file_too_large"
    response = client.post("/v1/boxes", files=files(("big.png", encode(photo(120, 100)))))
    assert response.status_code == 413 and error_of(response) == "too_many_pixels"
    response = client.post("/v1/boxes", files=files(*[(f"{i}.png", encode(photo(50, 50))) for i in range(3)]))
    assert response.status_code == 413 and error_of(response) == "too_many_files"
    huge = b"x" * (2 * 2**20)  # over 2 files x 0.05 MB + 1 MB of framing
    response = client.post("/v1/boxes", files=files(("huge.png", huge)))
    assert response.status_code == 413 and error_of(response) == "request_too_large"  # by Content-Length
    boundary = "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"huge.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + huge + f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/v1/boxes", content=iter([body[i:i + 65536] for i in range(0, len(body), 65536)]),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and error_of(response) == "request_too_large"  # streamed, no length
    assert client.post("/v1/boxes", files=files(("ok.png", encode(photo(60, 60))))).status_code == 200


def test_bearer_token(make_client):
    client = make_client(api_key="s3cret")
    upload = files(("a.png", encode(photo(64, 64))))
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
        response = client.post("/v1/boxes", files=upload, headers=headers)
        assert response.status_code == 401 and error_of(response) == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"
        assert client.get("/metrics", headers=headers).status_code == 401
        assert client.get("/v1/model", headers=headers).status_code == 401
    good = {"Authorization": "Bearer s3cret"}
    assert client.post("/v1/boxes", files=upload, headers=good).status_code == 200
    assert client.get("/metrics", headers=good).status_code == 200


def test_timeout_is_504_and_the_server_recovers(make_client):
    localizer = tiny_localizer()
    slow = threading.Event()
    run = localizer.localize_prepared_multi

    def slow_localize(batch, *args, **kwargs):
        if slow.is_set():
            time.sleep(1.0)
        return run(batch, *args, **kwargs)

    localizer.localize_prepared_multi = slow_localize
    client = make_client(localizer, timeout_s=0.3)
    upload = files(("a.png", encode(photo(64, 64))))
    slow.set()
    response = client.post("/v1/boxes", files=upload)
    assert response.status_code == 504 and error_of(response) == "timeout"
    slow.clear()
    time.sleep(1.0)
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    assert client.post("/v1/boxes", files=upload).status_code == 200


def test_inference_failure_is_500_and_the_server_recovers(make_client):
    localizer = tiny_localizer()
    run = localizer.localize_prepared_multi
    client = make_client(localizer)
    localizer.localize_prepared_multi = lambda batch, *a, **k: (_ for _ in ()).throw(RuntimeError("CUDA out of memory"))
    response = client.post("/v1/boxes", files=files(("a.png", encode(photo(64, 64)))))
    assert response.status_code == 500 and error_of(response) == "inference_failed"
    assert "memory" not in response.json()["error"]["message"]  # details stay in the server log
    localizer.localize_prepared_multi = run
    assert client.post("/v1/boxes", files=files(("a.png", encode(photo(64, 64))))).status_code == 200


def test_full_queue_is_503(make_client):
    client = make_client(max_queue=1)
    response = client.post("/v1/boxes", files=files(("a.png", encode(photo(64, 64))), ("b.png", encode(photo(64, 64)))))
    assert response.status_code == 503 and error_of(response) == "busy" and response.headers["retry-after"]


def test_metrics(client):
    assert client.post("/v1/boxes", files=files(("a.png", encode(photo(64, 64))))).status_code == 200
    client.post("/v1/boxes", files=files(("a.txt", b"text")))
    client.get("/nowhere")
    text = client.get("/metrics").text
    assert 'lost_reg_http_requests_total{method="POST",path="/v1/boxes",status="200"} 1.0' in text
    assert 'lost_reg_http_requests_total{method="POST",path="/v1/boxes",status="415"} 1.0' in text
    assert 'lost_reg_http_requests_total{method="GET",path="unmatched",status="404"} 1.0' in text
    assert 'lost_reg_http_request_seconds_bucket{le="+Inf",path="/v1/boxes"} 2.0' in text
    assert 'lost_reg_errors_total{code="not_an_image"} 1.0' in text
    assert 'lost_reg_errors_total{code="not_found"} 1.0' in text
    assert "lost_reg_batch_size_count 1.0" in text  # the one image: the start-up warm-up is not counted
    assert "lost_reg_images_total 1.0" in text and "lost_reg_queue_depth 0.0" in text
    assert "lost_reg_inference_seconds_count 1.0" in text


def test_cors_only_when_configured(make_client):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    closed = make_client().options("/v1/boxes", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    opened = make_client(cors_origins="https://app.example").options("/v1/boxes", headers=preflight)
    assert opened.headers["access-control-allow-origin"] == "https://app.example"


def test_worker_batches_by_options_and_shape():
    localizer = tiny_localizer()
    metrics = Metrics()
    worker = InferenceWorker(localizer, max_batch=16, max_wait_s=0.3, metrics=metrics)
    worker.start()
    try:
        images = [photo(112, 84, i) for i in range(3)] + [photo(56, 70, i) for i in range(3)]
        prepared = [localizer.prepare(im) for im in images]
        raw = RunKey("k", Lost(100, "centered"))
        jobs = [worker.submit(p, worker.default_key) for p in prepared] + [worker.submit(prepared[0], raw)]
        detections = [job.future.result(timeout=10)[0] for job in jobs]
    finally:
        worker.close(timeout=10)
    for got, want in zip(detections, localizer.localize(images)):
        assert got.box == want.box and got.seed == want.seed
    batch = metrics.registry.get_sample_value
    assert batch("lost_reg_batch_size_count") == 3 and batch("lost_reg_batch_size_sum") == 7  # 3 + 3 + 1
    assert not worker.alive


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("LOST_REG_MODEL_ARGS", '{"depth": 2, "embed_dim": 48}')
    monkeypatch.setenv("LOST_REG_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("LOST_REG_MAX_FILE_MB", "2.5")
    s = Settings()
    assert s.model_args == {"depth": 2, "embed_dim": 48}
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.max_file_bytes == int(2.5 * 2**20)
    monkeypatch.setenv("LOST_REG_AFFINITY", "wobbly")
    with pytest.raises(ValueError, match="affinity"):
        Settings()


def test_serve_flags_override_the_environment(monkeypatch):
    from lost_reg.cli import build_parser
    from lost_reg.cli.serve_cmd import settings

    monkeypatch.setenv("LOST_REG_BACKBONE", "vit_small_patch14_dinov2")
    monkeypatch.setenv("LOST_REG_MAX_BATCH", "3")
    monkeypatch.setenv("LOST_REG_MODEL_ARGS", '{"depth": 3}')
    monkeypatch.setenv("MY_KEY", "s3cret")
    args = build_parser().parse_args(["serve", "--max-files", "4", "--model-arg", "depth=2", "--api-key-env", "MY_KEY"])
    s = settings(args)
    assert (s.backbone, s.max_batch, s.max_files, s.model_args) == ("vit_small_patch14_dinov2", 3, 4, {"depth": 2})
    assert s.api_key.get_secret_value() == "s3cret" and s.max_side == 1024
    args = build_parser().parse_args(["serve", "--api-key-env", "NO_SUCH_VARIABLE_HERE"])
    with pytest.raises(ValueError, match="NO_SUCH_VARIABLE_HERE"):
        settings(args)


def test_an_option_given_twice_is_refused(client):
    data = {"return_mask": ["true", "false"]}
    response = client.post("/v1/boxes", files=files(("a.png", encode(photo(64, 64)))), data=data)
    assert response.status_code == 422 and "return_mask: given more than once" in response.text


def test_serve_help_states_the_services_max_side(capsys):
    from lost_reg.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 1024 in the service)" in text and "no downscaling" not in text


def test_masks_on_request_in_original_pixels_as_rle_or_polygons(make_client):
    from lost_reg import masks
    from lost_reg.pipeline import with_masks

    localizer = tiny_localizer()
    client = make_client(localizer)
    data = encode(photo(150, 100, 5))
    plain = client.post("/v1/boxes", files=files(("a.png", data))).json()["results"][0]
    assert "segmentation" not in plain and "objects" not in plain  # the answer of old clients, unchanged
    (result,) = client.post("/v1/boxes", files=files(("a.png", data)),
                            data={"masks": "rle", "refine": "none"}).json()["results"]
    prepared = localizer.prepare(decode_image(data))
    found = localizer.localize_prepared_multi([prepared])[0][0]
    want = with_masks(prepared, [found], 14, "none")[0].segmentation
    assert result["segmentation"] == want and want["size"] == [100, 150]
    assert masks.box(result["segmentation"]) == tuple(result["box"])
    (default,) = client.post("/v1/boxes", files=files(("a.png", data)), data={"masks": "rle"}).json()["results"]
    assert default["segmentation"] == with_masks(prepared, [found], 14, DEFAULT_REFINE)[0].segmentation
    (polygon,) = client.post("/v1/boxes", files=files(("a.png", data)),
                             data={"masks": "polygon", "refine": "none"}).json()["results"]
    assert isinstance(polygon["segmentation"], list) and all(len(p) >= 6 for p in polygon["segmentation"])
    back = masks.decode(masks.from_polygons(polygon["segmentation"], 100, 150))
    np.testing.assert_array_equal(back, masks.decode(want))  # a union of patches: polygons carry it exactly
    mixed = client.post("/v1/boxes", files=files(("small.png", encode(photo(10, 60))), ("a.png", data)),
                        data={"masks": "rle", "max_objects": "2", "refine": "none"})
    small, good = mixed.json()["results"]
    assert small["error"]["code"] == "image_too_small" and good["objects"][0]["segmentation"] == want
    info = client.get("/v1/model").json()
    assert info["defaults"]["refine"] == DEFAULT_REFINE and info["defaults"]["max_objects"] == 1
    schema = client.get("/openapi.json").json()["paths"]["/v1/boxes"]["post"]["requestBody"]
    fields = schema["content"]["multipart/form-data"]["schema"]["properties"]
    assert fields["masks"]["enum"] == ["rle", "polygon"] and fields["max_objects"]["maximum"] == 10
    assert fields["refine"]["enum"] == list(REFINERS)


def test_several_objects_per_image_best_first(make_client):
    from lost_reg import masks

    localizer = tiny_localizer()
    client = make_client(localizer, max_objects_limit=4)
    data = encode(photo(200, 150, 8))
    response = client.post("/v1/boxes", files=files(("a.png", data)),
                           data={"max_objects": "3", "masks": "rle", "refine": "none"})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    prepared = localizer.prepare(decode_image(data))
    want = localizer.localize_prepared_multi([prepared], 3)[0]
    assert [tuple(o["box"]) for o in result["objects"]] == [d.box for d in want] and len(want) == 3
    assert [o["score"] for o in result["objects"]] == [round(d.score, 4) for d in want]
    first = result["objects"][0]
    assert (result["box"], result["score"], result["seed"], result["segmentation"]) == (
        first["box"], first["score"], first["seed"], first["segmentation"])
    assert all(masks.box(o["segmentation"]) == tuple(o["box"]) for o in result["objects"])
    response = client.post("/v1/boxes", files=files(("a.png", data)), data={"max_objects": "5"})
    assert response.status_code == 422 and "max_objects: at most 4" in response.json()["error"]["message"]
    two = make_client(localizer, max_objects=2).post("/v1/boxes", files=files(("a.png", data))).json()["results"][0]
    assert [tuple(o["box"]) for o in two["objects"]] == [d.box for d in want[:2]]  # the server's default
    with pytest.raises(ValueError, match="exceeds max_objects_limit"):
        Settings(max_objects=12)


def test_export_writes_the_masks_it_is_sent_and_refuses_bad_ones(client):
    from lost_reg import masks

    mask = np.zeros((50, 100), bool)
    mask[10:40, 20:70] = True
    rle = masks.encode(mask)
    image = {"file_name": "a.jpg", "width": 100, "height": 50,
             "objects": [{"box": [20, 10, 70, 40], "score": 0.5, "segmentation": rle}]}
    response = client.post("/v1/export", json={"format": "coco", "images": [image]})
    assert response.status_code == 200, response.text
    annotation = response.json()["annotations"][0]
    assert annotation["segmentation"] == rle and annotation["area"] == 1500
    response = client.post("/v1/export", json={"format": "coco", "images": [image], "mask_format": "polygon"})
    assert response.json()["annotations"][0]["segmentation"] == [[20, 10, 20, 40, 70, 40, 70, 10]]
    response = client.post("/v1/export", json={"format": "labelstudio", "images": [image]})
    results = response.json()[0]["predictions"][0]["result"]
    assert [r["type"] for r in results] == ["rectanglelabels", "brushlabels"]
    assert results[1]["value"]["rle"] == masks.brush_rle(mask)
    for bad, problem in [({**rle, "counts": "!!"}, "characters outside"), ({**rle, "size": [100, 50]}, "not the image"),
                         ({**rle, "counts": rle["counts"] + "5"}, "cover"), ({"size": [50, 100]}, "counts")]:
        wrong = {**image, "objects": [{**image["objects"][0], "segmentation": bad}]}
        response = client.post("/v1/export", json={"format": "coco", "images": [wrong]})
        assert response.status_code == 422 and problem in response.json()["error"]["message"], response.text
    big = {"file_name": "b.jpg", "width": 20_000, "height": 20_000, "objects": [
        {"box": [0, 0, 1, 1], "score": 0.5, "segmentation": masks.encode(np.zeros((20_000, 20_000), bool))}]}
    response = client.post("/v1/export", json={"format": "coco", "images": [big]})
    assert response.status_code == 413 and error_of(response) == "request_pixels"
