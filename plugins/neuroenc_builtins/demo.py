"""A synthetic, Algonauts-2023-shaped stand-in for the Natural Scenes Dataset.

:func:`generate_demo_dataset` writes, deterministically from a seed, a small dataset in the
exact layout of the Algonauts 2023 challenge release (``shared/REFERENCE.md`` section 2)
so that the real reader, the models, the metrics and the plots all run end to end without
the 40 GB download. :func:`ensure_demo_dataset` caches one dataset per parameter set.

What is simulated
-----------------
*Space.* The fsaverage5 surface bundled with nilearn (10,242 vertices per hemisphere;
works offline). Each subject's *challenge space* is a subset of a few thousand vertices
per hemisphere covering posterior visual cortex; its boundary differs a little between
subjects, so vertex counts differ as in the real data.

*ROIs.* Early visual areas (V1v/d, V2v/d, V3v/d, hV4) are laid out along the calcarine
sulcus: the sulcal fundus is traced on the surface from the occipital pole to the
parieto-occipital junction, V1 is a band around it (ventral bank = upper visual field),
V2 and V3 are successive bands around V1 and hV4 lies beyond ventral V3. Eccentricity
increases anteriorly with a log cortical-magnification law; pRFs are larger in higher
areas and at larger eccentricity; each hemisphere sees the contralateral hemifield.
Category-selective ROIs (faces, bodies, places, words) are geodesic disks around
literature coordinates (ventral occipitotemporal, lateral occipitotemporal, medial), and
the seven NSD streams tile the challenge space. Labels of different classes may overlap;
within a class each vertex carries one label.

*Images.* Procedurally drawn RGB scenes: faces, people, houses and buildings, written
words, vehicles, food and animals at random positions, sizes and colours on varied
backgrounds (landscapes, rooms, gratings, checkerboards, gradients, noise), plus texture
patches, so that low-level properties vary over the visual field. Every image has a
caption generated from what was actually drawn.

*Responses.* See :func:`generate_demo_dataset` for the ground-truth model: pRF-weighted,
compressive local contrast for early visual vertices; graded, position-tolerant category
preferences for category-selective vertices; a spatially smooth random mix elsewhere; plus
trial noise, per-session drifts, per-session z-scoring and averaging of repeats as in
NSD. The noise ceiling is computed from the simulated repeats with NSD's ``ncsnr``.

Nothing here is real brain data; the ROI placements are plausible approximations for a
demo, not an atlas.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from neuroenc_builtins.algonauts import ROI_NAMES
from neuroenc.metrics import noise_ceiling_from_ncsnr

__all__ = [
    "DEMO_GENERATOR_VERSION",
    "generate_demo_dataset",
    "ensure_demo_dataset",
    "ROI_CLASSES",
    "CATEGORIES",
]

#: Version of the generator's output; part of the cache key. Bump it whenever a change
#: alters any written byte for some parameter set.
DEMO_GENERATOR_VERSION = "1.0.1"  # 1.0.1: generator module renamed in demo_info.json

HEMISPHERES = ("lh", "rh")
_NILEARN_HEMI = {"lh": "left", "rh": "right"}
N_FSAVERAGE5_VERTICES = 10242

#: ROI classes and names in label order (label k = position k, 0 = 'Unknown'), as in the
#: Algonauts 2023 ``mapping_<class>.npy`` files.
ROI_CLASSES: dict[str, tuple[str, ...]] = ROI_NAMES

#: Semantic categories the scenes are composed of; the category ROIs prefer the first four.
CATEGORIES = ("face", "body", "place", "word", "vehicle", "food", "animal")

# NSD images subtend 8.4 deg of visual angle (Allen et al. 2022, Nat. Neurosci.).
_VISUAL_FIELD_DEG = 8.4
# NSD repeats each image 3 times; a session had 750 trials. Shorter sessions here so that
# a small demo still has several sessions to z-score within.
_TRIALS_PER_SESSION = 300
_N_REPEATS = 3
# Fraction of each subject's training images that all subjects share (NSD's shared images
# are partly in every subject's training split).
_SHARED_TRAIN_FRACTION = 0.1
_N_NSD_IMAGES = 73000
# Fixed response-model grid: contrast is pooled on this many cells per image side,
# whatever the image size, so the ground truth is defined in degrees, not pixels.
_GRID = 32

_TERMS = ("contrast", "luminance", "colour", "semantic", "global", "idiosyncratic")


def _log(progress: bool, t0: float, message: str) -> None:
    if progress:
        print(f"[neuroenc demo {time.perf_counter() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Surface: fsaverage5 meshes and graph utilities
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mesh:
    """One fsaverage5 hemisphere; all arrays have 10,242 rows."""

    pial: np.ndarray  # (n, 3) mm, fsaverage (MNI305-like) space: landmarks are looked up here
    sphere: np.ndarray  # (n, 3) registration sphere scaled to radius 100: smooth distances
    sulc: np.ndarray  # (n,) sulcal depth, positive in sulci
    graph_sphere: Any  # scipy csr (n, n) edge lengths on the sphere
    graph_fundus: Any  # scipy csr (n, n) midthickness edge lengths, costly on gyral crowns
    smoother: Any  # scipy csr (n, n) row-normalised (adjacency + identity)


@lru_cache(maxsize=2)
def _load_mesh(hemi: str) -> _Mesh:
    from nilearn import datasets  # imported here: nilearn takes seconds to import
    from scipy import sparse

    side = _NILEARN_HEMI[hemi]
    fsavg = datasets.load_fsaverage("fsaverage5")
    pial = np.asarray(fsavg["pial"].parts[side].coordinates, dtype=np.float64)
    white = np.asarray(fsavg["white_matter"].parts[side].coordinates, dtype=np.float64)
    sphere = np.asarray(fsavg["sphere"].parts[side].coordinates, dtype=np.float64)
    sphere = 100.0 * sphere / np.linalg.norm(sphere, axis=1, keepdims=True)
    faces = np.asarray(fsavg["pial"].parts[side].faces, dtype=np.int64)
    sulc_img = datasets.load_fsaverage_data(mesh="fsaverage5", data_type="sulcal")
    sulc = np.asarray(sulc_img.data.parts[side], dtype=np.float64).ravel()
    if pial.shape[0] != N_FSAVERAGE5_VERTICES:
        raise RuntimeError(
            f"nilearn's fsaverage5 {side} hemisphere has {pial.shape[0]} vertices; "
            f"expected {N_FSAVERAGE5_VERTICES}"
        )
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    n = pial.shape[0]

    def weighted(coords: np.ndarray, cost: np.ndarray | None = None) -> sparse.csr_matrix:
        length = np.linalg.norm(coords[edges[:, 0]] - coords[edges[:, 1]], axis=1)
        if cost is not None:
            length = length * 0.5 * (cost[edges[:, 0]] + cost[edges[:, 1]])
        m = sparse.coo_matrix((length, (edges[:, 0], edges[:, 1])), shape=(n, n))
        return (m + m.T).tocsr()

    # Tracing the calcarine fundus: walking on gyral crowns (low sulc) costs up to 5x more.
    fundus_cost = 1.0 + 4.0 * np.clip(1.2 - sulc, 0.0, None)
    adjacency = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    adjacency = (adjacency + adjacency.T + sparse.identity(n)).tocsr()
    smoother = sparse.diags(1.0 / np.asarray(adjacency.sum(axis=1)).ravel()) @ adjacency
    for arr in (pial, sphere, sulc):
        arr.setflags(write=False)
    return _Mesh(
        pial=pial,
        sphere=sphere,
        sulc=sulc,
        graph_sphere=weighted(sphere),
        graph_fundus=weighted((pial + white) / 2.0, fundus_cost),
        smoother=smoother.tocsr(),
    )


def _nearest_vertex(coords: np.ndarray, xyz: Sequence[float]) -> int:
    return int(np.argmin(np.linalg.norm(coords - np.asarray(xyz, dtype=np.float64), axis=1)))


def _smooth_field(mesh: _Mesh, values: np.ndarray, n_iter: int) -> np.ndarray:
    """Return ``values`` (n_vertices, ...) averaged over mesh neighbours ``n_iter`` times."""
    for _ in range(n_iter):
        values = mesh.smoother @ values
    return values


def _random_field(mesh: _Mesh, rng: np.random.Generator, n_iter: int = 6, size: int | None = None) -> np.ndarray:
    """Return a spatially smooth Gaussian field with unit variance over vertices."""
    shape = (N_FSAVERAGE5_VERTICES,) if size is None else (N_FSAVERAGE5_VERTICES, size)
    f = _smooth_field(mesh, rng.standard_normal(shape), n_iter)
    return (f - f.mean(axis=0)) / f.std(axis=0)


# ---------------------------------------------------------------------------------------
# Anatomy: retinotopy, ROIs, streams and challenge space of one subject's hemisphere
# ---------------------------------------------------------------------------------------

# Landmarks in fsaverage (MNI305-like) mm for the LEFT hemisphere; x is mirrored for the
# right one. Category-ROI centres are typical localiser peaks (faces: OFA on the inferior
# occipital gyrus, FFA-1/-2 = pFus/mFus on the lateral fusiform; bodies: EBA in lateral
# occipitotemporal cortex, FBA beside FFA; places: OPA near the transverse occipital
# sulcus, PPA on the collateral sulcus, RSC behind the splenium; words: OWFA and the VWFAs
# along the occipitotemporal sulcus). Radii are geodesic, in sphere units (radius-100
# sphere; about 1.4 sphere units per mm of occipital cortex).
# (centre, radius, category preferences, size scale lh, size scale rh)
_FACE = {"face": 1.0, "body": 0.3, "animal": 0.35, "word": 0.1}
_BODY = {"body": 1.0, "face": 0.3, "animal": 0.45, "place": 0.05}
_PLACE = {"place": 1.0, "vehicle": 0.3, "food": 0.05}
_WORD = {"word": 1.0, "face": 0.2, "food": 0.05}
_CATEGORY_ROIS: dict[str, dict[str, tuple[tuple[float, float, float], float, dict[str, float], float, float]]] = {
    "floc-bodies": {
        "EBA": ((-47, -73, 3), 17.0, _BODY, 1.0, 1.1),
        "FBA-1": ((-43, -56, -16), 11.0, _BODY, 1.0, 1.0),
        "FBA-2": ((-43, -42, -18), 10.0, _BODY, 1.0, 1.0),
        "mTL-bodies": ((-33, -34, -20), 8.0, _BODY, 1.0, 1.0),
    },
    "floc-faces": {
        "OFA": ((-40, -80, -8), 11.0, _FACE, 0.9, 1.1),
        "FFA-1": ((-40, -62, -18), 11.0, _FACE, 0.9, 1.15),
        "FFA-2": ((-40, -48, -20), 10.0, _FACE, 0.9, 1.15),
        "mTL-faces": ((-28, -26, -24), 8.0, {"face": 1.0, "animal": 0.2}, 1.0, 1.0),
        "aTL-faces": ((-36, -10, -34), 8.0, {"face": 1.0}, 1.0, 1.0),
    },
    "floc-places": {
        "OPA": ((-33, -82, 22), 14.0, _PLACE, 1.0, 1.0),
        "PPA": ((-26, -45, -10), 14.0, _PLACE, 1.0, 1.0),
        "RSC": ((-14, -56, 12), 11.0, _PLACE, 1.0, 1.0),
    },
    "floc-words": {
        # Word selectivity is left-lateralised: larger ROIs in lh.
        "OWFA": ((-42, -77, -12), 10.0, _WORD, 1.15, 0.8),
        "VWFA-1": ((-44, -58, -13), 11.0, _WORD, 1.15, 0.8),
        "VWFA-2": ((-44, -46, -14), 10.0, _WORD, 1.15, 0.75),
        "mfs-words": ((-36, -40, -16), 8.0, _WORD, 1.1, 0.75),
        "mTL-words": ((-46, -38, -16), 8.0, _WORD, 1.1, 0.75),
    },
}
# Stream seeds beyond early visual cortex; their disks (radius in sphere units) and the
# early areas make up the challenge space, and each vertex takes the nearest seed's stream.
_STREAM_SEEDS: dict[str, tuple[tuple[float, float, float], float]] = {
    "midventral": ((-30, -72, -12), 40.0),
    "midlateral": ((-40, -86, 2), 40.0),
    "midparietal": ((-24, -86, 24), 38.0),
    "ventral": ((-36, -46, -16), 50.0),
    "lateral": ((-48, -64, 6), 44.0),
    "parietal": ((-26, -66, 44), 42.0),
}
# Occipital-pole-to-parieto-occipital-junction course of the calcarine sulcus.
_CALCARINE_END = (-24.0, -62.0, 4.0)
# Early visual layout in sphere units along (u) and across (v) the calcarine:
_EARLY = dict(
    u_fovea=-20.0,  # V1 starts behind the pole: the foveal confluence is on the lateral side
    u_max=60.0,  # where the mapped (<= ~10 deg) part of V1 ends
    v1_slope=0.45,  # V1 half-width grows with distance from the fovea (+ 10 units)
    w_v2=14.0,
    w_v3=12.0,
    w_hv4=14.0,
    max_ecc=10.0,
)
# pRF size sigma = a + b * eccentricity (deg) and compressive exponent per area; sizes and
# exponents follow the trends of Dumoulin & Wandell 2008 and Kay et al. 2013 (CSS model).
_PRF = {1: (0.25, 0.12, 0.55), 2: (0.35, 0.18, 0.45), 3: (0.45, 0.28, 0.38), 4: (0.7, 0.45, 0.32)}


@dataclass
class _HemiAnatomy:
    """Per-vertex ground truth of one subject's hemisphere, over all 10,242 vertices."""

    challenge: np.ndarray  # (n,) bool
    labels: dict[str, np.ndarray]  # class -> (n,) int32 label (0 = Unknown)
    prf_x: np.ndarray  # (n,) deg, + = right visual field
    prf_y: np.ndarray  # (n,) deg, + = upper visual field
    prf_sigma: np.ndarray  # (n,) deg
    prf_exponent: np.ndarray  # (n,)
    eccentricity: np.ndarray  # (n,) deg
    polar_angle: np.ndarray  # (n,) deg, +90 upper vertical meridian, -90 lower
    sem_x: np.ndarray  # (n,) deg, centre of the broad spatial tuning of semantic responses
    sem_y: np.ndarray
    sem_sigma: np.ndarray
    early: np.ndarray  # (n,) float in [0, 1]: how "early visual" a vertex is
    selectivity: np.ndarray  # (n,) float in [0, 1]: strength of category selectivity
    preference: np.ndarray  # (n, n_categories) category preference
    weights: np.ndarray  # (n, n_terms) mixing weights of the response terms
    snr: np.ndarray  # (n,) signal sd / noise sd of single trials


