"""More of the bad-input catalogue (see test_cli_errors.py for the first part), 4D stacks,
left-handed geometry, the memory guard and interruption.

Every bad input: one line on stderr naming the file and the problem, exit code 2, nothing
written, inputs untouched.
"""

import gzip
import json
import os
import shutil
import struct
import subprocess
import sys

import nibabel as nib
import nrrd
import numpy as np
import pytest
from conftest import blob_case, write_nifti
from test_cli_errors import assert_clean_failure, case_args, check_bad_input, digest, run_cli
from test_geometry import make_affine

from BrainTumorSegLib import infer
from BrainTumorSegLib.geometry import apply_affine
from BrainTumorSegLib.model import ModelSpec
from BrainTumorSegLib.write import STAGING_PREFIX, host_tag


def _array_affine(path):
    image = nib.load(str(path))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def _raw_header(path):
    """The uncompressed bytes of a .nii.gz file."""
    return bytearray(gzip.decompress(path.read_bytes()))


def plain_nifti_named_gz(paths, tmp_path):
    paths["t1"].write_bytes(bytes(_raw_header(paths["t1"])))
    return paths["t1"], "rename it to .nii"


def gzip_nifti_named_nii(paths, tmp_path):
    target = paths["t2"].with_name("case_t2.nii")
    shutil.copy(paths["t2"], target)
    paths["t2"].unlink()
    paths["t2"] = target
    return target, "rename it to .nii.gz"


def nrrd_named_nifti(paths, tmp_path):
    array, affine = _array_affine(paths["flair"])
    nrrd.write(str(tmp_path / "x.nrrd"), array)
    shutil.copy(tmp_path / "x.nrrd", paths["flair"])
    (tmp_path / "x.nrrd").unlink()
    return paths["flair"], "is an NRRD file"


def nifti_named_nrrd(paths, tmp_path):
    target = paths["t1ce"].with_name("case_t1ce.nrrd")
    shutil.copy(paths["t1ce"], target)
    paths["t1ce"].unlink()
    paths["t1ce"] = target
    return target, "is a NIfTI file"


def truncated_uncompressed(paths, tmp_path):
    target = paths["t1"].with_name("case_t1.nii")
    data = _raw_header(paths["t1"])
    target.write_bytes(bytes(data[: len(data) - 4000]))
    paths["t1"].unlink()
    paths["t1"] = target
    return target, "truncated file or corrupt header"


def constant_volume(paths, tmp_path):
    array, affine = _array_affine(paths["t2"])
    write_nifti(paths["t2"], np.full(array.shape, 7.0, np.float32), affine)
    return paths["t2"], "constant (7)"


def _patch_header(path, fmt, offset, *values):
    data = _raw_header(path)
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(gzip.compress(bytes(data)))


def huge_dims(paths, tmp_path):
    _patch_header(paths["t1"], "<hhhh", 40, 3, 32767, 32767, 32767)  # int16 maximum
    return paths["t1"], "far more than any MR image"


def huge_vox_offset(paths, tmp_path):
    _patch_header(paths["flair"], "<f", 108, 3.0e12)
    return paths["flair"], "truncated file or corrupt header"


def negative_dims(paths, tmp_path):
    _patch_header(paths["t2"], "<hhhh", 40, 3, -48, 52, 40)
    return paths["t2"], "dimensions [-48, 52, 40] are invalid"


def scaling_overflow(paths, tmp_path):
    array, affine = _array_affine(paths["t1ce"])
    image = nib.Nifti1Image(np.clip(array, 0, 30000).astype(np.int16), affine)
    image.header.set_slope_inter(1e38, 0.0)  # int16 * 1e38 overflows float32
    nib.save(image, str(paths["t1ce"]))
    return paths["t1ce"], "infinite"


def negative_spacing(paths, tmp_path):
    array, affine = _array_affine(paths["t1"])
    image = nib.Nifti1Image(array, None)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(None, code=0)
    image.header["pixdim"][2] = -2.0
    nib.save(image, str(paths["t1"]))
    return paths["t1"], "zero, negative or invalid"


