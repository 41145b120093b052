"""The whole segmentation, from files to files: the function behind the CLI and the Slicer module.

load -> validate -> conform -> preprocess -> infer -> postprocess -> restore -> write.
Everything that can be checked is checked before any output is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .bias import SEGMENT_ORDER, available_backend
from .conform import resample_to_grid
from .errors import InputError
from .geometry import Grid
from .infer import check_run_memory, load_backend, predict_volume
from .labels import CONVENTIONS, DEFAULT_CONVENTION
from .load import SEQUENCE_TITLES, SEQUENCES, Volume, check_stack_order, load_stack, load_volume
from .model import ModelSpec, resolve_model, with_window
from .postprocess import (
    clean_components,
    clear_outside_brain,
    foreground_channels,
    keep_components_overlapping,
    labels_from_output,
    output_channel_names,
    remove_small_components,
)
from .preprocess import brain_mask, preprocess
from .progress import Progress
from .raw import parse_raw_mode, prepare_raw, write_intermediates
from .report import build_report
from .restore import restore_to_input_grid
from .validate import check_distinct_files, check_intensities, check_overlap
from .write import (
    OVERLAY_PNG,
    PROBABILITIES_NIFTI,
    REPORT_JSON,
    SEGMENTATION_NIFTI,
    SEGMENTATION_SEG_NRRD,
    check_output_dir,
    staged_output,
    write_json,
    write_label_nifti,
    write_probabilities,
    write_seg_nrrd,
)

INTERMEDIATES_DIR = "intermediates"


@dataclass
class SegmentationResult:
    """Class indices 0..3 (uint8, [i, j, k]) on the reference input's grid, and the report."""

    classes: np.ndarray
    grid: Grid
    report: dict[str, Any]
    outputs: dict[str, Path] = field(default_factory=dict)


def _choose_reference(reference: str | None, inputs: dict[str, Path], spec: ModelSpec) -> str:
    if reference is None:
        reference = "t1ce" if "t1ce" in inputs else spec.channels[0]
    if reference not in SEQUENCES:
        raise InputError(f"--reference must be one of {', '.join(SEQUENCES)}, not {reference!r}")
    if reference not in inputs:
        raise InputError(f"the reference sequence {SEQUENCE_TITLES[reference]} was not given")
    return reference


