"""Command line: ``braintumorseg segment ...`` (also ``python -m BrainTumorSegLib segment ...``)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from . import __version__
from .bias import BACKENDS
from .errors import CancelledError, InputError
from .labels import CONVENTIONS, DEFAULT_CONVENTION
from .load import SEQUENCE_TITLES, SEQUENCES, find_sequences

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130


def _channels(text: str) -> list[str]:
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in SEQUENCES]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"channels must be a comma-separated list of {', '.join(SEQUENCES)}"
        )
    return items


def parse_window(text: str) -> int:
    """``--window``: 'whole' (or 0, as ``batch`` passes it on) is 0, else a size in voxels."""
    if text == "whole":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"expected 'whole' or a window size in voxels, not {text!r}"
        )
    return value


def add_window_option(parser: Any, help: str) -> None:
    """``--window N|whole`` (0 for whole), shared by segment, crossval and export."""
    parser.add_argument("--window", type=parse_window, default=None, metavar="N|whole", help=help)


def add_tta_options(parser: Any, on_help: str, off_help: str) -> None:
    """``--tta`` / ``--no-tta`` into ``tta``: True, False, or None when neither is given."""
    tta = parser.add_mutually_exclusive_group()
    tta.add_argument("--tta", action="store_const", const=True, default=None, help=on_help)
    tta.add_argument("--no-tta", dest="tta", action="store_const", const=False, help=off_help)


def add_model_default_options(parser: Any, prefix: str = "") -> None:
    """``--tta`` / ``--no-tta``, ``--components`` and ``--window``: override what
    ``model.json`` chose;
    :func:`model_default_overrides` turns them into ``segment`` arguments."""
    add_tta_options(
        parser,
        f"{prefix}mirroring test-time augmentation: 8 network passes averaged "
        "(default: the model's own setting in model.json)",
        "one network pass",
    )
    parser.add_argument(
        "--components",
        choices=("largest", "all"),
        default=None,
        help=f"{prefix}keep only the largest tumour component, or all of them (multifocal "
        "tumours); default: the model's own setting in model.json",
    )
    add_window_option(
        parser,
        f"{prefix}run the network in overlapping windows of N^3 voxels of its working "
        "grid, or on the whole volume when memory allows (whole); default: the model's own "
        "setting in model.json",
    )


def model_default_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``segment``'s ``tta``, ``keep_largest_component`` and ``window`` from the options
    (None: the model's)."""
    largest = {None: None, "largest": True, "all": False}[args.components]
    return {"tta": args.tta, "keep_largest_component": largest, "window": args.window}


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The model and processing options, shared by ``segment`` and ``batch`` (which passes
    them on to each case as ``--option value``)."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="model package folder (model.onnx + model.json), or a .onnx/.keras/.h5 file "
        "(default: the bundled model)",
    )
    model.add_argument(
        "--channels",
        type=_channels,
        metavar="LIST",
        help="input channel order of a model file without model.json, e.g. flair,t1ce,t2",
    )
    options = parser.add_argument_group("options")
    options.add_argument(
        "--labels",
        choices=sorted(CONVENTIONS),
        default=DEFAULT_CONVENTION,
        help="label values written: brats2018 = 0/1/2/4 (default), brats2023 = 0/1/2/3",
    )
    options.add_argument(
        "--bias-correction",
        choices=("auto", "on", "off"),
        default="auto",
        help="N4 bias-field correction; auto follows how the model was trained",
    )
    options.add_argument(
        "--bias-backend",
        choices=BACKENDS,
        default=None,
        help="N4 implementation: ants (ANTsPy) or sitk (SimpleITK, as in 3D Slicer); "
        "default SimpleITK when installed (fits the sequences side by side), else ANTsPy",
    )
    add_model_default_options(options)
    options.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for inference and N4 (SimpleITK fits several sequences at once)",
    )
    options.add_argument(
        "--min-component-ml",
        type=float,
        default=None,
        metavar="ML",
        help="remove tumour islands smaller than this volume (mL); 0 keeps all "
        "(default: the model's own setting in model.json)",
    )
    options.add_argument(
        "--memory-budget-gb",
        type=float,
        default=None,
        metavar="GB",
        help="above this estimated memory, infer in overlapping windows (default 2)",
    )
    options.add_argument("--no-overlay", action="store_true", help="do not draw overlay.png")
    options.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write probabilities.nii.gz: the network's outputs on the output grid, "
        "one volume per region (or class), for trying other thresholds",
    )
    raw = parser.add_argument_group("raw clinical scans")
    raw.add_argument(
        "--raw",
        nargs="?",
        const="on",
        default="off",
        choices=("on", "off", "auto"),
        help="register, resample to 1 mm and skull-strip raw scanner series first "
        "(--raw = on; auto: only what the input needs; default off)",
    )
    raw.add_argument(
        "--save-intermediates",
        action="store_true",
        help="with --raw: also write the registered sequences and the brain mask",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``braintumorseg`` command."""
    parser = argparse.ArgumentParser(
        prog="braintumorseg",
        description="Segment brain gliomas (necrotic core, edema, enhancing tumour) on MRI.",
    )
    parser.add_argument("--version", action="version", version=f"BrainTumorSeg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    seg = commands.add_parser(
        "segment",
        help="segment one case",
        description="Segment one case given as four sequence files or a folder holding them.",
    )
    inputs = seg.add_argument_group("inputs (NIfTI .nii/.nii.gz or NRRD .nrrd/.nhdr)")
    for sequence in SEQUENCES:
        inputs.add_argument(
            f"--{sequence}", type=Path, metavar="FILE", help=f"{SEQUENCE_TITLES[sequence]} image"
        )
    inputs.add_argument(
        "--input-dir",
        type=Path,
        metavar="DIR",
        help="folder with the four sequences, BraTS names (CASE_t1ce.nii.gz, CASE-t1c.nii.gz)",
    )
    inputs.add_argument(
        "--stack",
        type=Path,
        metavar="FILE",
        help="one 4D file holding several sequences (e.g. a Medical Decathlon case)",
    )
    inputs.add_argument(
        "--stack-order",
        type=_channels,
        metavar="LIST",
        help="sequence of each volume in --stack, e.g. flair,t1,t1ce,t2 (Decathlon BRATS)",
    )
    inputs.add_argument(
        "--reference",
        choices=SEQUENCES,
        default=None,
        help="sequence whose voxel grid the segmentation is written on (default: t1ce)",
    )
    seg.add_argument(
        "--output", "-o", type=Path, required=True, metavar="DIR", help="output folder"
    )
    add_run_options(seg)
    output = seg.add_argument_group("progress")
    output.add_argument(
        "--progress-json",
        action="store_true",
        help="print progress as one JSON object per line on stdout (for the Slicer module)",
    )
    output.add_argument("--quiet", action="store_true", help="no progress bar")

    batch = commands.add_parser(
        "batch",
        help="segment every case folder of a folder",
        description="Segment each subfolder of INPUT_DIR that holds the four sequences into "
        "OUTPUT/<case>/. Failing cases do not stop the others; cases already done are skipped, "
        "so an interrupted batch resumes where it stopped. Writes OUTPUT/batch_status.csv.",
    )
    batch.add_argument("input_dir", type=Path, metavar="INPUT_DIR", help="folder of case folders")
    batch.add_argument(
        "--output", "-o", type=Path, required=True, metavar="DIR", help="output folder"
    )
    batch.add_argument(
        "--jobs", "-j", type=int, default=1, metavar="N", help="cases run at once (default 1)"
    )
    batch.add_argument(
        "--reference",
        choices=SEQUENCES,
        default=None,
        help="sequence whose voxel grid each segmentation is written on (default: t1ce)",
    )
    add_run_options(batch)
    batch.add_argument("--quiet", action="store_true", help="no progress bar or case lines")
    return parser


def _collect_inputs(args: argparse.Namespace) -> dict[str, Path]:
    given = {s: getattr(args, s) for s in SEQUENCES if getattr(args, s) is not None}
    if args.stack is not None:
        return given  # the stack holds the rest; segment() checks the combination
    if args.input_dir is not None:
        found = find_sequences(args.input_dir)
        found.update(given)  # explicit files override what the folder holds
        return found
    if not given:
        raise InputError("give the sequences with --t1 --t1ce --t2 --flair, --input-dir or --stack")
    return given


def _run_segment(args: argparse.Namespace) -> int:
    from .pipeline import segment
    from .progress import Progress

    mode = (
        "json"
        if args.progress_json
        else ("none" if args.quiet or not sys.stderr.isatty() else "bar")
    )
    progress = Progress(mode)
    try:
        inputs = _collect_inputs(args)
        bias = {"auto": None, "on": True, "off": False}[args.bias_correction]
        result = segment(
            inputs,
            args.output,
            model=args.model,
            channels=args.channels,
            reference=args.reference,
            labels=args.labels,
            bias_correction=bias,
            bias_backend=args.bias_backend,
            threads=args.threads,
            min_component_ml=args.min_component_ml,
            **model_default_overrides(args),
            memory_budget_gb=args.memory_budget_gb,
            overlay=not args.no_overlay,
            progress=progress,
            stack=args.stack,
            stack_order=args.stack_order,
            raw=args.raw,
            save_intermediates=args.save_intermediates,
            save_probabilities=args.save_probabilities,
        )
    except InputError as e:
        progress.fail(str(e))
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, CancelledError):
        progress.fail("interrupted; nothing was written")
        print("interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        message = "out of memory; try --memory-budget-gb 1 or close other programs"
        progress.fail(message)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    regions = result.report["regions_ml"]
    summary = ", ".join(f"{k} {v:.1f} mL" for k, v in regions.items())
    progress.finish(f"done: {summary}", outputs=result.report.get("outputs", {}))
    if not args.progress_json:
        for warning in result.report["warnings"]:
            print(f"warning: {warning}", file=sys.stderr)
        written = ", ".join(Path(p).name for p in result.outputs.values())
        print(f"{summary}\nwrote {args.output}/ ({written})")
    return 0


def _terminate(signum: int, frame: object) -> None:
    # SIGTERM (e.g. Cancel in Slicer) unwinds like Ctrl-C so staging folders get removed.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (0 ok, 2 bad input, 1 failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    if args.command == "segment":
        return _run_segment(args)
    if args.command == "batch":
        from .batch import run_batch_command

        return run_batch_command(args)
    parser.error(f"unknown command {args.command!r}")
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
