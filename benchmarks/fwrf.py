"""Time the fwrf mapper: against one plain ridge fit of the same size, and against naive loops.

Two parts, both on synthetic feature maps (positive, like rectified activations, several
layers at their own resolutions) and responses of vertices that each pool one candidate
field (plus noise), so that the chosen fields differ across vertices:

1. **Cost in ridge fits** (default: the demo's size, 1000 images, EfficientNet-Lite0
   layers 0-3 as the demo registry's fwrf sees them, 16/16/16/8 maps with 16/24/40/112
   channels, ~4000 vertices, the registry's candidate grid). ``solve_fwrf`` with GCV and,
   for comparison, one plain per-vertex ridge fit on the same images, vertices and number
   of features (``solve_ridge_cv`` on one candidate's pooled features, 5-fold as the
   ``ridge`` mapper, and GCV). Printed: seconds, and fwrf / one ridge fit.
2. **Against naive loops** on a small problem (``--small``: 300 images, 2 layers, 60
   candidates, 300 vertices): a loop over candidates with scikit-learn, the way one would
   write it by hand: per candidate ``StandardScaler`` + ``Ridge`` per alpha (and per fold
   for K-fold; GCV from the explicit hat-matrix trace), and, for reference, scikit-learn
   ``RidgeCV(alpha_per_target=True)`` (leave-one-out, its only per-target mode). Printed:
   seconds, speed-up, and the share of vertices whose chosen candidate and alpha agree.

    python benchmarks/fwrf.py                 # both parts (~2-7 min on 2 shared cores)
    python benchmarks/fwrf.py --part small
    python benchmarks/fwrf.py --device cuda   # same on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from neuroenc.models.fwrf import candidate_grid, pool_feature_maps, solve_fwrf  # noqa: E402
from neuroenc.models.ridge import solve_ridge_cv  # noqa: E402

ALPHAS = np.logspace(-1, 7, 17)
# layers 0-3 of EfficientNet-Lite0 at 128 px, maps capped at 16 x 16 (registry.yaml)
DEMO_LAYERS = ((16, 16), (24, 16), (40, 16), (112, 8))


def make_problem(n_images, layers, n_vertices, candidates, seed=0, noise=1.0):
    """Return (maps, responses, true candidate per vertex)."""
    rng = np.random.default_rng(seed)
    maps = {f"layer{i}": rng.gamma(2.0, 1.0, (n_images, c, s, s)).astype(np.float32)
            for i, (c, s) in enumerate(layers)}
    true = rng.integers(0, len(candidates), n_vertices)
    Y = np.empty((n_images, n_vertices), np.float32)
    pooled_true = {}
    for k in np.unique(true):
        X = pool_feature_maps(maps, candidates[k:k + 1])[0].numpy().astype(np.float64)
        pooled_true[k] = (X - X.mean(0)) / X.std(0)
    for v, k in enumerate(true):
        X = pooled_true[k]
        signal = X @ rng.standard_normal(X.shape[1])
        snr = 10 ** rng.uniform(-1, 0.5)
        Y[:, v] = snr * signal / signal.std() + noise * rng.standard_normal(n_images)
    return maps, Y, true


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def part_ridge_ratio(args):
    cands = candidate_grid(8, 0.04, 0.4, 1.4)  # the demo registry's grid (696 fields)
    layers = DEMO_LAYERS
    print(f"== part 1: fwrf vs one ridge fit: {args.n_images} images, {args.n_vertices} vertices, "
          f"{len(cands)} candidates, layers (channels, side) {layers}")
    maps, Y, true = make_problem(args.n_images, layers, args.n_vertices, cands)
    result, t_fwrf = timed(lambda: solve_fwrf(maps, Y, cands, ALPHAS, cv="gcv", device=args.device))
    X = pool_feature_maps(maps, cands[:1])[0].numpy()
    X = (X - X.mean(0)) / X.std(0)
    _, t_ridge = timed(lambda: solve_ridge_cv(X, Y, ALPHAS, n_folds=5, device=args.device))
    _, t_gcv = timed(lambda: solve_ridge_cv(X, Y, ALPHAS, cv="gcv", device=args.device))
    found = np.mean(result.best_candidate == true)
    print(f"fwrf (gcv, {len(cands)} candidates): {t_fwrf:.2f} s; true field found for "
          f"{100 * found:.1f}% of vertices")
    print(f"one ridge fit, {X.shape[1]} features, 5-fold: {t_ridge:.2f} s  ->  fwrf = "
          f"{t_fwrf / t_ridge:.1f} ridge fits ({t_fwrf / t_ridge / len(cands):.3f} per candidate)")
    print(f"one ridge fit, {X.shape[1]} features, GCV:    {t_gcv:.2f} s  ->  fwrf = "
          f"{t_fwrf / t_gcv:.1f} ridge fits ({t_fwrf / t_gcv / len(cands):.3f} per candidate)")


def naive_loop(maps, Y, cands, alphas, cv):
    """Per candidate, StandardScaler + sklearn Ridge per alpha (per fold); first max wins."""
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import StandardScaler

    n = Y.shape[0]
    best = np.full(Y.shape[1], -np.inf)
    best_k = np.zeros(Y.shape[1], int)
    best_a = np.zeros(Y.shape[1])
    for k in range(len(cands)):
        X = StandardScaler().fit_transform(pool_feature_maps(maps, cands[k:k + 1])[0].numpy()
                                           .astype(np.float64))
        scores = np.zeros((len(alphas), Y.shape[1]))
        for i, alpha in enumerate(alphas):
            if cv == "kfold":
                for tr, va in KFold(5).split(X):
                    pred = Ridge(alpha=alpha).fit(X[tr], Y[tr]).predict(X[va])
                    scores[i] += r2_score(Y[va], pred, multioutput="raw_values") / 5
            else:
                pred = Ridge(alpha=alpha).fit(X, Y).predict(X)
                xc = X - X.mean(0)
                dof = np.trace(np.linalg.solve(xc.T @ xc + alpha * np.eye(X.shape[1]),
                                               xc.T @ xc)) + 1
                rss = ((Y - pred) ** 2).sum(0)
                ss = ((Y - Y.mean(0)) ** 2).sum(0)
                scores[i] = 1 - rss / (ss * (1 - dof / n) ** 2)
        top = scores.max(0)
        better = top > best
        best[better], best_k[better] = top[better], k
        best_a[better] = alphas[np.argmax(scores, axis=0)][better]
    return best_k, best_a


def sklearn_ridgecv_loop(maps, Y, cands, alphas):
    """Per candidate, sklearn RidgeCV(alpha_per_target=True) (leave-one-out)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.preprocessing import StandardScaler

    best = np.full(Y.shape[1], -np.inf)
    best_k = np.zeros(Y.shape[1], int)
    for k in range(len(cands)):
        X = StandardScaler().fit_transform(pool_feature_maps(maps, cands[k:k + 1])[0].numpy()
                                           .astype(np.float64))
        model = RidgeCV(alphas=alphas, alpha_per_target=True, scoring="r2").fit(X, Y)
        # per-target LOO score of the chosen alpha
        top = np.atleast_1d(model.best_score_)
        better = top > best
        best[better], best_k[better] = top[better], k
    return best_k


