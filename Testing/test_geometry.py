import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from BrainTumorSegLib.conform import resample_to_grid
from BrainTumorSegLib.geometry import (
    Grid,
    apply_affine,
    cropped_grid,
    reoriented_grid,
    voxel_mapping,
    zoomed_grid,
)


def rotation(angles):
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_affine(spacing, angles=(0, 0, 0), flips=(1, 1, 1), origin=(0, 0, 0)):
    affine = np.eye(4)
    affine[:3, :3] = rotation(angles) @ np.diag(np.asarray(spacing) * np.asarray(flips))
    affine[:3, 3] = origin
    return affine


def test_orientation_codes():
    assert Grid((4, 4, 4), np.diag([-1, -1, 1, 1])).orientation() == "LPS"
    assert Grid((4, 4, 4), np.eye(4)).orientation() == "RAS"


@pytest.mark.parametrize("codes", ["RAS", "LPS", "LAS", "SAR", "IPL", "ASR"])
def test_reorientation_is_exact_and_keeps_world_positions(codes):
    rng = np.random.default_rng(1)
    array = rng.random((5, 6, 7)).astype(np.float32)
    grid = Grid(array.shape, make_affine((1.0, 2.0, 3.0), flips=(-1, 1, -1), origin=(4, 5, 6)))
    target = reoriented_grid(grid, codes)
    assert target.orientation() == codes
    out = resample_to_grid(array, grid, target)
    # Every output voxel holds the input value found at the same world position.
    mapping = voxel_mapping(grid, target)
    for index in [(0, 0, 0), (1, 2, 3), tuple(n - 1 for n in target.shape)]:
        source = np.round(mapping[:3, :3] @ index + mapping[:3, 3]).astype(int)
        assert out[index] == array[tuple(source)]
    np.testing.assert_array_equal(resample_to_grid(out, target, grid), array)


def test_zoomed_grid_keeps_field_of_view():
    grid = Grid((100, 80, 60), make_affine((1.0, 1.0, 1.0), angles=(0.1, 0.2, 0.3)))
    zoomed = zoomed_grid(grid, np.array([2.0, 2.0, 2.0]))
    assert zoomed.shape == (50, 40, 30)
    np.testing.assert_allclose(zoomed.spacing, 2.0)
    # The outer corner of voxel 0 is the same point in both grids.
    corner = grid.affine @ np.array([-0.5, -0.5, -0.5, 1])
    np.testing.assert_allclose(zoomed.affine @ np.array([-0.5, -0.5, -0.5, 1]), corner, atol=1e-9)


def test_general_resampling_matches_scipy():
    rng = np.random.default_rng(2)
    array = rng.random((12, 10, 8)).astype(np.float32)
    src = Grid(array.shape, make_affine((1.0, 1.2, 2.0)))
    dst = Grid((9, 9, 9), make_affine((1.5, 1.5, 1.5), angles=(0.3, -0.2, 0.1), origin=(1, 2, 3)))
    mapping = voxel_mapping(src, dst)
    expected = ndimage.affine_transform(
        array, mapping[:3, :3], mapping[:3, 3], output_shape=dst.shape, order=1, prefilter=False
    )
    np.testing.assert_allclose(resample_to_grid(array, src, dst), expected, atol=1e-6)


def test_channels_are_resampled_together():
    array = np.arange(2 * 4 * 5 * 6, dtype=np.float32).reshape(2, 4, 5, 6)
    src = Grid((4, 5, 6), np.eye(4))
    dst = cropped_grid(reoriented_grid(src, "LPI"), np.array([1, -1, 0]), (3, 6, 6))
    out = resample_to_grid(array, src, dst)
    assert out.shape == (2, 3, 6, 6)
    np.testing.assert_array_equal(out[1], resample_to_grid(array[1], src, dst))


@settings(max_examples=40, deadline=None)
@given(
    shape=st.tuples(*[st.integers(3, 12)] * 3),
    spacing=st.tuples(*[st.floats(0.5, 4.0)] * 3),
    flips=st.tuples(*[st.sampled_from([-1, 1])] * 3),
    codes=st.sampled_from(["RAS", "LPS", "LAS", "PIR", "SLA"]),
    start=st.tuples(*[st.integers(-1, 1)] * 3),
)
def test_reorient_crop_round_trip(shape, spacing, flips, codes, start):
    """Reorienting and cropping (with padding) then restoring returns the voxels kept."""
    rng = np.random.default_rng(0)
    array = rng.random(shape).astype(np.float32) + 1.0
    grid = Grid(shape, make_affine(spacing, flips=flips))
    oriented = reoriented_grid(grid, codes)
    size = tuple(n - 1 for n in oriented.shape)  # with |start| <= 1 it always overlaps
    work = cropped_grid(oriented, np.array(start), size)
    there = resample_to_grid(array, grid, work)
    back = resample_to_grid(there, work, grid)
    kept = back != 0
    assert kept.any()
    np.testing.assert_array_equal(back[kept], array[kept])
    # Voxels inside the crop window all come back.
    assert kept.sum() == (there != 0).sum()


@settings(max_examples=25, deadline=None)
@given(
    angles=st.tuples(*[st.floats(-0.6, 0.6)] * 3),
    spacing=st.tuples(*[st.floats(0.8, 3.0)] * 3),
)
def test_oblique_resampling_preserves_a_blob_position(angles, spacing):
    """A blob moved onto an oblique grid and back keeps its world centre (within a voxel)."""
    shape = (30, 30, 30)
    grid = Grid(shape, make_affine((1.0, 1.0, 1.0)))
    idx = np.indices(shape)
    blob = (sum((idx[a] - c) ** 2 for a, c in zip(range(3), (12, 16, 14))) <= 16).astype(np.float32)
    affine = make_affine(spacing, angles=angles)
    # Centre the oblique grid on the blob so that it is always fully covered.
    affine[:3, 3] = np.array([12, 16, 14]) - affine[:3, :3] @ np.full(3, 19.5)
    oblique = Grid((40, 40, 40), affine)
    there = resample_to_grid(blob, grid, oblique)
    assert there.sum() > 0
    weights = there / there.sum()
    centre_voxel = (np.indices(there.shape).reshape(3, -1) * weights.ravel()).sum(axis=1)
    centre_there = oblique.affine[:3, :3] @ centre_voxel + oblique.affine[:3, 3]
    assert np.linalg.norm(centre_there - np.array([12, 16, 14])) < 0.5


def test_world_centroid_is_the_mean_voxel_centre_in_world_coordinates():
    grid = Grid((6, 7, 8), make_affine((1.5, 2.0, 0.8), angles=(0.3, -0.2, 0.1), origin=(4, -5, 6)))
    mask = np.zeros(grid.shape, dtype=bool)
    mask[1, 2, 3] = mask[3, 6, 7] = True
    expected = apply_affine(grid.affine, np.array([[2.0, 4.0, 5.0]]))[0]
    assert np.allclose(grid.world_centroid(mask), expected)
