"""From network outputs to tumour labels (class indices 0..3), as the model's metadata says."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import Grid
from .labels import LABEL_BY_KEY, NUM_CLASSES
from .model import ModelSpec


def foreground_channels(output: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The channels worth carrying back to the input grid: everything but softmax background.

    Background is implied (1 - sum) and every dropped channel is zero outside the working
    grid, so restoring these with zero fill is exact.
    """
    if spec.output["kind"] == "softmax":
        return output[1:]
    return output


def output_channel_names(spec: ModelSpec) -> list[str]:
    """Names of the channels :func:`foreground_channels` keeps, in order (regions or classes)."""
    if spec.output["kind"] == "softmax":
        return list(spec.output["classes"][1:])
    return list(spec.output["regions"])


def labels_from_output(foreground: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Class indices (uint8) from restored foreground channels (R, X, Y, Z)."""
    if spec.output["kind"] == "softmax":
        background = 1.0 - foreground.sum(axis=0, keepdims=True)
        winner = np.argmax(np.concatenate([background, foreground]), axis=0)
        lookup = np.zeros(len(spec.output["classes"]), dtype=np.uint8)
        for position, key in enumerate(spec.output["classes"][1:], start=1):
            lookup[position] = LABEL_BY_KEY[key].index
        return lookup[winner]
    # Sigmoid regions are nested: WT contains TC contains ET. Paint from the outside in.
    regions = dict(zip(spec.output["regions"], foreground))
    classes = np.zeros(foreground.shape[1:], dtype=np.uint8)
    for region, label in (("WT", "ED"), ("TC", "NCR"), ("ET", "ET")):
        if region in regions:
            classes[regions[region] > spec.region_threshold(region)] = LABEL_BY_KEY[label].index
    return classes


def clear_outside_brain(classes: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Background wherever the brain mask is empty: tumour cannot lie outside the brain, and
    the network's receptive field can spill a little past the brain's edge."""
    return np.where(brain, classes, 0).astype(np.uint8, copy=False)


# Tumour components are 26-connected over all tumour labels together: a necrotic core, its
# enhancing rim and the surrounding edema are one lesion.
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def _components(classes: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Component index of every voxel (0 outside the tumour) and each component's volume (mL)."""
    components, count = ndimage.label(classes > 0, structure=_CONNECTIVITY)
    sizes_ml = np.bincount(components.ravel(), minlength=count + 1)[1:] * grid.voxel_volume_ml
    return components, sizes_ml


def remove_small_components(classes: np.ndarray, grid: Grid, min_volume_ml: float) -> np.ndarray:
    """Erase tumour islands (26-connected, all labels together) smaller than ``min_volume_ml``."""
    if min_volume_ml <= 0:
        return classes
    components, sizes_ml = _components(classes, grid)
    small = np.nonzero(sizes_ml < min_volume_ml)[0] + 1
    if not len(small):
        return classes
    out = classes.copy()
    out[np.isin(components, small)] = 0
    return out


def keep_largest_component(classes: np.ndarray, grid: Grid) -> tuple[np.ndarray, list[float]]:
    """Keep only the largest tumour component (as nnU-Net's postprocessing can).

    Returns the labels and the volumes (mL, largest first) of the components removed, so that
    a caller can tell the user what was dropped: a multifocal tumour loses its other foci.
    """
    components, sizes_ml = _components(classes, grid)
    if len(sizes_ml) < 2:
        return classes, []
    largest = int(np.argmax(sizes_ml)) + 1
    removed = sorted((float(v) for i, v in enumerate(sizes_ml) if i + 1 != largest), reverse=True)
    out = np.where(components == largest, classes, 0).astype(classes.dtype, copy=False)
    return out, removed


def keep_components_overlapping(classes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep the tumour components that overlap the boolean mask ``keep``, whole.

    Carries a component choice made on one grid to labels on another: ``keep`` is the chosen
    tumour resampled onto this grid, and each component keeps its own shape here.
    """
    components, count = ndimage.label(classes > 0, structure=_CONNECTIVITY)
    if count == 0:
        return classes
    kept = np.unique(components[keep & (components > 0)])
    return np.where(np.isin(components, kept), classes, 0).astype(classes.dtype, copy=False)


def clean_components(
    classes: np.ndarray, grid: Grid, min_volume_ml: float, keep_largest: bool
) -> tuple[np.ndarray, list[float]]:
    """The model's component postprocessing: island removal, then optionally the largest only.

    Returns the labels and the volumes (mL, largest first) that ``keep_largest`` removed.
    """
    classes = remove_small_components(classes, grid, min_volume_ml)
    if not keep_largest:
        return classes, []
    return keep_largest_component(classes, grid)


def class_volumes_ml(classes: np.ndarray, grid: Grid) -> np.ndarray:
    """Volume in mL of each class index 0..3."""
    counts = np.bincount(classes.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
    return counts * grid.voxel_volume_ml
