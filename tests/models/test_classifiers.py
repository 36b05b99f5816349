"""The classification architectures of the registry: build, forward, size, cost, torchvision compatibility.

torchvision is never imported: its keys, shapes, parameter counts and reference logits are stored
in data/torchvision_reference.json (made by data/make_torchvision_reference.py from torchvision's
own code). Heavy checks that need no numbers run on the meta device (shapes only, no compute).
"""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from enet_serve.models import get_model, get_spec, list_models
from enet_serve.models.labels import load_labels



@pytest.fixture(autouse=True, scope="module")
def _cpu_settings():
    # 2 threads (shared CI cores); flush denormals: torchvision's init of GoogLeNet (std 0.01) leaves
    # activations so small that, unflushed, a random-weight forward runs ~10x slower on CPU.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "torchvision_reference.json").read_text())
TV_STATE_DICTS: dict = REFERENCE["state_dicts"]
TV_PARITY: dict = REFERENCE["parity"]

_spec = importlib.util.spec_from_file_location("make_torchvision_reference", DATA / "make_torchvision_reference.py")
_gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_gen)  # only its deterministic fill functions are used; it imports no torchvision

CLASSIFIERS = list_models("classify")
EXPECTED = {
    "lenet5", "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn",
    "nin", "googlenet", "inception_v3", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "squeezenet1_0", "squeezenet1_1", "mobilenet_v1", "mobilenet_v2", "xception",
}
# The heads that torchvision's checkpoints carry and our default (aux_logits=False) models do not.
AUX_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _meta_model(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return get_model(name, **kwargs).eval()


def _shapes(model: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def _family(name: str):
    """The family module of an architecture (e.g. models.googlenet), for its load helper."""
    return importlib.import_module(get_spec(name).builder.__module__)


def test_registry_has_every_classifier():
    assert set(CLASSIFIERS) == EXPECTED


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_spec_fields(name):
    spec = get_spec(name)
    assert spec.task == "classify"
    assert len(spec.mean) == len(spec.std) == spec.input_channels
    assert len(load_labels(spec.labels)) == spec.num_classes
    assert {"metric", "value", "dataset", "source"} <= set(spec.reference)
    assert 0 < spec.reference["value"] <= 100
    assert spec.paper
    assert spec.torchvision_compatible == (name in TV_STATE_DICTS)
    if spec.labels == "imagenet1k":
        assert spec.num_classes == 1000 and spec.input_channels == 3
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
        assert spec.input_size == ((299, 299) if name in ("inception_v3", "xception") else (224, 224))


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_forward_at_native_size(name):
    spec = get_spec(name)
    model = get_model(name).eval()
    assert _n_params(model) == spec.params
    batch = 2 if spec.gflops < 2 else 1  # batch > 1 is covered by the meta and parity tests
    x = torch.randn(batch, spec.input_channels, *spec.input_size)
    with torch.no_grad():
        y = model(x)
    assert isinstance(y, torch.Tensor)
    assert y.shape == (batch, spec.num_classes)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_num_classes_override(name):
    spec = get_spec(name)
    model = _meta_model(name, num_classes=7)
    y = model(torch.empty(3, spec.input_channels, *spec.input_size, device="meta"))
    assert y.shape == (3, 7)
    assert _n_params(model) < spec.params  # a smaller head, the same body


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_gflops_match_flop_counter(name):
    # Convention: FlopCounterMode's total (2 flops per multiply-add, conv/linear only) / 1e9, batch 1.
    spec = get_spec(name)
    model = _meta_model(name)
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.empty(1, spec.input_channels, *spec.input_size, device="meta"))
    assert counter.get_total_flops() / 1e9 == pytest.approx(spec.gflops, rel=0.01)


@pytest.mark.parametrize("name", sorted(TV_STATE_DICTS))
def test_torchvision_state_dict_keys_and_shapes(name):
    tv = TV_STATE_DICTS[name]
    spec = get_spec(name)
    if name in AUX_PREFIXES:
        # With aux heads: exactly torchvision's checkpoint layout.
        full = _meta_model(name, aux_logits=True)
        assert _shapes(full) == tv["shapes"]
        assert _n_params(full) == tv["num_params"]
        # Default (no aux heads): torchvision's keys minus the aux ones.
        model = _meta_model(name)
        expected = {k: v for k, v in tv["shapes"].items() if not k.startswith(AUX_PREFIXES[name])}
        assert len(expected) < len(tv["shapes"])
    else:
        model = _meta_model(name)
        expected = tv["shapes"]
        assert spec.params == tv["num_params"]
    assert list(_shapes(model)) == list(expected)  # same keys in the same order
    assert _shapes(model) == expected
    assert _n_params(model) == spec.params


@pytest.mark.parametrize("name", sorted(TV_PARITY["models"]))
def test_torchvision_logits(name):
    """A torchvision-layout checkpoint (filled deterministically) gives torchvision's logits."""
    ref = TV_PARITY["models"][name]
    kwargs = {k: v for k, v in ref["kwargs"].items() if k != "aux_logits"}  # ours: no aux heads
    model = get_model(name, num_classes=TV_PARITY["num_classes"], **kwargs).eval()
    checkpoint = _gen.deterministic_state_dict(ref["shapes"])
    if name in AUX_PREFIXES:  # torchvision's checkpoint has aux weights; ours has no aux heads
        _family(name).load_torchvision_state_dict(model, checkpoint)
    else:
        model.load_state_dict(checkpoint, strict=True)
    with torch.no_grad():
        y = model(_gen.deterministic_input(TV_PARITY["batch"], tuple(ref["input_size"])))
    expected = torch.tensor(ref["logits"])
    scale = expected.abs().max()
    assert scale > 0 and not torch.equal(expected[0], expected[1])
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-4 * float(scale))


