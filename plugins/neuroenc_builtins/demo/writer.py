"""Parameters, cache key, and writing the dataset in the Algonauts 2023 layout."""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._constants import (
    _GRID,
    _N_NSD_IMAGES,
    _N_REPEATS,
    _SHARED_TRAIN_FRACTION,
    _TERMS,
    _VISUAL_FIELD_DEG,
    CATEGORIES,
    DEMO_GENERATOR_VERSION,
    HEMISPHERES,
    N_FSAVERAGE5_VERTICES,
    ROI_CLASSES,
    _log,
)
from .anatomy import _build_anatomy
from .image_features import (
    _MAX_OBJECTS,
    _ImageFeatures,
    _pixel_features,
    _scene_features,
)
from .responses import _simulate_trials
from .scenes import _render_scene, _Scene

# ---------------------------------------------------------------------------------------
# Parameters, cache key, writing
# ---------------------------------------------------------------------------------------


def _validate(subjects: Sequence[int], n_train: int, n_test: int, image_size: int, seed: int) -> tuple[int, ...]:
    subj = tuple(int(s) for s in subjects)
    if not subj:
        raise ValueError("subjects is empty; expected at least one subject number, e.g. (1, 2)")
    if any(s < 1 or s > 99 for s in subj) or len(set(subj)) != len(subj):
        raise ValueError(f"subjects {subj}: expected distinct numbers 1..99 (folders subj01 .. subj99)")
    if int(n_train) < 2 or int(n_test) < 2:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: expected at least 2 images in each split")
    if not 32 <= int(image_size) <= 1024:
        raise ValueError(f"image_size={image_size}: expected 32 .. 1024 pixels")
    if int(seed) < 0:
        raise ValueError(f"seed={seed}: expected a non-negative integer")
    n_shared = _n_shared_train(n_train, len(subj))
    n_distinct = n_test + n_shared + len(subj) * (n_train - n_shared)
    if n_distinct > _N_NSD_IMAGES:
        raise ValueError(f"{n_distinct} distinct images requested; NSD has only {_N_NSD_IMAGES} nsd ids")
    return subj


def _n_shared_train(n_train: int, n_subjects: int) -> int:
    return int(round(_SHARED_TRAIN_FRACTION * n_train)) if n_subjects > 1 else 0


def _test_repeats(n_test: int, rng: np.random.Generator) -> np.ndarray:
    """Return how often each test image was shown: mostly 3, a few 2 or 1 (missed sessions)."""
    reps = np.full(n_test, _N_REPEATS)
    n2, n1 = int(round(0.08 * n_test)), int(round(0.02 * n_test))
    idx = rng.permutation(n_test)
    reps[idx[:n2]] = 2
    reps[idx[n2 : n2 + n1]] = 1
    return reps


def _render_image(seed: int, nsd_id: int, image_size: int) -> tuple[bytes, _Scene, tuple[np.ndarray, ...]]:
    """Return the PNG bytes, scene record and pooled pixel features of one image.

    An image depends only on (seed, nsd id, size), not on which other images are drawn.
    """
    img, scene = _render_scene(np.random.default_rng([seed, 2, nsd_id]), image_size)
    return _png_bytes(img), scene, _pixel_features(img)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _mapping(cls: str) -> dict[int, str]:
    return {0: "Unknown", **{k: name for k, name in enumerate(ROI_CLASSES[cls], start=1)}}


_GROUND_TRUTH_DESCRIPTION = (
    "Synthetic responses on fsaverage5, not brain data. Per challenge vertex, the noise-free "
    "signal is a weighted sum of six standardised terms: (1) contrast: local luminance-gradient "
    "energy pooled by a Gaussian pRF (position from the vertex's place in the retinotopic map; "
    "contralateral hemifield; ventral = upper field; eccentricity grows anteriorly; larger pRFs "
    "in higher areas) and raised to a compressive exponent (CSS model); (2) luminance and (3) "
    "colour saturation in the same pRF; (4) semantic: sum over drawn objects of the vertex's "
    "graded category preference x sqrt(object area) x a broad spatial tuning, plus the "
    "background's 'place-ness', divisively normalised by scene clutter and saturated; (5) "
    "global image properties with random weights; (6) idiosyncratic per-image factors that no "
    "image model can compute. Early visual vertices weight (1) most, category-ROI vertices "
    "(4), other vertices a spatially smooth random mix. Single trials = snr x signal + "
    "spatially smooth unit noise, with per-session offsets and gains; each image is shown 3 "
    "times (a few test images 2 or 1), trials are z-scored per vertex within each session and "
    "averaged over repeats. ncsnr is computed from the repeats as in NSD and the noise ceiling "
    "from it with neuroenc.evaluation.metrics.noise_ceiling_from_ncsnr. Per-vertex parameters are in "
    "demo_ground_truth/subjXX_<hemi>.npz, per-image content in demo_ground_truth/images.csv."
)


