#!/usr/bin/env python3
"""How much Dice a working resolution costs before any network is involved.

    .venv/bin/python Benchmarks/resolution_ceiling.py [--spacing 1.25 1.5 2] [--dataset DIR]

For every labelled case, the reference regions (WT, TC, ET) go to a grid of the given spacing
over the same field of view and back: trilinear there
(:func:`BrainTumorSegLib.conform.resample_to_grid`), trilinear back and a 0.5 threshold, as the
pipeline restores its outputs (:func:`BrainTumorSegLib.restore.restore_to_input_grid`). The
Dice of the round trip against the reference approximates the best a perfect network could
score at that spacing (the pipeline's working grid is also re-oriented, cropped and padded, so
its voxels sit at other offsets). Prints the mean and the lowest case per region and spacing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "BrainTumorSeg"), str(ROOT)]

from BrainTumorSegLib.conform import resample_to_grid  # noqa: E402
from BrainTumorSegLib.geometry import Grid, zoomed_grid  # noqa: E402
from BrainTumorSegLib.labels import REGIONS, region_mask  # noqa: E402
from BrainTumorSegLib.restore import restore_to_input_grid  # noqa: E402
from Training.dataset import find_cases  # noqa: E402
from Training.evaluate import read_classes  # noqa: E402
from Training.metrics import dice  # noqa: E402

DEFAULT_DATASET = (
    Path(os.environ.get("BRAINTUMORSEG_DATA", ROOT.parent / "shared" / "data")) / "brats"
)


def round_trip_dice(classes: np.ndarray, grid: Grid, spacing: float) -> dict[str, float]:
    """Dice per region of the reference against itself sent to ``spacing`` mm and back."""
    working = zoomed_grid(grid, np.full(3, spacing))
    regions = np.stack([region_mask(classes, r) for r in REGIONS]).astype(np.float32)
    back = restore_to_input_grid(resample_to_grid(regions, grid, working), working, grid) > 0.5
    return {r: dice(back[i], regions[i] > 0) for i, r in enumerate(REGIONS)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--spacing", type=float, nargs="+", default=[1.25, 1.5, 2.0])
    args = parser.parse_args()
    cases = find_cases(args.dataset)
    references = [read_classes(case.labels, "auto") for case in cases]
    print(f"{len(cases)} cases in {args.dataset}; Dice of the reference after a round trip")
    print(f"{'spacing mm':>10}  " + "  ".join(f"{r + ' mean':>8} {r + ' min':>7}" for r in REGIONS))
    for spacing in args.spacing:
        scores = [round_trip_dice(classes, grid, spacing) for classes, grid in references]
        cells = []
        for r in REGIONS:
            values = np.array([s[r] for s in scores])
            cells.append(f"{values.mean():8.3f} {values.min():7.3f}")
        print(f"{spacing:10.2f}  " + "  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
