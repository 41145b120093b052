"""Training config, split, augmentation and targets on tiny synthetic arrays."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from Training import augment
from Training.config import AugmentConfig, Config, apply_overrides, load_config
from Training.pipeline import encode_target
from Training.split import split_cases

CONFIGS = Path(__file__).resolve().parent.parent / "Training" / "configs"


@pytest.mark.parametrize("name", ["seed.yaml", "cpu.yaml"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    spec = config.model_spec()
    assert spec.channels == ["t1", "t1ce", "t2", "flair"]
    assert config.network.depth == 4


def test_bundled_model_was_preprocessed_as_cpu_yaml_says():
    """cpu.yaml is the bundled model's recipe: its preprocessing must be what inference reads."""
    from BrainTumorSegLib.model import default_model_path, load_model_spec
    from Training.config import PREPROCESSING_FIELDS

    spec = load_model_spec(default_model_path())
    config = load_config(CONFIGS / "cpu.yaml")
    assert {k: getattr(spec, k) for k in PREPROCESSING_FIELDS} == {
        k: config.model[k] for k in PREPROCESSING_FIELDS
    }


def test_seed_config_reproduces_seed_network():
    config = load_config(CONFIGS / "seed.yaml")
    assert config.network.filters == [16, 32, 64, 128, 256]
    assert config.data.patch_size == [144, 144, 144] and config.data.batch_size == 2
    assert config.loss.kind == "ce" and config.optimizer.learning_rate == 1e-3
    assert config.model["output"]["kind"] == "softmax"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("network.norm=layer", "network.norm"),
        ("data.patch_size=[60,64,64]", "multiples of 2\\*\\*depth"),
        ("model.channels=[t1,t1]", "channels"),
        ("training.epoch=3", "unknown keys"),
        ("split.fold=7", "split.fold"),
        ("data.foreground_sampling=label", "data.foreground_sampling"),
    ],
)
def test_bad_configs_are_rejected(override, message):
    data = apply_overrides({"split": {"method": "kfold"}}, [override])
    with pytest.raises(ValueError, match=message):
        Config.from_dict(data)


def test_preprocessing_key_follows_the_core_preprocessing_version(monkeypatch):
    import BrainTumorSegLib.preprocess as core

    config = Config.from_dict({})
    before = config.preprocessing_key()
    monkeypatch.setattr(core, "PREPROCESSING_VERSION", core.PREPROCESSING_VERSION + 1)
    assert config.preprocessing_key() != before  # a new core version means a new cache


def test_preprocessing_key_depends_only_on_preprocessing_fields():
    base = Config.from_dict({})
    other_network = Config.from_dict({"network": {"filters": [4, 8, 16, 32, 64]}})
    other_spacing = Config.from_dict({"model": {"spacing_mm": [1.5, 1.5, 1.5]}})
    assert base.preprocessing_key() == other_network.preprocessing_key()
    assert base.preprocessing_key() != other_spacing.preprocessing_key()


def test_sigmoid_output_shorthand():
    config = Config.from_dict({"model": {"output": "sigmoid"}})
    assert config.model["output"] == {"kind": "sigmoid", "regions": ["WT", "TC", "ET"]}
    classes = np.array([0, 1, 2, 3], np.uint8)
    target = encode_target(classes, config.model["output"])
    # WT = NCR|ED|ET, TC = NCR|ET, ET
    assert target.tolist() == [[0, 0, 0], [1, 1, 0], [1, 0, 0], [1, 1, 1]]
    onehot = encode_target(classes, Config.from_dict({}).model["output"])
    assert onehot.argmax(-1).tolist() == [0, 1, 2, 3]


def _cases(n):
    volumes = np.linspace(5, 200, n)
    return {
        f"case{i:02d}": {"regions_ml": {"WT": float(v)}, "grade": "HGG" if i % 3 else "LGG"}
        for i, v in enumerate(volumes)
    }


