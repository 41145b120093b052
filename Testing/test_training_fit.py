"""Micro training runs on synthetic BraTS-style cases: prepare, fit, resume, export, segment.

Tiny network (filters 4-8-16), 16³ patches at 3 mm: the whole module runs in about a minute.
The distributed path runs in a TensorFlow subprocess with the CPU split into two devices.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras-internal noise
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from BrainTumorSegLib.errors import InputError  # noqa: E402
from Training.config import Config  # noqa: E402

TINY = {
    "model": {
        "name": "tiny-test",
        "spacing_mm": [3.0, 3.0, 3.0],
        "size_multiple": 8,
        "crop_margin_mm": 3.0,
    },
    "network": {"filters": [4, 8, 16], "norm": "batch"},
    "data": {
        "patch_size": [16, 16, 16],
        "batch_size": 2,
        "steps_per_epoch": 4,
        "foreground_probability": 0.8,
    },
    "optimizer": {"learning_rate": 0.01, "schedule": "constant"},
    "split": {"validation_fraction": 0.34, "stratify_by": "volume"},
    "training": {"epochs": 6, "early_stopping_patience": None, "seed": 3},
}


def _write(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))


def synthetic_case(folder: Path, name: str, seed: int, *, brats2023: bool = False) -> None:
    """A 48x48x40 1.5 mm case: ellipsoid brain, tumour of NCR core, ET rim and ED halo."""
    rng = np.random.default_rng(seed)
    shape = (48, 48, 40)
    grid = np.indices(shape).astype(np.float32)
    mid = (np.array(shape) - 1) / 2
    brain = sum(((grid[a] - mid[a]) / (0.42 * shape[a])) ** 2 for a in range(3)) <= 1
    centre = mid + rng.uniform(-5, 5, 3)
    radius = np.sqrt(sum((grid[a] - centre[a]) ** 2 for a in range(3)))
    size = rng.uniform(6, 9)
    labels = np.zeros(shape, np.uint8)
    labels[(radius < size * 1.6) & brain] = 2  # ED
    labels[radius < size] = 4 if not brats2023 else 3  # ET rim
    labels[radius < size * 0.5] = 1  # NCR
    classes = {0: 0, 1: 1, 2: 2, 3: 3, 4: 3}
    index = np.vectorize(classes.get)(labels)
    # Each sequence sees the sub-regions differently (as MRI contrasts do).
    contrast = np.array(
        [[0, -1, 0.5, 0.3], [0, -0.5, 0.2, 2.0], [0, 1.5, 1.2, 0.8], [0, 0.5, 1.5, 1.0]]
    )
    affine = np.diag([-1.5, -1.5, 1.5, 1.0])  # LPS like BraTS
    case = folder / name
    case.mkdir(parents=True)
    names = ("t1c", "t1n", "t2w", "t2f") if brats2023 else ("t1ce", "t1", "t2", "flair")
    order = (1, 0, 2, 3)  # contrast rows are t1, t1ce, t2, flair
    sep = "-" if brats2023 else "_"
    for seq, row in zip(names, order):
        image = 500 * (1 + contrast[row][index]) + rng.normal(0, 20, shape)
        _write(
            case / f"{name}{sep}{seq}.nii.gz", np.where(brain, image, 0).astype(np.float32), affine
        )
    _write(case / f"{name}{sep}seg.nii.gz", labels, affine)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    for n in range(3):
        synthetic_case(root / "HGG", f"Synth_{n}", seed=n)
    return root


@pytest.fixture(scope="module")
def prepared(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from Training.prepare import prepare_dataset

    cache = tmp_path_factory.mktemp("cache")
    return prepare_dataset(dataset, cache, Config.from_dict(TINY), workers=2, progress=False)


def test_prepare_records_which_n4_backend_ran(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from BrainTumorSegLib.bias import available_backend
    from Training import prepare
    from Training.prepare import prepare_dataset, read_manifest

    config = Config.from_dict({**TINY, "model": {**TINY["model"], "bias_correction": True}})
    folder = prepare_dataset(dataset, tmp_path, config, workers=1, limit=1, progress=False)
    (entry,) = read_manifest(folder)["cases"].values()
    assert entry["bias_backend"] == available_backend()
    # A cache is never extended with cases corrected by the other backend.
    other = "sitk" if entry["bias_backend"] == "ants" else "ants"
    monkeypatch.setattr(prepare, "available_backend", lambda: other)
    with pytest.raises(ValueError, match=f"{entry['bias_backend']} N4 backend"):
        prepare_dataset(dataset, tmp_path, config, workers=1, limit=2, progress=False)
    assert len(read_manifest(folder)["cases"]) == 1


def test_prepare_caches_working_grid_arrays_and_skips_done_cases(prepared: Path, dataset: Path):
    from BrainTumorSegLib.labels import convention_to_classes
    from Training.prepare import prepare_dataset, read_manifest

    manifest = read_manifest(prepared)
    assert sorted(manifest["cases"]) == ["Synth_0", "Synth_1", "Synth_2"]
    entry = manifest["cases"]["Synth_0"]
    assert entry["grade"] == "HGG" and entry["label_convention"] == "brats2018"
    assert entry["bias_backend"] is None  # TINY trains without N4
    image = np.load(prepared / "Synth_0_image.npy")
    labels = np.load(prepared / "Synth_0_labels.npy")
    assert image.shape[:3] == labels.shape and image.shape[3] == 4
    assert all(n % 8 == 0 for n in labels.shape)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    # The WT volume recorded from the reference labels is what the file holds.
    import nibabel as nib

    seg = np.asarray(nib.load(dataset / "HGG" / "Synth_0" / "Synth_0_seg.nii.gz").dataobj)
    wt_ml = (convention_to_classes(seg) > 0).sum() * 1.5**3 / 1000
    assert entry["regions_ml"]["WT"] == pytest.approx(wt_ml)
    before = (prepared / "Synth_0_image.npy").stat().st_mtime_ns
    prepare_dataset(dataset, prepared.parent, Config.from_dict(TINY), progress=False)
    assert (prepared / "Synth_0_image.npy").stat().st_mtime_ns == before  # skipped


def test_prepare_reads_brats2023_layout(tmp_path: Path):
    from Training.prepare import prepare_dataset, read_manifest

    synthetic_case(tmp_path / "data", "BraTS-GLI-00001-000", seed=5, brats2023=True)
    folder = prepare_dataset(
        tmp_path / "data", tmp_path / "cache", Config.from_dict(TINY), workers=1, progress=False
    )
    entry = read_manifest(folder)["cases"]["BraTS-GLI-00001-000"]
    assert entry["label_convention"] == "brats2023"
    labels = np.load(folder / "BraTS-GLI-00001-000_labels.npy")
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # label 3 read as ET, not rejected


def test_prepare_runs_side_by_side_on_one_cache(prepared: Path, dataset: Path):
    """Two runs sharing a cache (crossval --only 1 and --only 2) both rewrite its manifest."""
    from concurrent.futures import ThreadPoolExecutor

    from Training.prepare import prepare_dataset, read_manifest

    config = Config.from_dict(TINY)

    def rerun(_: int) -> None:
        for _ in range(40):
            prepare_dataset(dataset, prepared.parent, config, progress=False)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(rerun, range(2)))  # re-raises a writer's error
    assert sorted(read_manifest(prepared)["cases"]) == [f"Synth_{n}" for n in range(3)]
    assert not list(prepared.glob("*.tmp"))  # no writer's temporary file is left behind


@pytest.fixture(scope="module")
def trained_run(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from Training.fit import fit

    run = tmp_path_factory.mktemp("run")
    fit(Config.from_dict(TINY), prepared, run, strategy="none", verbose=0)
    return run


def test_micro_training_reduces_the_loss(trained_run: Path):
    state = json.loads((trained_run / "state.json").read_text())
    losses = [row["loss"] for row in state["history"]]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2]), losses
    for name in (
        "log.csv",
        "curves.png",
        "config.yaml",
        "split.json",
        "checkpoints/last.keras",
        "checkpoints/best.keras",
    ):
        assert (trained_run / name).is_file(), name
    header = (trained_run / "log.csv").read_text().splitlines()[0].split(",")
    assert {"val_dice_ET", "val_dice_TC", "val_dice_WT", "loss", "learning_rate"} <= set(header)


def test_resume_continues_from_the_checkpoint(trained_run: Path, prepared: Path, tmp_path: Path):
    import shutil

    import keras

    from Training.fit import fit

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = Config.from_dict({**TINY, "training": {**TINY["training"], "epochs": 8}})
    state = fit(config, prepared, run, strategy="none", verbose=0)
    assert [row["epoch"] for row in state["history"]] == list(range(1, 9))
    model = keras.models.load_model(run / "checkpoints" / "last.keras")
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 8 * 4
    # A finished run is not trained again.
    again = fit(config, prepared, run, strategy="none", verbose=0)
    assert again["epoch"] == 8 and len(again["history"]) == 8


def test_cosine_restarts_extends_a_finished_cosine_run(prepared: Path, tmp_path: Path):
    """A finished cosine run resumed with more epochs gets a second cycle at half the peak."""
    import keras

    from Training.fit import fit, learning_rate_schedule

    optimizer = {"learning_rate": 0.01, "schedule": "cosine"}
    short = Config.from_dict(
        {**TINY, "optimizer": optimizer, "training": {**TINY["training"], "epochs": 2}}
    )
    fit(short, prepared, tmp_path / "run", strategy="none", verbose=0)
    restarts = {**optimizer, "schedule": "cosine_restarts", "cycle_epochs": 2}
    longer = Config.from_dict(
        {**TINY, "optimizer": restarts, "training": {**TINY["training"], "epochs": 4}}
    )
    cosine = learning_rate_schedule(short, 8, 4)
    cycles = learning_rate_schedule(longer, 16, 4)
    steps = [0, 3, 7]  # the first cycle is the finished run's schedule
    assert [float(cycles(t)) for t in steps] == pytest.approx([float(cosine(t)) for t in steps])
    assert float(cycles(8)) == pytest.approx(0.5 * float(cycles(0)), rel=0.02)
    state = fit(longer, prepared, tmp_path / "run", strategy="none", verbose=0)
    rates = [row["learning_rate"] for row in state["history"]]
    assert len(rates) == 4 and rates[2] > 5 * rates[1]  # the restart, not the old floor
    assert rates[2] == pytest.approx(float(cycles(12)), rel=1e-4)
    model = keras.models.load_model(tmp_path / "run" / "checkpoints" / "last.keras")
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 16
    # A constant rate after a schedule (Keras keeps schedules once set) also resumes.
    flat = Config.from_dict({**TINY, "training": {**TINY["training"], "epochs": 5}})
    state = fit(flat, prepared, tmp_path / "run", strategy="none", verbose=0)
    assert state["history"][-1]["learning_rate"] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="cycle_epochs"):
        Config.from_dict({**TINY, "optimizer": {"schedule": "cosine_restarts"}})


def test_export_records_the_chosen_postprocessing_as_the_default(
    trained_run: Path, dataset: Path, tmp_path: Path
):
    from BrainTumorSegLib import segment
    from BrainTumorSegLib.errors import InputError
    from BrainTumorSegLib.model import load_model_spec
    from Training.export import export_run

    search = tmp_path / "search.json"
    rows = [{"min_component_ml": 0.0, "dice_WT": 0.5}, {"min_component_ml": 0.5, "dice_WT": 0.6}]
    search.write_text(json.dumps({"best_min_component_ml": 0.5, "rows": rows}))
    package = tmp_path / "package"
    export_run(trained_run, package, checkpoint="last", postprocessing=search)
    spec = load_model_spec(package)
    assert spec.min_component_ml == 0.5 and spec.metrics["postprocessing"]["rows"] == rows
    assert spec.keep_largest_component is False  # a search that did not try it
    chosen = {"best_min_component_ml": 0.25, "best_keep_largest_component": True, "rows": rows}
    search.write_text(json.dumps(chosen))
    export_run(
        trained_run, tmp_path / "largest", checkpoint="last", postprocessing=search, tta=True
    )
    largest = load_model_spec(tmp_path / "largest")
    assert largest.keep_largest_component is True and largest.min_component_ml == 0.25
    assert largest.test_time_augmentation is True and spec.test_time_augmentation is False
    case = dataset / "HGG" / "Synth_1"
    inputs = {s: case / f"Synth_1_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}
    default = segment(inputs, model=package, overlay=False)
    assert default.report["settings"]["min_component_ml"] == 0.5
    kept = segment(inputs, model=package, overlay=False, min_component_ml=0.0)
    assert kept.report["settings"]["min_component_ml"] == 0.0
    with pytest.raises(InputError, match="min-component-ml"):
        segment(inputs, model=package, overlay=False, min_component_ml=-1.0)
    with pytest.raises(InputError, match="postprocessing"):
        export_run(trained_run, tmp_path / "bad", checkpoint="last", postprocessing=tmp_path)


def test_evaluate_model_follows_the_model_defaults_unless_told(
    trained_run: Path, dataset: Path, tmp_path: Path
):
    from Training.cli import main
    from Training.export import export_run

    search = tmp_path / "search.json"
    search.write_text(
        json.dumps({"best_min_component_ml": 0.0, "best_keep_largest_component": True, "rows": []})
    )
    package = tmp_path / "package"
    export_run(trained_run, package, checkpoint="last", postprocessing=search, tta=True)
    runs = {"defaults": [], "told": ["--no-tta", "--components", "all"]}
    for name, extra in runs.items():
        out = tmp_path / name
        args = ["evaluate", str(dataset), "--model", str(package), "--output", str(out), *extra]
        assert main(args) == 0
        reports = [json.loads(p.read_text()) for p in out.glob("predictions/*/report.json")]
        assert len(reports) == 3
        settings = {
            (r["settings"]["test_time_augmentation"], r["settings"]["keep_largest_component"])
            for r in reports
        }
        assert settings == ({(True, True)} if name == "defaults" else {(False, False)})


def test_export_round_trips_through_the_core(trained_run: Path, dataset: Path, tmp_path: Path):
    import keras
    import onnxruntime as ort

    from BrainTumorSegLib import segment
    from BrainTumorSegLib.model import load_model_spec
    from Training.export import export_run

    package = tmp_path / "package"
    export_run(trained_run, package, checkpoint="last")
    spec = load_model_spec(package)
    assert spec.spacing_mm == [3.0, 3.0, 3.0] and spec.keras_file == "model.keras"
    assert spec.training["config"]["network"]["filters"] == [4, 8, 16]
    assert "val_dice_WT" in spec.metrics
    assert spec.metrics["onnx_converter"] == "onnx_graph"  # the project's own writer
    session = ort.InferenceSession(str(package / "model.onnx"))
    dims = session.get_inputs()[0].shape
    assert not any(isinstance(d, int) for d in dims[:4]) and dims[4] == 4
    x = np.random.default_rng(0).normal(size=(1, 16, 24, 8, 4)).astype(np.float32)
    keras_out = keras.models.load_model(package / "model.keras").predict(x, verbose=0)
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x})
    assert np.abs(onnx_out - keras_out).max() < 1e-4
    case = dataset / "HGG" / "Synth_2"
    inputs = {s: case / f"Synth_2_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair")}
    result = segment(inputs, tmp_path / "out", model=package, overlay=False)
    assert result.classes.shape == (48, 48, 40)
    assert (tmp_path / "out" / "segmentation.nii.gz").is_file()


def test_bf16_training_exports_a_float32_network_with_its_weights(prepared: Path, tmp_path: Path):
    """training.mixed_precision: bf16 trains in bfloat16; the package computes in float32."""
    import keras
    import onnxruntime as ort

    from BrainTumorSegLib.model import load_model_spec
    from Training.export import export_run
    from Training.fit import fit

    with pytest.raises(ValueError, match="auto, on, bf16 or off"):
        Config.from_dict({**TINY, "training": {**TINY["training"], "mixed_precision": "fp8"}})
    for value, setting in ((False, "off"), (True, "on")):  # --set ...=off arrives as YAML's False
        config = Config.from_dict(
            {**TINY, "training": {**TINY["training"], "mixed_precision": value}}
        )
        assert config.training.mixed_precision == setting
    short = {**TINY, "training": {**TINY["training"], "epochs": 2, "mixed_precision": "bf16"}}
    run = tmp_path / "run"
    state = fit(Config.from_dict(short), prepared, run, strategy="none", verbose=0)
    assert np.isfinite(state["history"][-1]["loss"])
    assert keras.mixed_precision.global_policy().name == "float32"  # restored after fit
    trained = keras.models.load_model(run / "checkpoints" / "last.keras", compile=False)
    # Every convolution computes in bfloat16 but the logits, float32 by design (network.py).
    policies = {
        layer.name: layer.dtype_policy.name
        for layer in trained.layers
        if isinstance(layer, keras.layers.Conv3D)
    }
    assert policies.pop("logits") == "float32"
    assert policies and set(policies.values()) == {"mixed_bfloat16"}

    package = tmp_path / "package"
    export_run(run, package, checkpoint="last")
    spec = load_model_spec(package)
    assert spec.metrics["onnx_converter"] == "onnx_graph"  # not refused as mixed precision
    shipped = keras.models.load_model(package / "model.keras", compile=False)
    assert {layer.dtype_policy.compute_dtype for layer in shipped.layers} == {"float32"}
    for a, b in zip(shipped.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(1).normal(size=(1, 16, 16, 16, 4)).astype(np.float32)
    session = ort.InferenceSession(str(package / "model.onnx"))
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x})
    float32_out = shipped.predict(x, verbose=0)
    assert np.abs(onnx_out - float32_out).max() < 1e-4
    # The same weights computed in bfloat16 give nearly, not exactly, the same probabilities.
    bf16_out = np.asarray(trained.predict(x, verbose=0), np.float32)
    assert 0 < np.abs(bf16_out - float32_out).max() < 0.1


def test_repackage_writes_the_onnx_again_with_the_same_weights_and_metadata(
    trained_run: Path, tmp_path: Path
):
    import onnxruntime as ort

    from BrainTumorSegLib.model import load_model_spec
    from Training.export import export_run, repackage

    old = tmp_path / "old"
    export_run(trained_run, old, checkpoint="last", tta=True)
    # As if written by the generic converter: the new package must not keep these figures.
    meta = json.loads((old / "model.json").read_text())
    meta["metrics"].update(onnx_converter="tf2onnx", onnx_max_abs_difference=0.5)
    (old / "model.json").write_text(json.dumps(meta))
    new = tmp_path / "new"
    spec = repackage(old / "model.json", new, version="9.1", window=16)  # or the folder
    before = load_model_spec(old)
    assert before.inference_window is None and spec.inference_window == [16, 16, 16]
    # Without --tta/--no-tta the package's choice stays; --no-tta turns it off.
    assert repackage(old, tmp_path / "one-pass", tta=False).test_time_augmentation is False
    shutil.rmtree(tmp_path / "one-pass")
    assert spec.version == "9.1" and spec.training["repackaged_from"] == "tiny-test 0"
    assert spec.test_time_augmentation and spec.training["config"] == before.training["config"]
    assert spec.metrics["val_dice_WT"] == before.metrics["val_dice_WT"]
    assert spec.metrics["onnx_converter"] == "onnx_graph"
    assert spec.metrics["onnx_max_abs_difference"] < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "old"]  # no staging left
    x = np.random.default_rng(2).normal(size=(1, 8, 16, 24, 4)).astype(np.float32)
    outputs = []
    for package in (old, new):
        session = ort.InferenceSession(str(package / "model.onnx"))
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    assert np.abs(outputs[0] - outputs[1]).max() < 1e-4
    with pytest.raises(InputError, match="another folder"):
        repackage(old, old)
    assert load_model_spec(old).version == "0"  # untouched
    from Training.cli import main

    assert (
        main(["export", "--package", str(old), "--output", str(new), "--checkpoint", "last"]) == 2
    )
    assert load_model_spec(new).version == "9.1"  # a refused call leaves the package as it was


def test_evaluate_writes_tables_and_perfect_scores(dataset: Path, tmp_path: Path):
    import shutil

    from Training.evaluate import evaluate

    predictions = tmp_path / "pred"
    predictions.mkdir()
    for n in range(3):
        shutil.copy(
            dataset / "HGG" / f"Synth_{n}" / f"Synth_{n}_seg.nii.gz",
            predictions / f"Synth_{n}.nii.gz",
        )
    summary = evaluate(predictions, dataset, tmp_path / "eval")
    assert summary["dice_ET"]["mean"] == 1.0 and summary["hd95_WT"]["mean"] == 0.0
    assert summary["dice_WT"]["n"] == 3
    # Perfect on every case: the bootstrap interval of the mean has no width.
    assert summary["dice_ET"]["ci95_low"] == summary["dice_ET"]["ci95_high"] == 1.0
    header = (tmp_path / "eval" / "summary.csv").read_text().splitlines()[0]
    assert header == "measure,mean,median,std,p25,p75,ci95_low,ci95_high,n"
    lines = (tmp_path / "eval" / "cases.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("case_id,dice_ET")
    assert (tmp_path / "eval" / "boxplot.png").stat().st_size > 1000


def _predictions_with_false_island(dataset: Path, tmp_path: Path, label: int) -> Path:
    """The truth of each synthetic case plus a 27-voxel (0.09 mL) island far from the tumour."""
    import nibabel as nib

    predictions = tmp_path / "pred"
    predictions.mkdir()
    for n in range(3):
        truth = nib.load(dataset / "HGG" / f"Synth_{n}" / f"Synth_{n}_seg.nii.gz")
        labels = np.asarray(truth.dataobj).copy()
        labels[1:4, 1:4, 1:4] = label
        _write(predictions / f"Synth_{n}.nii.gz", labels, truth.affine)
    return predictions


def test_postprocessing_search_picks_the_threshold_that_removes_false_islands(
    dataset: Path, tmp_path: Path
):

    from Training.postprocessing import search_min_component

    # a 0.09 mL false-positive island, far from the tumour
    predictions = _predictions_with_false_island(dataset, tmp_path, label=4)
    result = search_min_component(predictions, dataset, tmp_path / "search", (0.0, 0.5, 1000.0))
    rows = {r["min_component_ml"]: r for r in result["rows"] if not r["keep_largest_component"]}
    assert result["best_min_component_ml"] == 0.5
    # Keeping the largest is tried with the chosen threshold; no better here, so not chosen.
    largest = [r for r in result["rows"] if r["keep_largest_component"]]
    assert [r["min_component_ml"] for r in largest] == [0.5]
    assert largest[0]["dice_mean"] == rows[0.5]["dice_mean"]
    assert result["best_keep_largest_component"] is False
    assert rows[0.5]["dice_ET"] == 1.0 and rows[0.5]["hd95_WT"] == 0.0
    assert rows[0.0]["dice_ET"] < 0.99 and rows[0.0]["dice_mean"] < rows[0.5]["dice_mean"]
    assert rows[1000.0]["dice_WT"] == 0.0  # everything removed
    saved = json.loads((tmp_path / "search" / "search.json").read_text())
    assert saved["best_min_component_ml"] == 0.5 and rows[0.5]["n"] == 3


def test_postprocessing_search_keeps_the_largest_when_a_false_lesion_is_too_big(
    dataset: Path, tmp_path: Path
):

    from Training.postprocessing import search_min_component

    # a 0.09 mL false lesion: above every threshold tried
    predictions = _predictions_with_false_island(dataset, tmp_path, label=2)
    result = search_min_component(predictions, dataset, tmp_path / "search", (0.0, 0.05))
    kept_all, largest = result["rows"][:-1], result["rows"][-1]
    assert all(r["dice_WT"] < 1.0 for r in kept_all)
    assert largest["keep_largest_component"] and largest["dice_WT"] == 1.0
    assert result["best_keep_largest_component"] is True
    assert result["best_min_component_ml"] == 0.0  # the fallback when all components are kept
    saved = json.loads((tmp_path / "search" / "search.json").read_text())
    assert saved["best_keep_largest_component"] is True
    # The chosen setting's per-case table, as evaluate writes it.
    chosen = tmp_path / "search" / "chosen"
    lines = (chosen / "cases.csv").read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("case_id,dice_ET")
    summary = json.loads((chosen / "summary.json").read_text())
    assert summary["dice_WT"]["mean"] == 1.0 and summary["dice_WT"]["n"] == 3
    assert (chosen / "boxplot.png").is_file()


def test_distributed_fit_on_two_logical_cpus(prepared: Path, tmp_path: Path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "training": {**TINY["training"], "epochs": 2}}))
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    command = [
        sys.executable,
        "-m",
        "Training",
        "fit",
        "--config",
        str(config),
        "--cache",
        str(prepared.parent),
        "--run",
        str(tmp_path / "run"),
        "--strategy",
        "mirrored",
        "--logical-cpus",
        "2",
        "--verbose",
        "0",
    ]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 replicas" in done.stdout
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["epoch"] == 2 and all(np.isfinite(r["loss"]) for r in state["history"])


def _free_ports(count: int) -> list[int]:
    import socket

    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_multiworker_fit_with_two_local_workers(prepared: Path, tmp_path: Path):
    """MultiWorkerMirroredStrategy from TF_CONFIG: two worker processes train one model."""
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "training": {**TINY["training"], "epochs": 2}}))
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    run = tmp_path / "run"  # one run folder, as on a shared file system; the chief writes it
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CONFIG=json.dumps(tf_config))
        command = [sys.executable, "-m", "Training", "fit", "--config", str(config)]
        command += ["--cache", str(prepared.parent), "--run", str(run), "--verbose", "0"]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        processes.append(subprocess.Popen(command, cwd=ROOT, env=env, text=True, **pipes))
    outputs = [p.communicate(timeout=300) for p in processes]
    for p, (out, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
        assert "2 replicas" in out
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 2 and all(np.isfinite(r["loss"]) for r in state["history"])
    assert all(0.0 <= r["val_dice_WT"] <= 1.0 for r in state["history"])
    assert (run / "checkpoints" / "last.keras").is_file()


def test_import_seed_style_h5_gives_dynamic_onnx(tmp_path: Path):
    import keras

    from BrainTumorSegLib.model import load_model_spec
    from Training.config import NetworkConfig
    from Training.export import import_h5
    from Training.network import build_unet

    net = NetworkConfig(filters=[2, 4, 8], norm="batch")
    seed = build_unet(net, input_channels=4, num_outputs=4, input_shape=(32, 32, 32))
    h5 = tmp_path / "seed.h5"
    seed.save(h5)
    package = tmp_path / "seed_package"
    import_h5(h5, package, channels=["flair", "t1ce", "t2", "t1"], name="seed")
    spec = load_model_spec(package)
    assert spec.channels == ["flair", "t1ce", "t2", "t1"]
    assert spec.training["original_input_shape"] == [32, 32, 32]
    imported = keras.models.load_model(package / "model.keras")
    assert imported.input_shape == (None, None, None, None, 4)
    x = np.random.default_rng(1).normal(size=(1, 32, 32, 32, 4)).astype(np.float32)
    assert np.allclose(imported.predict(x, verbose=0), seed.predict(x, verbose=0), atol=1e-5)
    with pytest.raises(Exception, match="channels"):
        import_h5(h5, tmp_path / "bad", channels=["t1", "t2"], name="bad")


def test_sigmoid_region_output_trains_and_reports_region_dice(prepared: Path, tmp_path: Path):
    from Training.fit import fit

    data = {
        **TINY,
        "model": {**TINY["model"], "output": "sigmoid"},
        "training": {**TINY["training"], "epochs": 1},
    }
    state = fit(Config.from_dict(data), prepared, tmp_path / "run", strategy="none", verbose=0)
    row = state["history"][0]
    assert all(0.0 <= row[f"val_dice_{r}"] <= 1.0 for r in ("ET", "TC", "WT"))
    assert np.isfinite(row["loss"])


def test_early_stopping_after_patience_without_improvement(tmp_path: Path):
    import keras

    from Training.callbacks import RunState

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.1), loss="mse")
    callback = RunState(tmp_path, monitor="val_dice_mean", patience=2, write=False)
    callback.set_model(model)
    for epoch, value in enumerate([0.5, 0.6, 0.55, 0.6]):
        model.stop_training = False
        callback.on_epoch_end(epoch, {"loss": 1.0, "val_dice_mean": value})
    state = callback.state
    assert state["best"] == pytest.approx(0.6) and state["best_epoch"] == 2
    assert state["wait"] == 2 and state["stopped_early"] and model.stop_training
    assert state["history"][0]["learning_rate"] == pytest.approx(0.1)


def test_python_loader_trains_and_validates_like_tf_data(prepared: Path, tmp_path: Path):
    """The PyDataset loader (default off TensorFlow) gives the same batches' shapes and metrics."""
    from Training.fit import fit
    from Training.pipeline import CaseStore, keras_batches, training_patches, validation_batches

    config = Config.from_dict({**TINY, "data": {**TINY["data"], "loader": "python"}})
    store = CaseStore(prepared, ["Synth_0", "Synth_1"])
    batches = keras_batches(training_patches(store, config, 0), batch_size=2, length=3)
    x, y = batches[0]
    assert len(batches) == 3 and x.shape == (2, 16, 16, 16, 4) and y.shape == (2, 16, 16, 16, 4)
    volumes = validation_batches(store, config, (24, 24, 24))
    assert len(volumes) == 2 and volumes[1][0].shape == (1, 24, 24, 24, 4)
    config.training.epochs = 3
    state = fit(config, prepared, tmp_path / "run", strategy="none", verbose=0)
    losses = [row["loss"] for row in state["history"]]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert all(0.0 <= row["val_dice_WT"] <= 1.0 for row in state["history"])


