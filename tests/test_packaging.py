"""The runtimes are exclusive choices: the base install has no onnxruntime, the `cpu` extra brings
onnxruntime, the `gpu` extra onnxruntime-gpu, no extra both; the dev extra tests on the CPU runtime;
`make serve` stays one command for either; a start without any runtime says which extra to install."""
from __future__ import annotations

import argparse
import re
import subprocess
import tomllib
from importlib import metadata

import pytest

from enet_serve.paths import REPO_ROOT
from enet_serve.service import cli as service_cli
from enet_serve.service import runtime

RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


def project() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]


def name_of(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower()


def extras_of(requirement: str) -> list[str]:
    m = re.match(r"[\w.-]+\[([^\]]*)\]", requirement.strip())
    return [e.strip() for e in m.group(1).split(",")] if m else []


def resolved(extra: str, seen: frozenset = frozenset()) -> set[str]:
    """The distributions an extra installs, following `enet-serve[...]` self-references."""
    names = set()
    for req in project()["optional-dependencies"][extra]:
        if name_of(req) == "enet-serve":
            for inner in extras_of(req):
                if inner not in seen:
                    names |= resolved(inner, seen | {extra})
        else:
            names.add(name_of(req))
    return names


def test_base_dependencies_have_no_runtime():
    assert not {name_of(r) for r in project()["dependencies"]} & RUNTIMES


def test_runtime_extras_are_exclusive():
    assert resolved("cpu") & RUNTIMES == {"onnxruntime"}
    assert resolved("gpu") & RUNTIMES == {"onnxruntime-gpu"}
    gpu = next(r for r in project()["optional-dependencies"]["gpu"] if name_of(r) == "onnxruntime-gpu")
    assert set(extras_of(gpu)) >= {"cuda", "cudnn"}  # CUDA and cuDNN from the wheel's own extras
    for extra in project()["optional-dependencies"]:
        assert len(resolved(extra) & RUNTIMES) <= 1, f"extra {extra!r} installs both runtimes"
    assert resolved("dev") & RUNTIMES == {"onnxruntime"}  # the tests run on the CPU runtime


def test_installed_metadata_matches():
    """The installed enet-serve (an editable install here) carries the same split."""
    requires = metadata.requires("enet-serve") or []
    base = [r for r in requires if "extra ==" not in r]
    assert not {name_of(r) for r in base} & RUNTIMES
    assert any(name_of(r) == "onnxruntime-gpu" and 'extra == "gpu"' in r for r in requires)
    assert any(name_of(r) == "onnxruntime" and 'extra == "cpu"' in r for r in requires)


@pytest.mark.parametrize("runtime_name,other", [("cpu", "gpu"), ("gpu", "cpu")])
def test_make_installs_one_runtime(runtime_name, other, tmp_path):
    """`make serve RUNTIME=...` installs that extra after removing both runtimes (dry run)."""
    out = subprocess.run(["make", "-n", "-B", "serve", f"RUNTIME={runtime_name}", f"VENV={tmp_path}/venv"],
                         cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    assert "pip uninstall -q -y onnxruntime onnxruntime-gpu" in out
    assert f"pip install -q -e '.[{runtime_name}]'" in out and f".[{other}]" not in out
    assert "enet-serve serve" in out
    bad = subprocess.run(["make", "-n", "serve", "RUNTIME=rocm"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "RUNTIME must be cpu or gpu" in bad.stderr


def test_start_without_a_runtime_says_which_extra(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(runtime, "ort", None)
    args = argparse.Namespace(repository=tmp_path)
    assert service_cli.run(args) == 2
    err = capsys.readouterr().err
    assert "onnxruntime is not installed" in err and "enet-serve[cpu]" in err and "enet-serve[gpu]" in err


def test_both_runtimes_installed_is_reported(monkeypatch):
    monkeypatch.setattr(runtime, "installed_runtimes", lambda: ["onnxruntime", "onnxruntime-gpu"])
    level, why = runtime.runtime_problem()
    assert level == "warning" and "installed last wins" in why
