"""The Open Inference Protocol (KServe v2 / Triton HTTP): metadata, health, ready and infer.

Tensors come as JSON (`data`, flat or nested, row-major) or with the binary tensor data extension
(`Inference-Header-Content-Length` header; inputs with `parameters.binary_data_size`; outputs asked
with `parameters.binary_data: true`), which tritonclient uses by default. The input is the graph's:
`image` UINT8 [N, H, W, C] at the model's size (any multiple of the size multiple for dynamic-size
models); every row goes through the model's batcher like an HTTP image request.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from enet_serve.service._version import __version__
from enet_serve.service.api.deps import get_server, read_body, require_api_key
from enet_serve.service.errors import BadRequest, ModelNotFound, NotReady
from enet_serve.service.schemas import (ERROR_RESPONSES, V2InferRequest, V2InferResponse, V2ModelMetadata,
                             V2ServerMetadata)
from enet_serve.service.server import LoadedModel, ModelServer

router = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"])
secured = APIRouter(prefix="/v2", tags=["v2 (Open Inference Protocol)"], dependencies=[Depends(require_api_key)])

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {  # numpy dtype -> v2 datatype
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32", np.dtype(np.uint64): "UINT64", np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16", np.dtype(np.int32): "INT32", np.dtype(np.int64): "INT64",
    np.dtype(np.float16): "FP16", np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
}
ORT_TYPES = {"tensor(uint8)": "UINT8", "tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(int64)": "INT64",
             "tensor(int32)": "INT32", "tensor(bool)": "BOOL", "tensor(double)": "FP64"}


@router.get("", summary="Server metadata", response_model=V2ServerMetadata)
async def server_metadata() -> dict:
    return {"name": "enet-serve", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Server live")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server ready (every model warm)", responses={503: ERROR_RESPONSES[503]})
async def server_ready(request: Request):
    if not get_server(request).ready:
        raise NotReady("models are still loading (warming up)", retry_after=2)
    return {"ready": True}


def _model(request: Request, name: str, version: str | None) -> LoadedModel:
    model = get_server(request).get(name)
    if version is not None and version != str(model.config.version):
        raise ModelNotFound(f"model {name!r} has no version {version!r} (serving version {model.config.version})")
    request.state.model = model.name
    return model


def _metadata(model: LoadedModel) -> dict:
    cfg = model.config
    h, w = (-1, -1) if cfg.input.dynamic_size else (model.height, model.width)
    rt = model.runtime
    outputs = []
    for name, ort_type in zip(rt.output_names, rt.output_types):
        shape = [-1, h, w] if name == "mask" else ([-1, len(model.class_names)] if name == "probabilities" else [-1])
        outputs.append({"name": name, "datatype": ORT_TYPES.get(ort_type, ort_type), "shape": shape})
    return {
        "name": model.name,
        "versions": [str(cfg.version)],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": cfg.input.name, "datatype": "UINT8", "shape": [-1, h, w, model.channels]}],
        "outputs": outputs,
    }


@secured.get("/models/{name}", summary="Model metadata", response_model=V2ModelMetadata,
             responses={404: ERROR_RESPONSES[404]})
async def model_metadata(request: Request, name: str) -> dict:
    return _metadata(_model(request, name, None))


@secured.get("/models/{name}/versions/{version}", summary="Model metadata (one version)",
             response_model=V2ModelMetadata, responses={404: ERROR_RESPONSES[404]})
async def model_version_metadata(request: Request, name: str, version: str) -> dict:
    return _metadata(_model(request, name, version))


async def _ready(request: Request, name: str, version: str | None):
    model = _model(request, name, version)
    if not model.ready:
        raise NotReady(f"model {name} is still warming up", retry_after=2)
    return {"name": model.name, "ready": True}


@router.get("/models/{name}/ready", summary="Model ready", responses={503: ERROR_RESPONSES[503]})
async def model_ready(request: Request, name: str):
    return await _ready(request, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="Model ready (one version)",
            responses={503: ERROR_RESPONSES[503]})
async def model_version_ready(request: Request, name: str, version: str):
    return await _ready(request, name, version)


def _inline_schema(model) -> dict:
    """A model's JSON schema with its $defs inlined (the request body schema of the docs)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.rsplit("/", 1)[1]])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


_INFER_DOC = dict(
    summary="Inference",
    response_model=V2InferResponse,
    responses={200: {"content": {"application/octet-stream": {}},
                     "description": "JSON, or with binary outputs: the JSON header then the raw tensors"},
               **ERROR_RESPONSES},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": _inline_schema(V2InferRequest)},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                     "description": f"binary tensor extension: JSON header ({HEADER_LENGTH} "
                                                    "bytes) followed by the raw tensors"}}}},
)