def test_split_all_trains_on_every_case_and_keeps_the_last_epoch(prepared: Path, tmp_path: Path):
    from Training.export import export_run
    from Training.fit import fit

    data = {**TINY, "split": {"method": "all"}, "training": {**TINY["training"], "epochs": 2}}
    state = fit(Config.from_dict(data), prepared, tmp_path / "run", strategy="none", verbose=0)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["training"] == ["Synth_0", "Synth_1", "Synth_2"] and split["validation"] == []
    assert state["best_epoch"] == 2 and not any(k.startswith("val_") for k in state["history"][1])
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"dice_WT": {"mean": 0.9, "median": 0.91, "std": 0.1, "n": 3}}))
    spec = export_run(tmp_path / "run", tmp_path / "package", evaluation=summary)
    assert spec.training["checkpoint_epoch"] == 2 and spec.training["split"]["validation"] == []
    recorded = json.loads((tmp_path / "package" / "model.json").read_text())["metrics"]
    assert recorded["evaluation"]["dice_WT"] == {"mean": 0.9, "median": 0.91, "n": 3}


def test_crossval_scores_every_case_with_the_fold_that_held_it_out(
    dataset: Path, prepared: Path, tmp_path: Path
):
    from Training.crossval import crossvalidate

    data = {**TINY, "training": {**TINY["training"], "epochs": 1}}
    data["data"] = {**TINY["data"], "steps_per_epoch": 2}
    runs = tmp_path / "cv"
    # Two sessions: fold 0 only first (no summary yet), then the rest.
    assert (
        crossvalidate(
            Config.from_dict(data), dataset, prepared.parent, runs, folds=3, only=[0], workers=1
        )
        is None
    )
    # Only fold 0 exists yet: an ensemble of two such runs writes no (partial) summary.
    from Training.ensemble import crossval_ensemble

    early = tmp_path / "cv-early"
    shutil.copytree(runs, early)
    assert crossval_ensemble([runs, early], dataset, tmp_path / "ens-early", only=[0]) is None
    assert not (tmp_path / "ens-early" / "out-of-fold" / "summary.csv").exists()
    with pytest.raises(InputError, match="not trained yet"):
        crossval_ensemble([runs, early], dataset, tmp_path / "ens-early")
    summary = crossvalidate(Config.from_dict(data), dataset, prepared.parent, runs, folds=3)
    assert summary is not None and summary["dice_WT"]["n"] == 3
    # Another prediction set (mirroring TTA, windows of 8^3) for fold 0 only: folds 1 and 2
    # have packages but no held-out case in this set yet, so no partial summary is written.
    again = crossvalidate(
        Config.from_dict(data),
        dataset,
        prepared.parent,
        runs,
        folds=3,
        only=[0],
        tta=True,
        window=8,
    )
    other = runs / "out-of-fold-window8-tta"
    assert again is None and not (other / "summary.csv").exists()
    held_out = [json.loads((runs / f"fold{k}" / "split.json").read_text()) for k in range(3)]
    report = json.loads(
        (other / "predictions" / held_out[0]["validation"][0] / "report.json").read_text()
    )
    assert report["settings"]["inference_window"] == [8, 8, 8]
    assert report["settings"]["test_time_augmentation"] is True
    assert sorted(c for h in held_out for c in h["validation"]) == [
        "Synth_0",
        "Synth_1",
        "Synth_2",
    ]
    for h in held_out:
        assert not set(h["validation"]) & set(h["training"])
        package = json.loads(
            (runs / f"fold{held_out.index(h)}" / "package" / "model.json").read_text()
        )
        assert package["training"]["checkpoint"] == "last"
    rows = (runs / "out-of-fold" / "cases.csv").read_text().splitlines()
    assert len(rows) == 4 and (runs / "out-of-fold" / "boxplot.png").is_file()

    # Fold-by-fold ensembles of two runs with the same folds (here the run with a copy of
    # itself: the average of a network with itself is that network) score the same cases.
    twin = tmp_path / "cv-twin"
    shutil.copytree(runs, twin)
    assert crossval_ensemble([runs, twin], dataset, tmp_path / "ens", only=[0, 1]) is None
    assert not (tmp_path / "ens" / "fold2").exists()
    ensembled = crossval_ensemble([runs, twin], dataset, tmp_path / "ens", only=[2])
    assert (tmp_path / "ens" / "fold2" / "model-2.onnx").is_file()
    assert (tmp_path / "ens" / "out-of-fold" / "cases.csv").read_text().splitlines() == rows
    assert ensembled["dice_WT"] == summary["dice_WT"]
    # Each ensemble prediction keeps its probabilities, so region thresholds can be searched.
    held = sorted((tmp_path / "ens" / "out-of-fold" / "predictions").iterdir())
    assert held and all((d / "probabilities.nii.gz").is_file() for d in held)
    # A machine that holds only some folds of the runs (crossval --only there): no fold0/.
    for name, source in (("part-a", runs), ("part-b", twin)):
        shutil.copytree(source / "fold2", tmp_path / name / "fold2")
    part = crossval_ensemble(
        [tmp_path / "part-a", tmp_path / "part-b"], dataset, tmp_path / "ens-part", only=[2]
    )
    assert part is None and (tmp_path / "ens-part" / "fold2" / "model-2.onnx").is_file()
    with pytest.raises(InputError, match="fold 0 is not here.*--only"):
        crossval_ensemble([tmp_path / "part-a", tmp_path / "part-b"], dataset, tmp_path / "e2")
    (twin / "fold1" / "split.json").write_text(
        json.dumps({**held_out[1], "validation": held_out[0]["validation"]})
    )
    with pytest.raises(InputError, match="other cases"):
        crossval_ensemble([runs, twin], dataset, tmp_path / "ens-bad")
    assert not (tmp_path / "ens-bad" / "out-of-fold").exists()  # refused before segmenting
    # A member exported again: that fold's ensemble is rebuilt and its cases segmented anew.
    shutil.copytree(runs / "fold1", twin / "fold1", dirs_exist_ok=True)
    stale = tmp_path / "ens" / "out-of-fold" / "predictions" / held_out[0]["validation"][0]
    os.utime(twin / "fold0" / "package" / "model.json")
    before = (stale / "segmentation.nii.gz").stat().st_mtime
    crossval_ensemble([runs, twin], dataset, tmp_path / "ens", only=[0])
    assert (stale / "segmentation.nii.gz").stat().st_mtime > before


