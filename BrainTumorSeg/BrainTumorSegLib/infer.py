"""Running the network: ONNX Runtime by default, Keras for ``.keras``/``.h5`` files.

Whole-volume inference when it fits the memory budget, otherwise overlapping sliding windows
blended with Gaussian weights; optional mirroring test-time augmentation. Arrays are
channels-last (X, Y, Z, C) here whatever the model's own layout.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import InputError
from .model import ModelSpec

ProgressFn = Callable[[float, str], None]

# Activation memory of a U-Net per input voxel, in bytes, for a base width of 16 filters
# (several full-resolution feature maps are alive at once); scaled by the model's base width.
BYTES_PER_VOXEL_PER_BASE_FILTER = 24.0
DEFAULT_MEMORY_BUDGET_GB = 2.0


class Backend(Protocol):
    """A loaded network: ``predict`` maps (N, X, Y, Z, C) to (N, X, Y, Z, K), channels-last."""

    input_channels: int | None
    fixed_spatial_shape: tuple[int, int, int] | None

    def predict(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxBackend:
    """ONNX Runtime session on the CPU."""

    def __init__(self, path: Path, spec: ModelSpec, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or 0  # 0 = one per physical core
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise InputError(f"not a valid ONNX model ({first})", path) from e
        self.channels_first = spec.input_layout == "channels_first"
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        dims = list(model_input.shape)
        if len(dims) != 5:
            raise InputError(f"model input has {len(dims)} dimensions; a 3D network needs 5", path)
        channel_dim = dims[1] if self.channels_first else dims[4]
        spatial = dims[2:] if self.channels_first else dims[1:4]
        self.input_channels = channel_dim if isinstance(channel_dim, int) else None
        self.fixed_spatial_shape = (
            tuple(spatial) if all(isinstance(d, int) and d > 0 for d in spatial) else None
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(np.moveaxis(batch, -1, 1) if self.channels_first else batch)
        (output,) = self.session.run(None, {self.input_name: feed.astype(np.float32, copy=False)})[
            :1
        ]
        return np.moveaxis(output, 1, -1) if self.channels_first else output


class KerasBackend:
    """A Keras 3 model (``.keras`` or legacy ``.h5``); imported only when such a file is used."""

    def __init__(self, path: Path, threads: int | None = None) -> None:
        if threads:
            os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        try:
            import keras
        except ImportError as e:
            raise InputError(
                "running a Keras model needs TensorFlow/Keras: pip install tensorflow", path
            ) from e
        try:
            self.model = keras.models.load_model(str(path), compile=False)
        except Exception as e:  # Keras raises many types for unreadable files
            raise InputError(f"not a readable Keras model ({type(e).__name__})", path) from e
        shape = self.model.inputs[0].shape
        self.input_channels = shape[-1]
        spatial = tuple(shape[1:4])
        self.fixed_spatial_shape = spatial if all(isinstance(d, int) for d in spatial) else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(batch, verbose=0))


def load_backend(spec: ModelSpec, threads: int | None = None) -> Backend:
    """Open the network file named by ``spec`` and check it against the metadata."""
    path = spec.model_path
    if path is None or not path.is_file():
        raise InputError("model file not found", path)
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        backend: Backend = OnnxBackend(path, spec, threads)
    elif suffix in (".keras", ".h5"):
        backend = KerasBackend(path, threads)
    else:
        raise InputError("unsupported model file type", path)
    if backend.input_channels is not None and backend.input_channels != len(spec.channels):
        raise InputError(
            f"the model takes {backend.input_channels} input channels but "
            f"{len(spec.channels)} sequences were assigned ({','.join(spec.channels)})",
            path,
        )
    if backend.fixed_spatial_shape and not spec.fixed_input_shape:
        spec.fixed_input_shape = list(backend.fixed_spatial_shape)
    return backend


def estimate_memory_bytes(shape: tuple[int, ...], spec: ModelSpec) -> float:
    """Rough peak activation memory of one forward pass on a block of ``shape``."""
    base = float(spec.training.get("base_filters", 16))
    return float(np.prod(shape)) * BYTES_PER_VOXEL_PER_BASE_FILTER * base


def gaussian_weights(shape: tuple[int, int, int], sigma_fraction: float = 0.125) -> np.ndarray:
    """Blending weights that trust a window's centre more than its border."""
    axes = []
    for n in shape:
        x = np.arange(n) - (n - 1) / 2.0
        axes.append(np.exp(-0.5 * (x / max(n * sigma_fraction, 1e-6)) ** 2))
    weights = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weights /= weights.max()
    return np.maximum(weights, 1e-3).astype(np.float32)


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of windows of ``window`` along an axis of ``size`` (last one flush)."""
    if window >= size:
        return [0]
    step = max(1, int(window * (1.0 - overlap)))
    starts = list(range(0, size - window, step))
    starts.append(size - window)
    return starts


def choose_patch(shape: tuple[int, ...], spec: ModelSpec, budget_bytes: float) -> tuple[int, ...]:
    """Largest window (a multiple of the size multiple) whose estimated memory fits the budget."""
    if spec.fixed_input_shape:
        return tuple(spec.fixed_input_shape)
    multiple = spec.size_multiple
    patch = list(shape)
    while estimate_memory_bytes(tuple(patch), spec) > budget_bytes and max(patch) > multiple:
        axis = int(np.argmax(patch))
        patch[axis] = max(multiple, (patch[axis] // 2 + multiple - 1) // multiple * multiple)
    return tuple(patch)


def _flips(tta: bool) -> list[tuple[int, ...]]:
    if not tta:
        return [()]
    return [c for r in range(4) for c in itertools.combinations((0, 1, 2), r)]


def predict_volume(
    backend: Backend,
    volume: np.ndarray,
    spec: ModelSpec,
    *,
    tta: bool = False,
    memory_budget_gb: float | None = None,
    progress: ProgressFn | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Network output (K, X, Y, Z) float32 for a channels-last volume (X, Y, Z, C).

    Raises :class:`~BrainTumorSegLib.errors.CancelledError` when ``cancelled()`` turns true.
    """
    from .errors import CancelledError

    report = progress or (lambda fraction, message: None)
    budget = (memory_budget_gb or DEFAULT_MEMORY_BUDGET_GB) * 1e9
    spatial = volume.shape[:3]
    patch = choose_patch(spatial, spec, budget)
    padded = volume
    if any(p > s for p, s in zip(patch, spatial)):  # fixed-size networks need a full window
        pad = [(0, max(0, p - s)) for p, s in zip(patch, spatial)] + [(0, 0)]
        padded = np.pad(volume, pad)
    shape = padded.shape[:3]
    whole = tuple(patch) == tuple(shape)
    starts = list(itertools.product(*[window_starts(s, p, 0.5) for s, p in zip(shape, patch)]))
    flips = _flips(tta)
    weights = np.ones(patch, np.float32) if whole else gaussian_weights(patch)
    total = np.zeros((spec.num_outputs, *shape), dtype=np.float32)
    norm = np.zeros(shape, dtype=np.float32)
    steps = len(starts) * len(flips)
    done = 0
    mode = "whole volume" if whole else f"{len(starts)} windows of {'x'.join(map(str, patch))}"
    for start in starts:
        region = tuple(slice(s, s + p) for s, p in zip(start, patch))
        block = padded[region]
        accum = np.zeros((spec.num_outputs, *patch), dtype=np.float32)
        for axes in flips:
            if cancelled and cancelled():
                raise CancelledError("cancelled during inference")
            flipped = np.flip(block, axis=axes) if axes else block
            out = backend.predict(flipped[None])[0]
            out = np.flip(out, axis=axes) if axes else out
            accum += np.moveaxis(out, -1, 0)
            done += 1
            report(done / steps, f"inference ({mode}, pass {done}/{steps})")
        total[(slice(None), *region)] += accum * weights
        norm[region] += weights * len(flips)
    total /= norm[None]
    return total[(slice(None), *[slice(0, s) for s in spatial])]
