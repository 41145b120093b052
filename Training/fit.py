"""``fit``: train the U-Net on a prepared cache, resumably, on one or several devices."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import keras

from BrainTumorSegLib.preprocess import PREPROCESSING_VERSION

from .callbacks import RunState, read_state
from .config import Config, load_config, save_config
from .distribute import (
    gpu_count,
    is_chief,
    is_multiworker,
    make_strategy,
    prepare_for_multiworker,
    task_index,
)
from .losses import SegmentationLoss, region_metrics
from .network import build_unet
from .pipeline import (
    CaseStore,
    common_shape,
    keras_batches,
    tf_dataset,
    training_patches,
    validation_batches,
    validation_volumes,
)
from .prepare import read_manifest
from .split import split_cases


def build_model(config: Config) -> keras.Model:
    """The configured network for the configured ``model.json`` input/output."""
    output = config.model["output"]
    fixed = config.model.get("fixed_input_shape")
    return build_unet(
        config.network,
        input_channels=len(config.model["channels"]),
        num_outputs=len(output["classes"] if output["kind"] == "softmax" else output["regions"]),
        output_activation=output["kind"],
        input_shape=tuple(fixed) if fixed else None,
        name=config.model["name"].replace("-", "_"),
    )


def learning_rate_schedule(config: Config, total_steps: int, steps: int) -> Any:
    """The configured learning rate: a number or a schedule of the optimiser's step count.

    ``total_steps`` is the length of the whole run, ``steps`` the steps per epoch.
    """
    opt = config.optimizer
    schedules = keras.optimizers.schedules
    if opt.schedule == "cosine":
        return schedules.CosineDecay(opt.learning_rate, total_steps, alpha=0.01)
    if opt.schedule == "poly":
        return schedules.PolynomialDecay(
            opt.learning_rate, total_steps, end_learning_rate=opt.learning_rate * 0.01, power=0.9
        )
    if opt.schedule == "cosine_restarts":
        cycle = steps * int(opt.cycle_epochs or 1)
        return schedules.CosineDecayRestarts(
            opt.learning_rate, cycle, t_mul=1.0, m_mul=opt.cycle_peak, alpha=0.01
        )
    return opt.learning_rate


def make_optimizer(config: Config, total_steps: int, steps: int = 1) -> keras.optimizers.Optimizer:
    """Adam (AdamW with weight decay) with the configured learning-rate schedule."""
    opt = config.optimizer
    rate = learning_rate_schedule(config, total_steps, steps)
    if opt.weight_decay:
        return keras.optimizers.AdamW(rate, weight_decay=opt.weight_decay, clipnorm=opt.clipnorm)
    return keras.optimizers.Adam(rate, clipnorm=opt.clipnorm)


def compile_model(model: keras.Model, config: Config, total_steps: int, steps: int = 1) -> None:
    """Attach optimiser, loss and the per-region Dice metrics."""
    output = config.model["output"]
    model.compile(
        optimizer=make_optimizer(config, total_steps, steps),
        loss=SegmentationLoss(
            config.loss.kind,
            output["kind"],
            config.loss.dice_weight,
            config.loss.ce_weight,
            batch_dice=config.loss.batch_dice,
            dice_channel_weights=config.loss.dice_channel_weights,
        ),
        metrics=region_metrics(output),
        jit_compile=use_jit_compile(config),
    )


def use_jit_compile(config: Config) -> bool:
    """``training.jit_compile`` where it is supported: torch.compile on the PyTorch backend."""
    if not config.training.jit_compile:
        return False
    if keras.backend.backend() != "torch":
        warnings.warn(
            f"training.jit_compile is ignored on the {keras.backend.backend()} backend "
            "(it compiles with torch.compile on KERAS_BACKEND=torch)",
            stacklevel=2,
        )
        return False
    return True


def use_tf_data(config: Config, distribution: Any) -> bool:
    """Whether batches come from ``tf.data`` (else from a ``keras.utils.PyDataset``)."""
    loader = config.data.loader
    if loader == "python" and distribution is not None:
        raise ValueError("data.loader python cannot feed tf.distribute; use tfdata (or auto)")
    return loader == "tfdata" or (loader == "auto" and keras.backend.backend() == "tensorflow")


def mixed_precision_policy(config: Config) -> str | None:
    """The Keras dtype policy that ``training.mixed_precision`` asks for (None: float32)."""
    setting = config.training.mixed_precision
    if setting == "bf16":
        return "mixed_bfloat16"
    if setting == "on" or (setting == "auto" and gpu_count() > 0):
        return "mixed_float16"
    return None


def steps_per_epoch(config: Config, training_cases: int) -> int:
    """Configured steps, or one pass over the training cases (one patch per case)."""
    if config.data.steps_per_epoch:
        return config.data.steps_per_epoch
    return max(1, math.ceil(training_cases / config.data.batch_size))


def fit(
    config: Config,
    cache: str | Path,
    run_dir: str | Path,
    *,
    strategy: str = "auto",
    logical_cpus: int | None = None,
    verbose: int = 2,
) -> dict[str, Any]:
    """Train (or resume) a run in ``run_dir`` from prepared cases in ``cache``; returns the state.

    ``cache`` is the folder written by ``prepare`` for this config's preprocessing settings.
    An existing ``run_dir`` with a checkpoint is resumed from the epoch after its last one.
    """
    # A mixed policy is global in Keras: restored afterwards so that what runs next in this
    # process (crossval's next fold, an export) builds float32 layers unless it asks otherwise.
    previous = keras.mixed_precision.global_policy()
    try:
        return _fit(
            config, cache, run_dir, strategy=strategy, logical_cpus=logical_cpus, verbose=verbose
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _fit(
    config: Config,
    cache: str | Path,
    run_dir: str | Path,
    *,
    strategy: str,
    logical_cpus: int | None,
    verbose: int,
) -> dict[str, Any]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(cache)
    expected = {k: config.model[k] for k in manifest.get("model", {})}
    if manifest.get("model") and expected != manifest["model"]:
        raise ValueError(f"{cache} was prepared with other preprocessing settings than this config")
    if not manifest["cases"]:
        raise ValueError(f"no prepared cases in {cache}; run the prepare command first")
    if manifest.get("preprocessing_version", 1) != PREPROCESSING_VERSION:
        raise ValueError(
            f"{cache} was prepared by an older version of the core's preprocessing; "
            "run the prepare command again (it writes a new cache folder)"
        )
    train_ids, val_ids = split_cases(manifest["cases"], config.split)
    state = read_state(run_dir)
    if state and (state["epoch"] >= config.training.epochs or state.get("stopped_early")):
        print(f"run already finished at epoch {state['epoch']} (best {state['best']})")
        return state

    keras.utils.set_random_seed(config.training.seed)
    distribution = make_strategy(strategy, logical_cpus=logical_cpus)
    policy = mixed_precision_policy(config)
    if policy:
        keras.mixed_precision.set_global_policy(policy)
    steps = steps_per_epoch(config, len(train_ids))
    total_steps = steps * config.training.epochs
    scope = distribution.scope() if distribution is not None else _NullScope()
    with scope:
        if state:
            # The custom loss and metrics are registered by importing .losses (above).
            model = keras.models.load_model(run_dir / "checkpoints" / "last.keras")
            model.jit_compile = use_jit_compile(config)  # a setting of this run, not saved
            # The schedule is a function of the saved step count; rebuilt from the config so
            # that a finished run can be extended (more epochs, another cosine cycle).
            rate = learning_rate_schedule(config, total_steps, steps)
            try:
                model.optimizer.learning_rate = rate
            except TypeError:  # Keras keeps a schedule once it had one: a flat one then
                model.optimizer.learning_rate = keras.optimizers.schedules.PolynomialDecay(
                    rate, 1, end_learning_rate=rate
                )
            print(f"resuming at epoch {state['epoch'] + 1} from {run_dir / 'checkpoints'}")
        else:
            model = build_model(config)
            compile_model(model, config, total_steps, steps)
    if state and (run_dir / "config.yaml").is_file():
        _warn_config_changes(load_config(run_dir / "config.yaml"), config)
    if is_chief():
        save_config(config, run_dir / "config.yaml")
        split = {"training": train_ids, "validation": val_ids, "cache": str(Path(cache).resolve())}
        (run_dir / "split.json").write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    initial_epoch = state["epoch"] if state else 0

    channels = len(config.model["channels"])
    outputs = model.output_shape[-1]
    train_store = CaseStore(cache, train_ids)
    val_store = CaseStore(cache, val_ids)
    # New patches after a resume, different patches on each worker, same ones on a rerun.
    seed = config.training.seed + 7919 * initial_epoch + 104729 * task_index()
    val_shape = common_shape(val_store) if val_ids else None
    val: Any = None
    if use_tf_data(config, distribution):
        train = tf_dataset(
            lambda: training_patches(train_store, config, seed),
            spatial=tuple(config.data.patch_size),
            channels=channels,
            outputs=outputs,
            batch_size=config.data.batch_size,
            prefetch=config.data.prefetch,
        )
        # Whole validation volumes, one per replica batch slot so that every device gets work.
        val_batch = distribution.num_replicas_in_sync if distribution is not None else 1
        if val_ids:
            val = tf_dataset(
                lambda: validation_volumes(val_store, config, val_shape, multiple=val_batch),
                spatial=val_shape,
                channels=channels,
                outputs=outputs,
                batch_size=val_batch,
            )
    else:
        train = keras_batches(
            training_patches(train_store, config, seed),
            batch_size=config.data.batch_size,
            length=steps,
        )
        if val_ids:
            val = validation_batches(val_store, config, val_shape)
    if is_multiworker(distribution):
        x, y = next(training_patches(train_store, config, seed))
        prepare_for_multiworker(model, distribution, (x[None], y[None]))
    run_state = RunState(
        run_dir,
        monitor=config.training.monitor if val_ids else None,
        patience=config.training.early_stopping_patience,
        state=state,
        write=is_chief(),
    )
    print(
        f"training on {len(train_ids)} cases, validating on {len(val_ids)}"
        + (f" (whole volumes {val_shape})" if val_ids else "")
        + f"; {steps} steps/epoch; backend {keras.backend.backend()}; "
        f"{model.count_params():,} parameters"
        + (f"; {distribution.num_replicas_in_sync} replicas" if distribution is not None else "")
    )
    start = time.perf_counter()
    # The validation set is finite on purpose (every case exactly once per pass); Keras warns
    # when a dataset ends, which here is expected.
    warnings.filterwarnings("ignore", message=".*ran out of data.*")
    model.fit(
        train,
        steps_per_epoch=steps,
        epochs=config.training.epochs,
        initial_epoch=initial_epoch,
        validation_data=val,
        validation_freq=config.data.validation_every,
        callbacks=[run_state],
        shuffle=False,  # patches are already random
        verbose=verbose,
    )
    elapsed = time.perf_counter() - start
    epochs_run = run_state.state["epoch"] - initial_epoch
    if epochs_run:
        print(f"{epochs_run} epochs in {elapsed:.0f} s ({elapsed / epochs_run / steps:.2f} s/step)")
    return run_state.state


def _warn_config_changes(saved: Config, current: Config) -> None:
    """Tell the user when a resumed run continues with different settings."""
    old, new = saved.to_dict(), current.to_dict()
    changed = [
        f"{section}.{key}: {old[section].get(key)!r} -> {value!r}"
        for section, values in new.items()
        for key, value in values.items()
        if old.get(section, {}).get(key) != value
    ]
    if changed:
        print(
            "warning: resuming with changed settings (the network and optimiser state come from "
            "the checkpoint, the learning-rate schedule from this config): " + "; ".join(changed)
        )


class _NullScope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
