"""image-text-ridge: never worse on CV than either band, against a scikit-learn brute force,
and in a run."""

from __future__ import annotations

import textwrap

import numpy as np

from neuroenc.models.ridge import BandedRidgeCV


def _two_bands(n=240, seed=0):
    """Vertices 0-9 driven by the image band, 10-19 by the text band, 20-29 by both."""
    rng = np.random.default_rng(seed)
    image, text = rng.standard_normal((n, 30)), rng.standard_normal((n, 12))
    Y = np.concatenate([image[:, :4] @ rng.standard_normal((4, 10)),
                        text[:, :3] @ rng.standard_normal((3, 10)),
                        image[:, :4] @ rng.standard_normal((4, 10))
                        + text[:, :3] @ rng.standard_normal((3, 10))], axis=1)
    return image, text, Y + 2.0 * rng.standard_normal(Y.shape)


def test_the_joint_model_is_never_worse_on_cv_than_either_band():
    image, text, Y = _two_bands()
    kw = dict(alphas=np.logspace(-1, 5, 7), band_ratios=(0.1, 1.0, 10.0), n_folds=5)
    joint = BandedRidgeCV(single_bands=True, **kw).fit([image, text], Y)
    image_only = BandedRidgeCV(**kw).fit([image], Y)
    text_only = BandedRidgeCV(**kw).fit([text], Y)
    best_single = np.maximum(image_only.cv_score_, text_only.cv_score_)
    assert (joint.cv_score_ >= best_single - 1e-6).all()
    # both single-band models are chosen somewhere: image-driven vertices take ratio 0, ...
    assert (joint.best_ratio_[:10] == 0).sum() >= 3 and np.isinf(joint.best_ratio_[10:20]).sum() >= 3
    # ... a vertex that took one is exactly that model
    v = int(np.flatnonzero(joint.best_ratio_ == 0)[0])
    np.testing.assert_allclose(joint.predict([image, text])[:, v], image_only.predict([image])[:, v],
                               rtol=1e-5, atol=1e-5)
    # without the single bands the grid's extreme ratios do not reach them (the test bites)
    plain = BandedRidgeCV(**kw).fit([image, text], Y)
    assert (plain.cv_score_ < best_single - 1e-4).any()


def test_banded_grid_equals_a_scikit_learn_brute_force():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold

    image, text, Y = _two_bands(n=90, seed=1)
    image, text, Y = image[:, :6], text[:, :5], Y[:, ::5]
    alphas, ratios = np.array([0.3, 3.0, 30.0, 300.0]), (0.3, 3.0)
    model = BandedRidgeCV(alphas, ratios, n_folds=5, dtype="float64", single_bands=True)
    model.fit([image, text], Y)

    def standardised(band):  # z-score, unit total variance, on the training rows
        return (band - band.mean(0)) / (band.std(0) * np.sqrt(band.shape[1]))

    zi, zt = standardised(image), standardised(text)
    grid = [(r ** -0.5, r ** 0.5, r) for r in ratios] + [(1, 0, 0.0), (0, 1, np.inf)]
    best = np.full(Y.shape[1], -np.inf)
    best_ratio, best_alpha = np.zeros(Y.shape[1]), np.zeros(Y.shape[1])
    refit = np.zeros_like(Y)
    for wi, wt, ratio in grid:
        X = np.concatenate([zi * wi, zt * wt], axis=1)[:, [wi > 0] * 6 + [wt > 0] * 5]
        for alpha in alphas:
            scores = np.mean([r2_score(Y[val], Ridge(alpha=alpha).fit(X[tr], Y[tr]).predict(X[val]),
                                       multioutput="raw_values")
                              for tr, val in KFold(5).split(X)], axis=0)
            better = scores > best + 1e-12
            best[better], best_ratio[better], best_alpha[better] = scores[better], ratio, alpha
            refit[:, better] = Ridge(alpha=alpha).fit(X, Y).predict(X)[:, better]
    np.testing.assert_allclose(model.cv_score_, best, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(model.best_ratio_, best_ratio)
    np.testing.assert_array_equal(model.best_alpha_, best_alpha)
    # predictions are float32 (BandedRidgeCV stores float32 weights)
    np.testing.assert_allclose(model.predict([image, text]), refit, rtol=1e-5, atol=1e-6)


def test_image_text_ridge_in_a_run(small_demo_root, tmp_path):
    from neuroenc.core.config import load_registry, resolve_registry
    from neuroenc.core.plugins import PluginManager
    from neuroenc.core.runner import run_registry
    from neuroenc.evaluation.results import read_netcdf
    from test_baselines import TEXT_PLUGIN

    (tmp_path / "text_plugin.py").write_text(TEXT_PLUGIN)
    (tmp_path / "registry.yaml").write_text(textwrap.dedent(f"""
        name: itr
        plugins: [text_plugin.py]
        dataset: {{kind: algonauts2023, root: {small_demo_root}, subjects: [1]}}
        models:
          itr:
            recipe: image-text-ridge
            backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 32,
                        layers: [2]}}
            captioner: dataset-captions
            text_encoder: hashing-bow
            n_folds: 3
            alphas: [1, 100, 10000]
            band_ratios: [0.3, 1, 3]
        compute: {{cache_dir: cache, batch_size: 64}}
        output: {{dir: out}}
    """))
    manager = PluginManager(strict=True)
    registry = resolve_registry(load_registry(tmp_path / "registry.yaml"), manager)
    result = run_registry(registry, manager, show_progress=False, log=lambda message: None)
    ds = read_netcdf(result.run_dir / "models" / "itr" / "subj01" / "scores.nc")
    assert np.isfinite(ds.pearson.values).all()
    share = ds.itr_text_share.values
    assert np.isclose(share[:, None], [0, 0.3 / 1.3, 0.5, 0.75, 1]).any(axis=1).all()
    assert (share == 0).any() and (share == 1).any()  # some vertices take one band alone
    # captions name the drawn categories: face ROIs lean on the text band more than V1-V3
    faces = ds.roi_floc_faces.values != ""
    early = ds["roi_prf_visualrois"].values != ""
    assert share[faces].mean() > share[early].mean()
    encoders = (result.run_dir / "encoders.json").read_text()
    assert "needs captions of the new images" in encoders
