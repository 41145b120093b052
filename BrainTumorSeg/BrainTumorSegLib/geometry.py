"""Voxel grids in world space.

A :class:`Grid` is a voxel array's shape plus its 4x4 voxel-to-world affine in RAS+ (the
convention of NIfTI and nibabel: column ``i`` of the affine is the world step of one voxel
along the first array axis). Every spatial step of the pipeline is expressed as a change of
grid, so that it can be undone exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Axis codes used for orientation strings such as "LPS" or "RAS": the direction each array
# axis points towards, in RAS+ world space.
_AXIS_CODES = {
    "R": (0, 1.0),
    "L": (0, -1.0),
    "A": (1, 1.0),
    "P": (1, -1.0),
    "S": (2, 1.0),
    "I": (2, -1.0),
}


@dataclass(frozen=True)
class Grid:
    """A 3D voxel grid: ``shape`` (i, j, k) and ``affine`` (voxel index -> RAS+ mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {affine.shape}")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
        return float(abs(np.linalg.det(self.affine[:3, :3])) / 1000.0)

    def orientation(self) -> str:
        """Axis codes (e.g. ``"LPS"``): the world direction closest to each array axis."""
        return "".join(_axis_code(self.affine[:3, axis]) for axis in range(3))

    def world_corners(self) -> np.ndarray:
        """World coordinates (8, 3) of the centres of the eight corner voxels."""
        ranges = [(0, n - 1) for n in self.shape]
        corners = np.array(np.meshgrid(*ranges, indexing="ij")).reshape(3, -1).T
        return apply_affine(self.affine, corners)

    def world_centroid(self, mask: np.ndarray) -> np.ndarray:
        """World coordinates (3,) of the mean voxel centre of a non-empty boolean ``mask``."""
        return apply_affine(self.affine, np.argwhere(mask).mean(axis=0)[None])[0]

    def same_as(self, other: Grid, *, atol: float = 1e-4) -> bool:
        """True when both grids have the same shape and (numerically) the same affine."""
        return self.shape == other.shape and np.allclose(self.affine, other.affine, atol=atol)


def _axis_code(column: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(column)))
    positive = column[axis] > 0
    return {0: "RL", 1: "AP", 2: "SI"}[axis][0 if positive else 1]


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 affine to an (N, 3) array of points."""
    points = np.asarray(points, dtype=np.float64)
    return points @ affine[:3, :3].T + affine[:3, 3]


def voxel_mapping(src: Grid, dst: Grid) -> np.ndarray:
    """4x4 matrix mapping ``dst`` voxel indices to ``src`` voxel indices."""
    return np.linalg.inv(src.affine) @ dst.affine


def reorient_matrix(shape: tuple[int, int, int], affine: np.ndarray, codes: str) -> np.ndarray:
    """Voxel-index matrix M so that ``affine @ M`` points the array axes along ``codes``.

    M is a signed permutation with an offset (an exact re-indexing, no interpolation): output
    index -> input index. ``codes`` is an orientation such as ``"LPS"``.
    """
    codes = codes.upper()
    if sorted(_AXIS_CODES[c][0] for c in codes) != [0, 1, 2]:
        raise ValueError(f"invalid orientation {codes!r}")
    # For each output axis, the input axis whose world direction is closest to the wanted one.
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    matrix = np.zeros((4, 4))
    matrix[3, 3] = 1.0
    used: set[int] = set()
    for out_axis, code in enumerate(codes):
        world_axis, sign = _AXIS_CODES[code]
        scores = sign * directions[world_axis]
        for axis in used:
            scores[axis] = 0.0
        in_axis = int(np.argmax(np.abs(scores)))
        used.add(in_axis)
        if scores[in_axis] >= 0:
            matrix[in_axis, out_axis] = 1.0
        else:  # flipped: output index n maps to input index (size - 1 - n)
            matrix[in_axis, out_axis] = -1.0
            matrix[in_axis, 3] = shape[in_axis] - 1
    return matrix


def reoriented_grid(grid: Grid, codes: str) -> Grid:
    """The same voxels as ``grid`` re-indexed so that the array axes follow ``codes``."""
    matrix = reorient_matrix(grid.shape, grid.affine, codes)
    perm = np.argmax(np.abs(matrix[:3, :3]), axis=0)
    shape = tuple(grid.shape[p] for p in perm)
    return Grid(shape, grid.affine @ matrix)


def cropped_grid(grid: Grid, start: np.ndarray, shape: tuple[int, int, int]) -> Grid:
    """Sub-grid (or super-grid, for negative ``start``) beginning at voxel index ``start``."""
    translate = np.eye(4)
    translate[:3, 3] = start
    return Grid(tuple(int(s) for s in shape), grid.affine @ translate)


def zoomed_grid(grid: Grid, spacing: np.ndarray) -> Grid:
    """A grid covering the same field of view as ``grid`` with voxel size ``spacing`` (mm).

    The first voxel's corner (not centre) is kept, so the field of view is preserved
    as closely as whole voxels allow.
    """
    spacing = np.asarray(spacing, dtype=np.float64)
    scale = spacing / grid.spacing
    shape = tuple(max(1, int(round(n / s))) for n, s in zip(grid.shape, scale))
    step = np.diag([*scale, 1.0])
    # Shift so that the outer corner of voxel 0 stays put: centre moves by (scale - 1) / 2 voxels.
    step[:3, 3] = (scale - 1.0) / 2.0
    return Grid(shape, grid.affine @ step)
