"""Runs you can narrow, plan and resume (issue 12): --models/--subjects/--output/--cache-dir,
--dry-run, and --resume after a SIGKILL whose final results equal an uninterrupted run's."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from run_files import result_values
from typer.testing import CliRunner

from neuroenc.cli import app
from neuroenc.core.plan import part_problem
from neuroenc.evaluation.results import load_run, read_netcdf

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

REGISTRY = """
name: resume
seed: 4
dataset: {{kind: algonauts2023, root: {root}, subjects: [1]}}
models:
  ridge:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 32, layers: [2, 4]}}
    mapper: {{name: ridge, n_folds: 3}}
  ridge-b:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 32, layers: [2, 4]}}
    mapper: {{name: ridge, n_folds: 2, alphas: [1, 100, 10000]}}
  never-run:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 48, layers: [1]}}
compute: {{batch_size: 16, device: cpu}}
output: {{dir: unused-results}}
"""


@pytest.fixture(scope="module")
def setup(small_demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    registry = folder / "registry.yaml"
    registry.write_text(textwrap.dedent(REGISTRY.format(root=small_demo_root)))
    return folder, registry


def _args(folder: Path, registry: Path, out: str) -> list[str]:
    return ["run", str(registry), "--models", "ridge,ridge-b", "--subjects", "1",
            "--output", str(folder / out), "--cache-dir", str(folder / "cache"), "--no-progress"]


@pytest.fixture(scope="module")
def reference(setup):
    """An uninterrupted run of two of the registry's three models, folders overridden."""
    folder, registry = setup
    result = runner.invoke(app, _args(folder, registry, "reference"))
    assert result.exit_code == 0, result.output
    return (folder / "reference" / "resume" / "latest").resolve()



def test_models_subjects_output_and_cache_dir_narrow_and_redirect_a_run(setup, reference):
    folder, _ = setup
    assert reference.parent.parent == folder / "reference"
    assert not (folder / "unused-results").exists()
    assert sorted(p.name for p in (reference / "models").iterdir()) == ["ridge", "ridge-b"]
    planned = json.loads((reference / "environment.json").read_text())["planned"]
    assert planned == {"models": ["ridge", "ridge-b"], "subjects": ["subj01"]}
    assert any((folder / "cache" / "features").iterdir())


def test_dry_run_prints_the_plan_and_what_is_cached(setup, reference):
    folder, registry = setup
    result = runner.invoke(app, [*_args(folder, registry, "dry")[:-1], "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "2 model(s) x 1 subject(s) = 2 fits" in result.output
    assert "feature sets: 2 (2 cached, 0 to extract)" in result.output  # shared by both models
    assert "for ridge, ridge-b" in result.output
    assert not (folder / "dry").exists()  # nothing was run
    everything = runner.invoke(app, ["run", str(registry), "--cache-dir", str(folder / "cache"),
                                     "--dry-run"])
    assert everything.exit_code == 0, everything.output
    assert "3 model(s) x 1 subject(s) = 3 fits" in everything.output
    assert "feature sets: 4 (2 cached, 2 to extract)" in everything.output  # never-run's
    bad = runner.invoke(app, ["run", str(registry), "--models", "ridge,ridgeb", "--dry-run"])
    assert bad.exit_code == 1 and "unknown model 'ridgeb'" in bad.output \
        and "did you mean 'ridge-b'" in bad.output


def test_resume_after_sigkill_equals_an_uninterrupted_run(setup, reference):
    folder, registry = setup
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")])}
    runs = folder / "killed" / "resume"
    log = open(folder / "killed.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "neuroenc", *_args(folder, registry, "killed")],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    first = None
    try:
        while proc.poll() is None:  # kill once the first part is complete, during the second
            done = list(runs.glob("*/models/*/*/complete.json")) if runs.is_dir() else []
            if done:
                first = done[0].parent
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    assert first is not None, (folder / "killed.log").read_text()
    run_dir = first.parents[2]
    assert not (run_dir / "complete.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()}

    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"subj01 {first.parent.name}: kept (complete)" in result.output
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir() if p.is_file()} == kept
    assert sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) == \
        sorted([run_dir.name, "latest"])  # finished in place
    expected, got = result_values(reference), result_values(run_dir)
    assert sorted(got) == sorted(expected) and len(got) == 4
    for name, variables in expected.items():
        for var, values in variables.items():
            np.testing.assert_allclose(got[name][var], values, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: {var}")
    assert set(load_run(run_dir)) == {("ridge", "subj01"), ("ridge-b", "subj01")}
    summary = pd.read_csv(run_dir / "summary.csv")
    assert set(summary.model) == {"ridge", "ridge-b"}
    manifest = json.loads((run_dir / "encoders.json").read_text())
    assert [e["saved"] for e in manifest["encoders"]] == [True, True]
    environment = json.loads((run_dir / "environment.json").read_text())
    assert len(environment["resumed"]) == 1 and environment["registry"] == str(registry.resolve())
    refused = runner.invoke(app, ["run", str(registry), "--resume", str(run_dir)])
    assert refused.exit_code == 1 and "takes no REGISTRY_FILE" in refused.output


def test_a_part_with_its_marker_but_a_damaged_file_is_not_kept(reference, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(reference, copy)
    folder = copy / "models" / "ridge" / "subj01"
    shape = read_netcdf(folder / "predictions.nc")["predicted"].shape
    check = dict(model="ridge", subject="subj01", n_vertices=shape[1], n_scored=shape[0],
                 submission=copy / "submission" / "ridge" / "subj01", save_encoders=True)
    assert part_problem(folder, **check) is None
    assert "expected" in part_problem(folder, **{**check, "n_scored": shape[0] + 1})
    data = (folder / "predictions.nc").read_bytes()
    (folder / "predictions.nc").write_bytes(data[: len(data) // 2])
    assert "cannot be read" in part_problem(folder, **check)
    (folder / "predictions.nc").write_bytes(data)
    (folder / "encoder" / "arrays.safetensors").write_bytes(b"\0" * 16)
    assert "saved encoder cannot be read" in part_problem(folder, **check)
    (folder / "complete.json").unlink()
    assert part_problem(folder, **check) == "no complete.json"
