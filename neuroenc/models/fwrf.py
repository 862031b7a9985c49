"""The feature-weighted receptive field (fwRF): a per-vertex Gaussian pooling field and ridge.

The fwRF (St-Yves & Naselaris 2018, NeuroImage 180:188-202; the encoding model of the NSD
paper, Allen et al. 2022) predicts vertex ``v``'s response to image ``i`` as::

    r[i, v] = b_v + w_v . standardise(f( [sum_xy g_v(x, y) phi_l[i, :, x, y] for l in layers] ))

``phi_l`` are feature maps of several layers, each at its own resolution; ``g_v`` is one
isotropic Gaussian pooling field (centre x, y and size sigma, in image coordinates) shared
by every layer; ``f`` an optional compressive power nonlinearity (compressive spatial
summation, CSS; Kay et al. 2013, J. Neurophysiol. 110:481-494); ``w_v, b_v`` ridge
weights. The field of every vertex is chosen by a line search over a fixed grid of
candidate fields (:func:`candidate_grid`): for each candidate the pooled features of all
layers are concatenated and standardised, a ridge regression is fitted for every vertex
and every alpha, and each vertex keeps the candidate, exponent and alpha with the best
cross-validated score on the training images.

Coordinates: image fractions with the origin at the image centre, ``x`` to the right and
``y`` **up** (row 0 of an image is the top of the visual field), so ``x, y`` lie in
[-0.5, 0.5] on the image; ``sigma`` is a fraction of the image side. Multiply by the
image's extent in degrees of visual angle for degrees.

Two ways to score a candidate (``cv``):

* ``"gcv"`` (default): generalised cross-validation (Golub, Heath & Wahba 1979) from one
  eigendecomposition of each candidate's Gram matrix. Every alpha's score is a weighted
  sum of the squared eigen-coordinates of the responses, so a (candidate, vertex) pair
  costs one GEMM column (``(X V)^T y``, ``2 n p`` flops, with ``X V`` formed once per
  candidate) whatever the number of alphas. Candidates are processed in batches: their Gram
  matrices and eigendecompositions are batched calls (float64), and their response
  products are batched GEMMs (float32) over batches of vertices. Weights are computed
  only for the vertices a candidate improves.
* ``"kfold"``: contiguous K-fold cross-validation through :func:`neuroenc.models.ridge.solve_ridge_cv`
  once per candidate (exact K-fold ridge, as the ``ridge`` mapper; about ``n_folds``
  times the work per candidate, plus the per-alpha scoring).

Both standardise each candidate's pooled features with the mean and standard deviation
over all fitting images (as ``RidgeCV(standardize=True)``, i.e. a scaler in front of a CV
estimator) and fit an intercept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from neuroenc.models.ridge._solvers import DEFAULT_ALPHAS, _check_finite, _eigh, solve_ridge_cv

__all__ = [
    "FwrfResult",
    "candidate_grid",
    "gaussian_weights",
    "pool_feature_maps",
    "solve_fwrf",
    "predict_fwrf",
    "TRANSFORMS",
]

#: Pointwise transforms of the feature maps before pooling. Feature maps of networks
#: with linear bottlenecks (EfficientNet, MobileNet) are signed; Gaussian pooling of a
#: signed map averages opposite responses away, while pooling their magnitude or energy
#: keeps "how much is there" (local contrast energy, the drive of early visual cortex).
TRANSFORMS = ("none", "relu", "abs", "square")

# Working memory allowed for one batch of candidates (pooled features, Gram matrices,
# eigenvectors) and, separately, for one batch of candidate x vertex products.
_CANDIDATE_BATCH_BYTES = 384 * 2**20
_PRODUCT_BATCH_BYTES = 256 * 2**20
# Images pooled at a time when reading feature maps (bounds the copy of a memmap).
_IMAGE_CHUNK = 256
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class FwrfResult:
    """Result of :func:`solve_fwrf`.

    Attributes
    ----------
    candidates : ndarray of shape (n_candidates, 3)
        The candidate fields ``(x, y, sigma)`` in image fractions (x right, y up).
    best_candidate : ndarray of int of shape (n_vertices,)
        Row of ``candidates`` chosen for each vertex.
    best_alpha : ndarray of shape (n_vertices,)
    best_exponent : ndarray of shape (n_vertices,)
        Power of the CSS nonlinearity chosen for each vertex (1.0: linear).
    cv_score : ndarray of shape (n_vertices,)
        The best cross-validated score (R^2 for "kfold", ``1 - GCV / variance`` for "gcv").
    coef : ndarray of shape (n_features, n_vertices)
        Weights on the *raw* pooled (and transformed, exponentiated) features of each
        vertex's own candidate; the standardisation is folded in.
    intercept : ndarray of shape (n_vertices,)
    layer_channels : list of int
        Channels per layer, in the order of the feature columns.
    alphas, exponents : ndarray
        The grids searched.
    transform : str
    cv : str
    """

    candidates: np.ndarray
    best_candidate: np.ndarray
    best_alpha: np.ndarray
    best_exponent: np.ndarray
    cv_score: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    layer_channels: list[int]
    alphas: np.ndarray
    exponents: np.ndarray
    transform: str
    cv: str

    @property
    def rf_x(self) -> np.ndarray:
        """Field centre per vertex, image fractions from the centre, + = right."""
        return self.candidates[self.best_candidate, 0]

    @property
    def rf_y(self) -> np.ndarray:
        """Field centre per vertex, image fractions from the centre, + = up."""
        return self.candidates[self.best_candidate, 1]

    @property
    def rf_size(self) -> np.ndarray:
        """Gaussian sigma per vertex, in fractions of the image side."""
        return self.candidates[self.best_candidate, 2]


def candidate_grid(n_sizes: int = 8, min_size: float = 0.04, max_size: float = 0.4,
                   spacing: float = 1.4, extent: float = 1.0,
                   max_per_side: int | None = None) -> np.ndarray:
    """Return candidate Gaussian fields ``(x, y, sigma)``, shape (n_candidates, 3).

    Sizes are log-spaced from ``min_size`` to ``max_size`` (sigma, fractions of the image
    side). For each size, centres lie on a square grid over ``[-extent/2, extent/2]^2``
    whose step is about ``spacing * sigma`` (so small fields are placed densely, large ones
    sparsely: the "pyramid" of St-Yves & Naselaris 2018), at most ``max_per_side`` per side.
    The grid includes the image corners and, for odd counts, the centre.

    Parameters
    ----------
    n_sizes : int
    min_size, max_size : float
        Smallest and largest sigma, fractions of the image side.
    spacing : float
        Grid step in units of sigma.
    extent : float
        Side of the square the centres cover, in image sides (1.0: the image itself;
        larger values put centres beyond the image edge).
    max_per_side : int, optional
    """
    if n_sizes < 1 or not 0 < min_size <= max_size or spacing <= 0 or extent <= 0:
        raise ValueError(f"candidate_grid: need n_sizes >= 1, 0 < min_size <= max_size and "
                         f"positive spacing and extent; got n_sizes={n_sizes}, "
                         f"min_size={min_size}, max_size={max_size}, spacing={spacing}, "
                         f"extent={extent}")
    sizes = np.geomspace(min_size, max_size, n_sizes) if n_sizes > 1 else np.array([min_size])
    rows = []
    for sigma in sizes:
        n = int(math.floor(extent / (spacing * sigma) + 1e-9)) + 1
        if max_per_side is not None:
            n = min(n, max_per_side)
        pos = np.linspace(-extent / 2, extent / 2, n) if n > 1 else np.zeros(1)
        for y in pos[::-1]:  # top row first, like the image
            for x in pos:
                rows.append((x, y, sigma))
    return np.asarray(rows, dtype=np.float64)


def gaussian_weights(candidates: np.ndarray, height: int, width: int) -> np.ndarray:
    """Return each candidate's Gaussian sampled on a height x width map, (n_candidates, H*W).

    Map cell ``(i, j)`` covers the image region centred at ``x = (j + 0.5) / W - 0.5``,
    ``y = 0.5 - (i + 0.5) / H``. Weights are the Gaussian density times the cell area,
    so a field inside the image sums to about 1 on every layer, whatever its resolution,
    and a field hanging off the image pools only the part on it.
    """
    candidates = np.asarray(candidates, dtype=np.float64)
    xs = (np.arange(width) + 0.5) / width - 0.5
    ys = 0.5 - (np.arange(height) + 0.5) / height
    x0, y0, s = candidates[:, 0:1], candidates[:, 1:2], candidates[:, 2:3]
    gx = np.exp(-0.5 * ((xs[None, :] - x0) / s) ** 2)  # (K, W)
    gy = np.exp(-0.5 * ((ys[None, :] - y0) / s) ** 2)  # (K, H)
    norm = 1.0 / (2.0 * math.pi * s[:, :, None] ** 2 * height * width)
    return (gy[:, :, None] * gx[:, None, :] * norm).reshape(len(candidates), height * width)


def _check_maps(maps: Mapping[str, np.ndarray] | Sequence[np.ndarray]) -> list[np.ndarray]:
    layers = list(maps.values()) if isinstance(maps, Mapping) else list(maps)
    names = list(maps) if isinstance(maps, Mapping) else [str(i) for i in range(len(layers))]
    if not layers:
        raise ValueError("fwrf: no feature maps; expected one array (n_images, C, H, W) per layer")
    n = None
    for name, m in zip(names, layers):
        if m.ndim != 4:
            raise ValueError(f"fwrf: layer {name!r} has shape {tuple(m.shape)}; expected feature "
                             "maps of shape (n_images, channels, height, width) (backbone "
                             "pooling: map)")
        if n is not None and m.shape[0] != n:
            raise ValueError(f"fwrf: layer {name!r} has {m.shape[0]} images, the first layer {n}")
        n = m.shape[0]
    return layers


def _transform(x: torch.Tensor, transform: str) -> torch.Tensor:
    if transform == "none":
        return x
    if transform == "relu":
        return x.clamp_(min=0)
    if transform == "abs":
        return x.abs_()
    if transform == "square":
        return x.square_()
    raise ValueError(f"unknown transform {transform!r}; expected one of {', '.join(TRANSFORMS)}")


def pool_feature_maps(maps: Mapping[str, np.ndarray] | Sequence[np.ndarray],
                      candidates: np.ndarray, *, rows: np.ndarray | None = None,
                      transform: str = "none", device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return the maps pooled by each candidate, shape (n_candidates, n_images, n_features).

    Features are the layers' channels, concatenated in layer order. ``rows`` selects
    images (default all); maps are read ``_IMAGE_CHUNK`` images at a time, so a
    memory-mapped cache is never copied whole. ``transform`` (see :data:`TRANSFORMS`) is
    applied to the maps before pooling.
    """
    layers = _check_maps(maps)
    device = torch.device(device)
    n_all = layers[0].shape[0]
    rows = np.arange(n_all) if rows is None else np.asarray(rows)
    weights = [torch.as_tensor(gaussian_weights(candidates, m.shape[2], m.shape[3]),
                               dtype=dtype, device=device) for m in layers]
    n_features = sum(m.shape[1] for m in layers)
    out = torch.empty((len(candidates), len(rows), n_features), dtype=dtype, device=device)
    for start in range(0, len(rows), _IMAGE_CHUNK):
        chunk = rows[start:start + _IMAGE_CHUNK]
        contiguous = len(chunk) and chunk[-1] - chunk[0] == len(chunk) - 1 and np.all(np.diff(chunk) == 1)
        col = 0
        for m, w in zip(layers, weights):
            block = m[chunk[0]:chunk[-1] + 1] if contiguous else m[chunk]
            x = torch.from_numpy(np.array(block, dtype=np.float32)).to(device=device, dtype=dtype)
            x = _transform(x.reshape(len(chunk), m.shape[1], -1), transform)  # (b, C, S)
            # (b, C, S) @ (S, K) -> (b, C, K) -> (K, b, C)
            out[:, start:start + len(chunk), col:col + m.shape[1]] = (x @ w.T).permute(2, 0, 1)
            col += m.shape[1]
    return out


