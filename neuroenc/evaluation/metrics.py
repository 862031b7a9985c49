"""Per-vertex scores of predicted responses: Pearson r, R^2 and the Algonauts 2023 score.

All functions take arrays of shape (n_images, n_vertices) and return one value per
vertex. The noise-normalized score follows the Algonauts 2023 devkit
(``03_test_encoding.py``, see ``shared/REFERENCE.md`` section 2):
negative correlations are set to 0, a noise ceiling of 0 becomes 1e-14, and the score is
``min(100, 100 * r**2 / NC)``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "pearson_r",
    "r2_score",
    "noise_normalized_score",
    "noise_ceiling_from_ncsnr",
    "ncsnr_from_trials",
    "noise_ceiling_from_trials",
    "challenge_score",
    "pearson_r_resampled",
    "r2_score_resampled",
]


def _check_pair(measured: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    measured = np.asarray(measured, dtype=np.float64)
    predicted = np.asarray(predicted, dtype=np.float64)
    if measured.ndim == 1:
        measured = measured[:, None]
    if predicted.ndim == 1:
        predicted = predicted[:, None]
    if measured.shape != predicted.shape:
        raise ValueError(
            f"measured responses have shape {measured.shape} but predictions have shape "
            f"{predicted.shape}; expected the same (n_images, n_vertices)"
        )
    if measured.shape[0] < 2:
        raise ValueError(f"need at least 2 images to score, got {measured.shape[0]}")
    for name, arr in (("measured responses", measured), ("predictions", predicted)):
        if not np.isfinite(arr).all():
            n_bad = int((~np.isfinite(arr)).sum())
            raise ValueError(f"{name} contain {n_bad} non-finite values (NaN or inf)")
    return measured, predicted


def pearson_r(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Return the Pearson correlation per vertex, shape (n_vertices,).

    Parameters
    ----------
    measured, predicted : ndarray of shape (n_images, n_vertices)

    A vertex whose measured or predicted responses are constant has no defined
    correlation; it gets 0 (no linear relation can be claimed), as a prediction of a
    constant would score nothing in the challenge.
    """
    measured, predicted = _check_pair(measured, predicted)
    m = measured - measured.mean(axis=0)
    p = predicted - predicted.mean(axis=0)
    denom = np.sqrt((m * m).sum(axis=0) * (p * p).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (m * p).sum(axis=0) / denom
    r[denom == 0] = 0.0
    return np.clip(r, -1.0, 1.0)


def r2_score(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Return the coefficient of determination per vertex, shape (n_vertices,).

    ``1 - SS_res / SS_tot`` as scikit-learn's ``r2_score(..., multioutput="raw_values")``;
    it can be negative. A vertex with constant measured responses gets 0.
    """
    measured, predicted = _check_pair(measured, predicted)
    ss_res = ((measured - predicted) ** 2).sum(axis=0)
    ss_tot = ((measured - measured.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    r2[ss_tot == 0] = 0.0
    return r2


def _weighted_moments(measured, predicted, weights):
    measured, predicted = _check_pair(measured, predicted)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != measured.shape[0] or (w < 0).any():
        raise ValueError(f"weights of shape {w.shape}: expected non-negative (n_resamples, "
                         f"{measured.shape[0]}) counts of the images")
    total = w.sum(axis=1, keepdims=True)
    # centre with the unweighted means first: the weighted moments below then subtract
    # small numbers, not large ones (responses far from 0 would lose precision)
    m = measured - measured.mean(axis=0)
    p = predicted - predicted.mean(axis=0)
    mean_m, mean_p = (w @ m) / total, (w @ p) / total
    return w, total, m, p, mean_m, mean_p, measured - predicted


def pearson_r_resampled(measured: np.ndarray, predicted: np.ndarray,
                        weights: np.ndarray) -> np.ndarray:
    """Return the Pearson correlation per vertex for each resample of the images.

    Parameters
    ----------
    measured, predicted : ndarray of shape (n_images, n_vertices)
    weights : ndarray of shape (n_resamples, n_images)
        How often each image is in each resample (bootstrap counts); a row of ones gives
        :func:`pearson_r`.

    Returns
    -------
    r : ndarray of shape (n_resamples, n_vertices)
        0 where a resample leaves a vertex's responses or predictions constant.
    """
    w, total, m, p, mean_m, mean_p, _ = _weighted_moments(measured, predicted, weights)
    cov = (w @ (m * p)) / total - mean_m * mean_p
    var_m = (w @ (m * m)) / total - mean_m**2
    var_p = (w @ (p * p)) / total - mean_p**2
    denom = np.sqrt(np.clip(var_m, 0, None) * np.clip(var_p, 0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(denom > 0, cov / denom, 0.0)
    return np.clip(r, -1.0, 1.0)


def r2_score_resampled(measured: np.ndarray, predicted: np.ndarray,
                       weights: np.ndarray) -> np.ndarray:
    """Return R^2 per vertex for each resample of the images (see :func:`pearson_r_resampled`)."""
    w, total, m, _, mean_m, _, resid = _weighted_moments(measured, predicted, weights)
    ss_res = w @ (resid * resid)
    ss_tot = (w @ (m * m)) - total * mean_m**2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ss_tot > 0, 1.0 - ss_res / ss_tot, 0.0)


def noise_normalized_score(r: np.ndarray, noise_ceiling: np.ndarray) -> np.ndarray:
    """Return the Algonauts 2023 noise-normalized encoding score per vertex, in percent.

    Parameters
    ----------
    r : ndarray of shape (n_vertices,)
        Pearson correlation of measured and predicted test responses.
    noise_ceiling : ndarray of shape (n_vertices,)
        Noise ceiling as a fraction in [0, 1] (the challenge's
        ``{lh,rh}_noise_ceiling.npy``).

    Returns
    -------
    score : ndarray of shape (n_vertices,)
        ``min(100, 100 * max(r, 0)**2 / NC)`` with ``NC == 0`` replaced by 1e-14.
    """
    r = np.asarray(r, dtype=np.float64)
    nc = np.asarray(noise_ceiling, dtype=np.float64).copy()
    if r.shape[-1:] != nc.shape:  # leading dimensions (e.g. bootstrap resamples) broadcast
        raise ValueError(
            f"correlations have shape {r.shape} but the noise ceiling has shape {nc.shape}"
        )
    if not np.isfinite(nc).all() or (nc < 0).any() or (nc > 1).any():
        raise ValueError(
            "noise ceiling must be a finite fraction in [0, 1]; found values in "
            f"[{np.nanmin(nc):.4g}, {np.nanmax(nc):.4g}] (a ceiling in percent must be divided by 100)"
        )
    r = np.where(r < 0, 0.0, r)
    nc[nc == 0] = 1e-14
    score = 100.0 * r**2 / nc
    return np.minimum(score, 100.0)


def noise_ceiling_from_ncsnr(ncsnr: np.ndarray, n_trials_per_image: np.ndarray) -> np.ndarray:
    """Return the noise ceiling (fraction in [0, 1]) from NSD's ``ncsnr``, per vertex.

    ``NC = ncsnr^2 / (ncsnr^2 + (n3/3 + n2/2 + n1/1) / (n3 + n2 + n1))`` where ``nK`` is the
    number of test images shown K times (REFERENCE.md section 2). More generally the
    second term is the mean over test images of ``1 / n_trials``.

    Parameters
    ----------
    ncsnr : ndarray of shape (n_vertices,)
    n_trials_per_image : ndarray of shape (n_images,)
        How many trials were averaged for each test image.
    """
    ncsnr = np.asarray(ncsnr, dtype=np.float64)
    n_trials = np.asarray(n_trials_per_image, dtype=np.float64)
    if n_trials.ndim != 1 or n_trials.size == 0 or (n_trials < 1).any():
        raise ValueError("n_trials_per_image must be a non-empty 1-D array of counts >= 1")
    noise_term = float(np.mean(1.0 / n_trials))
    snr2 = ncsnr**2
    return snr2 / (snr2 + noise_term)


def ncsnr_from_trials(trials: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return NSD's noise-ceiling SNR per unit and the number of repeats per image.

    Allen et al. (2022): the noise variance is the within-image variance of single
    trials pooled over images (each image with ``n - 1`` degrees of freedom), the
    signal variance is the total variance minus the noise variance (clipped at 0), and
    ``ncsnr = sqrt(signal variance) / sqrt(noise variance)``. NSD z-scores trials per
    session, so its total variance is 1; here it is measured, which gives NSD's value
    for z-scored data and stays meaningful for data in other units.

    Parameters
    ----------
    trials : ndarray of shape (n_repeats, n_images, n_units)
        Single-trial responses; NaN where an image was shown fewer than ``n_repeats``
        times (the same images for every unit).

    Returns
    -------
    ncsnr : ndarray of shape (n_units,)
    n_trials_per_image : ndarray of int of shape (n_images,)
    """
    trials = np.asarray(trials, dtype=np.float64)
    if trials.ndim != 3:
        raise ValueError(f"single trials of shape {trials.shape}; expected (n_repeats, n_images, n_units)")
    finite = np.isfinite(trials)
    counts = finite[:, :, 0].sum(axis=0)
    if not (finite == finite[:, :, :1]).all():
        raise ValueError("the missing (NaN) trials differ between units; expected the same "
                         "repeats of each image for every unit")
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} images have no trial; expected at least one each")
    if (counts >= 2).sum() == 0:
        raise ValueError("no image was shown twice; the noise ceiling needs repeats")
    means = np.nanmean(trials, axis=0)
    resid = np.where(finite, trials - means[None], 0.0)
    noise_var = (resid**2).sum(axis=(0, 1)) / float((counts - 1).sum())
    total_var = np.nanvar(trials.reshape(-1, trials.shape[2]), axis=0, ddof=1)
    signal_var = np.clip(total_var - noise_var, 0.0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        ncsnr = np.where(noise_var > 0, np.sqrt(signal_var) / np.sqrt(noise_var), 0.0)
    return ncsnr, counts


def noise_ceiling_from_trials(trials: np.ndarray) -> np.ndarray:
    """Return the noise ceiling (fraction in [0, 1]) of repeat-averaged responses per unit.

    :func:`ncsnr_from_trials` then :func:`noise_ceiling_from_ncsnr` with the number of
    repeats of each image, as NSD and the Algonauts 2023 challenge compute it.
    """
    ncsnr, counts = ncsnr_from_trials(trials)
    return noise_ceiling_from_ncsnr(ncsnr, counts)


def challenge_score(scores: np.ndarray) -> float:
    """Return the challenge-style summary: the mean noise-normalized score over vertices.

    The Algonauts 2023 leaderboard number is this mean over every vertex of every
    subject (both hemispheres pooled). NaN marks a vertex without a value (e.g. a model
    that lacks a variable after results are stacked) and is left out; that is the one
    NaN policy of every summary in neuroenc.

    Raises
    ------
    ValueError
        No finite value.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        raise ValueError(f"no vertices with a value to summarise ({scores.size} given, none finite)")
    return float(np.mean(finite))
