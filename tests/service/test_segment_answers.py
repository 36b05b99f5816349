"""Segmentation answers (issue 10): format=rle against pycocotools, format=confidence and min_confidence,
classes=, regions=true, the mean confidence, the drift metrics, the v2 confidence output; on a tiny model
with both outputs (answers_fixtures), on the tiny mask-only model and on the shipped ENet with CamVid."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from enet_serve.service import segment_answers as answers
from answers_fixtures import expected, write_confidence_model
from svc_helpers import CAMVID_LABELS, REPO_ROOT, camvid_val_pngs, random_rgb, tiny_repository, to_png

# pycocotools 2.0 with NumPy 2 warns on every decode; its results are what the tests check
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLASSES = CAMVID_LABELS + ["Unlabelled"]
VOID = 11


@pytest.fixture(scope="session")
def answers_repo(tmp_path_factory):
    """The tiny repository (its enet-camvid has only `mask`) plus seg-confidence (mask and confidence)."""
    repo = tiny_repository(tmp_path_factory.mktemp("answers_repo"))
    write_confidence_model(repo)
    return repo


@pytest.fixture
async def client(serve, answers_repo):
    return await serve(repository=answers_repo)


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def _rle_mask(body: dict) -> np.ndarray:
    """The class mask that the RLE entries decode to (void where no entry covers a pixel)."""
    out = np.full((body["height"], body["width"]), -1, np.int32)
    for entry in body["rle"]:
        binary = coco_mask.decode({"size": entry["size"], "counts": entry["counts"].encode()})
        assert not (out[binary == 1] >= 0).any(), "two RLE entries cover one pixel"
        out[binary == 1] = entry["index"]
    return out


# -- pure functions ------------------------------------------------------------------------------------

def test_rle_is_pycocotools_byte_for_byte():
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, (7, 5), dtype=np.uint8) for _ in range(300)]
    masks += [np.ones((4, 4), np.uint8), np.zeros((1, 1), np.uint8), np.repeat(np.arange(12, dtype=np.uint8), 90)
              .reshape(36, 30), rng.integers(0, 12, (200, 300), dtype=np.uint8)]
    for m in masks:
        got = answers.coco_rle(m, range(12))
        for c in range(12):
            binary = np.asfortranarray((m == c).astype(np.uint8))
            if not binary.any():
                assert c not in got
                continue
            assert got[c] == coco_mask.encode(binary)["counts"].decode(), (m.shape, c)
            assert np.array_equal(coco_mask.decode({"size": list(m.shape), "counts": got[c]}), binary)


def test_regions_of_known_shapes():
    mask = np.full((60, 80), 2, np.uint8)
    mask[10:20, 5:25] = 8  # a 20x10 car
    mask[40:44, 60:62] = 8  # a speck of 8 pixels
    mask[30:50, 30:40] = 3
    regions = answers.connected_regions(mask, [8, 3], min_area=10)
    assert regions == [
        {"index": 8, "area": 200, "bbox": [5, 10, 20, 10], "centroid": [14.5, 14.5]},
        {"index": 3, "area": 200, "bbox": [30, 30, 10, 20], "centroid": [34.5, 39.5]},
    ]
    assert [r["area"] for r in answers.connected_regions(mask, [8], min_area=1)] == [200, 8]
    # 8-connected: two pixels touching at a corner are one region
    diagonal = np.zeros((4, 4), np.uint8)
    diagonal[0, 0] = diagonal[1, 1] = 1
    assert answers.connected_regions(diagonal, [1], 1)[0]["area"] == 2
    assert answers.default_min_area(360, 480) == 173


def test_filters_and_mean_confidence():
    mask = np.array([[0, 1], [1, 2]], np.uint8)
    confidence = np.array([[255, 51], [102, 0]], np.uint8)
    assert answers.below_confidence(confidence, 0.3).tolist() == [[False, True], [False, True]]
    assert answers.below_confidence(confidence, 0.0).sum() == 0  # 0 keeps every pixel
    assert answers.in_classes(mask, [1]).tolist() == [[False, True], [True, False]]
    counts = answers.class_counts(mask, 4)
    means = answers.mean_confidence(mask, confidence, counts)
    assert means[:3].tolist() == pytest.approx([1.0, 0.3, 0.0]) and np.isnan(means[3])


# -- the routes, on the tiny model with a confidence output --------------------------------------------

async def test_rle_decodes_to_the_png_mask(client):
    img = to_png(random_rgb(1, 100, 140))  # another size than the model's: resized in and back
    for model in ("seg-confidence", "enet-camvid"):
        png = _png((await client.post(f"/segment?format=png&model={model}", content=img)).content)
        r = await client.post(f"/segment?format=rle&model={model}", content=img)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert (body["width"], body["height"]) == (140, 100) and body["classes"] == CLASSES
        assert all(e["size"] == [100, 140] and CLASSES[e["index"]] == e["class"] for e in body["rle"])
        assert np.array_equal(_rle_mask(body), png)
        assert sum(body["class_fractions"].values()) == pytest.approx(1, abs=1e-4)


async def test_confidence_and_min_confidence_agree(client):
    rgb = random_rgb(2)  # at the model's size: the confidence is exactly the red channel
    img = to_png(rgb)
    r = await client.post("/segment?format=confidence&model=seg-confidence", content=img)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    confidence = _png(r.content)
    assert confidence.shape == (120, 160) and np.array_equal(confidence, expected(rgb)[1])
    mask = _png((await client.post("/segment?format=png&model=seg-confidence", content=img)).content)
    for threshold in (0.25, 0.5, 0.9):
        q = f"model=seg-confidence&min_confidence={threshold}"
        filtered = _png((await client.post(f"/segment?format=png&{q}", content=img)).content)
        low = confidence < threshold * 255
        assert low.any() and not low.all()
        assert (filtered[low] == VOID).all() and np.array_equal(filtered[~low], mask[~low])
        # the same pixels are void in every format
        assert np.array_equal(_rle_mask((await client.post(f"/segment?format=rle&{q}", content=img)).json()), filtered)
        body = (await client.post(f"/segment?format=json&{q}", content=img)).json()
        assert np.array_equal(_png(base64.b64decode(body["mask_png"])), filtered)
        assert body["class_fractions"]["Unlabelled"] == pytest.approx((low | (mask == VOID)).mean(), abs=1e-6)
        filtered_confidence = _png((await client.post(f"/segment?format=confidence&{q}", content=img)).content)
        assert (filtered_confidence[low] == 0).all() and np.array_equal(filtered_confidence[~low], confidence[~low])


async def test_json_mean_confidence_per_class(client):
    rgb = random_rgb(3)
    body = (await client.post("/segment?model=seg-confidence", content=to_png(rgb))).json()
    mask = _png(base64.b64decode(body["mask_png"]))
    red = rgb[:, :, 0].astype(np.float64)
    want = {CLASSES[c]: red[mask == c].mean() / 255 for c in np.unique(mask)}
    assert body["mean_confidence"] == pytest.approx(want, abs=1e-4)
    # a model without the output: no mean_confidence in the JSON, and a clear 422 for what needs it
    body = (await client.post("/segment", content=to_png(rgb))).json()
    assert "mean_confidence" not in body and "regions" not in body
    for q in ("format=confidence", "min_confidence=0.5", "format=png&min_confidence=0.1"):
        r = await client.post(f"/segment?{q}", content=to_png(rgb))
        assert r.status_code == 422 and r.json()["error"]["code"] == "confidence_unavailable", q
        assert "enet-camvid" in r.json()["error"]["message"]


async def test_classes_filter_every_format(client):
    img = to_png(random_rgb(4))
    full = _png((await client.post("/segment?format=png&model=seg-confidence", content=img)).content)
    present = [CLASSES[c] for c in np.unique(full)][:2]
    q = f"model=seg-confidence&classes={present[0].lower()},{present[1]}"  # names match without regard to case
    keep = np.isin(full, [CLASSES.index(n) for n in present])
    filtered = _png((await client.post(f"/segment?format=png&{q}", content=img)).content)
    assert np.array_equal(filtered, np.where(keep, full, VOID))
    body = (await client.post(f"/segment?format=json&{q}", content=img)).json()
    assert set(body["class_fractions"]) == set(present) and set(body["mean_confidence"]) <= set(present)
    assert body["class_fractions"][present[0]] == pytest.approx((full == CLASSES.index(present[0])).mean(), abs=1e-6)
    rle = (await client.post(f"/segment?format=rle&{q}", content=img)).json()
    assert {e["class"] for e in rle["rle"]} == set(present)
    decoded = _rle_mask(rle)
    assert np.array_equal(decoded[keep], full[keep]) and (decoded[~keep] == -1).all()
    confidence = _png((await client.post(f"/segment?format=confidence&{q}", content=img)).content)
    assert (confidence[~keep] == 0).all()
    overlay = await client.post(f"/segment?format=overlay&{q}", content=img)
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/jpeg"


async def test_unknown_class_and_bad_options_are_422(client):
    img = to_png(random_rgb(5))
    r = await client.post("/segment?classes=Road,Zebra", content=img)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "unknown_class" and "'Zebra'" in error["message"]
    assert error["details"]["classes"] == CLASSES and "Bicyclist" in error["message"]
    assert (await client.post("/segment?classes=,", content=img)).status_code == 422
    for q in ("min_confidence=1.5", "min_area=0", "format=png&regions=true", "format=confidence&regions=true"):
        r = await client.post(f"/segment?model=seg-confidence&{q}", content=img)
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_parameter", q


async def test_regions_in_input_coordinates(client):
    rgb = np.zeros((240, 320, 3), np.uint8)  # another size than the model's 120x160
    rgb[40:120, 200:300] = 100  # class floor(100 * 12 / 256) = 4 (Pavement)
    rgb[160:200, 20:60] = 200  # class 9 (Pedestrian)
    r = await client.post("/segment?model=seg-confidence&regions=true&min_area=100", content=to_png(rgb))
    regions = r.json()["regions"]
    by_class = {g["class"]: g for g in regions}
    # the resize to the model's size and back blurs the edges by a pixel or two, not more
    pavement, pedestrian = by_class["Pavement"], by_class["Pedestrian"]
    assert pavement["index"] == 4 and pavement["area"] == pytest.approx(100 * 80, rel=0.02)
    assert np.allclose(pavement["bbox"], [200, 40, 100, 80], atol=2)
    assert np.allclose(pavement["centroid"], [249.5, 79.5], atol=1)
    assert 36 * 36 <= pedestrian["area"] <= 40 * 40  # its edges blend into other classes
    assert np.allclose(pedestrian["bbox"], [20, 160, 40, 40], atol=4)
    assert np.allclose(pedestrian["centroid"], [39.5, 179.5], atol=1)
    assert all(g["area"] >= 100 for g in regions)
    # classes= limits the regions too; rle carries them as well
    r = await client.post("/segment?model=seg-confidence&format=rle&regions=true&classes=Pedestrian",
                          content=to_png(rgb))
    assert [g["class"] for g in r.json()["regions"]] == ["Pedestrian"]


async def test_drift_metrics(client):
    rgb = np.zeros((120, 160, 3), np.uint8)
    rgb[:, :40] = 255  # a quarter of the image is class 11 with confidence 255, the rest Sky with confidence 0
    for _ in range(3):
        assert (await client.post("/segment?model=seg-confidence&classes=Road", content=to_png(rgb))).status_code == 200
    text = (await client.get("/metrics")).text
    lines = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line and not line.startswith("#")}
    # the model's own answer is observed, before the request's classes= filter
    assert lines['enet_serve_class_pixels_ratio_count{class="Sky",model="seg-confidence"}'] == 3
    assert lines['enet_serve_class_pixels_ratio_sum{class="Sky",model="seg-confidence"}'] == pytest.approx(2.25)
    assert lines['enet_serve_class_pixels_ratio_bucket{class="Sky",le="0.7",model="seg-confidence"}'] == 0
    assert lines['enet_serve_class_pixels_ratio_bucket{class="Sky",le="0.8",model="seg-confidence"}'] == 3
    assert lines['enet_serve_class_pixels_ratio_sum{class="Road",model="seg-confidence"}'] == 0
    assert lines['enet_serve_mean_confidence_ratio_sum{model="seg-confidence"}'] == pytest.approx(0.75)
    # a model without a confidence output has the class histograms only
    assert 'enet_serve_mean_confidence_ratio_count{model="enet-camvid"}' not in lines


async def test_v2_exposes_the_confidence_output(client):
    meta = (await client.get("/v2/models/seg-confidence")).json()
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [("mask", "UINT8"), ("confidence", "UINT8")]
    rgb = random_rgb(6)
    r = await client.post("/v2/models/seg-confidence/infer", json={"inputs": [
        {"name": "image", "shape": [1, 120, 160, 3], "datatype": "UINT8", "data": rgb.ravel().tolist()}]})
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert outputs["confidence"]["shape"] == [1, 120, 160]
    assert np.array_equal(np.array(outputs["confidence"]["data"], np.uint8).reshape(120, 160), rgb[:, :, 0])
    r = await client.post("/v2/models/seg-confidence/infer", json={
        "inputs": [{"name": "image", "shape": [1, 120, 160, 3], "datatype": "UINT8", "data": rgb.ravel().tolist()}],
        "outputs": [{"name": "confidence"}]})
    assert [o["name"] for o in r.json()["outputs"]] == ["confidence"]
    assert (await client.get("/models/seg-confidence")).json()["confidence"] is True
    assert (await client.get("/models/enet-camvid")).json()["confidence"] is False


# -- the shipped ENet on a CamVid frame -----------------------------------------------------------------

@pytest.fixture
async def shipped(serve, camvid_dir):
    return await serve(repository=REPO_ROOT / "model_repository", models=["enet-camvid"], max_batch_size=2)


async def test_camvid_classes_and_regions(shipped):
    img = to_png(np.asarray(Image.open(camvid_val_pngs(1)[0]).convert("RGB")))
    full = (await shipped.post("/segment", content=img)).json()
    assert full["class_fractions"]["Road"] > 0.1 and full["class_fractions"]["Car"] > 0
    body = (await shipped.post("/segment?classes=Road,Car&regions=true", content=img)).json()
    assert set(body["class_fractions"]) == {"Road", "Car"}
    assert body["class_fractions"] == {k: full["class_fractions"][k] for k in ("Road", "Car")}
    mask = _png(base64.b64decode(body["mask_png"]))
    assert set(np.unique(mask)) <= {CLASSES.index("Road"), CLASSES.index("Car"), VOID}
    regions = body["regions"]
    assert {g["class"] for g in regions} == {"Road", "Car"}
    min_area = answers.default_min_area(360, 480)
    for g in regions:
        x, y, w, h = g["bbox"]
        assert g["area"] >= min_area and 0 <= x < x + w <= 480 and 0 <= y < y + h <= 360
        assert x <= g["centroid"][0] < x + w and y <= g["centroid"][1] < y + h
        assert (mask[y:y + h, x:x + w] == g["index"]).sum() >= g["area"]
    road = max((g for g in regions if g["class"] == "Road"), key=lambda g: g["area"])
    assert road["area"] / (360 * 480) > 0.1 and road["centroid"][1] > 180  # the road is in the lower half
    # RLE of the shipped model decodes to its PNG mask
    rle = (await shipped.post("/segment?format=rle", content=img)).json()
    png = _png((await shipped.post("/segment?format=png", content=img)).content)
    assert np.array_equal(_rle_mask(rle), png)


async def test_camvid_confidence_or_a_clear_422(shipped):
    """Before the re-export with the confidence output: 422 confidence_unavailable; after: a grey PNG whose
    min_confidence agrees with the mask."""
    img = to_png(np.asarray(Image.open(camvid_val_pngs(1)[0]).convert("RGB")))
    info = (await shipped.get("/models/enet-camvid")).json()
    r = await shipped.post("/segment?format=confidence", content=img)
    if not info["confidence"]:
        assert r.status_code == 422 and r.json()["error"]["code"] == "confidence_unavailable"
        assert "mean_confidence" not in (await shipped.post("/segment", content=img)).json()
        return
    confidence = _png(r.content)
    assert r.status_code == 200 and confidence.shape == (360, 480) and confidence.mean() > 128
    filtered = _png((await shipped.post("/segment?format=png&min_confidence=0.6", content=img)).content)
    assert np.array_equal(filtered == VOID, confidence < 0.6 * 255)
    body = (await shipped.post("/segment", content=img)).json()
    assert set(body["mean_confidence"]) <= set(body["class_fractions"])
    assert all(0 < v <= 1 for v in body["mean_confidence"].values())


def test_rle_body_follows_the_schema():
    from enet_serve.service.schemas import SegmentRleResponse

    body = {"model": "m", "width": 2, "height": 1, "classes": ["a"], "class_fractions": {"a": 1.0},
            "rle": [{"class": "a", "index": 0, "size": [1, 2], "counts": "02"}]}
    assert json.loads(SegmentRleResponse.model_validate(body).model_dump_json(by_alias=True, exclude_none=True)) == body