def segment(
    inputs: dict[str, str | Path],
    output_dir: str | Path | None = None,
    *,
    model: str | Path | ModelSpec | None = None,
    channels: list[str] | None = None,
    reference: str | None = None,
    labels: str = DEFAULT_CONVENTION,
    bias_correction: bool | None = None,
    bias_backend: str | None = None,
    tta: bool | None = None,
    threads: int | None = None,
    min_component_ml: float | None = None,
    keep_largest_component: bool | None = None,
    window: int | None = None,
    memory_budget_gb: float | None = None,
    overlay: bool = True,
    progress: Progress | None = None,
    cancelled: Callable[[], bool] | None = None,
    stack: str | Path | None = None,
    stack_order: list[str] | None = None,
    raw: str | bool = "off",
    save_intermediates: bool = False,
    save_probabilities: bool = False,
) -> SegmentationResult:
    """Segment a glioma from MRI files; write outputs to ``output_dir`` when given.

    ``inputs`` maps sequence names ("t1", "t1ce", "t2", "flair") to image files; the model's
    channels must all be present. ``stack`` is a 4D file holding several sequences, in the
    order ``stack_order`` declares (e.g. a Medical Decathlon case: flair, t1, t1ce, t2).
    ``raw`` "on" registers, resamples and skull-strips raw scanner series first (:mod:`raw`),
    "auto" only what the input needs; ``save_intermediates`` then also writes the registered
    1 mm sequences and the brain mask. ``save_probabilities`` also writes the network's
    restored outputs (:data:`PROBABILITIES_NIFTI`), from which other region thresholds can be
    tried without running the network again. ``tta``, ``min_component_ml``,
    ``keep_largest_component`` and ``window`` (network windows of ``window``³ working voxels,
    0 for the whole volume) None take the model's own defaults (``model.json``);
    ``bias_correction`` None too (N4 if the model was trained with it). ``bias_backend`` picks
    the N4 implementation, "ants" or "sitk" (None: SimpleITK when installed, else ANTsPy).
    Returns class indices on the reference input's grid.
    Raises :class:`InputError` for bad input before anything is written.
    """
    progress = progress or Progress()
    warnings: list[str] = []
    if labels not in CONVENTIONS:
        raise InputError(f"--labels must be one of {', '.join(CONVENTIONS)}, not {labels!r}")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, not {threads}")
    if min_component_ml is not None and not min_component_ml >= 0:
        raise InputError(f"--min-component-ml must be 0 or more, not {min_component_ml}")
    raw_mode = parse_raw_mode(raw)
    paths = {seq: Path(p) for seq, p in inputs.items() if p is not None}
    unknown = sorted(set(paths) - set(SEQUENCES))
    if unknown:
        raise InputError(f"unknown sequence names {unknown}; use {', '.join(SEQUENCES)}")
    stack_order = list(stack_order or [])
    if stack is not None:
        check_stack_order(stack_order, stack)
        twice = [SEQUENCE_TITLES[s] for s in stack_order if s in paths]
        if twice:
            raise InputError(f"{', '.join(twice)} given both in the stack and as a file", stack)
        paths.update({seq: Path(stack) for seq in stack_order})

    with progress.stage("load", "loading model and images") as update:
        spec = model if isinstance(model, ModelSpec) else resolve_model(model, channels)
        missing = [SEQUENCE_TITLES[c] for c in spec.channels if c not in paths]
        if missing:
            raise InputError(f"model {spec.name!r} needs {', '.join(missing)}, which was not given")
        reference = _choose_reference(reference, paths, spec)
        if min_component_ml is None:
            min_component_ml = spec.min_component_ml
        if keep_largest_component is None:
            keep_largest_component = spec.keep_largest_component
        if tta is None:
            tta = spec.test_time_augmentation
        apply_n4 = spec.bias_correction if bias_correction is None else bias_correction
        if apply_n4:
            try:  # before any heavy work: a missing or unknown N4 backend is the user's to fix
                bias_backend = available_backend(bias_backend, SEGMENT_ORDER)
            except (ValueError, RuntimeError) as e:
                raise InputError(str(e)) from e
        spec = with_window(spec, window)
        used = {seq: paths[seq] for seq in SEQUENCES if seq in spec.channels or seq == reference}
        check_distinct_files({s: p for s, p in used.items() if s not in stack_order})
        if output_dir is not None:
            check_output_dir(Path(output_dir), list(used.values()))
        backend = load_backend(spec, threads)
        volumes: dict[str, Volume] = {}
        stacked = load_stack(stack, stack_order) if stack is not None else {}
        for n, (seq, path) in enumerate(used.items()):
            update(n / len(used), f"reading {path.name}")
            volumes[seq] = stacked[seq] if seq in stacked else load_volume(path)
            warnings += volumes[seq].warnings
        del stacked
        # Before any heavy work: refuse, saying how much is needed, if this cannot fit.
        ref_grid = volumes[reference].grid
        check_run_memory(
            ref_grid.shape, tuple(ref_grid.spacing), len(volumes), spec, memory_budget_gb
        )

    with progress.stage("validate", "checking images"):
        ref = volumes[reference]
        for seq, volume in volumes.items():
            check_intensities(volume, seq)
            if seq != reference:
                check_overlap(ref, volume, seq)

    raw_prepared = None
    with progress.stage("conform", "aligning sequences to the reference grid") as update:
        if raw_mode != "off":
            raw_prepared = prepare_raw(volumes, reference, mode=raw_mode, progress=update)
            if raw_prepared is None:
                warnings.append("raw mode auto: the input looks co-registered and skull-stripped")
        if raw_prepared is not None:
            images, work_grid = raw_prepared.images, raw_prepared.grid
            warnings += raw_prepared.warnings
        else:
            images, work_grid = {}, ref.grid
            for seq, volume in volumes.items():
                if volume.grid.same_as(ref.grid):
                    images[seq] = volume.array
                else:
                    # Not an error: scanners write each series on its own grid.
                    warnings.append(
                        f"{SEQUENCE_TITLES[seq]} was resampled onto the "
                        f"{SEQUENCE_TITLES[reference]} grid (its grid {volume.grid.shape} "
                        f"differs from {ref.grid.shape} or is moved)"
                    )
                    images[seq] = resample_to_grid(volume.array, volume.grid, ref.grid, order=1)
    if save_intermediates and raw_prepared is None:
        warnings.append("--save-intermediates writes files only when the raw path runs")

    model_n4 = spec.bias_correction
    if bias_correction is not None and bias_correction != model_n4:
        warnings.append(
            f"bias correction {'on' if bias_correction else 'off'} departs from the model's "
            f"training ({'with' if model_n4 else 'without'} N4); results may differ"
        )
    with progress.stage("preprocess", "preprocessing") as update:
        try:
            prepared = preprocess(
                images,
                work_grid,
                spec,
                bias_correction=bias_correction,
                bias_backend=bias_backend,
                progress=update,
                brain_mask=raw_prepared.brain_mask if raw_prepared is not None else None,
                threads=threads,
            )
        except ValueError as e:  # an empty brain mask after masking
            raise InputError(f"cannot find the brain in the images ({e})", ref.path) from e

    ran: dict[str, Any] = {}
    with progress.stage("infer", "running the network") as update:
        output = predict_volume(
            backend,
            prepared.array,
            spec,
            tta=tta,
            memory_budget_gb=memory_budget_gb,
            progress=update,
            cancelled=cancelled,
            used=ran,
        )
        foreground = foreground_channels(output, spec)
        del output

    with progress.stage("restore", "restoring to the input grid"):
        restored = restore_to_input_grid(foreground, prepared.grid, ref.grid)

    with progress.stage("postprocess", "labelling"):
        classes = labels_from_output(restored, spec)
        if raw_prepared is None:
            brain = brain_mask({c: images[c] for c in spec.channels})
        else:
            mask = raw_prepared.brain_mask.astype(np.uint8)
            brain = resample_to_grid(mask, work_grid, ref.grid, order=0) > 0
        # Zero outside the brain, as the labels are: thresholding the file gives them back.
        probabilities = restored * brain if save_probabilities else None
        del restored
        if raw_prepared is not None:
            # The 1 mm labels drive the overlay and the intermediates: thick slices look poor.
            work_classes = labels_from_output(
                restore_to_input_grid(foreground, prepared.grid, work_grid), spec
            )
            work_classes = clear_outside_brain(work_classes, raw_prepared.brain_mask)
        classes = clear_outside_brain(classes, brain)
        classes, removed_ml = clean_components(
            classes, ref.grid, min_component_ml, keep_largest_component
        )
        if raw_prepared is not None:
            work_classes = remove_small_components(work_classes, work_grid, min_component_ml)
            if keep_largest_component:
                # The output grid decides which lesion is kept; the 1 mm labels follow it, so
                # that the overlay and the intermediates show what segmentation.nii.gz holds.
                kept = resample_to_grid(
                    (classes > 0).astype(np.uint8), ref.grid, work_grid, order=0
                )
                work_classes = keep_components_overlapping(work_classes, kept > 0)
        if removed_ml:
            kept_ml = float(np.count_nonzero(classes)) * ref.grid.voxel_volume_ml
            sizes = ", ".join(f"{v:.1f}" for v in removed_ml[:5])
            more = f" and {len(removed_ml) - 5} more" if len(removed_ml) > 5 else ""
            warnings.append(
                f"kept the largest tumour component ({kept_ml:.1f} mL) and removed "
                f"{len(removed_ml)} other component(s) of {sizes}{more} mL; for a multifocal "
                "tumour run again keeping all components (--components all; in Slicer, "
                "Tumour components: all)"
            )

    settings = {
        "bias_correction": prepared.bias_corrected,
        "bias_backend": prepared.bias_backend,
        "test_time_augmentation": tta,
        # What ran: the model's window can be cut to the volume or to the available memory.
        "inference_window": ran.get("window"),
        "threads": threads or os.cpu_count(),
        "min_component_ml": min_component_ml,
        "keep_largest_component": keep_largest_component,
        "removed_components_ml": [round(v, 3) for v in removed_ml],
        "working_grid": list(prepared.grid.shape),
        "working_spacing_mm": [round(float(s), 4) for s in prepared.grid.spacing],
        "raw": raw_mode,
    }
    report = build_report(
        version=__version__,
        spec=spec,
        inputs=used,
        reference=reference,
        grid=ref.grid,
        classes=classes,
        convention=labels,
        settings=settings,
        timings=progress.timings,
        warnings=warnings,
    )
    if raw_prepared is not None:
        report["raw"] = raw_prepared.summary
    result = SegmentationResult(classes=classes, grid=ref.grid, report=report)
    if output_dir is None:
        return result

    output_dir = Path(output_dir)
    with progress.stage("write", "writing outputs") as update:
        write_started = time.perf_counter()
        files = {
            "segmentation": SEGMENTATION_NIFTI,
            "seg_nrrd": SEGMENTATION_SEG_NRRD,
            "report": REPORT_JSON,
        }
        if probabilities is not None:
            files["probabilities"] = PROBABILITIES_NIFTI
            report["probability_channels"] = output_channel_names(spec)
        if overlay:
            files["overlay"] = OVERLAY_PNG
        if save_intermediates and raw_prepared is not None:
            files["intermediates"] = INTERMEDIATES_DIR
        report["outputs"] = {key: str((output_dir / name).resolve()) for key, name in files.items()}
        with staged_output(output_dir) as staging:
            write_label_nifti(staging / SEGMENTATION_NIFTI, classes, ref.grid, labels)
            update(0.2, "segmentation.seg.nrrd")
            write_seg_nrrd(staging / SEGMENTATION_SEG_NRRD, classes, ref.grid)
            if probabilities is not None:
                update(0.3, "probabilities.nii.gz")
                write_probabilities(staging / PROBABILITIES_NIFTI, probabilities, ref.grid)
            if overlay:
                from .overlay import render_overlay

                update(0.4, "overlay.png")
                render_overlay(
                    staging / OVERLAY_PNG,
                    {seq: images[seq] for seq in SEQUENCES if seq in images},
                    classes if raw_prepared is None else work_classes,
                    work_grid,
                    title=f"BrainTumorSeg {__version__} - {spec.name} {spec.version}",
                    extra_mask=raw_prepared.brain_mask if raw_prepared is not None else None,
                )
            if save_intermediates and raw_prepared is not None:
                update(0.6, "intermediates")
                folder = staging / INTERMEDIATES_DIR
                write_intermediates(raw_prepared, folder)
                write_label_nifti(
                    folder / "segmentation_1mm.nii.gz", work_classes, work_grid, labels
                )
            # The report cannot time its own writing; it records the write stage up to here.
            write_s = round(time.perf_counter() - write_started, 3)
            report["timings_s"] = {**progress.timings, "write": write_s}
            write_json(staging / REPORT_JSON, report)
    report["timings_s"] = dict(progress.timings)
    result.outputs = {key: Path(value) for key, value in report["outputs"].items()}
    return result
