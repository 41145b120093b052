"""``crossval``: k-fold cross-validation with honest out-of-fold scores.

For each fold ``k`` the config is trained with ``split.method=kfold, split.fold=k`` in
``<runs>/fold<k>`` (resumed when interrupted, skipped when finished), the fold's ``last``
checkpoint is exported to ``<runs>/fold<k>/package`` and run through the core
(:func:`BrainTumorSegLib.segment`, at the dataset's own resolution) on that fold's held-out
cases only. The out-of-fold predictions of all folds are then scored together in
``<runs>/out-of-fold`` with :func:`Training.evaluate.evaluate`: every case is scored by a model
that never saw it. The ``last`` checkpoint is used, not the ``best``: choosing an epoch by the
held-out cases' own scores would make the figures optimistic.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
from pathlib import Path
from typing import Any

from .config import Config


def fold_config(config: Config, fold: int, folds: int) -> Config:
    """A copy of ``config`` set to fold ``fold`` of a ``folds``-fold split."""
    out = copy.deepcopy(config)
    out.split.method = "kfold"
    out.split.folds = folds
    out.split.fold = fold
    out.split.validate()
    return out


def crossvalidate(
    config: Config,
    dataset: Path,
    cache_root: Path,
    runs: Path,
    *,
    folds: int,
    only: list[int] | None = None,
    workers: int | None = None,
    tta: bool = False,
    window: int | None = None,
) -> dict[str, Any] | None:
    """Train, export and predict every fold, then score out of fold; returns the summary.

    The held-out cases are segmented with mirroring (``tta``) or not, whatever the fold
    packages say, and in windows of ``window``³ voxels (0: the whole volume; None: as the
    packages say), into the prediction set :func:`prediction_set` names.
    ``only`` restricts the training to some folds (to spread them over machines or sessions);
    the out-of-fold summary is written once every fold has its predictions.
    """
    import keras

    from .dataset import find_cases
    from .evaluate import evaluate, run_model
    from .export import export_run
    from .fit import fit
    from .prepare import prepare_dataset

    cache = prepare_dataset(dataset, cache_root, config, workers=workers)
    cases = {c.case_id: c for c in find_cases(dataset)}
    scores = runs / prediction_set(tta, window)
    predictions = scores / "predictions"
    done = []
    for fold in range(folds):
        run_dir = runs / f"fold{fold}"
        if only is not None and fold not in only:
            # Done only with its held-out predictions in this prediction set: a fold run
            # copied or extended from another set has a package but none of them yet.
            if (run_dir / "package" / "model.json").is_file() and fold_segmented(
                predictions, run_dir
            ):
                done.append(fold)
            continue
        print(f"fold {fold + 1}/{folds}: {run_dir}")
        state = fit(fold_config(config, fold, folds), cache, run_dir)
        if not state.get("history"):
            raise ValueError(f"fold {fold} trained no epoch")
        package = run_dir / "package"
        if _package_is_stale(run_dir, package):
            export_run(run_dir, package, checkpoint="last")
        keras.backend.clear_session()
        gc.collect()
        run_model(
            str(package),
            [cases[c] for c in held_out(run_dir)],
            predictions.parent,
            tta=tta,
            window=window,
            save_probabilities=True,  # for choosing region thresholds (postprocessing)
        )
        done.append(fold)
    if len(done) < folds:
        print(f"folds {sorted(set(range(folds)) - set(done))} still to run; no summary yet")
        return None
    return evaluate(predictions, dataset, scores)


def prediction_set(tta: bool, window: int | None) -> str:
    """Folder name of an out-of-fold prediction set: ``out-of-fold[-window<N>|-whole][-tta]``."""
    name = "out-of-fold"
    if window is not None:
        name += f"-window{window}" if window else "-whole"
    return name + ("-tta" if tta else "")


def add_prediction_set_options(p: argparse.ArgumentParser) -> None:
    """``--tta`` and ``--window``: how held-out cases are segmented (crossval, ensembles)."""
    from BrainTumorSegLib.cli import add_window_option

    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    add_window_option(
        p,
        "run the fold networks in windows of N^3 working voxels, or on the whole volume "
        "(default: as their packages say); predictions go to "
        "out-of-fold-window<N>[-tta] (out-of-fold-whole[-tta])",
    )


def _package_is_stale(run_dir: Path, package: Path) -> bool:
    """No package yet, or one exported before the run trained on (an extended run)."""
    exported, checkpoint = package / "model.json", run_dir / "checkpoints" / "last.keras"
    if not exported.is_file():
        return True
    return checkpoint.is_file() and checkpoint.stat().st_mtime > exported.stat().st_mtime


def held_out(run_dir: Path) -> list[str]:
    """The held-out (validation) cases of a fold run, from the ``split.json`` fit wrote."""
    from BrainTumorSegLib.errors import InputError

    path = run_dir / "split.json"
    if not path.is_file():
        raise InputError("no split.json: this fold is not trained yet (run crossval)", path)
    try:
        split = json.loads(path.read_text(encoding="utf-8"))
        valid = all(isinstance(split.get(key), list) for key in ("training", "validation"))
    except (json.JSONDecodeError, AttributeError) as e:
        raise InputError(f"not a split written by fit ({type(e).__name__}: {e})", path) from e
    if not valid:
        raise InputError("not a split written by fit (no training/validation case lists)", path)
    return split["validation"]


def fold_segmented(predictions: Path, run_dir: Path) -> bool:
    """Every held-out case of the fold run ``run_dir`` has its label map in ``predictions``."""
    from .evaluate import segmented_file

    return (run_dir / "split.json").is_file() and all(
        segmented_file(predictions, c).is_file() for c in held_out(run_dir)
    )


def print_out_of_fold(summary: dict[str, Any]) -> None:
    """Mean and median Dice and HD95 per region of an out-of-fold summary."""
    from .evaluate import print_summary

    print_summary(summary, prefix="out of fold ")


def cmd_crossval(args: argparse.Namespace) -> int:
    from .config import load_config

    config = load_config(args.config, args.set or [])
    folds = args.folds or config.split.folds
    summary = crossvalidate(
        config,
        Path(args.dataset),
        Path(args.cache).expanduser(),
        Path(args.runs),
        folds=folds,
        only=args.only,
        workers=args.workers,
        tta=args.tta,
        window=args.window,
    )
    if summary is None:
        return 0
    print_out_of_fold(summary)
    print(f"tables and box plot in {Path(args.runs) / prediction_set(args.tta, args.window)}")
    return 0


def add_parser(sub: argparse._SubParsersAction, add_config: Any) -> None:
    """Register ``crossval`` (``add_config`` adds the shared --config/--set/--cache options)."""
    p = sub.add_parser(
        "crossval", help="k-fold cross-validation: train every fold, score out of fold"
    )
    p.add_argument("dataset", help="folder of labelled case folders")
    add_config(p)
    p.add_argument("--runs", required=True, help="folder for fold<k>/ runs and out-of-fold/")
    p.add_argument("--folds", type=int, default=None, help="number of folds (default split.folds)")
    p.add_argument(
        "--only", type=int, nargs="+", default=None, help="train only these fold indices"
    )
    add_prediction_set_options(p)
    p.set_defaults(func=cmd_crossval)
