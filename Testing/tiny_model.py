"""A tiny hand-weighted ONNX network for tests: the pipeline's plumbing, not its accuracy.

Channels-last input (N, X, Y, Z, C) with dynamic spatial size, like a Keras export. A 3x3x3
smoothing followed by a per-voxel linear classifier on the z-scored intensities: bright
FLAIR -> edema, bright T1ce -> enhancing, bright T2 with dark T1ce -> necrosis.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CHANNELS = ["t1", "t1ce", "t2", "flair"]


def _weights(channels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    col = {c: i for i, c in enumerate(channels)}
    w = np.zeros((4, len(channels)), np.float32)  # rows: background, NCR, ED, ET
    b = np.zeros(4, np.float32)
    if "flair" in col:
        w[2, col["flair"]] = 4.0
        b[2] = -6.0
    if "t1ce" in col:
        w[3, col["t1ce"]] = 4.0
        b[3] = -7.0
        w[1, col["t1ce"]] = -3.0
    if "t2" in col:
        w[1, col["t2"]] = 3.0
        b[1] -= 5.0
    return w, b


def build_tiny_onnx(
    path: Path, channels: list[str] | None = None, *, fixed_shape=None, sharpness: float = 1.0
) -> Path:
    """Write the network to ``path`` (opset 17); ``sharpness`` scales its logits, so two
    values give two networks with different probabilities (an ensemble's members)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    channels = channels or CHANNELS
    c = len(channels)
    w, b = _weights(channels)
    w, b = w * np.float32(sharpness), b * np.float32(sharpness)
    smooth = np.full((c, 1, 3, 3, 3), 1.0 / 27.0, np.float32)
    spatial = list(fixed_shape) if fixed_shape else ["x", "y", "z"]
    nodes = [
        helper.make_node("Transpose", ["input"], ["ncdhw"], perm=[0, 4, 1, 2, 3]),
        helper.make_node("Conv", ["ncdhw", "smooth"], ["smoothed"], pads=[1] * 6, group=c),
        helper.make_node("Conv", ["smoothed", "w", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
        helper.make_node("Transpose", ["probs"], ["output"], perm=[0, 2, 3, 4, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", *spatial, c])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", *spatial, 4])],
        initializer=[
            numpy_helper.from_array(smooth, "smooth"),
            numpy_helper.from_array(w.reshape(4, c, 1, 1, 1), "w"),
            numpy_helper.from_array(b, "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def build_tiny_package(folder: Path, channels: list[str] | None = None, **spec_fields) -> Path:
    """A model package folder (model.onnx + model.json) around the tiny network."""
    folder.mkdir(parents=True, exist_ok=True)
    build_tiny_onnx(folder / "model.onnx", channels)
    meta = {
        "name": "tiny-test",
        "version": "0.0.1",
        "channels": channels or CHANNELS,
        "spacing_mm": [1.0, 1.0, 1.0],
        "size_multiple": 8,
        **spec_fields,
    }
    (folder / "model.json").write_text(json.dumps(meta))
    return folder
