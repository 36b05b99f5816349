"""The layering rules of README.md's "Layout" (its "may import" column), checked on the source: every
`import` statement of every module (those inside functions too), followed through the project's own
modules.

- enet_serve's own modules (the command, the paths, config.json's schema) import only the standard
  library and pydantic, so every package may import them;
- the serving side (enet_serve.service) imports no torch, no onnx and nothing from
  enet_serve.models / export / training / bench: the serving image has none of them;
- enet_serve.models knows nothing of HTTP nor of the packages built on it;
- enet_serve.export and enet_serve.training import nothing of the service, the benchmarks or HTTP,
  and training nothing of export;
- only enet_serve.export imports the model repository's writer (enet_serve.export.repository).
"""
from __future__ import annotations

import ast
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = "enet_serve"
SUBPACKAGES = ("service", "models", "export", "training", "bench")
TRAINING_STACK = {"torch", "torchvision", "onnx", "onnxscript", "onnxconverter_common", "tqdm"}
HTTP_STACK = {"fastapi", "starlette", "uvicorn", "httpx", "multipart"}
WRITER = "enet_serve.export.repository"


def _package_dir(name: str) -> Path:
    """Where a package's files are (the repository's folders are mapped to sub-packages of enet_serve)."""
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations, name
    return Path(list(spec.submodule_search_locations)[0])


def project_files() -> dict[str, Path]:
    """Module name -> file, for every module of the installed project."""
    files = {f"{ROOT}.{p.stem}" if p.stem != "__init__" else ROOT: p for p in _package_dir(ROOT).glob("*.py")}
    for sub in SUBPACKAGES:
        base = _package_dir(f"{ROOT}.{sub}")
        for path in base.rglob("*.py"):
            parts = [ROOT, sub, *path.relative_to(base).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path
    return files


def imports_of(module: str, path: Path, known: Iterable[str]) -> set[str]:
    """Every module `module` imports: project modules by full name, others by full dotted name."""
    known = set(known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            found.update(f"{origin}.{a.name}" for a in node.names if f"{origin}.{a.name}" in known)
    return found


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    return {m: imports_of(m, p, files) for m, p in files.items()}


def reached(graph: dict[str, set[str]], sources: Iterable[str]) -> dict[str, str]:
    """Every module reached from `sources` (project modules followed), mapped to a module that imports it."""
    via: dict[str, str] = {}
    todo = list(sources)
    seen = set(todo)
    while todo:
        m = todo.pop()
        for target in graph.get(m, ()):
            via.setdefault(target, m)
            if target in graph and target not in seen:
                seen.add(target)
                todo.append(target)
            # importing a.b.c runs a and a.b first
            parent = target.rpartition(".")[0]
            while parent in graph and parent not in seen:
                seen.add(parent)
                todo.append(parent)
                parent = parent.rpartition(".")[0]
    return via


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def violations(graph: dict[str, set[str]], sources: Iterable[str], forbidden: Iterable[str]) -> list[str]:
    """'A imports B' for each forbidden module B (or package prefix) reachable from `sources`."""
    forbidden = tuple(forbidden)
    return sorted(f"{importer} imports {target}" for target, importer in reached(graph, sources).items()
                  if _under(target, forbidden))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(project_files())


def _modules(graph, prefixes) -> list[str]:
    return [m for m in graph if _under(m, prefixes)]


def test_the_graph_covers_the_project(graph):
    assert {"enet_serve.service.app", "enet_serve.service.tasks.segment", "enet_serve.models.enet",
            "enet_serve.export.repository", "enet_serve.training.evaluate", "enet_serve.bench.load",
            "enet_serve.model_config"} <= set(graph)
    assert "enet_serve.model_config" in graph["enet_serve.service.repository"]


def _packages(*names: str) -> set[str]:
    return {f"{ROOT}.{n}" for n in names}


# package -> what nothing it reaches may be
FORBIDDEN = {
    "service": TRAINING_STACK | _packages("models", "export", "training", "bench"),
    "models": HTTP_STACK | _packages("service", "export", "training", "bench"),
    "export": HTTP_STACK | _packages("service", "bench"),
    "training": HTTP_STACK | _packages("service", "export", "bench"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_the_layout_allows(graph, package):
    assert violations(graph, _modules(graph, [f"{ROOT}.{package}"]), FORBIDDEN[package]) == []


def test_the_shared_modules_need_only_the_standard_library_and_pydantic(graph):
    shared = [m for m in graph if m.count(".") <= 1 and not _under(m, _packages(*SUBPACKAGES))]
    assert {"enet_serve.model_config", "enet_serve.paths", "enet_serve.cli"} <= set(shared)
    reach = reached(graph, shared)
    assert [m for m in reach if _under(m, _packages(*SUBPACKAGES))] == []
    imported = {target.split(".")[0] for target in reach}
    assert imported <= set(sys.stdlib_module_names) | {"pydantic", "__future__", ROOT}, imported


def test_only_export_imports_the_repository_writer(graph):
    importers = sorted(m for m, targets in graph.items() if WRITER in targets and not _under(m, [f"{ROOT}.export"]))
    assert importers == []


def test_a_forbidden_import_inside_a_function_is_found(tmp_path):
    path = tmp_path / "lazy.py"
    path.write_text("def f():\n    from .helpers import run\n    import torch.nn\n")
    found = imports_of("enet_serve.service.lazy", path, {"enet_serve.service.helpers"})
    assert found == {"enet_serve.service.helpers", "torch.nn"}
    graph = {"enet_serve.service.lazy": found, "enet_serve.service.helpers": {"enet_serve.models.enet"}}
    assert violations(graph, ["enet_serve.service.lazy"], ["torch", "enet_serve.models"]) == [
        "enet_serve.service.helpers imports enet_serve.models.enet", "enet_serve.service.lazy imports torch.nn"]
