"""``export`` a training run, or ``import`` a seed-style ``.h5``, into a model package.

A package is a folder with ``model.onnx`` (dynamic batch and spatial dimensions, channels-last),
``model.keras`` (built-in layers only, no optimiser) and ``model.json`` (the contract's fields,
with the training config and validation metrics). The ONNX and Keras outputs are compared on a
test input before the package is written.

The trainer's U-Nets are written to ONNX by :mod:`Training.onnx_graph` (channels-first inside,
fused instance normalisation: 1.7x faster in ONNX Runtime on the shipped U-Net), on any Keras
backend. Other networks (layers or options it does not translate) fall back to Keras 3
``model.export(format="onnx")`` on the TensorFlow backend (it needs ``tf2onnx``); under another
backend that step re-runs itself in a TensorFlow subprocess, since the ``.keras`` file is
backend-independent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from BrainTumorSegLib.cli import add_tta_options, add_window_option
from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.model import ModelSpec, with_window

from .config import SOFTMAX_OUTPUT, load_config

# Max |ONNX - Keras| on probabilities for a random input. Float32 TensorFlow and ONNX Runtime
# kernels differ slightly after ~20 convolution/normalisation layers (measured 3.0e-5 and
# 1.09e-4 on two trained U-Nets); a wrong conversion differs by orders of magnitude more.
TOLERANCE = 5e-4


def _keras():
    import keras

    return keras


def strip_training_state(model: Any) -> Any:
    """A copy of ``model`` with the same layers and weights but no optimiser or loss, every
    layer computing in float32.

    A network trained under a mixed policy (``training.mixed_precision``) keeps float32
    weights; only its arithmetic was lower precision. The package runs it in float32, as ONNX
    Runtime and the out-of-fold scoring do, so the shipped ``.keras`` and ``.onnx`` agree.
    """
    keras = _keras()

    def float32_layer(layer: Any) -> Any:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    clone = keras.models.clone_model(model, clone_function=float32_layer)
    clone.set_weights(model.get_weights())
    return clone


def with_dynamic_spatial_input(model: Any) -> Any:
    """The same network accepting (None, None, None, C) inputs (e.g. a seed model fixed at 144³)."""
    keras = _keras()
    channels = model.input_shape[-1]
    dynamic = keras.Input(shape=(None, None, None, channels), name="image")
    clone = keras.models.clone_model(model, input_tensors=dynamic)
    clone.set_weights(model.get_weights())
    return clone


def convert_to_onnx(
    keras_path: Path, onnx_path: Path, test_shape: tuple[int, ...]
) -> tuple[float, str]:
    """Write ``onnx_path`` from a ``.keras`` file; return (max output difference, converter).

    The converter is ``onnx_graph`` when :mod:`Training.onnx_graph` translates the network,
    otherwise ``tf2onnx`` (see :func:`convert_with_tf2onnx`).
    """
    from .onnx_graph import UnsupportedNetwork, write_onnx

    # From the saved file, not the model in memory: the check below then also proves that the
    # shipped .keras loads and matches the ONNX file.
    model = _keras().models.load_model(keras_path, compile=False)
    try:
        write_onnx(model, onnx_path)
    except UnsupportedNetwork as e:
        print(f"note: {e}; converting with Keras' generic ONNX export (tf2onnx)")
        return convert_with_tf2onnx(keras_path, onnx_path, test_shape), "tf2onnx"
    return compare_outputs(model, onnx_path, test_shape), "onnx_graph"


def convert_with_tf2onnx(keras_path: Path, onnx_path: Path, test_shape: tuple[int, ...]) -> float:
    """Write ``onnx_path`` with Keras' own exporter and return the max output difference.

    Runs in a TensorFlow-backend subprocess unless TensorFlow is already the backend.
    """
    keras = _keras()
    if keras.backend.backend() != "tensorflow":
        env = dict(os.environ, KERAS_BACKEND="tensorflow")
        command = [
            sys.executable,
            "-m",
            "Training.export",
            str(keras_path),
            str(onnx_path),
            ",".join(str(n) for n in test_shape),
        ]
        from . import REPO_ROOT

        done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ONNX conversion failed:\n{done.stderr[-3000:]}")
        return float(done.stdout.strip().splitlines()[-1])
    model = keras.models.load_model(keras_path, compile=False)
    x = np.zeros(test_shape, np.float32)
    model.predict(x, verbose=0)  # Keras exports only models that have been called
    with tempfile.TemporaryDirectory() as tmp:
        # tf2onnx writes to the path it is given; convert beside, then move into place.
        tmp_path = Path(tmp) / "model.onnx"
        model.export(str(tmp_path), format="onnx", verbose=False)
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp_path, onnx_path) if _same_device(
            tmp_path, onnx_path
        ) else onnx_path.write_bytes(tmp_path.read_bytes())
    return compare_outputs(model, onnx_path, test_shape)


def _same_device(a: Path, b: Path) -> bool:
    return os.stat(a.parent).st_dev == os.stat(b.parent).st_dev


def compare_outputs(model: Any, onnx_path: Path, shape: tuple[int, ...], seed: int = 0) -> float:
    """Max absolute difference between Keras and ONNX Runtime outputs on a random input."""
    import onnxruntime as ort

    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    expected = np.asarray(model.predict(x, verbose=0))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    dims = session.get_inputs()[0].shape
    if any(isinstance(d, int) for d in dims[1:4]):
        raise RuntimeError(f"ONNX input {dims} has fixed spatial dimensions; expected dynamic")
    (actual,) = session.run(None, {session.get_inputs()[0].name: x})[:1]
    return float(np.max(np.abs(actual - expected)))


def test_shape(spec: ModelSpec, depth: int) -> tuple[int, int, int, int, int]:
    """A small, non-cubic input the network accepts (each size a multiple of 2**depth)."""
    m = 2**depth
    return (1, 2 * m, 3 * m, 2 * m, len(spec.channels))


def network_depth(model: Any) -> int:
    """Number of 2x down-sampling layers (input sizes must be multiples of 2**depth)."""
    return sum(1 for layer in model.layers if "pooling3d" in type(layer).__name__.lower())


@contextlib.contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside ``out_dir`` to assemble a package in; when the block ends without
    an error it replaces ``out_dir``, otherwise it is removed and ``out_dir`` stays as it was."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    try:
        yield staging
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def write_package(model: Any, spec: ModelSpec, out_dir: Path) -> ModelSpec:
    """Save ``model.keras``, convert and check ``model.onnx``, write ``model.json``; the
    package is assembled beside ``out_dir`` and replaces it only when complete."""
    with staged_folder(out_dir) as staging:
        keras_path = staging / "model.keras"
        model.save(keras_path)
        difference, converter = convert_to_onnx(
            keras_path, staging / "model.onnx", test_shape(spec, network_depth(model))
        )
        if not difference <= TOLERANCE:
            raise RuntimeError(f"ONNX and Keras outputs differ by {difference:.2e} (> {TOLERANCE})")
        spec.file = "model.onnx"
        spec.keras_file = "model.keras"
        spec.input_layout = "channels_last"  # what both converters write
        spec.metrics = {
            **spec.metrics,
            "onnx_max_abs_difference": difference,
            "onnx_converter": converter,
        }
        spec.write(staging / "model.json")
    print(f"model package written to {out_dir} (ONNX vs Keras max difference {difference:.1e})")
    return spec


def record_choices(
    spec: ModelSpec,
    *,
    evaluation: Path | None = None,
    postprocessing: Path | None = None,
    tta: bool | None = None,
    window: int | None = None,
) -> None:
    """Put measured figures and the defaults chosen from them into ``spec`` (see
    :func:`export_run` for the sources)."""
    if evaluation is not None:
        if not evaluation.is_file():
            raise InputError("evaluation summary not found", evaluation)
        summary = json.loads(evaluation.read_text(encoding="utf-8"))
        # Summaries written before the bootstrap interval have no ci95_* keys.
        kept = ("mean", "median", "ci95_low", "ci95_high", "n")
        spec.metrics["evaluation"] = {
            "source": str(evaluation),
            **{key: {k: stats[k] for k in kept if k in stats} for key, stats in summary.items()},
        }
    if postprocessing is not None:
        if not postprocessing.is_file():
            raise InputError("postprocessing search result not found", postprocessing)
        search = json.loads(postprocessing.read_text(encoding="utf-8"))
        if "best_min_component_ml" not in search:
            raise InputError("not a postprocessing search result", postprocessing)
        spec.min_component_ml = float(search["best_min_component_ml"])
        # Searches written before the largest-component option did not try it.
        spec.keep_largest_component = bool(search.get("best_keep_largest_component", False))
        # Searches without --region-thresholds keep the 0.5 of every region.
        spec.region_thresholds = dict(search.get("best_region_thresholds", {}))
        spec.metrics["postprocessing"] = {"source": str(postprocessing), "rows": search["rows"]}
    if tta is not None:
        spec.test_time_augmentation = tta
    if window is not None:
        spec.inference_window = with_window(spec, window).inference_window
    spec.validate()


def export_run(
    run_dir: Path,
    out_dir: Path,
    *,
    checkpoint: str = "best",
    version: str | None = None,
    evaluation: Path | None = None,
    postprocessing: Path | None = None,
    tta: bool | None = None,
    window: int | None = None,
) -> ModelSpec:
    """Package a training run's ``best`` or ``last`` checkpoint with its config and metrics.

    ``evaluation``: a ``summary.json`` written by ``evaluate`` or ``crossval`` (e.g. the
    out-of-fold scores of the recipe) to record in ``model.json["metrics"]["evaluation"]``.
    ``postprocessing``: a ``search.json`` written by ``postprocessing``; its chosen island
    threshold and largest-component choice become the model's defaults and its rows go to
    ``metrics["postprocessing"]``. ``tta`` True/False makes mirroring test-time augmentation the
    model's default or not (choose it by comparing ``crossval`` with and without ``--tta``;
    None keeps the package's); ``window`` its
    inference window (N: cubes of N voxels, 0: the whole volume; compare ``crossval --window``).
    """
    keras = _keras()
    path = run_dir / "checkpoints" / f"{checkpoint}.keras"
    if not path.is_file():
        raise InputError("no such checkpoint (train first)", path)
    config = load_config(run_dir / "config.yaml")
    state = json.loads((run_dir / "state.json").read_text(encoding="utf-8"))
    split = json.loads((run_dir / "split.json").read_text(encoding="utf-8"))
    model = strip_training_state(keras.models.load_model(path, compile=False))
    spec = config.model_spec()
    if version:
        spec.version = version
    best_row = next((r for r in state["history"] if r["epoch"] == state["best_epoch"]), {})
    last_row = state["history"][-1] if state["history"] else {}
    chosen = best_row if checkpoint == "best" else last_row
    spec.training = {
        "config": config.to_dict(),
        "split": {k: split[k] for k in ("training", "validation")},
        "epochs_trained": state["epoch"],
        "checkpoint": checkpoint,
        "checkpoint_epoch": chosen.get("epoch"),
        "keras_backend": keras.backend.backend(),
    }
    spec.metrics = {k: v for k, v in chosen.items() if k.startswith("val_")}
    record_choices(
        spec, evaluation=evaluation, postprocessing=postprocessing, tta=tta, window=window
    )
    return write_package(model, spec, out_dir)


def repackage(
    package_dir: Path,
    out_dir: Path,
    *,
    version: str | None = None,
    evaluation: Path | None = None,
    postprocessing: Path | None = None,
    tta: bool | None = None,
    window: int | None = None,
) -> ModelSpec:
    """Write a package again from its ``model.keras``: a new ``model.onnx`` from the current
    converter, the same weights and metadata (plus any new choices and ``version``)."""
    from BrainTumorSegLib.model import load_model_spec

    spec = load_model_spec(package_dir)
    if spec.ensemble_files:
        raise InputError(
            "an ensemble package: export its members, then build it again", package_dir
        )
    if not spec.keras_file:
        raise InputError("the package has no Keras file to convert from", package_dir)
    if out_dir.resolve() == spec.folder.resolve():
        raise InputError("write the new package to another folder", out_dir)
    keras_path = spec.folder / spec.keras_file
    model = strip_training_state(_keras().models.load_model(keras_path, compile=False))
    spec.training = {**spec.training, "repackaged_from": f"{spec.name} {spec.version}"}
    if version:
        spec.version = version
    spec.folder = None
    record_choices(
        spec, evaluation=evaluation, postprocessing=postprocessing, tta=tta, window=window
    )
    return write_package(model, spec, out_dir)


def import_h5(
    h5_path: Path,
    out_dir: Path,
    *,
    channels: list[str],
    name: str,
    spacing_mm: list[float] | None = None,
    version: str = "seed",
) -> ModelSpec:
    """Package a seed-style Keras ``.h5`` (4-class softmax, 1 mm, z-score in the brain)."""
    keras = _keras()
    if not h5_path.is_file():
        raise InputError("file not found", h5_path)
    model = keras.models.load_model(h5_path, compile=False)
    original_shape = list(model.input_shape[1:4])
    outputs = model.output_shape[-1]
    if outputs != len(SOFTMAX_OUTPUT["classes"]):
        raise InputError(f"expected a 4-class softmax output, found {outputs} channels", h5_path)
    if model.input_shape[-1] != len(channels):
        raise InputError(
            f"the model takes {model.input_shape[-1]} channels but {len(channels)} were named",
            h5_path,
        )
    model = with_dynamic_spatial_input(model)
    depth = network_depth(model)
    spec = ModelSpec(
        name=name,
        version=version,
        description=f"imported from {h5_path.name} (trained input {original_shape})",
        channels=channels,
        spacing_mm=spacing_mm or [1.0, 1.0, 1.0],
        size_multiple=max(16, 2**depth),
        output=dict(SOFTMAX_OUTPUT),
        training={"source": str(h5_path), "original_input_shape": original_shape},
    )
    return write_package(model, spec, out_dir)


def choice_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of :func:`add_choice_options`' options (export and ensemble)."""
    return {
        "version": args.version,
        "evaluation": Path(args.metrics) if args.metrics else None,
        "postprocessing": Path(args.postprocessing) if args.postprocessing else None,
        "tta": args.tta,
        "window": args.window,
    }


