"""enet_serve/model_config.py: the one schema of config.json, its task table and its documentation."""
from __future__ import annotations

import copy
import json
import re

import pytest

from enet_serve.model_config import (TASKS, ModelConfig, ModelConfigError, fallback_color, file_path, load_config,
                                     parse_config, schema_table, task_outputs)
from enet_serve.paths import DEFAULT_REPOSITORY, REPO_ROOT

README = REPO_ROOT / "model_repository" / "README.md"


@pytest.fixture
def enet_raw() -> dict:
    return json.loads((DEFAULT_REPOSITORY / "enet-camvid" / "config.json").read_text())


def test_shipped_configs_follow_the_schema():
    seg = load_config(DEFAULT_REPOSITORY / "enet-camvid")
    assert seg.task == "segment" and seg.outputs[0].name == "mask" and seg.input.dynamic_size
    assert seg.files["fp32"].path == file_path("fp32") == "1/model.fp32.onnx"
    assert seg.class_names()[11] == "Unlabelled" and seg.palette()[11] == (0, 0, 0)
    cls = load_config(DEFAULT_REPOSITORY / "lenet5-fashion" / "config.json")
    assert cls.task == "classify" and cls.output_shape("probabilities") == [-1, 10]


def test_an_unknown_key_names_the_key_and_the_file(enet_raw, tmp_path):
    enet_raw["labelz"] = enet_raw["labels"]
    enet_raw["input"]["heigth"] = 360
    path = tmp_path / "config.json"
    path.write_text(json.dumps(enet_raw))
    with pytest.raises(ModelConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert str(path) in message and "unknown key 'labelz'" in message and "unknown key 'input.heigth'" in message


def test_outputs_follow_the_task_table(enet_raw):
    confidence = {"name": "confidence", "dtype": "uint8", "shape": ["N", "H", "W"]}
    assert [o["name"] for o in enet_raw["outputs"]] == ["mask", "confidence"]  # the shipped export has both
    mask_only = copy.deepcopy(enet_raw)
    mask_only["outputs"] = enet_raw["outputs"][:1]  # graphs exported before confidence existed
    assert [o.name for o in parse_config(mask_only).outputs] == ["mask"]
    cases = {
        "first output must be 'mask'": [confidence],
        "not an output of a segment model": enet_raw["outputs"][:1] + [{"name": "logits", "dtype": "float32",
                                                                    "shape": ["N", 12, "H", "W"]}],
        "must be uint8": [{"name": "mask", "dtype": "float32", "shape": ["N", "H", "W"]}],
        "must have shape": [{"name": "mask", "dtype": "uint8", "shape": ["N", "H"]}],
    }
    for message, outputs in cases.items():
        raw = copy.deepcopy(enet_raw)
        raw["outputs"] = outputs
        with pytest.raises(ModelConfigError, match=message):
            parse_config(raw, "enet-camvid/config.json")


def test_task_outputs_and_shapes():
    assert [o.model_dump() for o in task_outputs("classify", ["probabilities"], 7)] == [
        {"name": "probabilities", "dtype": "float32", "shape": ["N", 7]}]
    assert [o.name for o in task_outputs("segment", ["mask", "confidence"], 12)] == ["mask", "confidence"]
    with pytest.raises(ValueError, match="no output 'logits'"):
        task_outputs("segment", ["logits"], 12)
    assert TASKS["segment"].primary.name == "mask" and TASKS["classify"].primary.dtype == "float32"


def test_fixed_size_outputs_report_their_sides(enet_raw):
    raw = copy.deepcopy(enet_raw)
    raw["input"]["dynamic_size"] = False
    assert parse_config(raw).output_shape("mask") == [-1, 360, 480]
    assert parse_config(enet_raw).output_shape("mask") == [-1, -1, -1]


def test_unknown_file_key_is_refused(enet_raw):
    enet_raw["files"]["fp64"] = {"path": "1/model.fp64.onnx"}
    with pytest.raises(ModelConfigError, match="unknown precisions"):
        parse_config(enet_raw)
    with pytest.raises(ValueError):
        file_path("fp64")


def test_classes_without_colours_get_the_fallback_palette(enet_raw):
    enet_raw.pop("colors")
    palette = parse_config(enet_raw).palette()
    assert palette[:11] == [fallback_color(i) for i in range(11)] and palette[11] == (0, 0, 0)
    assert len(set(palette)) == 12


def test_json_round_trip_keeps_the_keys_given(enet_raw):
    config = parse_config(enet_raw)
    assert json.loads(config.to_json()) == enet_raw


def test_readme_documents_the_schema():
    text = README.read_text()
    assert schema_table() in text, "model_repository/README.md: paste the output of schema_table()"
    example = json.loads(re.search(r"```json\n(.*?)```", text, re.S).group(1))
    config = ModelConfig.model_validate(example)  # the example follows the schema ...
    assert set(example) == set(ModelConfig.model_fields)  # ... and shows every key
    shipped = load_config(DEFAULT_REPOSITORY / "enet-camvid")
    assert config.parameters == shipped.parameters and config.normalization == shipped.normalization
