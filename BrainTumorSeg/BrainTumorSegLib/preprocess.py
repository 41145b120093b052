"""From input images on the reference grid to the network's input on its working grid.

Steps (each undone exactly by :mod:`restore`): optional N4 bias correction, brain mask,
re-orientation to the model's axis order, crop to the brain plus a margin, resampling to the
model's voxel spacing, padding to the network's size multiple, z-score inside the brain.
The trainer calls the same :func:`preprocess`, so training and inference cannot drift apart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np

from .bias import CONCURRENT_BACKENDS, available_backend, n4_correct
from .conform import resample_to_grid
from .geometry import Grid, cropped_grid, reoriented_grid, zoomed_grid
from .model import ModelSpec

ProgressFn = Callable[[float, str], None]
# Bumped whenever preprocess() gives different arrays for the same model.json settings, so that
# the trainer's cache of prepared cases (keyed by it) is rebuilt rather than silently reused.
# 1: first release. 2: N4 fitted on a 5x (was 4x) shrunken image. Not bumped when SimpleITK's
# N4 took ANTsPy's convergence threshold: ANTsPy's arrays did not change, and prepare prefers
# ANTsPy (each case's manifest entry names the backend that ran).
PREPROCESSING_VERSION = 2
MAX_CONCURRENT_N4 = 4


@dataclass
class Preprocessed:
    """Network input: ``array`` (X, Y, Z, C) float32 in ``spec.channels`` order on ``grid``."""

    array: np.ndarray
    grid: Grid
    brain_mask: np.ndarray
    bias_backend: str | None = None  # which N4 ran ("ants" or "sitk"; None: no N4)

    @property
    def bias_corrected(self) -> bool:
        """Whether N4 ran."""
        return self.bias_backend is not None


def brain_mask(images: dict[str, np.ndarray]) -> np.ndarray:
    """Voxels that are non-zero in any sequence: the brain of a skull-stripped scan."""
    mask = np.zeros(next(iter(images.values())).shape, dtype=bool)
    for array in images.values():
        mask |= array != 0
    return mask


# ``preprocess`` takes a ``brain_mask`` argument, which hides the function of that name.
nonzero_mask = brain_mask


def bounding_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive start and exclusive stop indices of the non-zero region of ``mask``."""
    if not mask.any():
        raise ValueError("the brain mask is empty")
    start, stop = [], []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.nonzero(mask.any(axis=other))[0]
        start.append(hits[0])
        stop.append(hits[-1] + 1)
    return np.array(start), np.array(stop)


def working_grid(mask: np.ndarray, grid: Grid, spec: ModelSpec) -> Grid:
    """The grid the network sees: reoriented, cropped to the brain, resampled and padded."""
    oriented = reoriented_grid(grid, spec.orientation)
    oriented_mask = resample_to_grid(mask, grid, oriented, order=0)
    start, stop = bounding_box(oriented_mask)
    margin = np.ceil(spec.crop_margin_mm / oriented.spacing).astype(int)
    start = np.maximum(start - margin, 0)
    stop = np.minimum(stop + margin, oriented.shape)
    cropped = cropped_grid(oriented, start, tuple(stop - start))
    zoomed = zoomed_grid(cropped, np.asarray(spec.spacing_mm))
    shape = np.asarray(zoomed.shape)
    target = np.ceil(shape / spec.size_multiple).astype(int) * spec.size_multiple
    if spec.fixed_input_shape:
        target = np.maximum(target, spec.fixed_input_shape)
    before = (target - shape) // 2  # centre the brain in the padded block
    return cropped_grid(zoomed, -before, tuple(target))