def _calcarine_chart(mesh: _Mesh, mirror: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return coordinates (u, v) along and across the calcarine sulcus, each (n_vertices,).

    ``u`` is the arc length (sphere units) from the occipital pole along the traced sulcal
    fundus (negative behind the pole), ``v`` the signed distance from it, positive on the
    dorsal (cuneus) side.
    """
    from scipy.sparse import csgraph

    pole = int(np.argmin(mesh.pial[:, 1]))
    end_xyz = np.array(_CALCARINE_END) * mirror + rng.normal(0, 2.0, 3)
    end = _nearest_vertex(mesh.pial, end_xyz)
    _, pred = csgraph.dijkstra(mesh.graph_fundus, directed=False, indices=pole, return_predecessors=True)
    path = [end]
    while path[-1] != pole:
        path.append(int(pred[path[-1]]))
    pts = mesh.sphere[np.array(path[::-1])]
    # The fundus path zig-zags along mesh edges; smooth it before measuring along it.
    kernel = np.array([1.0, 2.0, 3.0, 2.0, 1.0]) / 9.0
    padded = np.concatenate([np.repeat(pts[:1], 2, 0), pts, np.repeat(pts[-1:], 2, 0)])
    pts = np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(3)], axis=1)
    back = pts[0] - pts[min(2, len(pts) - 1)]
    ahead = pts[-1] - pts[max(len(pts) - 3, 0)]
    back_len, ahead_len = 30.0, 30.0
    pts = np.concatenate(
        [[pts[0] + back_len * back / np.linalg.norm(back)], pts, [pts[-1] + ahead_len * ahead / np.linalg.norm(ahead)]]
    )
    pts = 100.0 * pts / np.linalg.norm(pts, axis=1, keepdims=True)
    seg = np.diff(pts, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    start = np.concatenate([[0.0], np.cumsum(seg_len)[:-1]]) - seg_len[0]  # u = 0 at the pole
    x = mesh.sphere
    t = np.einsum("vsk,sk->vs", x[:, None, :] - pts[None, :-1], seg) / (seg_len**2)[None]
    t = np.clip(t, 0.0, 1.0)
    foot = pts[None, :-1] + t[..., None] * seg[None]
    dist = np.linalg.norm(x[:, None, :] - foot, axis=-1)
    j = np.argmin(dist, axis=1)
    idx = np.arange(len(x))
    q = foot[idx, j]
    u = start[j] + t[idx, j] * seg_len[j]
    sign = np.sign(np.einsum("vk,vk->v", np.cross(x - q, seg[j]), q))
    sign[sign == 0] = 1.0
    # Orient so the cuneus (dorsal to the calcarine) is positive.
    cuneus = _nearest_vertex(mesh.pial, np.array([-8.0, -85.0, 22.0]) * mirror)
    if sign[cuneus] < 0:
        sign = -sign
    return u, sign * dist[idx, j]


def _build_anatomy(hemi: str, rng: np.random.Generator) -> _HemiAnatomy:
    """Return the ground-truth anatomy of one subject's hemisphere (random per subject)."""
    from scipy.sparse import csgraph

    mesh = _load_mesh(hemi)
    n = N_FSAVERAGE5_VERTICES
    # Landmark tables give left-hemisphere coordinates; mirror x for the right hemisphere.
    mirror = np.array([1.0 if hemi == "lh" else -1.0, 1.0, 1.0])
    # Each hemisphere sees the contralateral visual field.
    field_side = 1.0 if hemi == "lh" else -1.0

    def jit(sd: float = 0.05) -> float:
        """Return a random factor near 1: how much this subject deviates from the template."""
        return float(np.exp(rng.normal(0.0, sd)))

    # --- early visual areas -----------------------------------------------------------
    u, v = _calcarine_chart(mesh, mirror, rng)
    e = _EARLY
    u0, u_max = e["u_fovea"], e["u_max"] * jit(0.04)
    w1 = e["v1_slope"] * jit() * (np.maximum(u - u0, 0.0) + 10.0)
    in_v1 = (u >= u0) & (u <= u_max) & (np.abs(v) <= w1)
    d_v1, _, src = csgraph.dijkstra(
        mesh.graph_sphere, directed=False, indices=np.flatnonzero(in_v1), min_only=True, return_predecessors=True
    )
    # Iso-eccentricity lines cross area borders: a V2/V3/hV4 vertex takes the eccentricity
    # coordinate of the nearest V1 vertex.
    u_eff = np.where(in_v1, u, u[np.maximum(src, 0)])
    # Band widths grow with eccentricity like V1's (nominal widths at mid-eccentricity).
    scale = np.clip((u_eff - u0 + 10.0) / 62.0, 0.35, 1.3)
    b2 = e["w_v2"] * jit() * scale
    b3 = b2 + e["w_v3"] * jit() * scale
    b4 = b3 + e["w_hv4"] * jit() * scale
    dorsal = v > 0
    beyond = ~in_v1 & (u <= u_max) & (u >= u0 - 15.0)
    area = np.zeros(n, dtype=np.int64)  # 1..4 = V1, V2, V3, hV4
    area[in_v1] = 1
    area[beyond & (d_v1 <= b2)] = 2
    area[beyond & (d_v1 > b2) & (d_v1 <= b3)] = 3
    area[beyond & (d_v1 > b3) & (d_v1 <= b4) & ~dorsal] = 4
    visual = np.zeros(n, dtype=np.int32)  # prf-visualrois label
    for k, (a, is_dorsal) in enumerate([(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)], start=1):
        visual[(area == a) & (dorsal == bool(is_dorsal))] = k
    visual[area == 4] = 7

    # Eccentricity: log cortical magnification (Horton & Hoyt 1991 form), 0 at the fovea,
    # max_ecc at the anterior end of the mapped region.
    ecc0 = 0.75
    lam = (u_max - u0) / math.log(1.0 + e["max_ecc"] / ecc0)
    ecc = ecc0 * (np.exp(np.clip(u_eff - u0, 0.0, None) / lam) - 1.0) + 0.1
    # Polar angle (+90 = upper vertical meridian): V1 maps the horizontal meridian onto the
    # fundus and the vertical meridians onto its borders; V2 and V3 mirror it in turn.
    with np.errstate(invalid="ignore", divide="ignore"):
        frac_v1 = np.clip(v / w1, -1.0, 1.0)
        frac_v2 = np.clip(d_v1 / b2, 0.0, 1.0)
        frac_v3 = np.clip((d_v1 - b2) / (b3 - b2), 0.0, 1.0)
        frac_v4 = np.clip((d_v1 - b3) / (b4 - b3), 0.0, 1.0)
    sgn = np.where(dorsal, -1.0, 1.0)  # dorsal = lower field
    polar = np.zeros(n)
    polar[area == 1] = -90.0 * frac_v1[area == 1]
    polar[area == 2] = (sgn * 90.0 * (1.0 - frac_v2))[area == 2]
    polar[area == 3] = (sgn * 90.0 * frac_v3)[area == 3]
    polar[area == 4] = (90.0 - 180.0 * frac_v4)[area == 4]
    rad = np.deg2rad(polar)
    prf_x = field_side * ecc * np.cos(rad)
    prf_y = ecc * np.sin(rad)
    prf_sigma = np.zeros(n)
    prf_exp = np.zeros(n)
    for a, (s0, s1, expo) in _PRF.items():
        m = area == a
        prf_sigma[m] = s0 + s1 * ecc[m]
        prf_exp[m] = expo

    # --- category ROIs: geodesic disks; selectivity decays smoothly around them ---------
    seeds: list[tuple[str, str, int, float, dict[str, float]]] = []
    for cls, rois in _CATEGORY_ROIS.items():
        for name, (xyz, radius, pref, s_lh, s_rh) in rois.items():
            centre = np.array(xyz, dtype=float) * mirror + rng.normal(0.0, 2.5, 3)
            r = radius * (s_lh if hemi == "lh" else s_rh) * jit(0.08)
            seeds.append((cls, name, _nearest_vertex(mesh.pial, centre), r, pref))
    stream_seeds = []
    for name, (xyz, radius) in _STREAM_SEEDS.items():
        centre = np.array(xyz, dtype=float) * mirror + rng.normal(0.0, 2.5, 3)
        stream_seeds.append((name, _nearest_vertex(mesh.pial, centre), radius * jit(0.06)))
    dist = csgraph.dijkstra(
        mesh.graph_sphere, directed=False, indices=[s[2] for s in seeds] + [s[1] for s in stream_seeds]
    )
    d_roi, d_stream = dist[: len(seeds)], dist[len(seeds) :]

    labels: dict[str, np.ndarray] = {"prf-visualrois": visual}
    preference = np.zeros((n, len(CATEGORIES)))
    selectivity = np.zeros(n)
    for cls, names in ROI_CLASSES.items():
        if not cls.startswith("floc-"):
            continue
        rows = [i for i, s in enumerate(seeds) if s[0] == cls]
        # Normalised distance: < 1 inside the ROI; the ROI of a vertex within a class is
        # the one it is relatively closest to, so within a class labels never overlap.
        nd = np.stack([d_roi[i] / seeds[i][3] for i in rows])
        label_of_row = np.array([names.index(seeds[i][1]) + 1 for i in rows])
        lab = np.zeros(n, dtype=np.int32)
        inside = nd.min(axis=0) < 1.0
        lab[inside] = label_of_row[nd.argmin(axis=0)][inside]
        # A small ROI next to a large one keeps its core (largest first, smallest last),
        # so every ROI has vertices.
        for k in np.argsort([-seeds[i][3] for i in rows], kind="stable"):
            lab[nd[k] < 0.55] = label_of_row[k]
        labels[cls] = lab
        for k, i in enumerate(rows):
            strength = np.exp(-0.5 * (nd[k] / 1.1) ** 2)  # ~0.66 at the ROI border
            pref = np.array([seeds[i][4].get(c, 0.0) for c in CATEGORIES]) * np.exp(rng.normal(0, 0.15, len(CATEGORIES)))
            preference += strength[:, None] * pref[None]
            selectivity = np.maximum(selectivity, strength)

    # Everywhere else: a weak, spatially smooth random mix of category preferences.
    preference += 0.08 * np.exp(0.5 * _random_field(mesh, rng, n_iter=6, size=len(CATEGORIES)))

    # --- challenge space and streams ---------------------------------------------------
    # A subject-specific smooth wobble of the boundary makes vertex counts differ.
    wobble = 1.0 + 0.07 * _random_field(mesh, rng, n_iter=10)
    nd_stream = np.stack([d_stream[i] / s[2] for i, s in enumerate(stream_seeds)]) / wobble[None]
    any_roi = np.zeros(n, dtype=bool)
    for cls in labels:
        any_roi |= labels[cls] > 0
    challenge = (nd_stream.min(axis=0) < 1.0) | any_roi | (area > 0)
    streams = np.zeros(n, dtype=np.int32)
    stream_names = ROI_CLASSES["streams"]
    nearest_stream = np.array([stream_names.index(s[0]) + 1 for s in stream_seeds])[nd_stream.argmin(axis=0)]
    streams[challenge] = nearest_stream[challenge]
    streams[(area >= 1) & (area <= 3)] = 1  # early = V1-V3
    labels["streams"] = streams
    for cls in labels:
        labels[cls] = np.where(challenge, labels[cls], 0).astype(np.int32)

    # --- coarse retinotopy beyond early areas: inherit from the nearest early vertex ----
    early_idx = np.flatnonzero(area > 0)
    d_early, _, src_e = csgraph.dijkstra(
        mesh.graph_sphere, directed=False, indices=early_idx, min_only=True, return_predecessors=True
    )
    src_e = np.maximum(src_e, 0)
    outside = area == 0
    # Higher areas: larger pRFs, pulled towards the fovea, weaker compression exponents.
    prf_x[outside] = 0.7 * prf_x[src_e[outside]]
    prf_y[outside] = 0.7 * prf_y[src_e[outside]]
    prf_sigma[outside] = 1.2 + 0.5 * ecc[src_e[outside]] + 0.04 * d_early[outside]
    prf_exp[outside] = 0.25
    ecc_all = np.hypot(prf_x, prf_y)
    polar_all = np.degrees(np.arctan2(prf_y, np.abs(prf_x)))
    # Category responses tolerate position but keep a contralateral, foveal bias.
    sem_x = 0.4 * prf_x + 0.5 * field_side
    sem_y = 0.4 * prf_y
    sem_sigma = np.full(n, 3.0) * np.exp(rng.normal(0, 0.1, n))

    # --- response-term weights and SNR --------------------------------------------------
    earlyness = np.where(area > 0, 1.0, np.exp(-d_early / 10.0))
    sel = np.clip(selectivity, 0.0, 1.0)
    mix = np.exp(0.4 * _random_field(mesh, rng, n_iter=6, size=len(_TERMS)))  # smooth random mix
    ventral_colour = (labels["streams"] == 2) | (labels["streams"] == 5) | (visual == 7)
    weights = np.stack(
        [
            0.15 + 1.0 * earlyness,  # contrast
            0.08 + 0.22 * earlyness,  # luminance
            0.1 + 0.35 * ventral_colour,  # colour
            0.12 + 1.1 * sel,  # semantic
            np.full(n, 0.22),  # global image properties
            np.full(n, 0.2),  # idiosyncratic, not computable from pixels
        ],
        axis=1,
    ) * mix
    # Peripheral V1 beyond the image sees only grey screen: much less signal there.
    stim = _fraction_in_image(prf_x, prf_y, prf_sigma)
    snr = (0.3 + 0.5 * earlyness + 0.35 * sel) * np.exp(0.35 * _random_field(mesh, rng, n_iter=4))
    snr *= np.where(area > 0, np.sqrt(np.clip(stim, 0.04, 1.0)), 1.0)
    snr = np.clip(snr, 0.02, 2.0)

    return _HemiAnatomy(
        challenge=challenge,
        labels=labels,
        prf_x=prf_x,
        prf_y=prf_y,
        prf_sigma=prf_sigma,
        prf_exponent=prf_exp,
        eccentricity=ecc_all,
        polar_angle=polar_all,
        sem_x=sem_x,
        sem_y=sem_y,
        sem_sigma=sem_sigma,
        early=earlyness,
        selectivity=sel,
        preference=preference,
        weights=weights,
        snr=snr,
    )


def _fraction_in_image(x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Return the fraction of each Gaussian pRF's mass that falls on the image."""
    from scipy.special import erf

    half = _VISUAL_FIELD_DEG / 2.0
    s = np.sqrt(2.0) * np.maximum(sigma, 1e-6)

    def axis(c: np.ndarray) -> np.ndarray:
        return 0.5 * (erf((half - c) / s) - erf((-half - c) / s))

    return axis(x) * axis(y)


# ---------------------------------------------------------------------------------------
# Images: procedural scenes and captions
# ---------------------------------------------------------------------------------------

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 40),
    "orange": (240, 140, 30),
    "yellow": (245, 215, 45),
    "green": (45, 150, 60),
    "blue": (40, 80, 200),
    "purple": (125, 60, 165),
    "pink": (235, 125, 170),
    "brown": (120, 75, 40),
    "black": (25, 25, 25),
    "white": (245, 245, 245),
    "grey": (130, 130, 130),
    "teal": (30, 140, 140),
}
_SKIN = [(241, 194, 160), (224, 172, 125), (198, 134, 86), (141, 85, 54), (92, 58, 38)]
_HAIR = {"dark": (40, 28, 20), "blond": (220, 190, 100), "red": (170, 70, 30), "grey": (170, 170, 170)}
# Written words avoid nouns of the other categories so captions stay unambiguous.
_WORDS = (
    "STOP", "OPEN", "EXIT", "HELLO", "SALE", "NEWS", "MUSIC", "LOVE", "JAZZ", "FRESH",
    "NORTH", "DANGER", "WELCOME", "QUIET", "RELAX", "DREAM", "LUCKY", "HAPPY", "PEACE", "TICKETS",
)  # fmt: skip
_CATEGORY_WEIGHTS = {"face": 0.2, "body": 0.18, "place": 0.12, "word": 0.16, "vehicle": 0.11, "food": 0.11, "animal": 0.12}


