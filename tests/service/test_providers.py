"""The provider chain, the re-planning when a session lands elsewhere than asked, the TensorRT profile,
the engine cache key, the GPU session options and the IO bindings, with a fake onnxruntime-gpu
(fake_ort) whose sessions report other providers than asked or raise."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as real_ort
import pytest

from enet_serve.model_config import sha256_file
from enet_serve.service import providers, runtime
from enet_serve.service.errors import ModelLoadError
from enet_serve.service.repository import ModelRepository
from enet_serve.service.settings import Settings
from fake_ort import CPU, CUDA, TRT, EPFail, FakeOrt, FakeOrtValue
from svc_helpers import copy_model, random_rgb

ALL = [TRT, CUDA, CPU]


@pytest.fixture
def use_fake(monkeypatch):
    """`fake = use_fake(available, outcomes)`: the service's onnxruntime replaced by a FakeOrt."""
    def install(available=ALL, outcomes=None, **kwargs) -> FakeOrt:
        fake = FakeOrt(available, outcomes, **kwargs)
        monkeypatch.setattr(runtime, "ort", fake)
        monkeypatch.setattr(runtime, "_dlls_preloaded", False)
        return fake

    return install


def entry(repo: Path, name: str = "enet-camvid"):
    return ModelRepository(repo).entry(name)


def settings(repo: Path, tmp_path: Path, **kw) -> Settings:
    kw.setdefault("trt_cache_dir", tmp_path / "trt-cache")
    return Settings(repository=repo, **kw)


# -- the chain -----------------------------------------------------------------------------------------

def test_auto_tensorrt_epfail_falls_back_to_cuda_in_one_line(tiny_repo, tmp_path, use_fake, caplog):
    fake = use_fake(outcomes={TRT: EPFail("[ONNXRuntimeError] : 11 : EP_FAIL :\n  TensorRT EP failed to create engine\n"
                                          "  from subgraph: UINT8 is not supported here")})
    with caplog.at_level(logging.WARNING, logger="enet_serve.service.runtime"):
        rt = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path))
    assert fake.asked() == [TRT, CUDA]
    assert rt.provider == CUDA and rt.device == "cuda" and rt.precision == "fp16" and rt.plan.file_key == "fp16"
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert TRT in lines[0] and "EPFail" in lines[0] and "failed to create engine" in lines[0] and CUDA in lines[0]
    described = rt.describe()
    assert described["asked"] == "auto" and described["fallbacks"][0]["provider"] == TRT
    assert "EPFail" in described["fallbacks"][0]["reason"]


def test_auto_replans_for_cuda_when_tensorrt_is_listed_but_the_session_is_cuda(tiny_repo, tmp_path, use_fake, caplog):
    """onnxruntime-gpu lists TensorRT without its libraries and quietly makes a CUDA session: the service
    notices and builds the CUDA plan (FP16 graph, CUDA options), not the TensorRT plan's FP32 file on CUDA."""
    fake = use_fake(outcomes={TRT: CUDA})
    with caplog.at_level(logging.WARNING, logger="enet_serve.service.runtime"):
        rt = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path))
    assert fake.asked() == [TRT, CUDA]
    assert fake.created[0].path.endswith("model.fp32.onnx") and fake.created[1].path.endswith("model.fp16.onnx")
    assert rt.provider == CUDA and rt.plan.device == "cuda" and rt.plan.profile is None
    assert fake.created[1].providers[0][1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert "asked for TensorrtExecutionProvider, the session runs on CUDAExecutionProvider" in caplog.text


def test_auto_ends_on_the_cpu_with_the_cpu_plan(tiny_repo, tmp_path, use_fake):
    fake = use_fake(outcomes={TRT: RuntimeError("libnvinfer.so.10: cannot open shared object file"), CUDA: CPU})
    rt = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path, instances=2))
    assert fake.asked()[:2] == [TRT, CUDA] and set(fake.asked()[2:]) == {CPU}
    assert rt.provider == CPU and rt.precision == "fp32" and rt.plan.file_key == "fp32"
    assert len(rt.sessions) == 2 and [f["provider"] for f in rt.describe()["fallbacks"]] == [TRT, CUDA]


def test_auto_only_tries_what_onnxruntime_lists(tiny_repo, tmp_path, use_fake):
    fake = use_fake(available=[CPU])
    rt = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path))
    assert set(fake.asked()) == {CPU} and rt.provider == CPU and fake.preloaded == 0


@pytest.mark.parametrize("outcome", [CUDA, EPFail("no TensorRT"), CPU])
def test_explicit_tensorrt_that_cannot_be_honoured_fails(tiny_repo, tmp_path, use_fake, outcome):
    fake = use_fake(outcomes={TRT: outcome})
    with pytest.raises(ModelLoadError, match="enet-camvid: device=tensorrt .TensorrtExecutionProvider. failed"):
        runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path, device="tensorrt"))
    assert fake.asked() == [TRT]


