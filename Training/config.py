"""Training configuration: one YAML or JSON file that fully describes a training run.

The ``model`` section holds the fields of the model package's ``model.json`` (channel order,
spacing, orientation, normalisation, output kind): preprocessing for training and inference is
driven by exactly these values. The other sections describe the network, the data pipeline,
augmentation, loss, optimiser, split and training loop; the whole file is copied into
``model.json["training"]`` on export.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from BrainTumorSegLib.model import ModelSpec

# ModelSpec fields that change the preprocessed arrays: the cache is keyed by them.
PREPROCESSING_FIELDS = (
    "channels",
    "spacing_mm",
    "orientation",
    "normalization",
    "bias_correction",
    "crop_margin_mm",
    "size_multiple",
    "fixed_input_shape",
)
SOFTMAX_OUTPUT = {"kind": "softmax", "classes": ["background", "NCR", "ED", "ET"]}
SIGMOID_OUTPUT = {"kind": "sigmoid", "regions": ["WT", "TC", "ET"]}


@dataclass
class NetworkConfig:
    """3D U-Net shape. ``filters`` has one width per resolution level (depth = len - 1)."""

    filters: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    norm: str = "instance"  # batch | instance | group | none
    convs_per_level: int = 2
    upsampling: str = "transpose"  # transpose | nearest
    dropout: float = 0.0

    def validate(self) -> None:
        if len(self.filters) < 2 or min(self.filters) < 1:
            raise ValueError(f"network.filters {self.filters} needs at least two positive widths")
        if self.norm not in ("batch", "instance", "group", "none"):
            raise ValueError(
                f"network.norm must be batch, instance, group or none, not {self.norm!r}"
            )
        if self.upsampling not in ("transpose", "nearest"):
            raise ValueError(
                f"network.upsampling must be transpose or nearest, not {self.upsampling!r}"
            )
        if self.convs_per_level < 1 or not 0 <= self.dropout < 1:
            raise ValueError("network.convs_per_level must be >= 1 and dropout in [0, 1)")

    @property
    def depth(self) -> int:
        """Number of down-sampling steps; input sizes must be multiples of 2**depth."""
        return len(self.filters) - 1


@dataclass
class DataConfig:
    """Patch sampling and batching."""

    patch_size: list[int] = field(default_factory=lambda: [64, 64, 64])
    batch_size: int = 2
    foreground_probability: float = 0.5  # share of patches centred on a tumour voxel
    # tumour: the centre is any tumour voxel (edema dominates); class: first a tumour class
    # present in the case, each equally likely, then one of its voxels (as nnU-Net samples),
    # so that the small necrotic and enhancing parts are seen as often as the edema
    foreground_sampling: str = "tumour"
    steps_per_epoch: int | None = None  # None: one pass over the training cases
    validation_every: int = 1  # epochs between validation passes
    prefetch: int = 2
    # tfdata | python | auto (tf.data on the TensorFlow backend, which tf.distribute needs;
    # a plain keras PyDataset elsewhere, so that TensorFlow is not even loaded)
    loader: str = "auto"

    def validate(self) -> None:
        if self.loader not in ("auto", "tfdata", "python"):
            raise ValueError(f"data.loader must be auto, tfdata or python, not {self.loader!r}")
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"data.patch_size {self.patch_size} must be three positive sizes")
        if self.foreground_sampling not in ("tumour", "class"):
            choice = self.foreground_sampling
            raise ValueError(f"data.foreground_sampling must be tumour or class, not {choice!r}")
        if self.batch_size < 1 or not 0 <= self.foreground_probability <= 1:
            raise ValueError("data.batch_size must be >= 1 and foreground_probability in [0, 1]")


@dataclass
class AugmentConfig:
    """Random spatial and intensity augmentation (each drawn per patch)."""

    flip: bool = True
    rotation_deg: float = 10.0  # maximum absolute rotation about each axis
    scale: list[float] = field(default_factory=lambda: [0.9, 1.1])
    spatial_probability: float = 0.5  # chance that a patch is rotated/scaled at all
    intensity_scale: float = 0.1  # multiply each channel by U(1 - s, 1 + s)
    intensity_shift: float = 0.1  # add U(-s, s) (z-score units) to each channel
    gamma: list[float] = field(default_factory=lambda: [0.7, 1.5])
    gamma_probability: float = 0.3

    def validate(self) -> None:
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"augment.scale {self.scale} must be [low, high] with 0 < low <= high")
        if len(self.gamma) != 2 or not 0 < self.gamma[0] <= self.gamma[1]:
            raise ValueError(f"augment.gamma {self.gamma} must be [low, high] with 0 < low <= high")


@dataclass
class LossConfig:
    """``dice_ce`` (default), ``ce`` (the seed's categorical cross-entropy) or ``dice``."""

    kind: str = "dice_ce"
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    batch_dice: bool = True  # Dice sums pooled over the batch (nnU-Net style)
    # Weights of the Dice channels (sigmoid: model.output.regions order; softmax: the tumour
    # classes); null weighs them equally. Checked in Config, which knows the output.
    dice_channel_weights: list[float] | None = None

    def validate(self) -> None:
        if self.kind not in ("dice_ce", "ce", "dice"):
            raise ValueError(f"loss.kind must be dice_ce, ce or dice, not {self.kind!r}")


@dataclass
class OptimizerConfig:
    """Adam with an optional learning-rate schedule over the whole run.

    ``cosine_restarts`` repeats a cosine cycle of ``cycle_epochs`` epochs, each cycle's peak
    ``cycle_peak`` times the one before; its first cycle equals ``cosine`` over
    ``cycle_epochs``, so a finished cosine run can be extended by more cycles.
    """

    learning_rate: float = 1e-3
    schedule: str = "cosine"  # constant | cosine | poly | cosine_restarts
    weight_decay: float = 0.0  # > 0 uses AdamW
    clipnorm: float | None = None
    cycle_epochs: int | None = None  # cosine_restarts: epochs per cycle
    cycle_peak: float = 0.5  # cosine_restarts: peak of each cycle relative to the previous

    def validate(self) -> None:
        if self.schedule not in ("constant", "cosine", "poly", "cosine_restarts"):
            raise ValueError(
                "optimizer.schedule must be constant, cosine, poly or cosine_restarts, "
                f"not {self.schedule!r}"
            )
        if self.learning_rate <= 0:
            raise ValueError("optimizer.learning_rate must be positive")
        if self.schedule == "cosine_restarts" and not (self.cycle_epochs and self.cycle_epochs > 0):
            raise ValueError("optimizer.schedule cosine_restarts needs optimizer.cycle_epochs > 0")
        if not 0 < self.cycle_peak <= 1:
            raise ValueError("optimizer.cycle_peak must be in (0, 1]")


@dataclass
class SplitConfig:
    """Train/validation split: stratified hold-out (the seed's 80/20) or k-fold."""

    method: str = "stratified"  # stratified | kfold | all (final model, no validation)
    validation_fraction: float = 0.2
    folds: int = 5
    fold: int = 0
    stratify_by: str = "volume"  # volume | grade
    seed: int = 42

    def validate(self) -> None:
        if self.method not in ("stratified", "kfold", "all"):
            raise ValueError(f"split.method must be stratified, kfold or all, not {self.method!r}")
        if self.stratify_by not in ("volume", "grade"):
            raise ValueError(f"split.stratify_by must be volume or grade, not {self.stratify_by!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError("split.validation_fraction must be in (0, 1)")
        if self.method == "kfold" and not 0 <= self.fold < self.folds:
            raise ValueError(f"split.fold {self.fold} must be in 0..{self.folds - 1}")


@dataclass
class TrainingConfig:
    """The training loop."""

    epochs: int = 300
    early_stopping_patience: int | None = 60  # validation passes without a better monitor
    seed: int = 42
    # auto (float16 with a GPU) | on (float16) | bf16 (bfloat16, for CPUs with AVX-512 BF16
    # or AMX; about two thirds of float32's time per epoch here, Training/EXPERIMENTS.md) | off
    mixed_precision: str = "auto"
    monitor: str = "val_dice_mean"
    # torch.compile the training step on the PyTorch backend: it fuses the memory-bound
    # normalisation and element-wise work around the convolutions. Ignored (with a warning) on
    # other backends: XLA with the tf.data generator input hung in a trial here.
    jit_compile: bool = False

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError("training.epochs must be >= 1")
        if isinstance(self.mixed_precision, bool):  # YAML reads a bare on/off as a boolean
            self.mixed_precision = "on" if self.mixed_precision else "off"
        if self.mixed_precision not in ("auto", "on", "bf16", "off"):
            raise ValueError("training.mixed_precision must be auto, on, bf16 or off")


@dataclass
class Config:
    """A complete training run; see ``Training/configs/*.yaml`` for commented examples."""

    model: dict[str, Any] = field(default_factory=dict)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        self.model = _normalise_model_section(self.model)
        for part in (self.network, self.data, self.augment, self.loss, self.optimizer):
            part.validate()
        self.split.validate()
        self.training.validate()
        self._check_dice_channel_weights()
        multiple = 2**self.network.depth
        if any(p % multiple for p in self.data.patch_size):
            raise ValueError(
                f"data.patch_size {self.data.patch_size} must be multiples of 2**depth = {multiple}"
            )
        if self.model["size_multiple"] % multiple:
            raise ValueError(
                f"model.size_multiple {self.model['size_multiple']} must be a multiple of "
                f"2**depth = {multiple} so that whole-volume inference fits the network"
            )

    def _check_dice_channel_weights(self) -> None:
        weights = self.loss.dice_channel_weights
        if weights is None:
            return
        output = self.model["output"]
        channels = output["regions"] if output["kind"] == "sigmoid" else output["classes"][1:]
        if len(weights) != len(channels):
            raise ValueError(
                f"loss.dice_channel_weights {weights} needs one weight per Dice channel "
                f"{list(channels)}"
            )
        if any(not w >= 0 for w in weights):  # "not >=" also rejects NaN
            raise ValueError(f"loss.dice_channel_weights {weights} must be non-negative numbers")
        if not sum(weights) > 0:
            raise ValueError("loss.dice_channel_weights must not all be zero")

    def model_spec(self) -> ModelSpec:
        """The :class:`ModelSpec` (``model.json``) that this run trains for."""
        return ModelSpec.from_dict(self.model)

    def preprocessing_key(self) -> str:
        """Short hash of the preprocessing-relevant model fields and of the core's
        preprocessing version (names the data cache)."""
        from BrainTumorSegLib.preprocess import PREPROCESSING_VERSION

        relevant: dict[str, Any] = {k: self.model.get(k) for k in PREPROCESSING_FIELDS}
        relevant["core_preprocessing_version"] = PREPROCESSING_VERSION
        text = json.dumps(relevant, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]

    def to_dict(self) -> dict[str, Any]:
        """Plain dictionary (YAML/JSON serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build from a parsed file; unknown sections or keys are errors (typos must not pass)."""
        data = copy.deepcopy(data or {})
        sections = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(sections))
        if unknown:
            raise ValueError(f"unknown config sections {unknown}; expected {sorted(sections)}")
        kwargs: dict[str, Any] = {"model": data.get("model", {})}
        for name, f in sections.items():
            if name == "model":
                continue
            part_cls = f.default_factory  # the section's dataclass
            values = data.get(name) or {}
            known = {g.name for g in fields(part_cls)}
            bad = sorted(set(values) - known)
            if bad:
                raise ValueError(f"unknown keys {bad} in config section {name!r}")
            kwargs[name] = part_cls(**values)
        return cls(**kwargs)


def _normalise_model_section(model: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults via :class:`ModelSpec` (which validates) and expand output shorthands."""
    model = dict(model)
    output = model.get("output", "softmax")
    if output == "softmax":
        model["output"] = copy.deepcopy(SOFTMAX_OUTPUT)
    elif output == "sigmoid":
        model["output"] = copy.deepcopy(SIGMOID_OUTPUT)
    model.setdefault("name", "brats-unet")
    spec = ModelSpec.from_dict(model)
    unknown = sorted(set(model) - set(spec.to_dict()))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in config section 'model'")
    return spec.to_dict()


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a parsed config."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like section.key=value")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = yaml.safe_load(raw)
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML or JSON config file, apply ``overrides``, validate."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    return Config.from_dict(apply_overrides(data or {}, overrides or []))


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what a run actually used)."""
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
