"""Accuracy and runtime of the raw-scan path on raw-like BraTS cases with known truth.

    .venv/bin/python Benchmarks/raw_benchmark.py                      # 4 cases, default model
    .venv/bin/python Benchmarks/raw_benchmark.py --cases all --model PATH --json out.json
    .venv/bin/python Benchmarks/raw_benchmark.py --no-model           # registration + stripping

Each labelled BraTS case (skull-stripped, co-registered, 1 mm) is turned into a raw-like one by
:mod:`BrainTumorSegLib.rawlike`: pasted into a synthetic head (CSF, skull with marrow, scalp),
and every sequence moved by its own rigid motion and resliced onto its own oblique grid with
5 mm slices. Then, per case:

- registration error (mm): mean and max distance, over the true brain on the T1ce grid,
  between where the estimated and the true transforms send each point, for T1, T2, FLAIR;
- brain-mask Dice of the skull stripping against the true BraTS brain (non-zero voxels);
- with a model: Dice (WT, TC, ET) of ``segment --raw`` on the T1ce raw grid against the
  truth resampled there, next to the Dice of the normal path on the original BraTS case;
- the time of each stage.

Runs are single-threaded-noisy on shared machines; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "BrainTumorSeg"))

from BrainTumorSegLib.load import Volume, load_volume  # noqa: E402
from BrainTumorSegLib.rawlike import make_rawlike, write_rawlike  # noqa: E402

SEQUENCES = ("t1", "t1ce", "t2", "flair")
DATA = Path(os.environ.get("BRAINTUMORSEG_DATA", ROOT.parent / "shared" / "data"))
DEFAULT_CASES = (
    "Brats18_2013_3_1",
    "Brats18_CBICA_ABM_1",
    "Brats18_TCIA01_201_1",
    "Brats18_TCIA10_628_1",
)
REGIONS = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def region_dice(classes: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice per BraTS region; both arrays hold class indices 0..3."""
    return {
        name: round(dice(np.isin(classes, ids), np.isin(truth, ids)), 4)
        for name, ids in REGIONS.items()
    }


def registration_error(case, reference: str, matrices: dict[str, np.ndarray], grid) -> dict:
    """Mean / max error (mm) of each registration over the true brain on ``grid``."""
    brain = case.truth_on(case.brain_mask.astype(np.uint8), reference, grid) > 0
    points = np.argwhere(brain)[::20] @ grid.affine[:3, :3].T + grid.affine[:3, 3]
    out = {}
    for sequence, matrix in matrices.items():
        truth = case.true_registration(reference, sequence)
        expected = points @ truth[:3, :3].T + truth[:3, 3]
        found = points @ matrix[:3, :3].T + matrix[:3, 3]
        error = np.linalg.norm(found - expected, axis=1)
        start = np.linalg.norm(points - expected, axis=1)
        out[sequence] = {
            "mean_mm": round(float(error.mean()), 3),
            "max_mm": round(float(error.max()), 3),
            "misalignment_before_mm": round(float(start.mean()), 2),
        }
    return out


def load_case(folder: Path) -> tuple[dict[str, Volume], np.ndarray]:
    name = folder.name
    volumes = {s: load_volume(folder / f"{name}_{s}.nii.gz") for s in SEQUENCES}
    labels = load_volume(folder / f"{name}_seg.nii.gz").array.astype(np.uint8)
    labels[labels == 4] = 3  # BraTS 2018 ET label -> class index
    return volumes, labels


