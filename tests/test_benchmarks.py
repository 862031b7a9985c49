"""Benchmarks say what to install; the docs say it too; CI's pip check can fail (issue 9)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run a benchmark as `python benchmarks/ridge.py` would, with himalaya made unimportable
# (whether or not this environment has it).
WITHOUT_HIMALAYA = """
import runpy, sys
sys.modules["himalaya"] = None
sys.argv = [sys.argv[1], *sys.argv[2:]]
sys.path.insert(0, str(__import__("pathlib").Path(sys.argv[0]).parent))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_ridge_benchmark_names_the_missing_peer_in_one_line():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins")])}
    proc = subprocess.run([sys.executable, "-c", WITHOUT_HIMALAYA, str(ROOT / "benchmarks" / "ridge.py")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "benchmarks/ridge.py: needs himalaya to compare against (himalaya not importable): "
        "pip install -e '.[bench]', or time neuroenc alone: --solvers neuroenc neuroenc-loo "
        "neuroenc-gcv"]
    assert proc.stdout == ""  # nothing ran before the check


def test_the_bench_extra_is_documented():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r"^bench = \[.*himalaya", pyproject, flags=re.M)
    for doc in ("README.md", "docs/performance.md"):
        assert "pip install -e '.[bench]'" in (ROOT / doc).read_text(), doc


def test_ci_pip_check_can_fail():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if "pip check" in line and not line.strip().startswith("#")]
    assert lines == [".venv/bin/python -m pip check"]
