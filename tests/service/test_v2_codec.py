"""service/v2_codec.py: the Open Inference Protocol's tensors, without a server."""
from __future__ import annotations

import json

import numpy as np
import pytest

from enet_serve.model_config import InputSpec
from enet_serve.service.errors import BadRequest
from enet_serve.service.schemas import V2InferRequest
from enet_serve.service.v2_codec import HEADER_LENGTH, datatype, encode_response, parse_request

FIXED = InputSpec(name="image", channels=1, height=4, width=4)
DYNAMIC = InputSpec(name="image", channels=3, height=360, width=480, dynamic_size=True, size_multiple=8)


def _request(shape, data=None, **tensor) -> bytes:
    t = {"name": "image", "shape": list(shape), "datatype": "UINT8", **tensor}
    if data is not None:
        t["data"] = data
    return json.dumps({"id": "7", "inputs": [t]}).encode()


def test_json_data_flat_and_nested():
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1)
    for data in (x.ravel().tolist(), x.tolist()):
        req, batch = parse_request(_request(x.shape, data), None, "m", FIXED)
        assert req.id == "7" and batch.dtype == np.uint8 and np.array_equal(batch, x)


def test_binary_tensor_data():
    x = np.random.default_rng(0).integers(0, 256, (1, 16, 24, 3), dtype=np.uint8)
    header = _request(x.shape, parameters={"binary_data_size": x.nbytes})
    _, batch = parse_request(header + x.tobytes(), str(len(header)), "m", DYNAMIC)
    assert np.array_equal(batch, x)


@pytest.mark.parametrize("body,header_length,message", [
    (b"{not json", None, "not JSON"),
    (json.dumps({"inputs": []}).encode(), None, "not a v2 inference request"),
    (_request((1, 4, 4, 1), [0] * 16, name="x"), None, "takes one input 'image'"),
    (_request((1, 4, 4, 1), [0.0] * 16, datatype="FP32"), None, "must be UINT8"),
    (_request((1, 3, 4, 1), [0] * 12), None, "4x4"),
    (_request((1, 4, 4, 1), [0] * 10), None, "10 values"),
    (_request((1, 4, 4, 1), [300] * 16), None, "not UINT8 values"),
    (_request((1, 4, 4, 1), [-1] * 16), None, "not UINT8 values"),
    (_request((1, 4, 4, 1), [3.7] * 16), None, "not UINT8 values .* float64 3.7"),
    (_request((1, 4, 4, 1), ["7"] * 16), None, "not UINT8 values .* str"),
    (_request((1, 4, 4, 1), [10 ** 30] * 16), None, "not UINT8 values .* object 1000000000000000000000000000000"),
    (_request((1, 4, 4, 1), [None] * 16), None, "not UINT8 values .* object None"),
    (_request((1, 4, 4, 1), [[0] * 4] * 3 + [[0] * 3]), None, "not UINT8 values"),
    (_request((1, 4, 4, 1)), None, "neither data nor binary_data_size"),
    (b"{}", "x", f"invalid {HEADER_LENGTH}"),
    (_request((1, 4, 4, 1), parameters={"binary_data_size": "abc"}), None, "must be an integer, got 'abc'"),
    (_request((1, 4, 4, 1), parameters={"binary_data_size": None}), None, "must be an integer, got None"),
    # int() would read these as 16 (or 1): only a JSON integer is a size
    (_request((1, 4, 4, 1), parameters={"binary_data_size": 16.7}), None, "must be an integer, got 16.7"),
    (_request((1, 4, 4, 1), parameters={"binary_data_size": 16.0}), None, "must be an integer, got 16.0"),
    (_request((1, 4, 4, 1), parameters={"binary_data_size": "16"}), None, "must be an integer, got '16'"),
    (_request((1, 4, 4, 1), parameters={"binary_data_size": True}), None, "must be an integer, got True"),
    # a batch size whose element count wraps around in int64 (np.prod) to 0
    (_request((2 ** 62, 4, 4, 1), []), None, "0 values for shape"),
    (_request((2 ** 62, 4, 4, 1), parameters={"binary_data_size": 0}), None, "0 bytes given"),
])
def test_bad_requests_are_400_with_a_reason(body, header_length, message):
    with pytest.raises(BadRequest, match=message):
        parse_request(body, header_length, "m", FIXED)


def _huge_request(shape_n: str) -> bytes:
    return ('{"inputs": [{"name": "image", "shape": [%s, 4, 4, 1], "datatype": "UINT8", "data": [0]}]}'
            % shape_n).encode()


