#!/usr/bin/env python3
"""Peak memory of whole-volume ONNX Runtime inference of the trainer's U-Net, per input size.

    python Benchmarks/memory_calibration.py [--bases 8,16,32] [--sizes 64x64x64,96x96x96,...]

Builds the U-Net (Training.network) at each first-level width with random weights, exports it
to ONNX, then runs one inference per size in a fresh process and prints the peak resident
memory added by the run. ``infer.BYTES_PER_VOXEL_PER_BASE_FILTER`` is set from these figures.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "BrainTumorSeg")]


def build(base: int, path: Path) -> None:
    """Export a U-Net with filters base, 2*base, ... 16*base to ONNX."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import numpy as np

    from Training.config import NetworkConfig
    from Training.network import build_unet

    model = build_unet(
        NetworkConfig(filters=[base * 2**i for i in range(5)]), input_channels=4, num_outputs=4
    )
    model(np.zeros((1, 16, 16, 16, 4), "float32"))
    model.export(str(path), format="onnx", verbose=False)


def measure(path: str, shape: tuple[int, int, int]) -> None:
    """One inference; prints MB added to the peak RSS by it (run in a fresh process)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(1, *shape, 4)).astype(np.float32)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    session.run(None, {session.get_inputs()[0].name: x})
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print((after - before) / 1024.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bases", default="8,16,32")
    parser.add_argument("--sizes", default="64x64x64,96x96x96,128x128x96,128x160x128,144x176x144")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], tuple(int(v) for v in args.measure[1:]))
        return 0
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    print("| base filters | " + " | ".join("x".join(map(str, s)) for s in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for base in (int(b) for b in args.bases.split(",")):
            path = Path(tmp) / f"unet{base}.onnx"
            build(base, path)
            cells = []
            for shape in sizes:
                out = subprocess.run(
                    [sys.executable, __file__, "--measure", str(path), *map(str, shape)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                mb = float(out.stdout.strip().splitlines()[-1])
                per_voxel = mb * 2**20 / (shape[0] * shape[1] * shape[2]) / base
                cells.append(f"{mb:.0f} MB ({per_voxel:.1f} B/vox/filter)")
            print(f"| {base} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
