"""The exporter's own ONNX writer: the same outputs as Keras for every network the trainer
builds, channels-first inside with fused normalisation, and a clear refusal otherwise."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras-internal noise
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _randomised(model, seed: int = 0):
    """Random weights everywhere (affine terms and batch statistics included), so that a
    swapped axis or a dropped parameter changes the output."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        new = [rng.normal(0, 0.4, w.shape).astype(np.float32) for w in weights]
        if type(layer).__name__ == "BatchNormalization":
            new[-1] = rng.uniform(0.5, 2.0, weights[-1].shape).astype(np.float32)  # variance
        layer.set_weights(new)
    return model


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize(
    "norm, upsampling, output, filters, dropout",
    [
        ("instance", "transpose", "sigmoid", [4, 8, 16], 0.0),  # the shipped model's kind
        ("group", "nearest", "softmax", [16, 16, 24], 0.0),  # 8 groups of 2-3 channels
        ("batch", "transpose", "softmax", [4, 8, 16], 0.2),  # the seed model's kind
        ("none", "nearest", "sigmoid", [4, 8, 16], 0.0),
    ],
)
def test_written_graph_matches_keras(norm, upsampling, output, filters, dropout, tmp_path):
    import onnx

    from Training.config import NetworkConfig
    from Training.network import build_unet
    from Training.onnx_graph import write_onnx

    net = NetworkConfig(filters=filters, norm=norm, upsampling=upsampling, dropout=dropout)
    outputs = 3 if output == "sigmoid" else 4
    model = _randomised(
        build_unet(net, input_channels=4, num_outputs=outputs, output_activation=output)
    )
    path = tmp_path / "model.onnx"
    write_onnx(model, path)
    # Non-cubic, each side a multiple of 4 (two poolings); values far from zero mean, as
    # MR intensities after z-scoring are not.
    x = np.random.default_rng(1).normal(0.5, 1.5, size=(2, 16, 24, 8, 4)).astype(np.float32)
    expected = np.asarray(model.predict(x, verbose=0))
    actual = _run_onnx(path, x)
    assert actual.shape == expected.shape == (2, 16, 24, 8, outputs)
    assert np.abs(actual - expected).max() < 1e-4
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops["Transpose"] == 2  # one in, one out: the graph is channels-first inside
    norm_layers = sum(type(layer).__name__.endswith("Normalization") for layer in model.layers)
    if norm in ("instance", "group"):
        assert ops["InstanceNormalization"] == norm_layers > 0
        assert "ReduceMean" not in ops
    if norm == "batch":
        assert ops["BatchNormalization"] == norm_layers > 0


def test_written_graph_has_dynamic_channels_last_interface(tmp_path: Path):
    import onnxruntime as ort

    from Training.config import NetworkConfig
    from Training.network import build_unet
    from Training.onnx_graph import write_onnx

    model = build_unet(
        NetworkConfig(filters=[4, 8]), input_channels=3, num_outputs=3, output_activation="sigmoid"
    )
    write_onnx(model, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    (given,), (produced,) = session.get_inputs(), session.get_outputs()
    assert not any(isinstance(d, int) for d in given.shape[:4]) and given.shape[4] == 3
    assert not any(isinstance(d, int) for d in produced.shape[:4]) and produced.shape[4] == 3
    for shape in [(1, 8, 8, 8, 3), (1, 12, 4, 20, 3)]:
        out = session.run(None, {given.name: np.zeros(shape, np.float32)})[0]
        assert out.shape == (*shape[:4], 3)


def test_unsupported_layer_is_named(tmp_path: Path):
    import keras

    from Training.onnx_graph import UnsupportedNetwork, write_onnx

    inputs = keras.Input(shape=(None, None, None, 4))
    x = keras.layers.Conv3D(4, 3, padding="same")(inputs)
    x = keras.layers.LeakyReLU(name="leaky")(x)
    model = keras.Model(inputs, keras.layers.Conv3D(3, 1, activation="sigmoid")(x))
    with pytest.raises(UnsupportedNetwork, match="'leaky' of type LeakyReLU"):
        write_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def _one_layer_model(layer):
    import keras

    inputs = keras.Input(shape=(None, None, None, 4))
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda k: k.layers.Conv3D(4, 3, strides=2, padding="same"), "strides"),
        (lambda k: k.layers.Conv3D(4, 3, dilation_rate=2, padding="same"), "dilation"),
        (lambda k: k.layers.Conv3D(4, 2, padding="same"), "even kernel"),
        (lambda k: k.layers.MaxPooling3D(2, padding="same"), "padding 'same'"),
        (lambda k: k.layers.Conv3DTranspose(4, 2, strides=2, padding="same"), "padding or stride"),
        (lambda k: k.layers.Conv3DTranspose(4, 1, strides=2), "padding or stride"),
        (lambda k: k.layers.ReLU(threshold=0.5), "of type ReLU"),
        (lambda k: k.layers.ReLU(max_value=6.0), "of type ReLU"),
        (lambda k: k.layers.BatchNormalization(renorm=True), "renormalisation"),
        (lambda k: k.layers.Conv3D(4, 3, padding="same", dtype="mixed_float16"), "mixed precision"),
        (lambda k: k.layers.Activation("tanh"), "activation 'tanh'"),
    ],
)
def test_options_it_cannot_reproduce_are_refused(make, message, tmp_path: Path):
    """A layer option the writer would get wrong is refused (the exporter then falls back),
    never translated approximately."""
    import keras

    from Training.onnx_graph import UnsupportedNetwork, write_onnx

    with pytest.raises(UnsupportedNetwork, match=message):
        write_onnx(_one_layer_model(make(keras)), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_export_falls_back_to_the_generic_converter(tmp_path: Path):
    """A network the writer does not know still exports, through Keras' own ONNX export."""
    import keras

    from BrainTumorSegLib.model import load_model_spec
    from Training.export import import_h5

    inputs = keras.Input(shape=(16, 16, 16, 4))
    x = keras.layers.Conv3D(4, 3, padding="same")(inputs)
    x = keras.layers.LeakyReLU(name="leaky")(x)
    model = keras.Model(inputs, keras.layers.Conv3D(4, 1, activation="softmax")(x))
    h5 = tmp_path / "other.h5"
    model.save(h5)
    import_h5(h5, tmp_path / "package", channels=["t1", "t1ce", "t2", "flair"], name="other")
    spec = load_model_spec(tmp_path / "package")
    assert spec.metrics["onnx_converter"] == "tf2onnx"
    assert spec.metrics["onnx_max_abs_difference"] < 1e-4
