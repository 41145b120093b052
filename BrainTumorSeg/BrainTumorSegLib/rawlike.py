"""Raw-like cases with known truth, built from skull-stripped, co-registered ones.

Scanner series are what clinicians load: skull on, each sequence on its own oblique grid with
thick slices, the patient moved a little between series. To measure the raw-input path
(:mod:`raw`) against a known answer, a skull-stripped case (BraTS, or the phantom) is

1. pasted into a synthetic head: CSF, inner table, diploe (marrow), outer table and scalp
   (fat) layers around a smoothed brain outline, with a noisy air background;
2. moved by a different small rigid transform per sequence (patient motion) and resliced onto
   a different matrix per sequence: 0.9 mm in-plane, thick slices (a slab average, as a 2D
   acquisition integrates over its slice thickness), oblique.

The world transform of every sequence is kept, so registration error, brain-mask Dice and
segmentation Dice can be computed against the truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .geometry import Grid, cropped_grid
from .write import write_nifti

# Head layers outward from the brain outline (mm) and their signal relative to the brain's
# median in each sequence: CSF, inner table, diploe, outer table, scalp. Bone cortex is dark
# everywhere; marrow and scalp fat are bright on T1, CSF bright on T2 and dark on FLAIR.
LAYERS_MM = (("csf", 2.5), ("table", 2.0), ("diploe", 3.0), ("table", 1.5), ("scalp", 5.0))
LAYER_SIGNAL = {
    "t1": {"csf": 0.35, "table": 0.05, "diploe": 1.1, "scalp": 1.4},
    "t1ce": {"csf": 0.35, "table": 0.05, "diploe": 1.1, "scalp": 1.3},
    "t2": {"csf": 2.2, "table": 0.05, "diploe": 0.7, "scalp": 0.9},
    "flair": {"csf": 0.25, "table": 0.05, "diploe": 0.8, "scalp": 1.2},
}
AIR_NOISE = 0.02  # background noise sigma as a fraction of the brain median


@dataclass
class RawLikeCase:
    """Sequences on their own raw grids, plus the truth needed to score the raw path."""

    images: dict[str, np.ndarray]
    grids: dict[str, Grid]
    # source world -> scanner world of each sequence (the patient's motion before that series)
    motions: dict[str, np.ndarray]
    head_grid: Grid  # the padded source grid the head was built on
    brain_mask: np.ndarray  # on head_grid
    labels: np.ndarray | None = None  # on head_grid (source label values)
    info: dict = field(default_factory=dict)

    def true_registration(self, reference: str, sequence: str) -> np.ndarray:
        """The matrix a perfect registration finds: reference world -> ``sequence`` world."""
        return self.motions[sequence] @ np.linalg.inv(self.motions[reference])

    def truth_on(self, array: np.ndarray, reference: str, grid: Grid) -> np.ndarray:
        """A head-grid array (mask, labels) seen on a grid in ``reference``'s world (nearest)."""
        from .conform import resample_to_grid

        placed = Grid(self.head_grid.shape, self.motions[reference] @ self.head_grid.affine)
        return resample_to_grid(array, placed, grid, order=0)


