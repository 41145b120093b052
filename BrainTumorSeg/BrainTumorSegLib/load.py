"""Reading image files (NIfTI, NRRD) into float32 arrays with their grid, and finding the
four MRI sequences of a case folder by name."""

from __future__ import annotations

import gzip
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError
from .geometry import Grid

SEQUENCES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
SEQUENCE_TITLES: dict[str, str] = {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "FLAIR"}

# Name tokens that identify a sequence, strongest first. BraTS 2018-2021 use _t1/_t1ce/_t2/_flair,
# BraTS 2023 uses -t1n/-t1c/-t2w/-t2f; the rest are names scanners and users commonly give.
SEQUENCE_TOKENS: dict[str, str] = {
    "t1ce": "t1ce",
    "t1c": "t1ce",
    "t1gd": "t1ce",
    "t1post": "t1ce",
    "t1n": "t1",
    "t1": "t1",
    "t1w": "t1",
    "t2w": "t2",
    "t2": "t2",
    "t2f": "flair",
    "flair": "flair",
}
# A plain T1 token together with one of these anywhere in the name means post-contrast T1.
CONTRAST_TOKENS: frozenset[str] = frozenset({"ce", "post", "gd", "gad", "contrast", "gado"})
NON_IMAGE_TOKENS: frozenset[str] = frozenset({"seg", "label", "labels", "mask", "segmentation"})

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr")


@dataclass
class Volume:
    """A scalar 3D image: ``array`` float32 indexed [i, j, k] and its ``grid``."""

    array: np.ndarray
    grid: Grid
    path: Path | None = None
    warnings: list[str] = field(default_factory=list)


def strip_image_suffix(name: str) -> str | None:
    """File name without its image extension, or None if it is not a supported image file."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def match_sequence(name: str) -> str | None:
    """The sequence ("t1", "t1ce", "t2", "flair") a file or volume name refers to, or None.

    The last recognised token wins, so ``Brats18_2013_3_1_t1ce`` is T1ce and
    ``BraTS-GLI-00000-000-t2f`` is FLAIR. Label maps (``_seg``) match nothing.
    """
    tokens = [t for t in re.split(r"[^a-z0-9]+", name.lower()) if t]
    if any(t in NON_IMAGE_TOKENS for t in tokens):
        return None
    for token in reversed(tokens):
        sequence = SEQUENCE_TOKENS.get(token)
        if sequence == "t1" and any(t in CONTRAST_TOKENS for t in tokens):
            return "t1ce"
        if sequence:
            return sequence
    if any(t in CONTRAST_TOKENS for t in tokens):
        return "t1ce"
    return None


def find_sequences(folder: str | Path) -> dict[str, Path]:
    """Map each of the four sequences to its file in ``folder`` (case-insensitive names)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("is not a folder", folder)
    found: dict[str, list[Path]] = {s: [] for s in SEQUENCES}
    for path in sorted(folder.iterdir()):
        stem = strip_image_suffix(path.name)
        if stem is None or not path.is_file():
            continue
        sequence = match_sequence(stem)
        if sequence:
            found[sequence].append(path)
    for sequence, paths in found.items():
        if len(paths) > 1:
            names = ", ".join(p.name for p in paths)
            raise InputError(
                f"several files look like {SEQUENCE_TITLES[sequence]}: {names}", folder
            )
    missing = [SEQUENCE_TITLES[s] for s, paths in found.items() if not paths]
    if missing:
        raise InputError(
            f"no file found for {', '.join(missing)} (expected names like CASE_t1ce.nii.gz "
            "or CASE-t1c.nii.gz)",
            folder,
        )
    return {s: paths[0] for s, paths in found.items()}