def test_explicit_cuda_that_lands_on_the_cpu_fails(tiny_repo, tmp_path, use_fake):
    use_fake(outcomes={CUDA: CPU})
    with pytest.raises(ModelLoadError, match="asked for CUDAExecutionProvider, the session runs on CPUExecutionProvider"):
        runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path, device="cuda"))


def test_explicit_device_not_listed(tiny_repo, tmp_path, use_fake):
    use_fake(available=[CPU])
    with pytest.raises(ModelLoadError, match="no CUDAExecutionProvider.*enet-serve\\[gpu\\]"):
        runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path, device="cuda"))


def test_no_onnxruntime_says_which_extra(tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "ort", None)
    with pytest.raises(ModelLoadError, match=r"enet-serve\[cpu\].*enet-serve\[gpu\]"):
        runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path))


# -- GPU session options ---------------------------------------------------------------------------------

def test_gpu_sessions_keep_the_cores_for_decoding(tiny_repo, tmp_path, use_fake):
    fake = use_fake(available=[CUDA, CPU])
    rt = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path, intra_op_spinning=True))
    options = fake.created[0].options
    assert options.intra_op_num_threads == 1 and rt.sessions[0].threads == 1 and rt.solo is None
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert fake.preloaded == 1  # the CUDA/cuDNN wheels' libraries, before the first GPU session


def test_cudnn_search_per_mode(tiny_repo, tmp_path):
    e = entry(tiny_repo)
    fixed = runtime.make_plan(e, settings(tiny_repo, tmp_path), "cuda")
    varying = runtime.make_plan(e, settings(tiny_repo, tmp_path, native_size=True), "cuda")
    forced = runtime.make_plan(e, settings(tiny_repo, tmp_path, native_size=True, cudnn_conv_algo_search="DEFAULT"), "cuda")
    assert fixed.providers[0][1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert varying.providers[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    assert forced.providers[0][1]["cudnn_conv_algo_search"] == "DEFAULT"
    # a fixed-size model's shapes never vary, native_size or not
    classifier = runtime.make_plan(entry(tiny_repo, "lenet5-fashion"), settings(tiny_repo, tmp_path, native_size=True), "cuda")
    assert classifier.cudnn_conv_algo_search == "EXHAUSTIVE"


def test_gpu_fp32_prefers_the_fp32_gpu_graph(tiny_repo, tmp_path):
    d = copy_model(tiny_repo, "enet-camvid", tmp_path / "repo")
    (d / "1" / "model.fp32_gpu.onnx").write_bytes((d / "1" / "model.fp32.onnx").read_bytes())
    cfg = json.loads((d / "config.json").read_text())
    cfg["files"]["fp32_gpu"] = {**cfg["files"]["fp32"], "path": "1/model.fp32_gpu.onnx"}
    (d / "config.json").write_text(json.dumps(cfg))
    e, s = entry(tmp_path / "repo"), settings(tmp_path / "repo", tmp_path)
    assert runtime.make_plan(e, s, "tensorrt").file_key == "fp32_gpu"
    assert runtime.make_plan(e, s.model_copy(update={"precision": "fp32"}), "cuda").file_key == "fp32_gpu"
    assert runtime.make_plan(e, s, "cuda").file_key == "fp16"
    assert runtime.make_plan(e, s, "cpu").file_key == "fp32"  # the CPU keeps its rewrites
    assert runtime.make_plan(entry(tiny_repo), s.model_copy(update={"precision": "fp32"}), "cuda").file_key == "fp32"


# -- the TensorRT profile ----------------------------------------------------------------------------------

def test_profile_fixed_sizes_cover_the_native_size_and_every_batch(tiny_repo, tmp_path):
    plan = runtime.make_plan(entry(tiny_repo), settings(tiny_repo, tmp_path, max_batch_size=8), "tensorrt")
    opts = plan.providers[0][1]
    assert (opts["trt_profile_min_shapes"], opts["trt_profile_opt_shapes"], opts["trt_profile_max_shapes"]) == (
        "image:1x120x160x3", "image:8x120x160x3", "image:8x120x160x3")
    assert plan.profile.covers((3, 120, 160, 3)) and not plan.profile.covers((1, 128, 160, 3))
    assert not plan.profile.covers((9, 120, 160, 3))


def test_profile_with_native_size_spans_the_bounds(tiny_repo, tmp_path):
    s = settings(tiny_repo, tmp_path, native_size=True, max_batch_size=4, trt_profile_min_size="60x60",
                 trt_profile_max_size="1080x1922")
    profile = runtime.make_plan(entry(tiny_repo), s, "tensorrt").profile
    assert profile.min == (1, 64, 64, 3) and profile.opt == (4, 120, 160, 3) and profile.max == (4, 1080, 1920, 3)
    for shape in [(1, 64, 64, 3), (4, 720, 1280, 3), (2, 1080, 1920, 3)]:
        assert profile.covers(shape)
    assert not profile.covers((1, 1088, 1920, 3)) and not profile.covers((1, 56, 64, 3))
    with pytest.raises(ValueError, match="HEIGHTxWIDTH"):
        Settings(trt_profile_max_size="1080")


def test_shapes_outside_the_profile_run_on_the_cuda_session(tiny_repo, tmp_path, use_fake):
    fake = use_fake()
    rt = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path, max_batch_size=2))
    assert fake.asked() == [TRT, CUDA]  # the TensorRT session and its CUDA session for other shapes
    overflow = rt.sessions[0].overflow
    assert overflow is not None and overflow.provider == CUDA
    assert fake.created[1].providers[0][1]["cudnn_conv_algo_search"] == "HEURISTIC"
    info = rt.describe()
    assert info["tensorrt_profile"] == {"min": [1, 120, 160, 3], "opt": [2, 120, 160, 3], "max": [2, 120, 160, 3]}
    assert info["outside_profile"] == "cuda"
    trt_session, cuda_session = rt.sessions[0].session, overflow.session
    rt.sessions[0].run([random_rgb(1)])  # the native size: TensorRT
    assert (trt_session.runs, cuda_session.runs) == (1, 0)
    out = rt.sessions[0].run([random_rgb(2, 240, 320)])  # another multiple of 8 (a v2 request): CUDA
    assert (trt_session.runs, cuda_session.runs) == (1, 1) and out[0].shape == (1, 240, 320)
    # instances run batches at once: each has its own (a session's IO bindings hold one batch at a time)
    two = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path, max_batch_size=2, instances=2))
    a, b = two.sessions
    assert a.overflow is not None and b.overflow is not None and a.overflow is not b.overflow
    # a fixed-size model has no shapes outside its profile
    cls = runtime.ModelRuntime.load(entry(tiny_repo, "lenet5-fashion"), settings(tiny_repo, tmp_path))
    assert cls.sessions[0].overflow is None
    assert cls.describe()["outside_profile"].startswith("none")


