"""One training run's state on disk: resume, per-epoch checkpoints, the best epoch, the history."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import torch

from enet_serve.training.checkpoint import code_versions, load_checkpoint, save_atomic
from enet_serve.paths import REPO_ROOT
from enet_serve.training.common import restore_rng, rng_state


# What a resumed run may change: when it is scored, and its length (--epochs, said on the command line,
# which the record keeps, as the history keeps each epoch's learning rate); not what it trains on or how.
RESUME_MAY_CHANGE = frozenset({"eval_every", "epochs"})
CODE_VERSION_ENV = "ENET_SERVE_CODE_VERSION"


def code_version(root: Path = REPO_ROOT) -> str | None:
    """The code a run (re)starts with: `git describe --always --dirty` of the checkout at `root` (a commit,
    `-dirty` with changes to tracked files), or CODE_VERSION_ENV where set (a copy on a GPU machine has
    no .git: its command says which commit it is); None otherwise (an installed wheel, a bare copy)."""
    if os.environ.get(CODE_VERSION_ENV):
        return os.environ[CODE_VERSION_ENV]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return (out.stdout.strip() or None) if out.returncode == 0 else None

    # a wheel in a virtualenv inside some other checkout must not report that checkout's commit
    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != Path(root).resolve():
        return None
    return git("describe", "--always", "--dirty", "--abbrev=12")


def _as_field(value):
    """A recipe field as the dataclass holds it: a checkpoint's lists (e.g. crop, scale) back into tuples."""
    return tuple(value) if isinstance(value, list) else value


def _same(a, b) -> bool:
    return _as_field(a) == _as_field(b)


def check_same_recipe(saved: dict | None, given: dict, path: Path) -> None:
    """Refuse to resume the run in `path` under another recipe (but RESUME_MAY_CHANGE): a held-out drive left
    out of the command would be trained on, and the record would describe another run (ValueError naming
    the fields)."""
    if saved is None:
        return
    differ = [f"{k} {saved.get(k)!r} -> {given.get(k)!r}" for k in sorted(set(saved) | set(given))
              if k not in RESUME_MAY_CHANGE and not _same(saved.get(k), given.get(k))]
    if differ:
        raise ValueError(f"{path}: --resume continues that run with its own recipe; this command changes "
                         f"{'; '.join(differ)} (leave those options out, or start another --run-dir)")


def saved_recipe(run_dir: Path) -> dict | None:
    """The recipe in the run's last.pt, as saved; None where there is no run or no recipe."""
    path = run_dir / "last.pt"
    return load_checkpoint(path).get("recipe") if path.is_file() else None


def resumed_recipe(run_dir: Path, recipe_class):
    """The recipe of the run in `run_dir` (from its last.pt), as `recipe_class`; None where there is none."""
    saved = saved_recipe(run_dir)
    if saved is None:
        return None
    fields = {f.name for f in dataclasses.fields(recipe_class)}
    return recipe_class(**{k: _as_field(v) for k, v in saved.items() if k in fields})


class TrainingRun:
    """`run_dir/last.pt` (everything --resume needs), `best.pt` (the best-scoring epoch's weights and
    scores) and `history.jsonl` (one line per epoch). A missing checkpoint fails at construction,
    before any data is read."""

    def __init__(self, run_dir: Path, recipe, num_classes: int, resume: bool, command: str | None, hardware: str,
                 init_record: dict | None = None, extra_modules: dict[str, torch.nn.Module] | None = None):
        self.run_dir, self.num_classes = run_dir, num_classes
        # Modules trained beside the model but not shipped (ENet's encoder head): in last.pt only, for --resume.
        self.extra_modules = extra_modules or {}
        self.last_path, self.best_path = run_dir / "last.pt", run_dir / "best.pt"
        self.recipe, self.hardware = recipe, hardware
        if not resume:
            earlier = [n for n in ("last.pt", "best.pt", "history.jsonl") if (run_dir / n).exists()]
            if earlier:  # its best.pt could be shipped, and its history read, as this run's
                raise FileExistsError(f"{run_dir} holds an earlier run ({', '.join(earlier)}): --resume continues it, "
                                      "another --run-dir starts a new one")
        self._state = load_checkpoint(self.last_path) if resume else None
        if self._state is not None:
            check_same_recipe(self._state.get("recipe"), dataclasses.asdict(recipe), self.last_path)
        # The weights a fine-tuning run started from, with their own training record (kept on --resume).
        self.init_record = (self._state or {}).get("init_from") or init_record
        self.start_epoch, self.best_score, self.history, self.wall_time_s = 0, float("-inf"), [], 0.0
        # Every command that (re)started this run, and the code each ran (a record cannot say otherwise
        # which fixes its run had), for the record in the shipped weights and config.json.
        resumed = self._state or {}
        self.commands = resumed.get("commands", []) + ([command] if command else [])
        self.code_versions = code_versions(resumed) + ([code_version()] if command else [])

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load the model, optimizer, progress and random generators of last.pt (when resuming)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self._state is None:
            return
        state, self._state = self._state, None
        model.load_state_dict(state["model"])
        for name, module in self.extra_modules.items():
            if name not in state.get("extra_modules", {}):
                raise ValueError(f"{self.last_path}: no {name} to resume (the run was started with another recipe)")
            module.load_state_dict(state["extra_modules"][name])
        optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.best_score = state["epoch"] + 1, state["best_score"]
        self.history, self.wall_time_s = state["history"], state["wall_time_s"]
        restore_rng(state)

    @property
    def last_entry(self) -> dict:
        return self.history[-1] if self.history else {}

    def end_epoch(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, entry: dict, started: float,
                  score: float | None = None, metrics: dict | None = None) -> None:
        """Record an epoch: best.pt when `score` beats the best so far, then last.pt and the history."""
        # the recipe in best.pt too: a fine-tune started from it must know which drives it trained on
        common = {"arch": self.recipe.arch, "num_classes": self.num_classes, "model": model.state_dict(),
                  "epoch": entry["epoch"], "metrics": metrics, "recipe": dataclasses.asdict(self.recipe)}
        if score is not None and score > self.best_score:
            self.best_score = score
            save_atomic(common, self.best_path)
        self.wall_time_s += time.time() - started
        self.history.append(entry)
        save_atomic({**common, "optimizer": optimizer.state_dict(), "best_score": self.best_score,
                     "history": self.history, "wall_time_s": self.wall_time_s, **rng_state(),
                     "commands": self.commands, "code_versions": self.code_versions, "init_from": self.init_record,
                     "hardware": self.hardware,
                     "extra_modules": {name: m.state_dict() for name, m in self.extra_modules.items()}}, self.last_path)
        with open(self.run_dir / "history.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

