"""Responses: ground-truth signal, single trials, NSD-style z-scoring, repeats, ncsnr."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from neuroenc.evaluation.metrics import noise_ceiling_from_ncsnr

from ._constants import (
    _GRID,
    _N_REPEATS,
    _TRIALS_PER_SESSION,
    _VISUAL_FIELD_DEG,
    CATEGORIES,
)
from .anatomy import _HemiAnatomy
from .image_features import _MAX_OBJECTS, _ImageFeatures
from .surface import _load_mesh

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
