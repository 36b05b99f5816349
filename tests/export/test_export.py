"""export/: PyTorch -> ONNX FP32/FP16 into the model repository, and the checks that guard it.

One ENet export (a "trained-ish" checkpoint: random weights with non-trivial batch-norm statistics
and PReLU slopes, some above 1) is shared by the ENet tests; LeNet-5 exports are small and fast.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from enet_serve import models
from enet_serve.export import ExportCheckError, ExportError, WeightsError, export_model
from enet_serve.export.checks import DENY_OPS, normalise
from enet_serve.export.exporter import export
from enet_serve.export.graph import ExportPReLU, build_graph_module, swap_for_export
from enet_serve.models.enet_export import first_max_mask_2x2, unpool_2x
from enet_serve.model_config import sha256_file

CONFIG_KEYS = {"name", "architecture", "task", "version", "input", "outputs", "normalization", "labels", "files",
               "parameters", "gflops", "reference", "paper", "weights", "opset", "exporter"}


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def enet_checkpoint(path: Path) -> Path:
    """ENet with random weights made less trivial than an initialisation: BN statistics and PReLU slopes."""
    g = torch.Generator().manual_seed(1)
    model = models.get_model("enet")
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=g))
            m.weight.data.copy_(0.5 + torch.rand(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))
        elif isinstance(m, torch.nn.PReLU):
            m.weight.data.copy_(-0.2 + 1.5 * torch.rand(m.weight.shape, generator=g))  # some slopes > 1
    torch.save({"arch": "enet", "num_classes": 11, "model": model.state_dict(),
                "metrics": {"val": {"mIoU": 12.5}}, "training": {"epochs": 0, "command": "test"}}, path)
    return path


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """As the exporter does: PyTorch's OpenMP threads crawl on a shared busy CPU (see export.exporter)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def enet_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enet")
    weights = enet_checkpoint(tmp / "enet-test.pth")
    result = export("enet", tmp / "repo", "enet-test", weights=weights, precisions=("fp32", "fp16"))
    assert list(result.config["files"]) == ["fp32", "fp32_gpu", "fp16"]
    model = models.get_model("enet")
    model.load_state_dict(torch.load(weights, weights_only=True)["model"])
    return result, weights, model.eval()


# ---------------------------------------------------------------------------------------------------------
# ENet
# ---------------------------------------------------------------------------------------------------------

def test_enet_exports_fp32_and_fp16_passing_the_checks(enet_export):
    result, _, _ = enet_export
    names = [r.name for r in result.checks]
    assert all(r.passed for r in result.checks)
    for needed in ("FP32 logits vs PyTorch", "FP32 classes vs PyTorch", "FP32 batch 1 and 8", "FP32 other size",
                   "FP16 finite", "FP16 classes vs FP32", "FP16 batch 1 and 8", "FP32 op set", "FP16 op set",
                   "FP32 uint8 rule", "FP16 uint8 rule", "FP32 confidence vs PyTorch", "FP16 confidence vs FP32",
                   "FP16 exact comparisons"):
        assert needed in names
    assert (result.path / "1" / "model.fp32.onnx").is_file() and (result.path / "1" / "model.fp16.onnx").is_file()


def test_enet_graphs_hold_no_maxunpool_nor_cpu_only_ops(enet_export):
    result, _, _ = enet_export
    for precision in ("fp32", "fp32_gpu", "fp16"):
        ops = {n.op_type for n in onnx.load(str(result.path / "1" / f"model.{precision}.onnx")).graph.node}
        assert "MaxUnpool" not in ops
        assert not ops & set(DENY_OPS)
        # the FP32 graph for CPUs uses the NCHWc-friendly form of PReLU; the GPU graphs keep PRelu
        assert ("PRelu" in ops) == (precision != "fp32")


