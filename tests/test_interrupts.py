"""Runs killed with SIGKILL, and runs that hit a full disk, leave nothing behind (issue 9).

The CLI runs in a subprocess, is killed at several points (during feature extraction,
during a fit, between result files), and is run again; the rerun's results must equal
an uninterrupted run's, the killed runs must read as incomplete, and no temporary file
may remain once a later run has started.
"""

from __future__ import annotations

import os
import resource
import signal
import textwrap
import time
from pathlib import Path

import forked
import numpy as np
import pytest
from run_files import result_values
from typer.testing import CliRunner

from neuroenc.cli import app
from neuroenc.evaluation.results import load_run
from neuroenc.core.run_status import IncompleteRunError

runner = CliRunner()

REGISTRY = """
name: kill
seed: 1
dataset: {{kind: algonauts2023, root: {root}, subjects: [1]}}
models:
  ridge:
    recipe: frozen-features
    backbone: {{name: timm, model_name: resnet18, pretrained: false, image_size: 64, layers: [2]}}
    mapper: {{name: ridge, n_folds: 3}}
compute: {{cache_dir: {cache}, batch_size: 8}}
output: {{dir: {out}}}
"""


def _registry(folder: Path, root: Path, cache: str | Path, out: str | Path) -> Path:
    path = folder / f"registry-{len(list(folder.glob('registry-*')))}.yaml"
    path.write_text(textwrap.dedent(REGISTRY.format(root=root, cache=cache, out=out)))
    return path


def _child(args: list[str], log: str, max_file_size: int | None) -> None:
    """The CLI in a child process, its output in ``log``; optionally with a file-size limit."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    if max_file_size is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))
    from neuroenc.cli import app as cli_app

    cli_app(args, prog_name="neuroenc")


@pytest.fixture(scope="module")
def spawner():
    """Starts the CLI in child processes forked from a server that has imported it already.

    A fresh interpreter would spend most of each run importing torch; the fork server
    imports once (and never runs torch code, so forking it is safe).
    """
    ctx = forked.context()

    def start(registry: Path, max_file_size: int | None = None):
        log = str(registry) + ".log"
        proc = ctx.Process(target=_child, args=(["run", str(registry), "--no-progress"], log,
                                                max_file_size))
        proc.start()
        proc.log = log
        return proc
    return start


def _temporaries(*folders: Path) -> list[Path]:
    return [p for folder in folders for p in folder.rglob(".*")
            if p.name.endswith((".tmp", ".old")) or ".partial" in p.name]


def _kill_when(proc, condition, what: str) -> None:
    while proc.is_alive():
        if condition():
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            return
        time.sleep(0.002)
    pytest.fail(f"the run ended before {what}:\n{Path(proc.log).read_text()}")



@pytest.fixture(scope="module")
def reference(small_demo_root, tmp_path_factory):
    """An uninterrupted run (in this process) and its folder."""
    folder = tmp_path_factory.mktemp("reference")
    result = runner.invoke(app, ["run", str(_registry(folder, small_demo_root, "cache", "out")),
                                 "--no-progress"])
    assert result.exit_code == 0, result.output
    return folder, (folder / "out" / "kill" / "latest").resolve()


def test_sigkill_at_several_points_then_rerun(small_demo_root, reference, spawner, tmp_path):
    registry = _registry(tmp_path, small_demo_root, "cache", "out")
    features, runs = tmp_path / "cache" / "features", tmp_path / "out" / "kill"

    def run_dirs() -> set[Path]:
        return set(runs.glob("2*")) if runs.is_dir() else set()

    def entries() -> set[str]:
        return {p.name for p in features.iterdir() if not p.name.startswith(".")} \
            if features.is_dir() else set()

    killed = []
    # 1. during feature extraction: the entry's temporary folder exists
    proc = spawner(registry)
    _kill_when(proc, lambda: features.is_dir() and any(p.name.endswith(".tmp")
                                                       for p in features.iterdir()),
               "feature extraction started")
    killed.append(max(run_dirs()))
    assert entries() == set(), "the killed extraction must not leave a complete-looking entry"

    # 2. during a fit: a new feature entry is complete, no result is written yet
    before, known = run_dirs(), entries()
    proc = spawner(registry)
    _kill_when(proc, lambda: entries() - known and not any(
        (d / "models").exists() for d in run_dirs() - before), "the first fit")
    killed.append(max(run_dirs()))

    # 3. between result files: a part's scores.nc is written, its completion marker is not
    before = run_dirs()

    def between_files() -> bool:
        return any(not (p.parent / "complete.json").exists()
                   for d in run_dirs() - before for p in d.glob("models/*/*/scores.nc"))
    proc = spawner(registry)
    _kill_when(proc, between_files, "the first result file")
    killed.append(max(run_dirs()))

    for run_dir in killed:
        with pytest.raises(IncompleteRunError):
            load_run(run_dir)
    assert not (runs / "latest").exists()

    # the rerun sweeps the killed runs' temporaries and gives the uninterrupted results
    result = runner.invoke(app, ["run", str(registry), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert _temporaries(tmp_path / "cache", tmp_path / "out") == []
    rerun = (runs / "latest").resolve()
    assert rerun not in killed
    expected, got = result_values(reference[1]), result_values(rerun)
    assert sorted(got) == sorted(expected) and len(got) == 2
    for name, variables in expected.items():
        for var, values in variables.items():
            np.testing.assert_allclose(got[name][var], values, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: {var}")
    assert set(load_run(rerun)) == {("ridge", "subj01")}


def test_a_full_disk_gives_one_line_and_no_temporary(small_demo_root, reference, spawner,
                                                     tmp_path):
    # Writes beyond RLIMIT_FSIZE fail with EFBIG, as writes to a full disk fail with ENOSPC
    # (no privileges needed). The features are cached, so the first big write is a result.
    folder, _ = reference
    registry = _registry(tmp_path, small_demo_root, folder / "cache", tmp_path / "out")
    proc = spawner(registry, max_file_size=200_000)
    proc.join(timeout=300)
    output = Path(proc.log).read_text()
    assert proc.exitcode == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    assert "/models/ridge/subj01/scores.nc: cannot write: File too large (errno 27; needed " \
        in errors[0]
    assert _temporaries(tmp_path / "out", folder / "cache") == []


def test_os_errors_become_one_line(tmp_path, small_demo_root):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    registry = _registry(tmp_path, small_demo_root, "cache", "file/out")
    result = runner.invoke(app, ["run", str(registry), "--no-progress"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {blocker}/out/kill/")
    assert lines[0].endswith(": not a folder on the way to: Not a directory "
                             "(errno 20)"), result.output
