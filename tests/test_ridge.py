"""Tests of neuroenc.models.ridge against an independent scikit-learn reference.

The reference selects each target's alpha by looping sklearn ``Ridge`` over alphas and
folds by hand, then refits ``Ridge(alpha=best)`` on all samples; nothing in it shares
code with the solver under test.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neuroenc.models.ridge import DEFAULT_ALPHAS, RidgeCV, RidgeCVResult, solve_ridge_cv

ALPHAS = np.logspace(-2, 5, 8)


def make_data(n_samples: int, n_features: int, n_targets: int, seed: int = 0):
    """Correlated, unevenly scaled features; targets from pure noise to nearly noiseless,
    so that the best alpha differs across targets; non-zero response means."""
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((n_features, n_features)) / np.sqrt(n_features)
    X = rng.standard_normal((n_samples, n_features)) @ (np.eye(n_features) + mixing)
    X *= np.logspace(-0.5, 0.5, n_features)
    X += rng.standard_normal(n_features)  # feature offsets exercise centring
    weights = rng.standard_normal((n_features, n_targets)) / np.sqrt(n_features)
    snr = np.logspace(-2.5, 1, n_targets)
    Y = (X - X.mean(0)) @ weights * snr + rng.standard_normal((n_samples, n_targets))
    Y += rng.standard_normal(n_targets) * 3
    return X, Y


def sklearn_reference(X, Y, alphas, folds, fit_intercept=True):
    """Return (cv_scores, best_alphas, coef, intercept) computed with sklearn Ridge."""
    n_targets = Y.shape[1]
    scores = np.zeros((len(alphas), n_targets))
    for train_idx, val_idx in folds:
        for i, alpha in enumerate(alphas):
            model = Ridge(alpha=alpha, fit_intercept=fit_intercept)
            model.fit(X[train_idx], Y[train_idx])
            scores[i] += r2_score(Y[val_idx], model.predict(X[val_idx]), multioutput="raw_values")
    scores /= len(folds)
    best = alphas[np.argmax(scores, axis=0)]  # first maximum, as documented
    coef = np.empty((X.shape[1], n_targets))
    intercept = np.empty(n_targets)
    for alpha in np.unique(best):
        cols = best == alpha
        ridge = Ridge(alpha=alpha, fit_intercept=fit_intercept).fit(X, Y[:, cols])
        # sklearn drops the target axis when a single column is fitted: restore it.
        coef[:, cols] = np.reshape(ridge.coef_, (cols.sum(), -1)).T
        intercept[cols] = ridge.intercept_
    return scores, best, coef, intercept


def assert_matches_reference(result, ref, X, rtol, score_atol):
    ref_scores, ref_best, ref_coef, ref_intercept = ref
    # Guard against a vacuous comparison: the data must make targets disagree on alpha.
    assert len(np.unique(ref_best)) >= 3, "test data should produce several best alphas"
    np.testing.assert_allclose(result.cv_scores, ref_scores, rtol=0, atol=score_atol)
    np.testing.assert_array_equal(result.best_alphas, ref_best)
    scale = np.abs(ref_coef).max()
    np.testing.assert_allclose(result.coef, ref_coef, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(
        result.intercept, ref_intercept, rtol=rtol, atol=rtol * np.abs(ref_intercept).max()
    )
    pred = X @ result.coef + result.intercept
    ref_pred = X @ ref_coef + ref_intercept
    np.testing.assert_allclose(pred, ref_pred, rtol=rtol, atol=rtol * np.abs(ref_pred).max())


@pytest.mark.parametrize(
    "n_samples, n_features, fit_intercept",
    [
        (120, 20, True),  # more samples than features: primal eigendecomposition
        (40, 100, True),  # more features than samples: dual (kernel) eigendecomposition
        (120, 20, False),
        (40, 100, False),
    ],
)
def test_matches_sklearn_float64(n_samples, n_features, fit_intercept):
    X, Y = make_data(n_samples, n_features, 40)
    if not fit_intercept:
        Y -= Y.mean(0) - 0.5  # keep a small offset the model must live without
    folds = list(KFold(5).split(X))  # contiguous, unshuffled: must equal the default
    ref = sklearn_reference(X, Y, ALPHAS, folds, fit_intercept)
    result = solve_ridge_cv(X, Y, ALPHAS, fit_intercept=fit_intercept, dtype="float64")
    assert isinstance(result, RidgeCVResult)
    assert result.coef.shape == (n_features, 40)
    assert result.cv_scores.shape == (len(ALPHAS), 40)
    np.testing.assert_array_equal(result.alphas, ALPHAS)
    assert_matches_reference(result, ref, X, rtol=1e-6, score_atol=1e-9)
    if not fit_intercept:
        np.testing.assert_array_equal(result.intercept, 0.0)


def test_user_folds_match_sklearn():
    """Non-contiguous, unequal folds given by the caller (e.g. scan sessions)."""
    X, Y = make_data(150, 25, 30, seed=1)
    sessions = np.random.default_rng(1).integers(0, 4, size=150)
    folds = list(GroupKFold(4).split(X, groups=sessions))
    ref = sklearn_reference(X, Y, ALPHAS, folds)
    result = solve_ridge_cv(X, Y, ALPHAS, folds=folds, n_folds=7, dtype="float64")
    assert_matches_reference(result, ref, X, rtol=1e-6, score_atol=1e-9)
    # The folds really were used: default contiguous folds select differently.
    default = solve_ridge_cv(X, Y, ALPHAS, dtype="float64")
    assert not np.allclose(default.cv_scores, result.cv_scores)


@pytest.mark.parametrize("n_samples, n_features", [(120, 20), (40, 100)])
def test_float32_close_to_sklearn(n_samples, n_features):
    X, Y = make_data(n_samples, n_features, 40, seed=2)
    folds = list(KFold(5).split(X))
    ref_scores, ref_best, ref_coef, ref_intercept = sklearn_reference(X, Y, ALPHAS, folds)
    result = solve_ridge_cv(X.astype(np.float32), Y.astype(np.float32), ALPHAS)
    assert result.coef.dtype == np.float32
    np.testing.assert_allclose(result.cv_scores, ref_scores, atol=1e-4)
    # A float32 run may pick a neighbouring alpha only where the reference scores tie
    # to float32 accuracy.
    differ = result.best_alphas != ref_best
    assert differ.mean() < 0.1
    cols = np.arange(Y.shape[1])
    ours = ref_scores[np.searchsorted(ALPHAS, result.best_alphas[differ]), cols[differ]]
    theirs = ref_scores[np.searchsorted(ALPHAS, ref_best[differ]), cols[differ]]
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    same = ~differ
    pred = X @ result.coef[:, same] + result.intercept[same]
    ref_pred = X @ ref_coef[:, same] + ref_intercept[same]
    np.testing.assert_allclose(pred, ref_pred, rtol=1e-3, atol=1e-3 * np.abs(ref_pred).max())


def test_target_batching_gives_same_result():
    X, Y = make_data(60, 15, 23, seed=3)
    calls = []
    unbatched = solve_ridge_cv(X, Y, ALPHAS, dtype="float64", target_batch_size=23)
    for batch_size in (1, 4, 22, 100, None):
        calls.clear()
        batched = solve_ridge_cv(
            X,
            Y,
            ALPHAS,
            dtype="float64",
            target_batch_size=batch_size,
            progress=lambda done, total: calls.append((done, total)),
        )
        np.testing.assert_array_equal(batched.best_alphas, unbatched.best_alphas)
        for name in ("coef", "intercept", "cv_scores"):
            np.testing.assert_allclose(
                getattr(batched, name), getattr(unbatched, name), rtol=1e-10, atol=1e-12
            )
        step = 23 if batch_size is None else min(batch_size, 23)
        expected = [(0, 23)] + [(min(k + step, 23), 23) for k in range(0, 23, step)]
        assert calls == expected


def test_standardize_matches_sklearn_pipeline():
    X, Y = make_data(100, 12, 30, seed=4)
    X[:, 3] = 7.0  # a constant feature: StandardScaler keeps scale 1
    X[:, 5] *= 1000.0  # a badly scaled one, so standardising changes the solution
    Xs = StandardScaler().fit_transform(X)
    folds = list(KFold(5).split(X))
    ref = sklearn_reference(Xs, Y, ALPHAS, folds)
    model = RidgeCV(ALPHAS, standardize=True, dtype="float64").fit(X, Y)
    X_new = make_data(10, 12, 1, seed=9)[0]
    np.testing.assert_array_equal(model.best_alphas_, ref[1])
    assert len(np.unique(ref[1])) >= 3
    for alpha in np.unique(ref[1]):
        cols = ref[1] == alpha
        pipe = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(X, Y[:, cols])
        for X_eval in (X, X_new):
            expected = pipe.predict(X_eval).reshape(len(X_eval), -1)  # 1-D for one column
            np.testing.assert_allclose(model.predict(X_eval)[:, cols], expected, rtol=1e-6, atol=1e-8)
    # Without standardising, the badly scaled feature leads elsewhere.
    plain = RidgeCV(ALPHAS, dtype="float64").fit(X, Y)
    assert not np.allclose(plain.coef_, model.coef_, rtol=1e-3)


def test_estimator_wraps_solver_and_handles_1d_targets():
    X, Y = make_data(80, 10, 5, seed=5)
    model = RidgeCV(ALPHAS, n_folds=4, dtype="float64", target_batch_size=2).fit(X, Y)
    result = solve_ridge_cv(X, Y, ALPHAS, n_folds=4, dtype="float64")
    np.testing.assert_allclose(model.coef_, result.coef, rtol=1e-10)
    np.testing.assert_array_equal(model.best_alphas_, result.best_alphas)
    np.testing.assert_allclose(model.predict(X), X @ result.coef + result.intercept, rtol=1e-10)
    single = RidgeCV(ALPHAS, n_folds=4, dtype="float64").fit(X, Y[:, 2])
    assert single.predict(X).shape == (80,)
    np.testing.assert_allclose(single.predict(X), model.predict(X)[:, 2], rtol=1e-10)
    assert model.get_params()["standardize"] is False  # sklearn clone() compatible
    with pytest.raises(ValueError, match=r"expected \(n_samples, 10\)"):
        model.predict(X[:, :9])


def test_pearson_scoring_matches_manual_correlation():
    X, Y = make_data(90, 15, 12, seed=6)
    folds = list(KFold(3).split(X))
    expected = np.zeros((len(ALPHAS), Y.shape[1]))
    for train_idx, val_idx in folds:
        for i, alpha in enumerate(ALPHAS):
            pred = Ridge(alpha=alpha).fit(X[train_idx], Y[train_idx]).predict(X[val_idx])
            for t in range(Y.shape[1]):
                expected[i, t] += np.corrcoef(pred[:, t], Y[val_idx, t])[0, 1] / len(folds)
    result = solve_ridge_cv(X, Y, ALPHAS, n_folds=3, scoring="pearson_r", dtype="float64")
    np.testing.assert_allclose(result.cv_scores, expected, atol=1e-9)
    np.testing.assert_array_equal(result.best_alphas, ALPHAS[np.argmax(expected, axis=0)])


def test_default_alpha_grid_is_wide_and_used():
    X, Y = make_data(60, 8, 3, seed=7)
    result = solve_ridge_cv(X, Y)
    np.testing.assert_array_equal(result.alphas, DEFAULT_ALPHAS)
    assert DEFAULT_ALPHAS.min() <= 1e-2 and DEFAULT_ALPHAS.max() >= 1e6


@pytest.mark.parametrize(
    "X_shape, Y_shape, kwargs, message",
    [
        ((30, 4), (29, 3), {}, r"Y has shape \(29, 3\) but X has shape \(30, 4\); expected Y of shape \(30, n_targets\)"),
        ((30,), (30, 3), {}, r"X has shape \(30,\); expected a 2-D array"),
        ((30, 4), (30, 3, 1), {}, r"Y has shape \(30, 3, 1\)"),
        ((7, 4), (7, 3), {}, r"too few samples for 5-fold.*X has 7 rows.*at least 10"),
        ((30, 4), (30, 3), {"n_folds": 1}, r"n_folds must be an integer >= 2"),
        ((30, 4), (30, 3), {"alphas": [1.0, 0.0]}, r"alphas must be finite and > 0"),
        ((30, 4), (30, 3), {"alphas": []}, r"alphas is empty"),
        ((30, 4), (30, 3), {"scoring": "mse"}, r"unknown scoring 'mse'; expected one of r2, pearson_r"),
        ((30, 4), (30, 3), {"dtype": "float16"}, r"unknown dtype 'float16'"),
        ((30, 4), (30, 3), {"target_batch_size": 0}, r"target_batch_size must be a positive integer"),
        ((30, 4), (30, 3), {"folds": [(np.arange(20), np.arange(15, 30))]}, r"folds\[0\]: 5 sample\(s\) are in both"),
        ((30, 4), (30, 3), {"folds": [(np.arange(10), np.arange(25, 31))]}, r"folds\[0\] val_idx has indices in \[25, 30\]; expected rows of X in \[0, 29\]"),
        ((30, 4), (30, 3), {"folds": [(np.arange(29), np.array([29]))]}, r"folds\[0\] val_idx has 1 sample\(s\); expected at least 2"),
    ],
)
def test_bad_input_raises_clear_errors(X_shape, Y_shape, kwargs, message):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=message):
        solve_ridge_cv(rng.standard_normal(X_shape), rng.standard_normal(Y_shape), **kwargs)


@pytest.mark.parametrize("name, bad", [("X", np.nan), ("X", np.inf), ("Y", np.nan), ("Y", -np.inf)])
def test_non_finite_input_names_the_array(name, bad):
    rng = np.random.default_rng(0)
    arrays = {"X": rng.standard_normal((30, 4)), "Y": rng.standard_normal((30, 3)).astype(np.float32)}
    arrays[name][12, 2] = bad
    arrays[name][20, 0] = bad
    shape = arrays[name].shape
    with pytest.raises(
        ValueError,
        match=rf"{name} of shape \({shape[0]}, {shape[1]}\) contains 2 non-finite value\(s\).*"
        r"first at row 12, column 2",
    ):
        solve_ridge_cv(arrays["X"], arrays["Y"])
    with pytest.raises(ValueError, match=rf"{name} of shape"):
        RidgeCV().fit(arrays["X"], arrays["Y"])


def test_unavailable_device_raises():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        solve_ridge_cv(np.ones((20, 2)), np.ones((20, 1)), device="cuda")


def test_ties_go_to_first_alpha_of_grid():
    """A constant target scores 0 for every alpha (R^2 undefined): the tie goes to the
    first alpha as given, whatever the grid's order."""
    X, Y = make_data(50, 6, 3, seed=10)
    Y[:, 1] = 4.0
    descending = ALPHAS[::-1]
    for grid in (ALPHAS, descending):
        result = solve_ridge_cv(X, Y, grid, dtype="float64")
        assert result.best_alphas[1] == grid[0]
        np.testing.assert_array_equal(result.cv_scores[:, 1], 0.0)
        np.testing.assert_allclose(result.coef[:, 1], 0.0, atol=1e-12)
        np.testing.assert_allclose(result.intercept[1], 4.0)
    # Reordering the grid only reorders the scores of the other targets.
    up = solve_ridge_cv(X, Y, ALPHAS, dtype="float64")
    down = solve_ridge_cv(X, Y, descending, dtype="float64")
    np.testing.assert_allclose(down.cv_scores[::-1], up.cv_scores, atol=1e-12)