def part_small(args):
    cands = candidate_grid(3, 0.08, 0.3, 1.8)
    layers = ((4, 8), (6, 4))
    n_images, n_vertices = 300, 300
    alphas = np.logspace(-1, 5, 7)
    print(f"== part 2: fwrf vs naive loops: {n_images} images, {n_vertices} vertices, "
          f"{len(cands)} candidates, layers {layers}, {len(alphas)} alphas")
    maps, Y, _ = make_problem(n_images, layers, n_vertices, cands, seed=1)
    for cv in ("gcv", "kfold"):
        fast, t_fast = timed(lambda: solve_fwrf(maps, Y, cands, alphas, cv=cv, device=args.device))
        (k, a), t_naive = timed(lambda: naive_loop(maps, Y, cands, alphas, cv))
        same_k = np.mean(fast.best_candidate == k)
        same_a = np.mean(np.isclose(fast.best_alpha, a))
        print(f"{cv:>5}: fwrf {t_fast:.2f} s, naive sklearn loop {t_naive:.2f} s "
              f"({t_naive / t_fast:.1f}x); same candidate {100 * same_k:.1f}%, same alpha "
              f"{100 * same_a:.1f}% of vertices")
    k_loo, t_loo = timed(lambda: sklearn_ridgecv_loop(maps, Y, cands, alphas))
    fast, t_fast = timed(lambda: solve_fwrf(maps, Y, cands, alphas, cv="gcv", device=args.device))
    print(f"sklearn RidgeCV(alpha_per_target) per candidate (leave-one-out): {t_loo:.2f} s "
          f"({t_loo / t_fast:.1f}x fwrf-gcv); same candidate as fwrf-gcv for "
          f"{100 * np.mean(k_loo == fast.best_candidate):.1f}% (a different criterion)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "ratio", "small"], default="all")
    parser.add_argument("--n-images", type=int, default=1000)
    parser.add_argument("--n-vertices", type=int, default=4000)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    if args.part in ("all", "ratio"):
        part_ridge_ratio(args)
    if args.part in ("all", "small"):
        part_small(args)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
