"""Multi-scanner brain MR phantoms from nilearn's MNI152 template, for low-label semi-supervised benchmarks.

Everything is built offline from the MNI152 2009 (sym 09a) grey/white-matter probability maps and
brain mask that ship inside nilearn's wheel (no download, no other atlas). Labels (:data:`LABELS`):
0 background (outside the brain envelope: extra-cerebral CSF, skull, scalp, air), 1 lateral
ventricles, 2 grey matter (the rest of the brain envelope: cortex, deep grey matter, sulcal CSF),
3 white matter (its smoothed core). Only smooth, compact structures, no scattered voxels.

How a subject is made (every field is a smooth random Fourier series evaluated point-wise, and
each slice is rendered on its own, so a 2D case is bit for bit the middle slice of its 3D case):

* **Anatomy**. An affine map (scale 0.86-1.02 per axis, yaw +-10 deg and tilts out of the axial
  plane of +-8/+-6 deg, which in 2D change *what* the slice shows), a strong non-linear warp
  (1.5-4 mm RMS displacement per axis, 50-110 mm wavelengths, local peaks near 10 mm), and
  *atrophy* (one severity per subject drives both): cortical thinning / sulcal widening (up to
  the outer ~1 mm of grey matter becomes CSF and the labelled envelope shrinks by up to 2 mm) and
  ventricle enlargement (walls pushed out by up to 5 mm, fading over 8 mm; about 2x the area).
  A head model adds extra-cerebral CSF, skull and scalp shells of random thickness. 2D cases are axial slices at template z 6-22 mm (through the
  lateral ventricles).
* **Acquisition** (:data:`ACQUISITIONS`, one style per case): tissue intensities with different
  *orderings* (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: GM > WM > CSF), a box slice profile of
  up to 5 mm (partial volume *through* the slice), in-plane blur, a multiplicative bias field,
  per-tissue texture, Rician noise and a random gain; all jittered per subject.

Why nnU-Net's own augmentation does not cover this: its spatial transform has rotation and scaling
but elastic deformation switched off (``p_elastic_deform=0``), so no local shape change, atrophy or
ventricle enlargement; in 2D it cannot tilt the slice plane. Its intensity transforms (noise, blur,
brightness, contrast, gamma, low-resolution simulation in-plane) are monotone except a gamma with
inversion (probability 0.1), which maps T1 to a T2-like ordering but can never produce FLAIR's
non-monotone ordering (dark CSF *and* GM brighter than WM), or a dark background with bright CSF;
it has no bias field and no through-plane partial volume.

Cohorts (:func:`write_cohort`): training and held-out test cases cycle over every acquisition
style, while the *labeled pool* holds only the training cases of
:data:`DEFAULT_LABELED_ACQUISITIONS` (two T1 styles), the common clinical situation of labels from
fewer scanners than the images to segment. :func:`choose_labeled` draws a seeded, style-balanced
labeled subset from that pool (disjoint across seeds while the pool allows); every other training case is meant to be used unlabeled.
Generation takes about 0.3 s per 2D case and 20 s per 3D volume (64x64x52) on one core, plus a few
seconds once per process to build the template; ``write_cohort(..., jobs=N)`` renders N cases at once.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ACQUISITIONS", "LABELS", "DEFAULT_LABELED_ACQUISITIONS", "sample_subject", "render_subject",
           "make_subject", "write_cohort", "choose_labeled", "disjoint_block"]

LABELS: dict[int, str] = {0: "background", 1: "ventricles", 2: "grey_matter", 3: "white_matter"}

#: Acquisition styles. ``means``: tissue intensities (relative); ``thickness``: slice profile width
#: (mm, at least the output spacing); ``fwhm``: extra in-plane blur (mm); ``bias``: bias-field
#: strength (log-scale std); ``noise``: Rician noise std relative to the brightest tissue.
ACQUISITIONS: dict[str, dict[str, Any]] = {
    "t1_3t": {"contrast": "T1", "means": {"wm": 0.90, "gm": 0.55, "csf": 0.12, "skull": 0.05, "scalp": 0.80},
              "thickness": 1.0, "fwhm": 0.0, "bias": 0.10, "noise": 0.02},
    "t1_15t": {"contrast": "T1", "means": {"wm": 0.80, "gm": 0.58, "csf": 0.22, "skull": 0.06, "scalp": 0.90},
               "thickness": 5.0, "fwhm": 2.5, "bias": 0.30, "noise": 0.04},
    "t1_lowfield": {"contrast": "T1", "means": {"wm": 0.75, "gm": 0.60, "csf": 0.28, "skull": 0.08, "scalp": 0.85},
                    "thickness": 5.0, "fwhm": 3.0, "bias": 0.25, "noise": 0.045},
    "t2": {"contrast": "T2", "means": {"wm": 0.35, "gm": 0.55, "csf": 1.00, "skull": 0.04, "scalp": 0.65},
           "thickness": 3.0, "fwhm": 2.0, "bias": 0.25, "noise": 0.04},
    "flair": {"contrast": "FLAIR", "means": {"wm": 0.45, "gm": 0.68, "csf": 0.08, "skull": 0.04, "scalp": 0.70},
              "thickness": 4.0, "fwhm": 2.5, "bias": 0.30, "noise": 0.05},
}
DEFAULT_LABELED_ACQUISITIONS: tuple[str, ...] = ("t1_3t", "t1_15t")
_LEVEL_BAND = (6.0, 22.0)  # template z (mm) of the 2D slice: through the lateral ventricles
_SUPERSAMPLE = 2  # in-plane samples per output voxel and axis


@lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    """Tissue maps of MNI152 at 1 mm (cropped) and 2 mm distance maps (brain surface, ventricles); cached."""
    from nilearn import datasets
    from scipy import ndimage

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    gm = gm_img.get_fdata(dtype=np.float32)
    wm = datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32)
    mask = datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32) > 0.5
    gm, wm = np.clip(gm, 0, 1) * mask, np.clip(wm, 0, 1) * mask
    csf = np.clip(mask - gm - wm, 0, 1)
    origin = gm_img.affine[:3, 3].astype(np.float64)
    # lateral ventricles: the largest CSF component in a central box (connected to the third ventricle)
    mm = [np.arange(s) + o for s, o in zip(mask.shape, origin)]
    box = (np.abs(mm[0])[:, None, None] < 35) & ((mm[1] > -60) & (mm[1] < 40))[None, :, None] \
        & ((mm[2] > -15) & (mm[2] < 45))[None, None, :]
    comp, n = ndimage.label((csf > 0.5) & box)
    sizes = ndimage.sum_labels(np.ones_like(comp), comp, np.arange(1, n + 1))
    vent_core = comp == 1 + int(np.argmax(sizes))
    vent = csf * ndimage.binary_dilation(vent_core, iterations=2)
    idx = np.argwhere(mask)
    lo, hi = np.maximum(idx.min(0) - 24, 0), np.minimum(idx.max(0) + 25, mask.shape)
    hi -= (hi - lo) % 2  # even crop, so that 2x2x2 blocks tile it
    sl = tuple(slice(a, b) for a, b in zip(lo, hi))
    tissue = ((gm + wm) > 0.5)[sl]
    depth = np.zeros(tissue.shape, np.float32)  # depth into GM/WM from CSF or outside, 0..3 mm (atrophy)
    for _ in range(3):
        depth += tissue
        tissue = ndimage.binary_erosion(tissue)

    def coarse(a: np.ndarray) -> np.ndarray:  # 2 mm block means
        a = a[sl].astype(np.float32)
        return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean((1, 3, 5))

    def signed_distance(m: np.ndarray) -> np.ndarray:
        return ndimage.distance_transform_edt(~m, sampling=2) - ndimage.distance_transform_edt(m, sampling=2)

    signed = signed_distance(coarse(mask) > 0.5)  # to the brain surface (head shells)
    vent_dist = ndimage.gaussian_filter(signed_distance(coarse(vent_core) > 0.3), 1.0)  # to the ventricles
    coarse_maps = np.stack([signed, vent_dist, *np.gradient(vent_dist, 2.0)]).astype(np.float32)
    maps = np.stack([gm[sl], wm[sl], vent[sl], (csf - vent)[sl], depth]).astype(np.float32)
    return {"maps": maps, "coarse": coarse_maps, "origin": origin + lo,
            "brain_centre": (idx.min(0) + idx.max(0)) / 2 + origin}


def _fourier(rng: np.random.Generator, n_out: int, n_terms: int, wavelength: tuple[float, float]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random smooth field R^3 -> R^n_out with unit std: wave vectors, phases, amplitudes."""
    d = rng.standard_normal((n_out, n_terms, 3))
    k = d / np.linalg.norm(d, axis=-1, keepdims=True) * (2 * np.pi / rng.uniform(*wavelength, (n_out, n_terms, 1)))
    return k, rng.uniform(0, 2 * np.pi, (n_out, n_terms)), rng.standard_normal((n_out, n_terms)) * np.sqrt(2 / n_terms)


