import nibabel as nib
import nrrd
import numpy as np
import pytest
from conftest import write_nifti

from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.load import find_sequences, load_volume, match_sequence


@pytest.mark.parametrize(
    ("name", "sequence"),
    [
        ("Brats18_2013_3_1_t1", "t1"),
        ("Brats18_2013_3_1_t1ce", "t1ce"),
        ("Brats18_2013_3_1_T2", "t2"),
        ("Brats18_2013_3_1_FLAIR", "flair"),
        ("BraTS-GLI-00001-000-t1n", "t1"),
        ("BraTS-GLI-00001-000-t1c", "t1ce"),
        ("BraTS-GLI-00001-000-t2w", "t2"),
        ("BraTS-GLI-00001-000-t2f", "flair"),
        ("AX T1 POST GAD", "t1ce"),
        ("sub-01_T1w", "t1"),
        ("Brats18_2013_3_1_seg", None),
        ("notes", None),
    ],
)
def test_match_sequence(name, sequence):
    assert match_sequence(name) == sequence


def _touch_case(folder, names):
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


@pytest.mark.parametrize(
    "names",
    [
        ["P_t1.nii.gz", "P_t1ce.nii.gz", "P_t2.nii.gz", "P_flair.nii.gz", "P_seg.nii.gz"],
        ["P-T1N.nii.gz", "P-T1C.nii.gz", "P-T2W.nii.gz", "P-T2F.nii.gz", "P-seg.nii.gz"],
        ["p_t1.nrrd", "p_t1ce.nhdr", "p_t2.nii", "p_flair.nii.gz", "readme.txt"],
    ],
)
def test_find_sequences(tmp_path, names):
    found = find_sequences(_touch_case(tmp_path / "case", names))
    assert sorted(found) == ["flair", "t1", "t1ce", "t2"]
    assert found["t1ce"].name.lower().split(".")[0].endswith(("t1ce", "t1c"))


def test_find_sequences_reports_missing_and_duplicates(tmp_path):
    with pytest.raises(InputError, match="FLAIR"):
        find_sequences(_touch_case(tmp_path / "a", ["P_t1.nii.gz", "P_t1ce.nii.gz", "P_t2.nii.gz"]))
    names = ["P_t1.nii.gz", "Q_t1.nii.gz", "P_t1ce.nii.gz", "P_t2.nii.gz", "P_flair.nii.gz"]
    with pytest.raises(InputError, match="several files look like T1"):
        find_sequences(_touch_case(tmp_path / "b", names))


def test_nrrd_and_nifti_give_the_same_world_geometry(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.random((6, 7, 8)).astype(np.float32)
    affine = np.array([[0, 0, -2.0, 10], [1.5, 0, 0, -20], [0, -1, 0, 30], [0, 0, 0, 1]])
    nifti = load_volume(write_nifti(tmp_path / "a.nii.gz", array, affine))
    lps = np.diag([-1, -1, 1, 1]) @ affine
    header = {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
    }
    nrrd.write(str(tmp_path / "a.nrrd"), array, header)
    from_nrrd = load_volume(tmp_path / "a.nrrd")
    np.testing.assert_allclose(from_nrrd.grid.affine, nifti.grid.affine, atol=1e-6)
    np.testing.assert_array_equal(from_nrrd.array, nifti.array)


def test_integer_images_become_float32_with_scaling(tmp_path):
    image = nib.Nifti1Image(np.arange(27, dtype=np.int16).reshape(3, 3, 3), np.eye(4))
    image.header.set_slope_inter(2.0, 1.0)
    nib.save(image, str(tmp_path / "s.nii.gz"))
    volume = load_volume(tmp_path / "s.nii.gz")
    assert volume.array.dtype == np.float32
    assert volume.array[0, 0, 1] == 3.0


def test_trailing_singleton_axis_is_accepted(tmp_path):
    path = write_nifti(tmp_path / "t.nii.gz", np.ones((4, 5, 6, 1), np.float32), np.eye(4))
    assert load_volume(path).array.shape == (4, 5, 6)