def zscore(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(x - mean) / std over ``mask``; zero outside it, as the network saw in training."""
    values = array[mask]
    mean = float(values.mean()) if values.size else 0.0
    std = float(values.std()) if values.size else 1.0
    out = (array - mean) / (std if std > 0 else 1.0)
    out[~mask] = 0.0
    return out.astype(np.float32, copy=False)


def preprocess(
    images: dict[str, np.ndarray],
    grid: Grid,
    spec: ModelSpec,
    *,
    bias_correction: bool | None = None,
    bias_backend: str | None = None,
    progress: ProgressFn | None = None,
    brain_mask: np.ndarray | None = None,
    threads: int | None = None,
) -> Preprocessed:
    """Turn images on the reference ``grid`` into the network input described by ``spec``.

    ``bias_correction`` None follows the model's metadata (what it was trained with);
    ``bias_backend`` is the N4 implementation; None takes :func:`bias.available_backend`'s
    default order (ANTsPy first, as training's ``prepare`` and its cache check expect);
    :func:`pipeline.segment` passes the backend it chose (``bias.SEGMENT_ORDER``).
    ``brain_mask`` (bool, on ``grid``) replaces the non-zero voxels as the brain, e.g. from
    skull stripping of raw scans; voxels outside it are zero in the network input.
    ``threads`` caps how many sequences are N4-corrected at once (None: one per CPU).
    """
    missing = [c for c in spec.channels if c not in images]
    if missing:
        raise KeyError(f"the model needs sequences {missing} that were not given")
    report = progress or (lambda fraction, message: None)
    if brain_mask is None:
        mask = nonzero_mask({c: images[c] for c in spec.channels})
    else:
        if brain_mask.shape != tuple(grid.shape):
            raise ValueError(f"brain_mask shape {brain_mask.shape} is not the grid's {grid.shape}")
        mask = brain_mask.astype(bool, copy=False)
    apply_n4 = spec.bias_correction if bias_correction is None else bias_correction
    channels = {c: images[c] for c in spec.channels}
    backend = available_backend(bias_backend) if apply_n4 else None
    if backend:
        channels.update(_n4_channels(channels, mask, grid, backend, threads, report))
    report(1.0 if apply_n4 else 0.5, "cropping and resampling")
    target = working_grid(mask, grid, spec)
    work_mask = resample_to_grid(mask.astype(np.uint8), grid, target, order=0).astype(bool)
    array = np.empty((*target.shape, len(spec.channels)), dtype=np.float32)
    for n, c in enumerate(spec.channels):
        resampled = resample_to_grid(channels[c], grid, target, order=1)
        if spec.normalization == "zscore_brain":
            resampled = zscore(resampled, work_mask)
        array[..., n] = resampled
    report(1.0, "preprocessing done")
    return Preprocessed(
        array=array,
        grid=target,
        brain_mask=work_mask,
        bias_backend=backend,
    )


def _n4_channels(
    channels: dict[str, np.ndarray],
    mask: np.ndarray,
    grid: Grid,
    backend: str,
    threads: int | None,
    report: ProgressFn,
) -> dict[str, np.ndarray]:
    """N4-correct every sequence; with SimpleITK several at once on a multi-core machine.

    The fits are independent (each sees only its own sequence, so the arrays equal those of
    one fit after the other). SimpleITK's native code releases Python's lock, so threads fit
    sequences side by side, the ``threads`` CPUs shared among them; ANTsPy's fits take turns.
    """
    names = list(channels)
    cpus = threads or os.cpu_count() or 1  # as the run's report counts them
    side_by_side = backend in CONCURRENT_BACKENDS
    # At most 4 fits at once: each holds a few full-size copies of its sequence in memory.
    workers = max(1, min(len(names), cpus, MAX_CONCURRENT_N4)) if side_by_side else 1
    done: dict[str, np.ndarray] = {}
    if workers == 1:
        for n, c in enumerate(names):
            report(n / len(names), f"bias correction of {c} ({backend})")
            done[c] = n4_correct(channels[c], mask, grid, backend=backend, threads=threads)
        return done
    report(0.0, f"bias correction of {len(names)} sequences, {workers} at a time ({backend})")
    per_fit = max(1, cpus // workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="n4") as pool:
        futures = {
            pool.submit(n4_correct, channels[c], mask, grid, backend=backend, threads=per_fit): c
            for c in names
        }
        try:
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                report(
                    len(done) / len(names), f"bias correction ({backend}): {len(done)}/{len(names)}"
                )
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # the queued fits are not started
            raise
    return done


def labels_to_working(classes: np.ndarray, src: Grid, working: Grid) -> np.ndarray:
    """Reference labels (class indices) on the network's working grid, nearest neighbour."""
    return resample_to_grid(classes.astype(np.uint8), src, working, order=0)
