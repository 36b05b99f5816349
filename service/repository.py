"""The model repository: `<name>/config.json` + `<name>/<version>/model.<precision>.onnx`.

`ModelRepository` lists the models, reads their config.json through the one schema
(enet_serve.model_config) and resolves a precision to a file whose size and sha256 it checks.
"""
from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from enet_serve.model_config import CONFIG_NAME, ModelConfig, ModelConfigError, load_config, sha256_file
from enet_serve.service.errors import ModelLoadError

log = logging.getLogger("enet_serve.service.repository")


class ModelEntry(BaseModel):
    """A model found in the repository: its directory and parsed config."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())

    name: str
    directory: Path
    config: ModelConfig

    def file_for(self, precision: str, *, verify: bool = True) -> Path:
        """The ONNX file of `precision` ("fp32", "fp16", ...); its size and sha256 are checked against config.json."""
        spec = self.config.files.get(precision)
        if spec is None:
            raise ModelLoadError(f"{self.name}: no {precision} file in config.json (has {sorted(self.config.files)})")
        path = (self.directory / spec.path).resolve()
        if not path.is_relative_to(self.directory.resolve()):
            raise ModelLoadError(f"{self.name}: file path {spec.path!r} leaves the model directory")
        if not path.is_file():
            raise ModelLoadError(f"{self.name}: {precision} file {path} does not exist", path=path)
        if verify:
            if spec.bytes is not None and path.stat().st_size != spec.bytes:
                raise ModelLoadError(f"{self.name}: {path.name} has {path.stat().st_size} bytes, config.json says {spec.bytes}",
                                     path=path)
            if spec.sha256:
                digest = sha256_file(path)
                if digest.lower() != spec.sha256.lower():
                    raise ModelLoadError(f"{self.name}: sha256 of {path.name} is {digest}, config.json says {spec.sha256}",
                                         path=path)
            else:
                log.warning("%s: config.json has no sha256 for %s; not verified", self.name, path.name)
        return path


class ModelRepository:
    """A directory of models. Reading is cheap (config.json only); files are verified when resolved."""

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            raise ModelLoadError(f"model repository {self.root} is not a directory")
        # Hidden directories are exports being staged (export/ writes `.NAME.export-*`, then renames it).
        return sorted(p.parent.name for p in self.root.glob(f"*/{CONFIG_NAME}") if not p.parent.name.startswith("."))

    def entry(self, name: str) -> ModelEntry:
        directory = self.root / name
        path = directory / CONFIG_NAME
        if not path.is_file():
            raise ModelLoadError(f"model {name!r} is not in {self.root} (no {path}); found: {', '.join(self.names()) or 'none'}")
        try:
            config = load_config(path)
        except ModelConfigError as e:
            raise ModelLoadError(str(e), path=path) from e
        if config.name != name:
            log.warning("%s: config.json says name %r; serving it as %r (the directory name)", path, config.name, name)
        return ModelEntry(name=name, directory=directory, config=config)

    def entries(self, names: list[str] | None = None) -> list[ModelEntry]:
        return [self.entry(n) for n in (names or self.names())]
