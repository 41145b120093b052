"""Raw clinical scans -> co-registered, 1 mm, skull-stripped sequences with a brain mask.

BraTS-trained models expect four co-registered, skull-stripped, 1 mm isotropic sequences; a
clinician's series are none of these. :func:`prepare_raw`:

1. keeps the reference sequence (T1ce by default) as the fixed image;
2. registers every other sequence to it rigidly (:mod:`register`, Mattes mutual information,
   starting from the scanner headers, blurred in mm so 5 mm slices do not matter);
3. resamples all sequences to 1 mm isotropic over the reference's field of view (one
   world-space resampling each, the registration folded into the moving image's affine);
4. strips the skull (:mod:`skullstrip`: the MNI152 brain mask carried over by an affine
   registration of the template to the T1, or to the T1ce without a T1).

The pipeline then preprocesses with this brain mask and restores the labels from the 1 mm grid
onto the reference's original grid. ``mode="auto"`` runs only the steps the input needs.
Registration that does not improve on the headers, or a sequence that ends up covering too
little of the brain, is an :class:`InputError`; doubtful results are warnings in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .conform import resample_to_grid
from .errors import InputError
from .geometry import Grid, zoomed_grid
from .load import SEQUENCE_TITLES, Volume
from .register import Registration, placed_grid, register
from .write import write_nifti

RAW_MODES = ("off", "on", "auto")
WORK_SPACING_MM = 1.0
# Registration sanity limits. Same-session series differ by head motion: a few degrees and
# millimetres. Much more is possible but worth a look; MI that got worse means failure.
WARN_ROTATION_DEG = 15.0
WARN_SHIFT_MM = 25.0
MI_WORSE_TOLERANCE = 0.01
WARN_MI = 0.25  # |Mattes MI| after registration below this: the images barely match
# Fraction of the brain a registered sequence must cover.
MIN_BRAIN_COVERAGE = 0.5
WARN_BRAIN_COVERAGE = 0.9
# "Looks skull-stripped": the volume's border is exactly zero and what is non-zero is about a
# brain's volume (a whole head is 3-5 L).
STRIPPED_MAX_ML = 2500.0
STRIPPED_BORDER_ZERO = 0.98

ProgressFn = Callable[[float, str], None]


@dataclass
class RawPrepared:
    """Sequences on the 1 mm working grid with their brain mask, and what was done."""

    images: dict[str, np.ndarray]
    grid: Grid
    brain_mask: np.ndarray
    registered: bool
    skull_stripped: bool
    registrations: dict[str, Registration] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def parse_raw_mode(value: str | bool | None) -> str:
    """Normalise ``raw`` arguments: True -> "on", False/None -> "off", else one of RAW_MODES."""
    if value is True:
        return "on"
    if value is None or value is False:
        return "off"
    mode = str(value).lower()
    if mode not in RAW_MODES:
        raise InputError(f"--raw must be one of {', '.join(RAW_MODES)}, not {value!r}")
    return mode


def looks_skull_stripped(volume: Volume) -> tuple[bool, str]:
    """Whether an image looks skull-stripped (BraTS-like): zero border, brain-sized content."""
    array = volume.array
    faces = [array[0], array[-1], array[:, 0], array[:, -1], array[:, :, 0], array[:, :, -1]]
    border_zero = float(np.mean(np.concatenate([f.ravel() == 0 for f in faces])))
    content_ml = float(np.count_nonzero(array) * volume.grid.voxel_volume_ml)
    stripped = border_zero >= STRIPPED_BORDER_ZERO and content_ml <= STRIPPED_MAX_ML
    reason = f"border {border_zero:.0%} exactly zero, {content_ml:.0f} mL non-zero"
    return stripped, reason


def needed_steps(volumes: dict[str, Volume], reference: str) -> dict[str, Any]:
    """What ``auto`` would do: registration when grids differ, skull stripping when not stripped."""
    ref = volumes[reference]
    moved = [s for s, v in volumes.items() if s != reference and not v.grid.same_as(ref.grid)]
    checks = {s: looks_skull_stripped(v) for s, v in volumes.items()}
    not_stripped = [s for s, (ok, _) in checks.items() if not ok]
    return {
        "register": bool(moved),
        "skull_strip": bool(not_stripped),
        "sequences_on_other_grids": moved,
        "not_skull_stripped": not_stripped,
        "stripped_checks": {s: reason for s, (_, reason) in checks.items()},
    }


def working_grid(reference: Grid) -> Grid:
    """1 mm isotropic grid over the reference's field of view, in its orientation."""
    return zoomed_grid(reference, np.full(3, WORK_SPACING_MM))


