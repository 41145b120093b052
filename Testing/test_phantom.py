"""Tests for the digital glioma phantom (BrainTumorSegLib.phantom)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

pytest.importorskip("nilearn")

from BrainTumorSegLib import phantom as ph
from BrainTumorSegLib.labels import convention_to_classes, region_mask

NCR, ED, ET = ph.NCR, ph.ED, ph.ET


@pytest.fixture(scope="module")
def phantom_1mm() -> ph.Phantom:
    return ph.make_phantom(seed=0, resolution_mm=1.0)


@pytest.fixture(scope="module")
def phantom_3mm() -> ph.Phantom:
    return ph.make_phantom(seed=0, resolution_mm=3.0)


def _voxel_ml(p: ph.Phantom) -> float:
    return abs(np.linalg.det(p.affine[:3, :3])) / 1000.0


def _centroid_mm(p: ph.Phantom, region: str) -> np.ndarray:
    ijk = np.argwhere(region_mask(p.classes, region)).mean(axis=0)
    return p.affine[:3, :3] @ ijk + p.affine[:3, 3]


def _oblique_grid(spacing: tuple[float, float, float]) -> tuple[np.ndarray, tuple[int, ...]]:
    """A flipped, rotated, anisotropic grid covering the brain."""
    a, b = np.deg2rad(20.0), np.deg2rad(-12.0)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    flip = np.diag([-1.0, -1.0, 1.0])  # LPS-like axes
    linear = rot_z @ rot_x @ flip @ np.diag(spacing)
    shape = tuple(int(np.ceil(230.0 / s)) for s in spacing)
    affine = np.eye(4)
    affine[:3, :3] = linear
    centre = np.array([0.0, -18.0, 18.0])
    affine[:3, 3] = centre - linear @ ((np.array(shape) - 1) / 2.0)
    return affine, shape


def test_arrays_types_and_shapes(phantom_3mm: ph.Phantom) -> None:
    p = phantom_3mm
    assert set(p.images) == {"t1", "t1ce", "t2", "flair"}
    assert p.shape == (66, 78, 63)
    for image in p.images.values():
        assert image.dtype == np.float32 and image.shape == p.shape
    assert p.classes.dtype == np.uint8 and set(np.unique(p.classes)) == {0, 1, 2, 3}
    assert p.brain_mask.dtype == bool and p.brain_mask.shape == p.shape
    assert p.affine.shape == (4, 4)
    assert np.allclose(p.grid.spacing, 3.0) and p.grid.orientation() == "RAS"


def test_volumes_plausible(phantom_1mm: ph.Phantom) -> None:
    volumes = phantom_1mm.volumes_ml()
    assert all(v > 1.0 for v in volumes.values()), volumes
    wt = region_mask(phantom_1mm.classes, "WT").sum() * _voxel_ml(phantom_1mm)
    assert 10.0 < wt < 150.0
    assert volumes["ED"] > volumes["NCR"] + volumes["ET"]  # oedema is the largest part
    # The lesion sits in one hemisphere.
    ijk = np.argwhere(region_mask(phantom_1mm.classes, "WT"))
    xs = ijk @ phantom_1mm.affine[0, :3] + phantom_1mm.affine[0, 3]
    assert np.all(xs > 0) or np.all(xs < 0)


def test_labels_nested(phantom_1mm: ph.Phantom) -> None:
    classes = phantom_1mm.classes
    # The enhancing rim encloses the necrotic core: NCR never touches oedema or background.
    grown = ndimage.binary_dilation(classes == NCR)
    assert np.all(np.isin(classes[grown], [NCR, ET]))
    # The tumour core is surrounded by oedema or by the edge of the brain.
    around_core = ndimage.binary_dilation(region_mask(classes, "TC"), iterations=2)
    ring = around_core & ~region_mask(classes, "TC") & phantom_1mm.brain_mask
    assert np.mean(classes[ring] == ED) > 0.8
    # A single connected lesion, inside the brain.
    assert ndimage.label(classes > 0)[1] == 1
    assert not np.any(classes[~phantom_1mm.brain_mask])


def test_rim_thickness(phantom_1mm: ph.Phantom) -> None:
    # Distance from each rim voxel to the necrotic core: at most ~4 mm (+ voxel rounding).
    distance = ndimage.distance_transform_edt(phantom_1mm.classes != NCR)
    rim = distance[phantom_1mm.classes == ET]
    assert rim.max() <= 4.6
    assert 1.0 <= np.median(rim) <= 3.5


def test_contrast_ordering(phantom_1mm: ph.Phantom) -> None:
    p = phantom_1mm
    mask, gm, wm = ph._tissue_maps(p.affine, p.shape)
    healthy = mask & (p.classes == 0)
    regions = {
        "wm": healthy & (wm > 0.9),
        "gm": healthy & (gm > 0.8),
        "csf": healthy & (1 - gm - wm > 0.8),
        "ncr": p.classes == NCR,
        "ed": p.classes == ED,
        "et": p.classes == ET,
    }

    def med(seq: str, region: str) -> float:
        return float(np.median(p.images[seq][regions[region]]))

    assert med("t1", "wm") > med("t1", "gm") > med("t1", "csf")
    assert med("t1ce", "wm") > med("t1ce", "gm") > med("t1ce", "csf")
    assert med("t1ce", "et") > 1.5 * med("t1ce", "wm")  # enhancing rim very bright
    assert med("t1ce", "ncr") < med("t1ce", "gm")  # necrosis dark
    assert med("t2", "csf") > med("t2", "ed") > med("t2", "gm") > med("t2", "wm")
    assert med("flair", "ed") > med("flair", "gm") > med("flair", "wm") > med("flair", "csf")
    assert med("flair", "ed") == max(med("flair", r) for r in regions)
    for image in p.images.values():  # scanner-like range
        assert 100 < np.percentile(image[mask], 50) < 3000 and image.max() < 5000


def test_background_exactly_zero(phantom_3mm: ph.Phantom) -> None:
    p = phantom_3mm
    for image in p.images.values():
        assert np.all(image[~p.brain_mask] == 0.0)
        assert np.all(image[p.brain_mask] > 0.0)
    assert 1200 < p.brain_mask.sum() * _voxel_ml(p) < 2200


def test_deterministic() -> None:
    a = ph.make_phantom(seed=3, resolution_mm=3.0)
    b = ph.make_phantom(seed=3, resolution_mm=3.0)
    c = ph.make_phantom(seed=4, resolution_mm=3.0)
    assert np.array_equal(a.classes, b.classes)
    for name in a.images:
        assert np.array_equal(a.images[name], b.images[name])
    assert not np.array_equal(a.classes, c.classes)


def test_same_tumour_at_every_resolution(phantom_1mm: ph.Phantom, phantom_3mm: ph.Phantom) -> None:
    centroid = _centroid_mm(phantom_1mm, "TC")
    assert np.linalg.norm(_centroid_mm(phantom_3mm, "TC") - centroid) < 1.5
    wt_1 = region_mask(phantom_1mm.classes, "WT").sum() * _voxel_ml(phantom_1mm)
    wt_3 = region_mask(phantom_3mm.classes, "WT").sum() * _voxel_ml(phantom_3mm)
    assert abs(wt_3 - wt_1) / wt_1 < 0.1


def test_tumour_centre_and_radius() -> None:
    centre = np.array([-26.0, -20.0, 28.0])
    small = ph.make_phantom(resolution_mm=2.0, tumour_centre_mm=centre, tumour_radius_mm=10.0)
    large = ph.make_phantom(resolution_mm=2.0, tumour_centre_mm=centre, tumour_radius_mm=18.0)
    assert np.linalg.norm(_centroid_mm(small, "TC") - centre) < 4.0
    assert np.allclose(small.tumour_centre_mm, centre)
    tc_small = region_mask(small.classes, "TC").sum()
    assert region_mask(large.classes, "TC").sum() > 3 * tc_small


def test_resample_onto_oblique_flipped_grid(phantom_3mm: ph.Phantom) -> None:
    source = ph.make_phantom(seed=0, resolution_mm=2.0)
    affine, shape = _oblique_grid((1.5, 2.5, 3.0))
    out = ph.resample_phantom(source, affine, shape)
    assert out.shape == shape and np.allclose(out.affine, affine)
    assert out.grid.orientation()[2] == "S" and out.grid.orientation()[:2] in ("LP", "PL")
    for region in ("TC", "WT"):
        shift = np.linalg.norm(_centroid_mm(out, region) - _centroid_mm(source, region))
        assert shift < 1.5, (region, shift)
    wt_src = region_mask(source.classes, "WT").sum() * _voxel_ml(source)
    wt_out = region_mask(out.classes, "WT").sum() * _voxel_ml(out)
    assert abs(wt_out - wt_src) / wt_src < 0.1
    for image in out.images.values():
        assert image.dtype == np.float32
        assert np.all(image[~out.brain_mask] == 0.0) and np.all(image[out.brain_mask] > 0.0)
    assert not np.any(out.classes[~out.brain_mask])


def test_generate_directly_on_oblique_grid(phantom_3mm: ph.Phantom) -> None:
    affine, shape = _oblique_grid((2.0, 3.0, 2.5))
    direct = ph.make_phantom(seed=0, affine=affine, shape=shape)
    assert direct.shape == shape
    shift = np.linalg.norm(_centroid_mm(direct, "TC") - _centroid_mm(phantom_3mm, "TC"))
    assert shift < 1.5


@pytest.mark.parametrize(
    ("layout", "convention", "names", "et_value"),
    [
        ("brats2018", "brats2018", ["_t1", "_t1ce", "_t2", "_flair", "_seg"], 4),
        ("brats2023", "brats2023", ["-t1n", "-t1c", "-t2w", "-t2f", "-seg"], 3),
    ],
)
def test_write_phantom(phantom_3mm, tmp_path, layout, convention, names, et_value) -> None:
    import nibabel as nib

    paths = ph.write_phantom(
        phantom_3mm, tmp_path / "case", case_id="Case7", convention=convention, layout=layout
    )
    assert list(paths) == ["t1", "t1ce", "t2", "flair", "seg"]
    assert [p.name for p in paths.values()] == [f"Case7{n}.nii.gz" for n in names]
    seg = nib.load(paths["seg"])
    assert np.allclose(seg.affine, phantom_3mm.affine)
    values = np.asarray(seg.dataobj)
    assert set(np.unique(values)) == {0, 1, 2, et_value}
    assert np.array_equal(convention_to_classes(values, convention), phantom_3mm.classes)
    t1ce = nib.load(paths["t1ce"])
    assert t1ce.get_data_dtype() == np.int16
    data = np.asarray(t1ce.dataobj)
    assert np.abs(data - phantom_3mm.images["t1ce"]).max() <= 0.5
    assert np.all(data[~phantom_3mm.brain_mask] == 0)


def test_bad_arguments(phantom_3mm: ph.Phantom, tmp_path) -> None:
    with pytest.raises(ValueError, match="layout"):
        ph.write_phantom(phantom_3mm, tmp_path, layout="brats2030")
    with pytest.raises(ValueError):
        ph.make_phantom(affine=np.eye(4))
    with pytest.raises(ValueError):
        ph.make_phantom(resolution_mm=0)


def test_core_imports_without_nilearn() -> None:
    code = (
        "import sys; sys.modules['nilearn'] = None; "
        "import BrainTumorSegLib.phantom as p; print(p.SEQUENCES)"
    )
    package_root = str(Path(ph.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_bundled_model_segments_the_demo_phantom(phantom_1mm: ph.Phantom, tmp_path: Path) -> None:
    """The shipped default model on the demo case: a guard that the package and the core's
    preprocessing still fit together (the demo case is never used in training)."""
    from BrainTumorSegLib import segment

    files = ph.write_phantom(phantom_1mm, tmp_path / "case")
    images = {s: files[s] for s in ("t1", "t1ce", "t2", "flair")}
    result = segment(images, tmp_path / "out", overlay=False)
    for region, floor in (("WT", 0.7), ("TC", 0.5)):
        truth = region_mask(phantom_1mm.classes, region)
        found = region_mask(result.classes, region)
        dice = 2 * (truth & found).sum() / (truth.sum() + found.sum())
        assert dice >= floor, f"{region} Dice {dice:.3f} on the demo phantom"
    assert region_mask(result.classes, "ET").any()
