"""Putting arrays onto a given voxel grid: resampling in world space, with an exact fast path."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .geometry import Grid, voxel_mapping


def _signed_permutation(mapping: np.ndarray, atol: float = 1e-5) -> bool:
    """True when a voxel mapping only permutes/flips axes and shifts by whole voxels."""
    linear = mapping[:3, :3]
    rounded = np.round(linear)
    if not np.allclose(linear, rounded, atol=atol):
        return False
    if not np.allclose(mapping[:3, 3], np.round(mapping[:3, 3]), atol=atol):
        return False
    return bool(
        np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)
    )


def _reindex(
    array: np.ndarray, mapping: np.ndarray, shape: tuple[int, ...], cval: float
) -> np.ndarray:
    """Exact resampling for signed-permutation mappings: transpose, flip and pad/crop."""
    linear = np.round(mapping[:3, :3]).astype(int)
    offset = np.round(mapping[:3, 3]).astype(int)
    # out axis a reads input axis perm[a] with sign signs[a]: in = sign * out + offset.
    perm = np.argmax(np.abs(linear), axis=0)
    signs = linear[perm, np.arange(3)]
    spatial = array.ndim - 3  # leading channel axes are carried along untouched
    out = np.full(array.shape[:spatial] + tuple(shape), cval, dtype=array.dtype)
    src_slices, dst_slices = [], []
    for a in range(3):
        size_in = array.shape[spatial + perm[a]]
        # out index n reads in index sign * n + offset; keep n where that is inside [0, size_in).
        n = np.arange(shape[a])
        idx = signs[a] * n + offset[perm[a]]
        valid = np.nonzero((idx >= 0) & (idx < size_in))[0]
        if valid.size == 0:
            return out
        n0, n1 = int(valid[0]), int(valid[-1]) + 1
        i0, i1 = int(idx[n0]), int(idx[n1 - 1])
        dst_slices.append(slice(n0, n1))
        if signs[a] > 0:
            src_slices.append(slice(i0, i1 + 1))
        else:
            src_slices.append(slice(i0, i1 - 1 if i1 > 0 else None, -1))
    # Order input axes so that output axis a comes from input axis perm[a].
    inverse_slices: list[slice] = [slice(None)] * 3
    for a in range(3):
        inverse_slices[perm[a]] = src_slices[a]
    block = array[(Ellipsis, *inverse_slices)]
    block = np.moveaxis(block, [spatial + p for p in perm], [spatial + a for a in range(3)])
    out[(Ellipsis, *dst_slices)] = block
    return out


def resample_to_grid(
    array: np.ndarray,
    src: Grid,
    dst: Grid,
    *,
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Resample ``array`` (on ``src``) onto ``dst`` by world position.

    ``array`` may carry leading channel axes (C, i, j, k). ``order`` 0 is nearest neighbour
    (labels), 1 trilinear. Voxels of ``dst`` outside ``src`` get ``cval``. When the grids
    differ only by axis permutation, flips and whole-voxel shifts, values are copied exactly.
    """
    mapping = voxel_mapping(src, dst)
    if _signed_permutation(mapping):
        return _reindex(array, mapping, dst.shape, cval)
    if array.ndim > 3:
        lead = array.shape[:-3]
        flat = array.reshape((-1,) + array.shape[-3:])
        out = np.stack([resample_to_grid(c, src, dst, order=order, cval=cval) for c in flat])
        return out.reshape(lead + tuple(dst.shape))
    output_dtype = array.dtype if order == 0 else np.float32
    return ndimage.affine_transform(
        array,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=dst.shape,
        order=order,
        mode="constant",
        cval=cval,
        prefilter=False,
        output=output_dtype,
    )