def field_of_view(other: Grid, grid: Grid) -> np.ndarray:
    """Voxels of ``grid`` that lie inside ``other``'s field of view."""
    return resample_to_grid(np.ones(other.shape, np.uint8), other, grid, order=0) > 0


def brain_coverage(mask: np.ndarray, inside: np.ndarray) -> float:
    """Fraction of the brain mask's voxels that are ``inside`` (a field of view)."""
    total = int(mask.sum())
    return float((inside & mask).sum() / total) if total else 0.0


def _check_registration(name: str, reg: Registration, centre: np.ndarray) -> list[str]:
    """Raise for a registration that failed; return warnings for doubtful ones."""
    warnings = []
    if reg.metric_after > reg.metric_before + MI_WORSE_TOLERANCE:
        raise InputError(
            f"registration of {name} to the reference failed to converge: mutual information "
            f"{-reg.metric_after:.3f} after vs {-reg.metric_before:.3f} from the headers"
        )
    shift = float(reg.displacement_mm(centre[None])[0])
    if reg.rotation_deg > WARN_ROTATION_DEG or shift > WARN_SHIFT_MM:
        warnings.append(
            f"registration moved {name} by {reg.rotation_deg:.1f} degrees and {shift:.1f} mm "
            "at the image centre, more than head motion between series usually is; "
            "check the registered images (--save-intermediates) and the overlay"
        )
    if abs(reg.metric_after) < WARN_MI:
        warnings.append(
            f"{name} matches the reference poorly after registration (mutual information "
            f"{-reg.metric_after:.3f}); is it the same patient and session?"
        )
    return warnings