def test_float32_robust_to_large_response_offsets():
    """Raw BOLD-like units (mean ~1e4) must not cost float32 runs their precision."""
    X, Y = make_data(200, 30, 20, seed=8)
    Y += 1e4
    exact = solve_ridge_cv(X, Y, ALPHAS, dtype="float64")
    approx = solve_ridge_cv(X, Y, ALPHAS, dtype="float32")
    np.testing.assert_allclose(approx.cv_scores, exact.cv_scores, atol=1e-5)
    np.testing.assert_array_equal(approx.best_alphas, exact.best_alphas)
    pred = X @ approx.coef.astype(np.float64) + approx.intercept
    np.testing.assert_allclose(pred, X @ exact.coef + exact.intercept, rtol=1e-5)


# --------------------------------------------------------------------------- fast paths


@pytest.mark.parametrize("n_samples, n_features, n_folds", [(120, 20, 5), (80, 100, 2)])
@pytest.mark.parametrize("scoring", ["r2", "pearson_r"])
def test_quadratic_form_path_matches_explicit_predictions(monkeypatch, n_samples, n_features,
                                                         n_folds, scoring):
    """The validation scores via u^T G u (block upper-triangular products) equal those of
    explicit predictions P u, in the primal and the dual, for both scorings."""
    import neuroenc.models.ridge._solvers as ridge

    X, Y = make_data(n_samples, n_features, 25, seed=11)
    kwargs = dict(n_folds=n_folds, scoring=scoring, dtype="float64")
    monkeypatch.setattr(ridge, "_QUAD_BLOCK", 10**6)  # never worth it: explicit predictions
    explicit = solve_ridge_cv(X, Y, ALPHAS, **kwargs)
    monkeypatch.setattr(ridge, "_QUAD_BLOCK", 7)  # several blocks, a ragged last one
    plan = ridge._plan_x_side(X, ridge.contiguous_folds(n_samples, n_folds), ALPHAS, "kfold", True,
                              scoring, ridge.torch.float64, ridge.torch.device("cpu"),
                              ridge.torch.device("cpu"))
    assert all(f.G_upper is not None for f in plan.folds), "the test must use the quadratic path"
    assert all(f.quad_blocks is not None for f in plan.folds)  # kept across batches
    quadratic = solve_ridge_cv(X, Y, ALPHAS, target_batch_size=10, **kwargs)
    np.testing.assert_allclose(quadratic.cv_scores, explicit.cv_scores, rtol=0, atol=1e-10)
    np.testing.assert_array_equal(quadratic.best_alphas, explicit.best_alphas)
    monkeypatch.setattr(ridge, "_QUAD_KEEP_BYTES", 0)  # rebuilt for every batch instead
    rebuilt = solve_ridge_cv(X, Y, ALPHAS, target_batch_size=10, **kwargs)
    np.testing.assert_allclose(rebuilt.cv_scores, explicit.cv_scores, rtol=0, atol=1e-10)
    if scoring == "r2":
        ref = sklearn_reference(X, Y, ALPHAS, list(KFold(n_folds).split(X)))
        np.testing.assert_allclose(quadratic.cv_scores, ref[0], atol=1e-9)


