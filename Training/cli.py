"""Command line: ``python -m Training <command> ...`` (prepare, fit, crossval, evaluate,
compare, postprocessing, export, import, ensemble, crossval-ensemble).

Heavy modules (Keras, TensorFlow) are imported inside the commands that need them, so that
``prepare`` and ``--help`` start quickly and the Keras backend can be chosen per command.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from BrainTumorSegLib.errors import InputError

DEFAULT_CACHE = Path("~/.cache/braintumorseg/prepared")


def _config(args: argparse.Namespace):
    from .config import load_config

    return load_config(args.config, args.set or [])


def _cache_folder(args: argparse.Namespace, config) -> Path:
    from .prepare import cache_dir

    return cache_dir(Path(args.cache).expanduser(), config)


def cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare_dataset

    config = _config(args)
    folder = prepare_dataset(
        args.dataset,
        Path(args.cache).expanduser(),
        config,
        workers=args.workers,
        convention=args.labels,
        limit=args.limit,
    )
    print(f"prepared cases are in {folder}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    config = _config(args)
    if args.fold is not None:
        config.split.method = "kfold"
        config.split.fold = args.fold
        config.split.validate()
    if args.dataset:
        from .prepare import prepare_dataset

        prepare_dataset(args.dataset, Path(args.cache).expanduser(), config, workers=args.workers)
    from .fit import fit

    state = fit(
        config,
        _cache_folder(args, config),
        args.run,
        strategy=args.strategy,
        logical_cpus=args.logical_cpus,
        verbose=args.verbose,
    )
    if state["best"] is None:  # no validation (split.method all): the last epoch is kept
        print(f"epoch {state['epoch']}: no validation; run folder {args.run}")
    else:
        print(
            f"epoch {state['epoch']}: best {config.training.monitor} {state['best']} "
            f"at epoch {state['best_epoch']}; run folder {args.run}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-command per pipeline stage."""
    parser = argparse.ArgumentParser(
        prog="python -m Training",
        description="BrainTumorSeg training: prepare data, fit, evaluate, export/import models.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", required=True, help="training config (YAML or JSON)")
        p.add_argument(
            "--set",
            action="append",
            metavar="SECTION.KEY=VALUE",
            help="override a config value, e.g. --set training.epochs=5 (repeatable)",
        )
        p.add_argument(
            "--cache",
            default=str(DEFAULT_CACHE),
            help=f"root folder of prepared data (default {DEFAULT_CACHE})",
        )
        p.add_argument("--workers", type=int, default=None, help="preprocessing processes")

    p = sub.add_parser("prepare", help="preprocess a labelled dataset into the cache")
    p.add_argument("dataset", help="folder of case folders (BraTS 2018-2021 or 2023 layout)")
    add_config(p)
    p.add_argument(
        "--labels",
        default="auto",
        choices=["auto", "brats2018", "brats2023"],
        help="label convention of the dataset (auto: detected per case)",
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N cases")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("fit", help="train (or resume training) from a config")
    add_config(p)
    p.add_argument(
        "--run", required=True, help="run folder (checkpoints, logs); resumed if present"
    )
    p.add_argument("--dataset", help="prepare this dataset first (skips cases already cached)")
    p.add_argument("--fold", type=int, default=None, help="k-fold index (sets split.method=kfold)")
    p.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "none", "mirrored", "multiworker"],
        help="tf.distribute strategy (TensorFlow backend only)",
    )
    p.add_argument(
        "--logical-cpus",
        type=int,
        default=None,
        help="split the CPU into N devices for a mirrored test run",
    )
    p.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2], help="Keras verbosity")
    p.set_defaults(func=cmd_fit)

    _add_later_commands(sub, add_config)
    return parser


def _add_later_commands(sub: argparse._SubParsersAction, add_config) -> None:
    from . import compare, crossval, ensemble, evaluate, export, postprocessing

    crossval.add_parser(sub, add_config)
    ensemble.add_parsers(sub)
    evaluate.add_parser(sub)
    compare.add_parser(sub)
    postprocessing.add_parser(sub)
    export.add_parsers(sub)


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input prints one ``error:`` line and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (InputError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
