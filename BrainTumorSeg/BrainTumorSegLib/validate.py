"""Checks on loaded inputs, each failing with an :class:`InputError` that names the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError
from .geometry import Grid, apply_affine, voxel_mapping
from .load import SEQUENCE_TITLES, Volume

# A sequence must cover at least this fraction of the reference's field of view.
MIN_OVERLAP_FRACTION = 0.5


def check_distinct_files(paths: dict[str, Path]) -> None:
    """The same file given for two sequences is almost always a slip of the user."""
    seen: dict[Path, str] = {}
    for sequence, path in paths.items():
        key = Path(path).resolve()
        if key in seen:
            raise InputError(
                f"given for both {SEQUENCE_TITLES.get(seen[key], seen[key])} and "
                f"{SEQUENCE_TITLES.get(sequence, sequence)}",
                path,
            )
        seen[key] = sequence


def check_intensities(volume: Volume, sequence: str) -> None:
    """Finite, not constant, and not a label map given in place of an image."""
    array = volume.array
    name = SEQUENCE_TITLES.get(sequence, sequence)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise InputError(f"{name} holds {bad} NaN or infinite voxel values", volume.path)
    low, high = float(array.min()), float(array.max())
    if high == low:
        what = "all zero" if high == 0 else f"constant ({low:g})"
        raise InputError(f"{name} image is {what}; there is nothing to segment", volume.path)
    # A handful of small integer values is a segmentation, not an MR image.
    sample = array[:: max(1, array.shape[0] // 64), :: max(1, array.shape[1] // 64), :]
    values = np.unique(sample)
    if values.size <= 6 and np.all(values == np.round(values)) and high <= 10:
        raise InputError(
            f"{name} looks like a label map (values {values.astype(int).tolist()}), "
            "not an MR image",
            volume.path,
        )


def overlap_fraction(reference: Grid, other: Grid) -> float:
    """Fraction of the reference's field of view (by corner bounding box) that ``other`` covers.

    Computed in the reference's voxel space on the bounding box of ``other``'s corners, which
    is exact for axis-aligned grids and a close estimate for oblique ones.
    """
    corners = apply_affine(voxel_mapping(reference, other), other_corner_indices(other))
    low = np.maximum(corners.min(axis=0), -0.5)
    high = np.minimum(corners.max(axis=0), np.asarray(reference.shape) - 0.5)
    extent = np.clip(high - low, 0, None)
    return float(np.prod(extent) / np.prod(reference.shape))


def other_corner_indices(grid: Grid) -> np.ndarray:
    """Voxel indices of the outer corners (voxel edges, not centres) of a grid."""
    ranges = [(-0.5, n - 0.5) for n in grid.shape]
    return np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T


def check_overlap(reference: Volume, other: Volume, sequence: str) -> None:
    """Sequences that do not share the reference's space cannot be segmented together."""
    fraction = overlap_fraction(reference.grid, other.grid)
    if fraction < MIN_OVERLAP_FRACTION:
        name = SEQUENCE_TITLES.get(sequence, sequence)
        raise InputError(
            f"{name} covers only {fraction:.0%} of the reference image's field of view; "
            "the sequences do not overlap in space (different patient or missing registration?)",
            other.path,
        )