def test_fit_refuses_a_cache_from_an_older_core_preprocessing(prepared: Path, tmp_path: Path):
    import shutil

    from Training.fit import fit

    old = tmp_path / "old-cache"
    shutil.copytree(prepared, old)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["preprocessing_version"] = 1
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="older version of the core's preprocessing"):
        fit(Config.from_dict(TINY), old, tmp_path / "run", strategy="none", verbose=0)


def test_validation_volumes_are_whole_cases_and_fill_replica_batches(prepared: Path):
    from Training.pipeline import CaseStore, common_shape, validation_volumes

    ids = ["Synth_0", "Synth_1", "Synth_2"]
    store = CaseStore(prepared, ids)
    shape = common_shape(store)
    config = Config.from_dict(TINY)
    single = list(validation_volumes(store, config, shape))
    assert len(single) == 3 and all(x.shape == (*shape, 4) for x, _ in single)
    # Every tumour voxel of each case is in its validation volume (nothing cropped away).
    for (_, y), case_id in zip(single, ids):
        assert y[..., 1:].sum() == (np.load(prepared / f"{case_id}_labels.npy") > 0).sum()
    assert len(list(validation_volumes(store, config, shape, multiple=2))) == 4


def test_prepare_and_fit_on_real_brats_cases(brats_dir: Path, tmp_path: Path):
    """Three shared BraTS cases at 4 mm through prepare and a two-epoch fit."""
    from Training.fit import fit
    from Training.prepare import prepare_dataset, read_manifest

    data = {
        **TINY,
        "model": {**TINY["model"], "spacing_mm": [4.0, 4.0, 4.0]},
        "training": {**TINY["training"], "epochs": 2},
    }
    config = Config.from_dict(data)
    folder = prepare_dataset(brats_dir, tmp_path / "cache", config, limit=3, progress=False)
    cases = read_manifest(folder)["cases"]
    assert len(cases) == 3
    for entry in cases.values():
        assert entry["label_convention"] == "brats2018" and entry["regions_ml"]["WT"] > 10
        assert all(n % 8 == 0 for n in entry["shape"][:3]) and entry["shape"][3] == 4
    state = fit(config, folder, tmp_path / "run", strategy="none", verbose=0)
    assert state["epoch"] == 2 and all(np.isfinite(r["val_loss"]) for r in state["history"])


