"""PyTorch architectures of enet-serve: ENet and the classic CNNs, with a torchvision-style registry."""
from enet_serve.models.registry import ModelSpec, get_model, get_spec, list_models, register_model

# Each family module registers its builders on import; keep this list in sync with the files.
from enet_serve.models import (  # noqa: E402,F401
    alexnet,
    enet,
    googlenet,
    inception,
    lenet,
    mobilenet,
    nin,
    resnet,
    squeezenet,
    vgg,
    xception,
)

FAMILIES = (
    "alexnet",
    "enet",
    "googlenet",
    "inception",
    "lenet",
    "mobilenet",
    "nin",
    "resnet",
    "squeezenet",
    "vgg",
    "xception",
)

__all__ = ["ModelSpec", "get_model", "get_spec", "list_models", "register_model", "FAMILIES"]
