"""``ensemble``: one model package from several trained ones; ``crossval-ensemble``: its
out-of-fold scores.

The networks of an ensemble must agree on everything inference reads from ``model.json`` about
the input and the output (channels, spacing, normalisation, outputs, ...); the package keeps the
first member's files and metadata, adds the other members' ONNX files as ``model-2.onnx``,
``model-3.onnx``, ... and records every member's training and metrics in
``training["ensemble"]``. Inference averages their outputs. The defaults chosen on measured
scores (postprocessing, test-time augmentation) are not inherited from a member: they are the
ensemble's own, given with ``--postprocessing`` / ``--tta``.

``crossval-ensemble`` scores such an ensemble honestly: for every fold it combines the fold
packages of several cross-validation runs (same folds, e.g. two seeds or two snapshots of one
run) and segments that fold's held-out cases with the combination, so each case is still
scored by networks that never saw it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.model import ModelSpec, load_model_spec

from .config import PREPROCESSING_FIELDS
from .crossval import fold_segmented
from .crossval import held_out as held_out_cases

# What inference reads from model.json besides the network files: members must agree on it.
SHARED_FIELDS = (*PREPROCESSING_FIELDS, "input_layout", "output", "label_convention_trained")


def member_file(index: int) -> str:
    """File name of the ``index``-th (0-based) member's network inside an ensemble package."""
    return "model.onnx" if index == 0 else f"model-{index + 1}.onnx"


def check_compatible(specs: list[ModelSpec]) -> None:
    """Raise :class:`InputError` naming the package and field where members disagree."""
    first = specs[0]
    for spec in specs[1:]:
        for name in SHARED_FIELDS:
            if getattr(spec, name) != getattr(first, name):
                raise InputError(
                    f"cannot ensemble: {name} is {getattr(spec, name)!r} here but "
                    f"{getattr(first, name)!r} in {first.folder}",
                    spec.folder,
                )


def build_ensemble(
    packages: list[Path],
    out_dir: Path,
    *,
    version: str | None = None,
    evaluation: Path | None = None,
    postprocessing: Path | None = None,
    tta: bool | None = None,
    window: int | None = None,
) -> ModelSpec:
    """Write an ensemble package of ``packages`` (each a single-network package) to ``out_dir``.

    ``evaluation``/``postprocessing``/``tta``/``window`` as for ``export``; without them the
    ensemble has no island removal, keeps every component and runs one whole-volume pass per
    network. The package is
    assembled in a temporary folder beside ``out_dir`` and moved into place when complete, so
    a failed call leaves an existing ``out_dir`` as it was.
    """
    from .export import record_choices, staged_folder

    if len(packages) < 2:
        raise InputError("an ensemble needs at least two model packages")
    specs = [load_model_spec(p) for p in packages]
    for spec in specs:
        if spec.ensemble_files:
            raise InputError("already an ensemble; list its members instead", spec.folder)
        if Path(spec.file).suffix.lower() != ".onnx":
            raise InputError(f"{spec.file} is not ONNX; ensembles run on ONNX Runtime", spec.folder)
    check_compatible(specs)
    out_dir = Path(out_dir)
    if any(out_dir.resolve() == Path(p).resolve() for p in packages):
        raise InputError("the ensemble must be written to a new folder, not a member", out_dir)
    first = specs[0]
    spec = ModelSpec.from_dict(first.to_dict())
    spec.description = f"ensemble of {len(specs)} networks: {first.description}"
    spec.file = member_file(0)
    spec.ensemble_files = [member_file(i) for i in range(1, len(specs))]
    spec.training = {
        **first.training,
        "ensemble": [
            {
                "file": member_file(i),
                "source": str(m.folder.resolve()),
                "version": m.version,
                "training": m.training,
                "metrics": m.metrics,
            }
            for i, m in enumerate(specs)
        ],
    }
    spec.metrics = {}
    spec.min_component_ml, spec.keep_largest_component = 0.0, False
    spec.region_thresholds = {}  # a member's thresholds were chosen for its outputs alone
    spec.test_time_augmentation = False
    spec.inference_window = None
    if version:
        spec.version = version
    # Before any file is touched: a mistyped --metrics/--postprocessing changes nothing.
    record_choices(
        spec, evaluation=evaluation, postprocessing=postprocessing, tta=tta, window=window
    )
    with staged_folder(out_dir) as staging:
        if first.keras_file:  # the first member's Keras twin serves the optional Keras backend
            shutil.copy2(first.folder / first.keras_file, staging / first.keras_file)
        for index, member in enumerate(specs):
            shutil.copy2(member.folder / member.file, staging / member_file(index))
        spec.write(staging / "model.json")
    spec.folder = out_dir
    print(f"ensemble of {len(specs)} networks written to {out_dir}")
    return spec


def fold_count(run: Path) -> int:
    """Number of folds of a crossval run folder (from the config of any of its folds).

    Any fold will do: with ``--only`` a machine may hold only some folds of a run.
    """
    from .config import load_config

    configs = sorted(
        d / "config.yaml"
        for d in Path(run).glob("fold*")
        if re.fullmatch(r"fold\d+", d.name) and (d / "config.yaml").is_file()
    )
    if not configs:
        raise InputError("no fold<k>/config.yaml: not a crossval run folder (run crossval)", run)
    return load_config(configs[0]).split.folds


