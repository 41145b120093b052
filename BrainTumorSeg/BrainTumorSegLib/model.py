"""Model packages: a folder with ``model.onnx`` (or a Keras file) and ``model.json``.

A package may hold an ensemble: further networks (``ensemble_files``) trained with the same
preprocessing and outputs, whose outputs inference averages with the first one's.

``model.json`` is the one place that states how a model expects its input (channel order,
voxel spacing, orientation, normalisation, bias correction) and what its output means.
Training writes it, inference reads it, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import InputError
from .labels import LABEL_BY_KEY, REGIONS
from .load import SEQUENCES

MODELS_DIR = Path(__file__).resolve().parent.parent / "Resources" / "Models"
DEFAULT_MODEL_NAME = "brats-unet"
MODEL_SUFFIXES = (".onnx", ".keras", ".h5")


@dataclass
class ModelSpec:
    """What a model expects and produces; serialised as ``model.json``."""

    name: str
    version: str = "0"
    description: str = ""
    file: str = "model.onnx"
    keras_file: str | None = None
    # Further networks of an ensemble (same input and output as ``file``): inference runs each
    # and averages their outputs. Empty for a single network.
    ensemble_files: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=lambda: ["t1", "t1ce", "t2", "flair"])
    spacing_mm: list[float] = field(default_factory=lambda: [1.0, 1.0, 1.0])
    orientation: str = "LPS"
    normalization: str = "zscore_brain"
    bias_correction: bool = False
    crop_margin_mm: float = 8.0
    size_multiple: int = 16
    input_layout: str = "channels_last"
    fixed_input_shape: list[int] | None = None
    output: dict[str, Any] = field(
        default_factory=lambda: {"kind": "softmax", "classes": ["background", "NCR", "ED", "ET"]}
    )
    label_convention_trained: str = "brats2018"
    # Default postprocessing: tumour islands below this volume are erased (0 keeps all);
    # chosen on out-of-fold predictions by ``python -m Training postprocessing``.
    min_component_ml: float = 0.0
    # Default postprocessing: keep only the largest tumour component (after island removal);
    # chosen the same way. Off keeps every focus of a multifocal tumour.
    keep_largest_component: bool = False
    # Sigmoid regions: a voxel is in a region when its probability exceeds the region's
    # threshold (0.5 for a region not listed). Chosen on out-of-fold probabilities by
    # ``python -m Training postprocessing --region-thresholds``.
    region_thresholds: dict[str, float] = field(default_factory=dict)
    # Default inference: average over the 8 mirrorings (chosen by comparing out-of-fold scores
    # with and without); 8 network passes instead of 1.
    test_time_augmentation: bool = False
    # Default inference: run the network in overlapping windows of this size (voxels of the
    # working grid, Gaussian-blended) even when the whole volume would fit. A network trained
    # on patches with instance normalisation normalises each window as it did its training
    # patches; on the whole volume the statistics include far more background. None: whole
    # volume whenever the memory allows. Chosen by comparing out-of-fold scores.
    inference_window: list[int] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # Where the spec was read from; not serialised.
    folder: Path | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` for metadata that inference could not honour."""
        unknown = [c for c in self.channels if c not in SEQUENCES]
        if unknown or len(set(self.channels)) != len(self.channels) or not self.channels:
            raise ValueError(f"channels {self.channels} must be distinct names from {SEQUENCES}")
        if len(self.spacing_mm) != 3 or min(self.spacing_mm) <= 0:
            raise ValueError(f"spacing_mm {self.spacing_mm} must be three positive numbers")
        if self.normalization not in ("zscore_brain", "none"):
            raise ValueError(f"unknown normalization {self.normalization!r}")
        if not self.min_component_ml >= 0:
            raise ValueError(f"min_component_ml {self.min_component_ml} must be 0 or more")
        for flag in ("keep_largest_component", "test_time_augmentation"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false")
        window = self.inference_window
        if window is not None and (
            not isinstance(window, list)
            or len(window) != 3
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in window)
            or min(window) < self.size_multiple
            or any(n % self.size_multiple for n in window)
        ):
            raise ValueError(
                f"inference_window {window!r} must be null or three whole "
                f"multiples of size_multiple ({self.size_multiple})"
            )
        if window is not None and self.fixed_input_shape:
            raise ValueError("inference_window and fixed_input_shape exclude each other")
        if not isinstance(self.ensemble_files, list) or not all(
            isinstance(n, str) for n in self.ensemble_files
        ):
            raise ValueError(f"ensemble_files {self.ensemble_files!r} must be a list of file names")
        names = [self.file, *self.ensemble_files]
        if len(set(names)) != len(names) or any(
            Path(n).suffix.lower() not in MODEL_SUFFIXES or Path(n).name != n for n in names
        ):
            raise ValueError(
                f"network files {names} must be distinct file names in the package ending in "
                f"{', '.join(MODEL_SUFFIXES)}"
            )
        kind = self.output.get("kind")
        thresholds = self.region_thresholds
        if not isinstance(thresholds, dict) or any(
            isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1
            for t in thresholds.values()
        ):
            raise ValueError(f"region_thresholds {thresholds!r} must map regions to (0, 1)")
        if thresholds and (
            kind != "sigmoid" or any(r not in self.output.get("regions", []) for r in thresholds)
        ):
            raise ValueError(
                f"region_thresholds {thresholds!r} need sigmoid outputs with these regions"
            )
        if self.input_layout not in ("channels_last", "channels_first"):
            raise ValueError(f"unknown input_layout {self.input_layout!r}")
        if kind == "softmax":
            classes = self.output.get("classes", [])
            if classes[:1] != ["background"] or any(c not in LABEL_BY_KEY for c in classes[1:]):
                raise ValueError(f"softmax classes {classes} must be background + NCR/ED/ET keys")
        elif kind == "sigmoid":
            regions = self.output.get("regions", [])
            if not regions or any(r not in REGIONS for r in regions):
                raise ValueError(f"sigmoid regions {regions} must be among {sorted(REGIONS)}")
        else:
            raise ValueError(f"output kind must be 'softmax' or 'sigmoid', got {kind!r}")

    @property
    def num_outputs(self) -> int:
        """Number of output channels of the network."""
        if self.output["kind"] == "softmax":
            return len(self.output["classes"])
        return len(self.output["regions"])

    def region_threshold(self, region: str) -> float:
        """Probability above which a voxel belongs to a sigmoid ``region``."""
        return float(self.region_thresholds.get(region, 0.5))

    @property
    def model_path(self) -> Path | None:
        """The network file (ONNX, or Keras when no ONNX file is named)."""
        return self.folder / self.file if self.folder is not None else None

    @property
    def network_paths(self) -> list[Path]:
        """Every network of the package: ``file`` first, then the ensemble's other members."""
        if self.folder is None:
            return []
        return [self.folder / name for name in (self.file, *self.ensemble_files)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable metadata (without the folder)."""
        data = asdict(self)
        data.pop("folder")
        return data

    def write(self, path: str | Path) -> None:
        """Write ``model.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: dict[str, Any], folder: Path | None = None) -> ModelSpec:
        """Build from parsed ``model.json``; unknown keys are kept out, missing ones defaulted."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "folder"}
        spec = cls(**known)
        spec.folder = folder
        return spec


def with_window(spec: ModelSpec, window: int | None) -> ModelSpec:
    """``spec`` with another inference window: None keeps the model's, 0 runs the whole volume
    (memory permitting), N runs cubes of N working-grid voxels."""
    if window is None:
        return spec
    if window < 0:
        raise InputError(f"--window must be 0 (whole volume) or a window size, not {window}")
    try:
        return replace(spec, inference_window=[window] * 3 if window else None)
    except ValueError as e:
        raise InputError(f"--window {window} does not suit model {spec.name!r}: {e}") from e


def load_model_spec(path: str | Path) -> ModelSpec:
    """Read a model package folder (or its ``model.json``)."""
    path = Path(path)
    json_path = path / "model.json" if path.is_dir() else path
    if not json_path.is_file():
        raise InputError("no model.json in this model folder", path)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        spec = ModelSpec.from_dict(data, folder=json_path.parent)
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise InputError(f"invalid model metadata: {e}", json_path) from e
    for network in spec.network_paths:
        if not network.is_file():
            raise InputError(f"network file {network.name!r} of model.json is missing", json_path)
    return spec


def spec_for_bare_model(path: Path, channels: list[str] | None) -> ModelSpec:
    """Metadata for a model file given without a package, e.g. a seed-style Keras ``.h5``.

    Such files carry no metadata, so the user states the channel order; the rest follows the
    seed project's conventions (1 mm, z-score in the brain, 4-class softmax, BraTS 2018 order).
    """
    if not channels:
        raise InputError(
            "a model file without model.json needs its channel order, e.g. "
            "--channels flair,t1ce,t2",
            path,
        )
    try:
        spec = ModelSpec(name=path.stem, version="unknown", file=path.name, channels=channels)
    except ValueError as e:
        raise InputError(str(e), path) from e
    spec.folder = path.parent
    return spec


def resolve_model(model: str | Path | None, channels: list[str] | None = None) -> ModelSpec:
    """The model to use: a package folder, a ``model.json``, a bare model file, or the default."""
    if model is None:
        default = default_model_path()
        if default is None:
            raise InputError(
                f"no model given and no default model is installed in {MODELS_DIR}; "
                "pass --model PATH"
            )
        model = default
    path = Path(model)
    if not path.exists():
        raise InputError("model not found", path)
    if path.is_dir() or path.name == "model.json":
        spec = load_model_spec(path)
        if channels and channels != spec.channels:
            raise InputError(
                f"--channels {','.join(channels)} contradicts the model's own channel order "
                f"{','.join(spec.channels)}",
                path,
            )
        return spec
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise InputError(f"not a model file (expected one of {', '.join(MODEL_SUFFIXES)})", path)
    sidecar = path.parent / "model.json"
    if sidecar.is_file() and not channels:
        spec = load_model_spec(sidecar)
        # One network file was chosen (e.g. the .keras twin): it runs alone, not the ensemble.
        spec.file = path.name
        spec.ensemble_files = []
        return spec
    return spec_for_bare_model(path, channels)


def default_model_path() -> Path | None:
    """The bundled default model package, if one is installed."""
    folder = MODELS_DIR / DEFAULT_MODEL_NAME
    return folder if (folder / "model.json").is_file() else None


def bundled_models() -> list[Path]:
    """All model packages shipped in ``Resources/Models``."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.parent for p in MODELS_DIR.glob("*/model.json"))
