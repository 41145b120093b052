"""BraTS evaluation measures on binary masks (numpy/scipy): Dice, HD95, sensitivity, specificity.

Empty-mask conventions follow the BraTS challenge:
- both masks empty: Dice 1, HD95 0;
- exactly one empty: Dice 0, HD95 = :data:`EMPTY_HD95` (373.13 mm, the diagonal of the BraTS
  volume, the value the challenge's scoring assigns).
Sensitivity is undefined (NaN) when the reference is empty and specificity when the reference
covers the whole image; summaries ignore NaN values and report how many cases they used.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from BrainTumorSegLib.labels import REGIONS, region_mask

EMPTY_HD95 = 373.13
MEASURES = ("dice", "hd95", "sensitivity", "specificity")
# Resamples of the percentile bootstrap: enough that the interval's ends move by well under
# 0.005 Dice between seeds for the case counts of a cross-validation.
BOOTSTRAP_RESAMPLES = 10000
SUMMARY_STATS = ("mean", "median", "std", "p25", "p75", "ci95_low", "ci95_high", "n")


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice overlap of two boolean masks; 1.0 when both are empty."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask with at least one face-neighbour outside it."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    eroded = ndimage.binary_erosion(mask, structure=structure, border_value=0)
    return mask & ~eroded


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the nearest surface voxel of ``b``."""
    to_b = ndimage.distance_transform_edt(~_surface(b), sampling=spacing)
    return to_b[_surface(a)]


def hd95(
    pred: np.ndarray,
    ref: np.ndarray,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    *,
    empty_value: float = EMPTY_HD95,
) -> float:
    """95th percentile of the symmetric surface distances in mm (both directions pooled).

    Both masks empty -> 0; exactly one empty -> ``empty_value``.
    """
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() and not ref.any():
        return 0.0
    if not pred.any() or not ref.any():
        return float(empty_value)
    distances = np.concatenate(
        [surface_distances(pred, ref, spacing), surface_distances(ref, pred, spacing)]
    )
    return float(np.percentile(distances, 95))


def sensitivity(pred: np.ndarray, ref: np.ndarray) -> float:
    """TP / (TP + FN): share of the reference that was found; NaN when the reference is empty."""
    ref = ref.astype(bool)
    positives = int(ref.sum())
    if positives == 0:
        return float("nan")
    return int(np.logical_and(pred.astype(bool), ref).sum()) / positives


def specificity(pred: np.ndarray, ref: np.ndarray, within: np.ndarray | None = None) -> float:
    """TN / (TN + FP), counted inside ``within`` (e.g. the brain) or the whole image."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    region = np.ones_like(ref) if within is None else within.astype(bool)
    negatives = np.logical_and(~ref, region)
    count = int(negatives.sum())
    if count == 0:
        return float("nan")
    return int(np.logical_and(~pred, negatives).sum()) / count


def score_case(
    pred_classes: np.ndarray,
    ref_classes: np.ndarray,
    spacing: tuple[float, ...],
    *,
    within: np.ndarray | None = None,
) -> dict[str, float]:
    """All measures for every region of :data:`REGIONS`: keys like ``dice_ET``, ``hd95_WT``.

    Inputs are class-index arrays (0 background, 1 NCR, 2 ED, 3 ET) on the same grid.
    """
    if pred_classes.shape != ref_classes.shape:
        raise ValueError(
            f"prediction {pred_classes.shape} and reference {ref_classes.shape} differ"
        )
    scores: dict[str, float] = {}
    for region in REGIONS:
        pred = region_mask(pred_classes, region)
        ref = region_mask(ref_classes, region)
        scores[f"dice_{region}"] = dice(pred, ref)
        scores[f"hd95_{region}"] = hd95(pred, ref, spacing)
        scores[f"sensitivity_{region}"] = sensitivity(pred, ref)
        scores[f"specificity_{region}"] = specificity(pred, ref, within)
    return scores


def bootstrap_ci(
    values: np.ndarray,
    *,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (cases drawn with replacement).

    It says how far the mean of so few cases could move with other cases of the same kind, which
    is what decides whether two models or a model and a target really differ. The fixed seed
    makes the same scores give the same interval every time.
    """
    # Sorted: the same scores listed in another order give the same interval.
    values = np.sort(np.asarray(values, dtype=float))
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // values.size)  # bounded memory for large case counts
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        draws = rng.integers(0, values.size, size=(stop - start, values.size))
        means[start:stop] = values[draws].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def summarise(rows: list[dict[str, float]], keys: list[str]) -> dict[str, dict[str, float]]:
    """Mean, median, std, 25th/75th percentiles, bootstrap 95 % interval of the mean and count
    of each key (:data:`SUMMARY_STATS`), NaN values left out."""
    summary: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([row[key] for row in rows if key in row], dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            summary[key] = {s: float("nan") for s in SUMMARY_STATS}
            summary[key]["n"] = 0
            continue
        low, high = bootstrap_ci(values)
        summary[key] = {
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "std": float(values.std()),
            "p25": float(np.percentile(values, 25)),
            "p75": float(np.percentile(values, 75)),
            "ci95_low": low,
            "ci95_high": high,
            "n": int(values.size),
        }
    return summary
