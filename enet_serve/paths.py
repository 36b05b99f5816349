"""The project's paths, defined once: the checkout's root, the model repository, the datasets.

In a checkout (an editable install) the root is the folder that holds `pyproject.toml`; the
shared datasets sit beside it (`../shared/datasets`). An installed wheel has no checkout: the
paths below then point at places that do not exist, and callers take theirs from flags.
"""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPOSITORY = REPO_ROOT / "model_repository"
WEIGHTS_DIR = REPO_ROOT / "models" / "weights"
RUNS_DIR = REPO_ROOT / "runs"
DATASETS_DIR = REPO_ROOT.parent / "shared" / "datasets"
DEFAULT_CAMVID = DATASETS_DIR / "camvid"
# Debian's dataset-fashion-mnist package.
DEFAULT_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
