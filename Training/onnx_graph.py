"""Write a trained Keras 3D U-Net as an ONNX graph built for ONNX Runtime on the CPU.

A generic Keras-to-ONNX conversion keeps the Keras channels-last layout, so every convolution
is wrapped in two layout Transposes, and it spells each instance normalisation out as about
ten small operators (ReduceMean, Sub, Mul, Sqrt, ...). On the shipped U-Net those and the
Transposes took 42 % of ONNX Runtime's kernel time. This module walks the model's layer graph
instead and writes it channels-first, with one ``InstanceNormalization`` node per instance
normalisation layer and a single Transpose at the input and one at the output, so the file
keeps the package contract: input ``(N, X, Y, Z, C)`` and output ``(N, X, Y, Z, K)``,
channels-last, dynamic sizes.

Only the layers the trainer's networks are made of are translated (convolutions, transposed
convolutions, instance/group/batch normalisation, ReLU/sigmoid/softmax, max pooling, nearest
up-sampling, concatenation, dropout). Anything else raises :class:`UnsupportedNetwork` and the
exporter falls back to the generic conversion. The caller checks the outputs against Keras.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
# channels-last (N, X, Y, Z, C) <-> channels-first (N, C, X, Y, Z)
TO_CHANNELS_FIRST = [0, 4, 1, 2, 3]
TO_CHANNELS_LAST = [0, 2, 3, 4, 1]
UNIT = [1, 1, 1]  # strides / dilation that mean "none"


class UnsupportedNetwork(ValueError):
    """The model uses a layer or an option this writer does not translate."""


def _triple(value: Any) -> list[int]:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * 3
    if len(values) != 3:
        raise UnsupportedNetwork(f"expected a 3D size, got {value!r}")
    return [int(v) for v in values]


def _tensors_in(value: Any) -> list[str]:
    """Names of the layers whose outputs appear in a serialised call argument."""
    if isinstance(value, dict) and value.get("class_name") == "__keras_tensor__":
        name, _node, index = value["config"]["keras_history"]
        if index != 0:
            raise UnsupportedNetwork(f"layer {name!r} has several outputs")
        return [name]
    if isinstance(value, (list, tuple)):
        return [name for item in value for name in _tensors_in(item)]
    return []


def _inputs_of(layer_config: dict[str, Any]) -> list[str]:
    """Names of the layers feeding ``layer_config`` (its single call in the model)."""
    nodes = layer_config.get("inbound_nodes") or []
    if len(nodes) != 1:
        raise UnsupportedNetwork(f"layer {layer_config['name']!r} is called {len(nodes)} times")
    # Keyword arguments such as mask=None or training=False are fine; tensors there are not.
    if _tensors_in(list((nodes[0].get("kwargs") or {}).values())):
        raise UnsupportedNetwork(f"layer {layer_config['name']!r} takes tensors by keyword")
    return _tensors_in(nodes[0].get("args", []))


class _Graph:
    """Accumulates ONNX nodes and float32 initialisers."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []

    def const(self, name: str, array: np.ndarray, dtype: Any = np.float32) -> str:
        self.initializers.append(self.numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def node(
        self, op: str, inputs: list[str], output: str, *, public: bool = False, **attributes: Any
    ) -> str:
        """Add a node; its output is named after the Keras layer, with a suffix that keeps
        it apart from the graph's public input and output names."""
        name = output if public else f"{output}:out"
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attributes))
        return name


def _activation(graph: _Graph, x: str, kind: str, name: str) -> str:
    if kind == "linear":
        return x
    if kind == "relu":
        return graph.node("Relu", [x], name)
    if kind == "sigmoid":
        return graph.node("Sigmoid", [x], name)
    if kind == "softmax":
        return graph.node("Softmax", [x], name, axis=1)  # the channel axis, channels-first
    raise UnsupportedNetwork(f"activation {kind!r} of layer {name!r}")


def _check_channels_last(cfg: dict[str, Any], name: str) -> None:
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedNetwork(f"layer {name!r} is not channels-last")


