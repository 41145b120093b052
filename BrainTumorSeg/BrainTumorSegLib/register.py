"""Rigid and affine registration with ANTsPy, expressed as 4x4 world-space (RAS+) matrices.

A registration result is a matrix ``T`` that maps a point of the fixed image's world to the
corresponding point of the moving image's world. Placing the moving image into the fixed
world is then only a change of its affine (``inv(T) @ affine``, see :func:`placed_grid`), so
every later resampling is the core's single world-space resampling (:mod:`conform`).

ANTs is imported inside the functions: the core must import without it.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from .geometry import Grid

# ITK/ANTs physical space is LPS; nibabel and this package use RAS. F @ p flips between them.
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Rigid registration between sequences of one session. The scanner headers already place all
# series in one world, so registration starts from them (identity), not from centres of mass,
# which move with the field of view. Coarse levels are blurred in mm so that thick (5 mm)
# slices and 1 mm in-plane pixels are smoothed alike.
# A full-resolution level adds ~4x the time for < 0.2 degrees and 0.1 mm (measured on the raw
# TCGA case), so registration stops at half resolution.
RIGID_SHRINK = (4, 2)
RIGID_SIGMAS_MM = (4.0, 2.0)
RIGID_ITERATIONS = (100, 50)
MI_BINS = 32
SAMPLING_RATE = 0.25
RANDOM_SEED = 20261124


@dataclass
class Registration:
    """``matrix``: fixed world (RAS mm) -> moving world; plus quality figures."""

    matrix: np.ndarray
    seconds: float
    metric_before: float  # Mattes MI (ANTs sign: lower = better), header alignment
    metric_after: float  # after registration

    @property
    def rotation_deg(self) -> float:
        """Rotation angle of the linear part (degrees; meaningful for rigid transforms)."""
        linear = self.matrix[:3, :3]
        u, _, vt = np.linalg.svd(linear)
        rotation = u @ vt
        cos = np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)
        return float(np.degrees(np.arccos(cos)))

    def displacement_mm(self, points: np.ndarray) -> np.ndarray:
        """How far each fixed-world point (N, 3) moves under the transform (mm)."""
        moved = points @ self.matrix[:3, :3].T + self.matrix[:3, 3]
        return np.linalg.norm(moved - points, axis=1)


def to_ants(array: np.ndarray, grid: Grid):
    """An ANTsImage with the array's voxels and the grid's (possibly oblique) geometry."""
    import ants

    lps = _LPS @ grid.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(
        np.ascontiguousarray(array, dtype=np.float32),
        origin=tuple(float(v) for v in lps[:3, 3]),
        spacing=tuple(float(v) for v in spacing),
        direction=direction,
    )


def ants_affine_to_ras(transform) -> np.ndarray:
    """4x4 RAS matrix of an ANTs affine-family transform (fixed point -> moving point)."""
    params = np.asarray(transform.parameters, dtype=np.float64)
    centre = np.asarray(transform.fixed_parameters, dtype=np.float64)
    linear = params[:9].reshape(3, 3)
    translation = params[9:12]
    lps = np.eye(4)
    lps[:3, :3] = linear
    # ITK: y = A (x - c) + t + c
    lps[:3, 3] = translation + centre - linear @ centre
    return _LPS @ lps @ _LPS


def placed_grid(moving: Grid, matrix: np.ndarray) -> Grid:
    """The moving image's grid moved into the fixed world (voxels unchanged, affine updated)."""
    return Grid(moving.shape, np.linalg.inv(matrix) @ moving.affine)


def register(
    fixed: np.ndarray,
    fixed_grid: Grid,
    moving: np.ndarray,
    moving_grid: Grid,
    *,
    kind: str = "Rigid",
    fixed_mask: np.ndarray | None = None,
    moving_mask: np.ndarray | None = None,
    shrink: tuple[int, ...] = RIGID_SHRINK,
    sigmas_mm: tuple[float, ...] = RIGID_SIGMAS_MM,
    iterations: tuple[int, ...] = RIGID_ITERATIONS,
    initial: np.ndarray | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed`` (Mattes MI); ``kind`` "Rigid", "Similarity", "Affine".

    Starts from the headers (identity in world space) or from ``initial`` (a RAS matrix,
    fixed world -> moving world). ``fixed_mask`` restricts the metric to part of the fixed image.
    """
    import ants

    started = time.perf_counter()
    fixed_img = to_ants(fixed, fixed_grid)
    moving_img = to_ants(moving, moving_grid)
    mask_img = (
        to_ants(fixed_mask.astype(np.float32), fixed_grid) if fixed_mask is not None else None
    )
    moving_mask_img = (
        to_ants(moving_mask.astype(np.float32), moving_grid) if moving_mask is not None else None
    )
    init_file = None
    if initial is not None:
        # ANTs takes an initial transform as a file; -z 1 folds it into the result.
        handle, init_file = tempfile.mkstemp(suffix=".mat")
        os.close(handle)
        ants.write_transform(_ants_transform(initial), init_file)
    before = _metric(fixed_img, moving_img, mask_img, initial)
    args = {
        "type_of_transform": kind,
        "initial_transform": init_file or "Identity",
        "aff_metric": "mattes",
        "aff_sampling": MI_BINS,
        "aff_random_sampling_rate": SAMPLING_RATE,
        "aff_iterations": tuple(iterations),
        "aff_shrink_factors": tuple(shrink),
        "aff_smoothing_sigmas": tuple(sigmas_mm),
        "smoothing_in_mm": True,
        "mask": mask_img,
        "moving_mask": moving_mask_img,
        "mask_all_stages": mask_img is not None or moving_mask_img is not None,
    }
    # A fixed seed for ANTs's random metric sampling: the same input gives the same result
    # (unseeded, two runs of the skull-strip registration differed by 200 mL). ANTsPy reads it
    # from its config module; set_ants_deterministic() would also force ITK onto one thread.
    seed = ants.config._random_seed
    ants.config._random_seed = RANDOM_SEED
    try:
        result = ants.registration(fixed_img, moving_img, **args)
    finally:
        ants.config._random_seed = seed
        if init_file:
            os.unlink(init_file)
    matrix = ants_affine_to_ras(ants.read_transform(result["fwdtransforms"][-1]))
    for path in set(result["fwdtransforms"]) | set(result["invtransforms"]):
        if os.path.exists(path):
            os.unlink(path)  # ANTs leaves its transform files in the temp folder
    after = _metric(fixed_img, moving_img, mask_img, matrix)
    return Registration(
        matrix=matrix,
        seconds=time.perf_counter() - started,
        metric_before=before,
        metric_after=after,
    )


def _ants_transform(matrix: np.ndarray):
    """ANTs affine transform from a RAS matrix (fixed world -> moving world)."""
    import ants

    lps = _LPS @ matrix @ _LPS
    return ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3], translation=lps[:3, 3]
    )


def _metric(fixed_img, moving_img, mask_img, matrix: np.ndarray | None) -> float:
    """Mattes MI of the fixed image and the moving image placed by ``matrix`` (lower = better)."""
    import ants

    transform = _ants_transform(np.eye(4) if matrix is None else matrix)
    warped = ants.apply_ants_transform_to_image(transform, moving_img, fixed_img)
    if mask_img is not None:
        return float(ants.image_mutual_information(fixed_img * mask_img, warped * mask_img))
    return float(ants.image_mutual_information(fixed_img, warped))
