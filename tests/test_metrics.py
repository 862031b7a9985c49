"""Metrics against hand-computed values and the Algonauts devkit formula."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr
from sklearn.metrics import r2_score as sk_r2

from neuroenc.evaluation import metrics


def test_pearson_hand_computed():
    measured = np.array([[1.0], [2.0], [3.0], [4.0]])
    predicted = np.array([[1.0], [3.0], [2.0], [4.0]])
    # deviations (-1.5,-.5,.5,1.5) and (-1.5,.5,-.5,1.5): sum of products 4, each SS 5 -> 0.8
    assert metrics.pearson_r(measured, predicted)[0] == pytest.approx(0.8)


def test_pearson_matches_scipy_per_vertex():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 7))
    p = y + rng.normal(size=(50, 7))
    expected = [pearsonr(y[:, i], p[:, i])[0] for i in range(7)]
    np.testing.assert_allclose(metrics.pearson_r(y, p), expected, rtol=1e-12)


def test_constant_prediction_has_zero_correlation():
    y = np.arange(10.0)[:, None]
    assert metrics.pearson_r(y, np.ones_like(y))[0] == 0.0


def test_r2_matches_sklearn_and_can_be_negative():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(40, 5))
    p = 0.5 * y + rng.normal(size=(40, 5))
    np.testing.assert_allclose(metrics.r2_score(y, p), sk_r2(y, p, multioutput="raw_values"))
    assert metrics.r2_score(y, -y).max() < 0


def test_noise_normalized_hand_computed():
    r = np.array([0.5, -0.3, 0.9, 0.2, 0.1])
    nc = np.array([0.5, 0.5, 0.5, 0.0, 1.0])
    score = metrics.noise_normalized_score(r, nc)
    # 100*0.25/0.5 = 50; negative r -> 0; 100*0.81/0.5 = 162 -> capped at 100;
    # NC 0 -> 1e-14 so any r > 0 hits the cap; 100*0.01/1 = 1
    np.testing.assert_allclose(score, [50.0, 0.0, 100.0, 100.0, 1.0])


def _devkit_score(r, nc):
    """The devkit's steps, written out as in 03_test_encoding.py (REFERENCE.md section 2)."""
    r = r.copy()
    nc = nc.copy()
    r[r < 0] = 0
    nc[nc == 0] = 1e-14
    s = np.divide(r ** 2, nc)
    s[s > 1] = 1
    return s * 100


def test_noise_normalized_equals_devkit_formula():
    rng = np.random.default_rng(2)
    r = rng.uniform(-1, 1, 1000)
    nc = rng.uniform(0, 1, 1000)
    nc[:10] = 0
    np.testing.assert_allclose(metrics.noise_normalized_score(r, nc), _devkit_score(r, nc))


def test_noise_ceiling_in_percent_is_rejected():
    with pytest.raises(ValueError, match="divided by 100"):
        metrics.noise_normalized_score(np.array([0.5]), np.array([45.0]))


def test_noise_ceiling_from_ncsnr_nsd_formula():
    ncsnr = np.array([0.0, 0.5, 1.0])
    # 3 images x3 trials, 1 image x2, 1 image x1: (3/3 + 1/2 + 1/1) / 5 = 0.5
    n_trials = np.array([3, 3, 3, 2, 1])
    nc = metrics.noise_ceiling_from_ncsnr(ncsnr, n_trials)
    np.testing.assert_allclose(nc, [0.0, 0.25 / (0.25 + 0.5), 1.0 / 1.5])


def test_shape_mismatch_and_nan_are_errors():
    with pytest.raises(ValueError, match=r"shape \(5, 2\).*shape \(5, 3\)"):
        metrics.pearson_r(np.zeros((5, 2)), np.zeros((5, 3)))
    bad = np.ones((5, 2))
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="predictions contain 1 non-finite"):
        metrics.r2_score(np.ones((5, 2)), bad)


def test_challenge_score_is_the_mean():
    assert metrics.challenge_score(np.array([10.0, 20.0, 60.0])) == pytest.approx(30.0)


def test_resampled_scores_equal_the_plain_ones_on_their_resample():
    rng = np.random.default_rng(3)
    measured = rng.normal(size=(40, 7)) + 5.0
    predicted = measured + rng.normal(size=(40, 7))
    predicted[:, 6] = 2.0  # a constant prediction scores 0
    ones = np.ones((1, 40))
    np.testing.assert_allclose(metrics.pearson_r_resampled(measured, predicted, ones)[0],
                               metrics.pearson_r(measured, predicted), atol=1e-10)
    np.testing.assert_allclose(metrics.r2_score_resampled(measured, predicted, ones)[0],
                               metrics.r2_score(measured, predicted), atol=1e-10)
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=3)
    for row in counts:
        rows = np.repeat(np.arange(40), row)  # the resample written out image by image
        np.testing.assert_allclose(metrics.pearson_r_resampled(measured, predicted, row[None])[0],
                                   metrics.pearson_r(measured[rows], predicted[rows]), atol=1e-10)
        np.testing.assert_allclose(metrics.r2_score_resampled(measured, predicted, row[None])[0],
                                   metrics.r2_score(measured[rows], predicted[rows]), atol=1e-10)