def no_orientation(paths, tmp_path):
    array, affine = _array_affine(paths["t2"])
    image = nib.Nifti1Image(array, None)  # an Analyze-style header: voxel sizes only
    image.header.set_zooms((2.0, 2.0, 2.0))
    image.header.set_qform(None, code=0)
    image.header.set_sform(None, code=0)
    nib.save(image, str(paths["t2"]))
    stored = nib.load(str(paths["t2"])).header
    assert int(stored["qform_code"]) == 0 and int(stored["sform_code"]) == 0
    return paths["t2"], "no orientation"


def qform_sform_disagree(paths, tmp_path):
    array, affine = _array_affine(paths["flair"])
    moved = affine.copy()
    moved[:3, 3] += [0.0, 15.0, 0.0]
    image = nib.Nifti1Image(array, affine)
    image.set_sform(affine, code=1)
    image.set_qform(moved, code=1)
    nib.save(image, str(paths["flair"]))
    return paths["flair"], "qform and sform in the header disagree"


def nrrd_zero_spacing(paths, tmp_path):
    array, affine = _array_affine(paths["t1"])
    target = paths["t1"].with_name("case_t1.nrrd")
    directions = np.diag([-2.0, -2.0, 0.0])
    header = {"space": "left-posterior-superior", "space directions": directions}
    nrrd.write(str(target), array, header)
    paths["t1"].unlink()
    paths["t1"] = target
    return target, "zero, negative or degenerate"


BAD_INPUTS = [
    plain_nifti_named_gz,
    gzip_nifti_named_nii,
    nrrd_named_nifti,
    nifti_named_nrrd,
    truncated_uncompressed,
    constant_volume,
    huge_dims,
    huge_vox_offset,
    negative_dims,
    scaling_overflow,
    negative_spacing,
    no_orientation,
    qform_sform_disagree,
    nrrd_zero_spacing,
]


@pytest.mark.parametrize("breaker", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_is_one_clear_line(tmp_path, tiny_model, capsys, breaker):
    check_bad_input(breaker, tmp_path, tiny_model, capsys)


def test_small_qform_sform_rounding_is_accepted(tmp_path, tiny_model, capsys):
    """Quaternion rounding makes qform and sform differ by a hair: not an error."""
    paths = blob_case(tmp_path / "case")
    array, affine = _array_affine(paths["t2"])
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    nudged = affine.copy()
    nudged[:3, 3] += 0.01
    image.set_sform(nudged, code=1)
    nib.save(image, str(paths["t2"]))
    code, err = run_cli(case_args(paths, tmp_path / "out", tiny_model), capsys)
    assert code == 0, err


def test_corrupt_model_metadata(tmp_path, tiny_model, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "model.json").write_text('{"name": "broken", "channels": ["t1", ')
    paths = blob_case(tmp_path / "case")
    code, err = run_cli(case_args(paths, tmp_path / "out", model), capsys)
    assert code == 2 and "invalid model metadata" in err and str(model / "model.json") in err
    assert not (tmp_path / "out").exists()


# --- left-handed geometry: must work, with the right world positions ------------------------


@pytest.mark.parametrize("fmt", ["nifti-qform-and-sform", "nrrd"])
def test_left_handed_affine_segments_in_the_right_place(tmp_path, tiny_model, capsys, fmt):
    affine = make_affine((2.0, 2.0, 2.2), angles=(0.1, 0.0, -0.2), flips=(-1, 1, 1))
    assert np.linalg.det(affine[:3, :3]) < 0
    paths = blob_case(tmp_path / "case", affine)
    lesion_voxels = np.argwhere(_array_affine(paths["t1ce"])[0] >= 1999).mean(axis=0)
    lesion = apply_affine(affine, lesion_voxels[None])[0]
    for sequence, path in list(paths.items()):
        array, _ = _array_affine(path)
        if fmt == "nrrd":
            lps = np.diag([-1, -1, 1, 1]) @ affine
            target = path.with_name(f"case_{sequence}.nrrd")
            header = {
                "space": "left-posterior-superior",
                "space directions": lps[:3, :3].T,
                "space origin": lps[:3, 3],
            }
            nrrd.write(str(target), array, header)
            path.unlink()
            paths[sequence] = target
        else:
            image = nib.Nifti1Image(array, affine)
            image.set_qform(affine, code=1)  # stored with qfac = -1
            image.set_sform(affine, code=1)
            nib.save(image, str(path))
    code, err = run_cli(case_args(paths, tmp_path / "out", tiny_model), capsys)
    assert code == 0, err
    written = nib.load(str(tmp_path / "out" / "segmentation.nii.gz"))
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)
    found = np.argwhere(np.asarray(written.dataobj) > 0)
    assert len(found)
    centre = apply_affine(written.affine, found.mean(axis=0)[None])[0]
    assert np.linalg.norm(centre - lesion) < 1.5