@dataclass
class _Object:
    category: str
    phrase: str  # noun phrase for the caption, e.g. "a red car"
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the image
    fill: float  # fraction of the box the drawing covers (for its area)

    @property
    def centre(self) -> tuple[float, float]:
        return (self.box[0] + self.box[2]) / 2.0, (self.box[1] + self.box[3]) / 2.0

    @property
    def area(self) -> float:
        return (self.box[2] - self.box[0]) * (self.box[3] - self.box[1]) * self.fill


@dataclass
class _Scene:
    background: str  # kind, e.g. "field", "stripes"
    bg_adverbial: str  # "in a grassy field under a blue sky"
    bg_nominal: str  # "a grassy field under a blue sky"
    place_strength: float  # how much the background itself is a place (scene)
    objects: list[_Object] = field(default_factory=list)
    patches: list[str] = field(default_factory=list)  # caption clauses for texture patches
    caption: str = ""


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return (xx + 0.5) / size, (yy + 0.5) / size


@lru_cache(maxsize=64)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _mix(c1: Sequence[int], c2: Sequence[int], t: np.ndarray) -> np.ndarray:
    """Return colours interpolated from ``c1`` (t = 0) to ``c2`` (t = 1), shape t.shape + (3,)."""
    t = np.asarray(t, np.float32)
    out = np.empty(t.shape + (3,), np.float32)
    # One channel at a time: numpy broadcasting over a trailing axis of 3 is ~10x slower.
    for c in range(3):
        out[..., c] = np.float32(c1[c]) + t * np.float32(c2[c] - c1[c])
    return out


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _two_colours(rng: np.random.Generator) -> tuple[str, str]:
    names = list(_COLOURS)
    a = int(rng.integers(len(names)))
    b = (a + 1 + int(rng.integers(len(names) - 1))) % len(names)
    return names[a], names[b]


