"""The Open Inference Protocol's (KServe v2) tensors, as pure functions: an infer request's body to
the input batch, the outputs to the response body.

Tensors come as JSON (`data`, flat or nested, row-major) or with the binary tensor data extension
(`Inference-Header-Content-Length` header; inputs with `parameters.binary_data_size`; outputs asked
with `parameters.binary_data: true`), which tritonclient uses by default.
"""
from __future__ import annotations

import json
import math
import sys
from typing import Any, Sequence

import numpy as np
from pydantic import ValidationError

from enet_serve.model_config import InputSpec
from enet_serve.service.errors import BadRequest
from enet_serve.service.schemas import V2InferRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
DATATYPES = {  # numpy dtype -> v2 datatype
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32", np.dtype(np.uint64): "UINT64", np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
}


def datatype(dtype: Any) -> str:
    """The v2 datatype of a numpy dtype or dtype name ("uint8" -> "UINT8", "float32" -> "FP32")."""
    dtype = np.dtype(dtype)
    return DATATYPES.get(dtype, str(dtype).upper())


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """(JSON header, binary tensor data) of a request body."""
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise BadRequest(f"invalid {HEADER_LENGTH}: {header_length!r}") from None
    if not 0 < n <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {n} does not fit the {len(body)}-byte body")
    return body[:n], body[n:]


def parse_request(body: bytes, header_length: str | None, model: str, spec: InputSpec,
                  outputs: Sequence[str] | None = None) -> tuple[V2InferRequest, np.ndarray]:
    """The request and its input batch (uint8 NxHxWxC) for model `model` whose input is `spec`.
    `outputs`: the model's output names, to refuse a request for another one (or a malformed output
    flag) before it is queued; encode_response checks the same."""
    header, binary = split_body(body, header_length)
    try:
        raw = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}") from e
    except ValueError as e:  # the only other ValueError: an integer literal past Python's digit limit
        raise BadRequest(f"the body's JSON has an integer longer than {sys.get_int_max_str_digits()} digits") from e
    except RecursionError as e:
        raise BadRequest("the body's JSON is nested too deeply") from e
    try:
        req = V2InferRequest.model_validate(raw)
    except ValidationError as e:
        raise BadRequest(f"not a v2 inference request: {e.errors()[0]['msg']} at "
                         f"{'.'.join(str(p) for p in e.errors()[0]['loc'])}") from e
    want = spec.name
    if len(req.inputs) != 1 or req.inputs[0].name != want:
        raise BadRequest(f"model {model} takes one input {want!r}; got {[t.name for t in req.inputs]}")
    tensor = req.inputs[0]
    if tensor.datatype.upper() != "UINT8":
        raise BadRequest(f"input {want} must be UINT8, got {tensor.datatype}")
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[0] < 1 or not spec.accepts(shape[1:]):
        size = f"HxW multiples of {spec.size_multiple}" if spec.dynamic_size else f"{spec.height}x{spec.width}"
        raise BadRequest(f"input {want} must have shape [N, H, W, {spec.channels}] with {size}; got {list(shape)}")
    if outputs is not None:
        requested_outputs(req, outputs, model)
    count = math.prod(shape)  # exact: np.prod wraps around in int64 and lets an absurd N through
    params = tensor.parameters or {}
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if not isinstance(size, int) or isinstance(size, bool):  # int() would take 192.7, "192" and true
            raise BadRequest(f"binary input {want}: parameters.binary_data_size must be an integer, got {size!r}")
        if size != count or len(binary) < size:
            raise BadRequest(f"binary input {want}: {size} bytes given, {count} needed ({len(binary)} in the body)")
        array = np.frombuffer(binary[:size], dtype=np.uint8).reshape(shape)
    else:
        if tensor.data is None:
            raise BadRequest(f"input {want} has neither data nor binary_data_size")
        try:
            raw = np.asarray(tensor.data)
        except (ValueError, TypeError) as e:  # ragged nesting
            raise BadRequest(f"input {want}: data are not UINT8 values: {e}") from e
        # integers 0..255 only: a float would be truncated and a string parsed without a word
        if raw.size and (raw.dtype.kind not in "iu" or raw.min() < 0 or raw.max() > 255):
            first = raw.ravel()[0]  # a NumPy scalar, or the Python object itself (None, a huge int)
            first = first.item() if isinstance(first, np.generic) else first
            raise BadRequest(f"input {want}: data are not UINT8 values (integers 0..255; got {raw.dtype.name} "
                             f"{first!r}{' ...' if raw.size > 1 else ''})")
        array = raw.astype(np.uint8)
        if array.size != count:
            raise BadRequest(f"input {want}: {array.size} values for shape {list(shape)} ({count} needed)")
        array = array.reshape(shape)
    return req, array


def _flag(parameters: dict[str, Any] | None, key: str, where: str, default: bool) -> bool:
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):  # bool("false") is True
        raise BadRequest(f"{where}.{key} must be a JSON boolean (true or false), got {value!r}")
    return value


def requested_outputs(req: V2InferRequest, names: Sequence[str], model: str) -> list[tuple[str, bool]]:
    """(name, as binary) of each output the request asks for (all of `names` by default); 400 for an
    output the model does not have or a binary_data flag that is not a JSON boolean."""
    default_binary = _flag(req.parameters, "binary_data_output", "parameters", False)
    if not req.outputs:
        return [(n, default_binary) for n in names]
    wanted = []
    for i, o in enumerate(req.outputs):
        if o.name not in names:
            raise BadRequest(f"model {model} has no output {o.name!r} (outputs: {list(names)})")
        wanted.append((o.name, _flag(o.parameters, "binary_data", f"outputs[{i}].parameters", default_binary)))
    return wanted


def encode_response(req: V2InferRequest, outputs: dict[str, np.ndarray], model: str,
                    version: str) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers: the outputs the request asked for (all by default),
    as JSON data or, where asked, as binary tensor data after the JSON header."""
    wanted = requested_outputs(req, list(outputs), model)
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, as_binary in wanted:
        a = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {"name": name, "datatype": datatype(a.dtype), "shape": list(a.shape)}
        if as_binary:
            blob = a.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = a.ravel().tolist()
        tensors.append(entry)
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if req.id is not None:
        response["id"] = req.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if blobs:
        return header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}
    return header, {}
