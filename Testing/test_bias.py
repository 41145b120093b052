"""N4 bias-field correction: both backends remove a known field and agree with each other.

The bundled model is trained on ANTsPy-corrected images while 3D Slicer runs SimpleITK's N4,
so the two backends must give the same network input, not merely both "correct" the image.
"""

from __future__ import annotations

import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from BrainTumorSegLib import bias
from BrainTumorSegLib.geometry import Grid

# SimpleITK is a core dependency; ANTsPy comes with the [bias] extra (and [dev]).
needs_ants = pytest.mark.skipif(find_spec("ants") is None, reason="antspyx is not installed")


def _biased_phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray, Grid]:
    """A textured ellipsoid on an anisotropic grid, times a smooth field (max/min 2.0 inside it)."""
    rng = np.random.default_rng(0)
    shape = (64, 72, 40)
    i, j, k = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = (i**2 + j**2 + k**2) < 0.8
    # Two tissue classes (white/grey-like) plus noise, as N4's histogram sharpening expects.
    tissue = np.where(np.sin(6 * i) * np.cos(5 * j) > 0, 100.0, 60.0) + rng.normal(0, 3, shape)
    field = np.exp(0.3 * i - 0.2 * j + 0.15 * k)
    image = np.where(mask, tissue * field, 0.0).astype(np.float32)
    clean = np.where(mask, tissue, 0.0).astype(np.float32)
    grid = Grid(shape=shape, affine=np.diag([1.2, 1.0, 2.0, 1.0]))
    return image, clean, mask, grid


