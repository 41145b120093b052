"""Is the shipped N4 setting a safe shortcut? Time and agreement against a reference setting.

    .venv/bin/python Benchmarks/n4_check.py                          # 3 cases
    .venv/bin/python Benchmarks/n4_check.py --cases Brats18_2013_3_1 --reference-shrink 4
    .venv/bin/python Benchmarks/n4_check.py --reference-backend ants  # backends, same shrink

Runs ``segment`` with bias correction forced on, once with the shipped N4 settings
(:data:`BrainTumorSegLib.bias.SHRINK_FACTOR`, :data:`~BrainTumorSegLib.bias.ITERATIONS`, the
backend segmentation prefers, SimpleITK as in 3D Slicer) and once with a reference setting, in
the same process and run: by default shrink 4 (the ANTs default); with ``--reference-backend``
the other backend (e.g. ANTsPy, with which the training data were corrected) at the shipped
shrink unless ``--reference-shrink`` says otherwise. Prints
the end-to-end time of each and the Dice (ET, TC, WT) between the two segmentations.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "BrainTumorSeg"))

from BrainTumorSegLib import bias, segment  # noqa: E402
from BrainTumorSegLib.labels import REGIONS, region_mask  # noqa: E402

DEFAULT_CASES = ("Brats18_2013_3_1", "Brats18_CBICA_ABM_1", "Brats18_TCIA10_637_1")
SEQUENCES = ("t1", "t1ce", "t2", "flair")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def run(
    case_dir: Path, shrink: int, iterations: tuple[int, ...], backend: str
) -> tuple[np.ndarray, float]:
    """Classes and wall time of ``segment`` with N4 forced on at the given setting."""
    saved = bias.SHRINK_FACTOR, bias.ITERATIONS
    bias.SHRINK_FACTOR, bias.ITERATIONS = shrink, iterations
    try:
        images = {s: str(case_dir / f"{case_dir.name}_{s}.nii.gz") for s in SEQUENCES}
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            result = segment(images, out, bias_correction=True, bias_backend=backend, overlay=False)
            return result.classes, time.perf_counter() - start
    finally:
        bias.SHRINK_FACTOR, bias.ITERATIONS = saved


def main() -> int:
    data = Path(os.environ.get("BRAINTUMORSEG_DATA", ROOT.parent / "shared" / "data")) / "brats"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=data, help="BraTS-format dataset folder")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES))
    # One change at a time: comparing backends keeps the shipped shrink.
    shrink_help = "default 4, or the shipped shrink with --reference-backend"
    parser.add_argument("--reference-shrink", type=int, default=None, help=shrink_help)
    parser.add_argument("--reference-backend", choices=bias.BACKENDS, default=None)
    args = parser.parse_args()
    if args.reference_shrink is None:
        args.reference_shrink = bias.SHRINK_FACTOR if args.reference_backend else 4
    preferred = bias.available_backend(None, bias.SEGMENT_ORDER)
    shipped = (bias.SHRINK_FACTOR, tuple(bias.ITERATIONS), preferred)
    reference = (
        args.reference_shrink,
        tuple(bias.ITERATIONS),
        bias.available_backend(args.reference_backend or preferred),
    )
    if reference == shipped:
        parser.error("the reference setting is the shipped one; change the shrink or the backend")
    print(f"N4 shipped: shrink {shipped[0]}, iterations {shipped[1]}, backend {shipped[2]}")
    print(f"N4 reference: shrink {reference[0]}, backend {reference[2]}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'case':<24}{'reference s':>12}{'shipped s':>11}   Dice shipped vs reference ET/TC/WT")
    scores = []
    for case in args.cases:
        ref_classes, ref_s = run(args.data / case, *reference)
        classes, seconds = run(args.data / case, *shipped)
        row = [dice(region_mask(classes, r), region_mask(ref_classes, r)) for r in REGIONS]
        scores.append(row)
        print(f"{case:<24}{ref_s:>12.1f}{seconds:>11.1f}   " + " / ".join(f"{d:.3f}" for d in row))
    mean = np.mean(scores, axis=0)
    print(f"{'mean':<47}" + " / ".join(f"{d:.3f}" for d in mean))
    return 0


if __name__ == "__main__":
    sys.exit(main())
