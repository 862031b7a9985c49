"""Baselines on the plugin API: the Algonauts devkit, text-ridge, variance partitioning."""

from __future__ import annotations

import importlib
import textwrap
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from neuroenc.core.context import RunContext
from neuroenc.core.plugins import PluginManager

ROOT = Path(__file__).resolve().parents[1]


def baselines_module():
    """The plugin package, installed with neuroenc (entry point ``baselines``)."""
    return importlib.import_module("neuroenc_baselines")


@pytest.fixture
def manager():
    """The built-ins and the baselines (not the heavier LLM-VEM set: not needed here)."""
    import neuroenc_builtins

    pm = PluginManager(strict=True, load_entrypoints=False)
    pm.register(neuroenc_builtins, "builtins")
    pm.register(baselines_module(), "baselines")
    return pm


@pytest.fixture
def context(manager, tmp_path):
    return RunContext(manager=manager, cache_dir=tmp_path / "cache", seed=0, batch_size=32,
                      show_progress=False, base_dir=tmp_path)


def test_components_are_registered(manager):
    assert "torchvision-alexnet" in manager.components("image_backbone")
    assert "devkit-pca-linear" in manager.components("voxel_mapper")
    recipes = manager.components("recipe")
    for name in ("devkit", "text-ridge", "variance-partitioning"):
        assert recipes[name].provider == "baselines"
    backbone = manager.get("image_backbone", "torchvision-alexnet")
    with pytest.raises(ValueError, match=r"unknown AlexNet layer 'maxpol1'.*did you mean 'maxpool1'"):
        backbone.params.model_validate({"layers": ["maxpol1"]})


# --------------------------------------------------------------------------- devkit