def _eval_fourier(field: tuple[np.ndarray, np.ndarray, np.ndarray], pts: np.ndarray) -> np.ndarray:
    k, phase, amp = field
    return np.einsum("ot,pot->po", amp, np.cos(np.einsum("otd,pd->pot", k, pts) + phase))


def _rotation(deg: tuple[float, float, float]) -> np.ndarray:
    a, b, c = np.deg2rad(deg)  # yaw (about z), pitch (about x), roll (about y)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def sample_subject(rng: np.random.Generator, *, acquisition: str) -> dict[str, Any]:
    """Draw one subject's parameters (JSON-serialisable); :func:`render_subject` turns them into arrays.

    Args:
        rng: random generator (the only source of randomness; draws in a fixed order).
        acquisition: a key of :data:`ACQUISITIONS`.

    Returns:
        Anatomy and acquisition parameters plus ``field_seed`` for the warp, bias, texture and noise.

    Raises:
        KeyError: unknown acquisition.
    """
    acq = ACQUISITIONS[acquisition]
    atrophy = float(rng.uniform(0, 1))
    jitter = rng.uniform(0.94, 1.06, len(acq["means"]))
    return {
        "acquisition": acquisition,
        "level_mm": float(rng.uniform(*_LEVEL_BAND)),
        "shift_mm": [float(v) for v in rng.normal(0, 4, 3)],
        "angles_deg": [float(rng.uniform(-10, 10)), float(rng.uniform(-8, 8)), float(rng.uniform(-6, 6))],
        "scale": [float(v) for v in rng.uniform(0.86, 1.02, 3)],
        "warp_mm": float(rng.uniform(1.5, 4.0)),
        "atrophy": atrophy,
        "cortical_thinning_mm": float(np.clip(1.6 * atrophy + rng.normal(0, 0.2), 0, 2)),
        "ventricle_expansion_mm": float(np.clip(4 * atrophy + rng.normal(0, 0.5), 0, 5)),
        "shells_mm": [float(rng.uniform(1, 3)), float(rng.uniform(3, 6)), float(rng.uniform(3, 6))],
        "means": {t: float(m * j) for (t, m), j in zip(acq["means"].items(), jitter)},
        "bias": float(acq["bias"] * rng.uniform(0.6, 1.4)),
        "noise": float(acq["noise"] * rng.uniform(0.7, 1.3)),
        "gain": float(rng.uniform(300, 3000)),
        "field_seed": int(rng.integers(2 ** 31)),
    }


