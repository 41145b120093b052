#!/usr/bin/env python3
"""Peak memory of whole-volume ONNX Runtime inference of the trainer's U-Net, per input size.

    python Benchmarks/memory_calibration.py [--bases 8,16,32] [--sizes 64x64x64,96x96x96,...]
        [--converters onnx_graph,tf2onnx]

Builds the U-Net (Training.network) at each first-level width with random weights, writes it
to ONNX with each converter (the project's writer, which export uses, and Keras' generic
tf2onnx export as the baseline), then runs one inference per size in a fresh process and
prints the peak resident memory added by the run, one table per converter.
``infer.BYTES_PER_VOXEL_PER_BASE_FILTER`` is set from these figures.
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


def build(base: int, path: Path, converter: str) -> None:
    """Write a U-Net with filters base, 2*base, ... 16*base to ONNX with ``converter``."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import numpy as np

    from Training.config import NetworkConfig
    from Training.network import build_unet

    model = build_unet(
        NetworkConfig(filters=[base * 2**i for i in range(5)]), input_channels=4, num_outputs=4
    )
    model(np.zeros((1, 16, 16, 16, 4), "float32"))
    if converter == "onnx_graph":
        from Training.onnx_graph import write_onnx

        write_onnx(model, path)
    else:
        model.export(str(path), format="onnx", verbose=False)


def _status_mb(field: str) -> float | None:
    """A memory figure of this process from /proc (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def measure(path: str, shape: tuple[int, int, int]) -> None:
    """One inference; prints MB added to the peak RSS by it (run in a fresh process).

    On Linux the peak is VmHWM of this process's own memory map: ``ru_maxrss`` would carry
    over the parent's high-water mark through fork and exec (the parent holds TensorFlow)."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    # float32 straight away: a float64 draw would raise the peak before the run.
    x = np.random.default_rng(0).standard_normal(size=(1, *shape, 4), dtype=np.float32)
    before = _status_mb("VmRSS")
    if before is None:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    session.run(None, {session.get_inputs()[0].name: x})
    after = _status_mb("VmHWM")
    if after is None:
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(after - before)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bases", default="8,16,32")
    parser.add_argument("--sizes", default="64x64x64,96x96x96,128x128x96,128x160x128,144x176x144")
    parser.add_argument("--converters", default="onnx_graph,tf2onnx")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        measure(args.measure[0], tuple(int(v) for v in args.measure[1:]))
        return 0
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    for converter in args.converters.split(","):
        print(f"\n{converter}:")
        table(converter, [int(b) for b in args.bases.split(",")], sizes)
    return 0


def table(converter: str, bases: list[int], sizes: list[tuple[int, ...]]) -> None:
    """Print one Markdown table: a row per base width, a cell per input size."""
    print("| base filters | " + " | ".join("x".join(map(str, s)) for s in sizes) + " |")
    print("|---" * (len(sizes) + 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for base in bases:
            path = Path(tmp) / f"unet{base}.onnx"
            build(base, path, converter)
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


if __name__ == "__main__":
    sys.exit(main())
