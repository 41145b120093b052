"""The 3D U-Net, built from standard Keras 3 layers so that it runs on any Keras backend.

Only built-in layers are used: a saved ``.keras`` file loads without this package (the core's
Keras backend can read it) and converts to ONNX with dynamic spatial dimensions.
"""

from __future__ import annotations

import keras
from keras import layers

from .config import NetworkConfig


def _norm(kind: str, filters: int, name: str) -> layers.Layer | None:
    if kind == "batch":
        return layers.BatchNormalization(name=name)
    if kind == "instance":  # GroupNormalization with one group per channel
        return layers.GroupNormalization(groups=-1, name=name)
    if kind == "group":
        return layers.GroupNormalization(groups=min(8, filters), name=name)
    return None


def _conv_block(
    x: keras.KerasTensor, filters: int, net: NetworkConfig, name: str
) -> keras.KerasTensor:
    for n in range(net.convs_per_level):
        norm = _norm(net.norm, filters, f"{name}_norm{n}")
        x = layers.Conv3D(
            filters, 3, padding="same", use_bias=norm is None, name=f"{name}_conv{n}"
        )(x)
        if norm is not None:
            x = norm(x)
        x = layers.Activation("relu", name=f"{name}_relu{n}")(x)
    if net.dropout:
        x = layers.SpatialDropout3D(net.dropout, name=f"{name}_dropout")(x)
    return x


def build_unet(
    net: NetworkConfig,
    *,
    input_channels: int,
    num_outputs: int,
    output_activation: str = "softmax",
    input_shape: tuple[int, int, int] | None = None,
    name: str = "unet3d",
) -> keras.Model:
    """A channels-last 3D U-Net: (N, X, Y, Z, C) -> (N, X, Y, Z, num_outputs).

    Spatial sizes are free (``None``) unless ``input_shape`` fixes them; they must be multiples
    of ``2**net.depth``. ``output_activation`` is ``softmax`` (classes) or ``sigmoid`` (regions).
    The output layer is float32 so that mixed precision keeps probabilities exact.
    """
    if output_activation not in ("softmax", "sigmoid"):
        raise ValueError(f"output_activation must be softmax or sigmoid, not {output_activation!r}")
    spatial = tuple(input_shape) if input_shape else (None, None, None)
    inputs = keras.Input(shape=(*spatial, input_channels), name="image")
    x = inputs
    skips = []
    for level, filters in enumerate(net.filters[:-1]):
        x = _conv_block(x, filters, net, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling3D(2, name=f"pool{level}")(x)
    x = _conv_block(x, net.filters[-1], net, "bottleneck")
    for level in reversed(range(net.depth)):
        filters = net.filters[level]
        if net.upsampling == "transpose":
            x = layers.Conv3DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        else:
            x = layers.UpSampling3D(2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"concat{level}")([x, skips[level]])
        x = _conv_block(x, filters, net, f"dec{level}")
    logits = layers.Conv3D(num_outputs, 1, name="logits", dtype="float32")(x)
    outputs = layers.Activation(output_activation, name="probabilities", dtype="float32")(logits)
    return keras.Model(inputs, outputs, name=name)
