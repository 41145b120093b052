"""Multi-device training through ``tf.distribute`` (TensorFlow backend only).

- ``mirrored``: all local GPUs (or, for testing, N logical CPU devices) in one process.
- ``multiworker``: several machines; each reads its role from the ``TF_CONFIG`` environment
  variable (``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker",
  "index": 0}}``), worker 0 being the chief that writes checkpoints.
- ``auto``: multiworker when ``TF_CONFIG`` is set, mirrored with more than one GPU, else none.

Multi-worker needs two work-arounds (:func:`prepare_for_multiworker`) for Keras 3.15, whose
TensorFlow trainer reduces across workers with ``strategy.reduce("MEAN", value, axis=0)``:
- before the first step it so averages the first distributed *data batch* to build the model,
  which fails on a ``PerReplica`` batch ("Attempt to convert a value (PerReplica ...) to a
  Tensor"): the model, loss, metrics and optimiser are built beforehand on a local batch;
- after every step it so averages the *logs*, which are scalars and have no axis 0 ("Invalid
  reduction dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388): the steps
  return each log value as a one-element vector, which the reduction turns back into a scalar.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras

STRATEGIES = ("auto", "none", "mirrored", "multiworker")


def task_index() -> int:
    """This worker's index in ``TF_CONFIG`` (0 without one)."""
    config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
    return int(config.get("task", {}).get("index", 0))


def is_chief() -> bool:
    """Whether this process writes checkpoints and logs (worker 0, or a single process)."""
    return task_index() == 0


def split_cpu(devices: int) -> None:
    """Expose the CPU as ``devices`` logical devices (before TensorFlow is first used)."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    )


def gpu_count() -> int:
    """Number of visible GPUs for the active backend."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.device_count()
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    return 0


def make_strategy(kind: str = "auto", *, logical_cpus: int | None = None) -> Any | None:
    """A ``tf.distribute`` strategy, or None to train on the default device.

    ``logical_cpus`` (mirrored only) splits the CPU into that many devices, which exercises the
    distributed code path on a machine without GPUs.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {kind!r}")
    backend = keras.backend.backend()
    if backend != "tensorflow":
        if kind in ("mirrored", "multiworker") or logical_cpus:
            raise ValueError(
                f"tf.distribute needs KERAS_BACKEND=tensorflow (the active backend is {backend})"
            )
        return None
    import tensorflow as tf

    if kind == "auto":
        if os.environ.get("TF_CONFIG"):
            kind = "multiworker"
        elif gpu_count() > 1:
            kind = "mirrored"
        else:
            return None
    if kind == "none":
        return None
    if kind == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if logical_cpus:
        split_cpu(logical_cpus)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.MirroredStrategy()


def is_multiworker(strategy: Any) -> bool:
    """Whether ``strategy`` is a ``tf.distribute.MultiWorkerMirroredStrategy``."""
    if strategy is None:
        return False
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def prepare_for_multiworker(model: keras.Model, strategy: Any, batch: tuple[Any, Any]) -> None:
    """Make Keras's ``fit`` work under MultiWorkerMirroredStrategy (see the module notes).

    Builds ``model``'s variables, loss, metrics and optimiser from one local (x, y) batch and
    turns off Keras's own build step for this instance; wraps the train and test steps so that
    their logs are one-element vectors.
    """
    import tensorflow as tf

    with strategy.scope():
        # A private Keras method, used because it builds exactly what fit() would (metric
        # and loss state included) from shapes alone; pinned by the multi-worker test.
        model._symbolic_build(data_batch=batch)
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)

    def _already_built(iterator: Any = None, data_batch: Any = None) -> None:
        return None

    model._maybe_symbolic_build = _already_built

    def vectors(logs: dict[str, Any]) -> dict[str, Any]:
        return {key: tf.reshape(value, [1]) for key, value in logs.items()}

    train_step, test_step = model.train_step, model.test_step
    model.train_step = lambda data: vectors(train_step(data))
    model.test_step = lambda data: vectors(test_step(data))