def _fields(params: dict[str, Any]) -> dict[str, Any]:
    rng = np.random.default_rng(params["field_seed"])
    return {"warp": _fourier(rng, 3, 12, (50.0, 110.0)), "bias": _fourier(rng, 1, 4, (150.0, 400.0)),
            "texture": _fourier(rng, 3, 8, (15.0, 50.0))}


def _sample_tissues(params: dict[str, Any], fields: dict[str, Any], pts: np.ndarray) -> dict[str, np.ndarray]:
    """Tissue fractions at scanner points (N, 3) in mm: affine, warp, ventricle expansion, atrophy."""
    from scipy import ndimage

    t = _template()
    q = t["brain_centre"] + np.asarray(params["shift_mm"]) + (pts / np.asarray(params["scale"])) \
        @ _rotation(params["angles_deg"]).T
    q = q + params["warp_mm"] * _eval_fourier(fields["warp"], q)
    idx = (q - t["origin"]).T
    signed, vdist, *vgrad = (ndimage.map_coordinates(m, (idx - 0.5) / 2, order=1, mode="nearest")
                             for m in t["coarse"])  # 2 mm maps
    # ventricle enlargement: sample closer to the ventricles, by e mm at their wall, fading over 8 mm
    e = params["ventricle_expansion_mm"]
    idx = idx - e * np.exp(-np.maximum(vdist, 0) / 8.0) * np.stack(vgrad) / np.maximum(np.linalg.norm(vgrad, axis=0), 1e-3)
    gm, wm, vent, ecsf, depth = (ndimage.map_coordinates(m, idx, order=1, mode="nearest") for m in t["maps"])
    keep = np.clip(1 + depth - params["cortical_thinning_mm"], 0, 1)  # thinning: GM near CSF becomes CSF
    ecsf, gm = ecsf + gm * (1 - keep), gm * keep
    c, s, sc = np.cumsum(params["shells_mm"])
    outside = np.clip(1 - gm - wm - vent - ecsf, 0, 1)
    ramp = [np.clip(signed - edge + 0.5, 0, 1) for edge in (c, s, sc)]  # 1 beyond each shell's outer edge
    brain = np.clip(0.5 - signed - params["cortical_thinning_mm"], 0, 1)  # envelope, shrunk by atrophy (labels)
    return {"wm": wm, "gm": gm, "vent": vent, "csf": vent + ecsf + outside * (1 - ramp[0]),
            "skull": outside * (ramp[0] - ramp[1]), "scalp": outside * (ramp[1] - ramp[2]), "brain": brain}