def rigid_matrix(angles_deg: np.ndarray, translation_mm: np.ndarray, centre: np.ndarray):
    """4x4 rotation (x, y, z Euler angles, degrees) about ``centre`` followed by a shift."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = centre - matrix[:3, :3] @ centre + translation_mm
    return matrix


def add_head(
    images: dict[str, np.ndarray],
    brain: np.ndarray,
    grid: Grid,
    *,
    seed: int = 0,
    pad_mm: float = 24.0,
) -> tuple[dict[str, np.ndarray], np.ndarray, Grid, tuple[slice, ...]]:
    """Paste skull-stripped ``images`` into a synthetic head on a grid padded by ``pad_mm``.

    Returns the head images, the brain mask and the padded grid, and the slices of the
    original grid inside the padded one.
    """
    rng = np.random.default_rng(seed)
    spacing = grid.spacing
    pad = np.ceil(pad_mm / spacing).astype(int)
    shape = tuple(int(n + 2 * p) for n, p in zip(grid.shape, pad))
    head_grid = cropped_grid(grid, -pad, shape)
    inner = tuple(slice(int(p), int(p + n)) for p, n in zip(pad, grid.shape))
    mask = np.zeros(shape, dtype=bool)
    mask[inner] = brain
    # The head follows a smoothed brain outline: sulci and the cerebellar notch are closed.
    step = 2  # work at 2 voxels: the outline is smooth and EDT on the full grid is slow
    coarse = mask[::step, ::step, ::step]
    closed = ndimage.binary_closing(coarse, ndimage.generate_binary_structure(3, 1), iterations=4)
    closed = ndimage.binary_fill_holes(closed | coarse)
    distance = ndimage.distance_transform_edt(~closed, sampling=spacing * step)
    distance = ndimage.zoom(distance, step, order=1, grid_mode=True, mode="nearest")
    distance = distance[: shape[0], : shape[1], : shape[2]]
    distance = np.pad(distance, [(0, s - d) for s, d in zip(shape, distance.shape)], mode="edge")
    # Layer thickness varies a little around the head, as skulls do.
    wobble = ndimage.gaussian_filter(rng.normal(size=[max(2, n // 16) for n in shape]), 1.0)
    wobble = ndimage.zoom(wobble / (np.abs(wobble).max() + 1e-6), 16, order=1)
    wobble = wobble[: shape[0], : shape[1], : shape[2]]
    wobble = np.pad(wobble, [(0, s - d) for s, d in zip(shape, wobble.shape)], mode="edge")
    depth = distance * (1.0 + 0.25 * wobble)
    layer_index = np.full(shape, -1, dtype=np.int8)  # -1 air, 0.. layers
    edge = 0.0
    for n, (_, thickness) in enumerate(LAYERS_MM):
        layer_index[(depth > edge) & (depth <= edge + thickness) & ~mask] = n
        edge += thickness
    # Tissue between the brain mask and the closed outline (sulcal CSF) is CSF too.
    layer_index[(depth <= 0) & ~mask] = 0

    out = {}
    for sequence, image in images.items():
        median = float(np.median(image[brain > 0])) if brain.any() else 1.0
        head = np.zeros(shape, dtype=np.float32)
        for n, (name, _) in enumerate(LAYERS_MM):
            level = LAYER_SIGNAL.get(sequence, LAYER_SIGNAL["t1"])[name] * median
            head[layer_index == n] = level
        head = ndimage.gaussian_filter(head, 0.7 / spacing)  # partial volume between layers
        tissue = layer_index >= 0
        head += (rng.normal(size=shape) * 0.03 * median * tissue).astype(np.float32)
        head[mask] = 0.0
        head[inner] += np.where(brain, image, 0.0).astype(np.float32)
        # Rician-like air background: magnitude of complex Gaussian noise.
        sigma = AIR_NOISE * median
        noise = np.hypot(rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
        out[sequence] = np.maximum(head, 0.0) + noise.astype(np.float32)
    return out, mask, head_grid, inner


def reslice(
    image: np.ndarray,
    grid: Grid,
    motion: np.ndarray,
    target: Grid,
    slab_mm: float,
) -> np.ndarray:
    """Image as a 2D-slice scanner would record it on ``target`` after the patient moved.

    ``motion`` maps source world to scanner world. Each output slice is the average over a
    slab of ``slab_mm`` along the target's third axis (sampled every 1 mm).
    """
    from .conform import resample_to_grid

    placed = Grid(grid.shape, motion @ grid.affine)
    thickness = float(target.spacing[2])
    samples = max(1, int(round(slab_mm)))
    offsets = (np.arange(samples) - (samples - 1) / 2) * (slab_mm / samples) / thickness
    out = np.zeros(target.shape, dtype=np.float32)
    for offset in offsets:
        shifted = cropped_grid(target, np.array([0.0, 0.0, offset]), target.shape)
        out += resample_to_grid(image, placed, shifted, order=1)
    return out / len(offsets)


def scanner_grid(
    centre_mm: np.ndarray,
    matrix: tuple[int, int],
    slices: int,
    *,
    pixel_mm: float = 0.9,
    slice_mm: float = 5.0,
    tilt_deg: np.ndarray | None = None,
) -> Grid:
    """An axial LAS-like scanner grid centred at ``centre_mm``, optionally tilted (oblique)."""
    linear = np.diag([-pixel_mm, pixel_mm, slice_mm])  # L, A, S like the raw TCGA case
    if tilt_deg is not None:
        linear = rigid_matrix(np.asarray(tilt_deg), np.zeros(3), np.zeros(3))[:3, :3] @ linear
    affine = np.eye(4)
    affine[:3, :3] = linear
    half = (np.array([matrix[0], matrix[1], slices]) - 1) / 2
    affine[:3, 3] = centre_mm - linear @ half
    return Grid((matrix[0], matrix[1], slices), affine)


MATRICES = {"t1": (256, 224), "t1ce": (256, 232), "t2": (224, 256), "flair": (208, 256)}


def make_rawlike(
    images: dict[str, np.ndarray],
    brain: np.ndarray,
    grid: Grid,
    *,
    labels: np.ndarray | None = None,
    seed: int = 0,
    max_rotation_deg: float = 8.0,
    max_shift_mm: float = 8.0,
    slice_mm: float = 5.0,
    pixel_mm: float = 0.9,
    matrices: dict[str, tuple[int, int]] | None = None,
    slices: int | None = None,
) -> RawLikeCase:
    """A raw-like case from co-registered skull-stripped ``images`` on ``grid``.

    Every sequence gets its own patient motion (rotation up to ``max_rotation_deg`` about each
    axis, shift up to ``max_shift_mm``), an oblique tilt of up to 10 degrees, its own matrix
    and ``slice_mm`` slices covering the head.
    """
    rng = np.random.default_rng([seed, 7])
    head, mask, head_grid, inner = add_head(images, brain, grid, seed=seed)
    padded_labels = None
    if labels is not None:
        padded_labels = np.zeros(head_grid.shape, dtype=labels.dtype)
        padded_labels[inner] = labels
    centre = head_grid.world_centroid(mask)
    extent = np.ptp(np.argwhere(mask), axis=0) * head_grid.spacing
    slices = slices or int(np.ceil((extent[2] + 30.0) / slice_mm))
    # Field of view scaled to the in-plane matrix, as on scanners (covers the head with margin).
    fov = max(extent[0], extent[1]) + 50.0
    matrices = matrices or MATRICES
    out_images, grids, motions = {}, {}, {}
    for sequence, image in head.items():
        motion = rigid_matrix(
            rng.uniform(-max_rotation_deg, max_rotation_deg, 3),
            rng.uniform(-max_shift_mm, max_shift_mm, 3),
            centre,
        )
        matrix = matrices.get(sequence, (256, 256))
        pixel = max(pixel_mm, fov / max(matrix))
        target = scanner_grid(
            centre + rng.uniform(-5, 5, 3),
            matrix,
            slices,
            pixel_mm=pixel,
            slice_mm=slice_mm,
            tilt_deg=rng.uniform(-10, 10, 3) * np.array([1.0, 1.0, 0.3]),
        )
        out_images[sequence] = reslice(image, head_grid, motion, target, slice_mm)
        grids[sequence] = target
        motions[sequence] = motion
    return RawLikeCase(
        images=out_images,
        grids=grids,
        motions=motions,
        head_grid=head_grid,
        brain_mask=mask,
        labels=padded_labels,
        info={"seed": seed, "slice_mm": slice_mm, "slices": slices},
    )


def write_rawlike(case: RawLikeCase, folder, case_id: str = "RawLike") -> dict[str, object]:
    """Write the sequences as NIfTI (int16, their raw grids) to ``folder``; returns the paths."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for sequence, image in case.images.items():
        affine = case.grids[sequence].affine
        data = np.clip(np.rint(image), 0, np.iinfo(np.int16).max).astype(np.int16)
        paths[sequence] = write_nifti(folder / f"{case_id}_{sequence}.nii.gz", data, affine)
    return paths
