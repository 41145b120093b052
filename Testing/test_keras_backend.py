"""A seed-style Keras .h5 (fixed input size, channels given by the user) runs through the core."""

import numpy as np
import pytest
from conftest import blob_case

from BrainTumorSegLib import segment
from BrainTumorSegLib.errors import InputError


@pytest.fixture(scope="module")
def seed_style_h5(tmp_path_factory):
    keras = pytest.importorskip("keras", reason="the Keras backend needs the [train] extra")
    inputs = keras.Input((24, 24, 24, 3))
    logits = keras.layers.Conv3D(4, 1, name="classifier")(inputs)
    model = keras.Model(inputs, keras.layers.Softmax()(logits))
    # Hand weights: bright FLAIR (channel 0) -> edema, bright T1ce (channel 1) -> enhancing.
    kernel = np.zeros((1, 1, 1, 3, 4), np.float32)
    kernel[..., 0, 2] = 4.0
    kernel[..., 1, 3] = 6.0
    model.get_layer("classifier").set_weights([kernel, np.array([0, -9, -6, -9], np.float32)])
    path = tmp_path_factory.mktemp("seed") / "seed.h5"
    model.save(str(path))
    return path


def test_seed_h5_with_channel_order(tmp_path, seed_style_h5):
    paths = blob_case(tmp_path / "case")
    result = segment(paths, model=seed_style_h5, channels=["flair", "t1ce", "t2"])
    # The lesion is bright in every sequence; enhancing wins (stronger T1ce weight).
    assert np.count_nonzero(result.classes == 3) > 20
    assert result.report["model"]["channels"] == ["flair", "t1ce", "t2"]
    assert result.report["model"]["name"] == "seed"
    assert "t1" not in result.report["inputs"]


def test_seed_h5_with_wrong_channel_count(tmp_path, seed_style_h5):
    paths = blob_case(tmp_path / "case")
    with pytest.raises(InputError, match="takes 3 input channels but 4"):
        segment(paths, model=seed_style_h5, channels=["t1", "t1ce", "t2", "flair"])
