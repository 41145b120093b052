"""``evaluate``: score segmentations against reference label maps with the BraTS conventions.

Predictions come from a folder (``<case>.nii.gz``, ``<case>_seg.nii.gz`` or the core's output
layout ``<case>/segmentation.nii.gz``) or are produced by running a model package through
:func:`BrainTumorSegLib.segment` on every case of the dataset. Writes ``cases.csv`` (one row
per case), ``summary.csv``/``summary.json`` (mean, median, std, 25th/75th percentiles, bootstrap
95 % interval of the mean) and ``boxplot.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from BrainTumorSegLib.cli import add_model_default_options, model_default_overrides
from BrainTumorSegLib.conform import resample_to_grid
from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.labels import REGIONS, convention_to_classes
from BrainTumorSegLib.load import load_volume

from .dataset import Case, detect_convention, find_cases
from .metrics import MEASURES, SUMMARY_STATS, score_case, summarise


def segmented_file(folder: Path, case_id: str) -> Path:
    """Where :func:`run_model` writes the label map of ``case_id`` (``segment``'s layout)."""
    return folder / case_id / "segmentation.nii.gz"


def find_prediction(folder: Path, case_id: str) -> Path | None:
    """The prediction file of ``case_id`` in ``folder``, in any of the accepted layouts."""
    candidates = [segmented_file(folder, case_id)]
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        candidates += [
            folder / f"{case_id}{suffix}",
            folder / f"{case_id}_seg{suffix}",
            folder / f"{case_id}-seg{suffix}",
        ]
    return next((p for p in candidates if p.is_file()), None)


def read_classes(path: Path, convention: str) -> tuple[np.ndarray, Any]:
    """A label file as class indices 0..3 with its grid (``convention`` may be ``auto``)."""
    volume = load_volume(path)
    raw = np.rint(volume.array).astype(np.int16)
    used = detect_convention(raw, path) if convention == "auto" else convention
    try:
        return convention_to_classes(raw, used), volume.grid
    except ValueError as e:
        raise InputError(str(e), path) from e


def evaluate_case(
    prediction: Path, case: Case, *, prediction_labels: str = "auto", reference_labels: str = "auto"
) -> dict[str, Any]:
    """Scores of one case; the prediction is put on the reference grid when they differ."""
    ref, ref_grid = read_classes(case.labels, reference_labels)
    pred, pred_grid = read_classes(prediction, prediction_labels)
    if not pred_grid.same_as(ref_grid):
        pred = resample_to_grid(pred, pred_grid, ref_grid, order=0)
    spacing = tuple(float(s) for s in ref_grid.spacing)
    return {"case_id": case.case_id, **score_case(pred, ref, spacing)}


def run_model(model: str, cases: list[Case], out_dir: Path, **options: Any) -> Path:
    """Segment every case with the core (skipping finished ones); returns the prediction folder."""
    try:
        from BrainTumorSegLib import segment
    except ImportError as e:
        raise InputError("BrainTumorSegLib.segment is not available in this checkout") from e
    from tqdm import tqdm

    folder = out_dir / "predictions"
    for case in tqdm(cases, desc="segment", unit="case"):
        if segmented_file(folder, case.case_id).is_file():
            continue
        images = {k: str(v) for k, v in case.images.items()}
        segment(images, folder / case.case_id, model=model, overlay=False, **options)
    return folder


def score_columns() -> list[str]:
    """Column names of the per-case table, grouped by measure then region."""
    return [f"{m}_{r}" for m in MEASURES for r in REGIONS]


def evaluate(
    predictions: Path,
    dataset: Path,
    out_dir: Path,
    *,
    prediction_labels: str = "auto",
    reference_labels: str = "auto",
    case_ids: list[str] | None = None,
) -> dict[str, dict[str, float]]:
    """Score every case that has a prediction; writes the tables and plot, returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cases = [c for c in find_cases(dataset) if case_ids is None or c.case_id in case_ids]
    rows, missing = [], []
    for case in cases:
        path = find_prediction(predictions, case.case_id)
        if path is None:
            missing.append(case.case_id)
            continue
        rows.append(
            evaluate_case(
                path, case, prediction_labels=prediction_labels, reference_labels=reference_labels
            )
        )
    if not rows:
        raise InputError("no prediction matches a reference case", predictions)
    if missing:
        print(f"warning: no prediction for {len(missing)} cases: {', '.join(missing)}")
    return write_scores(rows, out_dir)


def write_scores(rows: list[dict[str, Any]], out_dir: Path) -> dict[str, dict[str, float]]:
    """Write ``cases.csv``, ``summary.csv``/``summary.json`` and ``boxplot.png`` of per-case
    scores (each row: ``case_id`` and :func:`score_columns`); returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = score_columns()
    with open(out_dir / "cases.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["case_id", *columns])
        writer.writeheader()
        writer.writerows(rows)
    summary = summarise(rows, columns)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    with open(out_dir / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["measure", *SUMMARY_STATS])
        for key, stats in summary.items():
            writer.writerow([key, *(stats[s] for s in SUMMARY_STATS)])
    box_plot(out_dir / "boxplot.png", rows)
    return summary


def print_summary(summary: dict[str, dict[str, float]], prefix: str = "") -> None:
    """Mean Dice with its bootstrap 95 % interval, median, and HD95 per region, one line each."""
    for region in REGIONS:
        d, h = summary[f"dice_{region}"], summary[f"hd95_{region}"]
        print(
            f"{prefix}{region}: Dice {d['mean']:.3f} (95 % CI {d['ci95_low']:.3f}-"
            f"{d['ci95_high']:.3f}, median {d['median']:.3f}), "
            f"HD95 {h['mean']:.1f} mm (median {h['median']:.1f}), n={d['n']}"
        )


def box_plot(path: Path, rows: list[dict[str, Any]]) -> None:
    """Dice and HD95 per region as box plots (one box per region)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, measure, unit in ((axes[0], "dice", ""), (axes[1], "hd95", " (mm)")):
        data = [[row[f"{measure}_{r}"] for row in rows] for r in REGIONS]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(REGIONS) + 1), list(REGIONS))
        ax.set_title(f"{measure.upper() if measure == 'hd95' else 'Dice'}{unit}, n={len(rows)}")
    axes[0].set_ylim(0, 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _case_filter(split: str | None, subset: str) -> list[str] | None:
    if not split:
        return None
    return json.loads(Path(split).read_text(encoding="utf-8"))[subset]


def cmd_evaluate(args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    case_ids = _case_filter(args.split, args.subset)
    predictions = Path(args.predictions) if args.predictions else None
    if args.model:
        cases = [c for c in find_cases(args.dataset) if case_ids is None or c.case_id in case_ids]
        # None keeps the model's own defaults, as `segment` runs it.
        predictions = run_model(args.model, cases, out_dir, **model_default_overrides(args))
    if predictions is None:
        raise InputError("give --predictions DIR or --model PACKAGE")
    summary = evaluate(
        predictions,
        Path(args.dataset),
        out_dir,
        prediction_labels=args.prediction_labels,
        case_ids=case_ids,
    )
    print_summary(summary)
    print(f"tables and box plot in {out_dir}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``evaluate`` sub-command."""
    p = sub.add_parser("evaluate", help="score predictions (or a model) against reference labels")
    p.add_argument("dataset", help="dataset folder with the reference label maps")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictions", help="folder of predicted label maps")
    source.add_argument("--model", help="model package to run through BrainTumorSegLib.segment")
    p.add_argument("--output", required=True, help="folder for cases.csv, summary.*, boxplot.png")
    p.add_argument(
        "--prediction-labels", default="auto", choices=["auto", "brats2018", "brats2023"]
    )
    p.add_argument("--split", help="split.json of a training run: evaluate only one subset")
    p.add_argument("--subset", default="validation", choices=["training", "validation"])
    add_model_default_options(p, "with --model: ")
    p.set_defaults(func=cmd_evaluate)
