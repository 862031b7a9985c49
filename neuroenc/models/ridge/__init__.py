"""Cross-validated ridge regression with one regularisation strength per target (vertex).

``_solvers.py`` holds the numerical kernel (:func:`solve_ridge_cv`, plain functions on
arrays; its docstring explains the algorithm and what makes it fast); ``_estimators.py``
the scikit-learn-style :class:`RidgeCV` that wraps it.
"""

from ._banded import BandedRidgeCV
from ._estimators import RidgeCV
from ._solvers import DEFAULT_ALPHAS, RidgeCVResult, contiguous_folds, solve_ridge_cv

__all__ = ["DEFAULT_ALPHAS", "RidgeCVResult", "solve_ridge_cv", "contiguous_folds", "RidgeCV",
           "BandedRidgeCV"]
