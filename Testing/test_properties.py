"""Property-based tests: preprocessing geometry round trips, and loaders on random headers."""

import gzip
import struct

import nibabel as nib
import nrrd
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_geometry import make_affine

from BrainTumorSegLib.conform import resample_to_grid
from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.geometry import Grid, apply_affine, reoriented_grid, voxel_mapping
from BrainTumorSegLib.load import load_volume
from BrainTumorSegLib.model import ModelSpec
from BrainTumorSegLib.preprocess import working_grid
from BrainTumorSegLib.restore import restore_to_input_grid

FAST = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

shapes = st.tuples(*[st.integers(6, 14)] * 3)
spacings = st.tuples(*[st.floats(0.8, 3.0)] * 3)
flips = st.tuples(*[st.sampled_from([-1, 1])] * 3)
orientations = st.sampled_from(["LPS", "RAS", "LAS", "PIR", "SLA"])


def ellipsoid_mask(shape, centre_shift):
    idx = np.indices(shape).astype(float)
    mid = (np.array(shape) - 1) / 2 + np.array(centre_shift)
    radii = np.array(shape) * 0.3
    return sum(((idx[a] - mid[a]) / radii[a]) ** 2 for a in range(3)) <= 1.0


@FAST
@given(
    shape=shapes,
    spacing=spacings,
    flip=flips,
    codes=orientations,
    shift=st.tuples(*[st.floats(-1.5, 1.5)] * 3),
    multiple=st.sampled_from([4, 8]),
    margin=st.floats(0.0, 4.0),
)
def test_labels_survive_preprocess_and_restore_exactly(
    shape, spacing, flip, codes, shift, multiple, margin
):
    """At the model's own spacing and axis-aligned, working grid -> restore is lossless for
    every voxel of the brain (one-hot labels, nearest there, trilinear back)."""
    grid = Grid(shape, make_affine(spacing, flips=flip, origin=(5, -3, 2)))
    mask = ellipsoid_mask(shape, shift)
    # The model's spacing is given along its own (reoriented) axes.
    own_spacing = reoriented_grid(grid, codes).spacing
    spec = ModelSpec(
        name="p",
        spacing_mm=[float(s) for s in own_spacing],
        orientation=codes,
        size_multiple=multiple,
        crop_margin_mm=margin,
    )
    work = working_grid(mask, grid, spec)
    assert work.orientation() == codes
    assert all(n % multiple == 0 for n in work.shape)
    np.testing.assert_allclose(work.spacing, own_spacing, rtol=1e-9)
    labels = np.where(mask, np.random.default_rng(0).integers(1, 4, shape), 0).astype(np.uint8)
    on_work = resample_to_grid(labels, grid, work, order=0)
    one_hot = np.stack([(on_work == k).astype(np.float32) for k in range(4)])
    back = restore_to_input_grid(one_hot, work, grid)
    np.testing.assert_array_equal(np.argmax(back, axis=0)[mask], labels[mask])


@FAST
@given(
    shape=shapes,
    spacing=spacings,
    flip=flips,
    angles=st.tuples(*[st.floats(-0.5, 0.5)] * 3),
    codes=orientations,
    model_spacing=st.tuples(*[st.floats(0.7, 2.5)] * 3),
    slope=st.tuples(*[st.floats(-2.0, 2.0)] * 3),
)
def test_restore_puts_values_back_at_their_world_position(
    shape, spacing, flip, angles, codes, model_spacing, slope
):
    """Any grid (oblique, flipped, anisotropic) and model spacing: a linear field of world
    position, sampled on the working grid and restored, equals the field on the input grid
    wherever the input voxel lies inside the working grid (trilinear is exact on linear
    fields), and the working grid covers the whole brain."""
    affine = make_affine(spacing, angles=angles, flips=flip, origin=(1, 2, 3))
    grid = Grid(shape, affine)
    mask = ellipsoid_mask(shape, (0, 0, 0))
    spec = ModelSpec(name="p", spacing_mm=list(model_spacing), orientation=codes, size_multiple=4)
    work = working_grid(mask, grid, spec)
    np.testing.assert_allclose(work.spacing, model_spacing, rtol=1e-9)
    gradient = np.asarray(slope)

    def field(g):
        world = apply_affine(g.affine, np.indices(g.shape).reshape(3, -1).T)
        return (world @ gradient + 7.0).reshape(g.shape).astype(np.float32)

    # Every brain voxel centre falls inside the working grid (with half a voxel to spare).
    brain = np.argwhere(mask)
    inside = apply_affine(voxel_mapping(work, grid), brain)
    assert np.all(inside >= -0.5 - 1e-6) and np.all(inside <= np.array(work.shape) - 0.5 + 1e-6)
    back = restore_to_input_grid(field(work)[None], work, grid)[0]
    index = apply_affine(voxel_mapping(work, grid), np.indices(shape).reshape(3, -1).T)
    interior = np.all((index >= 0) & (index <= np.array(work.shape) - 1), axis=1).reshape(shape)
    assert interior[mask].mean() > 0.5
    np.testing.assert_allclose(back[interior], field(grid)[interior], atol=1e-3, rtol=1e-4)


