"""Time a tiny run grid serial vs ``--executor local --jobs 2`` vs ``--executor slurm``.

    python benchmarks/cluster.py [--jobs 2] [--keep DIR]

The grid: the demo dataset (2 subjects, 120 training / 40 test images at 64 px), two
ridge models on untrained ResNet-18 features at 32 px, one of them swept over 2 points:
6 tasks. A first serial run fills the feature cache; every timed run then starts from
that warm cache, so the numbers are fitting + scheduling, not feature extraction.

Printed per mode: the wall time of the whole ``neuroenc run`` command, the sum of the
tasks' own time (measured inside each task, from loading the subject to its completion
marker), and the scheduling overhead per task: ``(wall x slots - sum of tasks) / tasks``
for the parallel modes (process start, imports, queueing, the final selection and
summary, shared out), ``wall / tasks - mean task`` for the serial one. SLURM needs
``sbatch`` / ``sinfo`` and a running cluster (``.ci/slurm-up`` starts one on this
machine); a missing piece is printed and that mode skipped.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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
compute: {{batch_size: 32, device: cpu, cache_dir: {cache}}}
output: {{dir: {out}, save_encoders: false}}
"""
N_TASKS = 6
DONE = re.compile(r"\[\d+/\d+\] .*?: done in ([0-9.]+) s")
SERIAL_DONE = re.compile(r"^subj\d+ \S+: done in ([0-9.]+) s", re.M)


def slurm_missing() -> str | None:
    """Return what SLURM mode lacks here, or None."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (pip install submitit)"
    for tool in ("sbatch", "sinfo"):
        if shutil.which(tool) is None:
            return f"no {tool} on PATH (SLURM not installed; .ci/slurm-up installs and starts it)"
    out = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True)
    if out.returncode != 0 or not re.search(r"idle|mix|alloc", out.stdout):
        return f"no SLURM node is up (sinfo: {(out.stderr or out.stdout).strip() or 'no nodes'}; run .ci/slurm-up)"
    return None


def run(registry: Path, *extra: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "neuroenc", "run", str(registry), "--no-progress", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="local processes / SLURM tasks at once")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="neuroenc-bench-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        from neuroenc_builtins.demo import generate_demo_dataset

        root = work / "data"
        if not root.exists():
            generate_demo_dataset(root, subjects=(1, 2), n_train=120, n_test=40, image_size=64, seed=3)
        registry = work / "registry.yaml"
        registry.write_text(textwrap.dedent(REGISTRY.format(root=root, cache=work / "cache",
                                                            out=work / "results")))
        print(f"tiny grid: 2 subjects x (1 model + 1 model swept over 2 points) = {N_TASKS} tasks; "
              f"{os.cpu_count()} CPU cores")
        run(registry)  # warm the feature cache
        modes = [("serial", ()), (f"local --jobs {args.jobs}", ("--executor", "local", "--jobs", str(args.jobs)))]
        missing = slurm_missing()
        if missing is None:
            modes.append(("slurm", ("--executor", "slurm", "--jobs", str(args.jobs))))
        rows = []
        for label, extra in modes:
            wall, out = run(registry, *extra)
            tasks = [float(x) for x in (SERIAL_DONE.findall(out) if label == "serial" else DONE.findall(out))]
            if len(tasks) != N_TASKS:
                raise RuntimeError(f"{label}: expected {N_TASKS} task timings in the output, found "
                                   f"{len(tasks)}:\n{out[-2000:]}")
            slots = 1 if label == "serial" else min(args.jobs, os.cpu_count() or 1)
            overhead = (wall * slots - sum(tasks)) / N_TASKS
            rows.append((label, wall, sum(tasks), overhead))
        print(f"{'mode':<16} {'wall s':>8} {'sum of tasks s':>15} {'overhead / task s':>18}")
        for label, wall, total, overhead in rows:
            print(f"{label:<16} {wall:8.1f} {total:15.1f} {overhead:18.1f}")
        if missing is not None:
            print(f"slurm: skipped: {missing}")
        return 0
    except RuntimeError as exc:
        print(f"benchmarks/cluster.py: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