def _conv(graph: _Graph, x: str, layer: Any, cfg: dict[str, Any], name: str) -> str:
    _check_channels_last(cfg, name)
    kernel_size = _triple(cfg["kernel_size"])
    if _triple(cfg.get("strides", 1)) != UNIT or _triple(cfg.get("dilation_rate", 1)) != UNIT:
        raise UnsupportedNetwork(f"convolution {name!r} has strides or dilation")
    if int(cfg.get("groups", 1)) != 1:
        raise UnsupportedNetwork(f"convolution {name!r} is grouped")
    if cfg["padding"] == "same":
        if any(k % 2 == 0 for k in kernel_size):
            raise UnsupportedNetwork(f"convolution {name!r}: 'same' padding of an even kernel")
        pads = [k // 2 for k in kernel_size] * 2
    elif cfg["padding"] == "valid":
        pads = [0] * 6
    else:
        raise UnsupportedNetwork(f"convolution {name!r} padding {cfg['padding']!r}")
    weights = layer.get_weights()
    # Keras kernel (kx, ky, kz, in, out) -> ONNX (out, in, kx, ky, kz)
    inputs = [x, graph.const(f"{name}/kernel", np.transpose(weights[0], (4, 3, 0, 1, 2)))]
    if cfg.get("use_bias", True):
        inputs.append(graph.const(f"{name}/bias", weights[1]))
    out = graph.node("Conv", inputs, f"{name}/conv", kernel_shape=kernel_size, pads=pads)
    return _activation(graph, out, cfg.get("activation", "linear"), name)


def _conv_transpose(graph: _Graph, x: str, layer: Any, cfg: dict[str, Any], name: str) -> str:
    _check_channels_last(cfg, name)
    kernel_size, strides = _triple(cfg["kernel_size"]), _triple(cfg["strides"])
    # 'valid' with kernel >= stride: Keras and ONNX both give (n - 1) * stride + kernel.
    if cfg["padding"] != "valid" or any(k < s for k, s in zip(kernel_size, strides, strict=True)):
        raise UnsupportedNetwork(f"transposed convolution {name!r} padding or stride")
    if _triple(cfg.get("dilation_rate", 1)) != UNIT or cfg.get("output_padding"):
        raise UnsupportedNetwork(f"transposed convolution {name!r} dilation or output padding")
    weights = layer.get_weights()
    # Keras kernel (kx, ky, kz, out, in) -> ONNX (in, out, kx, ky, kz)
    inputs = [x, graph.const(f"{name}/kernel", np.transpose(weights[0], (4, 3, 0, 1, 2)))]
    if cfg.get("use_bias", True):
        inputs.append(graph.const(f"{name}/bias", weights[1]))
    out = graph.node(
        "ConvTranspose", inputs, f"{name}/convt", kernel_shape=kernel_size, strides=strides
    )
    return _activation(graph, out, cfg.get("activation", "linear"), name)


def _affine_parameters(
    layer: Any, cfg: dict[str, Any], channels: int
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(gamma, beta, rest) of a normalisation layer, ones/zeros for the disabled ones."""
    weights = list(layer.get_weights())
    gamma = weights.pop(0) if cfg.get("scale", True) else np.ones(channels, np.float32)
    beta = weights.pop(0) if cfg.get("center", True) else np.zeros(channels, np.float32)
    return gamma, beta, weights


def _group_norm(
    graph: _Graph, x: str, layer: Any, cfg: dict[str, Any], name: str, channels: int
) -> str:
    if cfg.get("axis", -1) not in (-1, 4):
        raise UnsupportedNetwork(f"normalisation {name!r} is not over the channel axis")
    groups = channels if int(cfg["groups"]) == -1 else int(cfg["groups"])
    gamma, beta, _ = _affine_parameters(layer, cfg, channels)
    epsilon = float(cfg["epsilon"])
    if groups == channels:  # instance normalisation: one fused node
        return graph.node(
            "InstanceNormalization",
            [x, graph.const(f"{name}/gamma", gamma), graph.const(f"{name}/beta", beta)],
            name,
            epsilon=epsilon,
        )
    # Groups of channels: normalise (N, G, rest) per "instance", then the per-channel affine.
    shape = graph.node("Shape", [x], f"{name}/shape")
    grouped = graph.node(
        "Reshape",
        [x, graph.const(f"{name}/grouped_shape", [0, groups, -1], np.int64)],
        f"{name}/grouped",
    )
    normed = graph.node(
        "InstanceNormalization",
        [
            grouped,
            graph.const(f"{name}/ones", np.ones(groups)),
            graph.const(f"{name}/zeros", np.zeros(groups)),
        ],
        f"{name}/normalised",
        epsilon=epsilon,
    )
    back = graph.node("Reshape", [normed, shape], f"{name}/ungrouped")
    scaled = graph.node(
        "Mul", [back, graph.const(f"{name}/gamma", gamma.reshape(-1, 1, 1, 1))], f"{name}/scaled"
    )
    return graph.node("Add", [scaled, graph.const(f"{name}/beta", beta.reshape(-1, 1, 1, 1))], name)


def _batch_norm(
    graph: _Graph, x: str, layer: Any, cfg: dict[str, Any], name: str, channels: int
) -> str:
    if cfg.get("axis", -1) not in (-1, 4):
        raise UnsupportedNetwork(f"batch normalisation {name!r} is not over the channel axis")
    if cfg.get("renorm"):
        raise UnsupportedNetwork(f"batch normalisation {name!r} uses renormalisation")
    gamma, beta, (mean, variance) = _affine_parameters(layer, cfg, channels)
    inputs = [gamma, beta, mean, variance]
    names = [
        graph.const(f"{name}/{p}", a) for p, a in zip(("gamma", "beta", "mean", "var"), inputs)
    ]
    return graph.node("BatchNormalization", [x, *names], name, epsilon=float(cfg["epsilon"]))


def _pool(graph: _Graph, x: str, cfg: dict[str, Any], name: str) -> str:
    _check_channels_last(cfg, name)
    size = _triple(cfg["pool_size"])
    strides = _triple(cfg.get("strides") or cfg["pool_size"])
    if cfg.get("padding", "valid") != "valid":
        raise UnsupportedNetwork(f"pooling {name!r} padding {cfg['padding']!r}")
    return graph.node("MaxPool", [x], name, kernel_shape=size, strides=strides)


def _upsample(graph: _Graph, x: str, cfg: dict[str, Any], name: str) -> str:
    _check_channels_last(cfg, name)
    scales = graph.const(f"{name}/scales", [1, 1, *_triple(cfg["size"])])
    # Keras repeats each voxel: nearest neighbour with 'asymmetric' coordinates and floor.
    return graph.node(
        "Resize",
        [x, "", scales],
        name,
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


def _check_plain(layer: Any, cfg: dict[str, Any], name: str) -> None:
    """Refuse what the weights alone would not reproduce: float16 computation (a graph of
    float32 nodes would differ from it) and LoRA adapters (not in ``get_weights()``'s kernel)."""
    policy = getattr(layer, "dtype_policy", None)
    compute = getattr(policy, "compute_dtype", "float32")
    if compute != "float32":
        raise UnsupportedNetwork(f"layer {name!r} computes in {compute} (mixed precision)")
    if cfg.get("lora_rank"):
        raise UnsupportedNetwork(f"layer {name!r} has a LoRA adapter")


def _channels(layer_config: dict[str, Any]) -> int:
    shape = (layer_config.get("build_config") or {}).get("input_shape")
    if not shape or not isinstance(shape[-1], int):
        raise UnsupportedNetwork(f"layer {layer_config['name']!r} has no known channel count")
    return int(shape[-1])


def _endpoints(config: dict[str, Any], key: str) -> list[list[Any]]:
    """A model's input or output layers as [name, node, tensor] triples (Keras writes a single
    one as a bare triple)."""
    value = config.get(key) or []
    return [value] if value and isinstance(value[0], str) else list(value)


def build_onnx(model: Any) -> Any:
    """The ONNX ``ModelProto`` of a Keras functional 3D U-Net (see the module docstring)."""
    try:
        return _build(model)
    except UnsupportedNetwork:
        raise
    except (KeyError, IndexError, TypeError, ValueError) as e:
        # A configuration this writer did not foresee: refuse rather than guess.
        raise UnsupportedNetwork(f"cannot translate the model ({type(e).__name__}: {e})") from e


def _build(model: Any) -> Any:
    from onnx import TensorProto, helper

    config = model.get_config()
    if "layers" not in config:
        raise UnsupportedNetwork("only functional models are translated")
    inputs, outputs = _endpoints(config, "input_layers"), _endpoints(config, "output_layers")
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedNetwork("only models with one input and one output are translated")
    graph = _Graph()
    tensors: dict[str, str] = {}
    input_channels, output_channels = model.input_shape[-1], model.output_shape[-1]
    for layer_config in config["layers"]:
        name, kind, cfg = layer_config["name"], layer_config["class_name"], layer_config["config"]
        if kind == "InputLayer":
            shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
            if not shape or len(shape) != 5:
                raise UnsupportedNetwork(f"input {name!r} is not 5-dimensional")
            tensors[name] = graph.node("Transpose", [INPUT_NAME], name, perm=TO_CHANNELS_FIRST)
            continue
        sources = [tensors[s] for s in _inputs_of(layer_config)]
        layer = model.get_layer(name)
        _check_plain(layer, cfg, name)
        x = sources[0]
        if kind != "Concatenate" and len(sources) != 1:
            raise UnsupportedNetwork(f"layer {name!r} has {len(sources)} inputs")
        if kind == "Conv3D":
            out = _conv(graph, x, layer, cfg, name)
        elif kind == "Conv3DTranspose":
            out = _conv_transpose(graph, x, layer, cfg, name)
        elif kind == "GroupNormalization":
            out = _group_norm(graph, x, layer, cfg, name, _channels(layer_config))
        elif kind == "BatchNormalization":
            out = _batch_norm(graph, x, layer, cfg, name, _channels(layer_config))
        elif kind == "Activation":
            out = _activation(graph, x, cfg["activation"], name)
        elif kind == "ReLU" and not any(
            cfg.get(k) for k in ("max_value", "negative_slope", "threshold")
        ):
            out = _activation(graph, x, "relu", name)
        elif kind == "MaxPooling3D":
            out = _pool(graph, x, cfg, name)
        elif kind == "UpSampling3D":
            out = _upsample(graph, x, cfg, name)
        elif kind == "Concatenate":
            if cfg.get("axis", -1) not in (-1, 4):
                raise UnsupportedNetwork(f"concatenation {name!r} is not over channels")
            out = graph.node("Concat", sources, name, axis=1)
        elif kind in ("Dropout", "SpatialDropout3D"):
            out = x  # identity at inference
        else:
            raise UnsupportedNetwork(f"layer {name!r} of type {kind}")
        tensors[name] = out
    final = tensors[outputs[0][0]]
    graph.node("Transpose", [final], OUTPUT_NAME, public=True, perm=TO_CHANNELS_LAST)
    spatial = ["batch", "x", "y", "z"]
    onnx_graph = helper.make_graph(
        graph.nodes,
        model.name or "unet3d",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [*spatial, input_channels])],
        [
            helper.make_tensor_value_info(
                OUTPUT_NAME, TensorProto.FLOAT, [*spatial, output_channels]
            )
        ],
        graph.initializers,
    )
    proto = helper.make_model(
        onnx_graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="braintumorseg-export",
    )
    proto.ir_version = min(proto.ir_version, 8)  # readable by older ONNX Runtime builds too
    return proto


def write_onnx(model: Any, path: Path) -> None:
    """Validate and save :func:`build_onnx` of ``model`` to ``path``."""
    import onnx

    proto = build_onnx(model)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as e:
        raise UnsupportedNetwork(f"the written graph is not valid ONNX ({e})") from e
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
