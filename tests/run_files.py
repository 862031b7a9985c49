"""What the SIGKILL / resume tests compare: every variable of a run folder's result files."""

from __future__ import annotations

from pathlib import Path

from neuroenc.evaluation.results import read_netcdf


def result_values(run_dir: Path) -> dict:
    """Return ``{models/<model>/<subject>/<file>: {variable: values}}`` for scores and predictions."""
    out = {}
    for part in ("scores", "predictions"):
        for path in sorted(Path(run_dir).glob(f"models/*/*/{part}.nc")):
            ds = read_netcdf(path)
            out[path.relative_to(run_dir).as_posix()] = {k: ds[k].values for k in ds.data_vars}
    return out