# --- 4D stacks ------------------------------------------------------------------------------


def _write_stack(paths, target, order):
    arrays = [_array_affine(paths[s])[0] for s in order]
    target.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(target, np.stack(arrays, axis=-1), _array_affine(paths["t1"])[1])
    return target


def test_stack_gives_the_same_result_as_separate_files(tmp_path, tiny_model, capsys):
    paths = blob_case(tmp_path / "case")
    order = ["flair", "t1", "t1ce", "t2"]  # the Medical Decathlon's BRATS order
    stack = _write_stack(paths, tmp_path / "stack" / "BRATS_001.nii.gz", order)
    # NRRD keeps the sequence axis first, with kind "list".
    array, affine = _array_affine(stack)
    lps = np.diag([-1, -1, 1, 1]) @ affine
    nrrd_stack = tmp_path / "stack" / "BRATS_001.nrrd"
    header = {
        "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": [[np.nan] * 3, *lps[:3, :3].T],
        "space origin": lps[:3, 3],
    }
    nrrd.write(str(nrrd_stack), np.moveaxis(array, -1, 0), header)
    assert run_cli(case_args(paths, tmp_path / "files", tiny_model), capsys)[0] == 0
    base = ["segment", "--model", tiny_model, "--stack-order", ",".join(order)]
    code, err = run_cli(base + ["--stack", stack, "--output", tmp_path / "nii"], capsys)
    assert code == 0, err
    code, err = run_cli(base + ["--stack", nrrd_stack, "--output", tmp_path / "nrrd"], capsys)
    assert code == 0, err
    expected = np.asarray(nib.load(str(tmp_path / "files" / "segmentation.nii.gz")).dataobj)
    assert np.count_nonzero(expected)
    for name in ("nii", "nrrd"):
        got = nib.load(str(tmp_path / name / "segmentation.nii.gz"))
        np.testing.assert_array_equal(np.asarray(got.dataobj), expected)
        np.testing.assert_allclose(got.affine, affine, atol=1e-5)
    report = json.loads((tmp_path / "nii" / "report.json").read_text())
    assert {v["path"] for v in report["inputs"].values()} == {str(stack.resolve())}


def _stack_3_volumes(paths, tmp_path):
    stack = _write_stack(paths, tmp_path / "s.nii.gz", ["flair", "t1", "t1ce"])
    return ["--stack", stack, "--stack-order", "flair,t1,t1ce,t2"], stack, "holds 3 volumes"


def _stack_is_3d(paths, tmp_path):
    order = ["--stack-order", "flair,t1,t1ce,t2"]
    return ["--stack", paths["t1"], *order], paths["t1"], "not a 4D stack"


def _stack_without_order(paths, tmp_path):
    stack = _write_stack(paths, tmp_path / "s.nii.gz", ["flair", "t1", "t1ce", "t2"])
    return ["--stack", stack], stack, "--stack needs --stack-order"


def _stack_and_file_for_one_sequence(paths, tmp_path):
    stack = _write_stack(paths, tmp_path / "s.nii.gz", ["flair", "t1", "t1ce", "t2"])
    args = ["--stack", stack, "--stack-order", "flair,t1,t1ce,t2", "--t2", paths["t2"]]
    return args, stack, "T2 given both in the stack and as a file"


