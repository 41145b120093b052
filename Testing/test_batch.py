"""``braintumorseg batch``: every case, status CSV, resumable, and robust to SIGKILL."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
from conftest import ROOT, blob_case

from BrainTumorSegLib.batch import STATUS_CSV, is_done, segment_options
from BrainTumorSegLib.cli import build_parser, main
from BrainTumorSegLib.write import STAGING_PREFIX

OUTPUTS = ["report.json", "segmentation.nii.gz", "segmentation.seg.nrrd"]


def make_cases(folder, names=("case_a", "case_b", "case_c")):
    for n, name in enumerate(names):
        blob_case(folder / name, centre=(28 - 2 * n, 22 + n, 18))
    return folder


def read_status(out):
    with open(out / STATUS_CSV, newline="") as handle:
        return {row["case"]: row for row in csv.DictReader(handle)}


def test_batch_goes_on_past_failures_and_resumes(tmp_path, tiny_model, capsys):
    cases = make_cases(tmp_path / "in", ("case_a", "case_b"))
    (cases / "broken").mkdir()
    (cases / "broken" / "x_t1.nii.gz").write_bytes(b"only a T1, and not even an image")
    (cases / "notes").mkdir()  # no image files: not a case
    (cases / "notes" / "readme.txt").write_text("hello")
    (cases / ".cache").mkdir()  # hidden: not a case
    out = tmp_path / "out"
    args = ["batch", cases, "--output", out, "--model", tiny_model, "--jobs", "2"]
    args += ["--labels", "brats2023", "--no-overlay"]  # passed on to every case
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 1, err  # a case failed
    status = read_status(out)
    assert sorted(status) == ["broken", "case_a", "case_b"]
    assert status["case_a"]["status"] == status["case_b"]["status"] == "ok"
    assert status["broken"]["status"] == "error"
    assert "no file found for T1ce, T2, FLAIR" in status["broken"]["message"]
    assert str(cases / "broken") in status["broken"]["message"]
    for name in ("case_a", "case_b"):
        assert sorted(p.name for p in (out / name).iterdir()) == OUTPUTS
        report = json.loads((out / name / "report.json").read_text())
        assert report["label_convention"] == "brats2023"
    assert not (out / "broken").exists()
    assert "[3/3]" in err
    assert not list(out.glob(f"{STAGING_PREFIX}*"))

    # Fixing the broken case and rerunning does only that case.
    blob_case(cases / "broken")
    (cases / "broken" / "x_t1.nii.gz").unlink()
    before = {n: (out / n / "report.json").stat().st_mtime_ns for n in ("case_a", "case_b")}
    assert main([str(a) for a in args]) == 0
    status = read_status(out)
    assert status["case_a"]["status"] == status["case_b"]["status"] == "skipped"
    assert status["broken"]["status"] == "ok"
    assert before == {n: (out / n / "report.json").stat().st_mtime_ns for n in before}


def test_worker_warnings_of_a_finished_case_are_in_the_status(tmp_path, tiny_model):
    from test_pipeline import two_lesion_case

    cases = tmp_path / "in"
    two_lesion_case(cases / "two")
    make_cases(cases, ("one",))
    out = tmp_path / "out"
    args = ["batch", cases, "--output", out, "--model", tiny_model, "--components", "largest"]
    assert main([str(a) for a in args + ["--no-overlay", "--quiet"]]) == 0
    status = read_status(out)
    assert status["two"]["status"] == "ok"
    assert "removed 1 other component" in status["two"]["message"]
    assert status["one"]["status"] == "ok" and status["one"]["message"] == ""


def test_incomplete_output_is_not_done(tmp_path):
    folder = tmp_path / "case"
    folder.mkdir()
    assert not is_done(folder)
    outputs = {k: str(folder / n) for k, n in zip(("r", "s", "n"), OUTPUTS)}
    (folder / "report.json").write_text(json.dumps({"outputs": outputs}))
    (folder / "segmentation.nii.gz").write_bytes(b"x")
    assert not is_done(folder)  # the .seg.nrrd is missing
    (folder / "segmentation.seg.nrrd").write_bytes(b"x")
    assert is_done(folder)
    (folder / "report.json").write_text("{ truncated")
    assert not is_done(folder)


def test_segment_options_are_passed_on(tmp_path):
    args = build_parser().parse_args(
        ["batch", "in", "-o", "out", "--model", "m", "--channels", "flair,t1ce,t2", "--tta"]
        + ["--threads", "3", "--min-component-ml", "0.5", "--reference", "flair"]
    )
    argv = segment_options(args)
    assert argv[argv.index("--model") + 1] == str((tmp_path.cwd() / "m").resolve())
    assert argv[argv.index("--channels") + 1] == "flair,t1ce,t2"
    assert argv[argv.index("--threads") + 1] == "3"
    assert argv[argv.index("--min-component-ml") + 1] == "0.5"
    assert argv[argv.index("--reference") + 1] == "flair"
    assert "--tta" in argv
    # Defaults are left to the worker.
    assert "--labels" not in argv and "--bias-correction" not in argv
    # Every option given to batch parses as a segment option.
    parsed = build_parser().parse_args(["segment", "-o", "x", *argv])
    assert parsed.tta and parsed.threads == 3 and parsed.reference == "flair"
    # A switch against the model's default is passed on too; no switch leaves it to the model.
    off = segment_options(build_parser().parse_args(["batch", "in", "-o", "out", "--no-tta"]))
    assert off == ["--no-tta"]
    assert build_parser().parse_args(["segment", "-o", "x", *off]).tta is False
    assert segment_options(build_parser().parse_args(["batch", "in", "-o", "out"])) == []
    # --window whole is 0 inside; the worker must read it back as the whole volume.
    for given, passed in (("whole", 0), ("96", 96)):
        argv = segment_options(
            build_parser().parse_args(["batch", "in", "-o", "o", "--window", given])
        )
        assert build_parser().parse_args(["segment", "-o", "x", *argv]).window == passed


@pytest.mark.parametrize("problem", ["same folder", "missing input", "no cases", "jobs"])
def test_batch_level_bad_input(tmp_path, tiny_model, capsys, problem):
    cases = tmp_path / "in"
    cases.mkdir()
    args = ["batch", cases, "--output", tmp_path / "out", "--model", tiny_model]
    expected = {
        "same folder": "output folder is the input folder",
        "missing input": "input folder not found",
        "no cases": "no case folders",
        "jobs": "--jobs must be at least 1",
    }[problem]
    if problem == "same folder":
        args[3] = cases
    elif problem == "missing input":
        args[1] = tmp_path / "nowhere"
    elif problem == "jobs":
        make_cases(cases, ("a",))
        args += ["--jobs", "0"]
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def _batch_command(cases, out, model):
    return [sys.executable, "-m", "BrainTumorSegLib", "batch", str(cases), "--output", str(out)] + [
        "--model",
        str(model),
        "--quiet",
    ]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT / "BrainTumorSeg")}


def _comparable(report):
    """A report without what legitimately differs between two runs."""
    report = dict(report)
    for key in ("created", "timings_s", "outputs"):
        report.pop(key, None)
    return report


@pytest.mark.skipif(not hasattr(os, "killpg"), reason="needs POSIX process groups")
def test_sigkill_midway_then_rerun_equals_a_clean_run(tmp_path, tiny_model):
    """Fault injection: SIGKILL the whole batch (parent and workers) in the middle of a run,
    run it again, and get exactly what an uninterrupted run produces."""
    cases = make_cases(tmp_path / "in")
    clean = tmp_path / "clean"
    done = subprocess.run(_batch_command(cases, clean, tiny_model), env=_env(), cwd=ROOT)
    assert done.returncode == 0

    out = tmp_path / "out"
    process = subprocess.Popen(
        _batch_command(cases, out, tiny_model), env=_env(), cwd=ROOT, start_new_session=True
    )
    # Kill while a worker is writing (a staging folder exists) if we catch that moment,
    # else as soon as the first case is finished.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        entries = [p for p in out.iterdir() if p.is_dir()] if out.exists() else []
        if any(p.name.startswith(STAGING_PREFIX) for p in entries) or any(map(is_done, entries)):
            break
        time.sleep(0.005)
    assert process.poll() is None, "the batch finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(0.2)  # let the kernel reap the workers
    # Whatever is there is complete: no partial case folders.
    present = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert len(present) < 3
    assert all(is_done(p) for p in present)

    rerun = subprocess.run(_batch_command(cases, out, tiny_model), env=_env(), cwd=ROOT)
    assert rerun.returncode == 0
    assert not list(out.glob(f"{STAGING_PREFIX}*"))
    status = read_status(out)
    assert {row["status"] for row in status.values()} <= {"ok", "skipped"}
    assert sum(row["status"] == "skipped" for row in status.values()) == len(present)
    for name in ("case_a", "case_b", "case_c"):
        assert sorted(p.name for p in (out / name).iterdir()) == sorted([*OUTPUTS, "overlay.png"])
        a = nib.load(str(clean / name / "segmentation.nii.gz"))
        b = nib.load(str(out / name / "segmentation.nii.gz"))
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        np.testing.assert_array_equal(a.affine, b.affine)
        assert np.count_nonzero(np.asarray(b.dataobj))
        ra = json.loads((clean / name / "report.json").read_text())
        rb = json.loads((out / name / "report.json").read_text())
        assert _comparable(ra) == _comparable(rb)
        assert set(ra["timings_s"]) == set(rb["timings_s"])
