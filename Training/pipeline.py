"""Input pipelines: random augmented training patches and whole-volume validation cases.

Cases are memory-mapped from the ``prepare`` cache and read on the fly, so memory stays bounded
whatever the dataset size. Patch sampling and augmentation run in numpy
(:mod:`Training.augment`). On the TensorFlow backend :func:`tf_dataset` wraps a generator in
``tf.data`` (which ``tf.distribute`` needs); on the other backends :func:`keras_batches` serves
the same batches as a ``keras.utils.PyDataset`` without loading TensorFlow, whose thread pools
otherwise compete with the model for the CPU (``data.loader`` picks either, to compare).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from BrainTumorSegLib.labels import region_mask

from . import augment
from .config import Config


class CaseStore:
    """Read-only, memory-mapped access to prepared cases."""

    def __init__(self, folder: str | Path, case_ids: list[str]) -> None:
        self.folder = Path(folder)
        self.case_ids = list(case_ids)
        missing = [c for c in self.case_ids if not (self.folder / f"{c}_labels.npy").is_file()]
        if missing:
            raise FileNotFoundError(f"cases {missing} are not prepared in {self.folder}")
        self._tumour_groups: dict[tuple[str, bool], list[np.ndarray]] = {}

    def image(self, case_id: str) -> np.ndarray:
        return np.load(self.folder / f"{case_id}_image.npy", mmap_mode="r")

    def labels(self, case_id: str) -> np.ndarray:
        return np.load(self.folder / f"{case_id}_labels.npy", mmap_mode="r")

    def tumour_groups(self, case_id: str, by_class: bool) -> list[np.ndarray]:
        """The case's stored tumour voxels, as one group or one group per tumour class.

        Read and grouped once per case, then kept: patch sampling asks for them every patch.
        """
        key = (case_id, by_class)
        if key not in self._tumour_groups:
            points = np.load(self.folder / f"{case_id}_tumour.npy")
            if by_class:
                classes = np.asarray(self.labels(case_id)[tuple(points.astype(np.intp).T)])
                self._tumour_groups[key] = [points[classes == c] for c in np.unique(classes)]
            else:
                self._tumour_groups[key] = [points]
        return self._tumour_groups[key]


def encode_target(classes: np.ndarray, output: dict[str, Any]) -> np.ndarray:
    """Network target from class indices: one-hot classes (softmax) or region masks (sigmoid)."""
    if output["kind"] == "softmax":
        return np.eye(len(output["classes"]), dtype=np.float32)[classes]
    return np.stack([region_mask(classes, r) for r in output["regions"]], -1).astype(np.float32)


def training_patches(
    store: CaseStore, config: Config, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (image patch, target) pairs: a random case, a tumour-biased centre, augmented."""
    rng = np.random.default_rng(seed)
    patch = tuple(config.data.patch_size)
    output = config.model["output"]
    by_class = config.data.foreground_sampling == "class"
    while True:
        case_id = store.case_ids[rng.integers(len(store.case_ids))]
        image, labels = store.image(case_id), store.labels(case_id)
        centre = augment.choose_centre(
            image.shape,
            patch,
            store.tumour_groups(case_id, by_class),
            config.data.foreground_probability,
            rng,
        )
        spatial = augment.draw_spatial(centre, config.augment, rng)
        x, y = augment.extract_patch(image, labels, patch, spatial)
        x = augment.apply_intensity(x, augment.draw_intensity(x.shape[-1], config.augment, rng))
        yield x, encode_target(y, output)


def validation_volumes(
    store: CaseStore,
    config: Config,
    shape: tuple[int, int, int] | None = None,
    *,
    multiple: int = 1,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each validation case once, whole, zero-padded to a common ``shape`` (batchable).

    ``multiple`` > 1 (the number of replicas of a distributed run, which cannot split a partial
    batch) repeats the first cases until the count is a multiple of it.
    """
    shape = shape or common_shape(store)
    count = -(-len(store.case_ids) // multiple) * multiple
    for index in range(count):
        yield validation_volume(store, config, shape, store.case_ids[index % len(store.case_ids)])


def validation_volume(
    store: CaseStore, config: Config, shape: tuple[int, int, int], case_id: str
) -> tuple[np.ndarray, np.ndarray]:
    """One whole validation case, centred and zero-padded to ``shape``, with its target."""
    image, labels = store.image(case_id), store.labels(case_id)
    start = [(s - n) // 2 for s, n in zip(image.shape[:3], shape)]
    params = augment.SpatialParams(centre=tuple(st + n / 2 - 0.5 for st, n in zip(start, shape)))
    x, y = augment.extract_patch(image, labels, shape, params)
    return x, encode_target(y, config.model["output"])


def common_shape(store: CaseStore) -> tuple[int, int, int]:
    """Smallest shape holding every case of ``store`` (each is already a size multiple)."""
    shapes = np.array([store.labels(c).shape for c in store.case_ids])
    return tuple(int(v) for v in shapes.max(axis=0))


def tf_dataset(
    generator_fn: Any,
    *,
    spatial: tuple[int, int, int],
    channels: int,
    outputs: int,
    batch_size: int,
    prefetch: int = 2,
) -> Any:
    """``tf.data.Dataset`` of batches from a generator of (image, target) numpy pairs."""
    import tensorflow as tf

    signature = (
        tf.TensorSpec((*spatial, channels), tf.float32),
        tf.TensorSpec((*spatial, outputs), tf.float32),
    )
    dataset = tf.data.Dataset.from_generator(generator_fn, output_signature=signature)
    options = tf.data.Options()
    # A generator has no files to shard: each worker draws its own patches (seeded per worker).
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    # The generator holds the GIL anyway; more tf.data threads only compete with the model.
    options.threading.private_threadpool_size = 1
    return dataset.with_options(options).batch(batch_size).prefetch(prefetch)


def keras_batches(
    generator: Iterator[tuple[np.ndarray, np.ndarray]], *, batch_size: int, length: int
) -> Any:
    """A ``keras.utils.PyDataset`` of ``length`` batches stacked from ``generator``'s pairs.

    Training generators are endless and random, so batch ``i`` is simply the next one drawn; a
    finite generator (validation) is re-created by the caller for every pass, see
    :class:`ValidationBatches`.
    """
    import keras

    class _Batches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return length

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            pairs = [next(generator) for _ in range(batch_size)]
            return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

    return _Batches()


def validation_batches(store: CaseStore, config: Config, shape: tuple[int, int, int]) -> Any:
    """A ``keras.utils.PyDataset`` with each validation case once (batch 1), read on demand."""
    import keras

    class _Volumes(keras.utils.PyDataset):
        def __len__(self) -> int:
            return len(store.case_ids)

        def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            x, y = validation_volume(store, config, shape, store.case_ids[index])
            return x[None], y[None]

    return _Volumes()
