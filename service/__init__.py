"""enet-serve's HTTP service: FastAPI + onnxruntime with dynamic batching. Never imports torch."""
from __future__ import annotations

from enet_serve.service._version import __version__


def create_app(settings=None):
    """The ASGI app (see service.app.create_app); imported lazily so `import service` stays light."""
    from enet_serve.service.app import create_app as _create

    return _create(settings)


__all__ = ["create_app", "__version__"]
