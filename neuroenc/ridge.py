"""Cross-validated ridge regression with one regularisation strength per target (vertex).

The numerical kernel is :func:`solve_ridge_cv`; :class:`RidgeCV` is a scikit-learn-style
estimator that wraps it (the split himalaya makes between ``_solvers.py`` and
``_sklearn_api.py``). The same torch code runs on CPU and CUDA.

How it works
------------
For each cross-validation fold, the centred training features are decomposed **once**,
through an eigendecomposition of the smaller Gram matrix: ``X^T X`` (n_features x
n_features) when there are at least as many training samples as features, else the
kernel ``X X^T`` (n_train x n_train). Every ridge solution of that fold, for every alpha
and every target, is then a diagonal rescaling in that eigenbasis::

    coef(alpha) = M diag(1 / (lambda + alpha)) W^T y

with ``M = V, W = X V`` (primal, ``X^T X = V diag(lambda) V^T``) or
``M = X^T U, W = U`` (dual, ``X X^T = U diag(lambda) U^T``). Validation predictions for
each alpha are ``(X_val M) diag(1 / (lambda + alpha)) W^T y``, so a fold costs one
decomposition plus a few matrix products per target batch. The final refit on all
samples uses one more decomposition of the full ``X``; since each target only rescales
its own column of ``W^T Y``, targets with different alphas are refitted in a single
matrix product (equivalent to grouping targets by alpha, without the grouping).

Targets are processed in batches (``target_batch_size``), so peak memory is bounded by
the fold decompositions plus one batch of targets; ``Y`` stays on the host and only one
batch at a time is moved to the device. An array of shape (n_alphas, n_samples,
n_targets) is never formed: alphas are looped over inside a batch.

This is the approach of himalaya's ``solve_ridge_cv_svd`` (gallantlab/himalaya) and of
scikit-learn's ``RidgeCV`` eigen path, with K-fold instead of leave-one-out validation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

__all__ = [
    "DEFAULT_ALPHAS",
    "RidgeCVResult",
    "solve_ridge_cv",
    "contiguous_folds",
    "RidgeCV",
]

#: Default regularisation grid: 11 values, one per decade from 1e-2 to 1e8.
#: fMRI encoding needs a wide grid: the best alpha scales with n_samples, with the
#: feature scale and with each vertex's noise level, and noisy vertices (most of cortex)
#: pick the largest values. With standardised features and ~10^4 images, well-predicted
#: visual vertices typically land around 1e2-1e5; 1e-2 is practically unregularised
#: least squares (or the minimum-norm solution when n_features > n_samples) and 1e8
#: shrinks predictions to nearly the mean. Decade steps suffice because the validation
#: score is flat near its optimum; pass a finer grid if you need one.
DEFAULT_ALPHAS: np.ndarray = np.logspace(-2, 8, 11)

_SCORINGS = ("r2", "pearson_r")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Automatic target batches are sized so that one batch's working tensors stay near this.
_AUTO_BATCH_BYTES = 256 * 2**20
# Columns of Y checked at a time when locating non-finite values (bounds the mask's size).
_FINITE_CHECK_COLUMNS = 4096


@dataclass
class RidgeCVResult:
    """Result of :func:`solve_ridge_cv`.

    Attributes
    ----------
    coef : ndarray of shape (n_features, n_targets)
        Ridge weights refitted on all samples with each target's best alpha, in the
        feature space of the ``X`` that was passed (note: scikit-learn's ``Ridge.coef_``
        is the transpose, (n_targets, n_features); this follows himalaya).
    intercept : ndarray of shape (n_targets,)
        Zeros when ``fit_intercept=False``.
    best_alphas : ndarray of shape (n_targets,)
        The alpha with the highest mean validation score, per target.
    cv_scores : ndarray of shape (n_alphas, n_targets)
        Validation score (R^2 or Pearson r), averaged over folds, per alpha and target.
    alphas : ndarray of shape (n_alphas,)
        The alpha grid, in the order given.
    """

    coef: np.ndarray
    intercept: np.ndarray
    best_alphas: np.ndarray
    cv_scores: np.ndarray
    alphas: np.ndarray


@dataclass
class _Decomposition:
    """Everything about one training set that is shared by all alphas and targets.

    r is the numerical rank of the centred training features; components with a zero
    eigenvalue contribute nothing to any ridge solution and are dropped.
    """

    eigvals: torch.Tensor  # (r,) eigenvalues lambda of the Gram matrix
    left: torch.Tensor  # (n_train, r) W: per-target coordinates are W^T y
    train_idx: torch.Tensor  # (n_train,) row indices into X / Y
    right: torch.Tensor | None = None  # (n_features, r) M; full fit only
    x_mean: torch.Tensor | None = None  # (n_features,) full fit only, for the intercept
    val_proj: torch.Tensor | None = None  # (n_val, r) X_val M; folds only
    val_idx: torch.Tensor | None = None  # (n_val,)


def contiguous_folds(n_samples: int, n_folds: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return contiguous, unshuffled K-fold splits as a list of (train_idx, val_idx).

    Identical to ``sklearn.model_selection.KFold(n_folds, shuffle=False)``: the first
    ``n_samples % n_folds`` validation blocks get one extra sample.

    Contiguous blocks are the default because fMRI responses are ordered in time: images
    shown in the same run or session share slow drifts and session-level normalisation
    (the Algonauts data are z-scored per session), so shuffled folds would put
    near-duplicates of validation samples in the training set and favour too-small alphas.
    """
    blocks = np.array_split(np.arange(n_samples), n_folds)
    folds = []
    for k, val_idx in enumerate(blocks):
        train_idx = np.concatenate([b for j, b in enumerate(blocks) if j != k])
        folds.append((train_idx, val_idx))
    return folds


