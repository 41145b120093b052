"""Every bad input: one line on stderr naming the file and problem, exit code 2, nothing written."""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, blob_case, write_nifti

from BrainTumorSegLib.cli import main
from BrainTumorSegLib.write import STAGING_PREFIX


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def case_args(paths, out, model):
    args = ["segment", "--output", out, "--model", model]
    for sequence, path in paths.items():
        args += [f"--{sequence}", path]
    return args


def corrupt_gzip(paths, tmp_path):
    data = paths["t2"].read_bytes()
    paths["t2"].write_bytes(data[: len(data) // 2])
    return paths["t2"], "cannot read image"


def not_gzip_at_all(paths, tmp_path):
    paths["flair"].write_bytes(b"this is not an image at all" * 10)
    return paths["flair"], "cannot read image"


def wrong_extension(paths, tmp_path):
    target = paths["t1"].with_name("case_t1.png")
    shutil.copy(paths["t1"], target)
    paths["t1"] = target
    return target, "unsupported file type"


def image_2d(paths, tmp_path):
    write_nifti(paths["t1"], np.ones((20, 20), np.float32), np.eye(4))
    return paths["t1"], "2D"


def image_4d(paths, tmp_path):
    write_nifti(paths["t1"], np.ones((10, 10, 10, 4), np.float32), np.eye(4))
    return paths["t1"], "4D"


def rewrite_data(path, change):
    """Rewrite an image file with ``change(data)`` applied to its voxels (same affine)."""
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asarray(image.dataobj, dtype=np.float32).copy()
    write_nifti(path, change(data), image.affine)


def nan_values(paths, tmp_path):
    rewrite_data(paths["t2"], lambda d: np.where(np.indices(d.shape)[0] == 3, np.nan, d))
    return paths["t2"], "NaN"


def inf_values(paths, tmp_path):
    rewrite_data(paths["t1ce"], lambda d: np.where(d > 1999, np.inf, d))
    return paths["t1ce"], "infinite"


def all_zero(paths, tmp_path):
    rewrite_data(paths["flair"], np.zeros_like)
    return paths["flair"], "all zero"


def no_overlap(paths, tmp_path):
    import nibabel as nib

    image = nib.load(str(paths["t2"]))
    affine = image.affine.copy()
    affine[:3, 3] += 500.0
    write_nifti(paths["t2"], np.asarray(image.dataobj), affine)
    return paths["t2"], "do not overlap"


def zero_spacing(paths, tmp_path):
    import nibabel as nib

    image = nib.load(str(paths["t1"]))
    broken = nib.Nifti1Image(np.asarray(image.dataobj), None)
    broken.header.set_sform(None, code=0)
    broken.header.set_qform(image.affine, code=1)
    broken.header["pixdim"][3] = 0.0  # slice thickness zero in the header
    nib.save(broken, str(paths["t1"]))
    return paths["t1"], "spacing"


def missing_file(paths, tmp_path):
    paths["t1"].unlink()
    return paths["t1"], "file not found"


def same_file_twice(paths, tmp_path):
    paths["t2"] = paths["t1"]
    return paths["t1"], "given for both T1 and T2"


def label_map_as_image(paths, tmp_path):
    import nibabel as nib

    image = nib.load(str(paths["flair"]))
    labels = (np.asarray(image.dataobj) > 1000).astype(np.float32) * 2
    write_nifti(paths["flair"], labels, image.affine)
    return paths["flair"], "label map"


BAD_INPUTS = [
    corrupt_gzip,
    not_gzip_at_all,
    wrong_extension,
    image_2d,
    image_4d,
    nan_values,
    inf_values,
    all_zero,
    no_overlap,
    zero_spacing,
    missing_file,
    same_file_twice,
    label_map_as_image,
]


def assert_clean_failure(code, err, culprit, problem, out, case_dir, before, tmp_path):
    """Exit 2, one stderr line naming the file and problem, nothing written, inputs untouched."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert str(culprit) in lines[0]
    assert problem in lines[0], lines[0]
    assert not out.exists()
    assert not list(tmp_path.rglob(f"{STAGING_PREFIX}*"))
    assert digest(case_dir) == before


def check_bad_input(breaker, tmp_path, tiny_model, capsys):
    """Break a synthetic case with ``breaker`` and check the CLI fails cleanly on it."""
    paths = blob_case(tmp_path / "case")
    culprit, problem = breaker(paths, tmp_path)
    before = digest(tmp_path / "case")
    out = tmp_path / "out"
    code, err = run_cli(case_args(paths, out, tiny_model), capsys)
    assert_clean_failure(code, err, culprit, problem, out, tmp_path / "case", before, tmp_path)


@pytest.mark.parametrize("breaker", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_is_one_clear_line(tmp_path, tiny_model, capsys, breaker):
    check_bad_input(breaker, tmp_path, tiny_model, capsys)


def test_model_with_wrong_channel_count(tmp_path, capsys):
    from tiny_model import build_tiny_package

    model = build_tiny_package(tmp_path / "m3", channels=["t1", "t1ce", "t2"])
    meta = (model / "model.json").read_text().replace('"t2"]', '"t2", "flair"]')
    (model / "model.json").write_text(meta)
    paths = blob_case(tmp_path / "case")
    code, err = run_cli(case_args(paths, tmp_path / "out", model), capsys)
    assert code == 2
    assert "takes 3 input channels but 4 sequences" in err
    assert str(model / "model.onnx") in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("suffix", [".onnx", ".h5", ".keras"])
def test_model_file_that_is_not_a_model(tmp_path, capsys, suffix):
    fake = tmp_path / f"model{suffix}"
    fake.write_bytes(os.urandom(2048))
    paths = blob_case(tmp_path / "case")
    args = case_args(paths, tmp_path / "out", fake) + ["--channels", "t1,t1ce,t2,flair"]
    code, err = run_cli(args, capsys)
    assert code == 2
    assert str(fake) in err and "not a" in err
    assert not (tmp_path / "out").exists()


def test_bare_model_file_needs_channels(tmp_path, tiny_model, capsys):
    bare = tmp_path / "bare.onnx"
    shutil.copy(tiny_model / "model.onnx", bare)
    paths = blob_case(tmp_path / "case")
    code, err = run_cli(case_args(paths, tmp_path / "out", bare), capsys)
    assert code == 2 and "--channels" in err


def test_output_that_is_a_file(tmp_path, tiny_model, capsys):
    paths = blob_case(tmp_path / "case")
    target = tmp_path / "out.txt"
    target.write_text("keep me")
    code, err = run_cli(case_args(paths, target, tiny_model), capsys)
    assert code == 2 and "not a folder" in err and str(target) in err
    assert target.read_text() == "keep me"


def test_output_that_is_the_input_folder(tmp_path, tiny_model, capsys):
    paths = blob_case(tmp_path / "case")
    before = digest(tmp_path / "case")
    code, err = run_cli(case_args(paths, tmp_path / "case", tiny_model), capsys)
    assert code == 2 and "folder of the input images" in err
    assert digest(tmp_path / "case") == before


def test_output_folder_not_writable_as_seen_by_os_access(tmp_path, tiny_model, capsys, monkeypatch):
    """Root ignores permission bits, so the check itself is exercised through os.access."""
    paths = blob_case(tmp_path / "case")
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if "locked" in str(p) else real_access(p, mode)
    )
    (tmp_path / "locked").mkdir()
    code, err = run_cli(case_args(paths, tmp_path / "locked" / "out", tiny_model), capsys)
    assert code == 2 and "not writable" in err and "locked" in err
    assert not (tmp_path / "locked" / "out").exists()


def test_python_dash_m_reports_errors_as_json_and_exit_code(tmp_path, tiny_model):
    paths = blob_case(tmp_path / "case")
    paths["t1"].unlink()
    args = [sys.executable, "-m", "BrainTumorSegLib"] + [
        str(a) for a in case_args(paths, tmp_path / "o", tiny_model)
    ]
    proc = subprocess.run(
        args + ["--progress-json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "BrainTumorSeg")},
    )
    assert proc.returncode == 2
    import json

    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["stage"] == "error" and "file not found" in last["message"]
    assert proc.stderr.strip().startswith("error: ")


def test_gzip_module_detects_our_truncation():
    """Guard for the corrupt-gzip case above: truncation must really break decompression."""
    data = gzip.compress(os.urandom(10000))
    with pytest.raises((EOFError, OSError)):
        gzip.decompress(data[: len(data) // 2])


def test_components_option_reaches_the_report(tmp_path, tiny_model, capsys):
    paths = blob_case(tmp_path / "case")
    out = tmp_path / "out"
    code, err = run_cli([*case_args(paths, out, tiny_model), "--components", "largest"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["keep_largest_component"] is True
    with pytest.raises(SystemExit) as bad:
        main([*map(str, case_args(paths, tmp_path / "x", tiny_model)), "--components", "one"])
    assert bad.value.code == 2 and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as both:
        main([*map(str, case_args(paths, tmp_path / "y", tiny_model)), "--tta", "--no-tta"])
    assert both.value.code == 2 and not (tmp_path / "y").exists()


def test_bad_window_is_refused_before_any_output(tmp_path, tiny_model, capsys):
    paths = blob_case(tmp_path / "case")
    args = case_args(paths, tmp_path / "out", tiny_model)
    code, err = run_cli([*args, "--window", "20"], capsys)  # not a multiple of the model's 8
    assert code == 2 and "--window 20 does not suit model" in err, err
    with pytest.raises(SystemExit) as exit_info:  # refused by the option parser itself
        run_cli([*args, "--window", "big"], capsys)
    assert exit_info.value.code == 2
    assert "expected 'whole' or a window size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
