"""The module's logic against the Slicer test double, with a fake worker as a real process."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import slicer_double

from BrainTumorSegLib import labels, slicer_glue

SEQUENCES = ("t1", "t1ce", "t2", "flair")
SHAPE_KJI = (5, 6, 7)  # deliberately unequal so that a wrong transpose cannot pass


@pytest.fixture
def slicer():
    fake = slicer_double.install()
    yield fake
    slicer_double.uninstall()


@pytest.fixture
def module(slicer):
    return slicer_double.import_module()


@pytest.fixture
def logic(module, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_WORKER_ARGS", str(tmp_path / "worker-args.json"))
    logic = module.BrainTumorSegLogic()
    logic.workerCommandBase = [sys.executable, str(Path(slicer_double.__file__))]
    logic.modelsDir = tmp_path / "no-models"
    return logic


def _codes() -> np.ndarray:
    """Class codes in [k, j, i]; every label present, with different counts."""
    codes = np.zeros(SHAPE_KJI, dtype=np.float32)
    codes[1:3, 1:4, 2:5] = 2  # ED: 18 voxels, 4 of them then NCR and ET -> 14
    codes[2, 2:4, 3:5] = 1  # NCR: 4 voxels, one of them then ET -> 3
    codes[2, 2, 3] = 3  # ET: 1 voxel
    codes[4, 5, 6] = 3  # ET far corner: catches an [i, j, k] / [k, j, i] mix-up
    return codes


def _ijk_to_ras(slicer) -> object:
    import vtk

    matrix = vtk.vtkMatrix4x4()
    # LPS-like axes with unequal spacing and an origin, as BraTS volumes have in RAS.
    for axis, spacing in enumerate((-1.0, -1.5, 2.0)):
        matrix.SetElement(axis, axis, spacing)
    for axis, origin in enumerate((90.0, 126.0, -72.0)):
        matrix.SetElement(axis, 3, origin)
    return matrix


def _add_case(slicer, names: dict[str, str] | None = None) -> dict[str, object]:
    names = names or {s: f"Case7_{s}" for s in SEQUENCES}
    codes = _codes()
    matrix = _ijk_to_ras(slicer)
    return {
        s: slicer.util.addVolumeFromArray(
            codes + slicer_double.SEQUENCE_OFFSETS[s], ijkToRAS=matrix, name=names[s]
        )
        for s in SEQUENCES
    }


def _segment_masks(segmentation) -> dict[str, np.ndarray]:
    content = segmentation.GetSegmentation()
    return {sid: content.GetSegment(sid).mask for sid in content.segments}


def _table_rows(table) -> list[tuple[str, str, float]]:
    t = table.GetTable()
    names, keys, volumes = (t.GetColumnByName(c) for c in ("Segment", "Key", "Volume [mL]"))
    return [(names.GetValue(r), keys.GetValue(r), volumes.GetValue(r))
            for r in range(t.GetNumberOfRows())]  # fmt: skip


def _temp_dirs(slicer) -> list[Path]:
    return list(Path(slicer.app.temporaryPath).glob("BrainTumorSeg-*"))


def test_run_imports_segments_table_and_geometry(slicer, logic, tmp_path) -> None:
    volumes = _add_case(slicer)
    sh = slicer.mrmlScene.subjectHierarchy
    study = sh.CreateFolderItem(sh.GetSceneItemID(), "Study")
    sh.SetItemParent(sh.GetItemByDataNode(volumes["t1ce"]), study)

    segmentation = logic.run(volumes)

    content = segmentation.GetSegmentation()
    assert content.GetNumberOfSegments() == 3
    codes = _codes()
    for label in labels.LABELS:
        segment = content.GetSegment(label.key)
        assert segment.GetName() == label.name
        assert segment.GetColor() == label.color
        assert segment.GetTag(segment.GetTerminologyEntryTagName()) == labels.terminology_entry(
            label
        )
        np.testing.assert_array_equal(segment.mask, (codes == label.index).astype(np.uint8))
        np.testing.assert_allclose(segment.maskGeometry, volumes["t1ce"].ijkToRas)
    shape, matrix = segmentation.referenceGeometry
    assert shape == SHAPE_KJI
    np.testing.assert_allclose(matrix, volumes["t1ce"].ijkToRas)
    assert segmentation.hasClosedSurface

    table = segmentation.GetNodeReference("BrainTumorSegVolumes")
    voxel_ml = 1.0 * 1.5 * 2.0 / 1000
    rows = _table_rows(table)
    assert [r[1] for r in rows] == ["NCR", "ED", "ET", "ET", "TC", "WT"]
    assert [r[0] for r in rows[:3]] == [label.name for label in labels.LABELS]
    # Per-label volumes and TC/WT from the report's labels; ET region as the report gave it.
    assert [r[2] for r in rows] == pytest.approx(
        [3 * voxel_ml, 14 * voxel_ml, 2 * voxel_ml, 1000.0 + 2 * voxel_ml, 5 * voxel_ml,
         19 * voxel_ml], abs=1e-6,
    )  # fmt: skip

    # Placed beside the inputs; the temporary label map and folder are gone.
    assert sh.GetItemParent(sh.GetItemByDataNode(segmentation)) == study
    assert sh.GetItemParent(sh.GetItemByDataNode(table)) == study
    assert slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLLabelMapVolumeNode") is None
    assert _temp_dirs(slicer) == []
    # Inputs were exported, never "saved" (which would repoint the nodes' storage).
    assert not any(hasattr(v, "storageFileName") for v in volumes.values())
    argv = json.loads((tmp_path / "worker-args.json").read_text())
    assert argv[0] == "segment" and "--progress-json" in argv
    assert argv[argv.index("--labels") + 1] == "brats2023"


def test_volumes_are_computed_when_the_report_has_none(slicer, logic, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_WORKER_MODE", "noreport")
    segmentation = logic.run(_add_case(slicer))
    rows = _table_rows(segmentation.GetNodeReference("BrainTumorSegVolumes"))
    voxel_ml = 3.0 / 1000
    assert [r[2] for r in rows] == pytest.approx(
        [v * voxel_ml for v in (3, 14, 2, 2, 5, 19)], abs=1e-6
    )


def test_existing_segmentation_keeps_other_segments_and_reuses_table(slicer, logic) -> None:
    volumes = _add_case(slicer)
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Mine")
    segmentation.GetSegmentation().AddEmptySegment("skull", "Skull", (1, 1, 1))
    logic.run(volumes, segmentation)
    table = segmentation.GetNodeReference("BrainTumorSegVolumes")
    nodes_after_first = slicer.mrmlScene.GetNumberOfNodes()

    assert logic.run(volumes, segmentation) is segmentation
    content = segmentation.GetSegmentation()
    assert sorted(content.segments) == ["ED", "ET", "NCR", "skull"]
    assert segmentation.GetNodeReference("BrainTumorSegVolumes") is table
    assert len(_table_rows(table)) == 6
    assert slicer.mrmlScene.GetNumberOfNodes() == nodes_after_first


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("error", "t2: image is 2D (240x240x1); a 3D volume is needed"),
        ("crash", "The segmentation worker failed (exit code 1): ZeroDivisionError: division by"),
    ],
)
def test_failure_leaves_scene_unchanged_with_readable_message(
    slicer, logic, monkeypatch, mode, message
) -> None:
    monkeypatch.setenv("FAKE_WORKER_MODE", mode)
    volumes = _add_case(slicer)
    before = list(slicer.mrmlScene.nodes)
    with pytest.raises(RuntimeError) as error:
        logic.run(volumes)
    assert str(error.value).startswith(message)
    assert "Traceback" not in str(error.value)
    assert slicer.mrmlScene.nodes == before
    assert _temp_dirs(slicer) == []


def test_invalid_selection_is_refused_before_anything_runs(slicer, logic) -> None:
    volumes = _add_case(slicer)
    volumes["t2"] = volumes["t1"]
    with pytest.raises(ValueError, match="selected as both T1 and T2"):
        logic.start(volumes)
    del volumes["flair"]
    assert logic.inputProblem({**volumes, "flair": None}) == "Select the FLAIR volume."
    assert _temp_dirs(slicer) == []


def _pid_alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


@pytest.mark.skipif(os.name == "nt", reason="uses /proc to check for processes")
def test_gui_run_reports_progress_and_cancel_kills_tree_and_cleans_up(
    slicer, logic, monkeypatch, tmp_path
) -> None:
    import qt

    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_WORKER_MODE", "slow")
    monkeypatch.setenv("FAKE_WORKER_PIDFILE", str(pidfile))
    volumes = _add_case(slicer)
    before = list(slicer.mrmlScene.nodes)
    progress: list[tuple] = []
    finished = []
    job = logic.start(volumes, onProgress=lambda *a: progress.append(a),
                      onFinished=finished.append)  # fmt: skip
    timer = qt.QTimer.instances[-1]
    assert timer.isActive() and timer.interval > 0
    temp_dir = job.tempDir
    assert sorted(p.name for p in (temp_dir / "inputs").iterdir()) == sorted(
        f"{s}.nii.gz" for s in SEQUENCES
    )
    deadline = time.monotonic() + 20
    while not (pidfile.exists() and any(p[1].startswith("Inference") for p in progress)):
        assert time.monotonic() < deadline, "no progress from the fake worker"
        timer.fire()  # what Qt's event loop does every 200 ms
        time.sleep(0.05)
    assert job.running
    fractions = [p[0] for p in progress if not p[2]]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 1
    assert any(p[2] and "stray warning" in p[1] for p in progress)  # log lines flagged as such
    parent, grandchild = (int(p) for p in pidfile.read_text().split())

    job.cancel()

    assert job.outcome.status == "cancelled" and finished == [job.outcome]
    assert not timer.isActive()
    assert not temp_dir.exists()
    assert not _pid_alive(parent)
    deadline = time.monotonic() + 5
    while _pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pid_alive(grandchild)
    assert slicer.mrmlScene.nodes == before


def test_gui_run_finishes_through_the_timer(slicer, logic) -> None:
    import qt

    finished = []
    job = logic.start(_add_case(slicer), onFinished=finished.append)
    timer = qt.QTimer.instances[-1]
    deadline = time.monotonic() + 30
    while not finished:
        assert time.monotonic() < deadline
        timer.fire()
        time.sleep(0.05)
    assert finished[0].status == "succeeded", finished[0].message
    assert finished[0].segmentation.GetSegmentation().GetNumberOfSegments() == 3
    assert not timer.isActive() and not job.tempDir.exists()


def test_guess_and_auto_select_inputs_respect_user_choice(slicer, logic) -> None:
    names = {"t1": "BraTS-GLI-00001-000-t1n", "t1ce": "BraTS-GLI-00001-000-t1c",
             "t2": "BraTS-GLI-00001-000-t2w", "flair": "BraTS-GLI-00001-000-t2f"}  # fmt: skip
    volumes = _add_case(slicer, names)
    slicer.util.addVolumeFromArray(np.zeros((2, 2, 2)), name="seg_t1",
                                   nodeClassName="vtkMRMLLabelMapVolumeNode")  # fmt: skip
    assert logic.guessInputs() == volumes

    other = slicer.util.addVolumeFromArray(np.zeros((2, 2, 2)), name="my favourite")
    parameters = logic.getParameterNode()
    parameters.t2 = other
    logic.autoSelectInputs(parameters)
    assert parameters.t2 is other
    assert parameters.t1 is volumes["t1"] and parameters.flair is volumes["flair"]
    assert parameters.t1ce is volumes["t1ce"]


def test_user_models_are_remembered_across_logic_instances(module, logic, tmp_path) -> None:
    seed = tmp_path / "seed.h5"
    seed.write_bytes(b"h5")
    logic.addUserModel(str(seed), ["flair", "t1ce", "t2"])
    fresh = module.BrainTumorSegLogic()
    fresh.modelsDir = tmp_path / "no-models"
    models = fresh.userModels()
    assert [(m.path, m.channels) for m in models] == [(str(seed), ("flair", "t1ce", "t2"))]
    with pytest.raises(ValueError, match="channel order"):
        fresh.addUserModel(str(seed))
    fresh.removeUserModel(str(seed))
    assert logic.userModels() == []


def test_bundled_models_are_listed_default_first(module, logic, tmp_path) -> None:
    for name in ("a-model", "b-model"):
        folder = tmp_path / "Models" / name
        folder.mkdir(parents=True)
        (folder / "model.json").write_text(json.dumps({"name": name, "version": "1"}))
    logic.modelsDir = tmp_path / "Models"
    assert [m.label for m in logic.availableModels()] == ["a-model 1", "b-model 1"]
    assert logic.defaultModel().bundled


def test_dependencies_installed_without_downgrades(slicer, logic, monkeypatch) -> None:
    installed = {"numpy", "SimpleITK"}
    monkeypatch.setattr(slicer_glue, "is_importable", installed.__contains__)

    def pip_install(arguments: str) -> None:
        slicer.double.pip_calls.append(arguments)
        installed.update({"onnxruntime", "nibabel", "nrrd"})

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    missing = logic.missingDependencies()
    assert [r.pip_name for r in missing] == ["onnxruntime", "nibabel", "pynrrd"]
    logic.installDependencies(missing)
    (call,) = slicer.double.pip_calls
    assert call.startswith("onnxruntime nibabel pynrrd -c ")
    assert logic.missingDependencies() == []


def test_dependency_install_failure_is_reported(slicer, logic, monkeypatch) -> None:
    monkeypatch.setattr(slicer_glue, "is_importable", lambda name: False)
    missing = logic.missingDependencies()
    assert "antspyx" in [r.pip_name for r in missing]
    with pytest.raises(RuntimeError, match="still cannot be imported"):
        logic.installDependencies(missing)
    assert "antspyx --no-deps" in slicer.double.pip_calls


def _load_volumes(slicer, files: dict) -> dict:
    """What ``slicer.util.loadVolume`` makes of NIfTI files, in the test double."""
    import nibabel as nib

    volumes = {}
    for sequence, path in files.items():
        image = nib.load(path)
        volumes[sequence] = slicer.util.addVolumeFromArray(
            np.asarray(image.dataobj).transpose(2, 1, 0), ijkToRAS=image.affine,
            name=path.name.split(".")[0],
        )  # fmt: skip
    return volumes


def test_real_worker_end_to_end_with_tiny_model(slicer, logic, tmp_path, tiny_model) -> None:
    """The real ``python -m BrainTumorSegLib`` as the worker, on a synthetic lesion case."""
    from conftest import blob_case

    affine = np.array([[-2.0, 0, 0, 40], [0, -2.0, 0, 60], [0, 0, 2.0, -30], [0, 0, 0, 1]])
    files = blob_case(tmp_path / "case", affine=affine)
    volumes = _load_volumes(slicer, files)
    logic.workerCommandBase = [sys.executable, "-m", slicer_glue.WORKER_MODULE]
    model = slicer_glue.model_from_user_path(tiny_model)

    segmentation = logic.run(volumes, model=model, threads=1)

    masks = _segment_masks(segmentation)
    assert sorted(masks) == ["ED", "ET", "NCR"]
    tumour = sum(m.astype(int) for m in masks.values()) > 0
    assert tumour.shape == volumes["t1ce"].array.shape
    # The lesion of blob_case is a sphere of radius 4 voxels at i, j, k = 28, 22, 18.
    k, j, i = np.argwhere(tumour).mean(axis=0)
    assert abs(i - 28) < 2 and abs(j - 22) < 2 and abs(k - 18) < 2
    shape, matrix = segmentation.referenceGeometry
    np.testing.assert_allclose(matrix, affine)
    rows = _table_rows(segmentation.GetNodeReference("BrainTumorSegVolumes"))
    assert rows[-1][2] == pytest.approx(tumour.sum() * 8 / 1000, rel=1e-3)
    assert _temp_dirs(slicer) == []


def test_real_worker_keeps_the_largest_component_and_reports_the_rest(
    slicer, logic, tmp_path, tiny_model
) -> None:
    """``components="largest"`` reaches the worker; what it removed comes back as a warning."""
    from test_pipeline import two_lesion_case

    files = two_lesion_case(tmp_path / "case")
    volumes = _load_volumes(slicer, files)
    logic.workerCommandBase = [sys.executable, "-m", slicer_glue.WORKER_MODULE]
    model = slicer_glue.model_from_user_path(tiny_model)
    outcomes = {}
    for choice in ("all", "largest"):
        job = logic.start(volumes, model=model, threads=1, components=choice, useTimer=False)
        outcomes[choice] = job.wait()
    assert outcomes["all"].status == outcomes["largest"].status == "succeeded"
    assert outcomes["all"].warnings == []
    (warning,) = outcomes["largest"].warnings
    assert "removed 1 other component" in warning
    tumour = {
        choice: sum(m.astype(int) for m in _segment_masks(o.segmentation).values()) > 0
        for choice, o in outcomes.items()
    }
    assert tumour["largest"].sum() < tumour["all"].sum()
    assert tumour["largest"][18, 22, 28] and not tumour["largest"][22, 34, 16]  # k, j, i
    assert tumour["all"][22, 34, 16]


def test_self_test_case_reaches_the_scene_as_built(module, slicer):
    """The in-Slicer self-test's volumes are slicer_glue's case, which test_bias segments."""
    from BrainTumorSegLib.slicer_glue import self_test_case

    volumes = module.BrainTumorSegTest()._makeCase()
    case = self_test_case()
    assert sorted(volumes) == sorted(case.images)
    for sequence, node in volumes.items():
        np.testing.assert_array_equal(node.array, case.images[sequence])
        np.testing.assert_array_equal(node.ijkToRas, case.ijk_to_ras)
