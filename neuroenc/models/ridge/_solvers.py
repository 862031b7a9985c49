"""Solvers: cross-validated ridge regression with one regularisation strength per target.

The numerical kernel is :func:`solve_ridge_cv` (plain functions on arrays);
:class:`neuroenc.models.ridge.RidgeCV` in ``_estimators.py`` is the scikit-learn-style
estimator that wraps it (the split himalaya makes between ``_solvers.py`` and
``_sklearn_api.py``). The same torch code runs on CPU and CUDA.

How it works
------------
For each cross-validation fold, the centred training features are decomposed **once**,
through an eigendecomposition of the smaller Gram matrix: ``X^T X`` (n_features x
n_features, "primal") when there are at least as many training samples as features, else
the kernel ``X X^T`` (n_train x n_train, "dual"). Every ridge solution of that fold, for
every alpha and every target, is then a diagonal rescaling in that eigenbasis::

    coef(alpha) = M diag(1 / (lambda + alpha)) z,     z = W^T y

with ``M = V, W = X V`` (primal, ``X^T X = V diag(lambda) V^T``) or ``M = X^T U, W = U``
(dual, ``X X^T = U diag(lambda) U^T``).

What makes it fast (see docs/performance.md for the flop counts and measurements):

* **No per-alpha predictions.** A fold's validation score needs, per alpha and target,
  only ``||r - P u||^2`` with ``u = diag(1 / (lambda + alpha)) z`` and ``P = X_val M``
  (n_val x rank). Expanded, that is ``||r||^2 - 2 q^T u + u^T G u`` with ``q = P^T r``
  (once per fold) and ``G = P^T P`` (rank x rank, once per fold, independent of the
  targets). The cross terms of all alphas are one small product ``D @ (q * z)``; the
  quadratic terms ``u^T G u`` cost rank^2 per alpha and target instead of
  2 n_val rank for explicit predictions, and half of that again because ``G`` is
  symmetric (block upper-triangular products, :func:`_quadratic_forms`). When
  ``n_val`` is small next to the rank, explicit predictions ``P u`` are cheaper and are
  used instead. Pearson scoring uses the same expansion with centred ``P`` and ``r``.
* **Target-side products shared across folds** (primal): ``z`` and ``q`` of a fold are
  ``V^T`` times ``X_train^T Y_train`` and ``X_val^T Y_val`` (plus rank-one centring
  terms). The validation blocks ``X_val^T Y_val`` of K-fold splits add up to ``X^T Y``,
  so one pass over the responses (2 n_samples n_features flops per target) serves every
  fold and the refit, instead of K passes over the training rows.
* **X-side work is tiny and in float64**: Gram matrices of the validation blocks add up to
  the full one, so a fold's training Gram matrix is a subtraction; eigendecompositions
  run in float64 (a Gram matrix squares the condition number of ``X``).
* **Target-side work is float32 GEMMs** (``dtype="float32"``, the default) on batches
  of targets; ``Y`` stays where it is (a memmap is fine) and only one batch of columns
  is copied to the device at a time. Arrays of shape (n_alphas, n_samples, n_targets)
  are never formed.

The final refit on all samples uses the full decomposition; each target's alpha only
rescales its own column of ``z``, so targets with different alphas are refitted in a
single matrix product (equivalent to grouping targets by alpha, without the grouping).

Besides K-fold, ``cv="loo"`` selects alphas by exact leave-one-out error and ``cv="gcv"``
by generalised cross-validation, both from the one full-data decomposition (the LOO
residual of a linear smoother is ``(y - H y) / (1 - diag H)``; GCV replaces ``diag H`` by
its mean). ``cv="loo"`` is what scikit-learn's ``RidgeCV(alpha_per_target=True)`` does;
``cv="gcv"`` is the cheapest (one projection of ``Y``).

The eigendecomposition approach is that of himalaya's ``solve_ridge_cv_svd``
(gallantlab/himalaya) and of scikit-learn's ``RidgeCV`` eigen path; himalaya forms
explicit (n_alphas, n_val, n_train) prediction operators per fold, which costs
2 n_alphas n_val n_train flops per target and fold (see docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DEFAULT_ALPHAS",
    "RidgeCVResult",
    "solve_ridge_cv",
    "contiguous_folds",
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
_CVS = ("kfold", "loo", "gcv")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Automatic target batches are sized so that one batch's working tensors stay near this.
# Measured on the 2-core machine of docs/performance.md (9841 x 1024 features, 5 folds,
# 11 alphas, 8000 targets): 6.2 s with the automatic 976 targets a batch, 6.6 s with 250,
# 6.2 with 500, 5.8 with 2000, 6.4 with 4000: flat from a few hundred targets up, so
# larger batches would only add memory.
_AUTO_BATCH_BYTES = 256 * 2**20
# Columns of Y checked at a time when locating non-finite values (bounds the mask's size).
_FINITE_CHECK_COLUMNS = 4096
# Rows of G per block in the symmetric quadratic forms: rank^2 * (1 + 128 / rank) flops
# per alpha and target instead of 2 rank^2, while each block product stays a large GEMM.
_QUAD_BLOCK = 128
# Columns (targets) per pass of the quadratic forms: keeps each block product in cache.
# On a GPU there is no such cache to fit, and wide products are what it is fast at.
_QUAD_COLUMNS = 256
# Memory allowed for the per-fold, per-alpha quadratic-form blocks kept across batches.
_QUAD_KEEP_BYTES = 512 * 2**20


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
        For ``cv="loo"`` the score of the leave-one-out predictions; for ``cv="gcv"``
        ``1 - GCV / variance``.
    alphas : ndarray of shape (n_alphas,)
        The alpha grid, in the order given.
    """

    coef: np.ndarray
    intercept: np.ndarray
    best_alphas: np.ndarray
    cv_scores: np.ndarray
    alphas: np.ndarray


