"""Estimators: :class:`RidgeCV`, scikit-learn style, on the solver of ``_solvers.py``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from ._solvers import _check_arrays, _check_finite, solve_ridge_cv

__all__ = ["RidgeCV"]


class RidgeCV(RegressorMixin, BaseEstimator):
    """Ridge regression with a cross-validated alpha per target, scikit-learn style.

    Wraps :func:`solve_ridge_cv`; see it for the algorithm and parameters.

    Parameters
    ----------
    alphas : array-like of shape (n_alphas,), optional
        Default :data:`DEFAULT_ALPHAS`.
    n_folds : int, default 5
        Contiguous, unshuffled folds (fMRI samples are ordered in time).
    fit_intercept : bool, default True
    standardize : bool, default False
        Z-score each feature over all fit samples first (mean and population standard
        deviation; a constant feature keeps scale 1), as
        ``Pipeline([StandardScaler(), Ridge()])``. Weights are mapped back, so ``coef_``,
        ``intercept_`` and :meth:`predict` are in the original feature space. (With
        ``fit_intercept=False`` the features are still centred, so ``intercept_`` is
        ``-(mean / scale) @ coef_``, as the pipeline would predict.) The scaling is
        computed once on all samples, not per fold, like a scaler in front of a CV
        estimator.
    device : str or torch.device, default "cpu"
    dtype : {"float32", "float64"}, default "float32"
    target_batch_size : int, optional
    scoring : {"r2", "pearson_r"}, default "r2"
    folds : sequence of (train_idx, val_idx), optional
        Explicit splits; overrides ``n_folds``.
    cv : {"kfold", "loo", "gcv"}, default "kfold"
        How alphas are scored; see :func:`solve_ridge_cv`.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features, n_targets)
        Note: the transpose of scikit-learn's ``Ridge.coef_`` (himalaya's convention).
    intercept_ : ndarray of shape (n_targets,)
    best_alphas_ : ndarray of shape (n_targets,)
    cv_scores_ : ndarray of shape (n_alphas, n_targets)
    alphas_ : ndarray of shape (n_alphas,)
    n_features_in_ : int
    x_mean_, x_scale_ : ndarray of shape (n_features,)
        Only with ``standardize=True``.
    """

    def __init__(
        self,
        alphas: Sequence[float] | np.ndarray | None = None,
        n_folds: int = 5,
        fit_intercept: bool = True,
        standardize: bool = False,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        target_batch_size: int | None = None,
        scoring: str = "r2",
        folds: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
        cv: str = "kfold",
    ) -> None:
        self.alphas = alphas
        self.n_folds = n_folds
        self.fit_intercept = fit_intercept
        self.standardize = standardize
        self.device = device
        self.dtype = dtype
        self.target_batch_size = target_batch_size
        self.scoring = scoring
        self.folds = folds
        self.cv = cv

    def fit(self, X: np.ndarray, Y: np.ndarray) -> RidgeCV:
        """Fit and return self.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
        Y : ndarray of shape (n_samples, n_targets) or (n_samples,)
        """
        y_1d = np.ndim(Y) == 1
        X, Y = _check_arrays(X, Y)  # fail before standardising, with the user's shapes
        X_fit = X
        if self.standardize:
            X64 = np.asarray(X, dtype=np.float64)
            self.x_mean_ = X64.mean(axis=0)
            scale = X64.std(axis=0)
            # StandardScaler's rule: a constant feature is left unscaled instead of /0.
            scale[scale == 0] = 1.0
            self.x_scale_ = scale
            X_fit = (X64 - self.x_mean_) / self.x_scale_
        result = solve_ridge_cv(
            X_fit,
            Y,
            self.alphas,
            n_folds=self.n_folds,
            folds=self.folds,
            cv=self.cv,
            fit_intercept=self.fit_intercept,
            scoring=self.scoring,
            device=self.device,
            dtype=self.dtype,
            target_batch_size=self.target_batch_size,
        )
        coef, intercept = result.coef, result.intercept
        if self.standardize:
            coef64 = coef.astype(np.float64) / self.x_scale_[:, None]
            intercept = (intercept.astype(np.float64) - self.x_mean_ @ coef64).astype(coef.dtype)
            coef = coef64.astype(coef.dtype)
        self.coef_ = coef
        self.intercept_ = intercept
        self.best_alphas_ = result.best_alphas
        self.cv_scores_ = result.cv_scores
        self.alphas_ = result.alphas
        self.n_features_in_ = X.shape[1]
        self._y_1d = y_1d
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Return predictions of shape (n_samples, n_targets), or (n_samples,) if fitted
        on a 1-D ``Y``.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "coef_")
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {X.shape}; expected (n_samples, {self.n_features_in_}), "
                "the number of features seen in fit"
            )
        _check_finite("X", X)
        pred = X.astype(self.coef_.dtype, copy=False) @ self.coef_ + self.intercept_
        return pred[:, 0] if self._y_1d else pred
