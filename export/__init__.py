"""PyTorch -> ONNX (FP32, FP16) export into the model repository, with the checks that guard it.

    from enet_serve.export import export_model
    export_model("enet", Path("model_repository"), "enet-camvid", weights=Path("models/weights/enet-camvid.pth"))

See export.graph (the exported module and its export-time swaps), export.checks (what is checked),
export.repository (config.json) and export.weights (weight files).
"""
from enet_serve.export.errors import ExportCheckError, ExportError, WeightsError
from enet_serve.export.exporter import export_model

__all__ = ["export_model", "ExportError", "ExportCheckError", "WeightsError"]