def _render_slice(params: dict[str, Any], fields: dict[str, Any], z: float, k: int, shape: tuple[int, int],
                  spacing: float, label_sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Image and label of the axial slice at scanner z (mm); ``k`` (slice index from the middle) seeds its noise."""
    from scipy import ndimage

    acq = ACQUISITIONS[params["acquisition"]]
    ss = _SUPERSAMPLE
    axes = [(np.arange(n * ss) - (n * ss - 1) / 2) * spacing / ss for n in shape]
    gx, gy = np.meshgrid(*axes, indexing="ij")

    def slab(offsets: np.ndarray, texture: bool) -> dict[str, np.ndarray]:
        pts = np.stack([np.repeat(gx[None], len(offsets), 0), np.repeat(gy[None], len(offsets), 0),
                        np.broadcast_to((z + offsets)[:, None, None], (len(offsets),) + gx.shape)], -1)
        pts = pts.reshape(-1, 3)
        frac = _sample_tissues(params, fields, pts)
        if texture:
            tex = 1 + 0.04 * _eval_fourier(fields["texture"], pts)
            frac = {**frac, "wm": frac["wm"] * tex[:, 0], "gm": frac["gm"] * tex[:, 1], "csf": frac["csf"] * tex[:, 2]}
        return {key: v.reshape((len(offsets),) + gx.shape).mean(0) for key, v in frac.items()}

    def block_mean(a: np.ndarray) -> np.ndarray:
        return a.reshape(shape[0], ss, shape[1], ss).mean((1, 3))

    thick = max(acq["thickness"], spacing)
    n_sub = max(3, int(np.ceil(thick / 1.0)) | 1)
    frac = slab((np.arange(n_sub) + 0.5) / n_sub * thick - thick / 2, True)
    img = sum(frac[tk] * params["means"][tk] for tk in ("wm", "gm", "csf", "skull", "scalp"))
    if acq["fwhm"] > 0:
        img = ndimage.gaussian_filter(img, acq["fwhm"] / 2.355 / (spacing / ss), mode="nearest")
    img = block_mean(img)
    centres = np.stack([*np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing for n in shape], indexing="ij"),
                        np.full(shape, z)], -1).reshape(-1, 3)
    img = img * np.exp(params["bias"] * _eval_fourier(fields["bias"], centres)[:, 0].reshape(shape))
    nrng = np.random.default_rng([params["field_seed"], k + 2 ** 16])
    sd = params["noise"] * max(params["means"].values())
    img = np.hypot(img + sd * nrng.standard_normal(shape), sd * nrng.standard_normal(shape)) * params["gain"]

    lf = slab((np.arange(3) - 1) * spacing / 3, False)
    brain, vent, wm = (ndimage.gaussian_filter(lf[key], sig / (spacing / ss), mode="nearest") if sig > 0 else lf[key]
                       for key, sig in (("brain", label_sigma), ("vent", min(label_sigma, 1.5)), ("wm", label_sigma)))
    probs = [1 - brain, vent, np.clip(brain - vent - wm, 0, None), wm]  # grey matter: the rest of the envelope
    lab = np.argmax(np.stack([block_mean(p) for p in probs]), 0).astype(np.uint8)
    return img.astype(np.float32), lab


def render_subject(params: dict[str, Any], *, dim: int = 2, shape: tuple[int, int] = (64, 64),
                   spacing: float = 3.0, num_slices: int = 52, label_sigma: float = 3.5
                   ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """Image, label and spacing of a subject drawn by :func:`sample_subject`.

    Args:
        params: the subject's parameters.
        dim: 2 for the single axial slice at ``params["level_mm"]``, 3 for a volume of ``num_slices``
            slices whose slice ``num_slices // 2`` is that 2D slice (bit for bit).
        shape: in-plane shape (left-right, anterior-posterior).
        spacing: voxel size in mm (isotropic; 3D slices are ``spacing`` apart).
        num_slices: slices of the 3D volume.
        label_sigma: in-plane smoothing (mm) of the white-matter and brain-envelope fractions before the
            majority vote (ventricles: at most 1.5 mm); 3.5 makes white matter a compact core.

    Returns:
        ``(image float32, label uint8, spacing)`` with numpy axes (x, y[, z]) and spacing per axis.

    Raises:
        ValueError: ``dim`` not 2 or 3.
    """
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim}")
    fields = _fields(params)
    z0 = params["level_mm"] - float(_template()["brain_centre"][2])
    ks = [num_slices // 2] if dim == 2 else list(range(num_slices))
    out = [_render_slice(params, fields, z0 + (k - num_slices // 2) * spacing, k - num_slices // 2, shape, spacing,
                         label_sigma) for k in ks]
    if dim == 2:
        return out[0][0], out[0][1], (spacing, spacing)
    return np.stack([o[0] for o in out], -1), np.stack([o[1] for o in out], -1), (spacing,) * 3


def make_subject(rng: np.random.Generator, *, acquisition: str, dim: int = 2, **render_kwargs: Any
                 ) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    """One random subject: :func:`sample_subject` then :func:`render_subject`.

    Args:
        rng: random generator.
        acquisition: a key of :data:`ACQUISITIONS`.
        dim: 2 (one axial slice) or 3 (volume).
        **render_kwargs: ``shape``, ``spacing``, ``num_slices``, ``label_sigma``.

    Returns:
        ``(image, label, spacing)``.
    """
    return render_subject(sample_subject(rng, acquisition=acquisition), dim=dim, **render_kwargs)


def _write(arr: np.ndarray, spacing: tuple[float, ...], path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.T))  # numpy (x, y[, z]) -> ITK's reversed order
    img.SetSpacing(tuple(float(s) for s in spacing))
    sitk.WriteImage(img, str(path), useCompression=True)


def _write_case(job: tuple[int, int, int, str, int, str, Path, Path, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Render and write one case of :func:`write_cohort` (a worker's unit of work); ``(case, params)``."""
    seed, split, i, acquisition, dim, case, image_file, label_file, render_kwargs = job
    params = sample_subject(np.random.default_rng([seed, split, i]), acquisition=acquisition)
    img, lab, sp = render_subject(params, dim=dim, **render_kwargs)
    _write(img, sp, image_file)
    _write(lab, sp, label_file)
    return case, params


def write_cohort(root: str | Path, *, num_train: int, num_test: int, seed: int, dim: int = 2,
                 acquisitions: tuple[str, ...] | None = None,
                 labeled_acquisitions: tuple[str, ...] = DEFAULT_LABELED_ACQUISITIONS, jobs: int = 1,
                 **render_kwargs: Any) -> dict[str, Any]:
    """Write ``images/``, ``labels/``, ``test_images/``, ``test_labels/`` (``.nii.gz``) and ``manifest.json``.

    Acquisitions cycle over ``acquisitions`` in both sets (balanced). Subject ``i`` of each set comes
    from its own generator ``(seed, set, i)``, so the test set does not depend on ``num_train`` and the
    same seed gives identical files. 2D cases are 2D NIfTI images; 3D cases are volumes whose middle
    slice is the 2D case.

    Args:
        root: output folder (created).
        num_train: training subjects (all written with labels; a harness chooses which labels to use,
            see :func:`choose_labeled`).
        num_test: held-out test subjects.
        seed: cohort seed.
        dim: 2 or 3.
        acquisitions: styles to cycle over (default: all of :data:`ACQUISITIONS`).
        labeled_acquisitions: styles the labeled pool is restricted to (recorded in the manifest).
        jobs: worker processes rendering cases side by side (the files do not depend on it; a 3D volume
            takes about 20 s on one core).
        **render_kwargs: passed to :func:`render_subject` (``shape``, ``spacing``, ...).

    Returns:
        The manifest: settings, ``train``/``test`` ``{case: params}`` and ``labeled_pool`` (cases).

    Raises:
        ValueError: unknown acquisition names, or no training case in the labeled acquisitions.
    """
    acqs = tuple(acquisitions or ACQUISITIONS)
    unknown = sorted((set(acqs) | set(labeled_acquisitions)) - set(ACQUISITIONS))
    if unknown or not set(labeled_acquisitions) <= set(acqs):
        raise ValueError(f"unknown or unused acquisitions {unknown or sorted(set(labeled_acquisitions) - set(acqs))}")
    root = Path(root)
    folders = {k: root / k for k in ("images", "labels", "test_images", "test_labels")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"seed": seed, "dim": dim, "render": render_kwargs, "labels": LABELS,
                                "acquisitions": list(acqs), "labeled_acquisitions": list(labeled_acquisitions),
                                "train": {}, "test": {}}
    work = [(seed, split, i, acqs[i % len(acqs)], dim, f"{prefix}{i:03d}", folders[fi] / f"{prefix}{i:03d}.nii.gz",
             folders[fl] / f"{prefix}{i:03d}.nii.gz", render_kwargs)
            for split, n, prefix, (fi, fl) in ((0, num_train, "sub", ("images", "labels")),
                                               (1, num_test, "test", ("test_images", "test_labels")))
            for i in range(n)]
    if jobs > 1 and len(work) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(jobs, len(work))) as pool:
            done = list(pool.map(_write_case, work))
    else:
        done = [_write_case(job) for job in work]
    for job, (case, params) in zip(work, done):
        manifest["train" if job[1] == 0 else "test"][case] = params
    manifest["labeled_pool"] = [c for c, p in manifest["train"].items() if p["acquisition"] in labeled_acquisitions]
    if not manifest["labeled_pool"]:
        raise ValueError(f"no training case has an acquisition in {labeled_acquisitions}")
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def choose_labeled(manifest: dict[str, Any], num_labeled: int, seed: int) -> tuple[list[str], list[str]]:
    """Pick labeled training cases from the manifest's labeled pool, balanced over its acquisitions.

    Seeds ``0, 1, ...`` get **disjoint** labeled sets while the pool allows: the pool is put in one
    seeded, style-interleaved order and seed ``s`` takes its ``s``-th block of ``num_labeled`` cases
    (:func:`disjoint_block`); after ``len(pool) // num_labeled`` seeds a new order starts, so later
    seeds may share cases with earlier ones.

    Args:
        manifest: as returned by :func:`write_cohort` (or read from its ``manifest.json``).
        num_labeled: labeled cases wanted.
        seed: selection seed (``>= 0``).

    Returns:
        ``(labeled cases, unlabeled cases)``; the unlabeled ones are all other training cases.

    Raises:
        ValueError: more labeled cases asked for than the pool holds, or a negative seed.
    """
    pool = manifest["labeled_pool"]
    if not 1 <= num_labeled <= len(pool):
        raise ValueError(f"num_labeled must be in 1..{len(pool)} (the labeled pool), got {num_labeled}")
    round_, block = disjoint_block(len(pool), num_labeled, seed)
    rng = np.random.default_rng([round_, 7])
    by_acq = [[c for c in pool if manifest["train"][c]["acquisition"] == a] for a in manifest["labeled_acquisitions"]]
    by_acq = [list(rng.permutation(cases)) for cases in by_acq if cases]
    order = [c for rnd in range(max(map(len, by_acq))) for cases in by_acq if rnd < len(cases) for c in [cases[rnd]]]
    labeled = sorted(str(c) for c in order[block * num_labeled:(block + 1) * num_labeled])
    return labeled, [c for c in manifest["train"] if c not in labeled]


def disjoint_block(pool_size: int, num_labeled: int, seed: int) -> tuple[int, int]:
    """Where seed ``seed`` takes its labeled cases when seeds must not share them while the pool allows.

    Args:
        pool_size: cases in the labeled pool.
        num_labeled: labeled cases per seed (``1..pool_size``).
        seed: the seed (``>= 0``).

    Returns:
        ``(order, block)``: the seed of the pool's shuffled order and the block of ``num_labeled`` cases in
        it; seeds ``0 .. pool_size // num_labeled - 1`` share order 0 and take different blocks.

    Raises:
        ValueError: a negative seed or an impossible ``num_labeled``.
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 1 <= num_labeled <= pool_size:
        raise ValueError(f"num_labeled must be in 1..{pool_size} (the labeled pool), got {num_labeled}")
    blocks = pool_size // num_labeled
    return seed // blocks, seed % blocks
