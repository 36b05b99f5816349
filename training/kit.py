"""The GPU training kit: ENet's recipe chosen on a held-out drive and the shipped model trained on
train+val, all inside one wall-clock budget (`enet-serve train-kit run`, deploy/gpu-train/run.sh).

A GPU visit is short (15 minutes of device time, the machine's start included), so nothing may wait
for a decision: every run starts at once, as its own process on the one GPU (ENet at batch 10 keeps
a large GPU mostly idle, so runs side by side cost little more than one):

- for each candidate recipe, one run per held-out drive (trained on train+val without that drive,
  scored on it), and one run on all of train+val (the model that would be shipped);
- all with the same fixed schedule: a short probe of every run, side by side, measures the seconds
  per crop epoch, full-frame epoch and evaluation, and the epoch count is the largest that fits;
- the winner is the candidate with the best held-out mIoU at the last epoch (the epoch a fixed
  schedule ships; the best epoch, picked on the drive itself, is reported too), averaged over the
  drives; its train+val run is shipped, with its held-out runs' scores recorded as the estimate on
  unseen streets, and set beside the same drives' estimates of the weights shipped now (whether it
  beats them is the summary's `beats_shipped`: the kit writes OUT, never models/weights/).

Every run stops before an epoch that would end after the deadline, so the results are always
written: OUT/summary.json, OUT/enet-camvid.pth (models/weights/ format), and one tar per run that
`enet-serve train enet-camvid --ship-only --held-out-run` needs (OUT/run-NAME.tar).
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import os
import shlex
import sys
import tarfile
import time
import traceback
from pathlib import Path

from enet_serve.paths import WEIGHTS_DIR
from enet_serve.training.checkpoint import load_checkpoint, ship_weights
from enet_serve.training.segmentation import SegmentationRecipe

# The recipes tried. Crops are larger than the CPU recipe's 192x256 (a GPU affords them) and the
# same for all, so the candidates differ only in what is being measured: augmentation, then stages.
CANDIDATES: dict[str, dict] = {
    # Crops and flips only: the model shipped before issue 14 (65.5 on val, 50.0 on test) and the first
    # step of the one after it.
    "crops": {"crop": (288, 384), "scale": (1.0, 1.0), "jitter": 0.0},
    # Crops at several scales and photometric jitter: what an unseen drive should reward.
    "scale-jitter": {"crop": (288, 384), "scale": (0.75, 1.5), "jitter": 0.3},
    # The same with ENet's two stages: the encoder alone for the first 30% of the epochs.
    "scale-jitter-two-stage": {"crop": (288, 384), "scale": (0.75, 1.5), "jitter": 0.3, "encoder_fraction": 0.3},
    # The crops recipe with the Lovász-softmax term beside the cross-entropy: mIoU's surrogate, for the
    # thin classes (poles) that pixel-weighted cross-entropy leaves unlearned at CPU budgets.
    "crops-lovasz": {"crop": (288, 384), "scale": (1.0, 1.0), "jitter": 0.0, "lovasz": 1.0},
}
DEFAULT_CANDIDATES = tuple(CANDIDATES)
# Two whole drives, each held out in turn: daytime 0006R0 (an unseen street, like the test split's
# Seq05VD) and dusk 0001TP (unseen light: the only drive that rewarded colour jitter on the CPU).
DEFAULT_HOLD_OUT = ("0006R0", "0001TP")
FULL_FRACTION = 0.2  # the last epochs train on whole frames, as in the CPU recipe
PROBE_EPOCHS = 4  # two crop epochs and two full-frame ones; the second of each is timed (the first warms up)
TRAIN_SPLIT = "train+val"


@dataclasses.dataclass
class PlannedRun:
    name: str
    candidate: str
    recipe: SegmentationRecipe
    run_dir: Path

    @property
    def held_out(self) -> str | None:
        return self.recipe.hold_out_drive


def schedule(epochs: int, encoder_fraction: float = 0.0) -> tuple[int, int]:
    """(full_epochs, encoder_epochs) of an `epochs`-long schedule: the last 20% on whole frames, the
    first `encoder_fraction` on the encoder alone (at least one when asked for and there is room)."""
    full = 0 if epochs < 2 else min(epochs - 1, max(1, round(FULL_FRACTION * epochs)))
    encoder = 0
    if encoder_fraction > 0:
        encoder = min(epochs - 1, max(1, round(encoder_fraction * epochs)))
    return full, encoder


def candidate_recipe(name: str, epochs: int, hold_out_drive: str | None, crop: tuple[int, int] | None = None,
                     overrides: dict | None = None) -> SegmentationRecipe:
    """The SegmentationRecipe of a candidate at `epochs`, on train+val with or without a held-out drive."""
    settings = dict(CANDIDATES[name] if overrides is None else overrides)
    fraction = settings.pop("encoder_fraction", 0.0)
    full, encoder = schedule(epochs, fraction)
    recipe = SegmentationRecipe(epochs=epochs, full_epochs=full, encoder_epochs=encoder, train_split=TRAIN_SPLIT,
                                hold_out_drive=hold_out_drive, eval_every=max(1, round(epochs / 10)), **settings)
    if crop is not None:
        recipe.crop = tuple(crop)
    return recipe


def equivalent_command(recipe: SegmentationRecipe, data: str, device: str, run_dir: str, workers: int) -> str:
    """The `enet-serve train` command that trains the same recipe alone (what the shipped record shows)."""
    args = ["enet-serve", "train", "enet-camvid", "--data", data, "--device", device, "--train-split", recipe.train_split,
            "--epochs", recipe.epochs, "--full-epochs", recipe.full_epochs, "--encoder-epochs", recipe.encoder_epochs,
            "--crop", *recipe.crop, "--scale", *recipe.scale, "--jitter", recipe.jitter, "--lovasz", recipe.lovasz, "--lr", recipe.lr,
            "--eval-every", recipe.eval_every, "--seed", recipe.seed, "--workers", workers, "--run-dir", run_dir]
    if recipe.hold_out_drive:
        args += ["--hold-out-drive", recipe.hold_out_drive]
    return " ".join(shlex.quote(str(a)) for a in args)


def plan_runs(candidates: tuple[str, ...], drives: tuple[str, ...], epochs: int, work: Path,
              crop: tuple[int, int] | None = None) -> list[PlannedRun]:
    runs = []
    for name in candidates:
        if name not in CANDIDATES:
            raise ValueError(f"unknown candidate {name!r}: one of {', '.join(CANDIDATES)}")
        for drive in (*drives, None):
            # names of letters, digits, '-', '.' only: they become file names the device tool returns
            run_name = f"{name}--{'without-' + drive if drive else 'train-val'}"
            runs.append(PlannedRun(run_name, name, candidate_recipe(name, epochs, drive, crop), work / run_name))
    return runs


def _worker(spec: dict) -> None:
    """One training run, in its own (spawned) process; its output goes to run_dir/log.txt."""
    run_dir = Path(spec["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "log.txt", "a", buffering=1)
    sys.stdout = sys.stderr = log
    try:
        import torch

        from enet_serve.training.segmentation import train_segmentation

        torch.set_num_threads(spec["threads"])
        train_segmentation(Path(spec["pack"]), run_dir, SegmentationRecipe(**spec["recipe"]), device=spec["device"],
                           threads=spec["threads"], progress=False, command=spec["command"], workers=spec["workers"],
                           stop_at=spec["stop_at"])
    except BaseException:
        traceback.print_exc()
        log.flush()
        os._exit(1)
    log.flush()


def run_side_by_side(runs: list[PlannedRun], pack: Path, device: str, stop_at: float, kill_at: float,
                     workers: int, threads: int) -> dict[str, dict]:
    """Start every run at once, each in a spawned process; wait until they end or `kill_at` passes."""
    context = multiprocessing.get_context("spawn")  # CUDA in children needs spawn, not fork
    processes = {}
    for run in runs:
        spec = {"run_dir": str(run.run_dir), "pack": str(pack), "recipe": dataclasses.asdict(run.recipe), "device": device,
                "threads": threads, "workers": workers, "stop_at": stop_at,
                "command": equivalent_command(run.recipe, "build/camvid-pack.tar", device, f"runs/{run.name}", workers)}
        process = context.Process(target=_worker, args=(spec,), name=run.name)
        process.start()
        processes[run.name] = (process, time.time())
    # Each run's end is taken when it ends (joined in turn, an early one got the end of those before it).
    ended, waiting = {}, dict(processes)
    while waiting and time.time() < kill_at:
        done = multiprocessing.connection.wait([p.sentinel for p, _ in waiting.values()], timeout=kill_at - time.time())
        now = time.time()
        for name, (process, started) in list(waiting.items()):
            if process.sentinel in done:
                process.join()
                ended[name] = {"exit_code": process.exitcode, "wall_s": round(now - started, 1)}
                del waiting[name]
    for name, (process, started) in waiting.items():  # past the hard deadline: its last.pt is what it leaves
        process.terminate()
        process.join(10)
        ended[name] = {"exit_code": process.exitcode, "wall_s": round(time.time() - started, 1)}
    return {name: ended[name] for name in processes}


@dataclasses.dataclass
class Timing:
    """What one epoch of a run costs, measured side by side with the others."""
    crop_s: float
    full_s: float
    eval_s: float
    setup_s: float  # process start, CUDA and data loading

    def cost(self, recipe: SegmentationRecipe) -> float:
        """Predicted seconds of a whole run (the encoder stage counted as whole-network epochs: it is cheaper)."""
        full = recipe.full_epochs
        crop = recipe.epochs - full
        evaluated = sum(map(recipe.scores, range(recipe.epochs)))
        return self.setup_s + crop * self.crop_s + full * self.full_s + evaluated * self.eval_s


FRAME_PIXELS = 360 * 480  # CamVid's frames, what a whole-frame epoch trains on


def probe(runs: list[PlannedRun], pack: Path, work: Path, device: str, stop_at: float, workers: int,
          threads: int) -> dict[str, Timing]:
    """Run PROBE_EPOCHS epochs of every run side by side (one scored each) and time them."""
    probes = []
    for run in runs:
        recipe = dataclasses.replace(run.recipe, epochs=PROBE_EPOCHS, full_epochs=PROBE_EPOCHS // 2, encoder_epochs=0,
                                     eval_every=1)
        probes.append(PlannedRun(run.name, run.candidate, recipe, work / "probe" / run.name))
    ended = run_side_by_side(probes, pack, device, stop_at, stop_at + 30, workers, threads)
    timings = {}
    for run in probes:
        history, wall_time = _history(run.run_dir)
        if not history:
            raise RuntimeError(f"probe of {run.name} trained no epoch: {_log_tail(run.run_dir)}")
        timings[run.name] = probe_timing(history, tuple(run.recipe.crop), ended[run.name]["wall_s"] - wall_time)
    return timings


def probe_timing(history: list[dict], crop: tuple[int, int], setup_s: float) -> Timing:
    """A probe's epoch costs from its history. A probe stopped before its whole-frame epochs has its
    whole-frame epoch priced from its crop epochs by their pixels (a crop epoch's cost would plan
    epochs past the budget, and every run would be cut before its last, whole-frame ones)."""
    crops = [h for h in history if tuple(h["crop"]) == crop]
    fulls = [h for h in history if tuple(h["crop"]) != crop]
    crop_s = (crops or history)[-1]["seconds"]
    full_s = fulls[-1]["seconds"] if fulls else crop_s * FRAME_PIXELS / (crop[0] * crop[1])
    evals = [h["eval_seconds"] for h in history if "eval_seconds" in h]
    return Timing(crop_s=crop_s, full_s=full_s, eval_s=max(evals[1:] or evals or [0.0]), setup_s=max(0.0, setup_s))


def plan_epochs(runs: list[PlannedRun], timings: dict[str, Timing], seconds: float, max_epochs: int,
                crop: tuple[int, int] | None) -> int:
    """The most epochs (up to max_epochs) whose schedule fits `seconds` for every run; at least 1."""
    for epochs in range(max_epochs, 0, -1):
        recipes = {run.name: candidate_recipe(run.candidate, epochs, run.held_out, crop) for run in runs}
        if all(timings[name].cost(recipe) <= seconds for name, recipe in recipes.items()):
            return epochs
    return 1


def run_kit(pack: Path, out: Path, budget_s: float, candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
            drives: tuple[str, ...] = DEFAULT_HOLD_OUT, work: Path | None = None, device: str = "cuda",
            epochs: int | None = None, max_epochs: int = 1000, crop: tuple[int, int] | None = None,
            workers: int | None = None, threads: int = 1, reserve_s: float | None = None,
            compare_with: Path = WEIGHTS_DIR / "enet-camvid.pth") -> dict:
    """The whole visit: probe, plan, train side by side, pick, ship; returns (and writes) the summary."""
    if not pack.exists():
        raise FileNotFoundError(f"{pack}: no CamVid pack (write it with `enet-serve train-kit pack` and carry it along)")
    started = time.time()
    deadline = started + budget_s
    # packing the results and stopping the processes; an epoch's worth of slack is kept by stop_at itself
    reserve_s = max(10.0, 0.03 * budget_s) if reserve_s is None else reserve_s
    out.mkdir(parents=True, exist_ok=True)
    # a directory of this visit's own: a second visit on a warm machine must not find the first one's runs
    work = (work or out / "work") / time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
    runs = plan_runs(candidates, drives, epochs or 1, work, crop)
    if workers is None:  # the CPU cores shared out between the runs' augmentation (their main processes mostly wait on the GPU)
        workers = max(1, (os.cpu_count() or 1) // len(runs))
    summary = {"pack": str(pack), "device": device, "budget_s": budget_s, "candidates": {c: CANDIDATES[c] for c in candidates},
               "crop_override": list(crop) if crop else None,
               "hold_out_drives": list(drives), "train_split": TRAIN_SPLIT, "runs_side_by_side": len(runs),
               "workers_per_run": workers, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started))}
    if epochs is None:
        print(f"probing {len(runs)} runs side by side ({PROBE_EPOCHS} epochs each)", flush=True)
        probe_end = started + 0.25 * budget_s
        timings = probe(runs, pack, work, device, probe_end, workers, threads)
        available = deadline - reserve_s - time.time()
        epochs = plan_epochs(runs, timings, available, max_epochs, crop)
        summary["probe"] = {name: dataclasses.asdict(t) for name, t in timings.items()}
        summary["probe_s"] = round(time.time() - started, 1)
    runs = plan_runs(candidates, drives, epochs, work, crop)
    summary["epochs"] = epochs
    if "probe" in summary:
        summary["predicted_s"] = round(max(timings[r.name].cost(r.recipe) for r in runs), 1)
    _write_summary(out, summary)  # the plan, should anything below fail
    print(f"training {len(runs)} runs side by side, {epochs} epochs each, until "
          f"{deadline - reserve_s - time.time():.0f} s from now", flush=True)
    t_train = time.time()
    ended = run_side_by_side(runs, pack, device, deadline - reserve_s, deadline - reserve_s / 2, workers, threads)
    summary["train_s"] = round(time.time() - t_train, 1)
    summary["runs"] = {run.name: {**_run_result(run), **ended[run.name]} for run in runs}
    _write_summary(out, summary)
    _choose_and_ship(runs, summary, out)
    _compare_with_shipped(summary, compare_with)
    summary["wall_s"] = round(time.time() - started, 1)
    _write_summary(out, summary)
    print(format_summary(summary), flush=True)
    return summary


def _write_summary(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


def _history(run_dir: Path) -> tuple[list[dict], float]:
    """The epochs a run finished (history.jsonl) and their total wall time (last.pt)."""
    path = run_dir / "history.jsonl"
    if not path.is_file():
        return [], 0.0
    history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return history, load_checkpoint(run_dir / "last.pt")["wall_time_s"] if (run_dir / "last.pt").is_file() else 0.0


def _log_tail(run_dir: Path, lines: int = 15) -> str:
    log = run_dir / "log.txt"
    return "\n".join(log.read_text().splitlines()[-lines:]) if log.is_file() else "(no log)"


def _run_result(run: PlannedRun) -> dict:
    history, wall_time = _history(run.run_dir)
    result = {"candidate": run.candidate, "held_out_drive": run.held_out, "epochs": run.recipe.epochs,
              "epochs_done": len(history), "completed": len(history) == run.recipe.epochs,
              "train_wall_s": round(wall_time, 1), "recipe": dataclasses.asdict(run.recipe)}
    scored = [h for h in history if "val" in h]
    if scored:  # a fixed schedule cut short may end on an unscored epoch: say which epoch this is
        result.update(val_last=scored[-1]["val"]["mIoU"], val_last_epoch=scored[-1]["epoch"] + 1)
    if run.held_out and scored:
        best = max(scored, key=lambda h: h["held_out"]["mIoU"])
        result.update(held_out_last=scored[-1]["held_out"]["mIoU"], held_out_last_epoch=scored[-1]["epoch"] + 1,
                      held_out_best=best["held_out"]["mIoU"], held_out_best_epoch=best["epoch"] + 1,
                      held_out_per_class_last=scored[-1]["held_out"]["per_class_iou"])
    if not result["completed"]:
        result["log_tail"] = _log_tail(run.run_dir)
    return result


def _choose_and_ship(runs: list[PlannedRun], summary: dict, out: Path) -> None:
    """The candidate with the best mean held-out mIoU at the last epoch; ship its train+val run."""
    results = summary["runs"]
    scores = {}
    for candidate in summary["candidates"]:
        held = [results[r.name] for r in runs if r.candidate == candidate and r.held_out]
        if held and all("held_out_last" in h for h in held):
            scores[candidate] = {"held_out_last": round(sum(h["held_out_last"] for h in held) / len(held), 2),
                                 "held_out_best": round(sum(h["held_out_best"] for h in held) / len(held), 2),
                                 "completed": all(h["completed"] for h in held)}
    summary["scores"] = scores
    # a run that finished its schedule beats one cut short; then the held-out mIoU decides
    finals = {r.candidate: r for r in runs if not r.held_out and (r.run_dir / "last.pt").is_file()}
    ranked = sorted((c for c in scores if c in finals),
                    key=lambda c: (scores[c]["completed"] and results[finals[c].name]["completed"], scores[c]["held_out_last"]),
                    reverse=True)
    if not ranked:
        summary["winner"] = None
        return
    winner = ranked[0]
    final, held_out = finals[winner], [r for r in runs if r.candidate == winner and r.held_out]
    shipped = ship_weights(final.run_dir, out / "enet-camvid.pth", pick="last", held_out_runs=[r.run_dir for r in held_out])
    summary.update(winner=winner, final_run=final.name, held_out_runs=[r.name for r in held_out],
                   shipped={"file": "enet-camvid.pth", "epochs": shipped["training"]["epochs"],
                            "completed": results[final.name]["completed"], "val_mIoU_trained_on": results[final.name].get("val_last"),
                            "val_epoch": results[final.name].get("val_last_epoch")})
    for run in (final, *held_out):
        _tar_run(run.run_dir, out / f"run-{run.name}.tar")
    summary["files"] = sorted(p.name for p in out.iterdir() if p.is_file() and p.name != "summary.json")


def shipped_estimates(weights: Path) -> dict[str, float]:
    """{drive: held-out mIoU at the last epoch} recorded in shipped weights (models/weights/ format); a
    drive held out at several seeds gets their mean (one seed moves the dusk drive by 5-10 points)."""
    if not weights.is_file():
        return {}
    training = load_checkpoint(weights).get("training", {})
    scores: dict[str, list[float]] = {}
    for e in training.get("held_out_estimates", []):
        if "last_epoch" in e:
            scores.setdefault(e["drive"], []).append(e["last_epoch"]["held_out"]["mIoU"])
    return {drive: round(sum(s) / len(s), 2) for drive, s in scores.items()}


def _compare_with_shipped(summary: dict, weights: Path) -> None:
    """Set the winner beside the weights shipped now, on the drives both were scored on (same frames,
    same measure: a held-out run's last epoch), so that a visit cannot ship a step back unnoticed."""
    estimates = shipped_estimates(weights)
    drives = [d for d in summary["hold_out_drives"] if d in estimates]
    summary["shipped_now"] = {"file": str(weights), "held_out_last": {d: estimates[d] for d in drives}}
    if not summary.get("winner") or not drives:
        return
    # every held-out run of the winner scored its last epoch (it could not have won otherwise)
    results = summary["runs"]
    by_drive = {results[name]["held_out_drive"]: results[name]["held_out_last"] for name in summary["held_out_runs"]}
    mine = {d: by_drive[d] for d in drives}
    summary["shipped_now"]["mean"] = round(sum(estimates[d] for d in drives) / len(drives), 2)
    summary["winner_mean_on_those_drives"] = round(sum(mine.values()) / len(drives), 2)
    summary["beats_shipped"] = summary["winner_mean_on_those_drives"] > summary["shipped_now"]["mean"]


def _tar_run(run_dir: Path, path: Path) -> None:
    """One run's directory (checkpoints, history, log) as a tar: what --ship-only --held-out-run reads."""
    with tarfile.open(path, "w") as tar:
        for name in ("last.pt", "best.pt", "history.jsonl", "log.txt"):
            if (run_dir / name).is_file():
                tar.add(run_dir / name, arcname=f"{run_dir.name}/{name}")


def format_summary(summary: dict) -> str:
    lines = [f"plan: {summary.get('epochs')} epochs per run, {summary.get('runs_side_by_side')} runs side by side, "
             f"predicted {summary.get('predicted_s', '-')} s after a {summary.get('probe_s', '-')} s probe; "
             f"training took {summary.get('train_s')} s",
             f"{'run':<44}{'epochs':>10}{'held-out last':>15}{'best (epoch)':>15}{'val':>8}"]
    for name, r in summary.get("runs", {}).items():
        held = f"{r['held_out_last']:.2f}" if "held_out_last" in r else "-"
        best = f"{r['held_out_best']:.2f} ({r['held_out_best_epoch']})" if "held_out_best" in r else "-"
        val = f"{r['val_last']:.2f}" if "val_last" in r else "-"
        lines.append(f"{name:<44}{r['epochs_done']:>5}/{r['epochs']:<4}{held:>15}{best:>15}{val:>8}")
    lines.append(f"winner: {summary.get('winner')}; shipped: {summary.get('shipped')}; wall {summary.get('wall_s')} s")
    now = summary.get("shipped_now", {})
    if "beats_shipped" in summary:
        lines.append(f"held-out mean on {', '.join(now['held_out_last'])}: winner {summary['winner_mean_on_those_drives']:.2f}, "
                     f"shipped now {now['mean']:.2f} ({now['file']}): "
                     + ("the winner is better" if summary["beats_shipped"] else "keep the weights shipped now"))
    return "\n".join(lines)