def _position_phrase(cx: float, cy: float) -> str:
    h = "left" if cx < 0.38 else "right" if cx > 0.62 else ""
    v = "upper" if cy < 0.38 else "lower" if cy > 0.62 else ""
    if h and v:
        return f"in the {v} {h}"
    if h:
        return f"on the {h}"
    if v:
        return "at the top" if v == "upper" else "at the bottom"
    return "in the middle"


def _to_image(arr: np.ndarray, size: int) -> Image.Image:
    """Return the float RGB array ``arr`` as a ``size`` x ``size`` image.

    Smooth backgrounds are computed at half the drawing resolution and upsampled: the
    per-pixel numpy work is the slowest part of drawing a scene.
    """
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    # Nearest-neighbour 2x upsampling is exact after the final 2x2 box downsampling.
    return img if img.size == (size, size) else img.resize((size, size), Image.NEAREST)


def _texture(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, dict[str, str]]:
    """Return a ``size`` x ``size`` texture image, its kind and caption phrases for it.

    Phrases: ``"on"`` follows "on"/"against" for a background ("a red and blue
    checkerboard"), ``"name"`` is a short noun phrase ("a checkerboard") and ``"disc"``
    names a round patch of the texture ("a red and blue checkered disc").
    """
    half = size // 2
    xx, yy = _grid(half)
    kind = _pick(rng, ["stripes", "checker", "noise", "gradient", "plain"])
    c1, c2 = _two_colours(rng)
    if kind == "stripes":
        theta = _pick(rng, [0.0, 90.0, 45.0, 135.0])
        orient = {0.0: "vertical", 90.0: "horizontal", 45.0: "diagonal", 135.0: "diagonal"}[theta]
        freq = float(rng.uniform(3, 16))
        t = math.radians(theta)
        phase = float(rng.uniform(0, 2 * np.pi))
        wave = 0.5 + 0.5 * np.sin(
            np.float32(2 * np.pi * freq * math.cos(t)) * xx + np.float32(2 * np.pi * freq * math.sin(t)) * yy + np.float32(phase)
        )
        width = "thin" if freq > 9 else "wide"
        stripes = f"{width} {orient} {c1} and {c2} stripes"
        return _to_image(_mix(_COLOURS[c1], _COLOURS[c2], wave), size), kind, {"on": stripes, "name": f"{orient} stripes", "disc": f"a disc of {stripes}"}
    if kind == "checker":
        k = float(rng.integers(3, 12))
        t = ((np.floor(xx * k) + np.floor(yy * k)) % 2).astype(np.float32)
        phrases = {"on": f"a {c1} and {c2} checkerboard", "name": "a checkerboard", "disc": f"a {c1} and {c2} checkered disc"}
        return _to_image(_mix(_COLOURS[c1], _COLOURS[c2], t), size), kind, phrases
    if kind == "noise":
        k = int(rng.integers(6, 28))
        small = rng.random((k, k)).astype(np.float32)
        t = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((half, half), Image.BILINEAR), np.float32) / 255.0
        phrases = {"on": f"a speckled {c1} and {c2} texture", "name": "a speckled texture", "disc": f"a speckled {c1} and {c2} disc"}
        return _to_image(_mix(_COLOURS[c1], _COLOURS[c2], t), size), kind, phrases
    if kind == "gradient":
        t = np.clip(xx if rng.random() < 0.5 else yy, 0, 1)
        phrases = {"on": f"a background fading from {c1} to {c2}", "name": f"a {c1}-to-{c2} gradient", "disc": f"a disc shading from {c1} to {c2}"}
        return _to_image(_mix(_COLOURS[c1], _COLOURS[c2], t), size), kind, phrases
    phrases = {"on": f"a plain {c1} background", "name": f"a plain {c1} background", "disc": f"a plain {c1} disc"}
    return Image.new("RGB", (size, size), _COLOURS[c1]), kind, phrases


