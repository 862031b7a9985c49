"""The analysis layer: loading runs side by side, ROI summaries and their spread."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from neuroenc.evaluation.analysis import (across_subjects, bootstrap_median_ci, challenge_scores,
                               load_results, load_results_long, model_difference, roi_order,
                               roi_table, select_model)
from neuroenc.evaluation.results import result_dataset, roi_summary, summarize, write_netcdf
from neuroenc.core.runner import challenge_means

ROIS = {"roi_prf_visualrois": ["V1v", "V1d", "hV4"], "roi_floc_faces": ["FFA-1", "OFA"]}


def fake_coords(n_lh: int, n_rh: int, seed: int) -> dict[str, np.ndarray]:
    """Vertex coordinates shaped like SubjectData.vertex_coords() (ROIs in blocks)."""
    rng = np.random.default_rng(seed)
    n = n_lh + n_rh
    coords = {
        "hemisphere": np.array(["lh"] * n_lh + ["rh"] * n_rh),
        "challenge_index": np.concatenate([np.arange(n_lh), np.arange(n_rh)]),
        "fsaverage_index": np.concatenate([np.sort(rng.choice(10242, n_lh, replace=False)),
                                           np.sort(rng.choice(10242, n_rh, replace=False))]),
    }
    for name, rois in ROIS.items():
        labels = np.array([""] * n, dtype=object)
        blocks = np.array_split(rng.permutation(n)[: n // 2], len(rois))
        for roi, block in zip(rois, blocks):
            labels[block] = roi
        coords[name] = labels.astype(str)
    return coords


def make_run(folder, models: dict[str, float], subjects=(("subj01", 30, 25), ("subj02", 28, 20)),
             extra: dict[str, str] | None = None, seed: int = 0):
    """Write a run folder of results whose noise_normalized = offset + vertex noise."""
    rng = np.random.default_rng(seed)
    truth = {}
    for s, (subject, n_lh, n_rh) in enumerate(subjects):
        coords = fake_coords(n_lh, n_rh, seed=s)
        nc = rng.uniform(0.2, 0.9, n_lh + n_rh)
        for model, offset in models.items():
            values = offset + rng.normal(0, 5, n_lh + n_rh)
            scores = {"noise_normalized": values, "pearson": values / 100}
            if extra and extra.get(model):
                scores[extra[model]] = values / 10
            ds = result_dataset(model=model, subject=subject, vertex_coords=coords, scores=scores,
                                noise_ceiling=nc,
                                attrs={"split": "test", "fsaverage_mesh": "fsaverage5",
                                       "model_config": {"recipe": "x", "offset": offset}})
            write_netcdf(ds, folder / "models" / model / subject / "scores.nc")
            truth[model, subject] = ds
    return truth


@pytest.fixture
def run(tmp_path):
    truth = make_run(tmp_path / "run", {"a": 50.0, "b": 40.0}, extra={"a": "vp_shared"})
    return tmp_path / "run", truth


def test_load_results_stacks_models_per_subject(run):
    folder, truth = run
    results = load_results(folder)
    assert list(results) == ["subj01", "subj02"]
    ds = results["subj01"]
    assert ds.noise_normalized.dims == ("model", "vertex")
    assert list(ds.model.values) == ["a", "b"]
    assert ds.sizes["vertex"] == 55 and results["subj02"].sizes["vertex"] == 48
    np.testing.assert_array_equal(ds.noise_normalized.sel(model="b").values,
                                  truth["b", "subj01"].noise_normalized.values)
    # the shared noise ceiling stays per vertex; per-model attributes become coordinates
    assert ds.noise_ceiling.dims == ("vertex",)
    configs = [json.loads(c) for c in ds.model_config.values]
    assert [c["offset"] for c in configs] == [50.0, 40.0]
    assert ds.attrs["split"] == "test" and ds.attrs["fsaverage_mesh"] == "fsaverage5"
    # a variable only one model has: NaN for the other, dropped when that one is selected
    assert np.isnan(ds.vp_shared.sel(model="b")).all()
    assert "vp_shared" not in select_model(ds, "b") and "vp_shared" in select_model(ds, "a")


def test_select_model_gives_back_the_original_result(run):
    folder, truth = run
    one = select_model(load_results(folder)["subj02"], "a")
    original = truth["a", "subj02"]
    for var in ("noise_normalized", "pearson", "noise_ceiling"):
        np.testing.assert_array_equal(one[var].values, original[var].values)
    assert one.attrs["model"] == "a" and one.attrs["subject"] == "subj02"
    pd.testing.assert_frame_equal(roi_summary(one, "noise_normalized"),
                                  roi_summary(original, "noise_normalized"))


def test_unknown_model_names_the_models(run):
    folder, _ = run
    ds = load_results(folder)["subj01"]
    with pytest.raises(KeyError, match=r"no model 'aa'; found: a, b \(did you mean 'a'\?\)"):
        select_model(ds, "aa")
    with pytest.raises(KeyError, match="2 models, name one of: a, b"):
        select_model(ds)
    with pytest.raises(ValueError, match=r"models \['c'\] not in the results; found: a, b"):
        load_results(folder, models=["c"])


def test_two_runs_of_one_model_are_labelled_by_run(tmp_path):
    make_run(tmp_path / "run1", {"a": 50.0}, seed=1)
    make_run(tmp_path / "run2", {"a": 30.0, "c": 20.0}, seed=2)
    results = load_results([tmp_path / "run1", tmp_path / "run2"])
    assert list(results["subj01"].model.values) == ["run1/a", "run2/a", "c"]
    scores = challenge_scores(results)
    assert scores["run1/a"] > scores["run2/a"] > scores["c"]


def test_results_of_different_datasets_do_not_stack(tmp_path):
    make_run(tmp_path / "run1", {"a": 50.0}, seed=1)
    make_run(tmp_path / "run2", {"b": 30.0}, subjects=(("subj01", 31, 25),), seed=2)
    with pytest.raises(ValueError, match="subj01: model 'b' .* has different vertices"):
        load_results([tmp_path / "run1", tmp_path / "run2"])


def test_missing_run_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        load_results(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty: no results \(expected models/"):
        load_results(tmp_path / "empty")


def test_roi_table_matches_hand_computed_statistics(run):
    folder, truth = run
    table = roi_table(load_results(folder), "noise_normalized", n_boot=200, seed=3)
    ds = truth["b", "subj02"]
    values = ds.noise_normalized.values
    row = table[(table.model == "b") & (table.subject == "subj02") & (table.roi == "OFA")].iloc[0]
    sel = values[ds.roi_floc_faces.values == "OFA"]
    assert row.n_vertices == sel.size
    assert row["median"] == pytest.approx(np.median(sel))
    assert row["mean"] == pytest.approx(np.mean(sel))
    assert row.median_ci_low <= row["median"] <= row.median_ci_high
    everything = table[(table.model == "b") & (table.subject == "subj02") & (table.roi_class == "all")]
    assert everything.iloc[0]["mean"] == pytest.approx(values.mean())
    # reproducible with the seed, and a group's CI does not depend on the other groups
    again = roi_table(load_results(folder, models=["b"]), "noise_normalized", n_boot=200, seed=3)
    pd.testing.assert_frame_equal(table[table.model == "b"].reset_index(drop=True),
                                  again.reset_index(drop=True))
    other = roi_table(load_results(folder), "noise_normalized", n_boot=200, seed=4)
    assert not np.allclose(other.median_ci_low, table.median_ci_low)


def test_roi_class_level_pools_the_rois_of_a_class(run):
    folder, truth = run
    table = roi_table(load_results(folder), level="roi_class", n_boot=0)
    assert "roi" not in table and "median_ci_low" not in table
    ds = truth["a", "subj01"]
    inside = ds.roi_prf_visualrois.values != ""
    row = table[(table.model == "a") & (table.subject == "subj01")
                & (table.roi_class == "prf-visualrois")].iloc[0]
    assert row.n_vertices == inside.sum()
    assert row["median"] == pytest.approx(np.median(ds.noise_normalized.values[inside]))


def test_across_subjects_gives_std_and_sem_of_the_subject_medians(run):
    folder, truth = run
    spread = across_subjects(roi_table(load_results(folder), n_boot=0))
    row = spread[(spread.model == "a") & (spread.roi == "V1d")].iloc[0]
    medians = [np.median(truth["a", s].noise_normalized.values[
        truth["a", s].roi_prf_visualrois.values == "V1d"]) for s in ("subj01", "subj02")]
    assert row.n_subjects == 2
    assert row["mean"] == pytest.approx(np.mean(medians))
    assert row["std"] == pytest.approx(np.std(medians, ddof=1))
    assert row["sem"] == pytest.approx(np.std(medians, ddof=1) / np.sqrt(2))


def test_challenge_scores_pool_every_vertex_of_every_subject(run):
    folder, truth = run
    results = load_results(folder)
    scores = challenge_scores(results)
    expected = np.concatenate([truth["a", s].noise_normalized.values for s in ("subj01", "subj02")])
    assert scores["a"] == pytest.approx(expected.mean(), rel=1e-6)
    # the same number the run summary prints
    means = challenge_means(summarize(truth.values()))
    assert scores["b"] == pytest.approx(means["b"], rel=1e-6)


def test_bootstrap_ci_has_the_width_of_the_median_standard_error():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 1, 2000)
    low, high = bootstrap_median_ci(values, n_boot=2000, rng=1)
    # the median of n normal samples has sd sqrt(pi/2)/sqrt(n)
    expected = 2 * 1.96 * np.sqrt(np.pi / 2) / np.sqrt(values.size)
    assert high - low == pytest.approx(expected, rel=0.25)
    assert low < 0 < high
    assert bootstrap_median_ci(values, n_boot=500, rng=5, chunk=3000) == \
        bootstrap_median_ci(values, n_boot=500, rng=5)
    assert np.isnan(bootstrap_median_ci(np.array([np.nan]))[0])


def test_long_table_and_model_difference(run):
    folder, truth = run
    long = load_results_long(folder, variables=["noise_normalized"])
    assert len(long) == 2 * (55 + 48)
    assert {"model", "subject", "vertex", "hemisphere", "roi_floc_faces", "noise_normalized"} <= set(long)
    sel = long[(long.model == "a") & (long.subject == "subj02")]
    np.testing.assert_array_equal(sel.noise_normalized.values, truth["a", "subj02"].noise_normalized.values)
    diff = model_difference(load_results(folder), "a", "b", "noise_normalized")
    np.testing.assert_allclose(diff["subj01"].values, truth["a", "subj01"].noise_normalized.values
                               - truth["b", "subj01"].noise_normalized.values)
    assert "fsaverage_index" in diff["subj01"].coords


def test_roi_order_follows_the_algonauts_labels():
    from neuroenc_builtins.algonauts import ROI_NAMES

    known = [n for names in ROI_NAMES.values() for n in names]
    assert roi_order(["hV4", "V1d", "new", "V1v", "EBA"], known) == ["V1v", "V1d", "hV4", "EBA", "new"]
    assert roi_order(["hV4", "V1d", "new"]) == ["hV4", "V1d", "new"]  # no known order: as seen


@pytest.mark.parametrize("with_headline", [True, False])
def test_leading_models_show_a_sweep_by_its_selected_point_never_its_test_best(tmp_path,
                                                                                with_headline):
    from neuroenc.evaluation.results import read_netcdf

    folder = tmp_path / "run"
    models = {"plain": 30.0, "sw@x=1": 20.0, "sw@x=2": 45.0, "other": 40.0}
    if with_headline:
        models["sw"] = 20.0  # validation selected x=1, though x=2 is better on test
    make_run(folder, models)
    for model in ("sw@x=1", "sw@x=2"):  # mark the sweep points as the runner does
        for subject in ("subj01", "subj02"):
            path = folder / "models" / model / subject / "scores.nc"
            ds = read_netcdf(path)
            ds.attrs.update(sweep_base="sw", sweep_point=json.dumps({"x": int(model[-1])}))
            write_netcdf(ds, path)
    from neuroenc.evaluation.analysis import leading_models

    expected = ["other", "plain", "sw" if with_headline else "sw@x=1"]
    assert leading_models(load_results(folder)) == expected