def _power(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """Return sign(x) |x| ** exponent (the CSS nonlinearity; odd, so signed maps work)."""
    if exponent == 1.0:
        return x
    return torch.sign(x) * x.abs().pow(exponent)


def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (standardised x, mean, scale) over images (dim 1); constant features keep scale 1."""
    x64 = x.double()
    mean = x64.mean(dim=1)
    scale = x64.std(dim=1, unbiased=False)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return ((x64 - mean[:, None]) / scale[:, None]).to(x.dtype), mean, scale


def _check(responses: np.ndarray, n_images: int, alphas, exponents, cv: str,
           transform: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if responses.ndim == 1:
        responses = responses[:, None]
    if responses.ndim != 2 or responses.shape[0] != n_images:
        raise ValueError(f"fwrf: responses have shape {responses.shape}; expected "
                         f"({n_images}, n_vertices), one row per image of the feature maps")
    alphas = DEFAULT_ALPHAS.copy() if alphas is None else np.asarray(alphas, dtype=np.float64)
    if alphas.ndim != 1 or alphas.size == 0 or np.any(alphas <= 0) or not np.all(np.isfinite(alphas)):
        raise ValueError(f"fwrf: alphas must be a non-empty list of positive numbers, got {alphas}")
    exponents = np.atleast_1d(np.asarray(exponents, dtype=np.float64))
    if exponents.ndim != 1 or exponents.size == 0 or np.any(exponents <= 0):
        raise ValueError(f"fwrf: exponents must be positive, got {exponents}")
    if cv not in ("gcv", "kfold"):
        raise ValueError(f"fwrf: unknown cv {cv!r}; expected 'gcv' or 'kfold'")
    if transform not in TRANSFORMS:
        raise ValueError(f"fwrf: unknown transform {transform!r}; expected one of "
                         f"{', '.join(TRANSFORMS)}")
    return responses, alphas, exponents


def solve_fwrf(
    maps: Mapping[str, np.ndarray] | Sequence[np.ndarray],
    responses: np.ndarray,
    candidates: np.ndarray | None = None,
    alphas: Sequence[float] | np.ndarray | None = None,
    *,
    rows: np.ndarray | None = None,
    exponents: Sequence[float] = (1.0,),
    transform: str = "none",
    cv: str = "gcv",
    n_folds: int = 5,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    candidate_batch_size: int | None = None,
    target_batch_size: int | None = None,
    progress: Callable[[int, int], object] | None = None,
) -> FwrfResult:
    """Return each vertex's best Gaussian pooling field, exponent, alpha and ridge weights.

    Parameters
    ----------
    maps : mapping of str to ndarray of shape (n_images, C_l, H_l, W_l), or a sequence
        Feature maps per layer, each at its own resolution (a memmap is fine).
    responses : ndarray of shape (n_fit, n_vertices)
        One row per fitting image (per entry of ``rows``); a memmap is fine.
    candidates : ndarray of shape (n_candidates, 3), optional
        ``(x, y, sigma)`` fields in image fractions; default :func:`candidate_grid`.
    alphas : array-like of shape (n_alphas,), optional
        Ridge strengths (on standardised features); default ``logspace(-2, 8, 11)``.
    rows : ndarray of int, optional
        Images (rows of ``maps``) to fit on, e.g. the training index; default all.
    exponents : sequence of float, default (1.0,)
        Candidate powers of the CSS nonlinearity ``sign(x) |x| ** n`` applied to the pooled
        features (1.0: none). Each vertex keeps the best; every exponent multiplies the work.
    transform : {"none", "relu", "abs", "square"}, default "none"
        Pointwise transform of the maps before pooling (see :data:`TRANSFORMS`).
    cv : {"gcv", "kfold"}, default "gcv"
        How a (candidate, exponent, alpha) is scored for a vertex; see the module docstring.
    n_folds : int, default 5
        Contiguous folds for ``cv="kfold"``.
    device : str or torch.device, default "cpu"
    dtype : {"float32", "float64"}
        Precision of the per-vertex work; Gram matrices and eigendecompositions are float64.
    candidate_batch_size, target_batch_size : int, optional
        Candidates and vertices handled together (default: sized to a few hundred MiB).
        Results do not depend on them beyond floating-point rounding.
    progress : callable, optional
        ``progress(n_candidates_done, n_candidates)``.

    Returns
    -------
    FwrfResult

    Notes
    -----
    Ties go to the first candidate (in ``candidates`` order), then the first exponent,
    then the first alpha.
    """
    layers = _check_maps(maps)
    n_fit = layers[0].shape[0] if rows is None else len(rows)
    Y, alphas, exponents = _check(np.asarray(responses), n_fit, alphas, exponents, cv, transform)
    _check_finite("responses", Y)
    candidates = candidate_grid() if candidates is None else np.asarray(candidates, np.float64)
    if candidates.ndim != 2 or candidates.shape[1] != 3 or np.any(candidates[:, 2] <= 0):
        raise ValueError(f"fwrf: candidates have shape {candidates.shape}; expected "
                         "(n_candidates, 3) rows of (x, y, sigma > 0)")
    device = torch.device(device)
    work = _DTYPES[dtype]
    n_features = sum(m.shape[1] for m in layers)
    n_targets = Y.shape[1]
    n_cand = len(candidates)
    if candidate_batch_size is None:
        # pooled features (work + float64 copy) + Gram and eigenvectors (float64)
        per = n_fit * n_features * (4 + 8) + 3 * 8 * n_features**2
        candidate_batch_size = max(1, min(64, _CANDIDATE_BATCH_BYTES // per))
    if target_batch_size is None:
        per = 4 * (candidate_batch_size * (2 * n_features + 2 * len(alphas)) + n_fit)
        target_batch_size = max(1, min(n_targets, _PRODUCT_BATCH_BYTES // per))

    best_score = np.full(n_targets, -np.inf)
    best_cand = np.zeros(n_targets, dtype=np.int64)
    best_alpha = np.full(n_targets, alphas[0])
    best_exp = np.full(n_targets, exponents[0])
    coef = np.zeros((n_features, n_targets), dtype=np.float32 if dtype == "float32" else np.float64)
    intercept = np.zeros(n_targets, dtype=coef.dtype)
    y_mean = np.zeros(n_targets)
    for start in range(0, n_targets, 4096):
        y_mean[start:start + 4096] = np.asarray(Y[:, start:start + 4096], np.float64).mean(0)

    if progress is not None:
        progress(0, n_cand)
    for c0 in range(0, n_cand, candidate_batch_size):
        cands = candidates[c0:c0 + candidate_batch_size]
        pooled = pool_feature_maps(layers, cands, rows=rows, transform=transform, device=device,
                                   dtype=work)
        for exponent in exponents:
            X, mean, scale = _standardise(_power(pooled, float(exponent)))
            if cv == "gcv":
                scores_fn = _gcv_batch
            else:
                scores_fn = _kfold_batch
            scores_fn(X, mean, scale, Y, alphas, c0, float(exponent), n_folds, device, dtype,
                      target_batch_size, y_mean, best_score, best_cand, best_alpha, best_exp,
                      coef, intercept)
            del X
        del pooled
        if progress is not None:
            progress(min(c0 + candidate_batch_size, n_cand), n_cand)

    return FwrfResult(candidates=candidates, best_candidate=best_cand, best_alpha=best_alpha,
                      best_exponent=best_exp, cv_score=best_score, coef=coef,
                      intercept=intercept, layer_channels=[m.shape[1] for m in layers],
                      alphas=alphas, exponents=exponents, transform=transform, cv=cv)


def _update(improved: np.ndarray, k_local: np.ndarray, a_index: np.ndarray, score: np.ndarray,
            columns: np.ndarray, c0: int, exponent: float, alphas: np.ndarray,
            best_score, best_cand, best_alpha, best_exp) -> np.ndarray:
    """Record new bests; return the global vertex indices that improved."""
    idx = columns[improved]
    best_score[idx] = score[improved]
    best_cand[idx] = c0 + k_local[improved]
    best_alpha[idx] = alphas[a_index[improved]]
    best_exp[idx] = exponent
    return idx


def _gcv_batch(X, mean, scale, Y, alphas, c0, exponent, n_folds, device, dtype, batch,
               y_mean, best_score, best_cand, best_alpha, best_exp, coef, intercept) -> None:
    """Score a batch of candidates by GCV for every vertex; update the running bests."""
    work = _DTYPES[dtype]
    n_cand, n, p = X.shape
    gram = torch.bmm(X.transpose(1, 2).double(), X.double())  # (K, p, p); X is centred
    eigvals, V = _eigh(gram)  # one thread on the CPU: see neuroenc.models.ridge._eigh
    del gram
    # Components with a (numerically) zero eigenvalue carry no ridge solution.
    keep = eigvals > eigvals[:, -1:].clamp(min=0) * (p * torch.finfo(torch.float64).eps)
    eigvals = torch.where(keep, eigvals, torch.zeros_like(eigvals))
    alpha_t = torch.as_tensor(alphas, dtype=torch.float64, device=device)
    denom = eigvals[:, None, :] + alpha_t[None, :, None]  # (K, a, p)
    shrink = torch.where(keep[:, None, :], eigvals[:, None, :] / denom, torch.zeros_like(denom))
    # ||y - H y||^2 = ||y||^2 - sum_k (1 - (1 - shrink_k)^2) z_k^2, with z_k^2 = Z_k^2 / lambda_k
    # (Z = V^T X^T y); dof = trace(H) + 1 for the intercept.
    safe = torch.where(keep, eigvals, torch.ones_like(eigvals))
    weight = torch.where(keep[:, None, :], (1.0 - (1.0 - shrink) ** 2) / safe[:, None, :],
                         torch.zeros_like(shrink)).to(work)  # (K, a, p)
    dof = shrink.sum(dim=2) + 1.0  # (K, a)
    factor = (1.0 - dof / n) ** 2  # (K, a)
    inv = torch.where(keep[:, None, :], 1.0 / denom, torch.zeros_like(denom)).to(work)
    Vw = V.to(work)
    weight_t = weight.transpose(1, 2).contiguous()  # (K, p, a)
    factor_w = factor.to(work)
    # Z = V^T X^T y = (X V)^T y. With X V of every candidate side by side (n, K p), formed
    # once per batch of candidates (X-side, 2 n p^2 each), all candidates' coordinates of
    # a batch of vertices are one GEMM, 2 n p flops per (candidate, vertex) pair; the
    # result is laid out (vertex, candidate, component), so that the weights of a vertex
    # are read from contiguous rows.
    W_all = torch.matmul(X.double(), V).to(work).permute(1, 0, 2).reshape(n, n_cand * p)
    n_alphas = len(alphas)
    for t0 in range(0, Y.shape[1], batch):
        cols = np.arange(t0, min(t0 + batch, Y.shape[1]))
        yb = torch.as_tensor(np.asarray(Y[:, t0:t0 + len(cols)]), device=device).to(torch.float64)
        yb = yb - yb.mean(dim=0)
        ss = (yb * yb).sum(dim=0)  # (t,)
        Z = (yb.to(work).T @ W_all).reshape(len(cols), n_cand, p)  # (t, K, p)
        resid = ss.to(work)[None, :, None] - torch.bmm((Z * Z).transpose(0, 1), weight_t)
        ss_safe = torch.where(ss > 0, ss, torch.ones_like(ss)).to(work)
        scores = 1.0 - resid / (ss_safe[None, :, None] * factor_w[:, None, :])  # (K, t, a)
        scores = torch.where(factor_w[:, None, :] > 0, scores, torch.full_like(scores, -torch.inf))
        scores = torch.where((ss > 0)[None, :, None], scores, torch.zeros_like(scores))
        flat = scores.transpose(0, 1).reshape(len(cols), n_cand * n_alphas)
        top, arg = flat.max(dim=1)  # first maximum: earliest candidate, then alpha
        top = top.double().cpu().numpy()
        arg = arg.cpu().numpy()
        k_local, a_index = np.divmod(arg, n_alphas)
        improved = top > best_score[cols]
        if not improved.any():
            continue
        _update(improved, k_local, a_index, top, cols, c0, exponent, alphas,
                best_score, best_cand, best_alpha, best_exp)
        local = np.flatnonzero(improved)
        for k in np.unique(k_local[improved]):
            sel = local[k_local[local] == k]
            sel_t = torch.as_tensor(sel, device=device)
            # coef = V diag(1 / (lambda + alpha_v)) Z_v on standardised features, (m, p)
            u = inv[k][torch.as_tensor(a_index[sel], device=device)] * Z[sel_t, k]
            w = (u @ Vw[k].T).double() / scale[k][None, :]  # raw feature space
            b = torch.as_tensor(y_mean[cols[sel]], device=device) - w @ mean[k]
            coef[:, cols[sel]] = w.T.cpu().numpy()
            intercept[cols[sel]] = b.cpu().numpy()


def _kfold_batch(X, mean, scale, Y, alphas, c0, exponent, n_folds, device, dtype, batch,
                 y_mean, best_score, best_cand, best_alpha, best_exp, coef, intercept) -> None:
    """Score a batch of candidates by K-fold ridge (solve_ridge_cv); update the bests."""
    columns = np.arange(Y.shape[1])
    for k in range(X.shape[0]):
        result = solve_ridge_cv(X[k].cpu().numpy(), Y, alphas, n_folds=n_folds, cv="kfold",
                                fit_intercept=True, scoring="r2", device=device, dtype=dtype,
                                target_batch_size=batch)
        a_index = np.argmax(result.cv_scores, axis=0)
        top = result.cv_scores[a_index, columns].astype(np.float64)
        improved = top > best_score
        if not improved.any():
            continue
        idx = _update(improved, np.full(len(columns), k), a_index, top, columns, c0, exponent,
                      alphas, best_score, best_cand, best_alpha, best_exp)
        s = scale[k].cpu().numpy()
        m = mean[k].cpu().numpy()
        w = result.coef[:, idx].astype(np.float64) / s[:, None]
        coef[:, idx] = w
        intercept[idx] = result.intercept[idx] - m @ w


def predict_fwrf(maps: Mapping[str, np.ndarray] | Sequence[np.ndarray], result: FwrfResult, *,
                 rows: np.ndarray | None = None, device: str | torch.device = "cpu",
                 candidate_batch_size: int | None = None) -> np.ndarray:
    """Return predicted responses of shape (n_images, n_vertices) for the maps' images.

    Only the candidates some vertex chose are pooled; each vertex's prediction is its own
    candidate's pooled features times its weights.
    """
    layers = _check_maps(maps)
    if [m.shape[1] for m in layers] != list(result.layer_channels):
        raise ValueError(f"fwrf: maps have {[m.shape[1] for m in layers]} channels per layer; "
                         f"the model was fitted on {list(result.layer_channels)}")
    n = layers[0].shape[0] if rows is None else len(rows)
    if candidate_batch_size is None:  # pooled features of one batch near _PRODUCT_BATCH_BYTES
        candidate_batch_size = max(1, min(64, _PRODUCT_BATCH_BYTES
                                          // (4 * n * sum(result.layer_channels))))
    work = torch.float32 if result.coef.dtype == np.float32 else torch.float64
    out = np.empty((n, result.coef.shape[1]), dtype=result.coef.dtype)
    used = np.unique(result.best_candidate)
    # vertices of one (candidate, exponent) share their features
    for c0 in range(0, len(used), candidate_batch_size):
        chosen = used[c0:c0 + candidate_batch_size]
        pooled = pool_feature_maps(layers, result.candidates[chosen], rows=rows,
                                   transform=result.transform, device=device, dtype=work)
        for j, cand in enumerate(chosen):
            for exponent in np.unique(result.best_exponent[result.best_candidate == cand]):
                verts = np.flatnonzero((result.best_candidate == cand)
                                       & (result.best_exponent == exponent))
                x = _power(pooled[j], float(exponent))
                w = torch.as_tensor(result.coef[:, verts], device=device)
                out[:, verts] = (x @ w).cpu().numpy() + result.intercept[verts]
    return out
