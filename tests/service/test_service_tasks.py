"""service/tasks: the task handlers (decode, encode per format, describe, v2 outputs) without a server."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from enet_serve.service.repository import ModelRepository
from enet_serve.service.schemas import ClassifyResponse, SegmentResponse
from enet_serve.service.settings import Settings
from enet_serve.service.tasks import (HANDLERS, SEGMENT_FORMATS, ClassifyOptions, ClassifyTask, SegmentOptions,
                                      SegmentTask, handler_for, segment_format)
from svc_helpers import random_rgb, to_png


@pytest.fixture
def seg(tiny_repo) -> SegmentTask:
    return handler_for("enet-camvid", ModelRepository(tiny_repo).entry("enet-camvid").config, Settings())


@pytest.fixture
def cls(tiny_repo) -> ClassifyTask:
    return handler_for("lenet5-fashion", ModelRepository(tiny_repo).entry("lenet5-fashion").config, Settings())


def test_one_handler_per_task(seg, cls):
    assert set(HANDLERS) == {"segment", "classify"}
    assert isinstance(seg, SegmentTask) and isinstance(cls, ClassifyTask)
    assert seg.default_model(Settings(default_segment_model="x")) == "x"
    assert (seg.route, cls.route) == ("/segment", "/classify")


def test_segment_json_is_the_documented_response(seg):
    prepared = seg.prepare(to_png(random_rgb(1, 60, 80)))
    assert prepared.array.shape == (120, 160, 3) and (prepared.width, prepared.height) == (80, 60)
    mask = (np.arange(120 * 160) % 12).astype(np.uint8).reshape(120, 160)
    answer = seg.encode(prepared, {"mask": mask}, SegmentOptions(format="json"))
    assert answer.media_type == "application/json"
    body = SegmentResponse.model_validate_json(answer.body)
    # every field but the optional ones (mean_confidence: models with a confidence output; regions=true)
    optional = {name for name, field in SegmentResponse.model_fields.items() if not field.is_required()}
    assert optional == {"mean_confidence", "regions"}
    assert set(json.loads(answer.body)) == set(SegmentResponse.model_fields) - optional
    assert (body.model, body.width, body.height) == ("enet-camvid", 80, 60)
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(body.mask_png))))
    assert png.shape == (60, 80) and abs(sum(body.class_fractions.values()) - 1) < 1e-3


def test_overlay_keeps_the_decoded_image(seg):
    options = SegmentOptions(format="overlay", alpha=0.5)
    assert seg.wants_original(options) and not seg.wants_original(SegmentOptions(format="png"))
    prepared = seg.prepare(to_png(random_rgb(2, 120, 160)), keep_original=True)
    answer = seg.encode(prepared, {"mask": np.zeros((120, 160), np.uint8)}, options)
    assert answer.media_type == "image/jpeg" and Image.open(io.BytesIO(answer.body)).size == (160, 120)


def test_a_new_format_is_one_registered_function(seg):
    @segment_format("test-sum", "text/plain")
    def _sum(r):
        return str(int(r.mask.sum())).encode()

    try:
        prepared = seg.prepare(to_png(random_rgb(3, 120, 160)))
        answer = seg.encode(prepared, {"mask": np.ones((120, 160), np.uint8)}, SegmentOptions(format="test-sum"))
        assert (answer.body, answer.media_type) == (b"19200", "text/plain")
        with pytest.raises(ValueError, match="registered twice"):
            segment_format("test-sum", "text/plain")(_sum)
    finally:
        SEGMENT_FORMATS.pop("test-sum")


def test_classify_answer_and_describe(seg, cls):
    prepared = cls.prepare(to_png(random_rgb(4, 64, 64)))
    assert prepared.array.shape == (28, 28, 1)
    probs = np.array([0.1, 0.6, 0.3] + [0.0] * 7, np.float32)
    body = ClassifyResponse.model_validate_json(cls.encode(prepared, {"probabilities": probs},
                                                           ClassifyOptions(top_k=2)).body)
    assert [(p.label, p.index) for p in body.predictions] == [("Trouser", 1), ("Pullover", 2)]
    assert cls.describe() == {} and seg.describe()["colors"][0] == [128, 128, 128]


def test_v2_outputs_come_from_the_config(seg, cls):
    assert seg.v2_outputs() == [{"name": "mask", "datatype": "UINT8", "shape": [-1, -1, -1]}]
    assert cls.v2_outputs() == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]


def test_native_size_pads_with_the_graphs_own_padding_colour(tiny_repo):
    """The graph pads to multiples of 8 by zero after its normalisation: the mean colour. The service pads
    native-size images itself (so that nearby sizes batch together) and must use that colour too; edge
    pixels moved 0.6 % of the shipped ENet's mask pixels at 357x473."""
    from enet_serve.model_config import Normalization

    bare_config = ModelRepository(tiny_repo).entry("enet-camvid").config
    config = bare_config.model_copy(update={"normalization": Normalization(mean=[0.3908, 0.4043, 0.4114],
                                                                           std=[0.3046, 0.3128, 0.3056])})
    task = handler_for("enet-camvid", config, Settings(native_size=True))
    rgb = random_rgb(4, 100, 130)
    prepared = task.prepare(to_png(rgb))
    assert prepared.array.shape == (104, 136, 3) and prepared.valid == (100, 130)
    assert np.array_equal(prepared.array[:100, :130], rgb)
    mean = [round(255 * m) for m in config.normalization.mean]
    assert (prepared.array[100:] == mean).all() and (prepared.array[:, 130:] == mean).all()
    # without a recorded normalisation: the edge pixels, as before
    assert bare_config.normalization is None
    bare = handler_for("enet-camvid", bare_config, Settings(native_size=True))
    assert np.array_equal(bare.prepare(to_png(rgb)).array[103, :130], rgb[99])


def test_a_classifier_evaluated_on_centre_crops_gets_one(tiny_repo):
    """ImageNet classifiers' reference accuracies are on centre crops (config `input.crop_fraction`); the
    whole image squashed to the native size was not what their weights were scored on."""
    config = ModelRepository(tiny_repo).entry("lenet5-fashion").config
    h, w = config.input.height, config.input.width
    grey = np.zeros((h * 2, w * 6), np.uint8)
    grey[:, w * 2:w * 4] = 200  # the middle third of a wide image
    image = to_png(grey)
    cropped = handler_for("lenet5-fashion", config.model_copy(update={"input": config.input.model_copy(
        update={"crop_fraction": 1.0})}), Settings()).prepare(image)
    assert cropped.array.shape == (h, w, 1) and (cropped.array[:, 1:-1] == 200).all() and (cropped.array >= 150).all()
    squashed = handler_for("lenet5-fashion", config, Settings()).prepare(image)
    assert squashed.array.shape == (h, w, 1) and (squashed.array[:, :2] == 0).all()
