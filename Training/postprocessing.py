"""``postprocessing``: choose the core's component postprocessing on out-of-fold predictions.

Every case's prediction (made by a model that never saw it, e.g. ``crossval``'s
``out-of-fold/predictions``) is re-labelled with
:func:`BrainTumorSegLib.postprocess.clean_components` and scored with the BraTS measures:
first small-island removal at each candidate threshold, keeping all other components; the
threshold with the best mean Dice over ET, TC and WT wins (HD95 is shown beside it; a tie keeps
the smaller threshold, so "no removal" wins unless removal helps). Then, with that threshold,
keeping only the largest tumour component; it is chosen only if it beats keeping all (as in
nnU-Net's postprocessing). Both are chosen on the same cases they are reported on, so their
gain is slightly optimistic; the table shows how large it is.

With ``--region-thresholds``, the probability above which a voxel belongs to each sigmoid
region is chosen first, from the ``probabilities.nii.gz`` beside each prediction (``segment
--save-probabilities``; ``crossval`` writes them): ET's by the ET Dice, then TC's by the TC
Dice with ET's fixed, then WT's (the labels are painted from the outside in, so ET's mask
depends on its threshold alone, TC's on two, WT's on all three). A tie keeps the threshold
nearer 0.5, so 0.5 stays unless another threshold helps. The component search then runs on the
labels of the chosen thresholds.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.geometry import Grid
from BrainTumorSegLib.labels import REGIONS, region_mask
from BrainTumorSegLib.model import ModelSpec
from BrainTumorSegLib.postprocess import clean_components, labels_from_output
from BrainTumorSegLib.write import PROBABILITIES_NIFTI, REPORT_JSON

from .dataset import find_cases
from .evaluate import find_prediction, read_classes, write_scores
from .metrics import dice, score_case

DEFAULT_THRESHOLDS_ML = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
DEFAULT_REGION_THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
# Inner regions first: each one's mask depends only on its own threshold and those before it.
_THRESHOLD_ORDER = ("ET", "TC", "WT")


def read_probabilities(prediction: Path) -> tuple[np.ndarray, list[str], Grid]:
    """The saved network outputs beside a ``segment`` prediction: (C, X, Y, Z), their channel
    names (``report.json``'s ``probability_channels``) and their grid."""
    folder = prediction.parent
    path, report = folder / PROBABILITIES_NIFTI, folder / REPORT_JSON
    if not path.is_file() or not report.is_file():
        raise InputError(
            f"no {PROBABILITIES_NIFTI} and {REPORT_JSON} beside this prediction: segment with "
            "--save-probabilities (crossval writes them)",
            prediction,
        )
    import nibabel as nib

    channels = json.loads(report.read_text(encoding="utf-8")).get("probability_channels")
    image = nib.load(str(path))  # 4D, which the core's loader refuses as an input image
    array = np.moveaxis(np.asarray(image.dataobj, dtype=np.float32), -1, 0)
    if not channels or len(channels) != array.shape[0] or any(c not in REGIONS for c in channels):
        raise InputError(
            f"probability_channels {channels!r} of {REPORT_JSON} are not the sigmoid regions "
            f"of its {array.shape[0]} volumes (thresholds need a region model)",
            path,
        )
    return array, channels, Grid(array.shape[1:], image.affine)


def region_spec(channels: list[str], thresholds: dict[str, float]) -> ModelSpec:
    """A spec labelling sigmoid ``channels`` with ``thresholds`` (for ``labels_from_output``)."""
    return ModelSpec(
        name="threshold-search",
        output={"kind": "sigmoid", "regions": list(channels)},
        region_thresholds=dict(thresholds),
    )


def search_region_thresholds(
    cases: list[tuple[str, np.ndarray, list[str], np.ndarray]],
    candidates: tuple[float, ...] = DEFAULT_REGION_THRESHOLDS,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Choose each region's threshold on ``cases`` (case id, probabilities, channels, reference
    classes); returns the thresholds and one row per region and candidate (mean Dice)."""
    channels = cases[0][2]
    chosen = {region: 0.5 for region in channels}
    rows = []
    for region in (r for r in _THRESHOLD_ORDER if r in channels):
        tried = []
        for t in sorted(set(candidates)):
            spec = region_spec(channels, {**chosen, region: t})
            scores = [
                dice(region_mask(labels_from_output(prob, spec), region), region_mask(ref, region))
                for _, prob, _, ref in cases
            ]
            tried.append({"region": region, "threshold": t, "dice": float(np.mean(scores))})
        best = max(tried, key=lambda r: (round(r["dice"], 6), -abs(r["threshold"] - 0.5)))
        chosen[region] = best["threshold"]
        rows += [{**r, "chosen": r is best} for r in tried]
    return chosen, rows


def search_min_component(
    predictions: Path,
    dataset: Path,
    out_dir: Path,
    thresholds_ml: tuple[float, ...] = DEFAULT_THRESHOLDS_ML,
    region_thresholds: tuple[float, ...] | None = None,
) -> dict[str, Any]:
    """Score every threshold on every predicted case; writes ``search.csv``/``search.json``,
    and the chosen setting's per-case scores as ``evaluate`` does (``chosen/cases.csv``,
    ``chosen/summary.*``, ``chosen/boxplot.png``). ``region_thresholds``: candidate
    probability thresholds to choose first (see the module's description)."""
    if region_thresholds and not all(0 < t < 1 for t in region_thresholds):
        raise InputError(f"region thresholds must lie between 0 and 1: {list(region_thresholds)}")
    pairs, probabilities = [], []
    for case in find_cases(dataset):
        path = find_prediction(predictions, case.case_id)
        if path is None:
            continue
        ref, ref_grid = read_classes(case.labels, "auto")
        if region_thresholds:
            prob, channels, pred_grid = read_probabilities(path)
            probabilities.append((case.case_id, prob, channels, ref))
            pred = None  # labelled below, with the chosen thresholds
        else:
            pred, pred_grid = read_classes(path, "auto")
        if not pred_grid.same_as(ref_grid):
            raise InputError("prediction is not on its reference's grid", path)
        pairs.append((case.case_id, pred, ref, ref_grid))
    if not pairs:
        raise InputError("no prediction matches a reference case", predictions)
    chosen_thresholds: dict[str, float] = {}
    threshold_rows: list[dict[str, Any]] = []
    if region_thresholds:
        if len({tuple(c[2]) for c in probabilities}) > 1:
            raise InputError("the predictions' probability channels differ", predictions)
        chosen_thresholds, threshold_rows = search_region_thresholds(
            probabilities, region_thresholds
        )
        spec = region_spec(probabilities[0][2], chosen_thresholds)
        pairs = [
            (case_id, labels_from_output(prob, spec), ref, grid)
            for (case_id, prob, _, _), (_, _, ref, grid) in zip(probabilities, pairs)
        ]
        del probabilities  # the float volumes are not needed for the component search
    # Per case, the last (labels, scores): a setting that removes nothing more than the one
    # before it leaves the labels unchanged, and HD95 is too costly to compute again.
    last: dict[str, tuple[np.ndarray, dict[str, float]]] = {}

    per_case: dict[tuple[float, bool], list[dict[str, Any]]] = {}

    def score(threshold: float, keep_largest: bool) -> dict[str, Any]:
        scores = []
        for case_id, pred, ref, grid in pairs:
            cleaned, _ = clean_components(pred, grid, threshold, keep_largest)
            if case_id not in last or not np.array_equal(cleaned, last[case_id][0]):
                spacing = tuple(float(s) for s in grid.spacing)
                last[case_id] = (cleaned, score_case(cleaned, ref, spacing))
            scores.append(last[case_id][1])
        per_case[threshold, keep_largest] = [
            {"case_id": pair[0], **s} for pair, s in zip(pairs, scores)
        ]
        row: dict[str, Any] = {
            "min_component_ml": threshold,
            "keep_largest_component": keep_largest,
            "n": len(pairs),
        }
        for measure in ("dice", "hd95"):
            row.update(
                {
                    f"{measure}_{r}": float(np.mean([s[f"{measure}_{r}"] for s in scores]))
                    for r in REGIONS
                }
            )
        row["dice_mean"] = float(np.mean([row[f"dice_{r}"] for r in REGIONS]))
        return row

    rows = [score(threshold, False) for threshold in sorted(set(thresholds_ml))]
    best = max(rows, key=lambda r: (round(r["dice_mean"], 6), -r["min_component_ml"]))
    largest = score(best["min_component_ml"], True)
    rows.append(largest)
    keep_largest = round(largest["dice_mean"], 6) > round(best["dice_mean"], 6)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "search.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result: dict[str, Any] = {
        "rows": rows,
        "best_min_component_ml": best["min_component_ml"],
        "best_keep_largest_component": keep_largest,
    }
    if region_thresholds:
        result["region_threshold_rows"] = threshold_rows
        result["best_region_thresholds"] = chosen_thresholds
    (out_dir / "search.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_scores(per_case[best["min_component_ml"], keep_largest], out_dir / "chosen")
    return result


def cmd_postprocessing(args: argparse.Namespace) -> int:
    result = search_min_component(
        Path(args.predictions),
        Path(args.dataset),
        Path(args.output),
        tuple(args.min_component_ml) if args.min_component_ml else DEFAULT_THRESHOLDS_ML,
        None
        if args.region_thresholds is None
        else tuple(args.region_thresholds) or DEFAULT_REGION_THRESHOLDS,
    )
    if "best_region_thresholds" in result:
        print("region  threshold  Dice")
        for row in result["region_threshold_rows"]:
            mark = "  <- chosen" if row["chosen"] else ""
            print(f"{row['region']:>6}  {row['threshold']:9.2f}  {row['dice']:.4f}{mark}")
    header = (
        "  ".join(f"Dice {r}" for r in REGIONS)
        + "     mean  "
        + "  ".join(f"HD95 {r}" for r in REGIONS)
    )
    print(f"min_component_ml  components  {header}")
    for row in result["rows"]:
        dice = "  ".join(f"{row[f'dice_{r}']:7.4f}" for r in REGIONS)
        hd95 = "  ".join(f"{row[f'hd95_{r}']:7.2f}" for r in REGIONS)
        kept = "largest" if row["keep_largest_component"] else "all"
        print(
            f"{row['min_component_ml']:16.2f}  {kept:>10}  {dice}  {row['dice_mean']:7.4f}  {hd95}"
        )
    components = "largest" if result["best_keep_largest_component"] else "all"
    chosen = result.get("best_region_thresholds")
    thresholds = f"; region thresholds {chosen}" if chosen else ""
    print(
        f"best: --min-component-ml {result['best_min_component_ml']:g} --components {components}"
        f"{thresholds} (n={row['n']} cases)"
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``postprocessing`` sub-command."""
    p = sub.add_parser(
        "postprocessing",
        help="choose island removal and largest-component keeping on out-of-fold predictions",
    )
    p.add_argument("predictions", help="folder of out-of-fold predictions")
    p.add_argument("dataset", help="dataset folder with the reference label maps")
    p.add_argument("--output", required=True, help="folder for search.csv and search.json")
    p.add_argument(
        "--min-component-ml",
        type=float,
        nargs="+",
        help=f"thresholds to try (default {' '.join(map(str, DEFAULT_THRESHOLDS_ML))})",
    )
    p.add_argument(
        "--region-thresholds",
        type=float,
        nargs="*",
        help="first choose each sigmoid region's probability threshold among these, from the "
        f"{PROBABILITIES_NIFTI} beside each prediction (no values: "
        f"{' '.join(map(str, DEFAULT_REGION_THRESHOLDS))})",
    )
    p.set_defaults(func=cmd_postprocessing)
