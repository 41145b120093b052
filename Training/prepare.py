"""``prepare``: run the core's preprocessing once per case and cache the arrays on disk.

Cache layout (one folder per preprocessing configuration, named by its hash)::

    <cache>/<key>/manifest.json        model fields used + one entry per case
    <cache>/<key>/<case>_image.npy     float32 (X, Y, Z, C) network input (memory-mappable)
    <cache>/<key>/<case>_labels.npy    uint8 class indices 0..3 on the same working grid
    <cache>/<key>/<case>_tumour.npy    int16 (N, 3) coordinates of (a sample of) tumour voxels

Cases already in the manifest are skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from BrainTumorSegLib.bias import available_backend
from BrainTumorSegLib.conform import resample_to_grid
from BrainTumorSegLib.labels import NUM_CLASSES, convention_to_classes, region_mask
from BrainTumorSegLib.load import load_volume
from BrainTumorSegLib.model import ModelSpec
from BrainTumorSegLib.preprocess import PREPROCESSING_VERSION, labels_to_working, preprocess

from .config import PREPROCESSING_FIELDS, Config
from .dataset import Case, detect_convention, find_cases

MANIFEST = "manifest.json"
MAX_TUMOUR_POINTS = 20000  # enough to sample patch centres; keeps the file small


def cache_dir(cache_root: str | Path, config: Config) -> Path:
    """The cache folder for ``config``'s preprocessing settings."""
    return Path(cache_root) / config.preprocessing_key()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The manifest of a cache folder (empty when there is none yet)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return {"cases": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def _temporary_beside(path: Path) -> Path:
    """A new file next to ``path``, unique to this writer.

    Two runs sharing a cache (``crossval --only`` of different folds side by side) write the
    same manifest; a fixed temporary name would let one rename the other's file away.
    """
    return path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = _temporary_beside(path)
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees a half-written manifest


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = _temporary_beside(path)
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def prepare_case(
    case: Case, spec_dict: dict[str, Any], out_dir: str, convention: str
) -> dict[str, Any]:
    """Preprocess one case into ``out_dir``; returns its manifest entry. Runs in a worker."""
    start = time.perf_counter()
    spec = ModelSpec.from_dict(spec_dict)
    volumes = {name: load_volume(case.images[name]) for name in spec.channels}
    reference = volumes[spec.channels[0]].grid
    images = {}
    for name, volume in volumes.items():
        same = volume.grid.same_as(reference)
        images[name] = (
            volume.array if same else resample_to_grid(volume.array, volume.grid, reference)
        )
    label_volume = load_volume(case.labels)
    raw = np.rint(label_volume.array).astype(np.int16)
    used = detect_convention(raw, case.labels) if convention == "auto" else convention
    classes = convention_to_classes(raw, used)
    pre = preprocess(images, reference, spec, threads=1)  # cases already run in parallel workers
    working = labels_to_working(classes, label_volume.grid, pre.grid)
    folder = Path(out_dir)
    _save_npy_atomic(folder / f"{case.case_id}_image.npy", pre.array.astype(np.float32))
    _save_npy_atomic(folder / f"{case.case_id}_labels.npy", working.astype(np.uint8))
    tumour = np.argwhere(working > 0)
    if len(tumour) > MAX_TUMOUR_POINTS:
        keep = np.random.default_rng(0).choice(len(tumour), MAX_TUMOUR_POINTS, replace=False)
        tumour = tumour[np.sort(keep)]
    _save_npy_atomic(folder / f"{case.case_id}_tumour.npy", tumour.astype(np.int16))
    voxel_ml = label_volume.grid.voxel_volume_ml
    return {
        "case_id": case.case_id,
        "images": {k: str(v) for k, v in case.images.items()},
        "labels": str(case.labels),
        "grade": case.grade,
        "label_convention": used,
        # Which N4 ran (None: no N4): the two backends agree closely but not bit for bit.
        "bias_backend": pre.bias_backend,
        "shape": list(pre.array.shape),
        "class_voxels": np.bincount(working.ravel(), minlength=NUM_CLASSES).tolist(),
        "regions_ml": {
            r: float(region_mask(classes, r).sum() * voxel_ml) for r in ("ET", "TC", "WT")
        },
        "seconds": round(time.perf_counter() - start, 2),
    }


def check_bias_backend(folder: Path, done: dict[str, Any], config: Config) -> None:
    """Refuse to add cases corrected by another N4 backend than the cached ones: the two agree
    closely but not bit for bit, and one training set should not mix them. Entries written
    before the manifest named the backend are not checked."""
    if not config.model.get("bias_correction"):
        return
    current = available_backend()
    cached = sorted({e["bias_backend"] for e in done.values() if e.get("bias_backend")} - {current})
    if cached:
        raise ValueError(
            f"{folder} holds cases corrected with the {', '.join(cached)} N4 backend, but "
            f"{current} would correct the new ones; install the same backend or prepare into "
            "another --cache folder"
        )


def prepare_dataset(
    dataset: str | Path,
    cache_root: str | Path,
    config: Config,
    *,
    workers: int | None = None,
    convention: str = "auto",
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Preprocess every case of ``dataset`` not yet cached; returns the cache folder."""
    from tqdm import tqdm

    cases = find_cases(dataset)[:limit] if limit else find_cases(dataset)
    folder = cache_dir(cache_root, config)
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    manifest["model"] = {k: config.model[k] for k in PREPROCESSING_FIELDS}
    manifest["preprocessing_version"] = PREPROCESSING_VERSION
    manifest["dataset"] = str(Path(dataset).resolve())
    done = manifest["cases"]
    todo = [
        c
        for c in cases
        if c.case_id not in done or not (folder / f"{c.case_id}_labels.npy").is_file()
    ]
    if todo:  # a complete cache is reused whatever is installed now
        check_bias_backend(folder, done, config)
    bar = tqdm(
        total=len(cases),
        initial=len(cases) - len(todo),
        unit="case",
        disable=not progress,
        desc="prepare",
    )
    workers = max(1, min(workers or (os.cpu_count() or 1), len(todo) or 1))
    spec_dict = config.model
    if workers == 1:
        results = (prepare_case(c, spec_dict, str(folder), convention) for c in todo)
        for entry in results:
            done[entry["case_id"]] = entry
            _write_json_atomic(folder / MANIFEST, manifest)
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(prepare_case, c, spec_dict, str(folder), convention) for c in todo
            ]
            for future in as_completed(futures):
                entry = future.result()
                done[entry["case_id"]] = entry
                _write_json_atomic(folder / MANIFEST, manifest)  # progress survives interruption
                bar.update()
    bar.close()
    _write_json_atomic(folder / MANIFEST, manifest)
    return folder