@pytest.mark.parametrize("name", sorted(AUX_PREFIXES))
def test_aux_weights_load_and_drop(name):
    family = _family(name)
    with_aux = get_model(name, num_classes=10, aux_logits=True, init_weights=False)
    checkpoint = with_aux.state_dict()
    assert any(k.startswith(AUX_PREFIXES[name]) for k in checkpoint)

    model = get_model(name, num_classes=10, init_weights=False)  # aux_logits=False is the default
    with pytest.raises(RuntimeError, match="Unexpected key"):
        model.load_state_dict(checkpoint, strict=True)
    family.load_torchvision_state_dict(model, checkpoint)
    for k, v in model.state_dict().items():
        assert torch.equal(v, checkpoint[k]), k

    # A checkpoint without aux weights loads strictly, with the helper too.
    plain = get_model(name, num_classes=10, init_weights=False)
    plain.load_state_dict(model.state_dict(), strict=True)
    family.load_torchvision_state_dict(plain, model.state_dict())
    # ...but not into a model that has aux heads.
    with pytest.raises(RuntimeError, match="Missing key"):
        family.load_torchvision_state_dict(with_aux, model.state_dict())


def test_googlenet_aux_outputs_in_training():
    model = get_model("googlenet", num_classes=10, aux_logits=True, init_weights=False).train()
    out = model(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in out] == [(2, 10)] * 3
    assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_inception_v3_aux_outputs_in_training():
    model = _meta_model("inception_v3", num_classes=10, aux_logits=True).train()
    out = model(torch.empty(2, 3, 299, 299, device="meta"))
    assert [o.shape for o in out] == [(2, 10)] * 2


def test_lenet5_is_the_1998_layout():
    model = get_model("lenet5")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (1, 6, (5, 5)), (6, 16, (5, 5)), (16, 120, (5, 5))
    ]
    assert sum(isinstance(m, torch.nn.AvgPool2d) for m in model.modules()) == 2
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 4
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.MaxPool2d)) for m in model.modules())


def test_imagenet_labels():
    labels = load_labels("imagenet1k")
    assert len(labels) == 1000 == len(set(labels))
    assert labels[0] == "tench" and labels[1] == "goldfish"
    assert labels[207] == "golden retriever" and labels[999] == "toilet tissue"
    assert all(isinstance(s, str) and s.strip() == s and s for s in labels)


def test_fashion_mnist_labels():
    labels = load_labels("fashion_mnist")
    assert len(labels) == 10 == len(set(labels))
    assert math.isclose(get_spec("lenet5").mean[0], 0.2860) and math.isclose(get_spec("lenet5").std[0], 0.3530)
