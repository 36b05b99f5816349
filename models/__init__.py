"""PyTorch architectures of enet-serve: ENet and the classic CNNs, with a torchvision-style registry.

Each family module registers its builders (`@register_model`) when imported; importing them here,
the one list of families, fills the registry before anyone can ask it (every import of
enet_serve.models.* runs this file first). A new family is one file and one line below.
"""
from enet_serve.models.registry import ModelSpec, get_model, get_spec, list_models, register_model

from enet_serve.models import (  # noqa: E402,F401  (imported to register their models)
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

__all__ = ["ModelSpec", "get_model", "get_spec", "list_models", "register_model"]
