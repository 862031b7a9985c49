"""Cache entries under concurrency, shared-cache file modes, and the sweep of leftovers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import forked
import numpy as np
import pytest
from PIL import Image

from neuroenc.core.cache import STALE_AFTER_S, atomic_dir, atomic_path, sweep_stale

def _extract_in_child(cache: str, images: str, go, results) -> None:
    """One of two twins: extract the same images into the same cache, counting batches."""
    from neuroenc.core.context import RunContext
    from neuroenc.stimuli.features import extract_features
    from neuroenc.core.plugins import PluginManager
    from neuroenc_builtins.backbones import TimmBackbone, TimmParams

    backbone = TimmBackbone(TimmParams(model_name="resnet18", pretrained=False, image_size=32,
                                       layers=[1, 2]))
    batches = []
    real = backbone.forward_features

    def counting(batch):
        batches.append(len(batch))
        time.sleep(0.3)  # each batch takes a while, so that the twins overlap for certain
        return real(batch)
    backbone.forward_features = counting
    context = RunContext(manager=PluginManager(load_entrypoints=False), cache_dir=Path(cache),
                         batch_size=4, show_progress=False)
    go.wait()
    feats = extract_features(backbone, sorted(Path(images).glob("*.png")), context)
    results.put({"batches": len(batches), "sums": {k: float(v.sum()) for k, v in feats.items()}})


def test_two_runs_on_one_cache_extract_once(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(images / f"{i}.png")
    ctx = forked.context()
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_extract_in_child, args=(str(tmp_path / "cache"), str(images),
                                                         go, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    go.set()
    outputs = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    # one process extracted all 3 batches, the other waited for the lock and reused them
    assert sorted(o["batches"] for o in outputs) == [0, 3]
    assert outputs[0]["sums"] == outputs[1]["sums"]
    entries = [p.name for p in (tmp_path / "cache" / "features").iterdir()]
    assert len(entries) == 1 and not entries[0].startswith(".")


def _train_in_child(cache: str, root: str, go, results) -> None:
    """One of two twins: fit the same llm-vem model on the same cache, counting training steps."""
    import torch

    from neuroenc.core.context import RunContext
    from neuroenc.core.plugins import PluginManager
    from neuroenc_builtins.algonauts import read_subject
    from neuroenc_llmvem import recipe

    torch.set_num_threads(1)
    steps = []
    forward = recipe._TrainStep.forward

    def counting(self, inputs, y, t):
        steps.append(len(y))
        return forward(self, inputs, y, t)
    recipe._TrainStep.forward = counting
    context = RunContext(manager=PluginManager(strict=True), cache_dir=Path(cache), seed=0,
                         batch_size=16, show_progress=False)
    data = read_subject(Path(root), "subj01")
    model = context.build("recipe", {
        "name": "llm-vem", "validation_fraction": 0.2,
        "backbone": {"name": "eva02", "model_name": "eva02_tiny_patch14_224", "pretrained": False,
                     "image_size": 28, "layers": [1], "model_kwargs": {"depth": 2}},
        "mapper": {"name": "pca-head", "n_components": 8, "low_rank": 16},
        "captioner": "dataset-captions", "text_encoder": "sentence-transformers",
        "alignment": {"name": "contrastive", "weight": 0.1},
        "stages": [{"name": "head", "train": ["head"], "epochs": 2, "lr": 1e-3}]})
    go.wait()
    model.fit(data, np.arange(len(data.train_images)))
    results.put({"steps": len(steps), "history": model.history,
                 "head": float(sum(v.double().sum() for v in model.net.head.state_dict().values()))})


def test_two_runs_training_one_llm_vem_model_train_it_once(tmp_path, small_demo_root):
    ctx = forked.context()
    go, results = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_train_in_child, args=(str(tmp_path / "cache"), str(small_demo_root),
                                                       go, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    go.set()
    outputs = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    # one trained (2 epochs of 6 steps), the other waited on the training's lock and
    # loaded the finished checkpoint; features, captions and text embeddings likewise
    assert sorted(o["steps"] for o in outputs) == [0, 12]
    assert outputs[0]["history"] == outputs[1]["history"]
    assert outputs[0]["head"] == outputs[1]["head"]
    assert len(list((tmp_path / "cache" / "training").glob("*.pt"))) == 1
    assert len(list((tmp_path / "cache" / "features").iterdir())) == 1
    assert len(list((tmp_path / "cache" / "text-embeddings").iterdir())) == 1


def test_cache_entries_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "entry") as tmp:
            (tmp / "data.npy").write_bytes(b"x")
        with atomic_path(tmp_path / "file.json") as tmp:
            tmp.write_text("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "entry").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "entry" / "data.npy").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "file.json").stat().st_mode) == 0o644


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_leftovers_of_dead_processes_only(tmp_path):
    from neuroenc.core.cache import _host

    dead, live = _dead_pid(), os.getppid()
    folder = tmp_path / "cache" / "features"
    folder.mkdir(parents=True)
    dead_dir = folder / f".abc.{_host()}-{dead}.x1y2.tmp"
    (dead_dir).mkdir()
    (dead_dir / "000.npy").write_bytes(b"x")
    dead_file = tmp_path / "cache" / f".index.json.{_host()}-{dead}.q_9.tmp"
    dead_file.write_text("x")
    live_file = folder / f".def.{_host()}-{live}.zz.tmp"
    live_file.write_text("x")
    other_host = folder / f".ghi.elsewhere-{dead}.zz.tmp"
    other_host.write_text("x")
    old_untagged = folder / ".jkl.abc123.tmp"
    old_untagged.write_text("x")
    week = time.time() - 7 * 24 * 3600
    os.utime(old_untagged, (week, week))
    entry = folder / "0123456789abcdef"  # a real entry is never touched
    entry.mkdir()
    removed = sweep_stale(tmp_path / "cache", depth=2)
    assert sorted(removed) == sorted([dead_dir, dead_file, old_untagged])
    assert live_file.exists() and other_host.exists() and entry.exists()
    # another host's temporary goes once it is older than STALE_AFTER_S; a live one stays
    assert sweep_stale(tmp_path / "cache", depth=2, now=time.time() + STALE_AFTER_S + 60) == \
        [other_host]
    assert live_file.exists()


def test_load_run_reports_an_incomplete_run(tmp_path):
    import xarray as xr

    from neuroenc.evaluation.results import load_run, write_netcdf
    from neuroenc.core.run_status import IncompleteRunError, mark_complete

    run = tmp_path / "run"
    (run).mkdir()
    (run / "environment.json").write_text(json.dumps(
        {"planned": {"models": ["a", "b"], "subjects": ["subj01", "subj02"]}}))
    ds = xr.Dataset({"pearson": ("vertex", np.zeros(3, np.float32))},
                    attrs={"model": "a", "subject": "subj01"})
    write_netcdf(ds, run / "models" / "a" / "subj01" / "scores.nc")
    mark_complete(run / "models" / "a" / "subj01")
    write_netcdf(ds.assign_attrs(subject="subj02"), run / "models" / "a" / "subj02" / "scores.nc")
    with pytest.raises(IncompleteRunError) as info:
        load_run(run)
    assert str(info.value).startswith(
        f"{run}: incomplete run (no complete.json: it was killed, failed or is still running); "
        "missing: models/a/subj02, models/b/subj01, models/b/subj02; 1 part(s) finished")
    with pytest.warns(RuntimeWarning, match="missing: models/a/subj02"):
        assert list(load_run(run, allow_incomplete=True)) == [("a", "subj01")]
