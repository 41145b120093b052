"""BraTS evaluation measures and the Keras Dice metric/loss on hand-computed tiny arrays."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from Training import metrics


def _mask(shape, *slices):
    m = np.zeros(shape, bool)
    for s in slices:
        m[s] = True
    return m


@pytest.mark.parametrize(
    ("pred", "ref", "expected"),
    [
        (_mask((4, 4, 4)), _mask((4, 4, 4)), 1.0),  # both empty
        (_mask((4, 4, 4), np.s_[0, 0, 0]), _mask((4, 4, 4)), 0.0),  # reference empty
        (_mask((4, 4, 4)), _mask((4, 4, 4), np.s_[0, 0, 0]), 0.0),  # prediction empty
        (_mask((4, 4, 4), np.s_[0, 0, :2]), _mask((4, 4, 4), np.s_[0, 0, 1:3]), 0.5),
        (_mask((4, 4, 4), np.s_[:2]), _mask((4, 4, 4), np.s_[:2]), 1.0),
        (_mask((4, 4, 4), np.s_[0, 0, 0]), _mask((4, 4, 4), np.s_[3, 3, 3]), 0.0),
    ],
)
def test_dice_table(pred, ref, expected):
    assert metrics.dice(pred, ref) == pytest.approx(expected)


def test_hd95_empty_conventions():
    empty = np.zeros((5, 5, 5), bool)
    voxel = _mask((5, 5, 5), np.s_[2, 2, 2])
    assert metrics.hd95(empty, empty) == 0.0
    assert metrics.hd95(voxel, empty) == pytest.approx(373.13)
    assert metrics.hd95(empty, voxel) == pytest.approx(373.13)


def test_hd95_uses_voxel_spacing():
    # Two single voxels 3 voxels apart along axis 0: 3 mm at 1 mm, 6 mm at 2 mm spacing.
    a = _mask((8, 3, 3), np.s_[1, 1, 1])
    b = _mask((8, 3, 3), np.s_[4, 1, 1])
    assert metrics.hd95(a, b, (1.0, 1.0, 1.0)) == pytest.approx(3.0)
    assert metrics.hd95(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert metrics.hd95(a, a) == 0.0


def test_hd95_is_95th_percentile_of_pooled_surface_distances():
    # Reference: one plane x=0; prediction: planes x=0 and x=10 (10x10 each) at 1 mm.
    ref = _mask((12, 10, 10), np.s_[0])
    pred = _mask((12, 10, 10), np.s_[0], np.s_[10])
    distances = np.concatenate([np.zeros(100), np.full(100, 10.0), np.zeros(100)])
    assert metrics.hd95(pred, ref) == pytest.approx(np.percentile(distances, 95))


def test_sensitivity_and_specificity():
    ref = _mask((2, 2, 2), np.s_[0])  # 4 positives, 4 negatives
    pred = _mask((2, 2, 2), np.s_[0, 0], np.s_[1, 0, 0])  # 2 TP, 1 FP
    assert metrics.sensitivity(pred, ref) == pytest.approx(0.5)
    assert metrics.specificity(pred, ref) == pytest.approx(3 / 4)
    assert math.isnan(metrics.sensitivity(pred, np.zeros_like(ref)))
    assert math.isnan(metrics.specificity(pred, np.ones_like(ref)))
    within = _mask((2, 2, 2), np.s_[:, 1])  # only the negatives at [1, 1, :]
    assert metrics.specificity(pred, ref, within) == pytest.approx(1.0)


def test_score_case_regions_from_class_indices():
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 2  # ED
    ref[2, 2, 2] = 3  # ET
    pred = ref.copy()
    pred[2, 2, 2] = 1  # ET predicted as NCR: TC and WT still right, ET missed
    scores = metrics.score_case(pred, ref, (1.0, 1.0, 1.0))
    assert scores["dice_WT"] == 1.0
    assert scores["dice_TC"] == 1.0
    assert scores["dice_ET"] == 0.0
    assert scores["hd95_ET"] == pytest.approx(373.13)
    assert scores["hd95_WT"] == 0.0
    assert set(scores) == {f"{m}_{r}" for m in metrics.MEASURES for r in ("ET", "TC", "WT")}


def test_summarise_ignores_nan_and_counts():
    rows = [{"a": 1.0}, {"a": 3.0}, {"a": float("nan")}]
    summary = metrics.summarise(rows, ["a"])["a"]
    assert summary["mean"] == 2.0 and summary["median"] == 2.0 and summary["n"] == 2
    assert summary["p25"] == pytest.approx(1.5) and summary["p75"] == pytest.approx(2.5)


def test_summary_has_a_bootstrap_interval_around_the_mean():
    rows = [{"a": v} for v in (0.0, 0.2, 0.5, 0.6, 0.9, 1.0)]
    summary = metrics.summarise(rows, ["a"])["a"]
    assert summary["ci95_low"] < summary["mean"] < summary["ci95_high"]
    # The mean of resampled cases never leaves the range of the cases.
    assert summary["ci95_low"] >= 0.0 and summary["ci95_high"] <= 1.0
    # Same scores, same interval (fixed seed): a re-scored table reproduces its summary.
    assert metrics.summarise(rows, ["a"])["a"]["ci95_low"] == summary["ci95_low"]


def test_bootstrap_interval_narrows_with_more_cases_and_vanishes_without_spread():
    rng = np.random.default_rng(1)
    few, many = rng.uniform(0, 1, 8), rng.uniform(0, 1, 200)
    width = [np.subtract(*metrics.bootstrap_ci(v)[::-1]) for v in (few, many)]
    assert width[1] < width[0] / 2  # ~1/sqrt(n): 25 times the cases, a fifth of the width
    assert metrics.bootstrap_ci(np.full(5, 0.7)) == pytest.approx((0.7, 0.7))
    assert metrics.bootstrap_ci(few[::-1]) == metrics.bootstrap_ci(few)  # order-free
    assert all(math.isnan(x) for x in metrics.bootstrap_ci(np.array([])))
    # Normal-theory check: for 200 uniform values the 95 % interval is about +-1.96 SE.
    se = many.std() / math.sqrt(many.size)
    assert width[1] == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_keras_region_dice_matches_numpy_and_empty_rule():
    import keras

    from Training.losses import RegionDice, SegmentationLoss, soft_dice

    output = {"kind": "softmax", "classes": ["background", "NCR", "ED", "ET"]}
    ref = np.zeros((2, 4, 4, 4), np.int64)
    ref[0, :2] = 2
    ref[0, 0, 0, 0] = 3
    pred = ref.copy()
    pred[0, 0, 0, 0] = 2  # case 0: ET missed; case 1: all empty (ET Dice 1 by convention)
    eye = np.eye(4, dtype=np.float32)
    metric = RegionDice(["ET"], output)
    metric.update_state(eye[ref], eye[pred])
    assert float(keras.ops.convert_to_numpy(metric.result())) == pytest.approx(0.5)
    wt = RegionDice(["WT"], output)
    wt.update_state(eye[ref], eye[pred])
    assert float(keras.ops.convert_to_numpy(wt.result())) == pytest.approx(1.0)
    # Soft Dice of a perfect one-hot prediction is 1, loss (dice only) 0.
    perfect = keras.ops.convert_to_numpy(soft_dice(eye[ref], eye[ref]))
    assert np.allclose(perfect, 1.0)
    loss = SegmentationLoss("dice")(eye[ref], eye[ref])
    assert float(keras.ops.convert_to_numpy(loss)) == pytest.approx(0.0, abs=1e-5)
    worse = SegmentationLoss("dice_ce")(eye[ref], np.full((2, 4, 4, 4, 4), 0.25, np.float32))
    assert float(keras.ops.convert_to_numpy(worse)) > 1.0


def test_batch_dice_pools_sums_over_the_batch():
    import keras

    from Training.losses import soft_dice

    true = np.zeros((2, 2, 2, 2, 2), np.float32)
    true[..., 0] = 1.0
    true[0, 0, 0, 0] = [0.0, 1.0]  # only sample 0 has one foreground voxel
    pred = true.copy()
    pred[1, 1, 1, 1] = [0.9, 0.1]  # sample 1: a little foreground where there is none
    per_sample = keras.ops.convert_to_numpy(soft_dice(true, pred))
    pooled = float(keras.ops.convert_to_numpy(soft_dice(true, pred, batch=True)))
    assert per_sample[0] == pytest.approx(1.0) and per_sample[1] < 1e-3
    assert pooled == pytest.approx(2 * 1.0 / (1.0 + 1.1), rel=1e-4)


def test_dice_channel_weights_weigh_the_mean_and_reach_the_loss():
    import keras

    from Training.losses import EPSILON, SegmentationLoss, soft_dice

    true = np.zeros((1, 4, 4, 4, 3), np.float32)
    true[..., 0] = 1.0  # WT everywhere, TC nowhere, ET in half
    true[:, :2, ..., 2] = 1.0
    pred = np.full_like(true, 0.5)

    def value(x: object) -> float:
        return float(keras.ops.convert_to_numpy(x))

    wt, tc, et = 2 * 32 / 96, EPSILON / (32 + EPSILON), 2 * 16 / 64
    assert value(soft_dice(true, pred, "sigmoid", batch=True)) == pytest.approx(
        (wt + tc + et) / 3, rel=1e-4
    )
    weighted = soft_dice(true, pred, "sigmoid", batch=True, weights=[1, 1, 2])
    assert value(weighted) == pytest.approx((wt + tc + 2 * et) / 4, rel=1e-4)
    loss = SegmentationLoss("dice", "sigmoid", dice_channel_weights=[1, 1, 2])
    assert value(loss(true, pred)) == pytest.approx(1 - (wt + tc + 2 * et) / 4, rel=1e-4)
    again = SegmentationLoss.from_config(loss.get_config())  # a resumed run keeps them
    assert again.dice_channel_weights == [1.0, 1.0, 2.0]


def test_dice_channel_weights_are_checked_against_the_output():
    from Training.config import Config

    sigmoid = {"model": {"output": "sigmoid"}}
    config = Config.from_dict({**sigmoid, "loss": {"dice_channel_weights": [1, 1, 2]}})
    assert config.loss.dice_channel_weights == [1, 1, 2]
    with pytest.raises(ValueError, match=r"one weight per Dice channel \['WT', 'TC', 'ET'\]"):
        Config.from_dict({**sigmoid, "loss": {"dice_channel_weights": [1, 2]}})
    with pytest.raises(ValueError, match=r"\['NCR', 'ED', 'ET'\]"):
        Config.from_dict({"model": {"output": "softmax"}, "loss": {"dice_channel_weights": [1]}})
    with pytest.raises(ValueError, match="non-negative"):
        Config.from_dict({**sigmoid, "loss": {"dice_channel_weights": [1, -1, 2]}})
    with pytest.raises(ValueError, match="all be zero"):
        Config.from_dict({**sigmoid, "loss": {"dice_channel_weights": [0, 0, 0]}})