def _zscore(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = x[mask]
    return (values - values.mean()) / values.std()


def _write_self_test_case(folder: Path) -> dict[str, Path]:
    """The in-Slicer self-test's case as NIfTI files (Slicer's [k, j, i] = the file's [i, j, k])."""
    import nibabel as nib

    from BrainTumorSegLib.slicer_glue import self_test_case

    case = self_test_case()
    images = {}
    for sequence, array in case.images.items():
        images[sequence] = folder / f"Case001_{sequence}.nii.gz"
        nib.save(nib.Nifti1Image(array.transpose(2, 1, 0), case.ijk_to_ras), images[sequence])
    return images


@pytest.mark.parametrize("backend", [pytest.param("ants", marks=needs_ants), "sitk"])
def test_n4_removes_a_known_field(backend: str) -> None:
    image, clean, mask, grid = _biased_phantom()
    before = image.copy()
    corrected = bias.n4_correct(image, mask, grid, backend=backend)
    np.testing.assert_array_equal(image, before)  # the input is never modified
    assert corrected.dtype == np.float32 and corrected.shape == image.shape
    assert np.all(corrected[~mask] == 0)
    # The residual field (corrected / clean) is far flatter than the applied one.
    applied = np.log(image[mask] / clean[mask])
    residual = np.log(corrected[mask] / clean[mask])
    assert residual.std() < 0.35 * applied.std()


@needs_ants
def test_backends_give_the_same_network_input() -> None:
    image, _, mask, grid = _biased_phantom()
    ants_z = _zscore(bias.n4_correct(image, mask, grid, backend="ants"), mask)
    sitk_z = _zscore(bias.n4_correct(image, mask, grid, backend="sitk"), mask)
    # z-scored as the preprocessing does: equal to well under the noise (sd ~0.1 z here).
    assert np.abs(ants_z - sitk_z).max() < 0.01


def _fake_n4_modules(monkeypatch: pytest.MonkeyPatch, installed: set[str]) -> None:
    """Only the N4 modules in ``installed`` ("SimpleITK", "ants") look installed; every other
    module is looked up for real. The set is read at each lookup, so a test may change it."""

    def fake(name: str, *args):
        if name in ("SimpleITK", "ants"):
            return object() if name in installed else None
        return find_spec(name, *args)

    monkeypatch.setattr(bias.importlib.util, "find_spec", fake)


def test_a_requested_backend_that_is_missing_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A comparison of the two backends must never silently run one of them twice."""
    _fake_n4_modules(monkeypatch, {"SimpleITK"})
    with pytest.raises(RuntimeError, match="antspyx"):
        bias.available_backend("ants")
    assert bias.available_backend() == "sitk"  # no preference: what is installed


def test_segment_refuses_an_unknown_backend_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from BrainTumorSegLib import pipeline, segment
    from BrainTumorSegLib.errors import InputError

    def not_yet(*args, **kwargs):
        raise AssertionError("images were read before the backend was checked")

    images = _write_self_test_case(tmp_path)
    monkeypatch.setattr(pipeline, "load_volume", not_yet)
    with pytest.raises(InputError, match="backend"):
        segment(images, tmp_path / "out", bias_backend="fsl")
    # With neither installed, the message lists segmentation's order, SimpleITK first.
    _fake_n4_modules(monkeypatch, set())
    with pytest.raises(InputError, match="SimpleITK or antspyx"):
        segment(images, tmp_path / "out", bias_correction=True)


def test_segmentation_prefers_simpleitk_and_falls_back_to_ants(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Segmentation looks for SimpleITK first, training's preparation for ANTsPy; each takes the
    other when its first choice is missing, and says which packages would do when none is."""
    installed = {"SimpleITK", "ants"}
    _fake_n4_modules(monkeypatch, installed)
    assert bias.available_backend(None, bias.SEGMENT_ORDER) == "sitk"
    assert bias.available_backend() == "ants"
    installed.discard("SimpleITK")
    assert bias.available_backend(None, bias.SEGMENT_ORDER) == "ants"
    installed.clear()
    with pytest.raises(RuntimeError, match="SimpleITK or antspyx"):
        bias.available_backend(None, bias.SEGMENT_ORDER)


def test_unknown_backend_is_refused() -> None:
    image, _, mask, grid = _biased_phantom()
    with pytest.raises(ValueError, match="backend"):
        bias.n4_correct(image, mask, grid, backend="fsl")
    with pytest.raises(ValueError, match="backend"):
        bias.available_backend("fsl")


def test_bundled_model_runs_with_slicers_n4_on_the_self_test_case(tmp_path: Path) -> None:
    """The in-Slicer self-test's case (64x72x56, 2 mm) with the default N4, SimpleITK's as in
    Slicer (also when ANTsPy is installed): N4 copes with a small, coarse brain and the tumour
    is found where it was planted."""
    from BrainTumorSegLib import segment
    from BrainTumorSegLib.labels import region_mask
    from BrainTumorSegLib.slicer_glue import self_test_case

    images = _write_self_test_case(tmp_path)
    result = segment(images, tmp_path / "out", overlay=False)
    settings = result.report["settings"]
    assert settings["bias_correction"] is True and settings["bias_backend"] == "sitk"
    found = region_mask(result.classes, "WT")
    planted = self_test_case().edema.transpose(2, 1, 0)
    dice = 2 * np.count_nonzero(found & planted) / (found.sum() + planted.sum())
    assert dice > 0.7, dice  # 0.90 with the bundled models 0.5.0 and 0.6.0


def _four_sequences() -> tuple[dict[str, np.ndarray], Grid, object]:
    """Four different sequences (the phantom under fields of different strengths) and a spec."""
    from BrainTumorSegLib.model import ModelSpec

    image, _, mask, grid = _biased_phantom()
    ramp = np.linspace(-1, 1, image.shape[0])[:, None, None]
    images = {
        c: np.where(mask, image * np.exp(0.1 * n * ramp), 0).astype(np.float32)
        for n, c in enumerate(("t1", "t1ce", "t2", "flair"))
    }
    spec = ModelSpec.from_dict(
        {"name": "n4-threads", "spacing_mm": [2.0, 2.0, 2.0], "bias_correction": True}
    )
    return images, grid, spec


def test_sequences_corrected_side_by_side_equal_one_after_the_other() -> None:
    """With SimpleITK, preprocess() fits the sequences' N4 in threads; each fit sees only its
    own sequence, so the network input is the same as with one fit after the other."""
    from BrainTumorSegLib.preprocess import preprocess

    images, grid, spec = _four_sequences()

    def run(threads: int) -> tuple[np.ndarray, list[str]]:
        steps: list[str] = []
        prepared = preprocess(
            images,
            grid,
            spec,
            bias_backend="sitk",
            threads=threads,
            progress=lambda f, m: steps.append(m),
        )
        return prepared.array, steps

    threaded, side_by_side = run(4)
    serial, one_by_one = run(1)
    np.testing.assert_array_equal(threaded, serial)
    assert any("4 at a time" in m for m in side_by_side), side_by_side
    assert any("4/4" in m for m in side_by_side), side_by_side  # counts finished sequences
    assert not any("at a time" in m for m in one_by_one), one_by_one


@needs_ants
def test_ants_fits_take_turns() -> None:
    """ANTsPy's bindings keep Python's lock, so its fits run one after the other."""
    from BrainTumorSegLib.preprocess import preprocess

    images, grid, spec = _four_sequences()
    steps: list[str] = []
    preprocess(
        images, grid, spec, bias_backend="ants", threads=4, progress=lambda f, m: steps.append(m)
    )
    assert not any("at a time" in m for m in steps), steps
    assert sum("bias correction of" in m for m in steps) == 4


def test_a_failing_fit_stops_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """An error in one sequence's fit reaches the caller; queued fits are not started."""
    from BrainTumorSegLib import preprocess as pre

    images, grid, spec = _four_sequences()
    started: list[int] = []

    def fit(array: np.ndarray, mask: np.ndarray, grid: Grid, **kwargs: object) -> np.ndarray:
        started.append(1)
        if array is images["t1"]:
            raise RuntimeError("N4 failed on t1")
        time.sleep(0.5)  # the others are slow: the failure is seen while they run
        return array

    monkeypatch.setattr(pre, "n4_correct", fit)
    with pytest.raises(RuntimeError, match="N4 failed on t1"):
        pre.preprocess(images, grid, spec, bias_backend="sitk", threads=1)
    assert len(started) == 1  # one at a time: nothing after the failure
    started.clear()
    with pytest.raises(RuntimeError, match="N4 failed on t1"):
        pre.preprocess(images, grid, spec, bias_backend="sitk", threads=2)
    # Two at once: t1 fails at once, its thread takes t2 while t1ce runs; flair never starts.
    assert len(started) <= 3
