"""The raw-scan path: registration, skull stripping, auto detection and errors, on small data.

A 2 mm phantom is pasted into a synthetic head and resliced per sequence (own motion, oblique
grid, 5 mm slices), so every step has a known answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ants")
pytest.importorskip("nilearn")

from BrainTumorSegLib.cli import build_parser
from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.geometry import Grid
from BrainTumorSegLib.load import Volume
from BrainTumorSegLib.phantom import make_phantom, write_phantom
from BrainTumorSegLib.raw import (
    MIN_BRAIN_COVERAGE,
    _check_registration,
    brain_coverage,
    field_of_view,
    looks_skull_stripped,
    needed_steps,
    prepare_raw,
)
from BrainTumorSegLib.rawlike import make_rawlike, rigid_matrix, write_rawlike
from BrainTumorSegLib.register import Registration, ants_affine_to_ras
from BrainTumorSegLib.skullstrip import PITCH_STARTS_DEG

SMALL = {s: (88, 88) for s in ("t1", "t1ce", "t2", "flair")}


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(seed=3, resolution_mm=2.0, tumour_radius_mm=14.0)


@pytest.fixture(scope="module")
def rawlike(phantom):
    return make_rawlike(
        phantom.images,
        phantom.brain_mask,
        phantom.grid,
        labels=phantom.classes,
        seed=5,
        matrices=SMALL,
        slice_mm=5.0,
    )


@pytest.fixture(scope="module")
def raw_run(rawlike, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``braintumorseg segment --raw --save-intermediates --components largest`` on the raw-like
    case (run once)."""
    from BrainTumorSegLib.cli import main

    folder = tmp_path_factory.mktemp("raw")
    write_rawlike(rawlike, folder / "in", "Case")
    out = folder / "out"
    code = main(
        ["segment", "--input-dir", str(folder / "in"), "--output", str(out), "--quiet"]
        + ["--model", str(tiny_model), "--raw", "--save-intermediates", "--components", "largest"]
    )
    assert code == 0
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_rawlike_case_is_raw(rawlike) -> None:
    grids = rawlike.grids
    assert len({g.affine.tobytes() for g in grids.values()}) == 4  # each on its own grid
    for sequence, grid in grids.items():
        assert grid.spacing[2] == pytest.approx(5.0)
        assert not looks_skull_stripped(Volume(rawlike.images[sequence], grid))[0]
        # oblique: the slice axis is tilted away from S
        assert abs(grid.affine[2, 2]) / 5.0 < 0.9999


def test_ras_conversion_matches_ants_resampling(phantom) -> None:
    """The matrix read from ANTs maps fixed points to where ANTs samples the moving image."""
    import ants

    truth = rigid_matrix(np.array([4.0, -3.0, 6.0]), np.array([5.0, -2.0, 3.0]), np.zeros(3))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ truth @ np.diag([-1.0, -1.0, 1.0, 1.0])
    transform = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3, matrix=lps[:3, :3], translation=lps[:3, 3]
    )
    np.testing.assert_allclose(ants_affine_to_ras(transform), truth, atol=1e-6)


def test_rigid_registration_recovers_known_motion(rawlike, raw_run: Path) -> None:
    report = json.loads((raw_run / "report.json").read_text())
    grid = rawlike.grids["t1ce"]
    brain = rawlike.truth_on(rawlike.brain_mask.astype(np.uint8), "t1ce", grid) > 0
    points = np.argwhere(brain) @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    for sequence in ("t1", "t2", "flair"):
        found = report["raw"]["registration"][sequence]
        matrix = np.array(found["matrix_ras"])
        truth = rawlike.true_registration("t1ce", sequence)
        moved_true = points @ truth[:3, :3].T + truth[:3, 3]
        moved = points @ matrix[:3, :3].T + matrix[:3, 3]
        before = np.linalg.norm(points - moved_true, axis=1).mean()
        error = np.linalg.norm(moved - moved_true, axis=1).mean()
        assert before > 3.0  # the case really starts misaligned
        assert error < 2.0, f"{sequence}: registration error {error:.2f} mm (was {before:.2f})"
        assert found["mutual_information_registered"] > found["mutual_information_headers"]


def test_skull_stripping_matches_the_true_brain(rawlike, raw_run: Path) -> None:
    import nibabel as nib

    image = nib.load(raw_run / "intermediates" / "brain_mask.nii.gz")
    grid = Grid(image.shape, image.affine)
    mask = np.asarray(image.dataobj) > 0
    truth = rawlike.truth_on(rawlike.brain_mask.astype(np.uint8), "t1ce", grid) > 0
    assert np.allclose(grid.spacing, 1.0)
    score = dice(mask, truth)
    assert score > 0.85, f"brain-mask Dice {score:.3f}"
    # and the skull really is gone: the head around the brain is much larger than the mask
    t1 = np.asarray(nib.load(raw_run / "intermediates" / "registered_t1.nii.gz").dataobj)
    head = t1 > 0.1 * np.percentile(t1, 99)
    assert head.sum() > 1.3 * mask.sum()


