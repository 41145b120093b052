"""N4 bias-field correction with ANTsPy, or SimpleITK (which 3D Slicer bundles)."""

from __future__ import annotations

import importlib.util

import numpy as np

from .geometry import Grid

BACKENDS = ("ants", "sitk")
_MODULES = {"ants": "ants", "sitk": "SimpleITK"}
_PACKAGES = {"ants": "antspyx", "sitk": "SimpleITK"}
# The bias field is smooth, so it is fitted on a shrunken image: shrink 5 instead of the ANTs
# default 4 halves the fitted voxels for a segmentation that barely changes (the README's N4
# section has the figures; Benchmarks/n4_check.py measures them).
SHRINK_FACTOR = 5
ITERATIONS = (50, 50, 30)
# Both backends must stop at the same point: with SimpleITK's default threshold (1e-3) its fit
# stops early and gives the network another input than ANTsPy's, on which the model is
# trained, while 3D Slicer runs SimpleITK (Testing/test_bias.py checks that they agree).
CONVERGENCE = 1e-7
# Backends whose native N4 releases Python's lock, so that several sequences can be fitted side
# by side in threads (ANTsPy's bindings keep the lock: its fits would only take turns).
CONCURRENT_BACKENDS = ("sitk",)
# The order in which segmentation looks for a backend: SimpleITK first, a core dependency (3D
# Slicer's N4) that gives the same segmentation as ANTsPy (README, N4 backends) and fits the four
# sequences side by side. Training's data preparation keeps BACKENDS' order (ANTsPy first), as
# the shipped models' training sets were corrected with it and one cached training set must not
# mix backends.
SEGMENT_ORDER = ("sitk", "ants")


def available_backend(preferred: str | None = None, order: tuple[str, ...] = BACKENDS) -> str:
    """The N4 backend to use: ``preferred`` (which must then be installed), else the first
    installed one of ``order`` (by default ANTsPy, then SimpleITK).

    Raises ValueError for an unknown name and RuntimeError when the backend is not installed,
    so that a requested comparison never silently runs the other backend.
    """
    if preferred is not None and preferred not in BACKENDS:
        raise ValueError(f"unknown bias-correction backend {preferred!r}; use one of {BACKENDS}")
    for backend in [preferred] if preferred else order:
        if importlib.util.find_spec(_MODULES[backend]) is not None:
            return backend
    wanted = _PACKAGES[preferred] if preferred else " or ".join(_PACKAGES[b] for b in order)
    raise RuntimeError(f"bias correction needs {wanted}, which is not installed")


def n4_correct(
    array: np.ndarray,
    mask: np.ndarray,
    grid: Grid,
    *,
    backend: str | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Bias-corrected copy of ``array`` (float32), fitted inside ``mask``; zero stays zero.

    ``backend`` "ants" or "sitk"; None picks one with :func:`available_backend`. ``threads``
    caps SimpleITK's own threads for this fit (None: its default, one per CPU).
    """
    backend = available_backend(backend)
    if backend == "ants":
        corrected = _n4_ants(array, mask, grid)
    else:
        corrected = _n4_sitk(array, mask, grid, threads)
    corrected = corrected.astype(np.float32, copy=False)
    corrected[~mask] = 0.0
    return corrected


def _n4_ants(array: np.ndarray, mask: np.ndarray, grid: Grid) -> np.ndarray:
    import ants

    spacing = tuple(float(s) for s in grid.spacing)
    image = ants.from_numpy(np.ascontiguousarray(array, dtype=np.float32), spacing=spacing)
    weight = ants.from_numpy(mask.astype(np.float32), spacing=spacing)
    result = ants.n4_bias_field_correction(
        image,
        mask=weight,
        shrink_factor=SHRINK_FACTOR,
        convergence={"iters": list(ITERATIONS), "tol": CONVERGENCE},
    )
    return result.numpy()


def _n4_sitk(array: np.ndarray, mask: np.ndarray, grid: Grid, threads: int | None) -> np.ndarray:
    import SimpleITK as sitk

    # SimpleITK arrays are [k, j, i]; spacing is per (i, j, k).
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in grid.spacing))
    mask_image = sitk.GetImageFromArray(
        np.ascontiguousarray(mask.transpose(2, 1, 0), dtype=np.uint8)
    )
    mask_image.CopyInformation(image)
    small = sitk.Shrink(image, [SHRINK_FACTOR] * 3)
    small_mask = sitk.Shrink(mask_image, [SHRINK_FACTOR] * 3)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations(list(ITERATIONS))
    n4.SetConvergenceThreshold(CONVERGENCE)
    if threads:
        n4.SetNumberOfThreads(threads)
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(image)
    corrected = image / sitk.Exp(log_field)
    return sitk.GetArrayFromImage(corrected).transpose(2, 1, 0)
