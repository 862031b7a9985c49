"""The generic ``folder`` dataset: a volume-space study built from scratch, run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from neuroenc.core.config import load_registry, resolve_registry
from neuroenc.data.subject import DatasetError, SubjectData
from neuroenc.evaluation.metrics import noise_ceiling_from_ncsnr, noise_ceiling_from_trials
from neuroenc.core.plugins import PluginManager
from neuroenc.evaluation.results import read_netcdf
from neuroenc.core.runner import run_registry
from neuroenc_builtins.folder import FolderDataset, read_folder_subject

N_TRAIN, N_TEST, N_REPEATS = 60, 16, 3
SHAPE = (4, 5, 3)  # a small volume: 60 voxels
AFFINE = [[2.0, 0, 0, -4.0], [0, 2.0, 0, -6.0], [0, 0, 2.0, 0.0], [0, 0, 0, 1.0]]


def _images(folder: Path, n: int, rng: np.random.Generator) -> np.ndarray:
    """Write ``n`` PNGs of random quadrant brightness; return the brightness (n, 4)."""
    folder.mkdir(parents=True)
    levels = rng.uniform(0, 1, (n, 4))
    for i, lv in enumerate(levels):
        img = np.zeros((32, 32, 3), dtype=np.uint8)
        for q, (y, x) in enumerate([(0, 0), (0, 16), (16, 0), (16, 16)]):
            img[y:y + 16, x:x + 16] = int(lv[q] * 255)
        Image.fromarray(img).save(folder / f"stim{i:03d}.png")
    return levels


def write_volume_dataset(root: Path, *, seed: int = 0, subject: str = "sub-01") -> dict:
    """Write a one-subject volume dataset; return the ground truth."""
    rng = np.random.default_rng(seed)
    sub = root / subject
    train_levels = _images(sub / "images" / "train", N_TRAIN, rng)
    test_levels = _images(sub / "images" / "test", N_TEST, rng)
    ijk = np.stack(np.unravel_index(np.arange(np.prod(SHAPE)), SHAPE), axis=1)
    n_units = len(ijk)
    weights = rng.normal(0, 1, (4, n_units))
    weights[:, :10] = 0  # ten voxels carry no signal
    noise_sd = 0.5

    def trials(levels):
        signal = (levels - 0.5) @ weights
        return signal[None] + rng.normal(0, noise_sd, (N_REPEATS,) + signal.shape)

    train_trials, test_trials = trials(train_levels), trials(test_levels)
    test_trials[2, :4] = np.nan  # four test images shown twice only
    (sub / "responses").mkdir()
    np.save(sub / "responses" / "train.npy", train_trials.mean(0).astype(np.float32))
    np.save(sub / "responses" / "test.npy", np.nanmean(test_trials, 0).astype(np.float32))
    (sub / "trials").mkdir()
    np.save(sub / "trials" / "test.npy", test_trials.astype(np.float32))
    mni = np.c_[ijk, np.ones(n_units)] @ np.asarray(AFFINE).T
    header = "voxel_i\tvoxel_j\tvoxel_k\tmni_x\tmni_y\tmni_z"
    rows = [f"{i}\t{j}\t{k}\t{x}\t{y}\t{z}" for (i, j, k), (x, y, z, _) in zip(ijk, mni)]
    (sub / "units.tsv").write_text(header + "\n" + "\n".join(rows) + "\n")
    (sub / "rois").mkdir()
    labels = np.zeros(n_units, dtype=np.int64)
    labels[10:30], labels[30:45] = 2, 1
    np.save(sub / "rois" / "visual.npy", labels)
    (sub / "rois" / "visual.json").write_text(json.dumps({"1": "V1", "2": "LO"}))
    (root / "dataset.json").write_text(json.dumps({
        "name": "toy-volume", "space": "MNI152NLin2009cAsym", "volume_shape": list(SHAPE),
        "affine": AFFINE, "visual_field_deg": 10.0}))
    return {"ijk": ijk, "labels": labels, "test_trials": test_trials, "n_units": n_units}


def run_toy_registry(root: Path, tmp_path: Path, models: dict, **overrides):
    """Run ``models`` on the folder dataset at ``root`` (every subject); return the RunResult.

    ``overrides``: top-level registry keys to replace (``evaluation={...}``, ``seed=1``).
    """
    registry = {
        "name": "toy", "seed": 0,
        "dataset": {"kind": "folder", "root": str(root), "subjects": "all"},
        "models": models,
        "evaluation": {"split": "auto", "metrics": ["pearson", "r2", "noise_normalized"]},
        "compute": {"device": "cpu", "cache_dir": str(tmp_path / "cache")},
        "output": {"dir": str(tmp_path / "results")},
        **overrides,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(registry))
    manager = PluginManager(strict=True)
    return run_registry(resolve_registry(load_registry(path), manager), manager,
                        show_progress=False, log=lambda message: None)


@pytest.fixture()
def volume(tmp_path):
    truth = write_volume_dataset(tmp_path / "study")
    return tmp_path / "study", truth


def test_reads_a_volume_subject(volume):
    root, truth = volume
    reader = FolderDataset(root)
    assert reader.subjects() == ["sub-01"]
    data = reader.load("sub-01")
    assert isinstance(data, SubjectData)
    assert len(data.train_images) == N_TRAIN and len(data.test_images) == N_TEST
    assert data.train_images == sorted(data.train_images)
    assert data.responses("train").shape == (N_TRAIN, truth["n_units"])
    coords = data.vertex_coords()
    np.testing.assert_array_equal(np.c_[coords["voxel_i"], coords["voxel_j"], coords["voxel_k"]],
                                  truth["ijk"])
    assert coords["mni_x"][0] == -4.0
    names = np.array(["", "V1", "LO"])[truth["labels"]]
    np.testing.assert_array_equal(coords["roi_visual"], names)
    assert data.roi_order == {"visual": ["V1", "LO"]}
    assert data.unit_blocks() == {"all": truth["n_units"]}
    assert data.metadata["space"] == "MNI152NLin2009cAsym"
    assert data.metadata["visual_field_deg"] == 10.0
    assert data.result_attrs()["volume_shape"] == list(SHAPE)


def test_noise_ceiling_from_trials_is_nsd_formula(volume):
    root, truth = volume
    data = read_folder_subject(root, "sub-01")
    trials = truth["test_trials"].astype(np.float32).astype(np.float64)
    # by hand: pooled within-image variance, total variance, repeats per image
    counts = np.isfinite(trials[:, :, 0]).sum(0)
    means = np.nanmean(trials, 0)
    noise = np.nansum((trials - means) ** 2, axis=(0, 1)) / (counts - 1).sum()
    total = np.nanvar(trials.reshape(-1, trials.shape[2]), axis=0, ddof=1)
    ncsnr = np.sqrt(np.clip(total - noise, 0, None) / noise)
    n3, n2 = (counts == 3).sum(), (counts == 2).sum()
    expected = ncsnr**2 / (ncsnr**2 + (n3 / 3 + n2 / 2) / (n3 + n2))
    np.testing.assert_allclose(data.noise_ceiling(), expected, rtol=1e-6)
    np.testing.assert_allclose(noise_ceiling_from_trials(trials), expected, rtol=1e-6)
    assert np.allclose(expected, noise_ceiling_from_ncsnr(ncsnr, counts))
    # voxels without signal have a low ceiling, signal voxels a high one
    assert data.noise_ceiling()[:10].max() < 0.5 < np.median(data.noise_ceiling()[10:])


def test_runs_ridge_end_to_end_in_volume_space(volume, tmp_path):
    root, truth = volume
    backbone = {"name": "timm", "model_name": "resnet18", "pretrained": False, "image_size": 32,
                "layers": [0, 1], "pooling": "grid"}
    result = run_toy_registry(root, tmp_path, {"ridge": {
        "recipe": "frozen-features", "backbone": backbone, "mapper": {"name": "ridge", "n_folds": 3}}})
    ds = read_netcdf(result.run_dir / "models" / "ridge" / "sub-01" / "scores.nc")
    assert ds.sizes["vertex"] == truth["n_units"]
    assert {"voxel_i", "voxel_j", "voxel_k", "mni_x", "roi_visual"} <= set(ds.coords)
    assert json.loads(ds.attrs["volume_shape"]) == list(SHAPE)
    assert ds.attrs["space"] == "MNI152NLin2009cAsym"
    # quadrant brightness drives the signal voxels linearly: a random CNN's grid-pooled
    # features recover it on held-out test images; the no-signal voxels stay near 0
    assert np.median(ds.pearson.values[10:]) > 0.5
    assert np.median(np.abs(ds.pearson.values[:10])) < 0.4
    assert np.isfinite(ds.noise_normalized.values).all()
    submission = result.run_dir / "submission" / "ridge" / "sub-01" / "all_pred_test.npy"
    assert np.load(submission).shape == (N_TEST, truth["n_units"])
    predictions = read_netcdf(result.run_dir / "models" / "ridge" / "sub-01" / "predictions.nc")
    assert list(predictions.image_id.values[:2]) == ["stim000", "stim001"]
    assert "all" in set(result.summary.roi_class) and "visual" in set(result.summary.roi_class)


@pytest.mark.parametrize("fmt", ["h5", "nc"])
def test_responses_as_hdf5_or_netcdf(volume, fmt):
    root, truth = volume
    folder = root / "sub-01" / "responses"
    train = np.load(folder / "train.npy")
    (folder / "train.npy").unlink()
    if fmt == "h5":
        import h5py

        with h5py.File(folder / "train.h5", "w") as fh:
            fh["responses"] = train
    else:
        import xarray as xr

        xr.Dataset({"responses": (("image", "unit"), train)}).to_netcdf(
            folder / "train.nc", engine="h5netcdf")
    data = read_folder_subject(root, "sub-01")
    np.testing.assert_array_equal(data.responses("train"), train)


def _break(root: Path, how: str) -> str:
    sub = root / "sub-01"
    if how == "rows":
        np.save(sub / "responses" / "train.npy", np.zeros((N_TRAIN - 1, 60), np.float32))
        return "sub-01/responses/train.npy: 59 rows, but 60 train images"
    if how == "nan":
        r = np.load(sub / "responses" / "train.npy")
        r[3, 7] = np.nan
        np.save(sub / "responses" / "train.npy", r)
        return "first at row 3, column 7"
    if how == "test-units":
        np.save(sub / "responses" / "test.npy", np.zeros((N_TEST, 59), np.float32))
        return "sub-01/responses/test.npy: 59 units, but the training responses have 60"
    if how == "units":
        lines = (sub / "units.tsv").read_text().splitlines()
        (sub / "units.tsv").write_text("\n".join(lines[:-1]) + "\n")
        return "sub-01/units.tsv: 59 rows, but the responses have 60 units"
    if how == "roi-name":
        (sub / "rois" / "visual.json").write_text(json.dumps({"1": "V1"}))
        return "sub-01/rois/visual.npy: labels [2] have no name"
    if how == "roi-names-missing":
        (sub / "rois" / "visual.json").unlink()
        return "no visual.json or visual.tsv"
    if how == "trials":
        np.save(sub / "trials" / "test.npy", np.zeros((3, N_TEST + 1, 60), np.float32))
        return "sub-01/trials/test.npy: shape (3, 17, 60), but expected (n_repeats, 16, 60)"
    if how == "pickle":
        np.save(sub / "rois" / "visual.npy", np.array([{"a": 1}], dtype=object))
        return "sub-01/rois/visual.npy"
    if how == "metadata":
        (root / "dataset.json").write_text(json.dumps({"spcae": "MNI"}))
        return "dataset.json: unknown keys ['spcae']"
    if how == "image":
        (sub / "images" / "train" / "notes.txt").write_text("x")
        return "sub-01/images/train/notes.txt: not an image file"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["rows", "nan", "test-units", "units", "roi-name",
                                 "roi-names-missing", "trials", "pickle", "metadata", "image"])
def test_broken_layouts_name_the_file(volume, how):
    root, _ = volume
    expected = _break(root, how)
    with pytest.raises((DatasetError, ValueError)) as info:
        FolderDataset(root).load("sub-01")
    assert expected in str(info.value)


def test_unknown_subject_lists_the_available_ones(volume):
    root, _ = volume
    with pytest.raises(DatasetError, match="available: sub-01"):
        FolderDataset(root).load("sub-02")


def test_volume_results_plot_in_the_volume_and_report(volume, tmp_path):
    from PIL import Image as PILImage

    from neuroenc.evaluation.analysis import load_results
    from neuroenc.viz.plotting import plot_difference_map, plot_map
    from neuroenc.viz.report import write_report
    from neuroenc.viz.volume import volume_image

    root, truth = volume
    test_runs_ridge_end_to_end_in_volume_space(volume, tmp_path)
    run_dir = next((tmp_path / "results" / "toy").glob("2*"))
    results = load_results(run_dir)
    ds = results["sub-01"]
    one = ds.sel(model="ridge")
    image = volume_image(one.pearson, ds.attrs)
    assert image.shape == SHAPE
    np.testing.assert_allclose(image.affine, AFFINE)
    i, j, k = truth["ijk"][17]
    assert image.get_fdata()[i, j, k] == pytest.approx(float(one.pearson.values[17]), rel=1e-6)
    out = plot_map(ds, "pearson", model="ridge", dpi=50, out=tmp_path / "map.png")
    assert out is not None and PILImage.open(tmp_path / "map.png").size == (375, 140)
    plot_difference_map(ds, "ridge", "ridge", "pearson", dpi=50, out=tmp_path / "diff.png")
    assert (tmp_path / "diff.png").stat().st_size > 0
    page = write_report(run_dir, tmp_path / "report.html")
    html = Path(page).read_text()
    assert "Volume maps" in html and "data:image/png;base64" in html and "sub-01" in html
