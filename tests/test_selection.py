"""Sweep points chosen on a validation part of the training images, never on the scored split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from neuroenc.core.config import ModelConfig, expand_model
from neuroenc.evaluation.results import read_netcdf
from neuroenc.evaluation.selection import select_point, selection_score, validation_split
from test_folder_dataset import N_TRAIN, run_toy_registry, write_volume_dataset

BACKBONE = {"name": "timm", "model_name": "resnet18", "pretrained": False, "image_size": 32,
            "layers": [0, 1], "pooling": "grid"}


def _swept(replicates: int = 1) -> dict:
    # a huge alpha shrinks every weight to ~0 (no signal on validation); alpha 1 fits it
    return {"ridge": {"recipe": "frozen-features", "backbone": BACKBONE,
                      "mapper": {"name": "ridge", "n_folds": 3},
                      "sweep": {"mapper.alphas": [[1.0e7], [1.0]]}, "replicates": replicates}}


def test_validation_split_is_seeded_disjoint_and_sized():
    train = np.arange(3, 103)
    fit, val = validation_split(train, 0.2, seed=0)
    assert len(val) == 20 and len(fit) == 80
    assert not np.intersect1d(fit, val).size and set(fit) | set(val) == set(train)
    np.testing.assert_array_equal(validation_split(train, 0.2, seed=0)[1], val)
    assert not np.array_equal(validation_split(train, 0.2, seed=1)[1], val)
    assert len(validation_split(np.arange(4), 0.01, 0)[1]) == 2  # at least 2 held out
    with pytest.raises(ValueError, match="at least 4 training images"):
        validation_split(np.arange(3), 0.5, 0)


def test_selection_score_metrics():
    rng = np.random.default_rng(0)
    measured = rng.normal(size=(50, 6))
    assert selection_score(measured, measured, "median_r2") == pytest.approx(1.0)
    assert selection_score(measured, -measured, "mean_pearson") == pytest.approx(-1.0)
    assert selection_score(measured, -measured, "mean_pearson_squared") == pytest.approx(1.0)
    noisy = measured + rng.normal(size=measured.shape)
    assert selection_score(measured, noisy, "median_pearson") < 0.9
    with pytest.raises(ValueError, match="unknown selection metric 'best'"):
        selection_score(measured, noisy, "best")


def test_select_point_averages_over_seeds_and_keeps_the_first_of_ties():
    entries = [({"a": 1}, 0, 0.50), ({"a": 1}, 1, 0.10),   # mean 0.30
               ({"a": 2}, 0, 0.40), ({"a": 2}, 1, 0.30),   # mean 0.35: chosen
               ({"a": 3}, 0, 0.35), ({"a": 3}, 1, 0.35)]   # a tie, later
    selection = select_point("m", "s", "median_r2", 10, entries)
    assert selection.chosen == {"a": 2}
    by_point = {p["point"]["a"]: p for p in selection.points}
    assert by_point[1]["mean"] == pytest.approx(0.30) and by_point[1]["seeds"] == [0, 1]
    assert by_point[2]["chosen"] and not by_point[3]["chosen"]
    nan = select_point("m", "s", "median_r2", 10, [({"a": 1}, 0, float("nan")), ({"a": 2}, 0, -5.0)])
    assert nan.chosen == {"a": 2}  # a point without a finite score is never chosen


def test_replicates_are_a_seed_dimension():
    model = ModelConfig.model_validate({"recipe": "r", "x": 1, "sweep": {"x": [1, 2]},
                                        "replicates": 3})
    variants = expand_model("m", model, seed=10)
    assert [v.name for v in variants][:3] == ["m@x=1,seed=10", "m@x=1,seed=11", "m@x=1,seed=12"]
    assert [v.seed for v in variants] == [10, 11, 12] * 2
    assert all("seed" not in v.params for v in variants) and variants[-1].choice == {"x": 2}
    with pytest.raises(ValueError, match="either replicates or sweep"):
        ModelConfig.model_validate({"recipe": "r", "sweep": {"seed": [0, 1]}, "replicates": 2})
    with pytest.raises(ValueError, match="takes integers"):
        ModelConfig.model_validate({"recipe": "r", "sweep": {"seed": [0.5]}})


def test_sweep_point_is_selected_on_validation_and_is_the_headline(tmp_path):
    root = tmp_path / "study"
    write_volume_dataset(root)
    result = run_toy_registry(root, tmp_path, _swept(replicates=2))
    run = result.run_dir
    record = json.loads((run / "models" / "ridge" / "sub-01" / "selection.json").read_text())
    assert record["on"] == "validation" and record["chosen"] == {"mapper.alphas": [1.0]}
    n_val = record["n_validation_images"]
    assert n_val == round(0.1 * N_TRAIN)
    scores = {p["point"]["mapper.alphas"][0]: p for p in record["points"]}
    assert scores[1.0]["mean"] > scores[1.0e7]["mean"] and scores[1.0]["seeds"] == [0, 1]
    headline = read_netcdf(run / "models" / "ridge" / "sub-01" / "scores.nc")
    point = read_netcdf(run / "models" / "ridge@mapper.alphas=[1.0],seed=0" / "sub-01" / "scores.nc")
    np.testing.assert_array_equal(headline.pearson.values, point.pearson.values)
    assert json.loads(headline.attrs["selected_point"]) == {"mapper.alphas": [1.0], "seed": 0}
    assert point.attrs["n_train_images"] == N_TRAIN - n_val  # points never see validation images
    assert json.loads(headline.attrs["sweep_point"]) == {}
    # the summary's models are the headlines; the points live in the sweep table
    assert set(result.summary.model) == {"ridge"}
    table = result.sweep
    assert list(table["n_seeds"]) == [2, 2] and "all (mean) sd" in table.columns
    assert table.loc[("ridge", "mapper.alphas=[1.0]"), "selected"] == "sub-01"
    assert "validation median_r2" in table.columns
    text = (run / "summary.txt").read_text()
    assert "selected on validation" in text and "±" in text
    # the saved encoder of the headline is the chosen point's, relabelled
    status = json.loads((run / "models" / "ridge" / "sub-01" / "encoder.status.json").read_text())
    assert status["model"] == "ridge" and status["saved"]
    assert status["path"] == "models/ridge/sub-01/encoder"
    import neuroenc

    encoder = neuroenc.load_encoder(run, "ridge", "sub-01")
    images = sorted((root / "sub-01" / "images" / "test").glob("*.png"))
    predicted = read_netcdf(run / "models" / "ridge" / "sub-01" / "predictions.nc").predicted.values
    np.testing.assert_allclose(np.asarray(encoder.predict(images)), predicted,
                               rtol=1e-4, atol=1e-4)
    # the report's sweep section: the selected point against the sweep's first point
    from neuroenc.viz.report import write_report

    from neuroenc.viz import plotting

    fig = plotting.plot_sweep(run, "pearson", model="ridge")  # seeds averaged: one x per point
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == 2 and "2 seeds" in fig._suptitle.get_text()
    html = write_report(run, n_boot=50, max_surface_maps=0).read_text()
    assert "ridge (selected point) minus ridge@mapper.alphas=[1e7],seed=0" in html.replace(
        "10000000.0", "1e7") and "fraction_a_better" in html


def test_selection_never_reads_the_scored_split(tmp_path):
    """Two studies that differ only in their test fMRI select the same point with the same
    validation scores: the scored split takes no part in the choice."""
    records = []
    for name, scramble in (("real", False), ("scrambled", True)):
        root = tmp_path / name
        write_volume_dataset(root)
        if scramble:
            path = root / "sub-01" / "responses" / "test.npy"
            test = np.load(path)
            np.save(path, np.random.default_rng(1).permutation(test[::-1]).astype(np.float32))
        result = run_toy_registry(root, tmp_path / name, _swept())
        records.append(json.loads(
            (result.run_dir / "models" / "ridge" / "sub-01" / "selection.json").read_text()))
    assert records[0]["chosen"] == records[1]["chosen"]
    assert [p["scores"] for p in records[0]["points"]] == [p["scores"] for p in records[1]["points"]]


def test_without_test_fmri_the_submission_is_a_refit_on_all_training_images(tmp_path):
    root = tmp_path / "study"
    write_volume_dataset(root)
    holdout = run_toy_registry(root, tmp_path / "a", _swept(),
                               evaluation={"split": "holdout", "metrics": ["pearson"]})
    submission = np.load(holdout.run_dir / "submission" / "ridge" / "sub-01" / "all_pred_test.npy")
    # the same settings fitted on every training image, as a plain model scored on test
    plain = run_toy_registry(root, tmp_path / "b", {"ridge": {
        "recipe": "frozen-features", "backbone": BACKBONE,
        "mapper": {"name": "ridge", "n_folds": 3, "alphas": [1.0]}}})
    reference = np.load(plain.run_dir / "submission" / "ridge" / "sub-01" / "all_pred_test.npy")
    np.testing.assert_allclose(submission, reference, rtol=1e-5, atol=1e-5)
    point = np.load(holdout.run_dir / "submission" / "ridge@mapper.alphas=[1.0]" / "sub-01"
                    / "all_pred_test.npy")
    assert np.abs(point - reference).max() > 1e-4  # the point itself saw fewer images


def test_the_selection_block_reads_yaml_on_and_rejects_the_unknown(tmp_path):
    from neuroenc.core.config import RegistryError, load_registry

    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodels: {m: {recipe: frozen-features}}\n"
                    "selection: {on: validation, fraction: 0.2, metric: mean_pearson}\n")
    registry = load_registry(path)  # YAML 1.1 reads the key `on` as true
    assert registry.selection.on == "validation" and registry.selection.fraction == 0.2
    path.write_text("name: x\nmodels: {m: {recipe: frozen-features}}\n"
                    "selection: {on: test}\n")
    with pytest.raises(RegistryError, match=r"selection\.on"):
        load_registry(path)
