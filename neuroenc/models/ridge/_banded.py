"""Banded ridge: one penalty per feature band and target, chosen by cross-validation on a grid.

Used by the ``variance-partitioning`` and ``image-text-ridge`` recipes
(plugins/neuroenc_baselines). Each band is z-scored and scaled to unit total variance,
then weighted; scaling a band by ``w`` is the same as dividing its penalty by ``w**2``, so
a grid of band weights times the alpha grid of :func:`solve_ridge_cv` is ridge with one
alpha per band and target (himalaya's banded ridge), searched on a grid rather than by
gradient or random search.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BandedRidgeCV", "DEFAULT_BAND_RATIOS", "DEFAULT_BAND_ALPHAS"]

#: Default second-to-first band weight ratios (a decade each side).
DEFAULT_BAND_RATIOS = (0.1, 0.3, 1.0, 3.0, 10.0)
#: Default ridge alphas (features are z-scored and each band scaled to unit variance).
DEFAULT_BAND_ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 9))


class BandedRidgeCV:
    """Ridge regression with one penalty per feature band and target, chosen by CV on a grid.

    Parameters
    ----------
    alphas : sequence of float
        Overall regularisation grid.
    band_ratios : sequence of float
        For two bands: weights ``(1 / sqrt(r), sqrt(r))`` for each ratio ``r``; ignored
        with one band.
    single_bands : bool, default False
        For two bands, also fit each band alone (the ratios 0 and inf: the other band's
        weight is 0). Every vertex then chooses among the single-band models too, so its
        cross-validated score is at least that of the better single band, exactly: each
        single-band solution is the one-band model's (same standardisation, folds and
        alphas).
    n_folds : int
        Contiguous folds (see :func:`neuroenc.models.ridge.contiguous_folds`).
    device, dtype : str
        Passed to :func:`neuroenc.models.ridge.solve_ridge_cv`.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features_total, n_targets)
        Weights on the standardised, band-scaled features.
    intercept_ : ndarray of shape (n_targets,)
    best_ratio_ : ndarray of shape (n_targets,)
        The chosen ratio, ``w_2^2 / w_1^2`` (1.0 with one band; 0 for the first band alone
        and inf for the second alone, with ``single_bands``).
    best_alpha_ : ndarray of shape (n_targets,)
    cv_score_ : ndarray of shape (n_targets,)
        The best mean cross-validated R^2.
    """

    def __init__(self, alphas: Sequence[float] = DEFAULT_BAND_ALPHAS,
                 band_ratios: Sequence[float] = DEFAULT_BAND_RATIOS, n_folds: int = 5,
                 device: str = "cpu", dtype: str = "float32", single_bands: bool = False):
        self.single_bands = single_bands
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.band_ratios = tuple(float(r) for r in band_ratios)
        self.n_folds = n_folds
        self.device = device
        self.dtype = dtype

    def _standardize(self, bands: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for (mean, scale), band in zip(self.band_stats_, bands):
            out.append((np.asarray(band, dtype=np.float64) - mean) / scale)
        return np.concatenate(out, axis=1)

    def fit(self, bands: Sequence[np.ndarray], Y: np.ndarray) -> BandedRidgeCV:
        """Fit on bands of shape (n_samples, n_features_b) and Y (n_samples, n_targets)."""
        from ._solvers import solve_ridge_cv

        if not 1 <= len(bands) <= 2:
            raise ValueError(f"BandedRidgeCV: 1 or 2 bands, found {len(bands)}")
        n = len(Y)
        for i, band in enumerate(bands):
            if band.shape[0] != n:
                raise ValueError(f"band {i} has {band.shape[0]} rows, responses {n}")
        self.band_stats_ = []
        self.band_sizes_ = [int(b.shape[1]) for b in bands]
        for band in bands:
            band = np.asarray(band, dtype=np.float64)
            mean = band.mean(axis=0)
            std = band.std(axis=0)
            std[std == 0] = 1.0
            # z-score, then unit total variance per band: a 2,000-d band must not outweigh
            # a 384-d one just by its width.
            self.band_stats_.append((mean, std * np.sqrt(band.shape[1])))
        Z = self._standardize(bands)
        # (first band's weight, second's, recorded ratio) for each point of the grid
        if len(bands) == 2:
            grid = [(r ** -0.5, r ** 0.5, r) for r in self.band_ratios]
            if self.single_bands:
                grid += [(1.0, 0.0, 0.0), (0.0, 1.0, np.inf)]
        else:
            grid = [(1.0, 1.0, 1.0)]
        n_targets = Y.shape[1]
        self.cv_score_ = np.full(n_targets, -np.inf)
        self.coef_ = np.zeros((Z.shape[1], n_targets), dtype=np.float32)
        self.intercept_ = np.zeros(n_targets, dtype=np.float32)
        self.best_ratio_ = np.ones(n_targets)
        self.best_alpha_ = np.zeros(n_targets)
        split = self.band_sizes_[0]
        for w_first, w_second, ratio in grid:
            weights = np.ones(Z.shape[1])
            weights[:split] = w_first
            weights[split:] = w_second
            used = weights > 0  # a band of weight 0 is left out, not solved as zero columns
            result = solve_ridge_cv(Z[:, used] * weights[used], Y, self.alphas,
                                    n_folds=self.n_folds, device=self.device, dtype=self.dtype)
            score = result.cv_scores.max(axis=0).astype(np.float64)
            better = score > self.cv_score_
            self.cv_score_[better] = score[better]
            coef = np.zeros((Z.shape[1], int(better.sum())), dtype=self.coef_.dtype)
            coef[used] = result.coef[:, better] * weights[used, None]
            self.coef_[:, better] = coef
            self.intercept_[better] = result.intercept[better]
            self.best_ratio_[better] = ratio
            self.best_alpha_[better] = result.best_alphas[better]
        return self

    def predict(self, bands: Sequence[np.ndarray]) -> np.ndarray:
        """Return predictions of shape (n_samples, n_targets), float32."""
        if [int(b.shape[1]) for b in bands] != self.band_sizes_:
            raise ValueError(f"band widths {[b.shape[1] for b in bands]}, fitted on "
                             f"{self.band_sizes_}")
        Z = self._standardize(bands).astype(np.float32)
        return Z @ self.coef_ + self.intercept_
