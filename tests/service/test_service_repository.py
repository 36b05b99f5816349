"""service/repository.py and model loading: config validation, sha256, untrained refusal, providers."""
from __future__ import annotations

import json

import pytest

from enet_serve.service.errors import ModelLoadError
from enet_serve.service.metrics import Metrics
from enet_serve.service.repository import ModelRepository
from enet_serve.service.runtime import ModelRuntime, make_plan
from enet_serve.service.server import ModelServer
from enet_serve.service.settings import Settings
from svc_helpers import copy_model, edit_config


def test_exports_being_staged_are_not_listed(tiny_repo, tmp_path):
    repo_dir = tmp_path / "repo"
    copy_model(tiny_repo, "lenet5-fashion", repo_dir)
    copy_model(tiny_repo, "enet-camvid", repo_dir)
    (repo_dir / "enet-camvid").rename(repo_dir / ".enet-camvid.export-123")
    assert ModelRepository(repo_dir).names() == ["lenet5-fashion"]


def test_lists_and_parses(tiny_repo):
    repo = ModelRepository(tiny_repo)
    assert repo.names() == ["enet-camvid", "lenet5-fashion"]
    seg = repo.entry("enet-camvid").config
    assert seg.task == "segment" and seg.num_classes == 12 and seg.class_names()[11] == "Unlabelled"
    assert seg.palette()[11] == (0, 0, 0) and len(seg.palette()) == 12
    path = repo.entry("lenet5-fashion").file_for("fp32")
    assert path.name == "model.fp32.onnx"


def test_unknown_model(tiny_repo):
    with pytest.raises(ModelLoadError, match="not in"):
        ModelRepository(tiny_repo).entry("nope")


def test_sha256_mismatch_refused(tiny_repo, tmp_path):
    d = copy_model(tiny_repo, "lenet5-fashion", tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["files"]["fp32"]["sha256"] = "0" * 64
    (d / "config.json").write_text(json.dumps(cfg))
    entry = ModelRepository(tmp_path).entry("lenet5-fashion")
    with pytest.raises(ModelLoadError, match="sha256"):
        entry.file_for("fp32")
    entry.file_for("fp32", verify=False)


def test_invalid_config(tiny_repo, tmp_path):
    d = copy_model(tiny_repo, "lenet5-fashion", tmp_path)
    edit_config(d, task="detect")
    with pytest.raises(ModelLoadError, match="invalid config"):
        ModelRepository(tmp_path).entry("lenet5-fashion")


def test_untrained_refused_unless_allowed(tiny_repo, tmp_path):
    d = copy_model(tiny_repo, "lenet5-fashion", tmp_path)
    edit_config(d, weights__trained=False)
    server = ModelServer(Settings(repository=tmp_path), Metrics())
    with pytest.raises(ModelLoadError, match="untrained|trained: false"):
        server.load()
    server = ModelServer(Settings(repository=tmp_path, allow_untrained=True), Metrics())
    server.load()
    assert list(server.models) == ["lenet5-fashion"]


def test_cpu_plan_and_session_report(tiny_repo):
    s = Settings(repository=tiny_repo, device="auto")
    entry = ModelRepository(tiny_repo).entry("enet-camvid")
    cpu = make_plan(entry, s, "cpu")
    assert cpu.file_key == "fp32" and [p for p, _ in cpu.providers] == ["CPUExecutionProvider"]
    cuda = make_plan(entry, s, "cuda")
    assert cuda.file_key == "fp16" and cuda.providers[0][0] == "CUDAExecutionProvider"
    trt = make_plan(entry, s, "tensorrt")
    assert trt.providers[0][0] == "TensorrtExecutionProvider" and trt.providers[0][1]["trt_fp16_enable"]
    assert trt.providers[0][1]["trt_engine_cache_enable"] and trt.file_key == "fp32"
    rt = ModelRuntime.load(entry, s)  # this machine: the CPU, read back from the session
    assert rt.provider == "CPUExecutionProvider" and rt.precision == "fp32"


def test_explicit_gpu_without_gpu_fails(tiny_repo):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu installed")
    entry = ModelRepository(tiny_repo).entry("enet-camvid")
    with pytest.raises(ModelLoadError, match="CUDA"):
        ModelRuntime.load(entry, Settings(repository=tiny_repo, device="cuda"))


def test_selected_models_only(tiny_repo):
    server = ModelServer(Settings(repository=tiny_repo, models=["lenet5-fashion"]), Metrics())
    server.load()
    assert list(server.models) == ["lenet5-fashion"]
    with pytest.raises(ModelLoadError):
        ModelServer(Settings(repository=tiny_repo, models=["nope"]), Metrics()).load()
