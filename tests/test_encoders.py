"""Saved encoders (issue 12): saved by every run, loaded in a fresh process, checked, used."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neuroenc.cli import app
from neuroenc.core.encoders import EncoderError, load_encoder, save_encoder
from neuroenc.evaluation.results import read_netcdf

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

REGISTRY = """
name: enc
seed: 2
dataset: {{kind: algonauts2023, root: {root}, subjects: [1]}}
models:
  ridge:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 32, layers: [2, 4]}}
    mapper: {{name: ridge, n_folds: 3}}
  ridge-file:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, checkpoint_path: {ckpt},
               image_size: 32, layers: [3]}}
    mapper: {{name: ridge, n_folds: 3}}
compute: {{cache_dir: {cache}, batch_size: 16, device: cpu}}
output: {{dir: {out}}}
"""


def _resnet_weights(path: Path, seed: int) -> Path:
    import timm
    import torch

    torch.manual_seed(seed)
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def run(small_demo_root, tmp_path_factory):
    """A finished run with two saved encoders (random weights; weights from a file)."""
    folder = tmp_path_factory.mktemp("encoders")
    ckpt = _resnet_weights(folder / "resnet18.pth", seed=5)
    registry = folder / "registry.yaml"
    registry.write_text(textwrap.dedent(REGISTRY.format(root=small_demo_root, ckpt=ckpt,
                                                        cache=folder / "cache", out=folder / "out")))
    result = runner.invoke(app, ["run", str(registry), "--no-progress"])
    assert result.exit_code == 0, result.output
    return (folder / "out" / "enc" / "latest").resolve(), ckpt


def _test_images(root: Path) -> list[Path]:
    return sorted((root / "subj01" / "test_split" / "test_images").glob("*.png"))


def test_a_run_saves_every_encoder_and_a_manifest(run):
    run_dir, _ = run
    manifest = json.loads((run_dir / "encoders.json").read_text())
    assert [(e["model"], e["subject"], e["saved"]) for e in manifest["encoders"]] == [
        ("ridge", "subj01", True), ("ridge-file", "subj01", True)]
    from safetensors.numpy import load_file

    folder = run_dir / manifest["encoders"][0]["path"]
    record = json.loads((folder / "encoder.json").read_text())
    arrays = load_file(str(folder / "arrays.safetensors"))
    n_vertices = read_netcdf(run_dir / "models/ridge/subj01/scores.nc").sizes["vertex"]
    assert arrays["coef"].shape == (128 + 512, n_vertices)  # resnet18 levels 2 and 4, avg-pooled
    assert set(arrays) == {"coef", "intercept", "best_alphas", "x_mean", "x_scale"}
    assert record["n_vertices"] == n_vertices and record["recipe"] == "frozen-features"
    assert record["meta"]["backbone"]["identity"]["model_name"] == "resnet18"
    assert len(record["meta"]["backbone"]["weights_sha256"]) == 64
    file_record = json.loads((run_dir / "models/ridge-file/subj01/encoder/encoder.json").read_text())
    assert file_record["meta"]["backbone"]["checkpoint_sha256"]
    assert manifest["encoders"][0]["size_bytes"] > arrays["coef"].nbytes


def test_loaded_in_a_fresh_process_it_reproduces_the_saved_test_predictions(run, small_demo_root,
                                                                             tmp_path):
    run_dir, _ = run
    script = textwrap.dedent(f"""
        import numpy as np, neuroenc
        from neuroenc.evaluation.results import read_netcdf
        enc = neuroenc.load_encoder({str(run_dir)!r}, "ridge", 1)
        saved = read_netcdf({str(run_dir / 'models/ridge/subj01/predictions.nc')!r})
        images = {[str(p) for p in _test_images(small_demo_root)]!r}
        got = enc.predict(images)
        assert list(got.image.values) == list(saved.image.values)
        print(float(np.abs(got.values - saved.predicted.values).max()),
              float(np.abs(saved.predicted.values).max()))
    """)
    cache = tmp_path / "empty-cache"
    env = {**os.environ, "NEUROENC_CACHE_DIR": str(cache),
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins"),
                                          os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    max_diff, scale = map(float, out.stdout.split())
    assert scale > 0.1 and max_diff < 1e-4 * scale, (max_diff, scale)
    assert not (cache / "features").exists()  # predicted from the images, not a cache


def test_every_kind_of_input_gives_the_same_predictions(run, small_demo_root):
    from PIL import Image

    run_dir, _ = run
    enc = load_encoder(run_dir, "ridge", "subj01")
    paths = _test_images(small_demo_root)[:6]
    by_path = enc.predict(paths, batch_size=4)
    by_folder = enc.predict(paths[0].parent)
    pil = [Image.open(p).convert("RGB") for p in paths]
    by_pil = enc.predict(pil)
    by_array = enc.predict(np.stack([np.asarray(im) for im in pil]))
    assert by_path.dims == ("image", "vertex") and by_path.shape == (6, enc.n_vertices)
    np.testing.assert_allclose(by_folder.values[:6], by_path.values, atol=1e-5)
    np.testing.assert_allclose(by_pil.values, by_path.values, atol=1e-5)
    np.testing.assert_allclose(by_array.values, by_path.values, atol=1e-5)
    scores = read_netcdf(run_dir / "models/ridge/subj01/scores.nc")
    for coord in ("hemisphere", "fsaverage_index", "roi_floc_faces"):
        assert (by_path[coord].values == scores[coord].values).all()
    ffa = enc.roi_mean(by_path, "FFA-1")
    mask = scores.roi_floc_faces.values == "FFA-1"
    np.testing.assert_allclose(ffa.values, by_path.values[:, mask].mean(axis=1), rtol=1e-6)
    ranked = enc.rank_images(by_path, "FFA-1")
    assert (np.diff(ranked.values) <= 0).all()
    with pytest.raises(EncoderError, match="no ROI called 'FFA1'.*did you mean 'FFA-1'"):
        enc.roi_mask("FFA1")


def test_missing_or_different_backbone_weights_are_named(run, small_demo_root, tmp_path):
    run_dir, ckpt = run
    moved = tmp_path / "elsewhere.pth"
    shutil.move(ckpt, moved)
    try:
        with pytest.raises(EncoderError, match=f"weights are missing.*{ckpt.name}.*checkpoint_path"):
            load_encoder(run_dir, "ridge-file", 1)
        other = _resnet_weights(tmp_path / "other.pth", seed=6)
        with pytest.raises(EncoderError, match="other.pth differs from the one the encoder was fitted on"):
            load_encoder(run_dir, "ridge-file", 1, checkpoint_path=other)
        enc = load_encoder(run_dir, "ridge-file", 1, checkpoint_path=moved)  # same content
        saved = read_netcdf(run_dir / "models/ridge-file/subj01/predictions.nc")
        got = enc.predict(_test_images(small_demo_root)[:4])
        np.testing.assert_allclose(got.values, saved.predicted.values[:4], atol=1e-4)
    finally:
        shutil.move(moved, ckpt)


def test_random_weights_from_another_seed_are_refused(run, tmp_path):
    run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    record_file = copy / "models/ridge/subj01/encoder/encoder.json"
    record = json.loads(record_file.read_text())
    record["seed"] = 3
    record_file.write_text(json.dumps(record))
    with pytest.raises(EncoderError, match="weights differ from those the encoder was fitted on"):
        load_encoder(copy, "ridge", 1)
    with pytest.raises(EncoderError, match="no model 'ridg'.*did you mean 'ridge'"):
        load_encoder(copy, "ridg", 1)


def test_unsavable_recipes_say_why_and_float16_halves_the_weights(run, tmp_path):
    run_dir, _ = run
    coords = {"hemisphere": np.array(["lh", "rh"])}
    common = dict(model_name="m", subject="s", recipe="r", params={}, vertex_coords=coords,
                  attrs={}, seed=0)
    entry = save_encoder(object(), tmp_path / "none", **common)
    assert entry["saved"] is False and "has no state()" in entry["reason"]
    assert not (tmp_path / "none").exists()

    class Linear:
        def state(self):
            return {"coef": np.ones((300, 2)), "intercept": np.zeros(2),
                    "best_alphas": np.full(2, 1e7)}, {"readout": "linear"}
    from safetensors.numpy import load_file

    sizes = {}
    for dtype in ("float32", "float16"):
        save_encoder(Linear(), tmp_path / dtype, dtype=dtype, **common)
        arrays = load_file(str(tmp_path / dtype / "arrays.safetensors"))
        assert arrays["coef"].dtype == dtype and arrays["best_alphas"][0] == 1e7  # alphas stay float32
        sizes[dtype] = (tmp_path / dtype / "arrays.safetensors").stat().st_size
    assert sizes["float16"] < 0.6 * sizes["float32"]


def test_predict_command_on_a_folder_of_pngs(run, small_demo_root, tmp_path):
    from PIL import Image

    run_dir, _ = run
    folder = tmp_path / "new images"
    folder.mkdir()
    for p in _test_images(small_demo_root)[:7]:
        shutil.copy(p, folder / p.name)
    out = tmp_path / "out" / "pred.nc"
    result = runner.invoke(app, ["predict", str(run_dir), str(folder), "--model", "ridge",
                                 "--subject", "1", "-o", str(out), "--roi", "FFA-1", "--top", "3",
                                 "--batch-size", "3", "--plot", "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = read_netcdf(out)
    enc = load_encoder(run_dir, "ridge", 1)
    expected = enc.predict(folder)
    assert ds.predicted.shape == (7, enc.n_vertices)
    np.testing.assert_allclose(ds.predicted.values, expected.values, atol=1e-5)
    assert (ds.roi_floc_faces.values == expected.roi_floc_faces.values).all()
    import pandas as pd

    ranking = pd.read_csv(tmp_path / "out" / "pred_FFA-1_ranking.csv")
    means = enc.roi_mean(expected, "FFA-1")
    assert list(ranking.image) == list(means.image.values[np.argsort(-means.values, kind="stable")])
    assert ranking.image[0] in result.output and ranking.image.iloc[-1] in result.output
    with Image.open(tmp_path / "out" / "pred_FFA-1_top3.png") as sheet:
        assert sheet.width > 3 * 100 and sheet.height > 2 * 100
    with Image.open(tmp_path / "out" / "pred_mean_map.png") as surface:
        assert surface.width > 400
    bad = runner.invoke(app, ["predict", str(run_dir), str(folder), "-m", "ridge", "-s", "1",
                              "-o", str(tmp_path / "x.nc"), "--roi", "FFA1", "--no-progress"])
    assert bad.exit_code == 1 and "did you mean 'FFA-1'" in bad.output
    assert not (tmp_path / "x.nc").exists()


def test_a_trained_llm_vem_encoder_with_a_fine_tuned_backbone_round_trips(manager, small_demo_root,
                                                                           tmp_path):
    from neuroenc.core.context import RunContext, seed_everything
    from neuroenc.core.encoders import save_part_encoder
    from neuroenc_builtins.algonauts import read_subject

    data = read_subject(small_demo_root, "subj01")
    params = {"backbone": {"name": "eva02", "model_name": "eva02_tiny_patch14_224",
                           "pretrained": False, "image_size": 28, "layers": [0, 1],
                           "model_kwargs": {"depth": 2}},
              "mapper": {"name": "pca-head", "n_components": 16, "low_rank": 32},
              "alignment": None, "validation_fraction": 0.2,
              "stages": [{"name": "head", "train": ["head"], "epochs": 1, "lr": 3e-3,
                          "warmup_epochs": 0},
                         {"name": "tune", "train": ["head", "backbone.blocks.*.attn.*"],
                          "epochs": 1, "lr": 1e-3, "warmup_epochs": 0}]}
    ctx = RunContext(manager=manager, cache_dir=tmp_path / "cache", seed=7, batch_size=16,
                     show_progress=False)
    seed_everything(7)
    model = ctx.build("recipe", {"name": "llm-vem", **params})
    model.fit(data, np.arange(len(data.train_images)))
    expected = model.predict(data, "test")
    part = tmp_path / "run" / "models" / "llm" / "subj01"
    entry = save_part_encoder(model, part, model_name="llm", subject="subj01", recipe="llm-vem",
                              params=params, vertex_coords=data.vertex_coords(),
                              attrs=data.result_attrs(), seed=7)
    assert entry["saved"], entry
    from safetensors.numpy import load_file

    arrays = load_file(str(part / "encoder" / "arrays.safetensors"))
    tuned = [n for n in arrays if n.startswith("backbone.")]
    assert tuned and all(".attn." in n for n in tuned)  # only what the stages trained
    enc = load_encoder(tmp_path / "run", "llm", 1, manager=manager, cache_dir=tmp_path / "c2")
    np.testing.assert_allclose(enc.predict(data.test_images).values, expected, atol=1e-4)