# --- loaders on random headers --------------------------------------------------------------

dtypes = st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64])


def random_affine(spacing, angles, flip, origin):
    return make_affine(spacing, angles=angles, flips=flip, origin=origin)


affines = st.builds(
    random_affine,
    st.tuples(*[st.floats(0.3, 5.0)] * 3),
    st.tuples(*[st.floats(-np.pi, np.pi)] * 3),
    flips,
    st.tuples(*[st.floats(-300, 300)] * 3),
)
small_shapes = st.tuples(*[st.integers(2, 7)] * 3)


@FAST
@given(shape=small_shapes, dtype=dtypes, affine=affines, gz=st.booleans(), qform=st.booleans())
def test_nifti_round_trip_keeps_world_geometry(tmp_path_factory, shape, dtype, affine, gz, qform):
    folder = tmp_path_factory.mktemp("nii")
    array = (np.arange(np.prod(shape)) % 97).reshape(shape).astype(dtype)
    image = nib.Nifti1Image(array, affine)
    if qform:
        image.set_qform(affine, code=1)
    path = folder / ("a.nii.gz" if gz else "a.nii")
    nib.save(image, str(path))
    volume = load_volume(path)
    np.testing.assert_allclose(volume.grid.affine, affine, atol=1e-4)
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))
    assert volume.array.dtype == np.float32


@FAST
@given(
    shape=small_shapes,
    dtype=dtypes,
    affine=affines,
    space=st.sampled_from(["left-posterior-superior", "right-anterior-superior"]),
    encoding=st.sampled_from(["raw", "gzip"]),
)
def test_nrrd_round_trip_keeps_world_geometry(
    tmp_path_factory, shape, dtype, affine, space, encoding
):
    folder = tmp_path_factory.mktemp("nrrd")
    array = (np.arange(np.prod(shape)) % 97).reshape(shape).astype(dtype)
    flip = np.diag([-1, -1, 1, 1]) if space.startswith("left") else np.eye(4)
    stored = flip @ affine
    header = {
        "space": space,
        "space directions": stored[:3, :3].T,
        "space origin": stored[:3, 3],
        "encoding": encoding,
    }
    nrrd.write(str(folder / "a.nrrd"), array, header)
    volume = load_volume(folder / "a.nrrd")
    np.testing.assert_allclose(volume.grid.affine, affine, atol=1e-6)
    np.testing.assert_array_equal(volume.array, array.astype(np.float32))


def _valid_nifti_bytes():
    array = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    image = nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0]))
    image.set_qform(image.affine, code=1)
    return bytearray(image.to_bytes())


