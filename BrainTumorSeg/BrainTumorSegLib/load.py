"""Reading image files (NIfTI, NRRD) into float32 arrays with their grid, and finding the
four MRI sequences of a case folder by name."""

from __future__ import annotations

import gzip
import logging
import math
import re
import warnings
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


# No MR volume comes near this many voxels (1024^3, 4 GB as float32): a header that claims more
# is corrupt, and trusting it would mean a huge allocation or a very long read.
MAX_VOXELS = 1024**3
# Deflate cannot compress better than about 1032:1, so a gzip file of n bytes never holds more
# than 1032 n bytes: a cheap bound on what a compressed file's header may promise.
DEFLATE_MAX_RATIO = 1032

_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_NRRD_SUFFIXES = (".nrrd", ".nhdr")


def load_volume(path: str | Path) -> Volume:
    """Read a 3D scalar image as float32 [i, j, k] with its RAS+ grid.

    Raises :class:`InputError` naming the file for anything that is not a readable 3D image.
    """
    path = _check_readable(path)
    return _read(path, _load_nifti, _load_nrrd)


def load_stack(path: str | Path, order: list[str]) -> dict[str, Volume]:
    """Read a 4D file holding several sequences (e.g. a Medical Decathlon case).

    ``order`` names the sequence of each volume along the fourth axis, e.g.
    ``["flair", "t1", "t1ce", "t2"]`` for the Decathlon's BRATS task. Returns one 3D
    :class:`Volume` per sequence, all on the file's grid.
    """
    check_stack_order(order, path)
    path = _check_readable(path)
    volume = _read(path, _load_nifti_stack, _load_nrrd_stack)
    array = volume.array
    if array.ndim != 4:
        raise InputError(
            f"is a {_dims(array.shape)} image, not a 4D stack of sequences; give it with "
            "--t1/--t1ce/--t2/--flair instead of --stack",
            path,
        )
    if array.shape[3] != len(order):
        raise InputError(
            f"holds {array.shape[3]} volumes but --stack-order names {len(order)} "
            f"({','.join(order)})",
            path,
        )
    return {
        sequence: Volume(
            array=np.ascontiguousarray(array[..., n]),
            grid=volume.grid,
            path=path,
            warnings=list(volume.warnings) if n == 0 else [],
        )
        for n, sequence in enumerate(order)
    }


def check_stack_order(order: list[str] | None, path: str | Path) -> None:
    """A stack needs its channel order declared: distinct sequence names, one per volume."""
    if not order:
        raise InputError(
            "--stack needs --stack-order, the sequence of each volume in the file "
            "(e.g. flair,t1,t1ce,t2 for a Medical Decathlon case)",
            path,
        )
    unknown = [s for s in order if s not in SEQUENCES]
    if unknown or len(set(order)) != len(order):
        raise InputError(
            f"--stack-order {','.join(order)} must name distinct sequences among "
            f"{', '.join(SEQUENCES)}",
            path,
        )


