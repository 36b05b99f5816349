"""The Open Inference Protocol (KServe v2 / Triton HTTP): metadata, health, ready and infer.

The input is the graph's: `image` UINT8 [N, H, W, C] at the model's size (any multiple of the size
multiple for dynamic-size models); every row goes through the model's batcher like an HTTP image
request. The tensors' wire format is service/v2_codec.py's. Each route serves both the unversioned
path and `/versions/{version}` (the one version a model has, config.json's `version`).
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from enet_serve.service import v2_codec
from enet_serve.service._version import __version__
from enet_serve.service.api.deps import ModelDep, ServerDep, SettingsDep, read_body, require_api_key
from enet_serve.service.errors import V2_ROOT, ModelNotFound, NotReady
from enet_serve.service.schemas import (V2_ERROR_RESPONSES, V2InferRequest, V2InferResponse, V2ModelMetadata,
                                        V2ServerMetadata)
from enet_serve.service.server import LoadedModel

router = APIRouter(prefix=V2_ROOT, tags=["v2 (Open Inference Protocol)"])
secured = APIRouter(prefix=V2_ROOT, tags=["v2 (Open Inference Protocol)"], dependencies=[Depends(require_api_key)])

MODEL = "/models/{name}"
VERSIONED = "/models/{name}/versions/{version}"
# The versioned paths' `{version}` (read by `versioned_model`, so the unversioned paths take no `version`).
VERSION_PARAMETER = {"parameters": [{"name": "version", "in": "path", "required": True,
                                     "schema": {"type": "string"}, "description": "the model's version"}]}


async def versioned_model(request: Request, model: ModelDep) -> LoadedModel:
    """The path's model; on a versioned path 404 unless `{version}` is the version it serves."""
    version = request.path_params.get("version")
    if version is not None and version != str(model.config.version):
        raise ModelNotFound(f"model {model.name!r} has no version {version!r} (serving version {model.config.version})")
    return model


V2ModelDep = Annotated[LoadedModel, Depends(versioned_model)]


@router.get("", summary="Server metadata", response_model=V2ServerMetadata)
async def server_metadata() -> dict:
    return {"name": "enet-serve", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/health/live", summary="Server live")
async def server_live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Server ready (every model warm)", responses={503: V2_ERROR_RESPONSES[503]})
async def server_ready(server: ServerDep):
    state = server.readiness()
    if not state.ready:
        raise NotReady(state.reason or "not ready", retry_after=2)
    return {"ready": True}


@secured.get(MODEL, summary="Model metadata", response_model=V2ModelMetadata, responses={404: V2_ERROR_RESPONSES[404]})
@secured.get(VERSIONED, summary="Model metadata (one version)", response_model=V2ModelMetadata,
             responses={404: V2_ERROR_RESPONSES[404]}, openapi_extra=VERSION_PARAMETER)
async def model_metadata(model: V2ModelDep) -> dict:
    cfg = model.config
    h, w = (-1, -1) if cfg.input.dynamic_size else (cfg.input.height, cfg.input.width)
    return {
        "name": model.name,
        "versions": [str(cfg.version)],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": cfg.input.name, "datatype": "UINT8", "shape": [-1, h, w, cfg.input.channels]}],
        "outputs": model.handler.v2_outputs(),
    }


@router.get(MODEL + "/ready", summary="Model ready", responses={503: V2_ERROR_RESPONSES[503]})
@router.get(VERSIONED + "/ready", summary="Model ready (one version)", responses={503: V2_ERROR_RESPONSES[503]},
            openapi_extra=VERSION_PARAMETER)
async def model_ready(server: ServerDep, model: V2ModelDep) -> dict:
    server.ensure_ready(model)
    return {"name": model.name, "ready": True}


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
               **V2_ERROR_RESPONSES},
)
_INFER_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _inline_schema(V2InferRequest)},
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"},
                                 "description": f"binary tensor extension: JSON header ({v2_codec.HEADER_LENGTH} "
                                                "bytes) followed by the raw tensors"}}}}


@secured.post(MODEL + "/infer", **_INFER_DOC, openapi_extra=_INFER_BODY)
@secured.post(VERSIONED + "/infer", **_INFER_DOC, openapi_extra={**_INFER_BODY, **VERSION_PARAMETER})
async def infer(request: Request, server: ServerDep, settings: SettingsDep, model: V2ModelDep) -> Response:
    server.ensure_ready(model)
    body = await read_body(request, settings.max_body_bytes)
    # the requested outputs are checked here too: a wrong name is refused before the batch runs
    req, batch = await server.codec(v2_codec.parse_request, body, request.headers.get(v2_codec.HEADER_LENGTH),
                                    model.name, model.config.input, list(model.runtime.output_names))
    outputs = await server.infer_tensor(model, batch)
    content, headers = await server.codec(v2_codec.encode_response, req, outputs, model.name,
                                          str(model.config.version))
    media = "application/octet-stream" if v2_codec.HEADER_LENGTH in headers else "application/json"
    return Response(content=content, media_type=media, headers=headers)
