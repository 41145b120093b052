"""Writing outputs: NIfTI label map, Slicer .seg.nrrd, JSON report; all atomically.

Outputs are first written into a hidden staging folder beside the output folder and moved
into place only when every file is complete, so a failed or killed run leaves no partial
result and never half-overwrites an earlier one.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError
from .geometry import Grid
from .labels import LABELS, classes_to_convention, terminology_entry

SEGMENTATION_NIFTI = "segmentation.nii.gz"
SEGMENTATION_SEG_NRRD = "segmentation.seg.nrrd"
REPORT_JSON = "report.json"
OVERLAY_PNG = "overlay.png"
PROBABILITIES_NIFTI = "probabilities.nii.gz"


def check_output_dir(output: Path, input_paths: list[Path]) -> None:
    """Fail early (before any work) when ``output`` cannot receive the results."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise InputError("output path exists and is not a folder", output)
    resolved = output.resolve()
    for path in input_paths:
        if Path(path).resolve().parent == resolved:
            raise InputError(
                "output folder is the folder of the input images; choose another folder so "
                "that inputs are never mixed with or overwritten by results",
                output,
            )
    existing = resolved
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError("output folder is not writable", output)
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".braintumorseg-check-"):
            pass
    except OSError as e:
        raise InputError(f"output folder is not writable ({e.strerror})", output) from e


STAGING_PREFIX = ".braintumorseg-staging-"


def _pid_alive(pid: int) -> bool:
    """True when a process with this id exists (it may belong to someone else)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # type: ignore[attr-defined]
        if handle:
            ctypes.windll.kernel32.CloseHandle(handle)  # type: ignore[attr-defined]
        return bool(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _staging_owner(name: str) -> tuple[int, str] | None:
    """(pid, host) encoded in a staging folder's name, or None for other names."""
    if not name.startswith(STAGING_PREFIX):
        return None
    parts = name[len(STAGING_PREFIX) :].split("-")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    return int(parts[0]), "-".join(parts[1:-1])


def remove_stale_staging(folder: Path) -> list[Path]:
    """Delete staging folders (and files) in ``folder`` left by processes that died without
    cleaning up (SIGKILL, power loss); returns what was removed.

    A staging folder's name holds its creator's process id and host, so only folders of dead
    processes on this machine are touched, never those of a run still in progress.
    """
    removed: list[Path] = []
    host = host_tag()
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        owner = _staging_owner(entry.name)
        if owner is None or owner[1] != host or owner[0] == os.getpid() or _pid_alive(owner[0]):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with suppress(OSError):
                entry.unlink()  # e.g. a status file caught between write and rename
        removed.append(entry)
    return removed


def host_tag() -> str:
    """This machine's name as used in staging names (letters, digits and underscores)."""
    # Hostnames may hold dashes; the name is only compared, never parsed further.
    return "".join(c if c.isalnum() else "_" for c in platform.node()) or "host"


@contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """Yield a staging folder; on success put its files in ``output``, else delete it.

    The staging folder is created beside ``output`` (same file system) and named with this
    process's id, so that a later run can remove it if this process is killed. A new
    ``output`` appears in one atomic rename, complete; into an existing folder, files are
    moved one by one with ``report.json`` last, so a report always describes files present.
    """
    output = Path(output).resolve()
    parent = output.parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(parent)
    staging = parent / f"{STAGING_PREFIX}{os.getpid()}-{host_tag()}-{secrets.token_hex(4)}"
    staging.mkdir()  # unlike mkdtemp, honours the umask: the folder may become the output
    try:
        yield staging
        with suppress(OSError):
            os.rmdir(output)  # only succeeds for an empty folder, which we may replace
        try:
            os.rename(staging, output)
        except OSError:
            if not output.is_dir():
                raise
            items = sorted(staging.iterdir(), key=lambda item: item.name == REPORT_JSON)
            for item in items:
                os.replace(item, output / item.name)  # atomic within one file system
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    """A NIfTI file whose qform and sform both hold ``affine`` (so every reader agrees)."""
    import nibabel as nib

    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, str(path))
    return Path(path)


def write_label_nifti(path: Path, classes: np.ndarray, grid: Grid, convention: str) -> None:
    """Label map in ``convention`` (uint8) on ``grid``."""
    write_nifti(path, classes_to_convention(classes, convention), grid.affine)


def write_probabilities(path: Path, channels: np.ndarray, grid: Grid) -> None:
    """Network outputs (C, X, Y, Z) on ``grid`` as one float32 NIfTI with C volumes (4th axis);
    ``report.json``'s ``probability_channels`` names them."""
    write_nifti(path, np.moveaxis(channels.astype(np.float32, copy=False), 0, -1), grid.affine)


def write_seg_nrrd(path: Path, classes: np.ndarray, grid: Grid) -> None:
    """A 3D Slicer segmentation file: one labelmap layer, a named, coloured segment per label.

    Label values in the file are the class indices (1..3); Slicer reads names, colours and
    terminology from the per-segment header fields.
    """
    import nrrd

    ras_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    lps = ras_to_lps @ grid.affine
    header: dict[str, Any] = {
        "type": "unsigned char",
        "dimension": 3,
        "space": "left-posterior-superior",
        "sizes": list(classes.shape),
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    for n, label in enumerate(LABELS):
        hits = np.argwhere(classes == label.index)
        if hits.size:
            low, high = hits.min(axis=0), hits.max(axis=0)
            extent = " ".join(f"{a} {b}" for a, b in zip(low, high))
        else:
            extent = "0 -1 0 -1 0 -1"  # Slicer's notation for an empty extent
        prefix = f"Segment{n}_"
        header[prefix + "ID"] = label.key
        header[prefix + "Name"] = label.name
        header[prefix + "NameAutoGenerated"] = "0"
        header[prefix + "Color"] = " ".join(f"{c:g}" for c in label.color)
        header[prefix + "ColorAutoGenerated"] = "0"
        header[prefix + "LabelValue"] = str(label.index)
        header[prefix + "Layer"] = "0"
        header[prefix + "Extent"] = extent
        header[prefix + "Tags"] = f"TerminologyEntry:{terminology_entry(label)}|"
    custom = {k: "string" for k in header if k.startswith(("Segment", "Segmentation_"))}
    nrrd.write(
        str(path),
        np.ascontiguousarray(classes, dtype=np.uint8),
        header,
        custom_field_map=custom,
        index_order="F",
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Pretty JSON with a trailing newline."""
    path.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
