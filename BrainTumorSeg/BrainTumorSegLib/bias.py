"""N4 bias-field correction with ANTsPy, or SimpleITK (which 3D Slicer bundles)."""

from __future__ import annotations

import importlib.util

import numpy as np

from .geometry import Grid

BACKENDS = ("ants", "sitk")
# The bias field is smooth, so it is fitted on a shrunken image. Shrink 5 instead of the ANTs
# default 4 halves the fitted voxels: end to end with N4 19.4 s instead of 31 s on a
# 240x240x155 case (2 cores); the segmentation agrees with the shrink-4 one at Dice 0.976-0.996
# per region on three shared cases (Benchmarks/n4_check.py prints both).
SHRINK_FACTOR = 5
ITERATIONS = (50, 50, 30)
# Both backends must stop at the same point: SimpleITK's default threshold (1e-3) stops its fit
# early, and its z-scored output then differed from ANTsPy's by up to 0.39 SD on a shared case
# (6e-4 with this threshold), while the model is trained on ANTsPy and Slicer runs SimpleITK.
CONVERGENCE = 1e-7


def available_backend(preferred: str | None = None) -> str:
    """The N4 backend to use: ``preferred`` if installed, else ANTsPy, else SimpleITK."""
    if preferred is not None and preferred not in BACKENDS:
        raise ValueError(f"unknown bias-correction backend {preferred!r}; use one of {BACKENDS}")
    order = [preferred] if preferred else []
    order += [b for b in BACKENDS if b not in order]
    for backend in order:
        module = "ants" if backend == "ants" else "SimpleITK"
        if importlib.util.find_spec(module) is not None:
            return backend
    raise RuntimeError("bias correction needs antspyx or SimpleITK; install one of them")


def n4_correct(
    array: np.ndarray, mask: np.ndarray, grid: Grid, *, backend: str = "ants"
) -> np.ndarray:
    """Bias-corrected copy of ``array`` (float32), fitted inside ``mask``; zero stays zero."""
    if backend == "ants":
        corrected = _n4_ants(array, mask, grid)
    elif backend == "sitk":
        corrected = _n4_sitk(array, mask, grid)
    else:
        raise ValueError(f"unknown bias-correction backend {backend!r}; use one of {BACKENDS}")
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


def _n4_sitk(array: np.ndarray, mask: np.ndarray, grid: Grid) -> np.ndarray:
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
    n4.Execute(small, small_mask)
    log_field = n4.GetLogBiasFieldAsImage(image)
    corrected = image / sitk.Exp(log_field)
    return sitk.GetArrayFromImage(corrected).transpose(2, 1, 0)
