"""Train/validation splits: stratified hold-out (the seed's 80/20), stratified k-fold, or all.

Strata are the tumour grade (HGG/LGG, from the dataset layout) or whole-tumour volume
tertiles; with a fixed seed the split is identical on every run and machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import SplitConfig


def strata(cases: dict[str, dict[str, Any]], by: str) -> dict[str, str]:
    """Stratum label per case id: grade, or volume tertile (small/medium/large)."""
    if by == "grade":
        grades = {cid: entry.get("grade", "unknown") for cid, entry in cases.items()}
        if len(set(grades.values())) > 1:
            return grades
        by = "volume"  # no grade information in this dataset: fall back to volume
    volumes = {cid: entry["regions_ml"]["WT"] for cid, entry in cases.items()}
    edges = np.percentile(list(volumes.values()), [100 / 3, 200 / 3])
    names = ("small", "medium", "large")
    return {cid: names[int(np.searchsorted(edges, v, side="right"))] for cid, v in volumes.items()}


def _stratified_folds(labels: dict[str, str], folds: int, seed: int) -> list[list[str]]:
    """Deal each stratum's shuffled cases round-robin into ``folds`` folds."""
    rng = np.random.default_rng(seed)
    out: list[list[str]] = [[] for _ in range(folds)]
    position = 0
    for stratum in sorted(set(labels.values())):
        members = sorted(cid for cid, s in labels.items() if s == stratum)
        for cid in rng.permutation(members):
            out[position % folds].append(str(cid))
            position += 1  # continue across strata so fold sizes stay balanced
    return [sorted(f) for f in out]


def split_cases(
    cases: dict[str, dict[str, Any]], config: SplitConfig
) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) for the configured method and fold."""
    if len(cases) < 2:
        raise ValueError("at least two prepared cases are needed to split into training/validation")
    if config.method == "all":  # the final model: every case trains, nothing is held out
        return sorted(cases), []
    labels = strata(cases, config.stratify_by)
    if config.method == "kfold":
        folds = _stratified_folds(labels, config.folds, config.seed)
        validation = folds[config.fold]
    else:
        folds_needed = max(2, int(round(1 / config.validation_fraction)))
        validation = _stratified_folds(labels, folds_needed, config.seed)[0]
    if not validation:
        raise ValueError(f"fold {config.fold} is empty: fewer cases ({len(cases)}) than folds")
    training = sorted(cid for cid in cases if cid not in set(validation))
    return training, sorted(validation)