# -- the engine cache --------------------------------------------------------------------------------------

def test_engine_cache_keyed_by_file_precision_profile_and_version(tiny_repo, tmp_path, monkeypatch, use_fake):
    e = entry(tiny_repo)
    s = settings(tiny_repo, tmp_path)
    base = runtime.make_plan(e, s, "tensorrt")
    digest = sha256_file(tiny_repo / "enet-camvid/1/model.fp32.onnx")
    assert base.cache_dir.parent == (tmp_path / "trt-cache" / "enet-camvid").resolve()
    assert base.cache_dir.name.startswith(f"{digest[:16]}-fp16-p") and base.cache_dir.name.endswith("-ort" + real_ort.__version__)
    assert base.providers[0][1]["trt_engine_cache_path"] == str(base.cache_dir)
    others = [
        runtime.make_plan(e, s.model_copy(update={"precision": "fp32"}), "tensorrt"),
        runtime.make_plan(e, s.model_copy(update={"native_size": True}), "tensorrt"),
        runtime.make_plan(e, s.model_copy(update={"max_batch_size": 4}), "tensorrt"),
    ]
    assert len({base.cache_dir, *(p.cache_dir for p in others)}) == 4
    # new weights, same topology and names: another file digest, another engine
    d = copy_model(tiny_repo, "enet-camvid", tmp_path / "repo")
    graph = (d / "1" / "model.fp32.onnx").read_bytes()
    (d / "1" / "model.fp32.onnx").write_bytes(graph + b"\n")  # stands for other weights of the same graph
    cfg = json.loads((d / "config.json").read_text())
    cfg["files"]["fp32"]["sha256"] = sha256_file(d / "1" / "model.fp32.onnx")
    (d / "config.json").write_text(json.dumps(cfg))
    reexported = runtime.make_plan(entry(tmp_path / "repo"), s, "tensorrt")
    assert reexported.cache_dir.parent.name == "enet-camvid" and reexported.cache_dir != base.cache_dir
    monkeypatch.setattr(runtime, "ort", FakeOrt(ALL, version="9.9.9"))
    assert runtime.make_plan(e, s, "tensorrt").cache_dir.name.endswith("-ort9.9.9")


def test_engine_cache_made_under_the_setting_not_the_working_directory(tiny_repo, tmp_path, monkeypatch, use_fake):
    fake = use_fake()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    rt = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path))
    assert rt.plan.cache_dir.is_dir() and rt.plan.cache_dir.is_relative_to((tmp_path / "trt-cache").resolve())
    assert fake.created[0].providers[0][1]["trt_timing_cache_path"] == str((tmp_path / "trt-cache" / "timing").resolve())
    assert list(cwd.iterdir()) == []