@dataclass
class _Fold:
    """Everything about one split that is shared by all alphas and targets.

    ``r`` is the numerical rank of the centred training features; components with a zero
    eigenvalue contribute nothing to any ridge solution and are dropped. Tensors are in
    the working dtype, on the working device.
    """

    n_train: int
    n_val: int
    train_idx: torch.Tensor  # (n_train,) row indices into X / Y
    val_idx: torch.Tensor  # (n_val,)
    complement: bool  # train_idx and val_idx together are every sample, once
    train_runs: list[tuple[int, int]] | None  # train_idx as a few contiguous ranges
    val_runs: list[tuple[int, int]] | None
    primal: bool
    eigvals: torch.Tensor  # (r,)
    # primal: z = V^T X_train^T y (centred), q from X_val^T y
    V: torch.Tensor | None = None  # (n_features, r)
    x_val: torch.Tensor | None = None  # (n_val, n_features) rows of the centred X
    x_train: torch.Tensor | None = None  # (n_train, n_features) only if not complement
    vx_train: torch.Tensor | None = None  # (r,) V^T mean(X_train)
    vx_val: torch.Tensor | None = None  # (r,) V^T mean(X_val)
    v_c: torch.Tensor | None = None  # (r,) V^T c, c the centre of the scored predictions
    # dual: z = U^T y_train, q = P^T y_val
    U: torch.Tensor | None = None  # (n_train, r)
    u_sum: torch.Tensor | None = None  # (r,) U^T 1
    p_sum: torch.Tensor | None = None  # (r,) P^T 1
    # validation: predictions are P u (P = (X_val - c) M); quadratic forms u^T G u
    P: torch.Tensor | None = None  # (n_val, r); dual always, primal in "direct" mode
    G_upper: torch.Tensor | None = None  # (r, r) triu(G), diagonal halved; "quad" mode
    quad_blocks: list | None = None  # _scaled_blocks(G_upper, 1 / (lambda + alphas)), if kept


