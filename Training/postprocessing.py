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
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.labels import REGIONS
from BrainTumorSegLib.postprocess import clean_components

from .dataset import find_cases
from .evaluate import find_prediction, read_classes, write_scores
from .metrics import score_case

DEFAULT_THRESHOLDS_ML = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0)


def search_min_component(
    predictions: Path,
    dataset: Path,
    out_dir: Path,
    thresholds_ml: tuple[float, ...] = DEFAULT_THRESHOLDS_ML,
) -> dict[str, Any]:
    """Score every threshold on every predicted case; writes ``search.csv``/``search.json``,
    and the chosen setting's per-case scores as ``evaluate`` does (``chosen/cases.csv``,
    ``chosen/summary.*``, ``chosen/boxplot.png``)."""
    pairs = []
    for case in find_cases(dataset):
        path = find_prediction(predictions, case.case_id)
        if path is None:
            continue
        ref, ref_grid = read_classes(case.labels, "auto")
        pred, pred_grid = read_classes(path, "auto")
        if not pred_grid.same_as(ref_grid):
            raise InputError("prediction is not on its reference's grid", path)
        pairs.append((case.case_id, pred, ref, ref_grid))
    if not pairs:
        raise InputError("no prediction matches a reference case", predictions)
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
    result = {
        "rows": rows,
        "best_min_component_ml": best["min_component_ml"],
        "best_keep_largest_component": keep_largest,
    }
    (out_dir / "search.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    write_scores(per_case[best["min_component_ml"], keep_largest], out_dir / "chosen")
    return result


def cmd_postprocessing(args: argparse.Namespace) -> int:
    result = search_min_component(
        Path(args.predictions),
        Path(args.dataset),
        Path(args.output),
        tuple(args.min_component_ml) if args.min_component_ml else DEFAULT_THRESHOLDS_ML,
    )
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
    print(
        f"best: --min-component-ml {result['best_min_component_ml']:g} --components {components}"
        f" (n={row['n']} cases)"
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
    p.set_defaults(func=cmd_postprocessing)