def test_compile_model_passes_the_dice_channel_weights_to_the_loss():
    from Training import fit as fit_module

    config = Config.from_dict(
        {
            **TINY,
            "model": {**TINY["model"], "output": "sigmoid"},
            "loss": {"dice_channel_weights": [1, 1, 2]},
        }
    )
    model = fit_module.build_model(config)
    fit_module.compile_model(model, config, 10)
    assert model.loss.dice_channel_weights == [1.0, 1.0, 2.0]
    assert model.loss.output_kind == "sigmoid"


def test_jit_compile_setting_reaches_new_and_resumed_models(
    prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import keras

    from Training import fit as fit_module

    plain = Config.from_dict(TINY)
    jit = Config.from_dict({**TINY, "training": {**TINY["training"], "jit_compile": True}})
    # On the PyTorch backend the setting reaches Keras (there: torch.compile of the step).
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    model = fit_module.build_model(plain)
    fit_module.compile_model(model, plain, 10)
    assert model.jit_compile is False
    fit_module.compile_model(model, jit, 10)
    assert model.jit_compile is True
    monkeypatch.undo()

    # Elsewhere it is ignored with a warning, for new and for resumed runs, and training goes on.
    run = tmp_path / "run"
    short = {**TINY, "training": {**TINY["training"], "epochs": 1, "jit_compile": True}}
    with pytest.warns(UserWarning, match="jit_compile is ignored on the tensorflow backend"):
        fit_module.fit(Config.from_dict(short), prepared, run, strategy="none", verbose=0)
    loaded = []
    original = keras.models.load_model

    def recording_load(*args, **kwargs):
        loaded.append(original(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(keras.models, "load_model", recording_load)
    resumed = {**TINY, "training": {**TINY["training"], "epochs": 2, "jit_compile": True}}
    with pytest.warns(UserWarning, match="jit_compile is ignored"):
        state = fit_module.fit(Config.from_dict(resumed), prepared, run, strategy="none", verbose=0)
    assert loaded and loaded[0].jit_compile is False
    assert [row["epoch"] for row in state["history"]] == [1, 2]
    assert np.isfinite(state["history"][-1]["loss"])


def test_prediction_sets_and_export_choice_options_are_named_and_checked(tmp_path: Path):
    from Training.cli import main
    from Training.crossval import prediction_set
    from Training.export import record_choices

    assert [prediction_set(t, w) for t, w in ((False, None), (True, 96), (False, 0))] == [
        "out-of-fold",
        "out-of-fold-window96-tta",
        "out-of-fold-whole",
    ]
    spec = Config.from_dict(TINY).model_spec()
    spec.test_time_augmentation = True
    record_choices(spec, window=16)
    assert spec.inference_window == [16, 16, 16] and spec.test_time_augmentation is True
    record_choices(spec, tta=False, window=0)
    assert spec.inference_window is None and spec.test_time_augmentation is False
    with pytest.raises(InputError, match="--window 20 does not suit"):
        record_choices(spec, window=20)
    with pytest.raises(SystemExit):  # one or the other
        main(["export", "--run", "r", "--output", str(tmp_path / "o"), "--tta", "--no-tta"])


def _probability_predictions(dataset: Path, tmp_path: Path, et_probability: float) -> Path:
    """``segment --save-probabilities`` outputs for each synthetic case: WT and TC sure (0.8)
    on the truth, ET only ``et_probability`` on the truth, 0 elsewhere."""
    import nibabel as nib

    from BrainTumorSegLib.labels import convention_to_classes, region_mask

    predictions = tmp_path / "pred"
    for n in range(3):
        truth = nib.load(dataset / "HGG" / f"Synth_{n}" / f"Synth_{n}_seg.nii.gz")
        classes = convention_to_classes(np.asarray(truth.dataobj).astype(np.int16), "brats2018")
        sure = {"WT": 0.8, "TC": 0.8, "ET": et_probability}
        channels = np.stack([region_mask(classes, r) * sure[r] for r in ("WT", "TC", "ET")], -1)
        folder = predictions / f"Synth_{n}"
        folder.mkdir(parents=True)
        _write(folder / "segmentation.nii.gz", np.asarray(truth.dataobj), truth.affine)
        _write(folder / "probabilities.nii.gz", channels.astype(np.float32), truth.affine)
        report = {"probability_channels": ["WT", "TC", "ET"]}
        (folder / "report.json").write_text(json.dumps(report))
    return predictions


def test_region_threshold_search_finds_an_unsure_enhancing_region(dataset: Path, tmp_path: Path):
    from Training.cli import main
    from Training.postprocessing import search_min_component

    predictions = _probability_predictions(dataset, tmp_path, et_probability=0.45)
    out = tmp_path / "search"
    result = search_min_component(predictions, dataset, out, (0.0,), (0.3, 0.4, 0.5, 0.6))
    # ET is found below 0.45 only; of 0.3 and 0.4 the one nearer 0.5; TC and WT keep 0.5.
    assert result["best_region_thresholds"] == {"WT": 0.5, "TC": 0.5, "ET": 0.4}
    et = {r["threshold"]: r["dice"] for r in result["region_threshold_rows"] if r["region"] == "ET"}
    assert et[0.3] == et[0.4] == 1.0 and et[0.5] == et[0.6] == 0.0
    assert [r["region"] for r in result["region_threshold_rows"] if r["chosen"]] == [
        "ET",
        "TC",
        "WT",
    ]
    # The component search runs on the chosen thresholds' labels.
    assert result["rows"][0]["dice_ET"] == 1.0 and result["rows"][0]["dice_TC"] == 1.0
    summary = json.loads((out / "chosen" / "summary.json").read_text())
    assert summary["dice_ET"]["mean"] == 1.0
    assert json.loads((out / "search.json").read_text())["best_region_thresholds"]["ET"] == 0.4
    # On the command line, no values means the default candidates.
    args = ["postprocessing", str(predictions), str(dataset), "--output", str(tmp_path / "cli")]
    assert main([*args, "--min-component-ml", "0", "--region-thresholds"]) == 0
    saved = json.loads((tmp_path / "cli" / "search.json").read_text())
    assert saved["best_region_thresholds"]["ET"] == 0.4  # of 0.3, 0.35, 0.4: nearest 0.5
    with pytest.raises(InputError, match="between 0 and 1"):
        search_min_component(predictions, dataset, out, (0.0,), (0.5, 1.5))
    (predictions / "Synth_1" / "probabilities.nii.gz").unlink()
    with pytest.raises(InputError, match="--save-probabilities"):
        search_min_component(predictions, dataset, out, (0.0,), (0.5,))


def test_export_records_the_chosen_region_thresholds(tmp_path: Path):
    from BrainTumorSegLib.model import ModelSpec
    from Training.export import record_choices

    spec = ModelSpec(name="m", output={"kind": "sigmoid", "regions": ["WT", "TC", "ET"]})
    search = tmp_path / "search.json"
    chosen = {"WT": 0.5, "TC": 0.45, "ET": 0.4}
    search.write_text(
        json.dumps({"best_min_component_ml": 1.0, "best_region_thresholds": chosen, "rows": []})
    )
    record_choices(spec, postprocessing=search)
    assert spec.region_thresholds == chosen and spec.region_threshold("ET") == 0.4
    assert ModelSpec.from_dict(spec.to_dict()).region_thresholds == chosen
    search.write_text(json.dumps({"best_min_component_ml": 1.0, "rows": []}))
    record_choices(spec, postprocessing=search)  # a search without thresholds: 0.5 again
    assert spec.region_thresholds == {} and spec.region_threshold("ET") == 0.5
