"""The CLI end to end on a real BraTS case (tiny model: this proves plumbing, not accuracy)."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import slicerio
from conftest import ROOT

from BrainTumorSegLib.labels import LABELS, terminology_entry
from BrainTumorSegLib.load import find_sequences


def test_segment_real_case_with_every_output(tmp_path, brats_case, tiny_model):
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "BrainTumorSegLib",
            "segment",
            "--input-dir",
            str(brats_case),
            "--output",
            str(out),
            "--model",
            str(tiny_model),
            "--progress-json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "BrainTumorSeg")},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    fractions = [e["fraction"] for e in events]
    assert fractions == sorted(fractions) and events[-1]["stage"] == "done"
    assert {e["stage"] for e in events} >= {"load", "preprocess", "infer", "write", "done"}

    reference = nib.load(str(next(brats_case.glob("*_t1ce.nii.gz"))))
    seg = nib.load(str(out / "segmentation.nii.gz"))
    assert seg.shape == reference.shape == (240, 240, 155)
    np.testing.assert_array_equal(seg.affine, reference.affine)
    labels = np.asarray(seg.dataobj)
    assert set(np.unique(labels)) <= {0, 1, 2, 4}
    assert np.count_nonzero(labels) > 0
    # Nothing outside the brain (background is exactly zero in BraTS data).
    brain = np.zeros(reference.shape, bool)
    for path in find_sequences(brats_case).values():
        brain |= np.asarray(nib.load(str(path)).dataobj) != 0
    assert not np.any(labels[~brain])

    report = json.loads((out / "report.json").read_text())
    assert report["grid"]["shape"] == [240, 240, 155]
    assert report["reference"] == "t1ce"
    assert report["regions_ml"]["WT"] == round(np.count_nonzero(labels) * 0.001, 3)

    segmentation = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))
    by_name = {s["name"]: s for s in segmentation["segments"]}
    assert sorted(by_name) == sorted(label.name for label in LABELS)
    for label in LABELS:
        segment = by_name[label.name]
        np.testing.assert_allclose(segment["color"], label.color, atol=1e-6)
        assert segment["terminology"]["type"][1] == label.type[1]
        assert segment["terminology"]["category"][1] == label.category[1]
        assert terminology_entry(label).split("~")[2] == "^".join(segment["terminology"]["type"])
    voxels = segmentation["voxels"]
    ijk_to_ras = np.diag([-1, -1, 1, 1]) @ np.asarray(segmentation["ijkToLPS"])
    np.testing.assert_allclose(ijk_to_ras, reference.affine, atol=1e-5)
    # seg.nrrd stores class indices 1..3; the NIfTI stores BraTS values 1/2/4.
    np.testing.assert_array_equal(voxels == 3, labels == 4)
    np.testing.assert_array_equal(voxels > 0, labels > 0)

    assert (out / "overlay.png").stat().st_size > 10_000
    assert sorted(p.name for p in out.iterdir()) == [
        "overlay.png",
        "report.json",
        "segmentation.nii.gz",
        "segmentation.seg.nrrd",
    ]
    assert not list(tmp_path.glob(".braintumorseg-*"))


def test_nrrd_inputs_give_the_same_result_as_nifti(tmp_path, brats_case, tiny_model):
    """A case converted to NRRD (LPS) segments identically and lands on the same grid."""
    import nrrd

    from BrainTumorSegLib import segment

    paths = find_sequences(brats_case)
    converted = {}
    for sequence, path in paths.items():
        image = nib.load(str(path))
        lps = np.diag([-1, -1, 1, 1]) @ image.affine
        header = {
            "space": "left-posterior-superior",
            "space directions": lps[:3, :3].T,
            "space origin": lps[:3, 3],
            "encoding": "raw",
        }
        converted[sequence] = tmp_path / f"{sequence}.nrrd"
        nrrd.write(str(converted[sequence]), np.asarray(image.dataobj), header)
    from_nifti = segment(paths, model=tiny_model)
    from_nrrd = segment(converted, model=tiny_model)
    np.testing.assert_allclose(from_nrrd.grid.affine, from_nifti.grid.affine, atol=1e-6)
    np.testing.assert_array_equal(from_nrrd.classes, from_nifti.classes)