def test_enet_gpu_graph_gives_the_cpu_graphs_answers(enet_export):
    result, _, _ = enet_export
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (2, 72, 104, 3), dtype=torch.uint8, generator=g).numpy()
    cpu = session(result.path / "1" / "model.fp32.onnx").run(None, {"image": images})
    gpu = session(result.path / "1" / "model.fp32_gpu.onnx").run(None, {"image": images})
    assert (cpu[0] == gpu[0]).mean() >= 0.999
    assert (np.abs(cpu[1].astype(int) - gpu[1].astype(int)) <= 1).mean() >= 0.999
    names = [r.name for r in result.checks]
    assert {"FP32 GPU classes vs PyTorch", "FP32 GPU confidence vs PyTorch", "FP32 GPU uint8 rule"} <= set(names)


def test_lenet5_has_no_gpu_graph(lenet_dir):
    """A model without CPU-only rewrites gets no fp32_gpu file: it would be the FP32 graph again."""
    assert sorted(p.name for p in (lenet_dir / "1").iterdir()) == ["model.fp16.onnx", "model.fp32.onnx"]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_enet_graph_contract_uint8_nhwc_in_uint8_mask_and_confidence_out(enet_export, precision):
    result, _, _ = enet_export
    graph = onnx.load(str(result.path / "1" / f"model.{precision}.onnx")).graph
    (inp,) = graph.input
    assert inp.name == "image" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = inp.type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, True, True, False] and dims[3].dim_value == 3
    assert [o.name for o in graph.output] == ["mask", "confidence"]
    producers = {out: n for n in graph.node for out in n.output}
    for out in graph.output:
        assert out.type.tensor_type.elem_type == onnx.TensorProto.UINT8
        assert len(out.type.tensor_type.shape.dim) == 3
        assert producers[out.name].op_type == "Cast"  # TensorRT's UINT8 rule
    assert [n.op_type for n in graph.node if "image" in n.input] == ["Cast"]
    if precision == "fp16":  # the network computes in half: its convolution weights are float16
        inits = {i.name: i.data_type for i in graph.initializer}
        conv_w = [inits[n.input[1]] for n in graph.node if n.op_type == "Conv" and n.input[1] in inits]
        assert conv_w and all(t == onnx.TensorProto.FLOAT16 for t in conv_w)


@pytest.mark.parametrize("size", [(64, 96), (128, 64), (100, 150)])
def test_enet_mask_has_the_input_size_and_matches_pytorch(enet_export, size):
    """Any multiple of 8 works, and other sizes are padded and cropped in the graph like ENet's forward."""
    result, _, model = enet_export
    g = torch.Generator().manual_seed(sum(size))
    images = torch.randint(0, 256, (2, *size, 3), dtype=torch.uint8, generator=g)
    mask, confidence = session(result.path / "1" / "model.fp32.onnx").run(None, {"image": images.numpy()})
    assert mask.dtype == confidence.dtype == np.uint8 and mask.shape == confidence.shape == (2, *size)
    with torch.no_grad():
        logits = model(normalise(images, models.get_spec("enet")))
    assert (mask == logits.argmax(1).numpy()).mean() >= 0.999
    # the top class's probability x 255, cropped and interleaved like the mask
    expected = (torch.softmax(logits, 1).amax(1) * 255).round().numpy()
    assert (np.abs(confidence.astype(int) - expected) <= 1).mean() >= 0.999


