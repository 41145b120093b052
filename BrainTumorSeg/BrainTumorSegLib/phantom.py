"""Digital glioma phantom: a synthetic, skull-stripped four-sequence MRI case with ground truth.

Real patient scans may not be committed, so the demo command and many tests use a generated
case. The anatomy comes from the MNI152 2009 template that nilearn ships as package data
(brain mask and grey/white-matter probability maps; no download). A lobulated lesion is
placed in one hemisphere's white matter: a necrotic core, an enhancing rim 2-4 mm thick and
irregular edema that follows the white matter. Each sequence gets plausible tissue contrast,
a mild smooth bias field and Rician noise; the background outside the brain is exactly 0.

Everything geometric (tissue maps, lesion shape, bias field) is defined in world millimetres,
so a phantom generated on any grid, or resampled onto one, shows the same anatomy and the
same tumour at the same place. Only the voxel noise depends on the grid.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .geometry import Grid
from .labels import CONVENTIONS, LABEL_BY_KEY, classes_to_convention
from .load import SEQUENCES
from .write import write_nifti

# File name suffixes per layout; the case id is prepended.
LAYOUTS: dict[str, dict[str, str]] = {
    "brats2018": {"t1": "_t1", "t1ce": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1ce": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
}

NCR = LABEL_BY_KEY["NCR"].index
ED = LABEL_BY_KEY["ED"].index
ET = LABEL_BY_KEY["ET"].index

# Mean signal per tissue and sequence, in a scanner-like range. The ordering follows the
# usual appearance of a high-grade glioma: T1 WM > GM > CSF; T1ce like T1 with a very bright
# enhancing rim and a dark necrotic core; T2 CSF and oedema bright, WM dark; FLAIR like T2
# with the free water (CSF) suppressed, so oedema is the brightest tissue.
TISSUE_SIGNAL: dict[str, dict[str, float]] = {
    #        CSF     GM      WM      NCR     ED      ET
    "t1": {"csf": 350, "gm": 700, "wm": 950, "ncr": 400, "ed": 620, "et": 780},
    "t1ce": {"csf": 400, "gm": 750, "wm": 1000, "ncr": 380, "ed": 680, "et": 2000},
    "t2": {"csf": 2600, "gm": 1200, "wm": 750, "ncr": 2200, "ed": 1800, "et": 1400},
    "flair": {"csf": 250, "gm": 900, "wm": 650, "ncr": 850, "ed": 1800, "et": 1300},
}
NOISE_FRACTION = 0.025  # Rician noise sigma as a fraction of the white-matter signal
BIAS_STRENGTH = 0.10  # bias field spans roughly +-10 % over the brain
BRAIN_CENTRE_MM = np.array([0.0, -18.0, 18.0])  # rough centre of the MNI brain, for the bias


@dataclass
class Phantom:
    """A generated case: four co-registered sequences, class-index ground truth and geometry."""

    images: dict[str, np.ndarray]  # "t1", "t1ce", "t2", "flair": float32 [i, j, k]
    classes: np.ndarray  # uint8 class indices 0..3 (0 background, 1 NCR, 2 ED, 3 ET)
    affine: np.ndarray  # 4x4 voxel -> RAS+ mm
    brain_mask: np.ndarray  # bool
    tumour_centre_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))
    seed: int = 0

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.classes.shape)

    @property
    def grid(self) -> Grid:
        return Grid(self.shape, self.affine)

    def volumes_ml(self) -> dict[str, float]:
        """Volume of each tumour label (NCR, ED, ET) in millilitres."""
        voxel_ml = abs(np.linalg.det(self.affine[:3, :3])) / 1000.0
        counts = np.bincount(self.classes.ravel(), minlength=4)
        return {
            key: float(counts[LABEL_BY_KEY[key].index] * voxel_ml) for key in ("NCR", "ED", "ET")
        }


# ----------------------------------------------------------------------------- template


@functools.lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 2009 brain mask, GM and WM probability maps at 1 mm (cached, read-only)."""
    from nilearn import datasets  # lazy: the core must import without nilearn

    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    mask = np.asarray(mask_img.dataobj) > 0
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), np.float32)
    gm[~mask] = 0.0
    wm[~mask] = 0.0
    # The maps sum slightly above 1 in a few voxels; rescale so CSF = 1 - GM - WM stays >= 0.
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    arrays = (np.asarray(mask_img.affine, np.float64), mask, gm, wm)
    for array in arrays:
        array.setflags(write=False)
    return arrays