def cmd_export(args: argparse.Namespace) -> int:
    if args.package:
        if args.checkpoint:
            raise InputError("--checkpoint chooses from a run; a package has one network")
        repackage(Path(args.package), Path(args.output), **choice_arguments(args))
    else:
        export_run(
            Path(args.run),
            Path(args.output),
            checkpoint=args.checkpoint or "best",
            **choice_arguments(args),
        )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    channels = [c.strip() for c in args.channels.split(",") if c.strip()]
    spacing = [float(v) for v in args.spacing.split(",")] if args.spacing else None
    import_h5(
        Path(args.h5),
        Path(args.output),
        channels=channels,
        name=args.name or Path(args.h5).stem,
        spacing_mm=spacing,
    )
    return 0


def add_choice_options(p: argparse.ArgumentParser) -> None:
    """The options of :func:`record_choices` plus ``--version`` (export and ensemble)."""
    p.add_argument("--version", help="model version recorded in model.json")
    p.add_argument(
        "--metrics",
        help="summary.json of an evaluate/crossval run to record in model.json (e.g. out of fold)",
    )
    p.add_argument(
        "--postprocessing",
        help="search.json of a postprocessing run: its choices become the model's defaults",
    )
    add_tta_options(
        p,
        "make mirroring test-time augmentation the model's default (segment --no-tta: off)",
        "make one network pass the model's default (e.g. when repackaging)",
    )
    add_window_option(
        p,
        "make windows of N^3 working voxels (or the whole volume) the model's default "
        "inference (segment --window overrides it)",
    )


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the ``export`` and ``import`` sub-commands."""
    p = sub.add_parser("export", help="package a training run as model.onnx + model.json + .keras")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", help="run folder written by fit")
    source.add_argument(
        "--package",
        help="an existing package: convert its model.keras again (same weights and metadata)",
    )
    p.add_argument("--output", required=True, help="model package folder to write")
    p.add_argument(
        "--checkpoint", choices=["best", "last"], help="with --run: which one (default best)"
    )
    add_choice_options(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="package a seed-style Keras .h5 model")
    p.add_argument("h5", help="the .h5 (or .keras) file")
    p.add_argument("--channels", required=True, help="input channel order, e.g. flair,t1ce,t2,t1")
    p.add_argument("--output", required=True, help="model package folder to write")
    p.add_argument("--name", help="model name (default: the file name)")
    p.add_argument("--spacing", help="voxel spacing the model was trained at, e.g. 1,1,1")
    p.set_defaults(func=cmd_import)


if __name__ == "__main__":  # the TensorFlow-backend conversion subprocess
    _, keras_file, onnx_file, shape = sys.argv
    print(
        convert_with_tf2onnx(
            Path(keras_file), Path(onnx_file), tuple(int(n) for n in shape.split(","))
        )
    )