def fold_packages(runs: list[Path], fold: int) -> tuple[list[Path], list[str]]:
    """The ``fold``-th package of every run and the fold's held-out cases (which must agree)."""
    packages, held_out = [], None
    for run in runs:
        run_dir = Path(run) / f"fold{fold}"
        if not run_dir.is_dir():
            raise InputError(
                f"fold {fold} is not here: not trained yet, or on another machine (give "
                "--only with the folds this one holds)",
                run,
            )
        validation = held_out_cases(run_dir)
        package = run_dir / "package"
        if not (package / "model.json").is_file():
            raise InputError(f"fold {fold} has no exported package yet (run crossval)", run_dir)
        if held_out is not None and sorted(validation) != sorted(held_out):
            raise InputError(f"fold {fold} holds out other cases than in {runs[0]}", run_dir)
        held_out = validation
        packages.append(package)
    return packages, list(held_out or [])


def _is_current(ensemble: Path, packages: list[Path]) -> bool:
    """An ensemble package built from exactly these members, after their last export."""
    manifest = ensemble / "model.json"
    if not manifest.is_file():
        return False
    members = json.loads(manifest.read_text(encoding="utf-8"))["training"].get("ensemble", [])
    sources = [m.get("source") for m in members]
    built = manifest.stat().st_mtime
    return sources == [str(p.resolve()) for p in packages] and all(
        (p / "model.json").stat().st_mtime <= built for p in packages
    )


def crossval_ensemble(
    runs: list[Path],
    dataset: Path,
    out_dir: Path,
    *,
    tta: bool = False,
    window: int | None = None,
    only: list[int] | None = None,
) -> dict[str, Any] | None:
    """Out-of-fold scores of the fold-by-fold ensembles of several cross-validation runs.

    Writes ``<out>/fold<k>/`` (the ensemble package of fold k) and the prediction set
    ``<out>/out-of-fold[-window<N>|-whole][-tta]/`` (predictions, tables, box plot; ``window``
    as for ``crossval``); finished packages and predictions are kept, so an
    interrupted call resumes, and rebuilt (their predictions discarded) when a member was
    exported again or the runs changed. ``only`` segments some folds (e.g. those already
    trained); the summary is written and returned once every fold has its predictions.
    """
    from .crossval import prediction_set
    from .dataset import find_cases
    from .evaluate import evaluate, run_model

    if len(runs) < 2:
        raise InputError("crossval-ensemble needs at least two cross-validation run folders")
    out_dir = Path(out_dir)
    if any(out_dir.resolve() == Path(r).resolve() for r in runs):
        raise InputError("the output folder must not be one of the --runs", out_dir)
    folds = list(range(fold_count(runs[0])))
    unknown = sorted(set(only or []) - set(folds))
    if unknown:
        raise InputError(f"--only {unknown}: the runs have folds {folds}", runs[0])
    chosen = [f for f in folds if only is None or f in only]
    # Every chosen fold checked before any is segmented.
    members = {fold: fold_packages(runs, fold) for fold in chosen}
    cases = {c.case_id: c for c in find_cases(dataset)}
    for fold, (_, held_out) in members.items():
        absent = [c for c in held_out if c not in cases]
        if absent:
            raise InputError(f"held-out cases {absent} of fold {fold} are not here", dataset)
    scores = out_dir / prediction_set(tta, window)
    predictions = scores / "predictions"
    for fold, (packages, held_out) in members.items():
        package = out_dir / f"fold{fold}"
        if not _is_current(package, packages):
            build_ensemble(packages, package)
            for case in held_out:  # segmented by an older ensemble
                for sibling in out_dir.glob(f"out-of-fold*/predictions/{case}"):
                    shutil.rmtree(sibling)
        print(f"fold {fold}: ensemble of {len(packages)} on {len(held_out)} held-out cases")
        run_model(
            str(package),
            [cases[c] for c in held_out],
            scores,
            tta=tta,
            window=window,
            save_probabilities=True,  # as crossval: postprocessing's region thresholds read them
        )
    missing = [
        f
        for f in folds
        if f not in members and not fold_segmented(predictions, Path(runs[0]) / f"fold{f}")
    ]
    if missing:
        print(f"folds {missing} still to segment; no summary yet")
        return None
    return evaluate(predictions, dataset, scores)


def cmd_ensemble(args: argparse.Namespace) -> int:
    from .export import choice_arguments

    build_ensemble([Path(p) for p in args.packages], Path(args.output), **choice_arguments(args))
    return 0


def cmd_crossval_ensemble(args: argparse.Namespace) -> int:
    from .crossval import print_out_of_fold

    summary = crossval_ensemble(
        [Path(r) for r in args.runs],
        Path(args.dataset),
        Path(args.output),
        tta=args.tta,
        window=args.window,
        only=args.only,
    )
    if summary is not None:
        print_out_of_fold(summary)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``ensemble`` and ``crossval-ensemble``."""
    from .crossval import add_prediction_set_options
    from .export import add_choice_options

    p = sub.add_parser("ensemble", help="combine model packages into one ensemble package")
    p.add_argument("packages", nargs="+", help="model package folders (the first one's metadata)")
    p.add_argument("--output", required=True, help="ensemble package folder to write")
    add_choice_options(p)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser(
        "crossval-ensemble",
        help="out-of-fold scores of fold-by-fold ensembles of several crossval runs",
    )
    p.add_argument("dataset", help="folder of labelled case folders")
    p.add_argument("--runs", nargs="+", required=True, help="crossval run folders (same folds)")
    p.add_argument("--output", required=True, help="folder for fold<k>/ packages and scores")
    add_prediction_set_options(p)
    p.add_argument("--only", type=int, nargs="+", default=None, help="segment only these folds")
    p.set_defaults(func=cmd_crossval_ensemble)