def run_case(folder: Path, model: str | None, seed: int, workdir: Path) -> dict:
    from BrainTumorSegLib.raw import prepare_raw

    volumes, labels = load_case(folder)
    grid = volumes["t1ce"].grid
    brain = np.any([v.array != 0 for v in volumes.values()], axis=0)
    started = time.perf_counter()
    case = make_rawlike(
        {s: v.array for s, v in volumes.items()}, brain, grid, labels=labels, seed=seed
    )
    row: dict = {"case": folder.name, "make_rawlike_s": round(time.perf_counter() - started, 1)}
    raw_dir = workdir / folder.name
    paths = write_rawlike(case, raw_dir, folder.name)

    if model is None:
        raw_volumes = {s: load_volume(paths[s]) for s in SEQUENCES}
        started = time.perf_counter()
        prepared = prepare_raw(raw_volumes, "t1ce", mode="on")
        row["raw_preparation_s"] = round(time.perf_counter() - started, 1)
        row["stages_s"] = {k: round(v, 1) for k, v in prepared.timings.items()}
        mask, mask_grid = prepared.brain_mask, prepared.grid
        matrices = {s: r.matrix for s, r in prepared.registrations.items()}
    else:
        import nibabel as nib

        from BrainTumorSegLib import segment

        out = workdir / f"{folder.name}_out"
        started = time.perf_counter()
        result = segment(
            {s: paths[s] for s in SEQUENCES},
            out,
            model=model,
            raw="on",
            save_intermediates=True,
            overlay=False,
        )
        row["raw_path_total_s"] = round(time.perf_counter() - started, 1)
        row["stages_s"] = {
            **{k: round(v, 1) for k, v in result.report["timings_s"].items()},
            **{f"raw.{k}": round(v, 1) for k, v in result.report["raw"]["timings_s"].items()},
        }
        mask_img = nib.load(out / "intermediates" / "brain_mask.nii.gz")
        mask = np.asarray(mask_img.dataobj) > 0
        mask_grid = type(grid)(mask.shape, mask_img.affine)
        matrices = {
            s: np.array(r["matrix_ras"]) for s, r in result.report["raw"]["registration"].items()
        }
        truth_ref = case.truth_on(case.labels, "t1ce", result.grid)
        row["dice_raw"] = region_dice(result.classes, truth_ref)
        started = time.perf_counter()
        normal = segment(
            {s: folder / f"{folder.name}_{s}.nii.gz" for s in SEQUENCES}, None, model=model
        )
        row["normal_path_s"] = round(time.perf_counter() - started, 1)
        row["dice_normal"] = region_dice(normal.classes, labels)
    truth_mask = case.truth_on(case.brain_mask.astype(np.uint8), "t1ce", mask_grid) > 0
    row["brain_mask_dice"] = round(dice(mask, truth_mask), 4)
    row["brain_ml"] = {
        "estimated": round(float(mask.sum() * mask_grid.voxel_volume_ml), 1),
        "true": round(float(truth_mask.sum() * mask_grid.voxel_volume_ml), 1),
    }
    row["registration_error"] = registration_error(case, "t1ce", matrices, case.grids["t1ce"])
    return row


def print_table(rows: list[dict], with_model: bool) -> None:
    head = "| case | brain-mask Dice | reg. error mean / max (mm) T1, T2, FLAIR | raw path (s) |"
    if with_model:
        head += " Dice raw WT/TC/ET | Dice normal WT/TC/ET |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for row in rows:
        errors = ", ".join(
            f"{e['mean_mm']:.2f} / {e['max_mm']:.2f}" for e in row["registration_error"].values()
        )
        seconds = row.get("raw_path_total_s", row.get("raw_preparation_s"))
        line = f"| {row['case']} | {row['brain_mask_dice']:.3f} | {errors} | {seconds} |"
        if with_model:
            raw = "/".join(f"{row['dice_raw'][k]:.3f}" for k in REGIONS)
            normal = "/".join(f"{row['dice_normal'][k]:.3f}" for k in REGIONS)
            line += f" {raw} | {normal} |"
        print(line)
    dices = [r["brain_mask_dice"] for r in rows]
    errors = [e["mean_mm"] for r in rows for e in r["registration_error"].values()]
    print(
        f"\nmean brain-mask Dice {np.mean(dices):.3f} (min {np.min(dices):.3f}); "
        f"mean registration error {np.mean(errors):.2f} mm (max of means {np.max(errors):.2f})"
    )
    if with_model:
        for key in ("dice_raw", "dice_normal"):
            means = {k: np.mean([r[key][k] for r in rows]) for k in REGIONS}
            print(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in means.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help="names, or 'all'")
    parser.add_argument("--model", default=None, help="model package (default: bundled model)")
    parser.add_argument("--no-model", action="store_true", help="skip segmentation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = parser.parse_args(argv)

    from BrainTumorSegLib.model import default_model_path

    model = None
    if not args.no_model:
        model = args.model or (str(default_model_path()) if default_model_path() else None)
        if model is None:
            print("no model given and none bundled: measuring registration and skull stripping")
    brats = DATA / "brats"
    names = (
        sorted(p.name for p in brats.iterdir() if p.is_dir())
        if args.cases == "all"
        else args.cases.split(",")
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, name in enumerate(names):
            print(f"[{n + 1}/{len(names)}] {name} (load average {os.getloadavg()[0]:.1f})")
            row = run_case(brats / name, model, args.seed + n, Path(tmp))
            print(json.dumps(row))
            rows.append(row)
    print()
    print_table(rows, model is not None)
    if args.json:
        args.json.write_text(json.dumps({"model": model, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
