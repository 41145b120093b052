"""The run report: what was segmented, with which model and settings, volumes and timings."""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import Grid
from .labels import CONVENTIONS, LABELS, REGIONS, region_mask
from .model import ModelSpec


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, to tie a result to the exact inputs it came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def volumes(classes: np.ndarray, grid: Grid) -> tuple[dict[str, float], dict[str, float]]:
    """Volume (mL) of each label and of each scoring region."""
    voxel = grid.voxel_volume_ml
    counts = np.bincount(classes.ravel(), minlength=len(LABELS) + 1)
    labels_ml = {label.key: round(float(counts[label.index] * voxel), 3) for label in LABELS}
    regions_ml = {
        region: round(float(np.count_nonzero(region_mask(classes, region)) * voxel), 3)
        for region in REGIONS
    }
    return labels_ml, regions_ml


def grid_summary(grid: Grid) -> dict[str, Any]:
    """Shape, spacing, orientation and affine of a grid, for the report."""
    return {
        "shape": list(grid.shape),
        "spacing_mm": [round(float(s), 6) for s in grid.spacing],
        "orientation": grid.orientation(),
        "affine": np.round(grid.affine, 6).tolist(),
    }


def build_report(
    *,
    version: str,
    spec: ModelSpec,
    inputs: dict[str, Path],
    reference: str,
    grid: Grid,
    classes: np.ndarray,
    convention: str,
    settings: dict[str, Any],
    timings: dict[str, float],
    warnings: list[str],
) -> dict[str, Any]:
    """Assemble the JSON report of one segmentation."""
    labels_ml, regions_ml = volumes(classes, grid)
    return {
        "software": {"name": "BrainTumorSeg", "version": version},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": spec.name,
            "version": spec.version,
            "path": str(spec.model_path),
            "networks": len(spec.network_paths),
            "channels": spec.channels,
            "spacing_mm": spec.spacing_mm,
            "output": spec.output["kind"],
        },
        "inputs": {
            seq: {"path": str(Path(p).resolve()), "sha256": sha256(Path(p))}
            for seq, p in inputs.items()
        },
        "reference": reference,
        "grid": grid_summary(grid),
        "label_convention": convention,
        "label_values": {label.key: CONVENTIONS[convention][label.key] for label in LABELS},
        "label_names": {label.key: label.name for label in LABELS},
        "volumes_ml": labels_ml,
        "regions_ml": regions_ml,
        "settings": settings,
        "timings_s": timings,
        "warnings": warnings,
    }


def report_warnings(report: Any) -> list[str]:
    """The warnings of a parsed ``report.json`` (e.g. tumour components that were removed);
    an unreadable or missing report (None) has none."""
    warnings = report.get("warnings") if isinstance(report, dict) else None
    return [str(w) for w in warnings] if isinstance(warnings, list) else []