def template_grid(resolution_mm: float = 1.0) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Affine and shape of the template's field of view sampled at ``resolution_mm`` (RAS)."""
    affine, mask, _, _ = _template()
    extent = (np.array(mask.shape) - 1) * np.linalg.norm(affine[:3, :3], axis=0)
    shape = tuple(int(n) for n in np.floor(extent / resolution_mm + 1e-6).astype(int) + 1)
    out = np.diag([resolution_mm, resolution_mm, resolution_mm, 1.0])
    out[:3, 3] = affine[:3, 3]
    return out, shape


def _voxel_coords(mapping: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(3, *shape) float32 array: ``mapping`` (4x4) applied to every voxel index of ``shape``."""
    i, j, k = (np.arange(n, dtype=np.float32) for n in shape)
    coords = np.empty((3, *shape), dtype=np.float32)
    for d in range(3):
        a, b, c, t = (float(v) for v in mapping[d])
        coords[d] = a * i[:, None, None] + b * j[None, :, None] + (c * k[None, None, :] + t)
    return coords


def _tissue_maps(
    affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brain mask, GM and WM probability on the target grid (sampled in world coordinates)."""
    t_affine, t_mask, t_gm, t_wm = _template()
    if shape == t_mask.shape and np.allclose(affine, t_affine):
        return t_mask.copy(), t_gm.copy(), t_wm.copy()
    coords = _voxel_coords(np.linalg.inv(t_affine) @ affine, shape)
    mask = ndimage.map_coordinates(t_mask.astype(np.float32), coords, order=1, cval=0.0) >= 0.5
    gm = ndimage.map_coordinates(t_gm, coords, order=1, cval=0.0)
    wm = ndimage.map_coordinates(t_wm, coords, order=1, cval=0.0)
    gm[~mask] = 0.0
    wm[~mask] = 0.0
    return mask, gm, wm


@functools.lru_cache(maxsize=1)
def _centre_candidates() -> np.ndarray:
    """World positions (N, 3) deep in hemispheric white matter where a lesion fits."""
    affine, mask, _, wm = _template()
    step = 2  # 2 mm is plenty to choose a centre and keeps the distance transform cheap
    sub_mask, sub_wm = mask[::step, ::step, ::step], wm[::step, ::step, ::step]
    depth = ndimage.distance_transform_edt(sub_mask) * step
    ijk = np.argwhere((sub_wm > 0.9) & (depth > 30.0)) * step
    xyz = ijk @ affine[:3, :3].T + affine[:3, 3]
    # Centrum semiovale / corona radiata, away from the midline and the basal ganglia.
    keep = (
        (np.abs(xyz[:, 0]) > 20) & (np.abs(xyz[:, 0]) < 38)
        & (xyz[:, 1] > -55) & (xyz[:, 1] < 25)
        & (xyz[:, 2] > 5) & (xyz[:, 2] < 40)
    )  # fmt: skip
    return xyz[keep]


# ----------------------------------------------------------------------------- noise


@dataclass(frozen=True)
class _Waves:
    """A smooth random field: a sum of random plane waves, defined for any coordinates."""

    vectors: np.ndarray  # (K, 3) angular frequencies
    phases: np.ndarray  # (K,)
    weights: np.ndarray  # (K,), sum of absolute weights is 1, so the field lies in [-1, 1]

    @classmethod
    def random(cls, rng: np.random.Generator, count: int, freq: tuple[float, float]) -> _Waves:
        directions = rng.normal(size=(count, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        vectors = directions * rng.uniform(*freq, size=(count, 1))
        weights = rng.uniform(0.5, 1.0, size=count)
        return cls(vectors, rng.uniform(0, 2 * np.pi, size=count), weights / weights.sum())

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """Field at ``points`` (3, ...) -> array of shape ``points.shape[1:]``."""
        out = np.zeros(points.shape[1:], dtype=np.float32)
        for vector, phase, weight in zip(self.vectors, self.phases, self.weights, strict=True):
            a, b, c = (float(v) for v in vector)  # Python floats keep the arithmetic float32
            arg = a * points[0] + b * points[1] + c * points[2] + float(phase)
            out += np.float32(weight) * np.cos(arg)
        return out


def _wavelength(low_mm: float, high_mm: float) -> tuple[float, float]:
    return (2 * np.pi / high_mm, 2 * np.pi / low_mm)


@dataclass(frozen=True)
class _Lesion:
    """Random lesion parameters, drawn once per seed and independent of the grid."""

    centre: np.ndarray
    radius: float
    edema_radius: float
    outline: _Waves  # lobulation of the enhancing boundary (function of direction)
    roughness: _Waves  # smaller-scale irregularity of the boundary (function of direction)
    rim: _Waves  # rim thickness variation
    edema_outline: _Waves
    edema_roughness: _Waves
    texture: _Waves  # signal heterogeneity inside the lesion


def _draw_lesion(
    rng: np.random.Generator, centre: np.ndarray | None, radius: float, edema_radius: float | None
) -> _Lesion:
    if centre is None:
        candidates = _centre_candidates()
        centre = candidates[rng.integers(len(candidates))] + rng.uniform(-1, 1, size=3)
    return _Lesion(
        centre=np.asarray(centre, dtype=np.float64).reshape(3),
        radius=float(radius),
        edema_radius=float(edema_radius if edema_radius is not None else radius + 13.0),
        outline=_Waves.random(rng, 8, (1.5, 4.5)),
        roughness=_Waves.random(rng, 8, (4.0, 8.0)),
        rim=_Waves.random(rng, 5, _wavelength(8.0, 20.0)),
        edema_outline=_Waves.random(rng, 6, (1.5, 4.0)),
        edema_roughness=_Waves.random(rng, 8, _wavelength(8.0, 25.0)),
        texture=_Waves.random(rng, 8, _wavelength(4.0, 12.0)),
    )


# ----------------------------------------------------------------------------- generation


def _lesion_box(
    lesion: _Lesion, affine: np.ndarray, shape: tuple[int, int, int]
) -> tuple[slice, ...] | None:
    """Voxel bounding box of the lesion's reach on the grid (None when outside it)."""
    reach = lesion.edema_radius * 1.3 + 12.0  # oedema outline +30 %, roughness up to 9 mm
    offsets = np.array(np.meshgrid(*[[-reach, reach]] * 3, indexing="ij")).reshape(3, -1).T
    corners = lesion.centre + offsets
    ijk = (corners - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T
    low = np.clip(np.floor(ijk.min(axis=0)).astype(int), 0, shape)
    high = np.clip(np.ceil(ijk.max(axis=0)).astype(int) + 1, 0, shape)
    if np.any(high <= low):
        return None
    return tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))


def _lesion_classes(
    lesion: _Lesion, world: np.ndarray, mask: np.ndarray, wm: np.ndarray
) -> np.ndarray:
    """Class indices inside the lesion box (``world``: (3, *box) world coordinates in mm)."""
    offset = world - lesion.centre.reshape(3, 1, 1, 1).astype(np.float32)
    dist = np.sqrt((offset**2).sum(axis=0))
    unit = offset / np.maximum(dist, 1e-3)
    # Radial signed distance (mm) to a lobulated, slightly rough sphere. Both perturbations
    # depend on direction only, so moving inwards along a ray lowers it by exactly 1 mm per mm
    # and the rim below is never thicker than ``thickness``.
    core_radius = lesion.radius * (1.0 + 0.30 * lesion.outline(unit)) + 2.0 * lesion.roughness(unit)
    core = dist - core_radius
    thickness = 3.0 + 1.0 * lesion.rim(world)  # rim 2-4 mm thick
    edema_radius = lesion.edema_radius * (1.0 + 0.30 * lesion.edema_outline(unit))
    edema = dist - edema_radius - 9.0 * lesion.edema_roughness(world)

    classes = np.zeros(dist.shape, dtype=np.uint8)
    # Oedema tracks along white matter and spares cortex, except right next to the tumour.
    edema_zone = (edema <= 0) & ((wm >= 0.4) | (core <= 4.0)) & mask
    # Stay in the lesion's hemisphere (the symmetric template's midline is x = 0): spread
    # across the corpus callosum is real but would blur "one hemisphere" for the tests.
    side = np.sign(lesion.centre[0]) if lesion.centre[0] != 0 else 1.0
    mask = mask & (world[0] * side > 0)
    edema_zone &= mask
    classes[edema_zone] = ED
    classes[(core <= 0) & mask] = ET
    classes[(core <= -thickness) & mask] = NCR
    # Keep one connected lesion: white-matter islands cut off by cortex are not oedema.
    labelled, count = ndimage.label(classes > 0)
    if count > 1:
        sizes = np.bincount(labelled.ravel())
        sizes[0] = 0
        classes[labelled != np.argmax(sizes)] = 0
    return classes


def _smooth_fraction(indicator: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Partial-volume fraction: an indicator blurred by ~0.7 mm so edges are not jagged."""
    sigma = np.clip(0.7 / spacing, 0.0, 1.0)
    return ndimage.gaussian_filter(indicator.astype(np.float32), sigma, mode="nearest")


def _bias_field(rng: np.random.Generator, world: dict[str, np.ndarray]) -> np.ndarray:
    """Smooth multiplicative field (second-order polynomial in world mm), about +-10 %."""
    x, y, z = (world[axis] for axis in "xyz")
    terms = [x, y, z, x * x, y * y, z * z, x * y, y * z, x * z]
    coefs = rng.normal(size=len(terms))
    coefs[3:] *= 0.5
    coefs *= BIAS_STRENGTH / np.abs(coefs).sum()
    log_field = sum(float(c) * t for c, t in zip(coefs, terms, strict=True))
    return np.exp(log_field)  # float32, broadcastable to the grid


def _normalised_world(affine: np.ndarray, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """World coordinates, centred on the brain and scaled to ~[-1, 1], as broadcastable terms."""
    # Each coordinate is affine in (i, j, k); skipping zero coefficients keeps it a thin
    # (n, 1, 1)-like array on axis-aligned grids, so the bias polynomial stays cheap.
    axes = [
        np.arange(n, dtype=np.float32).reshape([-1 if a == d else 1 for a in range(3)])
        for d, n in enumerate(shape)
    ]
    out = {}
    for d, axis in enumerate("xyz"):
        value = np.full((1, 1, 1), affine[d, 3] - BRAIN_CENTRE_MM[d], dtype=np.float32)
        for a in range(3):
            if abs(affine[d, a]) > 1e-9:
                value = value + float(affine[d, a]) * axes[a]
        out[axis] = value / np.float32(80.0)
    return out


def make_phantom(
    *,
    seed: int = 0,
    resolution_mm: float = 1.0,
    tumour_centre_mm: tuple[float, float, float] | np.ndarray | None = None,
    tumour_radius_mm: float = 15.0,
    edema_radius_mm: float | None = None,
    affine: np.ndarray | None = None,
    shape: tuple[int, int, int] | None = None,
    noise: bool = True,
) -> Phantom:
    """Generate a four-sequence glioma phantom with ground-truth class indices.

    By default the grid is the MNI152 field of view at ``resolution_mm`` in RAS (1 mm:
    197x233x189; 3 mm: 66x78x63). Give ``affine`` and ``shape`` to generate directly on any
    grid (oblique, anisotropic, flipped); ``resolution_mm`` is then ignored.
    ``tumour_centre_mm`` is a world (RAS, MNI) position; by default the seed picks one deep in
    the white matter of one hemisphere. ``tumour_radius_mm`` is the mean outer radius of the
    enhancing rim; oedema reaches ``edema_radius_mm`` (default radius + 13 mm) along the white
    matter. ``noise=False`` leaves out the Rician noise (the bias field stays).
    """
    if affine is None:
        if shape is not None:
            raise ValueError("shape is only used together with affine")
        if resolution_mm <= 0:
            raise ValueError(f"resolution_mm must be positive, got {resolution_mm}")
        affine, shape = template_grid(resolution_mm)
    elif shape is None:
        raise ValueError("affine needs a shape")
    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)

    # Separate streams: the anatomy/lesion stream never depends on the grid, so one seed gives
    # the same tumour on every grid; the noise stream is grid-sized.
    rng = np.random.default_rng([seed, 0])
    noise_rng = np.random.default_rng([seed, 1])
    lesion = _draw_lesion(rng, tumour_centre_mm, tumour_radius_mm, edema_radius_mm)
    bias_rngs = {name: np.random.default_rng([seed, 2, n]) for n, name in enumerate(SEQUENCES)}

    mask, gm, wm = _tissue_maps(affine, shape)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * mask

    classes = np.zeros(shape, dtype=np.uint8)
    box = _lesion_box(lesion, affine, shape)
    if box is not None:
        starts = np.array([s.start for s in box], dtype=np.float64)
        sub_shape = tuple(s.stop - s.start for s in box)
        box_affine = affine.copy()
        box_affine[:3, 3] = affine[:3, :3] @ starts + affine[:3, 3]
        world = _voxel_coords(box_affine, sub_shape)
        box_classes = _lesion_classes(lesion, world, mask[box], wm[box])
        classes[box] = box_classes
        fractions = {c: _smooth_fraction(box_classes == c, spacing) for c in (NCR, ED, ET)}
        texture = lesion.texture(world)

    norm_world = _normalised_world(affine, shape)
    images = {}
    for name in SEQUENCES:
        signal = TISSUE_SIGNAL[name]
        image = (
            np.float32(signal["gm"]) * gm
            + np.float32(signal["wm"]) * wm
            + np.float32(signal["csf"]) * csf
        )
        if box is not None:
            # Lesion tissue replaces normal tissue in proportion to its partial volume.
            sub = image[box]
            lesion_total = fractions[NCR] + fractions[ED] + fractions[ET]
            mixed = (1.0 - lesion_total) * sub
            for key, c, vary in (("ncr", NCR, 0.10), ("ed", ED, 0.06), ("et", ET, 0.15)):
                mixed += fractions[c] * np.float32(signal[key]) * (1.0 + vary * texture)
            image[box] = mixed
        image *= _bias_field(bias_rngs[name], norm_world)
        inside = image[mask]
        if noise:
            # Rician noise: magnitude of a complex signal with Gaussian noise in both channels.
            sigma = np.float32(NOISE_FRACTION * signal["wm"])
            real = inside + sigma * noise_rng.standard_normal(inside.size, dtype=np.float32)
            imag = sigma * noise_rng.standard_normal(inside.size, dtype=np.float32)
            inside = np.sqrt(real * real + imag * imag)
        image = np.zeros(shape, dtype=np.float32)
        # Keep brain voxels strictly positive so "nonzero" is a reliable brain mask downstream.
        image[mask] = np.maximum(inside, 1.0)
        images[name] = image

    return Phantom(
        images=images,
        classes=classes,
        affine=affine,
        brain_mask=mask,
        tumour_centre_mm=lesion.centre.copy(),
        seed=seed,
    )


def resample_phantom(phantom: Phantom, affine: np.ndarray, shape: tuple[int, int, int]) -> Phantom:
    """The phantom on another grid (any orientation/spacing), sampled in world coordinates.

    Images use linear interpolation, classes and the brain mask nearest neighbour; outside the
    (resampled) brain mask everything is 0.
    """
    affine = np.asarray(affine, dtype=np.float64)
    shape = tuple(int(n) for n in shape)
    coords = _voxel_coords(np.linalg.inv(phantom.affine) @ affine, shape)
    mask = ndimage.map_coordinates(phantom.brain_mask.astype(np.uint8), coords, order=0) > 0
    classes = ndimage.map_coordinates(phantom.classes, coords, order=0, cval=0).astype(np.uint8)
    classes[~mask] = 0
    images = {}
    for name, array in phantom.images.items():
        image = ndimage.map_coordinates(array.astype(np.float32), coords, order=1, cval=0.0)
        image[~mask] = 0.0
        # Linear interpolation next to the mask edge mixes in background zeros; keep >= 1.
        image[mask] = np.maximum(image[mask], 1.0)
        images[name] = image
    return Phantom(
        images=images,
        classes=classes,
        affine=affine,
        brain_mask=mask,
        tumour_centre_mm=phantom.tumour_centre_mm.copy(),
        seed=phantom.seed,
    )


def write_phantom(
    phantom: Phantom,
    folder: str | Path,
    *,
    case_id: str = "Phantom",
    convention: str = "brats2018",
    layout: str = "brats2018",
    image_dtype: str = "int16",
) -> dict[str, Path]:
    """Write the four sequences and the segmentation as NIfTI files named like BraTS.

    ``layout`` "brats2018" writes ``<case>_t1.nii.gz`` ... ``<case>_seg.nii.gz``; "brats2023"
    writes ``<case>-t1n.nii.gz``, ``-t1c``, ``-t2w``, ``-t2f``, ``-seg``. Labels are written in
    ``convention``. Images are rounded to int16 like BraTS (``image_dtype="float32"`` keeps
    them exact). Returns the paths keyed "t1", "t1ce", "t2", "flair", "seg".
    """

    try:
        suffixes = LAYOUTS[layout]
    except KeyError:
        raise ValueError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}") from None
    if image_dtype not in ("int16", "float32"):
        raise ValueError(f"image_dtype must be 'int16' or 'float32', got {image_dtype!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def save(array: np.ndarray, key: str) -> Path:
        return write_nifti(folder / f"{case_id}{suffixes[key]}.nii.gz", array, phantom.affine)

    paths = {}
    for name in SEQUENCES:
        array = phantom.images[name]
        if image_dtype == "int16":
            array = np.clip(np.rint(array), 0, np.iinfo(np.int16).max).astype(np.int16)
        paths[name] = save(np.asarray(array), name)
    paths["seg"] = save(classes_to_convention(phantom.classes, convention).astype(np.uint8), "seg")
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m BrainTumorSegLib.phantom --output DIR``: write a phantom case folder."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m BrainTumorSegLib.phantom",
        description="Write a digital glioma phantom (four sequences + ground truth) as NIfTI.",
    )
    parser.add_argument("--output", type=Path, required=True, help="folder to write the case to")
    parser.add_argument("--seed", type=int, default=0, help="random seed (tumour shape and place)")
    parser.add_argument("--resolution", type=float, default=1.0, help="voxel size in mm")
    parser.add_argument("--case-id", default="Phantom", help="file name prefix")
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="brats2018")
    parser.add_argument("--labels", choices=sorted(CONVENTIONS), default="brats2018")
    args = parser.parse_args(argv)
    phantom = make_phantom(seed=args.seed, resolution_mm=args.resolution)
    paths = write_phantom(
        phantom, args.output, case_id=args.case_id, convention=args.labels, layout=args.layout
    )
    volumes = ", ".join(f"{k} {v:.1f} mL" for k, v in phantom.volumes_ml().items())
    print(f"wrote {len(paths)} files to {args.output} (truth: {volumes})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
