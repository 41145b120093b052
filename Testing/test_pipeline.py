"""End-to-end behaviour of ``segment`` on synthetic cases whose truth is known."""

import json

import nibabel as nib
import numpy as np
import pytest
from conftest import blob_case, write_nifti
from test_geometry import make_affine

from BrainTumorSegLib import segment
from BrainTumorSegLib.geometry import apply_affine


def lesion_world_centre(paths):
    image = nib.load(str(paths["t1ce"]))
    data = np.asarray(image.dataobj)
    return apply_affine(image.affine, np.argwhere(data >= 1999).mean(axis=0)[None])[0]


GEOMETRIES = {
    "axis-aligned 2 mm": make_affine((2.0, 2.0, 2.0)),
    "LPS flipped": make_affine((2.0, 2.0, 2.0), flips=(-1, -1, 1), origin=(40, 50, -10)),
    "anisotropic": make_affine((1.7, 2.3, 3.1), origin=(-30, 12, 5)),
    "oblique": make_affine((2.0, 2.0, 2.5), angles=(0.25, -0.15, 0.4), origin=(3, -7, 11)),
    "oblique flipped left-handed": make_affine(
        (1.8, 2.2, 2.0), angles=(-0.3, 0.2, 0.1), flips=(1, -1, 1), origin=(60, 20, -40)
    ),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_lesion_lands_at_its_world_position(tmp_path, tiny_model, name):
    paths = blob_case(tmp_path / "case", GEOMETRIES[name])
    result = segment(paths, tmp_path / "out", model=tiny_model, overlay=False)
    reference = nib.load(str(paths["t1ce"]))
    written = nib.load(str(tmp_path / "out" / "segmentation.nii.gz"))
    assert written.shape == reference.shape
    np.testing.assert_allclose(written.affine, reference.affine, atol=1e-5)
    found = np.argwhere(np.asarray(written.dataobj) > 0)
    assert len(found) > 0
    centre = apply_affine(written.affine, found.mean(axis=0)[None])[0]
    assert np.linalg.norm(centre - lesion_world_centre(paths)) < 1.5
    assert result.classes.shape == reference.shape


def test_sequences_on_other_grids_are_resampled_onto_the_reference(tmp_path, tiny_model):
    paths = blob_case(tmp_path / "case")
    # Rewrite T2 on a flipped, shifted grid covering the same world space.
    t2 = nib.load(str(paths["t2"]))
    flipped = np.flip(np.asarray(t2.dataobj), axis=0)
    affine = t2.affine @ np.array(
        [[-1, 0, 0, t2.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    )
    write_nifti(paths["t2"], flipped, affine)
    result = segment(paths, tmp_path / "out", model=tiny_model, overlay=False)
    assert any("T2 was resampled" in w for w in result.report["warnings"])
    assert np.count_nonzero(result.classes) > 0


def test_reference_option_chooses_the_output_grid(tmp_path, tiny_model):
    paths = blob_case(tmp_path / "case")
    flair = nib.load(str(paths["flair"]))
    # FLAIR at 1 mm: the segmentation must come back on that finer grid when it is the reference.
    fine = np.kron(np.asarray(flair.dataobj), np.ones((2, 2, 2))).astype(np.float32)
    affine = flair.affine @ np.array(
        [[0.5, 0, 0, -0.25], [0, 0.5, 0, -0.25], [0, 0, 0.5, -0.25], [0, 0, 0, 1]]
    )
    write_nifti(paths["flair"], fine, affine)
    result = segment(paths, tmp_path / "out", model=tiny_model, reference="flair", overlay=False)
    assert result.classes.shape == fine.shape
    np.testing.assert_allclose(result.grid.affine, affine, atol=1e-6)


def test_report_and_label_conventions(tmp_path, tiny_model):
    paths = blob_case(tmp_path / "case")
    segment(paths, tmp_path / "a", model=tiny_model, overlay=False)
    segment(paths, tmp_path / "b", model=tiny_model, labels="brats2023", overlay=False)
    a = np.asarray(nib.load(str(tmp_path / "a" / "segmentation.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "b" / "segmentation.nii.gz")).dataobj)
    assert set(np.unique(a)) <= {0, 1, 2, 4}
    assert set(np.unique(b)) <= {0, 1, 2, 3}
    np.testing.assert_array_equal(a == 4, b == 3)
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["model"]["name"] == "tiny-test"
    assert set(report["inputs"]) == {"t1", "t1ce", "t2", "flair"}
    assert all(len(v["sha256"]) == 64 for v in report["inputs"].values())
    voxel_ml = 8.0 / 1000
    assert report["regions_ml"]["WT"] == pytest.approx(np.count_nonzero(a) * voxel_ml, abs=1e-3)
    assert report["regions_ml"]["ET"] == pytest.approx(
        np.count_nonzero(a == 4) * voxel_ml, abs=1e-3
    )
    for stage in (
        "load",
        "validate",
        "conform",
        "preprocess",
        "infer",
        "restore",
        "postprocess",
        "write",
    ):
        assert stage in report["timings_s"]
    assert report["software"]["version"]


def test_api_without_output_writes_nothing(tmp_path, tiny_model):
    paths = blob_case(tmp_path / "case")
    before = sorted(p.name for p in (tmp_path / "case").iterdir())
    result = segment(paths, model=tiny_model)
    assert result.outputs == {}
    assert sorted(p.name for p in (tmp_path / "case").iterdir()) == before
    assert result.report["regions_ml"]["WT"] > 0


def test_sliding_window_agrees_with_whole_volume(tmp_path, tiny_model):
    paths = blob_case(tmp_path / "case", shape=(64, 60, 56), centre=(30, 30, 28))
    whole = segment(paths, model=tiny_model)
    windows = segment(paths, model=tiny_model, memory_budget_gb=1e-5)
    assert whole.report["settings"]["working_grid"] == windows.report["settings"]["working_grid"]
    agreement = np.mean(whole.classes == windows.classes)
    assert agreement > 0.995
    assert np.count_nonzero(windows.classes) > 0


def test_model_inference_window_runs_windows_and_the_option_overrides_it(tmp_path, tiny_model):
    from BrainTumorSegLib.errors import InputError
    from BrainTumorSegLib.model import load_model_spec
    from BrainTumorSegLib.progress import Progress

    paths = blob_case(tmp_path / "case", shape=(64, 60, 56), centre=(30, 30, 28))
    spec = load_model_spec(tiny_model)
    spec.inference_window = [16, 16, 16]  # a model whose card chose windows of its patch size
    spec.validate()
    runs, messages = {}, {}
    for window in (None, 0, 24):
        seen: list[str] = []
        progress = Progress("callback", callback=lambda stage, f, m, seen=seen: seen.append(m))
        runs[window] = segment(paths, model=spec, window=window, progress=progress)
        messages[window] = seen
    windowed, whole, wider = runs[None], runs[0], runs[24]
    assert any("windows of 16x16x16" in m for m in messages[None])
    assert windowed.report["settings"]["inference_window"] == [16, 16, 16]
    assert any("whole volume" in m for m in messages[0])
    assert not any("windows of" in m for m in messages[0])
    assert whole.report["settings"]["inference_window"] is None
    assert any("windows of 24x24x24" in m for m in messages[24])
    assert wider.report["settings"]["inference_window"] == [24, 24, 24]
    # The tiny network is nearly pointwise: windows blend back to the whole-volume labels.
    for result in (windowed, wider):
        assert np.mean(result.classes == whole.classes) > 0.995
    assert np.count_nonzero(windowed.classes) > 0
    with pytest.raises(InputError, match=r"--window 20 .*multiples of size_multiple \(8\)"):
        segment(paths, model=spec, window=20)


def test_inference_window_in_model_json_is_checked(tmp_path, tiny_model):
    import shutil

    from BrainTumorSegLib.errors import InputError
    from BrainTumorSegLib.model import load_model_spec

    package = tmp_path / "package"
    shutil.copytree(tiny_model, package)
    meta = json.loads((package / "model.json").read_text())
    for bad in ([16, 16], [16, 16, 12], [16, 16, 0], "16", [16.0, 16, 16], [True, 16, 16]):
        (package / "model.json").write_text(json.dumps({**meta, "inference_window": bad}))
        with pytest.raises(InputError, match="inference_window"):
            load_model_spec(package)
    (package / "model.json").write_text(json.dumps({**meta, "inference_window": [16, 24, 32]}))
    assert load_model_spec(package).inference_window == [16, 24, 32]


def test_test_time_augmentation_runs_all_mirrorings(tmp_path, tiny_model):
    paths = blob_case(tmp_path / "case")
    events = []
    from BrainTumorSegLib.progress import Progress

    progress = Progress(
        "callback", callback=lambda stage, fraction, message: events.append(message)
    )
    result = segment(paths, model=tiny_model, tta=True, progress=progress)
    assert any("pass 8/8" in m for m in events)
    # The tiny network is mirror-symmetric (uniform smoothing + per-voxel weights).
    plain = segment(paths, model=tiny_model)
    np.testing.assert_array_equal(result.classes, plain.classes)
    assert result.report["settings"]["test_time_augmentation"] is True
    assert plain.report["settings"]["test_time_augmentation"] is False


def test_model_default_test_time_augmentation_and_its_override(tmp_path, tiny_model):
    from BrainTumorSegLib.model import load_model_spec
    from BrainTumorSegLib.progress import Progress

    paths = blob_case(tmp_path / "case")
    spec = load_model_spec(tiny_model)
    spec.test_time_augmentation = True  # a model whose card chose it
    for tta, passes in ((None, 8), (False, 1), (True, 8)):
        events: list[str] = []
        progress = Progress("callback", callback=lambda stage, f, m, seen=events: seen.append(m))
        result = segment(paths, model=spec, tta=tta, progress=progress)
        assert any(f"pass {passes}/{passes}" in m for m in events), tta
        assert not any(f"pass {passes + 1}/" in m for m in events)
        assert result.report["settings"]["test_time_augmentation"] is (passes == 8)
    with pytest.raises(ValueError, match="test_time_augmentation"):
        spec.test_time_augmentation = "yes"
        spec.validate()


def two_lesion_case(folder):
    """``blob_case`` plus a second, smaller bright lesion far from the first."""
    paths = blob_case(folder)
    for path in paths.values():
        image = nib.load(str(path))
        data = np.asarray(image.dataobj).copy()
        grid = np.indices(data.shape)
        second = sum((grid[a] - c) ** 2 for a, c in enumerate((16, 34, 22))) <= 6.0
        data[second] = 2000.0
        write_nifti(path, data, image.affine)
    return paths


def count_components(classes):
    from scipy import ndimage

    return ndimage.label(classes > 0, structure=np.ones((3, 3, 3)))[1]


def test_keep_largest_component_returns_what_it_removed():
    from BrainTumorSegLib.geometry import Grid
    from BrainTumorSegLib.postprocess import clean_components, keep_largest_component

    grid = Grid(shape=(20, 20, 20), affine=np.diag([2.0, 2.0, 2.0, 1.0]))  # 8 uL voxels
    classes = np.zeros(grid.shape, np.uint8)
    classes[2:6, 2:6, 2:6] = 2  # 64 voxels: edema ...
    classes[3:5, 3:5, 3:5] = 4  # ... around an enhancing core: one component
    classes[12:14, 12:14, 12:14] = 1  # 8 voxels, far away
    classes[18, 18, 18] = 4  # 1 voxel
    kept, removed = keep_largest_component(classes, grid)
    np.testing.assert_array_equal(kept[:8, :8, :8], classes[:8, :8, :8])
    assert np.count_nonzero(kept) == 64 and kept.dtype == np.uint8
    assert removed == pytest.approx([8 * 0.008, 0.008])
    # Island removal first: the single voxel is gone before the largest is kept.
    kept2, removed2 = clean_components(classes, grid, 0.01, keep_largest=True)
    np.testing.assert_array_equal(kept2, kept)
    assert removed2 == pytest.approx([0.064])
    untouched, none = clean_components(classes, grid, 0.0, keep_largest=False)
    assert untouched is classes and none == []
    empty = np.zeros(grid.shape, np.uint8)
    assert keep_largest_component(empty, grid)[1] == []


def test_components_overlapping_a_mask_are_kept_whole():
    from BrainTumorSegLib.postprocess import keep_components_overlapping

    classes = np.zeros((12, 12, 12), np.uint8)
    classes[1:5, 1:5, 1:5] = 2
    classes[8:11, 8:11, 8:11] = 4
    keep = np.zeros(classes.shape, bool)
    keep[4, 4, 4] = True  # one voxel of the first component
    kept = keep_components_overlapping(classes, keep)
    np.testing.assert_array_equal(kept[:6], classes[:6])
    assert not kept[6:].any()
    assert not keep_components_overlapping(classes, np.zeros(classes.shape, bool)).any()


def test_largest_component_option_and_model_default(tmp_path, tiny_model):
    from BrainTumorSegLib.model import load_model_spec

    paths = two_lesion_case(tmp_path / "case")
    both = segment(paths, model=tiny_model, overlay=False)
    assert count_components(both.classes) == 2
    assert both.report["settings"]["keep_largest_component"] is False
    assert both.report["settings"]["removed_components_ml"] == []

    one = segment(paths, tmp_path / "out", model=tiny_model, keep_largest_component=True)
    assert count_components(one.classes) == 1
    removed = one.report["settings"]["removed_components_ml"]
    assert len(removed) == 1 and 0 < removed[0] < one.report["regions_ml"]["WT"]
    # The larger lesion (centre 28, 22, 18) is kept as it was; the smaller one is gone.
    assert one.classes[28, 22, 18] > 0 and both.classes[16, 34, 22] > 0
    assert one.classes[16, 34, 22] == 0
    assert np.array_equal(one.classes[one.classes > 0], both.classes[one.classes > 0])
    warning = [w for w in one.report["warnings"] if "largest tumour component" in w]
    assert len(warning) == 1 and "--components all" in warning[0]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["settings"]["removed_components_ml"] == removed

    spec = load_model_spec(tiny_model)
    spec.keep_largest_component = True  # a model whose card chose it
    assert count_components(segment(paths, model=spec).classes) == 1
    kept_all = segment(paths, model=spec, keep_largest_component=False)
    assert count_components(kept_all.classes) == 2


def test_saved_probabilities_give_back_the_segmentation_on_the_input_grid(tmp_path, tiny_model):
    from BrainTumorSegLib.model import load_model_spec
    from BrainTumorSegLib.postprocess import labels_from_output

    # An oblique, anisotropic grid: the probabilities must land where the labels do.
    affine = make_affine((1.2, 0.9, 2.5), (0.2, -0.1, 0.3), (1, -1, 1), (10.0, -5.0, 3.0))
    paths = blob_case(tmp_path / "case", affine)
    result = segment(paths, tmp_path / "out", model=tiny_model, save_probabilities=True)
    assert "probabilities" in result.outputs
    image = nib.load(str(result.outputs["probabilities"]))
    assert image.shape == (*result.grid.shape, 3) and image.get_data_dtype() == np.float32
    np.testing.assert_allclose(image.affine, nib.load(str(paths["t1ce"])).affine, atol=1e-5)
    assert result.report["probability_channels"] == ["NCR", "ED", "ET"]
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["probability_channels"] == ["NCR", "ED", "ET"]
    probabilities = np.moveaxis(np.asarray(image.dataobj), -1, 0)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    relabelled = labels_from_output(probabilities, load_model_spec(tiny_model))
    assert np.array_equal(relabelled, result.classes) and result.classes.any()
    # Without the option nothing more is written.
    plain = segment(paths, tmp_path / "plain", model=tiny_model)
    assert "probabilities" not in plain.outputs
    assert not (tmp_path / "plain" / "probabilities.nii.gz").exists()


def test_region_thresholds_label_sigmoid_outputs_and_are_validated():
    from BrainTumorSegLib.model import ModelSpec
    from BrainTumorSegLib.postprocess import labels_from_output

    regions = {"kind": "sigmoid", "regions": ["WT", "TC", "ET"]}
    # Voxels (columns): all three regions sure (enhancing); core, enhancing only at an ET
    # threshold below 0.4; edema only at a WT threshold below 0.45; nothing.
    probabilities = np.array(
        [[0.9, 0.9, 0.45, 0.1], [0.9, 0.9, 0.2, 0.1], [0.9, 0.4, 0.2, 0.1]], np.float32
    ).reshape(3, 4, 1, 1)
    default = labels_from_output(probabilities, ModelSpec(name="m", output=regions))
    assert default[:, 0, 0].tolist() == [3, 1, 0, 0]
    spec = ModelSpec(name="m", output=regions, region_thresholds={"ET": 0.35, "WT": 0.4})
    assert spec.region_threshold("TC") == 0.5 and spec.region_threshold("ET") == 0.35
    assert labels_from_output(probabilities, spec)[:, 0, 0].tolist() == [3, 3, 2, 0]
    for bad in ({"ET": 1.0}, {"ET": 0.0}, {"ET": True}, {"XX": 0.4}, [0.4]):
        with pytest.raises(ValueError, match="region_thresholds"):
            ModelSpec(name="m", output=regions, region_thresholds=bad)
    with pytest.raises(ValueError, match="sigmoid"):
        ModelSpec(name="m", region_thresholds={"ET": 0.4})  # a softmax model has no regions