def test_stratified_split_is_deterministic_and_balanced():
    config = Config.from_dict({"split": {"method": "stratified", "validation_fraction": 0.2}})
    cases = _cases(15)
    train, val = split_cases(cases, config.split)
    assert (train, val) == split_cases(cases, config.split)
    assert len(val) == 3 and not set(train) & set(val) and len(train) + len(val) == 15
    # One validation case from each volume tertile.
    tertiles = {int(c[4:]) // 5 for c in val}
    assert tertiles == {0, 1, 2}


def test_kfold_covers_every_case_once():
    seen = []
    for fold in range(4):
        config = Config.from_dict(
            {"split": {"method": "kfold", "folds": 4, "fold": fold, "stratify_by": "grade"}}
        )
        _, val = split_cases(_cases(10), config.split)
        seen += val
    assert sorted(seen) == sorted(_cases(10))


def test_rigid_patch_is_a_plain_crop_with_zero_padding():
    image = np.arange(6 * 6 * 6 * 2, dtype=np.float32).reshape(6, 6, 6, 2)
    labels = (image[..., 0] % 4).astype(np.uint8)
    params = augment.SpatialParams(centre=(2.5, 2.5, 2.5))
    x, y = augment.extract_patch(image, labels, (4, 4, 4), params)
    assert np.array_equal(x, image[1:5, 1:5, 1:5]) and np.array_equal(y, labels[1:5, 1:5, 1:5])
    corner = augment.SpatialParams(centre=(-0.5, 1.5, 1.5))  # half outside along axis 0
    x, y = augment.extract_patch(image, labels, (4, 4, 4), corner)
    assert np.all(x[:2] == 0) and np.array_equal(x[2:], image[:2, :4, :4])


def test_identity_affine_equals_crop_and_flip_flips():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(8, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 4, (8, 8, 8)).astype(np.uint8)
    crop = augment.SpatialParams(centre=(3.5, 3.5, 3.5))
    tiny_rotation = augment.SpatialParams(centre=(3.5, 3.5, 3.5), rotation_deg=(1e-9, 0, 0))
    a, la = augment.extract_patch(image, labels, (8, 8, 8), crop)
    b, lb = augment.extract_patch(image, labels, (8, 8, 8), tiny_rotation)
    assert np.allclose(a, b, atol=1e-5) and np.array_equal(la, lb)
    flipped = augment.SpatialParams(centre=(3.5, 3.5, 3.5), flips=(False, True, False))
    c, lc = augment.extract_patch(image, labels, (8, 8, 8), flipped)
    assert np.array_equal(c, a[:, ::-1]) and np.array_equal(lc, la[:, ::-1])


def test_rotation_by_90_degrees_permutes_axes():
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[4, 4, 6:] = 3  # a bar along +axis 2 from the centre
    image = labels[..., None].astype(np.float32)
    params = augment.SpatialParams(centre=(4.0, 4.0, 4.0), rotation_deg=(90.0, 0.0, 0.0))
    _, rotated = augment.extract_patch(image, labels, (9, 9, 9), params)
    assert rotated.sum() == labels.sum()
    assert rotated[4, 4, 6:].sum() == 0  # moved off axis 2 into the axis-1 direction
    assert rotated[4, :, 4].sum() == labels.sum()


def test_tumour_biased_centres():
    rng = np.random.default_rng(1)
    tumour = np.array([[10, 11, 12]])
    centres = [augment.choose_centre((40, 40, 40), (8, 8, 8), [tumour], 1.0, rng) for _ in range(5)]
    assert all(c == (10.0, 11.0, 12.0) for c in centres)
    anywhere = [
        augment.choose_centre((40, 40, 40), (8, 8, 8), [tumour], 0.0, rng) for _ in range(50)
    ]
    assert all(3.5 <= v <= 35.5 for c in anywhere for v in c)
    assert len({c for c in anywhere}) == 50


def test_class_balanced_centres_see_a_rare_class_as_often_as_a_common_one():
    rng = np.random.default_rng(2)
    # 98 edema voxels and 2 enhancing voxels, as in a lower-grade glioma
    tumour = np.array([[i % 10, i // 10, 5] for i in range(100)])
    classes = np.array([2] * 98 + [3] * 2)
    enhancing = {tuple(float(v) for v in p) for p in tumour[classes == 3]}
    by_class_groups = [tumour[classes == 2], tumour[classes == 3], tumour[:0]]  # one empty
    by_class = [
        augment.choose_centre((40, 40, 40), (8, 8, 8), by_class_groups, 1.0, rng)
        for _ in range(2000)
    ]
    share = np.mean([c in enhancing for c in by_class])
    assert 0.45 < share < 0.55  # two classes present, each drawn half of the time
    any_voxel = [
        augment.choose_centre((40, 40, 40), (8, 8, 8), [tumour], 1.0, rng) for _ in range(2000)
    ]
    assert np.mean([c in enhancing for c in any_voxel]) < 0.05


def test_case_store_groups_tumour_voxels_by_class(tmp_path):
    from Training.pipeline import CaseStore, training_patches

    labels = np.zeros((16, 16, 16), np.uint8)
    labels[4:8, 4:8, 4:8] = 2
    labels[5, 5, 5] = 3
    np.save(tmp_path / "A_labels.npy", labels)
    np.save(tmp_path / "A_image.npy", np.random.default_rng(0).random((16, 16, 16, 1), np.float32))
    np.save(tmp_path / "A_tumour.npy", np.argwhere(labels > 0).astype(np.int16))
    store = CaseStore(tmp_path, ["A"])
    assert sorted(len(g) for g in store.tumour_groups("A", by_class=True)) == [1, 63]
    assert [len(g) for g in store.tumour_groups("A", by_class=False)] == [64]
    config = Config.from_dict(
        {
            "model": {"channels": ["flair"], "spacing_mm": [1, 1, 1], "output": "sigmoid"},
            "network": {"filters": [4, 8]},
            "data": {
                "patch_size": [2, 2, 2],
                "foreground_probability": 1.0,
                "foreground_sampling": "class",
            },
            "augment": {"flip": False, "spatial_probability": 0.0, "gamma_probability": 0.0},
        }
    )
    patches = training_patches(store, config, seed=0)
    # a 2-voxel patch centred on the enhancing voxel holds it; on edema only if next to it
    et = [next(patches)[1][..., 2].any() for _ in range(200)]
    assert 0.4 < np.mean(et) < 0.7
    config.data.foreground_sampling = "tumour"
    patches = training_patches(store, config, seed=0)
    assert np.mean([next(patches)[1][..., 2].any() for _ in range(200)]) < 0.3


def test_intensity_parameters_are_applied_exactly():
    image = np.ones((2, 2, 2, 2), np.float32)
    params = augment.IntensityParams(scale=(2.0, 0.5), shift=(1.0, 0.0))
    out = augment.apply_intensity(image, params)
    assert np.allclose(out[..., 0], 3.0) and np.allclose(out[..., 1], 0.5)
    ramp = np.linspace(0, 1, 8, dtype=np.float32).reshape(2, 2, 2, 1)
    gamma = augment.apply_intensity(ramp, augment.IntensityParams((1.0,), (0.0,), gamma=2.0))
    assert np.allclose(gamma, ramp**2, atol=1e-6)
    drawn = augment.draw_intensity(
        4, AugmentConfig(gamma_probability=0.0), np.random.default_rng(0)
    )
    assert len(drawn.scale) == 4 and drawn.gamma is None
    assert all(0.9 <= s <= 1.1 for s in drawn.scale)
