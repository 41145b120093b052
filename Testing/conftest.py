"""Shared fixtures: paths to the shared BraTS data, a tiny ONNX model package, synthetic cases."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("BRAINTUMORSEG_DATA", ROOT.parent / "shared" / "data"))
BRATS_DIR = DATA_DIR / "brats"
RAW_DIR = DATA_DIR / "raw"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_data(path: Path) -> Path:
    """Skip (or, in CI where the data always exists, fail) when shared data is missing."""
    if not path.exists():
        message = f"shared data not found at {path} (set BRAINTUMORSEG_DATA)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    """Folder of the 16 labelled BraTS cases."""
    return require_data(BRATS_DIR)


@pytest.fixture(scope="session")
def brats_case(brats_dir: Path) -> Path:
    """One real BraTS case folder (small tumour core, fast to process)."""
    return require_data(brats_dir / "Brats18_2013_3_1")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model package around a tiny hand-weighted ONNX network."""
    from tiny_model import build_tiny_package

    return build_tiny_package(tmp_path_factory.mktemp("models") / "tiny")


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """Write a NIfTI file (test helper)."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def blob_case(
    folder: Path,
    affine: np.ndarray | None = None,
    shape: tuple[int, int, int] = (48, 52, 40),
    centre: tuple[int, int, int] = (28, 22, 18),
) -> dict[str, Path]:
    """A small synthetic case: a brain-like ellipsoid with a bright lesion at ``centre``.

    Every sequence is bright in the lesion, so the tiny model labels it; returns file paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine
    grid = np.indices(shape).astype(np.float32)
    mid = (np.array(shape) - 1) / 2
    radii = np.array(shape) * 0.42
    brain = sum(((grid[a] - mid[a]) / radii[a]) ** 2 for a in range(3)) <= 1.0
    lesion = sum((grid[a] - centre[a]) ** 2 for a in range(3)) <= 16.0
    rng = np.random.default_rng(0)
    paths = {}
    for n, sequence in enumerate(("t1", "t1ce", "t2", "flair")):
        image = np.where(brain, 500.0 + 20 * n + rng.normal(0, 10, shape), 0.0)
        image[lesion & brain] = 2000.0
        paths[sequence] = write_nifti(
            folder / f"case_{sequence}.nii.gz", image.astype(np.float32), affine
        )
    return paths