def test_folds_that_leave_samples_out_match_sklearn():
    """Training sets that are not 'all but the validation set' take the direct path."""
    X, Y = make_data(150, 25, 30, seed=12)
    rng = np.random.default_rng(12)
    folds = []
    for k in range(3):
        order = rng.permutation(150)
        folds.append((np.sort(order[:90]), np.sort(order[100:130])))  # 30 samples unused
    ref = sklearn_reference(X, Y, ALPHAS, folds)
    result = solve_ridge_cv(X, Y, ALPHAS, folds=folds, dtype="float64")
    assert_matches_reference(result, ref, X, rtol=1e-6, score_atol=1e-9)


def _loo_reference(X, Y, alphas, fit_intercept):
    """Leave-one-out squared errors by refitting sklearn Ridge n times (no shortcut)."""
    n = len(X)
    sse = np.zeros((len(alphas), Y.shape[1]))
    for i, alpha in enumerate(alphas):
        for j in range(n):
            keep = np.arange(n) != j
            model = Ridge(alpha=alpha, fit_intercept=fit_intercept).fit(X[keep], Y[keep])
            sse[i] += (Y[j] - model.predict(X[j : j + 1])[0]) ** 2
    return sse


@pytest.mark.parametrize(
    "n_samples, n_features, fit_intercept",
    [(60, 12, True), (30, 50, True), (60, 12, False), (30, 50, False)],
)
def test_loo_matches_brute_force_and_sklearn_ridgecv(n_samples, n_features, fit_intercept):
    from sklearn.linear_model import RidgeCV as SklearnRidgeCV

    X, Y = make_data(n_samples, n_features, 20, seed=13)
    result = solve_ridge_cv(X, Y, ALPHAS, cv="loo", fit_intercept=fit_intercept, dtype="float64")
    ss_tot = ((Y - Y.mean(0)) ** 2).sum(0)
    expected = 1 - _loo_reference(X, Y, ALPHAS, fit_intercept) / ss_tot
    np.testing.assert_allclose(result.cv_scores, expected, atol=1e-9)
    sk = SklearnRidgeCV(alphas=ALPHAS, alpha_per_target=True, fit_intercept=fit_intercept).fit(X, Y)
    assert len(np.unique(sk.alpha_)) >= 3
    np.testing.assert_array_equal(result.best_alphas, sk.alpha_)
    np.testing.assert_allclose(result.coef, sk.coef_.T, rtol=1e-6, atol=1e-6 * np.abs(sk.coef_).max())
    np.testing.assert_allclose(result.intercept, sk.intercept_, rtol=1e-6, atol=1e-6)