@secured.post("/models/{name}/infer", **_INFER_DOC)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@secured.post("/models/{name}/versions/{version}/infer", **_INFER_DOC)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    server: ModelServer = get_server(request)
    model = _model(request, name, version)
    if not model.ready:
        raise NotReady(f"model {name} is still warming up", retry_after=2)
    body = await read_body(request, server.settings.max_body_bytes)
    header_length = request.headers.get(HEADER_LENGTH)
    parsed = await server.codec(_parse_request, model, body, header_length)
    req, batch = parsed
    outputs = await server.infer_tensor(model, batch)
    content, headers = await server.codec(_encode_response, model, req, outputs)
    media = "application/octet-stream" if HEADER_LENGTH in headers else "application/json"
    return Response(content=content, media_type=media, headers=headers)


def _parse_request(model: LoadedModel, body: bytes, header_length: str | None) -> tuple[V2InferRequest, np.ndarray]:
    binary = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise BadRequest(f"invalid {HEADER_LENGTH}: {header_length!r}") from None
        if not 0 < n <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {n} does not fit the {len(body)}-byte body")
        body, binary = body[:n], body[n:]
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(f"the body is not JSON: {e}") from e
    try:
        req = V2InferRequest.model_validate(raw)
    except ValidationError as e:
        raise BadRequest(f"not a v2 inference request: {e.errors()[0]['msg']} at "
                         f"{'.'.join(str(p) for p in e.errors()[0]['loc'])}") from e
    want = model.config.input.name
    if len(req.inputs) != 1 or req.inputs[0].name != want:
        raise BadRequest(f"model {model.name} takes one input {want!r}; got {[t.name for t in req.inputs]}")
    tensor = req.inputs[0]
    if tensor.datatype.upper() != "UINT8":
        raise BadRequest(f"input {want} must be UINT8, got {tensor.datatype}")
    shape = tuple(tensor.shape)
    if len(shape) != 4 or shape[0] < 1 or not model.accepts_shape(shape[1:]):
        size = "HxW multiples of %d" % model.config.input.size_multiple if model.config.input.dynamic_size \
            else f"{model.height}x{model.width}"
        raise BadRequest(f"input {want} must have shape [N, H, W, {model.channels}] with {size}; got {list(shape)}")
    count = int(np.prod(shape))
    params = tensor.parameters or {}
    if "binary_data_size" in params:
        size = int(params["binary_data_size"])
        if size != count or len(binary) < size:
            raise BadRequest(f"binary input {want}: {size} bytes given, {count} needed ({len(binary)} in the body)")
        array = np.frombuffer(binary[:size], dtype=np.uint8).reshape(shape)
    else:
        if tensor.data is None:
            raise BadRequest(f"input {want} has neither data nor binary_data_size")
        try:
            array = np.asarray(tensor.data, dtype=np.uint8)
        except (ValueError, OverflowError, TypeError) as e:
            raise BadRequest(f"input {want}: data are not UINT8 values: {e}") from e
        if array.size != count:
            raise BadRequest(f"input {want}: {array.size} values for shape {list(shape)} ({count} needed)")
        array = array.reshape(shape)
    return req, array


def _encode_response(model: LoadedModel, req: V2InferRequest, outputs: list[np.ndarray]) -> tuple[bytes, dict]:
    names = model.runtime.output_names
    by_name = dict(zip(names, outputs))
    default_binary = bool((req.parameters or {}).get("binary_data_output", False))
    if req.outputs:
        wanted = []
        for o in req.outputs:
            if o.name not in by_name:
                raise BadRequest(f"model {model.name} has no output {o.name!r} (outputs: {names})")
            wanted.append((o.name, bool((o.parameters or {}).get("binary_data", default_binary))))
    else:
        wanted = [(n, default_binary) for n in names]
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, as_binary in wanted:
        a = np.ascontiguousarray(by_name[name])
        entry: dict[str, Any] = {"name": name, "datatype": DTYPES.get(a.dtype, str(a.dtype).upper()),
                                 "shape": list(a.shape)}
        if as_binary:
            blob = a.tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = a.ravel().tolist()
        tensors.append(entry)
    response = {"model_name": model.name, "model_version": str(model.config.version), "outputs": tensors}
    if req.id is not None:
        response["id"] = req.id
    header = json.dumps(response, separators=(",", ":")).encode()
    if blobs:
        return header + b"".join(blobs), {HEADER_LENGTH: str(len(header))}
    return header, {}

