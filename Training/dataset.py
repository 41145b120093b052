"""Finding labelled cases in a BraTS-style dataset folder.

Supported layouts: one folder per case holding four sequences and a label map, possibly grouped
in ``HGG``/``LGG`` folders (BraTS 2018-2021: ``<case>_t1ce.nii.gz``, ``<case>_seg.nii.gz``,
labels 0/1/2/4; BraTS 2023: ``<case>-t1c.nii.gz``, ``<case>-seg.nii.gz``, labels 0/1/2/3).
Sequence names are matched by the core's :func:`BrainTumorSegLib.load.find_sequences`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.labels import CONVENTIONS
from BrainTumorSegLib.load import find_sequences, strip_image_suffix

LABEL_TOKENS = ("seg", "label", "labels", "segmentation")
GRADES = ("HGG", "LGG")


@dataclass(frozen=True)
class Case:
    """One labelled case: its id, sequence files, label file and (when known) grade."""

    case_id: str
    images: dict[str, Path]
    labels: Path
    grade: str = "unknown"


def data_root() -> Path:
    """Shared data folder: ``$BRAINTUMORSEG_DATA`` or ``<repo>/../shared/data``."""
    from . import REPO_ROOT

    return Path(os.environ.get("BRAINTUMORSEG_DATA", REPO_ROOT.parent / "shared" / "data"))


def _label_file(folder: Path) -> Path | None:
    hits = []
    for path in folder.iterdir():
        stem = strip_image_suffix(path.name)
        if stem is None or not path.is_file():
            continue
        tokens = [t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t]
        if tokens and tokens[-1] in LABEL_TOKENS:
            hits.append(path)
    if len(hits) > 1:
        raise InputError(f"several label maps: {', '.join(p.name for p in sorted(hits))}", folder)
    return hits[0] if hits else None


def find_cases(root: str | Path) -> list[Case]:
    """All folders under ``root`` holding a label map and the four sequences, sorted by id."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("dataset folder not found", root)
    cases = []
    for folder in sorted(p for p in [root, *root.rglob("*")] if p.is_dir()):
        labels = _label_file(folder)
        if labels is None:
            continue
        grade = next((g for g in GRADES if g in folder.relative_to(root).parts), "unknown")
        cases.append(Case(folder.name, find_sequences(folder), labels, grade))
    if not cases:
        raise InputError("no labelled cases found (expected CASE/CASE_seg.nii.gz)", root)
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        raise InputError("case folder names are not unique", root)
    return cases


def detect_convention(labels: np.ndarray, label_path: Path) -> str:
    """``brats2018`` (ET = 4) or ``brats2023`` (ET = 3) from the values, else from the name."""
    values = set(np.unique(labels).astype(int).tolist())
    for name, table in CONVENTIONS.items():
        allowed = {0, *table.values()}
        if values <= allowed and table["ET"] in values:
            return name
    if values <= {0, 1, 2}:  # no enhancing tumour: both conventions agree; use the layout
        return "brats2023" if "-seg" in label_path.name.lower() else "brats2018"
    raise InputError(f"label values {sorted(values)} match no known convention", label_path)