def test_unpooling_mask_keeps_the_first_maximum_like_torch_indices():
    """Where several values of a 2x2 window tie (flat image regions: common at ENet's first pooling),
    the mask marks the first one in row-major order, the position torch's max_pool2d indices give."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (2, 16, 12, 20), generator=g).float()  # many ties
    x[:, :, :4] = 1.0  # all four tie
    pooled, indices = torch.nn.functional.max_pool2d(x, 2, stride=2, return_indices=True)
    expected = torch.zeros_like(x).flatten(2).scatter_(2, indices.flatten(2), 1.0).view_as(x)
    got = first_max_mask_2x2(x, pooled)
    assert torch.equal(got, expected)
    assert torch.equal(unpool_2x(pooled, got), torch.nn.functional.max_unpool2d(pooled, indices, 2))


def test_export_time_swaps_compute_the_same_as_enet():
    """The swapped ENet (no indices, mask unpooling, folded BN, PReLU as convs) gives ENet's classes."""
    torch.manual_seed(0)
    model = models.get_model("enet").eval()
    for m in model.modules():
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.uniform_(-0.5, 1.5)
    x = torch.randn(2, 3, 64, 96)
    x[:, :, :32] = 0.25  # a flat region: 2x2 windows tie
    swapped = swap_for_export(model, models.get_spec("enet"))
    with torch.no_grad():
        a, b = model(x), swapped(x)
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.999
    # Folding batch norms changes the rounding; where a 2x2 window's top two values are that close
    # (random weights make many), the unpooled value moves: most logits are equal, not all.
    assert ((a - b).abs() < 1e-4).float().mean() >= 0.99


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "googlenet", "inception_v3", "xception", "mobilenet_v2"])
def test_every_batch_norm_is_folded_in_float32_before_export(arch):
    """Batch norms beside their convolution as attributes (ResNet's blocks, BasicConv2d, Xception's
    separable convolutions), not only in a Sequential, are folded in float32: left to the exporter,
    an FP16 graph folded them in float16. The folded model computes the same logits."""
    torch.manual_seed(0)
    model = models.get_model(arch).eval()
    for m in model.modules():  # statistics away from identity, so that a wrong fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    swapped = swap_for_export(model, models.get_spec(arch))
    assert not [n for n, m in swapped.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        a, b = model(x), swapped(x)
    assert torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max()))


def test_export_prelu_is_exact_for_any_slope():
    prelu = torch.nn.PReLU(4)
    prelu.weight.data = torch.tensor([0.25, -0.5, 1.0, 3.0])  # includes slopes > 1 (second formulation)
    x = torch.randn(2, 4, 5, 7)
    with torch.no_grad():
        assert torch.allclose(ExportPReLU(prelu)(x), prelu(x), atol=1e-6)


def test_enet_config_json_follows_the_repository_schema(enet_export):
    result, weights, _ = enet_export
    config = json.loads((result.path / "config.json").read_text())
    assert CONFIG_KEYS <= set(config)
    assert config["name"] == "enet-test" and config["architecture"] == "enet" and config["task"] == "segment"
    assert config["input"] == {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": 3, "height": 360,
                               "width": 480, "dynamic_size": True, "size_multiple": 8}
    assert config["outputs"] == [{"name": "mask", "dtype": "uint8", "shape": ["N", "H", "W"]},
                                 {"name": "confidence", "dtype": "uint8", "shape": ["N", "H", "W"]}]
    assert len(config["labels"]) == len(config["colors"]) == 11
    assert config["void"]["index"] == 11
    spec = models.get_spec("enet")
    assert config["normalization"] == {"mean": list(spec.mean), "std": list(spec.std)}
    assert list(config["files"]) == ["fp32", "fp32_gpu", "fp16"]
    for precision in ("fp32", "fp32_gpu", "fp16"):
        entry = config["files"][precision]
        path = result.path / entry["path"]
        assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
    assert config["weights"] == {"source": str(weights.resolve()), "sha256": sha256_file(weights), "trained": True}
    assert config["metrics"] == {"val": {"mIoU": 12.5}} and config["training"]["command"] == "test"
    assert config["parameters"] == sum(p.numel() for p in models.get_model("enet").parameters())
    assert config["gflops"] > 0 and config["opset"] == 17
    assert set(config["exporter"]) == {"torch", "onnx", "onnxruntime"}


# ---------------------------------------------------------------------------------------------------------
# LeNet-5 (classification)
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lenet_dir(tmp_path_factory):
    return export_model("lenet5", tmp_path_factory.mktemp("lenet"), random_init=True)


def test_lenet5_gives_float32_probabilities_summing_to_one(lenet_dir):
    assert lenet_dir.name == "lenet5"
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 1), dtype=np.uint8)
    for precision in ("fp32", "fp16"):
        s = session(lenet_dir / "1" / f"model.{precision}.onnx")
        assert [o.name for o in s.get_outputs()][0] == "probabilities"
        probs = s.run(None, {"image": images})[0]
        assert probs.dtype == np.float32 and probs.shape == (5, 10)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-3)