@pytest.mark.parametrize(
    "breaker",
    [_stack_3_volumes, _stack_is_3d, _stack_without_order, _stack_and_file_for_one_sequence],
    ids=lambda f: f.__name__.strip("_"),
)
def test_bad_stack(tmp_path, tiny_model, capsys, breaker):
    paths = blob_case(tmp_path / "case")
    args, culprit, problem = breaker(paths, tmp_path)
    before = digest(tmp_path / "case")
    out = tmp_path / "out"
    code, err = run_cli(["segment", "--model", tiny_model, "--output", out, *args], capsys)
    assert_clean_failure(code, err, culprit, problem, out, tmp_path / "case", before, tmp_path)


# --- memory guard ---------------------------------------------------------------------------


def _spec(**fields):
    return ModelSpec(name="m", size_multiple=16, **fields)


def test_memory_estimate_follows_the_calibration():
    spec = _spec(training={"config": {"network": {"filters": [8, 16, 32, 64, 128]}}})
    assert infer.base_filters(spec) == 8
    assert infer.base_filters(_spec()) == infer.DEFAULT_BASE_FILTERS
    # Measured: 488 MB above the baseline for 144x176x144 with base 8 (see troubleshooting).
    estimate = infer.estimate_memory_bytes((144, 176, 144), spec)
    assert 488e6 < estimate < 3 * 488e6
    # Activations grow with the voxels and the width.
    wide = _spec(training={"base_filters": 32})
    assert infer.estimate_memory_bytes((64, 64, 64), wide) > 3 * (
        infer.estimate_memory_bytes((64, 64, 64), spec) - infer.SESSION_OVERHEAD_BYTES
    )


def test_plan_inference_whole_windows_or_refusal():
    spec = _spec()
    shape = (160, 192, 160)
    whole, needed = infer.plan_inference(shape, spec, 64, available=int(100e9))
    assert whole == shape
    assert needed >= infer.estimate_memory_bytes(shape, spec)
    # Less memory available than the whole volume needs: windows that fit.
    available = int(1.0e9)
    patch, needed = infer.plan_inference(shape, spec, 64, available=available)
    assert np.prod(patch) < np.prod(shape)
    assert all(p % 16 == 0 for p in patch)
    assert needed <= available
    # Not even the smallest window fits: refuse, saying how much is needed.
    with pytest.raises(infer.MemoryLimitError, match=r"needs about \d+\.\d GB"):
        infer.plan_inference(shape, spec, 64, available=int(0.2e9))


def test_plan_inference_keeps_to_the_model_window_and_the_memory():
    spec = _spec()
    spec.inference_window = [96, 96, 96]
    big = int(100e9)
    assert infer.plan_inference((160, 192, 160), spec, 64, available=big)[0] == (96, 96, 96)
    # A volume smaller than the window along an axis is not padded up to it.
    assert infer.plan_inference((64, 192, 80), spec, 64, available=big)[0] == (64, 96, 80)
    assert infer.plan_inference((64, 48, 80), spec, 64, available=big)[0] == (64, 48, 80)
    # Short memory still shrinks the window below the model's.
    patch, _ = infer.plan_inference((160, 192, 160), spec, 64, available=int(0.7e9))
    assert np.prod(patch) < 96**3 and all(p % 16 == 0 for p in patch)


def test_available_memory_is_read_from_the_system():
    available = infer.available_memory_bytes()
    assert available is not None and 10e6 < available < 1e15
    with open("/proc/meminfo") as handle:
        total = int(next(line for line in handle if line.startswith("MemTotal")).split()[1])
    assert available <= total * 1024