def structured_features(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with a low-rank structure on very different scales, and responses."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 12))
    X = latent @ rng.standard_normal((12, d)) + 0.3 * rng.standard_normal((n, d))
    X *= rng.uniform(0.01, 50, d)  # what a StandardScaler is for
    X += rng.uniform(-5, 5, d)
    Y = latent @ rng.standard_normal((12, 30)) + rng.standard_normal((n, 30))
    return X.astype(np.float32), Y.astype(np.float32)


def test_devkit_mapper_equals_the_scikit_learn_pipeline():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from neuroenc_baselines.devkit import DevkitMapper, DevkitMapperParams

    X, Y = structured_features(220, 400)
    train, test = slice(0, 160), slice(160, None)
    reference = make_pipeline(StandardScaler(), PCA(100, random_state=20200220), LinearRegression())
    expected = reference.fit(X[train], Y[train]).predict(X[test])
    for chunk in (1024, 37):  # row streaming must not change anything
        mapper = DevkitMapper(DevkitMapperParams(chunk_size=chunk)).fit(X[train], Y[train])
        np.testing.assert_allclose(mapper.predict(X[test]), expected, rtol=1e-3, atol=1e-3)
    assert mapper.regression_.coef_.shape == (30, 100)
    # the scaler is what the devkit scripts add: without it the predictions differ
    plain = DevkitMapper(DevkitMapperParams(standardize=False)).fit(X[train], Y[train])
    assert not np.allclose(plain.predict(X[test]), expected, atol=1e-2)


def test_devkit_mapper_incremental_equals_the_tutorial_pipeline():
    from sklearn.decomposition import IncrementalPCA
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline

    from neuroenc_baselines.devkit import DevkitMapper, DevkitMapperParams

    X, Y = structured_features(330, 200, seed=1)
    train, test = slice(0, 290), slice(290, None)
    # the tutorial: no scaler, IncrementalPCA fitted in batches (the last, small one merged)
    reference = make_pipeline(IncrementalPCA(100, batch_size=120), LinearRegression())
    expected = reference.fit(X[train], Y[train]).predict(X[test])
    params = DevkitMapperParams(standardize=False, pca="incremental", batch_size=120)
    mapper = DevkitMapper(params).fit(X[train], Y[train])
    np.testing.assert_allclose(mapper.predict(X[test]), expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="n_components=100 needs at least as many training images"):
        DevkitMapper().fit(X[:50], Y[:50])


def test_alexnet_layers_are_the_devkit_maps(context):
    import torch

    from neuroenc_baselines.devkit import _state_digest

    backbone = context.build("image_backbone", {"name": "torchvision-alexnet", "pretrained": False})
    assert backbone.layers == ["maxpool1", "maxpool2", "ReLU3", "ReLU4", "maxpool5", "ReLU6",
                               "ReLU7", "fc8"]  # the devkit's layers, in its order
    net = backbone.module
    batch = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        feats = backbone.forward_features(batch)
        assert list(feats) == backbone.layers
        # the devkit's 205,672 values per image at 224 px
        assert sum(v.shape[1] for v in feats.values()) == 205672
        torch.testing.assert_close(feats["fc8"], net(batch))  # eval mode: the logits
        torch.testing.assert_close(feats["maxpool1"], net.features[:3](batch).flatten(1))
        torch.testing.assert_close(feats["ReLU3"], net.features[:8](batch).flatten(1))
        x = torch.flatten(net.avgpool(net.features(batch)), 1)
        torch.testing.assert_close(feats["ReLU7"], net.classifier[:6](x))
        # torchvision node names work too, in the order asked for
        backbone._wanted = {("classifier", 6): "classifier.6", ("features", 2): "features.2"}
        names = backbone.forward_features(batch)
        assert list(names) == ["classifier.6", "features.2"]
        torch.testing.assert_close(names["features.2"], feats["maxpool1"])
    # random weights key the feature cache by their content
    before = backbone.identity()["random_weights_sha256"]
    with torch.no_grad():
        net.features[0].weight[0, 0, 0, 0] += 1
    assert _state_digest(net) != before


def test_alexnet_without_internet_says_what_to_do(context, monkeypatch):
    import torchvision

    real = torchvision.models.alexnet

    def offline(*args, weights=None, **kwargs):
        if weights is not None:
            raise urllib.error.URLError("Temporary failure in name resolution")
        return real(*args, weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "alexnet", offline)
    with pytest.raises(RuntimeError, match=r"alexnet-owt-7be5be79\.pth into .*checkpoints.*"
                                           r"pretrained: false"):
        context.build("image_backbone", {"name": "torchvision-alexnet"})


def test_devkit_recipe_equals_the_pipeline_on_its_features(small_demo_root, context):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from neuroenc_builtins.algonauts import read_subject
    from neuroenc.stimuli.features import extract_features

    data = read_subject(small_demo_root, "subj01")
    model = context.build("recipe", {"name": "devkit", "backbone": {
        "name": "torchvision-alexnet", "pretrained": False, "image_size": 64}})
    train_index = np.arange(5, 115)  # a holdout-style subset of the 120 training images
    model.fit(data, train_index)
    predicted = model.predict(data, "test")
    held_out = model.predict(data, "train", np.array([0, 1, 2, 117]))

    def features(images):
        layers = extract_features(model.backbone, images, context)
        assert list(layers) == list(model.backbone.layers)  # the devkit's order
        return np.concatenate([np.asarray(v) for v in layers.values()], axis=1)

    train = features(data.train_images)
    reference = make_pipeline(StandardScaler(), PCA(100, random_state=20200220), LinearRegression())
    reference.fit(train[train_index], data.responses("train")[train_index])
    scale = np.abs(predicted).max()
    np.testing.assert_allclose(predicted, reference.predict(features(data.test_images)),
                               atol=1e-3 * scale)
    np.testing.assert_allclose(held_out, reference.predict(train[[0, 1, 2, 117]]), atol=1e-3 * scale)
    assert predicted.shape == (len(data.test_images), sum(data.n_vertices.values()))


# --------------------------------------------------------------------------- variance partitioning


def test_variance_partition_formula():
    from neuroenc_baselines.text import variance_partition

    parts = variance_partition(np.array([0.3, 0.1]), np.array([0.2, 0.1]), np.array([0.4, 0.1]))
    np.testing.assert_allclose(parts["unique_image"], [0.2, 0.0])
    np.testing.assert_allclose(parts["unique_text"], [0.1, 0.0])
    np.testing.assert_allclose(parts["shared"], [0.1, 0.1])


def synthetic_partition_data(seed: int = 0, n_train: int = 600, n_test: int = 600, reps: int = 6):
    """Image and text features sharing a latent part S; responses with known variance parts.

    Image features carry S and A, text features S and B (mixed, plus pure-noise columns).
    A vertex y = sqrt(a) A w1 + sqrt(b) B w2 + sqrt(s) S w3 + noise with unit-variance parts
    has population R^2 a + s (image), b + s (text), a + b + s (joint): unique image a,
    unique text b, shared s.
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    S, A, B = (rng.standard_normal((n, 4)) for _ in range(3))

    def mix(parts, noise_columns):
        X = np.concatenate(parts, 1)
        X = X @ rng.standard_normal((X.shape[1], X.shape[1]))
        return np.concatenate([X, rng.standard_normal((n, noise_columns))], 1)

    def unit(Z):
        y = Z @ rng.standard_normal(Z.shape[1])
        return (y - y.mean()) / y.std()

    image, text = mix([S, A], 10), mix([S, B], 10)
    parts = [(0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5), (0.3, 0.2, 0.2), (0, 0, 0)]
    Y, truth = [], []
    for a, b, s in parts:
        for _ in range(reps):
            Y.append(np.sqrt(a) * unit(A) + np.sqrt(b) * unit(B) + np.sqrt(s) * unit(S)
                     + np.sqrt(1 - a - b - s) * rng.standard_normal(n))
            truth.append((a, b, s))
    Y = np.stack(Y, 1).astype(np.float32)
    split = slice(0, n_train), slice(n_train, None)
    return image, text, Y, np.array(truth), split


def test_variance_partitioning_recovers_known_parts():
    from neuroenc_baselines.text import VariancePartitioner

    image, text, Y, truth, (train, test) = synthetic_partition_data()
    vp = VariancePartitioner(n_folds=3, band_ratios=(0.1, 1.0, 10.0))
    vp.fit(image[train], text[train], Y[train])
    parts = vp.partition(image[test], text[test], Y[test])
    np.testing.assert_allclose(parts["unique_image"] + parts["unique_text"] + parts["shared"],
                               parts["r2_joint"], atol=1e-6)
    for expected in np.unique(truth, axis=0):
        group = (truth == expected).all(axis=1)
        found = [parts[k][group].mean() for k in ("unique_image", "unique_text", "shared")]
        np.testing.assert_allclose(found, expected, atol=0.05,
                                   err_msg=f"(unique image, unique text, shared) = {tuple(expected)}")
    # the banded joint model weights the band that carries the signal
    image_only = (truth == (0.5, 0, 0)).all(axis=1)
    text_only = (truth == (0, 0.5, 0)).all(axis=1)
    assert np.median(parts["text_weight"][image_only]) < 1 < np.median(parts["text_weight"][text_only])


def test_banded_ridge_beats_one_alpha_when_a_band_is_noise():
    """A wide band of pure noise next to a narrow informative one: one shared penalty
    cannot serve both; a penalty per band can."""
    from neuroenc.models.ridge import RidgeCV
    from neuroenc_baselines.text import BandedRidgeCV

    rng = np.random.default_rng(0)
    n = 300
    signal = rng.standard_normal((n, 5))
    noise = rng.standard_normal((n, 120))
    Y = signal @ rng.standard_normal((5, 20)) + rng.standard_normal((n, 20))
    train, test = slice(0, 150), slice(150, None)
    banded = BandedRidgeCV(n_folds=3, band_ratios=(0.1, 1.0, 10.0)).fit(
        [signal[train], noise[train]], Y[train])
    plain = RidgeCV(alphas=np.logspace(-2, 6, 9), n_folds=3, standardize=True).fit(
        np.concatenate([signal, noise], 1)[train], Y[train])

    def r2(pred):
        return 1 - ((Y[test] - pred) ** 2).sum(0) / ((Y[test] - Y[test].mean(0)) ** 2).sum(0)

    r2_banded = r2(banded.predict([signal[test], noise[test]]))
    r2_plain = r2(plain.predict(np.concatenate([signal, noise], 1)[test]))
    assert r2_banded.mean() > r2_plain.mean() + 0.05
    assert (banded.best_ratio_ < 1).all()  # the noise band is down-weighted everywhere


TEXT_PLUGIN = '''
"""A real, dependency-free text encoder for tests: hashed word and bigram counts (l2)."""
import numpy as np
from neuroenc import Component, hookimpl


class HashingBagOfWords:
    dim = 256

    def encode(self, texts):
        from sklearn.feature_extraction.text import HashingVectorizer

        vectorizer = HashingVectorizer(n_features=self.dim, alternate_sign=False, norm="l2",
                                       ngram_range=(1, 2))
        return vectorizer.transform(list(texts)).toarray().astype(np.float32)

    def identity(self):
        return {"component": "hashing-bow", "dim": self.dim, "ngrams": [1, 2]}


@hookimpl
def neuroenc_text_encoders():
    return [Component("hashing-bow", lambda params, context: HashingBagOfWords(),
                      description="hashed bag of words and bigrams (tests)")]
'''


def test_text_ridge_and_variance_partitioning_in_a_run(small_demo_root, tmp_path):
    from neuroenc.core.config import load_registry, resolve_registry
    from neuroenc.evaluation.results import read_netcdf
    from neuroenc.core.runner import run_registry

    baselines_module()  # importable by name from the registry
    (tmp_path / "text_plugin.py").write_text(TEXT_PLUGIN)
    (tmp_path / "registry.yaml").write_text(textwrap.dedent(f"""
        name: vp
        plugins: [neuroenc_baselines, text_plugin.py]
        dataset: {{kind: algonauts2023, root: {small_demo_root}, subjects: [1]}}
        models:
          text:
            recipe: text-ridge
            captioner: dataset-captions
            text_encoder: hashing-bow
            mapper: {{name: ridge, n_folds: 3, alphas: [1, 100, 10000]}}
          vp:
            recipe: variance-partitioning
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

    text = read_netcdf(result.run_dir / "models" / "text" / "subj01" / "scores.nc")
    assert np.isfinite(text.pearson.values).all()
    # captions name the drawn categories: the text model predicts category-selective cortex
    faces = text.roi_floc_faces.values != ""
    assert np.median(text.pearson.values[faces]) > 0.1

    vp = read_netcdf(result.run_dir / "models" / "vp" / "subj01" / "scores.nc")
    names = ("vp_r2_image", "vp_r2_text", "vp_r2_joint", "vp_unique_image", "vp_unique_text",
             "vp_shared", "vp_text_weight")
    assert set(names) <= set(vp.data_vars)
    np.testing.assert_allclose(vp.vp_unique_image + vp.vp_unique_text + vp.vp_shared,
                               vp.vp_r2_joint, atol=1e-5)
    # the joint model is what the run scored: its R^2 is the run's r2 metric
    np.testing.assert_allclose(vp.vp_r2_joint, vp.r2, atol=1e-4)
    weights = vp.vp_text_weight.values
    assert np.isclose(weights[:, None], [0.3, 1.0, 3.0]).any(axis=1).all()