def test_lenet5_config_is_untrained_classification(lenet_dir):
    config = json.loads((lenet_dir / "config.json").read_text())
    assert CONFIG_KEYS <= set(config)
    assert config["task"] == "classify" and "colors" not in config and "void" not in config
    assert config["input"]["dynamic_size"] is False and config["input"]["channels"] == 1
    assert "crop_fraction" not in config["input"]  # Fashion-MNIST's 28x28 frames are resized whole
    assert config["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": ["N", 10]}]
    assert config["weights"] == {"source": None, "sha256": None, "trained": False}
    assert "metrics" not in config


def test_fp16_by_conversion_loads_and_passes(tmp_path):
    """The onnxconverter-common fallback (for models PyTorch cannot trace in half) gives a loadable graph."""
    result = export("lenet5", tmp_path, random_init=True, fp16_method="convert")
    assert any("onnxconverter-common" in n for n in result.notes)
    assert all(r.passed for r in result.checks)
    session(result.path / "1" / "model.fp16.onnx")


# ---------------------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------------------

def lenet_state(**changes) -> dict:
    return models.get_model("lenet5", **changes).state_dict()


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth: no such weights file"):
        export_model("lenet5", tmp_path / "repo", weights=path)


def test_corrupt_weights_file(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"\x80\x04 definitely not a checkpoint")
    with pytest.raises(WeightsError, match=r"corrupt\.pth: not a readable PyTorch weights file") as e:
        export_model("lenet5", tmp_path / "repo", weights=path)
    assert "\n" not in str(e.value)


def test_wrong_keys_are_named(tmp_path):
    state = lenet_state()
    state["head.weight"] = state.pop("classifier.2.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError) as e:
        export_model("lenet5", tmp_path / "repo", weights=path)
    msg = str(e.value)
    assert "renamed.pth" in msg and "missing keys: classifier.2.weight" in msg and "unexpected keys: head.weight" in msg


def test_wrong_shapes_are_named(tmp_path):
    path = tmp_path / "twelve.pth"
    torch.save(lenet_state(num_classes=12), path)  # a bare state_dict, as torchvision ships
    with pytest.raises(WeightsError, match=r"twelve\.pth: does not fit lenet5: shape mismatch: classifier\.2\.weight "
                                           r"\(file \[12, 84\], model \[10, 84\]\)"):
        export_model("lenet5", tmp_path / "repo", weights=path)


def test_checkpoint_of_another_architecture(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"arch": "enet", "num_classes": 10, "model": lenet_state()}, path)
    with pytest.raises(WeightsError, match="a checkpoint of 'enet', not of 'lenet5'"):
        export_model("lenet5", tmp_path / "repo", weights=path)


def test_torchvision_aux_heads_are_dropped(tmp_path):
    """googlenet/inception_v3 files from torchvision carry aux-head weights the export model lacks."""
    if "googlenet" not in models.list_models():
        pytest.skip("googlenet is not registered")
    from enet_serve.export.weights import load_into, read_weights

    model = models.get_model("googlenet", init_weights=False)
    state = dict(model.state_dict())
    state["aux1.fc2.weight"] = torch.zeros(1000, 1024)
    state["aux2.conv.conv.weight"] = torch.zeros(128, 528, 1, 1)
    path = tmp_path / "googlenet.pth"
    torch.save(state, path)
    assert sorted(load_into(model, read_weights(path), "googlenet")) == ["aux1.fc2.weight", "aux2.conv.conv.weight"]
    # such a file is torchvision's, whose weights need transform_input: the export asks rather than guess
    from enet_serve.export.exporter import build_model

    spec = models.get_spec("googlenet")
    with pytest.raises(ExportError, match="transform_input=true"):
        build_model("googlenet", spec, read_weights(path), None)
    for value in (True, False):
        built, _ = build_model("googlenet", spec, read_weights(path), None, {"transform_input": value})
        assert built.transform_input is value


def test_weights_and_random_init_are_exclusive(tmp_path):
    with pytest.raises(ExportError, match="exactly one"):
        export_model("lenet5", tmp_path, random_init=True, weights=tmp_path / "x.pth")
    with pytest.raises(ExportError, match="exactly one"):
        export_model("lenet5", tmp_path)


