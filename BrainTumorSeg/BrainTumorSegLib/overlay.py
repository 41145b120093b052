"""A quick-look picture: each sequence in three planes through the tumour with labels on top."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .conform import resample_to_grid
from .geometry import Grid, reoriented_grid
from .labels import LABELS
from .load import SEQUENCE_TITLES

OVERLAY_ALPHA = 0.45


def slice_centre(classes: np.ndarray, fallback: np.ndarray | None = None) -> tuple[int, int, int]:
    """Voxel to cut through: the tumour's centre of mass, else the brain's, else the middle."""
    for mask in (classes > 0, fallback):
        if mask is not None and mask.any():
            return tuple(int(round(c)) for c in np.argwhere(mask).mean(axis=0))
    return tuple(n // 2 for n in classes.shape)


def _display_window(array: np.ndarray) -> tuple[float, float]:
    values = array[array != 0]
    if values.size == 0:
        return float(array.min()), float(array.max()) or 1.0
    low, high = np.percentile(values, [0.5, 99.5])
    return float(low), float(high if high > low else low + 1.0)


def _label_rgba(classes2d: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*classes2d.shape, 4), dtype=np.float32)
    for label in LABELS:
        hit = classes2d == label.index
        rgba[hit, :3] = label.color
        rgba[hit, 3] = OVERLAY_ALPHA
    return rgba


def render_overlay(
    path: Path,
    images: dict[str, np.ndarray],
    classes: np.ndarray,
    grid: Grid,
    *,
    title: str = "",
    extra_mask: np.ndarray | None = None,
) -> None:
    """Save a PNG: rows = sequences, columns = axial, coronal, sagittal (radiological view).

    ``extra_mask`` (e.g. a brain mask) is drawn as a contour when given.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ras = reoriented_grid(grid, "RAS")
    classes_ras = resample_to_grid(classes, grid, ras, order=0)
    mask_ras = (
        resample_to_grid(extra_mask.astype(np.uint8), grid, ras, order=0)
        if extra_mask is not None
        else None
    )
    first = next(iter(images.values()))
    centre = slice_centre(classes_ras, resample_to_grid(first != 0, grid, ras, order=0))
    spacing = ras.spacing
    planes = [
        ("axial", 2, (spacing[0], spacing[1]), ("L", "R")),
        ("coronal", 1, (spacing[0], spacing[2]), ("L", "R")),
        ("sagittal", 0, (spacing[1], spacing[2]), ("P", "A")),
    ]
    rows = len(images)
    fig, axes = plt.subplots(rows, 3, figsize=(9.6, 3.2 * rows), squeeze=False, facecolor="black")
    for row, (sequence, array) in enumerate(images.items()):
        volume = resample_to_grid(array, grid, ras, order=0)
        low, high = _display_window(volume)
        for col, (plane, axis, (sx, sy), (left, right)) in enumerate(planes):
            index = [slice(None)] * 3
            index[axis] = centre[axis]
            image2d = volume[tuple(index)].T
            labels2d = classes_ras[tuple(index)].T
            ax = axes[row, col]
            extent_args = {"origin": "lower", "aspect": sy / sx, "interpolation": "nearest"}
            ax.imshow(image2d, cmap="gray", vmin=low, vmax=high, **extent_args)
            ax.imshow(_label_rgba(labels2d), **extent_args)
            if mask_ras is not None:
                ax.contour(mask_ras[tuple(index)].T, levels=[0.5], colors="cyan", linewidths=0.6)
            if plane != "sagittal":
                ax.invert_xaxis()  # radiological convention: patient's right on screen left
                left, right = right, left
            ax.set_xticks([])
            ax.set_yticks([])
            # Letters inside the image's own edges (data coordinates): the axes box is wider
            # than a tall image, and letters at its edge ran into the neighbouring panel.
            x_left, x_right = ax.get_xlim()
            y_middle = sum(ax.get_ylim()) / 2
            inset = 0.03 * (x_right - x_left)
            style = {"color": "white", "va": "center", "fontsize": 8}
            ax.text(x_left + inset, y_middle, left, ha="left", **style)
            ax.text(x_right - inset, y_middle, right, ha="right", **style)
            if row == 0:
                ax.set_title(plane, color="white", fontsize=10)
            if col == 0:
                ax.set_ylabel(SEQUENCE_TITLES.get(sequence, sequence), color="white", fontsize=10)
    handles = [
        plt.Rectangle((0, 0), 1, 1, color=label.color, alpha=0.8, label=label.name)
        for label in LABELS
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False, labelcolor="white"
    )
    if title:
        fig.suptitle(title, color="white", fontsize=11)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(path, dpi=80, facecolor="black")
    plt.close(fig)
