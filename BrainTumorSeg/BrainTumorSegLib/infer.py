"""Running the network: ONNX Runtime by default, Keras for ``.keras``/``.h5`` files.

Whole-volume inference when it fits the memory budget, otherwise overlapping sliding windows
blended with Gaussian weights; a model may ask for windows of its own size in any case
(``inference_window``); optional mirroring test-time augmentation. Arrays are
channels-last (X, Y, Z, C) here whatever the model's own layout.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import InputError
from .model import ModelSpec

ProgressFn = Callable[[float, str], None]

# Peak memory of one ONNX Runtime forward pass of a 3D U-Net, per input voxel and per filter of
# the network's first level (activations scale with that width). Calibrated by measuring the
# peak RSS of whole-volume inference of the trainer's U-Net (widths b, 2b, ..., 16b; instance
# norm; 4 channels in, 4 out) at 64^3 to 144x176x144 voxels for b = 8, 16, 32, minus the RSS
# before the run; the constant covers the largest ratio seen (ONNX Runtime's arena grows in
# powers of two, so the measurements scatter by up to ~1.5x). See docs: troubleshooting.
BYTES_PER_VOXEL_PER_BASE_FILTER = 26.0
# Base width assumed for a model whose metadata does not say (e.g. an imported .h5).
DEFAULT_BASE_FILTERS = 16
# Memory of the runtime itself and the loaded session, independent of the input size.
SESSION_OVERHEAD_BYTES = 150e6
# Per working-grid voxel and channel: input, output, the blending accumulators (float32).
ARRAY_BYTES_PER_VOXEL_PER_CHANNEL = 4.0
DEFAULT_MEMORY_BUDGET_GB = 2.0
# Share of the available memory that a run may plan to use (the rest for the system, caches).
USABLE_MEMORY_FRACTION = 0.8


class MemoryLimitError(InputError):
    """The case needs more memory than this machine has available, even in small windows."""


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


class EnsembleBackend:
    """Several networks with the same input and output, run one after the other; their
    outputs are averaged (a mean of probabilities, as the networks end in sigmoid/softmax)."""

    def __init__(self, members: list[Backend]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one network")
        self.members = members
        self.input_channels = members[0].input_channels
        self.fixed_spatial_shape = members[0].fixed_spatial_shape

    def predict(self, batch: np.ndarray) -> np.ndarray:
        total = np.asarray(self.members[0].predict(batch), dtype=np.float32)
        for member in self.members[1:]:
            total = total + member.predict(batch)
        return total / len(self.members)


def _load_network(path: Path, spec: ModelSpec, threads: int | None) -> Backend:
    if not path.is_file():
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
    return backend


def load_backend(spec: ModelSpec, threads: int | None = None) -> Backend:
    """Open the network file(s) named by ``spec`` and check them against the metadata; an
    ensemble package gives an :class:`EnsembleBackend` over all its networks."""
    paths = spec.network_paths
    if not paths:
        raise InputError("model file not found", spec.model_path)
    members = [_load_network(path, spec, threads) for path in paths]
    shapes = {m.fixed_spatial_shape for m in members}
    if len(shapes) > 1:
        raise InputError(
            f"the ensemble's networks take different fixed input shapes {sorted(map(str, shapes))}",
            paths[0],
        )
    backend = members[0] if len(members) == 1 else EnsembleBackend(members)
    if backend.fixed_spatial_shape and not spec.fixed_input_shape:
        spec.fixed_input_shape = list(backend.fixed_spatial_shape)
    return backend


def _first_width(training: Any) -> int:
    """First-level width recorded in a package's training metadata (default when absent)."""
    if not isinstance(training, dict):
        return DEFAULT_BASE_FILTERS
    try:
        return int(training["config"]["network"]["filters"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        pass
    try:
        return int(training.get("base_filters", DEFAULT_BASE_FILTERS))
    except (TypeError, ValueError):
        return DEFAULT_BASE_FILTERS


def base_filters(spec: ModelSpec) -> int:
    """Width of the (first) network's first level, from the training metadata when it is there."""
    return _first_width(spec.training or {})


def network_widths(spec: ModelSpec) -> list[int]:
    """First-level width of every network the spec runs (``file``, then ``ensemble_files``).

    An ensemble records each member's training under ``training["ensemble"]`` with its file
    name, so each network is counted at its own width, also when one member is chosen to run
    alone (``--model pkg/model-2.onnx``); a name not listed there gets the first network's.
    """
    by_file: dict[str, int] = {}
    members = (spec.training or {}).get("ensemble")
    for member in members if isinstance(members, list) else []:
        if isinstance(member, dict) and isinstance(member.get("file"), str):
            by_file[member["file"]] = _first_width(member.get("training"))
    first = base_filters(spec)
    return [by_file.get(name, first) for name in [spec.file, *spec.ensemble_files]]


def estimate_memory_bytes(shape: tuple[int, ...], spec: ModelSpec) -> float:
    """Peak memory of one forward pass on a block of ``shape`` (calibrated, see above)."""
    voxels = float(np.prod(shape))
    # The networks of an ensemble run one after the other, but each ONNX Runtime session keeps
    # the memory arena of its last run, so their peaks add up (measured: RSS after the second
    # network's run minus after the first's is about one network's activations).
    return sum(
        voxels * BYTES_PER_VOXEL_PER_BASE_FILTER * width + SESSION_OVERHEAD_BYTES
        for width in network_widths(spec)
    )


def working_arrays_bytes(shape: tuple[int, ...], spec: ModelSpec) -> float:
    """Arrays held around the network for a working volume of ``shape``: the input, the
    blended output and its weights, and the output of one window."""
    channels = len(spec.channels) + 2 * spec.num_outputs + 1
    return float(np.prod(shape)) * channels * ARRAY_BYTES_PER_VOXEL_PER_CHANNEL


def available_memory_bytes() -> int | None:
    """Memory this process can still use, in bytes, or None when it cannot be told.

    Linux: MemAvailable from /proc/meminfo, capped by a cgroup (container) limit; elsewhere
    the free physical pages (POSIX) or GlobalMemoryStatusEx (Windows).
    """
    available: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if available is None:
        available = _available_fallback()
    limit = _cgroup_headroom()
    if limit is not None:
        available = limit if available is None else min(available, limit)
    return available


def _cgroup_headroom() -> int | None:
    """Bytes left under a cgroup v2 memory limit (containers), or None without a limit."""
    try:
        root = "/sys/fs/cgroup"
        with open(f"{root}/memory.max", encoding="ascii") as handle:
            text = handle.read().strip()
        if text == "max":
            return None
        with open(f"{root}/memory.current", encoding="ascii") as handle:
            current = int(handle.read().strip())
        return max(0, int(text) - current)
    except (OSError, ValueError):
        return None


def _available_fallback() -> int | None:
    if hasattr(os, "sysconf"):
        try:
            pages = os.sysconf("SC_AVPHYS_PAGES")
            size = os.sysconf("SC_PAGE_SIZE")
            if pages > 0 and size > 0:
                return int(pages * size)
        except (ValueError, OSError):
            pass
    if os.name == "nt":
        import ctypes

        class MemoryStatus(ctypes.Structure):
            _fields_ = [
                ("dwLength", ctypes.c_ulong),
                ("dwMemoryLoad", ctypes.c_ulong),
                ("ullTotalPhys", ctypes.c_ulonglong),
                ("ullAvailPhys", ctypes.c_ulonglong),
                ("ullTotalPageFile", ctypes.c_ulonglong),
                ("ullAvailPageFile", ctypes.c_ulonglong),
                ("ullTotalVirtual", ctypes.c_ulonglong),
                ("ullAvailVirtual", ctypes.c_ulonglong),
                ("ullAvailExtendedVirtual", ctypes.c_ulonglong),
            ]

        status = MemoryStatus()
        status.dwLength = ctypes.sizeof(MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return int(status.ullAvailPhys)
    return None


def plan_inference(
    shape: tuple[int, ...],
    spec: ModelSpec,
    memory_budget_gb: float | None = None,
    *,
    available: int | None = None,
    other_bytes: float = 0.0,
) -> tuple[tuple[int, ...], float]:
    """Window size for a working volume of ``shape`` and the memory the run will need.

    The budget is ``memory_budget_gb`` (default 2 GB), lowered to what the machine has
    available (``available`` bytes, less ``other_bytes`` already held, e.g. the images).
    Whole-volume inference when it fits, else the largest window that does; raises
    :class:`MemoryLimitError`, saying how much is needed, when even the smallest window
    cannot fit in the available memory.
    """
    budget = (memory_budget_gb or DEFAULT_MEMORY_BUDGET_GB) * 1e9
    arrays = working_arrays_bytes(shape, spec)
    headroom = None
    if available is not None:
        headroom = available * USABLE_MEMORY_FRACTION - other_bytes - arrays
        budget = min(budget, headroom)
    patch = choose_patch(shape, spec, budget)
    network = estimate_memory_bytes(patch, spec)
    needed = other_bytes + arrays + network
    if headroom is not None and network > headroom:
        have = "nothing" if headroom <= 0 else f"{available / 1e9:.1f} GB"
        raise MemoryLimitError(
            f"this case needs about {needed / 1e9:.1f} GB of memory even with windowed "
            f"inference (windows of {'x'.join(map(str, patch))}) but {have} is available; "
            "close other programs or use a machine with more memory"
        )
    return patch, needed


def check_run_memory(
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    n_images: int,
    spec: ModelSpec,
    memory_budget_gb: float | None = None,
) -> float:
    """Bytes a run on images of ``shape`` and ``spacing`` (mm) will still need; raises
    :class:`MemoryLimitError` before any work when the machine cannot provide them.

    Called once the images are loaded (they are then already part of the used memory): counts
    the copies that conforming and preprocessing make, and inference on the largest working
    grid the field of view allows (the brain crop can only make it smaller).
    """
    multiple = spec.size_multiple
    extent = np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)
    working = np.ceil(extent / np.asarray(spec.spacing_mm) / multiple) * multiple
    if spec.fixed_input_shape:
        working = np.maximum(working, spec.fixed_input_shape)
    copies = 2.0 * n_images * float(np.prod(shape)) * 4  # conformed images and masks (float32)
    _, needed = plan_inference(
        tuple(int(n) for n in working),
        spec,
        memory_budget_gb,
        available=available_memory_bytes(),
        other_bytes=copies,
    )
    return needed


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
    """Largest window (a multiple of the size multiple) whose estimated memory fits the budget,
    no larger than the model's ``inference_window`` when it has one."""
    if spec.fixed_input_shape:
        return tuple(spec.fixed_input_shape)
    multiple = spec.size_multiple
    patch = list(shape)
    if spec.inference_window:
        patch = [min(s, w) for s, w in zip(shape, spec.inference_window)]
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
    available: int | None = None,
    other_bytes: float = 0.0,
    used: dict[str, Any] | None = None,
) -> np.ndarray:
    """Network output (K, X, Y, Z) float32 for a channels-last volume (X, Y, Z, C).

    Runs on the whole volume when :func:`plan_inference` says it fits the memory budget and
    what is available (``available`` bytes, measured when None; ``other_bytes`` already
    held elsewhere), in overlapping windows otherwise. ``used["window"]`` receives the window
    size that ran (None for the whole volume).

    Raises :class:`~BrainTumorSegLib.errors.CancelledError` when ``cancelled()`` turns true.
    """
    from .errors import CancelledError

    report = progress or (lambda fraction, message: None)
    spatial = volume.shape[:3]
    if available is None:
        available = available_memory_bytes()
    patch, _ = plan_inference(
        spatial, spec, memory_budget_gb, available=available, other_bytes=other_bytes
    )
    padded = volume
    if any(p > s for p, s in zip(patch, spatial)):  # fixed-size networks need a full window
        pad = [(0, max(0, p - s)) for p, s in zip(patch, spatial)] + [(0, 0)]
        padded = np.pad(volume, pad)
    shape = padded.shape[:3]
    whole = tuple(patch) == tuple(shape)
    if used is not None:
        used["window"] = None if whole else [int(p) for p in patch]
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
