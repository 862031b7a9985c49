"""The run grid beyond one process: --executor local --jobs 2, and --executor slurm on a real
slurmctld (.ci/slurm-up starts a one-node cluster), against a serial run's results; the
checks made before anything is submitted."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from run_files import result_values
from typer.testing import CliRunner

from neuroenc.cli import app

runner = CliRunner()

# 2 subjects x 2 models, one of them swept over 2 points: 6 tasks, then per subject the
# selection of the swept model's headline in the submitting process
REGISTRY = """
name: grid
seed: 2
dataset: {{kind: algonauts2023, root: {root}, subjects: [1, 2]}}
models:
  ridge:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 32, layers: [2, 4]}}
    mapper: {{name: ridge, n_folds: 2}}
  ridge-swept:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 32, layers: [3]}}
    mapper: {{name: ridge, n_folds: 2}}
    sweep: {{mapper.n_folds: [2, 3]}}
compute: {{batch_size: 32, device: cpu}}
output: {{dir: results, save_encoders: false}}
"""


def _slurm_missing() -> str | None:
    for tool in ("sbatch", "sinfo"):
        if shutil.which(tool) is None:
            return f"SLURM is not installed here (no {tool} on PATH; .ci/slurm-up installs and starts it)"
    return None


@pytest.fixture(scope="module")
def grid(small_demo_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    registry = folder / "registry.yaml"
    registry.write_text(textwrap.dedent(REGISTRY.format(root=small_demo_root)))
    return folder, registry


def _run(folder: Path, registry: Path, name: str, *extra: str):
    result = runner.invoke(app, ["run", str(registry), "--output", str(folder / name),
                                 "--cache-dir", str(folder / "cache"), "--no-progress", *extra])
    assert result.exit_code == 0, result.output
    return (folder / name / "grid" / "latest").resolve(), result.output


@pytest.fixture(scope="module")
def serial(grid):
    folder, registry = grid
    return _run(folder, registry, "serial")[0]


def _same_results(run_dir: Path, reference: Path) -> None:
    """The same files and values as the serial run's, up to float32 summation order.

    Workers run 1 BLAS thread each (2 cores, 2 jobs), the serial run 2: the same
    arithmetic summed in another order, measured to differ by at most 1e-6 in r and 1.4e-5
    relative in the noise-normalised score (100 r^2 / noise ceiling amplifies it); a task
    run on the wrong images or settings differs by far more.
    """
    import json

    import pandas as pd

    got, want = result_values(run_dir), result_values(reference)
    assert sorted(got) == sorted(want)
    assert len(want) == 2 * 4 * 2  # subjects x (ridge, 2 points, headline) x (scores, predictions)
    for key, variables in want.items():
        assert sorted(got[key]) == sorted(variables), key
        for name, values in variables.items():
            np.testing.assert_allclose(got[key][name], values, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{key}: {name}")
    for name in ("summary.csv", "sweep_summary.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(run_dir / name), pd.read_csv(reference / name),
                                      rtol=1e-4, atol=1e-5)
    for subject in ("subj01", "subj02"):
        chosen = [json.loads((run / "models" / "ridge-swept" / subject / "selection.json")
                             .read_text())["chosen"] for run in (run_dir, reference)]
        assert chosen[0] == chosen[1]
        assert (run_dir / "models" / "ridge-swept" / subject / "sweep.nc").is_file()
    assert (run_dir / "complete.json").is_file()


def test_local_jobs_give_the_serial_results(grid, serial):
    folder, registry = grid
    run_dir, output = _run(folder, registry, "local", "--executor", "local", "--jobs", "2")
    assert "running 6 tasks in 2 local processes" in output
    assert "[6/6]" in output and "selected" in output
    _same_results(run_dir, serial)


@pytest.mark.skipif(_slurm_missing() is not None, reason=_slurm_missing() or "")
def test_slurm_job_array_gives_the_serial_results_and_resume_resubmits_only_the_rest(grid, serial):
    folder, registry = grid
    run_dir, output = _run(folder, registry, "slurm", "--executor", "slurm")
    assert "submitted 6 tasks as SLURM job array" in output and "[6/6]" in output
    _same_results(run_dir, serial)
    assert any((run_dir / "submitit").iterdir())  # submitit's pickles and logs, in their folder

    # lose two parts and the run's marker, as a cancelled job would leave it: --resume
    # resubmits those two tasks only
    for subject in ("subj01", "subj02"):
        (run_dir / "models" / "ridge-swept@mapper.n_folds=3" / subject / "complete.json").unlink()
    (run_dir / "complete.json").unlink()
    result = runner.invoke(app, ["run", "--resume", str(run_dir), "--executor", "slurm",
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "4 of 6 tasks complete; running the other 2" in result.output
    assert "submitted 2 tasks" in result.output
    _same_results(run_dir, serial)


# -- errors before anything is submitted -----------------------------------------------------
def _fails(grid, *extra: str, env: dict | None = None) -> str:
    folder, registry = grid
    old = dict(os.environ)
    os.environ.update(env or {})
    try:
        result = runner.invoke(app, ["run", str(registry), "--output", str(folder / "never"),
                                     "--cache-dir", str(folder / "cache"), "--no-progress", *extra])
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert result.exit_code != 0, result.output
    assert not (folder / "never").exists()  # nothing was made, nothing submitted
    return " ".join(result.output.split())


def test_no_sbatch_on_path_is_an_error_before_submitting(grid, tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    out = _fails(grid, "--executor", "slurm", env={"PATH": str(empty)})
    assert "no sbatch on PATH" in out


@pytest.mark.skipif(_slurm_missing() is not None, reason=_slurm_missing() or "")
def test_unknown_partition_and_needless_gpus_are_errors_before_submitting(grid):
    out = _fails(grid, "--executor", "slurm", "--partition", "gpu-a100")
    assert "compute.slurm.partition: unknown partition 'gpu-a100'; sinfo lists: debug" in out
    out = _fails(grid, "--executor", "slurm", "--gpus-per-task", "2")
    assert "gpus_per_task: 2, but compute.device is cpu" in out
    out = _fails(grid, "--executor", "slurm", "--device", "cuda")
    assert "compute.device is cuda, but compute.slurm.gpus_per_task is 0" in out


def test_bad_command_line_executor_options_are_errors(grid):
    assert "--executor 'cloud': expected serial, local or slurm" in _fails(grid, "--executor", "cloud")
    assert "--sbatch 'qos': expected KEY=VALUE" in _fails(grid, "--executor", "slurm", "--sbatch", "qos")