def prepare_raw(
    volumes: dict[str, Volume],
    reference: str,
    *,
    mode: str = "on",
    progress: ProgressFn | None = None,
) -> RawPrepared | None:
    """Register, resample and skull-strip ``volumes``; None when ``auto`` finds nothing to do."""
    import time

    report = progress or (lambda fraction, message: None)
    mode = parse_raw_mode(mode)
    if mode == "off":
        return None
    needs = needed_steps(volumes, reference)
    do_register = mode == "on" or needs["register"]
    do_strip = mode == "on" or needs["skull_strip"]
    if not (do_register or do_strip):
        return None
    ref = volumes[reference]
    grid = working_grid(ref.grid)
    centre = grid.affine[:3, :3] @ ((np.array(grid.shape) - 1) / 2) + grid.affine[:3, 3]
    warnings: list[str] = []
    timings: dict[str, float] = {}
    registrations: dict[str, Registration] = {}
    placed: dict[str, Grid] = {reference: ref.grid}

    started = time.perf_counter()
    others = [s for s in volumes if s != reference]
    for n, seq in enumerate(others):
        volume = volumes[seq]
        if not do_register:
            placed[seq] = volume.grid
            continue
        report(0.6 * n / max(1, len(others)), f"registering {SEQUENCE_TITLES[seq]}")
        reg = register(ref.array, ref.grid, volume.array, volume.grid)
        warnings += _check_registration(SEQUENCE_TITLES[seq], reg, centre)
        registrations[seq] = reg
        placed[seq] = placed_grid(volume.grid, reg.matrix)
    timings["register"] = time.perf_counter() - started

    started = time.perf_counter()
    report(0.6, "resampling to 1 mm")
    images = {
        seq: resample_to_grid(volume.array, placed[seq], grid, order=1)
        for seq, volume in volumes.items()
    }
    timings["resample"] = time.perf_counter() - started

    started = time.perf_counter()
    strip_info: dict[str, Any] = {}
    if do_strip:
        from .skullstrip import PITCH_STARTS_DEG, strip_skull

        source = "t1" if "t1" in images else reference
        report(0.7, f"skull stripping ({SEQUENCE_TITLES[source]} to the MNI152 template)")
        stripped = strip_skull(images[source], grid)
        mask = stripped.mask
        warnings += stripped.warnings
        strip_info = {
            "method": "MNI152 2009 brain mask, affine registration from "
            f"{len(PITCH_STARTS_DEG)} head-pitch starts, the best fit kept (nilearn package data)",
            "image": source,
            "brain_volume_ml": round(stripped.volume_ml, 1),
            "registration_s": round(stripped.registration.seconds, 2),
            "start_pitch_deg": stripped.start_pitch,
            "start_mutual_information": {  # higher = better, as for the sequences
                f"{pitch:+g}": round(-mi, 4) for pitch, mi in stripped.start_metrics.items()
            },
        }
    else:
        mask = np.zeros(grid.shape, dtype=bool)
        for array in images.values():
            mask |= array != 0
    timings["skull_strip"] = time.perf_counter() - started
    if not mask.any():
        raise InputError("cannot find the brain in the images (the brain mask is empty)")

    coverage = {}
    for seq in volumes:
        inside = field_of_view(placed[seq], grid)
        fraction = brain_coverage(mask, inside)
        coverage[seq] = round(fraction, 3)
        name = SEQUENCE_TITLES[seq]
        if fraction < MIN_BRAIN_COVERAGE:
            raise InputError(
                f"after registration {name} covers only {fraction:.0%} of the brain; "
                "the sequences barely overlap (different field of view or patient?)",
                volumes[seq].path,
            )
        if fraction < WARN_BRAIN_COVERAGE:
            warnings.append(
                f"{name} covers {fraction:.0%} of the brain after registration; the tumour "
                "may be missed where it is absent"
            )
        missing = mask & ~inside
        if missing.any():
            # Brain outside this sequence's field of view is missing data, not anatomy: zeros
            # there would z-score as very dark tissue, a median is neutral.
            images[seq][missing] = float(np.median(images[seq][mask & inside]))
    summary = {
        "mode": mode,
        "registered": do_register,
        "skull_stripped": do_strip,
        "auto_checks": needs,
        "working_grid": list(grid.shape),
        "working_spacing_mm": WORK_SPACING_MM,
        "registration": {
            seq: {
                "rotation_deg": round(reg.rotation_deg, 2),
                "shift_at_centre_mm": round(float(reg.displacement_mm(centre[None])[0]), 2),
                "mutual_information_headers": round(-reg.metric_before, 4),
                "mutual_information_registered": round(-reg.metric_after, 4),
                "seconds": round(reg.seconds, 2),
                "matrix_ras": np.round(reg.matrix, 6).tolist(),
            }
            for seq, reg in registrations.items()
        },
        "brain_coverage": coverage,
        "skull_strip": strip_info,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
    }
    return RawPrepared(
        images=images,
        grid=grid,
        brain_mask=mask,
        registered=do_register,
        skull_stripped=do_strip,
        registrations=registrations,
        summary=summary,
        warnings=warnings,
        timings=timings,
    )


def write_intermediates(prepared: RawPrepared, folder: Path) -> dict[str, Path]:
    """Registered 1 mm sequences and the brain mask as NIfTI files, for inspection."""

    folder.mkdir(parents=True, exist_ok=True)
    affine = prepared.grid.affine
    paths = {}
    items = [(f"registered_{s}", a.astype(np.float32)) for s, a in prepared.images.items()]
    items.append(("brain_mask", prepared.brain_mask.astype(np.uint8)))
    for name, array in items:
        paths[name] = write_nifti(folder / f"{name}.nii.gz", array, affine)
    return paths