def test_loo_pearson_scores_the_leave_one_out_predictions():
    X, Y = make_data(40, 8, 6, seed=14)
    result = solve_ridge_cv(X, Y, ALPHAS, cv="loo", scoring="pearson_r", dtype="float64")
    expected = np.zeros((len(ALPHAS), Y.shape[1]))
    for i, alpha in enumerate(ALPHAS):
        pred = np.array([Ridge(alpha=alpha).fit(np.delete(X, j, 0), np.delete(Y, j, 0))
                         .predict(X[j : j + 1])[0] for j in range(len(X))])
        expected[i] = [np.corrcoef(pred[:, t], Y[:, t])[0, 1] for t in range(Y.shape[1])]
    np.testing.assert_allclose(result.cv_scores, expected, atol=1e-9)


@pytest.mark.parametrize("n_samples, n_features", [(60, 12), (30, 50)])
def test_gcv_matches_the_hat_matrix_formula(n_samples, n_features):
    """GCV(alpha) = n ||y - H y||^2 / (n - trace H)^2, H the hat matrix with intercept."""
    X, Y = make_data(n_samples, n_features, 15, seed=15)
    result = solve_ridge_cv(X, Y, ALPHAS, cv="gcv", dtype="float64")
    Xc = X - X.mean(0)
    Yc = Y - Y.mean(0)
    expected = np.empty((len(ALPHAS), Y.shape[1]))
    for i, alpha in enumerate(ALPHAS):
        H = Xc @ np.linalg.solve(Xc.T @ Xc + alpha * np.eye(n_features), Xc.T)
        H += 1.0 / n_samples  # the unpenalised intercept
        resid = ((Y - H @ Y) ** 2).sum(0)
        gcv = n_samples * resid / (n_samples - np.trace(H)) ** 2
        expected[i] = 1 - gcv / (Yc**2).sum(0) * n_samples
    np.testing.assert_allclose(result.cv_scores, expected, rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(result.best_alphas, ALPHAS[np.argmax(expected, axis=0)])
    # The refit is the ordinary ridge fit at the chosen alphas.
    for alpha in np.unique(result.best_alphas):
        cols = result.best_alphas == alpha
        ridge = Ridge(alpha=alpha).fit(X, Y[:, cols])
        np.testing.assert_allclose(result.coef[:, cols], np.reshape(ridge.coef_, (cols.sum(), -1)).T,
                                   rtol=1e-6, atol=1e-9)


def test_cv_option_errors():
    X, Y = make_data(40, 5, 3, seed=16)
    with pytest.raises(ValueError, match="unknown cv 'loocv'; expected one of kfold, loo, gcv"):
        solve_ridge_cv(X, Y, cv="loocv")
    with pytest.raises(ValueError, match="cv='gcv' scores squared error only"):
        solve_ridge_cv(X, Y, cv="gcv", scoring="pearson_r")
    with pytest.raises(ValueError, match="folds are only used with cv='kfold'"):
        solve_ridge_cv(X, Y, cv="loo", folds=[(np.arange(20), np.arange(20, 40))])
    model = RidgeCV(ALPHAS, cv="loo", dtype="float64").fit(X, Y)
    np.testing.assert_array_equal(
        model.best_alphas_, solve_ridge_cv(X, Y, ALPHAS, cv="loo", dtype="float64").best_alphas)


def test_memmapped_responses_are_not_copied_whole(tmp_path):
    """Y as a read-only memmap (as the Algonauts reader returns it) gives the in-memory
    result, in batches smaller than Y."""
    X, Y = make_data(60, 10, 37, seed=17)
    path = tmp_path / "y.npy"
    np.save(path, Y.astype(np.float32))
    Y_map = np.load(path, mmap_mode="r")
    mapped = solve_ridge_cv(X, Y_map, ALPHAS, target_batch_size=8)
    in_memory = solve_ridge_cv(X, np.load(path), ALPHAS, target_batch_size=37)
    np.testing.assert_array_equal(mapped.best_alphas, in_memory.best_alphas)
    # float32: batches of other widths round differently inside the GEMMs
    np.testing.assert_allclose(mapped.coef, in_memory.coef, rtol=1e-4,
                               atol=1e-5 * np.abs(in_memory.coef).max())
