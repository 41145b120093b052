"""Run bookkeeping: a checkpoint every epoch, resumable state, early stopping, CSV log, curves.

Everything needed to resume lives in the run folder::

    checkpoints/last.keras   model + optimizer state after the latest epoch (atomic replace)
    checkpoints/best.keras   model with the best validation monitor so far
    state.json               next epoch, best value/epoch, early-stopping counter, history
    log.csv, curves.png      the history as a table and as plots (rewritten from state.json)

The log is regenerated from the saved state, so a run killed at any moment resumes with a log
that matches its checkpoint exactly.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import keras

from BrainTumorSegLib.labels import REGIONS

STATE_FILE = "state.json"


def read_state(run_dir: str | Path) -> dict[str, Any] | None:
    """The saved training state of a run folder, or None for a fresh run."""
    path = Path(run_dir) / STATE_FILE
    if not path.is_file() or not (Path(run_dir) / "checkpoints" / "last.keras").is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _float(value: Any) -> float:
    return float(keras.ops.convert_to_numpy(value))


class RunState(keras.callbacks.Callback):
    """Checkpoints, resumable state and early stopping on a validation ``monitor`` (max)."""

    def __init__(
        self,
        run_dir: str | Path,
        *,
        monitor: str | None = "val_dice_mean",
        patience: int | None = None,
        state: dict[str, Any] | None = None,
        write: bool = True,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.monitor = monitor
        self.patience = patience
        self.write = write  # False on non-chief workers of a multi-worker run
        self.state = state or {
            "epoch": 0,
            "best": None,
            "best_epoch": None,
            "wait": 0,
            "history": [],
            "stopped_early": False,
        }
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = {k: _float(v) for k, v in (logs or {}).items()}
        logs["learning_rate"] = _float(self.model.optimizer.learning_rate)
        state = self.state
        state["history"].append({"epoch": epoch + 1, **logs})
        state["epoch"] = epoch + 1
        value = logs.get(self.monitor) if self.monitor else None
        improved = False
        if self.monitor is None:  # no validation (split.method all): the best is the last
            state.update(best_epoch=epoch + 1, wait=0)
            improved = True
        elif value is not None and math.isfinite(value):
            if state["best"] is None or value > state["best"]:
                state.update(best=value, best_epoch=epoch + 1, wait=0)
                improved = True
            else:
                state["wait"] += 1
        if self.patience is not None and state["wait"] >= self.patience:
            state["stopped_early"] = True
            self.model.stop_training = True
        if not self.write:
            return
        folder = self.run_dir / "checkpoints"
        tmp = folder / "last.tmp.keras"
        self.model.save(tmp)
        os.replace(tmp, folder / "last.keras")  # never leave a half-written checkpoint
        if improved or not (folder / "best.keras").is_file():
            shutil.copyfile(folder / "last.keras", folder / "best.tmp.keras")
            os.replace(folder / "best.tmp.keras", folder / "best.keras")
        _write_json(self.run_dir / STATE_FILE, state)
        write_log(self.run_dir / "log.csv", state["history"])
        plot_curves(self.run_dir / "curves.png", state["history"])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_log(path: str | Path, history: list[dict[str, Any]]) -> None:
    """The history as CSV, one row per epoch (columns: union of all keys, epoch first)."""
    keys = ["epoch"] + sorted({k for row in history for k in row if k != "epoch"})
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in keys})


def plot_curves(path: str | Path, history: list[dict[str, Any]]) -> None:
    """Loss (training/validation) and Dice per region (validation if any) against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("loss", "training"), ("val_loss", "validation")):
        points = [(e, row[key]) for e, row in zip(epochs, history) if key in row]
        if points:
            left.plot(*zip(*points), label=label)
    left.set(xlabel="epoch", ylabel="loss", title="Loss")
    left.legend()
    # Without validation (a final model trained on every case) the training Dice is shown.
    validated = any("val_dice_mean" in row for row in history)
    prefix, title = ("val_", "Validation Dice") if validated else ("", "Training Dice")
    for region in [*REGIONS, "mean"]:
        key = f"{prefix}dice_{region}"
        points = [(e, row[key]) for e, row in zip(epochs, history) if key in row]
        if points:
            right.plot(*zip(*points), label=region, linestyle="--" if region == "mean" else "-")
    right.set(xlabel="epoch", ylabel="Dice", title=title, ylim=(0, 1))
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