def _check_readable(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError("file not found", path)
    if not path.is_file():
        raise InputError("is not a file", path)
    return path


def _read(
    path: Path, nifti_reader: Callable[[Path], Volume], nrrd_reader: Callable[[Path], Volume]
) -> Volume:
    """Dispatch on the name, after checking that the content matches it."""
    lower = path.name.lower()
    content = sniff_format(path)
    _check_extension(path, lower, content)
    try:
        with _quiet_nibabel():
            volume = nifti_reader(path) if lower.endswith(_NIFTI_SUFFIXES) else nrrd_reader(path)
    except InputError:
        raise
    except MemoryError as e:
        raise InputError("not enough memory to read this image", path) from e
    except EOFError as e:
        raise InputError(f"file is truncated; cannot read image ({_short(e)})", path) from e
    except (OSError, zlib.error, gzip.BadGzipFile, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read image ({_short(e)})", path) from e
    except Exception as e:  # nibabel/pynrrd raise their own types for malformed headers
        raise InputError(f"cannot read image ({type(e).__name__}: {_short(e)})", path) from e
    volume.path = path
    return volume


def sniff_format(path: Path) -> str:
    """What the file holds, from its first bytes: "nifti", "nifti.gz", "nrrd", "nrrd.gz",
    "gzip" (something else compressed) or "unknown"."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(600)
        compressed = head[:2] == b"\x1f\x8b"
        if compressed:
            with gzip.open(path, "rb") as handle:
                head = handle.read(600)
    except (OSError, EOFError, zlib.error):
        return "gzip"  # a damaged gzip stream; reading it reports the details
    kind = "unknown"
    if head.startswith(b"NRRD"):
        kind = "nrrd"
    elif len(head) >= 4:
        size_le = int.from_bytes(head[:4], "little")
        size_be = int.from_bytes(head[:4], "big")
        if 348 in (size_le, size_be) or 540 in (size_le, size_be):
            kind = "nifti"
    if compressed:
        return "gzip" if kind == "unknown" else kind + ".gz"
    return kind


def _check_extension(path: Path, lower: str, content: str) -> None:
    """A name that does not say what the file holds is refused with the fix spelled out."""
    proper = {
        "nifti": ".nii",
        "nifti.gz": ".nii.gz",
        "nrrd": ".nrrd",
        "nrrd.gz": None,
        "gzip": None,
        "unknown": None,
    }[content]
    if not lower.endswith(IMAGE_SUFFIXES):
        hint = f" (the content is {_describe(content)}: rename it to {proper})" if proper else ""
        raise InputError(f"unsupported file type (use .nii, .nii.gz, .nrrd or .nhdr){hint}", path)
    if lower.endswith(".nii.gz") and content == "nifti":
        raise InputError(
            "is an uncompressed NIfTI file but its name ends in .nii.gz; rename it to .nii", path
        )
    if lower.endswith(".nii") and content == "nifti.gz":
        raise InputError(
            "is a gzip-compressed NIfTI file but its name ends in .nii; rename it to .nii.gz",
            path,
        )
    if lower.endswith(_NIFTI_SUFFIXES) and content.startswith("nrrd"):
        raise InputError("is an NRRD file but its name says NIfTI; rename it to .nrrd", path)
    if lower.endswith(_NRRD_SUFFIXES) and content.startswith("nifti"):
        raise InputError(f"is a NIfTI file but its name says NRRD; rename it to {proper}", path)
    if (
        lower.endswith(_NIFTI_SUFFIXES)
        and content in ("unknown", "gzip")
        and not (content == "gzip" and lower.endswith(".nii.gz"))
    ):
        raise InputError("cannot read image (the file holds no NIfTI header)", path)
    if lower.endswith(".nrrd") and content == "unknown":
        raise InputError("cannot read image (the file does not start with 'NRRD')", path)


def _describe(content: str) -> str:
    return {"nifti": "NIfTI", "nifti.gz": "gzip-compressed NIfTI", "nrrd": "NRRD"}.get(
        content, content
    )


@contextmanager
def _quiet_nibabel() -> Iterator[None]:
    """nibabel logs header "fixes" and numpy warns about overflowing casts on stderr; the CLI
    promises one line per error (overflow shows up as infinite values, reported later)."""
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _check_data_size(
    path: Path, shape: tuple[int, ...], itemsize: int, offset: int, *, compressed: bool
) -> None:
    """Refuse headers whose dimensions or data offset cannot be true for this file.

    Checked before any voxel is read, so that an absurd header fails at once instead of
    allocating terabytes or reading for minutes.
    """
    if not shape or any(n < 1 for n in shape):
        raise InputError(
            f"the header's dimensions {list(shape)} are invalid (corrupt header?)", path
        )
    voxels = math.prod(shape)
    if voxels > MAX_VOXELS:
        raise InputError(
            f"the header claims {'x'.join(map(str, shape))} = {voxels:.3g} voxels, far more "
            "than any MR image (corrupt header?)",
            path,
        )
    if offset < 0:
        raise InputError(f"the header's data offset {offset} is negative (corrupt header?)", path)
    needed = offset + voxels * itemsize
    size = path.stat().st_size
    limit = size * DEFLATE_MAX_RATIO if compressed else size
    if needed > limit:
        raise InputError(
            f"the header promises {needed} bytes of image data ({'x'.join(map(str, shape))} "
            f"voxels of {itemsize} bytes from offset {offset}) but the file is only {size} "
            "bytes: truncated file or corrupt header",
            path,
        )
    from .infer import available_memory_bytes  # here: infer imports model, which imports load

    available = available_memory_bytes()
    if available is not None and voxels * (itemsize + 4) > available:
        raise InputError(
            f"reading this image needs {voxels * (itemsize + 4) / 1e9:.1f} GB of memory but "
            f"only {available / 1e9:.1f} GB is available",
            path,
        )


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


def _squeeze_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _check_shape(shape: tuple[int, ...], path: Path) -> None:
    """Reject anything that is not one 3D volume (trailing singleton axes are allowed)."""
    shape = _squeeze_trailing(shape)
    if len(shape) > 3:
        raise InputError(
            f"is a {_dims(shape)} image (several volumes in one file); give each sequence as "
            "its own 3D file, or the whole file with --stack FILE --stack-order LIST",
            path,
        )
    if len(shape) < 3 or min(shape) < 2:
        raise InputError(f"is a {_dims(shape)} image; a 3D volume is needed", path)


def _as_3d(array: np.ndarray, path: Path) -> np.ndarray:
    _check_shape(array.shape, path)
    return array.reshape(array.shape[:3])


def _as_4d(array: np.ndarray, path: Path) -> np.ndarray:
    """A stack (X, Y, Z, N); NIfTI's 5D "vector" layout (X, Y, Z, 1, N) is accepted too."""
    if array.ndim == 5 and array.shape[3] == 1:
        array = array[:, :, :, 0, :]
    shape = _squeeze_trailing(array.shape)
    if len(shape) == 3:
        return array.reshape(shape)  # load_stack explains that this is not a stack
    if len(shape) != 4 or min(shape[:3]) < 2:
        raise InputError(f"is a {_dims(array.shape)} image; a 4D stack is needed", path)
    return array.reshape(shape)


def _dims(shape: tuple[int, ...]) -> str:
    real = [n for n in shape if n > 1]
    return f"{len(real)}D ({'x'.join(str(n) for n in shape)})"


def _nifti_image(path: Path):
    """Open a NIfTI file lazily and vet its header before any voxel is read."""
    import nibabel as nib

    image = nib.load(str(path))
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError("is not a NIfTI image", path)
    header = image.header
    ndim = int(header["dim"][0])
    if not 1 <= ndim <= 7:
        raise InputError(f"the header's dimension count {ndim} is invalid (corrupt header?)", path)
    shape = tuple(int(n) for n in header["dim"][1 : ndim + 1])
    _check_data_size(
        path,
        shape,
        header.get_data_dtype().itemsize,
        int(getattr(image.dataobj, "offset", header.get_data_offset())),
        compressed=path.name.lower().endswith(".gz"),
    )
    return image


def _nifti_grid_and_warnings(image, path: Path) -> tuple[np.ndarray, list[str]]:
    """The voxel-to-RAS affine, refusing headers whose orientation is missing or ambiguous."""
    import nibabel as nib

    # nibabel silently "repairs" some fields while loading, so judge the header as stored.
    with nib.openers.ImageOpener(str(path)) as handle:
        header = type(image.header).from_fileobj(handle, check=False)
    warnings: list[str] = []
    sform_code = int(header["sform_code"])
    qform_code = int(header["qform_code"])
    if sform_code == 0 and qform_code == 0:
        # nibabel and ITK (3D Slicer) guess differently here, so a result could not be shown
        # reliably on top of its input: refuse rather than guess.
        raise InputError(
            "the NIfTI header has no orientation (qform_code and sform_code are both 0), so "
            "where the image lies in space is unknown; set the qform/sform (e.g. with "
            "fslorient or by re-saving from the scanner conversion tool)",
            path,
        )
    if sform_code == 0:
        zooms = np.asarray(header["pixdim"][1:4], dtype=np.float64)
        if np.any(zooms <= 0) or not np.all(np.isfinite(zooms)):
            raise InputError(
                f"voxel spacing {zooms.tolist()} mm in the header is zero, negative or invalid",
                path,
            )
    affine = np.asarray(image.affine, dtype=np.float64)
    _check_affine(affine, path)
    if sform_code > 0 and qform_code > 0:
        qform = np.asarray(image.get_qform(), dtype=np.float64)
        _check_affine(qform, path)
        # How far apart the two matrices put the image's corners, in mm.
        shape = image.shape[:3]
        corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij"))
        corners = corners.reshape(3, -1).T
        gap = float(
            np.max(
                np.linalg.norm(
                    (corners @ (affine - qform)[:3, :3].T) + (affine - qform)[:3, 3], axis=1
                )
            )
        )
        tolerance = 0.5 * float(np.min(np.linalg.norm(affine[:3, :3], axis=0)))
        if gap > tolerance:
            # Viewers differ in which of the two they trust (nibabel the sform, ITK often the
            # qform), so the segmentation could be shown in the wrong place.
            raise InputError(
                f"the qform and sform in the header disagree (by up to {gap:.1f} mm), so where "
                "the image lies is ambiguous; make them equal (e.g. copy the sform into the "
                "qform) before segmenting",
                path,
            )
        if gap > 1e-3:
            warnings.append(f"{path.name}: qform and sform differ slightly; the sform was used")
    return affine, warnings


def _load_nifti(path: Path) -> Volume:
    image = _nifti_image(path)
    _check_shape(image.shape, path)
    affine, warnings = _nifti_grid_and_warnings(image, path)
    array = _as_3d(np.asarray(image.dataobj, dtype=np.float32), path)
    return Volume(array=array, grid=Grid(array.shape, affine), warnings=warnings)


def _load_nifti_stack(path: Path) -> Volume:
    image = _nifti_image(path)
    affine, warnings = _nifti_grid_and_warnings(image, path)
    array = _as_4d(np.asarray(image.dataobj, dtype=np.float32), path)
    return Volume(array=array, grid=Grid(array.shape[:3], affine), warnings=warnings)


# NRRD "space" names -> sign flips that turn that space into RAS+.
_NRRD_SPACES = {
    "right-anterior-superior": (1, 1, 1),
    "ras": (1, 1, 1),
    "left-posterior-superior": (-1, -1, 1),
    "lps": (-1, -1, 1),
    "left-anterior-superior": (-1, 1, 1),
    "las": (-1, 1, 1),
}
# NRRD axis kinds that are not space: a stack's sequence axis, or a harmless singleton.
_NRRD_NON_SPATIAL = ("list", "vector", "point", "covariant-vector", "normal", "none", "???")


def _read_nrrd(path: Path) -> tuple[np.ndarray, dict, np.ndarray, list[str], list[int]]:
    """Array, header, RAS affine, warnings and the indices of the spatial axes."""
    import nrrd

    with open(path, "rb") as handle:
        header = nrrd.read_header(handle)
        data_start = handle.tell()
    sizes = [int(n) for n in np.atleast_1d(header.get("sizes", []))]
    if path.name.lower().endswith(".nhdr") or "data file" in header or "datafile" in header:
        data_path, data_start = None, 0  # detached data: only the voxel count can be vetted
    else:
        data_path = path
    encoding = str(header.get("encoding", "raw")).lower()
    itemsize = np.dtype(nrrd.reader._determine_datatype(header)).itemsize
    if data_path is None:
        if not sizes or min(sizes) < 1 or math.prod(sizes) > MAX_VOXELS:
            raise InputError(f"the header's sizes {sizes} are invalid (corrupt header?)", path)
    else:
        _check_data_size(
            path,
            tuple(sizes),
            itemsize if encoding == "raw" else 1,  # text encodings take several bytes a voxel
            data_start if encoding == "raw" else 0,
            compressed=encoding in ("gzip", "gz", "bzip2", "bz2"),
        )
    data, header = nrrd.read(str(path))
    warnings: list[str] = []
    array = np.asarray(data)
    kinds = header.get("kinds")
    spatial = list(range(array.ndim))
    if kinds is not None and len(kinds) == array.ndim:
        spatial = [i for i, kind in enumerate(kinds) if str(kind).lower() not in _NRRD_NON_SPATIAL]
    if len(spatial) != 3:
        spatial = list(range(min(3, array.ndim)))
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
            values = np.asarray(spacings, dtype=np.float64)
            affine[:3, :3] = np.diag(values[[i for i in spatial if i < values.size]][:3])
        warnings.append(f"{path.name}: no 'space directions' in the NRRD header; axes assumed")
    _check_affine(affine, path)
    return array, header, affine, warnings, spatial


def _load_nrrd(path: Path) -> Volume:
    array, _, affine, warnings, spatial = _read_nrrd(path)
    if array.ndim == 4 and len(spatial) == 3:
        # Non-spatial axes (e.g. "list", "vector") of size 1 are harmless; drop them.
        other = [i for i in range(4) if i not in spatial]
        if all(array.shape[i] == 1 for i in other):
            array = array.reshape([array.shape[i] for i in spatial])
    array = _as_3d(np.asarray(array, dtype=np.float32), path)
    return Volume(array=array, grid=Grid(array.shape, affine), warnings=warnings)


def _load_nrrd_stack(path: Path) -> Volume:
    array, _, affine, warnings, spatial = _read_nrrd(path)
    if array.ndim == 4 and len(spatial) == 3:
        # NRRD puts the sequence ("list"/"vector") axis first, NIfTI last; use NIfTI's order.
        (other,) = [i for i in range(4) if i not in spatial]
        array = np.moveaxis(array, other, -1)
    array = _as_4d(np.asarray(array, dtype=np.float32), path)
    return Volume(array=array, grid=Grid(array.shape[:3], affine), warnings=warnings)


def _check_affine(affine: np.ndarray, path: Path) -> None:
    if not np.all(np.isfinite(affine)):
        raise InputError("the header's voxel-to-world matrix holds NaN or infinite values", path)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(spacing <= 1e-6) or abs(np.linalg.det(affine[:3, :3])) <= 1e-9:
        raise InputError(
            f"voxel spacing {np.round(spacing, 4).tolist()} mm is zero, negative or degenerate",
            path,
        )