def load_volume(path: str | Path) -> Volume:
    """Read a 3D scalar image as float32 [i, j, k] with its RAS+ grid.

    Raises :class:`InputError` naming the file for anything that is not a readable 3D image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if not path.is_file():
        raise InputError("is not a file", path)
    lower = path.name.lower()
    try:
        if lower.endswith((".nii", ".nii.gz")):
            volume = _load_nifti(path)
        elif lower.endswith((".nrrd", ".nhdr")):
            volume = _load_nrrd(path)
        else:
            raise InputError("unsupported file type (use .nii, .nii.gz, .nrrd or .nhdr)", path)
    except InputError:
        raise
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read image ({_short(e)})", path) from e
    except Exception as e:  # nibabel/pynrrd raise their own types for malformed headers
        raise InputError(f"cannot read image ({type(e).__name__}: {_short(e)})", path) from e
    volume.path = path
    return volume


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _check_shape(shape: tuple[int, ...], path: Path) -> None:
    """Reject anything that is not one 3D volume (trailing singleton axes are allowed)."""
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        raise InputError(
            f"is a {_dims(shape)} image (several volumes in one file); "
            "give each sequence as its own 3D file",
            path,
        )
    if len(shape) < 3 or min(shape) < 2:
        raise InputError(f"is a {_dims(shape)} image; a 3D volume is needed", path)


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    _check_shape(array.shape, path)
    return array.reshape(array.shape[:3])


def _dims(shape: tuple[int, ...]) -> str:
    real = [n for n in shape if n > 1]
    return f"{len(real)}D ({'x'.join(str(n) for n in shape)})"


def _load_nifti(path: Path) -> Volume:
    import nibabel as nib

    # nibabel silently "repairs" some broken headers while loading (and logs about it), so
    # read the header as stored first and judge it ourselves.
    with nib.imageglobals.LoggingOutputSuppressor():
        image = nib.load(str(path))
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError("is not a NIfTI image", path)
    with nib.openers.ImageOpener(str(path)) as handle:
        header = type(image.header).from_fileobj(handle, check=False)
    warnings: list[str] = []
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    if sform_code == 0 and qform_code == 0:
        warnings.append(
            f"{path.name}: no qform/sform orientation in the header; "
            "assumed scaled voxel axes (positions may be wrong)"
        )
    if sform_code == 0:
        zooms = np.asarray(header["pixdim"][1:4], dtype=np.float64)
        if np.any(zooms <= 0) or not np.all(np.isfinite(zooms)):
            raise InputError(
                f"voxel spacing {zooms.tolist()} mm in the header is zero, negative or invalid",
                path,
            )
    if sform_code > 0 and qform_code > 0:
        qform = image.get_qform()
        sform = image.get_sform()
        if not np.allclose(qform, sform, atol=1e-3):
            warnings.append(f"{path.name}: qform and sform differ; the sform was used")
    _check_shape(image.shape, path)
    array = np.asarray(image.dataobj, dtype=np.float32)
    array = _as_3d(array, path)
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_affine(affine, path)
    return Volume(array=array, grid=Grid(array.shape, affine), warnings=warnings)


# NRRD "space" names -> sign flips that turn that space into RAS+.
_NRRD_SPACES = {
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}


def _load_nrrd(path: Path) -> Volume:
    import nrrd

    data, header = nrrd.read(str(path))
    warnings: list[str] = []
    array = np.asarray(data)
    kinds = header.get("kinds")
    if array.ndim == 4 and kinds is not None:
        # Non-spatial axes (e.g. "list", "vector") of size 1 are harmless; drop them.
        spatial = [
            i for i, kind in enumerate(kinds) if kind not in ("list", "vector", "none", "???")
        ]
        if len(spatial) == 3 and all(array.shape[i] == 1 for i in set(range(4)) - set(spatial)):
            array = array.reshape([array.shape[i] for i in spatial])
    array = _as_3d(np.asarray(array, dtype=np.float32), path)
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(d, dtype=np.float64) for d in directions]
        rows = [r for r in rows if r is not None and r.size == 3 and np.all(np.isfinite(r))]
        if len(rows) != 3:
            raise InputError("NRRD header has no usable 'space directions' for 3 axes", path)
        affine[:3, :3] = np.array(rows).T
        affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=np.float64)
        space = str(header.get("space", "left-posterior-superior")).lower()
        if space not in _NRRD_SPACES:
            raise InputError(f"unsupported NRRD space {space!r}", path)
        affine = np.diag([*_NRRD_SPACES[space], 1.0]) @ affine
    else:
        spacings = header.get("spacings")
        if spacings is not None:
            affine[:3, :3] = np.diag(np.asarray(spacings, dtype=np.float64)[:3])
        warnings.append(f"{path.name}: no 'space directions' in the NRRD header; axes assumed")
    _check_affine(affine, path)
    return Volume(array=array, grid=Grid(array.shape, affine), warnings=warnings)


def _check_affine(affine: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(affine)):
        raise InputError("the header's voxel-to-world matrix holds NaN or infinite values", path)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 1e-6) or abs(np.linalg.det(affine[:3, :3])) <= 1e-9:
        raise InputError(
            f"voxel spacing {np.round(spacing, 4).tolist()} mm is zero, negative or degenerate",
            path,
        )