def generate_demo_dataset(
    root: str | Path,
    *,
    subjects: Sequence[int] = (1, 2),
    n_train: int = 1000,
    n_test: int = 200,
    image_size: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the Algonauts 2023 layout and return its root.

    The dataset is a deterministic function of the arguments (except ``progress``): on
    one installation the same seed gives identical arrays and identical PNG bytes (other
    Pillow/FreeType or BLAS builds may change text rendering or the last bits of floats).

    Parameters
    ----------
    root : str or Path
        Folder to create. It must not exist, or be empty. The dataset is built in a
        temporary sibling folder and moved into place with one ``os.replace``, so an
        interrupted run never leaves a complete-looking, half-written ``root``. (A run
        killed outright, e.g. by SIGKILL, can leave a hidden ``.<name>.partial-*``
        sibling; it is safe to delete.)
    subjects : sequence of int
        Subject numbers; one folder ``subjXX`` each. Anatomy (challenge-space boundary,
        ROI positions and sizes), response weights and SNR differ between subjects.
    n_train, n_test : int
        Training and test images per subject. Test images are shared by all subjects
        (like NSD's shared images); 10% of the training images are shared as well and
        the rest are distinct. Every distinct image has a unique 0-based nsd id.
    image_size : int
        Side of the square RGB PNG images, in pixels (they span 8.4 deg as in NSD).
    seed : int
        Seed of every random choice.
    progress : bool
        Print stage timings to stderr.

    Returns
    -------
    root : Path
        The dataset root, containing::

            subjXX/training_split/training_fmri/{lh,rh}_training_fmri.npy  float32 (n_train, n_vertices_hemi)
            subjXX/training_split/training_images/train-0001_nsd-00013.png
            subjXX/test_split/test_images/test-0001_nsd-00845.png
            subjXX/test_split/test_fmri/{lh,rh}_test_fmri.npy              float32 (n_test, n_vertices_hemi)
            subjXX/test_split/noise_ceiling/{lh,rh}_noise_ceiling.npy      float32 (n_vertices_hemi,) in [0, 1]
            subjXX/roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy      int32 (10242,) 0/1
            subjXX/roi_masks/{lh,rh}.<class>_challenge_space.npy           int32 (n_vertices_hemi,)
            subjXX/roi_masks/{lh,rh}.<class>_fsaverage_space.npy           int32 (10242,)
            subjXX/roi_masks/mapping_<class>.npy                           dict {label: name}
            demo_captions.csv            nsd_id,caption (one row per distinct image)
            demo_info.json               version, parameters, ground-truth description
            demo_ground_truth/images.csv           per-image categories drawn
            demo_ground_truth/subjXX_{lh,rh}.npz   per challenge vertex: fsaverage_index,
                prf_x_deg, prf_y_deg, prf_sigma_deg, prf_exponent, eccentricity_deg,
                polar_angle_deg, early_visual_weight, category_selectivity,
                category_preference (n, 7) over ``categories``, term_weights (n, 6) over
                ``terms``, snr (single-trial signal sd / noise sd), ncsnr (measured)

        Images within a split are ordered by nsd id.

    Notes
    -----
    Ground-truth response model, per challenge vertex ``v`` and image ``i``::

        signal[i, v] = standardise(sum_t weight[v, t] * standardise(term_t[i, v]))
        trial        = snr[v] * signal[i, v] + noise          (noise: unit sd, spatially smooth)

    with terms (all standardised over the subject's images):

    - ``contrast``: ``(sum_p prf_v(p) * E_i(p)) ** n_v``, ``E_i`` the local energy of the
      luminance gradient on a 32 x 32 grid, ``prf_v`` a Gaussian normalised over the whole
      visual field (grey screen outside the image contributes nothing), ``n_v`` < 1 a
      compressive exponent (Kay et al. 2013) that shrinks from V1 to hV4;
    - ``luminance`` and ``colour`` (saturation) pooled by the same pRF;
    - ``semantic``: ``sum_objects pref_v[category] * sqrt(area) * tuning_v(position)`` plus
      ``pref_v['place'] * place-ness of the background``, divided by the square root of
      scene clutter and raised to 0.8. Category ROIs prefer their category with graded
      secondary preferences (face ROIs also like animals and, a little, bodies);
    - ``global``: random mix of image-wide mean luminance, contrast, saturation, object
      count, animacy and number of words;
    - ``idiosyncratic``: a random mix of four per-image factors shared across subjects and
      not computable from the pixels (a model cannot reach the noise ceiling).

    Weights: early visual vertices mostly ``contrast``; vertices near category ROIs mostly
    ``semantic``; elsewhere a spatially smooth random mix. SNR is higher in early visual
    cortex and category ROIs, lower for peripheral V1 whose pRF lies off the image, and
    varies smoothly across the surface. Each image is shown 3 times (a few test images 2
    or 1 times); trials get per-session offsets and gains, are z-scored per vertex within
    each session and averaged over repeats. ncsnr = sqrt(max(0, 1 - s2)) / sqrt(s2), with
    ``s2`` the pooled within-image variance of the z-scored trials, and the noise ceiling
    follows from it (:func:`neuroenc.evaluation.metrics.noise_ceiling_from_ncsnr`).
    """
    t0 = time.perf_counter()
    subj = _validate(subjects, n_train, n_test, image_size, seed)
    n_train, n_test, image_size, seed = int(n_train), int(n_test), int(image_size), int(seed)
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root}: already exists and is not an empty folder; choose a new path or remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        _write_dataset(tmp, subj, n_train, n_test, image_size, seed, progress, t0)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the dataset is not
        try:
            if root.exists():
                root.rmdir()  # empty (checked above); some platforms cannot replace a folder
            os.replace(tmp, root)
        except OSError as err:  # another process finished the same dataset first
            raise FileExistsError(f"{root}: appeared while this dataset was being generated") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log(progress, t0, f"done: {root}")
    return root


def _write_dataset(
    out: Path, subj: tuple[int, ...], n_train: int, n_test: int, image_size: int, seed: int, progress: bool, t0: float
) -> None:
    # --- which images each subject sees ----------------------------------------------
    rng_ids = np.random.default_rng([seed, 1])
    n_shared = _n_shared_train(n_train, len(subj))
    n_unique = n_train - n_shared
    n_distinct = n_test + n_shared + len(subj) * n_unique
    ids = rng_ids.choice(_N_NSD_IMAGES, size=n_distinct, replace=False)
    test_ids = np.sort(ids[:n_test])
    shared_ids = ids[n_test : n_test + n_shared]
    train_ids = {
        s: np.sort(np.concatenate([shared_ids, ids[n_test + n_shared + k * n_unique : n_test + n_shared + (k + 1) * n_unique]]))
        for k, s in enumerate(subj)
    }
    all_ids = np.sort(ids)
    row_of = {int(i): r for r, i in enumerate(all_ids)}

    # --- images: each depends only on (seed, nsd id) -------------------------------------
    _log(progress, t0, f"drawing {len(all_ids)} images")
    n = len(all_ids)
    pngs: list[bytes] = []
    scenes: list[_Scene] = []
    contrast = np.zeros((n, _GRID * _GRID), np.float32)
    lum = np.zeros_like(contrast)
    sat = np.zeros_like(contrast)
    obj = [np.zeros((n, _MAX_OBJECTS), dt) for dt in (np.int64, np.float64, np.float64, np.float64)]
    # Threads: PIL and numpy release the GIL for most of the work, and each image has its
    # own generator, so the result does not depend on scheduling.
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        rendered = pool.map(lambda i: _render_image(seed, int(i), image_size), all_ids)
        for r, (png, scene, pixel) in enumerate(rendered):
            pngs.append(png)
            scenes.append(scene)
            contrast[r], lum[r], sat[r] = pixel
            for arr, val in zip(obj, _scene_features(scene)):
                arr[r] = val
    place = np.array([s.place_strength for s in scenes])
    n_words = np.array([sum(o.category == "word" for o in s.objects) for s in scenes], dtype=float)
    animacy = np.array([sum(math.sqrt(o.area) for o in s.objects if o.category in ("face", "body", "animal")) for s in scenes])
    global_props = np.stack(
        [lum.mean(1), np.sqrt(contrast.mean(1)), sat.mean(1), [len(s.objects) for s in scenes], animacy, n_words], axis=1
    )
    latent = np.random.default_rng([seed, 3]).standard_normal((n, 4))
    feats = _ImageFeatures(contrast, lum, sat, obj[0], obj[1], obj[2], obj[3], place, global_props, latent)

    # --- subjects ----------------------------------------------------------------------
    gt_dir = out / "demo_ground_truth"
    gt_dir.mkdir()
    info_subjects: dict[str, Any] = {}
    for s in subj:
        name = f"subj{s:02d}"
        _log(progress, t0, f"{name}: anatomy and responses")
        sdir = out / name
        tr_img = sdir / "training_split" / "training_images"
        te_img = sdir / "test_split" / "test_images"
        dirs = {
            "train_fmri": sdir / "training_split" / "training_fmri",
            "test_fmri": sdir / "test_split" / "test_fmri",
            "nc": sdir / "test_split" / "noise_ceiling",
            "roi": sdir / "roi_masks",
        }
        for d in (tr_img, te_img, *dirs.values()):
            d.mkdir(parents=True)
        for k, i in enumerate(train_ids[s], start=1):
            (tr_img / f"train-{k:04d}_nsd-{int(i):05d}.png").write_bytes(pngs[row_of[int(i)]])
        for k, i in enumerate(test_ids, start=1):
            (te_img / f"test-{k:04d}_nsd-{int(i):05d}.png").write_bytes(pngs[row_of[int(i)]])
        rows = np.array([row_of[int(i)] for i in np.concatenate([train_ids[s], test_ids])])
        test_reps = _test_repeats(n_test, np.random.default_rng([seed, 4, s]))
        info_hemi: dict[str, Any] = {}
        for h_idx, hemi in enumerate(HEMISPHERES):
            anat = _build_anatomy(hemi, np.random.default_rng([seed, 5, s, h_idx]))
            vertices = np.flatnonzero(anat.challenge)
            resp = _simulate_trials(hemi, anat, vertices, feats, rows, n_train, test_reps, np.random.default_rng([seed, 6, s, h_idx]))
            np.save(dirs["train_fmri"] / f"{hemi}_training_fmri.npy", resp.train)
            np.save(dirs["test_fmri"] / f"{hemi}_test_fmri.npy", resp.test)
            np.save(dirs["nc"] / f"{hemi}_noise_ceiling.npy", resp.noise_ceiling)
            np.save(dirs["roi"] / f"{hemi}.all-vertices_fsaverage_space.npy", anat.challenge.astype(np.int32))
            for cls in ROI_CLASSES:
                np.save(dirs["roi"] / f"{hemi}.{cls}_fsaverage_space.npy", anat.labels[cls].astype(np.int32))
                np.save(dirs["roi"] / f"{hemi}.{cls}_challenge_space.npy", anat.labels[cls][vertices].astype(np.int32))
            np.savez(
                gt_dir / f"{name}_{hemi}.npz",
                fsaverage_index=vertices.astype(np.int32),
                prf_x_deg=anat.prf_x[vertices].astype(np.float32),
                prf_y_deg=anat.prf_y[vertices].astype(np.float32),
                prf_sigma_deg=anat.prf_sigma[vertices].astype(np.float32),
                prf_exponent=anat.prf_exponent[vertices].astype(np.float32),
                eccentricity_deg=anat.eccentricity[vertices].astype(np.float32),
                polar_angle_deg=anat.polar_angle[vertices].astype(np.float32),
                early_visual_weight=anat.early[vertices].astype(np.float32),
                category_selectivity=anat.selectivity[vertices].astype(np.float32),
                category_preference=anat.preference[vertices].astype(np.float32),
                categories=np.array(CATEGORIES),
                term_weights=anat.weights[vertices].astype(np.float32),
                terms=np.array(_TERMS),
                snr=anat.snr[vertices].astype(np.float32),
                ncsnr=resp.ncsnr.astype(np.float32),
            )
            info_hemi[hemi] = {
                "n_vertices": int(len(vertices)),
                "median_noise_ceiling": round(float(np.median(resp.noise_ceiling)), 4),
            }
        for cls in ROI_CLASSES:
            np.save(dirs["roi"] / f"mapping_{cls}.npy", _mapping(cls))
        info_subjects[name] = {
            "n_train": n_train,
            "n_test": n_test,
            "test_images_by_repeats": {str(k): int((test_reps == k).sum()) for k in (1, 2, 3)},
            "hemispheres": info_hemi,
        }

    # --- captions, image content, info -------------------------------------------------
    with open(out / "demo_captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["nsd_id", "caption"])
        for i, sc in zip(all_ids, scenes):
            w.writerow([int(i), sc.caption])
    with open(gt_dir / "images.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["nsd_id", "background", *CATEGORIES, "n_objects"])
        for i, sc in zip(all_ids, scenes):
            amount = {c: 0.0 for c in CATEGORIES}
            for o in sc.objects:
                amount[o.category] += math.sqrt(o.area)
            amount["place"] += sc.place_strength
            w.writerow([int(i), sc.background, *(f"{amount[c]:.4f}" for c in CATEGORIES), len(sc.objects)])
    info = {
        "generator": "neuroenc_builtins.demo",
        "generator_version": DEMO_GENERATOR_VERSION,
        "params": {"subjects": list(subj), "n_train": n_train, "n_test": n_test, "image_size": image_size, "seed": seed},
        "surface": "fsaverage5",
        "n_fsaverage_vertices_per_hemisphere": N_FSAVERAGE5_VERTICES,
        "visual_field_deg": _VISUAL_FIELD_DEG,
        "categories": list(CATEGORIES),
        "roi_classes": {k: list(v) for k, v in ROI_CLASSES.items()},
        "n_distinct_images": int(n),
        "n_shared_training_images": int(n_shared),
        "subjects": info_subjects,
        "ground_truth": _GROUND_TRUTH_DESCRIPTION,
    }
    # Written last: inside the temporary folder, its presence marks a finished dataset.
    (out / "demo_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


# The signature is the single source of the defaults (taken once, at import).
_GENERATOR_DEFAULTS = {
    name: p.default for name, p in inspect.signature(generate_demo_dataset).parameters.items() if name != "root"
}


def _resolve_params(generator_params: dict[str, Any]) -> dict[str, Any]:
    """Return all generator parameters (defaults filled in, types normalised)."""
    unknown = sorted(set(generator_params) - set(_GENERATOR_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown demo dataset parameter(s) {unknown}; known: {', '.join(_GENERATOR_DEFAULTS)}")
    params = dict(_GENERATOR_DEFAULTS)
    params.update(generator_params)
    params["subjects"] = list(_validate(params["subjects"], params["n_train"], params["n_test"], params["image_size"], params["seed"]))
    for k in ("n_train", "n_test", "image_size", "seed"):
        params[k] = int(params[k])
    params["progress"] = bool(params["progress"])
    return params


def _cache_key(params: dict[str, Any]) -> str:
    # progress does not change the output, so it is not part of the key.
    keyed = {k: v for k, v in params.items() if k != "progress"}
    blob = json.dumps({"version": DEMO_GENERATOR_VERSION, "params": keyed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _default_cache_dir() -> Path:
    base = os.environ.get("NEUROENC_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "neuroenc") / "demo-data"


def ensure_demo_dataset(cache_dir: str | Path | None = None, **generator_params: Any) -> Path:
    """Return the root of a cached demo dataset, generating it on first use.

    Parameters
    ----------
    cache_dir : str or Path, optional
        Folder holding cached datasets. Default: ``$NEUROENC_CACHE_DIR/demo-data``, or
        ``~/.cache/neuroenc/demo-data`` when the variable is unset.
    **generator_params
        Keyword arguments of :func:`generate_demo_dataset` (``subjects``, ``n_train``,
        ``n_test``, ``image_size``, ``seed``, ``progress``).

    Returns
    -------
    root : Path
        ``cache_dir / "demo-<hash>"``, the hash taken over :data:`DEMO_GENERATOR_VERSION`
        and every parameter that changes the output, so a new generator version or other
        parameters never reuse a stale dataset. A dataset that exists is returned as is.
    """
    params = _resolve_params(generator_params)
    base = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
    root = base / f"demo-{_cache_key(params)}"
    # Generation moves a finished folder into place atomically, so existence means complete.
    if (root / "demo_info.json").is_file():
        return root
    try:
        return generate_demo_dataset(root, **params)
    except FileExistsError:
        if (root / "demo_info.json").is_file():  # a concurrent process won the race
            return root
        raise
