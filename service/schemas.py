"""Response (and v2 request) models, with the examples shown by the OpenAPI docs at /docs."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from enet_serve.model_config import TaskName
from enet_serve.service.settings import ComputePrecision


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code", examples=["model_not_found"])
    message: str = Field(description="what went wrong, for people", examples=["unknown model 'enet'; loaded: enet-camvid"])
    details: Any | None = Field(None, description="validation errors, when there are several")


class ErrorResponse(BaseModel):
    error: ErrorDetail


class V2ErrorResponse(BaseModel):
    """The Open Inference Protocol's error object (its clients read `error` as a string)."""
    error: str = Field(description="what went wrong, for people", examples=["unknown model 'enet'; loaded: enet-camvid"])
    code: str = Field(description="stable machine-readable code (as `error.code` elsewhere)", examples=["model_not_found"])


class Region(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"class": "Car", "index": 8, "area": 5230, "bbox": [312, 170, 96, 71], "centroid": [361.4, 207.9]}]})
    class_: str = Field(alias="class", description="the class name")
    index: int = Field(description="the class index (the mask's pixel value)")
    area: int = Field(description="pixels in the region")
    bbox: list[int] = Field(description="[x, y, width, height] of its bounding box, in the input's pixels")
    centroid: list[float] = Field(description="[x, y] of its centre of mass, in the input's pixels")


class RleEntry(BaseModel):
    class_: str = Field(alias="class", description="the class name")
    index: int = Field(description="the class index")
    size: list[int] = Field(description="[height, width], as COCO has it")
    counts: str = Field(description="COCO compressed RLE of the class's binary mask, column-major "
                        "(`pycocotools.mask.decode` reads it)")


class SegmentRleResponse(BaseModel):
    """format=rle."""

    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "model": "enet-camvid", "width": 480, "height": 360, "classes": ["Sky", "Building", "..."],
        "rle": [{"class": "Sky", "index": 0, "size": [360, 480], "counts": "ZQ24d:0O1N2..."}],
        "class_fractions": {"Sky": 0.18, "Road": 0.31},
    }]})
    model: str
    width: int
    height: int
    classes: list[str] = Field(description="class names by index")
    rle: list[RleEntry] = Field(description="one entry per class present (with `classes=`: those present of them)")
    class_fractions: dict[str, float] = Field(description="as in format=json")
    mean_confidence: dict[str, float] | None = Field(None, description="as in format=json")
    regions: list[Region] | None = Field(None, description="with `regions=true`, as in format=json")


class SegmentResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "model": "enet-camvid", "width": 480, "height": 360,
        "classes": ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                    "Pedestrian", "Bicyclist", "Unlabelled"],
        "mask_png": "iVBORw0KGgoAAAANSUhEUgAAAeAAAAFoCAMAAAC...",
        "class_fractions": {"Sky": 0.18, "Building": 0.27, "Road": 0.31, "Car": 0.04},
    }]})
    model: str
    width: int = Field(description="width of the input image (and of the mask)")
    height: int = Field(description="height of the input image (and of the mask)")
    classes: list[str] = Field(description="class names by index (the mask's pixel values)")
    mask_png: str = Field(description="base64 palette PNG, width x height, pixel value = class index")
    class_fractions: dict[str, float] = Field(
        description="share of the image's pixels per class (with `classes=`: only those classes)")
    mean_confidence: dict[str, float] | None = Field(
        None, description="per class present, the mean of its pixels' confidence (0..1); only from models with a "
        "`confidence` output")
    regions: list[Region] | None = Field(None, description="with `regions=true`: the connected regions")


class Prediction(BaseModel):
    label: str
    index: int
    score: float


class ClassifyResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), json_schema_extra={"examples": [{
        "model": "lenet5-fashion",
        "predictions": [{"label": "Ankle boot", "index": 9, "score": 0.97},
                        {"label": "Sneaker", "index": 7, "score": 0.02}],
    }]})
    model: str
    predictions: list[Prediction] = Field(description="sorted by score, highest first")


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=(), extra="allow", json_schema_extra={"examples": [{
        "name": "enet-camvid", "task": "segment", "architecture": "enet", "version": 1, "ready": True,
        "labels": ["Sky", "Building", "..."], "num_classes": 11,
        "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "height": 360, "width": 480, "channels": 3,
                  "dynamic_size": True, "size_multiple": 8},
        "provider": "CPUExecutionProvider", "device": "cpu", "precision": "fp32", "parameters": 353378,
        "gflops": 2.486, "reference": {"metric": "mIoU", "value": 51.3, "dataset": "CamVid test"},
        "batching": {"max_batch_size": 8, "effective_max_batch_size": 2, "max_delay_ms": 5.0, "max_queue": 64,
                     "instances": 2, "threads_per_instance": 1, "solo_instance_threads": 2},
    }]})
    name: str
    task: TaskName
    architecture: str
    version: int
    ready: bool
    labels: list[str]
    num_classes: int
    input: dict[str, Any]
    outputs: list[dict[str, Any]]
    provider: str = Field(description="the execution provider the session actually runs on")
    providers: list[str]
    device: str
    precision: ComputePrecision
    execution: dict[str, Any] | None = Field(
        None, description="the device asked for, the plans that failed before this one (provider and reason), the "
        "ONNX file, the TensorRT profile (min/opt/max input shapes) and where shapes outside it run, the engine cache")
    file: str
    parameters: int | None = None
    gflops: float | None = None
    reference: dict[str, Any] | None = None
    paper: str | None = None
    trained: bool
    metrics: dict[str, Any] | None = None
    batching: dict[str, Any]
    warmup_s: float | None = None
    colors: list[list[int]] | None = None
    void: dict[str, Any] | None = None


class ModelFaultInfo(BaseModel):
    name: str
    stage: Literal["load", "warm-up"]
    file: str = Field(description="the file at fault: config.json or the ONNX file")
    reason: str


class ModelList(BaseModel):
    models: list[ModelInfo]
    failed: list[ModelFaultInfo] = Field(
        default_factory=list, description="models that failed to load or warm up (exit_on_error off): not served")
    defaults: dict[str, str | None] = Field(description="the model each route uses without model=",
                                            examples=[{"segment": "enet-camvid", "classify": "lenet5-fashion"}])


class Health(BaseModel):
    status: Literal["live", "ready", "not_ready"]
    models: dict[str, bool] = Field(default_factory=dict)
    failed: dict[str, str] = Field(default_factory=dict, description="models that failed (exit_on_error off), "
                                   "with why; they do not hold readiness down")


# -- Open Inference Protocol (KServe v2) --------------------------------------------------------------

class V2Tensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any | None = None


# The v2 datatypes (the server's input is UINT8; the others are refused with a message naming it).
V2Datatype = Literal["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                     "FP64", "BYTES"]


class V2InferInput(BaseModel):
    """An input tensor of a request: as strict as the server reads it (a name, a known datatype, a shape)."""

    name: str = Field(min_length=1, description="the model's input name (`image`)")
    shape: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, description="[N, H, W, C] for `image`")
    datatype: V2Datatype
    parameters: dict[str, Any] | None = None
    data: Any | None = None


class V2RequestedOutput(BaseModel):
    name: str = Field(min_length=1)
    parameters: dict[str, Any] | None = None


class V2InferRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "42",
        "inputs": [{"name": "image", "shape": [1, 8, 8, 3], "datatype": "UINT8", "data": [0] * 192}],
        "outputs": [{"name": "mask"}],
    }]})
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[V2InferInput] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2InferResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[V2Tensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


# OpenAPI snippets shared by the image routes -------------------------------------------------------------

IMAGE_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image bytes (JPEG, PNG, WebP, GIF, BMP, TIFF), or multipart/form-data with a field `image`",
        "content": {
            "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/webp": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["image"],
                                               "properties": {"image": {"type": "string", "format": "binary"}}}},
        },
    }
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "bad or undecodable image"},
    401: {"model": ErrorResponse, "description": "missing or wrong API key (when keys are configured)"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "body, image or v2 batch too large"},
    415: {"model": ErrorResponse, "description": "unsupported media type"},
    422: {"model": ErrorResponse, "description": "bad parameters"},
    503: {"model": ErrorResponse, "description": "queue full or not ready (see Retry-After)"},
    504: {"model": ErrorResponse, "description": "the deadline passed while queued"},
}
# the same on the /v2 routes, in the protocol's form
V2_ERROR_RESPONSES = {status: {**response, "model": V2ErrorResponse} for status, response in ERROR_RESPONSES.items()}
