"""Random patch extraction and augmentation in numpy.

As in TorchIO, the random parameters of a transform are drawn first (:func:`draw_spatial`,
:func:`draw_intensity`) and applied separately, so a test can apply known parameters and a
draw can be reproduced from a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .config import AugmentConfig


@dataclass(frozen=True)
class SpatialParams:
    """Where a patch is read and how it is rotated, scaled and flipped."""

    centre: tuple[float, float, float]  # patch centre in volume voxel coordinates
    rotation_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # about axes 0, 1, 2
    scale: float = 1.0  # > 1 zooms in
    flips: tuple[bool, bool, bool] = (False, False, False)

    @property
    def is_rigid_crop(self) -> bool:
        """True when the patch is a plain crop (no interpolation needed)."""
        return self.scale == 1.0 and not any(self.rotation_deg)


@dataclass(frozen=True)
class IntensityParams:
    """Per-channel multiplicative and additive change, then an optional gamma."""

    scale: tuple[float, ...]
    shift: tuple[float, ...]
    gamma: float | None = None


def choose_centre(
    shape: tuple[int, ...],
    patch: tuple[int, int, int],
    foreground: Sequence[np.ndarray],
    foreground_probability: float,
    rng: np.random.Generator,
) -> tuple[float, float, float]:
    """A patch centre: on a random tumour voxel with ``foreground_probability``, else anywhere.

    ``foreground`` holds groups of (N, 3) tumour voxel coordinates (all tumour voxels as one
    group, or one group per tumour class): a non-empty group is drawn first, each equally
    likely, then one of its voxels.
    """
    groups = [g for g in foreground if len(g)]
    if groups and rng.random() < foreground_probability:
        group = groups[rng.integers(len(groups))]
        return tuple(float(v) for v in group[rng.integers(len(group))])
    # Anywhere such that the patch stays inside the volume when it fits.
    centre = []
    for size, p in zip(shape[:3], patch):
        low, high = p / 2 - 0.5, size - p / 2 - 0.5
        centre.append(rng.uniform(low, high) if high > low else (size - 1) / 2)
    return tuple(centre)


def draw_spatial(
    centre: tuple[float, float, float], config: AugmentConfig, rng: np.random.Generator
) -> SpatialParams:
    """Random rotation/scale (with probability ``spatial_probability``) and flips."""
    rotation = (0.0, 0.0, 0.0)
    scale = 1.0
    if rng.random() < config.spatial_probability:
        limit = config.rotation_deg
        rotation = tuple(float(a) for a in rng.uniform(-limit, limit, 3))
        scale = float(rng.uniform(*config.scale))
    flips = tuple(bool(f) for f in rng.random(3) < 0.5) if config.flip else (False,) * 3
    return SpatialParams(centre=centre, rotation_deg=rotation, scale=scale, flips=flips)


def draw_intensity(
    channels: int, config: AugmentConfig, rng: np.random.Generator
) -> IntensityParams:
    """Per-channel scale and shift, and a gamma with probability ``gamma_probability``."""
    s, t = config.intensity_scale, config.intensity_shift
    gamma = None
    if rng.random() < config.gamma_probability:
        gamma = float(rng.uniform(*config.gamma))
    return IntensityParams(
        scale=tuple(float(v) for v in rng.uniform(1 - s, 1 + s, channels)),
        shift=tuple(float(v) for v in rng.uniform(-t, t, channels)),
        gamma=gamma,
    )


def _rotation_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(3)
    for axis, angle in enumerate(np.deg2rad(degrees)):
        c, s = np.cos(angle), np.sin(angle)
        a, b = [i for i in range(3) if i != axis]
        rot = np.eye(3)
        rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
        matrix = rot @ matrix
    return matrix


def extract_patch(
    image: np.ndarray,
    labels: np.ndarray,
    patch: tuple[int, int, int],
    params: SpatialParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Read a (patch, C) image and (patch) label block around ``params.centre``.

    Outside the volume images are 0 (the z-scored background) and labels 0. Rotation and
    scaling resample linearly (images) and by nearest neighbour (labels); flips come last.
    """
    patch = tuple(int(p) for p in patch)
    if params.is_rigid_crop:
        start = [int(round(c - p / 2 + 0.5)) for c, p in zip(params.centre, patch)]
        out_image = _crop(image, start, patch)
        out_labels = _crop(labels, start, patch)
    else:
        # Output voxel o maps to input M @ (o - patch_centre) + centre.
        matrix = _rotation_matrix(params.rotation_deg) / params.scale
        half = (np.asarray(patch) - 1) / 2
        offset = np.asarray(params.centre) - matrix @ half
        out_image = np.empty((*patch, image.shape[-1]), dtype=np.float32)
        for c in range(image.shape[-1]):
            out_image[..., c] = ndimage.affine_transform(
                np.asarray(image[..., c], dtype=np.float32),
                matrix,
                offset=offset,
                output_shape=patch,
                order=1,
                mode="grid-constant",
                cval=0.0,
                prefilter=False,
            )
        out_labels = ndimage.affine_transform(
            np.asarray(labels),
            matrix,
            offset=offset,
            output_shape=patch,
            order=0,
            mode="grid-constant",
            cval=0,
        )
    for axis, flip in enumerate(params.flips):
        if flip:
            out_image = np.flip(out_image, axis)
            out_labels = np.flip(out_labels, axis)
    return np.ascontiguousarray(out_image), np.ascontiguousarray(out_labels)


def _crop(array: np.ndarray, start: list[int], shape: tuple[int, int, int]) -> np.ndarray:
    """Crop with zero padding where the window leaves the array."""
    out = np.zeros((*shape, *array.shape[3:]), dtype=array.dtype)
    src, dst = [], []
    for s, n, size in zip(start, shape, array.shape[:3]):
        lo, hi = max(s, 0), min(s + n, size)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def apply_intensity(image: np.ndarray, params: IntensityParams) -> np.ndarray:
    """Scale and shift each channel, then gamma on the channel's range (sign-free).

    Gamma acts on values mapped to [0, 1] by the patch's own min/max and mapped back, since
    z-scored intensities are negative in places.
    """
    out = image * np.asarray(params.scale, np.float32) + np.asarray(params.shift, np.float32)
    if params.gamma is not None:
        low = out.min(axis=(0, 1, 2), keepdims=True)
        span = np.maximum(out.max(axis=(0, 1, 2), keepdims=True) - low, 1e-6)
        out = np.power((out - low) / span, params.gamma) * span + low
    return out.astype(np.float32, copy=False)