def test_pitched_start_places_the_template_brain_centre_on_the_head() -> None:
    from BrainTumorSegLib.skullstrip import MNI_BRAIN_CENTRE_MM, pitched_start

    head_centre = np.array([10.0, 20.0, -30.0])
    start = pitched_start(head_centre, 30.0)
    assert np.allclose(start[:3, :3] @ MNI_BRAIN_CENTRE_MM + start[:3, 3], head_centre)
    # A pitch turns about the left-right (x) axis only: x is kept, y and z rotate.
    assert np.allclose(start[0, :3], [1, 0, 0])
    assert np.isclose(start[1, 1], np.cos(np.radians(30.0)))


def test_skull_stripping_finds_a_strongly_pitched_head(phantom) -> None:
    """A head nodded by 35 degrees in scanner space is still stripped to its brain."""
    from BrainTumorSegLib.rawlike import add_head
    from BrainTumorSegLib.skullstrip import strip_skull

    head, brain, grid, _ = add_head(phantom.images, phantom.brain_mask, phantom.grid, seed=2)
    centre = grid.world_centroid(brain)
    nod = rigid_matrix(np.array([35.0, 0, 0]), np.zeros(3), centre)
    pitched = Grid(grid.shape, nod @ grid.affine)
    result = strip_skull(head["t1"], pitched)
    score = dice(result.mask, brain)
    assert score > 0.9, f"brain-mask Dice {score:.3f} on a pitched head"  # one start: 0.84


def test_skull_stripping_keeps_the_start_with_the_best_final_fit(phantom, monkeypatch) -> None:
    """Every head-pitch start runs the full schedule and the lowest final metric wins (a
    choice after a short coarse run picked a start that ended over the skull vault)."""
    from BrainTumorSegLib import skullstrip
    from BrainTumorSegLib.rawlike import add_head

    head, brain, grid, _ = add_head(phantom.images, phantom.brain_mask, phantom.grid, seed=2)
    final_mi = dict(zip(skullstrip.PITCH_STARTS_DEG, (-0.36, -0.37, -0.38, -0.44, -0.42)))
    calls = []

    def fake_register(fixed, fixed_grid, moving, moving_grid, *, shrink, initial, **kwargs):
        pitch = next(
            p for p in final_mi if np.allclose(initial, skullstrip.pitched_start(centre, p))
        )
        calls.append((pitch, tuple(shrink)))
        return Registration(
            matrix=initial, seconds=1.0, metric_before=-0.3, metric_after=final_mi[pitch]
        )

    centre = grid.world_centroid(skullstrip.head_mask(head["t1"], grid))
    monkeypatch.setattr(skullstrip, "register", fake_register)
    result = skullstrip.strip_skull(head["t1"], grid)
    assert sorted(calls) == sorted((p, skullstrip.AFFINE_SHRINK) for p in final_mi)
    assert result.start_pitch == 15.0 and result.registration.metric_after == -0.44
    assert result.start_metrics == final_mi and result.registration.seconds == len(final_mi)


def test_auto_mode_skips_what_is_not_needed(phantom, rawlike) -> None:
    stripped = {s: Volume(phantom.images[s], phantom.grid) for s in phantom.images}
    assert needed_steps(stripped, "t1ce")["register"] is False
    assert needed_steps(stripped, "t1ce")["skull_strip"] is False
    assert prepare_raw(stripped, "t1ce", mode="auto") is None
    raw = {s: Volume(rawlike.images[s], rawlike.grids[s]) for s in rawlike.images}
    needs = needed_steps(raw, "t1ce")
    assert needs["register"] and needs["skull_strip"]
    assert prepare_raw(stripped, "t1ce", mode="off") is None


def test_failed_registration_is_an_error_and_large_motion_a_warning() -> None:
    worse = Registration(matrix=np.eye(4), seconds=1.0, metric_before=-0.6, metric_after=-0.3)
    with pytest.raises(InputError, match="failed to converge"):
        _check_registration("T2", worse, np.zeros(3))
    turned = rigid_matrix(np.array([0.0, 0.0, 30.0]), np.zeros(3), np.zeros(3))
    moved = Registration(matrix=turned, seconds=1.0, metric_before=-0.4, metric_after=-0.6)
    warnings = _check_registration("T2", moved, np.zeros(3))
    assert len(warnings) == 1 and "30.0 degrees" in warnings[0]


