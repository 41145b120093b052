"""Slicer-free helpers of the Slicer module (BrainTumorSegLib/slicer_glue.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from BrainTumorSegLib import labels, slicer_glue
from BrainTumorSegLib.load import match_sequence
from BrainTumorSegLib.slicer_glue import ModelChoice, ProgressEvent

DOUBLE = Path(__file__).with_name("slicer_double.py")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("BraTS19_2013_2_1_t1", "t1"),
        ("BraTS19_2013_2_1_t1ce", "t1ce"),
        ("BraTS19_2013_2_1_t2", "t2"),
        ("BraTS19_2013_2_1_flair", "flair"),
        ("Brats18_CBICA_AAB_1_T1CE", "t1ce"),
        ("BraTS2021_00000_t1ce", "t1ce"),
        ("BraTS-GLI-00000-000-t1n", "t1"),
        ("BraTS-GLI-00000-000-t1c", "t1ce"),
        ("BraTS-GLI-00000-000-t2w", "t2"),
        ("BraTS-GLI-00000-000-t2f", "flair"),
        ("T1Gd", "t1ce"),
        ("t1_post", "t1ce"),
        ("T1 gad", "t1ce"),
        ("T2-FLAIR", "flair"),
        ("patient7 T2W", "t2"),
        ("BraTS19_2013_2_1_seg", None),
        ("MRHead", None),
    ],
)
def test_volume_names_map_to_sequences(name: str, expected: str | None) -> None:
    assert slicer_glue.sequence_of_volume(name) == expected
    # The panel and the CLI's folder scan must agree on every name.
    assert slicer_glue.sequence_of_volume(name) == match_sequence(name)


def test_guess_inputs_takes_first_match_per_sequence_and_skips_unknown() -> None:
    names = ["MRHead", "c_t1ce", "c_t1", "c_t2f", "c_t2", "other_t1"]
    assert slicer_glue.guess_inputs(names) == {"t1ce": 1, "t1": 2, "flair": 3, "t2": 4}


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ({"t1": "a", "t1ce": "b", "t2": "c", "flair": "d"}, None),
        ({"t1": "a", "t1ce": None, "t2": "c", "flair": "d"}, "Select the T1ce volume."),
        ({"t1": None, "t1ce": None, "t2": "c", "flair": "d"}, "Select the T1, T1ce volumes."),
        ({"t1": "a", "t1ce": "b", "t2": "a", "flair": "d"}, "'A' is selected as both T1 and T2"),
    ],
)
def test_selection_problem(selection: dict, expected: str | None) -> None:
    problem = slicer_glue.selection_problem(selection, {"a": "A"})
    if expected is None:
        assert problem is None
    else:
        assert expected in problem


def test_worker_command_lists_every_option() -> None:
    inputs = {s: Path(f"/in/{s}.nii.gz") for s in ("t1", "t1ce", "t2", "flair")}
    model = ModelChoice(path="/m/seed.h5", label="seed", channels=("flair", "t1ce", "t2"))
    command = slicer_glue.worker_command(
        ["PythonSlicer", "-m", "BrainTumorSegLib"], inputs, "/out",
        model=model, bias_correction="off", tta="on", threads=3,
    )  # fmt: skip
    assert command[:4] == ["PythonSlicer", "-m", "BrainTumorSegLib", "segment"]
    pairs = dict(zip(command[4::1], command[5::1]))
    assert pairs["--t1ce"] == "/in/t1ce.nii.gz" and pairs["--flair"] == "/in/flair.nii.gz"
    assert pairs["--output"] == "/out"
    assert pairs["--labels"] == slicer_glue.WORKER_LABEL_CONVENTION
    assert pairs["--bias-correction"] == "off"
    assert pairs["--model"] == "/m/seed.h5"
    assert pairs["--channels"] == "flair,t1ce,t2"
    assert pairs["--threads"] == "3"
    assert {"--tta", "--progress-json", "--no-overlay"} <= set(command)
    assert "--components" not in command  # "model": the model's own setting
    assert "--no-tta" in slicer_glue.worker_command(["py"], inputs, "/out", tta="off")
    with pytest.raises(ValueError, match="tta"):
        slicer_glue.worker_command(["py"], inputs, "/out", tta=True)
    largest = slicer_glue.worker_command(["py"], inputs, "/out", components="largest")
    assert largest[largest.index("--components") + 1] == "largest"
    with pytest.raises(ValueError, match="components"):
        slicer_glue.worker_command(["py"], inputs, "/out", components="some")


def test_report_warnings_are_read_defensively() -> None:
    assert slicer_glue.report_warnings({"warnings": ["a", "b"]}) == ["a", "b"]
    assert slicer_glue.report_warnings(None) == []
    assert slicer_glue.report_warnings({"warnings": "not a list"}) == []


def test_worker_command_defaults_and_validation() -> None:
    inputs = {s: f"{s}.nrrd" for s in ("t1", "t1ce", "t2", "flair")}
    command = slicer_glue.worker_command(["py"], inputs, "out")
    assert "--tta" not in command and "--no-tta" not in command  # the model's own setting
    assert "--threads" not in command and "--model" not in command
    with pytest.raises(ValueError, match="bias_correction"):
        slicer_glue.worker_command(["py"], inputs, "out", bias_correction="maybe")
    with pytest.raises(ValueError, match="missing inputs: flair"):
        slicer_glue.worker_command(["py"], {k: v for k, v in inputs.items() if k != "flair"}, "o")


def test_worker_label_values_are_class_indices() -> None:
    # The module reads label value v as class index v; that holds only for this convention.
    values = labels.CONVENTIONS[slicer_glue.WORKER_LABEL_CONVENTION]
    assert all(values[label.key] == label.index for label in labels.LABELS)


def test_worker_environment_puts_library_first_and_unbuffers() -> None:
    env = slicer_glue.worker_environment({"PYTHONPATH": "/x", "HOME": "/h"}, "/lib")
    assert env["PYTHONPATH"] == os.pathsep.join(["/lib", "/x"])
    assert env["PYTHONUNBUFFERED"] == "1" and env["HOME"] == "/h"
    assert slicer_glue.worker_environment({}, "/lib")["PYTHONPATH"] == "/lib"
    assert (slicer_glue.library_parent() / "BrainTumorSegLib" / "slicer_glue.py").is_file()


@pytest.mark.parametrize(
    ("line", "stage", "fraction", "message"),
    [
        ('{"stage": "infer", "fraction": 0.5, "message": "Running"}\n', "infer", 0.5, "Running"),
        ('{"stage": "infer", "fraction": 1.7, "message": ""}', "infer", 1.0, ""),
        ('{"stage": "load", "fraction": "x"}', "load", None, ""),
        ('{"stage": "error", "fraction": 1, "message": "t2: bad"}', "error", 1.0, "t2: bad"),
        ("WARNING: something\n", "log", None, "WARNING: something"),
        ('{"not": "progress"}', "log", None, '{"not": "progress"}'),
        ("{broken json", "log", None, "{broken json"),
    ],
)
def test_parse_progress_line(line: str, stage: str, fraction, message: str) -> None:
    event = slicer_glue.parse_progress_line(line)
    assert (event.stage, event.fraction, event.message) == (stage, fraction, message)


def test_parse_done_line_keeps_outputs() -> None:
    event = slicer_glue.parse_progress_line(
        json.dumps(
            {
                "stage": "done",
                "fraction": 1.0,
                "message": "ok",
                "outputs": {"segmentation": "/o/s.nii.gz"},
            }
        )  # fmt: skip
    )
    assert event.is_done and event.outputs == {"segmentation": "/o/s.nii.gz"}
    assert slicer_glue.result_segmentation_path("/o", event) == Path("/o/s.nii.gz")
    assert slicer_glue.result_segmentation_path("/o", None) == Path("/o/segmentation.nii.gz")


def test_failure_message_prefers_error_event_and_never_shows_traceback() -> None:
    error = ProgressEvent("error", "t1: file not found", 1.0)
    assert slicer_glue.failure_message(2, error, ["Traceback ..."]) == "t1: file not found"
    crash = ["Traceback (most recent call last):", '  File "x"', "MemoryError: out", ""]
    message = slicer_glue.failure_message(1, None, crash)
    assert message == "The segmentation worker failed (exit code 1): MemoryError: out"
    assert "Traceback" not in message
    assert slicer_glue.failure_message(2, None, ["error: t2: bad"]).endswith(": t2: bad")


def test_segment_specs_come_from_labels() -> None:
    specs = slicer_glue.segment_specs()
    assert [s.name for s in specs] == [label.name for label in labels.LABELS]
    assert [s.color for s in specs] == [label.color for label in labels.LABELS]
    assert [s.terminology for s in specs] == [labels.terminology_entry(x) for x in labels.LABELS]
    assert "SCT^6574001^Necrosis" in specs[0].terminology
    assert [s.label_value for s in specs] == [1, 2, 3]


def test_volume_rows_from_report_fill_missing_regions() -> None:
    report = {"volumes_ml": {"NCR": 1.0, "ED": 10.0, "ET": 2.5}, "regions_ml": {"WT": 99.0}}
    rows = [(r.key, r.volume_ml) for r in slicer_glue.volume_rows(report)]
    assert rows == [("NCR", 1.0), ("ED", 10.0), ("ET", 2.5), ("ET", 2.5), ("TC", 3.5), ("WT", 99.0)]
    names = [r.name for r in slicer_glue.volume_rows(report)]
    assert names[3:] == [labels.REGION_NAMES[r] for r in ("ET", "TC", "WT")]


def test_volume_rows_computed_from_label_counts() -> None:
    rows = slicer_glue.volume_rows(None, {0: 1000, 1: 4, 2: 10, 3: 6}, voxel_volume_ml=0.5)
    assert [(r.key, r.volume_ml) for r in rows] == [
        ("NCR", 2.0), ("ED", 5.0), ("ET", 3.0), ("ET", 3.0), ("TC", 5.0), ("WT", 10.0),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no volumes"):
        slicer_glue.volume_rows({}, None, None)


def _model_package(folder: Path, name: str = "unet", version: str = "2") -> Path:
    folder.mkdir(parents=True)
    (folder / "model.json").write_text(json.dumps({"name": name, "version": version}))
    return folder


def test_model_choices_from_folders_and_files(tmp_path: Path) -> None:
    package = _model_package(tmp_path / "Models" / "unet")
    (tmp_path / "Models" / "empty").mkdir()
    bundled = slicer_glue.bundled_model_choices(tmp_path / "Models")
    assert [(m.label, m.bundled) for m in bundled] == [("unet 2", True)]
    assert slicer_glue.model_from_user_path(package / "model.json").path == str(package)

    keras = tmp_path / "net.keras"
    keras.write_bytes(b"k")
    assert slicer_glue.model_from_user_path(keras).needs_tensorflow
    seed = tmp_path / "seed.h5"
    seed.write_bytes(b"h")
    with pytest.raises(ValueError, match="channel order"):
        slicer_glue.model_from_user_path(seed)
    choice = slicer_glue.model_from_user_path(seed, ["FLAIR", " t1ce", "t2"])
    assert choice.channels == ("flair", "t1ce", "t2")
    with pytest.raises(ValueError, match="distinct"):
        slicer_glue.model_from_user_path(seed, ["t1", "t1"])
    other = tmp_path / "weights.pt"
    other.write_bytes(b"p")
    with pytest.raises(ValueError, match="choose a model folder"):
        slicer_glue.model_from_user_path(other)
    with pytest.raises(ValueError, match="not found"):
        slicer_glue.model_from_user_path(tmp_path / "gone.keras")


def test_user_models_round_trip_and_drop_vanished(tmp_path: Path) -> None:
    seed = tmp_path / "seed.h5"
    seed.write_bytes(b"h")
    package = _model_package(tmp_path / "pkg")
    models = [slicer_glue.model_from_user_path(seed, ["t1", "t2"]),
              slicer_glue.model_from_user_path(package)]  # fmt: skip
    text = slicer_glue.encode_user_models(models)
    assert slicer_glue.decode_user_models(text) == models
    seed.unlink()
    assert [m.path for m in slicer_glue.decode_user_models(text)] == [str(package)]
    assert slicer_glue.decode_user_models("not json") == []
    assert slicer_glue.decode_user_models(None) == []


def test_missing_requirements_accepts_simpleitk_for_bias_correction() -> None:
    have = {"onnxruntime", "SimpleITK"}
    missing = slicer_glue.missing_requirements(have.__contains__)
    assert [r.pip_name for r in missing] == ["nibabel", "pynrrd"]
    none = slicer_glue.missing_requirements(lambda name: False, keras_model=True)
    assert [r.pip_name for r in none] == ["onnxruntime", "nibabel", "pynrrd", "antspyx",
                                          "tensorflow"]  # fmt: skip


def test_pip_arguments_protect_bundled_packages() -> None:
    missing = slicer_glue.missing_requirements(lambda name: False)
    calls = slicer_glue.pip_install_arguments(missing, "/tmp/c.txt")
    assert calls == ['onnxruntime nibabel pynrrd -c "/tmp/c.txt"', "antspyx --no-deps"]
    text = slicer_glue.constraints_text({"numpy": "2.3.1", "scipy": "1.17.0"}, ["numpy", "scipy",
                                                                               "vtk"])  # fmt: skip
    assert text == "numpy==2.3.1\nscipy==1.17.0\n"


def test_is_importable_does_not_import() -> None:
    sys.modules.pop("this_module_does_not_exist", None)
    assert not slicer_glue.is_importable("this_module_does_not_exist")
    assert slicer_glue.is_importable("json")


# --- The worker as a real child process ----------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return False
    state = next(line for line in status.read_text().splitlines() if line.startswith("State:"))
    return "zombie" not in state


@pytest.mark.skipif(os.name == "nt", reason="uses /proc to check for processes")
def test_worker_cancel_kills_the_process_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "pids"
    env = {**os.environ, "FAKE_WORKER_MODE": "slow", "FAKE_WORKER_PIDFILE": str(pidfile)}
    inputs = {s: tmp_path / f"{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}
    command = slicer_glue.worker_command([sys.executable, str(DOUBLE)], inputs, tmp_path / "o")
    worker = slicer_glue.WorkerProcess(command, env=env)
    deadline = time.monotonic() + 20
    events: list[ProgressEvent] = []
    while not (pidfile.exists() and any(e.stage == "infer" for e in events)):
        assert time.monotonic() < deadline, "fake worker did not start"
        events += worker.poll()
        time.sleep(0.05)
    parent, grandchild = (int(p) for p in pidfile.read_text().split())
    assert _pid_alive(parent) and _pid_alive(grandchild)
    assert any(e.stage == "log" and "stray warning" in e.message for e in events)

    started = time.monotonic()
    worker.cancel()
    assert time.monotonic() - started < 10
    assert worker.finished and worker.cancelled and not worker.succeeded
    assert not _pid_alive(parent)
    deadline = time.monotonic() + 5
    while _pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(grandchild), "the worker's own child survived the cancel"


def test_worker_error_is_reported_readably(tmp_path: Path) -> None:
    env = {**os.environ, "FAKE_WORKER_MODE": "error"}
    inputs = {s: tmp_path / f"{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}
    command = slicer_glue.worker_command([sys.executable, str(DOUBLE)], inputs, tmp_path / "o")
    worker = slicer_glue.WorkerProcess(command, env=env)
    seen: list[ProgressEvent] = []
    assert worker.wait(seen.append) == 2
    assert [e.stage for e in seen if e.stage != "log"] == ["load", "error"]
    assert not worker.succeeded
    assert worker.failure() == "t2: image is 2D (240x240x1); a 3D volume is needed"
