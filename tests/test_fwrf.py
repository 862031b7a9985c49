"""Tests of neuroenc.models.fwrf against an independent brute-force reference.

The reference pools each candidate's Gaussian by an explicit sum over map cells, scales
with scikit-learn's ``StandardScaler`` and loops scikit-learn ``Ridge`` over candidates,
alphas and folds by hand (GCV from an explicit hat matrix); it shares no code with the
kernel under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold
from sklearn.preprocessing import StandardScaler

from neuroenc.models.fwrf import candidate_grid, gaussian_weights, pool_feature_maps, predict_fwrf, solve_fwrf

ALPHAS = np.logspace(-1, 4, 6)


def make_maps(n_images=90, seed=0):
    """Two layers at different resolutions, positive (like rectified activations)."""
    rng = np.random.default_rng(seed)
    return {"a": rng.gamma(2.0, 1.0, (n_images, 3, 8, 8)).astype(np.float32),
            "b": rng.gamma(2.0, 1.0, (n_images, 4, 4, 4)).astype(np.float32)}


def reference_pool(maps, cand):
    """Pool every layer by one Gaussian with a plain loop over map cells."""
    x0, y0, sigma = cand
    cols = []
    for m in maps.values():
        n, c, h, w = m.shape
        acc = np.zeros((n, c))
        for i in range(h):
            for j in range(w):
                x = (j + 0.5) / w - 0.5
                y = 0.5 - (i + 0.5) / h  # row 0 is the top of the image
                g = np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2))
                acc += m[:, :, i, j] * g / (2 * np.pi * sigma**2 * h * w)
        cols.append(acc)
    return np.concatenate(cols, axis=1)


def make_responses(maps, candidates, true_index, seed=1, noise=0.3):
    rng = np.random.default_rng(seed)
    n = next(iter(maps.values())).shape[0]
    Y = np.empty((n, len(true_index)))
    for v, k in enumerate(true_index):
        X = reference_pool(maps, candidates[k])
        X = (X - X.mean(0)) / X.std(0)
        Y[:, v] = X @ rng.standard_normal(X.shape[1]) + noise * rng.standard_normal(n) * (1 + v)
    return Y + rng.standard_normal(len(true_index))


def brute_force(maps, Y, candidates, alphas, cv, n_folds=5, exponents=(1.0,)):
    """Return (best candidate, best alpha, best exponent, best score) per target."""
    n = Y.shape[0]
    best = np.full(Y.shape[1], -np.inf)
    out = np.zeros((3, Y.shape[1]))
    for k, cand in enumerate(candidates):
        raw = reference_pool(maps, cand)
        for e in exponents:
            X = StandardScaler().fit_transform(np.sign(raw) * np.abs(raw) ** e)
            scores = np.zeros((len(alphas), Y.shape[1]))
            for i, alpha in enumerate(alphas):
                if cv == "kfold":
                    for tr, va in KFold(n_folds).split(X):
                        pred = Ridge(alpha=alpha).fit(X[tr], Y[tr]).predict(X[va])
                        scores[i] += r2_score(Y[va], pred, multioutput="raw_values") / n_folds
                else:
                    pred = Ridge(alpha=alpha).fit(X, Y).predict(X)
                    xc = X - X.mean(0)
                    hat = xc @ np.linalg.solve(xc.T @ xc + alpha * np.eye(X.shape[1]), xc.T)
                    dof = np.trace(hat) + 1  # + the intercept
                    rss = ((Y - pred) ** 2).sum(0)
                    ss = ((Y - Y.mean(0)) ** 2).sum(0)
                    scores[i] = 1 - rss / (ss * (1 - dof / n) ** 2)
            top = scores.max(0)
            better = top > best + 1e-9  # first candidate wins ties, as documented
            best[better] = top[better]
            out[0, better] = k
            out[1, better] = alphas[np.argmax(scores, axis=0)][better]
            out[2, better] = e
    return out[0].astype(int), out[1], out[2], best


def test_grid_covers_the_image_densely_for_small_fields():
    grid = candidate_grid(n_sizes=3, min_size=0.05, max_size=0.2, spacing=2.0)
    sizes = np.unique(grid[:, 2])
    np.testing.assert_allclose(sizes, [0.05, 0.1, 0.2])
    counts = [int((grid[:, 2] == s).sum()) for s in sizes]
    assert counts == [11 * 11, 6 * 6, 3 * 3]  # step <= 2 sigma, corners included
    assert grid[:, :2].min() == -0.5 and grid[:, :2].max() == 0.5


def test_pooling_matches_the_reference_and_is_oriented():
    maps = make_maps(12)
    cands = candidate_grid(n_sizes=2, min_size=0.1, max_size=0.3, spacing=2.5)
    pooled = pool_feature_maps(maps, cands).numpy()
    for k in (0, 5, len(cands) - 1):
        np.testing.assert_allclose(pooled[k], reference_pool(maps, cands[k]), rtol=1e-5)
    # a field inside the image sums to about one on every layer
    w = gaussian_weights(np.array([[0.0, 0.0, 0.1]]), 16, 16)
    assert abs(w.sum() - 1) < 0.01
    # a bright top-right corner is seen by an upper-right field, not a lower-left one
    corner = {"a": np.zeros((1, 1, 8, 8), np.float32)}
    corner["a"][0, 0, 0, 7] = 1.0
    up_right, low_left = pool_feature_maps(
        corner, np.array([[0.45, 0.45, 0.1], [-0.45, -0.45, 0.1]]))[:, 0, 0]
    assert up_right > 100 * low_left


@pytest.mark.parametrize("cv", ["gcv", "kfold"])
def test_solver_matches_brute_force(cv):
    maps = make_maps()
    cands = candidate_grid(n_sizes=2, min_size=0.12, max_size=0.3, spacing=2.5)
    if cv == "kfold":  # one K-fold solver call per candidate: fewer candidates keep it quick
        cands = cands[::2]
    true = [0, 4, len(cands) - 1, 7, 2]
    Y = make_responses(maps, cands, true)
    result = solve_fwrf(maps, Y, cands, ALPHAS, cv=cv, candidate_batch_size=4,
                        target_batch_size=2)
    k, alpha, _, score = brute_force(maps, Y, cands, ALPHAS, cv)
    np.testing.assert_array_equal(result.best_candidate, k)
    np.testing.assert_allclose(result.best_alpha, alpha)
    np.testing.assert_allclose(result.cv_score, score, rtol=1e-4, atol=1e-5)
    # the least noisy vertices find their own field
    assert result.best_candidate[0] == true[0] and result.best_candidate[1] == true[1]
    # predictions: the chosen candidate and alpha refitted by sklearn on all images
    test_maps = make_maps(20, seed=5)
    pred = predict_fwrf(test_maps, result)
    for v in range(Y.shape[1]):
        scaler = StandardScaler().fit(reference_pool(maps, cands[k[v]]))
        ridge = Ridge(alpha=alpha[v]).fit(scaler.transform(reference_pool(maps, cands[k[v]])), Y[:, v])
        expected = ridge.predict(scaler.transform(reference_pool(test_maps, cands[k[v]])))
        np.testing.assert_allclose(pred[:, v], expected, rtol=1e-3, atol=1e-3)


def test_rows_exponents_and_batches_do_not_change_the_choice():
    maps = make_maps(100)
    cands = candidate_grid(n_sizes=2, min_size=0.12, max_size=0.3, spacing=2.5)
    rows = np.arange(5, 95)
    sub = {k: v[rows] for k, v in maps.items()}
    Y = make_responses(sub, cands, [1, 3, 6])
    a = solve_fwrf(maps, Y, cands, ALPHAS, rows=rows, exponents=[1.0, 0.5])
    b = solve_fwrf(sub, Y, cands, ALPHAS, exponents=[1.0, 0.5], candidate_batch_size=3,
                   target_batch_size=1)
    np.testing.assert_array_equal(a.best_candidate, b.best_candidate)
    np.testing.assert_array_equal(a.best_exponent, b.best_exponent)
    np.testing.assert_allclose(a.coef, b.coef, rtol=1e-4, atol=1e-6)
    k, alpha, e, _ = brute_force(sub, Y, cands, ALPHAS, "gcv", exponents=[1.0, 0.5])
    np.testing.assert_array_equal(a.best_candidate, k)
    np.testing.assert_array_equal(a.best_exponent, e)
    np.testing.assert_allclose(predict_fwrf(maps, a, rows=rows), predict_fwrf(sub, b),
                               rtol=1e-4, atol=1e-5)


def test_errors_name_what_was_expected():
    with pytest.raises(ValueError, match=r"expected feature maps of shape \(n_images, channels"):
        solve_fwrf({"a": np.zeros((10, 5))}, np.zeros((10, 2)))
    with pytest.raises(ValueError, match="one row per image"):
        solve_fwrf(make_maps(10), np.zeros((9, 2)))
    with pytest.raises(ValueError, match="unknown transform"):
        solve_fwrf(make_maps(10), np.zeros((10, 2)), transform="log")


def test_frozen_features_hands_maps_to_fwrf_and_refuses_mismatches(manager, tmp_path, monkeypatch):
    """The recipe passes the layers' maps (not a concatenation) with the training rows to a
    mapper that takes maps, and says what is wrong when backbone and mapper disagree."""
    from types import SimpleNamespace

    import neuroenc_builtins.recipes as recipes
    from neuroenc.core.context import RunContext

    maps = make_maps(30)
    vectors = {"a": np.zeros((30, 5), np.float32)}
    served = {}
    monkeypatch.setattr(recipes, "extract_features", lambda *a, **k: served["layers"])
    context = RunContext(manager=manager, cache_dir=tmp_path, show_progress=False)
    backbone = {"name": "timm", "model_name": "resnet18", "pretrained": False, "image_size": 32,
                "pooling": "map"}
    rng = np.random.default_rng(0)
    responses = rng.standard_normal((30, 3)).astype(np.float32)
    data = SimpleNamespace(subject="subj01", train_images=[None] * 30, test_images=[], metadata={},
                           root=tmp_path, responses=lambda split: responses)
    fwrf = {"name": "fwrf", "n_sizes": 1, "min_size": 0.3, "max_size": 0.3, "spacing": 4.0}
    model = context.build("recipe", {"name": "frozen-features", "backbone": backbone,
                                     "mapper": fwrf})
    served["layers"] = maps
    train = np.arange(2, 28)
    model.fit(data, train)
    direct = solve_fwrf({k: v[train] for k, v in maps.items()}, responses[train],
                        model.mapper.candidates, fwrf_alphas())
    np.testing.assert_array_equal(model.mapper.result.best_candidate, direct.best_candidate)
    np.testing.assert_allclose(model.predict(data, "train", np.arange(5)),
                               predict_fwrf(maps, direct, rows=np.arange(5)), rtol=1e-4, atol=1e-5)
    assert set(model.vertex_maps()) >= {"rf_x", "rf_y", "rf_size", "rf_angle", "rf_eccentricity"}
    assert model.vertex_map_units["rf_x"] == "image fraction"  # no visual field known here
    with pytest.raises(ValueError, match="needs feature maps"):
        served["layers"] = vectors
        context.build("recipe", {"name": "frozen-features", "backbone": backbone,
                                 "mapper": fwrf}).fit(data, train)
    with pytest.raises(ValueError, match="takes vectors"):
        served["layers"] = maps
        context.build("recipe", {"name": "frozen-features", "backbone": backbone,
                                 "mapper": "ridge"}).fit(data, train)


def fwrf_alphas():
    from neuroenc_builtins.fwrf import FwrfParams

    return np.asarray(FwrfParams().alphas)
