"""The single definition of tumour labels, regions, segment names, colours and terminology.

Everything that names, colours or counts a tumour sub-region (the CLI, the report, the
.seg.nrrd writer, the trainer, the evaluator and the Slicer module) reads it from here.

Internally a segmentation is an array of *class indices* 0..3 (background, NCR, ED, ET).
On disk it is written in one of the label *conventions* below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# DICOM/SNOMED CT coded concept: (coding scheme designator, code value, code meaning).
CodedConcept = tuple[str, str, str]

TERMINOLOGY_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
CATEGORY_ALTERED_STRUCTURE: CodedConcept = ("SCT", "49755003", "Morphologically Altered Structure")
REGION_BRAIN: CodedConcept = ("SCT", "12738006", "Brain")


@dataclass(frozen=True)
class TumourLabel:
    """One tumour sub-region as the network predicts it and the user sees it."""

    index: int  # class index inside the pipeline (0 is background)
    key: str  # short stable identifier used in reports and model metadata
    name: str  # segment name shown to users
    color: tuple[float, float, float]  # RGB in 0..1
    category: CodedConcept
    type: CodedConcept
    type_modifier: CodedConcept | None = None


LABELS: tuple[TumourLabel, ...] = (
    TumourLabel(
        index=1,
        key="NCR",
        name="Necrotic and non-enhancing tumour core",
        color=(0.90, 0.30, 0.25),
        category=CATEGORY_ALTERED_STRUCTURE,
        type=("SCT", "6574001", "Necrosis"),
    ),
    TumourLabel(
        index=2,
        key="ED",
        name="Peritumoral edema",
        color=(0.35, 0.80, 0.35),
        category=CATEGORY_ALTERED_STRUCTURE,
        type=("SCT", "79654002", "Edema"),
    ),
    TumourLabel(
        index=3,
        key="ET",
        name="GD-enhancing tumour",
        color=(1.00, 0.85, 0.20),
        category=CATEGORY_ALTERED_STRUCTURE,
        type=("SCT", "86049000", "Neoplasm"),
    ),
)
NUM_CLASSES = len(LABELS) + 1  # background + tumour labels
LABEL_BY_KEY: dict[str, TumourLabel] = {label.key: label for label in LABELS}

# On-disk label values per convention, by label key (background is always 0).
CONVENTIONS: dict[str, dict[str, int]] = {
    "brats2018": {"NCR": 1, "ED": 2, "ET": 4},  # BraTS 2018-2021 (no label 3)
    "brats2023": {"NCR": 1, "ED": 2, "ET": 3},
}
DEFAULT_CONVENTION = "brats2018"

# Scoring regions (nested): each is a set of label keys.
REGIONS: dict[str, tuple[str, ...]] = {
    "ET": ("ET",),
    "TC": ("NCR", "ET"),
    "WT": ("NCR", "ED", "ET"),
}
REGION_NAMES: dict[str, str] = {
    "ET": "Enhancing tumour",
    "TC": "Tumour core",
    "WT": "Whole tumour",
}


def _lookup_table(convention: str, *, inverse: bool) -> np.ndarray:
    try:
        values = CONVENTIONS[convention]
    except KeyError:
        raise ValueError(
            f"unknown label convention {convention!r}; choose one of {sorted(CONVENTIONS)}"
        ) from None
    if inverse:
        table = np.full(max(values.values()) + 1, -1, dtype=np.int16)
        table[0] = 0
        for label in LABELS:
            table[values[label.key]] = label.index
        return table
    table = np.zeros(NUM_CLASSES, dtype=np.uint8)
    for label in LABELS:
        table[label.index] = values[label.key]
    return table


def classes_to_convention(classes: np.ndarray, convention: str = DEFAULT_CONVENTION) -> np.ndarray:
    """Map class indices 0..3 to the on-disk label values of ``convention`` (uint8)."""
    return _lookup_table(convention, inverse=False)[classes]


def convention_to_classes(labels: np.ndarray, convention: str = DEFAULT_CONVENTION) -> np.ndarray:
    """Map on-disk label values of ``convention`` to class indices 0..3.

    Raises ``ValueError`` naming the unexpected values when the array holds values that the
    convention does not define (e.g. a BraTS 2023 map read as BraTS 2018).
    """
    table = _lookup_table(convention, inverse=True)
    labels = np.asarray(labels)
    found = np.unique(labels)
    bad = [int(v) for v in found if v < 0 or v >= table.size or table[int(v)] < 0]
    if bad:
        raise ValueError(f"label values {bad} are not part of the {convention} convention")
    return table[labels.astype(np.int64)].astype(np.uint8)


def region_mask(classes: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of a scoring region (ET, TC or WT) from class indices."""
    indices = [LABEL_BY_KEY[key].index for key in REGIONS[region]]
    return np.isin(classes, indices)


def format_coded(concept: CodedConcept | None) -> str:
    """``CSD^code^meaning`` as Slicer's terminology strings write it (``^^`` when absent)."""
    return "^".join(concept) if concept else "^^"


def terminology_entry(label: TumourLabel) -> str:
    """Slicer terminology entry string for a segment (stored as the segment's tag)."""
    return "~".join(
        [
            TERMINOLOGY_CONTEXT,
            format_coded(label.category),
            format_coded(label.type),
            format_coded(label.type_modifier),
            ANATOMIC_CONTEXT,
            format_coded(REGION_BRAIN),
            format_coded(None),
        ]
    )