@pytest.mark.parametrize("body,message", [
    (_huge_request("9" * 5000), "integer longer than 4300 digits"),  # json.loads: ValueError, not JSONDecodeError
    (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),  # RecursionError
    (b'{"id": "1", "parameters": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}", "nested too deeply"),
])
def test_json_python_cannot_read_is_400_not_500(body, message):
    with pytest.raises(BadRequest, match=message):
        parse_request(body, None, "m", FIXED, ["mask"])


@pytest.mark.parametrize("outputs,parameters,message", [
    ([{"name": "maks"}], None, r"model m has no output 'maks' \(outputs: \['mask', 'confidence'\]\)"),
    ([{"name": "mask"}, {"name": "probabilities"}], None, "no output 'probabilities'"),
    (None, {"binary_data_output": "false"}, r"parameters.binary_data_output must be a JSON boolean .* got 'false'"),
    (None, {"binary_data_output": 0}, "parameters.binary_data_output must be a JSON boolean"),
    ([{"name": "mask", "parameters": {"binary_data": "false"}}], None,
     r"outputs\[0\].parameters.binary_data must be a JSON boolean .* got 'false'"),
    ([{"name": "mask"}, {"name": "confidence", "parameters": {"binary_data": None}}], None,
     r"outputs\[1\].parameters.binary_data must be a JSON boolean"),
])
def test_requested_outputs_are_checked_with_the_request(outputs, parameters, message):
    """Before the batch is queued: a wrong output name or a flag that is not a JSON boolean (bool("false")
    is True) is the request's fault, found without running the model."""
    body = json.loads(_request((1, 4, 4, 1), [0] * 16))
    if outputs is not None:
        body["outputs"] = outputs
    if parameters is not None:
        body["parameters"] = parameters
    with pytest.raises(BadRequest, match=message):
        parse_request(json.dumps(body).encode(), None, "m", FIXED, ["mask", "confidence"])
    req = V2InferRequest.model_validate(body)
    outs = {"mask": np.zeros((1, 4, 4), np.uint8), "confidence": np.zeros((1, 4, 4), np.uint8)}
    with pytest.raises(BadRequest, match=message):  # the same from encode_response
        encode_response(req, outs, "m", "1")


def test_output_flags_that_are_booleans():
    body = json.loads(_request((1, 4, 4, 1), [0] * 16))
    body["parameters"] = {"binary_data_output": True}
    body["outputs"] = [{"name": "mask"}, {"name": "confidence", "parameters": {"binary_data": False}}]
    req, _ = parse_request(json.dumps(body).encode(), None, "m", FIXED, ["mask", "confidence"])
    outs = {"mask": np.ones((1, 2, 2), np.uint8), "confidence": np.full((1, 2, 2), 7, np.uint8)}
    content, headers = encode_response(req, outs, "m", "1")
    n = int(headers[HEADER_LENGTH])
    mask, confidence = json.loads(content[:n])["outputs"]
    assert mask["parameters"] == {"binary_data_size": 4} and content[n:] == b"\1" * 4
    assert confidence["data"] == [7] * 4


def test_binary_data_shorter_than_announced():
    header = _request((1, 4, 4, 1), parameters={"binary_data_size": 16})
    with pytest.raises(BadRequest, match="16 bytes given"):
        parse_request(header + b"\0" * 4, str(len(header)), "m", FIXED)
    with pytest.raises(BadRequest, match="does not fit"):
        parse_request(header, str(len(header) + 1), "m", FIXED)


def test_dynamic_inputs_need_multiples_of_the_size_multiple():
    with pytest.raises(BadRequest, match="multiples of 8"):
        parse_request(_request((1, 12, 16, 3), [0] * (12 * 16 * 3)), None, "m", DYNAMIC)


def test_encode_json_and_binary_outputs():
    probs = np.array([[0.25, 0.75]], np.float32)
    mask = np.array([[[1, 2], [3, 4]]], np.uint8)
    outputs = {"mask": mask, "probabilities": probs}
    body, headers = encode_response(V2InferRequest(id="a", inputs=[{"name": "image", "shape": [1], "datatype": "UINT8"}]),
                                    outputs, "m", "1")
    assert headers == {}
    out = json.loads(body)
    assert out["model_name"] == "m" and out["model_version"] == "1" and out["id"] == "a"
    assert [(t["name"], t["datatype"], t["shape"], t["data"]) for t in out["outputs"]] == [
        ("mask", "UINT8", [1, 2, 2], [1, 2, 3, 4]), ("probabilities", "FP32", [1, 2], [0.25, 0.75])]

    req = V2InferRequest.model_validate({"inputs": [{"name": "image", "shape": [1], "datatype": "UINT8"}],
                                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]})
    body, headers = encode_response(req, outputs, "m", "1")
    n = int(headers[HEADER_LENGTH])
    (t,) = json.loads(body[:n])["outputs"]
    assert t["name"] == "probabilities" and t["parameters"] == {"binary_data_size": 8}
    assert np.array_equal(np.frombuffer(body[n:], np.float32).reshape(1, 2), probs)

    req.outputs[0].name = "logits"
    with pytest.raises(BadRequest, match="no output 'logits'"):
        encode_response(req, outputs, "m", "1")


def test_datatypes():
    assert datatype("uint8") == "UINT8" and datatype(np.float32) == "FP32" and datatype("float16") == "FP16"