VALID_NIFTI = _valid_nifti_bytes()
# Header fields (offset, struct format) whose corruption a loader must survive.
NIFTI_FIELDS = [
    (0, "<i"),  # sizeof_hdr
    (40, "<h"),  # dim[0]
    (42, "<h"),  # dim[1]
    (44, "<h"),
    (46, "<h"),
    (48, "<h"),  # dim[4]
    (70, "<h"),  # datatype
    (72, "<h"),  # bitpix
    (76, "<f"),  # pixdim[0] (qfac)
    (80, "<f"),  # pixdim[1]
    (84, "<f"),
    (88, "<f"),
    (108, "<f"),  # vox_offset
    (112, "<f"),  # scl_slope
    (116, "<f"),  # scl_inter
    (252, "<h"),  # qform_code
    (254, "<h"),  # sform_code
    (256, "<f"),  # quatern_b
    (268, "<f"),  # qoffset_x
    (280, "<f"),  # srow_x[0]
    (292, "<f"),  # srow_y[0]
    (344, "<4s"),  # magic
]


def _field_value(fmt):
    if fmt == "<h":
        return st.integers(-32768, 32767)
    if fmt == "<i":
        return st.integers(-(2**31), 2**31 - 1)
    if fmt == "<4s":
        return st.binary(min_size=4, max_size=4)
    return st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def corrupted_nifti(draw):
    data = bytearray(VALID_NIFTI)
    for _ in range(draw(st.integers(1, 4))):
        offset, fmt = draw(st.sampled_from(NIFTI_FIELDS))
        struct.pack_into(fmt, data, offset, draw(_field_value(fmt)))
    if draw(st.booleans()):  # sometimes also cut the file short
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=corrupted_nifti(), gz=st.booleans())
def test_garbage_nifti_headers_give_input_error_only(tmp_path_factory, data, gz):
    """Random header corruption: either a sane 3D volume or an InputError, nothing else."""
    path = tmp_path_factory.mktemp("bad") / ("x.nii.gz" if gz else "x.nii")
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        volume = load_volume(path)
    except InputError as e:
        assert str(path) in str(e)
        return
    assert volume.array.ndim == 3 and min(volume.array.shape) >= 2
    assert np.all(np.isfinite(volume.grid.affine))
    assert abs(np.linalg.det(volume.grid.affine[:3, :3])) > 0


NRRD_LINES = {
    "type": st.sampled_from(["short", "float", "double", "uchar", "int64", "bogus", ""]),
    "dimension": st.sampled_from(["3", "4", "2", "0", "-1", "x", "99"]),
    "sizes": st.lists(st.integers(-5, 100000), min_size=0, max_size=5).map(
        lambda v: " ".join(map(str, v))
    ),
    "encoding": st.sampled_from(["raw", "gzip", "ascii", "bzip2", "weird"]),
    "endian": st.sampled_from(["little", "big", "middle"]),
    "space": st.sampled_from(["left-posterior-superior", "RAS", "scanner-xyz", ""]),
    "space directions": st.sampled_from(
        ["(1,0,0) (0,1,0) (0,0,1)", "(0,0,0) (0,1,0) (0,0,1)", "(1,0) (0,1)", "none (1,0,0)", "x"]
    ),
    "space origin": st.sampled_from(["(0,0,0)", "(nan,0,0)", "(1,2)", "oops"]),
    "kinds": st.sampled_from(["domain domain domain", "list domain domain domain", "x"]),
}


@st.composite
def garbage_nrrd(draw):
    fields = {
        "type": "short",
        "dimension": "3",
        "sizes": "4 5 6",
        "encoding": "raw",
        "endian": "little",
        "space": "left-posterior-superior",
        "space directions": "(1,0,0) (0,1,0) (0,0,1)",
        "space origin": "(0,0,0)",
    }
    for key in draw(st.lists(st.sampled_from(sorted(NRRD_LINES)), min_size=1, max_size=4)):
        fields[key] = draw(NRRD_LINES[key])
    header = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in fields.items()) + "\n"
    payload = draw(st.binary(min_size=0, max_size=400))
    return header.encode() + payload


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=garbage_nrrd())
def test_garbage_nrrd_headers_give_input_error_only(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("badnrrd") / "x.nrrd"
    path.write_bytes(data)
    try:
        volume = load_volume(path)
    except InputError as e:
        assert str(path) in str(e)
        return
    assert volume.array.ndim == 3 and np.all(np.isfinite(volume.grid.affine))
