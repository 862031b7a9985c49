"""Paired comparisons: bootstrap over images, checked against a brute-force loop and a run."""

from __future__ import annotations

import numpy as np
import pytest
from test_folder_dataset import run_toy_registry, write_volume_dataset
from typer.testing import CliRunner

from neuroenc.evaluation import metrics
from neuroenc.evaluation.compare import compare_run, paired_comparison


def _problem(seed=0, n_images=60, n_vertices=30):
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(n_images, n_vertices))
    measured = signal + rng.normal(size=signal.shape)
    good = signal + 0.5 * rng.normal(size=signal.shape)
    bad = signal + 2.0 * rng.normal(size=signal.shape)
    return measured, good, bad


def test_paired_bootstrap_equals_a_brute_force_loop():
    measured, good, bad = _problem()
    groups = {("all", "all vertices"): np.ones(30, bool), ("x", "first"): np.arange(30) < 10}
    table, resampled = paired_comparison(measured, good, bad, groups, variable="pearson",
                                         statistic="median", n_boot=200, seed=7, chunk=37)
    # the same resamples, drawn the same way, written out image by image
    rng = np.random.default_rng(7)
    n = len(measured)
    expected = {key: [] for key in groups}
    for start in range(0, 200, 37):
        for counts in rng.multinomial(n, np.full(n, 1 / n), size=min(37, 200 - start)):
            rows = np.repeat(np.arange(n), counts)
            a = metrics.pearson_r(measured[rows], good[rows])
            b = metrics.pearson_r(measured[rows], bad[rows])
            for key, mask in groups.items():
                expected[key].append(np.median(a[mask]) - np.median(b[mask]))
    for key in groups:
        np.testing.assert_allclose(resampled[key], expected[key], atol=1e-9)
        row = table[table.key == key].iloc[0]
        low, high = np.percentile(expected[key], [2.5, 97.5])
        assert row.ci_low == pytest.approx(low) and row.ci_high == pytest.approx(high)
        a = np.median(metrics.pearson_r(measured, good)[groups[key]])
        b = np.median(metrics.pearson_r(measured, bad)[groups[key]])
        assert row.difference == pytest.approx(a - b)
    # the better model wins clearly, and on (nearly) every vertex
    overall = table.iloc[0]
    assert overall.ci_low > 0 and overall.fraction_a_better > 0.9


def test_identical_models_differ_by_exactly_zero():
    measured, good, _ = _problem(1)
    nc = np.full(30, 0.5)
    table, _ = paired_comparison(measured, good, good.copy(), {("all", None): np.ones(30, bool)},
                                 noise_ceiling=nc, n_boot=50)
    row = table.iloc[0]
    assert row.difference == 0 and row.ci_low == 0 and row.ci_high == 0
    assert row.fraction_a_better == 0


def test_noise_normalized_needs_the_ceiling_and_shapes_must_match():
    measured, good, bad = _problem(2)
    with pytest.raises(ValueError, match="noise ceiling"):
        paired_comparison(measured, good, bad, {("all", None): np.ones(30, bool)}, n_boot=5)
    with pytest.raises(ValueError, match="expected the same"):
        paired_comparison(measured, good[:-1], bad, {("all", None): np.ones(30, bool)},
                          variable="pearson", n_boot=5)


def test_compare_command_on_a_run(tmp_path):
    from neuroenc.cli import app

    root = tmp_path / "study"
    write_volume_dataset(root)
    backbone = {"name": "timm", "model_name": "resnet18", "pretrained": False, "image_size": 32,
                "pooling": "grid"}
    result = run_toy_registry(root, tmp_path, {
        "deep": {"recipe": "frozen-features", "backbone": {**backbone, "layers": [0, 1]},
                 "mapper": {"name": "ridge", "n_folds": 3}},
        "coarse": {"recipe": "frozen-features", "backbone": {**backbone, "layers": [4], "pooling": "avg"},
                   "mapper": {"name": "ridge", "n_folds": 3}}})

    table = compare_run(result.run_dir, "deep", "coarse", n_boot=100)
    assert table.attrs["variable"] == "noise_normalized"
    assert list(table.roi_class) == ["all", "visual"]
    overall = table.iloc[0]
    assert overall.ci_low <= overall.difference <= overall.ci_high
    # the deep model is scored as the run scored it: its median over vertices
    from neuroenc.evaluation.results import read_netcdf

    ds = read_netcdf(result.run_dir / "models" / "deep" / "sub-01" / "scores.nc")
    assert overall.a == pytest.approx(float(np.median(ds.noise_normalized.values)), rel=1e-5)
    out = tmp_path / "cmp.csv"
    run = CliRunner().invoke(app, ["compare", str(result.run_dir), "deep", "coarse", "--n-boot",
                                   "50", "--var", "pearson", "-o", str(out)])
    assert run.exit_code == 0, run.output
    assert "deep - coarse" in run.output and out.is_file()
    bad = CliRunner().invoke(app, ["compare", str(result.run_dir), "deep", "nope"])
    assert bad.exit_code == 1 and "no model 'nope'" in bad.output
