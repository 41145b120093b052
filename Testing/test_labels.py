import numpy as np
import pytest

from BrainTumorSegLib import labels


@pytest.mark.parametrize(
    ("convention", "expected"),
    [("brats2018", [0, 1, 2, 4]), ("brats2023", [0, 1, 2, 3])],
)
def test_conventions_round_trip(convention, expected):
    classes = np.array([0, 1, 2, 3], dtype=np.uint8)
    on_disk = labels.classes_to_convention(classes, convention)
    assert on_disk.tolist() == expected
    assert labels.convention_to_classes(on_disk, convention).tolist() == [0, 1, 2, 3]


def test_unexpected_label_value_is_named():
    with pytest.raises(ValueError, match=r"\[3\]"):
        labels.convention_to_classes(np.array([0, 3]), "brats2018")


def test_regions_are_nested():
    classes = np.array([0, 1, 2, 3])
    et, tc, wt = (labels.region_mask(classes, r) for r in ("ET", "TC", "WT"))
    assert et.tolist() == [False, False, False, True]
    assert tc.tolist() == [False, True, False, True]
    assert wt.tolist() == [False, True, True, True]
    assert np.all(et <= tc) and np.all(tc <= wt)


def test_terminology_entry_has_slicer_layout():
    entry = labels.terminology_entry(labels.LABEL_BY_KEY["ED"])
    parts = entry.split("~")
    assert len(parts) == 7
    assert parts[1] == "SCT^49755003^Morphologically Altered Structure"
    assert parts[2] == "SCT^79654002^Edema"
    assert parts[5] == "SCT^12738006^Brain"


def test_one_definition_per_label():
    assert [label.index for label in labels.LABELS] == [1, 2, 3]
    assert len({label.name for label in labels.LABELS}) == 3
    assert len({label.color for label in labels.LABELS}) == 3
