"""service/settings.py and service/cli.py: ENET_SERVE_* variables and the matching flags."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from pydantic import ValidationError

from enet_serve.service import cli
from enet_serve.service.settings import Settings


def test_defaults():
    s = Settings()
    assert s.device == "auto" and s.precision == "auto"
    assert s.default_segment_model == "enet-camvid" and s.default_classify_model == "lenet5-fashion"
    assert s.api_keys == [] and s.models == [] and s.allow_untrained is False
    assert s.instances == 0 and s.solo_instance


def test_instances_auto_split_the_cores(monkeypatch):
    from enet_serve.service import settings as settings_module

    monkeypatch.setattr(settings_module, "cpu_count", lambda: 8)
    s = Settings()
    assert s.instance_count("cpu") == 2 and s.session_threads(2) == 4
    assert s.instance_count("cuda") == 1 and s.session_threads(1) == 8
    monkeypatch.setattr(settings_module, "cpu_count", lambda: 1)
    assert Settings().instance_count("cpu") == 1
    explicit = Settings(instances=3, intra_op_threads=2)
    assert explicit.instance_count("cpu") == 3 and explicit.session_threads(3) == 2


def test_cpu_count_honours_a_cgroup_quota(monkeypatch, tmp_path):
    from enet_serve.service import settings as settings_module

    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(settings_module, "CGROUP_ROOT", tmp_path)
    assert settings_module.cpu_count() == 16  # no cgroup files: the affinity mask
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert settings_module.cpu_count() == 16  # unlimited
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # a Kubernetes limit of 1.5 CPUs
    assert settings_module.cgroup_cpu_quota() == 1.5 and settings_module.cpu_count() == 2
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert settings_module.cpu_count() == 4
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert settings_module.cpu_count() == 16


def test_from_env(monkeypatch):
    env = {
        "ENET_SERVE_REPOSITORY": "/srv/models",
        "ENET_SERVE_MODELS": "enet-camvid, lenet5-fashion",
        "ENET_SERVE_DEVICE": "cpu",
        "ENET_SERVE_PRECISION": "fp32",
        "ENET_SERVE_MAX_BATCH_SIZE": "3",
        "ENET_SERVE_MAX_DELAY_MS": "2.5",
        "ENET_SERVE_MAX_QUEUE": "7",
        "ENET_SERVE_REQUEST_TIMEOUT_S": "1.5",
        "ENET_SERVE_INSTANCES": "2",
        "ENET_SERVE_API_KEYS": '["k1", "k2"]',
        "ENET_SERVE_MAX_BODY_BYTES": "1000",
        "ENET_SERVE_MAX_IMAGE_PIXELS": "2000",
        "ENET_SERVE_ALLOW_UNTRAINED": "true",
        "ENET_SERVE_DEFAULT_SEGMENT_MODEL": "s",
        "ENET_SERVE_DEFAULT_CLASSIFY_MODEL": "c",
        "ENET_SERVE_HOST": "127.0.0.1",
        "ENET_SERVE_PORT": "9000",
        "ENET_SERVE_LOG_LEVEL": "WARNING",
        "ENET_SERVE_NATIVE_SIZE": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings()
    assert s.repository == Path("/srv/models")
    assert s.models == ["enet-camvid", "lenet5-fashion"]
    assert (s.device, s.precision) == ("cpu", "fp32")
    assert (s.max_batch_size, s.max_delay_ms, s.max_queue, s.request_timeout_s, s.instances) == (3, 2.5, 7, 1.5, 2)
    assert s.api_keys == ["k1", "k2"]
    assert (s.max_body_bytes, s.max_image_pixels) == (1000, 2000)
    assert s.allow_untrained and s.native_size
    assert (s.default_segment_model, s.default_classify_model) == ("s", "c")
    assert (s.host, s.port, s.log_level) == ("127.0.0.1", 9000, "warning")


@pytest.mark.parametrize("key,value", [("ENET_SERVE_DEVICE", "tpu"), ("ENET_SERVE_MAX_BATCH_SIZE", "0"),
                                       ("ENET_SERVE_PRECISION", "int4")])
def test_invalid_env(monkeypatch, key, value):
    monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_cli_flags_mirror_fields_and_override_env(monkeypatch):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    flags = {a.dest for a in parser._actions}
    assert set(Settings.model_fields) <= flags
    monkeypatch.setenv("ENET_SERVE_MAX_BATCH_SIZE", "5")
    monkeypatch.setenv("ENET_SERVE_PORT", "9001")
    args = parser.parse_args(["--max-batch-size", "2", "--api-keys", "a,b", "--allow-untrained", "--device", "cpu",
                              "--repository", "/tmp/r"])
    s = cli.settings_from_args(args)
    assert s.max_batch_size == 2 and s.port == 9001  # flag wins; env fills the rest
    assert s.api_keys == ["a", "b"] and s.allow_untrained and s.device == "cpu"
    assert s.repository == Path("/tmp/r")


def test_cli_rejects_bad_values(capsys, tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["--max-batch-size", "0", "--repository", str(tmp_path)])
    assert cli.run(args) == 2
    assert "max_batch_size" in capsys.readouterr().err


def test_spinning_setting_reaches_the_session_options(monkeypatch):
    from enet_serve.service.runtime import session_options

    assert session_options(Settings(), 1).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    monkeypatch.setenv("ENET_SERVE_INTRA_OP_SPINNING", "false")
    assert session_options(Settings(), 1).get_session_config_entry("session.intra_op.allow_spinning") == "0"
