"""Anatomy: retinotopy, ROIs, streams and challenge space of one subject's hemisphere."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._constants import (
    _TERMS,
    _VISUAL_FIELD_DEG,
    CATEGORIES,
    N_FSAVERAGE5_VERTICES,
    ROI_CLASSES,
)
from .surface import _load_mesh, _Mesh, _nearest_vertex, _random_field

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
