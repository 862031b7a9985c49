"""The ``ensemble`` recipe: exact non-negative stacking, never worse on validation than its
best member, members selected per subject, fitted on training data only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import nnls

from neuroenc.core.config import RegistryError
from neuroenc.evaluation.results import read_netcdf
from neuroenc_builtins.ensemble import nonnegative_stack, softmax_weights
from test_folder_dataset import run_toy_registry, write_volume_dataset

BACKBONE = {"name": "timm", "model_name": "resnet18", "pretrained": False, "image_size": 32,
            "layers": [0, 1], "pooling": "grid"}


def _members(rng, n=80, v=30, k=3):
    y = rng.normal(size=(n, v))
    preds = np.stack([y * rng.uniform(0, 1) + rng.normal(size=(n, v)) * rng.uniform(0.2, 2)
                      for _ in range(k)])
    preds[2] = -preds[2]  # an anti-correlated member: its weight must be 0, not negative
    return preds, y


def test_stacking_is_exact_nonnegative_least_squares():
    preds, y = _members(np.random.default_rng(0))
    weights, intercepts = nonnegative_stack(preds, y)
    assert (weights >= 0).all() and np.allclose(weights[2], 0)
    for vertex in range(y.shape[1]):  # scipy on the centred problem (the free intercept)
        a = (preds[:, :, vertex] - preds[:, :, vertex].mean(1, keepdims=True)).T
        reference, _ = nnls(a, y[:, vertex] - y[:, vertex].mean())
        np.testing.assert_allclose(weights[:, vertex], reference, atol=1e-5)
    fitted = intercepts + np.einsum("kv,kiv->iv", weights, preds)
    np.testing.assert_allclose(fitted.mean(0), y.mean(0), atol=1e-5)


def test_stacking_is_never_worse_on_validation_than_the_best_member():
    preds, y = _members(np.random.default_rng(1), k=4)
    weights, intercepts = nonnegative_stack(preds, y)
    stacked = intercepts + np.einsum("kv,kiv->iv", weights, preds)
    member_mse = ((preds - y[None]) ** 2).mean(1)                   # (k, v)
    # each member rescaled by its own least-squares fit is a candidate of the stack too
    assert (((stacked - y) ** 2).mean(0) <= member_mse.min(0) + 1e-9).all()


def test_softmax_weights_follow_validation_correlation():
    preds, y = _members(np.random.default_rng(2))
    w = softmax_weights(preds, y, temperature=0.01)
    np.testing.assert_allclose(w.sum(0), 1, atol=1e-6)
    from neuroenc.evaluation.metrics import pearson_r

    best = np.argmax(np.stack([pearson_r(y, p) for p in preds]), axis=0)
    assert (np.argmax(w, axis=0) == best).all()


def _models(members=("good", "useless")) -> dict:
    return {
        "good": {"recipe": "frozen-features", "backbone": BACKBONE,
                 "mapper": {"name": "ridge", "n_folds": 3}},
        # the image's mean brightness only (the signal is in its quadrants), swept: the
        # ensemble takes the point selected on validation
        "useless": {"recipe": "frozen-features", "backbone": {**BACKBONE, "pooling": "avg",
                                                               "layers": [0]},
                    "mapper": {"name": "ridge", "n_folds": 3},
                    "sweep": {"mapper.alphas": [[1.0e9], [1.0]]}},
        "both": {"recipe": "ensemble", "members": list(members)},
    }


def test_ensemble_end_to_end_weights_the_useful_member(tmp_path):
    root = tmp_path / "study"
    write_volume_dataset(root)
    result = run_toy_registry(root, tmp_path, _models())
    run = result.run_dir
    ensemble = read_netcdf(run / "models" / "both" / "sub-01" / "scores.nc")
    good = read_netcdf(run / "models" / "good" / "sub-01" / "scores.nc")
    assert ensemble.attrs["n_train_images"] < good.attrs["n_train_images"]  # validation held out
    signal = slice(10, None)  # voxels 10.. carry signal (write_volume_dataset)
    assert np.median(ensemble.weight_good.values[signal]) > 0.8
    assert np.median(ensemble.weight_useless.values[signal]) < 0.1
    # on test, about the good model (which saw the validation images too), far above useless
    useless = read_netcdf(run / "models" / "useless" / "sub-01" / "scores.nc")
    assert np.median(ensemble.pearson.values[signal]) > np.median(good.pearson.values[signal]) - 0.05
    assert np.median(ensemble.pearson.values[signal]) > np.median(useless.pearson.values[signal]) + 0.08
    assert json.loads(useless.attrs["selected_point"]) == {"mapper.alphas": [1.0]}
    assert json.loads(ensemble.attrs["vertex_map_units"])["weight_good"] == "ensemble weight of good"
    assert "both" in set(result.summary.model)


@pytest.mark.parametrize("members, message", [
    (["good", "nope"], r"unknown model 'nope'"),
    (["good", "both"], r"'both' cannot be its own member"),
    (["good", "good"], r"listed twice"),
])
def test_bad_members_are_registry_errors(tmp_path, members, message):
    root = tmp_path / "study"
    write_volume_dataset(root)
    with pytest.raises(RegistryError, match=message):
        run_toy_registry(root, tmp_path, _models(members))