# ---------------------------------------------------------------------------------------------------------
# CLI and failure handling
# ---------------------------------------------------------------------------------------------------------

def test_cli_exports(tmp_path, capsys):
    from enet_serve.cli import main

    assert main(["export", "lenet5", "--random-init", "--name", "tiny", "--precision", "fp32",
                 "--repository", str(tmp_path)]) == 0
    assert (tmp_path / "tiny" / "1" / "model.fp32.onnx").is_file()
    assert not (tmp_path / "tiny" / "1" / "model.fp16.onnx").exists()
    assert "UNTRAINED" in capsys.readouterr().out


def test_cli_error_is_one_line(tmp_path, capsys):
    from enet_serve.cli import main

    assert main(["export", "lenet5", "--weights", str(tmp_path / "missing.pth"), "--repository", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("enet-serve export: error:") and "missing.pth" in err
    assert main(["export", "no-such-net", "--random-init", "--repository", str(tmp_path)]) == 1
    assert "unknown model 'no-such-net'" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: the two weight sources exclude each other
        main(["export", "lenet5", "--random-init", "--weights", "x.pth"])


def test_builder_arguments_reach_the_builder_and_the_config(tmp_path, capsys):
    from enet_serve.cli import main
    from enet_serve.export.cli import parse_builder_args
    from enet_serve.export.exporter import build_model

    assert parse_builder_args(["transform_input=true", "dropout=0.2", "mode=fast"]) == {
        "transform_input": True, "dropout": 0.2, "mode": "fast"}
    googlenet, _ = build_model("googlenet", models.get_spec("googlenet"), None, None, {"transform_input": True})
    assert googlenet.transform_input is True
    # a builder argument that the architecture has no use for is an error naming it, and writes nothing
    assert main(["export", "lenet5", "--random-init", "--set", "transform_input=true",
                 "--repository", str(tmp_path)]) == 1
    assert "lenet5" in capsys.readouterr().err and not (tmp_path / "lenet5").exists()
    assert main(["export", "lenet5", "--random-init", "--set", "in_channels=1", "--precision", "fp32",
                 "--repository", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "lenet5" / "config.json").read_text())["builder_args"] == {"in_channels": 1}


def test_failed_check_raises_and_writes_nothing(tmp_path, monkeypatch):
    import enet_serve.export.graph as graph

    # An older export of the same name must survive a failed re-export untouched.
    old = export_model("lenet5", tmp_path, random_init=True, precisions=("fp32",), check=False)
    old_config = (old / "config.json").read_text()

    original = graph._Preprocess.forward
    monkeypatch.setattr(graph._Preprocess, "forward", lambda self, image: -original(self, image))  # break parity
    with pytest.raises(ExportCheckError, match="check failed: FP32"):
        export_model("lenet5", tmp_path, random_init=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lenet5"]  # no half-written or temporary directory
    assert (old / "config.json").read_text() == old_config
    assert not (old / "1" / "model.fp16.onnx").exists()


def test_build_graph_module_keeps_the_callers_model():
    model = models.get_model("enet").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_graph_module(model, models.get_spec("enet"), "fp16")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# The checks' own reach
# ---------------------------------------------------------------------------------------------------------

def test_logit_tolerance_follows_the_logits_own_scale():
    """Logits of 1e-6 (as random MobileNets' were): a graph answering other samples' logits must fail,
    not pass under a tolerance floored at 1."""
    from enet_serve.export.checks import GraphRun, Reference, check_fp32_classes, check_logits

    logits = 1e-6 * torch.randn(16, 10, generator=torch.Generator().manual_seed(0))
    ref = Reference(torch.zeros(16, 1, 1, 1, dtype=torch.uint8), logits, "test")
    wrong = logits.roll(1, dims=0)
    bad = GraphRun("fp32", None, [torch.softmax(wrong, 1).numpy()], wrong.numpy(), logits.numpy(), "classify")
    good = GraphRun("fp32", None, [torch.softmax(logits, 1).numpy()], logits.numpy(), logits.numpy(), "classify")
    assert not check_logits(bad, ref).passed and not check_fp32_classes(bad, ref).passed
    assert check_logits(good, ref).passed and check_fp32_classes(good, ref).passed


def test_random_weights_get_batch_norm_statistics_of_their_inputs():
    """Random MobileNet v2 with the initial statistics answered logits near 1e-9, noise no check can hold to
    anything; the export calibrates its batch norms on fixed random images (the same every time)."""
    from enet_serve.export.exporter import build_model

    spec = models.get_spec("mobilenet_v2")
    a, _ = build_model("mobilenet_v2", spec, None, None)
    b, _ = build_model("mobilenet_v2", spec, None, None)
    assert not a.training
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    images = torch.randint(0, 256, (4, 224, 224, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = a(normalise(images, spec))
    assert logits.abs().max() > 1e-2


def test_fp16_probabilities_are_held_to_fp32s(tmp_path, monkeypatch):
    """An FP16 graph whose probabilities drift from FP32's (the same classes, the same logits) fails."""
    import enet_serve.export.graph as graph

    original = graph.ClassificationGraph.forward

    def drifting(self, image):
        p = original(self, image)
        return (p + p.mean(1, keepdim=True)) / 2 if self.compute_dtype == torch.float16 else p

    monkeypatch.setattr(graph.ClassificationGraph, "forward", drifting)
    weights = Path(__file__).resolve().parents[2] / "models" / "weights" / "lenet5-fashion.pth"
    with pytest.raises(ExportCheckError, match="FP16 probabilities vs FP32"):
        export("lenet5", tmp_path, "lenet5-fashion", weights=weights)


def test_fp16_overflow_is_caught_in_pytorch_float16():
    """A graph whose activations pass float16's range: onnxruntime's CPU provider computes it in float32
    and answers fine; PyTorch's float16 kernels overflow, as a GPU would."""
    from enet_serve.export.checks import Graph, Reference, check_fp16_in_pytorch, torch_logits

    spec = models.get_spec("lenet5")
    model = models.get_model("lenet5").eval()
    images = torch.randint(0, 256, (8, 32, 32, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = Reference(images, torch_logits(model, images, spec), "test")
    fine = build_graph_module(model, spec, "fp16")
    assert all(r.passed for r in check_fp16_in_pytorch(Graph("fp16", Path("unused"), fine), ref))

    class Overflowing(torch.nn.Module):  # the same function in exact arithmetic
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x * 1e5) / 1e5

    hot = build_graph_module(model, spec, "fp16")
    hot.model = Overflowing(hot.model)
    results = check_fp16_in_pytorch(Graph("fp16", Path("unused"), hot), ref)
    assert not results[0].passed and "overflow float16" in results[0].detail


def test_gflops_are_counted_again_for_builder_arguments(tmp_path):
    from enet_serve.export.exporter import count_gflops

    spec = models.get_spec("mobilenet_v2")
    result = export("mobilenet_v2", tmp_path, "narrow", random_init=True, precisions=("fp32",), check=False,
                    builder_args={"width_mult": 0.5})
    narrow = models.get_model("mobilenet_v2", width_mult=0.5).eval()
    assert result.config["gflops"] == pytest.approx(count_gflops(narrow, spec), rel=1e-3)
    assert result.config["gflops"] < spec.gflops / 2
    # ImageNet classifiers record their reference's evaluation crop; the service takes it (service.tasks)
    assert result.config["input"]["crop_fraction"] == pytest.approx(224 / 256)


def test_a_segmentation_model_past_256_classes_is_refused(tmp_path):
    """The mask is uint8: class 300 would come out as 44, and the checks would blame the graph."""
    with pytest.raises(ExportError, match="at most 256 classes"):
        export("enet", tmp_path, random_init=True, num_classes=300, precisions=("fp32",))
    assert not (tmp_path / "enet").exists()


def test_parameters_leave_out_the_auxiliary_heads():
    from enet_serve.export.exporter import count_parameters

    spec = models.get_spec("googlenet")
    with_aux = models.get_model("googlenet", aux_logits=True, init_weights=False)
    assert count_parameters(with_aux) == spec.params < sum(p.numel() for p in with_aux.parameters())