def test_field_of_view_coverage_of_the_brain() -> None:
    grid = Grid((40, 40, 40), np.eye(4))
    brain = np.zeros(grid.shape, dtype=bool)
    brain[10:30, 10:30, 10:30] = True
    # A thin slab (4 of the brain's 20 slices), shifted in world space.
    slab = Grid((40, 40, 4), np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 26.0], [0, 0, 0, 1]]))
    inside = field_of_view(slab, grid)
    assert brain_coverage(brain, inside) == pytest.approx(4 / 20)
    assert brain_coverage(brain, field_of_view(grid, grid)) == 1.0
    assert MIN_BRAIN_COVERAGE > 4 / 20  # such a sequence is refused by prepare_raw


def test_cli_raw_option_values() -> None:
    parser = build_parser()
    base = ["segment", "--input-dir", "x", "--output", "y"]
    assert parser.parse_args(base).raw == "off"
    assert parser.parse_args([*base, "--raw"]).raw == "on"
    assert parser.parse_args([*base, "--raw", "auto"]).raw == "auto"
    assert parser.parse_args([*base, "--raw", "--save-intermediates"]).save_intermediates
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--raw", "maybe"])


def test_segment_raw_end_to_end(rawlike, raw_run: Path) -> None:
    """CLI --raw on a raw-like case: output on the T1ce grid, report, overlay, intermediates."""
    import nibabel as nib

    seg = nib.load(raw_run / "segmentation.nii.gz")
    ref_grid = rawlike.grids["t1ce"]
    assert seg.shape == ref_grid.shape
    np.testing.assert_allclose(seg.affine, ref_grid.affine, atol=1e-3)
    report = json.loads((raw_run / "report.json").read_text())
    assert report["raw"]["registered"] and report["raw"]["skull_stripped"]
    assert set(report["raw"]["registration"]) == {"t1", "t2", "flair"}
    # The skull strip reports every head-pitch start and keeps the best fit; its brain volume
    # is that of the brain mask written among the intermediates.
    strip = report["raw"]["skull_strip"]
    starts = strip["start_mutual_information"]
    assert len(starts) == len(PITCH_STARTS_DEG)
    assert starts[f"{strip['start_pitch_deg']:+g}"] == max(starts.values())
    mask = nib.load(raw_run / "intermediates" / "brain_mask.nii.gz")
    voxel_ml = Grid(mask.shape, mask.affine).voxel_volume_ml
    mask_ml = np.count_nonzero(np.asarray(mask.dataobj)) * voxel_ml
    assert strip["brain_volume_ml"] == pytest.approx(mask_ml, abs=0.1)
    assert (raw_run / "overlay.png").stat().st_size > 10_000
    for sequence in ("t1", "t1ce", "t2", "flair"):
        assert (raw_run / "intermediates" / f"registered_{sequence}.nii.gz").is_file()
    # Something is labelled, and nothing far outside the brain, on the reference grid.
    brain_on_ref = rawlike.truth_on(rawlike.brain_mask.astype(np.uint8), "t1ce", ref_grid)
    labels = np.asarray(seg.dataobj)
    assert labels.any()
    assert (labels[brain_on_ref == 0] > 0).mean() < 0.2
    # One component kept on the output grid; the 1 mm labels (overlay, intermediates) keep the
    # same lesion: each of their components overlaps it, and every removed one is reported.
    from scipy import ndimage

    from BrainTumorSegLib.conform import resample_to_grid

    structure = np.ones((3, 3, 3))
    assert ndimage.label(labels > 0, structure=structure)[1] == 1
    fine = nib.load(raw_run / "intermediates" / "segmentation_1mm.nii.gz")
    fine_grid = Grid(fine.shape, fine.affine)
    output_grid = Grid(seg.shape, seg.affine)
    kept = resample_to_grid((labels > 0).astype(np.uint8), output_grid, fine_grid, order=0) > 0
    components, count = ndimage.label(np.asarray(fine.dataobj) > 0, structure=structure)
    assert count >= 1
    assert all((kept & (components == c)).any() for c in range(1, count + 1))
    assert report["settings"]["keep_largest_component"] is True
    removed = report["settings"]["removed_components_ml"]
    assert bool(removed) == any("largest tumour component" in w for w in report["warnings"])


def test_segment_raw_auto_on_stripped_input_is_the_normal_path(
    phantom, tiny_model: Path, tmp_path: Path
) -> None:
    from BrainTumorSegLib import segment

    paths = write_phantom(phantom, tmp_path / "in", case_id="P")
    inputs = {s: paths[s] for s in ("t1", "t1ce", "t2", "flair")}
    auto = segment(inputs, None, model=tiny_model, raw="auto")
    off = segment(inputs, None, model=tiny_model, raw="off")
    assert "raw" not in auto.report
    assert np.array_equal(auto.classes, off.classes)