def _draw_background(rng: np.random.Generator, size: int) -> tuple[Image.Image, _Scene]:
    xx, yy = _grid(size // 2)
    kind = _pick(rng, ["field", "mountains", "beach", "room", "texture", "texture", "texture", "texture"])
    if kind == "texture":
        img, tex_kind, phrases = _texture(rng, size)
        prep = "against" if tex_kind == "stripes" else "on"
        return img, _Scene(tex_kind, f"{prep} {phrases['on']}", phrases["name"], 0.0)
    if kind == "room":
        wall_name = _pick(rng, ["white", "yellow", "pink", "teal", "grey", "blue"])
        wall = np.asarray(_COLOURS[wall_name], np.float32) * 0.85 + 30
        floor_y = float(rng.uniform(0.62, 0.8))
        arr = _mix((150, 100, 60), (100, 65, 35), yy)
        arr[yy < floor_y] = wall
        img = _to_image(arr, size)
        d = ImageDraw.Draw(img)
        wx, wy = rng.uniform(0.1, 0.6), rng.uniform(0.08, 0.25)
        ww, wh = rng.uniform(0.2, 0.32), rng.uniform(0.2, 0.3)
        box = [int(wx * size), int(wy * size), int((wx + ww) * size), int((wy + wh) * size)]
        d.rectangle(box, fill=(170, 210, 245), outline=(250, 250, 250), width=max(2, size // 60))
        d.line([(box[0] + box[2]) // 2, box[1], (box[0] + box[2]) // 2, box[3]], fill=(250, 250, 250), width=max(2, size // 80))
        return img, _Scene("room", f"in a room with {wall_name} walls and a window", f"a room with {wall_name} walls", 0.6)
    sky_kind = _pick(rng, ["blue", "cloudy", "sunset"])
    sky_top, sky_bottom = {
        "blue": ((40, 100, 220), (150, 200, 250)),
        "cloudy": ((140, 150, 165), (210, 215, 220)),
        "sunset": ((70, 60, 140), (250, 150, 70)),
    }[sky_kind]
    horizon = float(rng.uniform(0.5, 0.72))
    sky = _mix(sky_top, sky_bottom, np.clip(yy / horizon, 0, 1))
    ground_col = {"field": ((70, 150, 50), (40, 110, 30)), "mountains": ((90, 140, 60), (60, 100, 40)), "beach": ((235, 215, 160), (210, 185, 130))}[kind]
    grain = rng.normal(0.0, 0.12, yy.shape).astype(np.float32)  # grass / sand texture
    arr = _mix(*ground_col, np.clip((yy - horizon) / (1 - horizon), 0, 1) + grain)
    arr[yy < horizon] = sky[yy < horizon]
    if kind == "beach":
        sea_end = horizon + (1 - horizon) * float(rng.uniform(0.3, 0.5))
        sea = _mix((30, 90, 160), (60, 140, 190), np.clip((yy - horizon) / (sea_end - horizon), 0, 1))
        in_sea = (yy >= horizon) & (yy < sea_end)
        arr[in_sea] = sea[in_sea]
    img = _to_image(arr, size)
    d = ImageDraw.Draw(img)
    if kind == "mountains":
        for _ in range(int(rng.integers(2, 5))):
            cx, w, h = rng.uniform(0, 1), rng.uniform(0.25, 0.5), rng.uniform(0.15, 0.35)
            shade = int(rng.integers(90, 150))
            pts = [((cx - w) * size, horizon * size), (cx * size, (horizon - h) * size), ((cx + w) * size, horizon * size)]
            d.polygon(pts, fill=(shade, shade - 10, shade - 20))
            snow = [(cx - w * 0.2) * size, (horizon - h * 0.8) * size]
            d.polygon([tuple(snow), (cx * size, (horizon - h) * size), ((cx + w * 0.2) * size, snow[1])], fill=(240, 240, 245))
    sun = sky_kind == "sunset" or rng.random() < 0.3
    if sun:
        r = rng.uniform(0.04, 0.08) * size
        sx, sy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.08, 0.6) * horizon * size
        d.ellipse([sx - r, sy - r, sx + r, sy + r], fill=(255, 230, 120))
    sky_word = {"blue": "a blue sky", "cloudy": "a cloudy sky", "sunset": "a sunset sky"}[sky_kind]
    if sun:
        sky_word += " with the sun"
    adv, nom = {
        "field": (f"in a grassy field under {sky_word}", f"a grassy field under {sky_word}"),
        "mountains": (f"in front of mountains under {sky_word}", f"a mountain landscape under {sky_word}"),
        "beach": (f"on a beach by the sea under {sky_word}", "a sandy beach by the sea"),
    }[kind]
    return img, _Scene(kind, adv, nom, {"field": 0.7, "mountains": 0.8, "beach": 0.7}[kind])


def _draw_face(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    skin = _pick(rng, _SKIN)
    hair = _pick(rng, [None, *_HAIR])
    if hair:
        d.ellipse([x0 + 0.05 * w, y0, x1 - 0.05 * w, y0 + 0.7 * h], fill=_HAIR[hair])
    d.ellipse([x0 + 0.1 * w, y0 + 0.08 * h, x1 - 0.1 * w, y1], fill=skin, outline=(60, 40, 30), width=max(1, int(w / 60)))
    for ex in (0.35, 0.65):
        cx, cy, r = x0 + ex * w, y0 + 0.45 * h, 0.075 * w
        d.ellipse([cx - r, cy - 0.6 * r, cx + r, cy + 0.6 * r], fill=(250, 250, 250))
        d.ellipse([cx - 0.45 * r, cy - 0.45 * r, cx + 0.45 * r, cy + 0.45 * r], fill=(30, 30, 60))
        d.line([cx - r, cy - 1.4 * r, cx + r, cy - 1.6 * r], fill=(50, 35, 25), width=max(1, int(w / 40)))
    glasses = rng.random() < 0.2
    if glasses:
        for ex in (0.35, 0.65):
            cx, cy, r = x0 + ex * w, y0 + 0.45 * h, 0.12 * w
            d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(20, 20, 20), width=max(1, int(w / 45)))
    d.line([x0 + 0.5 * w, y0 + 0.5 * h, x0 + 0.46 * w, y0 + 0.64 * h, x0 + 0.52 * w, y0 + 0.65 * h], fill=(120, 70, 50), width=max(1, int(w / 60)))
    mood = _pick(rng, ["smiling", "smiling", "frowning", "surprised", "calm"])
    mouth = [x0 + 0.33 * w, y0 + 0.68 * h, x1 - 0.33 * w, y0 + 0.84 * h]
    lw = max(1, int(w / 30))
    if mood == "smiling":
        d.arc(mouth, 10, 170, fill=(150, 30, 40), width=lw)
    elif mood == "frowning":
        d.arc([mouth[0], mouth[1] + 0.08 * h, mouth[2], mouth[3] + 0.08 * h], 190, 350, fill=(150, 30, 40), width=lw)
    elif mood == "surprised":
        d.ellipse([x0 + 0.44 * w, y0 + 0.72 * h, x1 - 0.44 * w, y0 + 0.86 * h], fill=(110, 20, 30))
    else:
        d.line([mouth[0], y0 + 0.78 * h, mouth[2], y0 + 0.78 * h], fill=(150, 30, 40), width=lw)
    extras = []
    if hair:
        extras.append(f"{hair} hair")
    if glasses:
        extras.append("glasses")
    tail = f" with {' and '.join(extras)}" if extras else ""
    return f"a {mood} face{tail}"


def _draw_person(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    shirt = _pick(rng, ["red", "blue", "green", "yellow", "orange", "purple", "white", "black"])
    pants = _pick(rng, [(40, 50, 90), (30, 30, 30), (110, 90, 60)])
    skin = _pick(rng, _SKIN)
    lw = max(2, int(h / 14))
    r = 0.09 * h
    pose = _pick(rng, ["standing", "waving", "walking"])
    shoulder, hip = y0 + 0.25 * h, y0 + 0.58 * h
    # legs
    spread = 0.22 if pose == "walking" else 0.1
    for s in (-1, 1):
        d.line([cx + s * 0.06 * w, hip, cx + s * spread * w, y1], fill=pants, width=lw)
    # arms
    d.line([cx - 0.13 * w, shoulder, cx - 0.32 * w, y0 + 0.52 * h], fill=skin, width=max(1, lw // 2 + 1))
    if pose == "waving":
        d.line([cx + 0.13 * w, shoulder, cx + 0.34 * w, y0 + 0.02 * h], fill=skin, width=max(1, lw // 2 + 1))
    else:
        d.line([cx + 0.13 * w, shoulder, cx + 0.32 * w, y0 + 0.52 * h], fill=skin, width=max(1, lw // 2 + 1))
    d.rectangle([cx - 0.16 * w, shoulder - 0.03 * h, cx + 0.16 * w, hip], fill=_COLOURS[shirt])
    d.ellipse([cx - r, y0 + 0.02 * h, cx + r, y0 + 0.02 * h + 2 * r], fill=skin)
    if pose == "standing":
        return f"a person in a {shirt} shirt"
    return f"a person in a {shirt} shirt {pose}"


def _draw_place(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    if rng.random() < 0.55:
        wall = _pick(rng, ["red", "yellow", "white", "blue", "pink", "brown"])
        roof_y = y0 + 0.4 * h
        d.polygon([(x0, roof_y), ((x0 + x1) / 2, y0), (x1, roof_y)], fill=_pick(rng, [(120, 40, 30), (70, 70, 80), (90, 60, 40)]))
        d.rectangle([x0 + 0.08 * w, roof_y, x1 - 0.08 * w, y1], fill=_COLOURS[wall])
        d.rectangle([x0 + 0.42 * w, y0 + 0.68 * h, x0 + 0.58 * w, y1], fill=(80, 50, 30))
        for wx in (0.2, 0.66):
            d.rectangle([x0 + wx * w, y0 + 0.5 * h, x0 + (wx + 0.14) * w, y0 + 0.64 * h], fill=(170, 210, 245), outline=(255, 255, 255))
        return f"a {wall} house"
    col = _pick(rng, ["grey", "blue", "brown", "white", "teal"])
    bw = 0.55 * w
    bx0 = x0 + (w - bw) / 2
    d.rectangle([bx0, y0, bx0 + bw, y1], fill=_COLOURS[col], outline=(40, 40, 40))
    nx, ny = 3, max(3, int(6 * h / max(w, 1e-6) / 1.5))
    for i in range(nx):
        for j in range(ny):
            wx = bx0 + bw * (0.12 + 0.3 * i)
            wy = y0 + h * (0.06 + 0.88 * j / ny)
            d.rectangle([wx, wy, wx + 0.16 * bw, wy + 0.5 * h / ny], fill=(250, 235, 150) if rng.random() < 0.4 else (60, 80, 110))
    return f"a tall {col} building"


def _draw_word(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    word = _pick(rng, _WORDS)
    sign = rng.random() < 0.5
    text_col_name, plate_name = _two_colours(rng)
    if sign:
        d.rectangle([x0, y0, x1, y1], fill=_COLOURS[plate_name], outline=(30, 30, 30), width=max(1, int((y1 - y0) / 15)))
    box_w, box_h = (x1 - x0) * 0.9, (y1 - y0) * 0.8
    px = max(6, int(box_h))
    font = _font(px)
    left, top, right, bottom = d.textbbox((0, 0), word, font=font)
    if right - left > box_w:  # shrink to fit the box
        px = max(6, int(px * box_w / (right - left)))
        font = _font(px)
        left, top, right, bottom = d.textbbox((0, 0), word, font=font)
    tx = (x0 + x1) / 2 - (left + right) / 2
    ty = (y0 + y1) / 2 - (top + bottom) / 2
    d.text((tx, ty), word, fill=_COLOURS[text_col_name], font=font)
    if sign:
        return f"a {plate_name} sign with the word '{word}'"
    return f"the word '{word}' in {text_col_name} letters"


def _draw_vehicle(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    col = _pick(rng, ["red", "blue", "yellow", "green", "white", "black", "orange"])
    kind = _pick(rng, ["car", "car", "bus", "boat"])
    if kind == "boat":
        d.polygon([(x0, y0 + 0.65 * h), (x1, y0 + 0.65 * h), (x1 - 0.15 * w, y1), (x0 + 0.15 * w, y1)], fill=_COLOURS[col])
        d.line([x0 + 0.5 * w, y0, x0 + 0.5 * w, y0 + 0.65 * h], fill=(60, 40, 20), width=max(1, int(w / 40)))
        d.polygon([(x0 + 0.52 * w, y0 + 0.05 * h), (x0 + 0.52 * w, y0 + 0.6 * h), (x0 + 0.9 * w, y0 + 0.6 * h)], fill=(245, 245, 240))
        return f"a {col} sailboat"
    body_top = y0 + (0.45 if kind == "car" else 0.1) * h
    wheel_r = 0.14 * h if kind == "car" else 0.11 * h
    if kind == "car":
        d.polygon([(x0 + 0.2 * w, body_top), (x0 + 0.32 * w, y0 + 0.1 * h), (x0 + 0.7 * w, y0 + 0.1 * h), (x0 + 0.82 * w, body_top)], fill=_COLOURS[col])
        d.polygon([(x0 + 0.27 * w, body_top), (x0 + 0.35 * w, y0 + 0.18 * h), (x0 + 0.67 * w, y0 + 0.18 * h), (x0 + 0.75 * w, body_top)], fill=(170, 210, 240))
    d.rectangle([x0, body_top, x1, y1 - wheel_r], fill=_COLOURS[col], outline=(30, 30, 30))
    if kind == "bus":
        for i in range(5):
            wx = x0 + w * (0.05 + 0.19 * i)
            d.rectangle([wx, y0 + 0.2 * h, wx + 0.13 * w, y0 + 0.45 * h], fill=(170, 210, 240))
    for fx in (0.2, 0.8):
        cx, cy = x0 + fx * w, y1 - wheel_r
        d.ellipse([cx - wheel_r, cy - wheel_r, cx + wheel_r, cy + wheel_r], fill=(20, 20, 20))
        d.ellipse([cx - wheel_r / 2, cy - wheel_r / 2, cx + wheel_r / 2, cy + wheel_r / 2], fill=(160, 160, 160))
    return f"a {col} {kind}"


def _draw_food(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    # No orange: the fruit's name would be ambiguous with the colour in captions.
    kind = _pick(rng, ["apple", "lemon", "pizza", "cake", "banana"])
    if kind == "apple":
        col = _pick(rng, ["red", "green"])
        d.ellipse([x0, y0 + 0.15 * h, x1, y1], fill=_COLOURS[col])
        d.line([x0 + 0.5 * w, y0 + 0.2 * h, x0 + 0.55 * w, y0], fill=(90, 60, 30), width=max(1, int(w / 20)))
        d.ellipse([x0 + 0.55 * w, y0, x0 + 0.8 * w, y0 + 0.14 * h], fill=(50, 140, 50))
        return f"a {col} apple"
    if kind == "lemon":
        d.ellipse([x0, y0 + 0.15 * h, x1, y1 - 0.15 * h], fill=(250, 225, 60), outline=(200, 170, 30))
        d.ellipse([x0 + 0.25 * w, y0 + 0.3 * h, x0 + 0.4 * w, y0 + 0.4 * h], fill=(255, 245, 160))
        return "a lemon"
    if kind == "pizza":
        d.polygon([(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)], fill=(240, 200, 80))
        d.rectangle([x0, y0, x1, y0 + 0.12 * h], fill=(190, 120, 50))
        for _ in range(4):
            px, py = x0 + rng.uniform(0.3, 0.7) * w, y0 + rng.uniform(0.2, 0.5) * h
            r = 0.07 * w
            d.ellipse([px - r, py - r, px + r, py + r], fill=(190, 40, 30))
        return "a slice of pizza"
    if kind == "cake":
        col = _pick(rng, ["pink", "white", "brown", "yellow"])
        d.rectangle([x0, y0 + 0.35 * h, x1, y1], fill=_COLOURS[col], outline=(90, 60, 40))
        d.rectangle([x0, y0 + 0.6 * h, x1, y0 + 0.68 * h], fill=(250, 250, 250))
        d.rectangle([x0 + 0.47 * w, y0 + 0.1 * h, x0 + 0.53 * w, y0 + 0.35 * h], fill=(80, 120, 220))
        d.ellipse([x0 + 0.45 * w, y0, x0 + 0.55 * w, y0 + 0.12 * h], fill=(255, 200, 40))
        return f"a {col} cake with a candle"
    d.chord([x0, y0 - 0.6 * h, x1, y1], 20, 160, fill=_COLOURS["yellow"], outline=(120, 90, 20))
    return "a banana"


def _draw_animal(d: ImageDraw.ImageDraw, b: np.ndarray, rng: np.random.Generator) -> str:
    x0, y0, x1, y1 = b
    w, h = x1 - x0, y1 - y0
    kind = _pick(rng, ["cat", "dog", "bird", "fish"])
    if kind == "fish":
        col = _pick(rng, ["orange", "blue", "yellow", "pink"])
        d.polygon([(x1 - 0.3 * w, y0 + 0.5 * h), (x1, y0 + 0.15 * h), (x1, y0 + 0.85 * h)], fill=_COLOURS[col])
        d.ellipse([x0, y0 + 0.2 * h, x1 - 0.2 * w, y1 - 0.2 * h], fill=_COLOURS[col], outline=(40, 40, 40))
        d.ellipse([x0 + 0.15 * w, y0 + 0.38 * h, x0 + 0.23 * w, y0 + 0.48 * h], fill=(20, 20, 20))
        return f"a {col} fish"
    if kind == "bird":
        col = _pick(rng, ["red", "blue", "yellow", "black"])
        d.ellipse([x0 + 0.15 * w, y0 + 0.3 * h, x1 - 0.1 * w, y1 - 0.15 * h], fill=_COLOURS[col])
        d.ellipse([x0, y0 + 0.15 * h, x0 + 0.4 * w, y0 + 0.5 * h], fill=_COLOURS[col])
        d.polygon([(x0, y0 + 0.3 * h), (x0 - 0.12 * w, y0 + 0.35 * h), (x0, y0 + 0.4 * h)], fill=(240, 160, 30))
        d.ellipse([x0 + 0.12 * w, y0 + 0.24 * h, x0 + 0.2 * w, y0 + 0.32 * h], fill=(250, 250, 250))
        d.chord([x0 + 0.35 * w, y0 + 0.35 * h, x1 - 0.2 * w, y1 - 0.25 * h], 0, 180, fill=tuple(int(c * 0.7) for c in _COLOURS[col]))
        return f"a {col} bird"
    col = _pick(rng, ["black", "orange", "grey", "white", "brown"])
    fill = _COLOURS[col]
    dark = tuple(int(c * 0.6) for c in fill)
    lw = max(2, int(w / 16))
    for fx in (0.3, 0.45, 0.7, 0.85):
        d.line([x0 + fx * w, y0 + 0.6 * h, x0 + fx * w, y1], fill=dark, width=lw)
    d.ellipse([x0 + 0.2 * w, y0 + 0.35 * h, x1, y0 + 0.8 * h], fill=fill, outline=dark)
    d.line([x1 - 0.05 * w, y0 + 0.5 * h, x1, y0 + 0.1 * h], fill=dark, width=lw)  # tail
    hx0, hy0, hx1, hy1 = x0, y0 + 0.1 * h, x0 + 0.4 * w, y0 + 0.55 * h
    if kind == "cat":
        for ex in (0.05, 0.25):
            d.polygon([(x0 + ex * w, hy0 + 0.1 * h), (x0 + (ex + 0.05) * w, y0), (x0 + (ex + 0.12) * w, hy0 + 0.1 * h)], fill=fill, outline=dark)
    d.ellipse([hx0, hy0, hx1, hy1], fill=fill, outline=dark)
    if kind == "dog":
        for ex in (0.0, 0.32):
            d.ellipse([x0 + ex * w, hy0, x0 + (ex + 0.1) * w, hy0 + 0.35 * h], fill=dark)
    for ex in (0.12, 0.26):
        d.ellipse([x0 + ex * w, hy0 + 0.15 * h, x0 + (ex + 0.05) * w, hy0 + 0.2 * h], fill=(30, 160, 60) if kind == "cat" else (20, 20, 20))
    return f"a {col} {kind}"


# category -> (drawer, (min, max) box width, aspect h/w range, fraction of box covered)
_DRAWERS = {
    "face": (_draw_face, (0.22, 0.42), (1.1, 1.3), 0.7),
    "body": (_draw_person, (0.16, 0.3), (2.0, 2.6), 0.35),
    "place": (_draw_place, (0.25, 0.45), (0.9, 1.8), 0.7),
    "word": (_draw_word, (0.35, 0.75), (0.25, 0.4), 0.5),
    "vehicle": (_draw_vehicle, (0.3, 0.55), (0.45, 0.7), 0.6),
    "food": (_draw_food, (0.15, 0.3), (0.9, 1.1), 0.65),
    "animal": (_draw_animal, (0.22, 0.4), (0.7, 0.9), 0.5),
}


def _compose_caption(scene: _Scene, rng: np.random.Generator) -> str:
    """Return a caption that names every object (with its position), the background and patches."""
    objs = scene.objects
    # A repeated description ("a red car" twice) becomes "another red car" the second time.
    phrases: list[str] = []
    for o in objs:
        phrases.append(re.sub(r"^an? ", "another ", o.phrase) if o.phrase in [p.phrase for p in objs[: len(phrases)]] else o.phrase)
    located = [f"{p} {_position_phrase(*o.centre)}" for p, o in zip(phrases, objs)]

    def join(items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    template = int(rng.integers(5)) if len(objs) >= 2 else int(rng.integers(1, 5))
    if template == 0:
        a, b = objs[0], objs[1]
        (ax, ay), (bx, by) = a.centre, b.centre
        if abs(ax - bx) >= abs(ay - by):
            rel = "to the left of" if ax < bx else "to the right of"
        else:
            rel = "above" if ay < by else "below"
        if abs(ax - bx) < 0.15 and abs(ay - by) < 0.15:
            rel = "next to"
        text = f"{phrases[0]} {rel} {phrases[1]}"
        if len(objs) > 2:
            text += ", with " + join(located[2:]) + ","
        text += f" {scene.bg_adverbial}"
    elif template == 1:
        text = f"a picture of {join(located)} {scene.bg_adverbial}"
    elif template == 2:
        text = f"{scene.bg_nominal}, with {join(located)}"
    elif template == 3:
        text = f"there is {join(located)} {scene.bg_adverbial}"
    else:
        first, rest = located[0], located[1:]
        text = f"{first} {scene.bg_adverbial}"
        if rest:
            text += "; also visible: " + join(rest)
    if scene.patches:
        text += ", and " + join(scene.patches)
    text = re.sub(r"\b([Aa]) (?=[aeiou])", r"\1n ", text)  # "a orange car" -> "an orange car"
    return text[0].upper() + text[1:] + "."


def _render_scene(rng: np.random.Generator, size: int) -> tuple[Image.Image, _Scene]:
    """Draw one scene at ``size`` px and return it with its record (objects and caption)."""
    big = 2 * size  # draw at twice the size, then downsample: anti-aliased edges
    img, scene = _draw_background(rng, big)
    # Texture patches put local contrast at random places in the visual field.
    for _ in range(int(rng.choice([0, 0, 1, 2]))):
        patch, _, phrases = _texture(rng, big)
        cx, cy, r = rng.uniform(0.15, 0.85), rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.22)
        mask = Image.new("L", (big, big), 0)
        ImageDraw.Draw(mask).ellipse([(cx - r) * big, (cy - r) * big, (cx + r) * big, (cy + r) * big], fill=255)
        img.paste(patch, (0, 0), mask)
        scene.patches.append(f"{phrases['disc']} {_position_phrase(cx, cy)}")
    d = ImageDraw.Draw(img)
    cats = list(_CATEGORY_WEIGHTS)
    p = np.array([_CATEGORY_WEIGHTS[c] for c in cats])
    n_obj = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.36, 0.24, 0.1]))
    boxes: list[np.ndarray] = []
    for _ in range(n_obj):
        cat = cats[int(rng.choice(len(cats), p=p / p.sum()))]
        drawer, (wmin, wmax), (amin, amax), fill = _DRAWERS[cat]
        for _attempt in range(12):
            w = rng.uniform(wmin, wmax)
            h = min(w * rng.uniform(amin, amax), 0.9)
            x0, y0 = rng.uniform(0.02, 0.98 - w), rng.uniform(0.02, 0.98 - h)
            box = np.array([x0, y0, x0 + w, y0 + h])
            # Keep objects mostly unoccluded so the caption describes what is visible.
            ok = all(
                max(0.0, min(box[2], o[2]) - max(box[0], o[0])) * max(0.0, min(box[3], o[3]) - max(box[1], o[1]))
                < 0.2 * min(w * h, (o[2] - o[0]) * (o[3] - o[1]))
                for o in boxes
            )
            if ok:
                break
        else:
            continue
        boxes.append(box)
        phrase = drawer(d, box * big, rng)
        scene.objects.append(_Object(cat, phrase, tuple(float(b) for b in box), fill))
    if not scene.objects:  # every scene shows at least one object
        box = np.array([0.3, 0.3, 0.7, 0.7])
        scene.objects.append(_Object("food", _draw_food(d, box * big, rng), tuple(box), 0.65))
    scene.caption = _compose_caption(scene, rng)
    return img.reduce(2), scene  # 2x2 box average: anti-aliasing at a fraction of LANCZOS cost


# ---------------------------------------------------------------------------------------
# Image features the ground-truth responses are computed from
# ---------------------------------------------------------------------------------------

_MAX_OBJECTS = 4


@dataclass
class _ImageFeatures:
    """Stimulus descriptors of n distinct images, in the order of ``nsd_ids``."""

    contrast: np.ndarray  # (n, G*G) local contrast energy per grid cell
    luminance: np.ndarray  # (n, G*G)
    saturation: np.ndarray  # (n, G*G)
    obj_category: np.ndarray  # (n, 4) int category index, -1 = no object
    obj_strength: np.ndarray  # (n, 4) sqrt of area fraction
    obj_x: np.ndarray  # (n, 4) deg
    obj_y: np.ndarray  # (n, 4) deg
    scene_place: np.ndarray  # (n,) how much the background is a place
    global_props: np.ndarray  # (n, 6) image-wide properties
    latent: np.ndarray  # (n, 4) idiosyncratic per-image factors (memory, attention, ...)


def _pixel_features(img: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (contrast, luminance, saturation) pooled on a _GRID x _GRID grid, each (G*G,)."""
    if img.size != (4 * _GRID, 4 * _GRID):
        img = img.resize((4 * _GRID, 4 * _GRID), Image.BILINEAR)
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32) / np.float32(255.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    lum = np.float32(0.299) * r + np.float32(0.587) * g + np.float32(0.114) * b
    gx = np.zeros_like(lum)
    gy = np.zeros_like(lum)
    gx[:, 1:-1] = (lum[:, 2:] - lum[:, :-2]) / 2
    gy[1:-1] = (lum[2:] - lum[:-2]) / 2
    energy = gx**2 + gy**2
    sat = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)

    def pool(a: np.ndarray) -> np.ndarray:
        return a.reshape(_GRID, 4, _GRID, 4).mean(axis=(1, 3)).ravel()

    return pool(energy), pool(lum), pool(sat)


def _scene_features(scene: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    cat = np.full(_MAX_OBJECTS, -1, dtype=np.int64)
    strength = np.zeros(_MAX_OBJECTS)
    x = np.zeros(_MAX_OBJECTS)
    y = np.zeros(_MAX_OBJECTS)
    for k, o in enumerate(scene.objects[:_MAX_OBJECTS]):
        cx, cy = o.centre
        cat[k] = CATEGORIES.index(o.category)
        strength[k] = math.sqrt(o.area)
        x[k] = (cx - 0.5) * _VISUAL_FIELD_DEG
        y[k] = (0.5 - cy) * _VISUAL_FIELD_DEG
    return cat, strength, x, y


# ---------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------


def _standardise(a: np.ndarray, axis: int = 0) -> np.ndarray:
    sd = a.std(axis=axis, keepdims=True)
    return (a - a.mean(axis=axis, keepdims=True)) / np.where(sd > 0, sd, 1.0)


def _noise_free_signal(anat: _HemiAnatomy, vertices: np.ndarray, feats: _ImageFeatures, rng: np.random.Generator) -> np.ndarray:
    """Return the standardised noise-free signal, shape (n_images, n_vertices).

    The weighted sum of the standardised terms listed in ``_TERMS`` (see
    :func:`generate_demo_dataset`, Notes), standardised again over images.
    """
    f32 = np.float32
    weights = anat.weights[vertices].astype(f32)  # (V, T)
    signal = np.zeros((feats.contrast.shape[0], len(vertices)), f32)

    def add(term_index: int, term: np.ndarray) -> None:
        signal[...] += _standardise(term.astype(f32, copy=False)) * weights[:, term_index]

    # pRF weights over the grid cells (deg); normalised over the whole visual field, so a
    # pRF that hangs off the image is driven only by the part on the image.
    cell = _VISUAL_FIELD_DEG / _GRID
    centres = (np.arange(_GRID) + 0.5) * cell - _VISUAL_FIELD_DEG / 2.0
    gx, gy = np.meshgrid(centres, -centres)  # row 0 = top of the image = upper field
    px, py, ps = anat.prf_x[vertices], anat.prf_y[vertices], anat.prf_sigma[vertices]
    d2 = (gx.ravel()[:, None] - px[None]) ** 2 + (gy.ravel()[:, None] - py[None]) ** 2
    w = (np.exp(-0.5 * d2 / ps[None] ** 2) * (cell**2 / (2 * np.pi * ps[None] ** 2))).astype(f32)  # (G*G, V)
    # Compressive spatial summation (Kay et al. 2013): (pRF-weighted contrast) ** n.
    add(0, (feats.contrast @ w + f32(1e-6)) ** anat.prf_exponent[vertices].astype(f32)[None])
    add(1, feats.luminance @ w)
    add(2, feats.saturation @ w)
    # Semantic drive: each object adds its category preference x its size, weighted by a
    # broad spatial tuning; divisive normalisation by the total amount of stuff in the scene.
    pref = anat.preference[vertices].astype(f32)  # (V, C)
    sx, sy, ss = (a[vertices].astype(f32) for a in (anat.sem_x, anat.sem_y, anat.sem_sigma))
    sem = feats.scene_place.astype(f32)[:, None] * pref[None, :, CATEGORIES.index("place")]
    for k in range(_MAX_OBJECTS):
        present = feats.obj_category[:, k] >= 0
        cat = np.maximum(feats.obj_category[:, k], 0)
        ox, oy = feats.obj_x[:, k, None].astype(f32), feats.obj_y[:, k, None].astype(f32)
        tuning = np.exp(f32(-0.5) * ((ox - sx) ** 2 + (oy - sy) ** 2) / ss**2)
        sem += (present * feats.obj_strength[:, k]).astype(f32)[:, None] * tuning * pref.T[cat]
    total = feats.obj_strength.sum(axis=1) + feats.scene_place
    add(3, (sem / ((0.4 + total) ** 0.5).astype(f32)[:, None]) ** f32(0.8))  # saturating
    n_glob, n_lat = feats.global_props.shape[1], feats.latent.shape[1]
    add(4, _standardise(feats.global_props) @ rng.standard_normal((n_glob, len(vertices))))
    add(5, feats.latent @ rng.standard_normal((n_lat, len(vertices))))
    return _standardise(signal)


@dataclass
class _SubjectResponses:
    train: np.ndarray  # (n_train, V) float32
    test: np.ndarray  # (n_test, V) float32
    noise_ceiling: np.ndarray  # (V,) float32
    ncsnr: np.ndarray  # (V,)


def _simulate_trials(
    hemi: str,
    anat: _HemiAnatomy,
    vertices: np.ndarray,
    feats: _ImageFeatures,
    image_rows: np.ndarray,
    n_train: int,
    test_repeats: np.ndarray,
    rng: np.random.Generator,
) -> _SubjectResponses:
    """Simulate single trials, z-score per session, average repeats; return responses.

    ``image_rows`` (n_train + n_test,) index the rows of ``feats`` that this subject saw,
    training images first.
    """
    signal = _noise_free_signal(anat, vertices, _subset(feats, image_rows), rng)
    n_images = len(image_rows)
    repeats = np.concatenate([np.full(n_train, _N_REPEATS), test_repeats])
    trial_image = np.repeat(np.arange(n_images), repeats)
    order = rng.permutation(len(trial_image))
    trial_image = trial_image[order]
    n_trials = len(trial_image)
    n_sessions = max(1, int(round(n_trials / _TRIALS_PER_SESSION)))
    session = np.minimum(np.arange(n_trials) * n_sessions // n_trials, n_sessions - 1)
    # Trial noise is spatially smooth, like fMRI noise; restore unit variance afterwards.
    sub = _row_normalise(_load_mesh(hemi).smoother[vertices][:, vertices]).astype(np.float32)
    noise = rng.standard_normal((len(vertices), n_trials), dtype=np.float32)
    noise = np.ascontiguousarray((sub @ (sub @ noise)).T)
    noise /= noise.std(axis=0, keepdims=True)
    snr = anat.snr[vertices].astype(np.float32)
    trials = signal[trial_image] * snr[None] + noise
    # Session-specific offsets and gains, which per-session z-scoring removes (as in NSD).
    offset = rng.normal(0.0, 1.0, (n_sessions, len(vertices))).astype(np.float32)
    gain = np.exp(rng.normal(0.0, 0.15, (n_sessions, len(vertices)))).astype(np.float32)
    trials = trials * gain[session] + offset[session]
    for s in range(n_sessions):
        rows = session == s
        trials[rows] = _standardise(trials[rows])
    # Average repeats per image; NSD's ncsnr from the within-image variance of the
    # z-scored single trials (Allen et al. 2022): noise sd = sqrt(pooled within-image
    # variance), signal sd = sqrt(max(0, 1 - noise variance)).
    counts = np.bincount(trial_image, minlength=n_images)
    by_image = np.argsort(trial_image, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    means = np.add.reduceat(trials[by_image].astype(np.float64), starts, axis=0) / counts[:, None]
    resid = trials - means[trial_image]
    dof = counts - 1
    noise_var = (resid**2).sum(axis=0, dtype=np.float64) / dof.sum()  # images shown once add 0
    signal_sd = np.sqrt(np.clip(1.0 - noise_var, 0.0, None))
    ncsnr = signal_sd / np.sqrt(noise_var)
    nc = noise_ceiling_from_ncsnr(ncsnr, test_repeats)
    return _SubjectResponses(
        train=means[:n_train].astype(np.float32),
        test=means[n_train:].astype(np.float32),
        noise_ceiling=np.clip(nc, 0.0, 1.0).astype(np.float32),
        ncsnr=ncsnr,
    )


def _row_normalise(m: Any) -> Any:
    """Return the scipy sparse matrix ``m`` with rows scaled to sum to 1 (empty rows kept)."""
    from scipy import sparse

    s = np.asarray(m.sum(axis=1)).ravel()
    return sparse.diags(1.0 / np.where(s > 0, s, 1.0)) @ m


def _subset(feats: _ImageFeatures, rows: np.ndarray) -> _ImageFeatures:
    return _ImageFeatures(**{k: v[rows] for k, v in feats.__dict__.items()})


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
    "from it with neuroenc.metrics.noise_ceiling_from_ncsnr. Per-vertex parameters are in "
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
    follows from it (:func:`neuroenc.metrics.noise_ceiling_from_ncsnr`).
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
