"""Training loss (Dice + cross-entropy) and the per-region validation Dice, in ``keras.ops``.

Targets are one-hot classes (softmax output, channels background/NCR/ED/ET) or region masks
(sigmoid output, one channel per region in ``model.json["output"]["regions"]`` order).
Region definitions come from :data:`BrainTumorSegLib.labels.REGIONS`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from BrainTumorSegLib.labels import REGIONS

SPATIAL_AXES = (1, 2, 3)
EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="BrainTumorSeg")
class SegmentationLoss(keras.losses.Loss):
    """Soft Dice and/or cross-entropy.

    Args:
        kind: ``dice_ce`` (weighted sum), ``ce`` or ``dice``.
        output_kind: ``softmax`` (categorical CE; Dice over the non-background classes) or
            ``sigmoid`` (binary CE; Dice over every region channel).
        dice_weight, ce_weight: weights of the two terms for ``dice_ce``.
        batch_dice: pool the Dice sums over the whole batch (as nnU-Net does) rather than per
            sample, so that a patch without enhancing tumour does not dominate the ET term.
        dice_channel_weights: weights of the Dice channels in their mean (sigmoid: the
            regions in output order; softmax: the tumour classes); ``None`` weighs all equally.
    """

    def __init__(
        self,
        kind: str = "dice_ce",
        output_kind: str = "softmax",
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        batch_dice: bool = True,
        dice_channel_weights: list[float] | None = None,
        name: str = "segmentation_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if kind not in ("dice_ce", "ce", "dice") or output_kind not in ("softmax", "sigmoid"):
            raise ValueError(f"unsupported loss {kind!r} for output {output_kind!r}")
        self.kind = kind
        self.output_kind = output_kind
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight
        self.batch_dice = batch_dice
        self.dice_channel_weights = (
            None if dice_channel_weights is None else [float(w) for w in dice_channel_weights]
        )

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        total = 0.0
        if self.kind in ("dice_ce", "ce"):
            weight = 1.0 if self.kind == "ce" else self.ce_weight
            total = total + weight * self._cross_entropy(y_true, y_pred)
        if self.kind in ("dice_ce", "dice"):
            weight = 1.0 if self.kind == "dice" else self.dice_weight
            total = total + weight * (
                1.0
                - soft_dice(
                    y_true,
                    y_pred,
                    self.output_kind,
                    batch=self.batch_dice,
                    weights=self.dice_channel_weights,
                )
            )
        return total

    def _cross_entropy(self, y_true: Any, y_pred: Any) -> Any:
        if self.output_kind == "softmax":
            ce = keras.losses.categorical_crossentropy(y_true, y_pred)
        else:
            ce = ops.mean(
                keras.losses.binary_crossentropy(y_true[..., None], y_pred[..., None]), -1
            )
        return ops.mean(ce, axis=SPATIAL_AXES)  # per sample

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            kind=self.kind,
            output_kind=self.output_kind,
            dice_weight=self.dice_weight,
            ce_weight=self.ce_weight,
            batch_dice=self.batch_dice,
            dice_channel_weights=self.dice_channel_weights,
        )
        return config


def soft_dice(
    y_true: Any,
    y_pred: Any,
    output_kind: str = "softmax",
    *,
    batch: bool = False,
    weights: list[float] | None = None,
) -> Any:
    """Soft Dice averaged over channels (background excluded for softmax).

    Per sample (shape (N,)), or pooled over the batch (a scalar) when ``batch`` is true.
    A channel absent from both target and prediction scores close to 1. ``weights`` (one per
    averaged channel) makes the mean a weighted one.
    """
    if output_kind == "softmax":
        y_true, y_pred = y_true[..., 1:], y_pred[..., 1:]
    axes = (0, *SPATIAL_AXES) if batch else SPATIAL_AXES
    intersection = ops.sum(y_true * y_pred, axis=axes)
    sums = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
    dice = (2.0 * intersection + EPSILON) / (sums + EPSILON)
    if weights is None:
        return ops.mean(dice, axis=-1)
    w = ops.convert_to_tensor(weights, "float32")
    return ops.sum(dice * w, axis=-1) / ops.sum(w)


def region_channels(region: str, output: dict[str, Any]) -> list[int]:
    """Network output channels whose union is ``region`` (one region channel for sigmoid)."""
    if output["kind"] == "softmax":
        classes = output["classes"]
        return [classes.index(key) for key in REGIONS[region] if key in classes]
    return [output["regions"].index(region)]


@keras.saving.register_keras_serializable(package="BrainTumorSeg")
class RegionDice(keras.metrics.Metric):
    """Mean per-case Dice of scoring regions (ET, TC, WT) on thresholded predictions.

    Several ``regions`` are averaged per case (the mean over ET/TC/WT is the early-stopping
    monitor). BraTS convention: a region empty in both prediction and reference scores 1.
    Softmax outputs are arg-maxed to classes first, sigmoid outputs thresholded at 0.5.
    """

    def __init__(
        self,
        regions: list[str] | tuple[str, ...],
        output: dict[str, Any],
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        regions = [regions] if isinstance(regions, str) else list(regions)
        super().__init__(name=name or f"dice_{'_'.join(regions)}", **kwargs)
        unknown = [r for r in regions if r not in REGIONS]
        if unknown or not regions:
            raise ValueError(f"unknown regions {unknown}; choose from {sorted(REGIONS)}")
        self.regions = regions
        self.output = dict(output)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _region_dice(self, region: str, y_true: Any, y_pred: Any) -> Any:
        channels = region_channels(region, self.output)
        if self.output["kind"] == "softmax":
            predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), ops.shape(y_pred)[-1])
            pred = ops.sum(ops.take(predicted, channels, axis=-1), axis=-1)
            true = ops.sum(ops.take(y_true, channels, axis=-1), axis=-1)
        else:
            pred = ops.cast(y_pred[..., channels[0]] > 0.5, "float32")
            true = y_true[..., channels[0]]
        intersection = ops.sum(pred * true, axis=SPATIAL_AXES)
        sums = ops.sum(pred, axis=SPATIAL_AXES) + ops.sum(true, axis=SPATIAL_AXES)
        return ops.where(sums > 0, 2.0 * intersection / ops.maximum(sums, 1.0), 1.0)

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.cast(y_pred, "float32")
        dice = sum(self._region_dice(r, y_true, y_pred) for r in self.regions) / len(self.regions)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(ops.shape(dice)[0], "float32"))

    def result(self) -> Any:
        return self.total / ops.maximum(self.count, 1.0)

    def reset_state(self) -> None:
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self) -> dict[str, Any]:
        return {"regions": self.regions, "output": self.output, "name": self.name}


def region_metrics(output: dict[str, Any]) -> list[keras.metrics.Metric]:
    """Validation metrics: Dice per region (dice_ET, dice_TC, dice_WT) and their mean."""
    per_region = [RegionDice([region], output) for region in REGIONS]
    return [*per_region, RegionDice(list(REGIONS), output, name="dice_mean")]