def test_default_cache_dir_is_not_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings().trt_cache_dir == tmp_path / "xdg" / "enet-serve" / "trt"


# -- IO binding --------------------------------------------------------------------------------------------

def test_io_binding_reuses_device_buffers_per_batch_shape(tiny_repo, tmp_path, use_fake):
    use_fake(available=[CUDA, CPU])
    rt = runtime.ModelRuntime.load(entry(tiny_repo), settings(tiny_repo, tmp_path))
    session = rt.sessions[0]
    cpu = real_ort.InferenceSession(str(rt.path), providers=[CPU])
    images = [random_rgb(i) for i in range(6)]
    for batch in (images[:2], images[2:4], images[4:6]):
        got = session.run(batch)
        want = cpu.run(None, {"image": np.stack(batch)})
        assert len(got) == 1 and np.array_equal(got[0], want[0])
    # one input and one output buffer for the batch shape, made once, reused by the next batches
    assert FakeOrtValue.allocations == 2 and FakeOrtValue.uploads == 3 and FakeOrtValue.downloads == 3
    session.run(images[:1])  # batch 1: its own buffers
    assert FakeOrtValue.allocations == 4 and len(session._bindings) == 2


def test_io_binding_with_the_real_onnxruntime_on_cpu_buffers(tiny_repo, tmp_path):
    """The binding code against the real onnxruntime API (CPU buffers stand in for the GPU's)."""
    plan = runtime.make_plan(entry(tiny_repo), settings(tiny_repo, tmp_path), "cpu")
    e = entry(tiny_repo)
    session = runtime.Session(e.file_for("fp32"), plan, settings(tiny_repo, tmp_path), 1, e.config)
    session.bind_device = "cpu"
    images = [random_rgb(i) for i in range(4)]
    plain = real_ort.InferenceSession(str(e.file_for("fp32")), providers=[CPU])
    for batch in (images[:2], images[2:]):
        assert np.array_equal(session.run(batch)[0], plain.run(None, {"image": np.stack(batch)})[0])
    assert len(session._bindings) == 1
    cls = entry(tiny_repo, "lenet5-fashion")
    cplan = runtime.make_plan(cls, settings(tiny_repo, tmp_path), "cpu")
    csession = runtime.Session(cls.file_for("fp32"), cplan, settings(tiny_repo, tmp_path), 1, cls.config)
    csession.bind_device = "cpu"
    x = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    probs = csession.run(list(x))[0]
    assert probs.shape == (3, 10) and probs.dtype == np.float32
    assert np.allclose(probs, real_ort.InferenceSession(str(cls.file_for("fp32")), providers=[CPU]).run(None, {"image": x})[0])


# -- /models -----------------------------------------------------------------------------------------------

async def test_models_route_says_how_the_model_runs(serve, tmp_path, use_fake):
    use_fake(outcomes={TRT: EPFail("engine build failed")})
    client = await serve(trt_cache_dir=tmp_path / "cache", models=["enet-camvid"])
    info = (await client.get("/models/enet-camvid")).json()
    assert info["provider"] == CUDA and info["device"] == "cuda" and info["precision"] == "fp16"
    ex = info["execution"]
    assert ex["asked"] == "auto" and ex["fallbacks"][0]["provider"] == TRT and ex["io_binding"] is True
    assert ex["tensorrt_profile"] is None and ex["cudnn_conv_algo_search"] == "EXHAUSTIVE"


def test_providers_module_is_pure():
    assert providers.chain("auto", [CUDA, CPU]) == ["cuda", "cpu"]
    assert providers.chain("auto", []) == ["cpu"]
    assert providers.one_line(EPFail("a\n  b\tc")) == "EPFail: a b c"
    assert len(providers.one_line("x" * 1000)) == 300


def test_tensorrt_requirement_follows_the_provider_libraries(tmp_path):
    capi = tmp_path / "capi"
    capi.mkdir()
    (capi / "libonnxruntime_providers_cuda.so").write_bytes(b"\x7fELF...libcublas.so.13\x00libcudart.so.13\x00...")
    with pytest.raises(providers.PlanError, match="no TensorRT provider library"):
        providers.tensorrt_requirement("auto", capi)
    (capi / "libonnxruntime_providers_tensorrt.so").write_bytes(b"\x7fELF...libnvinfer.so.10\x00libnvonnxparser.so.10")
    assert providers.tensorrt_requirement("auto", capi) == "tensorrt-cu13-libs==10.*"
    assert providers.tensorrt_requirement("11", capi) == "tensorrt-cu13-libs==11.*"
    with pytest.raises(providers.PlanError, match="'auto' or a number"):
        providers.tensorrt_requirement("latest", capi)