@dataclass
class _Full:
    """The decomposition of all samples: the refit, and LOO / GCV selection."""

    eigvals: torch.Tensor  # (r,)
    M: torch.Tensor  # (n_features, r): coef = M diag(1 / (lambda + alpha)) z
    x_mean: torch.Tensor  # (n_features,) mean of the X that was passed, for the intercept
    primal_kfold: bool  # z = V^T X^T y from the K-fold products; else z = U^T y
    U: torch.Tensor | None = None  # (n_samples, r) orthonormal, W of the dual form
    u_sum: torch.Tensor | None = None  # (r,) U^T 1
    vx: torch.Tensor | None = None  # (r,) V^T mean(centred X) (primal_kfold)
    x_centred: torch.Tensor | None = None  # (n_samples, n_features) if X^T Y is needed
    loo_weights: torch.Tensor | None = None  # (n_samples, n_alphas) 1 / (1 - diag H)


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
    cv: str = "kfold",
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
        Responses, e.g. one column per cortical vertex. Kept on the host (a
        ``np.memmap`` is fine); only one batch of columns at a time is copied to
        ``device`` in ``dtype``.
    alphas : array-like of shape (n_alphas,), optional
        Positive regularisation strengths. Default :data:`DEFAULT_ALPHAS`
        (``np.logspace(-2, 8, 11)``).
    n_folds : int, default 5
        Number of contiguous, unshuffled folds (see :func:`contiguous_folds` for why).
        Ignored when ``folds`` is given.
    folds : sequence of (train_idx, val_idx), optional
        Explicit splits, e.g. by scan session. Indices are rows of ``X``; the two sets of
        a split must not overlap, and each needs at least 2 samples.
    cv : {"kfold", "loo", "gcv"}, default "kfold"
        How alphas are scored. "kfold": the folds above. "loo": exact leave-one-out
        (as scikit-learn's ``RidgeCV``), from one decomposition of all samples; note that
        leave-one-out on fMRI samples ordered in time favours small alphas for the reason
        given in :func:`contiguous_folds`. "gcv": generalised cross-validation (Golub,
        Heath & Wahba 1979), the cheapest; ``scoring="r2"`` only. ``n_folds`` and
        ``folds`` are for "kfold" only.
    fit_intercept : bool, default True
        Centre ``X`` and ``Y`` on each training set and fit an intercept.
    scoring : {"r2", "pearson_r"}, default "r2"
        Validation score per target: R^2 as ``sklearn.metrics.r2_score`` (a validation
        set with constant responses scores 0), or the Pearson correlation (a constant
        prediction scores 0). Scores are averaged over folds.
    device : str or torch.device, default "cpu"
        Where the linear algebra runs, e.g. "cuda".
    dtype : {"float32", "float64"}, default "float32"
        Precision of the per-target work (by far the bulk of it). The decompositions and
        everything else that depends on ``X`` only always run in float64: a Gram matrix
        squares the condition number of ``X``, and float32 would lose the small
        eigenvalues that the small alphas depend on. (On Apple MPS, which has no float64,
        they run on the CPU, and ``dtype`` must be "float32".)
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

    Memory: the decompositions keep a few (n_features x rank) and (rank x rank) matrices
    per fold, plus ``X`` once, in ``dtype``; one batch of targets needs about
    (3 n_samples + (n_folds + 2) n_features + 2 n_alphas rank) values per target; plus
    the outputs (``coef`` is n_features x n_targets). ``Y`` itself is never copied whole.

    With ``cv="gcv"``, an alpha for which the fit has as many degrees of freedom as there
    are samples (possible with more features than samples and a tiny alpha) scores -inf.

    Raises
    ------
    ValueError
        On arrays of the wrong shape, NaN or inf in ``X`` or ``Y``, non-positive alphas,
        too few samples for the folds, invalid folds, an unknown ``cv``, ``scoring`` or
        ``dtype``, or an unavailable ``device``.
    """
    X, Y = _check_arrays(X, Y)
    n_samples, n_features = X.shape
    n_targets = Y.shape[1]
    alphas_np = _check_alphas(alphas)
    if cv not in _CVS:
        raise ValueError(f"unknown cv {cv!r}; expected one of {', '.join(_CVS)}")
    if scoring not in _SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; expected one of {', '.join(_SCORINGS)}")
    if cv == "gcv" and scoring != "r2":
        raise ValueError(f"cv='gcv' scores squared error only; use scoring='r2', not {scoring!r}")
    if cv == "kfold":
        fold_list = _check_folds(n_samples, n_folds, folds)
    else:
        if folds is not None:
            raise ValueError(f"folds are only used with cv='kfold', not cv={cv!r}")
        if n_samples < 3:
            raise ValueError(f"cv={cv!r} needs at least 3 samples; X has {n_samples} rows")
        fold_list = []
    work_dtype = _check_dtype(dtype)
    device = _check_device(device)
    if device.type == "mps" and work_dtype == torch.float64:
        raise ValueError("dtype 'float64' is not supported on device 'mps'; use 'float32'")
    if target_batch_size is not None and (
        int(target_batch_size) != target_batch_size or target_batch_size < 1
    ):
        raise ValueError(f"target_batch_size must be a positive integer, got {target_batch_size!r}")

    # Everything that depends on X only: one decomposition per fold and one for the refit.
    decomp_device = torch.device("cpu") if device.type == "mps" else device
    plan = _plan_x_side(
        X, fold_list, alphas_np, cv, fit_intercept, scoring, work_dtype, device, decomp_device
    )
    if target_batch_size is None:
        target_batch_size = _auto_target_batch_size(
            plan, n_samples, n_features, len(alphas_np), torch.finfo(work_dtype).bits // 8,
            np.dtype(Y.dtype).itemsize,
        )
    target_batch_size = int(target_batch_size)

    alphas_t = torch.as_tensor(alphas_np, dtype=work_dtype, device=device)
    np_dtype = np.float32 if work_dtype == torch.float32 else np.float64
    coef = np.empty((n_features, n_targets), dtype=np_dtype)
    intercept = np.empty(n_targets, dtype=np_dtype)
    cv_scores = np.empty((len(alphas_np), n_targets), dtype=np_dtype)
    best_idx = np.empty(n_targets, dtype=np.int64)

    def host_batch(start: int, stop: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Return (responses of targets start..stop as a contiguous array, the shift)."""
        Y_host = Y[:, start:stop]
        # With an intercept, every fold score and weight is unchanged by a constant per
        # target, so remove the response mean in the input's own precision before
        # casting: raw BOLD units (~1e4) in float32 would otherwise lose 3 digits.
        if not fit_intercept:
            return np.ascontiguousarray(Y_host), None
        shift = Y_host.mean(axis=0, dtype=np.float64)
        if np.issubdtype(Y_host.dtype, np.floating):
            # Subtracting a nearby value of the same float type is exact (Sterbenz),
            # and avoids a float64 copy of a float32 batch.
            shift = shift.astype(Y_host.dtype)
        return Y_host - shift, shift

    def collect(start: int, stop: int, shift, scores, best, coef_b, intercept_b) -> None:
        coef[:, start:stop] = coef_b.cpu().numpy()
        intercept[start:stop] = intercept_b.cpu().numpy() if shift is None else (
            intercept_b.cpu().numpy().astype(np.float64) + shift.astype(np.float64)
        )
        cv_scores[:, start:stop] = scores.cpu().numpy()
        best_idx[start:stop] = best.cpu().numpy()
        if progress is not None:
            progress(stop, n_targets)

    if progress is not None:
        progress(0, n_targets)
    pending = None
    for start in range(0, n_targets, target_batch_size):
        stop = min(start + target_batch_size, n_targets)
        # The host prepares this batch before the previous one's results are fetched:
        # on a GPU, that overlaps with the previous batch's kernels.
        Y_host, shift = host_batch(start, stop)
        if pending is not None:
            collect(*pending)
        Yb = torch.as_tensor(Y_host, dtype=work_dtype, device=device)
        del Y_host
        y_mean = Yb.mean(dim=0) if fit_intercept else None
        if cv == "kfold":
            scores, xty = _kfold_scores(plan, Yb, y_mean, alphas_t, fit_intercept, scoring)
            z = _full_coordinates(plan.full, Yb, y_mean, xty)
            del xty
        else:
            z = _full_coordinates(plan.full, Yb, y_mean, None)
            scores = _loo_gcv_scores(plan.full, Yb, y_mean, z, alphas_t, cv, scoring)
        del Yb
        # torch.argmax returns the first maximum: ties go to the first alpha of the grid.
        best = torch.argmax(scores, dim=0)
        coef_b = plan.full.M @ (z / (plan.full.eigvals[:, None] + alphas_t[best][None, :]))
        intercept_b = -(plan.full.x_mean @ coef_b)
        if y_mean is not None:
            intercept_b += y_mean
        pending = (start, stop, shift, scores, best, coef_b, intercept_b)
    if pending is not None:
        collect(*pending)

    return RidgeCVResult(
        coef=coef,
        intercept=intercept,
        best_alphas=alphas_np[best_idx],
        cv_scores=cv_scores,
        alphas=alphas_np,
    )


# --------------------------------------------------------------------------- X side


@dataclass
class _Plan:
    folds: list[_Fold]
    full: _Full
    partition: bool  # the validation sets are every sample, once: X^T Y = sum of blocks
    x_centred: torch.Tensor | None  # (n_samples, n_features) work dtype, if X^T Y is needed


def _eigh(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``eigh`` of a symmetric float64 matrix (eigenvalues ascending).

    torch's LAPACK rather than NumPy's: measured on the 2-core machine of
    docs/performance.md (idle), 1024 x 1024 in 0.093 s (torch 2.14, MKL) against 0.140 s
    (NumPy 2.4, OpenBLAS); 800 x 800 in 0.066 s against 0.082 s.

    On the CPU it runs on one thread. The tridiagonalisation synchronises its threads
    once per column, and when the machine is busier than its cores (a shared server, a
    test suite next door) every synchronisation waits for a scheduler time slice: there,
    a 512 x 512 eigh took 5.4 s on 2 threads instead of 0.02 s, with both libraries.
    One thread is about 1.8x slower on an idle machine (1024 x 1024: 0.21 s against
    0.11 s), under a second in total for a fit, and immune to that.
    """
    if gram.device.type != "cpu":
        return torch.linalg.eigh(gram)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(gram)
    finally:
        torch.set_num_threads(threads)


def _keep_nonzero(eigvals: torch.Tensor, n_rows: int, n_cols: int) -> torch.Tensor:
    """Return the mask of eigenvalues above the float64 rounding level of a Gram matrix.

    Below it they are zero in exact arithmetic (rank deficiency; centring alone removes
    one dimension), and their eigenvectors contribute nothing to any ridge solution.
    """
    lam_max = eigvals[-1].clamp(min=0.0)
    return eigvals > lam_max * max(n_rows, n_cols) * torch.finfo(torch.float64).eps


def _plan_x_side(
    X: np.ndarray,
    fold_list: list[tuple[np.ndarray, np.ndarray]],
    alphas: np.ndarray,
    cv: str,
    fit_intercept: bool,
    scoring: str,
    work_dtype: torch.dtype,
    device: torch.device,
    decomp_device: torch.device,
) -> _Plan:
    """Return every decomposition and X-side product, computed in float64."""
    n_samples, n_features = X.shape

    def cast(t: torch.Tensor) -> torch.Tensor:
        # dtype first, on the decomposition device: MPS cannot receive float64 tensors.
        return t.to(dtype=work_dtype).to(device)

    X64 = torch.as_tensor(np.asarray(X, dtype=np.float64), device=decomp_device)
    # The intercept is y_mean - x_mean @ coef; zero without one.
    x_mean = X64.mean(dim=0) if fit_intercept else torch.zeros_like(X64[0])
    # Centre once on all samples: every later difference of cross-products (a training
    # set's as "all minus validation") then cancels little, in float32 too.
    Xg = X64 - x_mean if fit_intercept else X64
    del X64

    sizes = [(len(tr), len(va)) for tr, va in fold_list]
    complements = [
        n_tr + n_va == n_samples
        and len(np.unique(tr)) == n_tr
        and len(np.unique(va)) == n_va
        for (tr, va), (n_tr, n_va) in zip(fold_list, sizes)
    ]
    partition = bool(fold_list) and all(complements) and sum(s[1] for s in sizes) == n_samples
    primal_folds = [n_tr >= n_features for n_tr, _ in sizes]
    full_primal = n_samples >= n_features
    primal_kfold = cv == "kfold" and full_primal
    # X^T Y for all samples is needed by primal folds whose training set is "all minus
    # validation", and by a primal refit; it is the sum of the validation blocks when
    # the folds partition the samples and all are primal.
    need_xty = (cv == "kfold") and (
        primal_kfold or any(p and c for p, c in zip(primal_folds, complements))
    )
    xty_from_blocks = partition and all(primal_folds)

    grams_val: list[torch.Tensor | None] = []
    for (tr, va), primal in zip(fold_list, primal_folds):
        if primal:
            xs = Xg[torch.as_tensor(va, device=decomp_device)]
            grams_val.append(xs.T @ xs)
        else:
            grams_val.append(None)
    gram_all = None
    if full_primal or any(primal_folds):
        gram_all = (
            torch.stack(grams_val).sum(dim=0) if xty_from_blocks and grams_val else Xg.T @ Xg
        )

    folds = []
    for k, ((tr, va), primal, complement) in enumerate(zip(fold_list, primal_folds, complements)):
        tr_t = torch.as_tensor(tr, dtype=torch.long, device=decomp_device)
        va_t = torch.as_tensor(va, dtype=torch.long, device=decomp_device)
        x_tr, x_va = Xg.index_select(0, tr_t), Xg.index_select(0, va_t)
        n_tr, n_va = len(tr), len(va)
        m_tr = x_tr.mean(dim=0) if fit_intercept else torch.zeros(n_features, dtype=Xg.dtype,
                                                                  device=decomp_device)
        m_va = x_va.mean(dim=0)
        # c: the centre of the validation predictions that are scored. R^2 scores the
        # residual about the training mean; Pearson r centres predictions on their own mean.
        c = m_va if scoring == "pearson_r" else m_tr
        fold = _Fold(
            n_train=n_tr, n_val=n_va,
            train_idx=torch.as_tensor(tr, dtype=torch.long, device=device),
            val_idx=torch.as_tensor(va, dtype=torch.long, device=device),
            train_runs=_runs(tr), val_runs=_runs(va),
            complement=complement, primal=primal, eigvals=None,  # type: ignore[arg-type]
        )
        if primal:
            if complement:
                gram_tr = gram_all - grams_val[k]
            else:
                gram_tr = x_tr.T @ x_tr
            if fit_intercept:
                gram_tr = gram_tr - n_tr * torch.outer(m_tr, m_tr)
            eigvals, V = _eigh(gram_tr)
            keep = _keep_nonzero(eigvals, n_tr, n_features)
            eigvals, V = eigvals[keep], V[:, keep]
            fold.V = cast(V)
            fold.x_val = cast(x_va)
            if not complement:
                fold.x_train = cast(x_tr)
            fold.vx_train = cast(V.T @ m_tr)
            fold.vx_val = cast(V.T @ m_va)
            fold.v_c = cast(V.T @ c)
            rank = V.shape[1]
            if _use_quadratic_form(rank, n_va):
                # (X_val - c)^T (X_val - c) from the block's Gram matrix.
                gram_c = grams_val[k] - n_va * (torch.outer(m_va, c) + torch.outer(c, m_va)) \
                    + n_va * torch.outer(c, c)
                fold.G_upper = cast(_upper_half(V.T @ gram_c @ V))
            else:
                fold.P = cast((x_va - c) @ V)
        else:
            xc_tr = x_tr - m_tr
            eigvals, U = _eigh(xc_tr @ xc_tr.T)
            keep = _keep_nonzero(eigvals, n_tr, n_features)
            eigvals, U = eigvals[keep], U[:, keep]
            P = (x_va - c) @ (xc_tr.T @ U)
            fold.U = cast(U)
            fold.u_sum = cast(U.sum(dim=0))
            fold.p_sum = cast(P.sum(dim=0))
            if _use_quadratic_form(U.shape[1], n_va):
                fold.G_upper = cast(_upper_half(P.T @ P))
            fold.P = cast(P)
        fold.eigvals = cast(eigvals)
        folds.append(fold)
    del grams_val
    # Keep every fold's per-alpha blocks (about n_alphas rank^2 / 2 values each) when
    # they fit in _QUAD_KEEP_BYTES; otherwise each batch rebuilds them (an elementwise
    # pass over n_alphas rank^2 / 2 values per fold and batch).
    itemsize = torch.finfo(work_dtype).bits // 8
    quad_folds = [f for f in folds if f.G_upper is not None]
    need = sum(len(alphas) * f.G_upper.shape[0] * (f.G_upper.shape[0] + _QUAD_BLOCK) // 2
               for f in quad_folds) * itemsize
    if quad_folds and need <= _QUAD_KEEP_BYTES:
        alphas_w = torch.as_tensor(alphas, dtype=work_dtype, device=device)
        for f in quad_folds:
            f.quad_blocks = _scaled_blocks(
                f.G_upper, 1.0 / (f.eigvals[None, :] + alphas_w[:, None]))

    # The full decomposition: refit, and LOO / GCV.
    xm_all = Xg.mean(dim=0) if fit_intercept else torch.zeros(n_features, dtype=Xg.dtype,
                                                               device=decomp_device)
    if full_primal:
        gram = gram_all - n_samples * torch.outer(xm_all, xm_all) if fit_intercept else gram_all
        eigvals, V = _eigh(gram)
        keep = _keep_nonzero(eigvals, n_samples, n_features)
        eigvals, V = eigvals[keep], V[:, keep]
        if primal_kfold:
            full = _Full(eigvals=cast(eigvals), M=cast(V), x_mean=cast(x_mean),
                         primal_kfold=True, vx=cast(V.T @ xm_all))
        else:
            # Orthonormal U = X V / sqrt(lambda); then coef = V sqrt(lambda) D U^T y.
            root = eigvals.sqrt()
            U = ((Xg - xm_all) @ V) / root
            full = _Full(eigvals=cast(eigvals), M=cast(V * root), x_mean=cast(x_mean),
                         primal_kfold=False, U=U)
    else:
        xc = Xg - xm_all
        eigvals, U = _eigh(xc @ xc.T)
        keep = _keep_nonzero(eigvals, n_samples, n_features)
        eigvals, U = eigvals[keep], U[:, keep]
        full = _Full(eigvals=cast(eigvals), M=cast(xc.T @ U), x_mean=cast(x_mean),
                     primal_kfold=False, U=U)
    if full.U is not None:
        if cv == "loo":
            # Diagonal of the hat matrix for every alpha; the intercept is an unpenalised
            # direction (the constant vector, orthogonal to the centred X): it adds 1/n.
            h = eigvals[None, :] / (eigvals[None, :] + eigvals.new_tensor(alphas)[:, None])
            diag = (full.U**2) @ h.T + (1.0 / n_samples if fit_intercept else 0.0)
            full.loo_weights = cast(1.0 / (1.0 - diag))
        full.u_sum = cast(full.U.sum(dim=0))
        full.U = cast(full.U)
    x_centred = cast(Xg) if need_xty and not xty_from_blocks else None
    return _Plan(folds=folds, full=full, partition=xty_from_blocks, x_centred=x_centred)


def _use_quadratic_form(rank: int, n_val: int) -> bool:
    """Return whether u^T G u (rank^2 (1 + block / rank) flops per alpha and target) is
    cheaper than explicit validation predictions P u (2 n_val rank flops)."""
    return rank + _QUAD_BLOCK < 2 * n_val


def _upper_half(G: torch.Tensor) -> torch.Tensor:
    """Return ``triu(G)`` with its diagonal halved, so that ``u^T G u = 2 u^T H u``."""
    H = torch.triu(G)
    H.diagonal().mul_(0.5)
    return H


# --------------------------------------------------------------------------- target side


def _runs(idx: np.ndarray, max_runs: int = 4) -> list[tuple[int, int]] | None:
    """Return ``idx`` as at most ``max_runs`` increasing (start, stop) ranges, or None.

    K-fold splits are one or two ranges of rows: slicing them gives views, where
    ``index_select`` would copy n_rows x batch values per fold and batch.
    """
    if len(idx) == 0 or (np.diff(idx) <= 0).any():
        return None
    breaks = np.flatnonzero(np.diff(idx) != 1)
    if len(breaks) >= max_runs:
        return None
    starts = np.r_[0, breaks + 1]
    stops = np.r_[breaks + 1, len(idx)]
    return [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, stops)]


def _rows(Y: torch.Tensor, idx: torch.Tensor, runs: list[tuple[int, int]] | None) -> torch.Tensor:
    """Return ``Y[idx]``: a view when ``idx`` is one range."""
    if runs is not None and len(runs) == 1:
        return Y[runs[0][0] : runs[0][1]]
    return Y.index_select(0, idx)


def _t_matmul_rows(
    M: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor, runs: list[tuple[int, int]] | None
) -> torch.Tensor:
    """Return ``M^T @ Y[idx]`` (M has one row per index), without copying rows of Y."""
    if runs is None:
        return M.T @ Y.index_select(0, idx)
    out = None
    offset = 0
    for a, b in runs:
        part = M[offset : offset + b - a]
        out = part.T @ Y[a:b] if out is None else out.addmm_(part.T, Y[a:b])
        offset += b - a
    return out


def _dots(a: torch.Tensor, b: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Return the dot products of matching columns (sum over ``dim`` of ``a * b``).

    Measured on the 2-core machine of docs/performance.md (idle), 800 x 3190 float32:
    ``(a * b).sum(0)`` 9.4 GB/s, ``torch.linalg.vecdot`` 6.9 GB/s; and for 2000 x 2000
    ``torch.einsum("nb,nb->b")`` took 2.5 s against 0.033 s (torch 2.14 turns it into a
    batched matmul of 1-element products).
    """
    return (a * b).sum(dim=dim)


def _scaled_blocks(G_upper: torch.Tensor, inv: torch.Tensor) -> list[tuple[int, int, torch.Tensor]]:
    """Return the row blocks of ``D_a H D_a`` for every alpha, stacked over alphas.

    ``H = G_upper`` (r x r, upper triangle of G, diagonal halved), ``D_a = diag(inv[a])``.
    Block ``(i0, i1, B)`` holds rows i0..i1 and columns i0.. of every alpha's matrix, as
    one contiguous (n_alphas * (i1 - i0), r - i0) matrix: the zero lower triangle is
    skipped by blocks, and all alphas go through one GEMM per block.
    """
    r = G_upper.shape[0]
    n_alphas = inv.shape[0]
    blocks = []
    for i0 in range(0, r, _QUAD_BLOCK):
        i1 = min(i0 + _QUAD_BLOCK, r)
        block = torch.empty(n_alphas, i1 - i0, r - i0, dtype=G_upper.dtype, device=G_upper.device)
        torch.mul(G_upper[None, i0:i1, i0:], inv[:, i0:i1, None], out=block)
        block.mul_(inv[:, None, i0:])
        blocks.append((i0, i1, block.view(n_alphas * (i1 - i0), r - i0)))
    return blocks


def _quadratic_forms(blocks: list[tuple[int, int, torch.Tensor]], z: torch.Tensor,
                     n_alphas: int) -> torch.Tensor:
    """Return ``u_a^T G u_a`` with ``u_a = D_a z`` for every alpha and column, (n_alphas, batch).

    ``u^T G u = 2 z^T (D_a H D_a) z``; per block one GEMM for all alphas, then one pass
    over its output (a dot product with the matching rows of z), which halves the
    memory traffic next to the GEMMs compared with forming every ``u_a`` first. Columns
    go :data:`_QUAD_COLUMNS` at a time so that each product's output is still in cache
    for that pass: measured on the machine of docs/performance.md (rank 512, 11 alphas,
    3209 columns), 243 GFLOP/s in chunks of 256 columns against 168 in one piece.
    """
    batch = z.shape[1]
    width = _QUAD_COLUMNS if z.device.type == "cpu" else max(batch, 1)
    out = torch.empty(n_alphas, batch, dtype=z.dtype, device=z.device)
    for c0 in range(0, batch, width):
        c1 = min(c0 + width, batch)
        zc = z[:, c0:c1]
        acc = torch.zeros(n_alphas, c1 - c0, dtype=z.dtype, device=z.device)
        for i0, i1, block in blocks:
            part = (block @ zc[i0:]).view(n_alphas, i1 - i0, c1 - c0)
            acc += part.mul_(zc[None, i0:i1]).sum(dim=1)  # in place: no second temporary
        out[:, c0:c1] = acc
    return out.mul_(2.0)


def _scores_from_moments(
    fold: _Fold,
    z: torch.Tensor,
    q: torch.Tensor,
    base: torch.Tensor,
    ss_val: torch.Tensor,
    alphas: torch.Tensor,
    scoring: str,
) -> torch.Tensor:
    """Return one fold's validation scores, shape (n_alphas, batch).

    With ``u = z / (lambda + alpha)`` and predictions ``P u``: ``cross = q^T u`` and
    ``quad = ||P u||^2``; ``base = ||r||^2`` for the scored residual ``r``, and
    ``ss_val`` the validation responses' sum of squares about their mean.
    """
    inv = 1.0 / (fold.eigvals[None, :] + alphas[:, None])  # (a, r)
    cross = inv @ (q * z)  # (a, batch)
    if fold.G_upper is not None:
        blocks = fold.quad_blocks or _scaled_blocks(fold.G_upper, inv)
        quad = _quadratic_forms(blocks, z, len(alphas))
        del blocks
    else:
        quad = torch.empty_like(cross)
        for i in range(len(alphas)):
            pred = fold.P @ (z * inv[i][:, None])
            quad[i] = _dots(pred, pred, dim=0)
    quad.clamp_(min=0.0)
    if scoring == "r2":
        constant = ss_val == 0
        ss_res = base - 2.0 * cross + quad
        scores = 1.0 - ss_res / torch.where(constant, torch.ones_like(ss_val), ss_val)
        return torch.where(constant, torch.zeros_like(scores), scores)
    denom = torch.sqrt(quad * ss_val)
    scores = cross / torch.where(denom == 0, torch.ones_like(denom), denom)
    return torch.where(denom == 0, torch.zeros_like(scores), scores)


def _kfold_scores(
    plan: _Plan,
    Yb: torch.Tensor,
    y_mean: torch.Tensor | None,
    alphas: torch.Tensor,
    fit_intercept: bool,
    scoring: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (mean validation scores (n_alphas, batch), X^T Y (n_features, batch) or
    None), X^T Y being for the centred X, when it was computed."""
    n_samples = Yb.shape[0]
    val_rows = [_rows(Yb, f.val_idx, f.val_runs) for f in plan.folds]
    blocks = [f.x_val.T @ y if f.primal else None for f, y in zip(plan.folds, val_rows)]
    xty = None
    if plan.partition:
        xty = blocks[0].clone()
        for block in blocks[1:]:
            xty += block
    elif plan.x_centred is not None:
        xty = plan.x_centred.T @ Yb

    total = torch.zeros(len(alphas), Yb.shape[1], dtype=Yb.dtype, device=Yb.device)
    for fold, y_val, block in zip(plan.folds, val_rows, blocks):
        ym_val = y_val.mean(dim=0)
        centred = y_val - ym_val
        ss_val = _dots(centred, centred, dim=0)
        del centred
        if fit_intercept:
            if fold.complement:
                ym_tr = (n_samples * y_mean - fold.n_val * ym_val) / fold.n_train
            else:
                ym_tr = _rows(Yb, fold.train_idx, fold.train_runs).mean(dim=0)
        else:
            ym_tr = None
        # e: the centre of the scored responses (see c in _plan_x_side).
        if scoring == "pearson_r":
            e = ym_val
        else:
            e = ym_tr if fit_intercept else torch.zeros_like(ym_val)
        if fold.primal:
            if fold.complement:
                xty_tr = xty - block
            else:
                xty_tr = _t_matmul_rows(fold.x_train, Yb, fold.train_idx, fold.train_runs)
            z = fold.V.T @ xty_tr
            del xty_tr
            if fit_intercept:
                z.addr_(fold.vx_train, ym_tr, alpha=-fold.n_train)  # rank one, in place
            # q = V^T (X_val - c)^T (y_val - e), expanded around the block X_val^T y_val.
            q = fold.V.T @ block
            q.addr_(fold.v_c, ym_val - e, alpha=-fold.n_val)
            q.addr_(fold.vx_val, e, alpha=-fold.n_val)
        else:
            z = _t_matmul_rows(fold.U, Yb, fold.train_idx, fold.train_runs)
            if fit_intercept:
                z.addr_(fold.u_sum, ym_tr, alpha=-1.0)
            q = (fold.P.T @ y_val).addr_(fold.p_sum, e, alpha=-1.0)
        diff = ym_val - e
        base = ss_val + fold.n_val * diff * diff
        total += _scores_from_moments(fold, z, q, base, ss_val, alphas, scoring)
    return total / len(plan.folds), xty


def _full_coordinates(
    full: _Full, Yb: torch.Tensor, y_mean: torch.Tensor | None, xty: torch.Tensor | None
) -> torch.Tensor:
    """Return the full decomposition's coordinates z of the centred responses, (r, batch)."""
    if full.primal_kfold:
        z = full.M.T @ xty  # type: ignore[operator]
        if y_mean is not None:
            z.addr_(full.vx, y_mean, alpha=-Yb.shape[0])
        return z
    z = full.U.T @ Yb
    if y_mean is not None:
        z.addr_(full.u_sum, y_mean, alpha=-1.0)
    return z


def _loo_gcv_scores(
    full: _Full,
    Yb: torch.Tensor,
    y_mean: torch.Tensor | None,
    z: torch.Tensor,
    alphas: torch.Tensor,
    cv: str,
    scoring: str,
) -> torch.Tensor:
    """Return leave-one-out or GCV scores, shape (n_alphas, batch)."""
    n_samples = Yb.shape[0]
    yc = Yb - y_mean if y_mean is not None else Yb
    mean = y_mean if y_mean is not None else Yb.mean(dim=0)
    yc0 = yc if y_mean is not None else Yb - mean  # about the mean, as r2_score
    ss_tot = _dots(yc0, yc0, dim=0)
    constant = ss_tot <= 0
    ss_safe = torch.where(constant, torch.ones_like(ss_tot), ss_tot)
    shrink = full.eigvals[None, :] / (full.eigvals[None, :] + alphas[:, None])  # (a, r)
    if cv == "gcv":
        # ||y - H y||^2 = ||y||^2 - sum_k (1 - (1 - h_k)^2) z_k^2 (U orthonormal).
        ss_fit = _dots(yc, yc, dim=0)
        resid = ss_fit[None, :] - (1.0 - (1.0 - shrink) ** 2) @ (z * z)
        dof = shrink.sum(dim=1) + (1.0 if y_mean is not None else 0.0)
        factor = (1.0 - dof / n_samples) ** 2
        scores = 1.0 - resid / (ss_safe[None, :] * factor[:, None])
        scores = torch.where(factor[:, None] > 0, scores, torch.full_like(scores, -torch.inf))
        return torch.where(constant[None, :], torch.zeros_like(scores), scores)
    scores = torch.empty(len(alphas), Yb.shape[1], dtype=Yb.dtype, device=Yb.device)
    for i in range(len(alphas)):
        # Leave-one-out residuals of a linear smoother: (y - H y) / (1 - diag H); the
        # GEMM writes y - H y itself (addmm), and the rest is done in place.
        loo = torch.addmm(yc, full.U, z * shrink[i][:, None], alpha=-1.0)
        loo.mul_(full.loo_weights[:, i : i + 1])
        if scoring == "r2":
            scores[i] = 1.0 - loo.square_().sum(dim=0) / ss_safe
        else:
            pred = Yb - loo  # the leave-one-out predictions
            pc = pred - pred.mean(dim=0)
            denom = torch.linalg.vector_norm(pc, dim=0) * torch.sqrt(ss_safe)
            r = _dots(pc, yc0, dim=0) / torch.where(denom == 0, torch.ones_like(denom), denom)
            scores[i] = torch.where(denom == 0, torch.zeros_like(r), r)
    return torch.where(constant[None, :], torch.zeros_like(scores), scores)


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
    plan: _Plan, n_samples: int, n_features: int, n_alphas: int, itemsize: int,
    host_itemsize: int,
) -> int:
    """Return how many targets keep one batch's working tensors near _AUTO_BATCH_BYTES."""
    # Per target, always: the responses on the device and their copy on the host (up to
    # float64 while the mean is removed), the full-fit coordinates, weights and scores.
    values = n_samples + 2 * min(n_samples, n_features) + n_features + 4 * n_alphas
    host = 2 * host_itemsize * n_samples
    if plan.folds:
        # K-fold: X^T Y per validation block, their total and one difference; per fold
        # z, q, a centred validation block and either one block product of the
        # quadratic forms (all alphas) or one explicit prediction.
        n_primal = sum(f.primal for f in plan.folds)
        if n_primal:
            values += (n_primal + 2) * n_features
        per_fold = 0
        for f in plan.folds:
            rank = f.eigvals.shape[0]
            work = (n_alphas * min(rank, _QUAD_BLOCK) if f.G_upper is not None else f.n_val)
            if f.train_runs is None:
                work += f.n_train  # gathered training rows
            per_fold = max(per_fold, 3 * rank + f.n_val + work)
        values += per_fold
    else:
        values += 3 * n_samples  # centred responses, a prediction, leave-one-out residuals
    return max(1, _AUTO_BATCH_BYTES // (itemsize * values + host))


# --------------------------------------------------------------------------- estimator
