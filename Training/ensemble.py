"""``ensemble``: one model package from several trained ones; ``crossval-ensemble``: its
out-of-fold scores.

The networks of an ensemble must agree on everything inference reads from ``model.json``
(channels, spacing, normalisation, outputs, ...); the package keeps the first member's files
and metadata, adds the other members' ONNX files as ``model-2.onnx``, ``model-3.onnx``, ... and
records every member's training in ``training["ensemble"]``. Inference averages their outputs.

``crossval-ensemble`` scores such an ensemble honestly: for every fold it combines the fold
packages of several cross-validation runs (same folds, e.g. two seeds or two snapshots of one
run) and segments that fold's held-out cases with the combination, so each case is still
scored by networks that never saw it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from BrainTumorSegLib.errors import InputError
from BrainTumorSegLib.model import ModelSpec, load_model_spec

from .config import PREPROCESSING_FIELDS

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
    tta: bool = False,
) -> ModelSpec:
    """Write an ensemble package of ``packages`` (each a single-network package) to ``out_dir``.

    ``evaluation``/``postprocessing``/``tta`` as for ``export``; without them the first
    member's defaults are kept. ``model.json`` is written last, so a package with it is
    complete.
    """
    from .export import record_choices

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
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "model.json").unlink(missing_ok=True)  # an incomplete package has none
    first = specs[0]
    spec = ModelSpec.from_dict(first.to_dict())
    if first.keras_file:  # the first member's Keras twin serves the optional Keras backend
        shutil.copy2(first.folder / first.keras_file, out_dir / first.keras_file)
    for index, member in enumerate(specs):
        shutil.copy2(member.folder / member.file, out_dir / member_file(index))
    spec.description = f"ensemble of {len(specs)} networks: {first.description}"
    spec.file = member_file(0)
    spec.ensemble_files = [member_file(i) for i in range(1, len(specs))]
    spec.training = {
        **first.training,
        "ensemble": [
            {"file": member_file(i), "source": str(m.folder), "version": m.version, **m.training}
            for i, m in enumerate(specs)
        ],
    }
    spec.metrics = {}
    if version:
        spec.version = version
    record_choices(spec, evaluation=evaluation, postprocessing=postprocessing, tta=tta)
    spec.write(out_dir / "model.json")
    print(f"ensemble of {len(specs)} networks written to {out_dir}")
    return spec


def fold_packages(runs: list[Path], fold: int) -> tuple[list[Path], list[str]]:
    """The ``fold``-th package of every run and the fold's held-out cases (which must agree)."""
    packages, held_out = [], None
    for run in runs:
        run_dir = Path(run) / f"fold{fold}"
        split_file, package = run_dir / "split.json", run_dir / "package"
        if not (package / "model.json").is_file() or not split_file.is_file():
            raise InputError(f"fold {fold} has no exported package yet (run crossval)", run_dir)
        validation = json.loads(split_file.read_text(encoding="utf-8"))["validation"]
        if held_out is not None and sorted(validation) != sorted(held_out):
            raise InputError(f"fold {fold} holds out other cases than in {runs[0]}", run_dir)
        held_out = validation
        packages.append(package)
    return packages, list(held_out or [])


def crossval_ensemble(
    runs: list[Path],
    dataset: Path,
    out_dir: Path,
    *,
    tta: bool = False,
    only: list[int] | None = None,
) -> dict[str, Any] | None:
    """Out-of-fold scores of the fold-by-fold ensembles of several cross-validation runs.

    Writes ``<out>/fold<k>/`` (the ensemble package of fold k) and ``<out>/out-of-fold[-tta]/``
    (predictions, tables, box plot); finished packages and predictions are kept, so an
    interrupted call resumes. ``only`` segments some folds (e.g. those already trained); the
    summary is written and returned once every fold's held-out cases have predictions.
    """
    from .dataset import find_cases
    from .evaluate import evaluate, run_model, segmented_file

    if len(runs) < 2:
        raise InputError("crossval-ensemble needs at least two cross-validation run folders")
    folds = sorted(int(p.name[4:]) for p in Path(runs[0]).glob("fold*") if p.name[4:].isdigit())
    if not folds:
        raise InputError("no fold<k> runs here", runs[0])
    cases = {c.case_id: c for c in find_cases(dataset)}
    scores = out_dir / ("out-of-fold-tta" if tta else "out-of-fold")
    missing = []
    for fold in folds:
        if only is not None and fold not in only:
            split = json.loads((Path(runs[0]) / f"fold{fold}" / "split.json").read_text())
            predicted = scores / "predictions"
            if not all(segmented_file(predicted, c).is_file() for c in split["validation"]):
                missing.append(fold)
            continue
        packages, held_out = fold_packages(runs, fold)
        package = out_dir / f"fold{fold}"
        if not (package / "model.json").is_file():
            build_ensemble(packages, package)
        print(f"fold {fold}: ensemble of {len(packages)} on {len(held_out)} held-out cases")
        run_model(str(package), [cases[c] for c in held_out], scores, tta=tta)
    if missing:
        print(f"folds {missing} still to segment; no summary yet")
        return None
    return evaluate(scores / "predictions", dataset, scores)


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
        only=args.only,
    )
    if summary is not None:
        print_out_of_fold(summary)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``ensemble`` and ``crossval-ensemble``."""
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
    p.add_argument("--tta", action="store_true", help="mirroring test-time augmentation")
    p.add_argument("--only", type=int, nargs="+", default=None, help="segment only these folds")
    p.set_defaults(func=cmd_crossval_ensemble)