def test_run_refused_when_memory_is_short(tmp_path, tiny_model, capsys, monkeypatch):
    paths = blob_case(tmp_path / "case")
    monkeypatch.setattr(infer, "available_memory_bytes", lambda: int(120e6))
    code, err = run_cli(case_args(paths, tmp_path / "out", tiny_model), capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "GB of memory" in err, err
    assert not (tmp_path / "out").exists()


def test_short_memory_switches_to_windows_with_the_same_result(tmp_path, tiny_model, monkeypatch):
    from BrainTumorSegLib import segment
    from BrainTumorSegLib.progress import Progress

    paths = blob_case(tmp_path / "case")
    whole = segment(paths, None, model=tiny_model, overlay=False)
    messages = []
    progress = Progress("callback", callback=lambda stage, f, m: messages.append(m))
    # Enough for the images and a window of about 32^3, not for the whole working volume.
    monkeypatch.setattr(infer, "available_memory_bytes", lambda: int(260e6))
    windowed = segment(paths, None, model=tiny_model, overlay=False, progress=progress)
    assert any("windows of" in m for m in messages), messages[-5:]
    agree = np.mean(windowed.classes == whole.classes)
    assert agree > 0.995
    assert np.count_nonzero(windowed.classes) > 0


# --- interruption ---------------------------------------------------------------------------


def test_ctrl_c_while_writing_leaves_nothing(tmp_path, tiny_model, capsys, monkeypatch):
    from BrainTumorSegLib import write

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(write, "write_seg_nrrd", interrupted)
    monkeypatch.setattr("BrainTumorSegLib.pipeline.write_seg_nrrd", interrupted)
    paths = blob_case(tmp_path / "case")
    before = digest(tmp_path / "case")
    code, err = run_cli(case_args(paths, tmp_path / "out", tiny_model), capsys)
    assert code == 130 and "interrupted; nothing was written" in err
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob(f"{STAGING_PREFIX}*"))
    assert digest(tmp_path / "case") == before


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_staging_of_dead_processes_is_removed(tmp_path, tiny_model, capsys):
    """A SIGKILLed run cannot clean up; the next run removes what dead processes left."""
    paths = blob_case(tmp_path / "case")
    dead = tmp_path / f"{STAGING_PREFIX}{_dead_pid()}-{host_tag()}-abcd1234"
    dead.mkdir()
    (dead / "segmentation.nii.gz").write_bytes(b"partial")
    dead_file = tmp_path / f"{STAGING_PREFIX}{_dead_pid()}-{host_tag()}-status.csv"
    dead_file.write_text("partial")
    alive = tmp_path / f"{STAGING_PREFIX}{os.getppid()}-{host_tag()}-abcd1234"
    alive.mkdir()  # a run still in progress (its process is alive): left alone
    other_host = tmp_path / f"{STAGING_PREFIX}{_dead_pid()}-elsewhere-abcd1234"
    other_host.mkdir()  # on a shared disk, another machine's pids mean nothing here
    code, err = run_cli(case_args(paths, tmp_path / "out", tiny_model), capsys)
    assert code == 0, err
    assert not dead.exists() and not dead_file.exists()
    assert alive.exists() and other_host.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "overlay.png",
        "report.json",
        "segmentation.nii.gz",
        "segmentation.seg.nrrd",
    ]


def test_rerun_into_existing_output_replaces_it_completely(tmp_path, tiny_model, capsys):
    paths = blob_case(tmp_path / "case")
    out = tmp_path / "out"
    assert run_cli(case_args(paths, out, tiny_model) + ["--no-overlay"], capsys)[0] == 0
    first = json.loads((out / "report.json").read_text())
    assert run_cli(case_args(paths, out, tiny_model) + ["--labels", "brats2023"], capsys)[0] == 0
    second = json.loads((out / "report.json").read_text())
    assert first["label_convention"] == "brats2018" and second["label_convention"] == "brats2023"
    assert (out / "overlay.png").exists()
    assert not list(tmp_path.glob(f"{STAGING_PREFIX}*"))


def test_new_output_folder_gets_normal_permissions(tmp_path, tiny_model, capsys):
    paths = blob_case(tmp_path / "case")
    old = os.umask(0o022)
    try:
        assert run_cli(case_args(paths, tmp_path / "out", tiny_model), capsys)[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
