"""Loading checkpoints into models built without some optional heads (e.g. the auxiliary
classifiers of GoogLeNet / Inception v3, which torchvision's checkpoints include)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn


def load_state_dict_without_absent_heads(model: nn.Module, state_dict: Mapping[str, Tensor], heads: Iterable[str]):
    """Load `state_dict` into `model` strictly, first dropping the weights (`<head>.*`) of those
    optional heads, named by attribute in `heads`, that `model` was built without (the attribute is
    None). Returns load_state_dict's result; any other missing or unexpected key is an error."""
    absent = tuple(f"{name}." for name in heads if getattr(model, name, None) is None)
    kept = {k: v for k, v in state_dict.items() if not k.startswith(absent)}
    return model.load_state_dict(kept, strict=True)