def solve_ridge_cv(
    X: np.ndarray,
    Y: np.ndarray,
    alphas: Sequence[float] | np.ndarray | None = None,
    *,
    n_folds: int = 5,
    folds: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    fit_intercept: bool = True,
    scoring: str = "r2",
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    target_batch_size: int | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> RidgeCVResult:
    """Return ridge weights with a cross-validated alpha for every target.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Features, e.g. image embeddings, one row per stimulus image. Not standardised
        here (see :class:`RidgeCV` ``standardize=True``).
    Y : ndarray of shape (n_samples, n_targets) or (n_samples,)
        Responses, e.g. one column per cortical vertex. Kept on the host; only one batch
        of columns at a time is copied to ``device`` in ``dtype``.
    alphas : array-like of shape (n_alphas,), optional
        Positive regularisation strengths. Default :data:`DEFAULT_ALPHAS`
        (``np.logspace(-2, 8, 11)``).
    n_folds : int, default 5
        Number of contiguous, unshuffled folds (see :func:`contiguous_folds` for why).
        Ignored when ``folds`` is given.
    folds : sequence of (train_idx, val_idx), optional
        Explicit splits, e.g. by scan session. Indices are rows of ``X``; the two sets of
        a split must not overlap, and each needs at least 2 samples.
    fit_intercept : bool, default True
        Centre ``X`` and ``Y`` on each training set and fit an intercept.
    scoring : {"r2", "pearson_r"}, default "r2"
        Validation score per target: R^2 as ``sklearn.metrics.r2_score`` (a validation
        set with constant responses scores 0), or the Pearson correlation (a constant
        prediction scores 0). Scores are averaged over folds.
    device : str or torch.device, default "cpu"
        Where the linear algebra runs, e.g. "cuda".
    dtype : {"float32", "float64"}, default "float32"
        Precision of the per-target work (by far the bulk of it). The eigendecompositions
        always run in float64: a Gram matrix squares the condition number of ``X``, and
        float32 would lose the small eigenvalues that the small alphas depend on. (On
        Apple MPS, which has no float64, they run on the CPU, and ``dtype`` must be
        "float32".)
    target_batch_size : int, optional
        Targets handled together. Default: as many as fit in about 256 MiB of working
        memory. Results do not depend on it beyond floating-point rounding.
    progress : callable, optional
        Called as ``progress(n_targets_done, n_targets)`` once before the first batch and
        after each batch, e.g. ``lambda done, total: bar.update(task, completed=done,
        total=total)`` for a rich progress bar.

    Returns
    -------
    RidgeCVResult
        ``coef`` (n_features, n_targets), ``intercept`` (n_targets,), ``best_alphas``
        (n_targets,), ``cv_scores`` (n_alphas, n_targets), ``alphas`` (n_alphas,).
        Arrays are in ``dtype`` except ``alphas`` and ``best_alphas`` (float64).

    Notes
    -----
    Ties in the mean validation score go to the first alpha in ``alphas`` (so, with an
    ascending grid, to the smallest alpha).

    Memory: each fold, and the refit, keeps about n_samples x rank values in ``dtype``
    (rank <= min(n_train, n_features)); the refit also keeps n_features x rank; plus
    one batch of targets and the outputs. ``Y`` itself is never copied whole.

    Raises
    ------
    ValueError
        On arrays of the wrong shape, NaN or inf in ``X`` or ``Y``, non-positive alphas,
        too few samples for the folds, invalid folds, an unknown ``scoring`` or ``dtype``,
        or an unavailable ``device``.
    """
    X, Y = _check_arrays(X, Y)
    n_samples, n_features = X.shape
    n_targets = Y.shape[1]
    alphas_np = _check_alphas(alphas)
    fold_list = _check_folds(n_samples, n_folds, folds)
    if scoring not in _SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {', '.join(_SCORINGS)}")
    work_dtype = _check_dtype(dtype)
    device = _check_device(device)
    if device.type == "mps" and work_dtype == torch.float64:
        raise ValueError("dtype 'float64' is not supported on device 'mps'; use 'float32'")
    if target_batch_size is None:
        target_batch_size = _auto_target_batch_size(
            n_samples, n_features, len(alphas_np), torch.finfo(work_dtype).bits // 8
        )
    elif int(target_batch_size) != target_batch_size or target_batch_size < 1:
        raise ValueError(f"target_batch_size must be a positive integer, got {target_batch_size!r}")
    target_batch_size = int(target_batch_size)

    # Everything that depends on X only: one decomposition per fold and one for the refit.
    decomp_device = torch.device("cpu") if device.type == "mps" else device
    X64 = torch.as_tensor(np.asarray(X, dtype=np.float64), device=decomp_device)
    all_idx = np.arange(n_samples)
    fold_decomps = [
        _decompose(X64, train_idx, val_idx, fit_intercept, work_dtype, device)
        for train_idx, val_idx in fold_list
    ]
    full = _decompose(X64, all_idx, None, fit_intercept, work_dtype, device)
    del X64

    alphas_t = torch.as_tensor(alphas_np, dtype=work_dtype, device=device)
    np_dtype = np.float32 if work_dtype == torch.float32 else np.float64
    coef = np.empty((n_features, n_targets), dtype=np_dtype)
    intercept = np.empty(n_targets, dtype=np_dtype)
    cv_scores = np.empty((len(alphas_np), n_targets), dtype=np_dtype)
    best_idx = np.empty(n_targets, dtype=np.int64)

    if progress is not None:
        progress(0, n_targets)
    for start in range(0, n_targets, target_batch_size):
        stop = min(start + target_batch_size, n_targets)
        Y_host = Y[:, start:stop]
        # With an intercept, every fold score and weight is unchanged by a constant per
        # target, so remove the response mean in the input's own precision before
        # casting: raw BOLD units (~1e4) in float32 would otherwise lose 3 digits.
        shift = None
        if fit_intercept:
            shift = Y_host.mean(axis=0, dtype=np.float64)
            if np.issubdtype(Y_host.dtype, np.floating):
                # Subtracting a nearby value of the same float type is exact (Sterbenz),
                # and avoids a float64 copy of a float32 batch.
                shift = shift.astype(Y_host.dtype)
        Yb = torch.as_tensor(
            np.ascontiguousarray(Y_host) if shift is None else Y_host - shift,
            dtype=work_dtype,
            device=device,
        )
        scores = torch.zeros(len(alphas_np), stop - start, dtype=work_dtype, device=device)
        for dec in fold_decomps:
            scores += _fold_scores(dec, Yb, alphas_t, fit_intercept, scoring)
        scores /= len(fold_decomps)
        # torch.argmax returns the first maximum: ties go to the first alpha of the grid.
        best = torch.argmax(scores, dim=0)
        coef_b, intercept_b = _refit(full, Yb, alphas_t[best], fit_intercept)
        coef[:, start:stop] = coef_b.cpu().numpy()
        intercept[start:stop] = intercept_b.cpu().numpy() if shift is None else (
            intercept_b.cpu().numpy().astype(np.float64) + shift.astype(np.float64)
        )
        cv_scores[:, start:stop] = scores.cpu().numpy()
        best_idx[start:stop] = best.cpu().numpy()
        if progress is not None:
            progress(stop, n_targets)

    return RidgeCVResult(
        coef=coef,
        intercept=intercept,
        best_alphas=alphas_np[best_idx],
        cv_scores=cv_scores,
        alphas=alphas_np,
    )


# --------------------------------------------------------------------------- kernels


def _eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``eigh`` of a symmetric float64 matrix.

    On the CPU, NumPy's LAPACK: measured on a 2-core x86_64 machine, an 800 x 800 float64
    ``eigh`` took 0.10 s in NumPy and 0.59 s in torch 2.14's MKL build, and this call is
    the largest single cost of a ridge fit on the demo.
    """
    if gram.device.type == "cpu":
        eigvals, eigvecs = np.linalg.eigh(gram.numpy())
        return torch.from_numpy(eigvals), torch.from_numpy(eigvecs)
    return torch.linalg.eigh(gram)


def _decompose(
    X64: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None,
    fit_intercept: bool,
    work_dtype: torch.dtype,
    device: torch.device,
) -> _Decomposition:
    """Return the eigen-decomposition of one training set, cast to the working dtype.

    For a fold (``val_idx`` given) the validation projection ``X_val M`` is kept and
    ``M`` dropped; for the full fit ``M`` and the feature means are kept.
    """
    tr = torch.as_tensor(train_idx, dtype=torch.long, device=X64.device)
    Xtr = X64.index_select(0, tr)
    x_mean = Xtr.mean(dim=0) if fit_intercept else torch.zeros_like(Xtr[0])
    Xtr = Xtr - x_mean
    n_train, n_features = Xtr.shape
    if n_train >= n_features:
        eigvals, V = _eigh(Xtr.T @ Xtr)
    else:
        eigvals, U = _eigh(Xtr @ Xtr.T)
    # Eigenvalues below the float64 rounding level of the Gram matrix are zero in exact
    # arithmetic (rank deficiency; centring alone removes one dimension), and their
    # eigenvectors contribute nothing to any ridge solution: drop them.
    lam_max = eigvals[-1].clamp(min=0.0)
    tol = lam_max * max(n_train, n_features) * torch.finfo(torch.float64).eps
    keep = eigvals > tol
    eigvals = eigvals[keep]
    if n_train >= n_features:
        right = V[:, keep]  # M = V
        left = Xtr @ right  # W = X V
    else:
        left = U[:, keep]  # W = U
        right = Xtr.T @ left  # M = X^T U

    def cast(t: torch.Tensor) -> torch.Tensor:
        # dtype first, on the decomposition device: MPS cannot receive float64 tensors.
        return t.to(dtype=work_dtype).to(device)

    dec = _Decomposition(
        eigvals=cast(eigvals),
        left=cast(left),
        train_idx=torch.as_tensor(train_idx, dtype=torch.long, device=device),
    )
    if val_idx is None:
        dec.right = cast(right)
        dec.x_mean = cast(x_mean)
    else:
        va = torch.as_tensor(val_idx, dtype=torch.long, device=X64.device)
        dec.val_proj = cast((X64.index_select(0, va) - x_mean) @ right)
        dec.val_idx = torch.as_tensor(val_idx, dtype=torch.long, device=device)
    return dec


def _fold_scores(
    dec: _Decomposition,
    Yb: torch.Tensor,
    alphas: torch.Tensor,
    fit_intercept: bool,
    scoring: str,
) -> torch.Tensor:
    """Return validation scores of one fold, shape (n_alphas, batch)."""
    Ytr = Yb.index_select(0, dec.train_idx)
    Yva = Yb.index_select(0, dec.val_idx)
    y_mean = Ytr.mean(dim=0) if fit_intercept else torch.zeros_like(Ytr[0])
    # W's columns sum to zero in exact arithmetic, so centring is not needed for Z; it
    # is done anyway so that rounding does not depend on the responses' mean.
    Z = dec.left.T @ (Ytr - y_mean)  # (r, batch)
    resid0 = Yva - y_mean  # validation residual of the intercept-only model
    scores = torch.empty(len(alphas), Yb.shape[1], dtype=Yb.dtype, device=Yb.device)
    if scoring == "r2":
        ss_tot = ((Yva - Yva.mean(dim=0)) ** 2).sum(dim=0)
        constant = ss_tot == 0
        ss_tot = torch.where(constant, torch.ones_like(ss_tot), ss_tot)
    else:
        yc = Yva - Yva.mean(dim=0)
        y_norm = torch.linalg.vector_norm(yc, dim=0)
    for i, alpha in enumerate(alphas):
        pred = dec.val_proj @ (Z / (dec.eigvals + alpha)[:, None])  # (n_val, batch), centred
        if scoring == "r2":
            ss_res = ((resid0 - pred) ** 2).sum(dim=0)
            scores[i] = torch.where(constant, torch.zeros_like(ss_res), 1.0 - ss_res / ss_tot)
        else:
            pc = pred - pred.mean(dim=0)
            denom = torch.linalg.vector_norm(pc, dim=0) * y_norm
            r = (pc * yc).sum(dim=0) / torch.where(denom == 0, torch.ones_like(denom), denom)
            scores[i] = torch.where(denom == 0, torch.zeros_like(r), r)
    return scores


def _refit(
    full: _Decomposition, Yb: torch.Tensor, best_alphas: torch.Tensor, fit_intercept: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (coef (n_features, batch), intercept (batch,)) with one alpha per target."""
    y_mean = Yb.mean(dim=0) if fit_intercept else torch.zeros_like(Yb[0])
    Z = full.left.T @ (Yb - y_mean)  # (r, batch)
    # Each target's alpha only rescales its own column of Z, so all targets are refitted
    # in one product, whatever mix of alphas they chose.
    coef = full.right @ (Z / (full.eigvals[:, None] + best_alphas[None, :]))
    intercept = y_mean - full.x_mean @ coef
    return coef, intercept


# --------------------------------------------------------------------------- validation


def _check_arrays(X: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X)
    Y = np.asarray(Y)
    if X.ndim != 2:
        raise ValueError(
            f"X has shape {X.shape}; expected a 2-D array of shape (n_samples, n_features)"
        )
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise ValueError(
            f"Y has shape {Y.shape}; expected a 2-D array of shape (n_samples, n_targets)"
        )
    if Y.shape[0] != X.shape[0]:
        raise ValueError(
            f"Y has shape {Y.shape} but X has shape {X.shape}; expected Y of shape "
            f"({X.shape[0]}, n_targets), one row per sample (row) of X"
        )
    if X.shape[1] == 0:
        raise ValueError(f"X has shape {X.shape}: no features")
    if Y.shape[1] == 0:
        raise ValueError(f"Y has shape {Y.shape}: no targets")
    for name, arr in (("X", X), ("Y", Y)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(f"{name} has dtype {arr.dtype}; expected real numbers")
        _check_finite(name, arr)
    return X, Y


def _check_finite(name: str, arr: np.ndarray) -> None:
    """Raise if ``arr`` holds NaN or inf, saying how many and where the first one is."""
    if np.issubdtype(arr.dtype, np.integer):
        return
    # A float64 sum is NaN/inf whenever any element is, and needs no full-size boolean
    # mask (Y can be 10^4 x 4*10^4). It can also overflow for huge finite float64
    # values; the exact check below then finds nothing and we accept the array.
    with np.errstate(all="ignore"):
        if np.isfinite(arr.sum(dtype=np.float64)):
            return
    n_bad = 0
    first: tuple[int, int] | None = None
    for start in range(0, arr.shape[1], _FINITE_CHECK_COLUMNS):
        bad = ~np.isfinite(arr[:, start : start + _FINITE_CHECK_COLUMNS])
        count = int(bad.sum())
        if count and first is None:
            rows, cols = np.nonzero(bad)
            order = np.lexsort((cols, rows))[0]
            first = (int(rows[order]), int(cols[order]) + start)
        n_bad += count
    if n_bad:
        raise ValueError(
            f"{name} of shape {arr.shape} contains {n_bad} non-finite value(s) (NaN or inf), "
            f"the first at row {first[0]}, column {first[1]}; expected finite values"
        )


def _check_alphas(alphas: Sequence[float] | np.ndarray | None) -> np.ndarray:
    if alphas is None:
        return DEFAULT_ALPHAS.copy()
    arr = np.array(alphas, dtype=np.float64)  # a copy: the caller's grid may be a view
    if arr.ndim > 1:
        raise ValueError(f"alphas has shape {arr.shape}; expected a 1-D array (n_alphas,)")
    arr = np.atleast_1d(arr)
    if arr.size == 0:
        raise ValueError("alphas is empty; expected at least one positive value")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(
            f"alphas must be finite and > 0, got {arr.tolist()}; a zero alpha is "
            "unregularised least squares, which is undefined for rank-deficient X"
        )
    return arr


def _check_folds(
    n_samples: int,
    n_folds: int,
    folds: Sequence[tuple[np.ndarray, np.ndarray]] | None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    if folds is None:
        if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
            raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
        n_folds = int(n_folds)
        if n_samples < 2 * n_folds:
            raise ValueError(
                f"too few samples for {n_folds}-fold cross-validation: X has {n_samples} "
                f"rows, but each validation fold needs at least 2, so at least "
                f"{2 * n_folds} are expected"
            )
        return contiguous_folds(n_samples, n_folds)

    folds = list(folds)
    if not folds:
        raise ValueError("folds is empty; expected a list of (train_idx, val_idx) pairs")
    checked = []
    for k, split in enumerate(folds):
        if len(split) != 2:
            raise ValueError(f"folds[{k}] has {len(split)} elements; expected (train_idx, val_idx)")
        pair = []
        for part, idx in zip(("train_idx", "val_idx"), split):
            idx = np.asarray(idx)
            if idx.dtype == bool:
                if idx.shape != (n_samples,):
                    raise ValueError(
                        f"folds[{k}] {part} is a boolean mask of shape {idx.shape}; "
                        f"expected shape ({n_samples},)"
                    )
                idx = np.flatnonzero(idx)
            if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(
                    f"folds[{k}] {part} has shape {idx.shape} and dtype {idx.dtype}; "
                    "expected a 1-D array of integer row indices"
                )
            if idx.size < 2:
                raise ValueError(
                    f"folds[{k}] {part} has {idx.size} sample(s); expected at least 2"
                )
            if idx.min() < 0 or idx.max() >= n_samples:
                raise ValueError(
                    f"folds[{k}] {part} has indices in [{idx.min()}, {idx.max()}]; "
                    f"expected rows of X in [0, {n_samples - 1}]"
                )
            pair.append(idx.astype(np.int64))
        overlap = np.intersect1d(pair[0], pair[1])
        if overlap.size:
            raise ValueError(
                f"folds[{k}]: {overlap.size} sample(s) are in both train_idx and val_idx "
                f"(e.g. row {overlap[0]}); expected disjoint sets"
            )
        checked.append((pair[0], pair[1]))
    return checked


def _check_dtype(dtype: str) -> torch.dtype:
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(_DTYPES)}")
    return _DTYPES[name]


def _check_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; expected e.g. 'cpu' or 'cuda'") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but MPS is not available here")
    return device


def _auto_target_batch_size(
    n_samples: int, n_features: int, n_alphas: int, itemsize: int
) -> int:
    # Per target, a batch holds on the device its responses, their train/validation
    # copies, one prediction and its residual (about 5 x n_samples), eigen-coordinates
    # and their rescaling for a fold and for the refit (4 x rank), the weights and the
    # scores; plus the response copy on the host (up to float64).
    rank = min(n_samples, n_features)
    per_target = itemsize * (5 * n_samples + 4 * rank + n_features + 2 * n_alphas) + 8 * n_samples
    return max(1, _AUTO_BATCH_BYTES // per_target)


# --------------------------------------------------------------------------- estimator


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
